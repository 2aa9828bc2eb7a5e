//! The f64 CPU reference: every loss and its gradient, written from the definitions in `LOSSES.md`
//! element by element (it shares no code with the GPU path beyond the parsed parameters).
//!
//! It is what the tests compare the GPU against, and what [`crate::Engine`] runs when no GPU
//! adapter exists. It is exact but single-threaded: fine for tests and small inputs.
//!
//! ```
//! use segloss::{reference, Input, LossExpr, Mode};
//! let logits = [2.0f32, -1.0, 0.5, -3.0];
//! let target = [1.0f32, 0.0, 1.0, 0.0];
//! let input = Input::dense(&logits, &target, &[1, 1, 4], Mode::Binary).unwrap();
//! let expr: LossExpr = "bce+dice".parse().unwrap();
//! let r = reference::evaluate(&input, &expr).unwrap();
//! assert!(r.value > 0.0 && r.grad.len() == 4);
//! ```

#![allow(clippy::needless_range_loop)] // element loops index several parallel arrays

use crate::error::Error;
use crate::expr::{
    Classes, Empty, FocalParams, GDiceWeight, Intersection, Loss, LossExpr, LovaszParams, Norm, Pool, PosWeight,
    RegionKind, RegionLoss,
};
use crate::input::{Input, InputKind, Target};
use crate::Mode;

/// Value, per-term values and gradient of one expression, in f64.
#[derive(Clone, Debug)]
pub struct RefResult {
    /// The value of the whole expression.
    pub value: f64,
    /// Each term's value before its weight.
    pub term_values: Vec<f64>,
    /// `d value / d logits`, same layout as the logits.
    pub grad: Vec<f64>,
    /// The unreduced entries of a `reduction=none` expression: (shape, values scaled by the
    /// term's factor).
    pub unreduced: Option<(Vec<usize>, Vec<f64>)>,
    /// Deep supervision: `d value / d` the predictions of levels 1, 2, ... (`grad` is level 0's).
    pub level_grads: Vec<Vec<f64>>,
}

/// `log(sigmoid(x))`, stable.
pub fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `sigmoid(x)`, stable.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Element view of a batch in f64.
struct Elems {
    n: usize,
    c: usize,
    s: usize,
    mode: Mode,
    /// probabilities given instead of logits: no activation
    probs: bool,
    x: Vec<f64>,
    /// probability (sigmoid or softmax)
    p: Vec<f64>,
    /// log p
    logp: Vec<f64>,
    /// one-hot or dense target
    g: Vec<f64>,
    /// per pixel (n, s): valid (multiclass) or per element (dense)
    valid: Vec<bool>,
    /// multiclass label per pixel
    label: Vec<usize>,
}

impl Elems {
    fn new(input: &Input) -> Elems {
        let (n, c, s) = (input.batch(), input.classes(), input.spatial());
        let probs = input.kind() == InputKind::Probs;
        let x: Vec<f64> = input.logits().iter().map(|&v| v as f64).collect();
        let total = n * c * s;
        let mut p = vec![0.0; total];
        let mut logp = vec![0.0; total];
        let mut g = vec![0.0; total];
        let mut valid = vec![true; total];
        let mut label = Vec::new();
        match input.target() {
            Target::Dense(t) => {
                let ign = input.ignore_index().map(|k| k as f32);
                for i in 0..total {
                    (p[i], logp[i]) = if probs { (x[i], x[i].ln()) } else { (sigmoid(x[i]), log_sigmoid(x[i])) };
                    valid[i] = Some(t[i]) != ign;
                    g[i] = if valid[i] { t[i] as f64 } else { 0.0 };
                }
            }
            Target::Labels(t) => {
                label = vec![usize::MAX; n * s];
                for img in 0..n {
                    for pos in 0..s {
                        let lab = t[img * s + pos];
                        let ok = Some(lab) != input.ignore_index();
                        let idx = |k: usize| (img * c + k) * s + pos;
                        let m = (0..c).map(|k| x[idx(k)]).fold(f64::NEG_INFINITY, f64::max);
                        // log_softmax as PyTorch: (x - m) - log sum exp(x - m), the two apart (m + log
                        // sum loses the sum where m is large, even in f64 near f32's limits)
                        let lz = (0..c).map(|k| (x[idx(k)] - m).exp()).sum::<f64>().ln();
                        for k in 0..c {
                            if probs {
                                p[idx(k)] = x[idx(k)];
                                logp[idx(k)] = x[idx(k)].ln();
                            } else {
                                logp[idx(k)] = (x[idx(k)] - m) - lz;
                                p[idx(k)] = logp[idx(k)].exp();
                            }
                            valid[idx(k)] = ok;
                            g[idx(k)] = if ok && lab as usize == k { 1.0 } else { 0.0 };
                        }
                        if ok {
                            label[img * s + pos] = lab as usize;
                        }
                    }
                }
            }
        }
        Elems { n, c, s, mode: input.mode(), probs, x, p, logp, g, valid, label }
    }

