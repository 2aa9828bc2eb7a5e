//! Inputs: logits, targets, their shape and mode, and the checks that reject bad input.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How targets are given and which activation turns logits into probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum Mode {
    /// C = 1, float targets in [0, 1], `p = sigmoid(x)`.
    Binary,
    /// C >= 1 independent channels, float targets in [0, 1], `p = sigmoid(x)`.
    Multilabel,
    /// C >= 2 classes, integer class indices `[N, S...]`, `p = softmax(x)` over C.
    Multiclass,
}

impl Mode {
    /// The mode's name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Multilabel => "multilabel",
            Mode::Multiclass => "multiclass",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "binary" => Ok(Mode::Binary),
            "multilabel" => Ok(Mode::Multilabel),
            "multiclass" => Ok(Mode::Multiclass),
            _ => Err(Error::Input(format!("unknown mode '{s}'; modes: binary, multilabel, multiclass"))),
        }
    }
}

/// What the first tensor of an [`Input`] holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Logits: `p = sigmoid(x)` (binary, multilabel) or `softmax(x)` over C (multiclass); gradients
    /// are `d loss / d logits`.
    #[default]
    Logits,
    /// Probabilities in [0, 1] (0 and 1 included), used as they are: no activation; gradients are
    /// `d loss / d p`. Multiclass channels need not sum to 1. Cross-entropy, softmax focal and the
    /// Lovász hinge need logits and refuse them.
    Probs,
}

impl InputKind {
    /// The kind's name (`logits`, `probs`).
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Logits => "logits",
            InputKind::Probs => "probs",
        }
    }
}

/// Targets: dense float masks (binary, multilabel) or class indices (multiclass).
#[derive(Clone, Debug)]
pub enum Target<'a> {
    /// Values in [0, 1] with the logits' shape `[N, C, S...]`.
    Dense(Cow<'a, [f32]>),
    /// Class indices with shape `[N, S...]`, each in `0..C` or equal to the ignore index.
    Labels(Cow<'a, [i64]>),
}

/// One batch to evaluate: logits `[N, C, S...]` (NCHW as in PyTorch), targets, mode and ignore index.
///
/// ```
/// use segloss::{Input, Mode};
/// let logits = vec![0.5f32, -1.0, 2.0, 0.0];
/// let target = vec![1.0f32, 0.0, 1.0, 0.0];
/// let input = Input::dense(&logits, &target, &[1, 1, 2, 2], Mode::Binary).unwrap();
/// assert_eq!(input.spatial(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub(crate) logits: Cow<'a, [f32]>,
    pub(crate) target: Target<'a>,
    pub(crate) shape: Vec<usize>,
    pub(crate) mode: Mode,
    pub(crate) ignore_index: Option<i64>,
    pub(crate) kind: InputKind,
    /// Deep supervision: levels 1.. (level 0 is `logits`).
    pub(crate) levels: Vec<Level<'a>>,
    /// Some logit (of any level) is -inf (multiclass: a class masked out).
    pub(crate) neg_inf: bool,
}

/// A level of deep supervision: its predictions, shape, and the target resized to it (once, when
/// the level is given).
#[derive(Clone, Debug)]
pub(crate) struct Level<'a> {
    logits: Cow<'a, [f32]>,
    shape: Vec<usize>,
    target: Target<'a>,
}

/// The element count of a shape, or an error when it overflows.
fn count(shape: &[usize]) -> Result<usize, Error> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} has too many elements")))
}

impl<'a> Input<'a> {
    /// Float targets of the logits' shape (binary, multilabel).
    pub fn dense(logits: &'a [f32], target: &'a [f32], shape: &[usize], mode: Mode) -> Result<Self, Error> {
        Self::new(Cow::Borrowed(logits), Target::Dense(Cow::Borrowed(target)), shape, mode, None)
    }

    /// Class-index targets `[N, S...]` (multiclass), with an optional ignore index.
    pub fn labels(
        logits: &'a [f32],
        target: &'a [i64],
        shape: &[usize],
        ignore_index: Option<i64>,
    ) -> Result<Self, Error> {
        Self::new(Cow::Borrowed(logits), Target::Labels(Cow::Borrowed(target)), shape, Mode::Multiclass, ignore_index)
    }

