#![cfg_attr(not(test), allow(dead_code))]
//! From loss expressions to GPU work and back: which sums the fused statistics pass must produce,
//! and how per-(image, class) sums turn into loss values and the coefficients of the gradient pass.
//!
//! Every loss of this crate except Lovász is a function of per-(image, class) sums of per-element
//! quantities. The statistics pass computes those sums on the GPU; [`finalize`] combines them in
//! f64 on the host (N x C numbers, microseconds) into the value of each term and into
//! `d loss / d S` for every sum `S`. Because `S = sum_i f(p_i, g_i)`, the gradient of the loss with
//! respect to an element's probability is `sum_S dL/dS * f'(p_i, g_i)`, which the gradient pass
//! evaluates per element and chains through the sigmoid or the softmax.

use crate::expr::{
    Classes, Empty, GDiceWeight, Intersection, Loss, LossExpr, LovaszParams, Norm, Pool, PosWeight, RegionKind,
    RegionLoss, SCORE_DEN_FLOOR,
};
use crate::Mode;

/// Statistics channels per (image, class), in this order.
pub(crate) mod ch {
    /// sum p g
    pub const TP: usize = 0;
    /// sum p
    pub const SP: usize = 1;
    /// sum g
    pub const SG: usize = 2;
    /// sum p^2
    pub const SPP: usize = 3;
    /// sum g^2
    pub const SGG: usize = 4;
    /// number of valid elements
    pub const CNT: usize = 5;
    /// sum (g-p)^2 g
    pub const SS1: usize = 6;
    /// sum (g-p)^2 (1-g)
    pub const SS2: usize = 7;
    /// first pixel-loss channel; each pixel loss slot has two
    pub const PIX: usize = 8;
    /// sum min(p, g), on the device: the last channel of pass 0 (slot 3's second, which a plan
    /// with `tp_min` leaves free); on the host: after the pixel channels
    pub const TPMIN_DEV: usize = 15;
}

/// Statistics channels per (image, class) of one statistics pass: 8 region channels and two per
/// pixel-loss slot.
pub const K: usize = 16;
/// Distinct pixel losses (bce, ce, focal with distinct parameters) one statistics pass holds;
/// an evaluation with more runs several passes in the same submission.
pub const MAX_PIXEL_SLOTS: usize = (K - ch::PIX) / 2;
/// Region-gradient coefficients per (image, class): d/d(TP, SP, SPP, SS1, SS2, TPMIN).
pub const NCOEF: usize = 6;
/// The coefficient of `sum min(p, g)` (intersection=min) in a region block entry.
pub const COEF_TPMIN: usize = 5;

/// Ops of the device finalize (`finalize.wgsl`): one per term of each expression.
pub(crate) mod op {
    pub const BCE: u32 = 0;
    pub const FOCAL: u32 = 1;
    pub const CE: u32 = 2;
    pub const SENSSPEC: u32 = 4;
    pub const REGION: u32 = 5;
    pub const GDICE: u32 = 6;
    pub const LOVASZ: u32 = 7;
    /// `block` of an op whose expression has no gradient.
    pub const NONE_IDX: u32 = u32::MAX;
    pub const F_POS_AUTO: u32 = 1;
    pub const F_FOCAL_SOFTMAX: u32 = 1;
    pub const F_SQUARED: u32 = 4;
    pub const F_LOG: u32 = 128;
    /// Bits 10..11: the norm of a weighted class mean (region, focal).
    pub const NORM_SHIFT: u32 = 10;
    /// Per-class weights (f32 bits) in `cls` from `nseg` (region, focal; bce: per-channel pos_weight).
    pub const F_WEIGHTS: u32 = 1 << 12;
    /// Region: TP is `sum min(p, g)` (intersection=min).
    pub const F_MIN: u32 = 1 << 13;
    pub const F_PER_IMAGE: u32 = 1;
    pub const F_SOFTMAX: u32 = 2;
    pub const F_PRESENT: u32 = 4;
}

/// One op of the device finalize, as `finalize.wgsl` reads it (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Op {
    pub kind: u32,
    pub weight: f32,
    pub val: u32,
    pub eval: u32,
    pub block: u32,
    pub sub: u32,
    pub sbase: u32,
    pub chan: u32,
    pub flags: u32,
    pub ncls: u32,
    pub cls_off: u32,
    pub nseg: u32,
    pub f: [f32; 8],
}

/// Pixel-loss kinds as the shaders number them.
pub(crate) mod kind {
    pub const BCE: u32 = 0;
    pub const FOCAL_SIGMOID: u32 = 1;
    pub const CE: u32 = 2;
    pub const FOCAL_SOFTMAX: u32 = 3;
}

/// A pixel loss as the shaders see it (std430 layout, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TermParams {
    pub kind: u32,
    pub has_alpha: u32,
    pub label_smoothing: f32,
    pub gamma: f32,
    pub alpha: f32,
    pub pos_weight: f32,
    pub scale: f32,
    pub weight_sum: f32,
}

