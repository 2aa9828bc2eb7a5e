//! Statistics that merge: the per-(image, class) sums every loss except the whole-batch Lovász is
//! made of, and the per-image Lovász segments, as a value that parts of a batch (batches of a
//! dataset, adapters, processes) compute on their own and join; the values of the joined batch
//! (`finish`) and the gradient of each part from the joined statistics (`Engine::gradient`).
//! Host inputs past the device's limits go through the same two steps piece by piece, and so do
//! buffer inputs in [`Engine::evaluate_buffers`] (`statistics_buffers` and `gradient_buffers`
//! take a part that fits one binding).

use std::sync::Arc;

use crate::engine::{
    buffer_dev_input, buffer_dev_input_unchecked, check_value, decode, grad_targets, of_expression, status_error_at,
    words, BufferInput, BufferSlice, Dest, Engine, Evaluation, GradOut, Source,
};
use crate::error::Error;
use crate::expr::LossExpr;
use crate::gpu::align;
use crate::gpu::context::Gpu;
use crate::gpu::eval::{DevInput, GradTo, LovFrom, Part, Recorded, Totals};
use crate::gpu::record::Recording;
use crate::input::{Input, InputKind, Target};
use crate::plan::{self, BlockLayout, LovaszSums, StatsPlan, Sums, K};
use crate::split::{self, Piece};
use crate::Mode;

/// The statistics of a batch for a list of expressions: per (image, class), the sums of the
/// region channels (`sum p g`, `sum p`, `sum g`, `sum p^2`, `sum g^2`, the count of valid
/// elements, the sensitivity-specificity channels) and two sums per distinct pixel loss (bce, ce,
/// focal); and per image, the value and label counts of each per-image Lovász loss. They are
/// what the losses are made of: the statistics of two parts of a batch, joined, are those of the
/// whole batch, so parts evaluated on different adapters or processes give the whole batch's
/// values ([`Statistics::finish`]) and, for each part, its gradient of the whole batch's loss
/// ([`Engine::gradient`]). Batch-pooled Dice under data parallelism needs exactly this: local
/// sums would give each process a different, wrong loss.
///
/// Joining: [`Statistics::append`] puts the images of another part after these;
/// [`Statistics::placed`] and [`Statistics::add`] do the same by addition (each part writes its
/// rows into a table of the whole batch, zero elsewhere; the sum of the tables is the whole
/// batch's), which is an all-reduce for processes ([`Statistics::as_mut_slice`]).
///
/// A Lovász loss with `per_image=false` sorts the whole batch at once: its statistics do not
/// merge, and [`Engine::statistics`] refuses it.
///
/// ```no_run
/// # fn main() -> Result<(), segloss::Error> {
/// use segloss::{Engine, Input, LossExpr, Mode};
/// let engine = Engine::new_blocking()?;
/// let expr: LossExpr = "dice+bce".parse()?;
/// // two halves of a batch of 4 images, as two data-parallel workers hold it
/// let (l0, t0) = (vec![0.5f32; 2 * 64], vec![1.0f32; 2 * 64]);
/// let (l1, t1) = (vec![-0.5f32; 2 * 64], vec![0.0f32; 2 * 64]);
/// let a = Input::dense(&l0, &t0, &[2, 1, 8, 8], Mode::Binary)?;
/// let b = Input::dense(&l1, &t1, &[2, 1, 8, 8], Mode::Binary)?;
/// let mut stats = engine.statistics_blocking(&a, &[expr.clone()])?;
/// stats.append(&engine.statistics_blocking(&b, &[expr.clone()])?)?;
/// let value = stats.finish()?[0].value; // the loss of the 4 images
/// // each half's gradient of that loss (the second half starts at image 2)
/// let g1 = engine.gradient_blocking(&b, &stats, 2, &[expr])?;
/// assert_eq!(g1[0].grad.as_ref().map(|g| g.len()), Some(128));
/// # let _ = value; Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    mode: Mode,
    /// What the input held (logits or probabilities): a gradient step takes the same.
    kind: InputKind,
    classes: usize,
    images: usize,
    exprs: Vec<LossExpr>,
    /// Channels per (image, class): 8 region channels, then two per pixel loss.
    k: usize,
    /// Segments per image of each Lovász loss (1 for the hinge, C for Lovász-Softmax).
    lov_per_image: Vec<usize>,
    /// `[images][classes][k]` sums, then each Lovász loss's `[images][segments][value, fg, bg]`.
    data: Vec<f64>,
}

