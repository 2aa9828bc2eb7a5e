// Device finalize: turns the per-(image, class) sums of the statistics passes and the per-segment
// Lovász sums into the value of every term and expression, and into the coefficients the gradient
// pass reads, so that statistics and gradient run in one submission with no host round trip.
// It is the f32 twin of `finalize` in src/plan.rs (which the tests hold it to).
//
// One workgroup runs the ops of a recording in order (one op per term of each expression), in one
// dispatch or in several (each within llvmpipe's loop limit: gpu::FINALIZE_LOOP_BUDGET); inside
// an op the threads split the (image, class) entries and meet in fixed-order tree reductions, so
// reruns are bit-identical. Ops accumulate into `out` (the host clears it first): the expression's
// value, and the coefficient block of the expression:
//   block + 2 t, block + 2 t + 1: scale and pos_weight of the expression's pixel term t
//   block + op.sub + (n C + c) NCOEF + k: d loss / d (TP, SP, SPP, SS1, SS2) of (n, c) (region
//     ops: `sub` is the block's region base)
//   block + op.sub + seg: the scale of Lovász segment seg
// When the checks found bad input (status[0] != 0; checks.wgsl) every value is NaN and every
// coefficient 0; the host turns the status into a typed error.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> sums: array<f32>;        // [pass][n][c][K]
@group(0) @binding(2) var<storage, read> lov: array<vec4<u32>>;   // Lovász segments: value bits, fg, bg, kept
@group(0) @binding(3) var<storage, read> ops: array<Op>;
@group(0) @binding(4) var<storage, read> cls: array<u32>;          // class lists of the ops
@group(0) @binding(5) var<storage, read> status: array<u32>;      // [0]: bad-input flags
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const NCOEF: u32 = 6u;
const COEF_TPMIN: u32 = 5u; // the coefficient of sum min(p, g)
const TPMIN_DEV: u32 = 15u;  // its statistics channel (pass 0)

// Op kinds (src/plan.rs, `op`).
const OP_BCE: u32 = 0u;
const OP_FOCAL: u32 = 1u;
const OP_CE: u32 = 2u;
const OP_SENSSPEC: u32 = 4u;
const OP_REGION: u32 = 5u;
const OP_GDICE: u32 = 6u;
const OP_LOVASZ: u32 = 7u;

// Op flags.
const F_POS_AUTO: u32 = 1u;      // bce: pos_weight = auto
const F_FOCAL_SOFTMAX: u32 = 1u; // focal: act = softmax (mean over pixels, not elements)
const F_SQUARED: u32 = 4u;       // region: squared denominator
const F_LOG: u32 = 128u;         // region: -log(max(score, floor))
const F_PER_IMAGE: u32 = 1u;     // lovasz: one group per image
const F_SOFTMAX: u32 = 2u;       // lovasz: Lovász-Softmax (segments per class)
const F_PRESENT: u32 = 4u;       // lovasz: only classes present in the group's target
const F_WEIGHTS: u32 = 4096u;    // region, focal, bce: per-class weights (f32 bits) in `cls` from `nseg`
const F_MIN: u32 = 8192u;        // region: TP is sum min(p, g) (intersection=min)

// Region kinds (flags bits 0..1), pools (bits 3..4), empty rules (bits 5..6), gdice weights (bits 8..9).
const R_DICE: u32 = 0u;
const R_JACCARD: u32 = 1u;
const POOL_BATCH: u32 = 0u;
const POOL_IMAGE: u32 = 1u;
const POOL_ALL: u32 = 2u;
const POOL_IMAGE_ALL: u32 = 3u;
// The divisor of a weighted class mean (flags bits 10..11).
const NORM_COUNT: u32 = 0u;
const NORM_IMAGE: u32 = 2u;
const EMPTY_ZERO: u32 = 0u;
const EMPTY_SKIP: u32 = 1u;
const GD_SQUARE: u32 = 0u;
const GD_SIMPLE: u32 = 1u;

