//! The segmented sorts behind the Lovász losses: a stable LSD radix sort (any length) and a
//! workgroup bitonic network (segments up to [`BITONIC_MAX`] keys), recorded into a recording.

use crate::error::Error;
use crate::gpu::context::Gpu;
use crate::gpu::record::{Grid, Recording, Slice};
use crate::gpu::{Spec, SCATTER_TILES_WG, SORT_TILE};
use crate::shaders::{self, BITONIC_MAX};

/// Which sort to use.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortAlgo {
    /// Bitonic for segments up to the adapter's crossover, radix beyond.
    Auto,
    /// Segmented LSD radix sort (any length).
    Radix,
    /// Workgroup bitonic sort (segments of at most 2048; radix beyond).
    Bitonic,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct SortParams {
    len: u32,
    segs: u32,
    tiles: u32,
    shift: u32,
    /// 1: segment `s` sorts only its first `seglen[s].w` keys (see `radix.wgsl`); 2: tile `t` of
    /// segment `s` holds `seglen[s * tiles + t].w` keys from its start (a first pass over
    /// [`Sparse`] tiles)
    varlen: u32,
    /// the radix tile kernels' digit width
    bits: u32,
    /// the radix tile kernels' keys per tile
    tile: u32,
    /// the workgroups in x of the workgroup kernels' folded tile grid (`lovasz::tile_grid`)
    fold: u32,
}

/// Sorted keys (and payloads) live in `a`; `b` is scratch of the same size. Each pair is
/// (keys, payloads), two arrays, the layout of the GPU kernels; with `items`, the layout of a CPU
/// adapter's tile kernels, its first slice holds interleaved (key, payload) items (8 bytes each)
/// and its second is a placeholder bound as the payloads (16 bytes, not read nor written; the
/// two pairs' placeholders distinct, as WebGPU forbids a buffer written in one binding and read in
/// another of a dispatch).
pub(crate) struct SortBufs {
    pub a: (Slice, Slice),
    pub b: (Slice, Slice),
    pub items: bool,
}

/// Keys that fill only the front of each tile of the radix sort's first pass (the local
/// compactions of CPU adapters, `hinge.wgsl`, `compact.wgsl`): `counts[s * tiles + t].w` keys
/// from the start of tile `t` of segment `s`, tiles of `tile` keys (a multiple of the radix
/// tile kernels' tile, [`crate::gpu::radix_layout`]; `tiles` = the segment's length over it).
/// The first pass's scatter leaves them dense, and the passes after it sort the first
/// `lengths[s].w` keys of each segment over the tiles of `args` (as `varlen`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sparse {
    pub counts: Slice,
    pub tile: usize,
}

impl Gpu {
    /// Whether a sort of `n` keys on this adapter takes the CPU adapters' tile kernels, so its
    /// buffers are interleaved items ([`SortBufs::items`]): where the adapter takes them, and the
    /// items (8 bytes each, twice the keys) fit one binding. Larger sorts take the GPU kernels over
    /// two arrays, as the inputs split into pieces are sized by the logits' bytes.
    pub(crate) fn sort_items(&self, n: usize) -> bool {
        let max = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        self.tile_scatter.load(std::sync::atomic::Ordering::Relaxed) && (n as u64).saturating_mul(8) <= max
    }
}

