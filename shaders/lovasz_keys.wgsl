// The Lovász key pass (lovasz.wgsl describes keys and payloads): each element's sort key and
// payload, at its place in the segments. Its bindings are its own, so that it can report bad
// input: where an input checked on the device has only Lovász losses, no statistics pass reads it,
// and this pass makes the checks (checks.wgsl, VALIDATE) as it reads every logit and target word.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<uniform> LP: LovParams;
// (`KeyWords`: keys1.wgsl, or keysitems.wgsl's interleaved items, where vals is not used)
@group(0) @binding(4) var<storage, read_write> keys: KeyWords;
@group(0) @binding(5) var<storage, read_write> vals: array<u32>;
// [element] Jaccard weight (not written here); softmax on logits: then [n][s] the log-sum-exp of
// each pixel, which the gradient pass reads back
@group(0) @binding(6) var<storage, read_write> lw: array<f32>;
// The bad-input flags (checks.wgsl), where VALIDATE asks for checks
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

const NONE: u32 = 0xFFFFFFFFu;

fn key_of(err: f32) -> u32 {
    if err > 0.0 {
        return ~bitcast<u32>(err);
    }
    return NONE;
}

// For the gradient pass, after the weights of the N C S elements: pixel s of image n's
// log-sum-exp (lse_words).
fn put_lse(n: u32, s: u32, lse: vec2<f32>) {
    let w = lse_words(P.n * P.c * P.s, n, s);
    lw[w.x] = lse.x;
    lw[w.y] = lse.y;
}

// The key and payload of class c's element of softmax pixel s of image n (true class lab, logit x
// or probability p, log-sum-exp lse), at its place in the segments.
fn put_key(n: u32, s: u32, c: u32, x: f32, lab: u32, lse: vec2<f32>) {
    let e = (n * P.c + c) * P.s + s;
    var pos = e;
    if LP.per_image == 0u {
        pos = c * (P.n * P.s) + n * P.s + s;
    }
    var p = x;
    if !PROBS {
        p = softmax_p(x, lse);
    }
    let fg = lab == c;
    put_kv(pos, key_of(abs(select(0.0, 1.0, fg) - p)), e | select(0u, 0x80000000u, fg));
}

// Keys and payloads, one thread per pixel (image y, pixel from x and z).
@compute @workgroup_size(256)
fn lovasz_keys(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let s = (wid.x + wid.z * nwg.x) * 256u + lid;
    // softmax: the image, sigmoid: the (image, channel) plane; from P.plane0 (in dispatches of
    // at most the device's rows)
    let n = wid.y + P.plane0;
    if s >= P.s {
        return;
    }
    if SOFTMAX {
        let word = tgt_at(n * P.s + s);
        let lab = tword_of(word);
        if VALIDATE != 0u {
            check_word(word, n * P.s + s);
        }
        var lse = vec2<f32>(0.0);
        if CREG > 0u && !PROBS && lab != INVALID {
            // the pixel's logits in registers, each loaded once (lse.wgsl), its checks from them
            var x = load_regs(n, s);
            if VALIDATE != 0u {
                check_regs(&x, n, s, lab, true);
            }
            lse = lse_regs(&x);
            put_lse(n, s, lse);
            keys_regs(n, s, &x, lab, lse);
            flush_bad();
            return;
        }
        if lab != INVALID && !PROBS {
            lse = log_sum_exp(n, s);
            put_lse(n, s, lse);
        }
        // (the checks: an ignored pixel's logits too, and a counted pixel needs one finite class)
        var masked = true;
        for (var c = 0u; c < P.c; c++) {
            let e = (n * P.c + c) * P.s + s;
            var pos = e;
            if LP.per_image == 0u {
                pos = c * (P.n * P.s) + n * P.s + s;
            }
            // (each logit loaded once: an ignored pixel's only for its checks)
            var x = 0.0;
            if VALIDATE != 0u || lab != INVALID {
                x = logits[e];
            }
            if VALIDATE != 0u {
                check_logit(x, e, c == lab, lab != INVALID);
                masked = masked & is_neg_inf(x);
            }
            if lab == INVALID {
                put_kv(pos, NONE, NONE);
            } else {
                put_key(n, s, c, x, lab, lse);
            }
        }
        if VALIDATE != 0u {
            flag_if(masked & (lab != INVALID), V_NEGINF, n * P.c * P.s + s);
        }
    } else {
        // one (image, channel) plane per workgroup row
        let e = n * P.s + s;
        let x = lg(e);
        let w = tgt_at(e);
        let kv = hinge_kv_of(e, x, w);
        put_kv(e, kv.x, kv.y);
        check_sigmoid(e, x, w);
    }
    flush_bad();
}
