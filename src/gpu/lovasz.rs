//! The Lovász hinge and Lovász-Softmax on the device: sort keys, the exact drop of zero-weight
//! background (softmax), the stable compaction of the elements to sort, the segmented sort, and
//! the Jaccard weights and per-segment values (see `lovasz_keys.wgsl`, `lovasz.wgsl`). Everything
//! stays on the device; the finalize reads each segment's (value, fg, bg) from `segsum`.

use crate::error::Error;
use crate::gpu::context::Gpu;
use crate::gpu::record::{Grid, Recording, Slice};
use crate::gpu::sort::{SortAlgo, SortBufs, Sparse};
use crate::gpu::{Params, Spec, CPU_LOOP_LIMIT, GRAD_WG, SCATTER_TILES_WG, SORT_TILE};
use crate::plan;
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct LovParams {
    len: u32,
    segs: u32,
    tiles: u32,
    per_image: u32,
    /// The factors on the Jaccard weights that lovasz_weights writes, of foreground and
    /// background elements (1: the weights; the hinge's gradient: see [`HingeGrad`])
    fg_mul: f32,
    bg_mul: f32,
    /// The workgroups in x of a tile grid folded into z past the device's limit
    /// ([`tile_grid`]): tile = x + z fold.
    fold: u32,
    /// The CPU adapters' compactions (`compact_local_tiles`, `hinge_local_tiles`): elements per
    /// tile (`tiles` is then their count per segment).
    sort_tile: u32,
}

impl LovParams {
    fn new(len: usize, segs: usize, tiles: usize, per_image: bool, fold: u32) -> Self {
        LovParams {
            len: len as u32,
            segs: segs as u32,
            tiles: tiles as u32,
            per_image: u32::from(per_image),
            fg_mul: 1.0,
            bg_mul: 1.0,
            fold,
            sort_tile: 0,
        }
    }
}

/// The grid of `tiles` workgroups of 2048 elements per segment over `segs` segments: `(tiles,
/// segs, 1)`, or, past `fold` workgroups in x (the device's limit), `(fold, segs, z)` with tile =
/// x + z fold, which the kernels past the last tile skip (a single segment of 2^27 elements
/// or more, on a GPU).
pub(crate) fn tile_grid(tiles: usize, segs: usize, fold: u32) -> Grid {
    let fold = fold.max(1) as usize;
    Grid::Direct(tiles.min(fold) as u32, segs as u32, tiles.div_ceil(fold) as u32)
}

/// The Lovász hinge's gradient written by the weights pass itself, where the hinge is its
/// expression's only term (or, with `accumulate`, beside one pixel term whose gradient the
/// statistics pass wrote) and its coefficient is known on the host: every sorted element's
/// `d loss / d x = -coef w (2 g - 1)` goes into `dest` (zeroed first, so the elements without a
/// loss keep 0; on an input checked on the device, unless it is bad, which leaves `dest` as it
/// was), and the gradient pass does not run. `coef` is the finalize's: the term's factor
/// over the segments' mean (the same f32 division), so the gradient has the bits of the pass it
/// replaces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HingeGrad {
    pub dest: Slice,
    pub coef: f32,
    /// Added to what `dest` holds (the statistics pass wrote a pixel term's gradient there,
    /// eval::FusedGrad): not zeroed first.
    pub accumulate: bool,
}

impl HingeGrad {
    /// The gradient of a hinge term with factor `weight` into `dest`: the finalize's coefficient
    /// (op_lovasz: the factor over the mean of `images` segments per image, or of one).
    pub fn new(dest: Slice, weight: f64, per_image: bool, images: usize, accumulate: bool) -> HingeGrad {
        let segs = if per_image { images } else { 1 };
        HingeGrad { dest, coef: weight as f32 / segs as f32, accumulate }
    }
}

/// The input of the Lovász passes: logits, target words and the loss kernels' `Params`.
pub(crate) struct LovaszInput<'a> {
    pub logits: Slice,
    pub target: Slice,
    /// The kernels' parameters
    pub params: Params,
    /// The workgroup rows of the key pass (Gpu::rows): per image, or per plane from `plane0`
    pub rows: &'a [(u32, u32)],
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub softmax: bool,
    pub probs: bool,
    /// The bad-input flags (of the statistics pass, or of the key pass, `key_checks`): where
    /// they are set, nothing is sorted and no weight is written (compact.wgsl: compact_args)
    pub status: Slice,
    /// Whether the input is checked on the device (the flags may be set)
    pub checked: bool,
    /// The checks (`check::*`) the key pass makes (a CPU adapter's hinge: its key count), where no
    /// statistics pass reads the input (eval::Part::key_checks): the caller's gradient slice is
    /// then zeroed unless bad after the compaction's count, not before the keys.
    pub key_checks: u32,
}

