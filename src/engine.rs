//! The engine: evaluates loss expressions and their gradients on a GPU (the engine's own device
//! or the caller's), from host slices or from the caller's buffers, in one submission per
//! evaluation; or on the f64 CPU reference.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Error;
use crate::expr::{LossExpr, F32_MAX};
pub use crate::gpu::context::{backend_name, list_adapters, AdapterReport, DeviceInfo, EngineOptions};
use crate::gpu::context::{pick_adapter, Gpu};
use crate::gpu::eval::{DevInput, GradTo, Recorded, UnreducedRead};
use crate::gpu::record::{ReadFuture, Recording, Slice};
use crate::gpu::{check, INVALID};
use crate::input::{Input, InputKind, Target};
use crate::reference;
use crate::Mode;

pub use crate::gpu::context::BITONIC_CROSSOVER_CPU;

pub(crate) enum Backend {
    Gpu(Arc<Gpu>),
    Cpu,
}

/// Evaluates loss expressions and their gradients on a GPU (or on the CPU reference when no
/// adapter exists and fallback is allowed). `Engine` is `Send + Sync`: threads may share one,
/// and every evaluation is one submission whose scratch buffers no other evaluation touches
/// until it has completed.
///
/// ```no_run
/// # fn main() -> Result<(), segloss::Error> {
/// use segloss::{Engine, Input, LossExpr, Mode};
/// let engine = Engine::new_blocking()?;
/// let logits = vec![0.3f32; 2 * 1 * 8 * 8];
/// let target: Vec<f32> = (0..128).map(|i| (i % 3 == 0) as u8 as f32).collect();
/// let input = Input::dense(&logits, &target, &[2, 1, 8, 8], Mode::Binary)?;
/// let expr: LossExpr = "0.5*bce+0.5*dice".parse()?;
/// let out = engine.evaluate_blocking(&input, &[expr], true)?;
/// println!("{} on {}", out[0].value, engine.info().name);
/// # Ok(()) }
/// ```
pub struct Engine {
    pub(crate) backend: Backend,
    info: DeviceInfo,
}

/// The result of evaluating one expression.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The value of the expression.
    pub value: f64,
    /// Each term's value, before its weight.
    pub term_values: Vec<f64>,
    /// `d value / d logits` in the logits' layout, when read back to the host.
    pub grad: Option<Vec<f32>>,
    /// The entries the value reduces, for an expression with `reduction=none`.
    pub unreduced: Option<Unreduced>,
    /// Deep supervision: the gradients by the predictions of levels 1, 2, ... when read back
    /// (`grad` is level 0's); empty otherwise.
    pub level_grads: Vec<Vec<f32>>,
}

/// The unreduced entries of a `reduction=none` expression ([`crate::expr::Reduction::None`]),
/// scaled by the term's factor: one per group of a region loss (`[C']` for `pool=batch`,
/// `[N, C']` for `image`, `[N]` for `image_all` and per-image gdice, `[1]` for `all` and batch
/// gdice), one per element of bce and focal (`[N, C, S...]`; softmax focal: zero off the true
/// class), one per pixel of ce (`[N, S...]`). Ignored entries are 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreduced {
    /// The entries' shape.
    pub shape: Vec<usize>,
    /// The entries, row-major.
    pub values: Vec<f32>,
}

/// What to do with gradients of a prepared or host input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradMode {
    /// Values only: no gradient pass runs.
    Skip,
    /// Compute the gradient and read it back into [`Evaluation::grad`].
    Read,
    /// Compute the gradient on the device and leave it there (benchmarks).
    DeviceOnly,
}

/// Submissions and host waits an engine has made, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Command submissions to the queue.
    pub submissions: u64,
    /// Times the host waited for results of the device.
    pub host_waits: u64,
}

/// A batch uploaded to the device once, evaluated many times.
pub struct Prepared<'a> {
    input: Input<'a>,
    logits: Option<crate::gpu::poll::Held>,
    target: Option<crate::gpu::poll::Held>,
    /// [`Input::first_soft`], found once here rather than on every evaluation.
    first_soft: Option<usize>,
    /// [`counted`]: the target entries that count, found once here (uploaded inputs only).
    counted: usize,
    /// The engine's device context that uploaded the buffers (uploaded inputs only): another
    /// engine refuses them (wgpu's own ids can coincide across instances).
    gpu: Option<Arc<Gpu>>,
}

impl Prepared<'_> {
    /// The input this batch was made from.
    pub fn input(&self) -> &Input<'_> {
        &self.input
    }
}

/// `len` f32 or u32 elements of a caller's buffer, from byte `offset` (a multiple of the
/// device's `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy, Debug)]
pub struct BufferSlice<'a> {
    /// The buffer; it needs `BufferUsages::STORAGE`.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset.
    pub offset: u64,
    /// Elements (4 bytes each).
    pub len: u64,
}

impl<'a> BufferSlice<'a> {
    /// `len` elements from byte `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, len: u64) -> Self {
        BufferSlice { buffer, offset, len }
    }

    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        BufferSlice { buffer, offset: 0, len: buffer.size() / 4 }
    }

    /// The slice's bytes (saturating: a length past the address space fails the size checks).
    fn bytes(&self) -> u64 {
        self.len.saturating_mul(4)
    }
}

/// Targets in a caller's buffer.
#[derive(Clone, Copy, Debug)]
pub enum TargetBuffer<'a> {
    /// Class indices as `u32`, `[N, S...]` (multiclass).
    ClassU32(BufferSlice<'a>),
    /// Class indices as `i32`, `[N, S...]` (multiclass; e.g. PyTorch's `-100` as ignore index).
    ClassI32(BufferSlice<'a>),
    /// Dense `f32` targets of the logits' shape (binary, multilabel).
    Dense(BufferSlice<'a>),
}

impl<'a> TargetBuffer<'a> {
    pub(crate) fn slice(&self) -> BufferSlice<'a> {
        match *self {
            TargetBuffer::ClassU32(s) | TargetBuffer::ClassI32(s) | TargetBuffer::Dense(s) => s,
        }
    }
}

/// A batch in the caller's buffers: logits `[N, C, S...]` as f32, and targets. The checks that a
/// host [`Input`] gets on the host (class range, ignore index, targets in [0, 1], hard labels for
/// Lovász, finite logits) run on the device, in the statistics pass (or, for Lovász losses alone,
/// their key pass), and come back as a typed error with the result.
///
/// A batch larger than one binding ([`Engine::max_binding_bytes`]) is evaluated in pieces by
/// [`Engine::evaluate_buffers`] and batches: each piece is copied into buffers of its own, so
/// the slices then need `COPY_SRC` (and a gradient slice `COPY_DST`, plus `COPY_SRC` to be added
/// to) rather than `STORAGE`.
///
/// Every buffer must come from the engine's own device ([`Engine::device`]). A buffer of
/// another device of the same `wgpu::Instance` is an [`Error::Gpu`]; one of another `Instance`
/// cannot be told apart (wgpu's ids of different instances can coincide), so wgpu may bind a
/// buffer of the engine's own device in its place, or panic.
#[derive(Clone, Debug)]
pub struct BufferInput<'a> {
    logits: BufferSlice<'a>,
    target: TargetBuffer<'a>,
    shape: Vec<usize>,
    mode: Mode,
    ignore_index: Option<i64>,
    /// The ignore index as the target word it matches.
    ignore_word: Option<u32>,
    kind: InputKind,
}

