//! burn's fusion of the cubecl backend. The loss needs its input's values, so it resolves the
//! fused logits and targets first (burn runs what it had queued for them), evaluates them on the
//! backend under fusion (the device path on a shared wgpu device), and hands the value and the
//! gradient back to fusion as tensors that exist already.

use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::custom::{OperationIr, OperationOutput, StreamId};
use burn_fusion::{Fusion, FusionBackend, FusionTensor, NoOp};
use burn_ir::InitOperationIr;

use crate::backend::{SegLossBackend, Target};
use crate::Job;

impl<B: FusionBackend + SegLossBackend> SegLossBackend for Fusion<B> {
    fn segloss_value_grad(
        logits: FloatTensor<Self>,
        target: Target<Self>,
        job: Job,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let client = logits.client.clone();
        let x = client.resolve_tensor_float::<B>(logits);
        let target = match target {
            Target::Mask(t) => Target::Mask(client.resolve_tensor_float::<B>(t)),
            Target::Classes(t) => Target::Classes(client.resolve_tensor_int::<B>(t)),
        };
        let (value, grad) = B::segloss_value_grad(x, target, job);
        (adopt::<B>(&client, value), adopt::<B>(&client, grad))
    }
}

/// A tensor of the backend under fusion, as a fusion tensor (what fusion's `float_from_data` does
/// with the tensor it made).
fn adopt<B: FusionBackend>(
    client: &GlobalFusionClient<B::FusionRuntime>,
    t: B::FloatTensorPrimitive,
) -> FusionTensor<B::FusionRuntime> {
    let (shape, dtype) = (t.shape(), t.dtype());
    let handle = B::float_tensor_handle(t);
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    client.register(StreamId::current(), OperationIr::Init(desc), NoOp::<B>::new()).output()
}
