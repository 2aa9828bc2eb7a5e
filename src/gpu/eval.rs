//! The evaluation graph: for one input and a list of expressions, the fused statistics passes
//! (several when the expressions hold more distinct pixel losses than one pass does), one sort
//! per distinct Lovász loss, the device finalize, and the gradient pass(es) of each expression
//! that wants a gradient, all recorded into one recording.

use crate::error::Error;
use crate::expr::LossExpr;
use crate::gpu::context::Gpu;
use crate::gpu::lovasz::{grid, HingeGrad, LovaszInput};
use crate::gpu::record::{Grid, Recording, Slice};
use crate::gpu::{
    align, finalize_chunks, finalize_op_steps, finalize_threads, grad_creg, grad_pix, plane_rows, softmax_stats_steps,
    stats_tiling, Params, Spec, CPU_LOOP_LIMIT,
};
use crate::plan::{self, BlockLayout, Op, StatsPlan, TermParams, K};
use crate::shaders;

/// An input on the device: logits and target words (class indices, or f32 bits of dense values).
pub(crate) struct DevInput {
    pub logits: Slice,
    pub target: Slice,
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub softmax: bool,
    /// The first binding holds probabilities, used without an activation.
    pub probs: bool,
    /// Independent evaluations of `n / groups` images each, one after the other in the
    /// buffers (a coalesced batch: one set of passes for all, a result for each); 1 otherwise.
    pub groups: usize,
    /// The caller's ignore word (buffer inputs; host inputs arrive with INVALID in its place).
    /// On dense targets (sigmoid) the word of f32 0 ignores -0.0 (another word) too, as a host
    /// input's value comparison does (`Params::has_ignore` 2).
    pub ignore: Option<u32>,
    /// Checks of `check::*` the statistics pass makes.
    pub validate: u32,
    /// The elements (sigmoid) or pixels (softmax) that count, not ignored, where the host knows
    /// them before the statistics (a host input): what the mean of a pixel loss divides by (see
    /// [`FusedGrad`]).
    pub counted: Option<usize>,
}

/// An expression whose gradient the statistics pass writes, so that the input is read once: its
/// terms all sigmoid pixel losses (bce without `pos_weight=auto`, focal normalized by the count
/// or without class weights) or all unweighted cross-entropy on softmax logits (no other
/// expression then reads the pixels' log-sum-exps), at most 4, of an input checked on the host,
/// which counts the elements that are not ignored ([`DevInput::counted`]), in one statistics
/// pass, its gradient overwritten (not added) where nothing else is bound; 0 where ignored. The
/// terms follow the pass's slots in `terms` and `cw`, with `scale` holding the term's weight,
/// `weight_sum` focal's weight scale (1 for bce; cross-entropy keeps its slot's weight sum) and
/// `pos_weight` bce's, so that the pass resolves the scale with the finalize's own arithmetic
/// (weight, times the weight scale, over the count): the gradient is the gradient pass's, bit
/// for bit.
pub(crate) struct FusedGrad {
    pub expr: usize,
    pub terms: Vec<TermParams>,
    pub cw: Vec<f32>,
    pub dest: Slice,
    pub count: u32,
    /// The expression's Lovász hinge (its loss in the plan, and its gradient: `accumulate`, into
    /// `dest`), whose weights pass adds its gradient to what the statistics pass wrote.
    pub hinge: Option<(usize, HingeGrad)>,
}

/// Where an expression's gradient goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GradTo {
    Skip,
    /// A scratch buffer copied into a staging buffer.
    Host,
    /// A slice of a buffer: overwritten, or added to; then copied into `copy_to` where the
    /// caller's slice shares a buffer with the input (a storage binding that is written cannot
    /// share its buffer with the input's read-only bindings in one dispatch).
    Into {
        slice: Slice,
        accumulate: bool,
        copy_to: Option<Slice>,
    },
}

/// Whether expression `i`'s gradient goes into a buffer another expression's gradient is written
/// into too: then the passes must write them in the expressions' order, so neither the
/// statistics pass nor a Lovász weights pass (which run before every gradient pass) writes it.
fn shares_grad_buffer(rec: &Recording, grads: &[GradTo], i: usize) -> bool {
    let ids = |g: &GradTo| match g {
        GradTo::Into { slice, copy_to, .. } => [Some(slice.id), copy_to.map(|c| c.id)],
        _ => [None, None],
    };
    let Some(mine) = ids(&grads[i])[0] else {
        return false;
    };
    grads.iter().enumerate().any(|(j, g)| j != i && ids(g).iter().flatten().any(|&other| rec.same_buffer(mine, other)))
}

/// One part of a batch for the passes after the statistics: its input (a range of images of the
/// batch the statistics describe, a range of pixels of one of them, or the whole batch), the
/// first image of that batch it holds, and where each expression's gradient goes.
pub(crate) struct Part<'a> {
    pub inp: &'a DevInput,
    pub img0: usize,
    pub grads: &'a [GradTo],
    /// Softmax: the log-sum-exp of each pixel of `inp`, kept by its statistics pass.
    pub lse: Option<Slice>,
    /// A hinge whose weights pass adds its gradient where the statistics pass wrote its
    /// expression's ([`FusedGrad::hinge`]): its loss in the plan and how (the whole batch only).
    pub hinge_add: Option<(usize, HingeGrad)>,
    /// The checks (`check::*`) the Lovász key passes make, where no statistics pass reads the
    /// input (Lovász losses alone on a device-checked input); 0 otherwise.
    pub key_checks: u32,
}

/// The per-(image, class) sums of a whole batch on the device, `[passes][n][c][K]` f32 with
/// `stride` bytes per pass (see `stats.wgsl`), for the finalize.
#[derive(Clone, Copy)]
pub(crate) struct Totals {
    pub sums: Slice,
    pub stride: u64,
    /// Images of the batch.
    pub n: usize,
    /// Independent evaluations of `n / groups` images each (a coalesced batch); 1 otherwise.
    pub groups: usize,
    /// The log-sum-exp of each pixel, `[n][s]` f32, when the statistics pass was asked to keep it.
    pub lse: Option<Slice>,
}

/// Where the finalize's Lovász segment sums come from: the parts' own sorts (per image, or the
/// whole batch in one part), or a buffer of the whole batch's (a merged [`crate::Statistics`]),
/// in which case the sorts only give the gradient's Jaccard weights.
#[derive(Clone, Copy)]
pub(crate) enum LovFrom {
    Parts,
    Given(Slice),
}

