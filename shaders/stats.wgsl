// Fused statistics pass: reads logits and targets once and writes, per (image, tile, class), the
// workgroup partial of every sum the requested losses need: 16 channels as four vec4s
// (TP, SP, SG, SPP), (SGG, CNT, SS1, SS2), then two per pixel-loss slot. No atomics: reduce.wgsl
// adds the tiles in a fixed order, so the same input gives bit-identical sums on every run.

// (`Floats` and `Words`: io1.wgsl, or io4.wgsl's quads for the VEC4 kernel)
@group(0) @binding(0) var<storage, read> logits: Floats;
@group(0) @binding(1) var<storage, read> tgt: Words;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read> terms: array<Term>;
@group(0) @binding(4) var<storage, read> cw: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> status: array<atomic<u32>>; // bad-input flags (VALIDATE)
// COUNTS: per (image, count block) the confusion counts of the hard predictions, integers:
// softmax C x C (target row, prediction column), sigmoid per channel [target][prediction] 2 x 2.
// A count block is `cspan` pixels of an image: a tile, or with a GPU's short tiles 2048 pixels
// (several tiles), so that the counts' partials stay a fraction of the logits whatever the tiles,
// and the tiles do not depend on whether the pass counts. Integer atomics give the same counts
// whatever order threads run in; count_reduce.wgsl adds the blocks.
@group(0) @binding(7) var<storage, read_write> cnt: array<atomic<u32>>;
// LSE: the log-sum-exp of each non-ignored pixel, [n][s], for the gradient pass; FUSED
// (sigmoid): d loss / d x of the fused terms at every element, [n][c][s], 0 where ignored
@group(0) @binding(8) var<storage, read_write> elem_out: Floats;

const WG: u32 = 128u;   // threads per workgroup
const PIX: u32 = 16u;             // pixels per thread at most on a GPU; softmax on a CPU adapter
                                  // (WIDE) but on the long tiles (PIX_LONG)
const PIX_LONG: u32 = 128u;       // softmax on a CPU adapter with subgroups, at most CREG_MAX
                                  // classes, images of 16384 pixels or more: up to this many
                                  // (each thread's sums of each class cost a subgroupAdd per
                                  // channel, which long tiles share out)
const PIX_SIGMOID_CPU: u32 = 64u; // sigmoid on a CPU adapter (WIDE): a quarter of the reductions and
                                  // barriers, which a CPU adapter pays for most
// Softmax takes SPIX pixels per thread (at most PIX_ARRAY, the entry point's size of the
// per-pixel label and log-sum-exp arrays): on a GPU (not WIDE) 2 to PIX, the longest tiles that
// still give each image enough of them to hide memory latency; on a CPU adapter PIX, or with the
// subgroup entry point up to PIX_LONG (gpu::stats_tiling). A tile is WG * pix pixels of one image.

// COUNTS: pixels per count block (WG * max(pix, PIX), the host's gpu::count_span)
var<private> cspan: u32;

// COUNTS: the count block of pixel s of image n, among the image's (P.s / cspan, rounded up).
fn count_block(n: u32, s: u32) -> u32 {
    return n * ((P.s + cspan - 1u) / cspan) + s / cspan;
}

var<workgroup> red: array<vec4<f32>, 512>; // 4 * WG
const RGROUPS: u32 = 8u;                    // first-level sums per channel
const RSPAN: u32 = 16u;                     // lanes each adds: WG / RGROUPS
var<workgroup> red2: array<vec4<f32>, 32>;  // 4 * RGROUPS

