// The softmax gradient's walks with each pixel's logits in registers (regs.wgsl): the kernel
// gradient_regs.

// CREG: the coefficients of class k (< C) of image n.
fn coefs_k(n: u32, k: u32) -> ClassCoefs {
    if k < CREG {
        return class_coefs(n, k);
    }
    return ClassCoefs(vec4<f32>(0.0), 0.0, 0.0, 0.0, vec4<f32>(0.0));
}

// CREG: pixel term tp (present: t < NTERMS) at class k of a pixel; cross-entropy's weight of
// class k loaded only where label smoothing uses it (without, it adds 0 * (...) either way).
fn term_k(t: u32, tp: Term, k: u32, x: f32, p: f32, lab: u32, wl: f32, nlq: f32) -> f32 {
    if t >= NTERMS {
        return 0.0;
    }
    var cwc = 0.0;
    if has(CE) && tp.kind == CE && tp.label_smoothing != 0.0 {
        cwc = cw[t * P.c + k];
    }
    return softmax_term(tp, k, x, p, lab, wl, cwc, nlq).x;
}

// CREG: adds class k's p dL/dp to a pixel's dot.
fn dot_k(dot: f32, kc: ClassCoefs, k: u32, x: f32, w: f32, lse: vec2<f32>, lab: u32) -> f32 {
    if k >= CREG || !(REGION || LOVASZ != 0u) {
        return dot;
    }
    let p = softmax_p(x, lse);
    return dot + p * softmax_dp_w(kc, w, p, select(0.0, 1.0, lab == k));
}

// CREG, Lovász: the Jaccard weight of class k's (< C) element of a pixel (its first at e0).
fn lw_k(e0: u32, k: u32) -> f32 {
    if k < CREG && LOVASZ != 0u {
        return aux[e0 + k * P.s];
    }
    return 0.0;
}

// CREG: writes the gradient at class k of a pixel.
fn grad_k(kc: ClassCoefs, e0: u32, k: u32, x: f32, lwk: f32, lse: vec2<f32>, lab: u32, dot: f32, nlq: f32, w: vec4<f32>, tp0: Term, tp1: Term, tp2: Term, tp3: Term) {
    if k >= CREG {
        return;
    }
    let e = e0 + k * P.s;
    let p = softmax_p(x, lse);
    var d = p * (softmax_dp_w(kc, lwk, p, select(0.0, 1.0, lab == k)) - dot);
    d += term_k(0u, tp0, k, x, p, lab, w.x, nlq);
    d += term_k(1u, tp1, k, x, p, lab, w.y, nlq);
    d += term_k(2u, tp2, k, x, p, lab, w.z, nlq);
    d += term_k(3u, tp3, k, x, p, lab, w.w, nlq);
    put(e, d);
}

