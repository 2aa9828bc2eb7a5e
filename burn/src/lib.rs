//! segloss's segmentation losses as losses of a [burn](https://burn.dev) training loop.
//!
//! [`SegLoss`] takes burn tensors (float logits `[N, C, S...]`; float masks of the same shape, or
//! integer class indices `[N, S...]`), evaluates a segloss expression (`"0.5*bce+0.5*dice"`,
//! `"dice@monai+focal@monai"`, `"ce+lovasz"`, ...) with its gradient, and returns a scalar tensor
//! that backpropagates that gradient: its value is the loss, and its derivative by the logits is
//! segloss's gradient times the upstream gradient.
//!
//! The loss is a burn backend operation ([`SegLossBackend`]) with a custom autodiff step: the
//! forward evaluates value and gradient in one segloss evaluation, and the backward multiplies
//! that gradient by the upstream one. Where the tensors are:
//! - **burn's wgpu device, shared with segloss** ([`wgpu::init`], feature `wgpu`): segloss binds
//!   the tensors' own buffers and writes the gradient into a buffer from burn's pool; nothing
//!   goes through host memory but the loss value, its terms' values and the input checks'
//!   status words. With burn's fusion (feature `fusion`, burn's
//!   default) the logits and targets are resolved first: burn runs what it had queued for them.
//! - **any other device** (burn's CPU devices `flex` and `ndarray`, CUDA, a wgpu device segloss
//!   was not given): the tensors go through host memory, and the loss runs on the engine given to
//!   [`SegLoss::with_engine`] (its GPU, or segloss's f64 CPU reference).
//!
//! segloss computes in f32, the GPU's precision (its CPU reference reads the same f32 inputs):
//! f16, bf16 and f64 logits are converted to f32, and the value and gradient, computed in f32,
//! come back in the logits' float type (rounded to it: f16 logits get an f16 gradient).
//!
//! [`SegLoss::transfers`] says which path each evaluation took and how many bytes went through
//! host memory. A loss of logits that need no gradient (a validation loss) is evaluated without
//! its gradient pass. [`SegLossConfig`] and the typed configs ([`DiceLossConfig`],
//! [`FocalLossConfig`], ...) are burn `Config`s for a training config.
//!
//! Cargo features: `wgpu` (burn's wgpu device, shared), `fusion` (turn it on whenever burn's
//! `fusion` is on: burn's default features include it), `flex`, `ndarray` (burn's CPU backends),
//! `cube` (any cubecl runtime, through host memory).
//!
//! On burn's wgpu device, shared with segloss:
//!
//! ```no_run
//! use burn::tensor::Tensor;
//! use segloss_burn::SegLoss;
//! # fn main() -> Result<(), segloss_burn::Error> {
//! let (device, engine) = segloss_burn::wgpu::init(&Default::default())?; // before burn uses it
//! let device = device.autodiff();
//! let loss = SegLoss::with_engine("0.5*bce+0.5*dice".parse()?, segloss::Mode::Binary, engine);
//! let logits = Tensor::<4>::zeros([2, 1, 32, 32], &device).require_grad();
//! let target = Tensor::<4>::ones([2, 1, 32, 32], &device);
//! let value = loss.forward(logits.clone(), target)?;
//! let grads = value.backward();
//! let d_logits = logits.grad(&grads);
//! assert_eq!(loss.transfers().host_bytes, 0);
//! # let _ = d_logits; Ok(()) }
//! ```

// burn's ndarray backend is deprecated (for flex) but still shipped: the extension's routing
// names it when the feature is on, as burn's own dispatch does
#![cfg_attr(feature = "ndarray", allow(deprecated))]

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use burn::backend::Dispatch;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use segloss::{Engine, LossExpr, Mode};

mod backend;
mod config;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "fusion")]
mod fusion;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use backend::JobInner;
pub use backend::{Job, Path, SegLossBackend, Target, Transfers};
pub use config::{
    BceLossConfig, DiceLossConfig, FocalLossConfig, JaccardLossConfig, LovaszLossConfig, SegLossConfig,
    TverskyLossConfig,
};

