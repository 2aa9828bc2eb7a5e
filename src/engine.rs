//! The engine: an adapter and device, the compute pipelines built once, and evaluation of loss
//! expressions with gradients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::Error;
use crate::expr::LossExpr;
use crate::input::{Input, Target};
use crate::plan::{self, finalize, StatsPlan, Sums, TermParams, K, MAX_GRAD_TERMS};
use crate::reference;
use crate::shaders::{Binding, Kernel, BITONIC_MAX, KERNELS};
use crate::Mode;

/// Pixels per statistics tile (workgroup size 128 x 16 pixels per thread; see `stats.wgsl`).
const TILE: usize = 128 * 16;
/// Threads per gradient workgroup (see `grad.wgsl`).
const GRAD_WG: usize = 256;
/// Target word of an ignored element (see `common.wgsl`).
const INVALID: u32 = u32::MAX;

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
    fn of(info: &wgpu::AdapterInfo) -> DeviceInfo {
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
    /// Fall back to the CPU reference when no adapter is found (default for [`Engine::new`]).
    pub allow_cpu_fallback: bool,
}

impl EngineOptions {
    /// Options from `SEGLOSS_BACKEND` and `SEGLOSS_ADAPTER`, with CPU fallback allowed.
    pub fn from_env() -> EngineOptions {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        EngineOptions { backend: get("SEGLOSS_BACKEND"), adapter: get("SEGLOSS_ADAPTER"), allow_cpu_fallback: true }
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
    /// Whether [`Engine::new`] with the same options would pick it.
    pub selected: bool,
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
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = opts.backends()?;
    Ok(wgpu::Instance::new(desc))
}

/// Every adapter on every allowed backend, with the one the engine would pick marked.
pub async fn list_adapters(opts: &EngineOptions) -> Result<Vec<AdapterReport>, Error> {
    let inst = instance(opts)?;
    let adapters = inst.enumerate_adapters(opts.backends()?).await;
    let pick = pick_index(&adapters, opts);
    Ok(adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let l = a.limits();
            AdapterReport {
                info: DeviceInfo::of(&a.get_info()),
                selected: Some(i) == pick,
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            }
        })
        .collect())
}

fn usable(a: &wgpu::Adapter) -> bool {
    let l = a.limits();
    l.max_storage_buffers_per_shader_stage >= 7
        && l.max_compute_workgroup_storage_size >= 8192
        && l.max_compute_invocations_per_workgroup >= 256
}

fn pick_index(adapters: &[wgpu::Adapter], opts: &EngineOptions) -> Option<usize> {
    let want = opts.adapter.as_ref().map(|s| s.to_lowercase());
    adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| usable(a))
        .filter(|(_, a)| want.as_ref().is_none_or(|w| a.get_info().name.to_lowercase().contains(w)))
        .min_by_key(|(i, a)| (rank(&a.get_info()), *i))
        .map(|(i, _)| i)
}

/// A GPU device with the pipelines of every kernel.
struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// One compiled module and layout per kernel of [`KERNELS`], in that order.
    kernels: Vec<KernelState>,
    /// Pipelines by kernel and specialization, each built once.
    pipelines: Mutex<HashMap<(usize, Spec), wgpu::ComputePipeline>>,
    limits: wgpu::Limits,
    lost: Arc<Mutex<Option<String>>>,
    pool: Pool,
    /// Longest segment [`SortAlgo::Auto`] sorts with the bitonic network on this adapter.
    bitonic_upto: usize,
}

struct KernelState {
    kernel: Kernel,
    module: wgpu::ShaderModule,
    bind_layout: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
}

/// Values of the specialization constants of `common.wgsl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Spec {
    softmax: bool,
    kinds: u32,
    nterms: u32,
    sensspec: bool,
    lovasz: u32,
}

impl Spec {
    fn constants(&self) -> [(&'static str, f64); 5] {
        [
            ("SOFTMAX", f64::from(u8::from(self.softmax))),
            ("KINDS", f64::from(self.kinds)),
            ("NTERMS", f64::from(self.nterms)),
            ("SENSSPEC", f64::from(u8::from(self.sensspec))),
            ("LOVASZ", f64::from(self.lovasz)),
        ]
    }
}

const K_STATS: usize = 0;
const K_REDUCE: usize = 1;
const K_GRAD: usize = 2;
const K_COPY: usize = 3;
const K_RADIX_COUNT: usize = 4;
const K_RADIX_SCAN: usize = 5;
const K_RADIX_SCATTER: usize = 6;
const K_LOVASZ_KEYS: usize = 7;
const K_LOVASZ_COUNT: usize = 8;
const K_LOVASZ_SCAN: usize = 9;
const K_LOVASZ_WEIGHTS: usize = 10;
const K_LOVASZ_VALUE: usize = 11;
const K_BITONIC: usize = 12;
const K_COMPACT_COUNT: usize = 13;
const K_COMPACT_SCAN: usize = 14;
const K_COMPACT_SCATTER: usize = 15;
const K_RADIX_DIGITS: usize = 16;
const K_LOVASZ_THRESHOLD: usize = 17;
const K_LOVASZ_DROP: usize = 18;
const K_COMPACT_ARGS: usize = 19;
/// Elements per sort tile (see `radix.wgsl`, `lovasz.wgsl`).
const SORT_TILE: usize = 2048;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct SortParams {
    len: u32,
    segs: u32,
    tiles: u32,
    shift: u32,
    /// 1: segment `s` sorts only its first `seglen[s].x` keys (see `radix.wgsl`)
    varlen: u32,
    pad: [u32; 3],
}

/// The Lovász keys of one evaluation and where their per-segment results go.
struct LovaszKeys<'a> {
    keys: Scratch<'a>,
    vals: Scratch<'a>,
    /// `[value bits, fg, bg, 0]` per segment (u32)
    segsum: Scratch<'a>,
    segs: usize,
    len: usize,
    per_image: bool,
    softmax: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct LovParams {
    len: u32,
    segs: u32,
    tiles: u32,
    per_image: u32,
}

enum Backend {
    Gpu(Box<Gpu>),
    Cpu,
}

/// Evaluates loss expressions and their gradients on a GPU (or on the CPU reference when no
/// adapter exists and fallback is allowed).
///
/// ```no_run
/// # fn main() -> Result<(), segloss::Error> {
/// use segloss::{Engine, Input, LossExpr, Mode};
/// let engine = Engine::new_blocking()?;
/// let logits = vec![0.3f32; 2 * 1 * 8 * 8];
/// let target: Vec<f32> = (0..128).map(|i| (i % 3 == 0) as u8 as f32).collect();
/// let input = Input::dense(&logits, &target, &[2, 1, 8, 8], Mode::Binary)?;
/// let expr: LossExpr = "0.5*bce+0.5*dice".parse()?;
/// let out = engine.evaluate_blocking(&input, &[expr], true)?;
/// println!("{} on {}", out[0].value, engine.info().name);
/// # Ok(()) }
/// ```
pub struct Engine {
    backend: Backend,
    info: DeviceInfo,
}

/// The result of evaluating one expression.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The value of the expression.
    pub value: f64,
    /// Each term's value, before its weight.
    pub term_values: Vec<f64>,
    /// `d value / d logits` in the logits' layout, when asked for.
    pub grad: Option<Vec<f32>>,
}

