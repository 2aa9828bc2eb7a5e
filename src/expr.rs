//! Loss expressions: the typed form of `0.8*ce+0.2*dice@monai`, parsed with [`std::str::FromStr`].
//!
//! The grammar and every name, key, default and preset follow `LOSSES.md`:
//!
//! ```text
//! expr   = term { "+" term }
//! term   = [ number "*" ] name [ "@" preset ] [ ":" key "=" value { "," key "=" value } ]
//! ```
//!
//! ```
//! use segloss::{LossExpr, Loss};
//! let e: LossExpr = "0.8*ce+0.2*dice@monai:log=true".parse().unwrap();
//! assert_eq!(e.terms.len(), 2);
//! assert!(matches!(e.terms[1].loss, Loss::Region(_)));
//! assert_eq!(
//!     e.to_string(),
//!     "0.8*ce+0.2*dice:pool=image,smooth=0.00001,eps=0,empty=formula,log=true,norm=count,intersection=product"
//! );
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::{InputKind, Mode};

/// A weighted sum of losses.
#[derive(Clone, Debug, PartialEq)]
pub struct LossExpr {
    /// The terms of the sum, in the order written.
    pub terms: Vec<Term>,
    /// `reduction=none` (written among the keys of a single-term text): the evaluation also
    /// returns the entries the value reduces ([`crate::Evaluation::unreduced`]).
    pub reduction: Reduction,
    /// `deep(...)`: deep supervision, the sum over the input's levels of the level's weight times
    /// the terms on that level ([`crate::Input::with_levels`]).
    pub deep: Option<DeepWeights>,
}

/// The most levels deep supervision takes (level 0 included).
pub(crate) const MAX_LEVELS: usize = 1024;

/// The level weights of `deep(...)`.
#[derive(Clone, Debug, PartialEq)]
pub enum DeepWeights {
    /// `deep` / `deep@exp` (default): `max(0.5^l, 1/16)`.
    Exp,
    /// `deep@two`: 1, 0.5, 0.5, ...
    Two,
    /// `deep@same`: 1 for every level.
    Same,
    /// `deep:weights=w0;w1;...`: at least as many as levels, the first ones used.
    List(Vec<f64>),
}

impl DeepWeights {
    /// The weights of `levels` levels (MONAI's `DeepSupervisionLoss` weights).
    ///
    /// ```
    /// use segloss::expr::DeepWeights;
    /// assert_eq!(DeepWeights::Exp.of(6).unwrap(), vec![1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625]);
    /// assert_eq!(DeepWeights::Two.of(3).unwrap(), vec![1.0, 0.5, 0.5]);
    /// assert!(DeepWeights::List(vec![1.0, 0.3]).of(3).is_err());
    /// ```
    pub fn of(&self, levels: usize) -> Result<Vec<f64>, Error> {
        if levels > MAX_LEVELS {
            return Err(Error::LossMode {
                loss: "deep".into(),
                msg: format!("{levels} levels: deep supervision takes at most {MAX_LEVELS}"),
            });
        }
        Ok(match self {
            DeepWeights::Exp => (0..levels).map(|l| 0.5f64.powi(l as i32).max(1.0 / 16.0)).collect(),
            DeepWeights::Two => (0..levels).map(|l| if l == 0 { 1.0 } else { 0.5 }).collect(),
            DeepWeights::Same => vec![1.0; levels],
            DeepWeights::List(w) if w.len() < levels => {
                return Err(Error::LossMode {
                    loss: "deep".into(),
                    msg: format!("weights has {} entries but the input has {levels} levels", w.len()),
                })
            }
            DeepWeights::List(w) => w[..levels].to_vec(),
        })
    }
}

/// Whether an evaluation also returns the entries its value is the mean of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The value and gradient only (default).
    #[default]
    Mean,
    /// The value and gradient of `mean`, and the unreduced entries: one per group of a region
    /// loss (`[C']`, `[N, C']`, `[N]` or `[1]`), one per element of bce and focal (`[N, C, S...]`),
    /// one per pixel of ce (`[N, S...]`); ignored entries are 0, a factor scales them. Evaluated
    /// within one storage binding: an input evaluated in pieces (past the binding) refuses it,
    /// with `Error::Unsupported` for the whole call.
    None,
}

/// One `weight * loss` term of a [`LossExpr`].
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// The factor in front of the loss (1 when not written).
    pub weight: f64,
    /// The loss with all of its parameters resolved (presets applied).
    pub loss: Loss,
}

/// One loss with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// Binary cross-entropy on `sigmoid(x)` (binary and multilabel modes).
    Bce(BceParams),
    /// Softmax cross-entropy (multiclass mode).
    Ce(CeParams),
    /// Focal loss (sigmoid, or softmax on the true class).
    Focal(FocalParams),
    /// Dice, Jaccard, Tversky or generalized Dice.
    Region(RegionLoss),
    /// Sensitivity-specificity loss (Brosch et al.).
    SensSpec(SensSpecParams),
    /// Lovász hinge (binary/multilabel) or Lovász-Softmax (multiclass).
    Lovasz(LovaszParams),
}

/// `pos_weight` of [`BceParams`].
#[derive(Clone, Debug, PartialEq)]
pub enum PosWeight {
    /// A fixed factor on the positive term.
    Value(f64),
    /// `(numel - sum g) / max(sum g, 1)` over the whole batch, a constant of the target.
    Auto,
    /// One factor per channel (`pos_weight=w0;w1;...`): PyTorch's `pos_weight` shaped `[C, 1, ...]`.
    Channels(Vec<f64>),
}

/// The divisor of a weighted class mean (`norm`): how per-class `weights` enter the mean of a
/// region loss over its groups, or of a focal loss over its terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// `sum w L / K`, K the counted groups (focal: `sum w t / (P C)`, the non-ignored elements):
    /// MONAI's `weight`, PaddleSeg.
    Count,
    /// `sum w L / sum w` over the counted groups (focal: over the terms), 0 when that sum is 0:
    /// smp's `class_weights` (the default).
    Weights,
    /// `weights`, but per image under `pool=image` (then the mean over images), an image whose
    /// counted weights sum to 0 (every pixel ignored, or no present class with a weight) having
    /// loss 1: kornia's macro Dice and Tversky.
    Image,
}

/// Parameters of `bce`.
#[derive(Clone, Debug, PartialEq)]
pub struct BceParams {
    /// Weight of the positive term (default 1).
    pub pos_weight: PosWeight,
    /// Targets become `g (1 - ls) + ls / 2` (default 0).
    pub label_smoothing: f64,
}

/// Parameters of `ce`.
#[derive(Clone, Debug, PartialEq)]
pub struct CeParams {
    /// Per-class weights (PyTorch's `weight`): the mean becomes a weighted mean.
    pub weights: Option<Vec<f64>>,
    /// PyTorch's `label_smoothing` (default 0).
    pub label_smoothing: f64,
}

/// Activation of the focal loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FocalAct {
    /// One-vs-rest sigmoid on every channel (smp and MONAI).
    Sigmoid,
    /// `-a_y (1-p_y)^gamma log p_y` on the true class `y` of a softmax (multiclass only), with
    /// `a_y = 1 - alpha` for class 0 and `alpha` for the others when `alpha` is set (MONAI, kornia).
    Softmax,
    /// Softmax in multiclass mode, sigmoid otherwise (the `kornia` preset).
    Auto,
}

