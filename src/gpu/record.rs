//! Record, then execute.
//!
//! The functions that build an evaluation record its passes into a [`Recording`]: buffers by
//! handle (scratch of a size, host-readable staging, the caller's buffers, constants), compute
//! dispatches by kernel name, direct or indirect, clears and copies. Recording touches no
//! device; it checks every buffer and dispatch against the device's limits and fails with a
//! typed [`Error::Limit`] before anything runs. [`Gpu::execute`] turns one or many recordings
//! into one command encoder and one submission; the scratch buffers return to the pool when that
//! submission has completed, and staging buffers when their contents have been read.

use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::gpu::context::Gpu;
use crate::gpu::profile::{self, Timed};
use crate::gpu::{align, Spec, ALIGN};
use crate::shaders::{Access, Kernel};

/// A buffer of a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BufId(usize);

/// A byte range of a recorded buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slice {
    pub id: BufId,
    pub offset: u64,
    pub size: u64,
}

impl Slice {
    /// `len` bytes from `offset` bytes into this slice.
    pub fn sub(&self, offset: u64, len: u64) -> Slice {
        Slice { id: self.id, offset: self.offset + offset, size: len }
    }
}

enum BufDesc {
    /// Storage scratch from the pool; contents undefined until written.
    Scratch { size: u64 },
    /// Host-readable staging buffer from the pool.
    Readback { size: u64 },
    /// A buffer the caller owns.
    External(wgpu::Buffer),
    /// The recording's constants (uniforms, small storage arrays), written before the submission.
    Constants,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    Direct(u32, u32, u32),
    /// Workgroup counts the device wrote (three u32).
    Indirect(Slice),
}

enum Cmd {
    Dispatch { kernel: &'static Kernel, spec: Spec, binds: Vec<Slice>, grid: Grid },
    Clear(Slice),
    Copy { src: Slice, dst: Slice },
}

/// A point of a recording to roll back to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    bufs: usize,
    cmds: usize,
    constants: usize,
}

/// The passes of one or more evaluations, not yet on the device.
pub(crate) struct Recording {
    bufs: Vec<BufDesc>,
    cmds: Vec<Cmd>,
    constants: Vec<u8>,
    max_binding: u64,
    max_buffer: u64,
    max_groups: u32,
}

/// How the staging buffers of one recording come back, in the order they were recorded.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type ReadFuture = Pin<Box<dyn Future<Output = Result<Vec<Vec<u8>>, Error>> + Send>>;
/// In the browser nothing is `Send`.
#[cfg(target_arch = "wasm32")]
pub(crate) type ReadFuture = Pin<Box<dyn Future<Output = Result<Vec<Vec<u8>>, Error>>>>;

impl Recording {
    pub fn new(limits: &wgpu::Limits) -> Recording {
        Recording {
            bufs: vec![BufDesc::Constants],
            cmds: Vec::new(),
            constants: Vec::new(),
            max_binding: limits.max_storage_buffer_binding_size.min(limits.max_buffer_size),
            max_buffer: limits.max_buffer_size,
            max_groups: limits.max_compute_workgroups_per_dimension,
        }
    }

    fn check(&self, what: &str, bytes: u64, max: u64) -> Result<(), Error> {
        if bytes > max {
            return Err(Error::Limit { what: what.to_string(), needed: bytes, max });
        }
        Ok(())
    }

    /// A storage buffer of `bytes` (contents undefined) that kernels bind whole.
    pub fn scratch(&mut self, bytes: u64, what: &str) -> Result<Slice, Error> {
        let size = align(bytes.max(16));
        self.check(what, size, self.max_binding)?;
        self.bufs.push(BufDesc::Scratch { size });
        Ok(Slice { id: BufId(self.bufs.len() - 1), offset: 0, size })
    }

    /// A host-readable buffer of `bytes` for [`Gpu::execute`] to return.
    pub fn readback(&mut self, bytes: u64, what: &str) -> Result<Slice, Error> {
        let size = bytes.max(4).next_multiple_of(4);
        self.check(what, size, self.max_buffer)?;
        self.bufs.push(BufDesc::Readback { size });
        Ok(Slice { id: BufId(self.bufs.len() - 1), offset: 0, size })
    }

    /// Staging buffers recorded so far: the index the next one will have in [`Gpu::execute`]'s
    /// result.
    pub fn readbacks(&self) -> usize {
        self.bufs.iter().filter(|b| matches!(b, BufDesc::Readback { .. })).count()
    }