    #[inline]
    fn idx(&self, n: usize, c: usize, s: usize) -> usize {
        (n * self.c + c) * self.s + s
    }

    fn valid_count(&self) -> f64 {
        self.valid.iter().filter(|&&v| v).count() as f64
    }

    /// The channel of element i.
    #[inline]
    fn chan(&self, i: usize) -> usize {
        (i / self.s) % self.c
    }
}

/// Evaluates one expression on the CPU in f64 (a `deep(...)` expression on every level of the
/// input).
pub fn evaluate(input: &Input, expr: &LossExpr) -> Result<RefResult, Error> {
    let levels = input.levels();
    if expr.deep.is_none() && levels == 1 {
        return evaluate_level(input, expr);
    }
    expr.check_levels(levels)?;
    expr.check_input(input.mode(), input.classes(), input.kind())?;
    // the -inf rules over every level at once, so an error names its level
    crate::input::check_neg_inf(input, std::slice::from_ref(expr))?;
    let weights = expr.deep.as_ref().map_or(Ok(vec![1.0]), |d| d.of(levels))?;
    let mut out: Option<RefResult> = None;
    for (l, wl) in weights.iter().enumerate() {
        let r = evaluate_level(&input.level(l)?, &expr.level(l, levels)?)?;
        match &mut out {
            None => {
                let mut r = r;
                r.term_values.iter_mut().for_each(|t| *t *= wl);
                out = Some(r);
            }
            Some(o) => {
                o.value += r.value;
                o.term_values.iter_mut().zip(&r.term_values).for_each(|(t, v)| *t += wl * v);
                o.level_grads.push(r.grad);
            }
        }
    }
    let out = out.ok_or_else(|| Error::Input("no levels".into()))?;
    crate::engine::check_value(out.value, &out.term_values)?;
    Ok(out)
}

/// One expression on one level.
fn evaluate_level(input: &Input, expr: &LossExpr) -> Result<RefResult, Error> {
    expr.check_input(input.mode(), input.classes(), input.kind())?;
    crate::input::check_neg_inf(input, std::slice::from_ref(expr))?;
    crate::engine::check_hard_labels(std::slice::from_ref(expr), || input.first_soft(), input.shape())?;
    let e = Elems::new(input);
    let total = e.x.len();
    // d/dp (through the activation) and d/dx (direct) accumulators.
    let mut gp = vec![0.0; total];
    let mut gx = vec![0.0; total];
    let mut term_values = Vec::new();
    // reduction=none (a single term): its entries, per element (bce, focal), per pixel (ce) or
    // per group (region losses, which push theirs)
    let mut ent: Vec<f64> = Vec::new();
    let mut ent_shape: Vec<usize> = Vec::new();
    for t in &expr.terms {
        let w = t.weight;
        if expr.unreduced() {
            (ent, ent_shape) = match &t.loss {
                Loss::Ce(_) => (vec![0.0; e.n * e.s], label_shape(input)),
                Loss::Bce(_) | Loss::Focal(_) => (vec![0.0; total], input.shape().to_vec()),
                Loss::Region(r) => (Vec::new(), r.entry_shape(e.n, e.c)),
                _ => (Vec::new(), Vec::new()),
            };
        }
        let v = match &t.loss {
            Loss::Bce(p) => bce(&e, p.label_smoothing, &p.pos_weight, w, &mut gx, &mut ent),
            Loss::Ce(p) => ce(&e, p.weights.as_deref(), p.label_smoothing, w, &mut gx, &mut ent),
            Loss::Focal(p) if p.act.softmax(e.mode) => focal_softmax(&e, p, w, &mut gx, &mut ent),
            Loss::Focal(p) => focal_sigmoid(&e, p, w, &mut gx, &mut ent),
            Loss::SensSpec(p) => sensspec(&e, p.lambda, p.smooth, w, &mut gp),
            Loss::Region(r) => match r.kind {
                RegionKind::GDice { weight } => gdice(&e, r, weight, w, &mut gp, &mut ent),
                _ => region(&e, r, w, &mut gp, &mut ent),
            },
            Loss::Lovasz(p) => lovasz(&e, p, w, &mut gp, &mut gx),
        };
        term_values.push(v);
    }
    let unreduced = expr.unreduced().then(|| {
        let f = expr.terms.first().map_or(1.0, |t| t.weight);
        (ent_shape, ent.iter().map(|v| f * v).collect())
    });
    // Chain d/dp through the activation (probabilities: none).
    let mut grad = gx;
    match e.mode {
        _ if e.probs => {
            for i in 0..total {
                grad[i] += gp[i];
            }
        }
        Mode::Multiclass => {
            for n in 0..e.n {
                for s in 0..e.s {
                    let dot: f64 = (0..e.c).map(|c| e.p[e.idx(n, c, s)] * gp[e.idx(n, c, s)]).sum();
                    for c in 0..e.c {
                        let i = e.idx(n, c, s);
                        grad[i] += e.p[i] * (gp[i] - dot);
                    }
                }
            }
        }
        _ => {
            for i in 0..total {
                grad[i] += gp[i] * e.p[i] * (1.0 - e.p[i]);
            }
        }
    }
    for (i, v) in e.valid.iter().enumerate() {
        if !v {
            grad[i] = 0.0;
        }
    }
    let value = expr.terms.iter().zip(&term_values).map(|(t, v)| t.weight * v).sum();
    crate::engine::check_value(value, &term_values)?;
    Ok(RefResult { value, term_values, grad, unreduced, level_grads: Vec::new() })
}