// Element contribution to the two channels of a pixel-loss slot with parameters `tp` (loaded once
// per thread: a CPU adapter pays a load per lane per element). nlp = -log p, nlq = -log(1-p)
// (PROBS: clamped to 100 as PyTorch's binary_cross_entropy does); x the input, p the probability.
fn slot_stats(tp: Term, x: f32, p: f32, g: f32, nlp: f32, nlq: f32, label: u32, c: u32) -> vec2<f32> {
    var r = vec2<f32>(0.0);
    if has(BCE) && tp.kind == BCE {
        let gs = g * (1.0 - tp.label_smoothing) + 0.5 * tp.label_smoothing;
        r = vec2<f32>(gs * nlp, (1.0 - gs) * nlq);
    }
    if has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID {
        if PROBS {
            r.x = focal_prob(p, g, tp).x;
        } else {
            r.x = focal_sigmoid(x, g, tp).x;
        }
    }
    // cross-entropy is summed per pixel (ce_pixel), into class 0
    if has(FOCAL_SOFTMAX) && tp.kind == FOCAL_SOFTMAX && label == c {
        r.x = focal_softmax(nlp, tp, c).x;
    }
    return r;
}

// FUSED: the fused terms (after the slots in `terms`) with their scale resolved as the finalize
// resolves it: the term's weight, times focal's weight scale (sigmoid: in weight_sum, which
// softmax cross-entropy keeps as its slot's weight sum), over the count.
fn fused_terms() -> array<Term, 4> {
    var tf: array<Term, 4>;
    for (var t = 0u; t < min(FUSED, 4u); t++) {
        tf[t] = terms[NTERMS + t];
        tf[t].scale = tf[t].scale * select(tf[t].weight_sum, 1.0, SOFTMAX) / f32(P.fcount);
    }
    return tf;
}

// FUSED, softmax: d loss / d x of the fused cross-entropy terms `tf` (scales resolved) at the C
// elements of pixel s of image n (true class lab, log-sum-exp lse), written to elem_out: the
// gradient pass's arithmetic, term by term, so the same bits.
fn ce_fused_pixel(n: u32, s: u32, lab: u32, lse: vec2<f32>, tf: array<Term, 4>) {
    let wls = true_class_weights(lab);
    for (var c = 0u; c < P.c; c++) {
        let e = (n * P.c + c) * P.s + s;
        eout_set(e, ce_fused_elem(c, lg(e), lab, lse, tf, wls));
    }
}

// LSE: pixel s of image n's log-sum-exp for the gradient pass, in pix_out (lse_words).
fn put_lse(n: u32, s: u32, lse: vec2<f32>) {
    let w = lse_words(0u, n, s);
    eout_set(w.x, lse.x);
    eout_set(w.y, lse.y);
}

// Each fused term's weight of the true class lab, loaded once per pixel.
fn true_class_weights(lab: u32) -> array<f32, 4> {
    var wls: array<f32, 4>;
    for (var t = 0u; t < min(FUSED, 4u); t++) {
        wls[t] = cw[(NTERMS + t) * P.c + lab];
    }
    return wls;
}

// d loss / d x of the fused terms tf at class c (logit x) of a pixel of true class lab.
fn ce_fused_elem(c: u32, x: f32, lab: u32, lse: vec2<f32>, tf: array<Term, 4>, wls: array<f32, 4>) -> f32 {
    let cf = f32(P.c);
    let p = softmax_p(x, lse);
    let g = select(0.0, 1.0, lab == c);
    var d = 0.0;
    for (var t = 0u; t < min(FUSED, 4u); t++) {
        let tp = tf[t];
        let ls = tp.label_smoothing;
        // (without smoothing the class's weight adds ls / cf * (...) = 0 either way)
        var cwc = 0.0;
        if ls != 0.0 {
            cwc = cw[(NTERMS + t) * P.c + c];
        }
        d += tp.scale * ((1.0 - ls) * wls[t] * (p - g) + ls / cf * (tp.weight_sum * p - cwc));
    }
    return d;
}

