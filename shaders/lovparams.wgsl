// The segment table of the Lovász kernels (threshold.wgsl, compact.wgsl, lovasz.wgsl and their
// CPU adapters' tile kernels): one segment per (group, class), `len` elements each; and the rules
// they share.

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
    // lovasz_weights writes weight times fg_mul (foreground) or bg_mul (background): 1, 1 for the
    // weights; -coef, coef for the gradient of a hinge whose coefficient the host knows
    // (gpu::lovasz::HingeGrad), which is then d loss / d x bit for bit as grad.wgsl computes it
    fg_mul: f32,
    bg_mul: f32,
    // the workgroup kernels' tile grid, folded past the device's limit in x: tile = x + z fold
    // (gpu::lovasz::tile_grid); a workgroup past the last tile does nothing
    fold: u32,
    // the CPU adapters' compactions (compact_local_tiles, hinge_local_tiles): elements per tile
    sort_tile: u32,
}

// The Jaccard weight of a sorted position with label counts c (fg: (1, 0), bg: (0, 1)), the
// (fg, bg) counts `run` up to it (itself included) and the segment's foreground total gts: with
// the union u = gts + run.bg (>= 1) and the intersection left i = gts - run.fg, fg 1 / u, bg
// i / ((u - 1) u), 1 at u = 1. Branch-free (a CPU adapter runs both sides of a branch on its lanes).
fn jaccard_weight(c: vec2<u32>, run: vec2<u32>, gts: u32) -> f32 {
    let u = gts + run.y;
    let i = gts - run.x;
    return select(select(1.0, f32(i) / (f32(u - 1u) * f32(u)), u > 1u), 1.0 / f32(u), c.x == 1u);
}

// (fg, bg) counts of one payload.
fn label_counts(v: u32) -> vec2<u32> {
    if v == 0xFFFFFFFFu {
        return vec2<u32>(0u);
    }
    return select(vec2<u32>(0u, 1u), vec2<u32>(1u, 0u), (v >> 31u) == 1u);
}
