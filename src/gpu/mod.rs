//! The GPU side of the engine, by responsibility:
//!
//! - [`context`]: adapter choice, the device (ours or the caller's) and its pipelines by kernel name;
//! - [`pool`]: scratch buffers reused between evaluations, returned only after their submission ran;
//! - [`poll`]: the thread that drives the device on native targets, so waiting is a future;
//! - [`record`]: recordings (buffers by handle, dispatches, clears, copies) and the executor that
//!   turns recordings into one command encoder and one submission;
//! - [`eval`]: the evaluation graph: statistics passes, Lovász, device finalize, gradient passes;
//! - [`sort`] and [`lovasz`]: the segmented sorts and the Lovász passes around them.

pub(crate) mod context;
pub(crate) mod eval;
pub(crate) mod lovasz;
pub(crate) mod poll;
pub(crate) mod pool;
pub(crate) mod profile;
pub(crate) mod record;
pub(crate) mod sort;

/// Target word of an ignored element (`common.wgsl`).
pub(crate) const INVALID: u32 = u32::MAX;
/// Threads per statistics workgroup (`stats.wgsl`: WG).
pub(crate) const STATS_WG: usize = 128;
/// Pixels per statistics thread, softmax on a CPU adapter, and the most on a GPU (`stats.wgsl`:
/// PIX).
pub(crate) const STATS_PIX: usize = 16;
/// The most pixels per statistics thread of a CPU adapter's softmax with subgroups over at most
/// [`CREG_MAX`] classes (`stats.wgsl`: PIX_LONG; see [`stats_tiling`]).
pub(crate) const STATS_PIX_LONG: usize = 128;
/// Tiles per image the long softmax tiles of a CPU adapter keep at least ([`stats_tiling`]).
pub(crate) const STATS_LONG_MIN_TILES: usize = 4;
/// Pixels per statistics thread of the sigmoid path on CPU adapters (`stats.wgsl`:
/// PIX_SIGMOID_CPU, with the WIDE constant).
pub(crate) const STATS_PIX_SIGMOID_CPU: usize = 64;

/// Tiles per image the statistics pass of a GPU aims for: tiles are shortened (16 pixels per
/// thread, down to 2) until an image has this many. An H200 runs the statistics of ce on
/// 4x21x256x256 (2 pixels per thread, 1024 workgroups) in 0.3 of the time of 16 (128).
/// Per image, not per batch: the tiles, and so the order of the sums, of an image do not depend on
/// the batch it is evaluated in (a coalesced batch gives what one by one gives, bit for bit).
pub(crate) const STATS_TARGET_TILES: usize = 256;

/// The statistics tiles of images of `s` pixels: whether they are the wide tiles of a CPU adapter
/// (`wide_ok`: the adapter wants them; on a small image too, where one tile makes the reduction
/// pass unneeded: a CPU adapter pays per workgroup and per barrier), and the pixels per thread
/// ([`Spec::spix`], for softmax). They do not depend on whether the pass also counts the hard
/// predictions (its count blocks are [`count_span`] pixels), so the losses of an evaluation with
/// metrics are those of the evaluation alone, bit for bit.
///
/// `long`: the wide softmax kernel with subgroups over at most [`CREG_MAX`] classes (in registers
/// or not: both take the same tiles, so the same sums bit for bit), whose every thread adds each
/// class's sums across its subgroup (a `subgroupAdd` per channel, which llvmpipe runs lane by
/// lane): its threads take 16 to [`STATS_PIX_LONG`] pixels, the most that leave an image
/// [`STATS_LONG_MIN_TILES`] tiles. On lavapipe (`segloss bench --shape 4x21x256x256 --loss dice
/// --profile --iters 9`, builds with the pixels per thread fixed at each value, alternated, three
/// rounds), dice's statistics took 12.4-12.6 ms with 16 pixels, 10.1 with 32, 9.2 with 64 and 8.6
/// with 128; at `--shape 1x21x256x256` (four tiles of 128 on two cores) 3.2 against 2.2.
pub(crate) fn stats_tiling(softmax: bool, wide_ok: bool, s: usize, long: bool) -> (bool, usize) {
    if wide_ok {
        if !softmax {
            return (true, STATS_PIX_SIGMOID_CPU);
        }
        let mut pix = STATS_PIX;
        while long && pix < STATS_PIX_LONG && s / (STATS_WG * pix * 2) >= STATS_LONG_MIN_TILES {
            pix *= 2;
        }
        return (true, pix);
    }
    let mut pix = STATS_PIX;
    while pix > 2 && s.div_ceil(STATS_WG * pix) < STATS_TARGET_TILES {
        pix /= 2;
    }
    (false, pix)
}

/// Pixels per count block of the statistics pass's confusion counts (`stats.wgsl`: cspan), for
/// tiles of `pix` pixels per thread: a tile, or with a GPU's short tiles 2048 pixels (several
/// tiles), so that the counts' partials (C x C cells per block for softmax) stay a fraction of
/// the logits.
pub(crate) fn count_span(pix: usize) -> usize {
    STATS_WG * pix.max(STATS_PIX)
}

