//! segloss's segmentation losses as losses of a [burn](https://burn.dev) training loop.
//!
//! [`SegLoss`] takes burn tensors (float logits `[N, C, S...]`; float masks of the same shape, or
//! integer class indices `[N, S...]`), evaluates a segloss expression (`"0.5*bce+0.5*dice"`,
//! `"dice@monai+focal@monai"`, `"ce+lovasz"`, ...) with its gradient, and returns a scalar tensor
//! that backpropagates that gradient: its value is the loss, and its derivative by the logits is
//! segloss's gradient times the upstream gradient.
//!
//! This first version takes the tensors through host memory on every burn device (`into_data`,
//! then `from_data` of the gradient): it works on CPU and GPU devices alike, with or without
//! fusion. The loss itself runs on segloss's engine (its GPU, or the f64 CPU reference when the
//! machine has none).
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use segloss_burn::SegLoss;
//! # fn main() -> Result<(), segloss_burn::Error> {
//! let device = Device::default().autodiff();
//! let loss = SegLoss::new("0.5*bce+0.5*dice", segloss::Mode::Binary)?;
//! let logits = Tensor::<4>::zeros([2, 1, 32, 32], &device).require_grad();
//! let target = Tensor::<4>::ones([2, 1, 32, 32], &device);
//! let value = loss.forward(logits.clone(), target)?;
//! let grads = value.backward();
//! let d_logits = logits.grad(&grads);
//! # let _ = d_logits; Ok(()) }
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};
use segloss::{Engine, Input, LossExpr, Mode, Target};

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

/// A segloss expression as a burn loss.
#[derive(Clone)]
pub struct SegLoss {
    expr: LossExpr,
    mode: Mode,
    ignore_index: Option<i64>,
    engine: Arc<Engine>,
}

impl SegLoss {
    /// The loss of a text (`"dice@monai+focal@monai"`) in `mode`, on segloss's default engine
    /// (its best GPU adapter, or the CPU reference).
    pub fn new(text: &str, mode: Mode) -> Result<SegLoss, Error> {
        let engine = Arc::new(Engine::new_blocking()?);
        Ok(SegLoss::with_engine(text.parse()?, mode, engine))
    }

    /// The loss of a parsed expression on a given engine (one engine for several losses).
    pub fn with_engine(expr: LossExpr, mode: Mode, engine: Arc<Engine>) -> SegLoss {
        SegLoss { expr, mode, ignore_index: None, engine }
    }

    /// Class indices (multiclass) or target values (binary, multilabel) equal to `index` take no
    /// part in the loss.
    pub fn ignore_index(mut self, index: i64) -> SegLoss {
        self.ignore_index = Some(index);
        self
    }

    /// The expression.
    pub fn expr(&self) -> &LossExpr {
        &self.expr
    }

    /// The loss of logits `[N, C, S...]` against float targets of the same shape (binary and
    /// multilabel modes): a one-element tensor whose gradient by `logits` is segloss's.
    pub fn forward<const D: usize>(&self, logits: Tensor<D>, target: Tensor<D>) -> Result<Tensor<1>, Error> {
        let t = read_f32(data(target)?)?;
        self.evaluate(logits, Target::Dense(Cow::Owned(t)))
    }

    /// The loss of logits `[N, C, S...]` against class indices `[N, S...]` (multiclass mode).
    pub fn forward_classes<const D: usize, const DT: usize>(
        &self,
        logits: Tensor<D>,
        target: Tensor<DT, Int>,
    ) -> Result<Tensor<1>, Error> {
        let t = data(target)?.convert::<i64>().try_to_vec::<i64>().map_err(|e| Error::Burn(format!("{e:?}")))?;
        self.evaluate(logits, Target::Labels(Cow::Owned(t)))
    }

    /// Reads the logits, evaluates value and gradient with segloss, and returns the loss as
    /// `value + sum((x - detach(x)) g)`: exactly the value, with `d / d x = g`.
    fn evaluate<const D: usize>(&self, logits: Tensor<D>, target: Target<'static>) -> Result<Tensor<1>, Error> {
        let device = logits.device();
        let shape: Vec<usize> = logits.dims().to_vec();
        let x = read_f32(data(logits.clone().detach())?)?;
        let inp = Input::new(Cow::Owned(x), target, &shape, self.mode, self.ignore_index)?;
        let mut ev = self.engine.evaluate_blocking(&inp, std::slice::from_ref(&self.expr), true)?;
        let ev = ev.pop().ok_or_else(|| Error::Burn("no evaluation".into()))?;
        let grad = ev.grad.ok_or_else(|| Error::Burn("no gradient".into()))?;
        let g = Tensor::<D>::from_data(TensorData::new(grad, shape), &device);
        let value = Tensor::<1>::from_data(TensorData::new(vec![ev.value as f32], [1]), &device);
        let zero = (logits.clone() - logits.detach()).mul(g).sum();
        Ok(value + zero)
    }
}

/// A tensor's data, read without a panic.
fn data<const D: usize, K: burn::tensor::kind::Basic>(t: Tensor<D, K>) -> Result<TensorData, Error> {
    t.try_into_data().map_err(|e| Error::Burn(format!("{e:?}")))
}

fn read_f32(data: TensorData) -> Result<Vec<f32>, Error> {
    data.convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Burn(format!("{e:?}")))
}
