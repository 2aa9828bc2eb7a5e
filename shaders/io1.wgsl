// Element access of the logits and targets, one element per array entry (any size). io4.wgsl is
// the same interface over arrays of vec4 (`VEC4`): a CPU adapter (Mesa's llvmpipe) loads and
// stores storage memory lane by lane, element by element, so four elements per access cost it
// about what one does. A kernel declares `logits: Floats` and `tgt: Words` (or plain arrays).
const VEC4: bool = false;
alias Floats = array<f32>;
alias Words = array<u32>;

fn lg(i: u32) -> f32 {
    return logits[i];
}

fn tgt_at(i: u32) -> u32 {
    return tgt[i];
}

// Quad q: elements 4 q .. 4 q + 3 (the VEC4 kernels' unit; here element by element).
fn lg4(q: u32) -> vec4<f32> {
    let i = 4u * q;
    return vec4<f32>(logits[i], logits[i + 1u], logits[i + 2u], logits[i + 3u]);
}

fn tgt4(q: u32) -> vec4<u32> {
    let i = 4u * q;
    return vec4<u32>(tgt[i], tgt[i + 1u], tgt[i + 2u], tgt[i + 3u]);
}