    /// Probabilities (instead of logits) with float targets of their shape (binary, multilabel).
    ///
    /// ```
    /// use segloss::{Input, InputKind, Mode};
    /// let probs = vec![0.9f32, 0.0, 1.0, 0.2];
    /// let target = vec![1.0f32, 0.0, 1.0, 0.0];
    /// let input = Input::dense_probs(&probs, &target, &[1, 1, 2, 2], Mode::Binary).unwrap();
    /// assert_eq!(input.kind(), InputKind::Probs);
    /// assert!(Input::dense_probs(&[1.5f32], &[1.0], &[1, 1, 1], Mode::Binary).is_err());
    /// ```
    pub fn dense_probs(probs: &'a [f32], target: &'a [f32], shape: &[usize], mode: Mode) -> Result<Self, Error> {
        let target = Target::Dense(Cow::Borrowed(target));
        Self::new_of_kind(Cow::Borrowed(probs), target, shape, mode, None, InputKind::Probs)
    }

    /// Probabilities (instead of logits) with class-index targets `[N, S...]` (multiclass).
    pub fn labels_probs(
        probs: &'a [f32],
        target: &'a [i64],
        shape: &[usize],
        ignore_index: Option<i64>,
    ) -> Result<Self, Error> {
        let target = Target::Labels(Cow::Borrowed(target));
        Self::new_of_kind(Cow::Borrowed(probs), target, shape, Mode::Multiclass, ignore_index, InputKind::Probs)
    }

    /// The same data read as `kind`: probabilities must lie in [0, 1] (the first element outside
    /// is named in the error).
    pub fn with_kind(mut self, kind: InputKind) -> Result<Self, Error> {
        check_values(&self.logits, &self.shape, kind, self.mode, "")?;
        for (l, lv) in self.levels.iter().enumerate() {
            check_values(&lv.logits, &lv.shape, kind, self.mode, &format!(" of level {}", l + 1))?;
        }
        self.kind = kind;
        Ok(self)
    }