impl FocalAct {
    /// Whether the focal loss is the softmax form in `mode`.
    pub fn softmax(self, mode: Mode) -> bool {
        match self {
            FocalAct::Sigmoid => false,
            FocalAct::Softmax => true,
            FocalAct::Auto => mode == Mode::Multiclass,
        }
    }
}

/// Parameters of `focal`.
#[derive(Clone, Debug, PartialEq)]
pub struct FocalParams {
    /// Focusing exponent (default 2).
    pub gamma: f64,
    /// Class balance `alpha g + (1 - alpha)(1 - g)` (softmax: `1 - alpha` on class 0, `alpha` on
    /// the others); `None` = no balancing (default).
    pub alpha: Option<f64>,
    /// Activation (default sigmoid).
    pub act: FocalAct,
    /// Per-class weights: one per channel, scaling each term by its class's weight.
    pub weights: Option<Vec<f64>>,
    /// The mean's divisor (`count`: elements; `weights`: the terms' weights, the default).
    pub norm: Norm,
}

/// Which kind of region score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RegionKind {
    /// `(2 TP + s_nr) / (2 TP + FP + FN + s_dr)`; `squared` uses `sum p^2 + sum g^2`.
    Dice {
        /// Squared denominator (V-Net style).
        squared: bool,
    },
    /// `(TP + s_nr) / (TP + FP + FN + s_dr)`; `squared` uses `sum p^2 + sum g^2 - TP`.
    Jaccard {
        /// Squared denominator.
        squared: bool,
    },
    /// `(TP + s_nr) / (TP + alpha FP + beta FN + s_dr)`, loss `(mean (1 - T))^gamma`.
    Tversky {
        /// Weight of false positives.
        alpha: f64,
        /// Weight of false negatives.
        beta: f64,
        /// Exponent on the mean loss.
        gamma: f64,
    },
    /// Generalized Dice with class weights from the target.
    GDice {
        /// How class weights are derived from `sum g_c`.
        weight: GDiceWeight,
    },
}

/// Class weights of the generalized Dice loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GDiceWeight {
    /// `1 / (sum g_c)^2` (default, MONAI's `square`).
    Square,
    /// `1 / sum g_c`.
    Simple,
    /// 1.
    Uniform,
}

/// The pooling group of region losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Sums over all images, per class (default).
    Batch,
    /// Per image and class, then the mean over N x C.
    Image,
    /// One ratio over everything, classes pooled.
    All,
    /// Per image, the classes pooled into one ratio, then the mean over images.
    ImageAll,
}

impl Pool {
    /// Every pool with its word in a loss text (`pool=image`).
    pub const WORDS: [(&'static str, Pool); 4] =
        [("batch", Pool::Batch), ("image", Pool::Image), ("all", Pool::All), ("image_all", Pool::ImageAll)];

    /// The pool's word in a loss text.
    pub fn word(self) -> &'static str {
        Pool::WORDS.iter().find(|(_, p)| *p == self).map_or("batch", |(w, _)| w)
    }
}

/// What a class with `sum g = 0` in its group contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    /// Loss 0, still counted in the mean over classes (default).
    Zero,
    /// Left out of the mean.
    Skip,
    /// Whatever the smoothed formula gives.
    Formula,
}

/// Which classes a region or Lovász loss averages over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classes {
    /// Every class.
    All,
    /// Only classes present in the group's target (Lovász default).
    Present,
    /// These class indices.
    List(Vec<usize>),
}

/// Parameters shared by the region losses.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionParams {
    /// Numerator smoothing.
    pub smooth_nr: f64,
    /// Denominator smoothing.
    pub smooth_dr: f64,
    /// Lower clamp of the denominator (and of the score under `log`).
    pub eps: f64,
    /// Pooling group.
    pub pool: Pool,
    /// Treatment of classes absent from the group's target.
    pub empty: Empty,
    /// Loss `-log(max(score, eps))` instead of `1 - score`.
    pub log: bool,
    /// Classes averaged over.
    pub classes: Classes,
    /// Per-class weights (one per channel, or per listed class in the list's order): the factor
    /// of each group's loss (`pool=all|image_all`: of each class's terms inside the sums). See
    /// [`RegionParams::listed_weights`].
    pub weights: Option<Vec<f64>>,
    /// The divisor of the weighted mean over groups.
    pub norm: Norm,
    /// How `TP` is summed (dice, jaccard, tversky; gdice always uses the product).
    pub intersection: Intersection,
}

/// The intersection `TP` of a region loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intersection {
    /// `sum p g`.
    Product,
    /// `sum min(p, g)` (smp 0.6 writes `(sum p + sum g - sum |p - g|) / 2`); equal to the product,
    /// value and gradient, on hard labels. `d min(p, g) / d p` is 1 where `p < g`, 0 where
    /// `p > g`, and `g` where they are equal (the product's derivative there).
    Min,
}

impl Default for RegionParams {
    fn default() -> Self {
        RegionParams {
            smooth_nr: 0.0,
            smooth_dr: 0.0,
            eps: 1e-7,
            pool: Pool::Batch,
            empty: Empty::Zero,
            log: false,
            classes: Classes::All,
            weights: None,
            norm: Norm::Weights,
            intersection: Intersection::Min,
        }
    }
}

/// A region loss: a kind and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionLoss {
    /// Dice, Jaccard, Tversky or generalized Dice.
    pub kind: RegionKind,
    /// Shared region parameters.
    pub params: RegionParams,
}

/// Parameters of `sensspec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SensSpecParams {
    /// Weight of the sensitivity term (default 0.05).
    pub lambda: f64,
    /// Smoothing of both denominators (default 1e-5).
    pub smooth: f64,
}

/// Parameters of `lovasz`.
#[derive(Clone, Debug, PartialEq)]
pub struct LovaszParams {
    /// One group per image, then the mean (default false: one group over the batch).
    pub per_image: bool,
    /// `present` (default), `all`, or a list of class indices (`0;2`).
    pub classes: Classes,
}

/// The largest magnitude of a parameter or weight: the f32 range, in which the GPU computes.
pub const F32_MAX: f64 = f32::MAX as f64;

/// A region score whose clamped denominator `max(den, eps)` is at most this is 0/0: score 1 (an
/// empty prediction of an empty target is perfect), gradient 0. The floor sits above f32's
/// denormal range, so the f32 GPU and the f64 reference decide alike.
pub const SCORE_DEN_FLOOR: f64 = 1e-30;

/// The floor used by `log=true` when `eps` is 0 (MONAI's preset): `-log(max(score, 1e-30))`. The
/// formula's `-log(score)` is infinite only at a score of 0; the floor sits where
/// [`SCORE_DEN_FLOOR`] does, so every score the f32 GPU and the f64 reference both resolve takes
/// the formula, with its gradient.
pub const LOG_FLOOR: f64 = SCORE_DEN_FLOOR;

impl RegionLoss {
    /// The shape of its unreduced entries (one per group) on `n` images of `c` channels:
    /// `[C']` (`pool=batch`), `[N, C']` (`image`), `[N]` (`image_all`), `[1]` (`all`); gdice
    /// `[N]` (`image`) or `[1]`. C' counts the classes used.
    pub fn entry_shape(&self, n: usize, c: usize) -> Vec<usize> {
        let k = match &self.params.classes {
            Classes::List(l) => l.len(),
            _ => c,
        };
        match (self.kind, self.params.pool) {
            (RegionKind::GDice { .. }, Pool::Image) => vec![n],
            (RegionKind::GDice { .. }, _) => vec![1],
            (_, Pool::Batch) => vec![k],
            (_, Pool::Image) => vec![n, k],
            (_, Pool::ImageAll) => vec![n],
            (_, Pool::All) => vec![1],
        }
    }
}

