// keys1.wgsl over interleaved (key, payload) items (itemsin.wgsl), the CPU adapters' layout: one
// store per element (`vals` is bound but not used).
alias KeyWords = array<vec2<u32>>;

fn put_kv(at: u32, k: u32, v: u32) {
    keys[at] = vec2<u32>(k, v);
}

fn get_kv(at: u32) -> vec2<u32> {
    return keys[at];
}

fn get_val(at: u32) -> u32 {
    return keys[at].y;
}
