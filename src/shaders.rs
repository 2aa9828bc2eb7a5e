//! The WGSL kernels, each declared once by name with its bindings.
//!
//! A kernel is the concatenation of the `shaders/` files it needs (shared code first, the file
//! with its entry point last). [`KERNELS`] lists every kernel; the engine builds pipelines and
//! bind groups from these declarations, and `tests/shaders.rs` checks each declaration against
//! the WGSL with naga (names, binding numbers, access) and translates every kernel to SPIR-V,
//! MSL, HLSL and GLSL.

/// How a kernel binds one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<uniform>`
    Uniform,
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// One binding of group 0: the WGSL variable's name and its access. Bindings are numbered in
/// the order they are declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The name of the WGSL variable.
    pub name: &'static str,
    /// How it is bound.
    pub access: Access,
}

/// A compute kernel: its name, entry point, WGSL source and bindings.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The kernel's name in labels and errors (unique).
    pub name: &'static str,
    /// The `@compute` entry point (the name, but for the variants of a kernel).
    pub entry: &'static str,
    /// Complete WGSL source.
    pub source: &'static str,
    /// Bindings 0.. of group 0.
    pub bindings: &'static [Binding],
    /// Whether the kernel takes the specialization constants of `common.wgsl`.
    pub specialized: bool,
    /// Whether a CPU adapter on Vulkan (Mesa's lavapipe) binds the kernel's uniforms as
    /// read-only storage. lavapipe inlines the uniform values that steer loops and branches and
    /// recompiles the shader with LLVM at every dispatch: the bulk kernels gain from it (the
    /// values fold into their loops), but a kernel of little work whose loops run over the batch
    /// pays the compile each time (the finalize kernel: about 5 ms per image of the batch).
    /// Other backends keep uniforms: through OpenGL (llvmpipe) the storage variant of finalize
    /// gave pixel-loss values (ce, focal) 0.5% to 7% off while region losses stayed exact, on
    /// multiclass [5, 21, 250] (the random tests); the cause is not found yet.
    pub cpu_storage_params: bool,
}

impl Kernel {
    /// The WGSL the engine builds on an adapter: [`Kernel::source`], with its uniforms
    /// declared as read-only storage when `params_in_storage` (lavapipe, for the kernels marked
    /// [`Kernel::cpu_storage_params`]).
    pub fn source_for(&self, params_in_storage: bool) -> std::borrow::Cow<'static, str> {
        if params_in_storage {
            self.source.replace("var<uniform>", "var<storage, read>").into()
        } else {
            self.source.into()
        }
    }

    /// Whether the kernel takes subgroup operations (its entry point has subgroup builtins): a
    /// device without them cannot build it.
    pub fn uses_subgroups(&self) -> bool {
        self.source.contains("@builtin(subgroup_invocation_id)")
    }

    /// Whether the engine builds the kernel's pipelines on first use rather than when it opens
    /// a device: the register kernels ([`STATS_REGS`], [`STATS_SG_REGS`], [`GRAD_REGS`],
    /// [`LOVASZ_KEYS_REGS`]), which take long to build and only large softmax inputs on CPU
    /// adapters use.
    pub fn built_on_first_use(&self) -> bool {
        self.name.ends_with("_regs")
    }

    /// The binding number of the variable `name`.
    pub fn binding(&self, name: &str) -> Option<u32> {
        self.bindings.iter().position(|b| b.name == name).map(|i| i as u32)
    }
}

const fn u(name: &'static str) -> Binding {
    Binding { name, access: Access::Uniform }
}
const fn r(name: &'static str) -> Binding {
    Binding { name, access: Access::Read }
}
const fn w(name: &'static str) -> Binding {
    Binding { name, access: Access::ReadWrite }
}

macro_rules! wgsl {
    ($($f:literal),*) => {
        concat!($(include_str!(concat!("../shaders/", $f)), "\n"),*)
    };
}

/// The statistics pass's source: its element accessors (`io1.wgsl` or `io4.wgsl`, with the
/// output's), and its entry point (`stats_entry.wgsl`, or `stats_entry_sg.wgsl` with subgroups).
macro_rules! stats_source {
    ($io:literal, $out:literal, $entry:literal) => {
        stats_source!($io, $out, $entry, "noregs.wgsl", "stats_noregs.wgsl", "checks_noregs.wgsl")
    };
    ($io:literal, $out:literal, $entry:literal, $regs:literal, $stats_regs:literal, $checks_regs:literal) => {
        wgsl!(
            "common.wgsl",
            $io,
            $out,
            "lse.wgsl",
            $regs,
            "argmax.wgsl",
            "target.wgsl",
            "checks.wgsl",
            $checks_regs,
            "stats.wgsl",
            $stats_regs,
            $entry
        )
    };
}

