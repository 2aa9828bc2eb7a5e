// The thread-per-tile kernels of CPU adapters (radix_scatter_tiles and its kin in compact.wgsl,
// hinge.wgsl, threshold.wgsl, lovasz.wgsl): workgroup (tile group, segment), a thread per tile of
// TILE elements (the radix kernels': SP.tile keys, radix.wgsl).
const STW: u32 = 8u; // tiles per workgroup
const TILE: u32 = 2048u;

// This thread's tile of segment wid.y (segments `stride` elements apart): (tile, its first
// element, its elements among the segment's first n: 0 past them).
fn tile_span(lid: u32, wid: vec3<u32>, stride: u32, n: u32) -> vec3<u32> {
    let tile = wid.x * STW + lid;
    let first = tile * TILE;
    return vec3<u32>(tile, wid.y * stride + first, select(0u, min(TILE, n - first), first < n));
}