impl<'a> BufferInput<'a> {
    /// Checks what can be checked without reading the buffers: shape, lengths (and that each
    /// slice lies within its buffer, before any size is computed from them), mode, ignore index.
    pub fn new(
        logits: BufferSlice<'a>,
        target: TargetBuffer<'a>,
        shape: &[usize],
        mode: Mode,
        ignore_index: Option<i64>,
    ) -> Result<Self, Error> {
        let numel = crate::input::check_shape(shape, mode)?;
        if logits.len != numel as u64 {
            return Err(Error::Shape(format!(
                "the logits slice has {} elements but shape {shape:?} needs {numel}",
                logits.len
            )));
        }
        let c = shape[1];
        let (want, what) = match (&target, mode) {
            (TargetBuffer::Dense(_), Mode::Binary | Mode::Multilabel) => {
                (numel, "dense targets have the logits' shape")
            }
            (TargetBuffer::ClassU32(_) | TargetBuffer::ClassI32(_), Mode::Multiclass) => {
                (numel / c, "class indices are [N, S...]")
            }
            (TargetBuffer::Dense(_), Mode::Multiclass) => {
                return Err(Error::Input("multiclass mode needs class-index targets, got a dense f32 target".into()))
            }
            (_, m) => return Err(Error::Input(format!("{m} mode needs dense f32 targets, got class indices"))),
        };
        if target.slice().len != want as u64 {
            return Err(Error::Shape(format!(
                "the target slice has {} elements but shape {shape:?} needs {want} ({what})",
                target.slice().len
            )));
        }
        check_bounds("logits", &logits)?;
        check_bounds("target", &target.slice())?;
        let ignore_word = match (ignore_index, &target) {
            (None, _) => None,
            (Some(k), TargetBuffer::ClassU32(_)) => Some(u32::try_from(k).map_err(|_| {
                Error::Input(format!("ignore index {k} is not a u32 (the targets are u32 class indices)"))
            })?),
            (Some(k), TargetBuffer::ClassI32(_)) => Some(
                i32::try_from(k)
                    .map_err(|_| Error::Input(format!("ignore index {k} is not an i32 (the targets are i32)")))?
                    as u32,
            ),
            (Some(k), TargetBuffer::Dense(_)) => Some((k as f32).to_bits()),
        };
        Ok(BufferInput {
            logits,
            target,
            shape: shape.to_vec(),
            mode,
            ignore_index,
            ignore_word,
            kind: InputKind::Logits,
        })
    }

    /// The same buffers read as `kind`: with [`InputKind::Probs`] the first slice holds
    /// probabilities, which the statistics pass checks to lie in [0, 1].
    pub fn with_kind(mut self, kind: InputKind) -> Self {
        self.kind = kind;
        self
    }

    /// Whether the first slice holds logits or probabilities.
    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// The logits' shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Whether the input must be evaluated in pieces for `exprs` on `gpu`
    /// ([`crate::stats::pieces_reason`]).
    pub(crate) fn past_limit(&self, gpu: &Gpu, exprs: &[LossExpr]) -> bool {
        crate::stats::pieces_reason(gpu, &self.shape, self.mode, self.kind, exprs, self.target.slice().bytes())
            .is_some()
    }
    /// The logits' slice.
    pub fn logits_slice(&self) -> &BufferSlice<'a> {
        &self.logits
    }
    /// The targets' slice and type.
    pub fn target_buffer(&self) -> &TargetBuffer<'a> {
        &self.target
    }
    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The ignore index.
    pub fn ignore_index(&self) -> Option<i64> {
        self.ignore_index
    }
}

/// Where the gradient of one expression goes, for [`Engine::evaluate_buffers`].
///
/// A slice may lie in the same buffer as the logits or the targets (a framework's memory pool
/// hands out pieces of one buffer), as long as the ranges do not overlap: the gradient pass then
/// writes scratch, copied into the slice in the same submission unless the input is bad (a bad
/// input leaves the slice as it was), and the buffer needs `COPY_SRC` for [`GradOut::Add`] (the
/// scratch starts from a copy of the slice).
#[derive(Clone, Copy, Debug)]
pub enum GradOut<'a> {
    /// No gradient.
    Skip,
    /// Read back into [`Evaluation::grad`].
    Host,
    /// Written into this slice (the logits' layout), overwriting it.
    Write(BufferSlice<'a>),
    /// Added to this slice (`+=`): a loss added to a gradient that is already there.
    Add(BufferSlice<'a>),
}

/// An evaluation submitted with [`Engine::submit_buffers`] whose values stay on the device: no
/// host wait was made. [`Submitted::values`] holds, per expression, its value then its term
/// values (f32, at [`Submitted::value_offset`]), then eight status words; [`Submitted::read`]
/// reads them (one more submission and one wait) and reports bad input as a typed error.
pub struct Submitted {
    gpu: Arc<Gpu>,
    /// (dropped under the engine's device lock: [`crate::gpu::poll::Held`])
    values: crate::gpu::poll::Held,
    vals: Vec<(usize, usize)>,
    vals_len: usize,
    weights: Vec<Vec<f64>>,
    shape: Vec<usize>,
    errors: ReadFuture,
}

impl Submitted {
    /// The device buffer of values and status words.
    pub fn values(&self) -> &wgpu::Buffer {
        &self.values
    }

    /// Byte offset of expression `i`'s value in [`Submitted::values`] (its term values follow).
    pub fn value_offset(&self, i: usize) -> Option<u64> {
        self.vals.get(i).map(|v| (v.0 * 4) as u64)
    }

    /// Reads the values back and checks the status words: one submission, one wait.
    pub async fn read(self) -> Result<Vec<Evaluation>, Error> {
        self.errors.await?;
        let bytes = (self.vals_len * 4 + 32) as u64;
        let mut rec = Recording::new(&self.gpu.limits);
        let src = rec.external(&self.values, 0, bytes);
        let rb = rec.readback(bytes, "values")?;
        rec.copy(src, rb);
        let fut = self.gpu.execute(rec);
        self.gpu.note_wait();
        let data = fut.await?;
        let vals = words(&data[0]);
        let (v, status) = vals.split_at(self.vals_len);
        status_error(status, &self.shape)?;
        finish_values(v, &self.vals, &self.weights).map(|vals| {
            vals.into_iter()
                .map(|(value, term_values)| Evaluation {
                    value,
                    term_values,
                    grad: None,
                    unreduced: None,
                    level_grads: Vec::new(),
                })
                .collect()
        })
    }
}

pub(crate) fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The evaluations of one recorded evaluation: `vals` holds its values then its status words;
/// `data` the staging buffers of its recording, from which its host gradients are taken. An
/// overflow of any expression is the error of the whole ([`decode_each`] keeps them apart).
pub(crate) fn decode(
    vals: &[u32],
    r: &Recorded,
    shape: &[usize],
    exprs: &[LossExpr],
    data: &[Vec<u8>],
) -> Result<Vec<Evaluation>, Error> {
    decode_each(vals, r, shape, exprs, data)?.into_iter().collect()
}

/// [`decode`], each expression's evaluation or overflow on its own; the error of the whole is the
/// input's (the status words: bad input).
pub(crate) fn decode_each(
    vals: &[u32],
    r: &Recorded,
    shape: &[usize],
    exprs: &[LossExpr],
    data: &[Vec<u8>],
) -> Result<Vec<Result<Evaluation, Error>>, Error> {
    let (v, status) = vals.split_at(r.vals_len);
    status_error(status, shape)?;
    let weights: Vec<Vec<f64>> = exprs.iter().map(|e| e.terms.iter().map(|t| t.weight).collect()).collect();
    Ok(finish_each(v, &r.vals, &weights)
        .into_iter()
        .zip(&r.grad_reads)
        .zip(r.unreduced.iter().zip(exprs))
        .map(|((value, gr), (ur, e))| {
            let (value, term_values) = value?;
            Ok(Evaluation {
                value,
                term_values,
                grad: gr.map(|(i, off, len)| {
                    bytemuck::pod_collect_to_vec::<u8, f32>(&data[i][off as usize..(off + len) as usize])
                }),
                unreduced: ur.as_ref().and_then(|u| unreduced_of(u, e, shape, data)),
                level_grads: Vec::new(),
            })
        })
        .collect())
}

/// The unreduced entries of `e` from the staging buffers: read as the device wrote them (the
/// spatial dims put back), or the groups' losses from the statistics sums.
fn unreduced_of(u: &UnreducedRead, e: &LossExpr, shape: &[usize], data: &[Vec<u8>]) -> Option<Unreduced> {
    let term = e.terms.first()?;
    match u {
        UnreducedRead::Entries(i, off, len, sh) => {
            let values = bytemuck::pod_collect_to_vec::<u8, f32>(&data[*i][*off as usize..(off + len) as usize]);
            let mut shape_out: Vec<usize> = sh[..sh.len() - 1].to_vec();
            shape_out.extend(&shape[2..]);
            Some(Unreduced { shape: shape_out, values })
        }
        UnreducedRead::Sums(i, off) => {
            let crate::expr::Loss::Region(r) = &term.loss else { return None };
            let (n, c) = (shape[0], shape[1]);
            let bytes = n * c * crate::plan::K * 4;
            let f: Vec<f32> = bytemuck::pod_collect_to_vec(&data[*i][*off as usize..*off as usize + bytes]);
            let sums: Vec<f64> = f.iter().map(|&x| f64::from(x)).collect();
            let view =
                crate::plan::Sums { data: &sums, n, c, k: crate::plan::K, tpmin: Some(crate::plan::ch::TPMIN_DEV) };
            let values = crate::plan::region_entries(r, &view).iter().map(|&v| (term.weight * v) as f32).collect();
            Some(Unreduced { shape: r.entry_shape(n, c), values })
        }
    }
}

/// One expression on the f64 CPU reference, as an [`Evaluation`] (the gradient when `grad`).
pub(crate) fn reference_evaluation(input: &Input<'_>, e: &LossExpr, grad: bool) -> Result<Evaluation, Error> {
    let r = reference::evaluate(input, e)?;
    Ok(Evaluation {
        value: r.value,
        term_values: r.term_values,
        grad: grad.then(|| r.grad.iter().map(|&g| g as f32).collect()),
        unreduced: r.unreduced.map(|(shape, v)| Unreduced { shape, values: v.iter().map(|&x| x as f32).collect() }),
        level_grads: if grad {
            r.level_grads.iter().map(|g| g.iter().map(|&x| x as f32).collect()).collect()
        } else {
            Vec::new()
        },
    })
}

/// Lovász needs hard 0/1 labels: the error of an input of `shape` whose target is soft at
/// `first_soft()` ([`Input::first_soft`], which reads the whole target: called only where an
/// expression has a Lovász term).
pub(crate) fn check_hard_labels(
    exprs: &[LossExpr],
    first_soft: impl FnOnce() -> Option<usize>,
    shape: &[usize],
) -> Result<(), Error> {
    if !exprs.iter().any(|e| e.has_lovasz()) {
        return Ok(());
    }
    match first_soft() {
        Some(i) => Err(soft_target(shape, i)),
        None => Ok(()),
    }
}

/// The error of a soft target value at flat index `i` of `shape` under a Lovász loss (host and
/// device checks alike).
pub(crate) fn soft_target(shape: &[usize], i: usize) -> Error {
    Error::TargetValue(format!(
        "lovasz needs hard 0/1 labels, but target element {i} ({}) is soft",
        crate::input::describe_index(shape, i)
    ))
}

/// Values of each expression in f64 from the device's f32 term values; an overflow is an error.
fn finish_values(v: &[u32], layout: &[(usize, usize)], weights: &[Vec<f64>]) -> Result<Vec<(f64, Vec<f64>)>, Error> {
    finish_each(v, layout, weights).into_iter().collect()
}

/// [`finish_values`], each expression's value or overflow on its own.
fn finish_each(v: &[u32], layout: &[(usize, usize)], weights: &[Vec<f64>]) -> Vec<Result<(f64, Vec<f64>), Error>> {
    layout
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (&(at, nt), w))| {
            let tv: Vec<f64> = v[at + 1..at + 1 + nt].iter().map(|&b| f64::from(f32::from_bits(b))).collect();
            let value: f64 = tv.iter().zip(w).map(|(t, w)| t * w).sum();
            check_value(value, &tv).map_err(|e| of_expression(i, e))?;
            Ok((value, tv))
        })
        .collect()
}

