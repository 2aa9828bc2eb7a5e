// The input keys and payloads of the sorts, the Lovász compaction and its threshold (their
// keys_in and vals_in) element by element, the GPU kernels' layout; itemsin.wgsl and itemsin2.wgsl
// read the CPU adapters' interleaved items. Every one defines the same functions.

// Four consecutive elements: keys and payloads.
struct Quad {
    k: vec4<u32>,
    v: vec4<u32>,
}
const SORT4: bool = false;
alias SortWords = array<u32>;

fn key_in(i: u32) -> u32 {
    return keys_in[i];
}

fn val_in(i: u32) -> u32 {
    return vals_in[i];
}

fn item_in(i: u32) -> vec2<u32> {
    return vec2<u32>(keys_in[i], vals_in[i]);
}

// (for the SORT4 branches, which must type-check here too: never called here)
fn keys4_in(q: u32) -> vec4<u32> {
    return vec4<u32>(keys_in[4u * q], keys_in[4u * q + 1u], keys_in[4u * q + 2u], keys_in[4u * q + 3u]);
}

fn vals4_in(q: u32) -> vec4<u32> {
    return vec4<u32>(vals_in[4u * q], vals_in[4u * q + 1u], vals_in[4u * q + 2u], vals_in[4u * q + 3u]);
}

fn quad_in(q: u32) -> Quad {
    return Quad(keys4_in(q), vals4_in(q));
}