/// What to do with gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradMode {
    /// Values only: the gradient pass does not run.
    Skip,
    /// Compute the gradient and read it back into [`Evaluation::grad`].
    Read,
    /// Compute the gradient on the device and leave it there (benchmarks).
    DeviceOnly,
}

/// Which sort the Lovász losses and [`Engine::sort_segments_with`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortAlgo {
    /// Bitonic for segments up to [`Engine::bitonic_crossover`], radix beyond.
    Auto,
    /// Segmented LSD radix sort (any length).
    Radix,
    /// Workgroup bitonic sort (segments of at most 2048; radix beyond).
    Bitonic,
}

/// Longest segment [`SortAlgo::Auto`] gives to the bitonic sort on a CPU adapter such as lavapipe,
/// where the radix sort wins from 2048 keys (`segloss sortbench`: bitonic/radix 0.56 at 1024, 1.10
/// at 2048). On a GPU the bitonic sort takes every segment it can hold ([`BITONIC_MAX`] keys; 0.37
/// of the radix time at 2048 on an H100).
pub const BITONIC_CROSSOVER_CPU: usize = 1024;

/// A batch uploaded to the device once, evaluated many times.
pub struct Prepared<'a> {
    input: Input<'a>,
    logits: Option<wgpu::Buffer>,
    target: Option<wgpu::Buffer>,
    /// [`Input::hard_labels`], found once here rather than on every evaluation.
    hard_labels: bool,
}

impl Prepared<'_> {
    /// The input this batch was made from.
    pub fn input(&self) -> &Input<'_> {
        &self.input
    }
}

impl Engine {
    /// Opens the best adapter (`SEGLOSS_BACKEND` and `SEGLOSS_ADAPTER` choose), or falls back to
    /// the CPU reference when none exists; [`Engine::info`] says which.
    pub async fn new() -> Result<Engine, Error> {
        Engine::with_options(&EngineOptions::from_env()).await
    }

    /// Opens a GPU adapter and fails when none exists.
    pub async fn gpu() -> Result<Engine, Error> {
        Engine::with_options(&EngineOptions { allow_cpu_fallback: false, ..EngineOptions::from_env() }).await
    }

    /// Opens an adapter chosen by `opts`.
    pub async fn with_options(opts: &EngineOptions) -> Result<Engine, Error> {
        match Engine::open(opts).await {
            Ok(e) => Ok(e),
            Err(Error::NoAdapter(why)) if opts.allow_cpu_fallback => Ok(Engine::cpu(Some(why))),
            Err(e) => Err(e),
        }
    }

    /// The f64 CPU reference as an engine.
    pub fn cpu(reason: Option<String>) -> Engine {
        Engine {
            backend: Backend::Cpu,
            info: DeviceInfo {
                name: "CPU reference (f64)".into(),
                backend: "cpu".into(),
                device_type: "Cpu".into(),
                driver: String::new(),
                fallback_reason: reason,
            },
        }
    }