    /// Deep supervision: the predictions of levels 1, 2, ... (level 0 is this input's), each
    /// `[N, C, S_l...]` with this input's N, C and number of spatial dims and sizes of its own,
    /// of this input's kind (logits or probabilities). A `deep(...)` expression evaluates on each
    /// level against the target resized to it (nearest, `src = min(floor((2i+1) in / (2 out)),
    /// in-1)` per axis).
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use segloss::{Input, LossExpr, Mode};
    /// let (x0, x1) = (vec![0.5f32; 2 * 16], vec![-0.5f32; 2 * 4]);
    /// let target: Vec<i64> = (0..16).map(|i| i % 2).collect();
    /// let input = Input::labels(&x0, &target, &[1, 2, 4, 4], None)?
    ///     .with_levels(vec![(Cow::Borrowed(&x1[..]), vec![1, 2, 2, 2])])?;
    /// assert_eq!(input.levels(), 2);
    /// let deep: LossExpr = "deep(dice@monai+ce)".parse()?;
    /// let r = segloss::reference::evaluate(&input, &deep)?;
    /// assert_eq!(r.level_grads.len(), 1);
    /// # Ok::<(), segloss::Error>(())
    /// ```
    pub fn with_levels(mut self, levels: Vec<(Cow<'a, [f32]>, Vec<usize>)>) -> Result<Self, Error> {
        if levels.len() >= crate::expr::MAX_LEVELS {
            return Err(Error::Shape(format!(
                "{} levels after level 0: deep supervision takes at most {} in all",
                levels.len(),
                crate::expr::MAX_LEVELS
            )));
        }
        for (l, (x, shape)) in levels.iter().enumerate() {
            let what = format!("level {}", l + 1);
            let numel = check_shape(shape, self.mode).map_err(|e| Error::Shape(format!("{what}: {e}")))?;
            if shape.len() != self.shape.len() || shape[0] != self.shape[0] || shape[1] != self.shape[1] {
                return Err(Error::Shape(format!(
                    "{what} has shape {shape:?}: levels share N, C and the number of spatial dims with level 0 {:?}",
                    self.shape
                )));
            }
            if x.len() != numel {
                return Err(Error::Shape(format!("{what} has {} elements but shape {shape:?} needs {numel}", x.len())));
            }
            check_values(x, shape, self.kind, self.mode, &format!(" of {what}"))?;
        }
        self.levels = levels
            .into_iter()
            .map(|(logits, shape)| {
                let target = match &self.target {
                    Target::Dense(t) => Target::Dense(Cow::Owned(resize(t, &self.shape, &shape))),
                    Target::Labels(t) => {
                        Target::Labels(Cow::Owned(resize(t, &label_dims(&self.shape), &label_dims(&shape))))
                    }
                };
                Level { logits, shape, target }
            })
            .collect();
        if self.mode == Mode::Multiclass && self.levels.iter().any(|lv| lv.logits.contains(&f32::NEG_INFINITY)) {
            self.neg_inf = true;
            for l in 1..self.levels() {
                let lv = self.level(l)?;
                all_neg_inf(&lv.logits, &lv.target, &lv.shape, self.ignore_index, &format!(" of level {l}"))?;
            }
        }
        Ok(self)
    }

    /// The number of levels: 1, or 1 + those given by [`Input::with_levels`].
    pub fn levels(&self) -> usize {
        1 + self.levels.len()
    }

    /// Level `l` as an input of its own: its predictions and the target resized to its size.
    pub fn level(&self, l: usize) -> Result<Input<'_>, Error> {
        let (logits, target, shape) = match l {
            0 => (&self.logits, &self.target, &self.shape),
            _ => {
                let lv = self
                    .levels
                    .get(l - 1)
                    .ok_or_else(|| Error::Input(format!("level {l} of an input of {}", self.levels())))?;
                (&lv.logits, &lv.target, &lv.shape)
            }
        };
        Ok(Input {
            logits: Cow::Borrowed(logits),
            target: match target {
                Target::Dense(t) => Target::Dense(Cow::Borrowed(t)),
                Target::Labels(t) => Target::Labels(Cow::Borrowed(t)),
            },
            shape: shape.clone(),
            mode: self.mode,
            ignore_index: self.ignore_index,
            kind: self.kind,
            levels: Vec::new(),
            // (some level has -inf: the checks that scan for it run on each level)
            neg_inf: self.neg_inf,
        })
    }

    /// Whether the first tensor holds logits or probabilities.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// The general constructor: validates shapes, values and the mode, and names the first problem.
    ///
    /// `ignore_index` marks class indices (multiclass) or target values (binary, multilabel) that take
    /// no part in any sum, count or mean.
    pub fn new(
        logits: Cow<'a, [f32]>,
        target: Target<'a>,
        shape: &[usize],
        mode: Mode,
        ignore_index: Option<i64>,
    ) -> Result<Self, Error> {
        Self::new_of_kind(logits, target, shape, mode, ignore_index, InputKind::Logits)
    }