/// Fused statistics pass (and the checks of buffer inputs).
pub const STATS: Kernel = Kernel {
    name: "stats",
    entry: "stats",
    source: stats_source!("io1.wgsl", "out1.wgsl", "stats_entry.wgsl"),
    bindings: &[
        r("logits"),
        r("tgt"),
        u("P"),
        r("terms"),
        r("cw"),
        w("partials"),
        w("status"),
        w("cnt"),
        w("elem_out"),
    ],
    specialized: true,
    cpu_storage_params: false,
};
/// [`STATS`] over quads (`io4.wgsl`): the sigmoid planes of a CPU adapter's wide tiles, four
/// elements per load and store, for images of `4k` pixels whose slices are 16-byte aligned.
pub const STATS4: Kernel =
    Kernel { name: "stats4", source: stats_source!("io4.wgsl", "out4.wgsl", "stats_entry.wgsl"), ..STATS };
/// [`STATS`] with subgroup operations (`stats_entry_sg.wgsl`), on CPU adapters whose device has
/// them: each subgroup writes its own partials, and the pass has no barrier. Built only on such
/// devices ([`Kernel::uses_subgroups`]).
pub const STATS_SG: Kernel =
    Kernel { name: "stats_sg", source: stats_source!("io1.wgsl", "out1.wgsl", "stats_entry_sg.wgsl"), ..STATS };
/// [`STATS`] for a CPU adapter's softmax with each pixel's classes in registers (the override
/// `CREG`: `regs.wgsl`, `stats_regs.wgsl`). The written-out steps over the classes make it slow
/// to build (about a second on lavapipe), so it is built on first use
/// ([`Kernel::built_on_first_use`]), and the other kernels take stand-ins for those functions.
pub const STATS_REGS: Kernel = Kernel {
    name: "stats_regs",
    source: stats_source!(
        "io1.wgsl",
        "out1.wgsl",
        "stats_entry.wgsl",
        "regs.wgsl",
        "stats_regs.wgsl",
        "checks_regs.wgsl"
    ),
    ..STATS
};
/// [`STATS_SG`] with each pixel's classes in registers (as [`STATS_REGS`]).
pub const STATS_SG_REGS: Kernel = Kernel {
    name: "stats_sg_regs",
    source: stats_source!(
        "io1.wgsl",
        "out1.wgsl",
        "stats_entry_sg.wgsl",
        "regs.wgsl",
        "stats_regs.wgsl",
        "checks_regs.wgsl"
    ),
    ..STATS
};
/// Final reduction of the confusion counts (64-bit totals).
pub const COUNT_REDUCE: Kernel = Kernel {
    name: "count_reduce",
    entry: "count_reduce",
    source: wgsl!("common.wgsl", "count_reduce.wgsl"),
    bindings: &[u("P"), r("cnt"), w("total")],
    specialized: true,
    cpu_storage_params: false,
};
/// Final reduction of statistics partials.
pub const REDUCE: Kernel = Kernel {
    name: "reduce",
    entry: "reduce",
    source: wgsl!("common.wgsl", "reduce.wgsl"),
    bindings: &[u("P"), r("partials"), w("sums")],
    specialized: true,
    cpu_storage_params: false,
};
/// Device finalize: values and gradient coefficients from the sums.
pub const FINALIZE: Kernel = Kernel {
    name: "finalize",
    entry: "finalize",
    source: wgsl!("common.wgsl", "finalize.wgsl", "finalize_entry.wgsl"),
    bindings: &[u("P"), r("sums"), r("lov"), r("ops"), r("cls"), r("status"), w("out")],
    specialized: false,
    cpu_storage_params: true,
};
/// [`FINALIZE`] with one thread (`finalize_serial.wgsl`): CPU adapters over a few entries.
pub const FINALIZE_SERIAL: Kernel = Kernel {
    name: "finalize_serial",
    source: wgsl!("common.wgsl", "finalize.wgsl", "finalize_serial.wgsl"),
    ..FINALIZE
};
/// Elementwise gradient pass.
pub const GRAD: Kernel = Kernel {
    name: "gradient",
    entry: "gradient",
    source: wgsl!(
        "common.wgsl",
        "io1.wgsl",
        "out1.wgsl",
        "lse.wgsl",
        "noregs.wgsl",
        "target.wgsl",
        "grad.wgsl",
        "grad_noregs.wgsl"
    ),
    bindings: &[
        r("logits"),
        r("tgt"),
        u("P"),
        r("terms"),
        r("cw"),
        r("coefs"),
        w("elem_out"),
        r("aux"),
        r("status"),
        w("unr"),
    ],
    specialized: true,
    cpu_storage_params: false,
};
/// [`GRAD`] over quads (`io4.wgsl`), on the sigmoid planes of a CPU adapter (as [`STATS4`]):
/// a thread takes GPIX quads.
pub const GRAD4: Kernel = Kernel {
    name: "gradient4",
    source: wgsl!(
        "common.wgsl",
        "io4.wgsl",
        "out4.wgsl",
        "lse.wgsl",
        "noregs.wgsl",
        "target.wgsl",
        "grad.wgsl",
        "grad_noregs.wgsl"
    ),
    ..GRAD
};
/// [`GRAD`] for a CPU adapter's softmax with each pixel's classes in registers (as [`STATS_REGS`]:
/// `regs.wgsl`, `grad_regs.wgsl`).
pub const GRAD_REGS: Kernel = Kernel {
    name: "gradient_regs",
    source: wgsl!(
        "common.wgsl",
        "io1.wgsl",
        "out1.wgsl",
        "lse.wgsl",
        "regs.wgsl",
        "target.wgsl",
        "grad.wgsl",
        "grad_regs.wgsl"
    ),
    ..GRAD
};
/// Copy probe: the memory-traffic floor benchmarks compare against.
pub const COPY: Kernel = Kernel {
    name: "copy",
    entry: "copy",
    source: wgsl!("copy.wgsl"),
    bindings: &[r("logits"), w("out")],
    specialized: false,
    cpu_storage_params: false,
};
/// The copy probe over vec4 (inputs of `4k` elements): the floor where four elements per access
/// cost about what one does (a CPU adapter).
pub const COPY4: Kernel = Kernel { name: "copy4", source: wgsl!("copy4.wgsl"), ..COPY };