// A score whose clamped denominator is at most this is 0/0: score 1, gradient 0 (SCORE_DEN_FLOOR).
const DEN_FLOOR: f32 = 1e-30;

struct Op {
    kind: u32,
    weight: f32,
    val: u32,    // out index of the term's value
    eval: u32,   // out index of the expression's value
    block: u32,  // out index of the expression's coefficient block; NONE_IDX: no gradient
    sub: u32,    // pixel: term index in the block; region: the block's region base; lovasz: offset
                 // of its segment scales in the block
    sbase: u32,  // sums index of the statistics pass holding this op's pixel-loss channels
    chan: u32,   // pixel: first of the two channels; lovasz: first segment in `lov`
    flags: u32,
    ncls: u32,   // classes listed in `cls` (0: every class)
    cls_off: u32,
    nseg: u32,   // lovasz: segments; region, focal, bce with F_WEIGHTS: the weights' offset in `cls`
    f0: f32,     // region: smooth_nr; bce: pos_weight; sensspec: lambda
    f1: f32,     // region: smooth_dr; sensspec: smooth
    f2: f32,     // region: eps
    f3: f32,     // region: log floor
    f4: f32,     // tversky: alpha
    f5: f32,     // tversky: beta
    f6: f32,     // tversky: gamma
    f7: f32,     // with F_WEIGHTS: the largest class weight, by which the weights in `cls` are divided
}

const NONE_IDX: u32 = 0xFFFFFFFFu;

var<workgroup> wop: Op;
var<workgroup> red4: array<vec4<f32>, 64>;
var<workgroup> red1: array<f32, 64>;
var<workgroup> uni4: vec4<f32>;
var<workgroup> uni1: f32;

// Sum of v over the workgroup in a fixed order (thread 0 adds the partials in lane order: two
// barriers, which is what a CPU adapter pays for, instead of one per tree level); uniform result.
// Uniform control flow.
fn wg_sum4(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red4[lid] = v;
    workgroupBarrier();
    if lid == 0u {
        var acc = vec4<f32>(0.0);
        for (var i = 0u; i < FT; i++) {
            acc += red4[i];
        }
        uni4 = acc;
    }
    return workgroupUniformLoad(&uni4);
}

fn wg_sum(lid: u32, v: f32) -> f32 {
    return wg_sum4(lid, vec4<f32>(v, 0.0, 0.0, 0.0)).x;
}

fn wg_max(lid: u32, v: f32) -> f32 {
    red1[lid] = v;
    workgroupBarrier();
    if lid == 0u {
        var m = red1[0];
        for (var i = 1u; i < FT; i++) {
            m = max(m, red1[i]);
        }
        uni1 = m;
    }
    return workgroupUniformLoad(&uni1);
}

// The first statistics float of this workgroup's group (a coalesced batch: one workgroup per
// group of P.n images; its sums follow the previous group's in every pass).
var<private> gsum: u32;

fn sum_at(base: u32, n: u32, c: u32, k: u32) -> f32 {
    return sums[gsum + base + (n * P.c + c) * K + k];
}

// Class of list position j (the op's class list, or every class).
fn class_at(op: Op, j: u32) -> u32 {
    if op.ncls == 0u {
        return j;
    }
    return cls[op.cls_off + j];
}

fn class_count(op: Op) -> u32 {
    return select(op.ncls, P.c, op.ncls == 0u);
}

// The op's weight of class position j (pixel ops: class j), 1 without weights.
fn weight_at(op: Op, j: u32) -> f32 {
    if (op.flags & F_WEIGHTS) != 0u {
        return bitcast<f32>(cls[op.nseg + j]);
    }
    return 1.0;
}

// The largest class weight, by which the weights in `cls` are divided (1 without weights).
fn weight_scale(op: Op) -> f32 {
    return select(1.0, op.f7, (op.flags & F_WEIGHTS) != 0u);
}