/// What the passes after the statistics recorded.
pub(crate) struct Tail {
    /// Per expression: (index of its value in the values, terms).
    pub vals: Vec<(usize, usize)>,
    pub vals_len: usize,
    /// The finalize output (each group's values and blocks, `gout` floats apart).
    pub out: Slice,
    pub gout: usize,
    /// Staging buffer index of the values (with the status words), when read.
    pub values_read: Option<usize>,
    /// Per part, per expression: the staging buffer index of a gradient read to the host.
    pub grad_reads: Vec<Vec<Option<usize>>>,
    /// Per expression with `reduction=none` and a pixel term: its entries (the first part's),
    /// written by the gradient pass.
    pub entries: Vec<Option<Slice>>,
}

/// Where the unreduced entries of a `reduction=none` expression are read.
#[derive(Clone, Debug)]
pub(crate) enum UnreducedRead {
    /// Computed on the device: staging buffer index, byte offset, bytes, shape.
    Entries(usize, u64, u64, Vec<usize>),
    /// Region losses: from the statistics sums of pass 0 (`[n][c][K]` f32) in this staging
    /// buffer, at this byte offset.
    Sums(usize, u64),
}

/// Where the results of a recorded evaluation are.
pub(crate) struct Recorded {
    /// Per expression: (index of its value in the values, terms); its term values follow it.
    pub vals: Vec<(usize, usize)>,
    /// Floats of values, then 8 status words: the layout of the values readback.
    pub vals_len: usize,
    /// The finalize output (values first) and the status words.
    pub out: Slice,
    pub status: Slice,
    /// Staging buffer index of the values, when read.
    pub values_read: Option<usize>,
    /// Each expression's gradient read to the host: staging buffer index, byte offset, bytes.
    pub grad_reads: Vec<Option<(usize, u64, u64)>>,
    /// Each `reduction=none` expression's entries.
    pub unreduced: Vec<Option<UnreducedRead>>,
}

impl Gpu {
    /// The workgroup rows of the statistics and gradient passes of `inp`, (first, count) per
    /// dispatch: softmax, one row per image; sigmoid, one per (image, channel) plane
    /// ([`plane_rows`], `Params::plane0`).
    fn rows(&self, inp: &DevInput) -> Vec<(u32, u32)> {
        let planes = if inp.softmax { inp.n } else { inp.n * inp.c };
        plane_rows(planes, self.limits.max_compute_workgroups_per_dimension as usize).collect()
    }

    /// A grid of `x` workgroups per image over `n` images, the images past the device's rows
    /// folded into z (image = y + z rows; `reduce.wgsl`, `count_reduce.wgsl`).
    fn image_rows(&self, x: usize, n: usize) -> Grid {
        let rows = (self.limits.max_compute_workgroups_per_dimension as usize).max(1);
        Grid::Direct(x as u32, n.min(rows) as u32, n.div_ceil(rows) as u32)
    }

    /// The kernels' parameters for `inp` (its own images and pixels), whether its statistics
    /// use the wide tiles, and their pixels per thread.
    fn params_of(&self, inp: &DevInput) -> (Params, bool, u32) {
        // read once: the tile size and the statistics pipelines must agree
        let wide_ok = self.wide_stats.load(std::sync::atomic::Ordering::Relaxed);
        // (the long tiles only with the subgroup kernel)
        let tiling = |chunks: u32| {
            let (wide, pix) = stats_tiling(inp.softmax, wide_ok, inp.s, chunks > 0 && inp.c <= crate::gpu::CREG_MAX);
            (wide, pix, inp.s.div_ceil(crate::gpu::STATS_WG * pix))
        };
        let mut chunks = self.stats_chunks(wide_ok, inp.softmax);
        let (mut wide, mut pix, mut tiles) = tiling(chunks);
        // a partial per subgroup (1 KiB per image and class on lavapipe, whatever the image's
        // size): on images whose partials would outgrow their logits (under 256 pixels there), the
        // portable kernel's partial per tile, so that the partials fit wherever the logits do
        // (tens of thousands of small images passed the binding). Decided by the image, not the
        // batch, so that an image gives the same bits in a batch of any size.
        if chunks > 0 && tiles * chunks as usize * K > inp.s {
            chunks = 0;
            (wide, pix, tiles) = tiling(0);
        }
        let p = Params {
            n: inp.n as u32,
            c: inp.c as u32,
            s: inp.s as u32,
            tiles: tiles as u32,
            ignore: inp.ignore.unwrap_or(0),
            has_ignore: match inp.ignore {
                Some(0) if !inp.softmax => 2,
                Some(_) => 1,
                None => 0,
            },
            gn: (inp.n / inp.groups.max(1)) as u32,
            chunks,
            ..Params::default()
        };
        (p, wide, pix as u32)
    }

    /// The statistics partials' slots per tile: one per subgroup where the wide tiles take
    /// [`shaders::STATS_SG`], else 0 (one per tile). Softmax only: its class loop writes partials
    /// per class, the sigmoid tiles once (a barrier there cost little, and the sigmoid tiles read
    /// quads, which STATS_SG does not).
    fn stats_chunks(&self, wide: bool, softmax: bool) -> u32 {
        match self.subgroup {
            Some(size) if wide && softmax && self.use_subgroups.load(std::sync::atomic::Ordering::Relaxed) => {
                crate::gpu::STATS_WG as u32 / size
            }
            _ => 0,
        }
    }

    /// Whether the sigmoid passes over `inp` take the kernels over quads ([`shaders::STATS4`],
    /// [`shaders::GRAD4`]): with the wide tiles of a CPU adapter (`wide`), on images of `4k`
    /// pixels (so that every plane is whole quads), when the input and the elementwise output
    /// `out` start on 16 bytes. Not softmax: its quads (a thread's pixels four consecutive ones,
    /// a load per class and quad) made ce on 4x21x256x256 slower on lavapipe, 13 to 20 ms in the
    /// gradient and 10 to 17 ms in the statistics (same minutes, alternating builds).
    fn quads(&self, inp: &DevInput, wide: bool, out: Slice) -> bool {
        wide && !inp.softmax && inp.s.is_multiple_of(4) && crate::gpu::quad_aligned(&[inp.logits, inp.target, out])
    }

    /// A cleared status buffer: the bad-input flags of the checks (the statistics pass's, or the
    /// Lovász key passes'), which the finalize and the gradient passes read.
    pub(crate) fn record_status(&self, rec: &mut Recording) -> Result<Slice, Error> {
        let status = rec.scratch(32, "status")?;
        rec.clear(status);
        Ok(status)
    }

    /// Records the fused statistics passes of `plan` on `inp` and their fixed-order reductions:
    /// the sums `[passes][n][c][K]`.
    pub(crate) fn record_stats(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        plan: &StatsPlan,
        status: Slice,
    ) -> Result<Totals, Error> {
        Ok(self.record_stats_counts(rec, inp, plan, status, None, false, None)?.0)
    }

