// itemsin.wgsl's interleaved items read two per load, as vec4 (key, payload, key, payload): the
// CPU adapters' radix count and Lovász tile kernels (segments of 4k items, slices on 16 bytes:
// the host checks). Four keys or payloads (a quad) take two loads.
const SORT4: bool = true;
// (sortin1.wgsl)
struct Quad {
    k: vec4<u32>,
    v: vec4<u32>,
}

alias SortWords = array<vec4<u32>>;

fn item_in(i: u32) -> vec2<u32> {
    let h = keys_in[i >> 1u];
    return select(h.xy, h.zw, (i & 1u) == 1u);
}

fn key_in(i: u32) -> u32 {
    return item_in(i).x;
}

fn val_in(i: u32) -> u32 {
    return item_in(i).y;
}

fn quad_in(q: u32) -> Quad {
    let a = keys_in[2u * q];
    let b = keys_in[2u * q + 1u];
    return Quad(vec4<u32>(a.x, a.z, b.x, b.z), vec4<u32>(a.y, a.w, b.y, b.w));
}

fn keys4_in(q: u32) -> vec4<u32> {
    return quad_in(q).k;
}

fn vals4_in(q: u32) -> vec4<u32> {
    return quad_in(q).v;
}
