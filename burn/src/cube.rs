//! burn's cubecl backend. On a wgpu device shared with segloss ([`crate::wgpu`]) the loss binds
//! the tensors' own buffers and writes the gradient into a buffer allocated from burn's pool: no
//! host copy of logits, targets or gradient. On any other cubecl device (CUDA, ROCm, the CPU
//! runtime, a wgpu device segloss was not given) it goes through host memory.

use burn::backend::tensor::FloatTensor;
use burn_cubecl::CubeBackend;

use crate::backend::{host_value_grad, SegLossBackend, Target};
use crate::Job;

impl SegLossBackend for CubeBackend {
    fn segloss_value_grad(
        logits: FloatTensor<Self>,
        target: Target<Self>,
        job: Job,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[cfg(feature = "wgpu")]
        if let burn_cubecl::CubeDevice::Wgpu(device) = &logits.device {
            if let Some(engine) = crate::wgpu::engine_of(device) {
                return crate::wgpu::device_value_grad(logits, target, &job, &engine);
            }
        }
        host_value_grad::<Self>(logits, target, &job)
    }
}