/// What can go wrong: segloss's typed errors (a bad loss text, bad input), or burn's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// segloss refused the loss or the input.
    #[error(transparent)]
    Segloss(#[from] segloss::Error),
    /// A tensor could not be read or made.
    #[error("burn: {0}")]
    Burn(String),
}

impl From<burn::backend::ExecutionError> for Error {
    fn from(e: burn::backend::ExecutionError) -> Self {
        Error::Burn(format!("{e:?}"))
    }
}

/// A segloss expression as a burn loss.
#[derive(Clone)]
pub struct SegLoss {
    expr: LossExpr,
    mode: Mode,
    ignore_index: Option<i64>,
    /// The engine of the evaluations through host memory: given, or segloss's default engine,
    /// opened at the first such evaluation (on a shared wgpu device there is none).
    engine: Arc<Mutex<Option<Arc<Engine>>>>,
    transfers: Arc<Mutex<Transfers>>,
    through_host: bool,
}

impl SegLoss {
    /// The loss of a text (`"dice@monai+focal@monai"`) in `mode`, on segloss's default engine
    /// (its best GPU adapter, or the CPU reference) for the tensors that go through host memory,
    /// opened at the first of them: a loss evaluated on a shared wgpu device ([`wgpu::init`])
    /// opens none. A text whose result is not one number (`reduction=none`) or that needs
    /// several levels (`deep(...)`) is refused: see [`SegLoss::with_engine`].
    pub fn new(text: &str, mode: Mode) -> Result<SegLoss, Error> {
        let expr: LossExpr = text.parse()?;
        supported(&expr)?;
        Ok(SegLoss::make(expr, mode, None))
    }

    /// The loss of a parsed expression; `engine` evaluates the tensors that go through host
    /// memory (one engine for several losses; on a shared wgpu device, the engine of
    /// [`wgpu::init`]).
    ///
    /// The loss is one number: an expression with unreduced entries (`reduction=none`), which a
    /// burn loss would return as their mean, is refused when evaluated, as is deep supervision
    /// (`deep(...)`), whose levels are separate tensors here: sum one loss per level instead,
    /// each with its weight (the gradients add up through burn's autodiff).
    pub fn with_engine(expr: LossExpr, mode: Mode, engine: Arc<Engine>) -> SegLoss {
        SegLoss::make(expr, mode, Some(engine))
    }

    fn make(expr: LossExpr, mode: Mode, engine: Option<Arc<Engine>>) -> SegLoss {
        SegLoss {
            expr,
            mode,
            ignore_index: None,
            engine: Arc::new(Mutex::new(engine)),
            transfers: Arc::default(),
            through_host: false,
        }
    }

