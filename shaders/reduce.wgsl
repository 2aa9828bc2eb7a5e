// Final reduction of the statistics partials: one workgroup per (class, image) adds the tiles in
// a fixed tree order (deterministic, pairwise-accurate) and writes sums[n][c][0..16] as 4 vec4s.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> sums: array<vec4<f32>>;

const RWG: u32 = 64u;

var<workgroup> red: array<vec4<f32>, 256>; // 4 * RWG

@compute @workgroup_size(64)
fn reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = wid.x;
    // (images past the device's rows fold into z)
    let n = wid.y + wid.z * nwg.y;
    if n >= P.n {
        return;
    }
    var nq = 2u + (NTERMS + 1u) / 2u;
    if TPMIN {
        nq = 4u; // sum min(p, g) is channel 15
    }
    var acc: array<vec4<f32>, 4>;
    for (var q = 0u; q < 4u; q++) {
        acc[q] = vec4<f32>(0.0);
    }
    // (the statistics pass's subgroups, when it had them, wrote P.chunks partials per tile)
    let slots = P.tiles * max(P.chunks, 1u);
    for (var t = lid; t < slots; t += RWG) {
        let o = ((n * slots + t) * P.c + c) * 4u;
        for (var q = 0u; q < nq; q++) {
            acc[q] += partials[o + q];
        }
    }
    for (var q = 0u; q < 4u; q++) {
        red[q * RWG + lid] = acc[q];
    }
    workgroupBarrier();
    for (var stride = RWG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            for (var q = 0u; q < nq; q++) {
                red[q * RWG + lid] += red[q * RWG + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if lid < 4u {
        sums[(n * P.c + c) * 4u + lid] = red[lid * RWG];
    }
}