/// Zeros a gradient slice unless the checks found bad input (the Lovász hinge's
/// gradient written by its weights pass, `gpu::lovasz::HingeGrad`, on a device-checked input).
pub const ZERO_UNLESS_BAD: Kernel = Kernel {
    name: "zero_unless_bad",
    entry: "zero_unless_bad",
    source: wgsl!("zero.wgsl"),
    bindings: &[r("status"), w("out")],
    specialized: false,
    cpu_storage_params: false,
};
/// [`ZERO_UNLESS_BAD`] over vec4 (slices of `4k` elements on 16 bytes).
pub const ZERO_UNLESS_BAD4: Kernel =
    Kernel { name: "zero_unless_bad4", source: wgsl!("zero4.wgsl"), ..ZERO_UNLESS_BAD };
/// Copies a gradient written into scratch into the caller's slice unless the checks found bad
/// input (a gradient slice that shares its buffer with the input).
pub const COPY_UNLESS_BAD: Kernel = Kernel {
    name: "copy_unless_bad",
    entry: "copy_unless_bad",
    source: wgsl!("keep.wgsl"),
    bindings: &[r("status"), r("src"), w("out")],
    specialized: false,
    cpu_storage_params: false,
};
/// [`COPY_UNLESS_BAD`] over vec4 (slices of `4k` elements on 16 bytes).
pub const COPY_UNLESS_BAD4: Kernel =
    Kernel { name: "copy_unless_bad4", source: wgsl!("keep4.wgsl"), ..COPY_UNLESS_BAD };

const SORT_BINDINGS: &[Binding] =
    &[u("SP"), r("keys_in"), r("vals_in"), w("counts"), w("totals"), w("keys_out"), w("vals_out"), r("seglen")];

/// A radix kernel: the GPU's over two arrays (`sortin1.wgsl`, `sortout1.wgsl`), the CPU
/// adapters' tile kernels over interleaved items (`itemsin.wgsl` or, two per load,
/// `itemsin2.wgsl`; `itemsout.wgsl`).
macro_rules! radix {
    ($name:literal) => {
        radix!($name, $name, "sortin1.wgsl", "sortout1.wgsl")
    };
    ($name:literal, $entry:literal, $input:literal, $output:literal) => {
        Kernel {
            name: $name,
            entry: $entry,
            source: wgsl!("scan.wgsl", $input, $output, "sortio.wgsl", "tiles.wgsl", "radix.wgsl"),
            bindings: SORT_BINDINGS,
            specialized: false,
            cpu_storage_params: false,
        }
    };
}