/// One distinct pixel loss whose sums the statistics pass accumulates.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PixelSlot {
    pub kind: u32,
    pub label_smoothing: f64,
    pub gamma: f64,
    pub alpha: Option<f64>,
    /// Class weights (ce), length C; all ones when none are given.
    pub weights: Vec<f64>,
}

impl PixelSlot {
    /// The slot of a pixel loss; `softmax`: multiclass mode. `weights` are the class weights the
    /// gradient pass reads: cross-entropy's (scaled), focal's, and bce's per-channel `pos_weight`.
    pub fn of(loss: &Loss, classes: usize, softmax: bool) -> Option<PixelSlot> {
        // (made only for a pixel loss)
        let ones = || vec![1.0; classes];
        match loss {
            Loss::Bce(p) => Some(PixelSlot {
                kind: kind::BCE,
                label_smoothing: p.label_smoothing,
                gamma: 0.0,
                alpha: None,
                weights: match &p.pos_weight {
                    PosWeight::Channels(w) => w.clone(),
                    _ => ones(),
                },
            }),
            Loss::Ce(p) => Some(PixelSlot {
                kind: kind::CE,
                label_smoothing: p.label_smoothing,
                gamma: 0.0,
                alpha: None,
                // the weights enter a weighted mean only: scaled to a largest weight of 1, so
                // that f32 sums of large weights cannot overflow
                weights: p.weights.as_ref().map_or_else(ones, |w| {
                    let m = weight_scale(w);
                    w.iter().map(|&x| x / m).collect()
                }),
            }),
            Loss::Focal(p) => Some(PixelSlot {
                kind: if p.act.softmax(mode_of(softmax)) { kind::FOCAL_SOFTMAX } else { kind::FOCAL_SIGMOID },
                label_smoothing: 0.0,
                gamma: p.gamma,
                alpha: p.alpha,
                weights: p.weights.clone().unwrap_or_else(ones),
            }),
            _ => None,
        }
    }

    /// The largest class weight (1 without weights): the device's weights are divided by it.
    pub fn weight_scale(&self) -> f64 {
        weight_scale(&self.weights)
    }

    /// The class weights as the kernels read them: divided by [`PixelSlot::weight_scale`].
    pub fn device_weights(&self) -> Vec<f32> {
        let m = self.weight_scale();
        self.weights.iter().map(|&w| (w / m) as f32).collect()
    }

    pub fn params(&self, scale: f64, pos_weight: f64) -> TermParams {
        TermParams {
            kind: self.kind,
            has_alpha: self.alpha.is_some() as u32,
            label_smoothing: self.label_smoothing as f32,
            gamma: self.gamma as f32,
            alpha: self.alpha.unwrap_or(0.0) as f32,
            pos_weight: pos_weight as f32,
            scale: scale as f32,
            weight_sum: self.weights.iter().sum::<f64>() as f32,
        }
    }
}

/// The statistics one evaluation needs: the distinct pixel losses of all its expressions (in
/// statistics passes of [`MAX_PIXEL_SLOTS`] each) and the distinct Lovász losses (one sort each).
#[derive(Clone, Debug, Default)]
pub(crate) struct StatsPlan {
    pub slots: Vec<PixelSlot>,
    /// Whether any region loss needs the sensitivity/specificity channels.
    pub needs_sensspec: bool,
    /// The distinct Lovász losses of the evaluation, in order of appearance.
    pub lovasz: Vec<LovaszParams>,
    /// Whether some term reads the per-(image, class) sums of pass 0 (region losses, sensspec,
    /// bce and focal): false when every term is cross-entropy or Lovász.
    pub needs_class_sums: bool,
    /// Multiclass mode (softmax).
    pub softmax: bool,
    /// Some region loss sums TP as `min(p, g)`: pass 0 also holds that sum (and one pixel slot
    /// fewer).
    pub tp_min: bool,
}

/// The largest of some weights, or 1 when none is positive.
pub(crate) fn weight_scale(w: &[f64]) -> f64 {
    let m = w.iter().copied().fold(0.0, f64::max);
    if m > 0.0 {
        m
    } else {
        1.0
    }
}

/// The mode a `softmax` flag stands for where only that matters (multiclass, or a sigmoid mode).
fn mode_of(softmax: bool) -> Mode {
    if softmax {
        Mode::Multiclass
    } else {
        Mode::Binary
    }
}

/// Segments of the Lovász sort: `(count, length)`. Hinge: the batch or each image, all channels
/// flattened; softmax: each class over the batch, or each (image, class).
pub(crate) fn lovasz_segments(softmax: bool, per_image: bool, n: usize, c: usize, s: usize) -> (usize, usize) {
    match (softmax, per_image) {
        (false, false) => (1, n * c * s),
        (false, true) => (n, c * s),
        (true, false) => (c, n * s),
        (true, true) => (n * c, s),
    }
}

/// Per-segment results of the Lovász kernels: (value, foreground count, background count).
#[derive(Clone, Debug)]
pub(crate) struct LovaszSums {
    pub segs: Vec<[f64; 3]>,
}

