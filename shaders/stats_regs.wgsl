// The statistics pass's walks with each pixel's logits in registers (regs.wgsl): the kernels
// stats_regs and stats_sg_regs.

// CREG: the fused gradient of class k (< C) of a pixel, logit x.
fn ce_k(e0: u32, k: u32, x: f32, lab: u32, lse: vec2<f32>, tf: array<Term, 4>, wls: array<f32, 4>) {
    if k < CREG {
        eout_set(e0 + k * P.s, ce_fused_elem(k, x, lab, lse, tf, wls));
    }
}

// CREG: the fused gradient of a pixel from its logits x (ce_fused_pixel's arithmetic, class by
// class, so the same bits).
fn ce_regs(n: u32, s: u32, lab: u32, lse: vec2<f32>, tf: array<Term, 4>, x: ptr<function, array<f32, CREG_MAX>>) {
    let e0 = n * P.c * P.s + s;
    let wls = true_class_weights(lab);
    // @unroll ce_k(e0, #ku, (*x)[#k], lab, lse, tf, wls);
    ce_k(e0, 0u, (*x)[0], lab, lse, tf, wls);
    ce_k(e0, 1u, (*x)[1], lab, lse, tf, wls);
    ce_k(e0, 2u, (*x)[2], lab, lse, tf, wls);
    ce_k(e0, 3u, (*x)[3], lab, lse, tf, wls);
    ce_k(e0, 4u, (*x)[4], lab, lse, tf, wls);
    ce_k(e0, 5u, (*x)[5], lab, lse, tf, wls);
    ce_k(e0, 6u, (*x)[6], lab, lse, tf, wls);
    ce_k(e0, 7u, (*x)[7], lab, lse, tf, wls);
    ce_k(e0, 8u, (*x)[8], lab, lse, tf, wls);
    ce_k(e0, 9u, (*x)[9], lab, lse, tf, wls);
    ce_k(e0, 10u, (*x)[10], lab, lse, tf, wls);
    ce_k(e0, 11u, (*x)[11], lab, lse, tf, wls);
    ce_k(e0, 12u, (*x)[12], lab, lse, tf, wls);
    ce_k(e0, 13u, (*x)[13], lab, lse, tf, wls);
    ce_k(e0, 14u, (*x)[14], lab, lse, tf, wls);
    ce_k(e0, 15u, (*x)[15], lab, lse, tf, wls);
    ce_k(e0, 16u, (*x)[16], lab, lse, tf, wls);
    ce_k(e0, 17u, (*x)[17], lab, lse, tf, wls);
    ce_k(e0, 18u, (*x)[18], lab, lse, tf, wls);
    ce_k(e0, 19u, (*x)[19], lab, lse, tf, wls);
    ce_k(e0, 20u, (*x)[20], lab, lse, tf, wls);
    ce_k(e0, 21u, (*x)[21], lab, lse, tf, wls);
    ce_k(e0, 22u, (*x)[22], lab, lse, tf, wls);
    ce_k(e0, 23u, (*x)[23], lab, lse, tf, wls);
    ce_k(e0, 24u, (*x)[24], lab, lse, tf, wls);
    ce_k(e0, 25u, (*x)[25], lab, lse, tf, wls);
    ce_k(e0, 26u, (*x)[26], lab, lse, tf, wls);
    ce_k(e0, 27u, (*x)[27], lab, lse, tf, wls);
    ce_k(e0, 28u, (*x)[28], lab, lse, tf, wls);
    ce_k(e0, 29u, (*x)[29], lab, lse, tf, wls);
    ce_k(e0, 30u, (*x)[30], lab, lse, tf, wls);
    ce_k(e0, 31u, (*x)[31], lab, lse, tf, wls);
    // @end
}