/// Radix sort, step 1: digit histogram per tile.
pub const RADIX_COUNT: Kernel = radix!("radix_count");
/// Radix sort, step 2: scan of the tile histograms per digit and segment.
pub const RADIX_SCAN: Kernel = radix!("radix_scan");
/// Radix sort, step 2 on CPU adapters: a thread per digit, without barriers.
pub const RADIX_SCAN_TILES: Kernel = radix!("radix_scan_tiles", "radix_scan_tiles", "itemsin.wgsl", "itemsout.wgsl");
/// Radix sort, step 2b: start of each digit in its segment.
pub const RADIX_DIGITS: Kernel = radix!("radix_digits");
/// Radix sort, step 3: stable local sort and scatter.
pub const RADIX_SCATTER: Kernel = radix!("radix_scatter");
/// Radix sort, step 3 on CPU adapters: a thread per tile, walked in order.
pub const RADIX_SCATTER_TILES: Kernel =
    radix!("radix_scatter_tiles", "radix_scatter_tiles", "itemsin.wgsl", "itemsout.wgsl");
/// Radix sort, step 1 on CPU adapters: a thread per tile.
pub const RADIX_COUNT_TILES: Kernel = radix!("radix_count_tiles", "radix_count_tiles", "itemsin.wgsl", "itemsout.wgsl");
/// [`RADIX_COUNT_TILES`] reading two items per load (`itemsin2.wgsl`): segments of `4k` keys in
/// slices on 16 bytes.
pub const RADIX_COUNT_TILES4: Kernel =
    radix!("radix_count_tiles4", "radix_count_tiles", "itemsin2.wgsl", "itemsout.wgsl");

/// Bitonic sort of segments of at most [`BITONIC_MAX`] keys, one workgroup each.
pub const BITONIC_SORT: Kernel = Kernel {
    name: "bitonic_sort",
    entry: "bitonic_sort",
    source: wgsl!("sortin1.wgsl", "sortout1.wgsl", "sortio.wgsl", "bitonic.wgsl"),
    bindings: SORT_BINDINGS,
    specialized: false,
    cpu_storage_params: false,
};
/// [`BITONIC_SORT`] over the CPU adapters' interleaved items (`itemsout.wgsl`).
pub const BITONIC_SORT_ITEMS: Kernel = Kernel {
    name: "bitonic_sort_items",
    source: wgsl!("itemsin.wgsl", "itemsout.wgsl", "sortio.wgsl", "bitonic.wgsl"),
    ..BITONIC_SORT
};

/// Longest segment the bitonic kernel sorts.
pub const BITONIC_MAX: usize = 2048;

const LOVASZ_BINDINGS: &[Binding] = &[u("LP"), w("keys"), w("vals"), w("tilecnt"), w("segsum"), w("lw"), w("vpart")];

/// A kernel of `lovasz.wgsl`, after the key pass: its keys in two arrays (`keys1.wgsl`, the GPU's).
macro_rules! lovasz {
    ($name:literal) => {
        Kernel {
            name: $name,
            entry: $name,
            source: wgsl!(
                "common.wgsl",
                "keys1.wgsl",
                "scan.wgsl",
                "lovparams.wgsl",
                "lovweight.wgsl",
                "tiles.wgsl",
                "lovasz.wgsl"
            ),
            bindings: LOVASZ_BINDINGS,
            specialized: true,
            cpu_storage_params: false,
        }
    };
}

const LOVASZ_KEYS_BINDINGS: &[Binding] =
    &[r("logits"), r("tgt"), u("P"), u("LP"), w("keys"), w("vals"), w("lw"), w("status")];

