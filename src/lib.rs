//! # segloss
//!
//! Image-segmentation losses and their gradients on any GPU, through wgpu compute shaders (WGSL):
//! Vulkan, Metal, DX12, OpenGL and WebGPU. Dice, Jaccard/IoU, Tversky, generalized Dice,
//! sensitivity-specificity, focal, BCE, cross-entropy and the Lovász hinge and Lovász-Softmax, alone
//! or in weighted sums written as text (`0.8*ce+0.2*dice@monai`), with the numbers of
//! segmentation_models_pytorch, MONAI, Keras and PaddleSeg. The definitions, parameters, presets
//! and numerical conventions are in the repository's `docs/losses.md`.
//!
//! ```no_run
//! # fn main() -> Result<(), segloss::Error> {
//! use segloss::{Engine, Input, LossExpr};
//! let engine = Engine::new_blocking()?; // best adapter, or the CPU reference
//! // 1 image, 3 classes, 2x2 pixels; class indices per pixel, 255 = ignored
//! let logits = vec![0.0f32; 12];
//! let labels = vec![0i64, 1, 2, 255];
//! let input = Input::labels(&logits, &labels, &[1, 3, 2, 2], Some(255))?;
//! let loss: LossExpr = "0.8*ce+0.2*dice".parse()?;
//! let out = engine.evaluate_blocking(&input, &[loss], true)?;
//! let (value, grad) = (out[0].value, out[0].grad.as_ref().unwrap());
//! assert_eq!(grad.len(), 12);
//! # let _ = value; Ok(()) }
//! ```
//!
//! On a GPU, an evaluation is one submission: the fused statistics pass, the Lovász sorts, a
//! finalize kernel that turns the sums into values and gradient coefficients on the device, and
//! the gradient passes. Inputs can be host slices ([`Input`]) or the caller's buffers
//! ([`BufferInput`], on the caller's device with [`Engine::from_device`]); gradients can be read
//! back, written into a caller's buffer, or added to one ([`GradOut`]); with
//! [`Engine::submit_buffers`] nothing waits on the host.
//!
//! The f64 [`reference`](mod@reference) computes every loss on the CPU; it is what the tests hold the GPU to,
//! and what [`Engine::new`] falls back to when no adapter exists.

#![warn(missing_docs)]
// Native engines share their device across threads through `Arc`; in the browser nothing is
// `Send`, and the same code runs on one thread.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

mod batch;
mod engine;
mod error;
pub mod expr;
mod gpu;
mod input;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
pub mod metrics;
mod multi;
mod plan;
pub mod reference;
pub mod shaders;
mod split;
mod stats;
#[cfg(test)]
mod twin;

pub use batch::{Batch, Pending};
pub use engine::{
    backend_name, list_adapters, Activity, AdapterReport, BufferInput, BufferSlice, DeviceInfo, Engine, EngineOptions,
    Evaluation, GradMode, GradOut, Prepared, Submitted, TargetBuffer, Unreduced, BITONIC_CROSSOVER_CPU,
};
pub use error::{Error, Result};
pub use expr::{Loss, LossExpr, Term};
pub use gpu::profile::{KernelTime, Profile};
pub use input::{Input, InputKind, Mode, Target};
pub use multi::MultiEngine;
pub use stats::Statistics;
/// The wgpu this crate is built on: buffers and devices given to the engine come from it.
pub use wgpu;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
