// For the compactions of CPU adapters (compact.wgsl, hinge.wgsl), which bind `keys_out` and
// `vals_out`: writes key and payload kv at slot pos when the key is kept, else to `spare`, the
// element past the segments that nothing reads (the host allocates it; racing writes there leave
// only its value undefined), so the walk is branch-free. Returns the next slot.
fn put_kept(pos: u32, spare: u32, kv: vec2<u32>) -> u32 {
    let kept = kv.x != 0xFFFFFFFFu;
    let at = select(spare, pos, kept);
    keys_out[at] = kv.x;
    vals_out[at] = kv.y;
    return pos + select(0u, 1u, kept);
}