/// An overflow of expression `i` of a call, named so.
pub(crate) fn of_expression(i: usize, err: Error) -> Error {
    match err {
        Error::Overflow(m) if !m.starts_with("expression ") => Error::Overflow(format!("expression {}: {m}", i + 1)),
        e => e,
    }
}

/// A value (or term value) outside the f32 range is an overflow error, on every engine (a
/// call's evaluations name the expression: [`of_expression`]).
pub(crate) fn check_value(value: f64, terms: &[f64]) -> Result<(), Error> {
    if let Some(t) = terms.iter().position(|t| !t.is_finite() || t.abs() > F32_MAX) {
        return Err(Error::Overflow(format!("term {} has value {} (outside the f32 range)", t + 1, terms[t])));
    }
    if !value.is_finite() || value.abs() > F32_MAX {
        return Err(Error::Overflow(format!("the value {value:e} is outside the f32 range")));
    }
    Ok(())
}

/// The typed error of the status words the statistics pass wrote, if any.
pub(crate) fn status_error(status: &[u32], shape: &[usize]) -> Result<(), Error> {
    status_error_at(status, shape, &|i, _| i)
}

/// [`status_error`] of one piece of a batch: `map(i, planes)` turns the piece's element `i` of
/// an array of `planes` planes (C for logits and dense targets, 1 for class indices) into the
/// batch's.
pub(crate) fn status_error_at(
    status: &[u32],
    shape: &[usize],
    map: &dyn Fn(usize, usize) -> usize,
) -> Result<(), Error> {
    let flags = status.first().copied().unwrap_or(0);
    if flags == 0 {
        return Ok(());
    }
    let planes = |bit: u32| if bit == check::CLASS { 1 } else { shape[1] };
    let at = |bit: u32| {
        let raw = status.get(1 + bit.trailing_zeros() as usize).copied().unwrap_or(0);
        map((u32::MAX - raw) as usize, planes(bit))
    };
    let label_shape: Vec<usize> = std::iter::once(shape[0]).chain(shape[2..].iter().copied()).collect();
    if flags & check::NONFINITE != 0 {
        let i = at(check::NONFINITE);
        return Err(Error::NonFinite(format!(
            "logits element {i} ({}) is NaN or infinite",
            crate::input::describe_index(shape, i)
        )));
    }
    if flags & check::NEGINF != 0 {
        let i = at(check::NEGINF);
        return Err(Error::NonFinite(format!(
            "logits element {i} ({}) is -inf where a finite logit is needed: the true class of ce or softmax \
             focal, any class of a sigmoid focal or a label-smoothed ce, or a pixel whose logits are all -inf",
            crate::input::describe_index(shape, i)
        )));
    }
    if flags & check::PROB != 0 {
        let i = at(check::PROB);
        return Err(Error::Input(format!(
            "probability element {i} ({}) is outside [0, 1]",
            crate::input::describe_index(shape, i)
        )));
    }
    if flags & check::CLASS != 0 {
        let i = at(check::CLASS);
        return Err(Error::ClassIndex(format!(
            "target element {i} ({}) is not a class in 0..{} and not the ignore index",
            crate::input::describe_index(&label_shape, i),
            shape[1]
        )));
    }
    if flags & check::RANGE != 0 {
        let i = at(check::RANGE);
        return Err(Error::TargetValue(format!(
            "target element {i} ({}) is outside [0, 1] and not the ignore value",
            crate::input::describe_index(shape, i)
        )));
    }
    Err(soft_target(shape, at(check::SOFT)))
}