impl Gpu {
    /// Records the sort of `a` (keys, payloads) in `segs` segments of `len`: the bitonic network
    /// for short segments, else the passes of the radix sort using `b` as scratch. Returns the
    /// pair that holds the sorted result: `a`, or `b` after an odd number of radix passes (a CPU
    /// adapter's three on long segments, [`crate::gpu::radix_layout`]). With `varlen` =
    /// (lengths, args), segment `s` sorts only its first `lengths[s].w` keys (a `vec4<u32>` each):
    /// the radix sort is dispatched over the tiles `args` holds (`compact.wgsl`: compact_args)
    /// and leaves the rest of the segment as it was, the bitonic network overwrites it with
    /// padding (key NONE). Nothing after the sorted keys may be read as a key. With `sparse`
    /// (which needs `varlen`, the tile kernels and a radix sort), the first pass reads the
    /// [`Sparse`] tiles.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_sort(
        &self,
        rec: &mut Recording,
        bufs: &SortBufs,
        segs: usize,
        len: usize,
        algo: SortAlgo,
        varlen: Option<(Slice, Slice)>,
        sparse: Option<Sparse>,
    ) -> Result<(Slice, Slice), Error> {
        let bitonic = match algo {
            SortAlgo::Auto => len <= self.bitonic_upto.load(std::sync::atomic::Ordering::Relaxed),
            SortAlgo::Bitonic => true,
            SortAlgo::Radix => false,
        };
        if let Some(sp) = sparse {
            let whole_tiles = sp.tile > 0 && sp.tile.is_multiple_of(crate::gpu::radix_layout(len).1);
            if bitonic || varlen.is_none() || !bufs.items || !whole_tiles {
                return Err(Error::Gpu("internal: a sort over sparse tiles takes the radix tile kernels".into()));
            }
        }
        let tiled = bufs.items;
        // a CPU adapter's tile kernels: digits of `bits` over tiles of `tile` keys, a thread each
        let (bits, tile, passes) = if tiled { crate::gpu::radix_layout(len) } else { (8, SORT_TILE, 4) };
        let wide = tile == crate::gpu::RADIX_TILE_WIDE;
        let tiles = len.div_ceil(tile);
        let digits = 1usize << bits;
        let varlen_flag = u32::from(varlen.is_some());
        // a CPU adapter's tile kernels take SCATTER_TILES_WG tiles per workgroup
        let (seglen, tile_grid, group_grid) = match varlen {
            Some((seglen, args)) => {
                (seglen, Grid::Indirect(args.sub(0, 12)), Grid::Indirect(args.sub(if wide { 32 } else { 16 }, 12)))
            }
            // without per-segment lengths the binding is not read, but must hold one vec4
            None => (
                rec.scratch(16, "sort lengths")?,
                crate::gpu::lovasz::tile_grid(tiles, segs, self.limits.max_compute_workgroups_per_dimension),
                Grid::Direct(tiles.div_ceil(SCATTER_TILES_WG) as u32, segs as u32, 1),
            ),
        };
        // a CPU adapter's count reads four keys per load where every tile starts on a quad
        let quads = len.is_multiple_of(4) && crate::gpu::quad_aligned(&[bufs.a.0, bufs.a.1, bufs.b.0, bufs.b.1]);
        // the steps of each pass: count, scan, scatter (whether over the tiles)
        let steps: Vec<(&shaders::Kernel, Grid, bool)> = if tiled {
            let count = if quads { &shaders::RADIX_COUNT_TILES4 } else { &shaders::RADIX_COUNT_TILES };
            // (the scatter scans the digit totals itself)
            let scan_grid = Grid::Direct(segs as u32, (digits / SCATTER_TILES_WG) as u32, 1);
            vec![
                (count, group_grid, true),
                (&shaders::RADIX_SCAN_TILES, scan_grid, false),
                (&shaders::RADIX_SCATTER_TILES, group_grid, true),
            ]
        } else {
            vec![
                (&shaders::RADIX_COUNT, tile_grid, true),
                (&shaders::RADIX_SCAN, Grid::Direct(segs as u32, 16, 1), false),
                (&shaders::RADIX_DIGITS, Grid::Direct(segs as u32, 1, 1), false),
                (&shaders::RADIX_SCATTER, tile_grid, true),
            ]
        };
        let (a, b) = (bufs.a, bufs.b);
        let params = |tiles: usize, tile: usize, shift: u32, varlen: u32| SortParams {
            len: len as u32,
            segs: segs as u32,
            tiles: tiles as u32,
            shift,
            varlen,
            bits,
            tile: tile as u32,
            fold: self.limits.max_compute_workgroups_per_dimension,
        };
        if bitonic && len <= BITONIC_MAX {
            // one workgroup per segment, sorting `a` in place (`b` is bound but unused)
            let ub = rec.uniform(&params(1, tile, 0, varlen_flag));
            // unused read-write bindings need distinct buffers (WebGPU forbids writable aliases)
            let (d0, d1) = (rec.scratch(16, "unused")?, rec.scratch(16, "unused")?);
            rec.dispatch(
                if tiled { &shaders::BITONIC_SORT_ITEMS } else { &shaders::BITONIC_SORT },
                Spec::default(),
                Grid::Direct(segs as u32, 1, 1),
                &[
                    ("SP", ub),
                    ("keys_in", b.0),
                    ("vals_in", b.1),
                    ("counts", d0),
                    ("totals", d1),
                    ("keys_out", a.0),
                    ("vals_out", a.1),
                    ("seglen", seglen),
                ],
            )?;
            return Ok(a);
        }
        let counts = rec.scratch((segs * digits * tiles * 4) as u64, "radix tile counts")?;
        let totals = rec.scratch((segs * digits * 4) as u64, "radix digit totals")?;
        for pass in 0..passes {
            let (src, dst) = if pass % 2 == 0 { (a, b) } else { (b, a) };
            // (the first pass over sparse tiles: every tile of every segment, each its own count)
            let first_sparse = sparse.filter(|_| pass == 0);
            let ub = rec.uniform(&match first_sparse {
                Some(sp) => params(len.div_ceil(sp.tile), sp.tile, bits * pass, 2),
                None => params(tiles, tile, bits * pass, varlen_flag),
            });
            let binds = [
                ("SP", ub),
                ("keys_in", src.0),
                ("vals_in", src.1),
                ("counts", counts),
                ("totals", totals),
                ("keys_out", dst.0),
                ("vals_out", dst.1),
                ("seglen", first_sparse.map_or(seglen, |s| s.counts)),
            ];
            let all_tiles = first_sparse
                .map(|sp| Grid::Direct(len.div_ceil(sp.tile).div_ceil(SCATTER_TILES_WG) as u32, segs as u32, 1));
            for &(k, grid, over_tiles) in &steps {
                let grid = match all_tiles {
                    Some(all) if over_tiles => all,
                    _ => grid,
                };
                rec.dispatch(k, Spec::default(), grid, &binds)?;
            }
        }
        Ok(if passes % 2 == 0 { a } else { b })
    }
}