impl RegionParams {
    /// The weight of each averaged class, in the order of `classes` over `c` channels: `weights`
    /// as given, or, with a `classes` list and one weight per channel (as smp takes
    /// `class_weights` beside `classes`), the listed channels' (a list as long as the channels
    /// reads per listed class).
    pub fn listed_weights(&self, c: usize) -> Option<std::borrow::Cow<'_, [f64]>> {
        let w = self.weights.as_deref()?;
        Some(match &self.classes {
            Classes::List(l) if w.len() == c && l.len() != c => {
                std::borrow::Cow::Owned(l.iter().map(|&k| w.get(k).copied().unwrap_or(1.0)).collect())
            }
            _ => std::borrow::Cow::Borrowed(w),
        })
    }

    /// The clamp applied to the score under `log=true`.
    pub fn log_floor(&self) -> f64 {
        if self.eps > 0.0 {
            self.eps
        } else {
            LOG_FLOOR
        }
    }
}

impl Loss {
    /// The loss's name as written in text.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Bce(_) => "bce",
            Loss::Ce(_) => "ce",
            Loss::Focal(_) => "focal",
            Loss::Region(r) => match r.kind {
                RegionKind::Dice { .. } => "dice",
                RegionKind::Jaccard { .. } => "jaccard",
                RegionKind::Tversky { .. } => "tversky",
                RegionKind::GDice { .. } => "gdice",
            },
            Loss::SensSpec(_) => "sensspec",
            Loss::Lovasz(_) => "lovasz",
        }
    }

    /// Checks that the loss fits the mode and the number of classes.
    pub fn check(&self, mode: Mode, classes: usize) -> Result<(), Error> {
        let name = self.name();
        let bad = |msg: String| Err(Error::LossMode { loss: name.to_string(), msg });
        match self {
            Loss::Bce(_) if mode == Mode::Multiclass => {
                bad("bce needs binary or multilabel targets; use ce (softmax) or focal (one-vs-rest sigmoid) in multiclass mode".into())
            }
            Loss::Ce(p) => {
                if mode != Mode::Multiclass {
                    return bad("ce needs multiclass targets (class indices); use bce in binary or multilabel mode".into());
                }
                if let Some(w) = &p.weights {
                    if w.len() != classes {
                        return bad(format!("weights has {} entries but the input has C={classes}", w.len()));
                    }
                }
                Ok(())
            }
            Loss::Focal(p) if p.act == FocalAct::Softmax && mode != Mode::Multiclass => {
                bad("act=softmax needs multiclass targets; use act=sigmoid".into())
            }
            Loss::Focal(p) => check_weights(name, "weights", p.weights.as_deref(), classes, "channel"),
            Loss::Bce(BceParams { pos_weight: PosWeight::Channels(w), .. }) => {
                check_weights(name, "pos_weight", Some(w), classes, "channel")
            }
            Loss::Region(r) => {
                check_classes(name, &r.params.classes, classes)?;
                match &r.params.classes {
                    // one per listed class, or one per channel
                    Classes::List(_) if r.params.weights.as_ref().is_some_and(|w| w.len() == classes) => Ok(()),
                    Classes::List(l) => check_weights(
                        name,
                        "weights",
                        r.params.weights.as_deref(),
                        l.len(),
                        &format!("listed class, or {classes}: one per channel"),
                    ),
                    _ => check_weights(name, "weights", r.params.weights.as_deref(), classes, "channel"),
                }
            }
            Loss::Lovasz(p) if mode != Mode::Multiclass && p.classes != Classes::Present => bad(
                "classes belongs to Lovász-Softmax (multiclass); the hinge (binary, multilabel) takes all elements as one group (per_image=true: one per image)"
                    .into(),
            ),
            Loss::Lovasz(p) => check_classes(name, &p.classes, classes),
            _ => Ok(()),
        }
    }
}

impl Loss {
    /// Checks that the loss can take inputs of `kind`: on probabilities, cross-entropy, softmax
    /// focal, the Lovász hinge (binary, multilabel) and a BCE `pos_weight` need logits.
    pub fn check_kind(&self, mode: Mode, kind: InputKind) -> Result<(), Error> {
        if kind == InputKind::Logits {
            return Ok(());
        }
        let bad = |msg: &str| Err(Error::LossMode { loss: self.name().to_string(), msg: msg.to_string() });
        match self {
            Loss::Ce(_) => bad("ce needs logits, not probabilities (--probs); on probabilities use focal or a region loss"),
            Loss::Focal(p) if p.act.softmax(mode) => {
                bad("act=softmax needs logits, not probabilities (--probs); use the one-vs-rest focal (act=sigmoid)")
            }
            Loss::Lovasz(_) if mode != Mode::Multiclass => {
                bad("the Lovász hinge needs logits, not probabilities (--probs); Lovász-Softmax (multiclass) takes probabilities")
            }
            Loss::Bce(p) if p.pos_weight != PosWeight::Value(1.0) => {
                bad("pos_weight needs logits (PyTorch's binary_cross_entropy on probabilities has none)")
            }
            _ => Ok(()),
        }
    }
}

fn check_weights(name: &str, key: &str, w: Option<&[f64]>, want: usize, what: &str) -> Result<(), Error> {
    match w {
        Some(w) if w.len() != want => Err(Error::LossMode {
            loss: name.to_string(),
            msg: format!("{key} has {} entries but there are {want} (one per {what})", w.len()),
        }),
        _ => Ok(()),
    }
}

fn check_classes(name: &str, classes: &Classes, c: usize) -> Result<(), Error> {
    if let Classes::List(list) = classes {
        if let Some(&bad) = list.iter().find(|&&k| k >= c) {
            return Err(Error::LossMode {
                loss: name.to_string(),
                msg: format!("classes lists {bad} but the input has C={c} (valid: 0..{c}, exclusive)"),
            });
        }
    }
    Ok(())
}

/// The range a number of a loss must lie in, besides being finite and within the f32 range.
#[derive(Clone, Copy)]
enum Range {
    Real,
    NonNeg,
    Positive,
    Unit,
}

impl Range {
    /// Why `x` does not fit, if it does not.
    fn fault(self, x: f64) -> Option<String> {
        if !x.is_finite() {
            return Some("expected a finite number".into());
        }
        if x.abs() > F32_MAX {
            return Some(format!("beyond the f32 range (|x| <= {F32_MAX:e}) the GPU computes in"));
        }
        match self {
            Range::NonNeg if x < 0.0 => Some("must be >= 0".into()),
            Range::Positive if x <= 0.0 => Some("must be > 0".into()),
            Range::Unit if !(0.0..=1.0).contains(&x) => Some("must be in [0, 1]".into()),
            _ => None,
        }
    }
}

/// `x` in an error message: as written in a loss text, with an exponent when that is shorter.
fn shown(x: f64) -> String {
    let e = format!("{x:e}");
    let plain = fmt_num(x);
    if x.is_finite() && e.len() < plain.len() {
        e
    } else {
        plain
    }
}

/// The entries of an optional list (none: no entry).
fn listed(w: &Option<Vec<f64>>) -> &[f64] {
    w.as_deref().unwrap_or(&[])
}