fn norm_of(op: Op) -> u32 {
    return (op.flags >> 10u) & 3u;
}

fn coef_add(op: Op, n: u32, c: u32, k: u32, v: f32) {
    let i = op.block + op.sub + (n * P.c + c) * NCOEF + k;
    out[i] += v;
}

// The term's value, and its weighted share of the expression's value (thread 0 only).
fn put_value(lid: u32, op: Op, v: f32) {
    if lid == 0u {
        out[op.val] = v;
        out[op.eval] += op.weight * v;
    }
}

// The scale and pos_weight of pixel term `op.sub` for the gradient pass (thread 0 only).
fn put_scale(lid: u32, op: Op, scale: f32, pw: f32) {
    if lid == 0u && op.block != NONE_IDX {
        out[op.block + 2u * op.sub] = scale;
        out[op.block + 2u * op.sub + 1u] = pw;
    }
}

fn op_pixel(lid: u32, op: Op) {
    // every sum the op reads, in one workgroup reduction (a CPU adapter pays per barrier): the
    // count (focal normalized otherwise: its weighted denominator), the first channel (weighted
    // by class, except cross-entropy's), the second channel, and SG
    let wnorm = op.kind == OP_FOCAL && norm_of(op) != NORM_COUNT;
    let kd = select(5u, 2u, (op.flags & F_FOCAL_SOFTMAX) != 0u);
    var acc = vec4<f32>(0.0);
    for (var e = lid; e < P.n * P.c; e += FT) {
        let w = select(weight_at(op, e % P.c), 1.0, op.kind == OP_CE);
        let o = gsum + e * K;
        let pc = o + op.sbase + op.chan;
        acc += vec4<f32>(select(sums[o + 5u], w * sums[o + kd], wnorm), w * sums[pc], sums[pc + 1u], sums[o + 2u]);
    }
    let t = wg_sum4(lid, acc);
    let cnt = t.x;
    let a = t.y;
    var v = 0.0;
    var scale = 0.0;
    var pw = 1.0;
    if op.kind == OP_BCE {
        let b = t.z;
        let sg = t.w;
        pw = op.f0;
        if (op.flags & F_POS_AUTO) != 0u {
            pw = (cnt - sg) / max(sg, 1.0);
        }
        if cnt > 0.0 {
            v = pw * (a / cnt) + b / cnt;
            scale = op.weight / cnt;
        }
    } else if op.kind == OP_FOCAL {
        // count: the non-ignored elements (softmax: P C); weights: the terms' class weights
        // (softmax: one term per pixel, of its true class, whose count is the class's SG)
        // (the weights are divided by their largest, m: under count the value and the scale
        // take m back; under weights it cancels)
        // (cnt is the weighted denominator under a normalization other than count)
        let denom = cnt;
        let m = select(weight_scale(op), 1.0, wnorm);
        if denom > 0.0 {
            v = m * (a / denom);
            scale = op.weight * m / denom;
        }
    } else {
        let den = t.z;
        if den > 0.0 {
            v = a / den;
            scale = op.weight / den;
        }
    }
    put_value(lid, op, v);
    put_scale(lid, op, scale, pw);
}

fn op_sensspec(lid: u32, op: Op) {
    // (CNT, SG, SS1, SS2) in one workgroup reduction
    var acc = vec4<f32>(0.0);
    for (var e = lid; e < P.n * P.c; e += FT) {
        let o = gsum + e * K;
        acc += vec4<f32>(sums[o + 5u], sums[o + 2u], sums[o + 6u], sums[o + 7u]);
    }
    let t = wg_sum4(lid, acc);
    let cnt = t.x;
    let sg = t.y;
    let s1 = t.z;
    let s2 = t.w;
    let lambda = op.f0;
    let d1 = sg + op.f1;
    let d2 = cnt - sg + op.f1;
    var v = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    if d1 > 0.0 {
        v += lambda * (s1 / d1);
        a1 = op.weight * lambda / d1;
    }
    if d2 > 0.0 {
        v += (1.0 - lambda) * (s2 / d2);
        a2 = op.weight * (1.0 - lambda) / d2;
    }
    put_value(lid, op, v);
    if op.block != NONE_IDX {
        for (var e = lid; e < P.n * P.c; e += FT) {
            coef_add(op, e / P.c, e % P.c, 3u, a1);
            coef_add(op, e / P.c, e % P.c, 4u, a2);
        }
    }
}

