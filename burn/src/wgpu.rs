//! One wgpu device for burn and segloss.
//!
//! [`init`] brings up a wgpu device through cubecl (the runtime of burn's wgpu backend), makes a
//! segloss [`Engine`] on the same `wgpu::Device` and queue, and remembers it: from then on, a
//! [`crate::SegLoss`] given tensors on that device binds their buffers directly (logits, targets,
//! and a gradient buffer allocated from burn's pool), records its passes into the shared queue
//! after burn's pending work has been submitted, and waits once, for the loss value (4 bytes and
//! segloss's status words, which carry the input checks). Call it before burn touches the device:
//! a cubecl device can be set up once.
//!
//! A program that makes its own `wgpu::Device` registers it with cubecl
//! (`cubecl::wgpu::init_device`) and with segloss ([`register`]).

use std::sync::{Arc, Mutex};

use burn::backend::ops::{BoolTensorOps, FloatTensorOps, IntTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::Scalar;
use burn::backend::TensorMetadata;
use burn::tensor::{BoolDType, DType, Device, FloatDType, TensorData};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cubecl::wgpu::{AutoCompiler, AutoGraphicsApi, RuntimeOptions, WgpuDevice, WgpuResource, WgpuServer, WgpuSetup};
use segloss::{BufferInput, BufferSlice, Engine, GradOut, TargetBuffer};

use crate::backend::{burn_err, zeros, Path, Target};
use crate::{Error, Job};

/// The engines of the wgpu devices shared with burn.
static ENGINES: Mutex<Vec<(WgpuDevice, Arc<Engine>)>> = Mutex::new(Vec::new());

/// Sets up burn's wgpu device `device` (`WgpuDevice::default()`: the best adapter) with a segloss
/// engine on the same `wgpu::Device`, and returns burn's [`Device`] for it (add `.autodiff()` to
/// train) and the engine (for [`crate::SegLoss::with_engine`], or segloss's own API).
///
/// ```no_run
/// # fn main() -> Result<(), segloss_burn::Error> {
/// let (device, engine) = segloss_burn::wgpu::init(&Default::default())?;
/// let loss = segloss_burn::SegLoss::with_engine("bce+dice".parse()?, segloss::Mode::Binary, engine);
/// let device = device.autodiff();
/// # let _ = (loss, device); Ok(()) }
/// ```
pub fn init(device: &WgpuDevice) -> Result<(Device, Arc<Engine>), Error> {
    let setup = cubecl::wgpu::try_init_setup::<AutoGraphicsApi>(device, RuntimeOptions::default())
        .map_err(|e| Error::Burn(format!("wgpu setup of {device:?}: {e:?}")))?;
    let engine = register(device.clone(), &setup)?;
    Ok((Device::new(CubeDevice::Wgpu(device.clone())), engine))
}

/// Makes a segloss engine on a setup cubecl runs `device` on (from `cubecl::wgpu::init_device`,
/// or [`init`]), and remembers it for the tensors of that device.
pub fn register(device: WgpuDevice, setup: &WgpuSetup) -> Result<Arc<Engine>, Error> {
    let engine =
        Arc::new(Engine::from_device_blocking(&setup.adapter.get_info(), setup.device.clone(), setup.queue.clone())?);
    let mut engines = ENGINES.lock().map_err(|_| Error::Burn("the engine registry is poisoned".into()))?;
    engines.retain(|(d, _)| *d != device);
    engines.push((device, engine.clone()));
    Ok(engine)
}

/// The engine registered for `device`, if any.
pub fn engine_of(device: &WgpuDevice) -> Option<Arc<Engine>> {
    let engines = ENGINES.lock().ok()?;
    engines.iter().find(|(d, _)| d == device).map(|(_, e)| e.clone())
}

/// The device path: logits, targets and gradient in burn's buffers.
pub(crate) fn device_value_grad(
    logits: FloatTensor<CubeBackend>,
    target: Target<CubeBackend>,
    job: &Job,
    engine: &Engine,
) -> (FloatTensor<CubeBackend>, FloatTensor<CubeBackend>) {
    let (shape, device, dtype) = (logits.shape(), logits.device.clone(), logits.dtype);
    match evaluate(logits, target, job, engine) {
        Ok(out) => {
            job.finish(Ok(Path::Device), 0);
            out
        }
        Err(e) => {
            job.finish(Err(e), 0);
            zeros::<CubeBackend>(shape, &device, dtype)
        }
    }
}

/// `len` elements of a cubecl resource.
fn slice(r: &WgpuResource, len: usize) -> BufferSlice<'_> {
    BufferSlice::new(&r.buffer, r.offset, len as u64)
}

/// A tensor as one dense run of `dtype` elements.
fn dense(t: CubeTensor, dtype: DType) -> CubeTensor {
    let t = if t.dtype == dtype { t } else { cast(t, dtype) };
    into_contiguous(t)
}

