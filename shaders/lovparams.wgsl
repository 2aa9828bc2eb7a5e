// The segment table of the Lovász kernels (threshold.wgsl, compact.wgsl, lovasz.wgsl): one
// segment per (group, class), `len` elements each.

// (kept, dropped fg, dropped bg, 0) of one element by its key k and payload v (see lovasz.wgsl;
// NONE is 0xFFFFFFFF). Branch-free: a CPU adapter runs both sides of a branch on its lanes.
fn kind_of(k: u32, v: u32) -> vec4<u32> {
    let fg = (v >> 31u) == 1u;
    let dropped = k == 0xFFFFFFFFu && v != 0xFFFFFFFFu;
    return vec4<u32>(select(0u, 1u, k != 0xFFFFFFFFu), select(0u, 1u, dropped && fg), select(0u, 1u, dropped && !fg), 0u);
}

struct LovParams {
    len: u32,       // segment length
    segs: u32,      // segments
    tiles: u32,     // tiles of 2048 per segment
    per_image: u32, // 1: one group per image
}
