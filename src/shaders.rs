//! The WGSL sources. Each kernel is `common.wgsl` (shared structs and math) followed by the files
//! it needs; [`KERNELS`] is the table the engine builds its pipelines from and the tests validate.

/// How a kernel binds one buffer (group 0, bindings in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// `var<uniform>`
    Uniform,
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// A compute kernel: its name, entry point, assembled WGSL source and bind group layout.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Name used in labels and error messages.
    pub name: &'static str,
    /// The `@compute` entry point.
    pub entry: &'static str,
    /// Complete WGSL source.
    pub source: &'static str,
    /// Bindings 0.. of group 0.
    pub bindings: &'static [Binding],
    /// Whether the kernel takes the specialization constants of `common.wgsl`
    /// (`SOFTMAX`, `KINDS`, `NTERMS`, `SENSSPEC`).
    pub specialized: bool,
}

use Binding::{Read as R, ReadWrite as W, Uniform as U};

macro_rules! wgsl {
    ($($f:literal),*) => {
        concat!($(include_str!(concat!("../shaders/", $f)), "\n"),*)
    };
}

/// Fused statistics pass.
pub const STATS: Kernel = Kernel {
    name: "stats",
    entry: "stats",
    source: wgsl!("common.wgsl", "lse.wgsl", "stats.wgsl"),
    bindings: &[R, R, U, R, R, W],
    specialized: true,
};
/// Final reduction of statistics partials.
pub const REDUCE: Kernel = Kernel {
    name: "reduce",
    entry: "reduce",
    source: wgsl!("common.wgsl", "reduce.wgsl"),
    bindings: &[U, R, W],
    specialized: true,
};
/// Elementwise gradient pass.
pub const GRAD: Kernel = Kernel {
    name: "grad",
    entry: "gradient",
    source: wgsl!("common.wgsl", "lse.wgsl", "grad.wgsl"),
    bindings: &[R, R, U, R, R, R, W],
    specialized: true,
};

/// Copy probe: the memory-traffic floor benchmarks compare against.
pub const COPY: Kernel =
    Kernel { name: "copy", entry: "copy", source: wgsl!("copy.wgsl"), bindings: &[R, W], specialized: false };

/// Every kernel of the crate.
pub const KERNELS: &[Kernel] = &[STATS, REDUCE, GRAD, COPY];
