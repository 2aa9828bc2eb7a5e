//! Gradients through burn's autodiff equal segloss's own, for every loss family, on burn's CPU
//! device (flex) and its wgpu device; and central finite differences of the values through burn.

use burn::tensor::{Device, Int, Tensor, TensorData};
use segloss::{reference, Input, LossExpr, Mode};
use segloss_burn::SegLoss;
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn devices() -> Vec<(&'static str, Device)> {
    let mut d = vec![("flex", Device::flex().autodiff())];
    // burn's wgpu device when the machine has an adapter (lavapipe in CI)
    if std::env::var("SEGLOSS_BURN_SKIP_WGPU").is_err() {
        d.push(("wgpu", Device::wgpu(Default::default()).autodiff()));
    }
    d
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
    for (name, device) in devices() {
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
        }
    }
}

#[test]
fn finite_differences_through_burn() {
    let engine = engine();
    let device = Device::flex().autodiff();
    let mut rng = Rng(11);
    let shape = [1usize, 2, 3, 4];
    let x: Vec<f32> = (0..24).map(|_| (rng.next() * 4.0 - 2.0) as f32).collect();
    let g: Vec<f32> = (0..24).map(|_| (rng.next() < 0.4) as u8 as f32).collect();
    for text in ["0.5*bce+0.5*dice", "tversky:alpha=0.3,beta=0.7", "focal"] {
        let loss = SegLoss::with_engine(text.parse().unwrap(), Mode::Multilabel, engine.clone());
        let value_at = |x: &[f32]| -> f64 {
            let l = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), &device);
            let t = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
            f64::from(loss.forward(l, t).unwrap().into_data().try_to_vec::<f32>().unwrap()[0])
        };
        let logits = Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device).require_grad();
        let t = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
        let grads = loss.forward(logits.clone(), t).unwrap().backward();
        let got = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for i in 0..x.len() {
            let h = 1e-2f32;
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (value_at(&a) - value_at(&b)) / f64::from(a[i] - b[i]);
            assert!((fd - f64::from(got[i])).abs() <= 2e-4 + 2e-2 * fd.abs(), "{text} [{i}]: {} vs {fd}", got[i]);
        }
    }
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    let engine = engine();
    let device = Device::flex();
    let loss = SegLoss::with_engine("ce".parse().unwrap(), Mode::Binary, engine.clone());
    let l = Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let t = Tensor::<4>::ones([1, 1, 2, 2], &device);
    assert!(loss.forward(l.clone(), t.clone()).unwrap_err().to_string().contains("multiclass"));
    let loss = SegLoss::with_engine("dice".parse().unwrap(), Mode::Binary, engine);
    let t = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 2.0, 1.0, 0.0], [1, 1, 2, 2]), &device);
    assert!(loss.forward(l, t).unwrap_err().to_string().contains("outside [0, 1]"));
    assert!(SegLoss::new("dicee", Mode::Binary).is_err());
}
