//! Integer counts and the metrics made of them: the six scores, gdice, counts and confusion, with
//! every reduction.

use super::{AbsentWeight, GDiceWeight, Matrix, Metric, MetricName, MetricValue, Preset, Reduction};
use crate::error::Error;
use crate::Mode;

/// The integer counts of a batch's hard predictions: per image and class `TP, FP, FN, TN`
/// (one-vs-rest, ignored pixels in none), and in multiclass mode the per-image confusion matrix
/// (target row, prediction column). Counts of two parts of a batch join exactly
/// ([`Counts::append`]), so a dataset, several adapters or processes give the numbers of one
/// batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    mode: Mode,
    classes: usize,
    images: usize,
    /// `[N][C][4]`
    stats: Vec<u64>,
    /// multiclass: `[N][C][C]`
    confusion: Vec<u64>,
}

impl Counts {
    pub(crate) fn zeroed(mode: Mode, classes: usize, images: usize) -> Counts {
        let conf = if mode == Mode::Multiclass { images * classes * classes } else { 0 };
        Counts { mode, classes, images, stats: vec![0; images * classes * 4], confusion: vec![0; conf] }
    }

    /// Images counted.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Channels (classes) C.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The mode of the predictions counted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `[TP, FP, FN, TN]` of image `n`, class `c`; `None` past the images or classes counted.
    pub fn get(&self, n: usize, c: usize) -> Option<[u64; 4]> {
        (n < self.images && c < self.classes).then(|| self.at(n, c))
    }

    fn at(&self, n: usize, c: usize) -> [u64; 4] {
        let o = (n * self.classes + c) * 4;
        [self.stats[o], self.stats[o + 1], self.stats[o + 2], self.stats[o + 3]]
    }

    /// Counts from the device's confusion totals: per image `C x C` (multiclass: target row,
    /// prediction column) or per (image, channel) `[target][prediction]` 2 x 2.
    pub(crate) fn from_confusion(mode: Mode, classes: usize, images: usize, cells: &[u64]) -> Counts {
        let mut out = Counts::zeroed(mode, classes, images);
        let c = classes;
        for n in 0..images {
            if mode == Mode::Multiclass {
                let m = &cells[n * c * c..(n + 1) * c * c];
                out.confusion[n * c * c..(n + 1) * c * c].copy_from_slice(m);
                let total: u64 = m.iter().sum();
                for k in 0..c {
                    let tp = m[k * c + k];
                    let col: u64 = (0..c).map(|t| m[t * c + k]).sum();
                    let row: u64 = (0..c).map(|p| m[k * c + p]).sum();
                    let (fp, fn_) = (col - tp, row - tp);
                    out.stats[(n * c + k) * 4..(n * c + k) * 4 + 4].copy_from_slice(&[
                        tp,
                        fp,
                        fn_,
                        total - tp - fp - fn_,
                    ]);
                }
            } else {
                for k in 0..c {
                    let q = &cells[(n * c + k) * 4..(n * c + k) * 4 + 4];
                    // [target 0: pred 0, pred 1; target 1: pred 0, pred 1] = [TN, FP, FN, TP]
                    out.stats[(n * c + k) * 4..(n * c + k) * 4 + 4].copy_from_slice(&[q[3], q[1], q[2], q[0]]);
                }
            }
        }
        out
    }

    pub(crate) fn add(&mut self, n: usize, c: usize, which: usize, by: u64) {
        self.stats[(n * self.classes + c) * 4 + which] += by;
    }

    pub(crate) fn add_confusion(&mut self, n: usize, target: usize, pred: usize) {
        self.confusion[(n * self.classes + target) * self.classes + pred] += 1;
    }

    /// Puts the images of `other` (the next part of the batch) after these.
    pub fn append(&mut self, other: &Counts) -> Result<(), Error> {
        if self.mode != other.mode || self.classes != other.classes {
            return Err(Error::Input(format!(
                "counts of {} {} classes cannot join counts of {} {} classes",
                self.mode, self.classes, other.mode, other.classes
            )));
        }
        self.stats.extend_from_slice(&other.stats);
        self.confusion.extend_from_slice(&other.confusion);
        self.images += other.images;
        Ok(())
    }

