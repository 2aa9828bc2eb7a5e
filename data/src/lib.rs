//! Data helpers for segloss's command line, tests, examples and web page, kept out of the
//! library so that it depends only on what a library user needs:
//!
//! - [`npy`]: reading logits and targets from NumPy `.npy` files and writing gradients;
//! - [`synth`]: synthetic batches (thin roads, multiclass scenes).

#![warn(missing_docs)]

pub mod npy;
pub mod synth;
