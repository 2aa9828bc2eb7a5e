//! Gradients through burn's autodiff equal segloss's own, for every loss family, on burn's CPU
//! devices (flex, ndarray: through host memory) and its wgpu device shared with segloss (the
//! tensors' own buffers: no byte through host memory); central finite differences of the values
//! through burn; typed errors on every path.

use burn::tensor::{Device, Int, Tensor, TensorData};
use segloss::{reference, Input, LossExpr, Mode};
use segloss_burn::SegLoss;
use std::sync::{Arc, OnceLock};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// burn's default wgpu device, shared with a segloss engine (set up once per test process,
/// before anything else touches it).
fn shared_wgpu() -> &'static (Device, Arc<segloss::Engine>) {
    static SHARED: OnceLock<(Device, Arc<segloss::Engine>)> = OnceLock::new();
    SHARED.get_or_init(|| segloss_burn::wgpu::init(&Default::default()).expect("a wgpu adapter (lavapipe in CI)"))
}

/// Each device (burn's deprecated ndarray one too: it still ships), and whether the loss should run on its buffers (true) or through host memory.
#[allow(deprecated)]
fn devices() -> Vec<(&'static str, Device, bool)> {
    let mut d = vec![("flex", Device::flex().autodiff(), false), ("ndarray", Device::ndarray().autodiff(), false)];
    if std::env::var("SEGLOSS_BURN_SKIP_WGPU").is_err() {
        d.push(("wgpu", shared_wgpu().0.clone().autodiff(), true));
    }
    d
}

/// One evaluation went the expected way: on the device's buffers with nothing through host
/// memory, or through host memory with the logits, targets and gradient counted.
fn check_path(loss: &SegLoss, on_device: bool, numel: u64, what: &str) {
    let t = loss.transfers();
    if on_device {
        assert_eq!((t.device_calls, t.host_calls, t.host_bytes), (1, 0, 0), "{what}: {t:?}");
    } else {
        assert_eq!((t.device_calls, t.host_calls), (0, 1), "{what}: {t:?}");
        assert!(t.host_bytes >= 8 * numel, "{what}: {t:?}");
    }
}

fn engine() -> Arc<segloss::Engine> {
    Arc::new(segloss::Engine::new_blocking().unwrap())
}

const DENSE: &[&str] = &[
    "bce",
    "0.5*bce+0.5*dice",
    "dice@monai+focal@monai",
    "focal:alpha=0.25",
    "jaccard:log=true",
    "tversky:alpha=0.3,beta=0.7,gamma=1.5",
    "gdice@monai",
    "sensspec",
    "lovasz",
    "bce+lovasz:per_image=true",
];
const MULTICLASS: &[&str] =
    &["ce", "0.8*ce+0.2*dice", "dice@monai", "focal:act=softmax,alpha=0.25", "gdice@monai", "lovasz", "ce+lovasz"];

fn close(a: &[f32], b: &[f64], what: &str) {
    let m = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let d = a.iter().zip(b).fold(0f64, |d, (x, y)| d.max((f64::from(*x) - y).abs()));
    assert!(d <= 1e-9 + 2e-4 * m, "{what}: gradient off by {d:e} of {m:e}");
}