    /// The counts of every image summed into one row, with the summed confusion matrix when
    /// `confusion` (else none): what the reductions over the whole set (micro, macro, weighted,
    /// a summed confusion matrix) read, in a size that does not grow with the images.
    pub(crate) fn summed(&self, confusion: bool) -> Counts {
        let (c, cc) = (self.classes, self.classes * self.classes);
        let mut out = Counts::zeroed(self.mode, c, 1);
        self.stats.chunks_exact(c * 4).for_each(|row| add(&mut out.stats, row));
        if confusion && cc > 0 {
            self.confusion.chunks_exact(cc).for_each(|m| add(&mut out.confusion, m));
        } else {
            out.confusion.clear();
        }
        out
    }

    /// The integers kept.
    #[cfg(test)]
    pub(crate) fn cells(&self) -> usize {
        self.stats.len() + self.confusion.len()
    }

    /// These counts without the per-image confusion matrices (the stats derived from them stay).
    pub(crate) fn without_confusion(&self) -> Counts {
        Counts { confusion: Vec::new(), ..self.clone() }
    }

    /// Adds `other`'s counts cell by cell (two [`Counts::summed`] of the same kind).
    pub(crate) fn add_cells(&mut self, other: &Counts) -> Result<(), Error> {
        if self.mode != other.mode
            || self.classes != other.classes
            || self.stats.len() != other.stats.len()
            || self.confusion.len() != other.confusion.len()
        {
            return Err(Error::Input(format!(
                "counts of {} {} classes cannot be added to counts of {} {} classes",
                other.mode, other.classes, self.mode, self.classes
            )));
        }
        add(&mut self.stats, &other.stats);
        add(&mut self.confusion, &other.confusion);
        Ok(())
    }

    /// The value of a count-based metric (not a surface metric) on these counts.
    pub fn evaluate(&self, m: &Metric) -> Result<MetricValue, Error> {
        m.check(self.mode, self.classes)?;
        let ks = m.selected(self.classes);
        let none = MetricValue { value: None, per_class: None, per_image: None, matrix: None };
        match m.name {
            MetricName::Counts => {
                let data = (0..self.images).flat_map(|n| ks.iter().flat_map(move |&k| self.at(n, k))).collect();
                Ok(MetricValue { matrix: Some(Matrix { shape: vec![self.images, ks.len(), 4], data }), ..none })
            }
            MetricName::Confusion => Ok(MetricValue { matrix: Some(self.confusion_matrix(m.reduction)), ..none }),
            MetricName::GDice => Ok(self.gdice(m, &ks)),
            n if n.is_score() => Ok(self.score(m, &ks)),
            _ => {
                Err(Error::Metric { text: m.text().to_string(), msg: "a surface metric is not made of counts".into() })
            }
        }
    }

    fn confusion_matrix(&self, r: Reduction) -> Matrix {
        let per_image = r == Reduction::None;
        let (n, c) = (self.images, self.classes);
        // one image's table
        let table = |i: usize| -> (Vec<usize>, Vec<u64>) {
            match self.mode {
                Mode::Multiclass => (vec![c, c], self.confusion[i * c * c..(i + 1) * c * c].to_vec()),
                _ => {
                    let cells: Vec<u64> = (0..c)
                        .flat_map(|k| {
                            let [tp, fp, fn_, tn] = self.at(i, k);
                            [tn, fp, fn_, tp]
                        })
                        .collect();
                    let shape = if self.mode == Mode::Binary { vec![2, 2] } else { vec![c, 2, 2] };
                    (shape, cells)
                }
            }
        };
        let (shape, first) = table(0);
        if per_image {
            let data = (0..n).flat_map(|i| table(i).1).collect();
            Matrix { shape: std::iter::once(n).chain(shape).collect(), data }
        } else {
            let mut sum = vec![0u64; first.len()];
            for i in 0..n {
                sum.iter_mut().zip(table(i).1).for_each(|(a, b)| *a += b);
            }
            Matrix { shape, data: sum }
        }
    }

    /// Counts summed over images `imgs` and classes `ks`, as f64.
    fn sum(&self, imgs: &[usize], ks: &[usize]) -> [f64; 4] {
        let mut s = [0u64; 4];
        for &n in imgs {
            for &k in ks {
                let c = self.at(n, k);
                (0..4).for_each(|j| s[j] += c[j]);
            }
        }
        s.map(|v| v as f64)
    }