/// The first number among `(key, values, range)` that does not fit, as an error of `loss`.
fn check_numbers(loss: &str, numbers: &[(&str, &[f64], Range)]) -> Result<(), Error> {
    for &(key, values, range) in numbers {
        for (i, &x) in values.iter().enumerate() {
            if let Some(why) = range.fault(x) {
                let at = if values.len() > 1 { format!(" (entry {i})") } else { String::new() };
                return Err(Error::LossMode { loss: loss.to_string(), msg: format!("{key}={}{at}: {why}", shown(x)) });
            }
        }
    }
    Ok(())
}

impl Loss {
    /// Checks the loss's parameters on their own: every number finite, within the f32 range and in
    /// its key's range (`LOSSES.md`), and the combinations the text refuses. The parser refuses
    /// the same; this holds a loss built in code to it ([`LossExpr::check`] calls it).
    ///
    /// ```
    /// use segloss::{Loss, LossExpr};
    /// let mut focal: Loss = "focal".parse().unwrap();
    /// if let Loss::Focal(p) = &mut focal {
    ///     p.gamma = f64::NAN;
    /// }
    /// assert!(focal.check_params().unwrap_err().to_string().contains("gamma=NaN"));
    /// ```
    pub fn check_params(&self) -> Result<(), Error> {
        let name = self.name();
        let bad = |msg: &str| Err(Error::LossMode { loss: name.to_string(), msg: msg.to_string() });
        let empty_list = |c: &Classes| matches!(c, Classes::List(l) if l.is_empty());
        // (an empty list would be written `weights=`, which the text refuses)
        let weights = match self {
            Loss::Ce(p) => p.weights.as_ref(),
            Loss::Focal(p) => p.weights.as_ref(),
            Loss::Region(r) => r.params.weights.as_ref(),
            _ => None,
        };
        if weights.is_some_and(|w| w.is_empty()) {
            return bad("weights lists no weight");
        }
        match self {
            Loss::Bce(p) => {
                let pw = match &p.pos_weight {
                    PosWeight::Value(v) => std::slice::from_ref(v),
                    PosWeight::Channels(w) => w.as_slice(),
                    PosWeight::Auto => &[],
                };
                if matches!(&p.pos_weight, PosWeight::Channels(w) if w.is_empty()) {
                    return bad("pos_weight lists no channel");
                }
                check_numbers(
                    name,
                    &[("pos_weight", pw, Range::NonNeg), ("label_smoothing", &[p.label_smoothing], Range::Unit)],
                )
            }
            Loss::Ce(p) => check_numbers(
                name,
                &[
                    ("weights", listed(&p.weights), Range::NonNeg),
                    ("label_smoothing", &[p.label_smoothing], Range::Unit),
                ],
            ),
            Loss::Focal(p) => {
                if p.norm == Norm::Image {
                    return bad("norm=image: focal takes norm=count or norm=weights");
                }
                let alpha = p.alpha.as_slice();
                check_numbers(
                    name,
                    &[
                        ("gamma", &[p.gamma], Range::NonNeg),
                        ("alpha", alpha, Range::Unit),
                        ("weights", listed(&p.weights), Range::NonNeg),
                    ],
                )
            }
            Loss::Region(r) => {
                let p = &r.params;
                if empty_list(&p.classes) {
                    return bad("classes lists no class");
                }
                if p.classes == Classes::Present {
                    return bad("classes=present belongs to Lovász-Softmax; region losses take all or a list");
                }
                let gdice = matches!(r.kind, RegionKind::GDice { .. });
                if gdice && p.weights.is_some() {
                    return bad("gdice takes no class weights (its weights come from the target: weight=square, simple or uniform)");
                }
                if gdice && matches!(p.pool, Pool::All | Pool::ImageAll) {
                    return bad(
                        "pool=all and pool=image_all are not allowed (gdice already pools classes); use batch or image",
                    );
                }
                let (alpha, beta, gamma) = match r.kind {
                    RegionKind::Tversky { alpha, beta, gamma } => (vec![alpha], vec![beta], vec![gamma]),
                    _ => Default::default(),
                };
                // one smoothing is written `smooth` (as the text writes it back; the bits, so that
                // two NaNs are one smoothing too)
                let (nr, dr) = if p.smooth_nr.to_bits() == p.smooth_dr.to_bits() {
                    ("smooth", "smooth")
                } else {
                    ("smooth_nr", "smooth_dr")
                };
                check_numbers(
                    name,
                    &[
                        (nr, &[p.smooth_nr], Range::NonNeg),
                        (dr, &[p.smooth_dr], Range::NonNeg),
                        ("eps", &[p.eps], Range::NonNeg),
                        ("weights", listed(&p.weights), Range::NonNeg),
                        ("alpha", &alpha, Range::NonNeg),
                        ("beta", &beta, Range::NonNeg),
                        ("gamma", &gamma, Range::Positive),
                    ],
                )
            }
            Loss::SensSpec(p) => {
                check_numbers(name, &[("lambda", &[p.lambda], Range::Unit), ("smooth", &[p.smooth], Range::NonNeg)])
            }
            Loss::Lovasz(p) if empty_list(&p.classes) => bad("classes lists no class"),
            Loss::Lovasz(LovaszParams { classes: Classes::List(l), .. }) => {
                // (a set: a list of a million classes is checked in linear time)
                let mut seen = std::collections::HashSet::new();
                match l.iter().find(|k| !seen.insert(**k)) {
                    Some(k) => bad(&format!("classes lists {k} twice (Lovász-Softmax averages over distinct classes)")),
                    None => Ok(()),
                }
            }
            Loss::Lovasz(_) => Ok(()),
        }
    }

    /// Checks that the loss has an unreduced form (`reduction=none`).
    fn check_unreduced(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::LossMode { loss: self.name().to_string(), msg });
        match self {
            Loss::Lovasz(_) | Loss::SensSpec(_) => {
                bad(format!("reduction=none: {} has no unreduced form (use reduction=mean)", self.name()))
            }
            // gdice has one entry per group whatever `empty` says (it does not read it)
            Loss::Region(r) if r.params.empty == Empty::Skip && !matches!(r.kind, RegionKind::GDice { .. }) => {
                bad("reduction=none with empty=skip: a skipped group has no entry (use empty=zero or formula)".into())
            }
            _ => Ok(()),
        }
    }
}

impl Term {
    /// Checks the factor (finite, within the f32 range) and the loss's parameters
    /// ([`Loss::check_params`]).
    pub fn check_params(&self) -> Result<(), Error> {
        if let Some(why) = Range::Real.fault(self.weight) {
            return Err(Error::LossMode {
                loss: self.loss.name().to_string(),
                msg: format!("the factor {}: {why}", shown(self.weight)),
            });
        }
        self.loss.check_params()
    }
}

impl LossExpr {
    /// Checks the expression on its own, whatever the input: at least one term, every term's
    /// factor and parameters ([`Term::check_params`]), `reduction=none` on a single term with an
    /// unreduced form and no `deep`, and `deep`'s listed weights. The parser refuses the same.
    pub fn check_params(&self) -> Result<(), Error> {
        if self.terms.is_empty() {
            return Err(Error::LossMode { loss: "expression".into(), msg: "it has no term".into() });
        }
        self.terms.iter().try_for_each(Term::check_params)?;
        if self.unreduced() {
            if self.terms.len() != 1 || self.deep.is_some() {
                return Err(Error::LossMode {
                    loss: self.to_string(),
                    msg: "reduction=none needs a single term and no deep(...)".into(),
                });
            }
            self.terms[0].loss.check_unreduced()?;
        }
        if let Some(DeepWeights::List(w)) = &self.deep {
            check_numbers("deep", &[("weights", w, Range::NonNeg)])?;
        }
        Ok(())
    }