/// Where an evaluation's input lives.
pub(crate) enum Source<'s> {
    /// A host input uploaded into these slices (target words: class indices, or f32 bits);
    /// `groups` inputs of its shape one after the other (a coalesced batch), 1 otherwise;
    /// `counted`: its target entries that count ([`counted`]), where the caller found them.
    Host {
        input: &'s Input<'s>,
        logits: BufferSlice<'s>,
        target: BufferSlice<'s>,
        groups: usize,
        counted: Option<usize>,
    },
    Buffers(&'s BufferInput<'s>),
}

impl Source<'_> {
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Source::Host { input, .. } => input.shape(),
            Source::Buffers(b) => &b.shape,
        }
    }

    fn mode(&self) -> Mode {
        match self {
            Source::Host { input, .. } => input.mode(),
            Source::Buffers(b) => b.mode,
        }
    }

    fn kind(&self) -> InputKind {
        match self {
            Source::Host { input, .. } => input.kind(),
            Source::Buffers(b) => b.kind,
        }
    }
}

/// The target entries of a host input that count (not the ignore index): elements of dense
/// targets, pixels of class indices.
pub(crate) fn counted(input: &Input<'_>) -> usize {
    let ign = input.ignore_index();
    match input.target() {
        Target::Dense(t) => match ign {
            Some(k) => t.iter().filter(|&&v| v != k as f32).count(),
            None => t.len(),
        },
        Target::Labels(t) => match ign {
            Some(k) => t.iter().filter(|&&v| v != k).count(),
            None => t.len(),
        },
    }
}

/// The target words the device reads for a host input: class indices, or the f32 bits of dense
/// values; the ignore index becomes [`INVALID`].
pub(crate) fn target_words(input: &Input<'_>) -> Vec<u32> {
    match input.target() {
        Target::Dense(t) => {
            let ign = input.ignore_index().map(|k| k as f32);
            t.iter().map(|&v| if Some(v) == ign { INVALID } else { v.to_bits() }).collect()
        }
        Target::Labels(t) => {
            t.iter().map(|&v| if Some(v) == input.ignore_index() { INVALID } else { v as u32 }).collect()
        }
    }
}

impl Engine {
    /// Opens the best adapter (`SEGLOSS_BACKEND` and `SEGLOSS_ADAPTER` choose), or falls back to
    /// the CPU reference when none exists; [`Engine::info`] says which.
    pub async fn new() -> Result<Engine, Error> {
        Engine::with_options(&EngineOptions::try_from_env()?).await
    }

    /// Opens a GPU adapter and fails when none exists.
    pub async fn gpu() -> Result<Engine, Error> {
        Engine::with_options(&EngineOptions { allow_cpu_fallback: false, ..EngineOptions::try_from_env()? }).await
    }

    /// Opens an adapter chosen by `opts`.
    pub async fn with_options(opts: &EngineOptions) -> Result<Engine, Error> {
        match Engine::open(opts).await {
            Ok(e) => Ok(e),
            Err(Error::NoAdapter(why)) if opts.allow_cpu_fallback => Ok(Engine::cpu(Some(why))),
            Err(e) => Err(e),
        }
    }

    /// The f64 CPU reference as an engine.
    pub fn cpu(reason: Option<String>) -> Engine {
        Engine {
            backend: Backend::Cpu,
            info: DeviceInfo {
                name: "CPU reference (f64)".into(),
                backend: "cpu".into(),
                device_type: "Cpu".into(),
                driver: String::new(),
                fallback_reason: reason,
            },
        }
    }

    async fn open(opts: &EngineOptions) -> Result<Engine, Error> {
        Engine::open_adapter(pick_adapter(opts).await?, opts).await
    }

