//! Times the layouts behind `tile_item` (`shaders/common.wgsl`) on the default adapter: a pass
//! that reads two arrays of 2^19 quads (8 MiB each, as the logits and targets of 8x1x512x512) and
//! writes a third, with a quad per thread, with 16 quads per thread `128` apart (a GPU's rows),
//! and with 16 per thread where each vector of 8 lanes walks 16 consecutive rows of 8 quads (the
//! runs of a CPU adapter): `cargo run --release --example cpu_probe`.
mod probe;

use probe::Probe;
use segloss::wgpu;

const LAYOUT: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> o: array<vec4<f32>>;
fn step(q: u32) { o[q] = a[q] + bitcast<vec4<f32>>(b[q]); }
@compute @workgroup_size(128)
fn one(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    step(wid.x * 128u + lid);
}
@compute @workgroup_size(128)
fn rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    for (var i = 0u; i < 16u; i++) { step(wid.x * 2048u + i * 128u + lid); }
}
@compute @workgroup_size(128)
fn runs(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    for (var i = 0u; i < 16u; i++) { step(wid.x * 2048u + ((lid / 8u) * 16u + i) * 8u + lid % 8u); }
}
"#;

const QUADS: u64 = 1 << 19;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let probe = Probe::new()?;
    let bytes = QUADS * 16;
    let bufs: Vec<wgpu::Buffer> = (0..3).map(|_| probe.buffer(bytes, wgpu::BufferUsages::STORAGE)).collect();
    let time = |entry: &str, groups: u32| probe.time(LAYOUT, entry, (groups, 1), &bufs);
    let q = QUADS as u32;
    println!("layout, read two arrays and write one (median of 15, ms):");
    println!("  a quad per thread          {:8.3}", time("one", q / 128));
    println!("  16 quads per thread, rows  {:8.3}", time("rows", q / 2048));
    println!("  16 quads per thread, runs  {:8.3}", time("runs", q / 2048));
    Ok(())
}