/// `[N, S...]`: the shape of per-pixel entries.
fn label_shape(input: &Input) -> Vec<usize> {
    std::iter::once(input.batch()).chain(input.shape()[2..].iter().copied()).collect()
}

/// Records `v` as entry `i` when entries are kept (`ent` is sized).
fn put(ent: &mut [f64], i: usize, v: f64) {
    if let Some(x) = ent.get_mut(i) {
        *x = v;
    }
}

fn bce(e: &Elems, ls: f64, pw: &PosWeight, w: f64, gx: &mut [f64], ent: &mut [f64]) -> f64 {
    let cnt = e.valid_count();
    if cnt == 0.0 {
        return 0.0;
    }
    let auto = {
        let sg: f64 = e.g.iter().sum();
        (cnt - sg) / sg.max(1.0)
    };
    let mut total = 0.0;
    for i in 0..e.x.len() {
        if !e.valid[i] {
            continue;
        }
        let pos_weight = match pw {
            PosWeight::Value(v) => *v,
            PosWeight::Auto => auto,
            PosWeight::Channels(ws) => ws[e.chan(i)],
        };
        let g = e.g[i] * (1.0 - ls) + 0.5 * ls;
        if e.probs {
            // PyTorch's binary_cross_entropy: logs clamped at -100, its backward's 1e-12 floor
            let p = e.p[i];
            let l = -(g * p.ln().max(-100.0) + (1.0 - g) * (-p).ln_1p().max(-100.0));
            total += l;
            put(ent, i, l);
            gx[i] += w / cnt * (p - g) / (p * (1.0 - p)).max(1e-12);
            continue;
        }
        let (lp, lq) = (log_sigmoid(e.x[i]), log_sigmoid(-e.x[i]));
        let l = -(pos_weight * g * lp + (1.0 - g) * lq);
        total += l;
        put(ent, i, l);
        // d/dx log sigmoid(x) = 1 - p, d/dx log sigmoid(-x) = -p
        gx[i] += w / cnt * (-(pos_weight * g * (1.0 - e.p[i])) + (1.0 - g) * e.p[i]);
    }
    total / cnt
}

/// A focal term's class weight.
fn class_weight(p: &FocalParams, c: usize) -> f64 {
    p.weights.as_ref().map_or(1.0, |w| w[c])
}