/// A Lovász key pass (`lovasz_keys.wgsl`): its keys in two arrays (`keys1.wgsl`, the GPU's), or
/// interleaved items (`keysitems.wgsl`, the CPU adapters'); the softmax keys with each pixel's
/// classes in registers (`regs.wgsl`, `lovasz_regs.wgsl`) or not.
macro_rules! lovasz_keys {
    ($name:literal, $regs:literal, $lovasz_regs:literal, $checks_regs:literal, $keys:literal) => {
        Kernel {
            name: $name,
            entry: "lovasz_keys",
            source: wgsl!(
                "common.wgsl",
                "io1.wgsl",
                "lse.wgsl",
                $regs,
                $lovasz_regs,
                $keys,
                "target.wgsl",
                "hingekey.wgsl",
                "checks.wgsl",
                $checks_regs,
                "lovparams.wgsl",
                "lovasz_keys.wgsl"
            ),
            bindings: LOVASZ_KEYS_BINDINGS,
            specialized: true,
            cpu_storage_params: false,
        }
    };
}

const SURFACE_BINDINGS: &[Binding] =
    &[u("SP"), r("logits"), r("tgt"), r("sel"), w("labs"), w("fa"), w("fb"), w("edges"), w("env")];

macro_rules! surface {
    ($name:literal) => {
        Kernel {
            name: $name,
            entry: $name,
            source: wgsl!("common.wgsl", "io1.wgsl", "argmax.wgsl", "surface.wgsl"),
            bindings: SURFACE_BINDINGS,
            specialized: true,
            cpu_storage_params: false,
        }
    };
}

/// Surface metrics: hard labels of each pixel (softmax).
pub const SURF_LABELS: Kernel = surface!("surf_labels");
/// Surface metrics: boundaries of the predicted and target masks, distance seeds.
pub const SURF_EDGES: Kernel = surface!("surf_edges");
/// Surface metrics: one axis of the exact Euclidean distance transform.
pub const EDT_LINE: Kernel = surface!("edt_line");

/// Lovász: sort keys and payloads (and, where nothing else reads the input, its checks).
pub const LOVASZ_KEYS: Kernel =
    lovasz_keys!("lovasz_keys", "noregs.wgsl", "lovasz_noregs.wgsl", "checks_noregs.wgsl", "keys1.wgsl");
/// [`LOVASZ_KEYS`] for a CPU adapter's softmax with each pixel's classes in registers (as
/// [`STATS_REGS`]: `regs.wgsl`, `lovasz_regs.wgsl`).
pub const LOVASZ_KEYS_REGS: Kernel =
    lovasz_keys!("lovasz_keys_regs", "regs.wgsl", "lovasz_regs.wgsl", "checks_regs.wgsl", "keysitems.wgsl");
/// [`LOVASZ_KEYS`] for a CPU adapter: interleaved items (`keysitems.wgsl`), the classes in memory.
pub const LOVASZ_KEYS_ITEMS: Kernel =
    lovasz_keys!("lovasz_keys_items", "noregs.wgsl", "lovasz_noregs.wgsl", "checks_noregs.wgsl", "keysitems.wgsl");
/// Lovász: foreground/background counts per sorted tile.
pub const LOVASZ_COUNT: Kernel = lovasz!("lovasz_count");
/// Lovász: scan of the tile counts per segment.
pub const LOVASZ_SCAN: Kernel = lovasz!("lovasz_scan");
/// Lovász: Jaccard weights of the sorted positions, value partials.
pub const LOVASZ_WEIGHTS: Kernel = lovasz!("lovasz_weights");
/// Lovász: value per segment.
pub const LOVASZ_VALUE: Kernel = lovasz!("lovasz_value");

/// A tile kernel of `lovasz_tiles.wgsl`, reading the sorted items (the CPU adapters' interleaved
/// keys and payloads) one per load (`itemsin.wgsl`) or two (`itemsin2.wgsl`).
macro_rules! lovasz_tiles {
    ($name:literal, $entry:literal, $input:literal) => {
        Kernel {
            name: $name,
            entry: $entry,
            source: wgsl!($input, "lovparams.wgsl", "lovweight.wgsl", "tiles.wgsl", "lovasz_tiles.wgsl"),
            bindings: &[u("LP"), r("keys_in"), r("vals_in"), w("tilecnt"), w("segsum"), w("lw"), w("vpart")],
            specialized: false,
            cpu_storage_params: false,
        }
    };
}