#[test]
fn burn_gradients_equal_seglosss_on_every_loss_family() {
    let engine = engine();
    let mut rng = Rng(7);
    let (n, h, w) = (2usize, 9usize, 11usize);
    for (name, device, on_device) in devices() {
        eprintln!("burn device {name}: {device:?}");
        // binary
        let x: Vec<f32> = (0..n * h * w).map(|_| (rng.next() * 6.0 - 3.0) as f32).collect();
        let g: Vec<f32> = (0..n * h * w).map(|_| (rng.next() < 0.3) as u8 as f32).collect();
        for text in DENSE {
            let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Binary, engine.clone());
            let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 1, h, w]), &device).require_grad();
            let target = Tensor::<4>::from_data(TensorData::new(g.clone(), [n, 1, h, w]), &device);
            let v = loss.forward(logits.clone(), target).unwrap();
            let value = v.clone().into_data().try_to_vec::<f32>().unwrap()[0];
            let grads = v.backward();
            let got = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let input = Input::dense(&x, &g, &[n, 1, h, w], Mode::Binary).unwrap();
            let want = reference::evaluate(&input, &text.parse::<LossExpr>().unwrap()).unwrap();
            assert!((f64::from(value) - want.value).abs() <= 1e-5 + 1e-4 * want.value.abs(), "{name} {text}");
            close(&got, &want.grad, &format!("{name} {text}"));
            check_path(&loss, on_device, x.len() as u64, &format!("{name} {text}"));
            // the path of a device segloss-burn is not built for: through host memory, with the
            // loss made of burn operations
            let host = loss.clone().through_host(true);
            let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 1, h, w]), &device).require_grad();
            let target = Tensor::<4>::from_data(TensorData::new(g.clone(), [n, 1, h, w]), &device);
            let v = host.forward(logits.clone(), target).unwrap();
            let grads = (v * 2.0).backward();
            let got = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let twice: Vec<f64> = want.grad.iter().map(|g| 2.0 * g).collect();
            close(&got, &twice, &format!("{name} {text} through host memory"));
            // (the clone counts with the original: one more call through host memory)
            let t = host.transfers();
            assert_eq!(t.host_calls, if on_device { 1 } else { 2 }, "{t:?}");
        }
        // multiclass with an ignore index, and a scaled upstream gradient
        let c = 4;
        let x: Vec<f32> = (0..n * c * h * w).map(|_| (rng.next() * 6.0 - 3.0) as f32).collect();
        let labels: Vec<i64> =
            (0..n * h * w).map(|i| if i % 7 == 0 { 255 } else { (rng.next() * 4.0) as i64 }).collect();
        for text in MULTICLASS {
            let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Multiclass, engine.clone()).ignore_index(255);
            let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device).require_grad();
            let target = Tensor::<3, Int>::from_data(TensorData::new(labels.clone(), [n, h, w]), &device);
            let v = loss.forward_classes(logits.clone(), target).unwrap();
            let grads = (v * 3.0).backward();
            let got = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let input = Input::labels(&x, &labels, &[n, c, h, w], Some(255)).unwrap();
            let want = reference::evaluate(&input, &text.parse::<LossExpr>().unwrap()).unwrap();
            let scaled: Vec<f64> = want.grad.iter().map(|g| 3.0 * g).collect();
            close(&got, &scaled, &format!("{name} {text} (x3 upstream)"));
            check_path(&loss, on_device, x.len() as u64, &format!("{name} {text}"));
            let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device).require_grad();
            let target = Tensor::<3, Int>::from_data(TensorData::new(labels.clone(), [n, h, w]), &device);
            let v = loss.clone().through_host(true).forward_classes(logits.clone(), target).unwrap();
            let got = logits.grad(&(v * 3.0).backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
            close(&got, &scaled, &format!("{name} {text} through host memory"));
        }
    }
}

#[test]
fn finite_differences_through_burn() {
    let engine = engine();
    for (name, device, _) in devices() {
        finite_differences_on(&device, name, &engine);
    }
}