impl StatsPlan {
    /// Collects the pixel and Lovász losses of `exprs`, each distinct one once.
    pub fn new(exprs: &[LossExpr], classes: usize, softmax: bool) -> StatsPlan {
        let mut plan = StatsPlan { softmax, ..StatsPlan::default() };
        for t in exprs.iter().flat_map(|e| &e.terms) {
            if matches!(t.loss, Loss::SensSpec(_)) {
                plan.needs_sensspec = true;
            }
            if let Loss::Region(r) = &t.loss {
                if r.params.intersection == Intersection::Min && !matches!(r.kind, RegionKind::GDice { .. }) {
                    plan.tp_min = true;
                }
            }
            if let Loss::Lovasz(p) = &t.loss {
                if !plan.lovasz.contains(p) {
                    plan.lovasz.push(p.clone());
                }
            }
            let slot = PixelSlot::of(&t.loss, classes, softmax);
            let ce = slot.as_ref().is_some_and(|s| s.kind == op::CE);
            if !ce && !matches!(t.loss, Loss::Lovasz(_)) {
                plan.needs_class_sums = true;
            }
            if let Some(slot) = slot {
                if !plan.slots.contains(&slot) {
                    plan.slots.push(slot);
                }
            }
        }
        plan
    }

    /// Pixel losses per statistics pass: [`MAX_PIXEL_SLOTS`], one fewer with `tp_min`.
    pub fn slots_per_pass(&self) -> usize {
        MAX_PIXEL_SLOTS - usize::from(self.tp_min)
    }

    /// Statistics passes: each holds [`StatsPlan::slots_per_pass`] pixel losses (at least one pass).
    pub fn passes(&self) -> usize {
        self.slots.len().div_ceil(self.slots_per_pass()).max(1)
    }

    /// The slots of statistics pass `p`.
    pub fn pass_slots(&self, p: usize) -> &[PixelSlot] {
        let k = self.slots_per_pass();
        &self.slots[(p * k).min(self.slots.len())..((p + 1) * k).min(self.slots.len())]
    }

    /// Where pixel slot `slot` sits on the device: (pass, first of its two channels).
    pub fn slot_place(&self, slot: usize) -> (usize, usize) {
        let k = self.slots_per_pass();
        (slot / k, ch::PIX + 2 * (slot % k))
    }

    /// Where host channel `j` (of [`StatsPlan::host_channels`]) sits on the device: (pass,
    /// channel of the pass's [`K`]).
    pub fn device_channel(&self, j: usize) -> (usize, usize) {
        if j < ch::PIX {
            (0, j)
        } else if self.tp_min && j == self.host_channels() - 1 {
            (0, ch::TPMIN_DEV)
        } else {
            let (pass, chan) = self.slot_place((j - ch::PIX) / 2);
            (pass, chan + (j - ch::PIX) % 2)
        }
    }

    /// Host statistics channels per (image, class): 8 region channels, two per pixel slot, and
    /// `sum min(p, g)` with `tp_min`.
    pub fn host_channels(&self) -> usize {
        ch::PIX + 2 * self.slots.len() + usize::from(self.tp_min)
    }

    pub fn slot_of(&self, loss: &Loss, classes: usize) -> usize {
        let s = PixelSlot::of(loss, classes, self.softmax).expect("pixel loss");
        self.slots.iter().position(|x| *x == s).expect("slot planned")
    }

    pub(crate) fn lovasz_of(&self, p: &LovaszParams) -> usize {
        self.lovasz.iter().position(|q| q == p).expect("lovasz planned")
    }
}

/// Where one expression's gradient coefficients sit in its block (`finalize.wgsl`):
/// `[scale, pos_weight]` per pixel term, then `N x C x NCOEF` region coefficients, then the
/// segment scales of each Lovász loss it uses.
#[derive(Clone, Debug)]
pub(crate) struct BlockLayout {
    /// Pixel terms: (term index, slot).
    pub pix: Vec<(usize, usize)>,
    /// Lovász losses used: (index in [`StatsPlan::lovasz`], offset in the block, segments).
    pub lov: Vec<(usize, usize, usize)>,
    pub region_base: usize,
    pub len: usize,
    /// Whether any term has region coefficients (region losses, sensspec).
    pub region: bool,
    /// Whether some region term's d loss / d p depends on p: a squared denominator (d/dSPP) or
    /// sensitivity/specificity (d/dSS1, d/dSS2). Without, those three coefficients are 0, so d
    /// loss / d p at a one-hot target is constant in p and the softmax gradient skips the slope
    /// (the device finalize writes d/dSPP only for `F_SQUARED` ops, d/dSS1 and d/dSS2 only for
    /// sensspec; the twin test of the device finalize holds them to 0, `src/twin.rs`).
    pub slope: bool,
}

