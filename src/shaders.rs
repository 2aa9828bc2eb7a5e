//! The WGSL sources. Each kernel is `common.wgsl` (shared structs and math) followed by the files
//! it needs; [`KERNELS`] is the table the engine builds its pipelines from and the tests validate.

/// A compute kernel: its name, entry point and assembled WGSL source.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Name used in labels and error messages.
    pub name: &'static str,
    /// The `@compute` entry point.
    pub entry: &'static str,
    /// Complete WGSL source.
    pub source: &'static str,
}

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
};
/// Final reduction of statistics partials.
pub const REDUCE: Kernel = Kernel {
    name: "reduce",
    entry: "reduce",
    source: wgsl!("common.wgsl", "reduce.wgsl"),
};
/// Elementwise gradient pass.
pub const GRAD: Kernel = Kernel {
    name: "grad",
    entry: "gradient",
    source: wgsl!("common.wgsl", "lse.wgsl", "grad.wgsl"),
};

/// Every kernel of the crate.
pub const KERNELS: &[Kernel] = &[STATS, REDUCE, GRAD];
