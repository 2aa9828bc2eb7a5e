//! Times loads through uniform buffers against loads through storage buffers on the default
//! adapter: `cargo run --release --example uniform_probe`. On lavapipe (Mesa 22.3) a storage load
//! at offsets that differ between lanes is a loop over the SIMD lanes with a branch on each lane's
//! mask and bounds check, while a uniform buffer's is a gather without that loop; a uniform
//! binding holds at most 64 KiB, though, and a shader stage sees at most 15 (`Limits`). Three
//! probes:
//! - 2^21 threads each adding 32 values read from one 64 KiB range, through a storage binding and
//!   through a uniform binding;
//! - 2^17 threads in workgroups of 8 (one SIMD vector on llvmpipe) reading the same way through
//!   storage, against each lane picking its values out of `vec4` loads at offsets that are the
//!   same for all lanes: whether a dynamically uniform storage load takes a scalar path;
//! - the class walks of a softmax pass over a 4x21x256x256 batch (a thread per pixel, 16 pixels
//!   each, the pixel's 21 logits `65536` floats apart): all through storage in one dispatch,
//!   against 14 classes through uniform windows of 64 KiB over the same buffer and 7 through
//!   storage, in 16 dispatches of 16384 pixels each with bind groups of their own; with one store
//!   per pixel (the statistics' pattern) and with 21 (the gradient's).
mod probe;

use probe::Probe;
use segloss::wgpu;

const C: u32 = 21;
const S: u32 = 65536;
const N: u32 = 4;
/// Classes read through uniform windows (one binding each; one more holds the dispatch's
/// parameters).
const NU: u32 = 14;
/// Pixels per uniform window (64 KiB of f32).
const WIN: u32 = 16384;

/// 32 loads per thread from one 64 KiB range through `load`, which a variant declares with its
/// binding.
const RANGE: &str = r#"
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let r = (wid.x * 4096u + ((lid / 8u) * 16u + i) * 8u + lid % 8u) % 16384u;
        acc += load(r) + load(r ^ 1u);
    }
    o[wid.x * 256u + lid] = acc;
}
"#;
const RANGE_SSBO: &str = "@group(0) @binding(0) var<storage, read> a: array<f32>;
fn load(r: u32) -> f32 { return a[r]; }";
const RANGE_UBO: &str = "@group(0) @binding(1) var<uniform> u: array<vec4<f32>, 4096>;
fn load(r: u32) -> f32 { return u[r >> 2u][r & 3u]; }";

/// Workgroups of 8 threads (one SIMD vector on llvmpipe), 32 loads each from one 64 KiB range:
/// `lane8` at offsets that differ between lanes, `same8` the same values picked out of `vec4`
/// loads at offsets the same for all lanes (4 loads of 4 values per 8 lane-values); both end in
/// `PICK`'s output.
const PICK: &str = r#"
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
fn pick(lo: vec4<f32>, hi: vec4<f32>, l: u32) -> f32 {
    let q = l & 3u;
    let v = select(lo, hi, l >= 4u);
    return select(select(v.x, v.y, q == 1u), select(v.z, v.w, q == 3u), q >= 2u);
}
"#;
const LANE8: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@compute @workgroup_size(8)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let r = ((wid.x * 16u + i) * 8u + lid) % 16384u;
        acc += a[r] + a[r ^ 8u];
    }
    o[wid.x * 8u + lid] = acc;
}
"#;
const SAME8: &str = r#"
@group(0) @binding(3) var<storage, read> a4: array<vec4<f32>>;
@compute @workgroup_size(8)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc = 0.0;
    for (var i = 0u; i < 16u; i++) {
        let q = ((wid.x * 16u + i) * 2u) % 4096u;
        acc += pick(a4[q], a4[q + 1u], lid) + pick(a4[q ^ 2u], a4[(q ^ 2u) + 1u], lid);
    }
    o[wid.x * 8u + lid] = acc;
}
"#;

/// The class walk: `uniform` classes through uniform windows (the rest through storage), one
/// store per pixel or (`store_all`) one per logit.
fn class_walk(uniform: u32, store_all: bool) -> String {
    let mut s = String::from(
        "@group(0) @binding(0) var<storage, read> a: array<f32>;\n\
         @group(0) @binding(20) var<storage, read_write> o: array<f32>;\n\
         struct Prm { n: u32, base: u32, pad0: u32, pad1: u32 }\n\
         @group(0) @binding(19) var<uniform> prm: Prm;\n",
    );
    for c in 0..uniform {
        s += &format!("@group(0) @binding({}) var<uniform> u{c}: array<vec4<f32>, 4096>;\n", c + 1);
    }
    s += "@compute @workgroup_size(256)\n\
          fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {\n";
    // one dispatch per image (wid.y) without windows; a dispatch per window with
    s += if uniform == 0 {
        "  let n = wid.y;\n  let base = 0u;\n"
    } else {
        "  let n = prm.n;\n  let base = prm.base;\n"
    };
    s += "  for (var i = 0u; i < 16u; i++) {\n    let r = wid.x * 4096u + i * 256u + lid;\n";
    s += &format!("    let p = base + r;\n    let e0 = n * {C}u * {S}u + p;\n");
    for c in 0..C {
        if c < uniform {
            s += &format!("    let x{c} = u{c}[r >> 2u][r & 3u];\n");
        } else {
            s += &format!("    let x{c} = a[e0 + {c}u * {S}u];\n");
        }
    }
    s += "    var m = x0;\n";
    for c in 1..C {
        s += &format!("    m = max(m, x{c});\n");
    }
    if store_all {
        for c in 0..C {
            s += &format!("    o[e0 + {c}u * {S}u] = x{c} - m;\n");
        }
    } else {
        s += &format!("    o[n * {S}u + p] = m;\n");
    }
    s + "  }\n}\n"
}