// A pixel's share of cross-entropy slot t (PIXEL_ONLY), summed over its classes: the two
// channels slot_stats gives, (sum_c q_c (-log p_c), w_label), with nll = -log p_label.
fn ce_pixel(t: u32, tp: Term, label: u32, lse: vec2<f32>, nll: f32, n: u32, s: u32) -> vec2<f32> {
    let wt = cw[t * P.c + label];
    var a = (1.0 - tp.label_smoothing) * wt * nll;
    if tp.label_smoothing != 0.0 {
        var acc = 0.0;
        for (var c = 0u; c < P.c; c++) {
            acc += cw[t * P.c + c] * nlog_p(lse, lg((n * P.c + c) * P.s + s));
        }
        a += tp.label_smoothing / f32(P.c) * acc;
    }
    return vec2<f32>(a, wt);
}

// This thread's sums of one class: the four vec4 channels of the tile's partials.
struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

// The channels one element adds (`live`: not ignored, inside the image; else nothing): the
// region sums, the sensitivity/specificity sums and the pixel-loss slots.
fn add_element(acc: ptr<function, Acc>, live: bool, tp0: Term, tp1: Term, tp2: Term, tp3: Term, x: f32, p: f32, g: f32, nlp: f32, nlq: f32, label: u32, c: u32) {
    let z = vec4<f32>(0.0);
    (*acc).a0 += select(z, vec4<f32>(p * g, p, g, p * p), live);
    var b = vec4<f32>(g * g, 1.0, 0.0, 0.0);
    if SENSSPEC {
        let d = (g - p) * (g - p);
        b.z = d * g;
        b.w = d * (1.0 - g);
    }
    (*acc).a1 += select(z, b, live);
    var q2 = z;
    var q3 = z;
    if TPMIN {
        q3.w = min(p, g);
    }
    if NTERMS > 0u {
        q2 += vec4<f32>(slot_stats(tp0, x, p, g, nlp, nlq, label, c), 0.0, 0.0);
    }
    if NTERMS > 1u {
        q2 += vec4<f32>(0.0, 0.0, slot_stats(tp1, x, p, g, nlp, nlq, label, c));
    }
    if NTERMS > 2u {
        q3 += vec4<f32>(slot_stats(tp2, x, p, g, nlp, nlq, label, c), 0.0, 0.0);
    }
    if NTERMS > 3u {
        q3 += vec4<f32>(0.0, 0.0, slot_stats(tp3, x, p, g, nlp, nlq, label, c));
    }
    (*acc).a2 += select(z, q2, live);
    (*acc).a3 += select(z, q3, live);
}

// Sigmoid: this thread's sums of channel c of image n over its pixels of the tile (`pix` per
// thread, VEC4: pix / 4 quads, at tile_item), the first `rows` of them (tile_items). Branch-free per
// element (a CPU adapter runs both sides of a branch on its lanes, masked): the reads are clamped
// into the image, and an element outside it or ignored adds nothing.
fn sigmoid_sums(n: u32, c: u32, base: u32, pix: u32, rows: u32, lid: u32, tp0: Term, tp1: Term, tp2: Term, tp3: Term) -> Acc {
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // FUSED: the fused terms, and the channel's weight of each
    let tf = fused_terms();
    var cwf: array<f32, 4>;
    for (var t = 0u; t < min(FUSED, 4u); t++) {
        cwf[t] = cw[(NTERMS + t) * P.c + c];
    }
    let plane = (n * P.c + c) * P.s;
    if VEC4 {
        // the thread's quads of the tile (tile_item): planes are whole quads (the host picks
        // this kernel only for images of 4k pixels)
        for (var i = 0u; i < rows; i++) {
            let s = base + 4u * tile_item(i, lid, WG, pix / 4u);
            let inside = s < P.s;
            let q = (plane + min(s, P.s - 4u)) / 4u;
            let x4 = lg4(q);
            let w4 = tgt4(q);
            // (the four elements written out: a loop over them, which the compiler may keep,
            // indexes the vectors per lane)
            let e = 4u * q;
            let d4 = vec4<f32>(
                sigmoid_element(&acc, n, c, e, inside, x4.x, w4.x, tp0, tp1, tp2, tp3, tf, cwf),
                sigmoid_element(&acc, n, c, e + 1u, inside, x4.y, w4.y, tp0, tp1, tp2, tp3, tf, cwf),
                sigmoid_element(&acc, n, c, e + 2u, inside, x4.z, w4.z, tp0, tp1, tp2, tp3, tf, cwf),
                sigmoid_element(&acc, n, c, e + 3u, inside, x4.w, w4.w, tp0, tp1, tp2, tp3, tf, cwf),
            );
            if FUSED > 0u && inside {
                eout_set4(q, d4);
            }
        }
        return acc;
    }
    for (var i = 0u; i < rows; i++) {
        let s = base + tile_item(i, lid, WG, pix);
        let inside = s < P.s;
        let e = plane + min(s, P.s - 1u);
        let d = sigmoid_element(&acc, n, c, e, inside, lg(e), tgt_at(e), tp0, tp1, tp2, tp3, tf, cwf);
        if FUSED > 0u && inside {
            eout_set(e, d);
        }
    }
    return acc;
}

