// The checks of inputs that arrive unchecked (buffer inputs), VALIDATE's (common.wgsl), for the
// kernels that read every element once: the statistics pass (stats.wgsl), and where Lovász losses
// are all an input needs, their key pass (lovasz_keys.wgsl; on CPU adapters the hinge's key
// count, hinge.wgsl). The kernel declares `status: array<atomic<u32>>` (the bad-input flags, then
// per flag the smallest offending index), binds `P` and `tgt`, and calls flush_bad at its end.
// With each pixel's logits in registers: checks_regs.wgsl (checks_noregs.wgsl's stand-in
// elsewhere).

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7F800000u) != 0x7F800000u;
}

// Bad input this thread found: per flag bit i (V_*, bits 0 to 5), 0xFFFFFFFF minus the smallest
// offending element index, 0 where none (bits 0-3 in bad_lo, 4-5 in bad_hi). The checks add to
// them branch-free, and the thread reports them once, at its end (flush_bad): on llvmpipe, a
// branch per check with the atomics inside took the statistics pass of a device-checked dice at
// 8x1x512x512 from 3.3 to 6.4 ms.
var<private> bad_lo: vec4<u32>;
var<private> bad_hi: vec4<u32>;

// Notes bad input of flag `bit` (a constant) at element idx where `cond`.
fn flag_if(cond: bool, bit: u32, idx: u32) {
    let v = select(0u, 0xFFFFFFFFu - idx, cond);
    let i = firstTrailingBit(bit);
    if i < 4u {
        bad_lo[i] = max(bad_lo[i], v);
    } else {
        bad_hi[i - 4u] = max(bad_hi[i - 4u], v);
    }
}

// Flag bit i into status[0] and its smallest offending index into status[1 + i] (integer
// atomics, so the result does not depend on the order threads run in), where v records any.
fn flush_one(i: u32, v: u32) {
    if v != 0u {
        atomicOr(&status[0], 1u << i);
        atomicMax(&status[1u + i], v);
    }
}

// Reports what the thread's checks found (the end of the kernel: stats_main, lovasz_keys,
// hinge_local_tiles).
fn flush_bad() {
    if VALIDATE != 0u {
        flush_one(0u, bad_lo.x);
        flush_one(1u, bad_lo.y);
        flush_one(2u, bad_lo.z);
        flush_one(3u, bad_lo.w);
        flush_one(4u, bad_hi.x);
        flush_one(5u, bad_hi.y);
    }
}

// Checks logit x of element e; `live`: e's pixel is not ignored; `true_class`: e is the true
// class of such a pixel. (`&` and `|` on bools do not short-circuit: no branches.)
fn check_logit(x: f32, e: u32, true_class: bool, live: bool) {
    // a masked class (softmax -inf): an error where the losses need its log-probability
    let masked = SOFTMAX && !PROBS && is_neg_inf(x);
    let needed = ((VALIDATE & V_NEGINF_ANY) != 0u) | (((VALIDATE & V_NEGINF_LIVE) != 0u) & live)
        | (((VALIDATE & V_NEGINF_TRUE) != 0u) & true_class);
    flag_if(masked & needed, V_NEGINF, e);
    flag_if(!masked & ((VALIDATE & V_NONFINITE) != 0u) & !finite(x), V_NONFINITE, e);
    flag_if(!masked & ((VALIDATE & V_PROB) != 0u) & !((x >= 0.0) & (x <= 1.0)), V_PROB, e);
}

// The checks of sigmoid element e, logit x and raw target word w (none unless VALIDATE).
fn check_sigmoid(e: u32, x: f32, w: u32) {
    if VALIDATE != 0u {
        check_word(w, e);
        check_logit(x, e, false, true);
    }
}

// Checks the raw target word of element e (dense) or pixel e (class index) of a buffer input.
fn check_target(e: u32) {
    check_word(tgt_at(e), e);
}

// Checks the raw target word w of element e (branch-free, as check_logit).
fn check_word(w: u32, e: u32) {
    // (has_ignore 2: f32 0 of dense targets, -0.0 too: target.wgsl's is_ignore_word)
    let live = !((P.has_ignore != 0u) & ((w == P.ignore) | ((P.has_ignore == 2u) & (w == 0x80000000u))));
    if SOFTMAX {
        flag_if(live & ((VALIDATE & V_CLASS) != 0u) & (w >= P.c), V_CLASS, e);
    } else {
        let g = bitcast<f32>(w);
        // (a value flagged out of range is not also flagged soft)
        let range = ((VALIDATE & V_RANGE) != 0u) & !((g >= 0.0) & (g <= 1.0));
        flag_if(live & range, V_RANGE, e);
        flag_if(live & !range & ((VALIDATE & V_SOFT) != 0u) & (g != 0.0) & (g != 1.0), V_SOFT, e);
    }
}
