// sortout1.wgsl's interface over interleaved items (itemsin.wgsl), the CPU adapters' layout:
// one store per item. vals_out is bound but not written.
alias SortOut = array<vec2<u32>>;

fn put_item(at: u32, k: u32, v: u32) {
    keys_out[at] = vec2<u32>(k, v);
}

fn get_item(at: u32) -> vec2<u32> {
    return keys_out[at];
}