/// The dispatches of a sigmoid pass over `planes` (image, channel) planes, a workgroup row per
/// plane: (first plane, rows) of each, at most `max_rows` rows apiece. Several only past a
/// dispatch dimension (65535 rows): never a loop over the channels in a thread, which
/// llvmpipe would end after 65535 iterations in all (see [`FINALIZE_LOOP_BUDGET`]).
pub(crate) fn plane_rows(planes: usize, max_rows: usize) -> impl Iterator<Item = (u32, u32)> {
    let step = max_rows.max(1);
    (0..planes).step_by(step).map(move |p0| (p0 as u32, (planes - p0).min(step) as u32))
}

/// Whether the kernels over quads (`io4.wgsl`) may bind these slices: each starts on 16 bytes, so
/// that its element `4 q` begins quad `q` (their lengths, multiples of 4 elements, are the
/// caller's to check).
pub(crate) fn quad_aligned(slices: &[record::Slice]) -> bool {
    slices.iter().all(|b| b.offset.is_multiple_of(16))
}

/// Threads per gradient workgroup (`grad.wgsl`: GWG); also the keys and copy kernels.
pub(crate) const GRAD_WG: usize = 256;
/// Pixels per thread of the gradient pass on a GPU (`grad.wgsl`: the GPIX override).
pub(crate) const GRAD_PIX: usize = 4;
/// Quads per thread of the sigmoid gradient on a CPU adapter, and the most a thread takes
/// (`grad.wgsl`: GPIX_MAX): on llvmpipe, dice's gradient at 8x1x512x512 took 2.9-3.3 ms against
/// 3.6-4.1 with 4 (commit eadfccf against its parent, `segloss bench --loss dice --profile`).
pub(crate) const GRAD_PIX_MAX: usize = 16;
/// Pixels per thread of the softmax gradient without Lovász on a CPU adapter: on llvmpipe at
/// 4x21x256x256, dice's gradient took 18.5-18.8 ms against 22.6-23.5 with 4 and ce+dice's
/// 21.4-21.8 against 24.5-26.0 (commit 796ca88 against its parent). With this function edited:
/// 16 measured as 4 did for dice, and Lovász-Softmax's gradient slower with 8 (22.1-24.1 against
/// 19.7-20.3 ms), so it keeps 4. At 2x64x256x256 (the walks in memory), dice's gradient took
/// 36.8-40.7 ms with 8 against 44.9-49.3 with 16.
pub(crate) const GRAD_PIX_SOFTMAX_CPU: usize = 8;
/// Pixels per thread of the softmax gradient with the classes in registers (`grad_regs.wgsl`),
/// without Lovász: each thread loads each class's coefficients once and holds them across its
/// pixels, which 16 share. On lavapipe (`segloss bench --shape 4x21x256x256 --loss dice --profile
/// --iters 9`, builds with this constant at each value, alternated, three rounds), dice's gradient
/// took 13.8-14.9 ms against 16.4-17.4 with 8, and 12.8-13.6 with 32 (beyond [`GRAD_PIX_MAX`]). What the coefficients cost
/// is their holding more than their loads: a build made to measure that loaded them through one
/// lane of each subgroup (a load per vector instead of per lane) was no faster. With two
/// coefficients per class (dice, without the lines' slope: `SLOPE`), 32 took 11.9-13.2 ms
/// against 12.3-12.5 with 16, and 64 13.0-13.1.
pub(crate) const GRAD_PIX_SOFTMAX_REGS: usize = 16;
// (the per-pixel arrays of `grad.wgsl` hold GRAD_PIX_MAX)
const _: () = assert!(GRAD_PIX_SOFTMAX_REGS <= GRAD_PIX_MAX && GRAD_PIX_SOFTMAX_CPU <= GRAD_PIX_MAX);

/// Pixels per gradient thread: on a GPU [`GRAD_PIX`]; on a CPU adapter (`wide`) [`GRAD_PIX_MAX`]
/// (quads, over quads) for sigmoid, and for softmax without Lovász [`GRAD_PIX_SOFTMAX_REGS`] with
/// the classes in registers (`regs`), else [`GRAD_PIX_SOFTMAX_CPU`] where the thread's loop steps
/// stay within half of llvmpipe's limit ([`CPU_LOOP_LIMIT`]): per class a step and one per pixel
/// of each of its two walks, and one per pixel and pixel term.
pub(crate) fn grad_pix(wide: bool, softmax: bool, lovasz: bool, regs: bool, c: usize, nterms: usize) -> usize {
    if !wide {
        return GRAD_PIX;
    }
    if !softmax {
        return GRAD_PIX_MAX;
    }
    if lovasz {
        return GRAD_PIX;
    }
    if regs {
        return GRAD_PIX_SOFTMAX_REGS;
    }
    let steps = c * (2 + GRAD_PIX_SOFTMAX_CPU * (2 + nterms));
    if steps > CPU_LOOP_LIMIT / 2 {
        GRAD_PIX
    } else {
        GRAD_PIX_SOFTMAX_CPU
    }
}

