//! Segmentation metrics: confusion counts, overlap scores with the reductions of
//! segmentation_models_pytorch, MONAI and torchmetrics, and surface distances (Hausdorff,
//! average symmetric surface distance, normalized surface Dice).
//!
//! A metric is written as text, as losses are: `name[@preset][:key=value,...]`, e.g. `iou`,
//! `dice@monai`, `iou:reduction=macro,background=false`, `hd@monai:percentile=95,spacing=2.5;0.8;0.8`,
//! `nsd:tolerance=1;2`. The definitions, keys and presets are in the repository's
//! `docs/metrics.md`.
//!
//! Counts (TP, FP, FN, TN per image and class, and the confusion matrix) are integers and
//! merge exactly across batches ([`Counts::append`]); every count-based metric is a function of
//! them. [`reference`](mod@reference) computes them, and the surface metrics, on the CPU.
//!
//! ```
//! use segloss::metrics::{reference, Metric};
//! use segloss::{Input, Mode};
//! let logits = [2.0f32, -1.0, 0.5, -3.0];
//! let target = [1.0f32, 0.0, 0.0, 0.0];
//! let input = Input::dense(&logits, &target, &[1, 1, 2, 2], Mode::Binary).unwrap();
//! let iou: Metric = "iou".parse().unwrap();
//! let v = reference::evaluate(&input, &iou).unwrap();
//! assert_eq!(v.value, Some(0.5)); // TP 1, FP 1, FN 0
//! ```

mod device;
pub mod reference;
mod running;
mod scores;
mod surface;
mod surface_gpu;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::Mode;

pub use device::LossesAndMetrics;
pub use running::Running;
pub use scores::Counts;

/// What a metric measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricName {
    /// `TP / (TP + FP + FN)` (`iou`, `jaccard`).
    Iou,
    /// `2 TP / (2 TP + FP + FN)` (`dice`, `f1`).
    Dice,
    /// `TP / (TP + FP)` (`precision`, `ppv`).
    Precision,
    /// `TP / (TP + FN)` (`recall`, `sensitivity`, `tpr`).
    Recall,
    /// `TN / (TN + FP)` (`specificity`, `tnr`).
    Specificity,
    /// `(TP + TN) / (TP + FP + FN + TN)`.
    Accuracy,
    /// Generalized Dice score per image, class weights from the target's counts.
    GDice,
    /// `[N][K][TP, FP, FN, TN]`.
    Counts,
    /// The confusion matrix (per batch, or per image).
    Confusion,
    /// Hausdorff distance (maximum, or a percentile) between the boundaries.
    Hd,
    /// Average surface distance.
    Assd,
    /// Normalized surface Dice within a tolerance.
    Nsd,
}

impl MetricName {
    /// Whether the metric takes reduction `r`.
    fn allows(self, r: Reduction) -> bool {
        match self {
            n if n.is_score() => true,
            MetricName::GDice => matches!(r, Reduction::Mean | Reduction::Sum | Reduction::MeanChannel),
            MetricName::Counts => true,
            MetricName::Confusion => matches!(r, Reduction::Micro | Reduction::None),
            _ => !matches!(r, Reduction::Micro | Reduction::Macro | Reduction::Weighted | Reduction::MicroImagewise),
        }
    }

    /// The presets the metric takes.
    fn presets(self) -> &'static [Preset] {
        match self {
            MetricName::Iou | MetricName::Dice => &[Preset::Smp, Preset::Monai, Preset::Torchmetrics],
            n if n.is_score() => &[Preset::Smp, Preset::Monai],
            MetricName::Counts | MetricName::Confusion => &[Preset::Smp],
            MetricName::GDice => &[Preset::Monai, Preset::Torchmetrics],
            _ => &[Preset::Monai],
        }
    }

    fn parse(s: &str) -> Option<MetricName> {
        Some(match s {
            "iou" | "jaccard" => MetricName::Iou,
            "dice" | "f1" => MetricName::Dice,
            "precision" | "ppv" => MetricName::Precision,
            "recall" | "sensitivity" | "tpr" => MetricName::Recall,
            "specificity" | "tnr" => MetricName::Specificity,
            "accuracy" => MetricName::Accuracy,
            "gdice" => MetricName::GDice,
            "counts" => MetricName::Counts,
            "confusion" => MetricName::Confusion,
            "hd" => MetricName::Hd,
            "assd" => MetricName::Assd,
            "nsd" => MetricName::Nsd,
            _ => return None,
        })
    }

    /// The six scores of one group's counts.
    pub fn is_score(self) -> bool {
        matches!(
            self,
            MetricName::Iou
                | MetricName::Dice
                | MetricName::Precision
                | MetricName::Recall
                | MetricName::Specificity
                | MetricName::Accuracy
        )
    }

    /// Hausdorff, average surface distance, normalized surface Dice.
    pub fn is_surface(self) -> bool {
        matches!(self, MetricName::Hd | MetricName::Assd | MetricName::Nsd)
    }
}

