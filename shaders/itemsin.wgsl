// sortin1.wgsl's interface over interleaved items, the layout of the CPU adapters' sorts: element
// i is keys_in[i] = (key, payload), one load for both (on llvmpipe every access costs per lane,
// whatever its width). vals_in is bound but not read.
const SORT4: bool = false;
// (sortin1.wgsl)
struct Quad {
    k: vec4<u32>,
    v: vec4<u32>,
}

alias SortWords = array<vec2<u32>>;

fn key_in(i: u32) -> u32 {
    return keys_in[i].x;
}

fn val_in(i: u32) -> u32 {
    return keys_in[i].y;
}

fn item_in(i: u32) -> vec2<u32> {
    return keys_in[i];
}

// (for the SORT4 branches, which must type-check here too: never called here)
fn keys4_in(q: u32) -> vec4<u32> {
    return vec4<u32>(key_in(4u * q), key_in(4u * q + 1u), key_in(4u * q + 2u), key_in(4u * q + 3u));
}

fn vals4_in(q: u32) -> vec4<u32> {
    return vec4<u32>(val_in(4u * q), val_in(4u * q + 1u), val_in(4u * q + 2u), val_in(4u * q + 3u));
}

fn quad_in(q: u32) -> Quad {
    return Quad(keys4_in(q), vals4_in(q));
}