    /// [`Input::new`] for predictions of either kind: logits, or probabilities, which must lie in
    /// [0, 1] (a NaN among them is named as a probability, not as a logit).
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use segloss::{Error, Input, InputKind, Mode, Target};
    /// let target = Target::Dense(Cow::Owned(vec![1.0f32, 0.0]));
    /// let r = Input::new_of_kind(Cow::Owned(vec![0.5f32, f32::NAN]), target, &[1, 1, 2], Mode::Binary, None, InputKind::Probs);
    /// assert!(matches!(r, Err(Error::Input(m)) if m.contains("probs[1] = NaN")));
    /// ```
    pub fn new_of_kind(
        logits: Cow<'a, [f32]>,
        target: Target<'a>,
        shape: &[usize],
        mode: Mode,
        ignore_index: Option<i64>,
        kind: InputKind,
    ) -> Result<Self, Error> {
        let numel = check_shape(shape, mode)?;
        if logits.len() != numel {
            return Err(Error::Shape(format!(
                "logits have {} elements but shape {shape:?} needs {numel}",
                logits.len()
            )));
        }
        let c = shape[1];
        check_values(&logits, shape, kind, mode, "")?;
        match (&target, mode) {
            (Target::Dense(t), Mode::Binary | Mode::Multilabel) => {
                if t.len() != numel {
                    return Err(Error::Shape(format!(
                        "target has {} elements but the logits shape {shape:?} needs {numel} (dense targets have the logits' shape)",
                        t.len()
                    )));
                }
                let ign = ignore_index.map(|k| k as f32);
                if let Some(i) = t.iter().position(|&v| !(0.0..=1.0).contains(&v) && Some(v) != ign) {
                    return Err(Error::TargetValue(format!(
                        "target[{i}] = {} ({}) is outside [0, 1]{}",
                        t[i],
                        describe_index(shape, i),
                        if ign.is_some() { " and is not the ignore index" } else { "" }
                    )));
                }
            }
            (Target::Labels(t), Mode::Multiclass) => {
                let need = numel / c;
                if t.len() != need {
                    return Err(Error::Shape(format!(
                        "target has {} class indices but logits {shape:?} need {need} ([N, S...] without the class dim)",
                        t.len()
                    )));
                }
                if let Some(i) = t.iter().position(|&v| (v < 0 || v >= c as i64) && Some(v) != ignore_index) {
                    return Err(Error::ClassIndex(format!(
                        "target[{i}] = {} is not a class in 0..{c}{}",
                        t[i],
                        match ignore_index {
                            Some(k) => format!(" and is not the ignore index {k}"),
                            None => " (no ignore index is set)".to_string(),
                        }
                    )));
                }
            }
            (Target::Dense(_), Mode::Multiclass) => {
                return Err(Error::Input("multiclass mode needs class-index targets, got a dense float target".into()))
            }
            (Target::Labels(_), _) => {
                return Err(Error::Input(format!("{mode} mode needs dense float targets, got class indices")))
            }
        }
        // probabilities were checked to lie in [0, 1]: no -inf among them
        let neg_inf = mode == Mode::Multiclass && logits.contains(&f32::NEG_INFINITY);
        let input =
            Input { logits, target, shape: shape.to_vec(), mode, ignore_index, kind, levels: Vec::new(), neg_inf };
        if neg_inf {
            all_neg_inf(&input.logits, &input.target, shape, ignore_index, "")?;
        }
        Ok(input)
    }

    /// Checks a logits `shape` against `mode` as every input does ([`Input`], and
    /// [`crate::BufferInput`] before it reads a buffer): `[N, C, S...]` with one to three spatial
    /// dims, none of them 0, fewer than 2^31 elements, C = 1 in binary and C >= 2 in multiclass mode.
    /// Returns the element count. For a caller that prepares buffers: check before allocating.
    ///
    /// ```
    /// use segloss::{Input, Mode};
    /// assert_eq!(Input::check_shape(&[2, 3, 4, 4], Mode::Multiclass).unwrap(), 96);
    /// assert!(Input::check_shape(&[2, 3, 4, 4], Mode::Binary).is_err());
    /// assert!(Input::check_shape(&[1 << 20, 1, 1 << 12, 1], Mode::Binary).is_err());
    /// ```
    pub fn check_shape(shape: &[usize], mode: Mode) -> Result<usize, Error> {
        check_shape(shape, mode)
    }