/// Lovász on CPU adapters: [`LOVASZ_COUNT`] with a thread per tile.
pub const LOVASZ_COUNT_TILES: Kernel = lovasz_tiles!("lovasz_count_tiles", "lovasz_count_tiles", "itemsin.wgsl");
/// Lovász on CPU adapters: [`LOVASZ_WEIGHTS`] with a thread per tile.
pub const LOVASZ_WEIGHTS_TILES: Kernel = lovasz_tiles!("lovasz_weights_tiles", "lovasz_weights_tiles", "itemsin.wgsl");
/// Lovász on CPU adapters: [`LOVASZ_SCAN`] with a thread per segment.
pub const LOVASZ_SCAN_TILES: Kernel = lovasz_tiles!("lovasz_scan_tiles", "lovasz_scan_tiles", "itemsin.wgsl");
/// [`LOVASZ_COUNT_TILES`] reading two items per load: segments of `4k` elements in slices
/// on 16 bytes.
pub const LOVASZ_COUNT_TILES4: Kernel = lovasz_tiles!("lovasz_count_tiles4", "lovasz_count_tiles", "itemsin2.wgsl");
/// [`LOVASZ_WEIGHTS_TILES`] reading two items per load.
pub const LOVASZ_WEIGHTS_TILES4: Kernel =
    lovasz_tiles!("lovasz_weights_tiles4", "lovasz_weights_tiles", "itemsin2.wgsl");
/// [`LOVASZ_WEIGHTS_TILES`] adding to what `lw` holds (the hinge's gradient beside a pixel term's,
/// `gpu::lovasz::HingeGrad`).
pub const LOVASZ_WEIGHTS_TILES_ADD: Kernel =
    lovasz_tiles!("lovasz_weights_tiles_add", "lovasz_weights_tiles_add", "itemsin.wgsl");
/// [`LOVASZ_WEIGHTS_TILES4`] adding to what `lw` holds.
pub const LOVASZ_WEIGHTS_TILES4_ADD: Kernel =
    lovasz_tiles!("lovasz_weights_tiles4_add", "lovasz_weights_tiles_add", "itemsin2.wgsl");

const COMPACT_BINDINGS: &[Binding] = &[
    u("LP"),
    r("keys_in"),
    r("vals_in"),
    w("keys_out"),
    w("vals_out"),
    w("tilecnt"),
    w("segsum"),
    r("thr"),
    r("status"),
];

/// A compaction kernel: its input (the uncompacted keys and payloads) two arrays read element by
/// element (`sortin1.wgsl`, the GPU's) or the CPU adapters' interleaved items, one or two per load
/// (`itemsin.wgsl`, `itemsin2.wgsl`); its output two arrays (`sortout1.wgsl`) or items
/// (`itemsout.wgsl`).
macro_rules! compact {
    ($name:literal) => {
        compact!($name, $name, "sortin1.wgsl", "sortout1.wgsl")
    };
    ($name:literal, $entry:literal, $input:literal, $output:literal) => {
        Kernel {
            name: $name,
            entry: $entry,
            source: wgsl!("scan.wgsl", $input, $output, "lovparams.wgsl", "tiles.wgsl", "kept.wgsl", "compact.wgsl"),
            bindings: COMPACT_BINDINGS,
            specialized: false,
            cpu_storage_params: false,
        }
    };
}

/// Lovász compaction: kept and dropped counts per tile.
pub const COMPACT_COUNT: Kernel = compact!("compact_count");
/// Lovász compaction: scan of the tile counts per segment.
pub const COMPACT_SCAN: Kernel = compact!("compact_scan");
/// Lovász compaction: stable scatter of the kept elements.
pub const COMPACT_SCATTER: Kernel = compact!("compact_scatter");
/// Lovász-Softmax compaction on CPU adapters whose sort is radix: the kept elements to the front
/// of each tile of the sort's first pass, with the drops, a thread per tile.
pub const COMPACT_LOCAL_TILES: Kernel =
    compact!("compact_local_tiles", "compact_local_tiles", "itemsin.wgsl", "itemsout.wgsl");
/// [`COMPACT_LOCAL_TILES`] reading two items per load (`itemsin2.wgsl`).
pub const COMPACT_LOCAL_TILES4: Kernel =
    compact!("compact_local_tiles4", "compact_local_tiles", "itemsin2.wgsl", "itemsout.wgsl");
/// The local compactions on CPU adapters: each segment's sums of its tiles' counts.
pub const COMPACT_SUM_TILES: Kernel = compact!("compact_sum_tiles");

const HINGE_BINDINGS: &[Binding] =
    &[r("logits"), r("tgt"), u("P"), u("LP"), w("keys_out"), w("vals_out"), w("tilecnt"), w("status")];