/// The tiles of the sort's first pass per tile of a local compaction (see `record_lovasz`), at most.
const LOCAL_TILES: usize = 4;

/// The elements of a local compaction tile of a CPU adapter on segments of `len` elements:
/// [`LOCAL_TILES`] of the radix sort's tiles, fewer where a thread's walks would pass llvmpipe's
/// loop limit ([`CPU_LOOP_LIMIT`] iterations in all, past which it ends them silently): the
/// compaction walks its tile element by element, and the sort's first pass its digits, then up
/// to the whole tile's keys. On long segments (tiles of 16384 keys and 2048 digits) three.
fn local_tile(len: usize) -> usize {
    let (bits, tile, _) = crate::gpu::radix_layout(len);
    // (a margin for the walks' other loop steps)
    let fit = (CPU_LOOP_LIMIT - (1usize << bits) - 1024) / tile;
    tile * LOCAL_TILES.min(fit).max(1)
}

/// Workgroup counts (x, z) of 256 threads covering `items` threads: x up to the device limit.
pub(crate) fn grid(limits: &wgpu::Limits, items: usize) -> (u32, u32) {
    let groups = items.div_ceil(GRAD_WG);
    let gx = groups.min(limits.max_compute_workgroups_per_dimension as usize).max(1);
    (gx as u32, groups.div_ceil(gx) as u32)
}

impl Gpu {
    /// Records the write of `out` unless `status` holds bad-input flags: a copy of `src` (as
    /// long as `out`), or zeros. Four elements per access where the slices allow.
    pub(crate) fn record_unless_bad(
        &self,
        rec: &mut Recording,
        status: Slice,
        src: Option<Slice>,
        out: Slice,
    ) -> Result<(), Error> {
        let elems = (out.size / 4) as usize;
        let src = src.map(|s| s.sub(0, out.size));
        let quads = elems.is_multiple_of(4)
            && crate::gpu::quad_aligned(&[out])
            && src.is_none_or(|s| crate::gpu::quad_aligned(&[s]));
        let units = if quads { elems / 4 } else { elems };
        let (gx, gy) = grid(&self.limits, units);
        let grid = Grid::Direct(gx, gy, 1);
        match (src, quads) {
            (Some(src), q) => {
                let k = if q { &shaders::COPY_UNLESS_BAD4 } else { &shaders::COPY_UNLESS_BAD };
                rec.dispatch(k, Spec::default(), grid, &[("status", status), ("src", src), ("out", out)])
            }
            (None, q) => {
                let k = if q { &shaders::ZERO_UNLESS_BAD4 } else { &shaders::ZERO_UNLESS_BAD };
                rec.dispatch(k, Spec::default(), grid, &[("status", status), ("out", out)])
            }
        }
    }