fn finite_differences_on(device: &Device, name: &str, engine: &Arc<segloss::Engine>) {
    let mut rng = Rng(11);
    let shape = [1usize, 2, 3, 4];
    let x: Vec<f32> = (0..24).map(|_| (rng.next() * 4.0 - 2.0) as f32).collect();
    let g: Vec<f32> = (0..24).map(|_| (rng.next() < 0.4) as u8 as f32).collect();
    for text in ["0.5*bce+0.5*dice", "tversky:alpha=0.3,beta=0.7", "focal"] {
        let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Multilabel, engine.clone());
        let value_at = |x: &[f32]| -> f64 {
            let l = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), device);
            let t = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), device);
            f64::from(loss.forward(l, t).unwrap().into_data().try_to_vec::<f32>().unwrap()[0])
        };
        let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), device).require_grad();
        let t = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), device);
        let grads = loss.forward(logits.clone(), t).unwrap().backward();
        let got = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for i in 0..x.len() {
            let h = 1e-2f32;
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (value_at(&a) - value_at(&b)) / f64::from(a[i] - b[i]);
            assert!(
                (fd - f64::from(got[i])).abs() <= 2e-4 + 2e-2 * fd.abs(),
                "{name} {text} [{i}]: {} vs {fd}",
                got[i]
            );
        }
    }
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    let engine = engine();
    for (name, device, _) in devices() {
        let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Binary, engine.clone());
        let l = Tensor::<4>::zeros([1, 1, 2, 2], &device);
        let t = Tensor::<4>::ones([1, 1, 2, 2], &device);
        assert!(loss.forward(l.clone(), t.clone()).unwrap_err().to_string().contains("multiclass"), "{name}");
        let loss = SegLoss::with_engine("dice".parse().unwrap(), Mode::Binary, engine.clone());
        let bad = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 2.0, 1.0, 0.0], [1, 1, 2, 2]), &device);
        let e = loss.forward(l.clone(), bad).unwrap_err().to_string();
        assert!(e.contains("outside [0, 1]"), "{name}: {e}");
        // a class index past the classes, read on the device on the shared wgpu device
        let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone());
        let l3 = Tensor::<4>::zeros([1, 3, 2, 2], &device);
        let labels = Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1, 7, 2], [1, 2, 2]), &device);
        let e = loss.forward_classes(l3.clone(), labels).unwrap_err().to_string();
        assert!(e.contains("class"), "{name}: {e}");
        // and the loss still works afterwards
        let labels = Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 2], [1, 2, 2]), &device);
        let v = loss.forward_classes(l3, labels).unwrap().into_data().try_to_vec::<f32>().unwrap()[0];
        assert!((f64::from(v) - 3f64.ln()).abs() < 1e-6, "{name}: {v}");
    }
    assert!(SegLoss::new("dicee", Mode::Binary).is_err());
}

/// (review) A burn loss is one number of one level: `reduction=none` (whose entries came back as
/// their mean, silently, with a readback on the shared device that the transfers did not count)
/// and `deep(...)` (level 0 alone through host memory, an error on the shared device) are refused
/// on every path, when the loss is made from text and when it is evaluated.
#[test]
fn unreduced_entries_and_deep_supervision_are_refused_on_every_path() {
    let engine = engine();
    for text in ["ce:reduction=none", "bce:reduction=none", "deep:weights=0.5;0.3(dice)"] {
        let e = SegLoss::new(text, Mode::Binary).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("one number") || e.contains("deep supervision"), "{text}: {e}");
    }
    for (name, device, _) in devices() {
        for text in ["bce:reduction=none", "deep:weights=0.5;0.3(dice)"] {
            let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Binary, engine.clone());
            let l = Tensor::<4>::zeros([1, 1, 2, 2], &device).require_grad();
            let t = Tensor::<4>::ones([1, 1, 2, 2], &device);
            match loss.forward(l, t) {
                Err(segloss_burn::Error::Segloss(segloss::Error::Unsupported(m))) => {
                    assert!(m.contains(text.split(['(', ':']).next().unwrap()), "{name} {text}: {m}")
                }
                r => panic!("{name} {text}: {:?}", r.map(|_| ())),
            }
            assert_eq!(loss.transfers().host_bytes, 0, "{name} {text}: nothing read");
        }
        let loss = SegLoss::with_engine("ce:reduction=none".parse().unwrap(), Mode::Multiclass, engine.clone());
        let labels = Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 2], [1, 2, 2]), &device);
        let e = loss.forward_classes(Tensor::<4>::zeros([1, 3, 2, 2], &device), labels).unwrap_err().to_string();
        assert!(e.contains("reduction=none"), "{name}: {e}");
    }
}