impl BlockLayout {
    pub fn new(expr: &LossExpr, plan: &StatsPlan, (n, c, s): (usize, usize, usize), softmax: bool) -> BlockLayout {
        let mut pix = Vec::new();
        let mut lov: Vec<(usize, usize, usize)> = Vec::new();
        let mut region = false;
        let mut slope = false;
        for (i, t) in expr.terms.iter().enumerate() {
            match &t.loss {
                Loss::Bce(_) | Loss::Ce(_) | Loss::Focal(_) => pix.push((i, plan.slot_of(&t.loss, c))),
                Loss::Region(r) => {
                    region = true;
                    slope |=
                        matches!(r.kind, RegionKind::Dice { squared: true } | RegionKind::Jaccard { squared: true });
                }
                Loss::SensSpec(_) => {
                    region = true;
                    slope = true;
                }
                Loss::Lovasz(p) => {
                    let g = plan.lovasz_of(p);
                    if !lov.iter().any(|l| l.0 == g) {
                        lov.push((g, 0, lovasz_segments(softmax, p.per_image, n, c, s).0));
                    }
                }
            }
        }
        let region_base = 2 * pix.len();
        let mut len = region_base + n * c * NCOEF;
        for l in lov.iter_mut() {
            l.1 = len;
            len += l.2;
        }
        BlockLayout { pix, lov, region_base, len, region, slope }
    }
}

/// Per-(image, class) sums, `[N][C][k]` in f64: 8 region channels, then two per pixel slot.
pub(crate) struct Sums<'a> {
    pub data: &'a [f64],
    pub n: usize,
    pub c: usize,
    pub k: usize,
    /// The channel of `sum min(p, g)` (intersection=min), when the statistics hold it.
    pub tpmin: Option<usize>,
}

impl Sums<'_> {
    #[inline]
    pub fn at(&self, n: usize, c: usize, k: usize) -> f64 {
        self.data[(n * self.c + c) * self.k + k]
    }
    fn total(&self, k: usize) -> f64 {
        (0..self.n).flat_map(|n| (0..self.c).map(move |c| (n, c))).map(|(n, c)| self.at(n, c, k)).sum()
    }
    /// `sum_(n, c) w_c S(n, c, k)`.
    fn weighted(&self, k: usize, w: &[f64]) -> f64 {
        (0..self.n).flat_map(|n| (0..self.c).map(move |c| (n, c))).map(|(n, c)| w[c] * self.at(n, c, k)).sum()
    }
}

/// What the host finalize derives from the sums for one expression.
pub(crate) struct Finalized {
    /// The value of the expression.
    pub value: f64,
    /// The value of each term (before its weight).
    pub term_values: Vec<f64>,
    /// The coefficient block ([`BlockLayout`]), as the device finalize writes it.
    pub block: Vec<f64>,
}

/// Combines the sums into values and gradient coefficients for one expression, in f64: the CPU
/// twin of `finalize.wgsl`, which the tests hold the device to.
pub(crate) fn finalize(
    expr: &LossExpr,
    plan: &StatsPlan,
    layout: &BlockLayout,
    sums: &Sums,
    mode: Mode,
    lovasz: &[LovaszSums],
) -> Finalized {
    let (n_img, c_cls) = (sums.n, sums.c);
    let mut block = vec![0f64; layout.len];
    let mut term_values = Vec::with_capacity(expr.terms.len());
    let cnt = sums.total(ch::CNT);
    for (i, t) in expr.terms.iter().enumerate() {
        let w = t.weight;
        let mut pixel = |scale: f64, pw: f64| {
            let j = layout.pix.iter().position(|p| p.0 == i).expect("pixel term in layout");
            block[2 * j] = scale;
            block[2 * j + 1] = pw;
        };
        let v = match &t.loss {
            Loss::Bce(p) => {
                let slot = plan.slot_of(&t.loss, c_cls);
                let k = ch::PIX + 2 * slot;
                // a scalar pos_weight (the gradient pass multiplies it by the slot's per-channel ones)
                let pw = match p.pos_weight {
                    PosWeight::Value(v) => v,
                    PosWeight::Auto => {
                        let sg = sums.total(ch::SG);
                        (cnt - sg) / sg.max(1.0)
                    }
                    PosWeight::Channels(_) => 1.0,
                };
                // per-channel weights as the device has them: divided by their largest, which
                // becomes the scalar pos_weight
                let s = &plan.slots[slot];
                let m = s.weight_scale();
                let pw = if matches!(p.pos_weight, PosWeight::Channels(_)) { m } else { pw };
                let cw: Vec<f64> = s.weights.iter().map(|&x| x / m).collect();
                let a = sums.weighted(k, &cw);
                let b = sums.total(k + 1);
                let (v, scale) = if cnt > 0.0 { ((pw * a + b) / cnt, w / cnt) } else { (0.0, 0.0) };
                pixel(scale, pw);
                v
            }
            Loss::Focal(p) => {
                let slot = plan.slot_of(&t.loss, c_cls);
                let cw = &plan.slots[slot].weights;
                let s = sums.weighted(ch::PIX + 2 * slot, cw);
                // count: the non-ignored elements (softmax: P C); weights: the terms' class
                // weights (sigmoid: per element; softmax: per pixel, of its true class)
                let denom = match p.norm {
                    Norm::Count => cnt,
                    _ if plan.softmax && p.act.softmax(mode) => sums.weighted(ch::SG, cw),
                    _ => sums.weighted(ch::CNT, cw),
                };
                // the gradient pass multiplies the scale by the device's weights (divided by
                // their largest)
                let m = plan.slots[slot].weight_scale();
                let (v, scale) = if denom > 0.0 { (s / denom, m * w / denom) } else { (0.0, 0.0) };
                pixel(scale, 1.0);
                v
            }
            Loss::Ce(_) => {
                let slot = plan.slot_of(&t.loss, c_cls);
                let num = sums.total(ch::PIX + 2 * slot);
                let den = sums.total(ch::PIX + 2 * slot + 1);
                let (v, scale) = if den > 0.0 { (num / den, w / den) } else { (0.0, 0.0) };
                pixel(scale, 1.0);
                v
            }
            Loss::SensSpec(p) => {
                let sg = sums.total(ch::SG);
                let d1 = sg + p.smooth;
                let d2 = cnt - sg + p.smooth;
                let (mut v, mut a1, mut a2) = (0.0, 0.0, 0.0);
                if d1 > 0.0 {
                    v += p.lambda * sums.total(ch::SS1) / d1;
                    a1 = w * p.lambda / d1;
                }
                if d2 > 0.0 {
                    v += (1.0 - p.lambda) * sums.total(ch::SS2) / d2;
                    a2 = w * (1.0 - p.lambda) / d2;
                }
                let coefs = &mut block[layout.region_base..];
                for nc in 0..n_img * c_cls {
                    coefs[nc * NCOEF + 3] += a1;
                    coefs[nc * NCOEF + 4] += a2;
                }
                v
            }
            Loss::Region(r) => {
                let coefs = &mut block[layout.region_base..];
                match r.kind {
                    RegionKind::GDice { weight } => gdice(r, weight, w, sums, coefs, &mut Vec::new()),
                    _ => region(r, w, sums, coefs, &mut Vec::new()),
                }
            }
            Loss::Lovasz(p) => {
                let g = plan.lovasz_of(p);
                let &(_, off, nseg) = layout.lov.iter().find(|l| l.0 == g).expect("lovasz in layout");
                let scales = &mut block[off..off + nseg];
                lovasz_term(p, mode == Mode::Multiclass, w, n_img, c_cls, &lovasz[g], scales)
            }
        };
        term_values.push(v);
    }
    let value = expr.terms.iter().zip(&term_values).map(|(t, v)| t.weight * v).sum();
    Finalized { value, term_values, block }
}

