//! The PyTorch / segmentation_models_pytorch / MONAI reference values of `tests/golden` (copied from
//! the project's shared golden set): every applicable loss text must match value and gradient,
//! on the GPU and on the f64 CPU reference, within the tolerances of `tests/golden/README.md`.

mod common;

use std::borrow::Cow;

use segloss::{reference, Input, LossExpr, Mode, Target};

struct Case {
    name: String,
    mode: Mode,
    shape: Vec<usize>,
    logits: Vec<f32>,
    target: Target<'static>,
    ignore: Option<i64>,
    expected: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let dir = common::golden_dir();
    ["binary_small_random", "multiclass_small", "multiclass_ignore"]
        .iter()
        .map(|name| {
            let d = dir.join(name);
            let case: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("case.json")).unwrap()).unwrap();
            let expected = serde_json::from_slice(&std::fs::read(d.join("expected.json")).unwrap()).unwrap();
            let mode: Mode = case["mode"].as_str().unwrap().parse().unwrap();
            let (shape, logits) = common::read_f32(&d.join("logits.npy"));
            let target = if mode == Mode::Multiclass {
                Target::Labels(Cow::Owned(common::read_i64(&d.join("target.npy")).1))
            } else {
                Target::Dense(Cow::Owned(common::read_f32(&d.join("target.npy")).1))
            };
            Case {
                name: name.to_string(),
                mode,
                shape,
                logits,
                target,
                ignore: case["ignore_index"].as_i64(),
                expected,
            }
        })
        .collect()
}

fn specs() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(common::golden_dir().join("specs.json")).unwrap()).unwrap()
}

/// Runs every golden loss whose text passes `select`, checking GPU and CPU reference.
fn check_golden(select: impl Fn(&str) -> bool) -> usize {
    let engine = common::gpu();
    let specs = specs();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases() {
        let input =
            Input::new(Cow::Borrowed(&case.logits), case.target.clone(), &case.shape, case.mode, case.ignore).unwrap();
        for (name, exp) in case.expected["losses"].as_object().unwrap() {
            if exp["status"] != "ok" {
                continue;
            }
            let text = specs[case.mode.name()][name].as_str().unwrap();
            if !select(text) {
                continue;
            }
            let lovasz = text.contains("lovasz");
            let expr: LossExpr = text.parse().unwrap();
            let want = exp["value"].as_f64().unwrap();
            let (_, gref) =
                common::read_f32(&common::golden_dir().join(&case.name).join(exp["grad_file"].as_str().unwrap()));
            let cpu = reference::evaluate(&input, &expr).unwrap();
            let gpu = engine.evaluate_blocking(&input, std::slice::from_ref(&expr), true).unwrap().remove(0);
            let gpu_grad = gpu.grad.unwrap();
            for (who, value, grad) in [
                ("cpu", cpu.value, cpu.grad.iter().map(|&g| g as f32).collect::<Vec<f32>>()),
                ("gpu", gpu.value, gpu_grad.clone()),
            ] {
                let tol = 1e-6 + 1e-4 * want.abs();
                if (value - want).abs() > tol {
                    failures.push(format!(
                        "{}/{name} '{text}' {who}: value {value} vs {want} (diff {:e})",
                        case.name,
                        (value - want).abs()
                    ));
                }
                if exp["grad_order_dependent"] == true {
                    // tied errors: only the sum of the gradient is order-independent
                    let sum: f64 = grad.iter().map(|&g| g as f64).sum();
                    let want_sum = exp["grad"]["sum"].as_f64().unwrap();
                    let scale = exp["grad"]["abs_sum"].as_f64().unwrap();
                    if (sum - want_sum).abs() > 1e-4 * scale {
                        failures.push(format!("{}/{name} '{text}' {who}: grad sum {sum} vs {want_sum}", case.name));
                    }
                    continue;
                }
                let (d, m) = common::max_diff(&grad, &gref);
                let grad_tol = if lovasz { 2e-3 } else { 1e-4 };
                if d > 1e-10 + grad_tol * m {
                    failures
                        .push(format!("{}/{name} '{text}' {who}: grad max diff {d:e} vs max|ref| {m:e}", case.name));
                }
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{} golden mismatches:\n{}", failures.len(), failures.join("\n"));
    checked
}

#[test]
fn golden_non_lovasz_losses_match_pytorch_smp_monai() {
    let n = check_golden(|t| !t.contains("lovasz"));
    assert_eq!(n, 32, "every non-Lovász golden (case, loss) pair is checked");
}

#[test]
fn golden_lovasz_matches_smp() {
    let n = check_golden(|t| t.contains("lovasz"));
    assert_eq!(n, 4, "lovasz hinge, hinge per image, softmax on two cases");
}