    async fn open(opts: &EngineOptions) -> Result<Engine, Error> {
        let inst = instance(opts)?;
        #[cfg(not(target_arch = "wasm32"))]
        let adapter = {
            let mut adapters = inst.enumerate_adapters(opts.backends()?).await;
            let i = pick_index(&adapters, opts).ok_or_else(|| {
                Error::NoAdapter(format!(
                    "no usable adapter{}{} among {} found; on Linux install Mesa's lavapipe: apt-get install mesa-vulkan-drivers",
                    opts.backend.as_ref().map(|b| format!(" on backend {b}")).unwrap_or_default(),
                    opts.adapter.as_ref().map(|a| format!(" named like '{a}'")).unwrap_or_default(),
                    adapters.len()
                ))
            })?;
            adapters.swap_remove(i)
        };
        #[cfg(target_arch = "wasm32")]
        let adapter = inst
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("the browser gave no WebGPU adapter: {e}")))?;
        let info = DeviceInfo::of(&adapter.get_info());
        // a software rasterizer (lavapipe, SwiftShader): the radix sort wins earlier there
        let bitonic_upto =
            if adapter.get_info().device_type == wgpu::DeviceType::Cpu { BITONIC_CROSSOVER_CPU } else { BITONIC_MAX };
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("segloss"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("{}: cannot open a device: {e}", info.name)))?;
        let lost = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.on_uncaptured_error(Arc::new(move |e| {
                if let Ok(mut l) = lost.lock() {
                    l.get_or_insert_with(|| e.to_string());
                }
            }));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernels: Vec<KernelState> = KERNELS.iter().map(|k| KernelState::new(&device, *k)).collect();
        let pipelines = Mutex::new(HashMap::new());
        let gpu = Gpu { device, queue, kernels, pipelines, limits, lost, pool: Pool::default(), bitonic_upto };
        // Build the plain specializations now, so that a driver that rejects a kernel fails here.
        for softmax in [false, true] {
            let spec = Spec { softmax, ..Spec::default() };
            for k in 0..KERNELS.len() {
                gpu.pipeline(k, spec);
            }
        }
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!("building the pipelines failed on {}: {e}", info.name)));
        }
        Ok(Engine { backend: Backend::Gpu(Box::new(gpu)), info })
    }

    /// What the engine runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Whether this engine is the CPU reference.
    pub fn is_cpu(&self) -> bool {
        matches!(self.backend, Backend::Cpu)
    }

    /// Frees the scratch buffers kept between evaluations (up to 4 GiB of device memory: an
    /// evaluation reuses the buffers of the last one of the same shape rather than allocating).
    pub fn release_scratch(&self) {
        if let Backend::Gpu(g) = &self.backend {
            g.pool.clear();
        }
    }

    /// Longest segment that [`SortAlgo::Auto`] sorts with the bitonic network on this adapter
    /// ([`BITONIC_CROSSOVER_CPU`] on a CPU adapter, [`BITONIC_MAX`] on a GPU; 0 on the CPU engine).
    pub fn bitonic_crossover(&self) -> usize {
        match &self.backend {
            Backend::Gpu(g) => g.bitonic_upto,
            Backend::Cpu => 0,
        }
    }

    /// Uploads a batch once, for repeated evaluation with [`Engine::evaluate_prepared`].
    pub fn prepare<'a>(&self, input: Input<'a>) -> Result<Prepared<'a>, Error> {
        let Backend::Gpu(gpu) = &self.backend else {
            let hard_labels = input.hard_labels();
            return Ok(Prepared { input, logits: None, target: None, hard_labels });
        };
        let bytes = (input.logits().len() * 4) as u64;
        let max = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size);
        if bytes > max {
            return Err(Error::Input(format!(
                "the logits take {bytes} bytes but {} binds at most {max} bytes per buffer",
                self.info.name
            )));
        }
        let (n, s) = (input.batch(), input.spatial());
        let tiles = s.div_ceil(TILE);
        let maxd = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if tiles > maxd || n > maxd || input.classes() > maxd {
            return Err(Error::Input(format!(
                "shape {:?} needs more workgroups per dimension than {maxd}",
                input.shape()
            )));
        }
        let words: Vec<u32> = match input.target() {
            Target::Dense(t) => {
                let ign = input.ignore_index().map(|k| k as f32);
                t.iter().map(|&v| if Some(v) == ign { INVALID } else { v.to_bits() }).collect()
            }
            Target::Labels(t) => {
                t.iter().map(|&v| if Some(v) == input.ignore_index() { INVALID } else { v as u32 }).collect()
            }
        };
        let logits = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("logits"),
            contents: bytemuck::cast_slice(input.logits()),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let target = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("target"),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let hard_labels = input.hard_labels();
        Ok(Prepared { input, logits: Some(logits), target: Some(target), hard_labels })
    }

    /// Evaluates several expressions on one batch: one statistics pass for all of them, then one
    /// gradient pass per expression, recorded into one submission.
    pub async fn evaluate(&self, input: &Input<'_>, exprs: &[LossExpr], grads: bool) -> Result<Vec<Evaluation>, Error> {
        let prep = self.prepare(input.clone())?;
        self.evaluate_prepared(&prep, exprs, if grads { GradMode::Read } else { GradMode::Skip }).await
    }

    /// [`Engine::evaluate`] on an uploaded batch.
    pub async fn evaluate_prepared(
        &self,
        prep: &Prepared<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        let input = &prep.input;
        for e in exprs {
            e.check(input.mode(), input.classes())?;
        }
        let gpu = match &self.backend {
            Backend::Cpu => {
                return exprs
                    .iter()
                    .map(|e| {
                        let r = reference::evaluate(input, e)?;
                        Ok(Evaluation {
                            value: r.value,
                            term_values: r.term_values,
                            grad: (grads == GradMode::Read).then(|| r.grad.iter().map(|&g| g as f32).collect()),
                        })
                    })
                    .collect();
            }
            Backend::Gpu(g) => g,
        };
        if exprs.iter().any(|e| e.has_lovasz()) && !prep.hard_labels {
            return Err(Error::TargetValue("lovasz needs hard 0/1 labels, but the target has soft values".into()));
        }
        let (Some(logits), Some(target)) = (&prep.logits, &prep.target) else {
            return Err(Error::Input("this batch was prepared by another engine".into()));
        };
        let mut out = Vec::with_capacity(exprs.len());
        for (plan, group) in StatsPlan::groups(exprs, input.classes())? {
            out.extend(gpu.run(input, logits, target, &plan, group, grads).await?);
        }
        Ok(out)
    }

    /// Sorts consecutive segments of `segment_len` keys ascending, stably, on the device (the radix
    /// sort behind the Lovász losses), and returns the sorted keys with each one's original index.
    /// `keys.len()` must be a multiple of `segment_len`. The CPU engine sorts on the CPU.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), segloss::Error> {
    /// let engine = segloss::Engine::new_blocking()?;
    /// let (k, i) = engine.sort_segments_blocking(&[3, 1, 2, 9, 7, 7], 3)?;
    /// assert_eq!(k, vec![1, 2, 3, 7, 7, 9]);
    /// assert_eq!(i, vec![1, 2, 0, 4, 5, 3]);
    /// # Ok(()) }
    /// ```
    pub async fn sort_segments(&self, keys: &[u32], segment_len: usize) -> Result<(Vec<u32>, Vec<u32>), Error> {
        self.sort_segments_with(keys, segment_len, SortAlgo::Auto).await
    }

    /// [`Engine::sort_segments`] with a chosen algorithm (for tests and benchmarks); `Bitonic`
    /// applies to segments of at most 2048 keys and falls back to radix beyond.
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
        let Backend::Gpu(gpu) = &self.backend else {
            let mut out = Vec::with_capacity(keys.len());
            for (si, seg) in keys.chunks(segment_len).enumerate() {
                let mut idx: Vec<u32> = (0..segment_len as u32).map(|i| (si * segment_len) as u32 + i).collect();
                idx.sort_by_key(|&i| seg[i as usize - si * segment_len]);
                out.extend(idx);
            }
            return Ok((out.iter().map(|&i| keys[i as usize]).collect(), out));
        };
        let maxd = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if segment_len.div_ceil(SORT_TILE) > maxd || segs > maxd {
            return Err(Error::Input(format!(
                "{segs} segments of {segment_len} keys exceed the device's dispatch limits"
            )));
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let idx: Vec<u32> = (0..keys.len() as u32).collect();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let init = |label, data: &[u32]| {
            gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage,
            })
        };
        let (ka, va) = (init("keys", keys), init("vals", &idx));
        let bytes = (keys.len() * 4) as u64;
        let (kb, vb) = (gpu.scratch(bytes), gpu.scratch(bytes));
        let mut enc =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("segloss sort") });
        gpu.record_sort(&mut enc, (&ka, &va), (&kb, &vb), segs, segment_len, algo, None);
        let rk = gpu.readback(bytes);
        let rv = gpu.readback(bytes);
        enc.copy_buffer_to_buffer(&ka, 0, &rk, 0, bytes);
        enc.copy_buffer_to_buffer(&va, 0, &rv, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        let out = gpu.read(&[&rk, &rv]).await?;
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(e.to_string()));
        }
        gpu.check_lost()?;
        let as_u32 = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        Ok((as_u32(&out[0]), as_u32(&out[1])))
    }

    /// Blocking [`Engine::sort_segments`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sort_segments_blocking(&self, keys: &[u32], segment_len: usize) -> Result<(Vec<u32>, Vec<u32>), Error> {
        futures::executor::block_on(self.sort_segments(keys, segment_len))
    }

    /// Times the device work of sorting `segs` segments of `segment_len` random keys with `algo`,
    /// data already on the device: milliseconds of each of `iters` runs (after one warm-up).
    /// Returns an empty list on the CPU engine.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn bench_sort(&self, segs: usize, segment_len: usize, algo: SortAlgo, iters: usize) -> Result<Vec<f64>, Error> {
        let Backend::Gpu(gpu) = &self.backend else {
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
        let idx: Vec<u32> = (0..n as u32).collect();
        let init = |label, data: &[u32]| {
            gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let (ka, va) = (init("keys", &keys), init("vals", &idx));
        let bytes = (n * 4) as u64;
        let (kb, vb) = (gpu.scratch(bytes), gpu.scratch(bytes));
        let mut out = Vec::new();
        for i in 0..=iters {
            let t0 = std::time::Instant::now();
            let mut enc =
                gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("sort bench") });
            gpu.record_sort(&mut enc, (&ka, &va), (&kb, &vb), segs, segment_len, algo, None);
            gpu.queue.submit([enc.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu(format!("waiting for the device failed: {e}")))?;
            if i > 0 {
                out.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        gpu.check_lost()?;
        Ok(out)
    }

    /// Blocking [`Engine::sort_segments_with`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sort_segments_with_blocking(
        &self,
        keys: &[u32],
        segment_len: usize,
        algo: SortAlgo,
    ) -> Result<(Vec<u32>, Vec<u32>), Error> {
        futures::executor::block_on(self.sort_segments_with(keys, segment_len, algo))
    }

    /// Copies the prepared logits once on the device and waits: the memory-traffic floor of an
    /// elementwise pass, for benchmarks to compare against. A no-op on the CPU reference.
    pub async fn copy_probe(&self, prep: &Prepared<'_>) -> Result<(), Error> {
        let (Backend::Gpu(gpu), Some(logits)) = (&self.backend, &prep.logits) else {
            return Ok(());
        };
        let bytes = (prep.input.logits().len() * 4) as u64;
        let out = gpu.scratch(bytes);
        let bg = gpu.bind(K_COPY, &[logits, &out]);
        let (gx, gy) = gpu.grid(prep.input.logits().len());
        let mut enc =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("segloss copy") });
        Gpu::dispatch(&mut enc, "copy", &gpu.pipeline(K_COPY, Spec::default()), &bg, (gx, gy, 1));
        gpu.queue.submit([enc.finish()]);
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device failed: {e}")))?;
        gpu.check_lost()
    }

    /// Blocking [`Engine::copy_probe`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_probe_blocking(&self, prep: &Prepared<'_>) -> Result<(), Error> {
        futures::executor::block_on(self.copy_probe(prep))
    }

    /// Blocking [`Engine::new`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Engine, Error> {
        futures::executor::block_on(Engine::new())
    }

    /// Blocking [`Engine::gpu`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gpu_blocking() -> Result<Engine, Error> {
        futures::executor::block_on(Engine::gpu())
    }

    /// Blocking [`Engine::evaluate`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_blocking(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
    ) -> Result<Vec<Evaluation>, Error> {
        futures::executor::block_on(self.evaluate(input, exprs, grads))
    }

    /// Blocking [`Engine::evaluate_prepared`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_prepared_blocking(
        &self,
        prep: &Prepared<'_>,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        futures::executor::block_on(self.evaluate_prepared(prep, exprs, grads))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    s: u32,
    tiles: u32,
}

