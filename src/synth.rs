//! Synthetic batches for demos and benchmarks.