    /// An engine on adapter `i` of [`list_adapters`] (a [`crate::MultiEngine`]'s).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn open_nth(opts: &EngineOptions, i: usize) -> Result<Engine, Error> {
        Engine::open_adapter(crate::gpu::context::nth_adapter(opts, i).await?, opts).await
    }

    async fn open_adapter(adapter: wgpu::Adapter, opts: &EngineOptions) -> Result<Engine, Error> {
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("segloss"),
                // timestamps for Engine::profile_prepared_blocking, and subgroup operations for
                // the statistics of CPU adapters (Gpu::subgroup), where the adapter has them
                required_features: adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{}: cannot open a device: {e}", info.name)))?;
        let gpu = Gpu::new(&info, device, queue, true, opts.max_binding_bytes).await?;
        Ok(Engine { backend: Backend::Gpu(Arc::new(gpu)), info: DeviceInfo::of(&info) })
    }

    /// An engine on a device the caller already has (a wgpu program's, or a framework's such as
    /// burn's wgpu backend): segloss records into its queue and binds its buffers, and never
    /// installs a handler on it. `info` is the adapter's, for [`Engine::info`] and for tuning.
    /// `SEGLOSS_MAX_BINDING_BYTES` lowers the binding limit it plans with, as for
    /// [`EngineOptions::max_binding_bytes`]. The device needs more than WebGPU's default limits
    /// (9 storage buffers per shader stage against 8): open it with the adapter's
    /// (`required_limits: adapter.limits()`), or this is an [`Error::NoAdapter`] naming them.
    ///
    /// ```no_run
    /// # async fn f(adapter: wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Result<(), segloss::Error> {
    /// let engine = segloss::Engine::from_device(&adapter.get_info(), device, queue).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_device(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Engine, Error> {
        let gpu = Gpu::new(info, device, queue, false, EngineOptions::try_from_env()?.max_binding_bytes).await?;
        Ok(Engine { backend: Backend::Gpu(Arc::new(gpu)), info: DeviceInfo::of(info) })
    }

    /// What the engine runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Whether this engine is the CPU reference.
    pub fn is_cpu(&self) -> bool {
        matches!(self.backend, Backend::Cpu)
    }

    /// The device, on a GPU engine. On a device the engine opened itself, errors of the caller's
    /// own calls on it that no error scope of the caller's catches are kept, not raised (the
    /// engine's handler replaces wgpu's default one, which panics), and a buffer such a call
    /// failed to make is refused, as a typed error, by the evaluation that is given it.
    pub fn device(&self) -> Option<&wgpu::Device> {
        match &self.backend {
            Backend::Gpu(g) => Some(&g.device),
            Backend::Cpu => None,
        }
    }

    /// The queue, on a GPU engine.
    pub fn queue(&self) -> Option<&wgpu::Queue> {
        match &self.backend {
            Backend::Gpu(g) => Some(&g.queue),
            Backend::Cpu => None,
        }
    }

    /// The limits the engine plans with.
    pub fn limits(&self) -> Option<&wgpu::Limits> {
        match &self.backend {
            Backend::Gpu(g) => Some(&g.limits),
            Backend::Cpu => None,
        }
    }

    /// The largest input binding the engine plans with, bytes: inputs with more logits are
    /// evaluated in pieces (and a Lovász-Softmax on logits with more than C / (C + 2) of it, whose
    /// weights hold each pixel's log-sum-exp too). The device's limit, or the lower one of
    /// [`EngineOptions::max_binding_bytes`]; `None` on the CPU engine.
    pub fn max_binding_bytes(&self) -> Option<u64> {
        self.gpu_ref().map(|g| crate::stats::binding_limit(g))
    }

    /// Submissions and host waits so far.
    pub fn activity(&self) -> Activity {
        match &self.backend {
            Backend::Gpu(g) => Activity {
                submissions: g.counters.submissions.load(Ordering::Relaxed),
                host_waits: g.counters.waits.load(Ordering::Relaxed),
            },
            Backend::Cpu => Activity::default(),
        }
    }

    /// Frees the scratch buffers kept between evaluations (up to 4 GiB of device memory: an
    /// evaluation reuses the buffers of the last one of the same shape rather than allocating).
    pub fn release_scratch(&self) {
        if let Backend::Gpu(g) = &self.backend {
            g.pool.clear();
        }
    }

    /// Bytes of idle scratch buffers the engine keeps for reuse.
    pub fn scratch_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Gpu(g) => g.pool.bytes(),
            Backend::Cpu => 0,
        }
    }

    /// Longest segment the Lovász sort gives to the bitonic network on this adapter
    /// ([`BITONIC_CROSSOVER_CPU`] on a CPU adapter, 2048 on a GPU; 0 on the CPU engine).
    pub fn bitonic_crossover(&self) -> usize {
        match &self.backend {
            Backend::Gpu(g) => g.bitonic_upto.load(std::sync::atomic::Ordering::Relaxed),
            Backend::Cpu => 0,
        }
    }

    /// Uploads a batch once, for repeated evaluation with [`Engine::evaluate_prepared`].
    pub fn prepare<'a>(&self, input: Input<'a>) -> Result<Prepared<'a>, Error> {
        let first_soft = input.first_soft();
        let Backend::Gpu(gpu) = &self.backend else {
            return Ok(Prepared { input, logits: None, target: None, first_soft, counted: 0, gpu: None });
        };
        let bytes = (input.logits().len() * 4) as u64;
        if bytes > crate::stats::binding_limit(gpu) {
            // past the binding limit: kept on the host, evaluated in pieces
            return Ok(Prepared { input, logits: None, target: None, first_soft, counted: 0, gpu: None });
        }
        let words = target_words(&input);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let logits = gpu.buffer_init("logits", bytemuck::cast_slice(input.logits()), usage)?;
        let target = gpu.buffer_init("target", bytemuck::cast_slice(&words), usage)?;
        let counted = counted(&input);
        Ok(Prepared {
            input,
            logits: Some(gpu.held(logits)),
            target: Some(gpu.held(target)),
            first_soft,
            counted,
            gpu: Some(gpu.clone()),
        })
    }

    /// An uploaded batch must live on this engine's device (the CPU reference reads its input).
    pub(crate) fn check_prepared(&self, prep: &Prepared<'_>) -> Result<(), Error> {
        match (&self.backend, &prep.gpu) {
            (Backend::Gpu(gpu), Some(g)) if !Arc::ptr_eq(g, gpu) => Err(Error::Input(
                "a batch prepared by another engine (its buffers are on that engine's device): prepare it with this engine"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Evaluates several expressions on one batch: one statistics pass for all of them, the
    /// finalize and one gradient pass per expression, in one submission with one host wait.
    /// An expression whose value (or a term's) falls outside the f32 range fails the call with an
    /// [`Error::Overflow`] that names it (`expression 2: ...`): evaluate it apart (its own call,
    /// or its own request of a [`crate::Batch`]) to keep the others' results.
    pub async fn evaluate(&self, input: &Input<'_>, exprs: &[LossExpr], grads: bool) -> Result<Vec<Evaluation>, Error> {
        if input.levels() > 1 || exprs.iter().any(|e| e.deep.is_some()) {
            // each level is uploaded by the batch of the levels
            return self.evaluate_levels(input, exprs, if grads { GradMode::Read } else { GradMode::Skip }).await;
        }
        let prep = self.prepare(input.clone())?;
        self.evaluate_prepared(&prep, exprs, if grads { GradMode::Read } else { GradMode::Skip }).await
    }

    /// [`Engine::evaluate`] on an uploaded batch. A batch uploaded by another engine is an
    /// [`Error::Input`].
    pub async fn evaluate_prepared(
        &self,
        prep: &Prepared<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        self.check_prepared(prep)?;
        let input = &prep.input;
        if input.levels() > 1 || exprs.iter().any(|e| e.deep.is_some()) {
            return self.evaluate_levels(input, exprs, grads).await;
        }
        for e in exprs {
            e.check_input(input.mode(), input.classes(), input.kind())?;
        }
        let gpu = match &self.backend {
            Backend::Cpu => {
                return exprs
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        reference_evaluation(input, e, grads == GradMode::Read).map_err(|err| of_expression(i, err))
                    })
                    .collect()
            }
            Backend::Gpu(g) => g,
        };
        check_hard_labels(exprs, || prep.first_soft, input.shape())?;
        crate::input::check_neg_inf(input, exprs)?;
        let g = match grads {
            GradMode::Skip => Dest::Out(GradOut::Skip),
            GradMode::Read => Dest::Out(GradOut::Host),
            GradMode::DeviceOnly => Dest::Scratch,
        };
        let gs = vec![g; exprs.len()];
        let target_bytes = prep.target.as_ref().map_or(0, |b| b.size());
        let over =
            crate::stats::pieces_reason(gpu, input.shape(), input.mode(), input.kind(), exprs, target_bytes).is_some();
        let (Some(l), Some(t), false) = (&prep.logits, &prep.target, over) else {
            // an input past the device's limits, or uploaded whole but past them for these
            // expressions (the CPU engine returned above); a device-only gradient is computed
            // and not returned
            let mut out = self.evaluate_split(gpu, input, exprs, grads != GradMode::Skip).await?;
            if grads == GradMode::DeviceOnly {
                out.iter_mut().for_each(|e| e.grad = None);
            }
            return Ok(out);
        };
        let src = Source::Host {
            input,
            logits: BufferSlice::whole(l),
            target: BufferSlice::whole(t),
            groups: 1,
            counted: Some(prep.counted),
        };
        self.run(gpu, src, exprs, &gs).await
    }

    /// Evaluates expressions on the caller's buffers, writing each gradient where `grads` says
    /// (one entry per expression): one submission, one host wait for the values.
    pub async fn evaluate_buffers(
        &self,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        let gpu = self.buffer_gpu()?;
        if input.past_limit(gpu, exprs) {
            // past the binding limit the engine plans with: in pieces
            return self.evaluate_buffers_split(gpu, input, exprs, grads).await;
        }
        let gs: Vec<Dest<'_>> = grads.iter().map(|&g| Dest::Out(g)).collect();
        self.run(gpu, Source::Buffers(input), exprs, &gs).await
    }

    /// Submits an evaluation on the caller's buffers and returns without waiting: values and
    /// gradients stay on the device (one submission, no host wait). Gradients go to buffer
    /// slices ([`GradOut::Host`] is refused here: it would need a wait).
    pub fn submit_buffers(
        &self,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Submitted, Error> {
        let gpu = self.buffer_gpu()?;
        if grads.iter().any(|g| matches!(g, GradOut::Host)) {
            return Err(Error::Input("submit_buffers keeps results on the device: use GradOut::Write or Add".into()));
        }
        if exprs.iter().any(LossExpr::unreduced) {
            return Err(Error::Unsupported(
                "reduction=none entries are read to the host: use evaluate_buffers, not submit_buffers".into(),
            ));
        }
        let t = input.target.slice().bytes();
        if let Some((what, needed, max)) =
            crate::stats::pieces_reason(gpu, &input.shape, input.mode, input.kind, exprs, t)
        {
            return Err(Error::Limit {
                what: format!(
                    "submit_buffers of an input that must be evaluated in pieces ({what}; evaluate_buffers \
                     can: its pieces wait for their statistics)"
                ),
                needed,
                max,
            });
        }
        let mut rec = Recording::new(&gpu.limits);
        let gs: Vec<Dest<'_>> = grads.iter().map(|&g| Dest::Out(g)).collect();
        let r = self.record(gpu, &mut rec, &Source::Buffers(input), exprs, &gs, false)?.swap_remove(0);
        let bytes = (r.vals_len * 4 + 32) as u64;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let values = gpu.buffer("segloss values", bytes, usage)?;
        let dst = rec.external(&values, 0, bytes);
        let vb = (r.vals_len * 4) as u64;
        if vb > 0 {
            rec.copy(r.out.sub(0, vb), dst.sub(0, vb));
        }
        rec.copy(r.status, dst.sub(vb, 32));
        let errors = gpu.execute(rec);
        Ok(Submitted {
            gpu: gpu.clone(),
            values: gpu.held(values),
            vals: r.vals,
            vals_len: r.vals_len,
            weights: exprs.iter().map(|e| e.terms.iter().map(|t| t.weight).collect()).collect(),
            shape: input.shape.clone(),
            errors,
        })
    }

    fn buffer_gpu(&self) -> Result<&Arc<Gpu>, Error> {
        match &self.backend {
            Backend::Gpu(g) => Ok(g),
            Backend::Cpu => Err(Error::Unsupported("buffer inputs need a GPU engine, not the CPU reference".into())),
        }
    }

    async fn run(
        &self,
        gpu: &Arc<Gpu>,
        src: Source<'_>,
        exprs: &[LossExpr],
        grads: &[Dest<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        let shape = src.shape().to_vec();
        let fut = {
            let mut rec = Recording::new(&gpu.limits);
            let r = self.record(gpu, &mut rec, &src, exprs, grads, true)?.swap_remove(0);
            let fut = gpu.execute(rec);
            (r, fut)
        };
        let (r, fut) = fut;
        gpu.note_wait();
        let data: Vec<Vec<u8>> = fut.await?;
        let vi = r.values_read.ok_or_else(|| Error::Gpu("internal: values were not read".into()))?;
        decode(&words(&data[vi]), &r, &shape, exprs, &data)
    }

    /// Records one evaluation after checking the expressions and every caller buffer.
    pub(crate) fn record(
        &self,
        gpu: &Gpu,
        rec: &mut Recording,
        src: &Source<'_>,
        exprs: &[LossExpr],
        grads: &[Dest<'_>],
        read_values: bool,
    ) -> Result<Vec<Recorded>, Error> {
        if grads.len() != exprs.len() {
            return Err(Error::Input(format!("{} gradient outputs for {} expressions", grads.len(), exprs.len())));
        }
        let (shape, mode) = (src.shape(), src.mode());
        for e in exprs {
            e.check_input(mode, shape[1], src.kind())?;
            if e.deep.is_some() {
                return Err(Error::Unsupported(
                    "deep(...) evaluates the levels of a host Input (Engine::evaluate, Input::with_levels)".into(),
                ));
            }
        }
        let groups = match src {
            Source::Host { groups, .. } => *groups,
            Source::Buffers(_) => 1,
        };
        let (n, c) = (shape[0] * groups, shape[1]);
        let s: usize = shape[2..].iter().product();
        let numel = (n * c * s) as u64;
        let softmax = mode == Mode::Multiclass;
        let inp = match src {
            Source::Host { logits, target, groups, counted, .. } => DevInput {
                logits: rec.external(logits.buffer, logits.offset, logits.bytes()),
                target: rec.external(target.buffer, target.offset, target.bytes()),
                n,
                c,
                s,
                softmax,
                probs: src.kind() == InputKind::Probs,
                groups: *groups,
                ignore: None,
                validate: 0,
                counted: *counted,
            },
            Source::Buffers(b) => buffer_dev_input(gpu, rec, b, exprs)?,
        };
        let to = grad_targets(gpu, rec, src, grads, numel)?;
        gpu.record_eval(rec, &inp, exprs, &to, read_values)
    }

    /// Deep supervision: each level of `input` (its predictions, the target resized to them)
    /// evaluated with the `deep(...)` expressions' terms times the level's weight, all levels in
    /// one submission (a batch); values and term values summed over the levels, the gradient of
    /// each level read back (`grad`: level 0, `level_grads`: the others).
    async fn evaluate_levels(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        let levels = input.levels();
        for e in exprs {
            e.check_levels(levels)?;
            e.check_input(input.mode(), input.classes(), input.kind())?;
        }
        // the -inf rules over every level first, so an error names its level (each level's
        // input below is one of its own)
        crate::input::check_neg_inf(input, exprs)?;
        let inputs: Vec<Input<'_>> = (0..levels).map(|l| input.level(l)).collect::<Result<_, _>>()?;
        let per_level: Vec<Vec<LossExpr>> = (0..levels)
            .map(|l| exprs.iter().map(|e| e.level(l, levels)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let weights: Vec<Vec<f64>> =
            exprs.iter().map(|e| e.deep.as_ref().map_or(Ok(vec![1.0]), |d| d.of(levels))).collect::<Result<_, _>>()?;
        let read = grads == GradMode::Read;
        let mut batch = self.batch();
        let pending: Vec<crate::Pending> = inputs
            .iter()
            .zip(&per_level)
            .map(|(i, e)| batch.push_level(i, e, grads != GradMode::Skip))
            .collect::<Result<_, _>>()?;
        batch.flush().await?;
        let mut out: Vec<Evaluation> = Vec::new();
        for (l, p) in pending.into_iter().enumerate() {
            for (i, mut ev) in p.await?.into_iter().enumerate() {
                let wl = weights[i].get(l).copied().unwrap_or(1.0);
                if !read {
                    ev.grad = None;
                }
                if l == 0 {
                    ev.term_values.iter_mut().for_each(|t| *t *= wl);
                    out.push(ev);
                    continue;
                }
                let o = &mut out[i];
                o.value += ev.value;
                o.term_values.iter_mut().zip(&ev.term_values).for_each(|(t, v)| *t += wl * v);
                if let Some(g) = ev.grad {
                    o.level_grads.push(g);
                }
            }
        }
        for (i, o) in out.iter().enumerate() {
            check_value(o.value, &o.term_values).map_err(|e| of_expression(i, e))?;
        }
        Ok(out)
    }

    /// Blocking [`Engine::new`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Engine, Error> {
        futures::executor::block_on(Engine::new())
    }

    /// Blocking [`Engine::with_options`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options_blocking(opts: &EngineOptions) -> Result<Engine, Error> {
        futures::executor::block_on(Engine::with_options(opts))
    }

    /// Blocking [`Engine::gpu`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gpu_blocking() -> Result<Engine, Error> {
        futures::executor::block_on(Engine::gpu())
    }

    /// Blocking [`Engine::from_device`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_device_blocking(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Engine, Error> {
        futures::executor::block_on(Engine::from_device(info, device, queue))
    }

    /// Blocking [`Engine::evaluate`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_blocking(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
    ) -> Result<Vec<Evaluation>, Error> {
        self.block(self.evaluate(input, exprs, grads))
    }

    /// Blocking [`Engine::evaluate_prepared`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_prepared_blocking(
        &self,
        prep: &Prepared<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        self.block(self.evaluate_prepared(prep, exprs, grads))
    }

    /// Evaluates like [`Engine::evaluate_prepared_blocking`] and returns where the time went: the
    /// device time of every dispatch (timestamp queries, each dispatch in a compute pass of its
    /// own), the device's span from the first dispatch to the last, and the wall time of the
    /// whole evaluation. Only this evaluation is timed (not those other threads make meanwhile);
    /// an input evaluated in pieces is one profile of all its submissions. Needs a device opened
    /// with `wgpu::Features::TIMESTAMP_QUERY` (the engine asks for it where the adapter has it);
    /// [`Error::Unsupported`] otherwise.
    ///
    /// ```
    /// # fn main() -> Result<(), segloss::Error> {
    /// use segloss::{Engine, GradMode, Input, LossExpr, Mode};
    /// let engine = Engine::gpu_blocking()?;
    /// let (logits, target) = (vec![0.5f32; 64 * 64], vec![0.0f32; 64 * 64]);
    /// let input = Input::dense(&logits, &target, &[1, 1, 64, 64], Mode::Binary)?;
    /// let prep = engine.prepare(input)?;
    /// let bce: LossExpr = "bce".parse()?;
    /// let profile = match engine.profile_prepared_blocking(&prep, &[bce], GradMode::DeviceOnly) {
    ///     Ok(p) => p,
    ///     Err(segloss::Error::Unsupported(why)) => return Ok(println!("{why}")), // no timestamps here
    ///     Err(e) => return Err(e),
    /// };
    /// for (kernel, dispatches, ms) in profile.by_kernel() {
    ///     println!("{kernel:<20} {dispatches:>3} {ms:.4} ms");
    /// }
    /// println!("device {:.4} ms of {:.4} ms", profile.device_ms, profile.wall_ms);
    /// assert!(profile.kernels.iter().any(|k| k.kernel == "stats"));
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_prepared_blocking(
        &self,
        prep: &Prepared<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<crate::Profile, Error> {
        self.profile_run(|| self.evaluate_prepared_blocking(prep, exprs, grads).map(drop))
    }

    /// [`Engine::profile_prepared_blocking`] of the training step's evaluation: the input in the
    /// caller's buffers (checked on the device), the gradients where `grads` says
    /// ([`Engine::evaluate_buffers_blocking`]; the values are read back as it does).
    ///
    /// ```
    /// # fn main() -> Result<(), segloss::Error> {
    /// use segloss::{BufferInput, BufferSlice, Engine, GradOut, LossExpr, Mode, TargetBuffer};
    /// use wgpu::util::DeviceExt;
    /// let engine = Engine::gpu_blocking()?;
    /// let Some(dev) = engine.device() else { return Ok(()) };
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    /// let init = |data: &[f32]| {
    ///     let contents = bytemuck::cast_slice(data);
    ///     dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    /// };
    /// let (logits, target, grad) = (init(&[0.5; 4096]), init(&[1.0; 4096]), init(&[0.0; 4096]));
    /// let target = TargetBuffer::Dense(BufferSlice::whole(&target));
    /// let input = BufferInput::new(BufferSlice::whole(&logits), target, &[1, 1, 64, 64], Mode::Binary, None)?;
    /// let bce: LossExpr = "bce".parse()?;
    /// let out = [GradOut::Write(BufferSlice::whole(&grad))];
    /// match engine.profile_buffers_blocking(&input, &[bce], &out) {
    ///     Ok(p) => assert!(p.kernels.iter().any(|k| k.kernel == "stats")),
    ///     Err(segloss::Error::Unsupported(why)) => println!("{why}"), // no timestamps here
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_buffers_blocking(
        &self,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<crate::Profile, Error> {
        self.profile_run(|| self.evaluate_buffers_blocking(input, exprs, grads).map(drop))
    }

    /// The profile of the evaluation `run` makes on this thread.
    #[cfg(not(target_arch = "wasm32"))]
    fn profile_run(&self, run: impl FnOnce() -> Result<(), Error>) -> Result<crate::Profile, Error> {
        let gpu = self.buffer_gpu()?;
        if !gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Unsupported(format!(
                "profiling needs timestamp queries, which the device on {} was not opened with",
                self.info.name
            )));
        }
        let sink = crate::gpu::profile::Sink::default();
        let t0 = std::time::Instant::now();
        let result = {
            // armed on this thread only, until the guard drops (an error or a panic included)
            let _armed = crate::gpu::profile::arm(sink.clone());
            run()
        };
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        result?;
        // the timestamps' readbacks complete with their submissions, before the device reports
        // them done
        gpu.wait_done()?;
        let kernels =
            std::mem::take(&mut *sink.lock().map_err(|_| Error::Gpu("internal: profile sink poisoned".into()))?);
        if kernels.is_empty() {
            return Err(Error::Gpu("the device returned no timestamps".into()));
        }
        Ok(crate::gpu::profile::normalize(kernels, wall_ms))
    }

    /// Blocking [`Engine::evaluate_buffers`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_buffers_blocking(
        &self,
        input: &BufferInput<'_>,
        exprs: &[LossExpr],
        grads: &[GradOut<'_>],
    ) -> Result<Vec<Evaluation>, Error> {
        self.block(self.evaluate_buffers(input, exprs, grads))
    }
}

