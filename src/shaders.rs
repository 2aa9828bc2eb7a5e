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
    bindings: &[R, R, U, R, R, R, W, R],
    specialized: true,
};

/// Copy probe: the memory-traffic floor benchmarks compare against.
pub const COPY: Kernel =
    Kernel { name: "copy", entry: "copy", source: wgsl!("copy.wgsl"), bindings: &[R, W], specialized: false };

const RADIX_BINDINGS: &[Binding] = &[U, R, R, W, W, W, W, R];

macro_rules! radix {
    ($name:literal) => {
        Kernel {
            name: $name,
            entry: $name,
            source: wgsl!("scan.wgsl", "sortio.wgsl", "radix.wgsl"),
            bindings: RADIX_BINDINGS,
            specialized: false,
        }
    };
}

/// Radix sort, step 1: digit histogram per tile.
pub const RADIX_COUNT: Kernel = radix!("radix_count");
/// Radix sort, step 2: scan of the tile histograms per digit and segment.
pub const RADIX_SCAN: Kernel = radix!("radix_scan");
/// Radix sort, step 2b: start of each digit in its segment.
pub const RADIX_DIGITS: Kernel = radix!("radix_digits");
/// Radix sort, step 3: stable local sort and scatter.
pub const RADIX_SCATTER: Kernel = radix!("radix_scatter");

/// Bitonic sort of segments of at most [`BITONIC_MAX`] keys, one workgroup each.
pub const BITONIC_SORT: Kernel = Kernel {
    name: "bitonic_sort",
    entry: "bitonic_sort",
    source: wgsl!("sortio.wgsl", "bitonic.wgsl"),
    bindings: RADIX_BINDINGS,
    specialized: false,
};

/// Longest segment the bitonic kernel sorts.
pub const BITONIC_MAX: usize = 2048;

const LOVASZ_BINDINGS: &[Binding] = &[R, R, U, U, W, W, W, W, W, W];

macro_rules! lovasz {
    ($name:literal) => {
        Kernel {
            name: $name,
            entry: $name,
            source: wgsl!("common.wgsl", "lse.wgsl", "scan.wgsl", "lovparams.wgsl", "lovasz.wgsl"),
            bindings: LOVASZ_BINDINGS,
            specialized: true,
        }
    };
}

/// Lovász: sort keys and payloads.
pub const LOVASZ_KEYS: Kernel = lovasz!("lovasz_keys");
/// Lovász: foreground/background counts per sorted tile.
pub const LOVASZ_COUNT: Kernel = lovasz!("lovasz_count");
/// Lovász: scan of the tile counts per segment.
pub const LOVASZ_SCAN: Kernel = lovasz!("lovasz_scan");
/// Lovász: Jaccard weights of the sorted positions, value partials.
pub const LOVASZ_WEIGHTS: Kernel = lovasz!("lovasz_weights");
/// Lovász: value per segment.
pub const LOVASZ_VALUE: Kernel = lovasz!("lovasz_value");

const COMPACT_BINDINGS: &[Binding] = &[U, R, R, W, W, W, W];

macro_rules! compact {
    ($name:literal) => {
        Kernel {
            name: $name,
            entry: $name,
            source: wgsl!("scan.wgsl", "lovparams.wgsl", "compact.wgsl"),
            bindings: COMPACT_BINDINGS,
            specialized: false,
        }
    };
}

/// Lovász compaction: kept and dropped counts per tile.
pub const COMPACT_COUNT: Kernel = compact!("compact_count");
/// Lovász compaction: scan of the tile counts per segment.
pub const COMPACT_SCAN: Kernel = compact!("compact_scan");
/// Lovász compaction: stable scatter of the kept elements.
pub const COMPACT_SCATTER: Kernel = compact!("compact_scatter");
/// Lovász compaction: indirect dispatch size of the passes over the compacted segments.
pub const COMPACT_ARGS: Kernel = compact!("compact_args");

/// Lovász-Softmax: per segment, the largest foreground key and the smallest key.
pub const LOVASZ_THRESHOLD: Kernel = Kernel { entry: "lovasz_threshold", name: "lovasz_threshold", ..LOVASZ_DROP };
/// Lovász-Softmax: drops the background elements whose Jaccard weight is zero.
pub const LOVASZ_DROP: Kernel = Kernel {
    name: "lovasz_drop",
    entry: "lovasz_drop",
    source: wgsl!("lovparams.wgsl", "threshold.wgsl"),
    bindings: &[U, W, R, W],
    specialized: false,
};

/// Every kernel of the crate, in the order the engine indexes them.
pub const KERNELS: &[Kernel] = &[
    STATS,
    REDUCE,
    GRAD,
    COPY,
    RADIX_COUNT,
    RADIX_SCAN,
    RADIX_SCATTER,
    LOVASZ_KEYS,
    LOVASZ_COUNT,
    LOVASZ_SCAN,
    LOVASZ_WEIGHTS,
    LOVASZ_VALUE,
    BITONIC_SORT,
    COMPACT_COUNT,
    COMPACT_SCAN,
    COMPACT_SCATTER,
    RADIX_DIGITS,
    LOVASZ_THRESHOLD,
    LOVASZ_DROP,
    COMPACT_ARGS,
];
