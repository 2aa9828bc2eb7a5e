//! Adapter choice, the device (the engine's own or the caller's), and the pipelines of every
//! kernel by name, each specialization built once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::gpu::poll::{Held, Poller};
use crate::gpu::pool::Pool;
use crate::gpu::Spec;
use crate::shaders::{Access, Kernel, BITONIC_MAX, KERNELS};

/// What the engine runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DeviceInfo {
    /// Adapter name (or `CPU reference`).
    pub name: String,
    /// `vulkan`, `gl`, `metal`, `dx12`, `webgpu`, or `cpu` for the f64 CPU reference.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu`, `Other`.
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub device_type: String,
    /// Driver name and version, when known.
    pub driver: String,
    /// Why the engine fell back to the CPU reference, if it did.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub fallback_reason: Option<String>,
}

impl DeviceInfo {
    pub(crate) fn of(info: &wgpu::AdapterInfo) -> DeviceInfo {
        DeviceInfo {
            name: info.name.clone(),
            backend: backend_name(info.backend).to_string(),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            fallback_reason: None,
        }
    }
}

/// The lower-case name of a wgpu backend as `SEGLOSS_BACKEND` spells it.
pub fn backend_name(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

/// How adapters are chosen. [`EngineOptions::from_env`] reads `SEGLOSS_BACKEND` and `SEGLOSS_ADAPTER`.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Restrict to one backend: `vulkan`, `gl`, `metal`, `dx12` or `webgpu`.
    pub backend: Option<String>,
    /// Pick the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// Fall back to the CPU reference when no adapter is found (default for [`crate::Engine::new`]).
    pub allow_cpu_fallback: bool,
    /// Plan with a storage binding limit of at most this many bytes (`SEGLOSS_MAX_BINDING_BYTES`):
    /// host inputs larger than the limit are evaluated in pieces, as those past the device's own
    /// limit are (tests exercise the pieces on small inputs with it).
    pub max_binding_bytes: Option<u64>,
}

impl EngineOptions {
    /// Options from `SEGLOSS_BACKEND`, `SEGLOSS_ADAPTER` and `SEGLOSS_MAX_BINDING_BYTES`, with
    /// CPU fallback allowed. A `SEGLOSS_MAX_BINDING_BYTES` that is not a whole number of bytes
    /// is left out here; [`EngineOptions::try_from_env`], which [`crate::Engine::new`] uses,
    /// refuses it.
    pub fn from_env() -> EngineOptions {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        EngineOptions {
            backend: get("SEGLOSS_BACKEND"),
            adapter: get("SEGLOSS_ADAPTER"),
            allow_cpu_fallback: true,
            max_binding_bytes: get("SEGLOSS_MAX_BINDING_BYTES").and_then(|v| v.trim().parse().ok()),
        }
    }

    /// [`EngineOptions::from_env`], with an [`Error::Input`] naming `SEGLOSS_MAX_BINDING_BYTES`
    /// where it is set but not a whole number of bytes (`64MiB`, `-1`).
    ///
    /// ```
    /// let opts = segloss::EngineOptions::try_from_env()?;
    /// # Ok::<(), segloss::Error>(())
    /// ```
    pub fn try_from_env() -> Result<EngineOptions, Error> {
        let opts = EngineOptions::from_env();
        if let Some(v) = std::env::var_os("SEGLOSS_MAX_BINDING_BYTES") {
            // (a value that is not Unicode is not a number either)
            let v = v.to_string_lossy();
            if !v.trim().is_empty() && opts.max_binding_bytes.is_none() {
                return Err(Error::Input(format!("SEGLOSS_MAX_BINDING_BYTES={v:?} is not a whole number of bytes")));
            }
        }
        Ok(opts)
    }