// Score of a Dice / Jaccard / Tversky entry from (TP, SP, SG, SPP) and SGG, with its derivatives
// by (TP, SP, SPP): (score, d/dTP, d/dSP, d/dSPP).
fn score(op: Op, s: vec4<f32>, sgg: f32) -> vec4<f32> {
    let tp = s.x;
    let sp = s.y;
    let sg = s.z;
    let spp = s.w;
    let rk = op.flags & 3u;
    let sq = (op.flags & F_SQUARED) != 0u;
    var a_tp = 1.0;
    var b_tp = 0.0;
    var b_sp = 0.0;
    var b_spp = 0.0;
    var b_c = 0.0;
    if rk == R_DICE || rk == R_JACCARD {
        // dice 2 TP / (SP + SG), jaccard TP / (SP + SG - TP); squared: SPP + SGG instead
        a_tp = select(1.0, 2.0, rk == R_DICE);
        b_tp = select(-1.0, 0.0, rk == R_DICE);
        if sq {
            b_spp = 1.0;
            b_c = sgg;
        } else {
            b_sp = 1.0;
            b_c = sg;
        }
    } else {
        b_tp = 1.0 - op.f4 - op.f5;
        b_sp = op.f4;
        b_c = op.f5 * sg;
    }
    let num = a_tp * tp + op.f0;
    let den = b_tp * tp + b_sp * sp + b_spp * spp + b_c + op.f1;
    let d = max(den, op.f2);
    if d <= DEN_FLOOR {
        return vec4<f32>(1.0, 0.0, 0.0, 0.0);
    }
    let sc = num / d;
    var q = 0.0;
    if den > op.f2 {
        q = -sc / d;
    }
    return vec4<f32>(sc, a_tp / d + q * b_tp, q * b_sp, q * b_spp);
}

// Entry loss from a score: (loss, d loss / d score).
fn entry_loss(op: Op, sc: f32) -> vec2<f32> {
    if (op.flags & F_LOG) != 0u {
        if sc > op.f3 {
            return vec2<f32>(-log(sc), -1.0 / sc);
        }
        return vec2<f32>(-log(op.f3), 0.0);
    }
    return vec2<f32>(1.0 - sc, -1.0);
}

// Entries (groups) of a region op: pool=image: (n, class j) for e = n * classes + j;
// pool=batch: class j over every image; pool=image_all: image n, its classes pooled;
// pool=all: one entry of every (n, class j).
fn entry_count(op: Op) -> u32 {
    let pool = (op.flags >> 3u) & 3u;
    if pool == POOL_IMAGE {
        return P.n * class_count(op);
    }
    if pool == POOL_BATCH {
        return class_count(op);
    }
    if pool == POOL_IMAGE_ALL {
        return P.n;
    }
    return 1u;
}

// The weight of entry e in the class mean: its class's (pooled entries carry theirs inside).
fn entry_weight(op: Op, e: u32) -> f32 {
    let pool = (op.flags >> 3u) & 3u;
    if pool == POOL_IMAGE {
        return weight_at(op, e % class_count(op));
    }
    if pool == POOL_BATCH {
        return weight_at(op, e);
    }
    return 1.0;
}

// The statistics channel of TP and its coefficient: sum p g, or sum min(p, g).
fn tp_channel(op: Op) -> u32 {
    return select(0u, TPMIN_DEV, (op.flags & F_MIN) != 0u);
}