/// The unreduced entries of a region loss (one per group: its weight times its loss, before
/// Tversky's gamma) from the per-(image, class) sums, in the order of
/// [`RegionLoss::entry_shape`].
pub(crate) fn region_entries(r: &RegionLoss, sums: &Sums) -> Vec<f64> {
    let mut coefs = vec![0.0; sums.n * sums.c * NCOEF];
    let mut ent = Vec::new();
    match r.kind {
        RegionKind::GDice { weight } => gdice(r, weight, 1.0, sums, &mut coefs, &mut ent),
        _ => region(r, 1.0, sums, &mut coefs, &mut ent),
    };
    ent
}

/// The ops of the device finalize for one expression, appended to `ops` (class lists to `cls`).
/// `vals`: out index of the expression's value (its term values follow); `block`: out index of
/// its coefficient block, or `None` without a gradient; `sums_stride`: floats per statistics
/// pass; `lov_base[g]`: first segment of Lovász loss g in the finalize's `lov` binding.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_ops(
    expr: &LossExpr,
    plan: &StatsPlan,
    layout: &BlockLayout,
    vals: usize,
    block: Option<usize>,
    sums_stride: usize,
    lov_base: &[usize],
    classes: usize,
    softmax: bool,
    ops: &mut Vec<Op>,
    cls: &mut Vec<u32>,
) {
    for (i, t) in expr.terms.iter().enumerate() {
        let mut o = Op {
            weight: t.weight as f32,
            val: (vals + 1 + i) as u32,
            eval: vals as u32,
            block: block.map_or(op::NONE_IDX, |b| b as u32),
            ..Op::default()
        };
        let list = |l: &Classes, o: &mut Op, cls: &mut Vec<u32>| {
            if let Classes::List(l) = l {
                o.ncls = l.len() as u32;
                o.cls_off = cls.len() as u32;
                cls.extend(l.iter().map(|&k| k as u32));
            }
        };
        // per-class weights: f32 bits in `cls` from `nseg`
        // per-class weights, divided by their largest (its value `m` in f[7], bce's in its
        // pos_weight) so that f32 sums of large weights cannot overflow; `scaled: false` keeps
        // them as given (weights inside the sums of pool=all|image_all, next to unscaled smoothing)
        let weights = |w: &[f64], o: &mut Op, cls: &mut Vec<u32>, scaled: bool| {
            let m = if scaled { weight_scale(w) } else { 1.0 };
            o.flags |= op::F_WEIGHTS;
            o.nseg = cls.len() as u32;
            o.f[7] = m as f32;
            cls.extend(w.iter().map(|&x| ((x / m) as f32).to_bits()));
        };
        let pixel = |o: &mut Op, kind: u32| {
            let slot = plan.slot_of(&t.loss, classes);
            o.kind = kind;
            o.sub = layout.pix.iter().position(|p| p.0 == i).expect("pixel term") as u32;
            let (pass, chan) = plan.slot_place(slot);
            o.sbase = (pass * sums_stride) as u32;
            o.chan = chan as u32;
        };
        match &t.loss {
            Loss::Bce(p) => {
                pixel(&mut o, op::BCE);
                match &p.pos_weight {
                    PosWeight::Value(v) => o.f[0] = *v as f32,
                    PosWeight::Auto => o.flags = op::F_POS_AUTO,
                    PosWeight::Channels(w) => {
                        weights(w, &mut o, cls, true);
                        o.f[0] = o.f[7];
                    }
                }
            }
            Loss::Ce(_) => pixel(&mut o, op::CE),
            Loss::Focal(p) => {
                pixel(&mut o, op::FOCAL);
                if p.act.softmax(mode_of(softmax)) {
                    o.flags = op::F_FOCAL_SOFTMAX;
                }
                o.flags |= norm_bits(p.norm);
                if let Some(w) = &p.weights {
                    weights(w, &mut o, cls, true);
                }
            }
            Loss::SensSpec(p) => {
                o.kind = op::SENSSPEC;
                o.sub = layout.region_base as u32;
                o.f[0] = p.lambda as f32;
                o.f[1] = p.smooth as f32;
            }
            Loss::Region(r) => {
                let p = &r.params;
                let pool = match p.pool {
                    Pool::Batch => 0,
                    Pool::Image => 1,
                    Pool::All => 2,
                    Pool::ImageAll => 3,
                };
                let empty = match p.empty {
                    Empty::Zero => 0,
                    Empty::Skip => 1,
                    Empty::Formula => 2,
                };
                let (rk, sq) = match r.kind {
                    RegionKind::Dice { squared } => (0, squared),
                    RegionKind::Jaccard { squared } => (1, squared),
                    RegionKind::Tversky { alpha, beta, gamma } => {
                        o.f[4] = alpha as f32;
                        o.f[5] = beta as f32;
                        o.f[6] = gamma as f32;
                        (2, false)
                    }
                    RegionKind::GDice { weight } => {
                        let wk = match weight {
                            GDiceWeight::Square => 0,
                            GDiceWeight::Simple => 1,
                            GDiceWeight::Uniform => 2,
                        };
                        (wk << 8, false)
                    }
                };
                o.kind = if matches!(r.kind, RegionKind::GDice { .. }) { op::GDICE } else { op::REGION };
                o.flags = rk | (pool << 3) | (empty << 5) | if sq { op::F_SQUARED } else { 0 };
                if p.log {
                    o.flags |= op::F_LOG;
                }
                o.f[0] = p.smooth_nr as f32;
                o.f[1] = p.smooth_dr as f32;
                o.f[2] = p.eps as f32;
                o.f[3] = p.log_floor() as f32;
                o.sub = layout.region_base as u32;
                list(&p.classes, &mut o, cls);
                o.flags |= norm_bits(p.norm);
                if let Some(w) = p.listed_weights(classes) {
                    weights(&w, &mut o, cls, matches!(p.pool, Pool::Batch | Pool::Image));
                }
                if p.intersection == Intersection::Min && o.kind == op::REGION {
                    o.flags |= op::F_MIN;
                }
            }
            Loss::Lovasz(p) => {
                let g = plan.lovasz_of(p);
                let &(_, off, nseg) = layout.lov.iter().find(|l| l.0 == g).expect("lovasz in layout");
                o.kind = op::LOVASZ;
                o.sub = off as u32;
                o.chan = lov_base[g] as u32;
                o.nseg = nseg as u32;
                o.flags = if p.per_image { op::F_PER_IMAGE } else { 0 } | if softmax { op::F_SOFTMAX } else { 0 };
                match &p.classes {
                    Classes::Present => o.flags |= op::F_PRESENT,
                    l => list(l, &mut o, cls),
                }
            }
        }
        ops.push(o);
    }
}

