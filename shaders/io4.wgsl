// io1.wgsl's interface over arrays of vec4: the bindings' elements come four at a time (their
// offsets are 16-byte aligned and their lengths multiples of 4, which the host checks).
const VEC4: bool = true;
alias Floats = array<vec4<f32>>;
alias Words = array<vec4<u32>>;

fn lg(i: u32) -> f32 {
    return logits[i >> 2u][i & 3u];
}

fn tgt_at(i: u32) -> u32 {
    return tgt[i >> 2u][i & 3u];
}

fn lg4(q: u32) -> vec4<f32> {
    return logits[q];
}

fn tgt4(q: u32) -> vec4<u32> {
    return tgt[q];
}
