// Log-sum-exp over channels, for the kernels that bind `logits` and `P`.

// Online log-sum-exp over the channels of pixel s of image n.
fn log_sum_exp(n: u32, s: u32) -> f32 {
    var m = -3.0e38;
    var acc = 0.0;
    for (var c = 0u; c < P.c; c++) {
        let x = logits[(n * P.c + c) * P.s + s];
        if x > m {
            acc = acc * exp(m - x) + 1.0;
            m = x;
        } else if !is_neg_inf(x) {
            // a -inf logit (a masked class) adds nothing
            acc += exp(x - m);
        }
    }
    return m + log(acc);
}