/// How per-(image, class) results become the returned values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// All counts summed, then one score.
    Micro,
    /// Per class (counts summed over images), then the mean.
    Macro,
    /// As macro, then the weighted mean (`weights=`).
    Weighted,
    /// Per image (counts summed over classes), then the mean.
    MicroImagewise,
    /// Per (image, class), then the mean of all.
    MacroImagewise,
    /// Per (image, class), returned as `per_image`.
    None,
    /// MONAI's mean: per image over classes, then over images.
    Mean,
    /// MONAI's mean_batch: per class over images (`per_class`).
    MeanBatch,
    /// MONAI's mean_channel: per image over classes (`per_image`, N x 1).
    MeanChannel,
    /// The sum of all entries.
    Sum,
}

const REDUCTIONS: &[(&str, Reduction)] = &[
    ("micro", Reduction::Micro),
    ("macro", Reduction::Macro),
    ("weighted", Reduction::Weighted),
    ("micro-imagewise", Reduction::MicroImagewise),
    ("macro-imagewise", Reduction::MacroImagewise),
    ("none", Reduction::None),
    ("mean", Reduction::Mean),
    ("mean_batch", Reduction::MeanBatch),
    ("mean_channel", Reduction::MeanChannel),
    ("sum", Reduction::Sum),
];

/// Which library's conventions a metric follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// segmentation_models_pytorch (the default of the scores, counts and confusion).
    Smp,
    /// MONAI (the default of gdice and the surface metrics).
    Monai,
    /// torchmetrics.
    Torchmetrics,
}

impl Preset {
    /// The preset's name in a metric's text.
    pub fn text(self) -> &'static str {
        match self {
            Preset::Smp => "smp",
            Preset::Monai => "monai",
            Preset::Torchmetrics => "torchmetrics",
        }
    }
}

/// Class weights of `gdice` from the target's count `g_c` of each class: the loss's.
pub use crate::expr::GDiceWeight;

/// What an infinite `gdice` weight (a class absent from an image's target) becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbsentWeight {
    /// The image's largest finite weight (1 if none): MONAI.
    ImageMax,
    /// torchmetrics' indexing of the per-class maxima over the images of the call.
    Torchmetrics,
}

/// A parsed metric: its name and every setting, presets resolved. Two metrics are equal when
/// every setting is (NaN settings equal each other).
#[derive(Clone, Debug)]
pub struct Metric {
    /// What it measures.
    pub name: MetricName,
    /// The conventions it follows.
    pub preset: Preset,
    /// How per-(image, class) results are reduced.
    pub reduction: Reduction,
    /// Binary and multilabel: `sigmoid(x) >= threshold` is positive (`None`: 0.5, and the key was
    /// not given).
    pub threshold: Option<f64>,
    /// The value of a 0/0 (except under micro, where it is NaN).
    pub zero_division: f64,
    /// A group whose target is empty (`TP + FN = 0`) is NaN.
    pub ignore_empty: bool,
    /// Keep channel 0 (when C > 1).
    pub background: bool,
    /// Only these classes (ascending).
    pub classes: Option<Vec<usize>>,
    /// Class weights of `reduction=weighted`: one per class, or one per selected class (the
    /// `classes` list, without background where `background=false`), in ascending class order,
    /// as smp's `class_weights` beside the selected classes' counts.
    pub weights: Option<Vec<f64>>,
    /// The value of a mean of nothing.
    pub empty_mean: f64,
    /// `gdice` class weights.
    pub weight: GDiceWeight,
    /// `gdice`: infinite weights.
    pub absent_weight: AbsentWeight,
    /// Surface metrics: the voxel size per axis (one number for all).
    pub spacing: Vec<f64>,
    /// `hd`: this percentile instead of the maximum (`percentile=0` is the maximum, as in MONAI).
    pub percentile: Option<f64>,
    /// `hd`: prediction to target only.
    pub directed: bool,
    /// `assd`: pooled over both directions (else prediction to target only).
    pub symmetric: bool,
    /// `nsd`: the tolerance, one for all classes or one per selected class.
    pub tolerance: Option<Vec<f64>>,
    text: String,
}

