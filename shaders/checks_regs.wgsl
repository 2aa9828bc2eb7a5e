// The checks (checks.wgsl) of a pixel whose logits are in registers (regs.wgsl): the kernels
// stats_regs, stats_sg_regs and lovasz_keys_regs; the others take checks_noregs.wgsl's stand-in.

// CREG: class k's (< C) share of check_regs: (masked so far, and the logit x, -inf), and its
// checks where `each` (PIXEL_ONLY: the class loop that checks them does not run).
fn check_k(masked: bool, k: u32, x: f32, e0: u32, lab: u32, each: bool) -> bool {
    if k >= CREG {
        return masked;
    }
    if each {
        check_logit(x, e0 + k * P.s, lab == k, true);
    }
    return masked & is_neg_inf(x);
}

// CREG, VALIDATE: the checks of a counted pixel from its logits x in registers (no second load):
// a pixel with no finite class, and with `each` every logit.
fn check_regs(x: ptr<function, array<f32, CREG_MAX>>, n: u32, s: u32, lab: u32, each: bool) {
    let e0 = n * P.c * P.s + s;
    var masked = true;
    // @unroll masked = check_k(masked, #ku, (*x)[#k], e0, lab, each);
    masked = check_k(masked, 0u, (*x)[0], e0, lab, each);
    masked = check_k(masked, 1u, (*x)[1], e0, lab, each);
    masked = check_k(masked, 2u, (*x)[2], e0, lab, each);
    masked = check_k(masked, 3u, (*x)[3], e0, lab, each);
    masked = check_k(masked, 4u, (*x)[4], e0, lab, each);
    masked = check_k(masked, 5u, (*x)[5], e0, lab, each);
    masked = check_k(masked, 6u, (*x)[6], e0, lab, each);
    masked = check_k(masked, 7u, (*x)[7], e0, lab, each);
    masked = check_k(masked, 8u, (*x)[8], e0, lab, each);
    masked = check_k(masked, 9u, (*x)[9], e0, lab, each);
    masked = check_k(masked, 10u, (*x)[10], e0, lab, each);
    masked = check_k(masked, 11u, (*x)[11], e0, lab, each);
    masked = check_k(masked, 12u, (*x)[12], e0, lab, each);
    masked = check_k(masked, 13u, (*x)[13], e0, lab, each);
    masked = check_k(masked, 14u, (*x)[14], e0, lab, each);
    masked = check_k(masked, 15u, (*x)[15], e0, lab, each);
    masked = check_k(masked, 16u, (*x)[16], e0, lab, each);
    masked = check_k(masked, 17u, (*x)[17], e0, lab, each);
    masked = check_k(masked, 18u, (*x)[18], e0, lab, each);
    masked = check_k(masked, 19u, (*x)[19], e0, lab, each);
    masked = check_k(masked, 20u, (*x)[20], e0, lab, each);
    masked = check_k(masked, 21u, (*x)[21], e0, lab, each);
    masked = check_k(masked, 22u, (*x)[22], e0, lab, each);
    masked = check_k(masked, 23u, (*x)[23], e0, lab, each);
    masked = check_k(masked, 24u, (*x)[24], e0, lab, each);
    masked = check_k(masked, 25u, (*x)[25], e0, lab, each);
    masked = check_k(masked, 26u, (*x)[26], e0, lab, each);
    masked = check_k(masked, 27u, (*x)[27], e0, lab, each);
    masked = check_k(masked, 28u, (*x)[28], e0, lab, each);
    masked = check_k(masked, 29u, (*x)[29], e0, lab, each);
    masked = check_k(masked, 30u, (*x)[30], e0, lab, each);
    masked = check_k(masked, 31u, (*x)[31], e0, lab, each);
    // @end
    flag_if(masked, V_NEGINF, e0);
}
