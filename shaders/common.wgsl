// Shared definitions of every segloss kernel. The host prepends this file to each kernel file.

// Target word meaning "ignored": an ignored class index, or an ignored dense target element.
const INVALID: u32 = 0xFFFFFFFFu;

// Statistics channels per (image, class): 8 region sums, then two per pixel-loss slot.
const K: u32 = 16u;

// Pixel-loss kinds.
const BCE: u32 = 0u;
const FOCAL_SIGMOID: u32 = 1u;
const CE: u32 = 2u;
const FOCAL_SOFTMAX: u32 = 3u;

// Specialization constants: each pipeline is built for one combination, so the driver drops the
// code a loss set does not use.
override SOFTMAX: bool = false; // multiclass (softmax over C) instead of sigmoid per element
override KINDS: u32 = 0u;       // bit k set: some pixel loss of kind k is present
override NTERMS: u32 = 0u;      // pixel-loss terms in `terms` (statistics: slots, at most 4)
override SENSSPEC: bool = false; // accumulate the sensitivity/specificity sums
override LOVASZ: u32 = 0u;       // gradient: 0 no Lovász term, 1 one group over the batch, 2 per image
override VALIDATE: u32 = 0u;     // statistics, Lovász key passes: checks of buffer inputs (V_* bits, checks.wgsl), reported in `status`
override REGION: bool = true;    // gradient: region coefficients present
override SLOPE: bool = true;     // gradient, softmax: some region term's d loss / d p depends on p (squared
                                 // denominators, sensitivity/specificity); without, the lines of
                                 // ClassCoefs::oh are constants
override ACCUM: bool = false;    // gradient: add to the output instead of overwriting it
override WIDE: bool = false;     // a CPU adapter: the statistics' wide sigmoid tiles (PIX_SIGMOID_CPU), and
                                 // every thread's items in runs (tile_item)
override PIXEL_ONLY: bool = false; // statistics, softmax: cross-entropy slots only, summed into class 0
override COUNTS: bool = false;   // statistics: the hard predictions' confusion counts into `cnt`
override PROBS: bool = false;    // the input holds probabilities: no activation, gradients by p
override UNREDUCED: bool = false; // gradient: also the unreduced entries of pixel term 0 into `unr`
override LSE: bool = false;      // softmax: the statistics pass writes each pixel's log-sum-exp to `pix_out`, the
                                 // gradient pass reads it from `aux` (without Lovász)
override FUSED: u32 = 0u;        // statistics: pixel terms (at most 4, after the NTERMS slots in `terms` and
                                 // `cw`) whose gradient this pass writes to `elem_out`: sigmoid's, or
                                 // softmax cross-entropy's
override SPIX: u32 = 16u;        // statistics: softmax's pixels per thread (2 to 128; see stats.wgsl)
override TPMIN: bool = false;     // statistics: sum min(p, g) in channel 15 (at most 3 pixel slots)
override GPIX: u32 = 4u;          // gradient: pixels (VEC4: quads) per thread, at most GPIX_MAX (grad.wgsl)
override CREG: u32 = 0u;          // softmax on a CPU adapter: the class count C (at most CREG_MAX), whose
                                  // loops then have a known trip count and keep a pixel's logits in
                                  // registers (a load each, not one per walk); 0: walk them in memory
const CREG_MAX: u32 = 32u;

// Bad-input flags of `status[0]` (and the checks VALIDATE asks for); status[1 + bit] holds
// 0xFFFFFFFF minus the smallest offending element index (atomicMax; 0 = none).
const V_NONFINITE: u32 = 1u; // NaN or infinite logits
const V_CLASS: u32 = 2u;     // class index outside 0..C that is not the ignore index
const V_RANGE: u32 = 4u;     // dense target outside [0, 1] (or NaN) that is not the ignore value
const V_SOFT: u32 = 8u;      // dense target neither 0 nor 1 (Lovász needs hard labels)
const V_PROB: u32 = 16u;     // a probability outside [0, 1] (or NaN)
const V_NEGINF: u32 = 32u;   // softmax: a -inf logit the losses cannot take, or a pixel of -inf only
// Checks (VALIDATE bits, never flagged themselves) of -inf logits in softmax mode, which mask a
// class: an error anywhere (sigmoid focal), on the true class (ce, softmax focal), or on any class
// of a pixel that is not ignored (label-smoothed ce).
const V_NEGINF_ANY: u32 = 64u;
const V_NEGINF_TRUE: u32 = 128u;
const V_NEGINF_LIVE: u32 = 256u;