/// (review) A loss made from text opens segloss's default engine at its first evaluation through
/// host memory, not when it is made: on a shared wgpu device it opens none (each opened a second
/// device and poll thread on the same GPU).
#[test]
fn a_loss_opens_its_own_engine_only_when_it_goes_through_host_memory() {
    let loss = SegLoss::new("bce", Mode::Binary).unwrap();
    assert!(!loss.engine_is_open());
    let t = || Tensor::<4>::ones([1, 1, 2, 2], &Device::flex());
    if std::env::var("SEGLOSS_BURN_SKIP_WGPU").is_err() {
        let wgpu = shared_wgpu().0.clone();
        let l = Tensor::<4>::zeros([1, 1, 2, 2], &wgpu);
        loss.forward(l, Tensor::<4>::ones([1, 1, 2, 2], &wgpu)).unwrap();
        assert!(!loss.engine_is_open(), "on the shared wgpu device");
    }
    loss.forward(Tensor::<4>::zeros([1, 1, 2, 2], &Device::flex()), t()).unwrap();
    assert!(loss.engine_is_open(), "through host memory");
    let from_config = segloss_burn::SegLossConfig::new("dice".into(), Mode::Binary).init().unwrap();
    assert!(!from_config.engine_is_open());
}

#[test]
fn a_loss_of_untracked_logits_skips_the_gradient() {
    let engine = engine();
    let shape = [2usize, 1, 5, 7];
    let numel = 70u64;
    let mut rng = Rng(5);
    let x: Vec<f32> = (0..numel).map(|_| (rng.next() * 4.0 - 2.0) as f32).collect();
    let g: Vec<f32> = (0..numel).map(|_| (rng.next() < 0.3) as u8 as f32).collect();
    let want = reference::evaluate(&Input::dense(&x, &g, &shape, Mode::Binary).unwrap(), &"bce+dice".parse().unwrap())
        .unwrap()
        .value;
    for (name, device, on_device) in devices() {
        let loss = SegLoss::with_engine("bce+dice".parse().unwrap(), Mode::Binary, engine.clone());
        // a validation loss: logits that need no gradient
        let l = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device);
        let t = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
        let v = loss.forward(l, t).unwrap().into_data().try_to_vec::<f32>().unwrap()[0];
        assert!((f64::from(v) - want).abs() < 1e-5, "{name}: {v} vs {want}");
        let tr = loss.transfers();
        if on_device {
            assert_eq!((tr.device_calls, tr.host_bytes), (1, 0), "{name}: {tr:?}");
        } else {
            // the logits and the masks went to the host; no gradient came back
            assert_eq!((tr.host_calls, tr.host_bytes), (1, 8 * numel), "{name}: {tr:?}");
        }
    }
}

#[test]
fn half_precision_logits_get_a_half_precision_gradient() {
    let engine = engine();
    let device = Device::flex().autodiff();
    let shape = [1usize, 1, 4, 6];
    let mut rng = Rng(9);
    let x: Vec<f32> = (0..24).map(|_| half::f16::from_f32((rng.next() * 4.0 - 2.0) as f32).to_f32()).collect();
    let g: Vec<f32> = (0..24).map(|_| (rng.next() < 0.4) as u8 as f32).collect();
    let want = reference::evaluate(&Input::dense(&x, &g, &shape, Mode::Binary).unwrap(), &"bce+dice".parse().unwrap())
        .unwrap();
    let loss = SegLoss::with_engine("bce+dice".parse().unwrap(), Mode::Binary, engine);
    // the extension's path, and the loss made of burn operations through host memory (it
    // panicked on flex: an f32 gradient times f16 logits)
    for loss in [loss.clone(), loss.through_host(true)] {
        let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device)
            .cast(burn::tensor::FloatDType::F16)
            .require_grad();
        assert_eq!(logits.dtype(), burn::tensor::DType::F16);
        let target = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
        let v = loss.forward(logits.clone(), target).unwrap();
        assert_eq!(v.dtype(), burn::tensor::DType::F16);
        let grad = logits.grad(&v.backward()).unwrap();
        assert_eq!(grad.dtype(), burn::tensor::DType::F16);
        let got = grad.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let m = want.grad.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&want.grad) {
            assert!((f64::from(*a) - b).abs() <= 2e-3 * m + 1e-6, "{a} vs {b}");
        }
    }
}

