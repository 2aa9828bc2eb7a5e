//! The library values of `tests/golden_next` (PyTorch, smp, MONAI, kornia; copied from the
//! project's shared golden set for the loss-parity additions): every entry segloss implements must
//! match value and gradient on the GPU and on the f64 CPU reference, within the tolerances of
//! `tests/golden_next/README.md`; every `reject` entry must be refused.
//! Deep-supervision cases carry one prediction and one gradient per level.

mod common;

use std::borrow::Cow;
use std::path::PathBuf;

use segloss::{reference, Input, InputKind, LossExpr, Mode, Target};

fn dir() -> PathBuf {
    common::golden_dir().with_file_name("golden_next")
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

struct Case {
    name: String,
    mode: Mode,
    kind: InputKind,
    shape: Vec<usize>,
    x: Vec<f32>,
    target: Target<'static>,
    ignore: Option<i64>,
    /// Levels 1.. of a deep-supervision case.
    levels: Vec<(Vec<f32>, Vec<usize>)>,
    expected: serde_json::Value,
}

impl Case {
    fn input(&self) -> Input<'_> {
        let levels = self.levels.iter().map(|(x, s)| (Cow::Borrowed(&x[..]), s.clone())).collect();
        Input::new(Cow::Borrowed(&self.x), self.target.clone(), &self.shape, self.mode, self.ignore)
            .unwrap()
            .with_levels(levels)
            .unwrap()
            .with_kind(self.kind)
            .unwrap()
    }
}

fn cases() -> Vec<Case> {
    let specs = json(dir().join("specs.json"));
    specs
        .as_object()
        .unwrap()
        .keys()
        .map(|name| {
            let d = dir().join(name);
            let case = json(d.join("case.json"));
            let mode: Mode = case["mode"].as_str().unwrap().parse().unwrap();
            let files = case["input_files"].as_array().unwrap();
            let (shape, x) = common::read_f32(&d.join(files[0].as_str().unwrap()));
            let target = if mode == Mode::Multiclass {
                Target::Labels(Cow::Owned(common::read_i64(&d.join("target.npy")).1))
            } else {
                Target::Dense(Cow::Owned(common::read_f32(&d.join("target.npy")).1))
            };
            let kind = if case["input_kind"] == "probs" { InputKind::Probs } else { InputKind::Logits };
            Case {
                name: name.clone(),
                mode,
                kind,
                shape,
                x,
                target,
                ignore: case["ignore_index"].as_i64(),
                levels: files[1..]
                    .iter()
                    .map(|f| {
                        let (s, x) = common::read_f32(&d.join(f.as_str().unwrap()));
                        (x, s)
                    })
                    .collect(),
                expected: json(d.join("expected.json")),
            }
        })
        .collect()
}

fn close(v: f64, want: f64) -> bool {
    (v - want).abs() <= 1e-6 + 1e-4 * want.abs()
}

#[test]
fn golden_next_values_gradients_and_refusals() {
    let engine = common::gpu();
    let mut failures = Vec::new();
    let (mut checked, mut refused, mut unreduced_checked) = (0, 0, 0);
    for case in cases() {
        let input = case.input();
        for (name, exp) in case.expected["losses"].as_object().unwrap() {
            let key = format!("{}/{name}", case.name);
            let text = exp["text"].as_str().unwrap();
            let parsed = text.parse::<LossExpr>();
            if exp["status"] == "reject" {
                let cpu = parsed.as_ref().map_err(|e| e.clone()).and_then(|e| reference::evaluate(&input, e));
                let gpu = parsed
                    .as_ref()
                    .map_err(|e| e.clone())
                    .and_then(|e| engine.evaluate_blocking(&input, std::slice::from_ref(e), true));
                if cpu.is_ok() || gpu.is_ok() {
                    failures.push(format!("{key}: '{text}' must be refused"));
                }
                refused += 1;
                continue;
            }
            let expr = parsed.unwrap_or_else(|e| panic!("{key}: {e}"));
            let want = exp["value"].as_f64().unwrap();
            // one gradient per level
            let grefs: Vec<Vec<f32>> = exp["grad_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| common::read_f32(&dir().join(&case.name).join(f.as_str().unwrap())).1)
                .collect();
            let tol = if text.contains("lovasz") { 2e-3 } else { 1e-4 };
            let cpu = reference::evaluate(&input, &expr).unwrap_or_else(|e| panic!("{key} cpu: {e}"));
            let gpu = engine
                .evaluate_blocking(&input, std::slice::from_ref(&expr), true)
                .unwrap_or_else(|e| panic!("{key} gpu: {e}"))
                .remove(0);
            let gpu_unreduced = gpu.unreduced.clone();
            let f32s = |g: &[f64]| g.iter().map(|&x| x as f32).collect::<Vec<f32>>();
            let cpu_grads: Vec<Vec<f32>> =
                std::iter::once(f32s(&cpu.grad)).chain(cpu.level_grads.iter().map(|g| f32s(g))).collect();
            let gpu_grads: Vec<Vec<f32>> =
                std::iter::once(gpu.grad.clone().unwrap()).chain(gpu.level_grads.iter().cloned()).collect();
            for (who, value, grads) in [("cpu", cpu.value, cpu_grads), ("gpu", gpu.value, gpu_grads)] {
                if !close(value, want) {
                    failures.push(format!("{key} {who}: value {value} want {want}"));
                }
                if grads.len() != grefs.len() {
                    failures.push(format!("{key} {who}: {} gradients for {} levels", grads.len(), grefs.len()));
                    continue;
                }
                for (l, (grad, gref)) in grads.iter().zip(&grefs).enumerate() {
                    let (d, m) = common::max_diff(grad, gref);
                    if d > 1e-10 + tol * m {
                        failures.push(format!("{key} {who}: level {l} gradient max diff {d:e} (max |ref| {m:e})"));
                    }
                }
            }
            if let Some(file) = exp["unreduced_file"].as_str() {
                let (shape, want) = common::read_f32(&dir().join(&case.name).join(file));
                let want_shape: Vec<usize> =
                    exp["unreduced_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                assert_eq!(shape, want_shape, "{key}: the file's shape");
                let cpu_u = cpu.unreduced.as_ref().map(|(s, v)| (s.clone(), v.iter().map(|&x| x as f32).collect()));
                let gpu_u = gpu_unreduced.as_ref().map(|u| (u.shape.clone(), u.values.clone()));
                for (who, got) in [("cpu", cpu_u), ("gpu", gpu_u)] {
                    let Some((gs, gv)) = got else {
                        failures.push(format!("{key} {who}: no unreduced entries"));
                        continue;
                    };
                    if gs != want_shape {
                        failures.push(format!("{key} {who}: unreduced shape {gs:?} want {want_shape:?}"));
                        continue;
                    }
                    let bad = gv.iter().zip(&want).filter(|(a, b)| !close(**a as f64, **b as f64)).count();
                    if bad > 0 {
                        failures.push(format!("{key} {who}: {bad} unreduced entries differ"));
                    }
                }
                unreduced_checked += 1;
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    eprintln!("golden_next: {checked} entries match ({unreduced_checked} with unreduced entries), {refused} refused");
    assert!(checked >= 48 && refused >= 5 && unreduced_checked >= 8);
}
