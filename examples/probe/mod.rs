//! What the probe examples (`cpu_probe`, `softmax_probe`, `uniform_probe`, `texture_probe`)
//! share: the default adapter's device, and the median time of a WGSL kernel's dispatch, its
//! submission and the wait.
use segloss::wgpu;

pub struct Probe {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Whether the device has subgroup operations (asked for where the adapter has them).
    #[allow(dead_code)]
    pub subgroups: bool,
}

impl Probe {
    /// The default adapter's device with the adapter's limits (and its subgroup operations).
    pub fn new() -> Result<Probe, Box<dyn std::error::Error>> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(desc);
        let adapter = futures::executor::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let (device, queue) = futures::executor::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_limits: adapter.limits(),
            required_features: features,
            ..Default::default()
        }))?;
        println!("adapter: {} ({:?})", adapter.get_info().name, adapter.get_info().backend);
        Ok(Probe { device, queue, subgroups: !features.is_empty() })
    }

    /// A buffer of `size` bytes for `usage`.
    pub fn buffer(&self, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false })
    }

    /// The median of 15 runs (after one to warm up) of entry point `entry` of `src` over `groups`
    /// workgroups, each binding `@binding(i)` that `src` declares bound to `bufs[i]`, in ms.
    /// (A probe that binds textures builds its own bind group and uses `median_ms`.)
    #[allow(dead_code)]
    pub fn time(&self, src: &str, entry: &str, groups: (u32, u32), bufs: &[wgpu::Buffer]) -> f64 {
        let device = &self.device;
        let pipeline = self.pipeline(src, entry);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = (0..bufs.len() as u32)
            .filter(|i| src.contains(&format!("@binding({i})")))
            .map(|i| wgpu::BindGroupEntry { binding: i, resource: bufs[i as usize].as_entire_binding() })
            .collect();
        let group =
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        self.median_ms(|| {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
            self.queue.submit([enc.finish()]);
        })
    }

    /// The compute pipeline of entry point `entry` of WGSL `src`, its layout derived from `src`.
    pub fn pipeline(&self, src: &str, entry: &str) -> wgpu::ComputePipeline {
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    }

    /// The median of 15 runs (after one to warm up) of `record`'s commands, each run one
    /// submission and the wait for it, in ms.
    pub fn median_ms(&self, record: impl Fn()) -> f64 {
        let run = || {
            record();
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
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
    }
}