    /// The engine of the evaluations through host memory, opened at the first.
    fn engine(&self) -> Result<Arc<Engine>, Error> {
        let mut slot = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &*slot {
            return Ok(e.clone());
        }
        let e = Arc::new(Engine::new_blocking()?);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Whether the engine of the evaluations through host memory is open (given, or opened).
    pub fn engine_is_open(&self) -> bool {
        self.engine.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Class indices (multiclass) or target values (binary, multilabel) equal to `index` take no
    /// part in the loss.
    pub fn ignore_index(mut self, index: i64) -> SegLoss {
        self.ignore_index = Some(index);
        self
    }

    /// Takes the tensors through host memory and evaluates them on [`SegLoss::with_engine`]'s
    /// engine (for a loss of [`SegLoss::new`] or a config's `init`, segloss's default engine,
    /// opened then: on a shared wgpu device, a device of its own; an engine that cannot be opened
    /// is the first evaluation's error) even where the extension runs (on the device's buffers,
    /// or on a CPU backend), with
    /// the loss built from burn operations (`value + sum((x - detach(x)) g)`): what a device
    /// segloss-burn is not built for gets. For comparisons and debugging.
    pub fn through_host(mut self, yes: bool) -> SegLoss {
        self.through_host = yes;
        self
    }

    /// The expression.
    pub fn expr(&self) -> &LossExpr {
        &self.expr
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The evaluations so far: on the device's buffers or through host memory, and the bytes
    /// that went through host memory.
    pub fn transfers(&self) -> Transfers {
        self.transfers.lock().map(|t| *t).unwrap_or_default()
    }

    /// The loss of logits `[N, C, S...]` against float targets of the same shape (binary and
    /// multilabel modes): a one-element tensor whose gradient by `logits` is segloss's.
    ///
    /// The target is a constant of the loss: a target that autodiff tracks (a model's output, as
    /// in distillation or a consistency loss) is refused, since its gradient would be missing;
    /// `detach()` it to use it as a constant.
    pub fn forward<const D: usize>(&self, logits: Tensor<D>, target: Tensor<D>) -> Result<Tensor<1>, Error> {
        supported(&self.expr)?;
        same_device(&logits.device(), &target.device())?;
        if target.is_tracked() {
            return Err(Error::Segloss(segloss::Error::Input(
                "the target needs a gradient (autodiff tracks it), which segloss does not compute: the loss's \
                 gradient is by the logits only; detach() the target to use it as a constant"
                    .into(),
            )));
        }
        if target.dims() != logits.dims() {
            return Err(shape_error(format!(
                "the mask {:?} must have the logits' shape {:?}",
                target.dims(),
                logits.dims()
            )));
        }
        if self.through_host || !extension_covers(&logits.device()) {
            return self.evaluate_elsewhere(logits, backend::read_mask(target.try_into_data()?)?);
        }
        self.evaluate(logits, Target::Mask(target.into_dispatch()))
    }

    /// The loss of logits `[N, C, S...]` against class indices `[N, S...]` (or `[N, 1, S...]`, as
    /// MONAI writes them) (multiclass mode).
    pub fn forward_classes<const D: usize, const DT: usize>(
        &self,
        logits: Tensor<D>,
        target: Tensor<DT, Int>,
    ) -> Result<Tensor<1>, Error> {
        supported(&self.expr)?;
        same_device(&logits.device(), &target.device())?;
        let (x, t) = (logits.dims(), target.dims());
        let labels: Vec<usize> = x.iter().take(1).chain(x.iter().skip(2)).copied().collect();
        let channel_one: Vec<usize> = x.iter().take(1).chain([&1]).chain(x.iter().skip(2)).copied().collect();
        if D < 2 || (t[..] != labels[..] && t[..] != channel_one[..]) {
            return Err(shape_error(format!(
                "the class indices {t:?} must be [N, S...] of the logits {x:?}: {labels:?} (or {channel_one:?})"
            )));
        }
        if self.through_host || !extension_covers(&logits.device()) {
            return self.evaluate_elsewhere(logits, backend::read_labels(target.try_into_data()?)?);
        }
        self.evaluate(logits, Target::Classes(target.into_dispatch()))
    }

    fn evaluate<const D: usize>(&self, logits: Tensor<D>, target: Target<Dispatch>) -> Result<Tensor<1>, Error> {
        let job =
            Job(Arc::new(JobInner { loss: self.clone(), outcome: Mutex::new(None), want_grad: Default::default() }));
        let (value, _grad) =
            <Dispatch as SegLossBackend>::segloss_value_grad(logits.into_dispatch(), target, job.clone());
        match job.take() {
            Some(Ok(_)) => Ok(Tensor::<1>::from_dispatch(value)),
            Some(Err(e)) => Err(e),
            None => Err(Error::Burn("the loss did not run".into())),
        }
    }

    /// A device the extension is not built for (a burn backend whose segloss-burn feature is off,
    /// LibTorch, a remote device): the tensors through host memory, and the loss as
    /// `value + sum((x - detach(x)) g)`, whose value is the loss and whose gradient by `x` is `g`.
    fn evaluate_elsewhere<const D: usize>(
        &self,
        logits: Tensor<D>,
        (t, tbytes): (segloss::Target<'static>, u64),
    ) -> Result<Tensor<1>, Error> {
        let (device, dtype) = (logits.device(), logits.dtype());
        let shape: Vec<usize> = logits.dims().to_vec();
        let (x, xbytes) = backend::read_f32(logits.clone().detach().try_into_data()?)?;
        let (value, grad) = self.evaluate_host(x, t, &shape, logits.is_tracked())?;
        self.count(Some(Path::Host), xbytes + tbytes + grad.as_ref().map_or(0, |g| 4 * g.len() as u64));
        // value and gradient in the logits' float type
        // (f32 as made, whatever the device's default float type: set_default_dtypes could make
        // it f16, which would round the value and turn a large gradient infinite before the cast)
        let value = Tensor::<1>::from_data(TensorData::new(vec![value], [1]), (&device, DType::F32)).cast(dtype);
        Ok(match grad {
            Some(g) => {
                // the product in f32, then cast: a gradient past the logits' type (an f16 entry
                // over 65504) is infinite there, and 0 times it would make the value NaN; the
                // gradient, cast back through the cast, is the logits' type's, infinite where it is
                let g = Tensor::<D>::from_data(TensorData::new(g, shape), (&device, DType::F32));
                // a -inf logit (a class masked out, multiclass) would make x - detach(x) NaN; its
                // gradient is 0, so it is left out of the difference
                let x = logits.clone().mask_fill(logits.is_inf(), 0.0);
                let zero = (x.clone() - x.detach()).cast(FloatDType::F32);
                value + zero.mul(g).sum().cast(dtype)
            }
            None => value,
        })
    }

    /// Host data evaluated on the engine: the value, and the gradient when `want`ed.
    pub(crate) fn evaluate_host(
        &self,
        x: Vec<f32>,
        t: segloss::Target<'static>,
        shape: &[usize],
        want: bool,
    ) -> Result<(f32, Option<Vec<f32>>), Error> {
        let inp = segloss::Input::new(Cow::Owned(x), t, shape, self.mode, self.ignore_index)?;
        let ev = self.engine()?.evaluate_blocking(&inp, std::slice::from_ref(&self.expr), want)?;
        let ev = ev.into_iter().next().ok_or_else(|| Error::Burn("segloss returned no evaluation".into()))?;
        Ok((ev.value as f32, ev.grad))
    }

    /// Counts an evaluation (on its path; none when it failed) and the bytes it moved through
    /// host memory.
    pub(crate) fn count(&self, path: Option<Path>, host_bytes: u64) {
        if let Ok(mut t) = self.transfers.lock() {
            match path {
                Some(Path::Device) => t.device_calls += 1,
                Some(Path::Host) => t.host_calls += 1,
                None => {}
            }
            t.host_bytes += host_bytes;
        }
    }
}

/// A loss of one number on one level: unreduced entries (`reduction=none`) would come back as
/// their mean, and deep supervision's levels are separate tensors (a loss per level).
fn supported(expr: &LossExpr) -> Result<(), Error> {
    if expr.unreduced() {
        return Err(Error::Segloss(segloss::Error::Unsupported(format!(
            "'{expr}': a burn loss is one number; reduction=none's entries are not returned (leave it out for the mean)"
        ))));
    }
    if expr.deep.is_some() {
        return Err(Error::Segloss(segloss::Error::Unsupported(format!(
            "'{expr}': deep supervision's levels are separate tensors here: sum a loss of each level, times its weight"
        ))));
    }
    Ok(())
}

/// Logits and targets on one device (burn's operations across devices panic).
fn same_device(logits: &burn::tensor::Device, target: &burn::tensor::Device) -> Result<(), Error> {
    if logits != target {
        return Err(Error::Segloss(segloss::Error::Input(format!(
            "the target is on {target:?} but the logits are on {logits:?}: move it to the logits' device"
        ))));
    }
    Ok(())
}

fn shape_error(msg: String) -> Error {
    Error::Segloss(segloss::Error::Shape(msg))
}

/// Whether segloss-burn's extension is built for the backend of `device` (its features).
fn extension_covers(device: &burn::tensor::Device) -> bool {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice as D;
    match device.clone().without_autodiff().as_dispatch() {
        #[cfg(feature = "flex")]
        D::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        D::NdArray(_) => true,
        #[cfg(feature = "cube")]
        D::Cube(_) => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}