// Whether x is -inf (by its bits: a compiler may assume that floats are finite).
fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0xFF800000u;
}

// A pixel's log-sum-exp as (m, log sum_c exp(x_c - m)), m its largest logit, kept apart: their
// sum in f32 drops the second where m is large (a tie of 1e10 logits gave p = 1 for each).
// Softmax probability of logit x in a pixel of log-sum-exp lse: exp((x - m) - log sum), as
// PyTorch's log_softmax; 0 for a masked (-inf) class.
fn softmax_p(x: f32, lse: vec2<f32>) -> f32 {
    return select(exp((x - lse.x) - lse.y), 0.0, is_neg_inf(x));
}

// -log p of logit x in a pixel of log-sum-exp lse (softmax_p's).
fn nlog_p(lse: vec2<f32>, x: f32) -> f32 {
    return (lse.x - x) + lse.y;
}

// Item i of thread lid among the wg threads of a tile that take `per` items each.
// - GPU: rows of wg consecutive items (i wg + lid), so the lanes of a step read neighbouring
//   items (coalesced).
// - CPU adapter (WIDE), which runs LANES invocations as one SIMD vector and the vectors one after
//   the other: each vector walks a contiguous run of per LANES items, the next vector the next
//   run. The rows' walk, LANES items every wg, defeats the CPU's prefetcher: a pass reading two
//   arrays and writing one took 2.1 to 2.9 times as long with it on llvmpipe
//   (examples/cpu_probe.rs).
const LANES: u32 = 8u;

fn tile_item(i: u32, lid: u32, wg: u32, per: u32) -> u32 {
    if WIDE {
        return ((lid / LANES) * per + i) * LANES + lid % LANES;
    }
    return i * wg + lid;
}

// How many of thread lid's items (tile_item, i from 0) a loop over the tile's first `avail` items
// takes: on a GPU the rows that hold any (the same for every thread: items past `avail` in the
// last one are the caller's to skip), on a CPU adapter exactly the thread's own.
fn tile_items(lid: u32, wg: u32, per: u32, avail: u32) -> u32 {
    if WIDE {
        let first = (lid / LANES) * per * LANES + lid % LANES;
        return select(0u, min(per, (avail - first + LANES - 1u) / LANES), avail > first);
    }
    return min(per, (avail + wg - 1u) / wg);
}

fn has(kind: u32) -> bool {
    return (KINDS & (1u << kind)) != 0u;
}

struct Params {
    n: u32,           // images
    c: u32,           // channels
    s: u32,           // spatial positions per image and channel
    tiles: u32,       // statistics tiles per image
    ignore: u32,      // target word that means "ignored", when has_ignore
    has_ignore: u32,  // 1: map `ignore` to INVALID (buffer inputs; host inputs arrive mapped)
    region_base: u32, // gradient: index of the region coefficients in `coefs`; finalize: the same
    lov_base: u32,    // gradient: index of this pass's Lovász segment scales in `coefs`
    nops: u32,        // finalize: ops
    gn: u32,          // images per group: a coalesced batch evaluates groups of gn images apart
    gout: u32,        // finalize and gradient: floats of each group's output (values, blocks)
    img0: u32,        // gradient: the first image of this part in the batch the coefficients describe
    thr: f32,         // statistics, COUNTS, sigmoid: a logit >= thr is a positive prediction
    plane0: u32,      // sigmoid statistics, gradient and hinge keys: the first (image, channel) plane
                      // of this dispatch (a workgroup row per plane; past the rows of one dispatch,
                      // several dispatches)
    fcount: u32,      // statistics, FUSED: the elements the fused terms' mean divides by
    chunks: u32,      // statistics with subgroups: partial slots per tile (its subgroups); else 0
}

struct Term {
    kind: u32,
    has_alpha: u32,
    label_smoothing: f32,
    gamma: f32,
    alpha: f32,
    pos_weight: f32,
    scale: f32,
    weight_sum: f32,
}

// log(1 + y) for y >= 0, accurate for tiny y (WGSL has no log1p). Branch-free.
fn log1p_acc(y: f32) -> f32 {
    let u = 1.0 + y;
    return select(log(u) * (y / (u - 1.0)), y, u == 1.0);
}