/// Where a CPU adapter's softmax kernels keep each pixel's classes in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ClassRegisters {
    Never = 0,
    /// On inputs of at least [`CREG_MIN_ELEMENTS`] (the default).
    Large = 1,
    Always = 2,
}

/// The elements from which a CPU adapter's softmax keeps the classes in registers by default.
/// The register walks' kernels are longer: lavapipe builds each (one per class count, and again
/// for each new set of uniform values) in about a second, a third more than the walks in
/// memory, which small inputs would not earn back.
pub(crate) const CREG_MIN_ELEMENTS: usize = 1 << 20;

/// The statistics pass's `CREG` (see [`CREG_MAX`]): the class count on a CPU adapter's softmax
/// (`wide`) of `elements` logits, where `mode` (a [`ClassRegisters`] byte) asks for registers.
pub(crate) fn stats_creg(mode: u8, wide: bool, softmax: bool, c: usize, elements: usize) -> u32 {
    let on = match mode {
        m if m == ClassRegisters::Never as u8 => false,
        m if m == ClassRegisters::Always as u8 => true,
        _ => elements >= CREG_MIN_ELEMENTS,
    };
    if on && wide && softmax && c <= CREG_MAX {
        c as u32
    } else {
        0
    }
}

/// The softmax gradient's `CREG`: the statistics pass's, where the gradient's register walk
/// (`grad.wgsl`: softmax_regs) covers the terms: logits, no unreduced entries, at most four
/// pixel terms and no sigmoid focal among them.
pub(crate) fn grad_creg(stats_creg: u32, probs: bool, unreduced: bool, terms: &[crate::plan::TermParams]) -> u32 {
    let focal_sigmoid = terms.iter().any(|t| t.kind == crate::plan::kind::FOCAL_SIGMOID);
    if probs || unreduced || terms.len() > 4 || focal_sigmoid {
        return 0;
    }
    stats_creg
}

