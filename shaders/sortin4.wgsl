// sortin1.wgsl's interface over arrays of vec4: the CPU adapters' radix count, Lovász compaction
// and threshold read four keys per load (segments of 4k keys, slices on 16 bytes: the host
// checks).
const SORT4: bool = true;
// (sortin1.wgsl)
struct Quad {
    k: vec4<u32>,
    v: vec4<u32>,
}

alias SortWords = array<vec4<u32>>;

fn key_in(i: u32) -> u32 {
    return keys_in[i >> 2u][i & 3u];
}

fn val_in(i: u32) -> u32 {
    return vals_in[i >> 2u][i & 3u];
}

fn item_in(i: u32) -> vec2<u32> {
    return vec2<u32>(key_in(i), val_in(i));
}

fn quad_in(q: u32) -> Quad {
    return Quad(keys_in[q], vals_in[q]);
}

fn keys4_in(q: u32) -> vec4<u32> {
    return keys_in[q];
}

fn vals4_in(q: u32) -> vec4<u32> {
    return vals_in[q];
}