// Element e of a sigmoid plane (`inside` the image), logit x and raw target word w: its checks,
// counts and sums into `acc`; FUSED: its gradient (0 where ignored), which the caller writes.
fn sigmoid_element(acc: ptr<function, Acc>, n: u32, c: u32, e: u32, inside: bool, xr: f32, w: u32, tp0: Term, tp1: Term, tp2: Term, tp3: Term, tf: array<Term, 4>, cwf: array<f32, 4>) -> f32 {
    let tb = tword_of(w);
    if inside {
        // every element, ignored ones included
        check_sigmoid(e, xr, w);
    }
    let live = inside && tb != INVALID;
    let g = select(0.0, bitcast<f32>(tb), live);
    let x = select(0.0, xr, live);
    if COUNTS && live {
        let cell = select(0u, 2u, g == 1.0) + select(0u, 1u, x >= P.thr);
        atomicAdd(&cnt[(count_block(n, e % P.s) * P.c + c) * 4u + cell], 1u);
    }
    var p = x;
    var q = 1.0 - x;
    var nlp: f32; // -log p
    var nlq: f32; // -log(1 - p)
    if PROBS {
        nlp = nlog100(p);
        nlq = nlog100_1m(p);
    } else {
        let pn = sigmoid_nlq(x);
        p = pn.x;
        nlp = pn.y;
        nlq = pn.z;
        q = pn.w;
    }
    add_element(acc, live, tp0, tp1, tp2, tp3, x, p, g, nlp, nlq, 0u, c);
    var d = 0.0;
    if FUSED > 0u {
        // term by term, as the gradient pass adds them
        for (var t = 0u; t < min(FUSED, 4u); t++) {
            d += sigmoid_term_grad(tf[t], cwf[t], x, vec2<f32>(p, q), g).x;
        }
    }
    return select(0.0, d, live);
}

