//! segloss on a device and buffers the program owns: logits and targets in its own storage
//! buffers, `0.5*bce+0.5*dice` evaluated there with the gradient written into its own buffer at a
//! non-zero offset, and the largest difference to the same evaluation from host slices.
//!
//! `cargo run --release --example device_buffers`

use segloss::wgpu::{self, util::DeviceExt};
use segloss::{BufferInput, BufferSlice, Engine, GradOut, Input, LossExpr, Mode, TargetBuffer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. the program's own device
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = futures::executor::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = futures::executor::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() }),
    )?;
    let engine = Engine::from_device_blocking(&adapter.get_info(), device.clone(), queue.clone())?;
    println!("device: {} ({})", engine.info().name, engine.info().backend);

    // 2. a batch of 2 images of 64x64, one channel: logits and a 0/1 mask
    let shape = [2usize, 1, 64, 64];
    let n: usize = shape.iter().product();
    let logits: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 125.0 - 4.0).collect();
    let target: Vec<f32> = (0..n).map(|i| ((i % 64) > 20 && (i % 64) < 30) as u8 as f32).collect();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let init = |label, data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let (lbuf, tbuf) = (init("logits", &logits), init("target", &target));
    // the gradient goes into a larger buffer, after one alignment unit of other data
    let offset = u64::from(device.limits().min_storage_buffer_offset_alignment);
    let gbuf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gradients"),
        size: offset + (n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });

    // 3. evaluate on the buffers, the gradient written at `offset`
    let expr: LossExpr = "0.5*bce+0.5*dice".parse()?;
    let input = BufferInput::new(
        BufferSlice::whole(&lbuf),
        TargetBuffer::Dense(BufferSlice::whole(&tbuf)),
        &shape,
        Mode::Binary,
        None,
    )?;
    let grad_out = GradOut::Write(BufferSlice::new(&gbuf, offset, n as u64));
    let on_device = engine.evaluate_buffers_blocking(&input, std::slice::from_ref(&expr), &[grad_out])?;

    // 4. the same from host slices, and the largest difference
    let host_input = Input::dense(&logits, &target, &shape, Mode::Binary)?;
    let host = engine.evaluate_blocking(&host_input, std::slice::from_ref(&expr), true)?;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (n * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&gbuf, offset, &staging, 0, (n * 4) as u64);
    queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let grad: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    let host_grad = host[0].grad.as_ref().ok_or("no host gradient")?;
    let worst = grad.iter().zip(host_grad).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("value on buffers {:.9}, from host slices {:.9}", on_device[0].value, host[0].value);
    println!("largest gradient difference: {worst:e}");
    Ok(())
}