    /// Number of images N.
    pub fn batch(&self) -> usize {
        self.shape[0]
    }
    /// Number of channels C.
    pub fn classes(&self) -> usize {
        self.shape[1]
    }
    /// Number of spatial positions per image and channel.
    pub fn spatial(&self) -> usize {
        self.shape[2..].iter().product()
    }
    /// The logits' shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The logits (or the probabilities, see [`Input::kind`]).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    /// The targets.
    pub fn target(&self) -> &Target<'a> {
        &self.target
    }
    /// The ignore index.
    pub fn ignore_index(&self) -> Option<i64> {
        self.ignore_index
    }

    /// Images `from..to` of the batch as an input of their own, borrowing this one's data (a
    /// data-parallel worker's part, an adapter's share).
    ///
    /// ```
    /// use segloss::{Input, Mode};
    /// let logits = vec![0.5f32; 4 * 16];
    /// let target = vec![1.0f32; 4 * 16];
    /// let batch = Input::dense(&logits, &target, &[4, 1, 4, 4], Mode::Binary).unwrap();
    /// let half = batch.images(2, 4).unwrap();
    /// assert_eq!(half.shape(), &[2, 1, 4, 4]);
    /// ```
    pub fn images(&self, from: usize, to: usize) -> Result<Input<'_>, Error> {
        if from >= to || to > self.batch() {
            return Err(Error::Input(format!("images {from}..{to} of a batch of {}", self.batch())));
        }
        let (c, s) = (self.classes(), self.spatial());
        let mut shape = self.shape.clone();
        shape[0] = to - from;
        let target = match &self.target {
            Target::Dense(t) => Target::Dense(Cow::Borrowed(&t[from * c * s..to * c * s])),
            Target::Labels(t) => Target::Labels(Cow::Borrowed(&t[from * s..to * s])),
        };
        Ok(Input {
            logits: Cow::Borrowed(&self.logits[from * c * s..to * c * s]),
            target,
            shape,
            mode: self.mode,
            ignore_index: self.ignore_index,
            kind: self.kind,
            neg_inf: self.neg_inf,
            levels: self
                .levels
                .iter()
                .map(|lv| {
                    let per = lv.shape[1..].iter().product::<usize>();
                    let mut shape = lv.shape.clone();
                    shape[0] = to - from;
                    let target = match &lv.target {
                        Target::Dense(t) => Target::Dense(Cow::Borrowed(&t[from * per..to * per])),
                        Target::Labels(t) => {
                            let lper = per / lv.shape[1];
                            Target::Labels(Cow::Borrowed(&t[from * lper..to * lper]))
                        }
                    };
                    Level { logits: Cow::Borrowed(&lv.logits[from * per..to * per]), shape, target }
                })
                .collect(),
        })
    }

    /// Target elements: class indices, or dense values.
    pub(crate) fn target_len(&self) -> usize {
        match &self.target {
            Target::Dense(t) => t.len(),
            Target::Labels(t) => t.len(),
        }
    }

    /// Whether every target value is exactly 0 or 1 (or ignored): needed by Lovász.
    pub fn hard_labels(&self) -> bool {
        self.first_soft().is_none()
    }

    /// The flat index of the first dense target value that is neither 0, 1 nor the ignore
    /// value (None for class indices): what [`Input::hard_labels`] looks for.
    ///
    /// ```
    /// use segloss::{Input, Mode};
    /// let input = Input::dense(&[0.0f32; 4], &[1.0f32, 0.0, 0.5, 1.0], &[1, 1, 2, 2], Mode::Binary).unwrap();
    /// assert_eq!(input.first_soft(), Some(2));
    /// assert!(!input.hard_labels());
    /// ```
    pub fn first_soft(&self) -> Option<usize> {
        match &self.target {
            Target::Labels(_) => None,
            Target::Dense(t) => {
                let ign = self.ignore_index.map(|k| k as f32);
                t.iter().position(|&v| !(v == 0.0 || v == 1.0 || Some(v) == ign))
            }
        }
    }
}