fn focal_sigmoid(e: &Elems, fp: &FocalParams, w: f64, gx: &mut [f64], ent: &mut [f64]) -> f64 {
    let (gamma, alpha) = (fp.gamma, fp.alpha);
    // the mean's divisor: the elements (count), or the sum of their class weights
    let cnt: f64 = match fp.norm {
        Norm::Count => e.valid_count(),
        _ => (0..e.x.len()).filter(|&i| e.valid[i]).map(|i| class_weight(fp, e.chan(i))).sum(),
    };
    if cnt <= 0.0 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..e.x.len() {
        if !e.valid[i] {
            continue;
        }
        let wc = class_weight(fp, e.chan(i));
        let (x, g) = (e.x[i], e.g[i]);
        // the BCE b and d b / d input: of the logit, or of q = clamp(p, 1e-7, 1 - 1e-7) (smp on
        // probabilities; 0 where the clamp binds)
        let (b, db) = if e.probs {
            const LO: f64 = 1e-7;
            let q = x.clamp(LO, 1.0 - LO);
            let b = -(g * q.ln() + (1.0 - g) * (-q).ln_1p());
            (b, if (LO..=1.0 - LO).contains(&x) { (q - g) / (q * (1.0 - q)) } else { 0.0 })
        } else {
            (-(g * log_sigmoid(x) + (1.0 - g) * log_sigmoid(-x)), sigmoid(x) - g)
        };
        let one_m_pt = -(-b).exp_m1();
        let pt = (-b).exp();
        let a = alpha.map_or(1.0, |a| a * g + (1.0 - a) * (1.0 - g));
        let mod_ = if gamma == 0.0 { 1.0 } else { one_m_pt.powf(gamma) };
        total += wc * a * mod_ * b;
        put(ent, i, wc * a * mod_ * b);
        // gamma (1-pt)^(gamma-1) pt b, written with (1-pt)^gamma: for gamma < 1 the power of a
        // subnormal 1-pt would overflow to inf (and inf * a zero db is NaN)
        let dmod = if gamma == 0.0 || one_m_pt <= 0.0 { 0.0 } else { gamma * mod_ * pt * (b / one_m_pt) };
        gx[i] += w / cnt * wc * a * (dmod + mod_) * db;
    }
    total / cnt
}

fn ce(e: &Elems, weights: Option<&[f64]>, ls: f64, w: f64, gx: &mut [f64], ent: &mut [f64]) -> f64 {
    let wt = |c: usize| weights.map_or(1.0, |ws| ws[c]);
    let wsum: f64 = (0..e.c).map(wt).sum();
    let cf = e.c as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for n in 0..e.n {
        for s in 0..e.s {
            let t = e.label[n * e.s + s];
            if t == usize::MAX {
                continue;
            }
            // the smoothing term takes every class's log-probability (none without smoothing: a
            // masked class's is -inf)
            let mut l = (1.0 - ls) * wt(t) * -e.logp[e.idx(n, t, s)];
            if ls > 0.0 {
                l += ls / cf * (0..e.c).map(|c| wt(c) * -e.logp[e.idx(n, c, s)]).sum::<f64>();
            }
            num += l;
            put(ent, n * e.s + s, l);
            den += wt(t);
        }
    }
    if den <= 0.0 {
        return 0.0;
    }
    for n in 0..e.n {
        for s in 0..e.s {
            let t = e.label[n * e.s + s];
            if t == usize::MAX {
                continue;
            }
            for c in 0..e.c {
                let i = e.idx(n, c, s);
                let onehot = if c == t { 1.0 } else { 0.0 };
                let d = (1.0 - ls) * wt(t) * (e.p[i] - onehot) + ls / cf * (wsum * e.p[i] - wt(c));
                gx[i] += w / den * d;
            }
        }
    }
    num / den
}

fn focal_softmax(e: &Elems, fp: &FocalParams, w: f64, gx: &mut [f64], ent: &mut [f64]) -> f64 {
    let gamma = fp.gamma;
    let labels = || e.label.iter().copied().filter(|&l| l != usize::MAX);
    // the mean's divisor: the non-ignored elements P C (count), or the terms' class weights
    let pixels: f64 = match fp.norm {
        Norm::Count => labels().count() as f64 * e.c as f64,
        _ => labels().map(|l| class_weight(fp, l)).sum(),
    };
    if pixels <= 0.0 {
        return 0.0;
    }
    let mut total = 0.0;
    for n in 0..e.n {
        for s in 0..e.s {
            let t = e.label[n * e.s + s];
            if t == usize::MAX {
                continue;
            }
            // alpha weighs the background class 0 by 1 - alpha and the others by alpha
            let a = class_weight(fp, t) * fp.alpha.map_or(1.0, |al| if t == 0 { 1.0 - al } else { al });
            let q = e.p[e.idx(n, t, s)];
            let lq = e.logp[e.idx(n, t, s)];
            let omq: f64 = (0..e.c).filter(|&c| c != t).map(|c| e.p[e.idx(n, c, s)]).sum();
            let m = if gamma == 0.0 { 1.0 } else { omq.powf(gamma) };
            total += -a * m * lq;
            put(ent, e.idx(n, t, s), -a * m * lq);
            // dm q log q with dm = gamma (1-q)^(gamma-1), written with (1-q)^gamma = m: for gamma < 1
            // the power of a subnormal 1-q would overflow to inf; q enters before the ratio
            let dm_q_lq = if gamma == 0.0 || omq <= 0.0 { 0.0 } else { gamma * m * q * (lq / omq) };
            // f(q) = -a m(1-q) log q; df/dq = a (dm log q - m / q); dq/dx_j = q ([j==t] - p_j)
            let k = a * (dm_q_lq - m);
            for c in 0..e.c {
                let i = e.idx(n, c, s);
                let onehot = if c == t { 1.0 } else { 0.0 };
                gx[i] += w / pixels * k * (onehot - e.p[i]);
            }
        }
    }
    total / pixels
}