/// (review) Through host memory the loss was `value + sum((x - detach(x)) g)` in the logits'
/// type: with f16 logits a gradient entry past 65504 was infinite there, and 0 times it made the
/// value NaN. The value is segloss's (0 here), the gradient f16's infinity.
#[test]
fn a_half_precision_gradient_past_its_range_leaves_the_value_finite() {
    let engine = engine();
    let device = Device::flex().autodiff();
    let shape = [1usize, 1, 1, 1];
    // d/dx = 2e5 (p - 1) - 2e5 (p - 1/2) = -1e5 at any x; the value 2e5 (-x / 2) = 0 at x = 0
    let text = "200000*bce+-200000*bce:label_smoothing=1";
    let want =
        reference::evaluate(&Input::dense(&[0.0], &[1.0], &shape, Mode::Binary).unwrap(), &text.parse().unwrap())
            .unwrap();
    assert!(want.value.abs() < 1e-6 && (want.grad[0] + 1e5).abs() < 1.0, "{want:?}");
    let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Binary, engine).through_host(true);
    let logits = Tensor::<4>::from_data(TensorData::new(vec![0f32], shape), &device)
        .cast(burn::tensor::FloatDType::F16)
        .require_grad();
    let target = Tensor::<4>::from_data(TensorData::new(vec![1f32], shape), &device);
    let v = loss.forward(logits.clone(), target).unwrap();
    let value = v.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
    assert!(value.abs() < 1e-3, "value {value}");
    let grad = logits.grad(&v.backward()).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(grad, [f32::NEG_INFINITY]);
}

#[test]
fn targets_of_another_shape_or_device_are_typed_errors() {
    let engine = engine();
    let all = devices();
    for (name, device, _) in &all {
        let loss = SegLoss::with_engine("dice".parse().unwrap(), Mode::Binary, engine.clone());
        let l = Tensor::<4>::zeros([2, 1, 3, 5], device);
        // the same number of elements in another shape (H and W swapped; N and C swapped)
        for dims in [[2, 1, 5, 3], [1, 2, 3, 5]] {
            let t = Tensor::<4>::ones(dims, device);
            for l in [l.clone(), l.clone().require_grad()] {
                for host in [false, true] {
                    let e = loss.clone().through_host(host).forward(l.clone(), t.clone()).unwrap_err();
                    assert!(e.to_string().contains("shape"), "{name} {dims:?}: {e}");
                }
            }
        }
        let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone());
        let l = Tensor::<4>::zeros([2, 3, 3, 5], device);
        for dims in [[2, 5, 3], [3, 2, 5]] {
            let t = Tensor::<3, Int>::zeros(dims, device);
            let e = loss.forward_classes(l.clone(), t).unwrap_err();
            assert!(e.to_string().contains("class indices"), "{name} {dims:?}: {e}");
        }
        let e = loss.forward_classes(l.clone(), Tensor::<1, Int>::zeros([30], device)).unwrap_err();
        assert!(e.to_string().contains("class indices"), "{name}: {e}");
        // [N, 1, S...] (MONAI's) is accepted, with [N, S...]'s value
        let flat = loss.forward_classes(l.clone(), Tensor::<3, Int>::zeros([2, 3, 5], device)).unwrap();
        let one = loss.forward_classes(l.clone(), Tensor::<4, Int>::zeros([2, 1, 3, 5], device)).unwrap();
        let value = |v: Tensor<1>| v.into_data().try_to_vec::<f32>().unwrap()[0];
        assert_eq!(value(flat), value(one), "{name}");
        // a target on the same device without autodiff: the same value
        let plain = device.clone().without_autodiff();
        let l = Tensor::<4>::zeros([2, 1, 3, 5], device).require_grad();
        let loss = SegLoss::with_engine("dice".parse().unwrap(), Mode::Binary, engine.clone());
        let a = loss.forward(l.clone(), Tensor::<4>::ones([2, 1, 3, 5], device)).unwrap();
        let b = loss.forward(l, Tensor::<4>::ones([2, 1, 3, 5], &plain)).unwrap();
        assert_eq!(value(a), value(b), "{name}");
        // a target on another device
        for (other, od, _) in &all {
            if other == name {
                continue;
            }
            let t = Tensor::<4>::ones([2, 1, 3, 5], od);
            let loss = SegLoss::with_engine("dice".parse().unwrap(), Mode::Binary, engine.clone());
            let e = loss.forward(Tensor::<4>::zeros([2, 1, 3, 5], device), t).unwrap_err();
            assert!(e.to_string().contains("device"), "{name} / {other}: {e}");
            let e = loss
                .forward_classes(Tensor::<4>::zeros([2, 3, 3, 5], device), Tensor::<3, Int>::zeros([2, 3, 5], od))
                .unwrap_err();
            assert!(e.to_string().contains("device"), "{name} / {other}: {e}");
        }
    }
}