/// Logits must be finite (multiclass: or -inf, a class masked out); probabilities in [0, 1].
/// `what` names the level in the message.
fn check_values(x: &[f32], shape: &[usize], kind: InputKind, mode: Mode, what: &str) -> Result<(), Error> {
    let masked = |v: f32| mode == Mode::Multiclass && v == f32::NEG_INFINITY;
    match kind {
        InputKind::Logits => match x.iter().position(|&v| !v.is_finite() && !masked(v)) {
            Some(i) => Err(Error::NonFinite(format!(
                "logits{what}[{i}] = {} ({}){}",
                x[i],
                describe_index(shape, i),
                if x[i] == f32::NEG_INFINITY { " (-inf masks a class in multiclass mode only)" } else { "" }
            ))),
            None => Ok(()),
        },
        InputKind::Probs => match x.iter().position(|v| !(0.0..=1.0).contains(v)) {
            Some(i) => Err(Error::Input(format!(
                "probability probs{what}[{i}] = {} ({}) is outside [0, 1]",
                x[i],
                describe_index(shape, i)
            ))),
            None => Ok(()),
        },
    }
}

/// A non-ignored pixel whose logits are all -inf has no probabilities: an error naming it.
fn all_neg_inf(x: &[f32], target: &Target, shape: &[usize], ignore: Option<i64>, what: &str) -> Result<(), Error> {
    let Target::Labels(t) = target else { return Ok(()) };
    let (c, s) = (shape[1], shape[2..].iter().product::<usize>());
    for (p, &lab) in t.iter().enumerate() {
        let (n, pos) = (p / s, p % s);
        if Some(lab) != ignore && (0..c).all(|k| x[(n * c + k) * s + pos] == f32::NEG_INFINITY) {
            return Err(Error::NonFinite(format!(
                "every logit{what} of pixel {} is -inf (a pixel needs one finite class)",
                describe_index(&label_dims(shape), p)
            )));
        }
    }
    Ok(())
}

/// Which losses of `exprs` refuse -inf logits (multiclass), each named by the first such loss.
/// The host checks ([`check_neg_inf`]) and the device's (buffer inputs) both follow these rules.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NegInfRules {
    /// -inf anywhere: a sigmoid focal (smp and MONAI give NaN).
    pub any: Option<&'static str>,
    /// -inf on any class of a pixel that is not ignored: a label-smoothed ce, which takes every
    /// class's log-probability (PyTorch: an infinite loss); an ignored pixel takes no part.
    pub live: Option<&'static str>,
    /// -inf on the true class of a pixel that is not ignored: ce, softmax focal.
    pub true_class: Option<&'static str>,
}

/// The [`NegInfRules`] of `exprs` in `mode`.
pub(crate) fn neg_inf_rules(exprs: &[crate::LossExpr], mode: Mode) -> NegInfRules {
    use crate::expr::Loss;
    let (mut any, mut live, mut true_class) = (None, None, None);
    for t in exprs.iter().flat_map(|e| &e.terms) {
        match &t.loss {
            Loss::Ce(p) if p.label_smoothing > 0.0 => live = live.or(Some("ce with label_smoothing")),
            Loss::Ce(_) => true_class = true_class.or(Some("ce")),
            Loss::Focal(p) if p.act.softmax(mode) => true_class = true_class.or(Some("focal:act=softmax")),
            Loss::Focal(_) => any = any.or(Some("the sigmoid focal loss")),
            _ => {}
        }
    }
    NegInfRules { any, live, true_class }
}