/// 64-bit class indices made fit for the device's 32-bit read, on the device. An index past the
/// i32 range would wrap in the cast (4294967298 would read as class 2): it becomes an index that
/// segloss refuses as out of range (i64: -1, or -2 when -1 is the ignore index; u64:
/// `i32::MAX - 1`, or `i32::MAX - 2` when that is the ignore index). An ignore index past the i32
/// range moves to one the other indices no longer hold (i64: `i32::MIN`; u64: `i32::MAX`).
/// Returns the indices and the ignore index to use.
fn narrowed(t: CubeTensor, ignore: Option<i64>) -> (CubeTensor, Option<i64>) {
    let (lo, hi) = (i64::from(i32::MIN), i64::from(i32::MAX));
    let mask = BoolDType::U32;
    // (the out-of-range elements, their replacement, a far ignore index, where it moves)
    let (out, bad, far, moved) = match t.dtype {
        DType::I64 => {
            // i32::MIN itself is out too: it is where a far ignore index moves
            let out = CubeBackend::bool_or(
                CubeBackend::int_greater_elem(t.clone(), Scalar::Int(hi), mask),
                CubeBackend::int_lower_equal_elem(t.clone(), Scalar::Int(lo), mask),
            );
            let bad = if ignore == Some(-1) { -2 } else { -1 };
            (out, bad, ignore.filter(|k| !(lo < *k && *k <= hi)), lo)
        }
        DType::U64 => {
            // i32::MAX is out too, unless it is the ignore index: it is where a far one moves
            let out = if ignore == Some(hi) {
                CubeBackend::int_greater_elem(t.clone(), Scalar::UInt(hi as u64), mask)
            } else {
                CubeBackend::int_greater_equal_elem(t.clone(), Scalar::UInt(hi as u64), mask)
            };
            let bad = if ignore == Some(hi - 1) { hi - 2 } else { hi - 1 };
            (out, bad, ignore.filter(|k| *k > hi), hi)
        }
        _ => return (t, ignore),
    };
    // a value in the tensor's own integer kind (u64 tensors compare with unsigned scalars)
    let u64s = t.dtype == DType::U64;
    let scalar = |v: i64| if u64s { Scalar::UInt(v as u64) } else { Scalar::Int(v) };
    let ignored = far.map(|k| CubeBackend::int_equal_elem(t.clone(), scalar(k), mask));
    let t = CubeBackend::int_mask_fill(t, out, scalar(bad));
    match ignored {
        Some(m) => (CubeBackend::int_mask_fill(t, m, scalar(moved)), Some(moved)),
        None => (t, ignore),
    }
}

fn evaluate(
    logits: CubeTensor,
    target: Target<CubeBackend>,
    job: &Job,
    engine: &Engine,
) -> Result<(CubeTensor, CubeTensor), Error> {
    let dtype = logits.dtype;
    // what segloss would refuse is refused before anything is cast or allocated for it
    segloss::Input::check_shape(logits.shape().as_slice(), job.0.loss.mode())?;
    let logits = dense(logits, DType::F32);
    let shape = logits.shape();
    let numel = shape.num_elements();
    let client = logits.client.clone();
    let device = logits.device.clone();
    let loss = &job.0.loss;
    let mut ignore = loss.ignore_index;
    let (target, class) = match target {
        Target::Mask(t) => (dense(t, DType::F32), None),
        Target::Classes(t) => {
            let (t, kept) = narrowed(t, ignore);
            ignore = kept;
            let dtype = if t.dtype == DType::U32 { DType::U32 } else { DType::I32 };
            (dense(t, dtype), Some(dtype))
        }
    };
    // the gradient's buffer, from burn's pool
    let grad = job.want_grad().then(|| client.empty(numel * 4));
    let x = client.get_resource::<WgpuServer<AutoCompiler>>(logits.handle.clone()).map_err(burn_err)?;
    let t = client.get_resource::<WgpuServer<AutoCompiler>>(target.handle.clone()).map_err(burn_err)?;
    let g = match &grad {
        Some(h) => Some(client.get_resource::<WgpuServer<AutoCompiler>>(h.clone()).map_err(burn_err)?),
        None => None,
    };
    // burn's pending work (what computed the logits) goes to the queue before segloss's
    client.flush().map_err(burn_err)?;
    let tlen = target.shape().num_elements();
    let tb = match class {
        None => TargetBuffer::Dense(slice(t.resource(), tlen)),
        Some(DType::U32) => TargetBuffer::ClassU32(slice(t.resource(), tlen)),
        Some(_) => TargetBuffer::ClassI32(slice(t.resource(), tlen)),
    };
    // an ignore index that no target of this integer type can equal ignores nothing (the host
    // path reads the targets as i64 and finds none)
    let ignore = ignore.filter(|&k| match class {
        None => true,
        Some(DType::U32) => u32::try_from(k).is_ok(),
        Some(_) => i32::try_from(k).is_ok(),
    });
    let input = BufferInput::new(slice(x.resource(), numel), tb, shape.as_slice(), loss.mode(), ignore)?;
    let ev = engine.evaluate_buffers_blocking(
        &input,
        std::slice::from_ref(loss.expr()),
        &[g.as_ref().map_or(GradOut::Skip, |g| GradOut::Write(slice(g.resource(), numel)))],
    )?;
    let value = ev.first().ok_or_else(|| Error::Burn("segloss returned no evaluation".into()))?.value as f32;
    // value and gradient in the logits' float type
    let v = CubeBackend::float_from_data(TensorData::new(vec![value], [1]).convert_dtype(dtype), &device);
    let grad = match grad {
        Some(h) => {
            let g = CubeTensor::new_contiguous(client, device, shape, h, DType::F32);
            if dtype == DType::F32 {
                g
            } else {
                cast(g, dtype)
            }
        }
        None => CubeBackend::float_zeros(shape, &device, FloatDType::from(dtype)),
    };
    Ok((v, grad))
}
