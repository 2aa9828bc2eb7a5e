//! Metrics over many batches: integer counts add exactly and per-image values are kept in order,
//! so a dataset evaluated batch by batch, or its parts on several adapters or processes, gives the
//! numbers of one big batch.

use super::scores::{reduce_grid, reduce_images, Counts};
use super::{AbsentWeight, Metric, MetricName, MetricValue, Reduction};
use crate::engine::Engine;
use crate::error::Error;
use crate::input::{Input, Mode};

/// A metric accumulated over batches: [`Running::update`] (or [`Running::add_counts`]) per
/// batch, [`Running::merge`] to join two runs (the second's images after the first's), and
/// [`Running::compute`] for the value.
///
/// What a run keeps does not grow with the images where the metric does not need them one by
/// one: the micro, macro and weighted scores and a summed confusion matrix keep the counts summed
/// over the images. The other count metrics keep the integer counts of every image (C x 4 each;
/// `confusion:reduction=none` also each image's C x C matrix), the surface metrics each image's
/// per-class values, and torchmetrics' `gdice` each image's score as it was computed in its batch
/// (its weights of absent classes depend on the batch, as in torchmetrics).
///
/// ```
/// use segloss::metrics::{Metric, Running};
/// use segloss::{Engine, Input, Mode};
/// let engine = Engine::cpu(None);
/// let mut iou = Running::new("iou:reduction=macro".parse::<Metric>().unwrap());
/// for seed in 0..3 {
///     let logits: Vec<f32> = (0..32).map(|i| ((i * 7 + seed) % 5) as f32 - 2.0).collect();
///     let target: Vec<f32> = (0..32).map(|i| ((i + seed) % 3 == 0) as u8 as f32).collect();
///     let input = Input::dense(&logits, &target, &[2, 1, 4, 4], Mode::Binary).unwrap();
///     iou.update_blocking(&engine, &input).unwrap();
/// }
/// assert_eq!(iou.images(), 6);
/// let v = iou.compute().unwrap().value.unwrap();
/// assert!((0.0..=1.0).contains(&v));
/// ```
#[derive(Clone, Debug)]
pub struct Running {
    metric: Metric,
    counts: Option<Counts>,
    /// Per image: the surface values of its classes, or its gdice score.
    rows: Vec<Vec<f64>>,
    images: usize,
    /// The mode and class count of the images so far: every batch must have the same.
    of: Option<(Mode, usize)>,
}

impl Running {
    /// An empty run of `metric`.
    pub fn new(metric: Metric) -> Running {
        Running { metric, counts: None, rows: Vec::new(), images: 0, of: None }
    }

    /// The metric.
    pub fn metric(&self) -> &Metric {
        &self.metric
    }