fn sensspec(e: &Elems, lambda: f64, smooth: f64, w: f64, gp: &mut [f64]) -> f64 {
    let (mut s1, mut s2, mut sg, mut sn) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..e.x.len() {
        if e.valid[i] {
            let d = e.g[i] - e.p[i];
            s1 += d * d * e.g[i];
            s2 += d * d * (1.0 - e.g[i]);
            sg += e.g[i];
            sn += 1.0 - e.g[i];
        }
    }
    let (d1, d2) = (sg + smooth, sn + smooth);
    let mut v = 0.0;
    if d1 > 0.0 {
        v += lambda * s1 / d1;
    }
    if d2 > 0.0 {
        v += (1.0 - lambda) * s2 / d2;
    }
    for i in 0..e.x.len() {
        if e.valid[i] {
            let (g, p) = (e.g[i], e.p[i]);
            let mut d = 0.0;
            if d1 > 0.0 {
                d += lambda * -2.0 * (g - p) * g / d1;
            }
            if d2 > 0.0 {
                d += (1.0 - lambda) * -2.0 * (g - p) * (1.0 - g) / d2;
            }
            gp[i] += w * d;
        }
    }
    v
}

/// Element indices of a region group for class list `classes` in image set `imgs`.
fn members(e: &Elems, imgs: &[usize], classes: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    for &n in imgs {
        for &c in classes {
            for s in 0..e.s {
                let i = e.idx(n, c, s);
                if e.valid[i] {
                    out.push(i);
                }
            }
        }
    }
    out
}

fn class_list(classes: &Classes, c: usize) -> Vec<usize> {
    match classes {
        Classes::List(l) => l.clone(),
        _ => (0..c).collect(),
    }
}

/// The weighted mean of the counted groups' losses as `norm` defines it: each group's
/// `(loss, weight, image)` gives the mean and each group's factor `d mean / d loss`.
pub(crate) fn weighted_mean(
    groups: &[(f64, f64, usize)],
    norm: Norm,
    per_image: bool,
    images: usize,
) -> (f64, Vec<f64>) {
    if norm == Norm::Image && per_image {
        // per image: sum w L / sum w, 1 when that sum is 0 (kornia: no present class with a
        // weight, every pixel ignored), then the mean over the images
        let mut den = vec![0.0; images];
        for g in groups {
            den[g.2] += g.1;
        }
        let ones = den.iter().filter(|&&d| d == 0.0).count() as f64;
        let f: Vec<f64> =
            groups.iter().map(|g| if den[g.2] == 0.0 { 0.0 } else { g.1 / den[g.2] / images as f64 }).collect();
        return (groups.iter().zip(&f).map(|(g, f)| f * g.0).sum::<f64>() + ones / images as f64, f);
    }
    if groups.is_empty() {
        return (0.0, Vec::new());
    }
    match norm {
        Norm::Count => {
            let k = groups.len() as f64;
            (groups.iter().map(|g| g.1 * g.0).sum::<f64>() / k, groups.iter().map(|g| g.1 / k).collect())
        }
        _ => {
            let d: f64 = groups.iter().map(|g| g.1).sum();
            if d <= 0.0 {
                return (0.0, vec![0.0; groups.len()]);
            }
            (groups.iter().map(|g| g.1 * g.0).sum::<f64>() / d, groups.iter().map(|g| g.1 / d).collect())
        }
    }
}