    /// Records one Lovász loss: `segsum` receives `[value bits, fg, bg, kept]` per segment and
    /// `lw` the Jaccard weight of every element (0 for the elements that carry no gradient); with
    /// `grad` (the hinge), `lw` is `grad.dest` and receives the gradient.
    pub(crate) fn record_lovasz(
        &self,
        rec: &mut Recording,
        inp: &LovaszInput<'_>,
        per_image: bool,
        segsum: Slice,
        lw: Slice,
        grad: Option<HingeGrad>,
    ) -> Result<(), Error> {
        if grad.is_some() && inp.softmax {
            return Err(Error::Gpu("internal: a fused Lovász gradient of a softmax".into()));
        }
        let (n, c, s) = (inp.n, inp.c, inp.s);
        let (segs, len) = plan::lovasz_segments(inp.softmax, per_image, n, c, s);
        let maxd = self.limits.max_compute_workgroups_per_dimension as usize;
        // (a segment's tiles fold into a second dimension: tile_grid)
        if segs > maxd || len.div_ceil(SORT_TILE) > maxd.saturating_mul(maxd) {
            return Err(Error::Limit {
                what: format!("lovasz: workgroups per dimension for {segs} segments of {len} elements"),
                needed: segs.max(len.div_ceil(SORT_TILE).div_ceil(maxd)) as u64,
                max: maxd as u64,
            });
        }
        let tiles = len.div_ceil(SORT_TILE);
        let total = (segs * len * 4) as u64;
        // lovasz_weights writes the weight of every sorted element; the others (dropped: no
        // loss, no gradient; ignored) keep the zero of this clear, which the gradient reads
        match grad {
            // (every element written by the statistics pass)
            Some(g) if g.accumulate => {}
            // (a caller's slice that bad input leaves untouched: zeroed only when the input is
            // good, once the checks are done)
            Some(_) if inp.checked && inp.key_checks == 0 => self.record_unless_bad(rec, inp.status, None, lw)?,
            Some(_) if inp.checked => {}
            _ => rec.clear(lw),
        }
        rec.clear(segsum);
        // a CPU adapter's tiles, a thread each; the hinge's keys then go straight into the
        // compacted segments (hinge.wgsl, step 3), and from there on keys and payloads are
        // interleaved items (SortBufs::items)
        let tiled = self.sort_items(segs * len);
        // the uncompacted keys and payloads, then the sort's scratch: for a CPU adapter
        // interleaved items (bound as the keys; the payloads' binding a placeholder)
        let (keys, vals, scratch) = if tiled {
            let kv = rec.scratch(2 * total, "lovasz items")?;
            (kv, rec.scratch(16, "unused payloads")?, (kv, rec.scratch(16, "unused payloads")?))
        } else {
            let (k, v) = (rec.scratch(total, "lovasz keys")?, rec.scratch(total, "lovasz payloads")?);
            (k, v, (k, v))
        };
        // (the softmax keys of a CPU adapter: each pixel's logits in registers, see CREG_MAX)
        let creg = self.creg(tiled, inp.softmax, c, n * c * s);
        let spec = Spec { probs: inp.probs, creg, ..Spec::softmax(inp.softmax) };
        let direct_hinge = tiled && !inp.softmax;
        // the loss kernels' parameters (the key pass's per row, below)
        let pb = rec.uniform(&inp.params);
        // 1. keys and payloads (softmax: a workgroup row per image; hinge: per (image, channel)
        // plane)
        let lp = rec.uniform(&LovParams::new(len, segs, 1, per_image, maxd as u32));
        let (gx, gz) = grid(&self.limits, s);
        for &(plane0, count) in if direct_hinge { &[][..] } else { inp.rows } {
            let pr = rec.uniform(&Params { plane0, ..inp.params });
            rec.dispatch(
                match (creg > 0, tiled) {
                    (true, _) => &shaders::LOVASZ_KEYS_REGS,
                    (false, true) => &shaders::LOVASZ_KEYS_ITEMS,
                    (false, false) => &shaders::LOVASZ_KEYS,
                },
                // (the checks, where no statistics pass makes them)
                Spec { validate: inp.key_checks, ..spec },
                Grid::Direct(gx, count, gz),
                &[
                    ("logits", inp.logits),
                    ("tgt", inp.target),
                    ("P", pr),
                    ("LP", lp),
                    ("keys", keys),
                    ("vals", vals),
                    ("lw", lw),
                    ("status", inp.status),
                ],
            )?;
        }
        // (the hinge's gradient: d relu(1 - x (2g - 1)) / d x times the coefficient)
        let (fg_mul, bg_mul) = grad.map_or((1.0, 1.0), |g| (-g.coef, g.coef));
        let lp = rec.uniform(&LovParams { fg_mul, bg_mul, ..LovParams::new(len, segs, tiles, per_image, maxd as u32) });
        let seg_grid = tile_grid(tiles, segs, maxd as u32);
        // the CPU adapters' tile kernels: SCATTER_TILES_WG tiles per workgroup
        let groups = Grid::Direct(tiles.div_ceil(SCATTER_TILES_WG) as u32, segs as u32, 1);
        // 2. Lovász-Softmax: background past each segment's last foreground element has weight
        // zero and is not sorted (see threshold.wgsl); a CPU adapter's compaction drops it as it
        // reads (compact.wgsl), the GPU's after lovasz_drop marked it
        // (the CPU adapters' threshold and compaction read four elements per load where every
        // tile starts on a quad)
        let quads = len.is_multiple_of(4) && crate::gpu::quad_aligned(&[keys, vals]);
        let thr = if inp.softmax {
            let thr = rec.scratch((segs * 8) as u64, "lovasz thresholds")?;
            rec.clear(thr);
            if tiled {
                let k = if quads { &shaders::LOVASZ_THRESHOLD_TILES4 } else { &shaders::LOVASZ_THRESHOLD_TILES };
                rec.dispatch(
                    k,
                    Spec::default(),
                    groups,
                    &[("LP", lp), ("keys_in", keys), ("vals_in", vals), ("thr", thr)],
                )?;
            } else {
                let binds = [("LP", lp), ("keys", keys), ("vals", vals), ("thr", thr)];
                rec.dispatch(&shaders::LOVASZ_THRESHOLD, Spec::default(), seg_grid, &binds)?;
                rec.dispatch(&shaders::LOVASZ_DROP, Spec::default(), seg_grid, &binds)?;
            }
            thr
        } else {
            rec.scratch(16, "no thresholds")?
        };
        // 3. stable compaction of the elements to sort; the kept count of each segment lands in
        // segsum.x (and .w, the keys to sort), the labels of the others in .y (fg) and .z (bg)
        let (kc, vc) = if tiled {
            (rec.scratch(2 * total, "compacted items")?, rec.scratch(16, "unused payloads")?)
        } else {
            (rec.scratch(total, "compacted keys")?, rec.scratch(total, "compacted payloads")?)
        };
        // a CPU adapter: a thread per tile of LOCAL_TILES of the radix sort's tiles writes its
        // kept elements to its own front (the hinge computing its keys from the input), and the
        // sort's first pass reads them there (one walk instead of count, scan and scatter); a
        // segment the bitonic network sorts (at most BITONIC_MAX <= one such tile) is then dense
        let ctile = if tiled { local_tile(len) } else { SORT_TILE };
        let ctiles = len.div_ceil(ctile);
        let clp = if tiled {
            rec.uniform(&LovParams {
                sort_tile: ctile as u32,
                ..LovParams::new(len, segs, ctiles, per_image, maxd as u32)
            })
        } else {
            lp
        };
        let tilecnt = rec.scratch((segs * ctiles * 16) as u64, "compaction tile counts")?;
        let binds = [
            ("LP", clp),
            ("keys_in", keys),
            ("vals_in", vals),
            ("keys_out", kc),
            ("vals_out", vc),
            ("tilecnt", tilecnt),
            ("segsum", segsum),
            ("thr", thr),
            ("status", inp.status),
        ];
        // (a CPU adapter's segment sums: a thread per segment, without barriers)
        let seg_threads = Grid::Direct(segs.div_ceil(SCATTER_TILES_WG) as u32, 1, 1);
        let sparse = if tiled {
            let grid = Grid::Direct(ctiles.div_ceil(SCATTER_TILES_WG) as u32, segs as u32, 1);
            if direct_hinge {
                // (over quads where the segments, so the tiles, are whole quads; its checks, where
                // no statistics pass makes them and no key pass ran)
                let hinge_quads = len.is_multiple_of(4) && crate::gpu::quad_aligned(&[inp.logits, inp.target]);
                let k = if hinge_quads { &shaders::HINGE_LOCAL_TILES4 } else { &shaders::HINGE_LOCAL_TILES };
                let hinge_binds = [
                    ("logits", inp.logits),
                    ("tgt", inp.target),
                    ("P", pb),
                    ("LP", clp),
                    ("keys_out", kc),
                    ("vals_out", vc),
                    ("tilecnt", tilecnt),
                    ("status", inp.status),
                ];
                rec.dispatch(k, Spec { validate: inp.key_checks, ..Spec::default() }, grid, &hinge_binds)?;
            } else {
                let k = if quads { &shaders::COMPACT_LOCAL_TILES4 } else { &shaders::COMPACT_LOCAL_TILES };
                rec.dispatch(k, Spec::default(), grid, &binds)?;
            }
            rec.dispatch(&shaders::COMPACT_SUM_TILES, Spec::default(), seg_threads, &binds)?;
            (len > self.bitonic_upto.load(std::sync::atomic::Ordering::Relaxed))
                .then_some(Sparse { counts: tilecnt, tile: ctile })
        } else {
            rec.dispatch(&shaders::COMPACT_COUNT, Spec::default(), seg_grid, &binds)?;
            rec.dispatch(&shaders::COMPACT_SCAN, Spec::default(), Grid::Direct(segs as u32, 1, 1), &binds)?;
            rec.dispatch(&shaders::COMPACT_SCATTER, Spec::default(), seg_grid, &binds)?;
            None
        };
        if grad.is_some_and(|g| !g.accumulate) && inp.checked && inp.key_checks != 0 {
            self.record_unless_bad(rec, inp.status, None, lw)?;
        }
        // the passes over the compacted segments cover only the longest one's tiles
        // (three: a CPU adapter's tile kernels take their own, from byte 16, and its radix tile
        // kernels on long segments theirs, from byte 32)
        let args = rec.scratch(48, "indirect dispatch")?;
        let unused = rec.scratch(16, "unused")?;
        rec.dispatch(
            &shaders::COMPACT_ARGS,
            Spec::default(),
            Grid::Direct(1, 1, 1),
            &[
                ("LP", lp),
                ("keys_in", keys),
                ("vals_in", vals),
                ("keys_out", unused),
                ("vals_out", args),
                ("tilecnt", tilecnt),
                ("segsum", segsum),
                ("thr", thr),
                ("status", inp.status),
            ],
        )?;
        // 4. sort of the kept keys (the uncompacted keys are spent: they are the sort's scratch)
        let sort = SortBufs { a: (kc, vc), b: scratch, items: tiled };
        let algo = if sparse.is_some() { SortAlgo::Radix } else { SortAlgo::Auto };
        let (kc, vc) = self.record_sort(rec, &sort, segs, len, algo, Some((segsum, args)), sparse)?;
        // 5. segmented scan of the sorted labels, Jaccard weights, value of each segment
        let tilecnt2 = rec.scratch((segs * tiles * 8) as u64, "lovasz tile counts")?;
        let vpart = rec.scratch((segs * tiles * 4) as u64, "lovasz value partials")?;
        let binds = [
            ("LP", lp),
            ("keys", kc),
            ("vals", vc),
            ("tilecnt", tilecnt2),
            ("segsum", segsum),
            ("lw", lw),
            ("vpart", vpart),
        ];
        let per_seg = Grid::Direct(segs as u32, 1, 1);
        // the weights added to what the destination holds (HingeGrad::accumulate)
        let accum = grad.is_some_and(|g| g.accumulate);
        if tiled {
            // (four elements per load where every tile starts on a quad)
            let (count, weights) = match (len.is_multiple_of(4) && crate::gpu::quad_aligned(&[kc, vc]), accum) {
                (true, false) => (&shaders::LOVASZ_COUNT_TILES4, &shaders::LOVASZ_WEIGHTS_TILES4),
                (true, true) => (&shaders::LOVASZ_COUNT_TILES4, &shaders::LOVASZ_WEIGHTS_TILES4_ADD),
                (false, false) => (&shaders::LOVASZ_COUNT_TILES, &shaders::LOVASZ_WEIGHTS_TILES),
                (false, true) => (&shaders::LOVASZ_COUNT_TILES, &shaders::LOVASZ_WEIGHTS_TILES_ADD),
            };
            let tile_binds = [
                ("LP", lp),
                ("keys_in", kc),
                ("vals_in", vc),
                ("tilecnt", tilecnt2),
                ("segsum", segsum),
                ("lw", lw),
                ("vpart", vpart),
            ];
            let over = Grid::Indirect(args.sub(16, 12));
            rec.dispatch(count, Spec::default(), over, &tile_binds)?;
            rec.dispatch(&shaders::LOVASZ_SCAN_TILES, Spec::default(), seg_threads, &tile_binds)?;
            rec.dispatch(weights, Spec::default(), over, &tile_binds)?;
        } else {
            let over = Grid::Indirect(args.sub(0, 12));
            rec.dispatch(&shaders::LOVASZ_COUNT, spec, over, &binds)?;
            rec.dispatch(&shaders::LOVASZ_SCAN, spec, per_seg, &binds)?;
            rec.dispatch(&shaders::LOVASZ_WEIGHTS, Spec { accum, ..spec }, over, &binds)?;
        }
        rec.dispatch(&shaders::LOVASZ_VALUE, spec, per_seg, &binds)?;
        Ok(())
    }
}