/// Workgroups of a dispatch: counted on the host, or read from a buffer the device wrote
/// (`compact_args`: sized by the longest compacted segment, without a readback).
#[derive(Clone, Copy)]
enum Grid<'a> {
    Direct(u32, u32, u32),
    Indirect(&'a wgpu::Buffer),
}

impl From<(u32, u32, u32)> for Grid<'_> {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Grid::Direct(x, y, z)
    }
}

/// Most bytes of idle scratch buffers the pool keeps for reuse ([`Engine::release_scratch`] frees
/// them). Lovász-Softmax with gradients on 8x21x512x512 uses about 1.1 GB.
const POOL_BYTES: u64 = 4 << 30;

/// Scratch buffers kept between evaluations. On a real GPU, allocating and zero-filling fresh
/// device memory for every evaluation costs more than the kernels themselves (measured on an H100:
/// a 176 MB copy took 8.8 ms with a fresh output buffer), so a released buffer waits here for the
/// next request of the same size and use, up to [`POOL_BYTES`] in all. Reusing a buffer in a later
/// command is safe: wgpu orders every use of a buffer on the queue.
#[derive(Default)]
struct Pool {
    free: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    bytes: u64,
    by_kind: HashMap<(u64, wgpu::BufferUsages), Vec<wgpu::Buffer>>,
}