    /// [`Gpu::record_stats`], and with `counts = Some(threshold)` the confusion counts of the
    /// hard predictions (sigmoid: a logit `>= threshold` is positive) from the same pass: per
    /// (image, cell) 64-bit totals as (low, high) u32 pairs, cells `C x C` (softmax) or
    /// `C x [target][prediction]` (sigmoid). `keep_lse` (softmax on logits): the pass also
    /// writes each pixel's log-sum-exp ([`Totals::lse`]) for the gradient passes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_stats_counts(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        plan: &StatsPlan,
        status: Slice,
        counts: Option<f32>,
        keep_lse: bool,
        fused: Option<&FusedGrad>,
    ) -> Result<(Totals, Option<Slice>), Error> {
        let (n, c) = (inp.n, inp.c);
        let softmax = inp.softmax;
        let (mut base, wide, spix) = self.params_of(inp);
        base.thr = counts.unwrap_or(0.0);
        base.fcount = fused.map_or(0, |f| f.count);
        let tiles = base.tiles as usize;
        let pbuf = rec.uniform(&base);
        let cells = if softmax { c * c } else { c * 4 };
        // (the blocks of the counts: stats.wgsl, cspan)
        let blocks = inp.s.div_ceil(crate::gpu::count_span(spix as usize));
        let cnt = match counts {
            Some(_) => {
                let s = rec.scratch((n * blocks * cells * 4) as u64, "confusion count partials")?;
                rec.clear(s);
                s
            }
            None => rec.scratch(16, "no counts")?,
        };
        let lse = if keep_lse && softmax && !inp.probs {
            // (each pixel's max, then the log of its sum: softmax_p in common.wgsl)
            Some(rec.scratch((2 * n * inp.s * 4) as u64, "log-sum-exp per pixel")?)
        } else {
            None
        };
        // (the log-sum-exps are kept only where no expression's gradient is fused)
        debug_assert!(lse.is_none() || fused.is_none());
        let pix_out = match (lse, fused) {
            (Some(l), _) => l,
            (None, Some(f)) => f.dest,
            (None, None) => rec.scratch(16, "no log-sum-exp")?,
        };
        let rows = self.rows(inp);
        let passes = plan.passes();
        let stride = align((n * c * K * 4) as u64);
        let sums = rec.scratch(stride * passes as u64, "statistics sums")?;
        // one tile per image: the statistics pass writes the sums themselves (same layout), and
        // the reduction pass is left out (with subgroups, a tile has a slot per subgroup)
        let slots = tiles * (base.chunks as usize).max(1);
        let partials =
            if slots > 1 { Some(rec.scratch((n * slots * c * K * 4) as u64, "statistics partials")?) } else { None };
        for p in 0..passes {
            let slots = plan.pass_slots(p);
            let mut terms: Vec<TermParams> = slots.iter().map(|s| s.params(0.0, 1.0)).collect();
            let mut cw: Vec<f32> = slots.iter().flat_map(|s| s.device_weights()).collect();
            let nslots = terms.len() as u32;
            // (the fused terms are the first pass's: there is one)
            let fused = fused.filter(|_| p == 0);
            let spec = Spec {
                softmax,
                kinds: terms.iter().chain(fused.map_or(&[][..], |f| &f.terms)).fold(0, |k, t| k | 1 << t.kind),
                nterms: nslots,
                sensspec: plan.needs_sensspec && p == 0,
                validate: if p == 0 { inp.validate } else { 0 },
                wide,
                // (unused by the wide sigmoid tiles: one pipeline for them whatever their width)
                spix: if wide && !softmax { crate::gpu::STATS_PIX as u32 } else { spix },
                // cross-entropy alone needs no per-class sums: one pass over each pixel's logits
                pixel_only: softmax
                    && !terms.is_empty()
                    && terms.iter().all(|t| t.kind == plan::op::CE)
                    && (p > 0 || !plan.needs_class_sums),
                counts: p == 0 && counts.is_some(),
                probs: inp.probs,
                tp_min: p == 0 && plan.tp_min,
                lse: p == 0 && lse.is_some(),
                fused: fused.map_or(0, |f| f.terms.len() as u32),
                creg: self.creg(wide, inp.softmax, c, n * c * inp.s),
                ..Spec::default()
            };
            if let Some(f) = fused {
                terms.extend_from_slice(&f.terms);
                cw.extend_from_slice(&f.cw);
            }
            if self.loop_limited && softmax {
                let smoothed = terms.iter().filter(|t| t.kind == plan::op::CE && t.label_smoothing != 0.0).count();
                let steps = softmax_stats_steps(
                    c,
                    spix as usize,
                    spec.pixel_only,
                    spec.validate != 0,
                    inp.ignore.is_some(),
                    spec.counts,
                    smoothed,
                    spec.fused > 0,
                );
                if steps > CPU_LOOP_LIMIT {
                    return Err(Error::Limit {
                        what: format!(
                            "loop steps of the statistics pass over {c} softmax classes on llvmpipe (which ends \
                             a shader's loops after {CPU_LOOP_LIMIT} iterations)"
                        ),
                        needed: steps as u64,
                        max: CPU_LOOP_LIMIT as u64,
                    });
                }
            }
            let (tb, cb) = (rec.data(&terms), rec.data(&cw));
            let kernel = if spec.creg > 0 && base.chunks > 0 {
                &shaders::STATS_SG_REGS
            } else if spec.creg > 0 {
                &shaders::STATS_REGS
            } else if base.chunks > 0 {
                &shaders::STATS_SG
            } else if self.quads(inp, wide, pix_out) {
                &shaders::STATS4
            } else {
                &shaders::STATS
            };
            // (the long tiles only with the subgroup entry point, whose per-pixel arrays hold them)
            debug_assert!(spix as usize <= crate::gpu::STATS_PIX || base.chunks > 0 || !softmax);
            // (an image's tiles folded into x and z past the device's workgroups per dimension)
            let tx = tiles.min(self.limits.max_compute_workgroups_per_dimension as usize).max(1);
            for &(plane0, count) in &rows {
                let pr = rec.uniform(&Params { plane0, ..base });
                rec.dispatch(
                    kernel,
                    spec,
                    Grid::Direct(tx as u32, count, tiles.div_ceil(tx) as u32),
                    &[
                        ("logits", inp.logits),
                        ("tgt", inp.target),
                        ("P", pr),
                        ("terms", tb),
                        ("cw", cb),
                        ("partials", partials.unwrap_or(sums.sub(p as u64 * stride, stride))),
                        ("status", status),
                        ("cnt", cnt),
                        ("elem_out", pix_out),
                    ],
                )?;
            }
            if let Some(partials) = partials {
                rec.dispatch(
                    &shaders::REDUCE,
                    // it reads only NTERMS: one pipeline per slot count
                    Spec { nterms: spec.nterms, tp_min: spec.tp_min, ..Spec::default() },
                    self.image_rows(c, n),
                    &[("P", pbuf), ("partials", partials), ("sums", sums.sub(p as u64 * stride, stride))],
                )?;
            }
        }
        let total = match counts {
            Some(_) => {
                let t = rec.scratch((n * cells * 8) as u64, "confusion counts")?;
                // (its tiles are the count blocks)
                let pc = rec.uniform(&Params { tiles: blocks as u32, ..base });
                rec.dispatch(
                    &shaders::COUNT_REDUCE,
                    Spec::softmax(softmax),
                    self.image_rows(cells.div_ceil(crate::gpu::GRAD_WG), n),
                    &[("P", pc), ("cnt", cnt), ("total", t)],
                )?;
                Some(t)
            }
            None => None,
        };
        Ok((Totals { sums, stride, n, groups: inp.groups.max(1), lse }, total))
    }

    /// Records the sort of each distinct Lovász loss of `plan` on `inp`: its segment sums
    /// `[value bits, fg, bg, kept]` into `segsum[g]`, and the Jaccard weights, returned (a
    /// loss whose `segsum` is `None` is not sorted: its weights are an unused placeholder; one
    /// with a `hinge_grads[g]` writes that gradient instead, and its destination is returned).
    /// `key_checks`: the checks the key passes make ([`Part::key_checks`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_lovasz_all(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        plan: &StatsPlan,
        segsum: &[Option<Slice>],
        hinge_grads: &[Option<HingeGrad>],
        status: Slice,
        key_checks: u32,
    ) -> Result<Vec<Slice>, Error> {
        let (base, _, _) = self.params_of(inp);
        let rows = self.rows(inp);
        let mut lws = Vec::new();
        for (g, (lp, ss)) in plan.lovasz.iter().zip(segsum).enumerate() {
            let Some(ss) = *ss else {
                lws.push(rec.scratch(16, "unused lovasz weights")?);
                continue;
            };
            let grad = hinge_grads.get(g).copied().flatten();
            // Lovász-Softmax on logits: then each pixel's log-sum-exp, which the keys pass
            // computes and the gradient pass reads back (lovasz_keys.wgsl)
            let lse = if inp.softmax && !inp.probs { 2 * inp.n * inp.s } else { 0 };
            let lw = match grad {
                Some(h) => h.dest,
                None => rec.scratch(((inp.n * inp.c * inp.s + lse) * 4) as u64, "lovasz weights")?,
            };
            let li = LovaszInput {
                logits: inp.logits,
                target: inp.target,
                params: base,
                rows: &rows,
                n: inp.n,
                c: inp.c,
                s: inp.s,
                softmax: inp.softmax,
                probs: inp.probs,
                status,
                checked: inp.validate != 0,
                key_checks,
            };
            self.record_lovasz(rec, &li, lp.per_image, ss, lw, grad)?;
            lws.push(lw);
        }
        Ok(lws)
    }

    /// The expression of `exprs` whose gradient the statistics pass can write ([`FusedGrad`]):
    /// the first that qualifies, its destination a scratch buffer when the gradient goes to the
    /// host. None when the input or no expression allows it.
    fn fused_grad(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        plan: &StatsPlan,
        exprs: &[LossExpr],
        grads: &[GradTo],
    ) -> Result<Option<FusedGrad>, Error> {
        use crate::expr::{Loss, Norm, PosWeight};
        // the elements (softmax: pixels) the mean divides by: none, and the finalize's scale is 0
        let Some(count) = inp.counted.filter(|&c| c > 0) else {
            return Ok(None);
        };
        // (the finalize's count is an f32 sum of ones: exact below 2^24)
        if (inp.softmax && inp.probs) || inp.validate != 0 || inp.groups > 1 || plan.passes() != 1 || count >= 1 << 24 {
            return Ok(None);
        }
        // on llvmpipe, only where the statistics thread's loop steps stay within its limit with
        // the fused gradient's walks (per-class sums counted, whether or not the pass takes them)
        if self.loop_limited
            && inp.softmax
            && softmax_stats_steps(inp.c, crate::gpu::STATS_PIX, false, false, true, false, 0, true) > CPU_LOOP_LIMIT
        {
            return Ok(None);
        }
        for (i, (e, g)) in exprs.iter().zip(grads).enumerate() {
            // the caller's slice, or (None) a scratch read back to the host
            let into = match g {
                GradTo::Host => None,
                GradTo::Into { slice, accumulate: false, copy_to: None } if !shares_grad_buffer(rec, grads, i) => {
                    Some(*slice)
                }
                _ => continue,
            };
            if e.unreduced() || e.terms.is_empty() || e.terms.len() > 4 {
                continue;
            }
            // softmax: the pass writes the fused gradient where it would keep the log-sum-exps
            // for the gradient passes of the others: only when no other one needs them
            let others_read_lse = exprs
                .iter()
                .zip(grads)
                .enumerate()
                .any(|(j, (o, g))| j != i && (!matches!(g, GradTo::Skip) || o.unreduced()) && !o.has_lovasz());
            if inp.softmax && others_read_lse {
                continue;
            }
            let mut terms = Vec::new();
            let mut cw = Vec::new();
            let mut hinge = None;
            for t in &e.terms {
                // (pos_weight and the weight scale as the finalize takes them: bce's scalar
                // pos_weight, focal's weight scale; None for cross-entropy, whose slot's weight
                // sum label smoothing reads)
                let (pw, m) = match &t.loss {
                    // (unweighted cross-entropy: the count is the pixels')
                    Loss::Ce(p) if inp.softmax && p.weights.is_none() => (1.0, None),
                    _ if inp.softmax => break,
                    Loss::Bce(p) => match &p.pos_weight {
                        PosWeight::Value(v) => (*v as f32, Some(1.0)),
                        PosWeight::Channels(w) => (plan::weight_scale(w) as f32, Some(1.0)),
                        PosWeight::Auto => break,
                    },
                    Loss::Focal(p) if !p.act.softmax(crate::Mode::Binary) => match &p.weights {
                        None => (1.0, Some(1.0)),
                        Some(w) if p.norm == Norm::Count => (1.0, Some(plan::weight_scale(w) as f32)),
                        Some(_) => break,
                    },
                    // the hinge beside one pixel term: its weights pass adds its gradient to the
                    // pixel term's (HingeGrad), where no other gradient reads its weights; the
                    // sum is the gradient pass's, bit for bit: (-hinge) + pixel, commuted
                    Loss::Lovasz(p) if hinge.is_none() && e.terms.len() == 2 && e.deep.is_none() => {
                        let shared = exprs.iter().zip(grads).enumerate().any(|(j, (o, og))| {
                            j != i
                                && !matches!(og, GradTo::Skip)
                                && o.terms.iter().any(|u| matches!(&u.loss, Loss::Lovasz(q) if q == p))
                        });
                        if shared {
                            break;
                        }
                        hinge = Some((plan.lovasz_of(p), t.weight, p.per_image));
                        continue;
                    }
                    _ => break,
                };
                let slot = &plan.slots[plan.slot_of(&t.loss, inp.c)];
                let mut tp = slot.params(0.0, 1.0);
                tp.scale = t.weight as f32;
                tp.pos_weight = pw;
                if let Some(m) = m {
                    tp.weight_sum = m;
                }
                terms.push(tp);
                cw.extend(slot.device_weights());
            }
            if terms.len() + usize::from(hinge.is_some()) != e.terms.len() || terms.is_empty() {
                continue;
            }
            let dest = match into {
                Some(slice) => slice,
                None => rec.scratch((inp.n * inp.c * inp.s * 4) as u64, "gradient")?,
            };
            let hinge = hinge.map(|(g, w, per_image)| (g, HingeGrad::new(dest, w, per_image, inp.n, true)));
            return Ok(Some(FusedGrad { expr: i, terms, cw, dest, count: count as u32, hinge }));
        }
        Ok(None)
    }

    /// Records the evaluation of `exprs` on `inp`, one result per group of `inp`.
    /// `read_values` (one group only): copy values and status into a staging buffer. Staging
    /// buffers are numbered in the order the recording made them.
    pub(crate) fn record_eval(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        exprs: &[LossExpr],
        grads: &[GradTo],
        read_values: bool,
    ) -> Result<Vec<Recorded>, Error> {
        Ok(self.record_eval_counts(rec, inp, exprs, grads, read_values, None)?.0)
    }

    /// [`Gpu::record_eval`] with the confusion counts of the hard predictions from the same
    /// statistics pass (see [`Gpu::record_stats_counts`]).
    pub(crate) fn record_eval_counts(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        exprs: &[LossExpr],
        grads: &[GradTo],
        read_values: bool,
        counts: Option<f32>,
    ) -> Result<(Vec<Recorded>, Option<Slice>), Error> {
        let n = inp.n;
        let groups = inp.groups.max(1);
        if (n / groups) * groups != n || (groups > 1 && (read_values || exprs.iter().any(|e| e.has_lovasz()))) {
            return Err(Error::Gpu(format!("internal: {groups} groups of {n} images")));
        }
        let plan = StatsPlan::new(exprs, inp.c, inp.softmax);
        let status = self.record_status(rec)?;
        // the gradient passes read the pixels' log-sum-exps rather than compute them again
        // (the passes of expressions with Lovász bind the Lovász weights there and recompute it)
        let fused = self.fused_grad(rec, inp, &plan, exprs, grads)?;
        let keep_lse = exprs.iter().zip(grads).enumerate().any(|(j, (e, g))| {
            fused.as_ref().is_none_or(|f| f.expr != j)
                && (!matches!(g, GradTo::Skip) || e.unreduced())
                && !e.has_lovasz()
        });
        // Lovász alone, on an input checked on the host: no statistics pass (the finalize's
        // Lovász ops read the sorts' own label counts, and nothing else reads the sums)
        // (or checked on the device by the Lovász key passes, which read every logit and target
        // word and make the statistics pass's checks: lovasz_keys.wgsl; a CPU adapter's hinge,
        // its key count, hinge.wgsl)
        let lovasz_only = plan.slots.is_empty()
            && !plan.needs_class_sums
            && !plan.needs_sensspec
            && !plan.tp_min
            && counts.is_none()
            && (inp.validate == 0 || !plan.lovasz.is_empty())
            && fused.is_none()
            && !keep_lse;
        let (totals, count_totals) = if lovasz_only {
            let stride = align((n * inp.c * K * 4) as u64);
            let sums = rec.scratch(stride, "statistics sums (unread)")?;
            (Totals { sums, stride, n, groups, lse: None }, None)
        } else {
            self.record_stats_counts(rec, inp, &plan, status, counts, keep_lse, fused.as_ref())?
        };
        // the fused expression's gradient is written: no gradient pass
        let mut tail_grads = grads.to_vec();
        if let Some(f) = &fused {
            tail_grads[f.expr] = GradTo::Skip;
        }
        let hinge_add = fused.as_ref().and_then(|f| f.hinge);
        let key_checks = if lovasz_only { inp.validate } else { 0 };
        let part = Part { inp, img0: 0, grads: &tail_grads, lse: totals.lse, hinge_add, key_checks };
        let mut t = self.record_tail(rec, &plan, exprs, totals, LovFrom::Parts, &[part], status, read_values)?;
        if let Some(f) = fused.as_ref().filter(|f| matches!(grads[f.expr], GradTo::Host)) {
            let total = (inp.n * inp.c * inp.s * 4) as u64;
            let rb = rec.readback(total, "gradient")?;
            rec.copy(f.dest.sub(0, total), rb);
            t.grad_reads[0][f.expr] = Some(rec.readbacks() - 1);
        }
        let unreduced = self.record_unreduced(rec, inp, exprs, &t, totals)?;
        let per = (inp.n * inp.c * inp.s * 4 / groups) as u64;
        let recorded = (0..groups)
            .map(|g| Recorded {
                vals: t.vals.clone(),
                vals_len: t.vals_len,
                out: t.out.sub((g * t.gout * 4) as u64, (t.gout * 4) as u64),
                status,
                values_read: t.values_read,
                grad_reads: t.grad_reads[0].iter().map(|r| r.map(|i| (i, g as u64 * per, per))).collect(),
                unreduced: unreduced
                    .iter()
                    .map(|u| {
                        u.as_ref().map(|u| match u {
                            // each group's share of the entries, or of the sums
                            UnreducedRead::Entries(i, _, bytes, shape) => {
                                let b = bytes / groups as u64;
                                let mut sh = shape.clone();
                                sh[0] /= groups;
                                UnreducedRead::Entries(*i, g as u64 * b, b, sh)
                            }
                            UnreducedRead::Sums(i, _) => {
                                UnreducedRead::Sums(*i, (g * (inp.n / groups) * inp.c * K * 4) as u64)
                            }
                        })
                    })
                    .collect(),
            })
            .collect();
        Ok((recorded, count_totals))
    }

    /// Records the reads of the unreduced entries of the `reduction=none` expressions of a
    /// whole-batch evaluation: a pixel loss's entries, which its gradient pass wrote; for a
    /// region loss a copy of the statistics sums, from which the host takes the groups' losses.
    /// Staging buffer indices follow those of the tail.
    fn record_unreduced(
        &self,
        rec: &mut Recording,
        inp: &DevInput,
        exprs: &[LossExpr],
        t: &Tail,
        totals: Totals,
    ) -> Result<Vec<Option<UnreducedRead>>, Error> {
        let mut sums_read = None;
        let mut out = Vec::new();
        let (n, c, s) = (inp.n, inp.c, inp.s);
        for (i, e) in exprs.iter().enumerate() {
            let (Some(term), true) = (e.terms.first(), e.unreduced()) else {
                out.push(None);
                continue;
            };
            let Some(slot) = plan::PixelSlot::of(&term.loss, c, inp.softmax) else {
                // a region loss: the sums, read once for every such expression
                let idx = match sums_read {
                    Some(i) => i,
                    None => {
                        let bytes = (n * c * K * 4) as u64;
                        let rb = rec.readback(bytes, "statistics sums")?;
                        rec.copy(totals.sums.sub(0, bytes), rb);
                        sums_read = Some(rec.readbacks() - 1);
                        rec.readbacks() - 1
                    }
                };
                out.push(Some(UnreducedRead::Sums(idx, 0)));
                continue;
            };
            let entries = t.entries[i].ok_or_else(|| Error::Gpu("internal: no entries of an unreduced term".into()))?;
            let ce = slot.kind == plan::kind::CE;
            let len = if ce { n * s } else { n * c * s };
            let rb = rec.readback((len * 4) as u64, "unreduced entries")?;
            rec.copy(entries.sub(0, (len * 4) as u64), rb);
            let mut shape = vec![n];
            if !ce {
                shape.push(c);
            }
            // the spatial dims are the caller's; the decode puts them back
            shape.push(s);
            out.push(Some(UnreducedRead::Entries(rec.readbacks() - 1, 0, (len * 4) as u64, shape)));
        }
        Ok(out)
    }

    /// Records what follows the statistics of a batch: the Lovász sorts of each part, the
    /// finalize of the whole batch (`totals`), the values readback, and the gradient passes of
    /// each part, which read the coefficients of their own images (`Part::img0` on).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_tail(
        &self,
        rec: &mut Recording,
        plan: &StatsPlan,
        exprs: &[LossExpr],
        totals: Totals,
        lov_from: LovFrom,
        parts: &[Part<'_>],
        status: Slice,
        read_values: bool,
    ) -> Result<Tail, Error> {
        let Some(first) = parts.first() else {
            return Err(Error::Gpu("internal: no parts".into()));
        };
        let (c, softmax) = (first.inp.c, first.inp.softmax);
        let (n, groups) = (totals.n, totals.groups);
        // images per group: the finalize and the coefficient blocks see one group
        let ng = n / groups;
        let whole = parts.len() == 1 && first.img0 == 0 && first.inp.n == n;
        if !whole && plan.lovasz.iter().any(|l| !l.per_image) && matches!(lov_from, LovFrom::Parts) {
            return Err(Error::Gpu("internal: a whole-batch lovasz over parts".into()));
        }

        let layouts: Vec<BlockLayout> = exprs.iter().map(|e| BlockLayout::new(e, plan, (ng, c, 1), softmax)).collect();
        let wants = |i: usize| parts.iter().any(|p| !matches!(p.grads[i], GradTo::Skip));
        // a block for each expression with a gradient, or with unreduced entries (they read
        // bce's resolved pos_weight from it)
        let has_block = |i: usize| wants(i) || exprs[i].unreduced();
        // the Lovász losses to sort: every one when the finalize needs their segments; with the
        // segments given, those whose gradient is wanted
        let sorted: Vec<bool> = (0..plan.lovasz.len())
            .map(|g| {
                matches!(lov_from, LovFrom::Parts)
                    || layouts.iter().enumerate().any(|(i, l)| wants(i) && l.lov.iter().any(|x| x.0 == g))
            })
            .collect();

        // 1. Lovász: one sort per distinct Lovász loss and part, all recorded into this
        // submission; (offset, bytes) of each loss's segment sums in one buffer, and the
        // segments of one image
        let mut lov_at = Vec::new();
        let mut lov_bytes = 0u64;
        for lp in &plan.lovasz {
            let (segs, _) = plan::lovasz_segments(softmax, lp.per_image, n, c, 1);
            lov_at.push((lov_bytes, (segs * 16) as u64, segs / if lp.per_image { n } else { 1 }));
            lov_bytes += align((segs * 16) as u64);
        }
        let lov = match lov_from {
            LovFrom::Given(l) => l,
            LovFrom::Parts => rec.scratch(lov_bytes, "lovasz segment sums")?,
        };
        // the expressions whose gradient the hinge's weights pass writes (HingeGrad): their
        // destination, and that of each Lovász loss
        let mut fused_dest: Vec<Option<Slice>> = vec![None; exprs.len()];
        let mut hinge_grads: Vec<Option<HingeGrad>> = vec![None; plan.lovasz.len()];
        if whole && matches!(lov_from, LovFrom::Parts) && groups == 1 && !softmax {
            let total = (first.inp.n * c * first.inp.s * 4) as u64;
            for (i, e) in exprs.iter().enumerate() {
                let [(g, _, _)] = layouts[i].lov[..] else { continue };
                let [t] = &e.terms[..] else { continue };
                let only = e.deep.is_none() && !e.unreduced() && layouts[i].pix.is_empty() && !layouts[i].region;
                // (the weights are written for no one else: no other gradient reads this loss's)
                let alone = (0..exprs.len()).all(|j| j == i || !wants(j) || layouts[j].lov.iter().all(|x| x.0 != g));
                if !only || !alone || !matches!(t.loss, crate::expr::Loss::Lovasz(_)) {
                    continue;
                }
                let dest = match first.grads[i] {
                    GradTo::Host => rec.scratch(total, "gradient")?,
                    GradTo::Into { slice, accumulate: false, copy_to: None }
                        if !shares_grad_buffer(rec, first.grads, i) =>
                    {
                        slice
                    }
                    _ => continue,
                };
                hinge_grads[g] = Some(HingeGrad::new(dest, t.weight, plan.lovasz[g].per_image, n, false));
                fused_dest[i] = Some(dest);
            }
        }
        // a hinge that adds its gradient to what the statistics pass wrote (FusedGrad::hinge)
        if let Some((g, h)) = first.hinge_add {
            if !(whole && matches!(lov_from, LovFrom::Parts) && groups == 1 && !softmax) || hinge_grads[g].is_some() {
                return Err(Error::Gpu("internal: a hinge gradient to add outside a whole batch".into()));
            }
            hinge_grads[g] = Some(h);
        }
        let mut lws = Vec::new();
        for part in parts {
            let mut segsum = Vec::new();
            for ((lp, &(off, bytes, _)), &sort) in plan.lovasz.iter().zip(&lov_at).zip(&sorted) {
                segsum.push(match lov_from {
                    _ if !sort => None,
                    LovFrom::Parts if whole => Some(lov.sub(off, bytes)),
                    _ => {
                        let (segs, _) = plan::lovasz_segments(softmax, lp.per_image, part.inp.n, c, 1);
                        Some(rec.scratch((segs * 16) as u64, "lovasz segment sums of a part")?)
                    }
                });
            }
            let lw = self.record_lovasz_all(rec, part.inp, plan, &segsum, &hinge_grads, status, part.key_checks)?;
            if let (LovFrom::Parts, false) = (lov_from, whole) {
                // each part's per-image segments into their place among the whole batch's
                for (ss, &(off, _, per)) in segsum.iter().flatten().zip(&lov_at) {
                    let bytes = (part.inp.n * per * 16) as u64;
                    rec.copy(ss.sub(0, bytes), lov.sub(off + (part.img0 * per * 16) as u64, bytes));
                }
            }
            lws.push(lw);
        }
        let lov_base: Vec<usize> = lov_at.iter().map(|&(o, _, _)| (o / 16) as usize).collect();

        // 2. finalize: values, then each gradient's coefficient block (256-byte aligned)
        let mut cursor = 0;
        let mut vals = Vec::new();
        for e in exprs {
            vals.push((cursor, e.terms.len()));
            cursor += 1 + e.terms.len();
        }
        let vals_len = cursor;
        let mut blocks = Vec::new();
        for (i, l) in layouts.iter().enumerate() {
            cursor = cursor.next_multiple_of(64);
            if has_block(i) {
                blocks.push(Some(cursor));
                cursor += l.len;
            } else {
                blocks.push(None);
            }
        }
        // each group's values and blocks, `gout` floats apart
        let gout = cursor;
        let out = rec.scratch((groups * gout * 4) as u64, "finalize output")?;
        // the ops add into it
        rec.clear(out);
        let mut ops: Vec<Op> = Vec::new();
        let mut cls: Vec<u32> = Vec::new();
        for (i, e) in exprs.iter().enumerate() {
            plan::push_ops(
                e,
                plan,
                &layouts[i],
                vals[i].0,
                blocks[i],
                (totals.stride / 4) as usize,
                &lov_base,
                c,
                softmax,
                &mut ops,
                &mut cls,
            );
        }
        let cb = rec.data(&cls);
        // (an evaluation of metrics alone has no ops, and no finalize)
        // (one thread on a CPU adapter over a few entries)
        let threads = finalize_threads(self.wide_stats.load(std::sync::atomic::Ordering::Relaxed), &ops, ng, c);
        let finalize = if threads == 1 { &shaders::FINALIZE_SERIAL } else { &shaders::FINALIZE };
        if self.loop_limited {
            if let Some(steps) =
                ops.iter().map(|op| finalize_op_steps(op, ng, c, threads)).find(|&s| s > CPU_LOOP_LIMIT)
            {
                return Err(Error::Limit {
                    what: format!(
                        "loop steps of one loss term's finalize over {ng} images of {c} classes on llvmpipe (which \
                         ends a shader's loops after {CPU_LOOP_LIMIT} iterations)"
                    ),
                    needed: steps as u64,
                    max: CPU_LOOP_LIMIT as u64,
                });
            }
        }
        for ops in finalize_chunks(&ops, ng, c, threads) {
            let fparams = rec.uniform(&Params {
                n: ng as u32,
                c: c as u32,
                s: first.inp.s as u32,
                gn: ng as u32,
                nops: ops.len() as u32,
                gout: gout as u32,
                ..Params::default()
            });
            let ob = rec.data(ops);
            rec.dispatch(
                finalize,
                Spec::default(),
                Grid::Direct(groups as u32, 1, 1),
                &[
                    ("P", fparams),
                    ("sums", totals.sums),
                    ("lov", lov),
                    ("ops", ob),
                    ("cls", cb),
                    ("status", status),
                    ("out", out),
                ],
            )?;
        }

        // 3. values (with the status words) into a staging buffer
        let mut reads = rec.readbacks();
        let values_read = if read_values {
            let bytes = (vals_len * 4) as u64;
            let rb = rec.readback(bytes + 32, "values")?;
            if bytes > 0 {
                rec.copy(out.sub(0, bytes), rb.sub(0, bytes));
            }
            rec.copy(status, rb.sub(bytes, 32));
            reads += 1;
            Some(reads - 1)
        } else {
            None
        };

        // 4. gradients: one elementwise pass per expression and part (one more per further
        // Lovász loss)
        let mut grad_reads = Vec::new();
        let mut entries: Vec<Option<Slice>> = vec![None; exprs.len()];
        for (part, lws) in parts.iter().zip(&lws) {
            let inp = part.inp;
            let (mut base, wide, _) = self.params_of(inp);
            base.gn = ng as u32;
            base.img0 = part.img0 as u32;
            let total = (inp.n * c * inp.s * 4) as u64;
            let rows = self.rows(inp);
            // bound where a pass reads no Lovász weights (not a hinge's gradient, which may be
            // written beside that pass)
            let any_lw = match lws.iter().zip(&hinge_grads).find(|(_, h)| h.is_none()) {
                Some((&lw, _)) => lw,
                None => rec.scratch(16, "no lovasz weights")?,
            };
            let mut reads_of_part = Vec::new();
            for (i, g) in part.grads.iter().enumerate() {
                let l = &layouts[i];
                // reduction=none of a pixel loss: its entries come from the gradient pass (which
                // then runs even without a gradient wanted, into scratch)
                let unr = exprs[i].unreduced() && l.pix.len() == 1;
                let (dest, accumulate, host, copy_to) = match *g {
                    GradTo::Skip if unr => (rec.scratch(total, "gradient of unreduced entries")?, false, false, None),
                    GradTo::Skip => {
                        reads_of_part.push(None);
                        continue;
                    }
                    // written by the hinge's weights pass
                    _ if fused_dest[i].is_some() => {
                        let host = matches!(g, GradTo::Host);
                        if let (true, Some(dest)) = (host, fused_dest[i]) {
                            let rb = rec.readback(total, "gradient")?;
                            rec.copy(dest.sub(0, total), rb);
                            reads += 1;
                        }
                        reads_of_part.push(host.then(|| reads - 1));
                        continue;
                    }
                    GradTo::Host => (rec.scratch(total, "gradient")?, false, true, None),
                    GradTo::Into { slice, accumulate, copy_to } => (slice, accumulate, false, copy_to),
                };
                // a gradient added to a slice beside the input: its scratch starts from the
                // slice as the passes before this one left it
                if let (true, Some(from)) = (accumulate, copy_to) {
                    rec.copy(from, dest);
                }
                let block = blocks[i].unwrap_or(0);
                // this block of every group: group g's is g * gout floats on
                let coefs = out.sub(
                    (block * 4) as u64,
                    align((((groups - 1) * gout + l.len) * 4).max(16) as u64).min(out.size - (block * 4) as u64),
                );
                let slots: Vec<&plan::PixelSlot> = l.pix.iter().map(|&(_, slot)| &plan.slots[slot]).collect();
                let mut terms: Vec<TermParams> = slots.iter().map(|s| s.params(0.0, 1.0)).collect();
                let cw: Vec<f32> = slots.iter().flat_map(|s| s.device_weights()).collect();
                let unr_out = match (unr, slots.first(), terms.first_mut()) {
                    (true, Some(slot), Some(tp)) => {
                        // the term's factor; cross-entropy's weights are the statistics' (scaled
                        // to a largest of 1): the factor undoes the scale
                        let term = &exprs[i].terms[l.pix[0].0];
                        // (and focal's weights are divided by their largest, as the statistics' are)
                        let scale = match &term.loss {
                            crate::expr::Loss::Ce(p) => p.weights.as_deref().map_or(1.0, plan::weight_scale),
                            crate::expr::Loss::Focal(_) => slot.weight_scale(),
                            _ => 1.0,
                        };
                        tp.scale = (term.weight * scale) as f32;
                        let planes = if slot.kind == plan::kind::CE { 1 } else { c };
                        let e = rec.scratch((inp.n * planes * inp.s * 4) as u64, "unreduced entries")?;
                        if entries[i].is_none() {
                            entries[i] = Some(e);
                        }
                        e
                    }
                    _ => rec.scratch(16, "no unreduced entries")?,
                };
                let (tb, cb) = (rec.data(&terms), rec.data(&cw));
                // over quads, a thread takes gpix quads instead of pixels
                let quads = self.quads(inp, wide, dest);
                // (the first pass's kernel: every pass takes its grid)
                let stats_creg = self.creg(wide, softmax, inp.c, inp.n * inp.c * inp.s);
                let creg = grad_creg(stats_creg, part.inp.probs, unr, &terms);
                let gpix = grad_pix(wide, softmax, !l.lov.is_empty(), creg > 0, inp.c, terms.len());
                if self.loop_limited && softmax && creg == 0 {
                    let smoothed = unr && terms.iter().any(|t| t.kind == plan::op::CE && t.label_smoothing != 0.0);
                    let dot = (l.region || !l.lov.is_empty()) && !part.inp.probs;
                    let lse_walk = l.lov.is_empty() && part.lse.is_none() && !part.inp.probs;
                    let steps = crate::gpu::softmax_grad_steps(inp.c, gpix, terms.len(), dot, lse_walk, smoothed);
                    if steps > CPU_LOOP_LIMIT {
                        return Err(Error::Limit {
                            what: format!(
                                "loop steps of the gradient pass over {} softmax classes and {} pixel terms on \
                                 llvmpipe (which ends a shader's loops after {CPU_LOOP_LIMIT} iterations)",
                                inp.c,
                                terms.len()
                            ),
                            needed: steps as u64,
                            max: CPU_LOOP_LIMIT as u64,
                        });
                    }
                }
                let (kernel, per_thread) = if quads { (&shaders::GRAD4, 4 * gpix) } else { (&shaders::GRAD, gpix) };
                let (gx, gz) = grid(&self.limits, inp.s.div_ceil(per_thread));
                let lov_passes: Vec<Option<(usize, usize)>> = if l.lov.is_empty() {
                    vec![None]
                } else {
                    l.lov.iter().map(|&(g, off, _)| Some((g, off))).collect()
                };
                for (k, lp) in lov_passes.iter().enumerate() {
                    let first = k == 0;
                    let spec = Spec {
                        softmax,
                        kinds: if first { terms.iter().fold(0, |k, t| k | 1 << t.kind) } else { 0 },
                        nterms: if first { terms.len() as u32 } else { 0 },
                        lovasz: lp.map_or(0, |(g, _)| 1 + u32::from(plan.lovasz[g].per_image)),
                        region: first && l.region,
                        // (read only by the softmax region lines: elsewhere one pipeline)
                        slope: softmax && first && l.region && l.slope,
                        accum: accumulate || !first,
                        probs: part.inp.probs,
                        unreduced: first && unr,
                        lse: lp.is_none() && part.lse.is_some(),
                        // a CPU adapter's layout of each thread's pixels (common.wgsl, tile_item)
                        wide,
                        gpix: gpix as u32,
                        creg: if first { creg } else { grad_creg(stats_creg, part.inp.probs, false, &terms) },
                        ..Spec::default()
                    };
                    let aux = match (lp, part.lse) {
                        (Some((g, _)), _) => lws[*g],
                        (None, Some(lse)) => lse,
                        (None, None) => any_lw,
                    };
                    for &(plane0, count) in &rows {
                        let params = rec.uniform(&Params {
                            region_base: l.region_base as u32,
                            lov_base: lp.map_or(0, |(_, off)| off as u32),
                            gout: gout as u32,
                            plane0,
                            ..base
                        });
                        rec.dispatch(
                            if spec.creg > 0 { &shaders::GRAD_REGS } else { kernel },
                            spec,
                            Grid::Direct(gx, count, gz),
                            &[
                                ("logits", inp.logits),
                                ("tgt", inp.target),
                                ("P", params),
                                ("terms", tb),
                                ("cw", cb),
                                ("coefs", coefs),
                                ("elem_out", dest),
                                ("aux", aux),
                                ("status", status),
                                ("unr", unr_out),
                            ],
                        )?;
                    }
                }
                if let Some(to) = copy_to {
                    // (only where the checks passed: bad input leaves the caller's slice as it was)
                    self.record_unless_bad(rec, status, Some(dest), to)?;
                }
                if host {
                    let rb = rec.readback(total, "gradient")?;
                    rec.copy(dest.sub(0, total), rb);
                    reads += 1;
                    reads_of_part.push(Some(reads - 1));
                } else {
                    reads_of_part.push(None);
                }
            }
            grad_reads.push(reads_of_part);
        }
        Ok(Tail { vals, vals_len, out, gout, values_read, grad_reads, entries })
    }
}
