// The parameters and bindings shared by the two sorts (radix.wgsl, bitonic.wgsl): one table of
// segments, keys and u32 payloads, sorted into keys_out/vals_out.

struct SortParams {
    len: u32,    // segment stride: the length of every segment, unless varlen
    segs: u32,   // segments
    tiles: u32,  // tiles per segment stride
    shift: u32,  // digit shift of this pass
    varlen: u32, // 1: segment s sorts only its first seglen[s].w keys (radix: the rest is left in place;
                 // bitonic: the rest becomes padding); 2 (the radix tile kernels' first pass over
                 // a local compaction, compact.wgsl, hinge.wgsl): tile t of segment s holds
                 // seglen[s * tiles + t].w keys from its start
    bits: u32,   // the radix tile kernels' digit width (8 or 11 bits; the workgroup kernels' is 8)
    tile: u32,   // the radix tile kernels' keys per tile
    fold: u32,   // the workgroup kernels' tile grid past the device's limit: tile = x + z fold
}

@group(0) @binding(0) var<uniform> SP: SortParams;
// (`SortWords`: sortin1.wgsl, or the CPU adapters' interleaved items, itemsin.wgsl, itemsin2.wgsl)
@group(0) @binding(1) var<storage, read> keys_in: SortWords;
@group(0) @binding(2) var<storage, read> vals_in: SortWords;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>; // [seg][tile][digit]
@group(0) @binding(4) var<storage, read_write> totals: array<u32>; // [seg][digit]: start of each digit
// (`SortOut`: sortout1.wgsl, or itemsout.wgsl's interleaved items, where vals_out is not written)
@group(0) @binding(5) var<storage, read_write> keys_out: SortOut;
@group(0) @binding(6) var<storage, read_write> vals_out: array<u32>;
@group(0) @binding(7) var<storage, read> seglen: array<vec4<u32>>; // [seg].w: keys to sort (varlen 1; 2: [seg][tile].w)

// Keys to sort in segment `seg`.
fn seg_len(seg: u32) -> u32 {
    if SP.varlen == 1u {
        return min(seglen[seg].w, SP.len);
    }
    return SP.len;
}