fn tp_coef(op: Op) -> u32 {
    return select(0u, COEF_TPMIN, (op.flags & F_MIN) != 0u);
}

// (TP, SP, SG, SPP) of (image n, class position j) and its SGG.
fn class_sums(op: Op, n: u32, j: u32) -> array<vec4<f32>, 2> {
    let c = class_at(op, j);
    let s = vec4<f32>(sum_at(0u, n, c, tp_channel(op)), sum_at(0u, n, c, 1u), sum_at(0u, n, c, 2u), sum_at(0u, n, c, 3u));
    return array<vec4<f32>, 2>(s, vec4<f32>(sum_at(0u, n, c, 4u), 0.0, 0.0, 0.0));
}

// (TP, SP, SG, SPP) of entry e and its SGG, one thread (pool = image, batch or image_all).
fn entry_sums(op: Op, e: u32) -> array<vec4<f32>, 2> {
    let pool = (op.flags >> 3u) & 3u;
    let nk = class_count(op);
    if pool == POOL_IMAGE {
        return class_sums(op, e / nk, e % nk);
    }
    var s = vec4<f32>(0.0);
    var sgg = 0.0;
    if pool == POOL_IMAGE_ALL {
        for (var j = 0u; j < nk; j++) {
            let cs = class_sums(op, e, j);
            let w = weight_at(op, j);
            s += w * cs[0];
            sgg += w * cs[1].x;
        }
    } else {
        for (var n = 0u; n < P.n; n++) {
            let cs = class_sums(op, n, e);
            s += cs[0];
            sgg += cs[1].x;
        }
    }
    return array<vec4<f32>, 2>(s, vec4<f32>(sgg, 0.0, 0.0, 0.0));
}

// (loss, counted, d loss / d TP, SP, SPP) of one entry.
struct Entry {
    loss: f32,
    counted: f32,
    d: vec3<f32>,
}

fn entry_of(op: Op, s: vec4<f32>, sgg: f32) -> Entry {
    let empty_rule = (op.flags >> 5u) & 3u;
    var r: Entry;
    r.loss = 0.0;
    r.counted = 1.0;
    r.d = vec3<f32>(0.0);
    if s.z <= 0.0 {
        if empty_rule == EMPTY_SKIP {
            r.counted = 0.0;
            return r;
        }
        if empty_rule == EMPTY_ZERO {
            return r;
        }
    }
    let sc = score(op, s, sgg);
    let el = entry_loss(op, sc.x);
    r.loss = el.x;
    r.d = el.y * sc.yzw;
    return r;
}

// The divisor of image n's weighted mean (norm=image, pool=image): its counted weights (0: the
// image's loss is 1, as kornia's).
fn image_divisor(op: Op, n: u32) -> f32 {
    let nk = class_count(op);
    var d = 0.0;
    for (var j = 0u; j < nk; j++) {
        let es = class_sums(op, n, j);
        d += entry_of(op, es[0], es[1].x).counted * weight_at(op, j);
    }
    return d;
}