/// Threads of the finalize workgroup (`finalize.wgsl`: FWG).
pub(crate) const FINALIZE_WG: usize = 64;
/// Loop steps one finalize dispatch may cost a thread. Mesa's llvmpipe (lavapipe, and OpenGL
/// through it) counts the steps of every loop of an invocation against one limit of 65535
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`) and past it ends each loop after one step, silently: the last
/// ops of a finalize over 64000 (image, class) entries came out short or 0. Half the limit, for
/// what the bound of [`finalize_op_steps`] leaves out.
pub(crate) const FINALIZE_LOOP_BUDGET: usize = 32768;

/// The (image, class) entries up to which a CPU adapter's finalize takes one thread
/// ([`crate::shaders::FINALIZE_SERIAL`]) where its loop steps allow. On lavapipe, bce at
/// 1x1x64x64 took 0.327-0.449 ms per evaluation against 0.458-0.545 (commit 00a13a0 against its
/// parent, `segloss bench --shape 1x1x64x64 --loss bce --iters 100`, five rounds). In a build
/// with one thread at every size (made only to measure), dice's finalize at 32x21x64x64 (672
/// entries) took 0.40-0.42 ms of device time against 0.38-0.41 with a workgroup of
/// [`FINALIZE_WG`] (`segloss bench --profile`).
pub(crate) const FINALIZE_SERIAL_MAX: usize = 1024;

/// The finalize's threads for `ops` over groups of `n` images of `c` classes: one on a CPU adapter
/// (`cpu`) over at most [`FINALIZE_SERIAL_MAX`] entries, where one thread's loop steps stay within
/// [`FINALIZE_LOOP_BUDGET`] for every op; else [`FINALIZE_WG`].
pub(crate) fn finalize_threads(cpu: bool, ops: &[crate::plan::Op], n: usize, c: usize) -> usize {
    let serial = cpu
        && n * c <= FINALIZE_SERIAL_MAX
        && ops.iter().all(|op| finalize_op_steps(op, n, c, 1) <= FINALIZE_LOOP_BUDGET);
    if serial {
        1
    } else {
        FINALIZE_WG
    }
}

/// The loop steps finalize op `op` may cost a thread of `threads` on groups of `n` images of `c`
/// classes: at most 8 walks (over the (image, class) entries `threads` apart, the classes of its
/// images or the images of its classes: each within `n k / threads + n + k` steps, where `k` is
/// the classes the op walks: `c`, or its class list's length, which may repeat classes) and 6
/// workgroup sums of `threads` steps on thread 0; per-image gdice two more sums per image; a
/// Lovász op with a class list two searches of the list per class of each group a thread takes.
pub(crate) fn finalize_op_steps(op: &crate::plan::Op, n: usize, c: usize, threads: usize) -> usize {
    use crate::plan::op;
    let k = c.max(op.ncls as usize);
    let walk = (n * k).div_ceil(threads) + n + k;
    let mut steps = 8 * walk + 6 * threads + 1;
    if op.kind == op::GDICE && (op.flags >> 3) & 3 == 1 {
        steps += 2 * n * threads;
    }
    if op.kind == op::LOVASZ && op.ncls > 0 {
        let groups = if op.flags & op::F_PER_IMAGE != 0 { n } else { 1 };
        steps += 2 * groups.div_ceil(threads) * c * op.ncls as usize;
    }
    steps
}

/// The finalize ops in dispatches of at most [`FINALIZE_LOOP_BUDGET`] steps for a thread of
/// `threads` (by [`finalize_op_steps`]; an op past it alone): consecutive chunks of `ops`.
pub(crate) fn finalize_chunks(ops: &[crate::plan::Op], n: usize, c: usize, threads: usize) -> Vec<&[crate::plan::Op]> {
    let mut chunks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, op) in ops.iter().enumerate() {
        let steps = finalize_op_steps(op, n, c, threads);
        if i > start && used + steps > FINALIZE_LOOP_BUDGET {
            chunks.push(&ops[start..i]);
            (start, used) = (i, 0);
        }
        used += steps;
    }
    if start < ops.len() {
        chunks.push(&ops[start..]);
    }
    chunks
}

/// The loop steps llvmpipe allows one shader invocation (`LP_MAX_TGSI_LOOP_ITERATIONS`): on
/// llvmpipe the engine refuses, with [`crate::Error::Limit`], what its bounds say would need more.
pub(crate) const CPU_LOOP_LIMIT: usize = 65535;

/// The loop steps a softmax statistics thread of `pix` pixels may take over `c` classes: per
/// class a step of the class loop, `pix` over its pixels and 16 for its share of the class's
/// reduction (one step per class when only cross-entropy is summed, `pixel_only`); per pixel the
/// log-sum-exp (4 classes a step); `validate` (buffer inputs) and `counts` (the hard predictions'
/// argmax) a walk over the classes per pixel each, as does each label-smoothed cross-entropy slot
/// (`smoothed`); the checks count double (measured on lavapipe: dice on a checked buffer input of
/// 1236 classes came out short with single), and triple where only cross-entropy is summed on an
/// input with an ignore index (`ignore`): a vector of ignored and kept pixels runs both sides of the branch between the ignored pixels'
/// walk and the kept ones' walk for a class that is not `-inf`, then the walk that checks every
/// logit (measured on lavapipe: `ce` on a checked buffer input with ignored pixels gave a wrong
/// value at 1500 classes with double, a right one at 1200). On llvmpipe a pass past
/// [`CPU_LOOP_LIMIT`] is refused: with the 16 pixels of tiles past [`CREG_MAX`] classes, 949
/// classes with checks (1235 for cross-entropy alone), 1771 without. `fused`: the pass writes
/// cross-entropy's gradient, a walk over the classes per pixel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn softmax_stats_steps(
    c: usize,
    pix: usize,
    pixel_only: bool,
    validate: bool,
    ignore: bool,
    counts: bool,
    smoothed: usize,
    fused: bool,
) -> usize {
    let class_loop = if pixel_only { c + pix + 16 } else { c * (1 + pix + 16) };
    let checks = if pixel_only && ignore { 3 } else { 2 };
    let walks = checks * usize::from(validate) + usize::from(counts) + smoothed + usize::from(fused);
    class_loop + c * pix * (1 + 4 * walks) / 4
}

/// The loop steps a softmax gradient thread (`grad.wgsl`, the walks in memory: not the register
/// kernel) may take over `c` classes with `nterms` pixel terms: per class a step of the gradient's
/// class walk, one of the walk before it that sums `p dL/dp` where a region or Lovász term needs
/// it (`dot`), and where there are two pixel terms or more, a step per term and one to enter
/// their loop (one term's loop folds away); per pixel of the thread's `gpix`, a log-sum-exp walk
/// (four classes a step) where no pass kept it (`lse_walk`), and a walk over the classes for the
/// unreduced entries of a label-smoothed cross-entropy (`smoothed_entries`). The loops over a
/// thread's pixels run a number of steps the pipeline fixes, which lavapipe unrolls: measured on
/// lavapipe (`loop_limit_probe` in tests/engine.rs), `ce` alone over 7900 classes came out right,
/// and eight cross-entropy terms over 7900 classes wrote wrong gradients from class 6553 on, ten
/// steps a class. On llvmpipe a pass past [`CPU_LOOP_LIMIT`] is refused.
pub(crate) fn softmax_grad_steps(
    c: usize,
    gpix: usize,
    nterms: usize,
    dot: bool,
    lse_walk: bool,
    smoothed_entries: bool,
) -> usize {
    let terms = if nterms >= 2 { nterms + 1 } else { 0 };
    let per_pixel = usize::from(lse_walk) * c.div_ceil(4) + usize::from(smoothed_entries) * c;
    c * (1 + usize::from(dot) + terms) + gpix * (per_pixel + 4)
}
/// The most classes a CPU adapter's softmax kernels keep in registers (`common.wgsl`: CREG_MAX).
pub(crate) const CREG_MAX: usize = 32;
/// Elements per sort tile (`radix.wgsl`: T, `lovasz.wgsl`: LT).
pub(crate) const SORT_TILE: usize = 2048;
/// Keys per tile of the CPU adapters' radix tile kernels on long segments (`compact.wgsl`:
/// RADIX_TILE_WIDE), where a tile's row holds 2048 digit counts.
pub(crate) const RADIX_TILE_WIDE: usize = 16384;
/// The segment length from which the CPU adapters' radix sort takes three passes of 11-bit digits
/// instead of four of 8 bits ([`radix_layout`]): at least 64 tiles of [`RADIX_TILE_WIDE`] keys,
/// eight workgroups. From 2^16 (commit 6254d9b), Lovász-Softmax per image at
/// 4x21x256x256 (84 segments of 2^16, 41% of them kept) took 167 ms against 118: a segment of
/// two or three tiles leaves most of a workgroup's eight lanes idle.
pub(crate) const RADIX_WIDE_MIN: usize = 1 << 20;

/// The CPU adapters' radix tile kernels on segments of `len` keys: (digit bits, keys per tile,
/// passes). Every pass reads and writes each key and payload once, so long segments take three
/// passes of 11 bits; a tile's 2048 digit counts then need a longer tile to stay a small share of
/// its work, which short segments do not have. On llvmpipe, the hinge at 8x1x512x512 (2^21
/// elements, one segment): its sort's count passes 6.1 ms in all -> 3.1, its scatters 9.4 ->
/// 9.3-9.5. Lovász-Softmax at 4x21x256x256 is no faster: its 21 segments move 88 MB per pass,
/// which do not stay in cache, and three passes of 11 bits scatter as slowly as four of 8 (57-64
/// ms either way).
pub(crate) fn radix_layout(len: usize) -> (u32, usize, u32) {
    if len >= RADIX_WIDE_MIN {
        (11, RADIX_TILE_WIDE, 3)
    } else {
        (8, SORT_TILE, 4)
    }
}
/// Tiles per workgroup of the radix scatter of CPU adapters (`radix.wgsl`, `compact.wgsl`: STW),
/// a thread each.
pub(crate) const SCATTER_TILES_WG: usize = 8;
/// Sort key of an element that carries no loss (`lovasz.wgsl`: NONE).
pub(crate) const NONE_KEY: u32 = u32::MAX;
/// Alignment of every buffer offset the engine binds or copies (the largest that WebGPU allows
/// a device to require for storage and uniform offsets).
pub(crate) const ALIGN: u64 = 256;

/// Checks of buffer inputs made by the statistics pass, or by the Lovász key passes where nothing
/// else reads the input (`common.wgsl`: V_*; `checks.wgsl`).
pub(crate) mod check {
    pub const NONFINITE: u32 = 1;
    pub const CLASS: u32 = 2;
    pub const RANGE: u32 = 4;
    pub const SOFT: u32 = 8;
    /// probabilities outside [0, 1] (or NaN)
    pub const PROB: u32 = 16;
    /// softmax: a -inf logit the losses cannot take, or a pixel whose logits are all -inf
    pub const NEGINF: u32 = 32;
    /// (checks only) -inf anywhere is an error: a sigmoid focal
    pub const NEGINF_ANY: u32 = 64;
    /// (checks only) -inf on the true class is an error: ce or softmax focal
    pub const NEGINF_TRUE: u32 = 128;
    /// (checks only) -inf on any class of a pixel that is not ignored is an error: a
    /// label-smoothed ce
    pub const NEGINF_LIVE: u32 = 256;
}

/// Values of the specialization constants of `common.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    pub softmax: bool,
    pub kinds: u32,
    pub nterms: u32,
    pub sensspec: bool,
    pub lovasz: u32,
    pub validate: u32,
    pub region: bool,
    /// Gradient, softmax: some region term's d loss / d p depends on p (`plan::BlockLayout`'s
    /// `slope`).
    pub slope: bool,
    pub accum: bool,
    /// A CPU adapter: the statistics' wide sigmoid tiles, and every thread's pixels in runs (the
    /// statistics and gradient passes; `tile_item` in `common.wgsl`).
    pub wide: bool,
    /// Statistics: pixels per thread (softmax, and sigmoid not wide; [`stats_tiling`]).
    pub spix: u32,
    /// Softmax: the statistics pass keeps each pixel's log-sum-exp, the gradient pass reads it.
    pub lse: bool,
    /// Statistics, softmax: only cross-entropy slots, no per-class sums (all in class 0).
    pub pixel_only: bool,
    /// Statistics: the confusion counts of the hard predictions.
    pub counts: bool,
    /// The input holds probabilities: no activation, gradients by the probabilities.
    pub probs: bool,
    /// Gradient: also the unreduced entries of the expression's pixel term.
    pub unreduced: bool,
    /// Statistics: also `sum min(p, g)` in the last channel (intersection=min).
    pub tp_min: bool,
    /// Statistics, sigmoid: pixel terms whose gradient the pass writes (see [`eval::FusedGrad`]).
    pub fused: u32,
    /// Gradient: pixels (quads over quads) per thread, at most [`GRAD_PIX_MAX`] ([`grad_pix`]).
    pub gpix: u32,
    /// Softmax on a CPU adapter: the class count, when at most [`CREG_MAX`] (0 otherwise).
    pub creg: u32,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            softmax: false,
            kinds: 0,
            nterms: 0,
            sensspec: false,
            lovasz: 0,
            validate: 0,
            region: true,
            slope: true,
            accum: false,
            wide: false,
            spix: STATS_PIX as u32,
            lse: false,
            pixel_only: false,
            counts: false,
            probs: false,
            unreduced: false,
            tp_min: false,
            fused: 0,
            gpix: GRAD_PIX as u32,
            creg: 0,
        }
    }
}