impl Statistics {
    /// Zero statistics of `images` images; `lovasz_merges`: refuse a whole-batch Lovász (the
    /// public statistics; the engine's own pieces compute it elsewhere).
    fn zeroed(
        mode: Mode,
        kind: InputKind,
        classes: usize,
        images: usize,
        exprs: &[LossExpr],
        lovasz_merges: bool,
    ) -> Result<Statistics, Error> {
        if exprs.iter().any(|e| e.deep.is_some()) {
            return Err(Error::Unsupported(
                "deep(...) evaluates the levels of an Input (Engine::evaluate); statistics hold one level".into(),
            ));
        }
        if exprs.iter().any(LossExpr::unreduced) {
            return Err(Error::Unsupported(
                "reduction=none is evaluated on one engine, on a batch within one binding: its per-element entries \
                 do not come from merged statistics (split the batch yourself, or use reduction=mean)"
                    .into(),
            ));
        }
        let plan = StatsPlan::new(exprs, classes, mode == Mode::Multiclass);
        if lovasz_merges && plan.lovasz.iter().any(|l| !l.per_image) {
            return Err(Error::Unsupported(
                "lovasz with per_image=false sorts the whole batch at once: its statistics do not merge (use \
                 per_image=true, or evaluate the whole batch on one engine)"
                    .into(),
            ));
        }
        let k = plan.host_channels();
        let spi = if mode == Mode::Multiclass { classes } else { 1 };
        let lov_per_image = vec![spi; plan.lovasz.len()];
        // the table's length checked, and allocated without aborting
        let lov = lov_per_image.iter().try_fold(0usize, |a, s| a.checked_add(s.checked_mul(3)?));
        let per_image = classes.checked_mul(k).and_then(|x| x.checked_add(lov?));
        let len = per_image.and_then(|p| p.checked_mul(images)).filter(|&l| l <= isize::MAX as usize / 8).ok_or_else(
            || Error::Input(format!("statistics of a batch of {images} images do not fit this machine's memory")),
        )?;
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            Error::Input(format!("statistics of a batch of {images} images: {len} numbers could not be allocated"))
        })?;
        data.resize(len, 0.0);
        Ok(Statistics { mode, kind, classes, images, exprs: exprs.to_vec(), k, lov_per_image, data })
    }

    /// The statistics of `images` images that hold no pixel: zero everywhere. A data-parallel
    /// worker with no image of a batch contributes these (or their [`Statistics::placed`] form,
    /// which is the same) to the all-reduce, so that every worker takes part in it.
    ///
    /// ```
    /// use segloss::{InputKind, LossExpr, Mode, Statistics};
    /// let exprs: Vec<LossExpr> = vec!["dice+bce".parse().unwrap()];
    /// let none = Statistics::zeros(Mode::Binary, InputKind::Logits, 1, 4, &exprs).unwrap();
    /// assert_eq!(none.images(), 4);
    /// assert!(none.as_slice().iter().all(|&x| x == 0.0));
    /// ```
    pub fn zeros(
        mode: Mode,
        kind: InputKind,
        classes: usize,
        images: usize,
        exprs: &[LossExpr],
    ) -> Result<Statistics, Error> {
        // the images and classes of a batch (its one-pixel shape: the rules of every input)
        if images == 0 {
            return Err(Error::Shape("statistics of 0 images: a batch has at least one".into()));
        }
        crate::input::check_shape(&[1, classes, 1], mode)?;
        for e in exprs {
            e.check_input(mode, classes, kind)?;
        }
        Statistics::zeroed(mode, kind, classes, images, exprs, true)
    }

    /// Images of the batch the statistics describe.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Channels (classes) C.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The mode of the inputs.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What the inputs held, logits or probabilities: a gradient step refuses the other.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// The expressions the statistics serve.
    pub fn expressions(&self) -> &[LossExpr] {
        &self.exprs
    }

    /// Every number, `f64`: the per-(image, class) sums, then the per-image Lovász segments. Its
    /// length depends only on the images, classes and expressions.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// Every number, writable: an all-reduce (sum) of [`Statistics::placed`] tables across
    /// processes, in place.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.data
    }

    fn sums_len(&self) -> usize {
        self.images * self.classes * self.k
    }

    /// Lovász loss `g`'s segments: `[images][segments][3]`.
    fn lov_range(&self, g: usize) -> std::ops::Range<usize> {
        let start = self.sums_len() + self.lov_per_image[..g].iter().map(|s| self.images * s * 3).sum::<usize>();
        start..start + self.images * self.lov_per_image[g] * 3
    }

    fn check_joins(&self, other: &Statistics) -> Result<(), Error> {
        if self.mode != other.mode || self.classes != other.classes || self.exprs != other.exprs {
            return Err(Error::Input(format!(
                "statistics of {} {} classes for [{}] cannot join those of {} {} classes for [{}]",
                self.mode,
                self.classes,
                texts(&self.exprs),
                other.mode,
                other.classes,
                texts(&other.exprs)
            )));
        }
        if self.kind != other.kind {
            return Err(Error::Input(format!(
                "statistics of {} cannot join those of {}",
                self.kind.name(),
                other.kind.name()
            )));
        }
        Ok(())
    }

    /// Puts the images of `other` (the next part of the batch) after these.
    pub fn append(&mut self, other: &Statistics) -> Result<(), Error> {
        self.check_joins(other)?;
        let mut data = Vec::with_capacity(self.data.len() + other.data.len());
        data.extend_from_slice(&self.data[..self.sums_len()]);
        data.extend_from_slice(&other.data[..other.sums_len()]);
        for g in 0..self.lov_per_image.len() {
            data.extend_from_slice(&self.data[self.lov_range(g)]);
            data.extend_from_slice(&other.data[other.lov_range(g)]);
        }
        self.images += other.images;
        self.data = data;
        Ok(())
    }

    /// These statistics as images `first_image..` of a batch of `total_images`, zero for the
    /// others: the sum of every part's placed statistics is the whole batch's.
    pub fn placed(&self, first_image: usize, total_images: usize) -> Result<Statistics, Error> {
        if first_image.checked_add(self.images).is_none_or(|end| end > total_images) {
            return Err(Error::Input(format!(
                "{} images from image {first_image} do not fit a batch of {total_images}",
                self.images
            )));
        }
        let mut out = Statistics::zeroed(self.mode, self.kind, self.classes, total_images, &self.exprs, false)?;
        let row = self.classes * self.k;
        out.data[first_image * row..(first_image + self.images) * row].copy_from_slice(&self.data[..self.sums_len()]);
        for (g, &spi) in self.lov_per_image.iter().enumerate() {
            let at = out.lov_range(g).start + first_image * spi * 3;
            out.data[at..at + self.images * spi * 3].copy_from_slice(&self.data[self.lov_range(g)]);
        }
        Ok(out)
    }

    /// Adds `other` (the same images: a placed part, or the statistics of more pixels of them).
    ///
    /// A per-image Lovász sorts each image's pixels as a whole, so its statistics add only where
    /// each image's pixels are in one of the two (placed parts): pixels of one image in both are
    /// an [`Error::Unsupported`] naming the image, and nothing is added.
    pub fn add(&mut self, other: &Statistics) -> Result<(), Error> {
        self.check_joins(other)?;
        if self.images != other.images {
            return Err(Error::Input(format!(
                "statistics of {} images cannot be added to those of {} (place both in one batch first)",
                other.images, self.images
            )));
        }
        for (g, &spi) in self.lov_per_image.iter().enumerate() {
            // a segment's fg + bg is the number of its pixels that count
            let members = |st: &Statistics| -> Vec<bool> {
                st.data[st.lov_range(g)].chunks_exact(3).map(|q| q[1] + q[2] > 0.0).collect()
            };
            let (mine, theirs) = (members(self), members(other));
            if let Some(seg) = mine.iter().zip(&theirs).position(|(&a, &b)| a && b) {
                return Err(Error::Unsupported(format!(
                    "lovasz (per_image=true) sorts each image's pixels at once: both statistics hold pixels of \
                     image {}, and a sort does not add up (evaluate each image's pixels in one part)",
                    seg / spi
                )));
            }
        }
        self.data.iter_mut().zip(&other.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Checks what any statistics hold, whatever wrote them ([`Statistics::as_mut_slice`]: an
    /// all-reduce): no NaN (an infinite sum is the f32 sums' overflow, which the values report
    /// as [`Error::Overflow`]; a sum a little below 0 can come of a GPU's `log` of a number just
    /// above 1), and the Lovász segments' label counts whole numbers `>= 0`.
    fn check_numbers(&self) -> Result<(), Error> {
        let bad = |i: usize, v: f64, why: &str| {
            Err(Error::Input(format!(
                "statistics entry {i} is {v}: {why} (written through as_mut_slice, by an all-reduce?)"
            )))
        };
        if let Some(i) = self.data.iter().position(|v| v.is_nan()) {
            return bad(i, f64::NAN, "no sum is NaN");
        }
        for g in 0..self.lov_per_image.len() {
            let r = self.lov_range(g);
            for (j, q) in self.data[r.clone()].chunks_exact(3).enumerate() {
                for (o, &v) in q.iter().enumerate().skip(1) {
                    if !v.is_finite() || v < 0.0 || v.fract() != 0.0 {
                        return bad(r.start + 3 * j + o, v, "a Lovász segment's label counts are whole numbers >= 0");
                    }
                }
            }
        }
        Ok(())
    }

    /// The values of the expressions on the whole batch, in f64 from the sums (the host twin
    /// of the device finalize); [`Evaluation::grad`] is `None`. Statistics that no evaluation
    /// could have written (a NaN, a Lovász label count that is not a whole number `>= 0`) are an
    /// [`Error::Input`] naming the entry.
    pub fn finish(&self) -> Result<Vec<Evaluation>, Error> {
        self.check_numbers()?;
        let plan = StatsPlan::new(&self.exprs, self.classes, self.mode == Mode::Multiclass);
        let (n, c) = (self.images, self.classes);
        let sums =
            Sums { data: &self.data[..self.sums_len()], n, c, k: self.k, tpmin: plan.tp_min.then(|| self.k - 1) };
        let lov: Vec<LovaszSums> = (0..self.lov_per_image.len())
            .map(|g| LovaszSums {
                segs: self.data[self.lov_range(g)].chunks_exact(3).map(|q| [q[0], q[1], q[2]]).collect(),
            })
            .collect();
        let softmax = self.mode == Mode::Multiclass;
        self.exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let layout = BlockLayout::new(e, &plan, (n, c, 1), softmax);
                let f = plan::finalize(e, &plan, &layout, &sums, self.mode, &lov);
                check_value(f.value, &f.term_values).map_err(|e| of_expression(i, e))?;
                Ok(Evaluation {
                    value: f.value,
                    term_values: f.term_values,
                    grad: None,
                    unreduced: None,
                    level_grads: Vec::new(),
                })
            })
            .collect()
    }

    /// Adds a piece's device sums (`[passes][images][c][K]` f32, `stride` bytes per pass) into
    /// its image rows.
    fn add_device_sums(&mut self, dev: &[f32], stride: usize, piece: Piece) {
        let (c, k) = (self.classes, self.k);
        let plan = StatsPlan::new(&self.exprs, c, self.mode == Mode::Multiclass);
        let first = piece.first_image();
        for i in 0..piece.images() {
            for cls in 0..c {
                for j in 0..k {
                    let (pass, chan) = plan.device_channel(j);
                    let v = dev[pass * stride / 4 + ((i * c + cls) * K) + chan];
                    self.data[((first + i) * c + cls) * k + j] += f64::from(v);
                }
            }
        }
    }

    /// The sums as the device finalize reads them: `[passes][images][c][K]` f32, each pass
    /// `align`ed.
    fn device_sums(&self, plan: &StatsPlan) -> (Vec<f32>, u64) {
        let (n, c, k) = (self.images, self.classes, self.k);
        let stride = align((n * c * K * 4) as u64);
        let mut out = vec![0f32; (stride / 4) as usize * plan.passes()];
        for row in 0..n * c {
            for j in 0..k {
                let (pass, chan) = plan.device_channel(j);
                out[pass * (stride / 4) as usize + row * K + chan] = self.data[row * k + j] as f32;
            }
        }
        (out, stride)
    }

    /// The Lovász segments as the device finalize reads them: `[value bits, fg, bg, 0]` per
    /// segment, each loss's `align`ed (as `record_tail` lays them out).
    fn device_lovasz(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for g in 0..self.lov_per_image.len() {
            for q in self.data[self.lov_range(g)].chunks_exact(3) {
                out.extend_from_slice(&[(q[0] as f32).to_bits(), q[1] as u32, q[2] as u32, 0]);
            }
            out.resize(align(out.len() as u64 * 4) as usize / 4, 0);
        }
        out
    }
}

