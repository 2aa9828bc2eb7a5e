//! Times the memory floors of a softmax pass on the default adapter, over logits laid out as a
//! 4x21x256x256 batch (22 MB): the copy probe's copy over vec4 and over f32, a thread per pixel
//! reading each of its 21 logits (one store per pixel, then a store per logit, then with an `exp`
//! per logit), and the same pass with 6 per-class coefficients per thread (126 values, as the
//! softmax gradient's region coefficients) computed, loaded from a storage buffer, from a uniform
//! buffer, or (where the device has subgroup operations) by one lane of each subgroup and
//! broadcast: `cargo run --release --example softmax_probe`. On lavapipe a storage load is
//! a loop over the SIMD lanes, so these say what a kernel's loads and stores cost before any
//! arithmetic (see the README's lavapipe notes). Then the class planes over `vec4` in runs: a
//! copy of the 21 planes with each thread's quads of a plane in runs of 1, 4 or 16 (and with 1 at
//! a plane stride that is not a multiple of 4 KiB), and dice's softmax gradient (one-hot lines,
//! the log-sum-exp and labels given) in the register kernel's pattern (a thread per pixel, 16
//! pixels) against two walks over the classes in runs of 4 or 8 quads.
mod probe;

use probe::Probe;
use segloss::wgpu;

const C: usize = 21;
const S: u32 = 65536;
const N: u32 = 4;
/// Quads added to a plane's stride to take it off a multiple of 4 KiB.
const PAD4: u32 = 4;
const HEADER: &str = "@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
";

/// A thread per pixel, `pix` pixels each, a workgroup row per image; `body` gets the pixel's
/// first element `e0` and its logits `x0..x20`.
fn per_pixel(extra: &str, prologue: &str, pix: u32, body: &str) -> String {
    let mut s = format!("{HEADER}{extra}@compute @workgroup_size(256)\n");
    s += "fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {\n";
    s += &format!("  let n = wid.y;\n{prologue}  for (var i = 0u; i < {pix}u; i++) {{\n");
    s += &format!("    let e0 = n * {C}u * {S}u + wid.x * {}u + i * 256u + lid;\n", 256 * pix);
    for k in 0..C {
        s += &format!("    let x{k} = a[e0 + {k}u * {S}u];\n");
    }
    s += body;
    s + "  }\n}\n"
}

/// The softmax of each pixel: its logits minus their max (`exp`: exponentiated), summed, and
/// written back per logit (`store_all`) or as the pixel's sum only.
fn softmax(exp: bool, store_all: bool) -> String {
    let mut b = String::from("    var m = x0;\n");
    for k in 1..C {
        b += &format!("    m = max(m, x{k});\n");
    }
    b += "    var z = 0.0;\n";
    for k in 0..C {
        let v = if exp { format!("exp(x{k} - m)") } else { format!("x{k} - m") };
        b += &format!("    let p{k} = {v};\n    z += p{k};\n");
    }
    if store_all {
        for k in 0..C {
            b += &format!("    o[e0 + {k}u * {S}u] = p{k} - z;\n");
        }
    } else {
        b += "    o[e0] = z;\n";
    }
    per_pixel("", "", 8, &b)
}

/// Six coefficients per class and thread, from `source` ("storage", "uniform" or computed), used
/// at each logit of the thread's 16 pixels.
fn coefficients(source: &str) -> String {
    let extra = match source {
        "storage" => "@group(0) @binding(2) var<storage, read> cs: array<f32>;\n",
        "uniform" => "@group(0) @binding(3) var<uniform> cu: array<vec4<f32>, 1024>;\n",
        // the first active lane of each subgroup loads, the others take its value
        "broadcast" => concat!(
            "@group(0) @binding(2) var<storage, read> cs: array<f32>;\n",
            "fn bc(i: u32, me: u32) -> f32 {\n",
            "  var v = 0.0;\n",
            "  if subgroupBroadcastFirst(me) == me { v = cs[i]; }\n",
            "  return subgroupBroadcastFirst(v);\n",
            "}\n"
        ),
        _ => "",
    };
    let mut pro = String::new();
    for k in 0..C {
        for j in 0..6 {
            let idx = format!("(n * {C}u + {k}u) * 6u + {j}u");
            let v = match source {
                "storage" => format!("cs[{idx}]"),
                "uniform" => format!("cu[({idx}) / 4u][({idx}) % 4u]"),
                "broadcast" => format!("bc({idx}, lid)"),
                _ => format!("f32({idx})"),
            };
            pro += &format!("  let c{k}_{j} = {v};\n");
        }
    }
    let mut b = String::new();
    for k in 0..C {
        b += &format!("    o[e0 + {k}u * {S}u] = x{k} * c{k}_0 + c{k}_1 * c{k}_2 - c{k}_3 * x{k} * c{k}_4 + c{k}_5;\n");
    }
    per_pixel(extra, &pro, 16, &b)
}

