// Elementwise gradient pass: d loss / d logits of a whole expression. Region losses arrive as
// per-(image, class) coefficients of d loss / d p that finalize.wgsl wrote on the device (the
// expression's coefficient block, bound as `coefs`), chained through the sigmoid or the softmax;
// pixel losses (bce, ce, focal) add their direct d / d x with the scales finalize resolved
// (coefs[2 t], coefs[2 t + 1]: scale and pos_weight of pixel term t). The output is a slice of
// any buffer (the caller's included): overwritten, or added to with ACCUM. Nothing is written
// when the checks found bad input (checks.wgsl).

// (`Floats` and `Words`: io1.wgsl, or io4.wgsl's quads for the VEC4 kernel)
@group(0) @binding(0) var<storage, read> logits: Floats;
@group(0) @binding(1) var<storage, read> tgt: Words;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read> terms: array<Term>;
@group(0) @binding(4) var<storage, read> cw: array<f32>;
@group(0) @binding(5) var<storage, read> coefs: array<f32>;
@group(0) @binding(6) var<storage, read_write> elem_out: Floats; // the gradient
// LOVASZ: the Lovász Jaccard weight per element (softmax on logits: then the log-sum-exp per
// pixel that the Lovász keys pass kept); LSE (softmax, no Lovász): the log-sum-exp per pixel that
// the statistics pass kept. Either way this pass reads each logit once less.
@group(0) @binding(7) var<storage, read> aux: array<f32>;
@group(0) @binding(8) var<storage, read> status: array<u32>; // bad-input flags (checks.wgsl)
// UNREDUCED: the entries of the expression's one pixel term (`reduction=none`), times
// terms[0].scale as the host wrote it (the term's factor): per element of bce and focal, per
// pixel of ce; 0 where ignored.
@group(0) @binding(9) var<storage, read_write> unr: array<f32>;

const GWG: u32 = 256u;
// A thread takes GPIX pixels (VEC4: quads), an override: 4 on a GPU; on a CPU adapter 16 for
// sigmoid, for softmax 16 with the classes in registers, else 8 (4 with Lovász; see
// gpu::grad_pix); a workgroup covers GWG * GPIX of one image. The per-pixel arrays hold the most.
const GPIX_MAX: u32 = 16u;
const NCOEF: u32 = 6u;

// The first float of this image's group's coefficient block (a coalesced batch: groups of P.gn
// images, each with its own block, P.gout floats apart).
var<private> cb: u32;

// Pixel term t with the scale and pos_weight finalize resolved.
fn term(t: u32) -> Term {
    var tp = terms[t];
    tp.scale = coefs[cb + 2u * t];
    tp.pos_weight = coefs[cb + 2u * t + 1u];
    return tp;
}

// What every pixel of a thread shares for class c of image n, loaded once per thread (a CPU
// adapter pays a load per lane per element): the region coefficients d loss / d (TP, SP, SPP,
// SS1, SS2), and the scale of the class's Lovász segment.
struct ClassCoefs {
    r: vec4<f32>,
    r4: f32,
    r5: f32, // d loss / d sum min(p, g)
    lov: f32,
    // softmax: region_dp at a one-hot target, a line in p: (a, b) of a + b p where the class is
    // not the pixel's (g = 0), then where it is (g = 1)
    oh: vec4<f32>,
}

// `n`: the image in the batch the coefficients describe.
fn class_coefs(n: u32, c: u32) -> ClassCoefs {
    var k: ClassCoefs;
    k.r = vec4<f32>(0.0);
    k.r4 = 0.0;
    k.r5 = 0.0;
    k.lov = 0.0;
    k.oh = vec4<f32>(0.0);
    if REGION {
        let o = cb + P.region_base + ((n % P.gn) * P.c + c) * NCOEF;
        k.r = vec4<f32>(coefs[o], coefs[o + 1u], coefs[o + 2u], coefs[o + 3u]);
        k.r4 = coefs[o + 4u];
        k.r5 = coefs[o + 5u];
        // region_dp with g = 0: d min(p, 0) / d p = 0 for p >= 0; with g = 1: d min(p, 1) / d p =
        // 1 for p <= 1 (a softmax's p, or probabilities, which the checks keep in [0, 1])
        k.oh = vec4<f32>(k.r.y, 2.0 * k.r.z + 2.0 * k.r4, k.r.x + k.r.y - 2.0 * k.r.w + k.r5, 2.0 * k.r.z + 2.0 * k.r.w);
    }
    if LOVASZ != 0u {
        // hinge: one segment per group; softmax: one per class (of each image when per image)
        var seg = select(0u, n, LOVASZ == 2u);
        if SOFTMAX {
            seg = select(c, n * P.c + c, LOVASZ == 2u);
        }
        k.lov = coefs[cb + P.lov_base + seg];
    }
    return k;
}