impl Statistics {
    /// Checks that images `first_image..first_image + images` of a `mode` input of `classes`
    /// are in the batch these statistics describe, and that they hold `exprs`.
    fn check_part(
        &self,
        mode: Mode,
        kind: InputKind,
        classes: usize,
        images: usize,
        first_image: usize,
        exprs: &[LossExpr],
    ) -> Result<(), Error> {
        self.check_numbers()?;
        if mode != self.mode || classes != self.classes {
            return Err(Error::Input(format!(
                "a {mode} input of {classes} classes for statistics of {} {} classes",
                self.mode, self.classes
            )));
        }
        if kind != self.kind {
            return Err(Error::Input(format!(
                "an input of {} for statistics of {}: the gradient takes what the statistics took",
                kind.name(),
                self.kind.name()
            )));
        }
        if first_image.checked_add(images).is_none_or(|end| end > self.images) {
            return Err(Error::Input(format!(
                "images {first_image}.. ({images} of them) are not in the batch of {} images the statistics describe",
                self.images
            )));
        }
        if let Some(e) = exprs.iter().find(|e| !self.exprs.contains(e)) {
            return Err(Error::Input(format!(
                "'{e}' is not one of the statistics' expressions [{}]",
                texts(&self.exprs)
            )));
        }
        Ok(())
    }
}

/// Records the statistics passes (and, `lovasz`, the per-image Lovász sorts) of each piece into
/// `rec`, submits it, checks the status words and adds what comes back into `st`.
async fn statistics_of(
    gpu: &Gpu,
    mut rec: Recording,
    st: &mut Statistics,
    plan: &StatsPlan,
    pieces: &[(Piece, DevInput)],
    lovasz: bool,
    shape: &[usize],
) -> Result<(), Error> {
    let mut reads = Vec::new();
    let mut statuses = Vec::new();
    for (piece, inp) in pieces {
        // each piece's own status words: an element's index is the piece's
        let status = gpu.record_status(&mut rec)?;
        statuses.push((*piece, status));
        let t = gpu.record_stats(&mut rec, inp, plan, status)?;
        // (each piece's own stride: pieces of whole images differ by an image)
        let stride = t.stride as usize;
        let rb = rec.readback(t.sums.size, "statistics")?;
        rec.copy(t.sums, rb);
        let sums_read = rec.readbacks() - 1;
        let mut segs = Vec::new();
        if lovasz && !plan.lovasz.is_empty() {
            let ss: Vec<_> = st
                .lov_per_image
                .iter()
                .map(|spi| rec.scratch((inp.n * spi * 16) as u64, "lovasz segment sums"))
                .collect::<Result<_, _>>()?;
            let some: Vec<_> = ss.iter().copied().map(Some).collect();
            gpu.record_lovasz_all(&mut rec, inp, plan, &some, &[], status, 0)?;
            for (s, spi) in ss.iter().zip(&st.lov_per_image) {
                let bytes = (inp.n * spi * 16) as u64;
                let rb = rec.readback(bytes, "lovasz segment sums")?;
                rec.copy(s.sub(0, bytes), rb);
                segs.push(rec.readbacks() - 1);
            }
        }
        reads.push((*piece, sums_read, stride, segs));
    }
    let rb = rec.readback(32 * statuses.len() as u64, "status")?;
    for (i, (_, st)) in statuses.iter().enumerate() {
        rec.copy(*st, rb.sub(32 * i as u64, 32));
    }
    let status_read = rec.readbacks() - 1;
    let fut = gpu.execute(rec);
    gpu.note_wait();
    let data = fut.await?;
    let all = words(&data[status_read]);
    let s: usize = shape[2..].iter().product();
    for ((piece, _), w) in statuses.iter().zip(all.chunks_exact(8)) {
        status_error_at(w, shape, &|i, planes| piece.global(i, planes, s))?;
    }
    for (piece, si, stride, segs) in reads {
        let dev: Vec<f32> = bytemuck::pod_collect_to_vec(&data[si]);
        st.add_device_sums(&dev, stride, piece);
        for (g, &ri) in segs.iter().enumerate() {
            let spi = st.lov_per_image[g];
            let at = st.lov_range(g).start + piece.first_image() * spi * 3;
            for (j, q) in words(&data[ri]).chunks_exact(4).enumerate() {
                let v = [f64::from(f32::from_bits(q[0])), f64::from(q[1]), f64::from(q[2])];
                st.data[at + 3 * j..at + 3 * j + 3].copy_from_slice(&v);
            }
        }
    }
    Ok(())
}