fn region(e: &Elems, r: &RegionLoss, w: f64, gp: &mut [f64], ent: &mut Vec<f64>) -> f64 {
    let p = &r.params;
    let classes = class_list(&p.classes, e.c);
    let listed = p.listed_weights(e.c);
    let wt = |j: usize| listed.as_ref().map_or(1.0, |ws| ws[j]);
    // groups: members (element, factor of its terms in the sums), the group's weight, its image
    let with = |imgs: &[usize], js: &[usize], inside: bool| -> Vec<(usize, f64)> {
        js.iter()
            .flat_map(|&j| {
                members(e, imgs, &[classes[j]]).into_iter().map(move |i| (i, if inside { wt(j) } else { 1.0 }))
            })
            .collect()
    };
    let all_imgs: Vec<usize> = (0..e.n).collect();
    let all_js: Vec<usize> = (0..classes.len()).collect();
    type Group = (Vec<(usize, f64)>, f64, usize);
    let groups: Vec<Group> = match p.pool {
        Pool::Batch => all_js.iter().map(|&j| (with(&all_imgs, &[j], false), wt(j), 0)).collect(),
        Pool::Image => (0..e.n)
            .flat_map(|n| all_js.iter().map(move |&j| (n, j)))
            .map(|(n, j)| (with(&[n], &[j], false), wt(j), n))
            .collect(),
        Pool::All => vec![(with(&all_imgs, &all_js, true), 1.0, 0)],
        Pool::ImageAll => (0..e.n).map(|n| (with(&[n], &all_js, true), 1.0, n)).collect(),
    };
    // (loss, weight, image) and per-element d loss / d p of each counted group
    let mut counted: Vec<(f64, f64, usize)> = Vec::new();
    let mut grads_of: Vec<Vec<(usize, f64)>> = Vec::new();
    for (m, gw, img) in &groups {
        let sum = |f: &dyn Fn(usize) -> f64| m.iter().map(|&(i, k)| k * f(i)).sum::<f64>();
        // TP = sum p g, or sum min(p, g) (d/dp: 1 below g, 0 above, g at g)
        let min = p.intersection == Intersection::Min;
        let tp = if min { sum(&|i| e.p[i].min(e.g[i])) } else { sum(&|i| e.p[i] * e.g[i]) };
        let dtp = move |i: usize| {
            let (pi, gi) = (e.p[i], e.g[i]);
            if !min || pi == gi {
                gi
            } else if pi < gi {
                1.0
            } else {
                0.0
            }
        };
        let sp = sum(&|i| e.p[i]);
        let sg = sum(&|i| e.g[i]);
        if sg == 0.0 && p.empty != Empty::Formula {
            if p.empty == Empty::Zero {
                counted.push((0.0, *gw, *img));
                grads_of.push(Vec::new());
            }
            ent.push(0.0);
            continue;
        }
        let fp = sp - tp;
        let fneg = sg - tp;
        let spp = sum(&|i| e.p[i] * e.p[i]);
        let sgg = sum(&|i| e.g[i] * e.g[i]);
        // num, den and, per element, d num / d p_i and d den / d p_i (before the factor)
        let (num, den): (f64, f64);
        let dnum: Box<dyn Fn(usize) -> f64>;
        let dden: Box<dyn Fn(usize) -> f64>;
        match r.kind {
            RegionKind::Dice { squared } => {
                num = 2.0 * tp + p.smooth_nr;
                if squared {
                    den = spp + sgg + p.smooth_dr;
                    dden = Box::new(|i| 2.0 * e.p[i]);
                } else {
                    den = 2.0 * tp + fp + fneg + p.smooth_dr;
                    dden = Box::new(|_| 1.0);
                }
                dnum = Box::new(move |i| 2.0 * dtp(i));
            }
            RegionKind::Jaccard { squared } => {
                num = tp + p.smooth_nr;
                if squared {
                    den = spp + sgg - tp + p.smooth_dr;
                    dden = Box::new(move |i| 2.0 * e.p[i] - dtp(i));
                } else {
                    den = tp + fp + fneg + p.smooth_dr;
                    // TP + FP + FN = SP + SG - TP
                    dden = Box::new(move |i| 1.0 - dtp(i));
                }
                dnum = Box::new(dtp);
            }
            RegionKind::Tversky { alpha, beta, .. } => {
                num = tp + p.smooth_nr;
                den = tp + alpha * fp + beta * fneg + p.smooth_dr;
                // d FP = 1 - d TP, d FN = -d TP
                dden = Box::new(move |i| dtp(i) + alpha * (1.0 - dtp(i)) - beta * dtp(i));
                dnum = Box::new(dtp);
            }
            RegionKind::GDice { .. } => unreachable!(),
        }
        let d = den.max(p.eps);
        let (score, live_den) = if d > crate::expr::SCORE_DEN_FLOOR { (num / d, den > p.eps) } else { (1.0, false) };
        let (loss, dl_ds) = score_loss(p, score);
        let grads = if d > crate::expr::SCORE_DEN_FLOOR {
            m.iter()
                .map(|&(i, k)| {
                    let ds = dnum(i) / d - if live_den { num * dden(i) / (d * d) } else { 0.0 };
                    (i, k * dl_ds * ds)
                })
                .collect()
        } else {
            Vec::new()
        };
        counted.push((loss, *gw, *img));
        grads_of.push(grads);
        ent.push(gw * loss);
    }
    let per_image = p.norm == Norm::Image && p.pool == Pool::Image;
    if counted.is_empty() && !per_image {
        return 0.0;
    }
    let (mean, factors) = weighted_mean(&counted, p.norm, p.pool == Pool::Image, e.n);
    let gamma = if let RegionKind::Tversky { gamma, .. } = r.kind { gamma } else { 1.0 };
    let (value, outer) = if gamma == 1.0 {
        (mean, 1.0)
    } else if mean > 0.0 {
        (mean.powf(gamma), gamma * mean.powf(gamma - 1.0))
    } else {
        (0.0, 0.0)
    };
    for (grads, f) in grads_of.iter().zip(&factors) {
        for &(i, d) in grads {
            gp[i] += w * outer * f * d;
        }
    }
    value
}