/// -inf logits (multiclass) that the losses of `exprs` cannot take: on the true class of a
/// non-ignored pixel for `ce` and softmax focal, on any class of such a pixel for a
/// label-smoothed `ce`, anywhere for a sigmoid focal (they need every class's log-probability).
pub(crate) fn check_neg_inf(input: &Input, exprs: &[crate::LossExpr]) -> Result<(), Error> {
    if !input.neg_inf {
        return Ok(());
    }
    let rules = neg_inf_rules(exprs, input.mode);
    for l in 0..input.levels() {
        let lv = input.level(l)?;
        let of = if l == 0 { String::new() } else { format!(" of level {l}") };
        let at = |i: usize| describe_index(&lv.shape, i);
        if let Some(who) = rules.any {
            if let Some(i) = lv.logits.iter().position(|&v| v == f32::NEG_INFINITY) {
                return Err(Error::NonFinite(format!(
                    "{who} needs finite logits; logits{of}[{i}] ({}) is -inf",
                    at(i)
                )));
            }
        }
        let Target::Labels(t) = &lv.target else { continue };
        let (c, s) = (lv.shape[1], lv.spatial());
        // the smallest offending index over the pixels that are not ignored, as the device's
        // checks report it
        let mut bad: Option<(usize, &str, &str)> = None;
        for (p, &lab) in t.iter().enumerate() {
            if Some(lab) == lv.ignore_index {
                continue;
            }
            let e = |k: usize| ((p / s) * c + k) * s + p % s;
            let mut note = |i: usize, who: &'static str, what: &'static str| {
                if lv.logits[i] == f32::NEG_INFINITY && bad.is_none_or(|b| i < b.0) {
                    bad = Some((i, who, what));
                }
            };
            if let Some(who) = rules.live {
                for k in 0..c {
                    note(e(k), who, "finite logits on the pixels that are not ignored");
                }
            } else if let Some(who) = rules.true_class {
                note(e(lab as usize), who, "a finite logit on the true class");
            }
        }
        if let Some((i, who, what)) = bad {
            return Err(Error::NonFinite(format!("{who} needs {what}; logits{of}[{i}] ({}) is -inf", at(i))));
        }
    }
    Ok(())
}

/// `[N, S...]` of a logits shape `[N, C, S...]`.
fn label_dims(shape: &[usize]) -> Vec<usize> {
    std::iter::once(shape[0]).chain(shape[2..].iter().copied()).collect()
}

/// `t` of shape `from` resized to `to` (same rank; the first dims, N and C, equal) by nearest
/// neighbours: per spatial axis, output index i reads `min(floor((2i+1) in / (2 out)), in-1)`.
fn resize<T: Copy>(t: &[T], from: &[usize], to: &[usize]) -> Vec<T> {
    // on the equal leading dims the formula is the identity
    let axes: Vec<Vec<usize>> = from
        .iter()
        .zip(to)
        .map(|(&i_n, &o_n)| {
            // in u64: (2o+1) in passes 2^32 on 32-bit targets (wasm32) at long axes
            let (i64n, o64n) = (i_n as u64, o_n as u64);
            (0..o_n).map(|o| ((2 * o as u64 + 1) * i64n / (2 * o64n)).min(i64n - 1) as usize).collect()
        })
        .collect();
    let total: usize = to.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..total {
        // source offset of output index `idx`
        let mut off = 0;
        for d in 0..to.len() {
            off = off * from[d] + axes[d][idx[d]];
        }
        out.push(t[off]);
        for d in (0..to.len()).rev() {
            idx[d] += 1;
            if idx[d] < to[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// The most elements an input may have, 2^31 - 1: the shaders index elements in u32 and the
/// Lovász payloads keep bit 31 for the foreground flag.
pub(crate) const MAX_ELEMENTS: usize = u32::MAX as usize / 2;

/// Checks a logits shape against the mode and returns its element count.
pub(crate) fn check_shape(shape: &[usize], mode: Mode) -> Result<usize, Error> {
    if shape.len() < 3 || shape.len() > 5 {
        return Err(Error::Shape(format!(
            "logits shape {shape:?} must be [N, C, S...] with one, two or three spatial dims"
        )));
    }
    if let Some(d) = shape.iter().position(|&d| d == 0) {
        return Err(Error::Shape(format!("logits shape {shape:?} is empty (dim {d} is 0)")));
    }
    let numel = count(shape)?;
    if numel > MAX_ELEMENTS {
        return Err(Error::Shape(format!(
            "logits shape {shape:?} has {numel} elements; at most 2^31 - 1 are supported"
        )));
    }
    let c = shape[1];
    match mode {
        Mode::Binary if c != 1 => {
            return Err(Error::Shape(format!("binary mode needs C = 1, got C = {c} (use multilabel for C > 1)")))
        }
        Mode::Multiclass if c < 2 => {
            return Err(Error::Shape(format!("multiclass mode needs C >= 2, got C = {c} (use binary for C = 1)")))
        }
        _ => {}
    }
    Ok(numel)
}

pub(crate) fn describe_index(shape: &[usize], mut i: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    format!("at index {idx:?}")
}