impl Pool {
    fn take(&self, device: &wgpu::Device, size: u64, usage: wgpu::BufferUsages) -> Scratch<'_> {
        let reused = {
            let mut st = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let b = st.by_kind.get_mut(&(size, usage)).and_then(Vec::pop);
            if b.is_some() {
                st.bytes -= size;
            }
            b
        };
        let buf = reused.unwrap_or_else(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("segloss scratch"),
                size,
                usage,
                mapped_at_creation: false,
            })
        });
        Scratch { buf, pool: self }
    }

    fn clear(&self) {
        let mut st = self.free.lock().unwrap_or_else(|e| e.into_inner());
        *st = PoolState::default();
    }

    fn give(&self, buf: &wgpu::Buffer) {
        let mut st = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if st.bytes + buf.size() <= POOL_BYTES {
            st.bytes += buf.size();
            st.by_kind.entry((buf.size(), buf.usage())).or_default().push(buf.clone());
        }
    }
}

/// A buffer borrowed from the [`Pool`], given back when dropped (once no further command will be
/// recorded with it).
struct Scratch<'a> {
    buf: wgpu::Buffer,
    pool: &'a Pool,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        self.pool.give(&self.buf);
    }
}

impl KernelState {
    fn new(device: &wgpu::Device, kernel: Kernel) -> KernelState {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
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
        KernelState { kernel, module, bind_layout, layout }
    }
}