// CREG (a CPU adapter, at most CREG_MAX classes; logits, without unreduced entries or a sigmoid
// focal term, at most four pixel terms): the softmax gradient of image n at this thread's
// pixels, each pixel's logits loaded once into registers and each class's coefficients once per
// thread. The arithmetic is that of the class walks of `gradient`, class by class and term by
// term, so the same bits.
fn softmax_regs(n: u32, ni: u32, t0: u32, lid: u32) {
    // @unroll let k#k = coefs_k(ni, #ku);
    let k0 = coefs_k(ni, 0u);
    let k1 = coefs_k(ni, 1u);
    let k2 = coefs_k(ni, 2u);
    let k3 = coefs_k(ni, 3u);
    let k4 = coefs_k(ni, 4u);
    let k5 = coefs_k(ni, 5u);
    let k6 = coefs_k(ni, 6u);
    let k7 = coefs_k(ni, 7u);
    let k8 = coefs_k(ni, 8u);
    let k9 = coefs_k(ni, 9u);
    let k10 = coefs_k(ni, 10u);
    let k11 = coefs_k(ni, 11u);
    let k12 = coefs_k(ni, 12u);
    let k13 = coefs_k(ni, 13u);
    let k14 = coefs_k(ni, 14u);
    let k15 = coefs_k(ni, 15u);
    let k16 = coefs_k(ni, 16u);
    let k17 = coefs_k(ni, 17u);
    let k18 = coefs_k(ni, 18u);
    let k19 = coefs_k(ni, 19u);
    let k20 = coefs_k(ni, 20u);
    let k21 = coefs_k(ni, 21u);
    let k22 = coefs_k(ni, 22u);
    let k23 = coefs_k(ni, 23u);
    let k24 = coefs_k(ni, 24u);
    let k25 = coefs_k(ni, 25u);
    let k26 = coefs_k(ni, 26u);
    let k27 = coefs_k(ni, 27u);
    let k28 = coefs_k(ni, 28u);
    let k29 = coefs_k(ni, 29u);
    let k30 = coefs_k(ni, 30u);
    let k31 = coefs_k(ni, 31u);
    // @end
    var tp0: Term;
    var tp1: Term;
    var tp2: Term;
    var tp3: Term;
    if NTERMS > 0u {
        tp0 = term(0u);
        tp1 = term(min(1u, NTERMS - 1u));
        tp2 = term(min(2u, NTERMS - 1u));
        tp3 = term(min(3u, NTERMS - 1u));
    }
    for (var i = 0u; i < GPIX; i++) {
        let s = px(t0, lid, i);
        if s >= P.s {
            break;
        }
        let lab = tword(n * P.s + s);
        let e0 = n * P.c * P.s + s;
        if lab == INVALID {
            // ignored pixels get 0 in every channel
            for (var c = 0u; c < P.c; c++) {
                put(e0 + c * P.s, 0.0);
            }
            continue;
        }
        // @unroll let x#k = xl(e0, #ku);
        let x0 = xl(e0, 0u);
        let x1 = xl(e0, 1u);
        let x2 = xl(e0, 2u);
        let x3 = xl(e0, 3u);
        let x4 = xl(e0, 4u);
        let x5 = xl(e0, 5u);
        let x6 = xl(e0, 6u);
        let x7 = xl(e0, 7u);
        let x8 = xl(e0, 8u);
        let x9 = xl(e0, 9u);
        let x10 = xl(e0, 10u);
        let x11 = xl(e0, 11u);
        let x12 = xl(e0, 12u);
        let x13 = xl(e0, 13u);
        let x14 = xl(e0, 14u);
        let x15 = xl(e0, 15u);
        let x16 = xl(e0, 16u);
        let x17 = xl(e0, 17u);
        let x18 = xl(e0, 18u);
        let x19 = xl(e0, 19u);
        let x20 = xl(e0, 20u);
        let x21 = xl(e0, 21u);
        let x22 = xl(e0, 22u);
        let x23 = xl(e0, 23u);
        let x24 = xl(e0, 24u);
        let x25 = xl(e0, 25u);
        let x26 = xl(e0, 26u);
        let x27 = xl(e0, 27u);
        let x28 = xl(e0, 28u);
        let x29 = xl(e0, 29u);
        let x30 = xl(e0, 30u);
        let x31 = xl(e0, 31u);
        // @end
        // Lovász: each element's Jaccard weight, loaded once
        var lws: array<f32, CREG_MAX>;
        // @unroll lws[#k] = lw_k(e0, #ku);
        lws[0] = lw_k(e0, 0u);
        lws[1] = lw_k(e0, 1u);
        lws[2] = lw_k(e0, 2u);
        lws[3] = lw_k(e0, 3u);
        lws[4] = lw_k(e0, 4u);
        lws[5] = lw_k(e0, 5u);
        lws[6] = lw_k(e0, 6u);
        lws[7] = lw_k(e0, 7u);
        lws[8] = lw_k(e0, 8u);
        lws[9] = lw_k(e0, 9u);
        lws[10] = lw_k(e0, 10u);
        lws[11] = lw_k(e0, 11u);
        lws[12] = lw_k(e0, 12u);
        lws[13] = lw_k(e0, 13u);
        lws[14] = lw_k(e0, 14u);
        lws[15] = lw_k(e0, 15u);
        lws[16] = lw_k(e0, 16u);
        lws[17] = lw_k(e0, 17u);
        lws[18] = lw_k(e0, 18u);
        lws[19] = lw_k(e0, 19u);
        lws[20] = lw_k(e0, 20u);
        lws[21] = lw_k(e0, 21u);
        lws[22] = lw_k(e0, 22u);
        lws[23] = lw_k(e0, 23u);
        lws[24] = lw_k(e0, 24u);
        lws[25] = lw_k(e0, 25u);
        lws[26] = lw_k(e0, 26u);
        lws[27] = lw_k(e0, 27u);
        lws[28] = lw_k(e0, 28u);
        lws[29] = lw_k(e0, 29u);
        lws[30] = lw_k(e0, 30u);
        lws[31] = lw_k(e0, 31u);
        // @end
        var lse: vec2<f32>;
        if LOVASZ != 0u {
            // the Lovász keys pass kept it after the weights (lovasz_keys.wgsl)
            lse = kept_lse(P.n * P.c * P.s, n, s);
        } else if LSE {
            lse = kept_lse(0u, n, s);
        } else {
            var st = vec2<f32>(LSE_START, 0.0);
            // @unroll st = lse_k(st, x#k, #ku);
            st = lse_k(st, x0, 0u);
            st = lse_k(st, x1, 1u);
            st = lse_k(st, x2, 2u);
            st = lse_k(st, x3, 3u);
            st = lse_k(st, x4, 4u);
            st = lse_k(st, x5, 5u);
            st = lse_k(st, x6, 6u);
            st = lse_k(st, x7, 7u);
            st = lse_k(st, x8, 8u);
            st = lse_k(st, x9, 9u);
            st = lse_k(st, x10, 10u);
            st = lse_k(st, x11, 11u);
            st = lse_k(st, x12, 12u);
            st = lse_k(st, x13, 13u);
            st = lse_k(st, x14, 14u);
            st = lse_k(st, x15, 15u);
            st = lse_k(st, x16, 16u);
            st = lse_k(st, x17, 17u);
            st = lse_k(st, x18, 18u);
            st = lse_k(st, x19, 19u);
            st = lse_k(st, x20, 20u);
            st = lse_k(st, x21, 21u);
            st = lse_k(st, x22, 22u);
            st = lse_k(st, x23, 23u);
            st = lse_k(st, x24, 24u);
            st = lse_k(st, x25, 25u);
            st = lse_k(st, x26, 26u);
            st = lse_k(st, x27, 27u);
            st = lse_k(st, x28, 28u);
            st = lse_k(st, x29, 29u);
            st = lse_k(st, x30, 30u);
            st = lse_k(st, x31, 31u);
            // @end
            lse = vec2<f32>(st.x, log(st.y));
        }
        var nlq = 0.0;
        if has(FOCAL_SOFTMAX) {
            nlq = nlog_p(lse, lg(e0 + lab * P.s));
        }
        // each term's weight of the true class
        var w = vec4<f32>(0.0);
        if NTERMS > 0u {
            w.x = cw[lab];
        }
        if NTERMS > 1u {
            w.y = cw[P.c + lab];
        }
        if NTERMS > 2u {
            w.z = cw[2u * P.c + lab];
        }
        if NTERMS > 3u {
            w.w = cw[3u * P.c + lab];
        }
        var dot = 0.0;
        // @unroll dot = dot_k(dot, k#k, #ku, x#k, lws[#k], lse, lab);
        dot = dot_k(dot, k0, 0u, x0, lws[0], lse, lab);
        dot = dot_k(dot, k1, 1u, x1, lws[1], lse, lab);
        dot = dot_k(dot, k2, 2u, x2, lws[2], lse, lab);
        dot = dot_k(dot, k3, 3u, x3, lws[3], lse, lab);
        dot = dot_k(dot, k4, 4u, x4, lws[4], lse, lab);
        dot = dot_k(dot, k5, 5u, x5, lws[5], lse, lab);
        dot = dot_k(dot, k6, 6u, x6, lws[6], lse, lab);
        dot = dot_k(dot, k7, 7u, x7, lws[7], lse, lab);
        dot = dot_k(dot, k8, 8u, x8, lws[8], lse, lab);
        dot = dot_k(dot, k9, 9u, x9, lws[9], lse, lab);
        dot = dot_k(dot, k10, 10u, x10, lws[10], lse, lab);
        dot = dot_k(dot, k11, 11u, x11, lws[11], lse, lab);
        dot = dot_k(dot, k12, 12u, x12, lws[12], lse, lab);
        dot = dot_k(dot, k13, 13u, x13, lws[13], lse, lab);
        dot = dot_k(dot, k14, 14u, x14, lws[14], lse, lab);
        dot = dot_k(dot, k15, 15u, x15, lws[15], lse, lab);
        dot = dot_k(dot, k16, 16u, x16, lws[16], lse, lab);
        dot = dot_k(dot, k17, 17u, x17, lws[17], lse, lab);
        dot = dot_k(dot, k18, 18u, x18, lws[18], lse, lab);
        dot = dot_k(dot, k19, 19u, x19, lws[19], lse, lab);
        dot = dot_k(dot, k20, 20u, x20, lws[20], lse, lab);
        dot = dot_k(dot, k21, 21u, x21, lws[21], lse, lab);
        dot = dot_k(dot, k22, 22u, x22, lws[22], lse, lab);
        dot = dot_k(dot, k23, 23u, x23, lws[23], lse, lab);
        dot = dot_k(dot, k24, 24u, x24, lws[24], lse, lab);
        dot = dot_k(dot, k25, 25u, x25, lws[25], lse, lab);
        dot = dot_k(dot, k26, 26u, x26, lws[26], lse, lab);
        dot = dot_k(dot, k27, 27u, x27, lws[27], lse, lab);
        dot = dot_k(dot, k28, 28u, x28, lws[28], lse, lab);
        dot = dot_k(dot, k29, 29u, x29, lws[29], lse, lab);
        dot = dot_k(dot, k30, 30u, x30, lws[30], lse, lab);
        dot = dot_k(dot, k31, 31u, x31, lws[31], lse, lab);
        // @end
        // @unroll grad_k(k#k, e0, #ku, x#k, lws[#k], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k0, e0, 0u, x0, lws[0], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k1, e0, 1u, x1, lws[1], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k2, e0, 2u, x2, lws[2], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k3, e0, 3u, x3, lws[3], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k4, e0, 4u, x4, lws[4], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k5, e0, 5u, x5, lws[5], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k6, e0, 6u, x6, lws[6], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k7, e0, 7u, x7, lws[7], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k8, e0, 8u, x8, lws[8], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k9, e0, 9u, x9, lws[9], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k10, e0, 10u, x10, lws[10], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k11, e0, 11u, x11, lws[11], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k12, e0, 12u, x12, lws[12], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k13, e0, 13u, x13, lws[13], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k14, e0, 14u, x14, lws[14], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k15, e0, 15u, x15, lws[15], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k16, e0, 16u, x16, lws[16], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k17, e0, 17u, x17, lws[17], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k18, e0, 18u, x18, lws[18], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k19, e0, 19u, x19, lws[19], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k20, e0, 20u, x20, lws[20], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k21, e0, 21u, x21, lws[21], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k22, e0, 22u, x22, lws[22], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k23, e0, 23u, x23, lws[23], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k24, e0, 24u, x24, lws[24], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k25, e0, 25u, x25, lws[25], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k26, e0, 26u, x26, lws[26], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k27, e0, 27u, x27, lws[27], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k28, e0, 28u, x28, lws[28], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k29, e0, 29u, x29, lws[29], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k30, e0, 30u, x30, lws[30], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        grad_k(k31, e0, 31u, x31, lws[31], lse, lab, dot, nlq, w, tp0, tp1, tp2, tp3);
        // @end
    }
}