    fn backends(&self) -> Result<wgpu::Backends, Error> {
        Ok(match self.backend.as_deref().map(|s| s.to_ascii_lowercase()) {
            None => wgpu::Backends::all(),
            Some(b) => match b.as_str() {
                "vulkan" => wgpu::Backends::VULKAN,
                "gl" | "gles" | "opengl" => wgpu::Backends::GL,
                "metal" => wgpu::Backends::METAL,
                "dx12" => wgpu::Backends::DX12,
                "webgpu" => wgpu::Backends::BROWSER_WEBGPU,
                other => {
                    return Err(Error::Input(format!(
                        "SEGLOSS_BACKEND={other}: allowed values are vulkan, gl, metal, dx12, webgpu"
                    )))
                }
            },
        })
    }
}

/// One adapter as [`list_adapters`] reports it.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AdapterReport {
    /// Name, backend and type.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub info: DeviceInfo,
    /// Whether [`crate::Engine::new`] with the same options would pick it.
    pub selected: bool,
    /// Whether its limits are enough for segloss's kernels.
    pub usable: bool,
    /// Largest storage buffer binding, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Largest workgroup count per dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Workgroup shared memory, bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_shader_stage: u32,
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let t = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let b = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 | wgpu::Backend::BrowserWebGpu => 0,
        _ => 1,
    };
    (t, b)
}

fn instance(opts: &EngineOptions) -> Result<wgpu::Instance, Error> {
    instance_for(opts.backends()?)
}

fn instance_for(backends: wgpu::Backends) -> Result<wgpu::Instance, Error> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    Ok(wgpu::Instance::new(desc))
}

/// The adapter [`crate::Engine::with_options`] opens. Without a chosen backend the native APIs
/// (Vulkan, Metal, DX12) are probed first and OpenGL only when none of them has a usable adapter:
/// probing GL starts EGL, which on a machine without `XDG_RUNTIME_DIR` prints a warning.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn pick_adapter(opts: &EngineOptions) -> Result<wgpu::Adapter, Error> {
    let allowed = opts.backends()?;
    let native = allowed & (wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12);
    let mut seen = 0;
    for backends in [native, allowed - native] {
        if backends.is_empty() {
            continue;
        }
        let inst = instance_for(backends)?;
        let mut adapters = inst.enumerate_adapters(backends).await;
        seen += adapters.len();
        if let Some(i) = pick_index(&adapters, opts) {
            return Ok(adapters.swap_remove(i));
        }
    }
    Err(Error::NoAdapter(format!(
        "no usable adapter{}{} among {seen} found; on Linux install Mesa's lavapipe: apt-get install mesa-vulkan-drivers",
        opts.backend.as_ref().map(|b| format!(" on backend {b}")).unwrap_or_default(),
        opts.adapter.as_ref().map(|a| format!(" named like '{a}'")).unwrap_or_default(),
    )))
}

#[cfg(target_arch = "wasm32")]
pub(crate) async fn pick_adapter(opts: &EngineOptions) -> Result<wgpu::Adapter, Error> {
    instance(opts)?
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(format!("the browser gave no WebGPU adapter: {e}")))
}

/// Every adapter on every allowed backend, with the one the engine would pick marked.
pub async fn list_adapters(opts: &EngineOptions) -> Result<Vec<AdapterReport>, Error> {
    let inst = instance(opts)?;
    let adapters = inst.enumerate_adapters(opts.backends()?).await;
    let infos: Vec<(wgpu::AdapterInfo, bool)> = adapters.iter().map(|a| (a.get_info(), usable(a))).collect();
    // (the browser has one API, and picks by request_adapter)
    let pick = if cfg!(target_arch = "wasm32") {
        pick_info(&infos, opts.adapter.as_deref())
    } else {
        pick_native_first(&infos, opts.adapter.as_deref())
    };
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let l = a.limits();
            AdapterReport {
                info: DeviceInfo::of(&a.get_info()),
                selected: Some(i) == pick,
                usable: usable(a),
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            }
        })
        .collect())
}

