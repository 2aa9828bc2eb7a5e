// Final reduction of the statistics pass's confusion counts: per (image, cell) the count blocks'
// u32 counts (P.tiles: the blocks per image, stats.wgsl's cspan) added in a fixed order into a
// 64-bit total (low and high words), exact at any size.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> cnt: array<u32>;
@group(0) @binding(2) var<storage, read_write> total: array<u32>;

@compute @workgroup_size(256)
fn count_reduce(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // cells per (image, block): C x C (softmax) or 2 x 2 per channel (sigmoid)
    let cells = select(P.c * 4u, P.c * P.c, SOFTMAX);
    let i = gid.x;
    // (images past the device's rows fold into z)
    let n = wid.y + wid.z * nwg.y;
    if i >= cells || n >= P.n {
        return;
    }
    var lo = 0u;
    var hi = 0u;
    for (var t = 0u; t < P.tiles; t++) {
        let v = cnt[(n * P.tiles + t) * cells + i];
        let s = lo + v;
        if s < lo {
            hi += 1u;
        }
        lo = s;
    }
    total[(n * cells + i) * 2u] = lo;
    total[(n * cells + i) * 2u + 1u] = hi;
}