// Adds the threads' sums of class c over the workgroup in a fixed order and writes them as the
// tile's partials. Uniform control flow. sg: (this thread's index in its subgroup, the subgroup's
// index in the workgroup), with subgroups.
// - CPU adapter with subgroups (SUBGROUPS, WIDE): each subgroup adds its lanes (subgroupAdd) and
//   writes them as its own partial, slot P.chunks tile + subgroup of the image's P.tiles P.chunks.
//   No barrier: on llvmpipe a kernel with one runs its invocations as coroutines, which made the
//   softmax statistics of dice at 4x21x256x256 twice as slow (24 against 12 ms).
// - GPU: two levels, three barriers in all: RGROUPS threads per channel add RSPAN lanes each,
//   then one thread per channel adds those.
// - CPU adapter (WIDE), which pays for barriers most: one thread per channel adds the WG lanes
//   in order, after one barrier; with at most two channels in use the classes alternate between
//   the two halves of `red`, so no barrier is needed before the next class writes (a thread
//   writes a half again only after passing the next class's barrier, which the readers of that
//   half reach only once they are done).
fn write_partials(lid: u32, n: u32, tile: u32, c: u32, acc: Acc, nq: u32, sg: vec2<u32>) {
    if SUBGROUPS && WIDE {
        // (nq is uniform: so is every chunk_sum)
        let s0 = chunk_sum(acc.a0);
        let s1 = chunk_sum(acc.a1);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        if nq > 2u {
            s2 = chunk_sum(acc.a2);
        }
        if nq > 3u {
            s3 = chunk_sum(acc.a3);
        }
        if sg.x == 0u {
            let o = partial_slot(n, tile, c, sg);
            partials[o] = s0;
            partials[o + 1u] = s1;
            if nq > 2u {
                partials[o + 2u] = s2;
            }
            if nq > 3u {
                partials[o + 3u] = s3;
            }
        }
        return;
    }
    let out = partial_slot(n, tile, c, sg) + lid;
    // the half of `red` this class writes (the first, but on a CPU adapter with two channels)
    let h = select(0u, (c & 1u) * 2u * WG, WIDE && nq <= 2u);
    red[h + lid] = acc.a0;
    red[h + WG + lid] = acc.a1;
    if nq > 2u {
        red[h + 2u * WG + lid] = acc.a2;
    }
    if nq > 3u {
        red[h + 3u * WG + lid] = acc.a3;
    }
    workgroupBarrier();
    if WIDE {
        if lid < 4u {
            var sum = vec4<f32>(0.0);
            if lid < nq {
                // eight lanes per step: llvmpipe ends a shader's loops after 65535 iterations in
                // all, which a loop over the lanes per class would reach with a few hundred classes
                for (var i = 0u; i < WG; i += 8u) {
                    let o = h + lid * WG + i;
                    sum += red[o];
                    sum += red[o + 1u];
                    sum += red[o + 2u];
                    sum += red[o + 3u];
                    sum += red[o + 4u];
                    sum += red[o + 5u];
                    sum += red[o + 6u];
                    sum += red[o + 7u];
                }
            }
            partials[out] = sum;
        }
        if nq > 2u {
            workgroupBarrier();
        }
        return;
    }
    if lid < nq * RGROUPS {
        let q = lid / RGROUPS;
        let o = q * WG + (lid % RGROUPS) * RSPAN;
        var sum = red[o];
        for (var i = 1u; i < RSPAN; i++) {
            sum += red[o + i];
        }
        red2[lid] = sum;
    }
    workgroupBarrier();
    if lid < 4u {
        var sum = vec4<f32>(0.0);
        if lid < nq {
            sum = red2[lid * RGROUPS];
            for (var i = 1u; i < RGROUPS; i++) {
                sum += red2[lid * RGROUPS + i];
            }
        }
        partials[out] = sum;
    }
    workgroupBarrier();
}

// The first of the four partials of class c of this thread's slot: the tile's, or with subgroups
// (SUBGROUPS, WIDE) its subgroup's.
fn partial_slot(n: u32, tile: u32, c: u32, sg: vec2<u32>) -> u32 {
    if SUBGROUPS && WIDE {
        return ((n * P.tiles * P.chunks + tile * P.chunks + sg.y) * P.c + c) * 4u;
    }
    return ((n * P.tiles + tile) * P.c + c) * 4u;
}