impl Gpu {
    /// The pipeline of kernel `k` for `spec`, built on first use.
    fn pipeline(&self, k: usize, spec: Spec) -> wgpu::ComputePipeline {
        let ks = &self.kernels[k];
        let spec = if ks.kernel.specialized { spec } else { Spec::default() };
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((k, spec))
            .or_insert_with(|| {
                let constants = spec.constants();
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(ks.kernel.name),
                    layout: Some(&ks.layout),
                    module: &ks.module,
                    entry_point: Some(ks.kernel.entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: if ks.kernel.specialized { &constants } else { &[] },
                        // every kernel writes its workgroup memory before reading it
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            })
            .clone()
    }

    fn storage(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        // Empty arrays still need a binding as large as one element (a 32-byte term).
        let pad = [0u8; 32];
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: if data.is_empty() { &pad } else { data },
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    /// Two distinct small buffers for read-write bindings a kernel does not use (WebGPU rejects
    /// one buffer bound to two writable bindings of a dispatch).
    fn unused(&self) -> [Scratch<'_>; 2] {
        [self.scratch(16), self.scratch(16)]
    }

    fn uniform<T: bytemuck::Pod>(&self, p: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(p),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// A storage buffer of `bytes` from the pool (contents undefined: every kernel writes what it
    /// reads, and buffers that kernels accumulate into are cleared with `clear_buffer` first).
    fn scratch(&self, bytes: u64) -> Scratch<'_> {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::INDIRECT;
        self.pool.take(&self.device, bytes.max(4), usage)
    }

    /// A host-readable staging buffer of `bytes` from the pool.
    fn readback(&self, bytes: u64) -> Scratch<'_> {
        self.pool.take(&self.device, bytes.max(4), wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)
    }

    fn bind(&self, k: usize, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.kernels[k].bind_layout,
            entries: &entries,
        })
    }

    /// Workgroup counts (x, z) of 256 threads covering `items` threads: x up to the device limit.
    fn grid(&self, items: usize) -> (u32, u32) {
        let groups = items.div_ceil(GRAD_WG);
        let gx = groups.min(self.limits.max_compute_workgroups_per_dimension as usize).max(1);
        (gx as u32, groups.div_ceil(gx) as u32)
    }

    fn dispatch<'a>(
        enc: &mut wgpu::CommandEncoder,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        bg: &wgpu::BindGroup,
        grid: impl Into<Grid<'a>>,
    ) {
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bg, &[]);
        match grid.into() {
            Grid::Direct(x, y, z) => pass.dispatch_workgroups(x, y, z),
            Grid::Indirect(args) => pass.dispatch_workgroups_indirect(args, 0),
        }
    }

    /// Maps the given staging buffers after the last submission and returns their contents.
    async fn read(&self, bufs: &[&wgpu::Buffer]) -> Result<Vec<Vec<f32>>, Error> {
        let mut rxs = Vec::new();
        for b in bufs {
            let (tx, rx) = futures::channel::oneshot::channel();
            b.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            rxs.push(rx);
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device failed: {e}")))?;
        let mut out = Vec::new();
        for (b, rx) in bufs.iter().zip(rxs) {
            rx.await
                .map_err(|_| Error::Gpu("the device dropped a readback".into()))?
                .map_err(|e| Error::Gpu(format!("reading back a buffer failed: {e}")))?;
            let view = b.get_mapped_range(..).map_err(|e| Error::Gpu(format!("mapping a buffer failed: {e:?}")))?;
            out.push(bytemuck::cast_slice::<u8, f32>(&view).to_vec());
            drop(view);
            b.unmap();
        }
        Ok(out)
    }

    fn check_lost(&self) -> Result<(), Error> {
        match self.lost.lock().ok().and_then(|mut l| l.take()) {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    /// Records the sort of `a` (keys, payloads) in segments of `len`: the bitonic network for short
    /// segments, else the four passes of the segmented radix sort using `b` as scratch. The sorted
    /// result ends in `a`. With `varlen` = (lengths, args), segment `s` sorts only its first
    /// `lengths[s].x` keys (a `vec4<u32>` each): the radix sort is dispatched over the tiles `args`
    /// holds and leaves the rest of the segment as it was, the bitonic network overwrites it with
    /// padding (key NONE). Nothing after the sorted keys may be read as a key. (wgpu keeps every
    /// buffer a recorded command uses alive until it ran.)
    #[allow(clippy::too_many_arguments)]
    fn record_sort(
        &self,
        enc: &mut wgpu::CommandEncoder,
        a: (&wgpu::Buffer, &wgpu::Buffer),
        b: (&wgpu::Buffer, &wgpu::Buffer),
        segs: usize,
        len: usize,
        algo: SortAlgo,
        varlen: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    ) {
        let bitonic = match algo {
            SortAlgo::Auto => len <= self.bitonic_upto,
            SortAlgo::Bitonic => true,
            SortAlgo::Radix => false,
        };
        let tiles = len.div_ceil(SORT_TILE);
        let varlen_flag = u32::from(varlen.is_some());
        // without per-segment lengths binding 7 is not read, but must still hold one vec4
        let none = self.scratch(16);
        let (seglen, tile_grid) = match varlen {
            Some((seglen, args)) => (seglen, Grid::Indirect(args)),
            None => (&*none, Grid::Direct(tiles as u32, segs as u32, 1)),
        };
        if bitonic && len <= BITONIC_MAX {
            // one workgroup per segment, sorting `a` in place (`b` is bound but unused)
            let sp =
                SortParams { len: len as u32, segs: segs as u32, tiles: 1, shift: 0, varlen: varlen_flag, pad: [0; 3] };
            let ub = self.uniform(&sp);
            // unused read-write bindings need distinct buffers (WebGPU forbids writable aliases)
            let [d0, d1] = self.unused();
            let bg = self.bind(K_BITONIC, &[&ub, b.0, b.1, &d0, &d1, a.0, a.1, seglen]);
            Self::dispatch(enc, "bitonic sort", &self.pipeline(K_BITONIC, Spec::default()), &bg, (segs as u32, 1, 1));
            return;
        }
        let counts = self.scratch((segs * 256 * tiles * 4) as u64);
        let totals = self.scratch((segs * 256 * 4) as u64);
        for pass in 0..4u32 {
            let (src, dst) = if pass % 2 == 0 { (a, b) } else { (b, a) };
            let sp = SortParams {
                len: len as u32,
                segs: segs as u32,
                tiles: tiles as u32,
                shift: 8 * pass,
                varlen: varlen_flag,
                pad: [0; 3],
            };
            let ub = self.uniform(&sp);
            let bufs = [&ub, src.0, src.1, &counts, &totals, dst.0, dst.1, seglen];
            for (k, label, dims) in [
                (K_RADIX_COUNT, "radix count", tile_grid),
                (K_RADIX_SCAN, "radix scan", Grid::Direct(segs as u32, 16, 1)),
                (K_RADIX_DIGITS, "radix digits", Grid::Direct(segs as u32, 1, 1)),
                (K_RADIX_SCATTER, "radix scatter", tile_grid),
            ] {
                let bg = self.bind(k, &bufs);
                Self::dispatch(enc, label, &self.pipeline(k, Spec::default()), &bg, dims);
            }
        }
    }

    /// Records the Lovász keys: `segs` segments of `len` (key, payload) pairs in fresh buffers.
    #[allow(clippy::too_many_arguments)]
    fn record_lovasz_keys(
        &self,
        enc: &mut wgpu::CommandEncoder,
        logits: &wgpu::Buffer,
        target: &wgpu::Buffer,
        ubuf: &wgpu::Buffer,
        (n, c, s): (usize, usize, usize),
        softmax: bool,
        per_image: bool,
        lw: &wgpu::Buffer,
    ) -> Result<LovaszKeys<'_>, Error> {
        let (segs, len) = plan::lovasz_segments(softmax, per_image, n, c, s);
        let maxd = self.limits.max_compute_workgroups_per_dimension as usize;
        if len.div_ceil(SORT_TILE) > maxd || segs > maxd {
            return Err(Error::Input(format!(
                "lovasz: {segs} segments of {len} elements exceed the device's {maxd} workgroups per dimension"
            )));
        }
        let total = (segs * len * 4) as u64;
        let (keys, vals) = (self.scratch(total), self.scratch(total));
        let segsum = self.scratch((segs * 16) as u64);
        // compact_scan fills it before anything reads it; cleared all the same (it is tiny)
        enc.clear_buffer(&segsum, 0, None);
        let lbuf =
            self.uniform(&LovParams { len: len as u32, segs: segs as u32, tiles: 1, per_image: per_image as u32 });
        let [d0, d1] = self.unused();
        let bg = self.bind(K_LOVASZ_KEYS, &[logits, target, ubuf, &lbuf, &keys, &vals, &d0, &segsum, lw, &d1]);
        let (gx, gz) = self.grid(s);
        let spec = Spec { softmax, ..Spec::default() };
        Self::dispatch(enc, "lovasz keys", &self.pipeline(K_LOVASZ_KEYS, spec), &bg, (gx, n as u32, gz));
        Ok(LovaszKeys { keys, vals, segsum, segs, len, per_image, softmax })
    }

    /// Lovász-Softmax: marks the background elements past each segment's last foreground element
    /// (Jaccard weight zero; see `threshold.wgsl`) as dropped, for the compaction to leave out.
    fn record_lovasz_drop(&self, enc: &mut wgpu::CommandEncoder, lk: &LovaszKeys) {
        let tiles = lk.len.div_ceil(SORT_TILE);
        let thr = self.scratch((lk.segs * 8) as u64);
        enc.clear_buffer(&thr, 0, None);
        let lbuf =
            self.uniform(&LovParams { len: lk.len as u32, segs: lk.segs as u32, tiles: tiles as u32, per_image: 0 });
        let bufs = [&lbuf, &*lk.keys, &*lk.vals, &*thr];
        for (k, label) in [(K_LOVASZ_THRESHOLD, "lovasz threshold"), (K_LOVASZ_DROP, "lovasz drop")] {
            let bg = self.bind(k, &bufs);
            Self::dispatch(enc, label, &self.pipeline(k, Spec::default()), &bg, (tiles as u32, lk.segs as u32, 1));
        }
    }

    /// Moves the elements to sort (key not NONE: a positive error, not dropped) to the front of
    /// their segment in new `segs` x `len` arrays, keeping their order (nothing is written after
    /// them); the kept
    /// count of each segment lands in `segsum.x` (the sort's per-segment length), the labels of the
    /// others in `.y` (fg) and `.z` (bg). Everything stays on the device: no readback.
    fn record_compact(
        &self,
        enc: &mut wgpu::CommandEncoder,
        lk: &LovaszKeys,
    ) -> (Scratch<'_>, Scratch<'_>, Scratch<'_>) {
        let tiles = lk.len.div_ceil(SORT_TILE);
        let tilecnt = self.scratch((lk.segs * tiles * 16) as u64);
        let total = (lk.segs * lk.len * 4) as u64;
        let (kc, vc) = (self.scratch(total), self.scratch(total));
        let lbuf =
            self.uniform(&LovParams { len: lk.len as u32, segs: lk.segs as u32, tiles: tiles as u32, per_image: 0 });
        let bufs = [&lbuf, &*lk.keys, &*lk.vals, &*kc, &*vc, &*tilecnt, &*lk.segsum];
        let grid = (tiles as u32, lk.segs as u32, 1);
        for (k, label, dims) in [
            (K_COMPACT_COUNT, "compact count", grid),
            (K_COMPACT_SCAN, "compact scan", (lk.segs as u32, 1, 1)),
            (K_COMPACT_SCATTER, "compact scatter", grid),
        ] {
            let bg = self.bind(k, &bufs);
            Self::dispatch(enc, label, &self.pipeline(k, Spec::default()), &bg, dims);
        }
        // the passes over the compacted segments cover only the longest one's tiles
        let args = self.scratch(16);
        let unused = self.scratch(16);
        let bg = self.bind(K_COMPACT_ARGS, &[&lbuf, &lk.keys, &lk.vals, &args, &unused, &tilecnt, &lk.segsum]);
        Self::dispatch(enc, "compact args", &self.pipeline(K_COMPACT_ARGS, Spec::default()), &bg, (1, 1, 1));
        (kc, vc, args)
    }

    /// Records the sort of the compacted `keys`/`vals` (`segs` x `len`, `segsum.x` keys each), the
    /// segmented scan of the sorted labels, the Jaccard weights (into `lw`) and the value of each
    /// segment (into `lk.segsum`).
    #[allow(clippy::too_many_arguments)]
    fn record_lovasz_rank(
        &self,
        enc: &mut wgpu::CommandEncoder,
        logits: &wgpu::Buffer,
        target: &wgpu::Buffer,
        ubuf: &wgpu::Buffer,
        lk: &LovaszKeys,
        (keys, vals, args): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
        lw: &wgpu::Buffer,
    ) {
        let (segs, len) = (lk.segs, lk.len);
        let tiles = len.div_ceil(SORT_TILE);
        let tilecnt = self.scratch((segs * tiles * 8) as u64);
        let vpart = self.scratch((segs * tiles * 4) as u64);
        let lbuf = self.uniform(&LovParams {
            len: len as u32,
            segs: segs as u32,
            tiles: tiles as u32,
            per_image: lk.per_image as u32,
        });
        // the uncompacted keys are spent: they are the sort's scratch
        let sorted = Some((&*lk.segsum, args));
        self.record_sort(enc, (keys, vals), (&lk.keys, &lk.vals), segs, len, SortAlgo::Auto, sorted);
        let spec = Spec { softmax: lk.softmax, ..Spec::default() };
        let bufs = [logits, target, ubuf, &lbuf, keys, vals, &tilecnt, &lk.segsum, lw, &vpart];
        // count and weights cover the longest segment's tiles; scan and value each segment's own
        let per_seg = Grid::Direct(segs as u32, 1, 1);
        for (k, label, dims) in [
            (K_LOVASZ_COUNT, "lovasz count", Grid::Indirect(args)),
            (K_LOVASZ_SCAN, "lovasz scan", per_seg),
            (K_LOVASZ_WEIGHTS, "lovasz weights", Grid::Indirect(args)),
            (K_LOVASZ_VALUE, "lovasz value", per_seg),
        ] {
            let bg = self.bind(k, &bufs);
            Self::dispatch(enc, label, &self.pipeline(k, spec), &bg, dims);
        }
    }

    async fn run(
        &self,
        input: &Input<'_>,
        logits: &wgpu::Buffer,
        target: &wgpu::Buffer,
        plan: &StatsPlan,
        exprs: &[LossExpr],
        grads: GradMode,
    ) -> Result<Vec<Evaluation>, Error> {
        let (n, c, s) = (input.batch(), input.classes(), input.spatial());
        let tiles = s.div_ceil(TILE);
        let softmax = input.mode() == Mode::Multiclass;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);

        // 1. Statistics: fused pass, final reduction, readback of N x C x K sums.
        let stats_terms: Vec<TermParams> = plan.slots.iter().map(|s| s.params(0.0, 1.0)).collect();
        let stats_cw: Vec<f32> = plan.slots.iter().flat_map(|s| s.weights.iter().map(|&w| w as f32)).collect();
        let params = Params { n: n as u32, c: c as u32, s: s as u32, tiles: tiles as u32 };
        let spec = Spec {
            softmax,
            kinds: stats_terms.iter().fold(0, |k, t| k | 1 << t.kind),
            nterms: stats_terms.len() as u32,
            sensspec: plan.needs_sensspec,
            lovasz: 0,
        };
        let ubuf = self.uniform(&params);
        let tbuf = self.storage("terms", bytemuck::cast_slice(&stats_terms));
        let cbuf = self.storage("class weights", bytemuck::cast_slice(&stats_cw));
        let partials = self.scratch((n * tiles * c * K * 4) as u64);
        let sums_bytes = (n * c * K * 4) as u64;
        let sums = self.scratch(sums_bytes);
        let sums_read = self.readback(sums_bytes);
        let bg_stats = self.bind(K_STATS, &[logits, target, &ubuf, &tbuf, &cbuf, &partials]);
        let bg_reduce = self.bind(K_REDUCE, &[&ubuf, &partials, &sums]);
        let mut enc =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("segloss stats") });
        Self::dispatch(&mut enc, "stats", &self.pipeline(K_STATS, spec), &bg_stats, (tiles as u32, n as u32, 1));
        Self::dispatch(&mut enc, "reduce", &self.pipeline(K_REDUCE, spec), &bg_reduce, (c as u32, n as u32, 1));
        enc.copy_buffer_to_buffer(&sums, 0, &sums_read, 0, sums_bytes);
        // Lovász: keys, segmented sort and Jaccard weights, recorded into the same submission.
        // per-element Jaccard weights; a placeholder binding when no term is a Lovász loss
        let lw_bytes = if plan.lovasz.is_some() { n * c * s * 4 } else { 32 };
        let lw = self.scratch(lw_bytes as u64);
        let mut lov = None;
        if let Some(lp) = &plan.lovasz {
            // lovasz_weights writes the weight of every sorted element; the others (dropped: no
            // loss, no gradient; ignored) keep the zero of this clear, which the gradient reads
            enc.clear_buffer(&lw, 0, None);
            let lk = self.record_lovasz_keys(&mut enc, logits, target, &ubuf, (n, c, s), softmax, lp.per_image, &lw)?;
            let sb = (lk.segs * 16) as u64;
            let rb = self.readback(sb);
            if softmax {
                // background past each segment's last foreground element: weight zero, not sorted
                self.record_lovasz_drop(&mut enc, &lk);
            }
            // only the elements with loss or gradient are sorted: the hinge's positive errors, the
            // softmax's errors down to the last foreground element
            let (kc, vc, args) = self.record_compact(&mut enc, &lk);
            self.record_lovasz_rank(&mut enc, logits, target, &ubuf, &lk, (&kc, &vc, &args), &lw);
            enc.copy_buffer_to_buffer(&lk.segsum, 0, &rb, 0, sb);
            lov = Some((lk, rb));
        }
        self.queue.submit([enc.finish()]);
        let mut reads: Vec<&wgpu::Buffer> = vec![&sums_read];
        reads.extend(lov.as_ref().map(|l| &*l.1));
        let mut raw = self.read(&reads).await?;
        let lovasz = (raw.len() > 1).then(|| plan::LovaszSums {
            segs: raw[1]
                .chunks(4)
                .map(|q| [f64::from(q[0]), f64::from(q[1].to_bits()), f64::from(q[2].to_bits())])
                .collect(),
        });
        let sums64: Vec<f64> = raw.swap_remove(0).iter().map(|&v| v as f64).collect();
        let view = Sums { data: &sums64, n, c };
        let fin: Vec<_> = exprs.iter().map(|e| finalize(e, plan, &view, input.mode(), lovasz.as_ref())).collect();

        // 2. Gradients: one elementwise pass per expression, one submission.
        let mut grad_reads = Vec::new();
        if grads != GradMode::Skip {
            let total = n * c * s;
            let (gx, gz) = self.grid(s);
            let mut enc =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("segloss grad") });
            for (f, e) in fin.iter().zip(exprs) {
                debug_assert!(f.grad_terms.len() <= MAX_GRAD_TERMS);
                let terms: Vec<TermParams> = f.grad_terms.iter().map(|(_, t)| *t).collect();
                let cw: Vec<f32> = f
                    .grad_terms
                    .iter()
                    .flat_map(|(slot, _)| plan.slots[*slot].weights.iter().map(|&w| w as f32))
                    .collect();
                let lovasz = match &plan.lovasz {
                    Some(lp) if e.has_lovasz() => 1 + u32::from(lp.per_image),
                    _ => 0,
                };
                let gspec = Spec {
                    softmax,
                    kinds: terms.iter().fold(0, |k, t| k | 1 << t.kind),
                    nterms: terms.len() as u32,
                    sensspec: false,
                    lovasz,
                };
                let tb = self.storage("grad terms", bytemuck::cast_slice(&terms));
                let cb = self.storage("grad class weights", bytemuck::cast_slice(&cw));
                let kb = self.storage("coefficients", bytemuck::cast_slice(&f.coefs));
                let bytes = (total * 4) as u64;
                let out = self.scratch(bytes);
                let bg = self.bind(K_GRAD, &[logits, target, &ubuf, &tb, &cb, &kb, &out, &lw]);
                Self::dispatch(&mut enc, "grad", &self.pipeline(K_GRAD, gspec), &bg, (gx, n as u32, gz));
                if grads == GradMode::Read {
                    let rb = self.readback(bytes);
                    enc.copy_buffer_to_buffer(&out, 0, &rb, 0, bytes);
                    grad_reads.push(rb);
                }
            }
            self.queue.submit([enc.finish()]);
            if grads == GradMode::DeviceOnly {
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| Error::Gpu(format!("waiting for the device failed: {e}")))?;
            }
        }
        let read_refs: Vec<&wgpu::Buffer> = grad_reads.iter().map(|b| &**b).collect();
        let mut gvals = if read_refs.is_empty() { Vec::new() } else { self.read(&read_refs).await? };
        if let Some(e) = oom.pop().await {
            return Err(Error::Gpu(format!("out of device memory: {e}")));
        }
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(e.to_string()));
        }
        self.check_lost()?;
        gvals.reverse();
        Ok(fin
            .into_iter()
            .map(|f| Evaluation {
                value: f.value,
                term_values: f.term_values,
                grad: if grads == GradMode::Read { gvals.pop() } else { None },
            })
            .collect())
    }
}
