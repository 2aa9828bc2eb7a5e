// The unreduced entries of one pixel loss (`reduction=none`): per element for bce and focal
// (`[N, C, S]`; softmax focal: the true class's entry, 0 elsewhere), per pixel for ce (`[N, S]`),
// times the term's factor (`terms[0].scale`). Ignored entries are 0. bce's pos_weight is the one
// finalize.wgsl resolved (`coefs`, the expression's block), times the channel's (`cw`); `cw` holds
// the class weights of focal and ce as the user gave them. Nothing is written when the statistics
// pass found bad input.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read> terms: array<Term>;
@group(0) @binding(4) var<storage, read> cw: array<f32>;
@group(0) @binding(5) var<storage, read> coefs: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> status: array<u32>;

// The loss of one element of a sigmoid-scored channel: x the input, g the target, c the channel.
fn sigmoid_entry(tp: Term, x: f32, g: f32, c: u32) -> f32 {
    var v = 0.0;
    if has(BCE) {
        let gs = g * (1.0 - tp.label_smoothing) + 0.5 * tp.label_smoothing;
        if PROBS {
            v = gs * nlog100(x) + (1.0 - gs) * select(nlog100(1.0 - x), -log1m(x), x < 1e-3);
        } else {
            v = tp.pos_weight * cw[c] * gs * softplus(-x) + (1.0 - gs) * softplus(x);
        }
    }
    if has(FOCAL_SIGMOID) {
        if PROBS {
            v = cw[c] * focal_prob(x, g, tp).x;
        } else {
            v = cw[c] * focal_sigmoid(x, g, tp).x;
        }
    }
    return v;
}

@compute @workgroup_size(256)
fn unreduced(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let s = (wid.x + wid.z * nwg.x) * 256u + lid;
    let n = wid.y;
    if s >= P.s || status[0] != 0u {
        return;
    }
    var tp = terms[0];
    // the block of this image's group (a coalesced batch: P.gn images each)
    tp.pos_weight = coefs[(n / P.gn) * P.gout + 1u];
    let f = tp.scale;
    if SOFTMAX {
        let lab = tword(n * P.s + s);
        var lse = 0.0;
        if lab != INVALID && !PROBS {
            lse = log_sum_exp(n, s);
        }
        if has(CE) {
            var v = 0.0;
            if lab != INVALID {
                v = (1.0 - tp.label_smoothing) * cw[lab] * (lse - logits[(n * P.c + lab) * P.s + s]);
                if tp.label_smoothing != 0.0 {
                    var acc = 0.0;
                    for (var c = 0u; c < P.c; c++) {
                        acc += cw[c] * (lse - logits[(n * P.c + c) * P.s + s]);
                    }
                    v += tp.label_smoothing / f32(P.c) * acc;
                }
            }
            out[n * P.s + s] = f * v;
            return;
        }
        for (var c = 0u; c < P.c; c++) {
            let e = (n * P.c + c) * P.s + s;
            var v = 0.0;
            if lab != INVALID {
                let x = logits[e];
                if has(FOCAL_SOFTMAX) && lab == c {
                    v = cw[c] * focal_softmax(lse - x, tp, c).x;
                }
                if has(FOCAL_SIGMOID) {
                    v = sigmoid_entry(tp, x, select(0.0, 1.0, lab == c), c);
                }
            }
            out[e] = f * v;
        }
    } else {
        for (var c = 0u; c < P.c; c++) {
            let e = (n * P.c + c) * P.s + s;
            let tb = tword(e);
            var v = 0.0;
            if tb != INVALID {
                v = sigmoid_entry(tp, logits[e], bitcast<f32>(tb), c);
            }
            out[e] = f * v;
        }
    }
}
