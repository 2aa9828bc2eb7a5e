//! Losses and metrics of one input in one evaluation: the hard predictions' confusion counts come
//! from the losses' own statistics pass (integer atomics per tile, then a fixed-order 64-bit
//! reduction), so an evaluation of losses and count metrics reads the input once.

use super::reference;
use super::scores::Counts;
use super::surface::{self, distance_key, Distances};
use super::{Metric, MetricValue};
use crate::engine::{check_hard_labels, decode, reference_evaluation, words, Engine, Evaluation};
use crate::error::Error;
use crate::expr::LossExpr;
use crate::gpu::context::Gpu;
use crate::gpu::eval::GradTo;
use crate::gpu::record::Recording;
use crate::input::Input;
use crate::plan::StatsPlan;
use crate::split::Piece;
use crate::stats::host_dev_input;
use crate::Mode;

/// The smallest f32 logit `x` with `f64(x) >= t`: the device's `x >= thr` in f32 is then the
/// reference's comparison in f64, at the boundary too.
pub(crate) fn f32_threshold(t: f64) -> f32 {
    let x = t as f32;
    if f64::from(x) < t {
        x.next_up()
    } else {
        x
    }
}

/// The most classes whose C x C confusion cells the device counts per tile.
const MAX_COUNT_CLASSES: usize = 256;

/// Whether `gpu` counts the confusion cells of `input` (else the reference does): up to
/// [`MAX_COUNT_CLASSES`] classes in multiclass mode, and where the counts fit one binding, their
/// 64-bit totals per (image, cell) and their partials per count block (at least 2048 pixels each,
/// `gpu::count_span`), which many small images of many classes can pass.
fn device_counts(gpu: &Gpu, input: &Input<'_>) -> bool {
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let softmax = input.mode() == Mode::Multiclass;
    let cells = (if softmax { c * c } else { c * 4 }) as u64;
    let max = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size);
    let totals = (n as u64).saturating_mul(cells).saturating_mul(8);
    let partials = (n as u64).saturating_mul(s.div_ceil(2048) as u64).saturating_mul(cells).saturating_mul(4);
    (!softmax || c <= MAX_COUNT_CLASSES) && totals.max(partials) <= max
}

/// Counts from the device's 64-bit confusion totals (low, high u32 words).
fn counts_of(bytes: &[u8], mode: Mode, c: usize, n: usize) -> Counts {
    let w = words(bytes);
    let cells: Vec<u64> = w.chunks_exact(2).map(|p| u64::from(p[0]) | (u64::from(p[1]) << 32)).collect();
    Counts::from_confusion(mode, c, n, &cells)
}

/// Losses and metrics of one evaluation, each metric with its own result.
pub type LossesAndMetrics = (Vec<Evaluation>, Vec<Result<MetricValue, Error>>);