/// A hinge kernel, its logits and targets read element by element (`io1.wgsl`) or by quads
/// (`io4.wgsl`).
macro_rules! hinge {
    ($name:literal, $entry:literal, $io:literal) => {
        Kernel {
            name: $name,
            entry: $entry,
            source: wgsl!(
                "common.wgsl",
                $io,
                "target.wgsl",
                "hingekey.wgsl",
                "checks.wgsl",
                "lovparams.wgsl",
                "tiles.wgsl",
                "itemsout.wgsl",
                "kept.wgsl",
                "hinge.wgsl"
            ),
            bindings: HINGE_BINDINGS,
            // (VALIDATE: the count's checks)
            specialized: true,
            cpu_storage_params: false,
        }
    };
}

/// Lovász hinge on CPU adapters whose sort is radix: the kept keys and payloads written to the
/// front of each tile of the sort's first pass, with the checks.
pub const HINGE_LOCAL_TILES: Kernel = hinge!("hinge_local_tiles", "hinge_local_tiles", "io1.wgsl");
/// [`HINGE_LOCAL_TILES`] over quads.
pub const HINGE_LOCAL_TILES4: Kernel = hinge!("hinge_local_tiles4", "hinge_local_tiles", "io4.wgsl");
/// Lovász compaction: indirect dispatch size of the passes over the compacted segments.
pub const COMPACT_ARGS: Kernel = compact!("compact_args");

const THRESHOLD_BINDINGS: &[Binding] = &[u("LP"), w("keys"), r("vals"), w("thr")];

/// Lovász-Softmax: per segment, the largest foreground key and the smallest key.
pub const LOVASZ_THRESHOLD: Kernel = Kernel {
    name: "lovasz_threshold",
    entry: "lovasz_threshold",
    source: wgsl!("lovparams.wgsl", "tiles.wgsl", "threshold.wgsl"),
    bindings: THRESHOLD_BINDINGS,
    specialized: false,
    cpu_storage_params: false,
};
/// Lovász-Softmax: drops the background elements whose Jaccard weight is zero.
pub const LOVASZ_DROP: Kernel = Kernel { name: "lovasz_drop", entry: "lovasz_drop", ..LOVASZ_THRESHOLD };
/// Lovász-Softmax on CPU adapters: [`LOVASZ_THRESHOLD`] with a thread per tile.
pub const LOVASZ_THRESHOLD_TILES: Kernel = Kernel {
    name: "lovasz_threshold_tiles",
    entry: "lovasz_threshold_tiles",
    source: wgsl!("itemsin.wgsl", "lovparams.wgsl", "tiles.wgsl", "threshold_tiles.wgsl"),
    bindings: &[u("LP"), r("keys_in"), r("vals_in"), w("thr")],
    specialized: false,
    cpu_storage_params: false,
};
/// [`LOVASZ_THRESHOLD_TILES`] reading two items per load (`itemsin2.wgsl`).
pub const LOVASZ_THRESHOLD_TILES4: Kernel = Kernel {
    name: "lovasz_threshold_tiles4",
    source: wgsl!("itemsin2.wgsl", "lovparams.wgsl", "tiles.wgsl", "threshold_tiles.wgsl"),
    ..LOVASZ_THRESHOLD_TILES
};

/// Every kernel of the crate.
pub const KERNELS: &[Kernel] = &[
    STATS,
    STATS4,
    STATS_SG,
    STATS_REGS,
    STATS_SG_REGS,
    COUNT_REDUCE,
    SURF_LABELS,
    SURF_EDGES,
    EDT_LINE,
    REDUCE,
    FINALIZE,
    FINALIZE_SERIAL,
    GRAD,
    GRAD4,
    GRAD_REGS,
    COPY,
    COPY4,
    ZERO_UNLESS_BAD,
    ZERO_UNLESS_BAD4,
    COPY_UNLESS_BAD,
    COPY_UNLESS_BAD4,
    RADIX_COUNT,
    RADIX_SCAN,
    RADIX_DIGITS,
    RADIX_SCATTER,
    RADIX_SCATTER_TILES,
    RADIX_COUNT_TILES,
    RADIX_COUNT_TILES4,
    RADIX_SCAN_TILES,
    BITONIC_SORT,
    BITONIC_SORT_ITEMS,
    LOVASZ_KEYS,
    LOVASZ_KEYS_REGS,
    LOVASZ_KEYS_ITEMS,
    LOVASZ_COUNT,
    LOVASZ_SCAN,
    LOVASZ_WEIGHTS,
    LOVASZ_VALUE,
    LOVASZ_COUNT_TILES,
    LOVASZ_WEIGHTS_TILES,
    LOVASZ_SCAN_TILES,
    LOVASZ_COUNT_TILES4,
    LOVASZ_WEIGHTS_TILES4,
    LOVASZ_WEIGHTS_TILES_ADD,
    LOVASZ_WEIGHTS_TILES4_ADD,
    COMPACT_COUNT,
    COMPACT_SCAN,
    COMPACT_SCATTER,
    COMPACT_SUM_TILES,
    COMPACT_LOCAL_TILES,
    COMPACT_LOCAL_TILES4,
    HINGE_LOCAL_TILES,
    HINGE_LOCAL_TILES4,
    COMPACT_ARGS,
    LOVASZ_THRESHOLD,
    LOVASZ_DROP,
    LOVASZ_THRESHOLD_TILES,
    LOVASZ_THRESHOLD_TILES4,
];