// The log-sum-exp of pixel s of image n that the statistics or Lovász keys pass kept in aux from
// word o (lse_words).
fn kept_lse(o: u32, n: u32, s: u32) -> vec2<f32> {
    let w = lse_words(o, n, s);
    return vec2<f32>(aux[w.x], aux[w.y]);
}

// d loss / d p of the region losses for one element.
fn region_dp(k: ClassCoefs, p: f32, g: f32) -> f32 {
    if !REGION {
        return 0.0;
    }
    let d = g - p;
    // d min(p, g) / d p: 1 below g, 0 above, g at g (the product's derivative there)
    let dmin = select(select(0.0, 1.0, p < g), g, p == g);
    return k.r.x * g + k.r.y + 2.0 * k.r.z * p - 2.0 * d * (k.r.w * g + k.r4 * (1.0 - g)) + k.r5 * dmin;
}

fn put(e: u32, d: f32) {
    if ACCUM {
        eout_set(e, eout_get(e) + d);
    } else {
        eout_set(e, d);
    }
}

// put over quad q (elements 4 q .. 4 q + 3).
fn put4(q: u32, d: vec4<f32>) {
    if ACCUM {
        eout_set4(q, eout_get4(q) + d);
    } else {
        eout_set4(q, d);
    }
}

// Pixel i of thread lid in the block of GWG GPIX pixels (or quads) from t0: tile_item, but the
// rows for softmax on a CPU adapter too, where the runs made the pass slower (cross-entropy at
// 4x21x256x256 on llvmpipe: 13.5 -> 19-23 ms, with 4, 8 or 16 pixels per thread; the statistics
// pass's softmax tiles are faster with them: 10.7 -> 8.5 ms). The cause is not known.
fn px(t0: u32, lid: u32, i: u32) -> u32 {
    if SOFTMAX {
        return t0 + i * GWG + lid;
    }
    return t0 + tile_item(i, lid, GWG, GPIX);
}

// The gradient d of channel c at this thread's pixels of image n (those inside the image).
fn put_pixels(n: u32, c: u32, t0: u32, lid: u32, d: array<f32, GPIX_MAX>) {
    for (var i = 0u; i < GPIX; i++) {
        let s = px(t0, lid, i);
        if s < P.s {
            put((n * P.c + c) * P.s + s, d[i]);
        }
    }
}

// UNREDUCED: entries v (times the factor f) of plane `plane` (n C + c, or n for ce) at this
// thread's pixels.
fn put_entries(plane: u32, t0: u32, lid: u32, f: f32, v: array<f32, GPIX_MAX>) {
    for (var i = 0u; i < GPIX; i++) {
        let s = px(t0, lid, i);
        if s < P.s {
            unr[plane * P.s + s] = f * v[i];
        }
    }
}

// d loss / d p_c of the region and Lovász-Softmax terms for one element of a softmax pixel.
fn softmax_dp(k: ClassCoefs, e: u32, p: f32, g: f32) -> f32 {
    var w = 0.0;
    if LOVASZ != 0u {
        w = aux[e];
    }
    return softmax_dp_w(k, w, p, g);
}

// softmax_dp with the element's Lovász weight w (aux) given; g is 0 or 1, so the region losses'
// part is the line of k.oh (region_dp's value, in fewer operations: a CPU adapter keeps each
// class's coefficients in registers, and this runs twice per element).
fn softmax_dp_w(k: ClassCoefs, w: f32, p: f32, g: f32) -> f32 {
    var u = 0.0;
    if REGION {
        let hot = g != 0.0;
        u = select(k.oh.x, k.oh.z, hot);
        if SLOPE {
            u += select(k.oh.y, k.oh.w, hot) * p;
        }
    }
    if LOVASZ != 0u {
        // d |g - p| / d p = sign(p - g), 0 where the error is 0
        u += k.lov * w * sign(p - g);
    }
    return u;
}