    /// Images so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Checks that images of a `mode` input of `classes` classes can join the run.
    fn check_joins(&self, of: Option<(Mode, usize)>) -> Result<(), Error> {
        match (self.of, of) {
            (Some((m, c)), Some((m2, c2))) if (m, c) != (m2, c2) => Err(Error::Input(format!(
                "'{}': images of {m2} {c2} classes cannot join a run of {m} {c} classes",
                self.metric.text()
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the metric reads only the counts summed over the images.
    fn summed(&self) -> bool {
        match self.metric.name {
            MetricName::Confusion => self.metric.reduction != Reduction::None,
            n if n.is_score() => {
                matches!(self.metric.reduction, Reduction::Micro | Reduction::Macro | Reduction::Weighted)
            }
            _ => false,
        }
    }

    /// Joins `counts` (already in the form this run keeps) to the run's.
    fn keep(&mut self, counts: Counts) -> Result<(), Error> {
        let summed = self.summed();
        match &mut self.counts {
            None => self.counts = Some(counts),
            Some(c) if summed => c.add_cells(&counts)?,
            Some(c) => c.append(&counts)?,
        }
        Ok(())
    }

    fn per_image_rows(&self) -> bool {
        self.metric.name.is_surface()
            || (self.metric.name == MetricName::GDice && self.metric.absent_weight == AbsentWeight::Torchmetrics)
    }

    /// Adds a batch: its counts from `engine` (the statistics pass on a GPU), or its surface
    /// values (boundaries and distance transforms on a GPU). Returns the metric of this batch
    /// alone; a batch that fails is not added.
    pub async fn update(&mut self, engine: &Engine, input: &Input<'_>) -> Result<MetricValue, Error> {
        self.metric.check_input(input)?;
        self.check_joins(Some((input.mode(), input.classes())))?;
        if self.metric.name.is_surface() {
            let grid = engine.surface_grid(input, &self.metric).await?;
            let value = reduce_grid(grid.clone(), self.metric.reduction, self.metric.empty_mean);
            self.rows.extend(grid);
            self.images += input.batch();
            self.of = Some((input.mode(), input.classes()));
            return Ok(value);
        }
        let counts = engine.counts(input, &self.metric).await?;
        let value = counts.evaluate(&self.metric)?;
        self.add_counts(&counts)?;
        Ok(value)
    }

    /// Blocking [`Running::update`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn update_blocking(&mut self, engine: &Engine, input: &Input<'_>) -> Result<MetricValue, Error> {
        engine.block(self.update(engine, input))
    }

    /// Adds a batch's counts (of this metric's threshold), computed anywhere.
    pub fn add_counts(&mut self, counts: &Counts) -> Result<(), Error> {
        if self.metric.name.is_surface() {
            return Err(Error::Metric {
                text: self.metric.text().to_string(),
                msg: "a surface metric is not made of counts".into(),
            });
        }
        self.metric.check(counts.mode(), counts.classes())?;
        self.check_joins(Some((counts.mode(), counts.classes())))?;
        if self.per_image_rows() {
            let ks = self.metric.selected(counts.classes());
            self.rows.extend(counts.gdice_per_image(&self.metric, &ks).into_iter().map(|x| vec![x]));
        } else {
            let confusion = self.metric.name == MetricName::Confusion;
            self.keep(if self.summed() {
                counts.summed(confusion)
            } else if confusion {
                counts.clone()
            } else {
                counts.without_confusion()
            })?;
        }
        self.images += counts.images();
        self.of = Some((counts.mode(), counts.classes()));
        Ok(())
    }

    /// Puts the images of `other` (a run of the same metric) after these.
    pub fn merge(&mut self, other: &Running) -> Result<(), Error> {
        if self.metric != other.metric {
            return Err(Error::Metric {
                text: other.metric.text().to_string(),
                msg: format!("cannot merge into a run of '{}'", self.metric.text()),
            });
        }
        self.check_joins(other.of)?;
        if let Some(oc) = &other.counts {
            self.keep(oc.clone())?;
        }
        self.rows.extend(other.rows.iter().cloned());
        self.images += other.images;
        self.of = self.of.or(other.of);
        Ok(())
    }

    /// The metric's value over every image so far.
    pub fn compute(&self) -> Result<MetricValue, Error> {
        if self.images == 0 {
            return Err(Error::Input(format!("'{}' has seen no image", self.metric.text())));
        }
        if self.metric.name.is_surface() {
            return Ok(reduce_grid(self.rows.clone(), self.metric.reduction, self.metric.empty_mean));
        }
        if self.per_image_rows() {
            return Ok(reduce_images(self.rows.iter().map(|r| r[0]).collect(), &self.metric));
        }
        self.counts.as_ref().ok_or_else(|| Error::Input("no counts".into()))?.evaluate(&self.metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of `n` images of 3 classes, every pixel of image `i` predicted `i % 3` on target
    /// `(i + 1) % 3` but one.
    fn counts(n: usize) -> Counts {
        let mut cells = vec![0u64; n * 9];
        for i in 0..n {
            // [image][target][prediction]
            cells[(i * 3 + (i + 1) % 3) * 3 + i % 3] += 5;
            cells[(i * 3 + i % 3) * 3 + i % 3] += 1;
        }
        Counts::from_confusion(Mode::Multiclass, 3, n, &cells)
    }

    #[test]
    fn what_a_run_keeps_grows_with_the_images_only_where_the_metric_needs_them() {
        for (text, grows) in [
            ("iou:reduction=micro", false),
            ("dice:reduction=macro", false),
            ("recall:reduction=weighted,weights=1;2;3", false),
            ("confusion", false),
            ("confusion:reduction=none", true),
            ("iou:reduction=micro-imagewise", true),
            ("counts", true),
        ] {
            let m: Metric = text.parse().unwrap();
            let (mut run, mut one) = (Running::new(m.clone()), Running::new(m.clone()));
            for _ in 0..10 {
                run.add_counts(&counts(4)).unwrap();
            }
            one.add_counts(&counts(4)).unwrap();
            let (kept, first) = (run.counts.as_ref().unwrap().cells(), one.counts.as_ref().unwrap().cells());
            assert_eq!(kept > first, grows, "{text}: {kept} integers after 40 images, {first} after 4");
            // and the value is the one of the 40 images counted at once
            let mut all = counts(4);
            for _ in 1..10 {
                all.append(&counts(4)).unwrap();
            }
            assert_eq!(run.compute().unwrap(), all.evaluate(&m).unwrap(), "{text}");
        }
    }
}
