//! Metrics on the CPU, from the definitions: hard predictions, integer counts, and the surface
//! distances through an exact Euclidean distance transform. This is what the tests hold the
//! device's counts and distances to.

use super::scores::Counts;
use super::surface;
use super::{Metric, MetricValue};
use crate::error::Error;
use crate::input::{Input, Target};
use crate::Mode;

/// The hard prediction of every pixel (multiclass: argmax, ties to the lowest class) or element
/// (binary, multilabel: `x >= logit_threshold`), and the target as `Some(class or 0/1)` or
/// `None` where ignored; per pixel `[N][S]` in multiclass, per element `[N][C][S]` otherwise.
pub(crate) struct Hard {
    pub pred: Vec<u32>,
    pub target: Vec<Option<u32>>,
}

pub(crate) fn hard(input: &Input<'_>, logit_threshold: f64) -> Result<Hard, Error> {
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let x = input.logits();
    match input.target() {
        Target::Labels(t) => {
            let mut pred = Vec::with_capacity(n * s);
            for ni in 0..n {
                for si in 0..s {
                    let mut best = 0;
                    for ci in 1..c {
                        if x[(ni * c + ci) * s + si] > x[(ni * c + best) * s + si] {
                            best = ci;
                        }
                    }
                    pred.push(best as u32);
                }
            }
            let target =
                t.iter().map(|&v| if Some(v) == input.ignore_index() { None } else { Some(v as u32) }).collect();
            Ok(Hard { pred, target })
        }
        Target::Dense(t) => {
            let ign = input.ignore_index().map(|k| k as f32);
            let pred = x.iter().map(|&v| u32::from(f64::from(v) >= logit_threshold)).collect();
            let target = t
                .iter()
                .enumerate()
                .map(|(i, &v)| match v {
                    _ if Some(v) == ign => Ok(None),
                    0.0 => Ok(Some(0)),
                    1.0 => Ok(Some(1)),
                    _ => Err(Error::TargetValue(format!(
                        "metrics need 0/1 targets, but target element {i} ({}) is {v}",
                        crate::input::describe_index(input.shape(), i)
                    ))),
                })
                .collect::<Result<_, _>>()?;
            Ok(Hard { pred, target })
        }
    }
}

/// The most multiclass confusion counts (N x C x C) one call keeps: 2^27, 1 GiB.
const MAX_CONFUSION_CELLS: usize = 1 << 27;

/// The integer counts of `input`'s hard predictions at the logit threshold
/// [`Metric::logit_threshold`] (binary, multilabel; multiclass takes the argmax).
pub fn counts(input: &Input<'_>, logit_threshold: f64) -> Result<Counts, Error> {
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    if input.mode() == Mode::Multiclass {
        // each image's C x C confusion matrix is kept: bounded before it is allocated
        let cells = n as u128 * c as u128 * c as u128;
        if cells > MAX_CONFUSION_CELLS as u128 {
            return Err(Error::Unsupported(format!(
                "the confusion matrices of {n} images of {c} classes would take {cells} counts (N x C x C); a call \
                 counts at most {MAX_CONFUSION_CELLS}: count fewer images at a time"
            )));
        }
    }
    let h = hard(input, logit_threshold)?;
    let mut out = Counts::zeroed(input.mode(), c, n);
    if input.mode() == Mode::Multiclass {
        for ni in 0..n {
            for si in 0..s {
                let Some(t) = h.target[ni * s + si] else { continue };
                let p = h.pred[ni * s + si];
                for k in 0..c as u32 {
                    let which = match (p == k, t == k) {
                        (true, true) => 0,
                        (true, false) => 1,
                        (false, true) => 2,
                        (false, false) => 3,
                    };
                    out.add(ni, k as usize, which, 1);
                }
                out.add_confusion(ni, t as usize, p as usize);
            }
        }
    } else {
        for ni in 0..n {
            for ci in 0..c {
                for si in 0..s {
                    let e = (ni * c + ci) * s + si;
                    let Some(t) = h.target[e] else { continue };
                    let which = match (h.pred[e] == 1, t == 1) {
                        (true, true) => 0,
                        (true, false) => 1,
                        (false, true) => 2,
                        (false, false) => 3,
                    };
                    out.add(ni, ci, which, 1);
                }
            }
        }
    }
    Ok(out)
}

/// One metric of `input`, on the CPU.
pub fn evaluate(input: &Input<'_>, metric: &Metric) -> Result<MetricValue, Error> {
    metric.check_input(input)?;
    if metric.name.is_surface() {
        return surface::evaluate(input, metric);
    }
    counts(input, metric.input_threshold(input.kind()))?.evaluate(metric)
}