fn gdice(e: &Elems, r: &RegionLoss, weight: GDiceWeight, w: f64, gp: &mut [f64], ent: &mut Vec<f64>) -> f64 {
    let p = &r.params;
    let classes = class_list(&p.classes, e.c);
    let groups: Vec<Vec<usize>> = match p.pool {
        Pool::Image => (0..e.n).map(|n| vec![n]).collect(),
        _ => vec![(0..e.n).collect()],
    };
    let mut total = 0.0;
    for imgs in &groups {
        let per_class: Vec<Vec<usize>> = classes.iter().map(|&c| members(e, imgs, &[c])).collect();
        let sg: Vec<f64> = per_class.iter().map(|m| m.iter().map(|&i| e.g[i]).sum()).collect();
        let raw: Vec<f64> = sg
            .iter()
            .map(|&s| match weight {
                GDiceWeight::Square => 1.0 / (s * s),
                GDiceWeight::Simple => 1.0 / s,
                GDiceWeight::Uniform => 1.0,
            })
            .collect();
        let biggest = raw.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
        let wc: Vec<f64> = raw.iter().map(|&v| if v.is_finite() { v } else { biggest }).collect();
        let mut num = p.smooth_nr;
        let mut den = p.smooth_dr;
        for (j, m) in per_class.iter().enumerate() {
            for &i in m {
                num += 2.0 * wc[j] * e.p[i] * e.g[i];
                den += wc[j] * (e.p[i] + e.g[i]);
            }
        }
        let d = den.max(p.eps);
        if d <= crate::expr::SCORE_DEN_FLOOR {
            // 0/0 (no smoothing, eps = 0, nothing predicted or present): score 1, loss 0
            ent.push(0.0);
            continue;
        }
        let score = num / d;
        let (loss, dl_ds) = score_loss(p, score);
        total += loss;
        ent.push(loss);
        for (j, m) in per_class.iter().enumerate() {
            for &i in m {
                let mut ds = 2.0 * wc[j] * e.g[i] / d;
                if den > p.eps {
                    ds -= num * wc[j] / (d * d);
                }
                gp[i] += w * dl_ds * ds / groups.len() as f64;
            }
        }
    }
    total / groups.len() as f64
}

/// Jaccard-extension gradient of sorted labels (Berman et al., Alg. 1).
fn lovasz_grad(sorted_g: &[f64]) -> Vec<f64> {
    let gts: f64 = sorted_g.iter().sum();
    let mut out = Vec::with_capacity(sorted_g.len());
    let (mut cum_g, mut cum_ng) = (0.0, 0.0);
    let mut prev = 0.0;
    for &g in sorted_g {
        cum_g += g;
        cum_ng += 1.0 - g;
        let j = 1.0 - (gts - cum_g) / (gts + cum_ng);
        out.push(j - prev);
        prev = j;
    }
    out
}

/// Sorts `(error, element)` descending by error (stable) and returns the order.
fn sort_desc(errs: &mut [(f64, usize)]) {
    errs.sort_by(|a, b| b.0.total_cmp(&a.0));
}