/// What the passes after the statistics of a part need: the joined statistics, their plan, the
/// expressions, where the part starts, whether the Lovász segments come from `stats`, and the
/// part's shape (for the messages of bad input).
struct TailIn<'a> {
    stats: &'a Statistics,
    plan: &'a StatsPlan,
    exprs: &'a [LossExpr],
    first_image: usize,
    lov_given: bool,
    shape: &'a [usize],
}

/// Records the finalize of `t.stats` and each piece's gradient passes into `rec`, submits it,
/// and returns the values (the whole batch's), the staging buffers, and per piece and
/// expression the staging buffer of a gradient read to the host.
#[allow(clippy::type_complexity)]
async fn tail_of(
    gpu: &Gpu,
    rec: Recording,
    t: &TailIn<'_>,
    pieces: &[(Piece, DevInput)],
    to: &[GradTo],
) -> Result<(Vec<Evaluation>, Vec<Vec<u8>>, Vec<Vec<Option<usize>>>), Error> {
    let tos = vec![to.to_vec(); pieces.len()];
    tail_of_parts(gpu, rec, t, pieces, &tos, |_| {}).await
}

/// [`tail_of`] with each piece's own gradient destinations, and `after` recording what follows
/// the gradient passes in the same submission.
#[allow(clippy::type_complexity)]
async fn tail_of_parts(
    gpu: &Gpu,
    mut rec: Recording,
    t: &TailIn<'_>,
    pieces: &[(Piece, DevInput)],
    tos: &[Vec<GradTo>],
    after: impl FnOnce(&mut Recording),
) -> Result<(Vec<Evaluation>, Vec<Vec<u8>>, Vec<Vec<Option<usize>>>), Error> {
    let status = gpu.record_status(&mut rec)?;
    // pieces whose values have not been checked (a caller's buffers): a statistics pass that
    // checks them, so that bad values are a typed error and no gradient is written
    for (_, inp) in pieces.iter().filter(|(_, inp)| inp.validate != 0) {
        gpu.record_stats(&mut rec, inp, &StatsPlan::default(), status)?;
    }
    let (sums, stride) = t.stats.device_sums(t.plan);
    let totals = Totals { sums: rec.data(&sums), stride, n: t.stats.images, groups: 1, lse: None };
    let lov_from = if t.lov_given { LovFrom::Given(rec.data(&t.stats.device_lovasz())) } else { LovFrom::Parts };
    let parts: Vec<Part<'_>> = pieces
        .iter()
        .zip(tos)
        .map(|((p, inp), to)| Part {
            inp,
            img0: t.first_image + p.first_image(),
            grads: to,
            lse: None,
            hinge_add: None,
            // (the pieces that need checks had their statistics pass, above)
            key_checks: 0,
        })
        .collect();
    let tail = gpu.record_tail(&mut rec, t.plan, t.exprs, totals, lov_from, &parts, status, true)?;
    after(&mut rec);
    let fut = gpu.execute(rec);
    gpu.note_wait();
    let data = fut.await?;
    let vi = tail.values_read.ok_or_else(|| Error::Gpu("internal: values were not read".into()))?;
    let r = Recorded {
        vals: tail.vals,
        vals_len: tail.vals_len,
        out: tail.out,
        status,
        values_read: tail.values_read,
        grad_reads: vec![None; t.exprs.len()],
        unreduced: vec![None; t.exprs.len()],
    };
    let out = decode(&words(&data[vi]), &r, t.shape, t.exprs, &data)?;
    Ok((out, data, tail.grad_reads))
}

fn texts(exprs: &[LossExpr]) -> String {
    exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

/// The statistics sums of a host input in f64 from the definitions, `[N][C][8 + 2 slots]`: what
/// the CPU engine's statistics are, and what the tests hold the device's to.
pub(crate) fn host_sums(input: &Input, plan: &StatsPlan) -> Vec<f64> {
    use crate::reference::{log_sigmoid, sigmoid};
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let k = plan.host_channels();
    let mut out = vec![0f64; n * c * k];
    let x = input.logits();
    let probs = input.kind() == crate::InputKind::Probs;
    // probabilities: PyTorch's binary_cross_entropy clamps each log at -100
    let nlog = |y: f64| (-y.ln()).min(100.0);
    for ni in 0..n {
        for si in 0..s {
            let at = |ci: usize| f64::from(x[(ni * c + ci) * s + si]);
            let m = (0..c).map(at).fold(f64::MIN, f64::max);
            let lse = m + (0..c).map(|ci| (at(ci) - m).exp()).sum::<f64>().ln();
            for ci in 0..c {
                let e = (ni * c + ci) * s + si;
                let xe = f64::from(x[e]);
                // (p, g, -log p, -log(1 - p) or 0, the label)
                let (p, g, nlp, nlq, label) = match input.target() {
                    Target::Labels(t) => {
                        let l = t[ni * s + si];
                        if Some(l) == input.ignore_index() {
                            continue;
                        }
                        let g = if l == ci as i64 { 1.0 } else { 0.0 };
                        if probs {
                            (xe, g, nlog(xe), 0.0, l as usize)
                        } else {
                            let nlp = lse - xe;
                            ((-nlp).exp(), g, nlp, 0.0, l as usize)
                        }
                    }
                    Target::Dense(t) => {
                        if Some(t[e]) == input.ignore_index().map(|k| k as f32) {
                            continue;
                        }
                        if probs {
                            (xe, f64::from(t[e]), nlog(xe), nlog(1.0 - xe), 0)
                        } else {
                            (sigmoid(xe), f64::from(t[e]), -log_sigmoid(xe), -log_sigmoid(-xe), 0)
                        }
                    }
                };
                let o = (ni * c + ci) * k;
                let d = (g - p) * (g - p);
                for (j, v) in [p * g, p, g, p * p, g * g, 1.0, d * g, d * (1.0 - g)].into_iter().enumerate() {
                    out[o + j] += v;
                }
                if plan.tp_min {
                    out[o + k - 1] += p.min(g);
                }
                for (j, slot) in plan.slots.iter().enumerate() {
                    let (a, b) = match slot.kind {
                        plan::kind::BCE => {
                            let gs = g * (1.0 - slot.label_smoothing) + 0.5 * slot.label_smoothing;
                            (gs * nlp, (1.0 - gs) * nlq)
                        }
                        plan::kind::CE => {
                            let q = (1.0 - slot.label_smoothing) * slot.weights[label] * g
                                + slot.label_smoothing / c as f64 * slot.weights[ci];
                            // (a masked class has -log p = inf and no share)
                            (if q == 0.0 { 0.0 } else { q * nlp }, slot.weights[label] * g)
                        }
                        plan::kind::FOCAL_SIGMOID => {
                            let b = if probs {
                                // smp's clamp of the probability
                                let q = xe.clamp(1e-7, 1.0 - 1e-7);
                                -(g * q.ln() + (1.0 - g) * (-q).ln_1p())
                            } else {
                                g * (-log_sigmoid(xe)) + (1.0 - g) * (-log_sigmoid(-xe))
                            };
                            let a = slot.alpha.map_or(1.0, |al| al * g + (1.0 - al) * (1.0 - g));
                            (a * (1.0 - (-b).exp()).powf(slot.gamma) * b, 0.0)
                        }
                        _ if g == 1.0 => {
                            let q = (-nlp).exp();
                            // background (class 0) weighed by 1 - alpha, the others by alpha
                            let a = slot.alpha.map_or(1.0, |al| if ci == 0 { 1.0 - al } else { al });
                            (a * (1.0 - q).powf(slot.gamma) * nlp, 0.0)
                        }
                        _ => (0.0, 0.0),
                    };
                    out[o + 8 + 2 * j] += a;
                    out[o + 9 + 2 * j] += b;
                }
            }
        }
    }
    out
}

/// The logits and target words of a piece of a host input, in buffers of their own.
fn upload(gpu: &Gpu, input: &Input<'_>, piece: Piece) -> Result<(wgpu::Buffer, wgpu::Buffer), Error> {
    let (logits, words) = split::piece_data(input, piece);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    Ok((
        gpu.buffer_init("logits piece", bytemuck::cast_slice(&logits), usage)?,
        gpu.buffer_init("target piece", bytemuck::cast_slice(&words), usage)?,
    ))
}

fn dev_input(rec: &mut Recording, input: &Input<'_>, piece: Piece, bufs: &(wgpu::Buffer, wgpu::Buffer)) -> DevInput {
    host_dev_input(rec, input, piece, &bufs.0, &bufs.1)
}

/// A piece of a host input uploaded into `logits` and `target` (target words), as the kernels
/// bind it; its values were checked on the host.
pub(crate) fn host_dev_input(
    rec: &mut Recording,
    input: &Input<'_>,
    piece: Piece,
    logits: &wgpu::Buffer,
    target: &wgpu::Buffer,
) -> DevInput {
    DevInput {
        logits: rec.external(logits, 0, logits.size()),
        target: rec.external(target, 0, target.size()),
        n: piece.images(),
        c: input.classes(),
        s: piece.pixels(input.spatial()),
        softmax: input.mode() == Mode::Multiclass,
        probs: input.kind() == crate::InputKind::Probs,
        groups: 1,
        ignore: None,
        validate: 0,
        // (a piece of a batch: its gradient passes are the parts', not fused)
        counted: None,
    }
}

/// The largest logits binding the engine plans with: the device's, or the lower one of
/// [`crate::EngineOptions::max_binding_bytes`].
pub(crate) fn binding_limit(gpu: &Gpu) -> u64 {
    gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size).min(gpu.plan_binding)
}