/// The result of one metric; the fields its reduction returns are set, the others `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue {
    /// One number.
    pub value: Option<f64>,
    /// One per selected class.
    pub per_class: Option<Vec<f64>>,
    /// One row per image.
    pub per_image: Option<Vec<Vec<f64>>>,
    /// Counts or a confusion matrix.
    pub matrix: Option<Matrix>,
}

/// Integer tables: `counts` `[N][K][4]`, confusion `[C][C]`, `[N][C][C]`, `[2][2]`, `[C][2][2]`...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The entries, row-major.
    pub data: Vec<u64>,
}

fn merr(text: &str, msg: impl Into<String>) -> Error {
    Error::Metric { text: text.to_string(), msg: msg.into() }
}

fn number(text: &str, key: &str, v: &str) -> Result<f64, Error> {
    match v {
        "nan" | "NaN" => Ok(f64::NAN),
        _ => v.trim().parse::<f64>().map_err(|_| merr(text, format!("{key}={v}: expected a number"))),
    }
}

fn boolean(text: &str, key: &str, v: &str) -> Result<bool, Error> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(merr(text, format!("{key}={v}: expected true or false"))),
    }
}

fn numbers(text: &str, key: &str, v: &str) -> Result<Vec<f64>, Error> {
    // (one trailing `;` allowed, as in the loss texts' lists)
    v.strip_suffix(';').unwrap_or(v).split(';').map(|p| number(text, key, p)).collect()
}

const SCORE_KEYS: &[&str] =
    &["threshold", "reduction", "zero_division", "ignore_empty", "background", "classes", "weights", "empty_mean"];
const GDICE_KEYS: &[&str] =
    &["threshold", "reduction", "weight", "absent_weight", "zero_division", "background", "classes", "empty_mean"];
const COUNTS_KEYS: &[&str] = &["threshold", "background", "classes"];
const CONFUSION_KEYS: &[&str] = &["threshold", "reduction"];
const SURFACE_KEYS: &[&str] = &["threshold", "reduction", "background", "classes", "empty_mean", "spacing"];

impl Metric {
    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn keys(&self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = match self.name {
            n if n.is_score() => SCORE_KEYS.to_vec(),
            MetricName::GDice => GDICE_KEYS.to_vec(),
            MetricName::Counts => COUNTS_KEYS.to_vec(),
            MetricName::Confusion => CONFUSION_KEYS.to_vec(),
            _ => SURFACE_KEYS.to_vec(),
        };
        match self.name {
            MetricName::Hd => k.extend(["percentile", "directed"]),
            MetricName::Assd => k.push("symmetric"),
            MetricName::Nsd => k.push("tolerance"),
            _ => {}
        }
        k
    }