/// `size` bytes of `buffer` from `offset`, as a binding.
fn window(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size: std::num::NonZeroU64::new(size) })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let probe = Probe::new()?;
    let dev = &probe.device;
    let limits = dev.limits();
    println!(
        "uniform bindings: at most {} bytes each, {} per stage",
        limits.max_uniform_buffer_binding_size, limits.max_uniform_buffers_per_shader_stage
    );
    if limits.max_uniform_buffer_binding_size < 65536 || limits.max_uniform_buffers_per_shader_stage < NU + 1 {
        return Err("this adapter's uniform bindings are too few or too small for the probe".into());
    }
    let total = (N * C * S) as u64 * 4;
    let storage = wgpu::BufferUsages::STORAGE;
    let a = probe.buffer(total, storage | wgpu::BufferUsages::UNIFORM);
    let o = probe.buffer(total, storage);
    let small = [a.clone(), probe.buffer(65536, wgpu::BufferUsages::UNIFORM), o.clone(), a.clone()];
    let g = (1u32 << 21) / 4096;
    println!("32 loads per thread from one 64 KiB range (ms):");
    for _ in 0..3 {
        println!(
            "  2^21 threads: storage {:8.3}   uniform {:8.3}; 2^17 threads in workgroups of 8: storage {:8.3}   \
             storage at lane-uniform offsets {:8.3}",
            probe.time(&format!("{RANGE_SSBO}{RANGE}"), "main", (g, 1), &small),
            probe.time(&format!("{RANGE_UBO}{RANGE}"), "main", (g, 1), &small),
            probe.time(&format!("{PICK}{LANE8}"), "main", (1 << 14, 1), &small),
            probe.time(&format!("{PICK}{SAME8}"), "main", (1 << 14, 1), &small),
        );
    }

    // the windows' parameters, one 256-byte slot per (image, window)
    let wins = S / WIN;
    let prm = probe.buffer(256 * (N * wins) as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
    let mut words = vec![0u32; 64 * (N * wins) as usize];
    for k in 0..N * wins {
        words[64 * k as usize] = k / wins;
        words[64 * k as usize + 1] = (k % wins) * WIN;
    }
    probe.queue.write_buffer(&prm, 0, bytemuck::cast_slice(&words));
    println!("4x21x256x256 class walks, 16 pixels per thread (ms):");
    for store_all in [false, true] {
        let plain = probe.pipeline(&class_walk(0, store_all), "main");
        let plain_group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &plain.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: a.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 20, resource: o.as_entire_binding() },
            ],
        });
        let windowed = probe.pipeline(&class_walk(NU, store_all), "main");
        let layout = windowed.get_bind_group_layout(0);
        let groups: Vec<wgpu::BindGroup> = (0..N * wins)
            .map(|k| {
                let (n, w) = (k / wins, k % wins);
                let mut entries = vec![
                    wgpu::BindGroupEntry { binding: 0, resource: a.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 20, resource: o.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 19, resource: window(&prm, 256 * k as u64, 16) },
                ];
                for c in 0..NU {
                    let offset = ((n * C + c) * S + w * WIN) as u64 * 4;
                    entries.push(wgpu::BindGroupEntry { binding: c + 1, resource: window(&a, offset, 65536) });
                }
                dev.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries })
            })
            .collect();
        let run = |pipeline: &wgpu::ComputePipeline, groups: &[&wgpu::BindGroup], dims: (u32, u32)| {
            probe.median_ms(|| {
                let mut enc = dev.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(pipeline);
                    for g in groups {
                        pass.set_bind_group(0, *g, &[]);
                        pass.dispatch_workgroups(dims.0, dims.1, 1);
                    }
                }
                probe.queue.submit([enc.finish()]);
            })
        };
        let stores = if store_all { "a store per logit" } else { "a store per pixel" };
        for _ in 0..3 {
            let t_plain = run(&plain, &[&plain_group], (S / 4096, N));
            let t_win = run(&windowed, &groups.iter().collect::<Vec<_>>(), (WIN / 4096, 1));
            println!(
                "  {stores}: all storage {t_plain:8.3}   {NU} classes through uniform windows ({} dispatches) {t_win:8.3}",
                groups.len()
            );
        }
    }
    Ok(())
}
