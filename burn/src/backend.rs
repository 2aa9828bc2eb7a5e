//! The loss as a burn backend extension: one operation, `segloss_value_grad`, implemented on each
//! backend segloss-burn is built for, and on `Autodiff<B>` as a custom autodiff op whose backward
//! is segloss's gradient times the upstream gradient.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::AutodiffBackend;
use burn::backend::{backend_extension, Backend, ExtensionType, TensorMetadata};
use burn::tensor::{DType, FloatDType, Shape, TensorData};
use segloss::Target as HostTarget;

use crate::{Error, SegLoss};

/// The targets of one evaluation: float masks of the logits' shape, or class indices `[N, S...]`.
#[derive(ExtensionType)]
pub enum Target<B: Backend> {
    /// Float masks (binary, multilabel).
    Mask(FloatTensor<B>),
    /// Class indices (multiclass).
    Classes(IntTensor<B>),
}

/// How one evaluation went: through the device's own buffers, or through host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Logits, targets and gradient stayed in device buffers.
    Device,
    /// The tensors went through host memory.
    Host,
}

/// What a [`crate::SegLoss`] has moved so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Evaluations on the device's buffers.
    pub device_calls: u64,
    /// Evaluations through host memory.
    pub host_calls: u64,
    /// Bytes of logits, targets and gradients copied between device and host memory.
    pub host_bytes: u64,
}

/// One evaluation's configuration and the slot its outcome is written to (the backend operation
/// cannot return an error, so the caller reads it from here once the operation has run).
#[derive(Clone)]
pub struct Job(pub(crate) Arc<JobInner>);

pub(crate) struct JobInner {
    /// The loss being evaluated (its expression, mode, ignore index, host-path engine, counts).
    pub loss: SegLoss,
    pub outcome: Mutex<Option<Result<Path, Error>>>,
    /// Whether the gradient is wanted: set by the autodiff step when the logits are tracked
    /// (a loss on an untracked tensor, a validation loss, is evaluated without its gradient).
    pub want_grad: AtomicBool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({})", self.0.loss.expr())
    }
}

impl Job {
    /// Records the outcome, and counts what moved.
    pub(crate) fn finish(&self, outcome: Result<Path, Error>, host_bytes: u64) {
        self.0.loss.count(outcome.as_ref().ok().copied(), host_bytes);
        if let Ok(mut slot) = self.0.outcome.lock() {
            *slot = Some(outcome);
        }
    }

    /// Whether the gradient is wanted.
    pub(crate) fn want_grad(&self) -> bool {
        self.0.want_grad.load(Ordering::Relaxed)
    }

    /// The outcome, once the operation has run.
    pub(crate) fn take(&self) -> Option<Result<Path, Error>> {
        self.0.outcome.lock().ok().and_then(|mut s| s.take())
    }
}