fn lovasz(e: &Elems, p: &LovaszParams, w: f64, gp: &mut [f64], gx: &mut [f64]) -> f64 {
    let groups: Vec<Vec<usize>> =
        if p.per_image { (0..e.n).map(|n| vec![n]).collect() } else { vec![(0..e.n).collect()] };
    let ng = groups.len() as f64;
    let mut total = 0.0;
    for imgs in &groups {
        if e.mode == Mode::Multiclass {
            let mut losses: Vec<(f64, Vec<(usize, f64)>)> = Vec::new();
            for c in 0..e.c {
                let m = members(e, imgs, &[c]);
                let present = m.iter().any(|&i| e.g[i] > 0.0);
                let use_class = match &p.classes {
                    Classes::Present => present,
                    Classes::All => true,
                    Classes::List(l) => l.contains(&c),
                };
                if !use_class || m.is_empty() {
                    continue;
                }
                let mut errs: Vec<(f64, usize)> = m.iter().map(|&i| ((e.g[i] - e.p[i]).abs(), i)).collect();
                sort_desc(&mut errs);
                let sg: Vec<f64> = errs.iter().map(|&(_, i)| e.g[i]).collect();
                let jg = lovasz_grad(&sg);
                let loss: f64 = errs.iter().zip(&jg).map(|(&(er, _), &j)| er * j).sum();
                let grads = errs
                    .iter()
                    .zip(&jg)
                    .map(|(&(_, i), &j)| {
                        let d = e.p[i] - e.g[i];
                        let sign = if d > 0.0 {
                            1.0
                        } else if d < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        (i, j * sign)
                    })
                    .collect();
                losses.push((loss, grads));
            }
            if losses.is_empty() {
                continue;
            }
            let k = losses.len() as f64;
            for (l, grads) in &losses {
                total += l / k;
                for &(i, d) in grads {
                    gp[i] += w / ng / k * d;
                }
            }
        } else {
            let all: Vec<usize> = (0..e.c).collect();
            let m = members(e, imgs, &all);
            if m.is_empty() {
                continue;
            }
            let mut errs: Vec<(f64, usize)> = m.iter().map(|&i| (1.0 - e.x[i] * (2.0 * e.g[i] - 1.0), i)).collect();
            sort_desc(&mut errs);
            let sg: Vec<f64> = errs.iter().map(|&(_, i)| e.g[i]).collect();
            let jg = lovasz_grad(&sg);
            for (&(er, i), &j) in errs.iter().zip(&jg) {
                if er > 0.0 {
                    total += er * j;
                    gx[i] += w / ng * j * -(2.0 * e.g[i] - 1.0);
                }
            }
        }
    }
    total / ng
}

/// The loss of one region score, `1 - s` or `-log(max(s, floor))`, and its derivative in `s`.
fn score_loss(p: &crate::expr::RegionParams, score: f64) -> (f64, f64) {
    if p.log {
        let floor = p.log_floor();
        if score > floor {
            (-score.ln(), -1.0 / score)
        } else {
            (-floor.ln(), 0.0)
        }
    } else {
        (1.0 - score, -1.0)
    }
}

/// The first `count` segments of the device's Lovász sort (numbered as `plan::lovasz_segments`
/// numbers them), from the definition: (loss of the segment, foreground count, background count).
/// The input's elements are made once for all of them.
pub(crate) fn lovasz_segments(input: &Input, per_image: bool, count: usize) -> Vec<[f64; 3]> {
    let e = Elems::new(input);
    (0..count).map(|seg| lovasz_segment(&e, per_image, seg)).collect()
}

fn lovasz_segment(e: &Elems, per_image: bool, seg: usize) -> [f64; 3] {
    let (n, c) = (e.n, e.c);
    let softmax = e.mode == Mode::Multiclass;
    let (imgs, classes): (Vec<usize>, Vec<usize>) = match (softmax, per_image) {
        (false, false) => ((0..n).collect(), (0..c).collect()),
        (false, true) => (vec![seg], (0..c).collect()),
        (true, false) => ((0..n).collect(), vec![seg]),
        (true, true) => (vec![seg / c], vec![seg % c]),
    };
    let m = members(e, &imgs, &classes);
    let mut errs: Vec<(f64, usize)> = m
        .iter()
        .map(|&i| if softmax { ((e.g[i] - e.p[i]).abs(), i) } else { (1.0 - e.x[i] * (2.0 * e.g[i] - 1.0), i) })
        .collect();
    sort_desc(&mut errs);
    let sg: Vec<f64> = errs.iter().map(|&(_, i)| e.g[i]).collect();
    let jg = lovasz_grad(&sg);
    let loss = errs.iter().zip(&jg).filter(|(&(er, _), _)| er > 0.0).map(|(&(er, _), &j)| er * j).sum();
    let fg = sg.iter().filter(|&&g| g > 0.5).count() as f64;
    [loss, fg, sg.len() as f64 - fg]
}