// The pass (the entry point, `stats`, is stats_entry.wgsl's or stats_entry_sg.wgsl's).
fn stats_main(lid: u32, wid: vec3<u32>, nwg: vec3<u32>, sg: vec2<u32>) {
    // the image's tiles folded into x and z where they pass the device's workgroups per
    // dimension (a GPU's short tiles on an image of more than 2^27 pixels); the grid's last z
    // row may run past them (uniform per workgroup: no barrier is skipped by some threads only)
    let tile = wid.x + wid.z * nwg.x;
    if tile >= P.tiles {
        return;
    }
    // sigmoid: one (image, channel) plane per workgroup row, softmax: one image; from P.plane0
    // (in dispatches of at most the device's rows)
    let plane = wid.y + P.plane0;
    let n = select(plane / P.c, plane, SOFTMAX);
    let pix = select(min(SPIX, PIX_ARRAY), PIX_SIGMOID_CPU, WIDE && !SOFTMAX);
    let base = tile * WG * pix;
    cspan = WG * max(pix, PIX);
    // the pixel-loss slots' parameters, loaded once (slot 0 stands in for absent ones)
    var tp0: Term;
    var tp1: Term;
    var tp2: Term;
    var tp3: Term;
    if NTERMS > 0u {
        tp0 = terms[0];
        tp1 = terms[min(1u, NTERMS - 1u)];
        tp2 = terms[min(2u, NTERMS - 1u)];
        tp3 = terms[min(3u, NTERMS - 1u)];
    }
    // Softmax: label (INVALID when ignored or outside) and log-sum-exp of each pixel.
    var lab: array<u32, PIX_ARRAY>;
    var lse: array<vec2<f32>, PIX_ARRAY>;
    // the cross-entropy slots' two channels of this thread's pixels (added to class 0)
    var pa2 = vec4<f32>(0.0);
    var pa3 = vec4<f32>(0.0);
    // CREG, logits: each class's sums, added pixel by pixel from the logits in registers
    let regs = CREG > 0u && !PROBS;
    var accs: array<Acc, CREG_MAX>;
    if SOFTMAX {
        // FUSED: the fused cross-entropy terms
        let tfs = fused_terms();
        for (var i = 0u; i < pix; i++) {
            let s = base + tile_item(i, lid, WG, pix);
            var xr: array<f32, CREG_MAX>;
            lab[i] = INVALID;
            lse[i] = vec2<f32>(0.0);
            if s < P.s {
                lab[i] = tword(n * P.s + s);
                if FUSED > 0u && lab[i] == INVALID {
                    // the fused gradient is 0 at an ignored pixel
                    for (var c = 0u; c < P.c; c++) {
                        eout_set((n * P.c + c) * P.s + s, 0.0);
                    }
                }
                if VALIDATE != 0u {
                    check_target(n * P.s + s);
                    if lab[i] == INVALID {
                        // the main loop skips ignored pixels: their logits are checked here
                        for (var c = 0u; c < P.c; c++) {
                            let e = (n * P.c + c) * P.s + s;
                            check_logit(lg(e), e, false, false);
                        }
                    } else if !regs {
                        // a pixel needs one finite class (with the logits in registers:
                        // check_regs, below)
                        var masked = true;
                        for (var c = 0u; c < P.c; c++) {
                            masked = masked && is_neg_inf(lg((n * P.c + c) * P.s + s));
                        }
                        flag_if(masked, V_NEGINF, n * P.c * P.s + s);
                    }
                }
                if lab[i] != INVALID {
                    if !PROBS && CREG > 0u {
                        xr = load_regs(n, s);
                        if VALIDATE != 0u {
                            check_regs(&xr, n, s, lab[i], PIXEL_ONLY);
                        }
                        lse[i] = lse_regs(&xr);
                        if LSE {
                            put_lse(n, s, lse[i]);
                        }
                        if FUSED > 0u {
                            ce_regs(n, s, lab[i], lse[i], tfs, &xr);
                        }
                    } else if !PROBS {
                        lse[i] = log_sum_exp(n, s);
                        if LSE {
                            put_lse(n, s, lse[i]);
                        }
                        if FUSED > 0u {
                            // (the pixel's logits are in cache)
                            ce_fused_pixel(n, s, lab[i], lse[i], tfs);
                        }
                    }
                    if COUNTS {
                        // (the logits are in cache)
                        let best = argmax(n * P.c * P.s + s, P.s, P.c);
                        atomicAdd(&cnt[count_block(n, s) * P.c * P.c + min(lab[i], P.c - 1u) * P.c + best], 1u);
                    }
                    if PIXEL_ONLY && VALIDATE != 0u && !regs {
                        // the class loop below is skipped: every logit is checked here (with
                        // the logits in registers, check_regs did)
                        for (var c = 0u; c < P.c; c++) {
                            let e = (n * P.c + c) * P.s + s;
                            check_logit(lg(e), e, c == lab[i], true);
                        }
                    }
                    if has(CE) {
                        let nll = nlog_p(lse[i], lg((n * P.c + lab[i]) * P.s + s));
                        if NTERMS > 0u && tp0.kind == CE {
                            pa2 += vec4<f32>(ce_pixel(0u, tp0, lab[i], lse[i], nll, n, s), 0.0, 0.0);
                        }
                        if NTERMS > 1u && tp1.kind == CE {
                            pa2 += vec4<f32>(0.0, 0.0, ce_pixel(1u, tp1, lab[i], lse[i], nll, n, s));
                        }
                        if NTERMS > 2u && tp2.kind == CE {
                            pa3 += vec4<f32>(ce_pixel(2u, tp2, lab[i], lse[i], nll, n, s), 0.0, 0.0);
                        }
                        if NTERMS > 3u && tp3.kind == CE {
                            pa3 += vec4<f32>(0.0, 0.0, ce_pixel(3u, tp3, lab[i], lse[i], nll, n, s));
                        }
                    }
                    if regs && !PIXEL_ONLY {
                        add_regs(&accs, &xr, n, s, lab[i], lse[i], tp0, tp1, tp2, tp3);
                    }
                }
            }
        }
    }
    var nq = 2u + (NTERMS + 1u) / 2u; // vec4 channels in use
    if TPMIN {
        nq = 4u; // sum min(p, g) is channel 15
    }
    if !SOFTMAX {
        let c = plane % P.c;
        // only the thread's pixels in the image (all but in a last, short tile): a small image's
        // one wide tile walks only those
        var rows = tile_items(lid, WG, pix, P.s - base);
        if VEC4 {
            rows = tile_items(lid, WG, pix / 4u, (P.s - base + 3u) / 4u);
        }
        write_partials(lid, n, tile, c, sigmoid_sums(n, c, base, pix, rows, lid, tp0, tp1, tp2, tp3), nq, sg);
        flush_bad();
        return;
    }
    if regs && !PIXEL_ONLY {
        write_regs(lid, n, tile, &accs, pa2, pa3, nq, sg);
        flush_bad();
        return;
    }
    for (var c = 0u; c < P.c; c++) {
        var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if c == 0u {
            acc.a2 = pa2;
            acc.a3 = pa3;
        } else if PIXEL_ONLY {
            // no per-class sums: the other classes' entries are zero
            if SUBGROUPS && WIDE {
                if sg.x == 0u {
                    let o = partial_slot(n, tile, c, sg);
                    for (var q = 0u; q < nq; q++) {
                        partials[o + q] = vec4<f32>(0.0);
                    }
                }
            } else if lid < 4u {
                partials[partial_slot(n, tile, c, sg) + lid] = vec4<f32>(0.0);
            }
            continue;
        }
        for (var i = 0u; i < pix; i++) {
            if PIXEL_ONLY {
                break;
            }
            let label = lab[i];
            if label == INVALID {
                continue;
            }
            let e = (n * P.c + c) * P.s + base + tile_item(i, lid, WG, pix);
            let x = lg(e);
            if VALIDATE != 0u {
                check_logit(x, e, label == c, true);
            }
            let g = select(0.0, 1.0, label == c);
            var p: f32;
            var nlp: f32; // -log p
            if PROBS {
                p = x;
                nlp = nlog100(p);
            } else {
                nlp = nlog_p(lse[i], x);
                p = softmax_p(x, lse[i]);
            }
            add_element(&acc, true, tp0, tp1, tp2, tp3, x, p, g, nlp, 0.0, label, c);
        }
        write_partials(lid, n, tile, c, acc, nq, sg);
    }
    flush_bad();
}