fn norm_bits(n: Norm) -> u32 {
    (match n {
        Norm::Count => 0,
        Norm::Weights => 1,
        Norm::Image => 2,
    }) << op::NORM_SHIFT
}

fn class_set(classes: &Classes, c: usize) -> Vec<usize> {
    match classes {
        Classes::List(l) => l.clone(),
        _ => (0..c).collect(),
    }
}

/// Score of one Dice/Jaccard/Tversky entry and its derivatives by (TP, SP, SPP).
fn score(kind: RegionKind, p: &crate::expr::RegionParams, s: [f64; 5]) -> (f64, [f64; 3]) {
    let [tp, sp, sg, spp, sgg] = s;
    // num = a_tp * TP + s_nr, den = b_tp TP + b_sp SP + b_spp SPP + const + s_dr
    let (a_tp, b_tp, b_sp, b_spp, b_c) = match kind {
        RegionKind::Dice { squared: false } => (2.0, 0.0, 1.0, 0.0, sg),
        RegionKind::Dice { squared: true } => (2.0, 0.0, 0.0, 1.0, sgg),
        RegionKind::Jaccard { squared: false } => (1.0, -1.0, 1.0, 0.0, sg),
        RegionKind::Jaccard { squared: true } => (1.0, -1.0, 0.0, 1.0, sgg),
        RegionKind::Tversky { alpha, beta, .. } => (1.0, 1.0 - alpha - beta, alpha, 0.0, beta * sg),
        RegionKind::GDice { .. } => unreachable!(),
    };
    let num = a_tp * tp + p.smooth_nr;
    let den = b_tp * tp + b_sp * sp + b_spp * spp + b_c + p.smooth_dr;
    let d = den.max(p.eps);
    if d <= SCORE_DEN_FLOOR {
        // 0/0 with eps = 0 and no smoothing: an empty prediction on an empty target scores 1.
        return (1.0, [0.0; 3]);
    }
    let s = num / d;
    let q = if den > p.eps { -num / (d * d) } else { 0.0 };
    (s, [a_tp / d + q * b_tp, q * b_sp, q * b_spp])
}

