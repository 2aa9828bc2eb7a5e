//! Benchmark and test helpers that are not part of the library's API: the segmented sorts alone,
//! and the copy probe (the memory floor of a pass over the logits). Built with the `internals`
//! feature, which the command line's `bench` and `sortbench` and the sort tests enable.

use crate::error::Error;
use crate::gpu::context::Gpu;
use crate::gpu::lovasz::grid;
use crate::gpu::record::{Grid, Recording, Slice};
pub use crate::gpu::sort::SortAlgo;
use crate::gpu::sort::SortBufs;
use crate::gpu::Spec;
use crate::{shaders, Engine, Prepared};

/// A pair of the sort's buffers for `n` keys and payloads in the layout this adapter's sort takes
/// ([`SortBufs::items`]).
fn sort_pair(rec: &mut Recording, items: bool, n: usize) -> Result<(Slice, Slice), Error> {
    let bytes = (n * 4) as u64;
    Ok(if items {
        (rec.scratch(2 * bytes, "items")?, rec.scratch(16, "unused payloads")?)
    } else {
        (rec.scratch(bytes, "keys")?, rec.scratch(bytes, "payloads")?)
    })
}

/// `keys` with their indices as payloads, as the sort's first pair holds them: interleaved items,
/// or the keys then the payloads.
fn sort_input(items: bool, keys: &[u32]) -> Vec<u32> {
    let idx = 0..keys.len() as u32;
    if items {
        keys.iter().zip(idx).flat_map(|(&k, i)| [k, i]).collect()
    } else {
        keys.iter().copied().chain(idx).collect()
    }
}

impl Engine {
    /// Sorts consecutive segments of `segment_len` keys ascending, stably, on the device, and
    /// returns the sorted keys with each one's original index. The CPU engine sorts on the CPU.
    pub async fn sort_segments_with(
        &self,
        keys: &[u32],
        segment_len: usize,
        algo: SortAlgo,
    ) -> Result<(Vec<u32>, Vec<u32>), Error> {
        if segment_len == 0 || !keys.len().is_multiple_of(segment_len) || keys.is_empty() {
            return Err(Error::Input(format!("{} keys do not split into segments of {segment_len}", keys.len())));
        }
        if keys.len() >= u32::MAX as usize {
            return Err(Error::Input("at most 2^32 - 1 keys".into()));
        }
        let segs = keys.len() / segment_len;
        let Some(gpu) = self.gpu_ref() else {
            let mut out = Vec::with_capacity(keys.len());
            for (si, seg) in keys.chunks(segment_len).enumerate() {
                let mut idx: Vec<u32> = (0..segment_len as u32).map(|i| (si * segment_len) as u32 + i).collect();
                idx.sort_by_key(|&i| seg[i as usize - si * segment_len]);
                out.extend(idx);
            }
            return Ok((out.iter().map(|&i| keys[i as usize]).collect(), out));
        };
        let bytes = (keys.len() * 4) as u64;
        let mut rec = Recording::new(&gpu.limits);
        let items = gpu.sort_items(keys.len());
        let (a, b) = (sort_pair(&mut rec, items, keys.len())?, sort_pair(&mut rec, items, keys.len())?);
        let bufs = SortBufs { a, b, items };
        // upload through the constants, then copy into the sort's buffers
        let data = rec.data(&sort_input(items, keys));
        if items {
            rec.copy(data.sub(0, 2 * bytes), a.0.sub(0, 2 * bytes));
        } else {
            rec.copy(data.sub(0, bytes), a.0.sub(0, bytes));
            rec.copy(data.sub(bytes, bytes), a.1.sub(0, bytes));
        }
        let sorted = gpu.record_sort(&mut rec, &bufs, segs, segment_len, algo, None, None)?;
        // read back as uploaded: the items, or the keys then the payloads
        let rb = rec.readback(2 * bytes, "sorted")?;
        if items {
            rec.copy(sorted.0.sub(0, 2 * bytes), rb);
        } else {
            rec.copy(sorted.0.sub(0, bytes), rb.sub(0, bytes));
            rec.copy(sorted.1.sub(0, bytes), rb.sub(bytes, bytes));
        }
        let fut = gpu.execute(rec);
        gpu.note_wait();
        let out = bytemuck::pod_collect_to_vec::<u8, u32>(&fut.await?[0]);
        Ok(if items {
            (out.iter().step_by(2).copied().collect(), out.iter().skip(1).step_by(2).copied().collect())
        } else {
            (out[..keys.len()].to_vec(), out[keys.len()..].to_vec())
        })
    }

    /// [`Engine::sort_segments_with`] with the automatic choice.
    pub async fn sort_segments(&self, keys: &[u32], segment_len: usize) -> Result<(Vec<u32>, Vec<u32>), Error> {
        self.sort_segments_with(keys, segment_len, SortAlgo::Auto).await
    }

