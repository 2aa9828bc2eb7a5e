//! Times the layouts behind `tile_item` (`shaders/common.wgsl`) on the default adapter: a pass
//! that reads two arrays of 2^19 quads (8 MiB each, as the logits and targets of 8x1x512x512) and
//! writes a third, with a quad per thread, with 16 quads per thread `128` apart (a GPU's rows),
//! and with 16 per thread where each vector of 8 lanes walks 16 consecutive rows of 8 quads (the
//! runs of a CPU adapter): `cargo run --release --example cpu_probe`.
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
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapter = futures::executor::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = futures::executor::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() }),
    )?;
    println!("adapter: {} ({:?})", adapter.get_info().name, adapter.get_info().backend);
    let bytes = QUADS * 16;
    let bufs: Vec<wgpu::Buffer> = (0..3)
        .map(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    let time = |src: &str, entry: &str, groups: u32| -> f64 {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = [0u32, 1, 2]
            .iter()
            .filter(|&&i| src.contains(&format!("@binding({i})")))
            .map(|&i| wgpu::BindGroupEntry { binding: i, resource: bufs[i as usize].as_entire_binding() })
            .collect();
        let group =
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        let run = || {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
            }
            queue.submit([enc.finish()]);
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
        };
        run();
        let mut ms: Vec<f64> = (0..15)
            .map(|_| {
                let t = std::time::Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms[ms.len() / 2]
    };
    let q = QUADS as u32;
    println!("layout, read two arrays and write one (median of 15, ms):");
    println!("  a quad per thread          {:8.3}", time(LAYOUT, "one", q / 128));
    println!("  16 quads per thread, rows  {:8.3}", time(LAYOUT, "rows", q / 2048));
    println!("  16 quads per thread, runs  {:8.3}", time(LAYOUT, "runs", q / 2048));
    Ok(())
}