/// Adapter `i` of [`list_adapters`]'s list (the same enumeration).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn nth_adapter(opts: &EngineOptions, i: usize) -> Result<wgpu::Adapter, Error> {
    let mut adapters = instance(opts)?.enumerate_adapters(opts.backends()?).await;
    if i >= adapters.len() {
        return Err(Error::NoAdapter(format!("adapter {i} is gone ({} found)", adapters.len())));
    }
    Ok(adapters.swap_remove(i))
}

fn usable(a: &wgpu::Adapter) -> bool {
    limits_ok(&a.limits())
}

/// What every kernel needs of a device: its storage bindings (the most of any kernel: the
/// gradient pass's 9, one past WebGPU's default of 8), workgroup memory and size.
pub(crate) fn limits_ok(l: &wgpu::Limits) -> bool {
    l.max_storage_buffers_per_shader_stage as usize >= storage_buffers_needed()
        && l.max_compute_workgroup_storage_size >= 8192
        && l.max_compute_invocations_per_workgroup >= 256
}

/// The most storage buffers one kernel binds.
pub(crate) fn storage_buffers_needed() -> usize {
    crate::shaders::KERNELS
        .iter()
        .map(|k| k.bindings.iter().filter(|b| b.access != crate::shaders::Access::Uniform).count())
        .max()
        .unwrap_or(0)
}

#[cfg(not(target_arch = "wasm32"))]
fn pick_index(adapters: &[wgpu::Adapter], opts: &EngineOptions) -> Option<usize> {
    let infos: Vec<(wgpu::AdapterInfo, bool)> = adapters.iter().map(|a| (a.get_info(), usable(a))).collect();
    pick_info(&infos, opts.adapter.as_deref())
}

/// The best usable adapter of `infos` (info, usable) whose name contains `want`.
fn pick_info(infos: &[(wgpu::AdapterInfo, bool)], want: Option<&str>) -> Option<usize> {
    let want = want.map(str::to_lowercase);
    infos
        .iter()
        .enumerate()
        .filter(|(_, (_, ok))| *ok)
        .filter(|(_, (info, _))| want.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w)))
        .min_by_key(|(i, (info, _))| (rank(info), *i))
        .map(|(i, _)| i)
}

/// [`pick_info`] as [`pick_adapter`] picks on native targets: among the native APIs' adapters
/// (Vulkan, Metal, DX12) first, OpenGL's only when none of those is usable, so a GPU reached
/// through OpenGL alone does not outrank lavapipe on Vulkan, which the engine opens.
fn pick_native_first(infos: &[(wgpu::AdapterInfo, bool)], want: Option<&str>) -> Option<usize> {
    let native = |b: wgpu::Backend| matches!(b, wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12);
    let among = |keep: &dyn Fn(wgpu::Backend) -> bool| {
        let only: Vec<(wgpu::AdapterInfo, bool)> =
            infos.iter().map(|(info, ok)| (info.clone(), *ok && keep(info.backend))).collect();
        pick_info(&only, want)
    };
    among(&native).or_else(|| among(&|b| !native(b)))
}

/// Longest segment the Lovász sort gives to the bitonic network on a CPU adapter such as
/// lavapipe: only the shortest, as the radix tile kernels win from 32 keys on (the network's 256
/// threads and their barriers are what a CPU adapter pays most for). Lovász-Softmax per image on
/// llvmpipe, device span with this crossover at 1024 against 16: 8x21x32x32 (segments of 1024)
/// 92.1 against 14.0 ms, 16x21x16x16 (256) 59.6 against 16.4, 64x3x4x8 (32) 14.4 against 10.0,
/// 32x1x4x4 (16) 3.4 against 4.3 with radix. On a GPU the bitonic sort takes every segment it can
/// hold ([`BITONIC_MAX`] keys; 0.37 of the radix time at 2048 on an H100).
pub const BITONIC_CROSSOVER_CPU: usize = 16;