/// The most bytes of logits one evaluation of `plan`, or one piece of it, binds: the binding
/// limit, or C / (C + 2) of it where a Lovász-Softmax on logits keeps each pixel's log-sum-exp
/// (two words) after the C weights of the batch in one buffer (`lovasz weights`).
pub(crate) fn logits_budget(gpu: &Gpu, plan: &StatsPlan, classes: usize, kind: InputKind) -> u64 {
    let limit = binding_limit(gpu);
    if plan.softmax && !plan.lovasz.is_empty() && kind == InputKind::Logits {
        let c = classes as u64;
        limit / (c + 2) * c
    } else {
        limit
    }
}

/// The most images one evaluation, or one piece of it, holds: a per-image Lovász loss sorts a
/// segment per image (per image and class under softmax), and its kernels take a workgroup row
/// per segment, at most `max_compute_workgroups_per_dimension` of them. Everything else takes any
/// number: the passes with a row per image or plane are dispatched in runs of rows
/// (`Gpu::rows`), the reductions fold the images into z (`Gpu::image_rows`).
pub(crate) fn max_images(gpu: &Gpu, plan: &StatsPlan, classes: usize) -> usize {
    if !plan.lovasz.iter().any(|l| l.per_image) {
        return usize::MAX;
    }
    let rows = gpu.limits.max_compute_workgroups_per_dimension as usize;
    (rows / plan::lovasz_segments(plan.softmax, true, 1, classes, 1).0.max(1)).max(1)
}

/// Why a batch of `shape` must be evaluated in pieces for `exprs`, as (what, needed, allowed):
/// logits past [`logits_budget`], target words (`target_bytes`) past the binding limit, or more
/// images than [`max_images`]; `None` when it is bound whole.
pub(crate) fn pieces_reason(
    gpu: &Gpu,
    shape: &[usize],
    mode: Mode,
    kind: InputKind,
    exprs: &[LossExpr],
    target_bytes: u64,
) -> Option<(&'static str, u64, u64)> {
    let (n, c) = (shape[0], shape[1]);
    let logits = (shape.iter().product::<usize>() * 4) as u64;
    let plan = StatsPlan::new(exprs, c, mode == Mode::Multiclass);
    let (budget, most) = (logits_budget(gpu, &plan, c, kind), max_images(gpu, &plan, c));
    if logits > budget {
        Some(("logits bytes", logits, budget))
    } else if target_bytes > binding_limit(gpu) {
        Some(("target bytes", target_bytes, binding_limit(gpu)))
    } else if n > most {
        Some(("images", n as u64, most as u64))
    } else {
        None
    }
}

/// The pieces of `input` on `gpu`; Lovász losses that cannot run on them are a limit error.
fn pieces_for(gpu: &Gpu, input: &Input<'_>, plan: &StatsPlan) -> Result<Vec<Piece>, Error> {
    pieces_of(gpu, input.shape(), plan, input.kind())
}

/// The pieces of a batch of `shape` on `gpu` ([`pieces_for`]).
fn pieces_of(gpu: &Gpu, shape: &[usize], plan: &StatsPlan, kind: InputKind) -> Result<Vec<Piece>, Error> {
    let (n, c, s) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
    let limit = logits_budget(gpu, plan, c, kind);
    let most = max_images(gpu, plan, c);
    let pieces = split::pieces(n, c, s, limit, most)?;
    let bytes = (c * s * 4) as u64;
    if pieces.len() > 1 {
        if plan.lovasz.iter().any(|l| !l.per_image) {
            return Err(if bytes * n as u64 > limit {
                Error::Limit {
                    what:
                        "lovasz with per_image=false (its sort spans the whole batch, which does not fit one binding)"
                            .into(),
                    needed: bytes * n as u64,
                    max: limit,
                }
            } else {
                Error::Limit {
                    what: "lovasz with per_image=false over more images than one dispatch holds (its sort spans the \
                           whole batch)"
                        .into(),
                    needed: n as u64,
                    max: most as u64,
                }
            });
        }
        if !plan.lovasz.is_empty() && matches!(pieces[0], Piece::Pixels { .. }) {
            return Err(Error::Limit {
                what: "lovasz (its sort spans one image, which does not fit one binding)".into(),
                needed: bytes,
                max: limit,
            });
        }
    }
    Ok(pieces)
}

/// Statistics and the gradients from them hold one level: an input with levels is refused.
fn one_level(input: &Input<'_>) -> Result<(), Error> {
    if input.levels() > 1 {
        return Err(Error::Unsupported(
            "statistics hold one level: an input with levels (deep supervision) goes to Engine::evaluate".into(),
        ));
    }
    Ok(())
}

