// The segment table of the Lovász kernels (threshold.wgsl, compact.wgsl, lovasz.wgsl): one
// segment per (group, class), `len` elements each.

// (kept, dropped fg, dropped bg, 0) of one element by its key k and payload v (see lovasz.wgsl;
// NONE is 0xFFFFFFFF). Branch-free: a CPU adapter runs both sides of a branch on its lanes.
fn kind_of(k: u32, v: u32) -> vec4<u32> {
    let fg = (v >> 31u) == 1u;
    let dropped = k == 0xFFFFFFFFu && v != 0xFFFFFFFFu;
    return vec4<u32>(select(0u, 1u, k != 0xFFFFFFFFu), select(0u, 1u, dropped && fg), select(0u, 1u, dropped && !fg), 0u);
}

// Lovász-Softmax's drop rule (threshold.wgsl): the threshold of a segment from its two words
// (the largest foreground key; the complement of the smallest key, when it has no foreground,
// which keeps the smallest key's ties), and the key k with payload v after the drop.
fn drop_threshold(fg: u32, min_complement: u32) -> u32 {
    return select(fg, ~min_complement, fg == 0u);
}

fn dropped_key(k: u32, v: u32, t: u32) -> u32 {
    return select(k, 0xFFFFFFFFu, v != 0xFFFFFFFFu && (v >> 31u) == 0u && k > t);
}

struct LovParams {
    len: u32,       // segment length
    segs: u32,      // segments
    tiles: u32,     // tiles of 2048 per segment
    per_image: u32, // 1: one group per image
}