pub(crate) struct KernelState {
    module: wgpu::ShaderModule,
    pub bind_layout: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
}

/// Submissions and host waits of an engine, for benchmarks and tests.
#[derive(Default)]
pub(crate) struct Counters {
    pub submissions: AtomicU64,
    pub waits: AtomicU64,
}

/// A device and queue with the kernels' layouts and pipelines, a scratch pool and a poller.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    kernels: HashMap<&'static str, KernelState>,
    pipelines: Mutex<HashMap<(&'static str, Spec), wgpu::ComputePipeline>>,
    pub pool: Arc<Pool>,
    /// Longest segment the automatic sort choice gives to the bitonic network.
    pub bitonic_upto: std::sync::atomic::AtomicUsize,
    /// The radix sort scatters with a thread per tile (`radix_scatter_tiles`): CPU adapters (the
    /// `internals` feature can change it, for tests of the GPU scatter on lavapipe).
    pub tile_scatter: AtomicBool,
    /// The statistics pass's wide sigmoid tiles ([`Spec::wide`]): on CPU adapters (the
    /// `internals` feature can change it, for tests of the GPU configuration on lavapipe).
    pub wide_stats: AtomicBool,
    /// The subgroup size of a CPU adapter whose device has subgroup operations, one size for
    /// every dispatch, that divides the statistics workgroup: its wide statistics tiles then take
    /// [`crate::shaders::STATS_SG`]. None elsewhere (GPUs: not measured yet).
    pub subgroup: Option<u32>,
    /// Whether the statistics take [`Gpu::subgroup`]'s kernel where there is one (the `internals`
    /// feature can turn it off, for tests of the portable kernel on lavapipe).
    pub use_subgroups: AtomicBool,
    /// Where a CPU adapter's softmax kernels keep each pixel's classes in registers
    /// ([`crate::gpu::CREG_MAX`]): [`crate::gpu::ClassRegisters`] as a byte.
    pub class_registers: std::sync::atomic::AtomicU8,
    /// Whether the adapter takes the register kernels at all: lavapipe, where they are measured.
    pub registers_ok: bool,
    /// llvmpipe, which ends a shader's loops after [`crate::gpu::CPU_LOOP_LIMIT`] iterations in
    /// all: inputs whose kernels the engine's bounds say would loop longer are refused.
    pub loop_limited: bool,
    /// The first uncaptured device error (only on devices the engine opened itself): what
    /// explains a wait the device dropped. Evaluations do not report it: the engine's own
    /// allocations and submissions are in error scopes, so an uncaptured error comes from
    /// someone else's call on the device ([`crate::Engine::device`]).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub lost: Arc<Mutex<Option<String>>>,
    pub poller: Poller,
    pub counters: Counters,
    /// The largest input binding the engine plans with (inputs larger go in pieces): the
    /// device's, or lower ([`EngineOptions::max_binding_bytes`]). The recordings still check
    /// every binding against the device's own limits.
    pub plan_binding: u64,
}

/// The largest input binding the engine plans with on llvmpipe ([`Gpu::plan_binding`]): Mesa
/// 22's `maxStorageBufferRange`, for which the loop bounds of its kernels hold.
const LLVMPIPE_PLAN_BINDING: u64 = 1 << 27;