impl Engine {
    /// Evaluates `exprs` (with gradients when `grads`) and `metrics` on `input`: the losses and
    /// the count metrics (scores, gdice, counts, confusion) in one submission, the counts from
    /// the losses' statistics pass, one more counting pass per further binary threshold; the
    /// surface metrics (hd, assd, nsd) take boundaries and distance transforms on the device, in
    /// a submission (and a wait) of their own per set of classes, threshold and spacing. A
    /// metric that does not fit the input is an error of its own entry. The metrics of an input
    /// past the device's binding limit, of more than 256 classes (counts), and of the CPU engine
    /// run on the f64 reference.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), segloss::Error> {
    /// use segloss::metrics::Metric;
    /// use segloss::{Engine, Input, LossExpr, Mode};
    /// let engine = Engine::new_blocking()?;
    /// let logits = vec![0.3f32; 2 * 64 * 64];
    /// let target = vec![1.0f32; 2 * 64 * 64];
    /// let input = Input::dense(&logits, &target, &[2, 1, 64, 64], Mode::Binary)?;
    /// let loss: LossExpr = "bce+dice".parse()?;
    /// let metrics: Vec<Metric> = vec!["iou".parse()?, "dice@monai".parse()?];
    /// let (losses, scores) = engine.evaluate_with_metrics_blocking(&input, &[loss], true, &metrics)?;
    /// println!("loss {} iou {:?}", losses[0].value, scores[0].as_ref().map(|v| v.value));
    /// # Ok(()) }
    /// ```
    pub async fn evaluate_with_metrics(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
        metrics: &[Metric],
    ) -> Result<LossesAndMetrics, Error> {
        if input.levels() > 1 || exprs.iter().any(|e| e.deep.is_some()) {
            // deep supervision: the losses over the levels, the metrics of level 0's prediction
            let evals = self.evaluate(input, exprs, grads).await?;
            let (_, values) = Box::pin(self.evaluate_with_metrics(&input.level(0)?, &[], false, metrics)).await?;
            return Ok((evals, values));
        }
        let (mode, c) = (input.mode(), input.classes());
        for e in exprs {
            e.check_input(mode, c, input.kind())?;
        }
        let checked: Vec<Result<&Metric, Error>> = metrics.iter().map(|m| m.check_input(input).map(|_| m)).collect();
        let binary_hard = mode == Mode::Multiclass || input.hard_labels();
        // (the CPU engine's counts are the reference's anyway)
        let device_counts = self.gpu_ref().is_some_and(|g| device_counts(g, input));
        // the count thresholds: one for multiclass (the argmax), one per distinct binary threshold
        let mut thresholds: Vec<f32> = Vec::new();
        for m in checked.iter().flatten().filter(|m| !m.name.is_surface()) {
            let t = if mode == Mode::Multiclass { 0.0 } else { f32_threshold(m.input_threshold(input.kind())) };
            if binary_hard && device_counts && !thresholds.iter().any(|x| x.to_bits() == t.to_bits()) {
                thresholds.push(t);
            }
        }
        let on_cpu = |m: &Metric| reference::evaluate(input, m);
        let gpu = match self.gpu_ref() {
            Some(g) => g,
            None => {
                let evals = exprs.iter().map(|e| reference_evaluation(input, e, grads)).collect::<Result<_, _>>()?;
                return Ok((evals, checked.into_iter().map(|m| m.and_then(on_cpu)).collect()));
            }
        };
        check_hard_labels(exprs, || input.first_soft(), input.shape())?;
        crate::input::check_neg_inf(input, exprs)?;
        let prep = self.prepare(input.clone())?;
        let whole = prep.buffers().filter(|(_, tb)| {
            crate::stats::pieces_reason(gpu, input.shape(), mode, input.kind(), exprs, tb.size()).is_none()
        });
        let Some((lb, tb)) = whole else {
            // past the binding limit, or more images than a dispatch holds: the losses in
            // pieces, the metrics on the CPU reference
            let evals = self.evaluate(input, exprs, grads).await?;
            return Ok((evals, checked.into_iter().map(|m| m.and_then(on_cpu)).collect()));
        };
        let n = input.batch();
        let softmax = mode == Mode::Multiclass;
        let dev = |rec: &mut Recording| host_dev_input(rec, input, Piece::Images { from: 0, to: n }, lb, tb);
        let mut rec = Recording::new(&gpu.limits);
        let inp = dev(&mut rec);
        let to = vec![if grads { GradTo::Host } else { GradTo::Skip }; exprs.len()];
        let (mut recs, first) =
            gpu.record_eval_counts(&mut rec, &inp, exprs, &to, true, thresholds.first().copied())?;
        let r = recs.swap_remove(0);
        let cells = if softmax { c * c } else { c * 4 };
        let bytes = (n * cells * 8) as u64;
        let mut totals = Vec::new();
        if let Some(t) = first {
            totals.push(t);
        }
        for &t in thresholds.iter().skip(1) {
            let status = gpu.record_status(&mut rec)?;
            let inp = dev(&mut rec);
            let (_, tot) =
                gpu.record_stats_counts(&mut rec, &inp, &StatsPlan::default(), status, Some(t), false, None)?;
            totals.extend(tot);
        }
        let mut reads = Vec::new();
        for t in totals {
            let rb = rec.readback(bytes, "confusion counts")?;
            rec.copy(t.sub(0, bytes), rb);
            reads.push(rec.readbacks() - 1);
        }
        let fut = gpu.execute(rec);
        gpu.note_wait();
        let data = fut.await?;
        let vi = r.values_read.ok_or_else(|| Error::Gpu("internal: values were not read".into()))?;
        let evals = decode(&words(&data[vi]), &r, input.shape(), exprs, &data)?;
        let counts: Vec<Counts> = reads.iter().map(|&ri| counts_of(&data[ri], mode, c, n)).collect();
        let mut values = Vec::with_capacity(checked.len());
        // the surface metrics: boundaries and distance transform on the device, once for the
        // metrics of the same classes, threshold and spacing, on the input already uploaded
        let mut distances: Vec<(_, Distances)> = Vec::new();
        for m in checked {
            let v = match m {
                Err(e) => Err(e),
                Ok(m) if m.name.is_surface() => {
                    let at = match distance_key(m, c, input.shape().len() - 2) {
                        Err(e) => Err(e),
                        Ok(key) => match distances.iter().position(|(k, _)| *k == key) {
                            Some(i) => Ok(i),
                            None => self.surface_distances(input, m, Some(&prep)).await.map(|d| {
                                distances.push((key, d));
                                distances.len() - 1
                            }),
                        },
                    };
                    at.map(|i| {
                        super::scores::reduce_grid(surface::values(m, &distances[i].1), m.reduction, m.empty_mean)
                    })
                }
                // soft targets: the reference names the bad value; too many classes to count
                // on the device
                Ok(m) if !binary_hard || !device_counts => on_cpu(m),
                Ok(m) => {
                    let t = if softmax { 0.0 } else { f32_threshold(m.input_threshold(input.kind())) };
                    let i = thresholds.iter().position(|x| x.to_bits() == t.to_bits()).unwrap_or(0);
                    counts.get(i).ok_or_else(|| Error::Gpu("internal: no counts".into())).and_then(|c| c.evaluate(m))
                }
            };
            values.push(v);
        }
        Ok((evals, values))
    }

