//! # segloss
//!
//! Image-segmentation losses and their gradients on any GPU, through wgpu compute shaders (WGSL):
//! Vulkan, Metal, DX12, OpenGL and WebGPU. Dice, Jaccard/IoU, Tversky, generalized Dice,
//! sensitivity-specificity, focal, BCE, cross-entropy and the Lovász hinge and Lovász-Softmax, alone
//! or in weighted sums written as
//! text (`0.8*ce+0.2*dice@monai`), with the numbers of segmentation_models_pytorch, MONAI, Keras
//! and PaddleSeg (`LOSSES.md` is the contract).
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
//! The f64 [`reference`] computes every loss on the CPU; it is what the tests hold the GPU to,
//! and what [`Engine::new`] falls back to when no adapter exists.

#![warn(missing_docs)]

mod engine;
mod error;
pub mod expr;
mod input;
mod plan;
pub mod reference;
pub mod shaders;

pub use engine::{
    backend_name, list_adapters, AdapterReport, DeviceInfo, Engine, EngineOptions, Evaluation, GradMode, Prepared,
    SortAlgo, BITONIC_CROSSOVER_CPU,
};
pub use error::{Error, Result};
pub use expr::{Loss, LossExpr, Term};
pub use input::{Input, Mode, Target};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