impl Engine {
    /// The [`Statistics`] of `input` for `exprs` (one submission; an input past the device's
    /// limits in pieces). A Lovász loss with `per_image=false` is refused: its statistics do
    /// not merge.
    pub async fn statistics(&self, input: &Input<'_>, exprs: &[LossExpr]) -> Result<Statistics, Error> {
        one_level(input)?;
        for e in exprs {
            e.check_input(input.mode(), input.classes(), input.kind())?;
        }
        crate::engine::check_hard_labels(exprs, || input.first_soft(), input.shape())?;
        crate::input::check_neg_inf(input, exprs)?;
        match self.gpu_ref() {
            Some(gpu) => self.device_statistics(gpu, input, exprs, true).await,
            None => {
                let mut st =
                    Statistics::zeroed(input.mode(), input.kind(), input.classes(), input.batch(), exprs, true)?;
                let plan = StatsPlan::new(exprs, input.classes(), input.mode() == Mode::Multiclass);
                let sums = host_sums(input, &plan);
                st.data[..sums.len()].copy_from_slice(&sums);
                for (g, lp) in plan.lovasz.iter().enumerate() {
                    let r = st.lov_range(g);
                    let segs = crate::reference::lovasz_segments(input, lp.per_image, r.len() / 3);
                    for (q, seg) in st.data[r].chunks_exact_mut(3).zip(segs) {
                        q.copy_from_slice(&seg);
                    }
                }
                Ok(st)
            }
        }
    }

    /// The statistics of a host input on the device, piece by piece in one submission;
    /// `lovasz`: with the per-image Lovász segments (the public statistics) or without (the
    /// engine's own split evaluation, whose gradient step sorts).
    pub(crate) async fn device_statistics(
        &self,
        gpu: &Arc<Gpu>,
        input: &Input<'_>,
        exprs: &[LossExpr],
        lovasz: bool,
    ) -> Result<Statistics, Error> {
        let mut st = Statistics::zeroed(input.mode(), input.kind(), input.classes(), input.batch(), exprs, lovasz)?;
        let plan = StatsPlan::new(exprs, input.classes(), input.mode() == Mode::Multiclass);
        let pieces = pieces_for(gpu, input, &plan)?;
        let mut rec = Recording::new(&gpu.limits);
        let bufs = gpu.held(pieces.iter().map(|&p| upload(gpu, input, p)).collect::<Result<Vec<_>, _>>()?);
        let on: Vec<(Piece, DevInput)> =
            pieces.iter().zip(bufs.iter()).map(|(&p, b)| (p, dev_input(&mut rec, input, p, b))).collect();
        statistics_of(gpu, rec, &mut st, &plan, &on, lovasz, input.shape()).await?;
        Ok(st)
    }

    /// [`Engine::statistics`] of a batch in the caller's buffers (one submission; the checks of
    /// a [`BufferInput`] run on the device and come back as typed errors).
    pub async fn statistics_buffers(&self, input: &BufferInput<'_>, exprs: &[LossExpr]) -> Result<Statistics, Error> {
        let gpu = self
            .gpu_ref()
            .ok_or_else(|| Error::Unsupported("buffer inputs need a GPU engine, not the CPU reference".into()))?;
        let (shape, mode) = (input.shape(), input.mode());
        for e in exprs {
            e.check_input(mode, shape[1], input.kind())?;
        }
        let mut st = Statistics::zeroed(mode, input.kind(), shape[1], shape[0], exprs, true)?;
        let plan = StatsPlan::new(exprs, shape[1], mode == Mode::Multiclass);
        let mut rec = Recording::new(&gpu.limits);
        let inp = buffer_dev_input(gpu, &mut rec, input, exprs)?;
        let on = [(Piece::Images { from: 0, to: shape[0] }, inp)];
        statistics_of(gpu, rec, &mut st, &plan, &on, true, shape).await?;
        Ok(st)
    }

    /// The gradient of each of `exprs` (expressions of `stats`) with respect to the logits of
    /// `input`, which holds images `first_image..` of the batch `stats` describe (the joined
    /// statistics of every part): each [`Evaluation`] has the value of the whole batch and the
    /// gradient of this part. One submission; an input past the device's limits in pieces. The
    /// CPU reference has no gradient from statistics: [`Error::Unsupported`].
    pub async fn gradient(
        &self,
        input: &Input<'_>,
        stats: &Statistics,
        first_image: usize,
        exprs: &[LossExpr],
    ) -> Result<Vec<Evaluation>, Error> {
        let Some(gpu) = self.gpu_ref() else {
            return Err(Error::Unsupported(
                "the CPU reference computes gradients from the input, not from statistics: use a GPU engine".into(),
            ));
        };
        one_level(input)?;
        stats.check_part(input.mode(), input.kind(), input.classes(), input.batch(), first_image, exprs)?;
        crate::engine::check_hard_labels(exprs, || input.first_soft(), input.shape())?;
        crate::input::check_neg_inf(input, exprs)?;
        self.device_tail(gpu, input, stats, first_image, exprs, true, true).await
    }