    fn score(&self, m: &Metric, ks: &[usize]) -> MetricValue {
        let imgs: Vec<usize> = (0..self.images).collect();
        let one = |c: [f64; 4], micro: bool| score_of(m, c, micro);
        let grid = || -> Vec<Vec<f64>> {
            imgs.iter().map(|&n| ks.iter().map(|&k| one(self.sum(&[n], &[k]), false)).collect()).collect()
        };
        let none = MetricValue { value: None, per_class: None, per_image: None, matrix: None };
        let e = m.empty_mean;
        match m.reduction {
            Reduction::Micro => MetricValue { value: Some(one(self.sum(&imgs, ks), true)), ..none },
            Reduction::Macro => {
                let per: Vec<f64> = ks.iter().map(|&k| one(self.sum(&imgs, &[k]), false)).collect();
                if m.preset == Preset::Monai {
                    // MONAI's mean_batch of ConfusionMatrixMetric: the per-class scores
                    MetricValue { per_class: Some(per), ..none }
                } else {
                    MetricValue { value: Some(nanmean(&per, e)), ..none }
                }
            }
            Reduction::Weighted => {
                let w = m.weights.clone().unwrap_or_default();
                // (one per class, or one per selected class: Metric::weights)
                let per_class = w.len() == self.classes;
                let (mut num, mut den) = (0.0, 0.0);
                for (j, &k) in ks.iter().enumerate() {
                    let s = one(self.sum(&imgs, &[k]), false);
                    let wk = w.get(if per_class { k } else { j }).copied().unwrap_or(0.0);
                    if !s.is_nan() {
                        num += wk * s;
                        den += wk;
                    }
                }
                MetricValue { value: Some(if den > 0.0 { num / den } else { e }), ..none }
            }
            Reduction::MicroImagewise => {
                let per: Vec<f64> = imgs.iter().map(|&n| one(self.sum(&[n], ks), false)).collect();
                MetricValue { value: Some(nanmean(&per, e)), ..none }
            }
            Reduction::MacroImagewise => {
                let all: Vec<f64> = grid().concat();
                MetricValue { value: Some(nanmean(&all, e)), ..none }
            }
            r => reduce_grid(grid(), r, e),
        }
    }

    fn gdice(&self, m: &Metric, ks: &[usize]) -> MetricValue {
        reduce_images(self.gdice_per_image(m, ks), m)
    }

    /// `gdice` of each image (torchmetrics' absent weights depend on the images of this call).
    pub(crate) fn gdice_per_image(&self, m: &Metric, ks: &[usize]) -> Vec<f64> {
        let (n_img, kk) = (self.images, ks.len());
        // w[n][k] rounded to f32, infinite where the class is absent from the image's target
        let mut w: Vec<Vec<f64>> = (0..n_img)
            .map(|n| {
                ks.iter()
                    .map(|&k| {
                        let [tp, _, fn_, _] = self.at(n, k);
                        let g = (tp + fn_) as f64;
                        let x = match m.weight {
                            GDiceWeight::Square => 1.0 / (g * g),
                            GDiceWeight::Simple => 1.0 / g,
                            GDiceWeight::Uniform => 1.0,
                        };
                        f64::from(x as f32)
                    })
                    .collect()
            })
            .collect();
        match m.absent_weight {
            AbsentWeight::ImageMax => {
                for row in w.iter_mut() {
                    let max = row.iter().copied().filter(|x| x.is_finite()).fold(f64::NEG_INFINITY, f64::max);
                    let fill = if max.is_finite() { max } else { 1.0 };
                    row.iter_mut().filter(|x| !x.is_finite()).for_each(|x| *x = fill);
                }
            }
            AbsentWeight::Torchmetrics => {
                // M_j: class j's largest finite weight over the images of the call (0 if none)
                let mj: Vec<f64> = (0..kk)
                    .map(|j| (0..n_img).map(|n| w[n][j]).filter(|x| x.is_finite()).fold(0.0, f64::max))
                    .collect();
                for (n, row) in w.iter_mut().enumerate() {
                    for (k, x) in row.iter_mut().enumerate() {
                        if !x.is_finite() {
                            *x = mj[((n * kk + k) / n_img).min(kk - 1)];
                        }
                    }
                }
            }
        }
        (0..n_img)
            .map(|n| {
                let (mut num, mut den) = (0.0, 0.0);
                for (j, &k) in ks.iter().enumerate() {
                    let [tp, fp, fn_, _] = self.at(n, k).map(|v| v as f64);
                    num += 2.0 * w[n][j] * tp;
                    den += w[n][j] * (2.0 * tp + fp + fn_);
                }
                if den == 0.0 {
                    m.zero_division
                } else {
                    num / den
                }
            })
            .collect()
    }
}

