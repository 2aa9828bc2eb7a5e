// The Lovász-Softmax keys with each pixel's logits in registers (regs.wgsl): the kernel
// lovasz_keys_regs.

// CREG: put_key of class k (< C).
fn key_k(n: u32, s: u32, k: u32, x: f32, lab: u32, lse: vec2<f32>) {
    if k < CREG {
        put_key(n, s, k, x, lab, lse);
    }
}

// CREG: the keys and payloads of a pixel's classes (logits x).
fn keys_regs(n: u32, s: u32, x: ptr<function, array<f32, CREG_MAX>>, lab: u32, lse: vec2<f32>) {
    // @unroll key_k(n, s, #ku, (*x)[#k], lab, lse);
    key_k(n, s, 0u, (*x)[0], lab, lse);
    key_k(n, s, 1u, (*x)[1], lab, lse);
    key_k(n, s, 2u, (*x)[2], lab, lse);
    key_k(n, s, 3u, (*x)[3], lab, lse);
    key_k(n, s, 4u, (*x)[4], lab, lse);
    key_k(n, s, 5u, (*x)[5], lab, lse);
    key_k(n, s, 6u, (*x)[6], lab, lse);
    key_k(n, s, 7u, (*x)[7], lab, lse);
    key_k(n, s, 8u, (*x)[8], lab, lse);
    key_k(n, s, 9u, (*x)[9], lab, lse);
    key_k(n, s, 10u, (*x)[10], lab, lse);
    key_k(n, s, 11u, (*x)[11], lab, lse);
    key_k(n, s, 12u, (*x)[12], lab, lse);
    key_k(n, s, 13u, (*x)[13], lab, lse);
    key_k(n, s, 14u, (*x)[14], lab, lse);
    key_k(n, s, 15u, (*x)[15], lab, lse);
    key_k(n, s, 16u, (*x)[16], lab, lse);
    key_k(n, s, 17u, (*x)[17], lab, lse);
    key_k(n, s, 18u, (*x)[18], lab, lse);
    key_k(n, s, 19u, (*x)[19], lab, lse);
    key_k(n, s, 20u, (*x)[20], lab, lse);
    key_k(n, s, 21u, (*x)[21], lab, lse);
    key_k(n, s, 22u, (*x)[22], lab, lse);
    key_k(n, s, 23u, (*x)[23], lab, lse);
    key_k(n, s, 24u, (*x)[24], lab, lse);
    key_k(n, s, 25u, (*x)[25], lab, lse);
    key_k(n, s, 26u, (*x)[26], lab, lse);
    key_k(n, s, 27u, (*x)[27], lab, lse);
    key_k(n, s, 28u, (*x)[28], lab, lse);
    key_k(n, s, 29u, (*x)[29], lab, lse);
    key_k(n, s, 30u, (*x)[30], lab, lse);
    key_k(n, s, 31u, (*x)[31], lab, lse);
    // @end
}