    /// Where the recording stands, for [`Recording::rollback`].
    pub fn mark(&self) -> Mark {
        Mark { bufs: self.bufs.len(), cmds: self.cmds.len(), constants: self.constants.len() }
    }

    /// Forgets everything recorded after `m` (an evaluation that failed half way through its
    /// recording leaves nothing behind).
    pub fn rollback(&mut self, m: Mark) {
        self.bufs.truncate(m.bufs);
        self.cmds.truncate(m.cmds);
        self.constants.truncate(m.constants);
    }

    /// A slice of a caller's buffer.
    pub fn external(&mut self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Slice {
        self.bufs.push(BufDesc::External(buffer.clone()));
        Slice { id: BufId(self.bufs.len() - 1), offset, size }
    }

    /// Whether two buffers of this recording are one: the same id, or the same caller's buffer
    /// bound twice.
    pub fn same_buffer(&self, a: BufId, b: BufId) -> bool {
        a == b || matches!((&self.bufs[a.0], &self.bufs[b.0]), (BufDesc::External(x), BufDesc::External(y)) if x == y)
    }

    /// Constant data bound as a uniform or read-only storage array (at least 32 bytes, so that
    /// an empty array still binds one element).
    pub fn data<T: bytemuck::Pod>(&mut self, v: &[T]) -> Slice {
        let bytes: &[u8] = bytemuck::cast_slice(v);
        let offset = align(self.constants.len() as u64);
        self.constants.resize(offset as usize, 0);
        self.constants.extend_from_slice(bytes);
        let size = (bytes.len() as u64).max(32);
        self.constants.resize((offset + size) as usize, 0);
        Slice { id: BufId(0), offset, size }
    }

    pub fn uniform<T: bytemuck::Pod>(&mut self, v: &T) -> Slice {
        self.data(std::slice::from_ref(v))
    }

    /// A dispatch of `kernel`; `binds` name every binding of the kernel in its declared order.
    pub fn dispatch(
        &mut self,
        kernel: &'static Kernel,
        spec: Spec,
        grid: Grid,
        binds: &[(&str, Slice)],
    ) -> Result<(), Error> {
        let names: Vec<&str> = binds.iter().map(|b| b.0).collect();
        let declared: Vec<&str> = kernel.bindings.iter().map(|b| b.name).collect();
        if names != declared {
            return Err(Error::Gpu(format!(
                "internal: kernel {} binds {declared:?}, the engine gave {names:?}",
                kernel.name
            )));
        }
        for (b, (name, s)) in kernel.bindings.iter().zip(binds) {
            if b.access != Access::Uniform {
                self.check(&format!("{} binding '{name}'", kernel.name), s.size, self.max_binding)?;
            }
        }
        if let Grid::Direct(x, y, z) = grid {
            let m = x.max(y).max(z);
            if m > self.max_groups {
                return Err(Error::Limit {
                    what: format!("{} workgroups per dimension", kernel.name),
                    needed: u64::from(m),
                    max: u64::from(self.max_groups),
                });
            }
        }
        self.cmds.push(Cmd::Dispatch { kernel, spec, binds: binds.iter().map(|b| b.1).collect(), grid });
        Ok(())
    }

    /// Fills the slice with zeros.
    pub fn clear(&mut self, s: Slice) {
        self.cmds.push(Cmd::Clear(s));
    }

    /// Copies `src` into `dst` (same size).
    pub fn copy(&mut self, src: Slice, dst: Slice) {
        self.cmds.push(Cmd::Copy { src, dst });
    }
}

impl Gpu {
    /// Encodes the recording into one command encoder, submits it, and returns a future of its
    /// staging buffers' contents. Device errors of the submission (validation, out of memory),
    /// and a buffer the device refused to allocate, come back through that future.
    pub(crate) fn execute(&self, rec: Recording) -> ReadFuture {
        // (OpenGL: one thread at a time, from the first buffer through the submission)
        let _one = self.poller.serial().hold();
        // nothing is submitted to a device known to be lost (its work would not run, or run
        // where nothing waits for it)
        if let Some(why) = self.poller.lost().reason() {
            return Box::pin(async move { Err(Error::Gpu(why)) });
        }
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::INDIRECT;
        let constants_usage = wgpu::BufferUsages::UNIFORM
            | wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let read_usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        // every buffer first, in scopes of its own: where the device refuses one, nothing is
        // submitted and no buffer of this call goes back to the pool (a refused buffer is
        // invalid, and would fail every later evaluation that took it from there)
        let mut scratch = Vec::new();
        let mut reads = Vec::new();
        let allocated = self.allocating(|| {
            rec.bufs
                .iter()
                .map(|d| match d {
                    BufDesc::Scratch { size } => {
                        let b = self.pool.take(&self.device, *size, storage, "segloss scratch");
                        scratch.push(b.clone());
                        b
                    }
                    BufDesc::Readback { size } => {
                        let b = self.pool.take(&self.device, *size, read_usage, "segloss readback");
                        reads.push(b.clone());
                        b
                    }
                    BufDesc::External(b) => b.clone(),
                    BufDesc::Constants => {
                        // powers of two, so that evaluations of similar size reuse one buffer
                        let size = (rec.constants.len() as u64).max(ALIGN).next_power_of_two();
                        let b = self.pool.take(&self.device, size, constants_usage, "segloss constants");
                        self.queue.write_buffer(&b, 0, &rec.constants);
                        scratch.push(b.clone());
                        b
                    }
                })
                .collect::<Vec<_>>()
        });
        let bufs = match allocated {
            Ok(bufs) => bufs,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        // the pipelines too, inside the submission's scopes (in the browser, where a pipeline's
        // own scopes would settle too late, its refusal is the submission's error): one the
        // device refuses here is an error, and nothing is submitted
        let pipelines = rec
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::Dispatch { kernel, spec, .. } => Some(self.pipeline(kernel, *spec)),
                _ => None,
            })
            .collect::<Result<Vec<_>, Error>>();
        let pipelines = match pipelines {
            Ok(p) => p,
            Err(e) => {
                let _ = (internal.pop(), oom.pop(), validation.pop());
                return Box::pin(async move { Err(e) });
            }
        };
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("segloss") });
        let mut timer = self.timer();
        self.encode(&mut enc, &rec, &bufs, &pipelines, &mut timer);
        let timestamps = timer.and_then(|t| t.resolve(self, &mut enc));
        self.queue.submit([enc.finish()]);
        self.note_submission();
        if let Some(read) = timestamps {
            read();
        }
        // native: back to the pool when the submission has completed; in the browser (where
        // buffers are not Send) when the staging buffers have been read, which also means the
        // submission completed, or not at all
        #[cfg(not(target_arch = "wasm32"))]
        {
            let pool = self.pool.clone();
            self.queue.on_submitted_work_done(move || pool.give(scratch));
        }
        let mut rxs = Vec::new();
        for b in &reads {
            let (tx, rx) = futures::channel::oneshot::channel();
            b.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            rxs.push(rx);
        }
        // (popped after the reads are mapped, which the scopes then cover too)
        let (internal, oom, validation) = (internal.pop(), oom.pop(), validation.pop());
        let pool = self.pool.clone();
        let serial = self.poller.serial().clone();
        // (an error, or the future dropped, drops them: under the lock)
        let reads = self.held(reads);
        #[cfg(target_arch = "wasm32")]
        let spent = (!reads.is_empty()).then_some(scratch);
        let fut = async move {
            if let Some(e) = oom.await {
                return Err(Error::Gpu(format!("out of device memory: {e}")));
            }
            if let Some(e) = validation.await {
                return Err(Error::Gpu(e.to_string()));
            }
            if let Some(e) = internal.await {
                return Err(Error::Gpu(format!("the device failed: {e}")));
            }
            let mut data = Vec::with_capacity(reads.len());
            for (b, rx) in reads.iter().zip(rxs) {
                rx.await
                    .map_err(|_| Error::Gpu("the device dropped a readback".into()))?
                    .map_err(|e| Error::Gpu(format!("reading back a buffer failed: {e}")))?;
                let _one = serial.hold();
                {
                    let view =
                        b.get_mapped_range(..).map_err(|e| Error::Gpu(format!("mapping a buffer failed: {e:?}")))?;
                    data.push(view.to_vec());
                }
                b.unmap();
            }
            pool.give(reads.into_inner());
            #[cfg(target_arch = "wasm32")]
            if let Some(spent) = spent {
                pool.give(spent);
            }
            Ok(data)
        };
        self.poller.kick();
        // (wgpu runs no callback of a lost device: the loss ends the wait)
        let guarded = self.poller.lost().clone().guard(fut);
        Box::pin(async move { guarded.await? })
    }

    /// The timestamp queries of a submission, when a profile is armed and the device has them.
    fn timer(&self) -> Option<Timer> {
        let sink = profile::armed()?;
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("segloss profile"),
            ty: wgpu::QueryType::Timestamp,
            count: (2 * profile::MAX_TIMED) as u32,
        });
        Some(Timer { set, timed: Vec::new(), sink })
    }

    fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        rec: &Recording,
        bufs: &[wgpu::Buffer],
        pipelines: &[wgpu::ComputePipeline],
        timer: &mut Option<Timer>,
    ) {
        let mut pipelines = pipelines.iter();
        let buf = |s: &Slice| &bufs[s.id.0];
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        for cmd in &rec.cmds {
            match cmd {
                Cmd::Dispatch { kernel, spec: _, binds, grid } => {
                    let state = self.kernel(kernel);
                    let entries: Vec<wgpu::BindGroupEntry> = binds
                        .iter()
                        .enumerate()
                        .map(|(i, s)| wgpu::BindGroupEntry {
                            binding: i as u32,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: buf(s),
                                offset: s.offset,
                                size: std::num::NonZeroU64::new(s.size),
                            }),
                        })
                        .collect();
                    let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(kernel.name),
                        layout: &state.bind_layout,
                        entries: &entries,
                    });
                    // (one per dispatch, in order: Gpu::execute built them)
                    let Some(pipeline) = pipelines.next() else { return };
                    let timed = timer.as_mut().filter(|t| t.timed.len() < profile::MAX_TIMED);
                    let timestamp_writes = timed.map(|t| {
                        // a pass of its own, timed from its start to its end
                        pass = None;
                        let i = 2 * t.timed.len() as u32;
                        t.timed.push(Timed {
                            kernel: kernel.entry,
                            workgroups: match grid {
                                Grid::Direct(x, y, z) => Some([*x, *y, *z]),
                                Grid::Indirect(_) => None,
                            },
                        });
                        wgpu::ComputePassTimestampWrites {
                            query_set: &t.set,
                            beginning_of_pass_write_index: Some(i),
                            end_of_pass_write_index: Some(i + 1),
                        }
                    });
                    let own_pass = timestamp_writes.is_some();
                    let p = pass.get_or_insert_with(|| {
                        enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("segloss"),
                            timestamp_writes,
                        })
                        .forget_lifetime()
                    });
                    p.set_pipeline(pipeline);
                    p.set_bind_group(0, &bg, &[]);
                    match grid {
                        Grid::Direct(x, y, z) => p.dispatch_workgroups(*x, *y, *z),
                        Grid::Indirect(s) => p.dispatch_workgroups_indirect(buf(s), s.offset),
                    }
                    if own_pass {
                        pass = None;
                    }
                }
                Cmd::Clear(s) => {
                    pass = None;
                    enc.clear_buffer(buf(s), s.offset, Some(s.size));
                }
                Cmd::Copy { src, dst } => {
                    pass = None;
                    enc.copy_buffer_to_buffer(buf(src), src.offset, buf(dst), dst.offset, src.size.min(dst.size));
                }
            }
        }
        drop(pass);
    }
}