#[test]
fn an_ignore_index_no_unsigned_label_can_equal_ignores_nothing_on_every_device() {
    let engine = engine();
    let (n, c, h, w) = (2usize, 3usize, 4usize, 6usize);
    let mut rng = Rng(13);
    let x: Vec<f32> = (0..n * c * h * w).map(|_| (rng.next() * 4.0 - 2.0) as f32).collect();
    let y: Vec<i64> = (0..n * h * w).map(|_| (rng.next() * 3.0) as i64).collect();
    let want = reference::evaluate(&Input::labels(&x, &y, &[n, c, h, w], None).unwrap(), &"ce".parse().unwrap())
        .unwrap()
        .value;
    for (name, device, _) in devices() {
        for (ignore, dtype) in [(-100i64, burn::tensor::IntDType::U32), (1 << 40, burn::tensor::IntDType::I32)] {
            let loss =
                SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone()).ignore_index(ignore);
            let l = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device);
            let t = Tensor::<3, Int>::from_data(TensorData::new(y.clone(), [n, h, w]), &device).cast(dtype);
            let v = loss.forward_classes(l, t).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
            assert!((f64::from(v) - want).abs() < 1e-5, "{name} {ignore} {dtype:?}: {v} vs {want}");
        }
    }
}

/// Class indices `[1, 2, 2]` made in `dtype` (64-bit: as they are, past the i32 range too).
fn labels64(v: &[i64], dtype: burn::tensor::DType, device: &Device) -> Tensor<3, Int> {
    let data = match dtype {
        burn::tensor::DType::U64 => TensorData::new(v.iter().map(|&k| k as u64).collect::<Vec<_>>(), [1, 2, 2]),
        _ => TensorData::new(v.to_vec(), [1, 2, 2]),
    };
    Tensor::<3, Int>::from_data(data, (device, dtype))
}