/// Quad j (< r) of this thread in its workgroup's 256 r quads of a plane: each SIMD vector of 8
/// lanes walks 8 r consecutive quads.
fn run_quad(r: u32, j: u32) -> String {
    format!("(wid.x * {}u + (lid / 8u) * {}u + {j}u * 8u + (lid % 8u))", 256 * r, 8 * r)
}

const WG_MAIN: &str = "@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let n = wid.y;
";

/// A copy of the 21 class planes over vec4, the classes outermost in each thread, r quads of a
/// plane per thread; planes `stride` quads apart.
fn planes_in_runs(r: u32, stride: u32) -> String {
    let mut s = String::from(
        "@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> o: array<vec4<f32>>;
",
    );
    s += WG_MAIN;
    s += &format!("  for (var k = 0u; k < {C}u; k++) {{\n    let b = (n * {C}u + k) * {stride}u;\n");
    for j in 0..r {
        s += &format!("    o[b + {0}] = a[b + {0}];\n", run_quad(r, j));
    }
    s + "  }\n}\n"
}

/// Two coefficients per class (dice's one-hot lines without a slope), computed.
fn lines() -> String {
    (0..C).map(|k| format!("  let a{k} = f32({k}u) * 0.01 + 0.1;\n  let b{k} = f32({k}u) * -0.02 + 0.3;\n")).collect()
}

/// Dice's softmax gradient in the register kernel's pattern: a thread per pixel, `pix` pixels,
/// each pixel's 21 logits loaded once, a dot product, 21 stores.
fn grad_pixels(pix: u32) -> String {
    let mut s = String::from(HEADER);
    s += "@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> lab: array<u32>;
";
    s += WG_MAIN;
    s += &lines();
    s += &format!("  for (var i = 0u; i < {pix}u; i++) {{\n    let sp = wid.x * {}u + i * 256u + lid;\n", 256 * pix);
    s += &format!("    let e0 = n * {C}u * {S}u + sp;\n    let l = lse[n * {S}u + sp];\n    let t = lab[n * {S}u + sp];\n    var dot = 0.0;\n");
    for k in 0..C {
        s += &format!("    let p{k} = exp(a[e0 + {k}u * {S}u] - l);\n    let u{k} = select(b{k}, a{k}, t == {k}u);\n    dot += p{k} * u{k};\n");
    }
    for k in 0..C {
        s += &format!("    o[e0 + {k}u * {S}u] = p{k} * (u{k} - dot);\n");
    }
    s + "  }\n}\n"
}

/// The same gradient over quads, two walks over the classes (the dot product, then the
/// gradient), each thread's r quads of a plane in runs.
fn grad_runs(r: u32) -> String {
    let s4 = S / 4;
    let mut s = String::from(
        "@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> lse: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> lab: array<vec4<u32>>;
",
    );
    s += WG_MAIN;
    s += &lines();
    for j in 0..r {
        let q = run_quad(r, j);
        s += &format!(
            "  let l{j} = lse[n * {s4}u + {q}];\n  let t{j} = lab[n * {s4}u + {q}];\n  var d{j} = vec4<f32>(0.0);\n"
        );
    }
    let u = |k: usize, j: u32| format!("select(vec4<f32>(b{k}), vec4<f32>(a{k}), t{j} == vec4<u32>({k}u))");
    for k in 0..C {
        s += &format!("  {{\n    let b = (n * {C}u + {k}u) * {s4}u;\n");
        for j in 0..r {
            s += &format!("    d{j} += exp(a[b + {}] - l{j}) * {};\n", run_quad(r, j), u(k, j));
        }
        s += "  }\n";
    }
    for k in 0..C {
        s += &format!("  {{\n    let b = (n * {C}u + {k}u) * {s4}u;\n");
        for j in 0..r {
            let q = run_quad(r, j);
            s += &format!("    o[b + {q}] = exp(a[b + {q}] - l{j}) * ({} - d{j});\n", u(k, j));
        }
        s += "  }\n";
    }
    s + "}\n"
}