/// The timestamp queries of one profiled submission.
pub(crate) struct Timer {
    set: wgpu::QuerySet,
    timed: Vec<Timed>,
    sink: profile::Sink,
}

impl Timer {
    /// Resolves the queries at the end of `enc` into a host-readable buffer, and returns what maps
    /// it once the submission is made: its callback appends the kernel times to the sink.
    fn resolve(self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) -> Option<impl FnOnce()> {
        let n = 2 * self.timed.len() as u64;
        if n == 0 {
            return None;
        }
        let make = |usage, label| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: n * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolved = make(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, "segloss timestamps");
        let read = make(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, "segloss timestamps read");
        enc.resolve_query_set(&self.set, 0..n as u32, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &read, 0, n * 8);
        let period = gpu.queue.get_timestamp_period();
        Some(move || {
            let b = read.clone();
            let Timer { timed, sink, .. } = self;
            read.map_async(wgpu::MapMode::Read, .., move |r| {
                if r.is_err() {
                    return;
                }
                let ticks: Vec<u64> = match b.get_mapped_range(..) {
                    Ok(view) => {
                        view.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
                    }
                    Err(_) => return,
                };
                b.unmap();
                if let Ok(mut s) = sink.lock() {
                    s.extend(profile::decode(&ticks, &timed, period));
                }
            });
        })
    }
}