/// Constants that Rust and WGSL share, as `(WGSL name, value)`: `tests/shaders.rs` checks each
/// against the constant of that name in every kernel that declares it.
pub const SHARED_CONSTANTS: &[(&str, u64)] = &[
    ("K", crate::plan::K as u64),
    ("NCOEF", crate::plan::NCOEF as u64),
    ("COEF_TPMIN", crate::plan::COEF_TPMIN as u64),
    ("TPMIN_DEV", crate::plan::ch::TPMIN_DEV as u64),
    ("F_MIN", crate::plan::op::F_MIN as u64),
    ("INVALID", crate::gpu::INVALID as u64),
    ("BCE", crate::plan::kind::BCE as u64),
    ("FOCAL_SIGMOID", crate::plan::kind::FOCAL_SIGMOID as u64),
    ("CE", crate::plan::kind::CE as u64),
    ("FOCAL_SOFTMAX", crate::plan::kind::FOCAL_SOFTMAX as u64),
    ("OP_BCE", crate::plan::op::BCE as u64),
    ("OP_FOCAL", crate::plan::op::FOCAL as u64),
    ("OP_CE", crate::plan::op::CE as u64),
    ("OP_SENSSPEC", crate::plan::op::SENSSPEC as u64),
    ("OP_REGION", crate::plan::op::REGION as u64),
    ("OP_GDICE", crate::plan::op::GDICE as u64),
    ("OP_LOVASZ", crate::plan::op::LOVASZ as u64),
    ("NONE_IDX", crate::plan::op::NONE_IDX as u64),
    ("V_NONFINITE", crate::gpu::check::NONFINITE as u64),
    ("V_CLASS", crate::gpu::check::CLASS as u64),
    ("V_RANGE", crate::gpu::check::RANGE as u64),
    ("V_SOFT", crate::gpu::check::SOFT as u64),
    ("V_PROB", crate::gpu::check::PROB as u64),
    ("V_NEGINF", crate::gpu::check::NEGINF as u64),
    ("V_NEGINF_ANY", crate::gpu::check::NEGINF_ANY as u64),
    ("V_NEGINF_TRUE", crate::gpu::check::NEGINF_TRUE as u64),
    ("V_NEGINF_LIVE", crate::gpu::check::NEGINF_LIVE as u64),
    ("F_WEIGHTS", crate::plan::op::F_WEIGHTS as u64),
    ("WG", crate::gpu::STATS_WG as u64),
    ("PIX", crate::gpu::STATS_PIX as u64),
    ("PIX_LONG", crate::gpu::STATS_PIX_LONG as u64),
    ("PIX_SIGMOID_CPU", crate::gpu::STATS_PIX_SIGMOID_CPU as u64),
    ("CREG_MAX", crate::gpu::CREG_MAX as u64),
    ("GWG", crate::gpu::GRAD_WG as u64),
    ("GPIX_MAX", crate::gpu::GRAD_PIX_MAX as u64),
    ("FWG", crate::gpu::FINALIZE_WG as u64),
    ("T", crate::gpu::SORT_TILE as u64),
    ("CT", crate::gpu::SORT_TILE as u64),
    ("STW", crate::gpu::SCATTER_TILES_WG as u64),
    ("TILE", crate::gpu::SORT_TILE as u64),
    ("RADIX_TILE_WIDE", crate::gpu::RADIX_TILE_WIDE as u64),
    ("LT", crate::gpu::SORT_TILE as u64),
    ("NONE", crate::gpu::NONE_KEY as u64),
];