/// Per-entry loss from a score: `1 - s` or `-log(max(s, floor))`, and its derivative.
fn entry_loss(p: &crate::expr::RegionParams, s: f64) -> (f64, f64) {
    if p.log {
        let f = p.log_floor();
        if s > f {
            (-s.ln(), -1.0 / s)
        } else {
            (-f.ln(), 0.0)
        }
    } else {
        (1.0 - s, -1.0)
    }
}

fn region(r: &RegionLoss, w: f64, sums: &Sums, coefs: &mut [f64], ent: &mut Vec<f64>) -> f64 {
    let p = &r.params;
    let (n_img, c_cls) = (sums.n, sums.c);
    let classes = class_set(&p.classes, c_cls);
    let listed = p.listed_weights(c_cls);
    let wt = |j: usize| listed.as_ref().map_or(1.0, |ws| ws[j]);
    let js: Vec<usize> = (0..classes.len()).collect();
    // Groups: members (image, class, factor of its sums), the group's weight and its image.
    type Members = Vec<(usize, usize, f64)>;
    type Group = (Members, f64, usize);
    let groups: Vec<Group> = match p.pool {
        Pool::Batch => js.iter().map(|&j| ((0..n_img).map(|n| (n, classes[j], 1.0)).collect(), wt(j), 0)).collect(),
        Pool::Image => (0..n_img)
            .flat_map(|n| js.iter().map(move |&j| (n, j)))
            .map(|(n, j)| (vec![(n, classes[j], 1.0)], wt(j), n))
            .collect(),
        Pool::All => {
            vec![(
                (0..n_img).flat_map(|n| js.iter().map(move |&j| (n, j))).map(|(n, j)| (n, classes[j], wt(j))).collect(),
                1.0,
                0,
            )]
        }
        Pool::ImageAll => (0..n_img).map(|n| (js.iter().map(|&j| (n, classes[j], wt(j))).collect(), 1.0, n)).collect(),
    };
    // TP: sum p g, or sum min(p, g) (its own channel and coefficient)
    let min = p.intersection == Intersection::Min;
    let tp_k = if min { sums.tpmin.expect("statistics with sum min(p, g)") } else { ch::TP };
    let tp_coef = if min { COEF_TPMIN } else { 0 };
    // (loss, weight, image) and d loss / d (TP, SP, SPP) of each counted group
    let mut counted: Vec<(f64, f64, usize)> = Vec::new();
    let mut ds: Vec<([f64; 3], &Members)> = Vec::new();
    for (m, gw, img) in &groups {
        let mut s = [0.0; 5];
        for &(n, c, f) in m {
            for (j, k) in [tp_k, ch::SP, ch::SG, ch::SPP, ch::SGG].into_iter().enumerate() {
                s[j] += f * sums.at(n, c, k);
            }
        }
        let empty = s[2] <= 0.0;
        if empty && p.empty != Empty::Formula {
            ent.push(0.0);
            if p.empty == Empty::Zero {
                counted.push((0.0, *gw, *img));
                ds.push(([0.0; 3], m));
            }
            continue;
        }
        let (sc, d) = score(r.kind, p, s);
        let (l, dl) = entry_loss(p, sc);
        ent.push(gw * l);
        counted.push((l, *gw, *img));
        ds.push(([dl * d[0], dl * d[1], dl * d[2]], m));
    }
    if counted.is_empty() && !(p.norm == Norm::Image && p.pool == Pool::Image) {
        return 0.0;
    }
    let (mean, factors) = class_mean(&counted, p.norm, p.pool == Pool::Image, n_img);
    let gamma = match r.kind {
        RegionKind::Tversky { gamma, .. } => gamma,
        _ => 1.0,
    };
    let (value, dmean) = if gamma == 1.0 {
        (mean, 1.0)
    } else if mean > 0.0 {
        (mean.powf(gamma), gamma * mean.powf(gamma - 1.0))
    } else {
        (0.0, 0.0)
    };
    for ((d, members), f) in ds.iter().zip(&factors) {
        let f = w * dmean * f;
        for &(n, c, k) in members.iter() {
            let o = (n * c_cls + c) * NCOEF;
            coefs[o + tp_coef] += f * k * d[0];
            coefs[o + 1] += f * k * d[1];
            coefs[o + 2] += f * k * d[2];
        }
    }
    value
}

