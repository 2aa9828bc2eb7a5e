// For the compactions of CPU adapters (compact.wgsl, hinge.wgsl), which write interleaved items
// (itemsout.wgsl, put_item): a thread walks its tile in order and writes every element at its slot `pos`, which
// moves on only past a kept one, so a dropped element is overwritten by the next kept one and the
// walk is a branch-free stream of stores to neighbouring slots. A tile that drops anything owns
// one slot past its kept elements (its guard, see guard_slots): its last write there would
// otherwise land on the next tile's first slot, which another thread writes. The walk ends by
// writing NONE to the guard, so the sort takes the guards as keys that sort after every kept one
// and the passes after the sort read only the kept count. (On llvmpipe, the hinge's compaction at
// 8x1x512x512 took 5.3-6.2 ms this way against 9.0-11.3 with the dropped elements written to one
// spare element past the segments; a store under a branch was slower still.)

// The slots of a tile with `kept` of its `n` elements kept: one more, the guard, where it drops any.
fn guard_slots(kept: u32, n: u32) -> u32 {
    return kept + select(0u, 1u, kept < n);
}

// Writes key and payload kv at slot pos; returns the next slot.
fn put_kept(pos: u32, kv: vec2<u32>) -> u32 {
    put_item(pos, kv.x, kv.y);
    return pos + select(0u, 1u, kv.x != 0xFFFFFFFFu);
}

// After the walk of a tile of `n` elements from slot `first` to slot `pos`: NONE into its guard
// (a thread's own earlier writes there are overwritten: program order).
fn put_guard(first: u32, pos: u32, n: u32) {
    if pos - first < n {
        put_item(pos, 0xFFFFFFFFu, 0xFFFFFFFFu);
    }
}