    /// Checks the metric against an input: its mode and channel count ([`Metric::check`]), and in
    /// multiclass mode an ignore index outside the classes `0..C-1` (as smp, which refuses one
    /// inside: the class would be both counted and ignored).
    pub fn check_input(&self, input: &crate::Input<'_>) -> Result<(), Error> {
        self.check(input.mode(), input.classes())?;
        match input.ignore_index() {
            Some(i) if input.mode() == Mode::Multiclass && (0..input.classes() as i64).contains(&i) => Err(merr(
                &self.text,
                format!(
                    "ignore_index {i} is one of the {} classes: metrics need it outside 0..{}",
                    input.classes(),
                    input.classes() - 1
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Checks the metric against an input's mode and channel count.
    pub fn check(&self, mode: Mode, classes: usize) -> Result<(), Error> {
        // the classes of an input of `mode` (one pixel's shape: the rules of every input)
        crate::input::check_shape(&[1, classes, 1], mode).map_err(|e| merr(&self.text, e.to_string()))?;
        if self.threshold.is_some() && mode == Mode::Multiclass {
            return Err(merr(&self.text, "threshold does not apply to multiclass"));
        }
        if let Some(cl) = &self.classes {
            if let Some(k) = cl.iter().find(|&&k| k >= classes) {
                return Err(merr(
                    &self.text,
                    format!("class index out of range: {k} (the input has {classes} classes)"),
                ));
            }
        }
        let k = self.selected(classes).len();
        if let Some(w) = &self.weights {
            if w.len() != classes && w.len() != k {
                return Err(merr(
                    &self.text,
                    format!(
                        "weights has {} entries for {classes} classes ({k} selected): one per class, or one per selected class",
                        w.len()
                    ),
                ));
            }
        }
        if let Some(t) = &self.tolerance {
            if t.len() != 1 && t.len() != k {
                return Err(merr(&self.text, format!("tolerance has {} entries for {k} selected classes", t.len())));
            }
        }
        if k == 0 {
            return Err(merr(&self.text, "no class is selected"));
        }
        self.check_settings()
    }

    /// The settings' rules, whatever the input: the parser's, and `check`'s for fields set in
    /// code (threshold, weights, the reductions the metric has, the surface metrics' numbers).
    fn check_settings(&self) -> Result<(), Error> {
        // the name as written (the text's head)
        let name_s = self.text.split(['@', ':']).next().unwrap_or_default();
        if let Some(x) = self.threshold {
            if !(x > 0.0 && x < 1.0) {
                return Err(merr(&self.text, format!("threshold={x}: must be in (0, 1)")));
            }
        }
        if let Some(w) = &self.weights {
            if let Some(x) = w.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return Err(merr(&self.text, format!("weights: {x} must be finite and >= 0")));
            }
        }
        // what the reduction allows
        if !self.name.allows(self.reduction) {
            let of = |r: Reduction| REDUCTIONS.iter().find(|(_, x)| *x == r).map_or("?", |(t, _)| *t);
            let allowed: Vec<&str> = REDUCTIONS.iter().filter(|(_, r)| self.name.allows(*r)).map(|(t, _)| *t).collect();
            let what = if self.name.is_surface() { "surface metrics have no count reductions; " } else { "" };
            return Err(merr(
                &self.text,
                format!(
                    "{what}{name_s} has no reduction {}; reductions for {name_s}: {}",
                    of(self.reduction),
                    allowed.join(", ")
                ),
            ));
        }
        if self.reduction == Reduction::Weighted && self.weights.is_none() {
            return Err(merr(&self.text, "weighted needs weights=w0;w1;... (one per class)"));
        }
        if self.weights.is_some() && self.reduction != Reduction::Weighted {
            return Err(merr(&self.text, "weights= goes with reduction=weighted"));
        }
        if self.name == MetricName::Nsd && self.tolerance.is_none() {
            return Err(merr(&self.text, "nsd needs tolerance=t (one, or one per class)"));
        }
        if let Some(p) = self.percentile {
            if !(p > 0.0 && p <= 100.0) {
                return Err(merr(
                    &self.text,
                    format!("percentile={p}: must be in [0, 100]; 0 (the maximum) is no percentile set"),
                ));
            }
        }
        if self.spacing.is_empty()
            || self.spacing.len() > 3
            || self.spacing.iter().any(|x| !(x.is_finite() && *x > 0.0))
        {
            let s: Vec<String> = self.spacing.iter().map(f64::to_string).collect();
            return Err(merr(&self.text, format!("spacing={}: one to three positive numbers", s.join(";"))));
        }
        if let Some(t) = self.tolerance.iter().flatten().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(merr(&self.text, format!("tolerance {t}: must be finite and >= 0")));
        }
        Ok(())
    }

    /// The classes the metric reports, ascending.
    pub(crate) fn selected(&self, classes: usize) -> Vec<usize> {
        let mut k: Vec<usize> = match &self.classes {
            Some(c) => class_set(c),
            None => (0..classes).collect(),
        };
        if !self.background && classes > 1 {
            k.retain(|&c| c != 0);
        }
        k
    }

    /// The hard-prediction threshold on the logits: `sigmoid(x) >= t` is `x >= ln(t / (1 - t))`.
    pub fn logit_threshold(&self) -> f64 {
        let t = self.threshold.unwrap_or(0.5);
        (t / (1.0 - t)).ln()
    }

    /// The hard-prediction threshold on an input of `kind`: [`Metric::logit_threshold`] on
    /// logits, `t` itself on probabilities (`p >= t`).
    pub fn input_threshold(&self, kind: crate::InputKind) -> f64 {
        match kind {
            crate::InputKind::Logits => self.logit_threshold(),
            crate::InputKind::Probs => self.threshold.unwrap_or(0.5),
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(text: &str) -> Result<Metric, Error> {
        let t = text.trim();
        let (head, kv) = match t.split_once(':') {
            Some((h, k)) => (h, Some(k)),
            None => (t, None),
        };
        // (spaces around the name, `@` and `:` are ignored, as around keys and values)
        let head = head.trim();
        let (name_s, preset_s) = match head.split_once('@') {
            Some((n, p)) => (n.trim(), Some(p.trim())),
            None => (head, None),
        };
        let name = MetricName::parse(name_s).ok_or_else(|| {
            merr(
                text,
                format!(
                    "unknown metric '{name_s}'; metrics: iou (jaccard), dice (f1), precision (ppv), recall \
                     (sensitivity, tpr), specificity (tnr), accuracy, gdice, counts, confusion, hd, assd, nsd"
                ),
            )
        })?;
        let default_preset = if name == MetricName::GDice || name.is_surface() { Preset::Monai } else { Preset::Smp };
        let preset = match preset_s {
            None => default_preset,
            Some("smp") => Preset::Smp,
            Some("monai") => Preset::Monai,
            Some("torchmetrics") => Preset::Torchmetrics,
            Some(p) => return Err(merr(text, format!("unknown preset '{p}'; presets: smp, monai, torchmetrics"))),
        };
        if !name.presets().contains(&preset) {
            let names: Vec<&str> = name.presets().iter().map(|p| p.text()).collect();
            return Err(merr(
                text,
                format!("{name_s} has no preset {}; presets for {name_s}: {}", preset.text(), names.join(", ")),
            ));
        }
        let mut m = Metric {
            name,
            preset,
            reduction: Reduction::Micro,
            threshold: None,
            zero_division: 1.0,
            ignore_empty: false,
            background: true,
            classes: None,
            weights: None,
            empty_mean: f64::NAN,
            weight: GDiceWeight::Square,
            absent_weight: AbsentWeight::ImageMax,
            spacing: vec![1.0],
            percentile: None,
            directed: false,
            symmetric: true,
            tolerance: None,
            text: t.to_string(),
        };
        // the preset's settings
        match (preset, name) {
            (Preset::Monai, n) => {
                m.empty_mean = 0.0;
                match n {
                    MetricName::Dice | MetricName::Iou => {
                        m.reduction = Reduction::Mean;
                        m.ignore_empty = true;
                    }
                    MetricName::GDice => m.reduction = Reduction::Mean,
                    n if n.is_surface() => {
                        m.background = false;
                        m.reduction = Reduction::Mean;
                    }
                    _ => m.zero_division = f64::NAN,
                }
            }
            (Preset::Torchmetrics, MetricName::Iou) => {
                m.reduction = Reduction::MacroImagewise;
                m.zero_division = f64::NAN;
            }
            (Preset::Torchmetrics, MetricName::Dice) => {
                m.reduction = Reduction::Mean;
                m.zero_division = f64::NAN;
            }
            (Preset::Torchmetrics, _) => {
                m.reduction = Reduction::Mean;
                m.absent_weight = AbsentWeight::Torchmetrics;
                m.zero_division = 0.0;
            }
            (Preset::Smp, _) => {}
        }
        let allowed = m.keys();
        let mut seen: Vec<&str> = Vec::new();
        for pair in kv.into_iter().flat_map(|k| k.split(',')) {
            let (key, v) = pair.split_once('=').ok_or_else(|| {
                merr(text, format!("'{pair}' is not key=value; keys of {name_s}: {}", allowed.join(", ")))
            })?;
            let (key, v) = (key.trim(), v.trim());
            if !allowed.contains(&key) {
                return Err(merr(
                    text,
                    format!("unknown key for {name_s}: '{key}'; keys of {name_s}: {}", allowed.join(", ")),
                ));
            }
            // (a preset's keys may be overridden; a key given twice is a mistake either way)
            if seen.contains(&key) {
                return Err(merr(text, format!("key '{key}' is given twice")));
            }
            seen.push(key);
            match key {
                "threshold" => m.threshold = Some(number(text, key, v)?),
                "reduction" => {
                    m.reduction = REDUCTIONS.iter().find(|r| r.0 == v).map(|r| r.1).ok_or_else(|| {
                        let names: Vec<&str> = REDUCTIONS.iter().map(|r| r.0).collect();
                        merr(text, format!("reduction={v}: allowed values are {}", names.join(", ")))
                    })?
                }
                "zero_division" => m.zero_division = number(text, key, v)?,
                "empty_mean" => m.empty_mean = number(text, key, v)?,
                "ignore_empty" => m.ignore_empty = boolean(text, key, v)?,
                "background" => m.background = boolean(text, key, v)?,
                "directed" => m.directed = boolean(text, key, v)?,
                "symmetric" => m.symmetric = boolean(text, key, v)?,
                "classes" => {
                    let c: Result<Vec<usize>, _> =
                        v.strip_suffix(';').unwrap_or(v).split(';').map(|p| p.trim().parse::<usize>()).collect();
                    m.classes =
                        Some(c.map_err(|_| merr(text, format!("classes={v}: expected class indices like 0;2")))?);
                }
                "weights" => m.weights = Some(numbers(text, key, v)?),
                "weight" => {
                    m.weight = match v {
                        "square" => GDiceWeight::Square,
                        "simple" => GDiceWeight::Simple,
                        "uniform" | "linear" => GDiceWeight::Uniform,
                        _ => return Err(merr(text, format!("weight={v}: allowed values are square, simple, uniform"))),
                    }
                }
                "absent_weight" => {
                    m.absent_weight = match v {
                        "image_max" => AbsentWeight::ImageMax,
                        "torchmetrics" => AbsentWeight::Torchmetrics,
                        _ => {
                            return Err(merr(
                                text,
                                format!("absent_weight={v}: allowed values are image_max, torchmetrics"),
                            ))
                        }
                    }
                }
                "spacing" => m.spacing = numbers(text, key, v)?,
                "percentile" => {
                    // MONAI's HausdorffDistanceMetric takes a percentile of 0 as none (`if not
                    // percentile`): the maximum
                    let p = number(text, key, v)?;
                    m.percentile = (p != 0.0).then_some(p);
                }
                "tolerance" => m.tolerance = Some(numbers(text, key, v)?),
                _ => return Err(merr(text, format!("unknown key for {name_s}: '{key}'"))),
            }
        }
        m.check_settings()?;
        Ok(m)
    }
}

/// The classes a `classes` list selects: ascending, each once.
fn class_set(list: &[usize]) -> Vec<usize> {
    let mut c = list.to_vec();
    c.sort_unstable();
    c.dedup();
    c
}

impl PartialEq for Metric {
    fn eq(&self, other: &Metric) -> bool {
        // every setting (not the text: `iou` and `jaccard@smp` are one metric), floats by their
        // printed value, so that `nan` settings are equal; a class list as the set it selects
        // (`classes=2;0` and `classes=0;2` are one metric)
        let settings = |m: &Metric| {
            let classes = m.classes.as_deref().map(class_set);
            format!("{:?}", Metric { text: String::new(), classes, ..m.clone() })
        };
        settings(self) == settings(other)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_with_the_same_settings_are_equal_whatever_their_text() {
        let a: Metric = "iou".parse().unwrap();
        assert_eq!(a, "jaccard@smp".parse::<Metric>().unwrap());
        assert_ne!(a, "iou:reduction=macro".parse::<Metric>().unwrap());
        assert_eq!("iou:zero_division=nan".parse::<Metric>().unwrap(), "jaccard:zero_division=nan".parse().unwrap());
    }

    #[test]
    fn presets_and_keys_resolve_as_the_contract_says() {
        let m: Metric = "dice@monai".parse().unwrap();
        assert_eq!((m.reduction, m.ignore_empty, m.empty_mean), (Reduction::Mean, true, 0.0));
        let m: Metric = "precision@monai".parse().unwrap();
        assert!(m.zero_division.is_nan() && m.reduction == Reduction::Micro);
        let m: Metric = "hd".parse().unwrap();
        assert_eq!((m.preset, m.background, m.reduction), (Preset::Monai, false, Reduction::Mean));
        let m: Metric = "iou@torchmetrics:background=false".parse().unwrap();
        assert_eq!((m.reduction, m.background), (Reduction::MacroImagewise, false));
        let m: Metric = "gdice@torchmetrics:weight=uniform".parse().unwrap();
        assert_eq!(
            (m.absent_weight, m.weight, m.zero_division),
            (AbsentWeight::Torchmetrics, GDiceWeight::Uniform, 0.0)
        );
    }

    #[test]
    fn bad_texts_name_the_problem() {
        for (t, what) in [
            ("nsd@monai", "tolerance"),
            ("hd:reduction=micro", "count reductions"),
            ("dice@torchmetrics:percentile=95", "unknown key"),
            ("iou:reduction=weighted", "weights"),
            ("iouu", "unknown metric"),
            ("iou@keras", "unknown preset"),
            ("counts@monai", "no preset"),
            ("iou:reduction=average", "allowed values"),
            ("iou:threshold=1.5", "(0, 1)"),
            ("gdice:reduction=macro", "no reduction"),
            ("confusion:reduction=mean", "no reduction"),
            ("iou:zero_division=x", "number"),
            ("iou:background", "key=value"),
        ] {
            let e = t.parse::<Metric>().unwrap_err().to_string();
            assert!(e.contains(what), "{t}: {e}");
        }
        let m: Metric = "iou:threshold=0.3".parse().unwrap();
        assert!(m.check(Mode::Multiclass, 3).unwrap_err().to_string().contains("multiclass"));
        let m: Metric = "iou:classes=1".parse().unwrap();
        assert!(m.check(Mode::Binary, 1).unwrap_err().to_string().contains("out of range"));
        // weights: finite, >= 0, with reduction=weighted only
        assert!("iou:reduction=weighted,weights=1;-2".parse::<Metric>().unwrap_err().to_string().contains(">= 0"));
        assert!("iou:weights=1;2".parse::<Metric>().unwrap_err().to_string().contains("reduction=weighted"));
    }

    /// (review) Spaces around the name, `@` and `:` are ignored, as around keys and values; a
    /// class list is the set it selects, so runs of `classes=2;0` and `classes=0;2` merge.
    #[test]
    fn spaced_texts_and_reordered_class_lists_are_one_metric() {
        let parsed = |t: &str| t.parse::<Metric>().unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(parsed(" iou : reduction=macro"), parsed("iou:reduction=macro"));
        assert_eq!(parsed("recall @ monai :reduction=mean"), parsed("recall@monai:reduction=mean"));
        assert_eq!(parsed("hd @monai"), parsed("hd"));
        assert_eq!(parsed("iou:classes=2;0"), parsed("iou:classes=0;2"));
        assert_ne!(parsed("iou:classes=1;0"), parsed("iou:classes=0;2"));
    }

    #[test]
    fn settings_made_in_code_are_held_to_the_texts_rules() {
        let base: Metric = "iou".parse().unwrap();
        assert!(base.check(Mode::Multilabel, 3).is_ok());
        type Edit = fn(&mut Metric);
        let cases: [(Edit, &str); 5] = [
            (|m| m.threshold = Some(1.5), "threshold=1.5: must be in (0, 1)"),
            (|m| m.threshold = Some(f64::NAN), "threshold=NaN"),
            (|m| m.reduction = Reduction::Weighted, "weighted needs weights"),
            (
                |m| {
                    m.reduction = Reduction::Weighted;
                    m.weights = Some(vec![1.0, f64::NAN, 1.0]);
                },
                "weights: NaN must be finite",
            ),
            (|m| m.reduction = Reduction::Mean, ""),
        ];
        for (edit, what) in cases {
            let mut m = base.clone();
            edit(&mut m);
            match m.check(Mode::Multilabel, 3) {
                Err(e) => assert!(!what.is_empty() && e.to_string().contains(what), "{what}: {e}"),
                Ok(()) => assert!(what.is_empty(), "{what}: accepted"),
            }
        }
        // the classes of an input: bounded (not a list of them all), and fitting the mode
        assert!(base.check(Mode::Multilabel, usize::MAX).unwrap_err().to_string().contains("elements"));
        assert!(base.check(Mode::Multilabel, 0).is_err());
        assert!(base.check(Mode::Binary, 3).is_err());
    }
}