// The sigmoid gradient of channel c of image n at this thread's pixels of the block from pixel
// t0 (px), or (VEC4) its quads of the block from quad t0. Branch-free per
// element (a CPU adapter runs both sides of a branch on its lanes, masked): reads are clamped
// into the image and ignored elements select 0. The pixel terms' parameters are loaded once.
fn sigmoid_plane(n: u32, c: u32, t0: u32, lid: u32, uf: f32) {
    let ni = n + P.img0;
    cb = (ni / P.gn) * P.gout;
    let k = class_coefs(ni, c);
    var tps: array<Term, 4>;
    var cws: array<f32, 4>;
    for (var t = 0u; t < min(NTERMS, 4u); t++) {
        tps[t] = term(t);
        cws[t] = cw[t * P.c + c];
    }
    let plane = (n * P.c + c) * P.s;
    if VEC4 {
        // planes are whole quads (the host picks this kernel only for images of 4k pixels)
        for (var i = 0u; i < GPIX; i++) {
            let s = 4u * px(t0, lid, i);
            let inside = s < P.s;
            let q = (plane + min(s, P.s - 4u)) / 4u;
            let x4 = lg4(q);
            let w4 = tgt4(q);
            // (the four elements written out, as in the statistics pass)
            let e = 4u * q;
            let r0 = sigmoid_grad(k, tps, cws, c, e, inside, x4.x, tword_of(w4.x));
            let r1 = sigmoid_grad(k, tps, cws, c, e + 1u, inside, x4.y, tword_of(w4.y));
            let r2 = sigmoid_grad(k, tps, cws, c, e + 2u, inside, x4.z, tword_of(w4.z));
            let r3 = sigmoid_grad(k, tps, cws, c, e + 3u, inside, x4.w, tword_of(w4.w));
            let d4 = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
            let ev4 = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
            if inside {
                put4(q, d4);
                if UNREDUCED {
                    unr[e] = uf * ev4.x;
                    unr[e + 1u] = uf * ev4.y;
                    unr[e + 2u] = uf * ev4.z;
                    unr[e + 3u] = uf * ev4.w;
                }
            }
        }
        return;
    }
    for (var i = 0u; i < GPIX; i++) {
        let s = px(t0, lid, i);
        let inside = s < P.s;
        let e = plane + min(s, P.s - 1u);
        let r = sigmoid_grad(k, tps, cws, c, e, inside, lg(e), tword(e));
        if inside {
            put(e, r.x);
            if UNREDUCED {
                unr[e] = uf * r.y;
            }
        }
    }
}

// Element e of channel c (`inside` the image), logit x and target word tb: (d loss / d x, the
// entry of UNREDUCED), both 0 where ignored.
fn sigmoid_grad(k: ClassCoefs, tps: array<Term, 4>, cws: array<f32, 4>, c: u32, e: u32, inside: bool, x: f32, tb: u32) -> vec2<f32> {
    let live = inside && tb != INVALID;
    let g = select(0.0, bitcast<f32>(tb), live);
    var ev = 0.0;
    var pq = vec2<f32>(x, 1.0 - x);
    var d = 0.0;
    if PROBS {
        d = region_dp(k, x, g);
    } else {
        pq = sigmoid2(x);
        if REGION {
            d = region_dp(k, pq.x, g) * pq.x * pq.y;
        }
    }
    if LOVASZ != 0u {
        // hinge: d relu(1 - x (2g - 1)) / d x
        d -= select(0.0, k.lov * aux[e] * (2.0 * g - 1.0), hinge_error(x, g) > 0.0);
    }
    for (var t = 0u; t < NTERMS; t++) {
        var tp: Term;
        var cwc: f32;
        if t < 4u {
            tp = tps[t];
            cwc = cws[t];
        } else {
            tp = term(t);
            cwc = cw[t * P.c + c];
        }
        let r = sigmoid_term_grad(tp, cwc, x, pq, g);
        d += r.x;
        if (has(BCE) && tp.kind == BCE) || (has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID) {
            ev = r.y;
        }
    }
    // ignored elements get 0
    return select(vec2<f32>(0.0), vec2<f32>(d, ev), live);
}