/// Where the engine puts one expression's gradient: as the caller asked, or (a prepared batch's
/// [`GradMode::DeviceOnly`]) a scratch buffer nobody reads.
#[derive(Clone, Copy)]
pub(crate) enum Dest<'a> {
    Out(GradOut<'a>),
    Scratch,
}

/// A buffer input as the kernels bind it, its slices checked, with the checks the statistics
/// pass makes of its values (finite logits, class range or [0, 1], hard labels for Lovász).
pub(crate) fn buffer_dev_input(
    gpu: &Gpu,
    rec: &mut Recording,
    b: &BufferInput<'_>,
    exprs: &[LossExpr],
) -> Result<DevInput, Error> {
    let t = b.target.slice();
    check_slice(gpu, "logits", &b.logits, wgpu::BufferUsages::STORAGE)?;
    check_slice(gpu, "target", &t, wgpu::BufferUsages::STORAGE)?;
    let (l, t) =
        (rec.external(b.logits.buffer, b.logits.offset, b.logits.bytes()), rec.external(t.buffer, t.offset, t.bytes()));
    Ok(buffer_checks(b, exprs, l, t))
}

/// A buffer input whose data has been copied into `logits` and `target` (a piece of it: the
/// caller sets the piece's images and pixels).
pub(crate) fn buffer_dev_input_unchecked(
    rec: &mut Recording,
    b: &BufferInput<'_>,
    exprs: &[LossExpr],
    logits: &wgpu::Buffer,
    target: &wgpu::Buffer,
) -> DevInput {
    let (l, t) = (rec.external(logits, 0, logits.size()), rec.external(target, 0, target.size()));
    buffer_checks(b, exprs, l, t)
}