/// segloss's loss as a backend operation.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube"),
    Autodiff,
)]
pub trait SegLossBackend: Backend {
    /// The loss value (`[1]`) and its gradient by the logits (the logits' shape; zeros when the
    /// job wants no gradient). On bad input the outcome in `job` is the error, and the tensors are
    /// zeros.
    fn segloss_value_grad(
        logits: FloatTensor<Self>,
        #[extension_type] target: Target<Self>,
        job: Job,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// burn's CPU backends: the host path.
macro_rules! through_host {
    ($($feature:literal => $backend:ty),*) => {$(
        #[cfg(feature = $feature)]
        impl SegLossBackend for $backend {
            fn segloss_value_grad(
                logits: FloatTensor<Self>,
                target: Target<Self>,
                job: Job,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                host_value_grad::<Self>(logits, target, &job)
            }
        }
    )*};
}

through_host!("flex" => burn::backend::Flex, "ndarray" => burn::backend::NdArray);

/// The host path, on any backend: the logits and targets read into host memory, value and
/// gradient evaluated by the job's engine, the gradient made a tensor on the logits' device.
pub(crate) fn host_value_grad<B: Backend>(
    logits: FloatTensor<B>,
    target: Target<B>,
    job: &Job,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let device = logits.device();
    let shape = logits.shape();
    let dtype = logits.dtype();
    let mut bytes = 0u64;
    let result = (|| -> Result<(f32, Option<Vec<f32>>), Error> {
        let (x, xb) = read_f32(futures::executor::block_on(B::float_into_data(logits))?)?;
        let (t, tb) = match target {
            Target::Mask(t) => read_mask(futures::executor::block_on(B::float_into_data(t))?)?,
            Target::Classes(t) => read_labels(futures::executor::block_on(B::int_into_data(t))?)?,
        };
        bytes += xb + tb;
        job.0.loss.evaluate_host(x, t, shape.as_slice(), job.want_grad())
    })();
    match result {
        Ok((value, grad)) => {
            // value and gradient in the logits' float type
            let v = B::float_from_data(TensorData::new(vec![value], [1]).convert_dtype(dtype), &device);
            let g = match grad {
                Some(grad) => {
                    bytes += 4 * grad.len() as u64;
                    B::float_from_data(TensorData::new(grad, shape).convert_dtype(dtype), &device)
                }
                None => B::float_zeros(shape, &device, FloatDType::from(dtype)),
            };
            job.finish(Ok(Path::Host), bytes);
            (v, g)
        }
        Err(e) => {
            job.finish(Err(e), bytes);
            zeros::<B>(shape, &device, dtype)
        }
    }
}

/// The tensors a failed evaluation returns (its error is in the job).
pub(crate) fn zeros<B: Backend>(shape: Shape, device: &B::Device, dtype: DType) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = FloatDType::from(dtype);
    (B::float_zeros([1].into(), device, dtype), B::float_zeros(shape, device, dtype))
}

/// A tensor's values as f32, and the bytes that crossed to the host for them.
pub(crate) fn read_f32(data: TensorData) -> Result<(Vec<f32>, u64), Error> {
    let bytes = data.bytes().len() as u64;
    Ok((data.convert::<f32>().try_to_vec::<f32>().map_err(burn_err)?, bytes))
}

/// Float masks as segloss's host target.
pub(crate) fn read_mask(data: TensorData) -> Result<(HostTarget<'static>, u64), Error> {
    let (t, bytes) = read_f32(data)?;
    Ok((HostTarget::Dense(Cow::Owned(t)), bytes))
}

/// Class indices as segloss's host target.
pub(crate) fn read_labels(data: TensorData) -> Result<(HostTarget<'static>, u64), Error> {
    let bytes = data.bytes().len() as u64;
    let labels = if data.dtype() == burn::tensor::DType::U64 {
        // past i64::MAX a u64 index is no class (burn's conversion would panic on it)
        let wide = data.try_to_vec::<u64>().map_err(burn_err)?;
        if let Some((i, v)) = wide.iter().enumerate().find(|(_, &v)| i64::try_from(v).is_err()) {
            return Err(Error::Segloss(segloss::Error::ClassIndex(format!(
                "class index {v} at element {i} of the target: past i64, no class"
            ))));
        }
        wide.into_iter().map(|v| v as i64).collect()
    } else {
        data.convert::<i64>().try_to_vec::<i64>().map_err(burn_err)?
    };
    Ok((HostTarget::Labels(Cow::Owned(labels)), bytes))
}

pub(crate) fn burn_err(e: impl std::fmt::Debug) -> Error {
    Error::Burn(format!("{e:?}"))
}

/// The backward of the loss: segloss's gradient (the state) times the upstream gradient, a
/// one-element tensor broadcast over the logits.
#[derive(Debug)]
struct SegLossBackward;

impl<B: Backend> Backward<B, 1> for SegLossBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let g = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
            let shape = g.shape();
            let ones: Shape = vec![1; shape.num_dims()].into();
            let upstream = B::float_expand(B::float_reshape(upstream, ones), shape);
            B::float_mul(g, upstream)
        });
    }
}

impl<B: SegLossBackend, C: CheckpointStrategy> SegLossBackend for Autodiff<B, C> {
    fn segloss_value_grad(
        logits: FloatTensor<Self>,
        target: Target<Self>,
        job: Job,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let target = match target {
            Target::Mask(t) => Target::Mask(t.into_primitive()),
            Target::Classes(t) => Target::Classes(t),
        };
        let (node, x) = (logits.node(), logits.into_primitive());
        match SegLossBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                job.0.want_grad.store(true, Ordering::Relaxed);
                let (value, grad) = B::segloss_value_grad(x, target, job);
                (prep.finish(grad.clone(), value), <Autodiff<B, C> as AutodiffBackend>::from_inner(grad))
            }
            OpsKind::UnTracked(prep) => {
                let (value, grad) = B::segloss_value_grad(x, target, job);
                (prep.finish(value), <Autodiff<B, C> as AutodiffBackend>::from_inner(grad))
            }
        }
    }
}