// Pixel term tp at class c of a softmax pixel of true class lab: (its d loss / d x, its
// unreduced entry where it is a focal term). x the logit, p the probability, wl the term's
// weight of the true class and cwc its weight of class c (cross-entropy, sigmoid focal), nlq
// -log p of the true class (softmax focal).
fn softmax_term(tp: Term, c: u32, x: f32, p: f32, lab: u32, wl: f32, cwc: f32, nlq: f32) -> vec2<f32> {
    let g = select(0.0, 1.0, lab == c);
    var r = vec2<f32>(0.0);
    if has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID {
        r = focal_sigmoid_term(tp, cwc, x, p, g);
    }
    if has(CE) && tp.kind == CE {
        let ls = tp.label_smoothing;
        r.x = tp.scale * ((1.0 - ls) * wl * (p - g) + ls / f32(P.c) * (tp.weight_sum * p - cwc));
    }
    if has(FOCAL_SOFTMAX) && tp.kind == FOCAL_SOFTMAX {
        // the pixel's term is its true class's, with that class's weight
        let fv = focal_softmax(nlq, tp, lab);
        r = vec2<f32>(tp.scale * wl * fv.y * (g - p), select(0.0, wl * fv.x, lab == c));
    }
    return r;
}

@compute @workgroup_size(256)
fn gradient(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // x (and z, for very large images) walk the blocks of GWG GPIX pixels of image y (VEC4,
    // sigmoid: of quads); pixel i of this thread is px(t0, lid, i) (tile_item)
    let blk = wid.x + wid.z * nwg.x;
    let t0 = blk * GWG * GPIX;
    // the thread's first pixel (element)
    var s0 = px(t0, lid, 0u);
    if VEC4 && !SOFTMAX {
        s0 = 4u * s0;
    }
    // softmax: image wid.y + P.plane0; sigmoid: plane wid.y + P.plane0 (one per workgroup row,
    // in dispatches of at most the device's rows)
    let plane = wid.y + P.plane0;
    let n = select(plane / P.c, plane, SOFTMAX);
    if s0 >= P.s || status[0] != 0u {
        return;
    }
    // the coefficients are those of image n + P.img0 of the batch they were finalized for
    let ni = n + P.img0;
    cb = (ni / P.gn) * P.gout;
    let cf = f32(P.c);
    var d: array<f32, GPIX_MAX>;
    // the unreduced entries' factor
    var uf = 0.0;
    if UNREDUCED {
        uf = terms[0].scale;
    }
    if SOFTMAX && CREG > 0u {
        softmax_regs(n, ni, t0, lid);
    } else if SOFTMAX {
        // per pixel: label (INVALID when ignored or outside), log-sum-exp, -log p_label, and
        // sum_c p_c dL/dp_c
        var lab: array<u32, GPIX_MAX>;
        var lse: array<vec2<f32>, GPIX_MAX>;
        var nlq: array<f32, GPIX_MAX>;
        var dot: array<f32, GPIX_MAX>;
        for (var i = 0u; i < GPIX; i++) {
            let s = px(t0, lid, i);
            lab[i] = INVALID;
            dot[i] = 0.0;
            if s < P.s {
                lab[i] = tword(n * P.s + s);
                if lab[i] != INVALID && !PROBS {
                    if LSE && LOVASZ == 0u {
                        lse[i] = kept_lse(0u, n, s);
                    } else if LOVASZ != 0u {
                        // the Lovász keys pass kept it after the weights (lovasz_keys.wgsl)
                        lse[i] = kept_lse(P.n * P.c * P.s, n, s);
                    } else {
                        lse[i] = log_sum_exp(n, s);
                    }
                    // (-log p of the true class: softmax focal, and ce's unreduced entries)
                    if has(FOCAL_SOFTMAX) || (UNREDUCED && has(CE)) {
                        nlq[i] = nlog_p(lse[i], lg((n * P.c + lab[i]) * P.s + s));
                    }
                }
            }
        }
        // (probabilities: d loss / d p is the gradient, no softmax to chain through)
        if (REGION || LOVASZ != 0u) && !PROBS {
            for (var c = 0u; c < P.c; c++) {
                let k = class_coefs(ni, c);
                for (var i = 0u; i < GPIX; i++) {
                    if lab[i] != INVALID {
                        let e = (n * P.c + c) * P.s + px(t0, lid, i);
                        let p = softmax_p(lg(e), lse[i]);
                        dot[i] += p * softmax_dp(k, e, p, select(0.0, 1.0, lab[i] == c));
                    }
                }
            }
        }
        // the pixel terms' parameters, loaded once (as sigmoid_plane does), and the first term's
        // weight of each pixel's true class (a load per pixel, not per element)
        var tps: array<Term, 4>;
        for (var t = 0u; t < min(NTERMS, 4u); t++) {
            tps[t] = term(t);
        }
        var w0: array<f32, GPIX_MAX>;
        for (var i = 0u; i < GPIX; i++) {
            w0[i] = 0.0;
            if NTERMS > 0u && lab[i] != INVALID {
                w0[i] = cw[lab[i]];
            }
        }
        for (var c = 0u; c < P.c; c++) {
            let k = class_coefs(ni, c);
            var xs: array<f32, GPIX_MAX>;
            var ps: array<f32, GPIX_MAX>;
            var ev: array<f32, GPIX_MAX>; // entries (UNREDUCED), 0 where ignored
            for (var i = 0u; i < GPIX; i++) {
                d[i] = 0.0;
                if lab[i] != INVALID {
                    let e = (n * P.c + c) * P.s + px(t0, lid, i);
                    xs[i] = lg(e);
                    if PROBS {
                        ps[i] = xs[i];
                        d[i] = softmax_dp(k, e, ps[i], select(0.0, 1.0, lab[i] == c));
                    } else {
                        ps[i] = softmax_p(xs[i], lse[i]);
                        d[i] = ps[i] * (softmax_dp(k, e, ps[i], select(0.0, 1.0, lab[i] == c)) - dot[i]);
                    }
                }
            }
            for (var t = 0u; t < NTERMS; t++) {
                var tp: Term;
                if t < 4u {
                    tp = tps[t];
                } else {
                    tp = term(t);
                }
                // the term's weight of class c (cross-entropy, sigmoid focal)
                var cwc = 0.0;
                if (has(CE) && tp.kind == CE) || (has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID) {
                    cwc = cw[t * P.c + c];
                }
                for (var i = 0u; i < GPIX; i++) {
                    if lab[i] == INVALID {
                        continue;
                    }
                    // the term's weight of the true class
                    var wl: f32;
                    if t == 0u {
                        wl = w0[i];
                    } else {
                        wl = cw[t * P.c + lab[i]];
                    }
                    let r = softmax_term(tp, c, xs[i], ps[i], lab[i], wl, cwc, nlq[i]);
                    d[i] += r.x;
                    if (has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID) || (has(FOCAL_SOFTMAX) && tp.kind == FOCAL_SOFTMAX) {
                        ev[i] = r.y;
                    }
                }
            }
            put_pixels(n, c, t0, lid, d); // ignored pixels get 0 in every channel
            if UNREDUCED && !has(CE) {
                put_entries(n * P.c + c, t0, lid, uf, ev);
            }
        }
        if UNREDUCED && has(CE) {
            // per pixel: (1 - ls) w_y (-log p_y) + ls / C sum_c w_c (-log p_c); the weights are
            // the statistics' (scaled to a largest of 1), whose scale the factor undoes
            let tp = terms[0];
            var ev: array<f32, GPIX_MAX>;
            for (var i = 0u; i < GPIX; i++) {
                if lab[i] != INVALID {
                    ev[i] = (1.0 - tp.label_smoothing) * cw[lab[i]] * nlq[i];
                    if tp.label_smoothing != 0.0 {
                        var acc = 0.0;
                        for (var c = 0u; c < P.c; c++) {
                            acc += cw[c] * nlog_p(lse[i], lg((n * P.c + c) * P.s + px(t0, lid, i)));
                        }
                        ev[i] += tp.label_smoothing / cf * acc;
                    }
                }
            }
            put_entries(n, t0, lid, uf, ev);
        }
    } else {
        sigmoid_plane(n, plane % P.c, t0, lid, uf);
    }
}
