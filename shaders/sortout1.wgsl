// Where the sorts and the Lovász compactions write (key, payload) items: keys_out and vals_out,
// two arrays (the GPU kernels). itemsout.wgsl: one array of interleaved items.
alias SortOut = array<u32>;

fn put_item(at: u32, k: u32, v: u32) {
    keys_out[at] = k;
    vals_out[at] = v;
}

fn get_item(at: u32) -> vec2<u32> {
    return vec2<u32>(keys_out[at], vals_out[at]);
}