fn op_region(lid: u32, op: Op) {
    let pool = (op.flags >> 3u) & 3u;
    let entries = entry_count(op);
    let nk = class_count(op);
    let per_image = norm_of(op) == NORM_IMAGE && pool == POOL_IMAGE;
    // pool = all: the single entry's sums, reduced over every (image, class) member
    var all_s = vec4<f32>(0.0);
    var all_sgg = 0.0;
    if pool == POOL_ALL {
        var acc = vec4<f32>(0.0);
        var acc2 = 0.0;
        for (var m = lid; m < P.n * nk; m += FT) {
            let cs = class_sums(op, m / nk, m % nk);
            let w = weight_at(op, m % nk);
            acc += w * cs[0];
            acc2 += w * cs[1].x;
        }
        all_s = wg_sum4(lid, acc);
        all_sgg = wg_sum(lid, acc2);
    }
    // (sum of weighted losses, counted entries, their weights); norm=image with pool=image:
    // the sum over images of each image's weighted mean
    var acc = vec4<f32>(0.0);
    if per_image {
        for (var n = lid; n < P.n; n += FT) {
            let dn = image_divisor(op, n);
            if dn == 0.0 {
                // no counted weight (every class absent or of weight 0, or every pixel ignored)
                acc.x += 1.0;
            } else {
                for (var j = 0u; j < nk; j++) {
                    let es = class_sums(op, n, j);
                    let en = entry_of(op, es[0], es[1].x);
                    acc.x += en.counted * weight_at(op, j) * en.loss / dn;
                }
            }
            acc.y += 1.0;
        }
    } else {
        for (var e = lid; e < entries; e += FT) {
            var en: Entry;
            if pool == POOL_ALL {
                en = entry_of(op, all_s, all_sgg);
            } else {
                let es = entry_sums(op, e);
                en = entry_of(op, es[0], es[1].x);
            }
            let w = en.counted * entry_weight(op, e);
            acc += vec4<f32>(w * en.loss, en.counted, w, 0.0);
        }
    }
    let t = wg_sum4(lid, acc);
    // d mean / d (weighted loss of an entry): 1/K, 1/(counted weights), 1/N (then 1/D_n)
    var inv = 0.0;
    if per_image {
        inv = 1.0 / f32(P.n);
    } else if norm_of(op) == NORM_COUNT {
        // the group weights are divided by their largest: take it back
        inv = select(0.0, weight_scale(op) / t.y, t.y > 0.0);
    } else {
        inv = select(0.0, 1.0 / t.z, t.z > 0.0);
    }
    if t.y <= 0.0 {
        put_value(lid, op, 0.0);
        return;
    }
    let mean = t.x * inv;
    var gamma = 1.0;
    if (op.flags & 3u) == 2u {
        gamma = op.f6;
    }
    var value = mean;
    var dmean = 1.0;
    if gamma != 1.0 {
        if mean > 0.0 {
            value = pow(mean, gamma);
            dmean = gamma * pow(mean, gamma - 1.0);
        } else {
            value = 0.0;
            dmean = 0.0;
        }
    }
    put_value(lid, op, value);
    if op.block == NONE_IDX {
        return;
    }
    let f = op.weight * dmean * inv;
    if pool == POOL_ALL {
        let en = entry_of(op, all_s, all_sgg);
        for (var mm = lid; mm < P.n * nk; mm += FT) {
            let n = mm / nk;
            let c = class_at(op, mm % nk);
            let fw = f * weight_at(op, mm % nk);
            coef_add(op, n, c, tp_coef(op), fw * en.d.x);
            coef_add(op, n, c, 1u, fw * en.d.y);
            coef_add(op, n, c, 2u, fw * en.d.z);
        }
        return;
    }
    if per_image {
        for (var n = lid; n < P.n; n += FT) {
            // (an image without counted weight has loss 1 and no gradient)
            let dn = image_divisor(op, n);
            let fn_ = select(f / dn, 0.0, dn == 0.0);
            for (var j = 0u; j < nk; j++) {
                let es = class_sums(op, n, j);
                let en = entry_of(op, es[0], es[1].x);
                let fw = fn_ * en.counted * weight_at(op, j);
                let c = class_at(op, j);
                coef_add(op, n, c, tp_coef(op), fw * en.d.x);
                coef_add(op, n, c, 1u, fw * en.d.y);
                coef_add(op, n, c, 2u, fw * en.d.z);
            }
        }
        return;
    }
    for (var e = lid; e < entries; e += FT) {
        let es = entry_sums(op, e);
        let en = entry_of(op, es[0], es[1].x);
        let fe = f * en.counted * entry_weight(op, e);
        if pool == POOL_IMAGE {
            let n = e / nk;
            let c = class_at(op, e % nk);
            coef_add(op, n, c, tp_coef(op), fe * en.d.x);
            coef_add(op, n, c, 1u, fe * en.d.y);
            coef_add(op, n, c, 2u, fe * en.d.z);
        } else if pool == POOL_IMAGE_ALL {
            for (var j = 0u; j < nk; j++) {
                let c = class_at(op, j);
                let fw = fe * weight_at(op, j);
                coef_add(op, e, c, tp_coef(op), fw * en.d.x);
                coef_add(op, e, c, 1u, fw * en.d.y);
                coef_add(op, e, c, 2u, fw * en.d.z);
            }
        } else {
            let c = class_at(op, e);
            for (var n = 0u; n < P.n; n++) {
                coef_add(op, n, c, tp_coef(op), fe * en.d.x);
                coef_add(op, n, c, 1u, fe * en.d.y);
                coef_add(op, n, c, 2u, fe * en.d.z);
            }
        }
    }
}