    /// Blocking [`Engine::sort_segments`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sort_segments_blocking(&self, keys: &[u32], segment_len: usize) -> Result<(Vec<u32>, Vec<u32>), Error> {
        self.block(self.sort_segments(keys, segment_len))
    }

    /// Blocking [`Engine::sort_segments_with`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sort_segments_with_blocking(
        &self,
        keys: &[u32],
        segment_len: usize,
        algo: SortAlgo,
    ) -> Result<(Vec<u32>, Vec<u32>), Error> {
        self.block(self.sort_segments_with(keys, segment_len, algo))
    }

    /// Times the device work of sorting `segs` segments of `segment_len` random keys with `algo`,
    /// data already on the device: milliseconds of each of `iters` runs (after one warm-up).
    /// Returns an empty list on the CPU engine.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn bench_sort(&self, segs: usize, segment_len: usize, algo: SortAlgo, iters: usize) -> Result<Vec<f64>, Error> {
        let Some(gpu) = self.gpu_ref() else {
            return Ok(Vec::new());
        };
        let n = segs * segment_len;
        let mut x = 0x2545_F491u32;
        let keys: Vec<u32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            })
            .collect();
        let mut out = Vec::new();
        let items = gpu.sort_items(n);
        let bytes = (n * 4) as u64;
        // the input in buffers of its own (the items, or the keys and the payloads), kept as
        // made; before each run, outside its timing, a copy of it into the buffers the run sorts
        // in place, so that every run sorts the same random keys (not the last run's sorted ones)
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let kept = gpu.buffer_init("sort input", bytemuck::cast_slice(&sort_input(items, &keys)), usage)?;
        // the sorted pair: the items, or the keys and the payloads in buffers of their own (two
        // writable bindings of one buffer are not allowed)
        let work_usage = usage | wgpu::BufferUsages::COPY_DST;
        let halves = if items { vec![2 * bytes] } else { vec![bytes, bytes] };
        let work: Vec<wgpu::Buffer> =
            halves.iter().map(|&b| gpu.buffer("sorted in place", b, work_usage)).collect::<Result<_, _>>()?;
        for i in 0..=iters {
            // (a submission of its own, waited for before the timing starts)
            let mut fill = Recording::new(&gpu.limits);
            let from = fill.external(&kept, 0, 2 * bytes);
            let mut at = 0;
            for (w, &b) in work.iter().zip(&halves) {
                let to = fill.external(w, 0, b);
                fill.copy(from.sub(at, b), to);
                at += b;
            }
            run_and_wait(gpu, fill)?;
            let t0 = std::time::Instant::now();
            let mut rec = Recording::new(&gpu.limits);
            let first = rec.external(&work[0], 0, halves[0]);
            let a = match work.get(1) {
                Some(p) => (first, rec.external(p, 0, bytes)),
                None => (first, rec.scratch(16, "unused payloads")?),
            };
            let b = sort_pair(&mut rec, items, n)?;
            gpu.record_sort(&mut rec, &SortBufs { a, b, items }, segs, segment_len, algo, None, None)?;
            run_and_wait(gpu, rec)?;
            if i > 0 {
                out.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(out)
    }

    /// Whether the statistics pass takes the wide sigmoid tiles of CPU adapters on images that
    /// fill one (the default there) or the narrow ones of GPUs (the default elsewhere): for tests of the GPU
    /// configuration on a CPU adapter, and for benchmarks. Evaluations already recorded keep
    /// the setting they were recorded with. A no-op on the CPU reference.
    pub fn set_wide_statistics(&self, wide: bool) {
        if let Some(gpu) = self.gpu_ref() {
            gpu.wide_stats.store(wide, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the softmax statistics of a CPU adapter's wide tiles take the kernel with subgroup
    /// operations where the device has them (the default) or the portable one: for tests of both
    /// on lavapipe, and for benchmarks. A no-op elsewhere.
    pub fn set_subgroups(&self, on: bool) {
        if let Some(gpu) = self.gpu_ref() {
            gpu.use_subgroups.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Where a CPU adapter's softmax statistics and gradient passes keep each pixel's classes in
    /// registers (at most 32 classes): `None` on inputs of at least 2^20 elements (the default;
    /// smaller ones would pay more for building the longer kernels than their walks save),
    /// `Some(true)` on every input (tests of the register walks on small shapes), `Some(false)`
    /// never (benchmarks of the walks in memory). Only lavapipe takes them: through OpenGL a test
    /// of them had not finished after ten minutes. A no-op elsewhere.
    pub fn set_class_registers(&self, on: Option<bool>) {
        use crate::gpu::ClassRegisters as R;
        if let Some(gpu) = self.gpu_ref() {
            let mode = match on {
                None => R::Large,
                Some(true) => R::Always,
                Some(false) => R::Never,
            };
            gpu.class_registers.store(mode as u8, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The subgroup size of the kernel with subgroup operations that the softmax statistics of a
    /// CPU adapter's wide tiles take ([`Engine::set_subgroups`]), None where there is none.
    pub fn statistics_subgroup(&self) -> Option<u32> {
        self.gpu_ref().and_then(|gpu| gpu.subgroup)
    }

    /// The longest segment the Lovász sort gives to the bitonic network (at most 2048; the
    /// adapter's own choice: [`Engine::bitonic_crossover`]): for tests of the network's
    /// variable-length segments on a CPU adapter, whose own crossover is 16, and for benchmarks.
    /// A no-op on the CPU reference.
    pub fn set_bitonic_crossover(&self, len: usize) {
        if let Some(gpu) = self.gpu_ref() {
            gpu.bitonic_upto.store(len.min(shaders::BITONIC_MAX), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the Lovász passes take the CPU adapters' kernels (the default there): a thread per
    /// tile, walked in order, keys and payloads as interleaved items, the hinge's keys computed in
    /// its compaction; or the GPU's (elsewhere): a workgroup per tile after a local sort, two
    /// arrays. For tests of both on one adapter, and for benchmarks; evaluations already recorded
    /// keep the setting they were recorded with. A no-op on the CPU reference.
    pub fn set_tile_scatter(&self, on: bool) {
        if let Some(gpu) = self.gpu_ref() {
            gpu.tile_scatter.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Copies the prepared logits once on the device and waits: the memory-traffic floor of an
    /// elementwise pass, for benchmarks to compare against. `false` when nothing ran: on the CPU
    /// reference, or for an input past the binding limit (kept on the host, evaluated in pieces).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_probe_blocking(&self, prep: &Prepared<'_>) -> Result<bool, Error> {
        self.check_prepared(prep)?;
        let (Some(gpu), Some((logits, _))) = (self.gpu_ref(), prep.buffers()) else {
            return Ok(false);
        };
        let len = prep.input().logits().len();
        let bytes = (len * 4) as u64;
        let mut rec = Recording::new(&gpu.limits);
        let src = rec.external(logits, 0, bytes);
        let out = rec.scratch(bytes, "copy")?;
        // over vec4 where the length allows: the faster of the two copies is the floor
        let (kernel, units) = if len.is_multiple_of(4) { (&shaders::COPY4, len / 4) } else { (&shaders::COPY, len) };
        let (gx, gy) = grid(&gpu.limits, units);
        rec.dispatch(kernel, Spec::default(), Grid::Direct(gx, gy, 1), &[("logits", src), ("out", out)])?;
        run_and_wait(gpu, rec)?;
        Ok(true)
    }

    /// Waits until the device has finished all submitted work (benchmarks of device-resident
    /// evaluations: many submissions, one wait).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_idle(&self) -> Result<(), Error> {
        if let Some(gpu) = self.gpu_ref() {
            gpu.note_wait();
            gpu.wait_done()?;
        }
        Ok(())
    }

    /// Creates a storage buffer of `bytes` as the engine allocates its scratch (`Gpu::buffer`), or
    /// with `init` one holding `bytes` zeros as it uploads a host input (`Gpu::buffer_init`), and
    /// drops it: a size the device refuses comes back as an error rather than reaching the
    /// device's uncaptured-error handler or panicking. The CPU engine allocates nothing.
    pub fn allocation_probe(&self, bytes: u64, init: bool) -> Result<(), Error> {
        let Some(gpu) = self.gpu_ref() else { return Ok(()) };
        let usage = wgpu::BufferUsages::STORAGE;
        if init {
            let zeros = vec![0u8; usize::try_from(bytes).map_err(|_| Error::Input("too many bytes".into()))?];
            return gpu.buffer_init("segloss allocation probe", &zeros, usage).map(drop);
        }
        gpu.buffer("segloss allocation probe", bytes, usage).map(drop)
    }
}

/// Submits `rec`, waits until the device has run it, and surfaces its device errors: the calling
/// thread polls, as the blocking evaluations do ([`crate::gpu::poll::drive`]), so that the copy
/// probe and the evaluations it is held against wait the same way.
#[cfg(not(target_arch = "wasm32"))]
fn run_and_wait(gpu: &Gpu, rec: Recording) -> Result<(), Error> {
    crate::gpu::poll::drive(&gpu.poller, async {
        let f = gpu.execute(rec);
        gpu.work_done().await?;
        f.await.map(drop)
    })
}