fn copy(vec4: bool) -> String {
    let t = if vec4 { "vec4<f32>" } else { "f32" };
    let per = if vec4 {
        "let e = wid.x * 256u + lid; o[e] = a[e];"
    } else {
        "for (var i = 0u; i < 8u; i++) { let e = wid.x * 2048u + i * 256u + lid; o[e] = a[e]; }"
    };
    format!(
        "@group(0) @binding(0) var<storage, read> a: array<{t}>;
@group(0) @binding(1) var<storage, read_write> o: array<{t}>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {{ {per} }}
"
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let probe = Probe::new()?;
    let elems = u64::from(N) * C as u64 * u64::from(S);
    // (room for planes 16 floats apart more than S: PADDED)
    let room = u64::from(N) * C as u64 * u64::from(S + 4 * PAD4);
    let pixels = u64::from(N) * u64::from(S);
    let bufs = [
        probe.buffer(room * 4, wgpu::BufferUsages::STORAGE),
        probe.buffer(room * 4, wgpu::BufferUsages::STORAGE),
        probe.buffer(16384, wgpu::BufferUsages::STORAGE),
        probe.buffer(16384, wgpu::BufferUsages::UNIFORM),
        probe.buffer(pixels * 4, wgpu::BufferUsages::STORAGE),
        probe.buffer(pixels * 4, wgpu::BufferUsages::STORAGE),
    ];
    let time = |src: &str, groups: (u32, u32)| probe.time(src, "main", groups, &bufs);
    let e = elems as u32;
    println!("4x21x256x256 logits, median of 15, ms:");
    println!("  copy over vec4 (the copy probe)          {:8.3}", time(&copy(true), (e / 1024, 1)));
    println!("  copy over f32                            {:8.3}", time(&copy(false), (e / 2048, 1)));
    println!("  per pixel: 21 loads, one store           {:8.3}", time(&softmax(false, false), (S / 2048, N)));
    println!("  per pixel: 21 loads, 21 stores           {:8.3}", time(&softmax(false, true), (S / 2048, N)));
    println!("  same, an exp per logit                   {:8.3}", time(&softmax(true, true), (S / 2048, N)));
    println!("  + 126 coefficients per thread, computed  {:8.3}", time(&coefficients("computed"), (S / 4096, N)));
    println!("  + 126 coefficients per thread, storage   {:8.3}", time(&coefficients("storage"), (S / 4096, N)));
    println!("  + 126 coefficients per thread, uniform   {:8.3}", time(&coefficients("uniform"), (S / 4096, N)));
    if probe.subgroups {
        println!("  + 126 coefficients per thread, one lane  {:8.3}", time(&coefficients("broadcast"), (S / 4096, N)));
    }
    let s4 = S / 4;
    for r in [1u32, 4, 16] {
        println!(
            "  21 planes over vec4, runs of {r:>2} quads    {:8.3}",
            time(&planes_in_runs(r, s4), (s4 / 256 / r, N))
        );
    }
    println!("  same, runs of 1, planes off 4 KiB        {:8.3}", time(&planes_in_runs(1, s4 + PAD4), (s4 / 256, N)));
    println!("  dice gradient, a thread per pixel (16)   {:8.3}", time(&grad_pixels(16), (S / 4096, N)));
    for r in [4u32, 8] {
        println!("  dice gradient, two walks, runs of {r} quads {:8.3}", time(&grad_runs(r), (s4 / 256 / r, N)));
    }
    Ok(())
}