// CREG: adds a pixel's elements (logits x, true class lab) to each class's sums, as the class
// walk of stats_main adds them.
fn add_regs(accs: ptr<function, array<Acc, CREG_MAX>>, x: ptr<function, array<f32, CREG_MAX>>, n: u32, s: u32, lab: u32, lse: vec2<f32>, tp0: Term, tp1: Term, tp2: Term, tp3: Term) {
    let e0 = n * P.c * P.s + s;
    // @unroll (*accs)[#k] = add_k((*accs)[#k], #ku, (*x)[#k], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[0] = add_k((*accs)[0], 0u, (*x)[0], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[1] = add_k((*accs)[1], 1u, (*x)[1], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[2] = add_k((*accs)[2], 2u, (*x)[2], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[3] = add_k((*accs)[3], 3u, (*x)[3], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[4] = add_k((*accs)[4], 4u, (*x)[4], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[5] = add_k((*accs)[5], 5u, (*x)[5], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[6] = add_k((*accs)[6], 6u, (*x)[6], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[7] = add_k((*accs)[7], 7u, (*x)[7], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[8] = add_k((*accs)[8], 8u, (*x)[8], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[9] = add_k((*accs)[9], 9u, (*x)[9], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[10] = add_k((*accs)[10], 10u, (*x)[10], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[11] = add_k((*accs)[11], 11u, (*x)[11], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[12] = add_k((*accs)[12], 12u, (*x)[12], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[13] = add_k((*accs)[13], 13u, (*x)[13], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[14] = add_k((*accs)[14], 14u, (*x)[14], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[15] = add_k((*accs)[15], 15u, (*x)[15], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[16] = add_k((*accs)[16], 16u, (*x)[16], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[17] = add_k((*accs)[17], 17u, (*x)[17], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[18] = add_k((*accs)[18], 18u, (*x)[18], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[19] = add_k((*accs)[19], 19u, (*x)[19], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[20] = add_k((*accs)[20], 20u, (*x)[20], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[21] = add_k((*accs)[21], 21u, (*x)[21], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[22] = add_k((*accs)[22], 22u, (*x)[22], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[23] = add_k((*accs)[23], 23u, (*x)[23], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[24] = add_k((*accs)[24], 24u, (*x)[24], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[25] = add_k((*accs)[25], 25u, (*x)[25], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[26] = add_k((*accs)[26], 26u, (*x)[26], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[27] = add_k((*accs)[27], 27u, (*x)[27], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[28] = add_k((*accs)[28], 28u, (*x)[28], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[29] = add_k((*accs)[29], 29u, (*x)[29], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[30] = add_k((*accs)[30], 30u, (*x)[30], e0, lab, lse, tp0, tp1, tp2, tp3);
    (*accs)[31] = add_k((*accs)[31], 31u, (*x)[31], e0, lab, lse, tp0, tp1, tp2, tp3);
    // @end
}

// CREG: acc with element k (< C) of a pixel added (logit x).
fn add_k(acc: Acc, k: u32, x: f32, e0: u32, lab: u32, lse: vec2<f32>, tp0: Term, tp1: Term, tp2: Term, tp3: Term) -> Acc {
    var a = acc;
    if k < CREG {
        let e = e0 + k * P.s;
        if VALIDATE != 0u {
            check_logit(x, e, lab == k, true);
        }
        add_element(&a, true, tp0, tp1, tp2, tp3, x, softmax_p(x, lse), select(0.0, 1.0, lab == k), nlog_p(lse, x), 0.0, lab, k);
    }
    return a;
}

// CREG: writes class k's (< C) sums as the tile's partials, class 0 with the cross-entropy
// slots' (pa2, pa3).
fn write_k(lid: u32, n: u32, tile: u32, k: u32, acc: Acc, pa2: vec4<f32>, pa3: vec4<f32>, nq: u32, sg: vec2<u32>) {
    if k < CREG {
        var a = acc;
        if k == 0u {
            a.a2 = pa2 + a.a2;
            a.a3 = pa3 + a.a3;
        }
        write_partials(lid, n, tile, k, a, nq, sg);
    }
}

// CREG: writes each class's sums as the tile's partials, class 0 with the cross-entropy slots'
// (pa2, pa3).
fn write_regs(lid: u32, n: u32, tile: u32, accs: ptr<function, array<Acc, CREG_MAX>>, pa2: vec4<f32>, pa3: vec4<f32>, nq: u32, sg: vec2<u32>) {
    // @unroll write_k(lid, n, tile, #ku, (*accs)[#k], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 0u, (*accs)[0], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 1u, (*accs)[1], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 2u, (*accs)[2], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 3u, (*accs)[3], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 4u, (*accs)[4], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 5u, (*accs)[5], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 6u, (*accs)[6], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 7u, (*accs)[7], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 8u, (*accs)[8], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 9u, (*accs)[9], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 10u, (*accs)[10], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 11u, (*accs)[11], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 12u, (*accs)[12], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 13u, (*accs)[13], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 14u, (*accs)[14], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 15u, (*accs)[15], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 16u, (*accs)[16], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 17u, (*accs)[17], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 18u, (*accs)[18], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 19u, (*accs)[19], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 20u, (*accs)[20], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 21u, (*accs)[21], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 22u, (*accs)[22], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 23u, (*accs)[23], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 24u, (*accs)[24], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 25u, (*accs)[25], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 26u, (*accs)[26], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 27u, (*accs)[27], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 28u, (*accs)[28], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 29u, (*accs)[29], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 30u, (*accs)[30], pa2, pa3, nq, sg);
    write_k(lid, n, tile, 31u, (*accs)[31], pa2, pa3, nq, sg);
    // @end
}