/// The device input of `b` bound as `logits` and `target`, with the checks the statistics pass
/// makes of its values (finite logits, class range or [0, 1], hard labels for Lovász).
fn buffer_checks(b: &BufferInput<'_>, exprs: &[LossExpr], logits: Slice, target: Slice) -> DevInput {
    DevInput {
        logits,
        target,
        n: b.shape[0],
        c: b.shape[1],
        s: b.shape[2..].iter().product(),
        softmax: b.mode == Mode::Multiclass,
        probs: b.kind == InputKind::Probs,
        groups: 1,
        ignore: b.ignore_word,
        validate: buffer_validation(b, exprs),
        counted: None,
    }
}

/// The checks the device makes of a buffer input for `exprs` (`check::` flags).
pub(crate) fn buffer_validation(b: &BufferInput<'_>, exprs: &[LossExpr]) -> u32 {
    let softmax = b.mode == Mode::Multiclass;
    let probs = b.kind == InputKind::Probs;
    let mut validate = if probs { check::PROB } else { check::NONFINITE };
    if softmax && !probs {
        // -inf logits mask a class: refused where the losses need its log-probability
        let rules = crate::input::neg_inf_rules(exprs, b.mode);
        if rules.any.is_some() {
            validate |= check::NEGINF_ANY;
        }
        if rules.live.is_some() {
            validate |= check::NEGINF_LIVE;
        }
        if rules.true_class.is_some() {
            validate |= check::NEGINF_TRUE;
        }
    }
    validate |= if softmax { check::CLASS } else { check::RANGE };
    if !softmax && exprs.iter().any(|e| e.has_lovasz()) {
        validate |= check::SOFT;
    }
    validate
}