#[test]
fn sixty_four_bit_class_indices_past_i32_are_errors_or_ignored_as_on_the_host() {
    use burn::tensor::DType::{I64, U64};
    let engine = engine();
    let l = |device: &Device| Tensor::<4>::zeros([1, 3, 2, 2], device);
    let value = |r: Result<Tensor<1>, segloss_burn::Error>| -> f32 {
        r.unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0]
    };
    for (name, device, _) in devices() {
        for dtype in [I64, U64] {
            // 2^32 + 2 would wrap to class 2 in a 32-bit read
            let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone());
            let e = loss.forward_classes(l(&device), labels64(&[0, 1, (1 << 32) + 2, 2], dtype, &device));
            let e = e.unwrap_err().to_string();
            assert!(e.contains("class index"), "{name} {dtype:?}: {e}");
            // an ignore index past i32 ignores its pixels, and only them
            let loss =
                SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone()).ignore_index(1 << 40);
            let v = value(loss.forward_classes(l(&device), labels64(&[0, 1, 1 << 40, 2], dtype, &device)));
            assert!((f64::from(v) - 3f64.ln()).abs() < 1e-6, "{name} {dtype:?}: {v}");
            let e = loss.forward_classes(l(&device), labels64(&[0, 1, (1 << 40) + 1, 2], dtype, &device));
            let e = e.unwrap_err().to_string();
            assert!(e.contains("class index"), "{name} {dtype:?}: {e}");
            // i32::MAX as the ignore index (the u64 path's own moved ignore index)
            let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone())
                .ignore_index(i64::from(i32::MAX));
            let v = value(loss.forward_classes(l(&device), labels64(&[0, 1, i64::from(i32::MAX), 2], dtype, &device)));
            assert!((f64::from(v) - 3f64.ln()).abs() < 1e-6, "{name} {dtype:?}: {v}");
            let e = loss.forward_classes(l(&device), labels64(&[0, 1, 1 << 33, 2], dtype, &device));
            assert!(e.unwrap_err().to_string().contains("class index"), "{name} {dtype:?}");
            // and i32::MAX - 1, where the u64 path puts what is past i32
            let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone())
                .ignore_index(i64::from(i32::MAX) - 1);
            let e = loss.forward_classes(l(&device), labels64(&[0, 1, 1 << 33, 2], dtype, &device));
            assert!(e.unwrap_err().to_string().contains("class index"), "{name} {dtype:?}");
        }
        // u64 past i64: an error on every path, not a panic
        for host in [false, true] {
            let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone()).through_host(host);
            let t = Tensor::<3, Int>::from_data(TensorData::new(vec![0u64, 1, u64::MAX, 2], [1, 2, 2]), (&device, U64));
            let e = loss.forward_classes(l(&device), t).unwrap_err().to_string();
            assert!(e.contains("class index"), "{name} through host {host}: {e}");
        }
        // i64: i32::MIN as the ignore index, and -1 as the ignore index beside a far index
        for ignore in [i64::from(i32::MIN), -1] {
            let loss =
                SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone()).ignore_index(ignore);
            let v = value(loss.forward_classes(l(&device), labels64(&[0, 1, ignore, 2], I64, &device)));
            assert!((f64::from(v) - 3f64.ln()).abs() < 1e-6, "{name} ignore {ignore}: {v}");
            let e = loss.forward_classes(l(&device), labels64(&[0, 1, -(1 << 40), 2], I64, &device));
            let e = e.unwrap_err().to_string();
            assert!(e.contains("class index"), "{name} ignore {ignore}: {e}");
        }
    }
}

#[test]
fn a_masked_out_class_gives_a_finite_loss_on_every_path() {
    let engine = engine();
    let x = vec![0.5f32, -1.0, f32::NEG_INFINITY, 0.25, 1.0, 2.0, 0.0, -0.5, 0.3, 0.0, 1.5, -2.0];
    let y = vec![1i64, 2, 1, 0];
    let want = reference::evaluate(&Input::labels(&x, &y, &[1, 3, 2, 2], None).unwrap(), &"ce".parse().unwrap())
        .unwrap()
        .value;
    for (name, device, _) in devices() {
        for host in [false, true] {
            let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Multiclass, engine.clone()).through_host(host);
            let l = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 3, 2, 2]), &device).require_grad();
            let t = Tensor::<3, Int>::from_data(TensorData::new(y.clone(), [1, 2, 2]), &device);
            let v = loss.forward_classes(l.clone(), t).unwrap();
            let got = v.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
            assert!((f64::from(got) - want).abs() < 1e-5, "{name} through host {host}: {got} vs {want}");
            let g = l.grad(&v.backward()).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            assert!(g.iter().all(|v| v.is_finite()) && g[2] == 0.0, "{name} through host {host}: {g:?}");
        }
    }
}

#[test]
fn a_target_that_needs_a_gradient_is_refused() {
    let engine = engine();
    for (name, device, _) in devices() {
        let loss = SegLoss::with_engine("bce".parse().unwrap(), Mode::Binary, engine.clone());
        let l = Tensor::<4>::zeros([1, 1, 2, 2], &device).require_grad();
        let y = Tensor::<4>::zeros([1, 1, 2, 2], &device).require_grad();
        let e = loss.forward(l.clone(), burn::tensor::activation::sigmoid(y.clone())).unwrap_err().to_string();
        assert!(e.contains("detach"), "{name}: {e}");
        // detached, it is a constant target
        assert!(loss.forward(l, burn::tensor::activation::sigmoid(y).detach()).is_ok(), "{name}");
    }
}
