// Log-sum-exp over channels, for the kernels that bind `logits` and `P`.

// One step of the online log-sum-exp: (max so far, sum of exp(x - max)) after channel value x.
// Branch-free, one exp: exp(-|x - max|) is exp(max - x) when x is the new max and exp(x - max)
// otherwise (negation is exact).
fn lse_step(st: vec2<f32>, x: f32) -> vec2<f32> {
    let e = exp(-abs(x - st.x));
    let r = select(vec2<f32>(st.x, st.y + e), vec2<f32>(x, st.y * e + 1.0), x > st.x);
    // a -inf logit (a masked class) adds nothing
    return select(r, st, is_neg_inf(x));
}

// The running max before the first channel: the lowest finite f32 (in hex: a decimal literal
// past it is an error in Chrome's WGSL compiler), so that a first logit of any finite value
// replaces it (or ties it, which adds exp(0) = 1 all the same).
const LSE_START: f32 = -0x1.fffffep+127f;

// Where the log-sum-exp of pixel s of image n is kept for a gradient pass, in a buffer from word
// o (the statistics pass's pix_out; the Lovász keys' weights, after their N C S): its max in N S
// words, the log of its sum in the next N S. The host sizes those 2 N S words (gpu/eval.rs).
fn lse_words(o: u32, n: u32, s: u32) -> vec2<u32> {
    return vec2<u32>(o + n * P.s + s, o + (P.n + n) * P.s + s);
}

// Online log-sum-exp over the channels of pixel s of image n, as (max, log of the sum) (softmax_p). The channels are loaded four at a
// time before they are combined (in channel order, so the result is that of one at a time): a
// GPU then has four loads in flight per thread instead of one.
fn log_sum_exp(n: u32, s: u32) -> vec2<f32> {
    var st = vec2<f32>(LSE_START, 0.0);
    let e0 = n * P.c * P.s + s;
    var c = 0u;
    for (; c + 4u <= P.c; c += 4u) {
        let e = e0 + c * P.s;
        let x0 = lg(e);
        let x1 = lg(e + P.s);
        let x2 = lg(e + 2u * P.s);
        let x3 = lg(e + 3u * P.s);
        st = lse_step(lse_step(lse_step(lse_step(st, x0), x1), x2), x3);
    }
    for (; c < P.c; c++) {
        st = lse_step(st, lg(e0 + c * P.s));
    }
    return vec2<f32>(st.x, log(st.y));
}