/// `a += b`, cell by cell.
fn add(a: &mut [u64], b: &[u64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// One group's score from its counts `[TP, FP, FN, TN]`: 0/0 is `zero_division` (NaN under
/// micro); with `ignore_empty`, an empty target is NaN.
fn score_of(m: &Metric, [tp, fp, fn_, tn]: [f64; 4], micro: bool) -> f64 {
    if m.ignore_empty && tp + fn_ == 0.0 {
        return f64::NAN;
    }
    let (num, den) = match m.name {
        MetricName::Iou => (tp, tp + fp + fn_),
        MetricName::Dice => (2.0 * tp, 2.0 * tp + fp + fn_),
        MetricName::Precision => (tp, tp + fp),
        MetricName::Recall => (tp, tp + fn_),
        MetricName::Specificity => (tn, tn + fp),
        _ => (tp + tn, tp + fp + fn_ + tn),
    };
    if den == 0.0 {
        if micro {
            f64::NAN
        } else {
            m.zero_division
        }
    } else {
        num / den
    }
}

/// The mean of the entries that are not NaN; `empty` when there is none.
pub(crate) fn nanmean(v: &[f64], empty: f64) -> f64 {
    let (s, k) = v.iter().filter(|x| !x.is_nan()).fold((0.0, 0usize), |(s, k), x| (s + x, k + 1));
    if k == 0 {
        empty
    } else {
        s / k as f64
    }
}

/// The per-(image, class) reductions (none, mean, mean_batch, mean_channel, sum, macro-imagewise)
/// of a grid `[N][K]`.
pub(crate) fn reduce_grid(grid: Vec<Vec<f64>>, r: Reduction, empty: f64) -> MetricValue {
    let none = MetricValue { value: None, per_class: None, per_image: None, matrix: None };
    let k = grid.first().map_or(0, Vec::len);
    match r {
        Reduction::None => MetricValue { per_image: Some(grid), ..none },
        Reduction::MeanBatch => {
            let per = (0..k).map(|j| nanmean(&grid.iter().map(|row| row[j]).collect::<Vec<_>>(), empty)).collect();
            MetricValue { per_class: Some(per), ..none }
        }
        Reduction::MeanChannel => {
            MetricValue { per_image: Some(grid.iter().map(|row| vec![nanmean(row, empty)]).collect()), ..none }
        }
        Reduction::Sum => MetricValue { value: Some(grid.iter().flatten().filter(|x| !x.is_nan()).sum()), ..none },
        Reduction::MacroImagewise => MetricValue { value: Some(nanmean(&grid.concat(), empty)), ..none },
        // mean (MONAI): per image over its classes, then over the images that have one
        _ => {
            let per: Vec<f64> = grid.iter().map(|row| nanmean(row, f64::NAN)).collect();
            MetricValue { value: Some(nanmean(&per, empty)), ..none }
        }
    }
}

/// The reductions of per-image values (`gdice`): mean over images, sum, or the values
/// (`mean_channel`).
pub(crate) fn reduce_images(per: Vec<f64>, m: &Metric) -> MetricValue {
    let none = MetricValue { value: None, per_class: None, per_image: None, matrix: None };
    match m.reduction {
        Reduction::Sum => MetricValue { value: Some(per.iter().filter(|x| !x.is_nan()).sum()), ..none },
        Reduction::MeanChannel => MetricValue { per_image: Some(per.iter().map(|&x| vec![x]).collect()), ..none },
        _ => MetricValue { value: Some(nanmean(&per, m.empty_mean)), ..none },
    }
}