impl Spec {
    pub fn softmax(softmax: bool) -> Spec {
        Spec { softmax, ..Spec::default() }
    }

    pub fn constants(&self) -> [(&'static str, f64); 20] {
        [
            ("SOFTMAX", f64::from(u8::from(self.softmax))),
            ("KINDS", f64::from(self.kinds)),
            ("NTERMS", f64::from(self.nterms)),
            ("SENSSPEC", f64::from(u8::from(self.sensspec))),
            ("LOVASZ", f64::from(self.lovasz)),
            ("VALIDATE", f64::from(self.validate)),
            ("REGION", f64::from(u8::from(self.region))),
            ("SLOPE", f64::from(u8::from(self.slope))),
            ("ACCUM", f64::from(u8::from(self.accum))),
            ("WIDE", f64::from(u8::from(self.wide))),
            ("PIXEL_ONLY", f64::from(u8::from(self.pixel_only))),
            ("COUNTS", f64::from(u8::from(self.counts))),
            ("PROBS", f64::from(u8::from(self.probs))),
            ("UNREDUCED", f64::from(u8::from(self.unreduced))),
            ("TPMIN", f64::from(u8::from(self.tp_min))),
            ("SPIX", f64::from(self.spix)),
            ("LSE", f64::from(u8::from(self.lse))),
            ("FUSED", f64::from(self.fused)),
            ("GPIX", f64::from(self.gpix)),
            ("CREG", f64::from(self.creg)),
        ]
    }
}

/// Uniform parameters of the loss kernels (`common.wgsl`: Params).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n: u32,
    pub c: u32,
    pub s: u32,
    pub tiles: u32,
    pub ignore: u32,
    pub has_ignore: u32,
    pub region_base: u32,
    pub lov_base: u32,
    pub nops: u32,
    /// Images per group (a coalesced batch; `n` otherwise).
    pub gn: u32,
    /// Finalize and gradient: floats of each group's output.
    pub gout: u32,
    /// Gradient: the first image of this part in the batch whose coefficients it reads (an
    /// input split by images, or a part of a data-parallel batch); 0 otherwise.
    pub img0: u32,
    /// Statistics with counts, sigmoid: the logit threshold of a positive prediction.
    pub thr: f32,
    /// Sigmoid statistics, gradient and hinge keys: the first (image, channel) plane of the
    /// dispatch (see [`plane_rows`]).
    pub plane0: u32,
    /// Statistics with fused terms: the elements their mean divides by.
    pub fcount: u32,
    /// Statistics with subgroups: partial slots per tile, one per subgroup (0 without).
    pub chunks: u32,
}

