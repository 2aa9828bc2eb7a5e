// A CPU adapter's softmax with each pixel's C logits in registers (the override CREG = C, at
// most CREG_MAX), shared by the register kernels (stats_regs.wgsl, grad_regs.wgsl,
// lovasz_regs.wgsl); the others take noregs.wgsl's stand-ins. lavapipe does not unroll loops, and
// a private array indexed by a loop counter lives in memory, which it loads lane by lane: so the
// steps over the classes are written out, a line `// @unroll TEMPLATE` followed by TEMPLATE once
// per class #k up to CREG_MAX and `// @end` (tests/shaders.rs holds each block to its template),
// and arrays are indexed by constants only. The steps past C fold away.

// CREG: logit k of a pixel (its first at e0), where k < C.
fn xl(e0: u32, k: u32) -> f32 {
    if k < CREG {
        return lg(e0 + k * P.s);
    }
    return 0.0;
}

// CREG: log_sum_exp's step of class k (< C), logit x.
fn lse_k(st: vec2<f32>, x: f32, k: u32) -> vec2<f32> {
    if k < CREG {
        return lse_step(st, x);
    }
    return st;
}

// CREG: the C logits of pixel s of image n, a load each. The kernels index such arrays by
// constants only (@unroll), so that they stay in registers.
fn load_regs(n: u32, s: u32) -> array<f32, CREG_MAX> {
    var x: array<f32, CREG_MAX>;
    let e0 = n * P.c * P.s + s;
    // @unroll x[#k] = xl(e0, #ku);
    x[0] = xl(e0, 0u);
    x[1] = xl(e0, 1u);
    x[2] = xl(e0, 2u);
    x[3] = xl(e0, 3u);
    x[4] = xl(e0, 4u);
    x[5] = xl(e0, 5u);
    x[6] = xl(e0, 6u);
    x[7] = xl(e0, 7u);
    x[8] = xl(e0, 8u);
    x[9] = xl(e0, 9u);
    x[10] = xl(e0, 10u);
    x[11] = xl(e0, 11u);
    x[12] = xl(e0, 12u);
    x[13] = xl(e0, 13u);
    x[14] = xl(e0, 14u);
    x[15] = xl(e0, 15u);
    x[16] = xl(e0, 16u);
    x[17] = xl(e0, 17u);
    x[18] = xl(e0, 18u);
    x[19] = xl(e0, 19u);
    x[20] = xl(e0, 20u);
    x[21] = xl(e0, 21u);
    x[22] = xl(e0, 22u);
    x[23] = xl(e0, 23u);
    x[24] = xl(e0, 24u);
    x[25] = xl(e0, 25u);
    x[26] = xl(e0, 26u);
    x[27] = xl(e0, 27u);
    x[28] = xl(e0, 28u);
    x[29] = xl(e0, 29u);
    x[30] = xl(e0, 30u);
    x[31] = xl(e0, 31u);
    // @end
    return x;
}

// CREG: the log-sum-exp of a pixel's logits x, log_sum_exp's steps in its order (the same bits).
fn lse_regs(x: ptr<function, array<f32, CREG_MAX>>) -> vec2<f32> {
    var st = vec2<f32>(LSE_START, 0.0);
    // @unroll st = lse_k(st, (*x)[#k], #ku);
    st = lse_k(st, (*x)[0], 0u);
    st = lse_k(st, (*x)[1], 1u);
    st = lse_k(st, (*x)[2], 2u);
    st = lse_k(st, (*x)[3], 3u);
    st = lse_k(st, (*x)[4], 4u);
    st = lse_k(st, (*x)[5], 5u);
    st = lse_k(st, (*x)[6], 6u);
    st = lse_k(st, (*x)[7], 7u);
    st = lse_k(st, (*x)[8], 8u);
    st = lse_k(st, (*x)[9], 9u);
    st = lse_k(st, (*x)[10], 10u);
    st = lse_k(st, (*x)[11], 11u);
    st = lse_k(st, (*x)[12], 12u);
    st = lse_k(st, (*x)[13], 13u);
    st = lse_k(st, (*x)[14], 14u);
    st = lse_k(st, (*x)[15], 15u);
    st = lse_k(st, (*x)[16], 16u);
    st = lse_k(st, (*x)[17], 17u);
    st = lse_k(st, (*x)[18], 18u);
    st = lse_k(st, (*x)[19], 19u);
    st = lse_k(st, (*x)[20], 20u);
    st = lse_k(st, (*x)[21], 21u);
    st = lse_k(st, (*x)[22], 22u);
    st = lse_k(st, (*x)[23], 23u);
    st = lse_k(st, (*x)[24], 24u);
    st = lse_k(st, (*x)[25], 25u);
    st = lse_k(st, (*x)[26], 26u);
    st = lse_k(st, (*x)[27], 27u);
    st = lse_k(st, (*x)[28], 28u);
    st = lse_k(st, (*x)[29], 29u);
    st = lse_k(st, (*x)[30], 30u);
    st = lse_k(st, (*x)[31], 31u);
    // @end
    return vec2<f32>(st.x, log(st.y));
}