// softplus(x) = log(1 + exp(x)) = -log(sigmoid(-x)), stable for any x.
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_acc(exp(-abs(x)));
}

// (sigmoid(x), sigmoid(-x)) with one exp, both accurate in their tails.
fn sigmoid2(x: f32) -> vec2<f32> {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    let big = r;      // the one of the pair that is >= 1/2
    let small = e * r; // the other
    return select(vec2<f32>(small, big), vec2<f32>(big, small), x >= 0.0);
}

// (sigmoid(x), -log sigmoid(x), -log sigmoid(-x), sigmoid(-x)) with one exp and one log: the
// statistics pass needs all four per element (the values sigmoid2 and softplus give, bit for bit
// the pair of sigmoid2).
fn sigmoid_nlq(x: f32) -> vec4<f32> {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    let l = log1p_acc(e);
    return vec4<f32>(select(e * r, r, x >= 0.0), max(-x, 0.0) + l, max(x, 0.0) + l, select(r, e * r, x >= 0.0));
}

fn sigmoid(x: f32) -> f32 {
    return sigmoid2(x).x;
}

// Lovász hinge error of one element. The sort keys and the gradient both call this, so the
// elements the gradient treats as positive are exactly the ones that were sorted.
fn hinge_error(x: f32, g: f32) -> f32 {
    return 1.0 - x * (2.0 * g - 1.0);
}

// 1 - exp(-b) for b >= 0, accurate for small b.
fn one_minus_exp_neg(b: f32) -> f32 {
    if b < 1e-3 {
        return b * (1.0 - b * (0.5 - b / 6.0));
    }
    return 1.0 - exp(-b);
}

// b^e with 0^e = 0 (e > 0) and b^0 = 1.
fn pow_pos(b: f32, e: f32) -> f32 {
    if e == 0.0 {
        return 1.0;
    }
    if b <= 0.0 {
        return 0.0;
    }
    return pow(b, e);
}

// Sigmoid focal loss of one element from its BCE b and db = d b / d input:
// (value, d value / d input). Soft targets allowed.
fn focal_of_bce(b: f32, db: f32, g: f32, t: Term) -> vec2<f32> {
    let omp = one_minus_exp_neg(b);
    var a = 1.0;
    if t.has_alpha != 0u {
        a = t.alpha * g + (1.0 - t.alpha) * (1.0 - g);
    }
    let m = pow_pos(omp, t.gamma);
    // gamma omp^(gamma-1) e^-b b, written with m = omp^gamma: for gamma < 1 the power of a
    // denormal omp (an adapter that keeps them) would overflow to inf, and inf * a zero db is NaN
    var dm = 0.0;
    if t.gamma != 0.0 && omp > 0.0 {
        dm = t.gamma * m * exp(-b) * (b / omp);
    }
    return vec2<f32>(a * m * b, a * (dm + m) * db);
}

// Sigmoid focal loss of logit x: d BCE / d x = sigmoid(x) - g.
fn focal_sigmoid(x: f32, g: f32, t: Term) -> vec2<f32> {
    let b = g * softplus(-x) + (1.0 - g) * softplus(x);
    return focal_of_bce(b, sigmoid(x) - g, g, t);
}

// log(1 - y) for y in [0, 1), accurate for small y.
fn log1m(y: f32) -> f32 {
    return select(log(1.0 - y), -y * (1.0 + y * (0.5 + y / 3.0)), y < 1e-3);
}

// Focal loss of probability p (smp): BCE of q = clamp(p, 1e-7, 1 - 1e-7), gradient 0 where the
// clamp binds. 1 - q is kept exact (1 - 1e-7 is no f32: the top clamp sets 1 - q = 1e-7).
fn focal_prob(p: f32, g: f32, t: Term) -> vec2<f32> {
    let lo = p < 1e-7;
    let hi = 1.0 - p < 1e-7; // exact for p >= 1/2
    let q = select(p, 1e-7, lo);
    let oq = select(select(1.0 - p, 1.0 - 1e-7, lo), 1e-7, hi);
    let lq = select(log(q), log1m(oq), q > 0.5);   // log q
    let loq = select(log(oq), log1m(q), q < 0.5); // log(1 - q)
    let b = -(g * lq + (1.0 - g) * loq);
    var db = 0.0;
    if !lo && !hi {
        db = (q - g) / (q * oq);
    }
    return focal_of_bce(b, db, g, t);
}