pub(crate) fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_rows_cover_every_plane_once_within_the_dispatch_limit() {
        assert_eq!(plane_rows(5, 65535).collect::<Vec<_>>(), [(0, 5)]);
        assert_eq!(plane_rows(80000, 65535).collect::<Vec<_>>(), [(0, 65535), (65535, 14465)]);
        assert_eq!(plane_rows(6, 3).collect::<Vec<_>>(), [(0, 3), (3, 3)]);
        assert_eq!(plane_rows(0, 3).count(), 0);
    }

    #[test]
    fn statistics_tiles_shorten_until_enough_workgroups() {
        // a CPU adapter's wide tiles, on small images too (one tile: no reduction pass)
        assert_eq!(stats_tiling(false, true, 8192, false), (true, STATS_PIX_SIGMOID_CPU));
        assert_eq!(stats_tiling(true, true, 2048, false), (true, STATS_PIX));
        assert_eq!(stats_tiling(false, true, 4096, false), (true, STATS_PIX_SIGMOID_CPU));
        assert_eq!(stats_tiling(true, true, 100, false), (true, STATS_PIX));
        // the long softmax tiles: the longest that leave an image STATS_LONG_MIN_TILES of them
        assert_eq!(stats_tiling(true, true, 256 * 256, false), (true, STATS_PIX));
        assert_eq!(stats_tiling(true, true, 256 * 256, true), (true, STATS_PIX_LONG));
        assert_eq!(stats_tiling(true, true, 1024 * 1024, true), (true, STATS_PIX_LONG));
        assert_eq!(stats_tiling(true, true, 128 * 128, true), (true, 32));
        assert_eq!(stats_tiling(true, true, 128 * 128 - 1, true), (true, 16));
        assert_eq!(stats_tiling(true, true, 100, true), (true, STATS_PIX));
        // (not sigmoid's)
        assert_eq!(stats_tiling(false, true, 256 * 256, true), (true, STATS_PIX_SIGMOID_CPU));
        // on a GPU the longest tiles that still give STATS_TARGET_TILES per image
        assert_eq!(stats_tiling(false, false, 8191, false), (false, 2));
        assert_eq!(stats_tiling(true, false, 256 * 256, false), (false, 2));
        assert_eq!(stats_tiling(true, false, 256 * 512, false), (false, 4));
        assert_eq!(stats_tiling(false, false, 512 * 512, false), (false, 8));
        assert_eq!(stats_tiling(false, false, 1024 * 1024, false), (false, 16));
        // count blocks: a tile of 16 pixels per thread or more, else 2048 pixels
        assert_eq!(count_span(2), 2048);
        assert_eq!(count_span(STATS_PIX), 2048);
        assert_eq!(count_span(STATS_PIX_SIGMOID_CPU), STATS_WG * STATS_PIX_SIGMOID_CPU);
        assert_eq!(count_span(STATS_PIX_LONG), STATS_WG * STATS_PIX_LONG);
    }

    #[test]
    fn gradient_pixels_per_thread() {
        // a GPU
        assert_eq!(grad_pix(false, true, false, true, 21, 1), GRAD_PIX);
        assert_eq!(grad_pix(false, false, false, false, 1, 1), GRAD_PIX);
        // a CPU adapter: sigmoid, softmax with the classes in registers, in memory, with Lovász
        assert_eq!(grad_pix(true, false, true, false, 1, 1), GRAD_PIX_MAX);
        assert_eq!(grad_pix(true, true, false, true, 21, 2), GRAD_PIX_SOFTMAX_REGS);
        assert_eq!(grad_pix(true, true, false, false, 21, 2), GRAD_PIX_SOFTMAX_CPU);
        assert_eq!(grad_pix(true, true, true, true, 21, 2), GRAD_PIX);
        // past half of llvmpipe's loop limit, the walks in memory take the fewest
        assert_eq!(grad_pix(true, true, false, false, 3000, 1), GRAD_PIX);
    }

    #[test]
    fn finalize_ops_share_a_dispatch_within_the_loop_budget() {
        use crate::plan::{op, Op};
        let pixel = Op { kind: op::BCE, ..Op::default() };
        // a usual batch: the ops of an evaluation in one dispatch
        let lens =
            |ops: &[Op], n, c| finalize_chunks(ops, n, c, FINALIZE_WG).iter().map(|k| k.len()).collect::<Vec<_>>();
        assert_eq!(lens(&[pixel; 16], 8, 21), [16]);
        // 8 x 8000 (image, class) entries: an op per dispatch
        assert_eq!(lens(&[pixel; 3], 8, 8000), [1, 1, 1]);
        // many images of one channel: within the limit (per-image gdice costs more)
        assert!(finalize_op_steps(&pixel, 512, 1, FINALIZE_WG) < CPU_LOOP_LIMIT);
        let gdice_image = Op { kind: op::GDICE, flags: 1 << 3, ..Op::default() };
        assert!(finalize_op_steps(&gdice_image, 512, 1, FINALIZE_WG) > CPU_LOOP_LIMIT);
        // a Lovász-Softmax class list searched per class
        let listed = Op { kind: op::LOVASZ, flags: op::F_SOFTMAX, ncls: 255, ..Op::default() };
        assert!(finalize_op_steps(&listed, 8, 256, FINALIZE_WG) > CPU_LOOP_LIMIT);
        assert!(finalize_op_steps(&listed, 8, 21, FINALIZE_WG) < FINALIZE_LOOP_BUDGET);
        assert!(finalize_chunks(&[], 8, 21, FINALIZE_WG).is_empty());
    }

    #[test]
    fn classes_stay_in_registers_on_cpu_adapters_up_to_the_bound() {
        use crate::plan::{kind, TermParams};
        let (never, large, always) =
            (ClassRegisters::Never as u8, ClassRegisters::Large as u8, ClassRegisters::Always as u8);
        let big = CREG_MIN_ELEMENTS;
        assert_eq!(stats_creg(large, true, true, 21, big), 21);
        assert_eq!(stats_creg(large, true, true, CREG_MAX, big), CREG_MAX as u32);
        // past the registers, below the size, on a GPU, sigmoid, or turned off
        assert_eq!(stats_creg(large, true, true, CREG_MAX + 1, big), 0);
        assert_eq!(stats_creg(large, true, true, 21, big - 1), 0);
        assert_eq!(stats_creg(always, true, true, 21, 1), 21);
        assert_eq!(stats_creg(always, false, true, 21, big), 0);
        assert_eq!(stats_creg(always, true, false, 21, big), 0);
        assert_eq!(stats_creg(never, true, true, 21, big), 0);
        // the gradient's register walk: not with probabilities, unreduced entries, more than four
        // terms or a sigmoid focal term
        let ce = TermParams { kind: kind::CE, ..TermParams::default() };
        let focal = TermParams { kind: kind::FOCAL_SIGMOID, ..TermParams::default() };
        assert_eq!(grad_creg(21, false, false, &[ce; 4]), 21);
        assert_eq!(grad_creg(21, false, false, &[]), 21);
        assert_eq!(grad_creg(21, true, false, &[ce]), 0);
        assert_eq!(grad_creg(21, false, true, &[ce]), 0);
        assert_eq!(grad_creg(21, false, false, &[ce; 5]), 0);
        assert_eq!(grad_creg(21, false, false, &[ce, focal]), 0);
        assert_eq!(grad_creg(0, false, false, &[ce]), 0);
    }

    #[test]
    fn finalize_takes_one_thread_only_on_a_cpu_adapter_over_few_entries() {
        use crate::plan::{op, Op};
        let pixel = Op { kind: op::BCE, ..Op::default() };
        assert_eq!(finalize_threads(true, &[pixel; 4], 8, 21), 1);
        assert_eq!(finalize_threads(true, &[pixel; 4], 1, FINALIZE_SERIAL_MAX), 1);
        // GPUs, and more entries than the bound
        assert_eq!(finalize_threads(false, &[pixel; 4], 8, 21), FINALIZE_WG);
        assert_eq!(finalize_threads(true, &[pixel; 4], 1, FINALIZE_SERIAL_MAX + 1), FINALIZE_WG);
        // an op whose walks would take one thread past the loop budget: a class list searched per
        // class of each image
        let listed = Op { kind: op::LOVASZ, flags: op::F_SOFTMAX | op::F_PER_IMAGE, ncls: 100, ..Op::default() };
        assert!(finalize_op_steps(&listed, 8, 100, 1) > FINALIZE_LOOP_BUDGET);
        assert_eq!(finalize_threads(true, &[pixel, listed], 8, 100), FINALIZE_WG);
        // and with one thread a dispatch's chunks hold what its walks allow
        let lens = |ops: &[Op]| finalize_chunks(ops, 32, 32, 1).iter().map(|k| k.len()).collect::<Vec<_>>();
        assert_eq!(lens(&[pixel; 3]), [3]);
    }

    #[test]
    fn softmax_statistics_steps_bound_the_classes_llvmpipe_takes() {
        // (the bounds tests/engine.rs evaluates at and past on lavapipe)
        assert!(softmax_stats_steps(949, STATS_PIX, false, true, true, false, 0, false) <= CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(950, STATS_PIX, false, true, true, false, 0, false) > CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(771, STATS_PIX, false, true, true, false, 1, false) <= CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(772, STATS_PIX, false, true, true, false, 1, false) > CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(1771, STATS_PIX, false, false, true, false, 0, false) <= CPU_LOOP_LIMIT);
        // cross-entropy's fused gradient is fused up to 1236 classes (unfused beyond)
        assert!(softmax_stats_steps(1236, STATS_PIX, false, false, true, false, 0, true) <= CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(1237, STATS_PIX, false, false, true, false, 0, true) > CPU_LOOP_LIMIT);
        // cross-entropy alone on a checked input: three walks per pixel (1500 classes came out
        // wrong on lavapipe with two)
        assert!(softmax_stats_steps(1235, STATS_PIX, true, true, true, false, 0, false) <= CPU_LOOP_LIMIT);
        assert!(softmax_stats_steps(1236, STATS_PIX, true, true, true, false, 0, false) > CPU_LOOP_LIMIT);
        // the gradient pass: eight pixel terms came out short from class 6553 on lavapipe (ten
        // steps a class); the bound takes up to 6551
        assert!(softmax_grad_steps(6551, GRAD_PIX, 8, false, false, false) <= CPU_LOOP_LIMIT);
        assert!(softmax_grad_steps(6552, GRAD_PIX, 8, false, false, false) > CPU_LOOP_LIMIT);
        // and cross-entropy alone came out right over 7900 (the finalize bounds the classes first)
        assert!(softmax_grad_steps(7900, GRAD_PIX, 1, false, false, false) <= CPU_LOOP_LIMIT);
        assert!(softmax_grad_steps(7900, GRAD_PIX, 1, true, true, false) <= CPU_LOOP_LIMIT);
        // a usual class count is far from it
        assert!(softmax_stats_steps(182, STATS_PIX, false, true, true, true, 2, false) < CPU_LOOP_LIMIT / 2);
        // more pixels per thread, more steps
        assert!(
            softmax_stats_steps(21, 32, false, true, true, false, 0, false)
                > softmax_stats_steps(21, 16, false, true, true, false, 0, false)
        );
        // the long tiles (at most CREG_MAX classes) stay within it with every walk
        assert!(
            softmax_stats_steps(CREG_MAX, STATS_PIX_LONG, false, true, true, true, crate::plan::MAX_PIXEL_SLOTS, true)
                <= CPU_LOOP_LIMIT
        );
    }
}