    /// Values and (`grads`) gradients of `exprs` on `input`, images `first_image..` of the batch
    /// of `stats`: the sums uploaded, the Lovász segments uploaded (`lov_given`) or sorted by
    /// the pieces, one finalize, each piece's gradient passes; one submission.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn device_tail(
        &self,
        gpu: &Arc<Gpu>,
        input: &Input<'_>,
        stats: &Statistics,
        first_image: usize,
        exprs: &[LossExpr],
        grads: bool,
        lov_given: bool,
    ) -> Result<Vec<Evaluation>, Error> {
        let plan = StatsPlan::new(&stats.exprs, stats.classes, stats.mode == Mode::Multiclass);
        // the pieces as the requested expressions allow (a Lovász loss of the statistics that
        // none of them uses is not sorted)
        let pieces = pieces_for(gpu, input, &StatsPlan::new(exprs, stats.classes, stats.mode == Mode::Multiclass))?;
        let mut rec = Recording::new(&gpu.limits);
        let bufs = gpu.held(pieces.iter().map(|&p| upload(gpu, input, p)).collect::<Result<Vec<_>, _>>()?);
        let to = vec![if grads { GradTo::Host } else { GradTo::Skip }; exprs.len()];
        let on: Vec<(Piece, DevInput)> =
            pieces.iter().zip(bufs.iter()).map(|(&p, b)| (p, dev_input(&mut rec, input, p, b))).collect();
        let t = TailIn { stats, plan: &plan, exprs, first_image, lov_given, shape: input.shape() };
        let (mut out, data, reads) = tail_of(gpu, rec, &t, &on, &to).await?;
        if grads {
            let (c, s) = (input.classes(), input.spatial());
            for (i, ev) in out.iter_mut().enumerate() {
                let mut g = vec![0f32; input.logits().len()];
                for (piece, reads) in pieces.iter().zip(&reads) {
                    if let Some(ri) = reads[i] {
                        let part: Vec<f32> = bytemuck::pod_collect_to_vec(&data[ri]);
                        split::scatter(&mut g, &part, c, s, *piece);
                    }
                }
                ev.grad = Some(g);
            }
        }
        Ok(out)
    }

    /// [`Engine::gradient`] of a part of the batch in the caller's buffers: each expression's
    /// gradient goes where `grads` says (read back, written into or added to a caller's slice),
    /// one submission. The buffers' values are checked again (one more read of the part), so
    /// that bad values are a typed error here too and no gradient is written.
    pub async fn gradient_buffers(
        &self,
        input: &BufferInput<'_>,
        stats: &Statistics,
        first_image: usize,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        let gpu = self
            .gpu_ref()
            .ok_or_else(|| Error::Unsupported("buffer inputs need a GPU engine, not the CPU reference".into()))?;
        if grads.len() != exprs.len() {
            return Err(Error::Input(format!("{} gradient outputs for {} expressions", grads.len(), exprs.len())));
        }
        let shape = input.shape();
        stats.check_part(input.mode(), input.kind(), shape[1], shape[0], first_image, exprs)?;
        let plan = StatsPlan::new(&stats.exprs, stats.classes, stats.mode == Mode::Multiclass);
        let mut rec = Recording::new(&gpu.limits);
        let inp = buffer_dev_input(gpu, &mut rec, input, exprs)?;
        let numel = input.logits_slice().len;
        let dests: Vec<Dest<'_>> = grads.iter().map(|&g| Dest::Out(g)).collect();
        let to = grad_targets(gpu, &mut rec, &Source::Buffers(input), &dests, numel)?;
        let on = [(Piece::Images { from: 0, to: shape[0] }, inp)];
        let t = TailIn { stats, plan: &plan, exprs, first_image, lov_given: true, shape };
        let (mut out, data, reads) = tail_of(gpu, rec, &t, &on, &to).await?;
        for (ev, r) in out.iter_mut().zip(&reads[0]) {
            ev.grad = r.map(|ri| bytemuck::pod_collect_to_vec(&data[ri]));
        }
        Ok(out)
    }

    /// An evaluation of a host input past the device's limits: the statistics of its pieces,
    /// joined on the host, then one finalize and each piece's gradient (two submissions).
    pub(crate) async fn evaluate_split(
        &self,
        gpu: &Arc<Gpu>,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
    ) -> Result<Vec<Evaluation>, Error> {
        let stats = self.device_statistics(gpu, input, exprs, false).await?;
        self.device_tail(gpu, input, &stats, 0, exprs, grads, false).await
    }

    /// An evaluation of a batch in the caller's buffers past the device's binding limit: each
    /// piece copied into buffers of its own, their statistics (checked on the device) joined on
    /// the host, then one finalize and each piece's gradient, copied (or added) into the
    /// caller's gradient slices or read back; two submissions.
    pub(crate) async fn evaluate_buffers_split(
        &self,
        gpu: &Arc<Gpu>,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        let shape = input.shape();
        let (n, c, s) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        if grads.len() != exprs.len() {
            return Err(Error::Input(format!("{} gradient outputs for {} expressions", grads.len(), exprs.len())));
        }
        for e in exprs {
            e.check_input(input.mode(), c, input.kind())?;
        }
        let plan = StatsPlan::new(exprs, c, input.mode() == Mode::Multiclass);
        let pieces = pieces_of(gpu, shape, &plan, input.kind())?;
        let tplanes = if input.mode() == Mode::Multiclass { 1 } else { c };
        let (lslice, tslice) = (*input.logits_slice(), input.target_buffer().slice());
        // the caller's slices and gradient slices are checked whole (all but their size)
        let copy = wgpu::BufferUsages::COPY_SRC;
        for (what, sl) in [("logits", lslice), ("target", tslice)] {
            crate::engine::check_slice_placement(gpu, what, &sl, copy)?;
        }
        for g in grads {
            if let GradOut::Write(sl) | GradOut::Add(sl) = g {
                let usage = match g {
                    GradOut::Add(_) => copy | wgpu::BufferUsages::COPY_DST,
                    _ => wgpu::BufferUsages::COPY_DST,
                };
                crate::engine::check_slice_placement(gpu, "gradient", sl, usage)?;
                if sl.len != (n * c * s) as u64 {
                    return Err(Error::Shape(format!(
                        "the gradient slice has {} elements but the logits have {}",
                        sl.len,
                        n * c * s
                    )));
                }
                for (what, other) in [("logits", lslice), ("target", tslice)] {
                    if crate::engine::overlaps(sl, &other) {
                        return Err(Error::Buffer(format!("the gradient slice overlaps the {what} slice")));
                    }
                }
            }
        }
        // each piece's logits and target words in buffers of its own, copied from the caller's
        let piece_buffer = |elems: usize, label: &str| {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
            gpu.buffer(label, (elems * 4) as u64, usage)
        };
        let sizes: Vec<(usize, usize)> =
            pieces.iter().map(|p| (p.images() * c * p.pixels(s), p.images() * tplanes * p.pixels(s))).collect();
        let bufs = gpu.held(
            sizes
                .iter()
                .map(|&(l, t)| Ok((piece_buffer(l, "logits piece")?, piece_buffer(t, "target piece")?)))
                .collect::<Result<Vec<_>, Error>>()?,
        );
        let copy_in = |rec: &mut Recording, from: &BufferSlice<'_>, to: &wgpu::Buffer, piece: Piece, planes: usize| {
            let src = rec.external(from.buffer, from.offset, from.len * 4);
            let dst = rec.external(to, 0, to.size());
            for (g, l, len) in piece.runs(planes, s) {
                rec.copy(src.sub((g * 4) as u64, (len * 4) as u64), dst.sub((l * 4) as u64, (len * 4) as u64));
            }
        };
        let dev = |rec: &mut Recording, piece: Piece, b: &(wgpu::Buffer, wgpu::Buffer), validate: bool| {
            let mut inp = buffer_dev_input_unchecked(rec, input, exprs, &b.0, &b.1);
            inp.n = piece.images();
            inp.s = piece.pixels(s);
            if !validate {
                inp.validate = 0;
            }
            inp
        };
        // 1. statistics of the pieces (their values checked), joined on the host
        let mut st = Statistics::zeroed(input.mode(), input.kind(), c, n, exprs, false)?;
        let mut rec = Recording::new(&gpu.limits);
        for (&p, b) in pieces.iter().zip(bufs.iter()) {
            copy_in(&mut rec, &lslice, &b.0, p, c);
            copy_in(&mut rec, &tslice, &b.1, p, tplanes);
        }
        let on: Vec<(Piece, DevInput)> =
            pieces.iter().zip(bufs.iter()).map(|(&p, b)| (p, dev(&mut rec, p, b, true))).collect();
        statistics_of(gpu, rec, &mut st, &plan, &on, false, shape).await?;
        // 2. finalize, each piece's gradient into a buffer of its own (holding the caller's
        // gradient first where it is added to), then into the caller's slice or the host
        let mut rec = Recording::new(&gpu.limits);
        let on: Vec<(Piece, DevInput)> =
            pieces.iter().zip(bufs.iter()).map(|(&p, b)| (p, dev(&mut rec, p, b, false))).collect();
        // the caller's distinct gradient slices (expressions may share one: their passes then
        // write or add to it in order, as unsplit) and the one each expression uses
        let mut dests: Vec<BufferSlice<'_>> = Vec::new();
        let mut dest_of: Vec<Option<usize>> = Vec::new();
        for g in grads {
            dest_of.push(match g {
                GradOut::Write(sl) | GradOut::Add(sl) => Some(crate::batch::distinct_slice(&mut dests, sl)?),
                _ => None,
            });
        }
        // per piece, a buffer for each distinct slice, holding the caller's gradient first
        // where the first expression to use it adds to it
        let mut gbufs = gpu.held(Vec::<Vec<wgpu::Buffer>>::new());
        let mut tos = Vec::new();
        for (&p, &(l, _)) in pieces.iter().zip(&sizes) {
            let mine: Vec<wgpu::Buffer> =
                dests.iter().map(|_| piece_buffer(l, "gradient piece")).collect::<Result<_, _>>()?;
            for (k, d) in dests.iter().enumerate() {
                let first = grads.iter().zip(&dest_of).find(|(_, o)| **o == Some(k)).map(|(g, _)| g);
                if matches!(first, Some(GradOut::Add(_))) {
                    copy_in(&mut rec, d, &mine[k], p, c);
                }
            }
            let mut to = Vec::new();
            for (g, o) in grads.iter().zip(&dest_of) {
                to.push(match (g, o) {
                    (GradOut::Host, _) => GradTo::Host,
                    (_, Some(k)) => GradTo::Into {
                        slice: rec.external(&mine[*k], 0, mine[*k].size()),
                        accumulate: matches!(g, GradOut::Add(_)),
                        copy_to: None,
                    },
                    _ => GradTo::Skip,
                });
            }
            gbufs.push(mine);
            tos.push(to);
        }
        let t = TailIn { stats: &st, plan: &plan, exprs, first_image: 0, lov_given: false, shape };
        let (mut out, data, reads) = tail_of_parts(gpu, rec, &t, &on, &tos, |rec| {
            // the pieces' gradients into the caller's slices, after the gradient passes
            for (&p, mine) in pieces.iter().zip(gbufs.iter()) {
                for (d, gb) in dests.iter().zip(mine) {
                    let src = rec.external(gb, 0, gb.size());
                    let dst = rec.external(d.buffer, d.offset, d.len * 4);
                    for (gi, li, len) in p.runs(c, s) {
                        rec.copy(
                            src.sub((li * 4) as u64, (len * 4) as u64),
                            dst.sub((gi * 4) as u64, (len * 4) as u64),
                        );
                    }
                }
            }
        })
        .await?;
        for (i, (ev, g)) in out.iter_mut().zip(grads).enumerate() {
            if matches!(g, GradOut::Host) {
                let mut whole = vec![0f32; n * c * s];
                for (piece, r) in pieces.iter().zip(&reads) {
                    if let Some(ri) = r[i] {
                        split::scatter(&mut whole, &bytemuck::pod_collect_to_vec(&data[ri]), c, s, *piece);
                    }
                }
                ev.grad = Some(whole);
            }
        }
        Ok(out)
    }

    /// Blocking [`Engine::statistics`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn statistics_blocking(&self, input: &Input<'_>, exprs: &[LossExpr]) -> Result<Statistics, Error> {
        self.block(self.statistics(input, exprs))
    }

    /// Blocking [`Engine::statistics_buffers`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn statistics_buffers_blocking(
        &self,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
    ) -> Result<Statistics, Error> {
        self.block(self.statistics_buffers(input, exprs))
    }

    /// Blocking [`Engine::gradient_buffers`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gradient_buffers_blocking(
        &self,
        input: &BufferInput<'_>,
        stats: &Statistics,
        first_image: usize,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        self.block(self.gradient_buffers(input, stats, first_image, exprs, grads))
    }

    /// Blocking [`Engine::gradient`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gradient_blocking(
        &self,
        input: &Input<'_>,
        stats: &Statistics,
        first_image: usize,
        exprs: &[LossExpr],
    ) -> Result<Vec<Evaluation>, Error> {
        self.block(self.gradient(input, stats, first_image, exprs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_channels_map_to_device_channels_once() {
        use crate::plan::ch;
        // 9 distinct pixel losses, with and without sum min(p, g)
        let texts: Vec<String> = (0..9).map(|i| format!("focal:gamma={i}")).collect();
        for region in ["dice@monai", "dice"] {
            let mut exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
            exprs.push(region.parse().unwrap());
            let plan = StatsPlan::new(&exprs, 2, false);
            let mut seen = std::collections::HashSet::new();
            for j in 0..plan.host_channels() {
                let (pass, chan) = plan.device_channel(j);
                assert!(pass < plan.passes() && chan < K);
                assert!(seen.insert((pass, chan)), "{region}: channel {j}");
            }
            if plan.tp_min {
                assert_eq!(plan.device_channel(plan.host_channels() - 1), (0, ch::TPMIN_DEV));
                assert_eq!(plan.device_channel(8 + 2 * 3), (1, 8));
            } else {
                assert_eq!(plan.device_channel(8 + 2 * 4), (1, 8));
            }
        }
    }

    #[test]
    fn placed_parts_add_up_to_the_appended_batch() {
        let exprs: Vec<LossExpr> = vec!["dice+bce".parse().unwrap(), "lovasz:per_image=true".parse().unwrap()];
        let mut a = Statistics::zeroed(Mode::Binary, InputKind::Logits, 1, 2, &exprs, true).unwrap();
        let mut b = Statistics::zeroed(Mode::Binary, InputKind::Logits, 1, 3, &exprs, true).unwrap();
        a.data.iter_mut().enumerate().for_each(|(i, v)| *v = i as f64);
        b.data.iter_mut().enumerate().for_each(|(i, v)| *v = 100.0 + i as f64);
        let mut joined = a.placed(0, 5).unwrap();
        joined.add(&b.placed(2, 5).unwrap()).unwrap();
        a.append(&b).unwrap();
        assert_eq!(a, joined);
        // (review) numbers no evaluation writes, edited in through as_mut_slice, are named
        let mut odd = joined.clone();
        odd.as_mut_slice()[3] = f64::NAN;
        assert!(matches!(odd.finish(), Err(Error::Input(m)) if m.contains("entry 3 is NaN")));
        // an infinite sum is an overflow of the values, as on one engine
        odd.as_mut_slice()[3] = 0.0;
        // (entry 8: bce's first sum of image 0)
        odd.as_mut_slice()[8] = f64::INFINITY;
        assert!(matches!(odd.finish(), Err(Error::Overflow(m)) if m.starts_with("expression 1: ")));
        odd.as_mut_slice()[8] = 0.0;
        let r = odd.lov_range(0);
        for v in [0.5, -1.0, f64::INFINITY] {
            odd.as_mut_slice()[r.start + 1] = v;
            let want = format!("entry {} is {v}", r.start + 1);
            assert!(matches!(odd.finish(), Err(Error::Input(m)) if m.contains(&want)), "{v}");
        }
        let whole: Vec<LossExpr> = vec!["lovasz".parse().unwrap()];
        assert!(matches!(
            Statistics::zeroed(Mode::Binary, InputKind::Logits, 1, 2, &whole, true),
            Err(Error::Unsupported(_))
        ));
    }
}