    /// Checks every term against the mode and the number of classes (and, first, the expression
    /// on its own: [`LossExpr::check_params`]).
    pub fn check(&self, mode: Mode, classes: usize) -> Result<(), Error> {
        self.check_params()?;
        self.terms.iter().try_for_each(|t| t.loss.check(mode, classes))
    }

    /// [`LossExpr::check`], and that every term takes inputs of `kind` ([`Loss::check_kind`]).
    ///
    /// ```
    /// use segloss::{InputKind, LossExpr, Mode};
    /// let e: LossExpr = "ce+dice".parse().unwrap();
    /// assert!(e.check_input(Mode::Multiclass, 3, InputKind::Logits).is_ok());
    /// assert!(e.check_input(Mode::Multiclass, 3, InputKind::Probs).is_err());
    /// ```
    pub fn check_input(&self, mode: Mode, classes: usize, kind: InputKind) -> Result<(), Error> {
        self.check(mode, classes)?;
        self.terms.iter().try_for_each(|t| t.loss.check_kind(mode, kind))
    }

    /// The plain expression of level `l` of a `deep(...)` expression: its terms with their factors
    /// times the level's weight among `levels` (the expression itself without `deep`).
    pub fn level(&self, l: usize, levels: usize) -> Result<LossExpr, Error> {
        let w = match &self.deep {
            Some(d) => d.of(levels)?.get(l).copied().ok_or_else(|| {
                Error::Input(format!("level {l} of {levels} levels: levels are numbered 0..{levels}"))
            })?,
            None => 1.0,
        };
        let terms = self.terms.iter().map(|t| Term { weight: t.weight * w, loss: t.loss.clone() }).collect();
        Ok(LossExpr { terms, reduction: self.reduction, deep: None })
    }

