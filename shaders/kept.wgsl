// For the compactions of CPU adapters (compact.wgsl, hinge.wgsl), which write interleaved items
// (itemsout.wgsl, put_item): a thread walks its tile in order and writes every element at its
// slot `pos`, which moves on only past a kept one, so a dropped element is overwritten by the next
// kept one and the walk is a branch-free stream of stores to neighbouring slots, all within the
// thread's own tile. (On llvmpipe, the hinge's compaction at 8x1x512x512 took 5.3-6.2 ms this way
// against 9.0-11.3 with the dropped elements written to one spare element past the segments; a
// store under a branch was slower still.)

// Writes key and payload kv at slot pos; returns the next slot.
fn put_kept(pos: u32, kv: vec2<u32>) -> u32 {
    put_item(pos, kv.x, kv.y);
    return pos + select(0u, 1u, kv.x != 0xFFFFFFFFu);
}
