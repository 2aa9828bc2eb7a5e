// Final reduction of the statistics partials: one workgroup per (class, image) adds the tiles in
// a fixed tree order (deterministic, pairwise-accurate) and writes sums[n][c][k].

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;

const RWG: u32 = 64u;

var<workgroup> red: array<f32, 1024>; // K * RWG

@compute @workgroup_size(64)
fn reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = wid.x;
    let n = wid.y;
    var acc: array<f32, 16>;
    for (var k = 0u; k < K; k++) {
        acc[k] = 0.0;
    }
    for (var t = lid; t < P.tiles; t += RWG) {
        let o = ((n * P.tiles + t) * P.c + c) * K;
        for (var k = 0u; k < P.nk; k++) {
            acc[k] += partials[o + k];
        }
    }
    for (var k = 0u; k < P.nk; k++) {
        red[k * RWG + lid] = acc[k];
    }
    workgroupBarrier();
    for (var stride = RWG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            for (var k = 0u; k < P.nk; k++) {
                red[k * RWG + lid] += red[k * RWG + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        for (var k = 0u; k < K; k++) {
            var v = 0.0;
            if k < P.nk {
                v = red[k * RWG];
            }
            sums[(n * P.c + c) * K + k] = v;
        }
    }
}