impl Gpu {
    /// Wraps a device: builds every kernel's module and layout and the plain pipelines, so that a
    /// driver that rejects a kernel fails here. `own`: the engine opened the device itself and
    /// may install an uncaptured-error handler (never on a caller's device).
    pub async fn new(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        own: bool,
        max_binding_bytes: Option<u64>,
    ) -> Result<Gpu, Error> {
        let limits = device.limits();
        if !limits_ok(&limits) {
            return Err(Error::NoAdapter(format!(
                "{}: the device's limits are below what segloss needs ({} storage buffers per stage, 8 KiB workgroup memory, 256 invocations)",
                info.name,
                storage_buffers_needed()
            )));
        }
        let lost = Arc::new(Mutex::new(None));
        if own {
            let lost = lost.clone();
            device.on_uncaptured_error(Arc::new(move |e| {
                if let Ok(mut l) = lost.lock() {
                    l.get_or_insert_with(|| e.to_string());
                }
            }));
        }
        let poller = Poller::new(device.clone(), info.backend == wgpu::Backend::Gl);
        if own {
            // (a caller's device keeps the caller's callback: there a failed wait raises it)
            let signal = poller.lost().clone();
            device.set_device_lost_callback(move |reason, why| {
                signal.raise(format!("the device was lost ({reason:?}): {why}"));
            });
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        // (Mesa's software rasterizer, through Vulkan (lavapipe) or OpenGL; other CPU adapters,
        // SwiftShader or WARP, have no such limit)
        let loop_limited = cpu && info.name.contains("llvmpipe");
        // storage parameters where the inlining they avoid happens: lavapipe (Kernel::cpu_storage_params)
        let lavapipe = cpu && info.backend == wgpu::Backend::Vulkan;
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        let subgroup = (cpu
            && subgroups
            && info.subgroup_min_size == info.subgroup_max_size
            && info.subgroup_min_size > 0
            && (crate::gpu::STATS_WG as u32).is_multiple_of(info.subgroup_min_size))
        .then_some(info.subgroup_min_size);
        let kernels = KERNELS
            .iter()
            .filter(|k| subgroups || !k.uses_subgroups())
            .map(|k| (k.name, KernelState::new(&device, k, lavapipe && k.cpu_storage_params)))
            .collect();
        let bitonic_upto = if cpu { BITONIC_CROSSOVER_CPU } else { BITONIC_MAX };
        let pool = Arc::new(Pool::new(poller.serial().clone()));
        let gpu = Gpu {
            poller,
            device,
            queue,
            limits,
            kernels,
            pipelines: Mutex::new(HashMap::new()),
            pool,
            bitonic_upto: std::sync::atomic::AtomicUsize::new(bitonic_upto),
            tile_scatter: AtomicBool::new(cpu),
            wide_stats: AtomicBool::new(cpu),
            subgroup,
            use_subgroups: AtomicBool::new(true),
            class_registers: std::sync::atomic::AtomicU8::new(crate::gpu::ClassRegisters::Large as u8),
            // (through OpenGL a test of the register kernels had not finished after ten minutes)
            registers_ok: lavapipe,
            loop_limited,
            lost,
            counters: Counters::default(),
            // at least the 4-byte logits of one pixel of one class; on llvmpipe at most the 128 MiB
            // bindings of the Mesa the loop bounds were worked out on: a thread of count_reduce
            // walks an image's count blocks, one of lovasz_scan_tiles a segment's tiles, bounded
            // only by the binding (8192 steps there), and a later Mesa may allow larger ones
            plan_binding: max_binding_bytes.map_or(u64::MAX, |m| m.max(4)).min(if loop_limited {
                LLVMPIPE_PLAN_BINDING
            } else {
                u64::MAX
            }),
        };
        for softmax in [false, true] {
            for k in KERNELS.iter().filter(|k| (subgroups || !k.uses_subgroups()) && !k.built_on_first_use()) {
                if let Err(e) = gpu.pipeline(k, Spec::softmax(softmax)) {
                    let _ = scope.pop().await;
                    return Err(Error::Gpu(format!("building the pipelines failed on {}: {e}", info.name)));
                }
            }
        }
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!("building the pipelines failed on {}: {e}", info.name)));
        }
        Ok(gpu)
    }

    pub(crate) fn kernel(&self, k: &Kernel) -> &KernelState {
        // every kernel of KERNELS is built in `new` (those with subgroup operations where the
        // device has them: only then are they recorded)
        &self.kernels[k.name]
    }

    /// The class count that softmax kernels keep in registers over `c` classes and `elements`
    /// logits, 0 for none (see [`crate::gpu::CREG_MAX`]); `wide`: the CPU adapter's tiles.
    pub(crate) fn creg(&self, wide: bool, softmax: bool, c: usize, elements: usize) -> u32 {
        let mode = self.class_registers.load(std::sync::atomic::Ordering::Relaxed);
        crate::gpu::stats_creg(mode, wide && self.registers_ok, softmax, c, elements)
    }

    /// Buffers (`T`: one, or a collection) dropped under the device lock on every path out of
    /// the scope that holds them (destroying a buffer is a GL call: [`Held`]).
    pub(crate) fn held<T>(&self, bufs: T) -> Held<T> {
        Held::new(bufs, self.poller.serial().clone())
    }

    /// Runs `f`, which creates or writes buffers (or builds a pipeline), inside validation,
    /// out-of-memory and internal error scopes of its own, so that a device that cannot make
    /// them gives an error here. Outside a scope the error would go to the device's
    /// uncaptured-error handler: on a caller's device ([`crate::Engine::from_device`]) that is the
    /// caller's, and wgpu's default one panics. Native scopes settle as the calls are made; in the
    /// browser they settle later, so there a failed allocation is dropped here and comes back as
    /// the validation error of the submission that uses the buffer.
    pub(crate) fn allocating<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        use futures::FutureExt;
        let _one = self.poller.serial().hold();
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = f();
        let internal = internal.pop().now_or_never().flatten();
        let (oom, validation) = (oom.pop().now_or_never().flatten(), validation.pop().now_or_never().flatten());
        if let Some(e) = oom {
            return Err(Error::Gpu(format!("out of device memory: {e}")));
        }
        if let Some(e) = validation.or(internal) {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(out)
    }

    /// A buffer of `size` bytes, made inside error scopes ([`Gpu::allocating`]).
    pub(crate) fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, Error> {
        self.allocating(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
    }

    /// A buffer holding `contents` (padded to 4 bytes), made inside error scopes
    /// ([`Gpu::allocating`]). wgpu's own `create_buffer_init` panics when the buffer it made
    /// cannot be mapped, which is what a refused allocation gives.
    pub(crate) fn buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, Error> {
        let size =
            (contents.len() as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT).max(wgpu::COPY_BUFFER_ALIGNMENT);
        // in the browser a buffer mapped at creation that cannot be allocated throws (a
        // RangeError) rather than coming back invalid: written through the queue instead
        #[cfg(target_arch = "wasm32")]
        return self
            .buffer(label, size, usage | wgpu::BufferUsages::COPY_DST)
            .inspect(|buf| self.queue.write_buffer(buf, 0, contents));
        #[cfg(not(target_arch = "wasm32"))]
        self.allocating(|| {
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: true,
            });
            buf.get_mapped_range_mut(..)
                .map_err(|e| {
                    Error::Gpu(format!("the device did not make the buffer '{label}' (out of memory, or lost): {e}"))
                })?
                .slice(..contents.len())
                .copy_from_slice(contents);
            buf.unmap();
            Ok(buf)
        })?
    }

    /// The pipeline of kernel `k` for `spec`, built on first use inside error scopes of its own
    /// (a driver that fails to compile it gives an `Internal` error): one the device refused is
    /// an error and is not kept, so a later call builds it again.
    pub(crate) fn pipeline(&self, k: &'static Kernel, spec: Spec) -> Result<wgpu::ComputePipeline, Error> {
        let spec = if k.specialized { spec } else { Spec::default() };
        let ks = self.kernel(k);
        // (the device lock before the cache's, the order of a submission that builds one)
        let _one = self.poller.serial().hold();
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&(k.name, spec)) {
            return Ok(p.clone());
        }
        let constants = spec.constants();
        let build = || {
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.name),
                layout: Some(&ks.layout),
                module: &ks.module,
                entry_point: Some(k.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: if k.specialized { &constants } else { &[] },
                    // every kernel writes its workgroup memory before reading it
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        };
        // (in the browser scopes settle later, so inner ones would drop the error: there a refused
        // pipeline is the error of the scope around the engine's opening or its submission)
        #[cfg(target_arch = "wasm32")]
        let built: Result<wgpu::ComputePipeline, Error> = Ok(build());
        #[cfg(not(target_arch = "wasm32"))]
        let built = self.allocating(build);
        let p = built.map_err(|e| Error::Gpu(format!("the device did not build the kernel {}: {e}", k.name)))?;
        cache.insert((k.name, spec), p.clone());
        Ok(p)
    }

    /// Blocks until everything submitted so far has run, this thread polling the device
    /// ([`crate::gpu::poll::drive`]); an error when the device fails or is lost meanwhile.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn wait_done(&self) -> Result<(), Error> {
        crate::gpu::poll::drive(&self.poller, self.work_done())
    }

    /// Completes when everything submitted so far has run.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn work_done(&self) -> impl std::future::Future<Output = Result<(), Error>> + '_ {
        let (tx, rx) = futures::channel::oneshot::channel();
        {
            // (wgpu may submit its pending writes here: a GL call)
            let _one = self.poller.serial().hold();
            self.queue.on_submitted_work_done(move || {
                let _ = tx.send(());
            });
        }
        let done = self.poller.lost().clone().guard(rx);
        async move {
            if done.await?.is_err() {
                let lost = self.poller.lost().reason().or_else(|| self.lost.lock().ok().and_then(|l| l.clone()));
                return Err(Error::Gpu(lost.unwrap_or_else(|| "the device dropped a wait (lost?)".into())));
            }
            Ok(())
        }
    }

    pub(crate) fn note_submission(&self) {
        self.counters.submissions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_wait(&self) {
        self.counters.waits.fetch_add(1, Ordering::Relaxed);
    }
}