// -log(1 - y) on probabilities, clamped as PyTorch's binary_cross_entropy (accurate for small y).
fn nlog100_1m(y: f32) -> f32 {
    return select(nlog100(1.0 - y), -log1m(y), y < 1e-3);
}

// PyTorch's binary_cross_entropy clamp of one log on probabilities: min(-log y, 100), y >= 0.
// A subnormal y (which GPUs may flush to 0) is read from its bits: y = m 2^-149, so
// -log y = 149 ln 2 - log m (above 87, so the clamp decides only below e^-100).
fn nlog100(y: f32) -> f32 {
    if y > 0.5 {
        return -log1m(1.0 - y); // 1 - y is exact here, and log(y) near 1 is not accurate
    }
    let b = bitcast<u32>(y);
    if b < 0x00800000u {
        return select(min(103.27893 - log(f32(b)), 100.0), 100.0, b == 0u);
    }
    return min(-log(y), 100.0);
}

// Softmax focal on the true class y, -a_y (1-q)^gamma log q, from nlq = -log q (a_y: 1 - alpha
// for class 0, alpha for the others, when alpha is set): (value, k) with
// d value / d x_j = k ([j == y] - p_j).
fn focal_softmax(nlq: f32, t: Term, y: u32) -> vec2<f32> {
    var a = 1.0;
    if t.has_alpha != 0u {
        a = select(t.alpha, 1.0 - t.alpha, y == 0u);
    }
    let omq = one_minus_exp_neg(nlq);
    let q = exp(-nlq);
    let m = pow_pos(omq, t.gamma);
    // dm q (-nlq) with dm = gamma omq^(gamma-1), written with m = omq^gamma (as above); q enters
    // before the ratio, so that a q of 0 makes it 0 whatever nlq is
    var dmq = 0.0;
    if t.gamma != 0.0 && omq > 0.0 {
        dmq = -((t.gamma * m) * q) * (nlq / omq);
    }
    return vec2<f32>(a * m * nlq, a * (dmq - m));
}

// A sigmoid focal term tp of weight cwc at an element (logit x, or probability p with PROBS;
// target g): (d loss / d x with the term's scale, the unreduced entry).
fn focal_sigmoid_term(tp: Term, cwc: f32, x: f32, p: f32, g: f32) -> vec2<f32> {
    var fv: vec2<f32>;
    if PROBS {
        fv = focal_prob(p, g, tp);
    } else {
        fv = focal_sigmoid(x, g, tp);
    }
    return vec2<f32>(tp.scale * cwc * fv.y, cwc * fv.x);
}

// The share of sigmoid pixel term tp (bce or sigmoid focal) in d loss / d x at one element of
// input x, probabilities pq = (p, 1 - p) and target g, with the scale and pos_weight the
// finalize resolved in tp.scale and tp.pos_weight and the channel's weight cwc; and (UNREDUCED)
// its entry. The gradient pass and a fused statistics pass both add these, term by term.
fn sigmoid_term_grad(tp: Term, cwc: f32, x: f32, pq: vec2<f32>, g: f32) -> vec2<f32> {
    var r = vec2<f32>(0.0);
    if has(BCE) && tp.kind == BCE {
        let gsm = g * (1.0 - tp.label_smoothing) + 0.5 * tp.label_smoothing;
        // the scalar pos_weight times the channel's
        let pw = tp.pos_weight * cwc;
        if PROBS {
            // PyTorch's binary_cross_entropy backward
            r.x = tp.scale * (pq.x - gsm) / max(pq.x * pq.y, 1e-12);
        } else {
            r.x = tp.scale * ((1.0 - gsm) * pq.x - pw * gsm * pq.y);
        }
        if UNREDUCED {
            r.y = bce_entry(x, gsm, pw);
        }
    }
    if has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID {
        r = focal_sigmoid_term(tp, cwc, x, x, g);
    }
    return r;
}

// The bce entry of one element: pw the channel's pos_weight, gs the smoothed target.
fn bce_entry(x: f32, gs: f32, pw: f32) -> f32 {
    if PROBS {
        return gs * nlog100(x) + (1.0 - gs) * nlog100_1m(x);
    }
    // -log p and -log(1 - p) with one exp and one log
    let nls = sigmoid_nlq(x);
    return pw * gs * nls.y + (1.0 - gs) * nls.z;
}
