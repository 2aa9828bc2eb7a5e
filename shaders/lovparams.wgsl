// The segment table of the Lovász kernels (threshold.wgsl, compact.wgsl, lovasz.wgsl): one
// segment per (group, class), `len` elements each.

struct LovParams {
    len: u32,       // segment length
    segs: u32,      // segments
    tiles: u32,     // tiles of 2048 per segment
    per_image: u32, // 1: one group per image
}