    /// Checks that the expression fits an input of `levels` levels: several levels need
    /// `deep(...)`, whose explicit weights need one per level.
    pub fn check_levels(&self, levels: usize) -> Result<(), Error> {
        match &self.deep {
            None if levels > 1 => Err(Error::LossMode {
                loss: self.to_string(),
                msg: format!("the input has {levels} levels (deep supervision): wrap the loss in deep(...)"),
            }),
            Some(d) => {
                // each level's factors (a term's times the level's weight) within the f32 range
                for (l, w) in d.of(levels)?.into_iter().enumerate() {
                    for t in &self.terms {
                        if let Some(why) = Range::Real.fault(t.weight * w) {
                            return Err(Error::LossMode {
                                loss: self.to_string(),
                                msg: format!(
                                    "level {l}: the factor {} of {} times the level's weight {}: {why}",
                                    shown(t.weight * w),
                                    t.loss.name(),
                                    shown(w)
                                ),
                            });
                        }
                    }
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether the evaluation also returns the unreduced entries (`reduction=none`).
    pub fn unreduced(&self) -> bool {
        self.reduction == Reduction::None
    }

    /// Whether any term is a Lovász loss.
    pub fn has_lovasz(&self) -> bool {
        self.terms.iter().any(|t| matches!(t.loss, Loss::Lovasz(_)))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

const NAMES: &str = "bce, ce, focal, dice, jaccard (iou), tversky, gdice, sensspec, lovasz";
const PRESETS: &str = "smp, monai, keras, paddle, kornia";

fn perr(text: &str, msg: impl Into<String>) -> Error {
    Error::Parse { text: text.to_string(), msg: msg.into() }
}

fn num(text: &str, key: &str, v: &str) -> Result<f64, Error> {
    // the ranges are checked on the parsed loss, by the rules that hold expressions built in code
    v.parse().map_err(|_| perr(text, format!("{key}={v}: expected a number")))
}

fn boolean(text: &str, key: &str, v: &str) -> Result<bool, Error> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(perr(text, format!("{key}={v}: expected true or false"))),
    }
}

fn choice<T: Copy>(text: &str, key: &str, v: &str, opts: &[(&str, T)]) -> Result<T, Error> {
    opts.iter().find(|(n, _)| *n == v).map(|(_, t)| *t).ok_or_else(|| {
        let allowed: Vec<&str> = opts.iter().map(|(n, _)| *n).collect();
        perr(text, format!("{key}={v}: allowed values are {}", allowed.join(", ")))
    })
}

fn class_list(text: &str, key: &str, v: &str, allow_present: bool) -> Result<Classes, Error> {
    match v {
        "all" => return Ok(Classes::All),
        "present" if allow_present => return Ok(Classes::Present),
        _ => {}
    }
    let mut out = Vec::new();
    // (one trailing `;` allowed, as in every list)
    for part in v.strip_suffix(';').unwrap_or(v).split(';') {
        let k: usize = part.trim().parse().map_err(|_| {
            let what = if allow_present { "all, present" } else { "all" };
            perr(text, format!("{key}={v}: expected {what} or a list of class indices like 0;2;5"))
        })?;
        out.push(k);
    }
    Ok(Classes::List(out))
}

/// An unknown key of loss `name` (`reduction`, which every loss takes, listed after `allowed`) or
/// of `deep`.
fn unknown_key(text: &str, name: &str, key: &str, allowed: &[&str]) -> Error {
    let reduction = if name == "deep" { "" } else { ", reduction" };
    perr(text, format!("unknown key '{key}' for {name}; allowed keys: {}{reduction}", allowed.join(", ")))
}

const REGION_KEYS: &[&str] = &[
    "smooth",
    "smooth_nr",
    "smooth_dr",
    "eps",
    "squared",
    "log",
    "pool",
    "empty",
    "classes",
    "weights",
    "norm",
    "intersection",
];

/// `w0;w1;...`: a list of weights.
/// A `;`-separated list; one trailing `;` is allowed, which makes a one-entry list a list
/// (`pos_weight=2;`, one channel's weight, against `pos_weight=2` for every channel).
fn weight_list(text: &str, key: &str, v: &str) -> Result<Vec<f64>, Error> {
    let v = v.strip_suffix(';').unwrap_or(v);
    v.split(';').map(|x| num(text, key, x.trim())).collect()
}

fn norm_of(text: &str, key: &str, v: &str) -> Result<Norm, Error> {
    choice(text, key, v, &[("count", Norm::Count), ("weights", Norm::Weights), ("image", Norm::Image)])
}

/// Applies one region key; returns false when the key is not a shared region key.
fn region_key(text: &str, p: &mut RegionParams, key: &str, v: &str) -> Result<bool, Error> {
    match key {
        "smooth" => {
            let s = num(text, key, v)?;
            p.smooth_nr = s;
            p.smooth_dr = s;
        }
        "smooth_nr" => p.smooth_nr = num(text, key, v)?,
        "smooth_dr" => p.smooth_dr = num(text, key, v)?,
        "eps" => p.eps = num(text, key, v)?,
        "log" => p.log = boolean(text, key, v)?,
        "pool" => p.pool = choice(text, key, v, &Pool::WORDS)?,
        "weights" => p.weights = Some(weight_list(text, key, v)?),
        "norm" => p.norm = norm_of(text, key, v)?,
        "intersection" => {
            p.intersection = choice(text, key, v, &[("product", Intersection::Product), ("min", Intersection::Min)])?
        }
        "empty" => {
            p.empty =
                choice(text, key, v, &[("zero", Empty::Zero), ("skip", Empty::Skip), ("formula", Empty::Formula)])?
        }
        "classes" => p.classes = class_list(text, key, v, false)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn region_preset(preset: &str, name: &str) -> RegionParams {
    // smp (the default) sums TP as min(p, g); every other preset as p g
    let d = RegionParams {
        intersection: if preset == "smp" { Intersection::Min } else { Intersection::Product },
        ..RegionParams::default()
    };
    match preset {
        "monai" => RegionParams {
            smooth_nr: 1e-5,
            smooth_dr: 1e-5,
            eps: 0.0,
            pool: Pool::Image,
            empty: Empty::Formula,
            norm: Norm::Count,
            ..d
        },
        "keras" => RegionParams { smooth_nr: 1.0, smooth_dr: 1.0, pool: Pool::All, empty: Empty::Formula, ..d },
        "paddle" => RegionParams {
            smooth_nr: 1.0,
            smooth_dr: 1.0,
            pool: Pool::Image,
            empty: Empty::Formula,
            norm: Norm::Count,
            ..d
        },
        "kornia" => {
            let tversky = name == "tversky";
            RegionParams {
                smooth_nr: 0.0,
                smooth_dr: 1e-8,
                eps: 0.0,
                pool: if tversky { Pool::Image } else { Pool::ImageAll },
                empty: if tversky { Empty::Skip } else { Empty::Formula },
                norm: Norm::Image,
                ..d
            }
        }
        _ => d,
    }
}

/// A term and its `reduction` key.
fn parse_term(text: &str) -> Result<(Term, Reduction), Error> {
    let t = text.trim();
    if t.is_empty() {
        return Err(perr(text, "empty term"));
    }
    // weight
    let (weight, rest) = match t.split_once('*') {
        Some((w, rest)) => {
            let w = w.trim();
            let x: f64 = w.parse().map_err(|_| perr(text, format!("'{w}' is not a number (weight before '*')")))?;
            (x, rest.trim())
        }
        None => (1.0, t),
    };
    // deep(...) here is inside a sum or under a factor (a whole-text deep is parsed before)
    if deep_rest(rest).is_some() {
        return Err(perr(text, DEEP_INSIDE));
    }
    let (head, args) = match rest.split_once(':') {
        Some((h, a)) => (h.trim(), Some(a)),
        None => (rest, None),
    };
    let (name, preset) = match head.split_once('@') {
        Some((n, p)) => (n.trim(), Some(p.trim())),
        None => (head, None),
    };
    if let Some(p) = preset {
        if !["smp", "monai", "keras", "paddle", "kornia"].contains(&p) {
            return Err(perr(text, format!("unknown preset '{p}'; presets: {PRESETS}")));
        }
    }
    let preset_name = preset.unwrap_or("smp");
    let mut kv: Vec<(&str, &str)> = Vec::new();
    let mut reduction = Reduction::Mean;
    if let Some(a) = args {
        let mut seen: Vec<&str> = Vec::new();
        for part in a.split(',') {
            let (k, v) =
                part.split_once('=').ok_or_else(|| perr(text, format!("'{}' is not key=value", part.trim())))?;
            // (a preset's keys may be overridden; a key given twice is a mistake either way)
            if seen.contains(&k.trim()) {
                return Err(perr(text, format!("key '{}' is given twice", k.trim())));
            }
            seen.push(k.trim());
            if k.trim() == "reduction" {
                reduction =
                    choice(text, "reduction", v.trim(), &[("mean", Reduction::Mean), ("none", Reduction::None)])?;
                continue;
            }
            kv.push((k.trim(), v.trim()));
        }
    }
    let no_preset = |allowed: &[&str]| -> Result<(), Error> {
        if allowed.contains(&preset_name) {
            Ok(())
        } else {
            Err(perr(
                text,
                format!(
                    "preset '{preset_name}' defines nothing for {name}; presets for {name}: {}",
                    allowed.join(", ")
                ),
            ))
        }
    };
    let loss = match name {
        "bce" => {
            no_preset(&["smp", "monai", "kornia"])?;
            let mut p = BceParams { pos_weight: PosWeight::Value(1.0), label_smoothing: 0.0 };
            for (k, v) in kv {
                match k {
                    "pos_weight" => {
                        p.pos_weight = if v == "auto" {
                            PosWeight::Auto
                        } else if v.contains(';') {
                            PosWeight::Channels(weight_list(text, k, v)?)
                        } else {
                            PosWeight::Value(num(text, k, v)?)
                        }
                    }
                    "label_smoothing" => p.label_smoothing = num(text, k, v)?,
                    _ => return Err(unknown_key(text, name, k, &["pos_weight", "label_smoothing"])),
                }
            }
            Loss::Bce(p)
        }
        "ce" => {
            no_preset(&["smp", "monai", "kornia"])?;
            let mut p = CeParams { weights: None, label_smoothing: 0.0 };
            for (k, v) in kv {
                match k {
                    "weights" => {
                        p.weights = Some(weight_list(text, k, v)?);
                    }
                    "label_smoothing" => p.label_smoothing = num(text, k, v)?,
                    _ => return Err(unknown_key(text, name, k, &["weights", "label_smoothing"])),
                }
            }
            Loss::Ce(p)
        }
        "focal" => {
            no_preset(&["smp", "monai", "paddle", "kornia"])?;
            let mut p = FocalParams {
                gamma: 2.0,
                alpha: None,
                act: if preset_name == "kornia" { FocalAct::Auto } else { FocalAct::Sigmoid },
                weights: None,
                norm: if preset_name == "smp" { Norm::Weights } else { Norm::Count },
            };
            for (k, v) in kv {
                match k {
                    "gamma" => p.gamma = num(text, k, v)?,
                    "alpha" => p.alpha = if v == "none" { None } else { Some(num(text, k, v)?) },
                    "act" => {
                        p.act = choice(
                            text,
                            k,
                            v,
                            &[("sigmoid", FocalAct::Sigmoid), ("softmax", FocalAct::Softmax), ("auto", FocalAct::Auto)],
                        )?
                    }
                    "weights" => p.weights = Some(weight_list(text, k, v)?),
                    "norm" => p.norm = norm_of(text, k, v)?,
                    _ => return Err(unknown_key(text, name, k, &["gamma", "alpha", "act", "weights", "norm"])),
                }
            }
            Loss::Focal(p)
        }
        "dice" | "jaccard" | "iou" | "tversky" | "gdice" => {
            // (kornia defines dice and tversky)
            no_preset(if name == "dice" || name == "tversky" {
                &["smp", "monai", "keras", "paddle", "kornia"]
            } else {
                &["smp", "monai", "keras", "paddle"]
            })?;
            let mut params = region_preset(preset_name, name);
            let mut kind = match name {
                "dice" => RegionKind::Dice { squared: false },
                "jaccard" | "iou" => RegionKind::Jaccard { squared: false },
                "tversky" => RegionKind::Tversky { alpha: 0.5, beta: 0.5, gamma: 1.0 },
                _ => RegionKind::GDice { weight: GDiceWeight::Square },
            };
            let mut allowed: Vec<&str> = REGION_KEYS.to_vec();
            match kind {
                RegionKind::Tversky { .. } => {
                    allowed.retain(|k| *k != "squared");
                    allowed.extend(["alpha", "beta", "gamma"]);
                }
                RegionKind::GDice { .. } => {
                    // its class weights come from the target; its TP is the product
                    allowed.retain(|k| !["squared", "empty", "weights", "norm", "intersection"].contains(k));
                    allowed.push("weight");
                }
                _ => {}
            }
            for (k, v) in kv {
                if !allowed.contains(&k) {
                    return Err(unknown_key(text, name, k, &allowed));
                }
                if k == "squared" {
                    let sq = boolean(text, k, v)?;
                    kind = match kind {
                        RegionKind::Dice { .. } => RegionKind::Dice { squared: sq },
                        _ => RegionKind::Jaccard { squared: sq },
                    };
                    continue;
                }
                if region_key(text, &mut params, k, v)? {
                    continue;
                }
                match (&mut kind, k) {
                    (RegionKind::Tversky { alpha, .. }, "alpha") => *alpha = num(text, k, v)?,
                    (RegionKind::Tversky { beta, .. }, "beta") => *beta = num(text, k, v)?,
                    (RegionKind::Tversky { gamma, .. }, "gamma") => *gamma = num(text, k, v)?,
                    (RegionKind::GDice { weight }, "weight") => {
                        *weight = choice(
                            text,
                            k,
                            v,
                            &[
                                ("square", GDiceWeight::Square),
                                ("simple", GDiceWeight::Simple),
                                ("uniform", GDiceWeight::Uniform),
                            ],
                        )?
                    }
                    _ => return Err(unknown_key(text, name, k, &allowed)),
                }
            }
            if matches!(kind, RegionKind::GDice { .. }) {
                // gdice takes no empty or norm (a preset's are not its): the defaults, so that
                // its written text parses back to it
                let d = RegionParams::default();
                (params.empty, params.norm) = (d.empty, d.norm);
                params.intersection = Intersection::Product;
                if preset_name == "keras" && params.pool == Pool::All {
                    return Err(perr(
                        text,
                        "gdice@keras: the keras preset's pool=all pools the classes, which gdice does itself; \
                         write pool=batch or pool=image after it",
                    ));
                }
            }
            Loss::Region(RegionLoss { kind, params })
        }
        "sensspec" => {
            no_preset(&["smp"])?;
            let mut p = SensSpecParams { lambda: 0.05, smooth: 1e-5 };
            for (k, v) in kv {
                match k {
                    "lambda" => p.lambda = num(text, k, v)?,
                    "smooth" => p.smooth = num(text, k, v)?,
                    _ => return Err(unknown_key(text, name, k, &["lambda", "smooth"])),
                }
            }
            Loss::SensSpec(p)
        }
        "lovasz" => {
            no_preset(&["smp"])?;
            let mut p = LovaszParams { per_image: false, classes: Classes::Present };
            for (k, v) in kv {
                match k {
                    "per_image" => p.per_image = boolean(text, k, v)?,
                    "classes" => p.classes = class_list(text, k, v, true)?,
                    _ => return Err(unknown_key(text, name, k, &["per_image", "classes"])),
                }
            }
            Loss::Lovasz(p)
        }
        "" => return Err(perr(text, format!("missing loss name; names: {NAMES}"))),
        _ => return Err(perr(text, format!("unknown loss '{name}'; names: {NAMES}"))),
    };
    let term = Term { weight, loss };
    term.check_params().map_err(|e| perr(text, e.to_string()))?;
    if reduction == Reduction::None {
        term.loss.check_unreduced().map_err(|e| perr(text, e.to_string()))?;
    }
    Ok((term, reduction))
}

/// The error of a `deep(...)` inside a sum or under a factor.
const DEEP_INSIDE: &str = "deep(...) wraps the whole expression, without a factor: deep(ce+dice), not ce+deep(dice)";

/// What follows `deep` in `text`, where it starts as `deep(`, `deep@` or `deep:` (spaces allowed
/// after `deep`).
fn deep_rest(text: &str) -> Option<&str> {
    text.trim()
        .strip_prefix("deep")
        .map(str::trim_start)
        .filter(|r| r.starts_with('(') || r.starts_with('@') || r.starts_with(':'))
}

/// `deep[@mode][:weights=...](EXPR)`, when `text` is one.
fn parse_deep(text: &str) -> Result<Option<LossExpr>, Error> {
    let Some(rest) = deep_rest(text) else { return Ok(None) };
    let open = rest.find('(').ok_or_else(|| perr(text, "deep needs its expression in parentheses: deep(EXPR)"))?;
    let inner = rest[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| perr(text, "deep(...) wraps the whole expression: nothing may follow its ')'"))?;
    let head = &rest[..open];
    let (mode, args) = match head.split_once(':') {
        Some((m, a)) => (m, Some(a)),
        None => (head, None),
    };
    // (spaces around the mode's parts are ignored, as around a loss's)
    let mode = mode.trim();
    let mut weights = match mode.strip_prefix('@').map(str::trim) {
        None if mode.is_empty() => DeepWeights::Exp,
        Some("exp") => DeepWeights::Exp,
        Some("two") => DeepWeights::Two,
        Some("same") => DeepWeights::Same,
        _ => {
            return Err(perr(
                text,
                format!("unknown deep mode '{}'; modes: exp, two, same", mode.trim_start_matches('@').trim()),
            ))
        }
    };
    if let Some(a) = args {
        for part in a.split(',') {
            match part.split_once('=') {
                Some((k, _)) if k.trim() == "weights" && matches!(weights, DeepWeights::List(_)) => {
                    return Err(perr(text, "key 'weights' is given twice"))
                }
                Some((k, v)) if k.trim() == "weights" => {
                    weights = DeepWeights::List(weight_list(text, "weights", v.trim())?)
                }
                Some((k, _)) => return Err(unknown_key(text, "deep", k.trim(), &["weights"])),
                None => return Err(perr(text, format!("'{}' is not key=value", part.trim()))),
            }
        }
    }
    if inner.trim().is_empty() {
        return Err(perr(text, "deep(...) needs an expression inside its parentheses"));
    }
    // (before parsing the inside: a parse of each level in turn would recurse once per level, and
    // a text of thousands of them would overflow the stack)
    if deep_rest(inner).is_some() {
        return Err(perr(text, "deep(...) cannot be nested"));
    }
    let mut e: LossExpr = inner.parse()?;
    if e.unreduced() {
        return Err(perr(text, "reduction=none cannot be used inside deep(...)"));
    }
    e.deep = Some(weights);
    e.check_params().map_err(|err| perr(text, err.to_string()))?;
    Ok(Some(e))
}

/// The terms of an expression: `text` split at each `+` that joins two terms, not at the sign of
/// a number (`1e+0`, `smooth=+1`, `weights=1;+2`).
fn split_terms(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    // (after `=` or `;` a sign only before a number that is not a term's weight:
    // `pos_weight=2;+dice` and `weights=3;+0.5*ce` are two terms, `weights=1;+2` one)
    let number_after = |i: usize| {
        let starts = b.get(i + 1).is_some_and(|c| c.is_ascii_digit() || *c == b'.');
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E')).count();
        starts && b.get(i + 1 + digits) != Some(&b'*')
    };
    let sign = |i: usize| match i.checked_sub(1).map(|j| b[j]) {
        Some(b'=' | b';') => number_after(i),
        Some(b'e' | b'E') => i >= 2 && (b[i - 2].is_ascii_digit() || b[i - 2] == b'.'),
        _ => false,
    };
    let mut terms = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'+' && !sign(i) {
            terms.push(&text[start..i]);
            start = i + 1;
        }
    }
    terms.push(&text[start..]);
    terms
}

impl FromStr for LossExpr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.trim().is_empty() {
            return Err(perr(s, format!("empty loss text; names: {NAMES}")));
        }
        if let Some(e) = parse_deep(s)? {
            return Ok(e);
        }
        let terms = split_terms(s);
        if terms.iter().any(|t| t.trim().is_empty()) {
            return Err(perr(s, "empty term (a '+' with no loss on one side)"));
        }
        let parsed = terms.into_iter().map(parse_term).collect::<Result<Vec<_>, _>>()?;
        let reduction = if parsed.iter().any(|(_, r)| *r == Reduction::None) {
            if parsed.len() > 1 {
                return Err(perr(s, "reduction=none needs a single-term text (its entries are one loss's)"));
            }
            Reduction::None
        } else {
            Reduction::Mean
        };
        Ok(LossExpr { terms: parsed.into_iter().map(|(t, _)| t).collect(), reduction, deep: None })
    }
}

impl FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (t, reduction) = parse_term(s)?;
        if t.weight != 1.0 || split_terms(s).len() > 1 {
            return Err(perr(s, "expected a single loss without weight"));
        }
        if reduction == Reduction::None {
            return Err(perr(s, "reduction=none belongs to an expression (parse a LossExpr)"));
        }
        Ok(t.loss)
    }
}

impl From<Loss> for LossExpr {
    fn from(loss: Loss) -> Self {
        LossExpr { terms: vec![Term { weight: 1.0, loss }], reduction: Reduction::Mean, deep: None }
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical text (only what differs from the defaults is written)

fn fmt_num(x: f64) -> String {
    // f64's Display writes the shortest digits that round-trip, never an exponent
    format!("{x}")
}

fn list_text(w: &[f64]) -> String {
    w.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(";")
}

fn norm_text(n: Norm) -> &'static str {
    match n {
        Norm::Count => "count",
        Norm::Weights => "weights",
        Norm::Image => "image",
    }
}

fn classes_text(c: &Classes) -> String {
    match c {
        Classes::All => "all".into(),
        Classes::Present => "present".into(),
        Classes::List(l) => l.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(";"),
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kv: Vec<String> = Vec::new();
        match self {
            Loss::Bce(p) => {
                match &p.pos_weight {
                    PosWeight::Auto => kv.push("pos_weight=auto".into()),
                    PosWeight::Value(v) if *v != 1.0 => kv.push(format!("pos_weight={}", fmt_num(*v))),
                    // (a one-entry list keeps its `;`, or it would read back as one weight for
                    // every channel)
                    PosWeight::Channels(w) if w.len() == 1 => kv.push(format!("pos_weight={};", list_text(w))),
                    PosWeight::Channels(w) => kv.push(format!("pos_weight={}", list_text(w))),
                    _ => {}
                }
                if p.label_smoothing != 0.0 {
                    kv.push(format!("label_smoothing={}", fmt_num(p.label_smoothing)));
                }
            }
            Loss::Ce(p) => {
                if let Some(w) = &p.weights {
                    kv.push(format!("weights={}", list_text(w)));
                }
                if p.label_smoothing != 0.0 {
                    kv.push(format!("label_smoothing={}", fmt_num(p.label_smoothing)));
                }
            }
            Loss::Focal(p) => {
                if p.gamma != 2.0 {
                    kv.push(format!("gamma={}", fmt_num(p.gamma)));
                }
                if let Some(a) = p.alpha {
                    kv.push(format!("alpha={}", fmt_num(a)));
                }
                match p.act {
                    FocalAct::Softmax => kv.push("act=softmax".into()),
                    FocalAct::Auto => kv.push("act=auto".into()),
                    FocalAct::Sigmoid => {}
                }
                if let Some(w) = &p.weights {
                    kv.push(format!("weights={}", list_text(w)));
                }
                if p.norm != Norm::Weights {
                    kv.push(format!("norm={}", norm_text(p.norm)));
                }
            }
            Loss::Region(r) => {
                let d = RegionParams::default();
                let p = &r.params;
                match r.kind {
                    RegionKind::Tversky { alpha, beta, gamma } => {
                        if alpha != 0.5 {
                            kv.push(format!("alpha={}", fmt_num(alpha)));
                        }
                        if beta != 0.5 {
                            kv.push(format!("beta={}", fmt_num(beta)));
                        }
                        if gamma != 1.0 {
                            kv.push(format!("gamma={}", fmt_num(gamma)));
                        }
                    }
                    RegionKind::GDice { weight } => match weight {
                        GDiceWeight::Simple => kv.push("weight=simple".into()),
                        GDiceWeight::Uniform => kv.push("weight=uniform".into()),
                        GDiceWeight::Square => {}
                    },
                    RegionKind::Dice { squared: true } | RegionKind::Jaccard { squared: true } => {
                        kv.push("squared=true".into())
                    }
                    _ => {}
                }
                if p.pool != d.pool {
                    kv.push(format!("pool={}", p.pool.word()));
                }
                if p.smooth_nr == p.smooth_dr && p.smooth_nr != 0.0 {
                    kv.push(format!("smooth={}", fmt_num(p.smooth_nr)));
                } else {
                    if p.smooth_nr != 0.0 || p.smooth_dr != 0.0 {
                        kv.push(format!("smooth_nr={}", fmt_num(p.smooth_nr)));
                        kv.push(format!("smooth_dr={}", fmt_num(p.smooth_dr)));
                    }
                }
                if p.eps != d.eps {
                    kv.push(format!("eps={}", fmt_num(p.eps)));
                }
                // gdice takes no empty or norm key (its text would not parse back)
                let gdice = matches!(r.kind, RegionKind::GDice { .. });
                if p.empty != d.empty && !gdice {
                    kv.push(format!(
                        "empty={}",
                        match p.empty {
                            Empty::Zero => "zero",
                            Empty::Skip => "skip",
                            Empty::Formula => "formula",
                        }
                    ));
                }
                if p.log {
                    kv.push("log=true".into());
                }
                if p.classes != d.classes {
                    kv.push(format!("classes={}", classes_text(&p.classes)));
                }
                if let Some(w) = &p.weights {
                    kv.push(format!("weights={}", list_text(w)));
                }
                if p.norm != d.norm && !gdice {
                    kv.push(format!("norm={}", norm_text(p.norm)));
                }
                if p.intersection == Intersection::Product && !gdice {
                    kv.push("intersection=product".into());
                }
            }
            Loss::SensSpec(p) => {
                if p.lambda != 0.05 {
                    kv.push(format!("lambda={}", fmt_num(p.lambda)));
                }
                if p.smooth != 1e-5 {
                    kv.push(format!("smooth={}", fmt_num(p.smooth)));
                }
            }
            Loss::Lovasz(p) => {
                if p.per_image {
                    kv.push("per_image=true".into());
                }
                if p.classes != Classes::Present {
                    kv.push(format!("classes={}", classes_text(&p.classes)));
                }
            }
        }
        write!(f, "{}", self.name())?;
        if !kv.is_empty() {
            write!(f, ":{}", kv.join(","))?;
        }
        Ok(())
    }
}

impl fmt::Display for LossExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.deep {
            None => {}
            Some(DeepWeights::Exp) => write!(f, "deep(")?,
            Some(DeepWeights::Two) => write!(f, "deep@two(")?,
            Some(DeepWeights::Same) => write!(f, "deep@same(")?,
            Some(DeepWeights::List(w)) => write!(f, "deep:weights={}(", list_text(w))?,
        }
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                write!(f, "+")?;
            }
            if t.weight != 1.0 {
                write!(f, "{}*", fmt_num(t.weight))?;
            }
            let loss = t.loss.to_string();
            write!(f, "{loss}")?;
            if self.reduction == Reduction::None {
                write!(f, "{}reduction=none", if loss.contains(':') { "," } else { ":" })?;
            }
        }
        if self.deep.is_some() {
            write!(f, ")")?;
        }
        Ok(())
    }
}