// Generalized Dice class weight from the class's target sum; a negative result marks "infinite"
// (an absent class under square or simple weights), replaced by the largest finite weight.
fn gd_weight(op: Op, sg: f32) -> f32 {
    let wk = (op.flags >> 8u) & 3u;
    if wk == GD_SQUARE {
        if sg * sg > 0.0 {
            return 1.0 / (sg * sg);
        }
        return -1.0;
    }
    if wk == GD_SIMPLE {
        if sg > 0.0 {
            return 1.0 / sg;
        }
        return -1.0;
    }
    return 1.0;
}

// Target sum of class list position j over the images of group g (pool = image: image g).
fn gd_sum(op: Op, g: u32, per_image: bool, j: u32, k: u32) -> f32 {
    let c = class_at(op, j);
    if per_image {
        return sum_at(0u, g, c, k);
    }
    var acc = 0.0;
    for (var n = 0u; n < P.n; n++) {
        acc += sum_at(0u, n, c, k);
    }
    return acc;
}

fn op_gdice(lid: u32, op: Op) {
    let per_image = ((op.flags >> 3u) & 3u) == POOL_IMAGE;
    let groups = select(1u, P.n, per_image);
    let nk = class_count(op);
    var total_loss = 0.0;
    for (var g = 0u; g < groups; g++) {
        var mx = 0.0;
        for (var j = lid; j < nk; j += FT) {
            mx = max(mx, gd_weight(op, gd_sum(op, g, per_image, j, 2u)));
        }
        let max_finite = wg_max(lid, mx);
        var acc = vec4<f32>(0.0);
        for (var j = lid; j < nk; j += FT) {
            let sg = gd_sum(op, g, per_image, j, 2u);
            var wc = gd_weight(op, sg);
            if wc < 0.0 {
                wc = max_finite;
            }
            acc += vec4<f32>(2.0 * wc * gd_sum(op, g, per_image, j, 0u), wc * (gd_sum(op, g, per_image, j, 1u) + sg), 0.0, 0.0);
        }
        let nd = wg_sum4(lid, acc);
        let num = nd.x + op.f0;
        let den = nd.y + op.f1;
        let d = max(den, op.f2);
        var sc = 1.0;
        var live = false;
        if d > DEN_FLOOR {
            sc = num / d;
            live = den > op.f2;
        }
        let el = entry_loss(op, sc);
        total_loss += el.x;
        if op.block != NONE_IDX && d > DEN_FLOOR {
            let f = op.weight * el.y / f32(groups);
            var q = 0.0;
            if live {
                q = -sc / d;
            }
            for (var j = lid; j < nk; j += FT) {
                let c = class_at(op, j);
                var wc = gd_weight(op, gd_sum(op, g, per_image, j, 2u));
                if wc < 0.0 {
                    wc = max_finite;
                }
                if per_image {
                    coef_add(op, g, c, 0u, f * 2.0 * wc / d);
                    coef_add(op, g, c, 1u, f * q * wc);
                } else {
                    for (var n = 0u; n < P.n; n++) {
                        coef_add(op, n, c, 0u, f * 2.0 * wc / d);
                        coef_add(op, n, c, 1u, f * q * wc);
                    }
                }
            }
        }
    }
    put_value(lid, op, total_loss / f32(groups));
}