/// Where each expression's gradient goes on the device, every caller slice checked (usage,
/// alignment, length `numel`, no overlap with the input, nor with another expression's slice
/// unless it is the same slice, as the split evaluation requires).
pub(crate) fn grad_targets(
    gpu: &Gpu,
    rec: &mut Recording,
    src: &Source<'_>,
    grads: &[Dest<'_>],
    numel: u64,
) -> Result<Vec<GradTo>, Error> {
    let mut to = Vec::with_capacity(grads.len());
    let mut seen: Vec<BufferSlice<'_>> = Vec::new();
    for g in grads {
        if let Dest::Out(GradOut::Write(sl) | GradOut::Add(sl)) = g {
            crate::batch::distinct_slice(&mut seen, sl)?;
        }
        let g = match g {
            // a prepared batch's device-only gradient (benchmarks): scratch, never read
            Dest::Scratch => {
                to.push(GradTo::Into { slice: rec.scratch(numel * 4, "gradient")?, accumulate: false, copy_to: None });
                continue;
            }
            Dest::Out(g) => g,
        };
        to.push(match g {
            GradOut::Skip => GradTo::Skip,
            GradOut::Host => GradTo::Host,
            GradOut::Write(sl) | GradOut::Add(sl) => {
                let accumulate = matches!(g, GradOut::Add(_));
                let input: Option<&BufferInput<'_>> = match src {
                    Source::Buffers(b) => Some(*b),
                    _ => None,
                };
                let shares = check_grad_slice(gpu, input, sl, accumulate, numel)?;
                let caller = rec.external(sl.buffer, sl.offset, sl.bytes());
                if shares {
                    // (the gradient pass copies the slice in first when it adds to it)
                    let scratch = rec.scratch(sl.bytes(), "gradient beside the input")?;
                    GradTo::Into { slice: scratch, accumulate, copy_to: Some(caller) }
                } else {
                    GradTo::Into { slice: caller, accumulate, copy_to: None }
                }
            }
        });
    }
    Ok(to)
}

/// The checks of a caller's gradient slice of `numel` elements: usage, alignment, length, no
/// overlap with the input's slices. Returns whether it shares a buffer with the input (a
/// framework's memory pool): the gradient pass then writes scratch, which a kernel copies into
/// the slice after it unless the input is bad (a gradient added to the slice starts from a copy
/// of it, so the buffer needs `COPY_SRC`).
pub(crate) fn check_grad_slice(
    gpu: &Gpu,
    input: Option<&BufferInput<'_>>,
    sl: &BufferSlice<'_>,
    accumulate: bool,
    numel: u64,
) -> Result<bool, Error> {
    check_slice(gpu, "gradient", sl, wgpu::BufferUsages::STORAGE)?;
    check_grad_extent(input, sl, numel)?;
    let shares = input.is_some_and(|b| [b.logits, b.target.slice()].iter().any(|o| sl.buffer == o.buffer));
    let usage = if accumulate { wgpu::BufferUsages::COPY_SRC } else { wgpu::BufferUsages::empty() };
    if shares && !sl.buffer.usage().contains(usage) {
        return Err(Error::Buffer(format!(
            "the gradient slice shares its buffer with the input, and then needs usage {usage:?}; it has {:?}",
            sl.buffer.usage()
        )));
    }
    Ok(shares)
}

/// The checks of a caller's gradient slice of input `b`, bound whole ([`check_grad_slice`]) or,
/// with `pieces`, copied into and out of the pieces' buffers (the usages of copies, no binding of
/// its size; as `evaluate_buffers_split` checks it).
pub(crate) fn check_item_grad(
    gpu: &Gpu,
    b: &BufferInput<'_>,
    sl: &BufferSlice<'_>,
    accumulate: bool,
    pieces: bool,
) -> Result<(), Error> {
    let numel = b.shape.iter().product::<usize>() as u64;
    if !pieces {
        return check_grad_slice(gpu, Some(b), sl, accumulate, numel).map(drop);
    }
    let copy = wgpu::BufferUsages::COPY_DST
        | if accumulate { wgpu::BufferUsages::COPY_SRC } else { wgpu::BufferUsages::empty() };
    check_slice_placement(gpu, "gradient", sl, copy)?;
    check_grad_extent(Some(b), sl, numel)
}

/// The checks of a gradient slice that hold whether the input is bound whole or in pieces (whose
/// slices need other usages and no binding of their size): its length, and no overlap with the
/// input's slices.
pub(crate) fn check_grad_extent(
    input: Option<&BufferInput<'_>>,
    sl: &BufferSlice<'_>,
    numel: u64,
) -> Result<(), Error> {
    if sl.len != numel {
        return Err(Error::Shape(format!("the gradient slice has {} elements but the logits have {numel}", sl.len)));
    }
    if let Some(b) = input {
        for (what, other) in [("logits", b.logits), ("target", b.target.slice())] {
            if overlaps(sl, &other) {
                return Err(Error::Buffer(format!("the gradient slice overlaps the {what} slice")));
            }
        }
    }
    Ok(())
}

fn check_slice(gpu: &Gpu, what: &str, s: &BufferSlice<'_>, usage: wgpu::BufferUsages) -> Result<(), Error> {
    check_slice_placement(gpu, what, s, usage)?;
    let max = gpu.limits.max_storage_buffer_binding_size;
    if s.bytes() > max {
        return Err(Error::Limit { what: format!("the {what} slice"), needed: s.bytes(), max });
    }
    Ok(())
}

/// The checks of a caller's slice that do not depend on binding it whole: `usage`, alignment,
/// bounds and length (a slice copied in pieces needs the copy usages instead of storage).
pub(crate) fn check_slice_placement(
    gpu: &Gpu,
    what: &str,
    s: &BufferSlice<'_>,
    usage: wgpu::BufferUsages,
) -> Result<(), Error> {
    if !s.buffer.usage().contains(usage) {
        return Err(Error::Buffer(format!("the {what} buffer needs usage {usage:?}, it has {:?}", s.buffer.usage())));
    }
    let align = u64::from(gpu.limits.min_storage_buffer_offset_alignment);
    if !s.offset.is_multiple_of(align) {
        return Err(Error::Buffer(format!(
            "the {what} slice starts at byte {} which is not a multiple of the device's storage offset alignment {align}",
            s.offset
        )));
    }
    check_bounds(what, s)?;
    if s.len == 0 {
        return Err(Error::Buffer(format!("the {what} slice is empty")));
    }
    Ok(())
}

/// A slice within its buffer.
fn check_bounds(what: &str, s: &BufferSlice<'_>) -> Result<(), Error> {
    let end = s.offset.saturating_add(s.bytes());
    if end > s.buffer.size() {
        return Err(Error::Buffer(format!(
            "the {what} slice (bytes {}..{end}) runs past the end of its buffer ({} bytes)",
            s.offset,
            s.buffer.size()
        )));
    }
    Ok(())
}

pub(crate) fn overlaps(a: &BufferSlice<'_>, b: &BufferSlice<'_>) -> bool {
    a.buffer == b.buffer
        && a.offset < b.offset.saturating_add(b.bytes())
        && b.offset < a.offset.saturating_add(a.bytes())
}

/// Compile-time check: the engine is shared across threads (tests/engine.rs checks the futures).
#[cfg(not(target_arch = "wasm32"))]
#[allow(dead_code)]
fn _assert_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<Submitted>();
}

impl Engine {
    pub(crate) fn gpu_ref(&self) -> Option<&Arc<Gpu>> {
        match &self.backend {
            Backend::Gpu(g) => Some(g),
            Backend::Cpu => None,
        }
    }

    /// Runs `fut`, one of this engine's, to completion on the calling thread, which waits for the
    /// device itself ([`crate::gpu::poll::drive`]): the blocking methods' executor.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn block<T, F: std::future::Future<Output = Result<T, Error>>>(&self, fut: F) -> Result<T, Error> {
        match self.gpu_ref() {
            Some(g) => crate::gpu::poll::drive(&g.poller, fut),
            None => futures::executor::block_on(fut),
        }
    }
}

impl Prepared<'_> {
    pub(crate) fn buffers(&self) -> Option<(&wgpu::Buffer, &wgpu::Buffer)> {
        Some((self.logits.as_deref()?, self.target.as_deref()?))
    }
}
