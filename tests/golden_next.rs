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

/// smp 0.6 on soft labels (`TP = sum min(p, g)`): values and gradients computed with
/// segmentation_models_pytorch 0.6 (float64, `DiceLoss`/`JaccardLoss`/`TverskyLoss('binary',
/// from_logits=True)`) on this 2x1x2x4 case, where no probability equals its target.
#[test]
fn smp_intersection_min_on_soft_labels_matches_smp() {
    let x = [0.3f32, -1.2, 2.0, 0.7, -0.4, 1.5, -2.2, 0.1, 1.1, -0.3, 0.0, -1.7, 0.9, 2.4, -0.8, 0.6];
    let g = [0.8f32, 0.1, 1.0, 0.5, 0.0, 0.7, 0.2, 0.4, 0.6, 0.3, 0.5, 0.0, 1.0, 0.9, 0.1, 0.25];
    let input = Input::dense(&x, &g, &[2, 1, 2, 4], Mode::Binary).unwrap();
    let cases: [(&str, f64, [f64; 16]); 3] = [
        (
            "dice",
            0.17105230037386976,
            [
                -0.017934393888,
                0.009238364879,
                -0.007702729776,
                0.011513931601,
                0.012477154582,
                0.007745432289,
                -0.006588094555,
                0.012950527531,
                0.00973044075,
                0.012695141415,
                -0.002679011217,
                0.00678258152,
                -0.015076286139,
                0.003960053515,
                0.011108699183,
                0.011881159884,
            ],
        ),
        (
            "jaccard",
            0.2921343484304837,
            [
                -0.026155565634,
                0.013473254822,
                -0.011233680684,
                0.016791947114,
                0.018196713957,
                0.011295958138,
                -0.009608093846,
                0.018887082271,
                0.014190899524,
                0.01851462651,
                -0.003907076769,
                0.00989173413,
                -0.021987294027,
                0.005775352113,
                0.016200955126,
                0.017327513776,
            ],
        ),
        (
            "tversky:alpha=0.3,beta=0.7",
            0.14397527722011705,
            [
                -0.023507202679,
                0.005911051124,
                -0.01009622244,
                0.007367043759,
                0.007983349822,
                0.004955817056,
                -0.008635233225,
                0.008286231527,
                0.006225899657,
                0.008122825945,
                -0.007866564562,
                0.004339749149,
                -0.01976098641,
                0.002533790242,
                0.007107760914,
                0.00760201014,
            ],
        ),
    ];
    for (text, want, gref) in cases {
        let e: LossExpr = text.parse().unwrap();
        let cpu = reference::evaluate(&input, &e).unwrap();
        let gpu = common::gpu().evaluate_blocking(&input, std::slice::from_ref(&e), true).unwrap().remove(0);
        let gpu_grad: Vec<f64> = gpu.grad.unwrap().iter().map(|&v| f64::from(v)).collect();
        for (who, v, grad) in [("cpu", cpu.value, cpu.grad.clone()), ("gpu", gpu.value, gpu_grad)] {
            assert!(close(v, want), "{text} {who}: {v} vs smp {want}");
            let (d, m) = common::max_diff(&grad, &gref);
            assert!(d <= 1e-10 + 1e-4 * m, "{text} {who}: gradient off by {d:e} of {m:e}");
        }
        // the product form differs on these soft labels
        let sep = if text.contains(':') { ',' } else { ':' };
        let prod: LossExpr = format!("{text}{sep}intersection=product").parse().unwrap();
        let p = reference::evaluate(&input, &prod).unwrap().value;
        assert!((p - want).abs() > 1e-3, "{text}: product {p} vs min {want}");
    }
}