fn in_list(op: Op, k: u32) -> bool {
    for (var j = 0u; j < op.ncls; j++) {
        if cls[op.cls_off + j] == k {
            return true;
        }
    }
    return false;
}

// Whether class k (segment sums q: value, fg, bg) counts in the mean of Lovász-Softmax: it has
// elements, and is present (classes=present) or listed (a class list).
fn lovasz_uses(op: Op, q: vec4<u32>, k: u32) -> bool {
    if q.y + q.z == 0u {
        return false;
    }
    if (op.flags & F_PRESENT) != 0u {
        return q.y > 0u;
    }
    return op.ncls == 0u || in_list(op, k);
}

fn op_lovasz(lid: u32, op: Op) {
    let per_image = (op.flags & F_PER_IMAGE) != 0u;
    let groups = select(1u, P.n, per_image);
    var acc = 0.0;
    for (var g = lid; g < groups; g += FT) {
        if (op.flags & F_SOFTMAX) != 0u {
            var used = 0u;
            var vsum = 0.0;
            for (var k = 0u; k < P.c; k++) {
                let seg = select(k, g * P.c + k, per_image);
                let q = lov[op.chan + seg];
                if lovasz_uses(op, q, k) {
                    used += 1u;
                    vsum += bitcast<f32>(q.x);
                }
            }
            if used > 0u {
                acc += vsum / f32(used);
                if op.block != NONE_IDX {
                    let sc = op.weight / f32(groups) / f32(used);
                    for (var k = 0u; k < P.c; k++) {
                        let seg = select(k, g * P.c + k, per_image);
                        let q = lov[op.chan + seg];
                        if lovasz_uses(op, q, k) {
                            out[op.block + op.sub + seg] += sc;
                        }
                    }
                }
            }
        } else {
            acc += bitcast<f32>(lov[op.chan + g].x);
            if op.block != NONE_IDX {
                out[op.block + op.sub + g] += op.weight / f32(groups);
            }
        }
    }
    let total_loss = wg_sum(lid, acc);
    put_value(lid, op, total_loss / f32(groups));
}

// The finalize of workgroup wid.x, thread lid of FT (finalize_entry.wgsl, finalize_serial.wgsl).
fn finalize_main(lid: u32, wid: vec3<u32>) {
    // group wid.x: its sums, and its outputs P.gout floats after the previous group's
    gsum = wid.x * P.n * P.c * K;
    let go = wid.x * P.gout;
    let bad = status[0] != 0u;
    for (var i = 0u; i < P.nops; i++) {
        if lid == 0u {
            wop = ops[i];
        }
        var op = workgroupUniformLoad(&wop);
        op.val += go;
        op.eval += go;
        if op.block != NONE_IDX {
            op.block += go;
        }
        if bad {
            // bad input: NaN values, zero coefficients (the host reports the error)
            if lid == 0u {
                // a quiet NaN built at run time (browsers reject a constant NaN in WGSL)
                let nan = bitcast<f32>(0x7FC00000u | status[0]);
                out[op.val] = nan;
                out[op.eval] = nan;
            }
        } else if op.kind == OP_SENSSPEC {
            op_sensspec(lid, op);
        } else if op.kind == OP_REGION {
            op_region(lid, op);
        } else if op.kind == OP_GDICE {
            op_gdice(lid, op);
        } else if op.kind == OP_LOVASZ {
            op_lovasz(lid, op);
        } else {
            op_pixel(lid, op);
        }
        storageBarrier();
        workgroupBarrier();
    }
}
