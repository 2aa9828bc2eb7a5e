// How the Lovász kernels store (lovasz_keys.wgsl) and read (lovasz.wgsl) the keys and payloads
// (their `keys` and `vals`): two arrays (the GPU kernels). keysitems.wgsl: interleaved items, the
// CPU adapters' layout.
alias KeyWords = array<u32>;

fn put_kv(at: u32, k: u32, v: u32) {
    keys[at] = k;
    vals[at] = v;
}

fn get_kv(at: u32) -> vec2<u32> {
    return vec2<u32>(keys[at], vals[at]);
}

fn get_val(at: u32) -> u32 {
    return vals[at];
}
