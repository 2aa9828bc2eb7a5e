// For the compactions of CPU adapters (compact.wgsl, hinge.wgsl), which bind `keys_out` and
// `vals_out`: writes key and payload kv at slot pos when the key is kept, else to `spare`, the
// element past the segments that nothing reads (the host allocates it; racing writes there leave
// only its value undefined), so the walk is branch-free (in a build made only to measure, a store
// under a branch took the softmax compaction on llvmpipe from 16-17 to 26-31 ms). Returns the
// next slot.
//
// `spare` for the tile of index `tile` of the Lovász-Softmax compaction (compact_scatter_tiles;
// tiles counted over the whole table of segments): each tile its own cache line of a
// SPARE_LINES-line area past the segments, so the two cores' threads do not take turns on one
// line (on llvmpipe the scatter of 4x21x256x256 took 10.9-14.9
// ms with the lines against 15.6-17.6 with the one element, then 9.9-12.5 against 14.5-17.6,
// five rounds each with the builds alternating; the hinge's compaction, which drops into the one
// element, measured slower with them).
const SPARE_LINES: u32 = 256u;

fn tile_spare(spare: u32, tile: u32) -> u32 {
    return spare + (tile % SPARE_LINES) * 16u;
}

fn put_kept(pos: u32, spare: u32, kv: vec2<u32>) -> u32 {
    let kept = kv.x != 0xFFFFFFFFu;
    let at = select(spare, pos, kept);
    keys_out[at] = kv.x;
    vals_out[at] = kv.y;
    return pos + select(0u, 1u, kept);
}