impl KernelState {
    /// The kernel's module and layouts. `params_in_storage`: bind the kernel's uniforms as
    /// read-only storage (see [`Kernel::cpu_storage_params`]).
    fn new(device: &wgpu::Device, kernel: &Kernel, params_in_storage: bool) -> KernelState {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(kernel.source_for(params_in_storage)),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b.access {
                        Access::Uniform if !params_in_storage => wgpu::BufferBindingType::Uniform,
                        Access::Uniform | Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let bind_layout = device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(kernel.name), entries: &entries });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.name),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        KernelState { module, bind_layout, layout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: wgpu::DeviceType, backend: wgpu::Backend) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo { name: name.into(), ..wgpu::AdapterInfo::new(device_type, backend) }
    }

    /// (review) The adapter `list_adapters` marks is the one the engine opens: the native APIs'
    /// first, so a GPU reached through OpenGL alone does not outrank lavapipe on Vulkan (the list
    /// ranked every backend together, by device type first, and marked the OpenGL GPU).
    #[test]
    fn the_listed_pick_is_the_native_first_pick() {
        use wgpu::{Backend as B, DeviceType as T};
        let infos = vec![
            (info("NVIDIA (GL)", T::DiscreteGpu, B::Gl), true),
            (info("llvmpipe (vulkan)", T::Cpu, B::Vulkan), true),
            (info("llvmpipe (gl)", T::Cpu, B::Gl), true),
        ];
        assert_eq!(pick_info(&infos, None), Some(0), "ranked together, the OpenGL GPU wins");
        assert_eq!(pick_native_first(&infos, None), Some(1));
        // OpenGL's only where no native adapter is usable, or where the name asks for it
        let mut unusable = infos.clone();
        unusable[1].1 = false;
        assert_eq!(pick_native_first(&unusable, None), Some(0));
        assert_eq!(pick_native_first(&infos, Some("nvidia")), Some(0));
        assert_eq!(pick_native_first(&infos, Some("none such")), None);
    }
}