/// The mean of counted groups `(loss, weight, image)` under `norm` (`per_image`: `pool=image`),
/// and `d mean / d loss` of each group, as `finalize.wgsl` computes them. `norm=image` per image:
/// an image whose counted weights sum to 0 has loss 1 (kornia), with no gradient.
fn class_mean(groups: &[(f64, f64, usize)], norm: Norm, per_image: bool, images: usize) -> (f64, Vec<f64>) {
    // the divisor of each group: K, the counted weight sum (0: no value), or its image's
    let k = groups.len() as f64;
    let wsum: f64 = groups.iter().map(|g| g.1).sum();
    let mut img_sum = vec![0.0; images];
    if norm == Norm::Image && per_image {
        for g in groups {
            img_sum[g.2] += g.1;
        }
    }
    let factors: Vec<f64> = groups
        .iter()
        .map(|&(_, gw, img)| match norm {
            Norm::Count => gw / k,
            Norm::Image if per_image => {
                let d = img_sum[img];
                if d == 0.0 {
                    0.0
                } else {
                    gw / d / images as f64
                }
            }
            _ if wsum > 0.0 => gw / wsum,
            _ => 0.0,
        })
        .collect();
    let mut mean: f64 = groups.iter().zip(&factors).map(|(g, f)| f * g.0).sum();
    if norm == Norm::Image && per_image {
        mean += img_sum.iter().filter(|&&d| d == 0.0).count() as f64 / images as f64;
    }
    (mean, factors)
}

fn gdice(r: &RegionLoss, weight: GDiceWeight, w: f64, sums: &Sums, coefs: &mut [f64], ent: &mut Vec<f64>) -> f64 {
    let p = &r.params;
    let (n_img, c_cls) = (sums.n, sums.c);
    let classes = class_set(&p.classes, c_cls);
    let groups: Vec<Vec<usize>> = match p.pool {
        Pool::Image => (0..n_img).map(|n| vec![n]).collect(),
        _ => vec![(0..n_img).collect()],
    };
    let mut total = 0.0;
    let g_count = groups.len() as f64;
    for imgs in &groups {
        let tot = |c: usize, k: usize| imgs.iter().map(|&n| sums.at(n, c, k)).sum::<f64>();
        let sg: Vec<f64> = classes.iter().map(|&c| tot(c, ch::SG)).collect();
        let mut wc: Vec<f64> = sg
            .iter()
            .map(|&s| match weight {
                GDiceWeight::Square => 1.0 / (s * s),
                GDiceWeight::Simple => 1.0 / s,
                GDiceWeight::Uniform => 1.0,
            })
            .collect();
        let max_finite = wc.iter().copied().filter(|x| x.is_finite()).fold(0.0, f64::max);
        for x in wc.iter_mut() {
            if !x.is_finite() {
                *x = max_finite;
            }
        }
        let mut num = p.smooth_nr;
        let mut den = p.smooth_dr;
        for (j, &c) in classes.iter().enumerate() {
            num += 2.0 * wc[j] * tot(c, ch::TP);
            den += wc[j] * (tot(c, ch::SP) + sg[j]);
        }
        let d = den.max(p.eps);
        let (s, live) = if d > SCORE_DEN_FLOOR { (num / d, den > p.eps) } else { (1.0, false) };
        let (l, dl) = entry_loss(p, s);
        total += l;
        ent.push(l);
        if d > SCORE_DEN_FLOOR {
            let f = w * dl / g_count;
            let q = if live { -num / (d * d) } else { 0.0 };
            for (j, &c) in classes.iter().enumerate() {
                for &n in imgs {
                    let o = (n * c_cls + c) * NCOEF;
                    coefs[o] += f * 2.0 * wc[j] / d;
                    coefs[o + 1] += f * q * wc[j];
                }
            }
        }
    }
    total / g_count
}

/// Value of a Lovász term from its per-segment sums, and each segment's gradient scale.
fn lovasz_term(p: &LovaszParams, softmax: bool, w: f64, n: usize, c: usize, l: &LovaszSums, scales: &mut [f64]) -> f64 {
    let groups = if p.per_image { n } else { 1 };
    let mut total = 0.0;
    for g in 0..groups {
        if softmax {
            let seg_of = |k: usize| if p.per_image { g * c + k } else { k };
            let used: Vec<usize> = (0..c)
                .filter(|&k| {
                    let [_, fg, bg] = l.segs[seg_of(k)];
                    fg + bg > 0.0
                        && match &p.classes {
                            Classes::Present => fg > 0.0,
                            Classes::All => true,
                            Classes::List(list) => list.contains(&k),
                        }
                })
                .collect();
            for &k in &used {
                total += l.segs[seg_of(k)][0] / used.len() as f64;
                scales[seg_of(k)] += w / groups as f64 / used.len() as f64;
            }
        } else {
            total += l.segs[g][0];
            scales[g] += w / groups as f64;
        }
    }
    total / groups as f64
}