    /// The integer counts of `input`'s hard predictions at `metric`'s threshold, from a
    /// statistics pass on the device (the f64 reference on the CPU engine and past the binding
    /// limit): what a [`super::Running`] metric accumulates.
    pub async fn counts(&self, input: &Input<'_>, metric: &Metric) -> Result<Counts, Error> {
        metric.check_input(input)?;
        let hard = input.mode() == Mode::Multiclass || input.hard_labels();
        let prep = match self.gpu_ref() {
            Some(g) if hard && device_counts(g, input) => Some(self.prepare(input.clone())?),
            _ => None,
        };
        let (Some(gpu), Some(prep)) = (self.gpu_ref(), prep) else {
            return reference::counts(input, metric.input_threshold(input.kind()));
        };
        let Some((lb, tb)) = prep.buffers() else {
            return reference::counts(input, metric.input_threshold(input.kind()));
        };
        let (n, c) = (input.batch(), input.classes());
        let softmax = input.mode() == Mode::Multiclass;
        let t = if softmax { 0.0 } else { f32_threshold(metric.input_threshold(input.kind())) };
        let mut rec = Recording::new(&gpu.limits);
        let status = gpu.record_status(&mut rec)?;
        let inp = host_dev_input(&mut rec, input, Piece::Images { from: 0, to: n }, lb, tb);
        let (_, tot) = gpu.record_stats_counts(&mut rec, &inp, &StatsPlan::default(), status, Some(t), false, None)?;
        let tot = tot.ok_or_else(|| Error::Gpu("internal: no counts".into()))?;
        let bytes = (n * if softmax { c * c } else { c * 4 } * 8) as u64;
        let rb = rec.readback(bytes, "confusion counts")?;
        rec.copy(tot.sub(0, bytes), rb);
        let fut = gpu.execute(rec);
        gpu.note_wait();
        let data = fut.await?;
        Ok(counts_of(&data[0], input.mode(), c, n))
    }

    /// Blocking [`Engine::counts`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn counts_blocking(&self, input: &Input<'_>, metric: &Metric) -> Result<Counts, Error> {
        self.block(self.counts(input, metric))
    }

    /// Blocking [`Engine::evaluate_with_metrics`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_with_metrics_blocking(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
        metrics: &[Metric],
    ) -> Result<LossesAndMetrics, Error> {
        self.block(self.evaluate_with_metrics(input, exprs, grads, metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::f32_threshold;

    #[test]
    fn the_f32_threshold_is_the_f64_comparison() {
        for t in [0.3f64, 0.5, 0.7, 0.01, 0.999] {
            let thr = (t / (1.0 - t)).ln();
            let x = f32_threshold(thr);
            assert!(f64::from(x) >= thr);
            assert!(f64::from(x.next_down()) < thr);
        }
    }
}
