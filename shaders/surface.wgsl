// Surface metrics on the device: the hard labels of each pixel, the boundaries of the predicted
// and target masks of each (image, selected class), and an exact Euclidean distance transform of
// those boundaries, one pass per axis (the lower envelope of parabolas of Felzenszwalb and
// Huttenlocher, one thread per line).

struct SurfParams {
    n: u32,      // images
    c: u32,      // channels
    s: u32,      // voxels per image
    k: u32,      // selected classes
    ndim: u32,   // spatial axes (1 to 3)
    d0: u32,     // axis sizes, array order
    d1: u32,
    d2: u32,
    st0: u32,    // axis strides (voxels)
    st1: u32,
    st2: u32,
    len: u32,    // edt_line: the axis's size
    stride: u32, // edt_line: the axis's stride
    lines: u32,  // edt_line: lines per field
    fields: u32, // edt_line: fields (two per image and selected class)
    thr: f32,    // sigmoid: a logit >= thr is positive
    h: f32,      // edt_line: the axis's spacing
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> SP: SurfParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> tgt: array<u32>;
@group(0) @binding(3) var<storage, read> sel: array<u32>;
@group(0) @binding(4) var<storage, read_write> labs: array<u32>;
@group(0) @binding(5) var<storage, read_write> fa: array<f32>;
@group(0) @binding(6) var<storage, read_write> fb: array<f32>;
@group(0) @binding(7) var<storage, read_write> edges: array<u32>;
// edt_line: each line's envelope (parabola roots and where each starts to be lowest), kept at the
// line's own voxels: two words per voxel of the fields
@group(0) @binding(8) var<storage, read_write> env: array<u32>;

const BIG: f32 = 1.0e30; // no seed

// Entry i of the envelope of the line starting at voxel `off` (root index, start of its span).
fn env_at(off: u32, i: u32) -> u32 {
    return 2u * (off + i * SP.stride);
}

fn item(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.z * nwg.x) * 256u + lid;
}

// Softmax: the argmax (ties to the lowest class) and the target of each pixel, as
// `prediction | target << 16`, or INVALID where ignored.
@compute @workgroup_size(256)
fn surf_labels(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = item(wid, nwg, lid);
    if i >= SP.n * SP.s {
        return;
    }
    let ni = i / SP.s;
    let v = i % SP.s;
    let t = tgt[i];
    if t == INVALID {
        labs[i] = INVALID;
        return;
    }
    let best = argmax(ni * SP.c * SP.s + v, SP.s, SP.c);
    labs[i] = best | (t << 16u);
}

// (prediction, target) membership of voxel v of image ni in selected class j; ignored voxels are
// in neither.
fn mask(ni: u32, j: u32, v: u32) -> vec2<u32> {
    let k = sel[j];
    if SOFTMAX {
        let w = labs[ni * SP.s + v];
        if w == INVALID {
            return vec2<u32>(0u);
        }
        return vec2<u32>(select(0u, 1u, (w & 0xFFFFu) == k), select(0u, 1u, (w >> 16u) == k));
    }
    let e = (ni * SP.c + k) * SP.s + v;
    let tw = tgt[e];
    if tw == INVALID {
        return vec2<u32>(0u);
    }
    return vec2<u32>(select(0u, 1u, logits[e] >= SP.thr), select(0u, 1u, bitcast<f32>(tw) == 1.0));
}

fn axis(a: u32) -> vec2<u32> {
    if a == 0u {
        return vec2<u32>(SP.d0, SP.st0);
    }
    if a == 1u {
        return vec2<u32>(SP.d1, SP.st1);
    }
    return vec2<u32>(SP.d2, SP.st2);
}

// Boundaries: voxels of a mask with a face neighbour outside it (the array's edge counts as
// outside). Field 2 q of `fa` seeds the prediction's boundary, field 2 q + 1 the target's
// (0 on the boundary, BIG elsewhere); `edges` holds both flags.
@compute @workgroup_size(256)
fn surf_edges(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = item(wid, nwg, lid);
    if i >= SP.n * SP.k * SP.s {
        return;
    }
    let q = i / SP.s; // image * k + selected class
    let v = i % SP.s;
    let ni = q / SP.k;
    let j = q % SP.k;
    let m = mask(ni, j, v);
    var out_p = false;
    var out_g = false;
    for (var a = 0u; a < SP.ndim; a++) {
        let ds = axis(a);
        let coord = (v / ds.y) % ds.x;
        if coord == 0u || coord + 1u == ds.x {
            out_p = true;
            out_g = true;
        } else {
            let lo = mask(ni, j, v - ds.y);
            let hi = mask(ni, j, v + ds.y);
            out_p = out_p || lo.x == 0u || hi.x == 0u;
            out_g = out_g || lo.y == 0u || hi.y == 0u;
        }
    }
    let ep = m.x == 1u && out_p;
    let eg = m.y == 1u && out_g;
    fa[(2u * q) * SP.s + v] = select(BIG, 0.0, ep);
    fa[(2u * q + 1u) * SP.s + v] = select(BIG, 0.0, eg);
    edges[q * SP.s + v] = select(0u, 1u, ep) | select(0u, 2u, eg);
}

// One axis of the distance transform: for each line of each field, fb = min over the line of
// ((p - q) h)^2 + fa[q], by the lower envelope of the parabolas rooted at the seeded q.
@compute @workgroup_size(256)
fn edt_line(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = item(wid, nwg, lid);
    if i >= SP.fields * SP.lines {
        return;
    }
    let q = i / SP.lines;
    let l = i % SP.lines;
    let off = q * SP.s + (l / SP.stride) * SP.stride * SP.len + (l % SP.stride);
    // positions in voxel units: the parabola rooted at q is f[q] + h^2 (p - q)^2, so the
    // intersections stay small numbers (squares of large positions would lose f32 precision)
    let h2 = SP.h * SP.h;
    var cnt = 0u;
    for (var p = 0u; p < SP.len; p++) {
        let f = fa[off + p * SP.stride];
        if f >= 0.5 * BIG {
            continue;
        }
        loop {
            if cnt == 0u {
                env[env_at(off, 0u)] = p;
                env[env_at(off, 0u) + 1u] = bitcast<u32>(-BIG);
                cnt = 1u;
                break;
            }
            let r = env[env_at(off, cnt - 1u)];
            let fr = fa[off + r * SP.stride];
            let s = ((f - fr) / (h2 * f32(p - r)) + f32(p + r)) * 0.5;
            if s <= bitcast<f32>(env[env_at(off, cnt - 1u) + 1u]) {
                cnt -= 1u;
            } else {
                env[env_at(off, cnt)] = p;
                env[env_at(off, cnt) + 1u] = bitcast<u32>(s);
                cnt += 1u;
                break;
            }
        }
    }
    if cnt == 0u {
        for (var p = 0u; p < SP.len; p++) {
            fb[off + p * SP.stride] = BIG;
        }
        return;
    }
    var k = 0u;
    for (var p = 0u; p < SP.len; p++) {
        while k + 1u < cnt && bitcast<f32>(env[env_at(off, k + 1u) + 1u]) < f32(p) {
            k += 1u;
        }
        let r = env[env_at(off, k)];
        // |p - r| in integers, then scaled
        let dx = f32(max(p, r) - min(p, r)) * SP.h;
        fb[off + p * SP.stride] = dx * dx + fa[off + r * SP.stride];
    }
}
