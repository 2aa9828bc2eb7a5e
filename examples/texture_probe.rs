//! Times reading softmax logits through a texture against a storage buffer on the default
//! adapter: 4x21x256x256 logits, a thread per pixel (8 pixels each), its 21 logits loaded, their
//! log-sum-exp taken, one store per pixel or one per logit: `cargo run --release --example
//! texture_probe`. The logits are the same values in a storage buffer and in an `r32float`
//! texture array (a layer per image and class); the stores go to a storage buffer or, for the
//! per-logit pattern, to a storage texture too.
mod probe;

use probe::Probe;
use segloss::wgpu;

const C: u32 = 21;
const W: u32 = 256;
const S: u32 = W * W;
const N: u32 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Src {
    Storage,
    Texture,
}

#[derive(Clone, Copy, PartialEq)]
enum Dst {
    OnePerPixel,
    AllStorage,
    AllTexture,
}

fn kernel(src: Src, dst: Dst) -> String {
    let mut s = String::new();
    s += match src {
        Src::Storage => "@group(0) @binding(0) var<storage, read> a: array<f32>;\n",
        Src::Texture => "@group(0) @binding(0) var a: texture_2d_array<f32>;\n",
    };
    s += match dst {
        Dst::AllTexture => "@group(0) @binding(1) var o: texture_storage_2d_array<r32float, write>;\n",
        _ => "@group(0) @binding(1) var<storage, read_write> o: array<f32>;\n",
    };
    s += "@compute @workgroup_size(256)\n";
    s += "fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {\n";
    s += "  let n = wid.y;\n  for (var i = 0u; i < 8u; i++) {\n";
    s += "    let p = wid.x * 2048u + i * 256u + lid;\n";
    s += &format!("    let e0 = n * {C}u * {S}u + p;\n    let xy = vec2<u32>(p % {W}u, p / {W}u);\n");
    for k in 0..C {
        match src {
            Src::Storage => s += &format!("    let x{k} = a[e0 + {k}u * {S}u];\n"),
            Src::Texture => s += &format!("    let x{k} = textureLoad(a, xy, n * {C}u + {k}u, 0).x;\n"),
        }
    }
    s += "    var m = x0;\n";
    for k in 1..C {
        s += &format!("    m = max(m, x{k});\n");
    }
    s += "    var z = 0.0;\n";
    for k in 0..C {
        s += &format!("    let p{k} = exp(x{k} - m);\n    z += p{k};\n");
    }
    match dst {
        Dst::OnePerPixel => s += "    o[e0] = z;\n",
        Dst::AllStorage => {
            for k in 0..C {
                s += &format!("    o[e0 + {k}u * {S}u] = p{k} / z;\n");
            }
        }
        Dst::AllTexture => {
            for k in 0..C {
                s += &format!("    textureStore(o, xy, n * {C}u + {k}u, vec4<f32>(p{k} / z));\n");
            }
        }
    }
    s + "  }\n}\n"
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let probe = Probe::new()?;
    let device = &probe.device;
    let elems = u64::from(N * C * S);
    let logits: Vec<f32> = (0..elems).map(|i| ((i * 2654435761) % 1000) as f32 / 100.0 - 5.0).collect();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ibuf = probe.buffer(elems * 4, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
    probe.queue.write_buffer(&ibuf, 0, &bytes);
    let obuf = probe.buffer(elems * 4, wgpu::BufferUsages::STORAGE);
    let size = wgpu::Extent3d { width: W, height: W, depth_or_array_layers: N * C };
    let texture = |usage| {
        device.create_texture(&wgpu::TextureDescriptor {
            label: None,
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::R32Float,
            usage,
            view_formats: &[],
        })
    };
    let itex = texture(wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST);
    probe.queue.write_texture(
        itex.as_image_copy(),
        &bytes,
        wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(W * 4), rows_per_image: Some(W) },
        size,
    );
    let otex = texture(wgpu::TextureUsages::STORAGE_BINDING);
    let iview = itex.create_view(&Default::default());
    let oview = otex.create_view(&Default::default());
    let time = |src: Src, dst: Dst| {
        let code = kernel(src, dst);
        let pipeline = probe.pipeline(&code, "main");
        let layout = pipeline.get_bind_group_layout(0);
        let r0 = match src {
            Src::Storage => ibuf.as_entire_binding(),
            Src::Texture => wgpu::BindingResource::TextureView(&iview),
        };
        let r1 = match dst {
            Dst::AllTexture => wgpu::BindingResource::TextureView(&oview),
            _ => obuf.as_entire_binding(),
        };
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: r0 },
                wgpu::BindGroupEntry { binding: 1, resource: r1 },
            ],
        });
        probe.median_ms(|| {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(S / 2048, N, 1);
            }
            probe.queue.submit([enc.finish()]);
        })
    };
    println!("4x21x256x256 logits, a thread per pixel (8 pixels), log-sum-exp; median of 15, ms:");
    for round in 0..2 {
        println!("round {round}");
        println!("  storage loads, one store per pixel         {:8.3}", time(Src::Storage, Dst::OnePerPixel));
        println!("  texture loads, one store per pixel         {:8.3}", time(Src::Texture, Dst::OnePerPixel));
        println!("  storage loads, 21 storage stores           {:8.3}", time(Src::Storage, Dst::AllStorage));
        println!("  texture loads, 21 storage stores           {:8.3}", time(Src::Texture, Dst::AllStorage));
        println!("  texture loads, 21 storage-texture stores   {:8.3}", time(Src::Texture, Dst::AllTexture));
    }
    Ok(())
}
