//! Metrics against the libraries' own values (`tests/golden_metrics`, computed by
//! segmentation_models_pytorch, MONAI and torchmetrics on the inputs of `tests/golden`): every
//! text of each case, integers exactly, scores to 1e-6 relative, distances to 1e-4 relative;
//! the texts the contract rejects are errors.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use segloss::metrics::{reference, Metric, MetricValue};
use segloss::{Input, Mode, Target};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A reference number: a JSON number, or "NaN" / "Infinity" / "-Infinity".
fn num(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::String(s) if s == "NaN" => f64::NAN,
        serde_json::Value::String(s) if s == "Infinity" => f64::INFINITY,
        serde_json::Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}

fn close(got: f64, want: f64, kind: &str) -> bool {
    if want.is_nan() || want.is_infinite() {
        return got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
    }
    let (abs, rel) = if kind == "distance" { (1e-6, 1e-4) } else { (1e-9, 1e-6) };
    (got - want).abs() <= abs + rel * want.abs()
}

fn check_field(what: &str, got: Option<Vec<f64>>, want: &serde_json::Value, kind: &str) {
    match (got, want.is_null()) {
        (None, true) => {}
        (Some(g), false) => {
            let w: Vec<f64> = match want {
                serde_json::Value::Array(a) => a.iter().map(num).collect(),
                v => vec![num(v)],
            };
            assert_eq!(g.len(), w.len(), "{what}: {g:?} vs {w:?}");
            for (a, b) in g.iter().zip(&w) {
                assert!(close(*a, *b, kind), "{what}: {g:?} vs {w:?}");
            }
        }
        (g, _) => panic!("{what}: got {g:?}, want {want}"),
    }
}

/// Nested integer arrays flattened, with their shape.
fn flatten(v: &serde_json::Value, shape: &mut Vec<usize>, depth: usize, out: &mut Vec<u64>) {
    match v {
        serde_json::Value::Array(a) => {
            if shape.len() <= depth {
                shape.push(a.len());
            }
            a.iter().for_each(|x| flatten(x, shape, depth + 1, out));
        }
        v => out.push(v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))),
    }
}

fn check(case: &str, input: &Input, entry: &serde_json::Value) {
    let text = entry["metric"].as_str().unwrap();
    let got = text.parse::<Metric>().and_then(|m| reference::evaluate(input, &m));
    check_result(case, entry, got);
}

fn check_result(case: &str, entry: &serde_json::Value, got: Result<MetricValue, segloss::Error>) {
    let text = entry["metric"].as_str().unwrap();
    let kind = entry["kind"].as_str().unwrap();
    if entry["status"] == "error" {
        assert!(got.is_err(), "{case} '{text}' should be refused ({}), got {got:?}", entry["reason"]);
        return;
    }
    let v: MetricValue = got.unwrap_or_else(|e| panic!("{case} '{text}': {e}"));
    let what = format!("{case} '{text}'");
    check_field(&format!("{what} value"), v.value.map(|x| vec![x]), &entry["value"], kind);
    check_field(&format!("{what} per_class"), v.per_class, &entry["per_class"], kind);
    check_field(
        &format!("{what} per_image"),
        v.per_image.map(|r| r.concat()),
        &flatten_rows(&entry["per_image"]),
        kind,
    );
    match (&v.matrix, entry["matrix"].is_null()) {
        (None, true) => {}
        (Some(m), false) => {
            let (mut shape, mut data) = (Vec::new(), Vec::new());
            flatten(&entry["matrix"], &mut shape, 0, &mut data);
            assert_eq!((&m.shape, &m.data), (&shape, &data), "{what} matrix");
        }
        (m, _) => panic!("{what} matrix: got {m:?}, want {}", entry["matrix"]),
    }
}

/// `per_image` rows joined into one list (null stays null).
fn flatten_rows(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Array(rows) => {
            serde_json::Value::Array(rows.iter().flat_map(|r| r.as_array().cloned().unwrap_or_default()).collect())
        }
        v => v.clone(),
    }
}

/// Each golden case: its name, input and expected entries.
/// The three of the libraries' golden cases, then `absent` (classes in the prediction only, in
/// neither, in the target only: `golden_metrics/absent/generate.py`) without and with ignored pixels.
fn golden_cases() -> Vec<(&'static str, Input<'static>, Vec<serde_json::Value>)> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let absent = here.join("golden_metrics").join("absent");
    let mut cases: Vec<(&str, PathBuf, PathBuf, PathBuf)> =
        ["binary_small_random", "multiclass_ignore", "multiclass_small"]
            .into_iter()
            .map(|case| {
                let dir = here.join("golden").join(case);
                (
                    case,
                    here.join("golden_metrics").join(case).join("expected.json"),
                    dir.join("logits.npy"),
                    dir.join("target.npy"),
                )
            })
            .collect();
    cases.push(("absent", absent.join("expected.json"), absent.join("logits.npy"), absent.join("target.npy")));
    cases.push((
        "absent_ignore",
        absent.join("expected_ignore.json"),
        absent.join("logits.npy"),
        absent.join("target_ignore.npy"),
    ));
    let mut out = Vec::new();
    for (case, expected, logits, tpath) in cases {
        let expected = json(&expected);
        let (shape, logits) = common::read_f32(&logits);
        let ignore = expected["ignore_index"].as_i64();
        let (mode, target) = if expected["mode"] == "multiclass" {
            (Mode::Multiclass, Target::Labels(Cow::Owned(common::read_i64(&tpath).1)))
        } else {
            (Mode::Binary, Target::Dense(Cow::Owned(common::read_f32(&tpath).1)))
        };
        let input = Input::new(Cow::Owned(logits), target, &shape, mode, ignore).unwrap();
        out.push((case, input, expected["metrics"].as_array().unwrap().clone()));
    }
    out
}

#[test]
fn metrics_match_the_libraries_on_every_golden_case() {
    let mut checked = 0;
    for (case, input, entries) in golden_cases() {
        for entry in &entries {
            check(case, &input, entry);
            checked += 1;
        }
    }
    assert_eq!(checked, 67 + 74 + 74 + 161 + 161);
}

#[test]
fn metrics_from_the_gpu_statistics_pass_match_the_libraries() {
    let engine = common::gpu();
    let loss: segloss::LossExpr = "0.5*bce+0.5*dice".parse().unwrap();
    let ce: segloss::LossExpr = "ce+dice".parse().unwrap();
    for (case, input, entries) in golden_cases() {
        let parsed: Vec<Result<Metric, segloss::Error>> =
            entries.iter().map(|e| e["metric"].as_str().unwrap().parse::<Metric>()).collect();
        let good: Vec<Metric> = parsed.iter().filter_map(|m| m.as_ref().ok().cloned()).collect();
        let l = if input.mode() == Mode::Multiclass { &ce } else { &loss };
        let (losses, values) =
            engine.evaluate_with_metrics_blocking(&input, std::slice::from_ref(l), true, &good).unwrap();
        // the losses are those of the evaluation alone
        let alone = engine.evaluate_blocking(&input, std::slice::from_ref(l), true).unwrap();
        assert_eq!(losses[0].value.to_bits(), alone[0].value.to_bits(), "{case}");
        assert_eq!(losses[0].grad, alone[0].grad, "{case}");
        let mut values = values.into_iter();
        for (entry, p) in entries.iter().zip(&parsed) {
            let got = match p {
                Ok(_) => values.next().unwrap(),
                Err(e) => Err(e.clone()),
            };
            check_result(case, entry, got);
        }
    }
}

/// A batch with ties, logits exactly at the thresholds and ignored pixels.
fn tricky(seed: u64, shape: &[usize], mode: Mode) -> Input<'static> {
    let mut r = common::Rng(seed);
    let numel: usize = shape.iter().product();
    let c = shape[1];
    let at = [0.0f32, (0.3f64 / 0.7).ln() as f32, ((0.3f64 / 0.7).ln() as f32).next_up(), 1.5, -1.5];
    let logits: Vec<f32> =
        (0..numel).map(|_| if r.uniform() < 0.4 { at[r.below(at.len())] } else { (r.normal() * 2.0) as f32 }).collect();
    if mode == Mode::Multiclass {
        // (outside the classes, as the metrics require: -1 past 255 classes)
        let ign = if c > 255 { -1 } else { 255 };
        let labels = (0..numel / c).map(|_| if r.uniform() < 0.1 { ign } else { r.below(c) as i64 }).collect();
        Input::new(Cow::Owned(logits), Target::Labels(Cow::Owned(labels)), shape, mode, Some(ign)).unwrap()
    } else {
        let dense = (0..numel).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
        Input::new(Cow::Owned(logits), Target::Dense(Cow::Owned(dense)), shape, mode, None).unwrap()
    }
}

#[test]
fn gpu_counts_equal_cpu_counts_on_ties_thresholds_ignore_and_3d() {
    let engine = common::gpu();
    let texts = ["counts", "confusion:reduction=none", "iou:reduction=none", "counts:threshold=0.3"];
    for (seed, shape, mode) in [
        (1u64, vec![2usize, 1, 37, 53], Mode::Binary),
        (2, vec![3, 4, 5, 9, 11], Mode::Multilabel),
        (3, vec![2, 5, 70, 61], Mode::Multiclass),
        (4, vec![1, 40, 17, 19], Mode::Multiclass),
        (5, vec![2, 3, 4, 20, 30], Mode::Multiclass),
        (6, vec![1, 1, 300, 300], Mode::Binary),
    ] {
        let input = tricky(seed, &shape, mode);
        let metrics: Vec<Metric> = texts
            .iter()
            .filter(|t| mode != Mode::Multiclass || !t.contains("threshold"))
            .map(|t| t.parse().unwrap())
            .collect();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, &metrics).unwrap();
        for (m, g) in metrics.iter().zip(got) {
            let want = reference::evaluate(&input, m).unwrap();
            assert_eq!(g.unwrap(), want, "{shape:?} {m}");
        }
    }
}

/// The losses of an evaluation with count metrics are those of the evaluation alone, bit for
/// bit, and its counts the reference's: the statistics tiles do not depend on the counting. On a
/// CPU adapter's wide tiles (on lavapipe, with subgroups, softmax takes the long tiles: 128 and
/// 32 pixels per thread here) and on a GPU's short tiles (2 pixels per thread, whose count blocks
/// span several tiles); a separate engine, so that no other test sees the switch.
#[test]
fn losses_with_metrics_equal_the_losses_alone_on_every_tiling() {
    let engine = segloss::Engine::gpu_blocking().unwrap();
    let info = engine.info();
    if info.device_type == "Cpu" && info.name.contains("llvmpipe") && info.backend == "vulkan" {
        assert!(engine.statistics_subgroup().is_some(), "{info:?}");
    }
    let metrics: Vec<Metric> =
        ["counts", "confusion:reduction=none", "iou:reduction=none"].iter().map(|t| t.parse().unwrap()).collect();
    for wide in [true, false] {
        engine.set_wide_statistics(wide);
        for (seed, shape, mode, text) in [
            (11u64, vec![2usize, 4, 256, 256], Mode::Multiclass, "ce+dice"),
            (12, vec![1, 5, 130, 131], Mode::Multiclass, "dice@monai"),
            (13, vec![2, 1, 256, 256], Mode::Binary, "bce+dice"),
        ] {
            let input = tricky(seed, &shape, mode);
            let expr: segloss::LossExpr = text.parse().unwrap();
            let exprs = std::slice::from_ref(&expr);
            let (losses, got) = engine.evaluate_with_metrics_blocking(&input, exprs, true, &metrics).unwrap();
            let alone = engine.evaluate_blocking(&input, exprs, true).unwrap();
            let what = format!("wide {wide} {shape:?} {text}");
            assert_eq!(losses[0].value.to_bits(), alone[0].value.to_bits(), "{what}");
            assert!(losses[0].grad == alone[0].grad, "{what}: the gradients differ");
            for (m, g) in metrics.iter().zip(got) {
                assert_eq!(g.unwrap(), reference::evaluate(&input, m).unwrap(), "{what} {m}");
            }
        }
    }
}

#[test]
fn running_metrics_over_batches_and_merged_runs_equal_one_batch() {
    use segloss::metrics::Running;
    let gpu = common::gpu();
    let cpu = segloss::Engine::cpu(None);
    let texts = [
        "iou",
        "dice:reduction=macro",
        "iou@monai",
        "precision@monai:reduction=macro",
        "gdice@monai",
        "precision:reduction=micro",
        "accuracy:reduction=micro-imagewise",
        "counts",
        "confusion",
        "confusion:reduction=none",
        "hd@monai:percentile=95",
        "nsd:tolerance=1.5",
        "assd:reduction=none",
    ];
    for (seed, shape, mode) in
        [(7u64, vec![6usize, 3, 17, 13], Mode::Multiclass), (8, vec![7, 2, 9, 11], Mode::Multilabel)]
    {
        let whole = tricky(seed, &shape, mode);
        for t in texts {
            let m: Metric = t.parse().unwrap();
            let want = reference::evaluate(&whole, &m).unwrap();
            // batches of 2, 3 and the rest on the GPU; the same in two runs merged on the CPU engine
            let mut run = Running::new(m.clone());
            let (mut a, mut b) = (Running::new(m.clone()), Running::new(m.clone()));
            let n = shape[0];
            for (from, to) in [(0, 2), (2, 5), (5, n)] {
                let part = whole.images(from, to).unwrap();
                run.update_blocking(gpu, &part).unwrap();
                let half = if from < 2 { &mut a } else { &mut b };
                half.update_blocking(&cpu, &part).unwrap();
            }
            a.merge(&b).unwrap();
            assert_eq!(run.images(), n);
            assert_eq!(run.compute().unwrap(), want, "{t} over batches");
            assert_eq!(a.compute().unwrap(), want, "{t} merged");
        }
    }
    // torchmetrics' gdice depends on how images are grouped into calls: per batch, as torchmetrics
    let m: Metric = "gdice@torchmetrics".parse().unwrap();
    let whole = tricky(9, &[4, 3, 8, 8], Mode::Multiclass);
    let mut run = Running::new(m.clone());
    for (from, to) in [(0, 2), (2, 4)] {
        run.update_blocking(gpu, &whole.images(from, to).unwrap()).unwrap();
    }
    let per_batch: Vec<f64> = [(0, 2), (2, 4)]
        .iter()
        .map(|&(f, t)| reference::evaluate(&whole.images(f, t).unwrap(), &m).unwrap().value.unwrap())
        .collect();
    let got = run.compute().unwrap().value.unwrap();
    assert!((got - (per_batch[0] + per_batch[1]) / 2.0).abs() < 1e-12, "{got} vs {per_batch:?}");
}

fn close_values(a: &MetricValue, b: &MetricValue) -> bool {
    let flat = |v: &MetricValue| -> Vec<f64> {
        let mut out: Vec<f64> = v.value.into_iter().collect();
        out.extend(v.per_class.iter().flatten());
        out.extend(v.per_image.iter().flatten().flatten());
        out
    };
    let (x, y) = (flat(a), flat(b));
    x.len() == y.len()
        && x.iter().zip(&y).all(|(p, q)| (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() <= 1e-6 + 1e-4 * q.abs())
}

#[test]
fn gpu_surface_distances_equal_the_cpu_reference_with_spacing_in_2d_and_3d() {
    let engine = common::gpu();
    for (seed, shape, mode, spacing) in [
        (21u64, vec![2usize, 1, 40, 33], Mode::Binary, "0.7;1.3"),
        (22, vec![2, 3, 19, 23], Mode::Multilabel, "1"),
        (23, vec![2, 4, 31, 29], Mode::Multiclass, "2;0.5"),
        (24, vec![1, 3, 9, 12, 10], Mode::Multiclass, "2.5;0.8;0.8"),
        (25, vec![1, 2, 6, 7, 8], Mode::Multilabel, "1;2;3"),
    ] {
        // blobs rather than noise: boundaries of several lengths, and a class absent from some images
        let mut r = common::Rng(seed);
        let s: usize = shape[2..].iter().product();
        let (n, c) = (shape[0], shape[1]);
        let centre: Vec<usize> = (0..n * c).map(|_| r.below(s)).collect();
        let logits: Vec<f32> = (0..n * c * s)
            .map(|e| {
                let (img_c, v) = (e / s, e % s);
                let d = (v as i64 - centre[img_c] as i64).abs() as f64 / s as f64;
                (2.0 - 12.0 * d + r.normal() * 0.8) as f32
            })
            .collect();
        let input = if mode == Mode::Multiclass {
            let labels: Vec<i64> =
                (0..n * s).map(|i| if i % 97 == 0 { 255 } else { ((i / 5 + r.below(2)) % c) as i64 }).collect();
            Input::new(Cow::Owned(logits), Target::Labels(Cow::Owned(labels)), &shape, mode, Some(255)).unwrap()
        } else {
            let dense: Vec<f32> =
                (0..n * c * s).map(|e| ((e / 7) % 3 == 0 && e % (c * s) > s / 3) as u8 as f32).collect();
            Input::new(Cow::Owned(logits), Target::Dense(Cow::Owned(dense)), &shape, mode, None).unwrap()
        };
        let texts = [
            format!("hd:reduction=none,spacing={spacing}"),
            format!("hd:percentile=95,directed=true,reduction=none,spacing={spacing}"),
            format!("assd:background=true,reduction=none,spacing={spacing}"),
            format!("assd:symmetric=false,spacing={spacing}"),
            format!("nsd:tolerance=1.5,reduction=mean_batch,spacing={spacing}"),
        ];
        let metrics: Vec<Metric> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, &metrics).unwrap();
        for (m, g) in metrics.iter().zip(got) {
            let g = g.unwrap();
            let want = reference::evaluate(&input, m).unwrap();
            assert!(close_values(&g, &want), "{shape:?} {m}: {g:?} vs {want:?}");
        }
    }
}

#[test]
fn long_axes_soft_targets_and_many_classes_give_the_reference_values_or_its_errors() {
    let engine = common::gpu();
    // lines of 4000 voxels (the device: positions whose squares pass f32's exact integers) and
    // of 5000 (past the device's longest axis: the reference)
    for len in [4000usize, 5000] {
        let mut r = common::Rng(len as u64);
        let n = 4 * len;
        let logits: Vec<f32> = (0..n).map(|_| (r.normal() * 2.0) as f32).collect();
        let target: Vec<f32> = (0..n).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
        let input = Input::dense(&logits, &target, &[1, 1, 4, len], Mode::Binary).unwrap();
        let metrics: Vec<Metric> = ["hd", "assd", "nsd:tolerance=2", "hd:percentile=95,spacing=0.7;1.3"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, &metrics).unwrap();
        for (m, g) in metrics.iter().zip(got) {
            let (g, want) = (g.unwrap(), reference::evaluate(&input, m).unwrap());
            assert!(close_values(&g, &want), "length {len} {m}: {g:?} vs {want:?}");
        }
    }
    // soft targets: the surface metrics name the bad value, as the reference does
    let input = Input::dense(&[0.5f32; 16], &[0.5f32; 16], &[1, 1, 4, 4], Mode::Binary).unwrap();
    let hd: Metric = "hd".parse().unwrap();
    let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&hd)).unwrap();
    assert!(matches!(got[0], Err(segloss::Error::TargetValue(_))), "{:?}", got[0]);
    // 300 classes: counted by the reference, the same numbers
    let input = tricky(31, &[1, 300, 6, 7], Mode::Multiclass);
    let m: Metric = "iou:reduction=macro".parse().unwrap();
    let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
    assert_eq!(got[0].as_ref().unwrap(), &reference::evaluate(&input, &m).unwrap());
    assert_eq!(engine.counts_blocking(&input, &m).unwrap(), reference::counts(&input, m.logit_threshold()).unwrap());
}

#[test]
fn metrics_of_probabilities_threshold_the_probabilities() {
    let engine = common::gpu();
    let mut r = common::Rng(41);
    for (shape, mode) in [(vec![2usize, 1, 37, 53], Mode::Binary), (vec![2, 4, 21, 19], Mode::Multiclass)] {
        let numel: usize = shape.iter().product();
        let c = shape[1];
        // values exactly at the thresholds 0.5 and 0.3, just above, exact 0 and 1
        let at = [0.5f32, 0.3, 0.3f32.next_up(), 0.0, 1.0];
        let p: Vec<f32> =
            (0..numel).map(|_| if r.uniform() < 0.4 { at[r.below(at.len())] } else { r.uniform() as f32 }).collect();
        let input = if mode == Mode::Multiclass {
            let labels = (0..numel / c).map(|_| if r.uniform() < 0.1 { 255 } else { r.below(c) as i64 }).collect();
            Input::new(Cow::Owned(p.clone()), Target::Labels(Cow::Owned(labels)), &shape, mode, Some(255)).unwrap()
        } else {
            let dense = (0..numel).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
            Input::new(Cow::Owned(p.clone()), Target::Dense(Cow::Owned(dense)), &shape, mode, None).unwrap()
        }
        .with_kind(segloss::InputKind::Probs)
        .unwrap();
        let texts =
            ["counts", "confusion:reduction=none", "iou", "dice:threshold=0.3,reduction=none", "hd:percentile=95"];
        let metrics: Vec<Metric> = texts
            .iter()
            .filter(|t| mode != Mode::Multiclass || !t.contains("threshold"))
            .map(|t| t.parse().unwrap())
            .collect();
        let loss: segloss::LossExpr = "dice".parse().unwrap();
        let (_, got) =
            engine.evaluate_with_metrics_blocking(&input, std::slice::from_ref(&loss), true, &metrics).unwrap();
        for (m, g) in metrics.iter().zip(got) {
            let want = reference::evaluate(&input, m).unwrap();
            assert!(close_values(&g.unwrap(), &want), "{shape:?} {m}");
        }
        if mode == Mode::Binary {
            // p >= t on the probabilities: the number of positive predictions (TP + FP) is known
            // directly
            let m: Metric = "counts:threshold=0.3".parse().unwrap();
            let counts = engine.counts_blocking(&input, &m).unwrap();
            let predicted: u64 = (0..shape[0]).map(|n| counts.get(n, 0).unwrap()).map(|[tp, fp, _, _]| tp + fp).sum();
            assert_eq!(predicted, p.iter().filter(|&&x| x >= 0.3).count() as u64);
        }
    }
}

/// `percentile=0` is MONAI's "no percentile": the maximum, not the smallest distance. The
/// expected value is MONAI 1.6.1's `HausdorffDistanceMetric(percentile=0)` (and with
/// `directed=True`) on this input, 4.2426405 (float32), which is also its value without a
/// percentile; the p-th percentile with linear interpolation at p = 0 would be 0 here.
#[test]
fn hd_percentile_zero_is_the_maximum_as_in_monai() {
    let engine = common::gpu();
    // a 6x6 square predicted against a 4x4 target square overlapping its corner
    let mut logits = vec![-1.0f32; 100];
    let mut target = vec![0.0f32; 100];
    for y in 0..10 {
        for x in 0..10 {
            if (3..9).contains(&y) && (3..9).contains(&x) {
                logits[y * 10 + x] = 1.0;
            }
            if (2..6).contains(&y) && (2..6).contains(&x) {
                target[y * 10 + x] = 1.0;
            }
        }
    }
    let input = Input::dense(&logits, &target, &[1, 1, 10, 10], Mode::Binary).unwrap();
    let monai = 4.242_640_5;
    for text in ["hd@monai:percentile=0", "hd@monai:percentile=0,directed=true", "hd@monai"] {
        let m: Metric = text.parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
        let got = got[0].as_ref().unwrap().value.unwrap();
        assert!(close(got, monai, "distance"), "{text}: {got} against MONAI's {monai}");
        let cpu = reference::evaluate(&input, &m).unwrap().value.unwrap();
        assert!(close(cpu, monai, "distance"), "{text} (reference): {cpu} against MONAI's {monai}");
    }
}

/// A run of a surface metric (rows per image) refuses images of another class count, updated or
/// merged, as the counted metrics do; it used to take them and panic or drop classes at compute.
#[test]
fn surface_runs_refuse_images_of_another_class_count() {
    let engine = common::gpu();
    let input_of = |c: usize| {
        let x: Vec<f32> = (0..c * 36).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let t: Vec<f32> = (0..c * 36).map(|i| ((i * 3) % 4 == 0) as u8 as f32).collect();
        Input::new(Cow::Owned(x), Target::Dense(Cow::Owned(t)), &[1, c, 6, 6], Mode::Multilabel, None).unwrap()
    };
    let m: Metric = "hd:reduction=mean_batch".parse().unwrap();
    let mut a = segloss::metrics::Running::new(m.clone());
    a.update_blocking(engine, &input_of(3)).unwrap();
    assert!(matches!(a.update_blocking(engine, &input_of(2)), Err(segloss::Error::Input(_))));
    let mut b = segloss::metrics::Running::new(m);
    b.update_blocking(engine, &input_of(2)).unwrap();
    assert!(matches!(a.merge(&b), Err(segloss::Error::Input(_))));
    assert_eq!(a.images(), 1);
    assert!(a.compute().is_ok());
}

#[test]
fn nsd_counts_a_boundary_voxel_exactly_the_tolerance_away_at_any_spacing() {
    // prediction [0, 1, 1], target [1, 1, 0] (1 x 3): every boundary distance is 0 or one voxel,
    // so nsd with the tolerance one voxel is 4 / 4 = 1 (MONAI's SurfaceDiceMetric: 1.0). Float32
    // distances put 0.1 at 0.10000000149 > 0.1, which gave 0.5.
    let engine = common::gpu();
    let logits = [-2.0f32, 2.0, 2.0];
    let target = [1.0f32, 1.0, 0.0];
    let input = Input::dense(&logits, &target, &[1, 1, 1, 3], Mode::Binary).unwrap();
    for s in ["0.1", "0.2", "0.3", "0.6", "0.8", "1.1", "2.2", "0.7", "1"] {
        let m: Metric = format!("nsd:tolerance={s},spacing={s},reduction=sum").parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
        let got = got[0].as_ref().unwrap().value.unwrap();
        let want = reference::evaluate(&input, &m).unwrap().value.unwrap();
        assert_eq!((got, want), (1.0, 1.0), "spacing {s}");
        // a tolerance just under one voxel leaves the two boundary voxels one voxel away out
        let below: f64 = s.parse::<f64>().unwrap() * 0.999;
        let m: Metric = format!("nsd:tolerance={below},spacing={s},reduction=sum").parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, Some(0.5), "spacing {s}, tolerance {below}");
    }
}

#[test]
fn nsd_compares_distances_and_tolerance_in_float32_as_monai_does() {
    // prediction and target one voxel each, diagonal neighbours: both directed distances are
    // sqrt(2) (sqrt(3) in 3D). MONAI 1.6.1's SurfaceDiceMetric (class_thresholds=[t],
    // include_background=False), run for these figures: t = 1.414213 -> 0.0, 1.4142135 -> 1.0
    // (float32 sqrt(2) equals float32 1.4142135), 1.41421356 -> 1.0; in 3D 1.73205 -> 0.0,
    // 1.7320508 -> 1.0.
    let engine = common::gpu();
    let case = |shape: &[usize], p: usize, g: usize| {
        let s: usize = shape[2..].iter().product();
        let mut x = vec![-3.0f32; s];
        x[p] = 3.0;
        let mut t = vec![0.0f32; s];
        t[g] = 1.0;
        Input::new(Cow::Owned(x), Target::Dense(Cow::Owned(t)), shape, Mode::Binary, None).unwrap()
    };
    let flat = case(&[1, 1, 4, 4], 5, 10);
    let cube = case(&[1, 1, 4, 4, 4], 21, 42);
    for (input, tol, want) in [
        (&flat, "1.414213", 0.0),
        (&flat, "1.4142135", 1.0),
        (&flat, "1.41421356", 1.0),
        (&cube, "1.73205", 0.0),
        (&cube, "1.7320508", 1.0),
    ] {
        let m: Metric = format!("nsd:tolerance={tol}").parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(input, &[], false, std::slice::from_ref(&m)).unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, Some(want), "device, tolerance {tol}");
        assert_eq!(reference::evaluate(input, &m).unwrap().value, Some(want), "reference, tolerance {tol}");
    }
}

#[test]
fn surface_metrics_at_extreme_spacings_equal_the_reference() {
    // prediction at (0, 0), target at (5, 5) of 6 x 6: a distance of 5 sqrt(2) voxels. Squared
    // distances of spacing 3e14 pass float32's range near the device's "no boundary" sentinel,
    // those of 1e-30 underflow it: the device gave 1.06e15 for 2.12e15, and 0 for 7e-30.
    let engine = common::gpu();
    let mut x = vec![-3.0f32; 36];
    x[0] = 3.0;
    let mut t = vec![0.0f32; 36];
    t[35] = 1.0;
    let input = Input::dense(&x, &t, &[1, 1, 6, 6], Mode::Binary).unwrap();
    for text in [
        "hd:spacing=3e14",
        "assd:spacing=3e14",
        "nsd:tolerance=1e15,spacing=3e14",
        "hd:spacing=1e-30",
        "nsd:tolerance=0,spacing=1e-50",
    ] {
        let m: Metric = text.parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
        let got = got[0].as_ref().unwrap().value.unwrap();
        let want = reference::evaluate(&input, &m).unwrap().value.unwrap();
        assert!((got - want).abs() <= 1e-6 * want.abs(), "{text}: {got} against {want}");
    }
}

#[test]
fn nsd_on_the_device_equals_the_reference_at_tolerances_a_lattice_distance_away() {
    // the device's squared distances are float32 sums, which round a distance of 9 voxels of
    // spacing 0.1 to 0.90000004 where the exact one rounds to 0.9: the device gave 0 against 1
    // (MONAI: 1). At tolerances that are exact lattice distances, on random masks with isotropic
    // and anisotropic spacings, every device value equals the reference's.
    let engine = common::gpu();
    let logits: Vec<f32> = (0..10).map(|i| if i == 0 { 3.0 } else { -3.0 }).collect();
    let target: Vec<f32> = (0..10).map(|i| f32::from(u8::from(i == 9))).collect();
    let line = Input::dense(&logits, &target, &[1, 1, 1, 10], Mode::Binary).unwrap();
    let m: Metric = "nsd:tolerance=0.9,spacing=0.1".parse().unwrap();
    let (_, got) = engine.evaluate_with_metrics_blocking(&line, &[], false, std::slice::from_ref(&m)).unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, Some(1.0));
    assert_eq!(reference::evaluate(&line, &m).unwrap().value, Some(1.0));
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let spacings: [&[f64]; 4] = [&[0.1], &[0.3, 0.7], &[2.5, 0.8, 0.8], &[0.7]];
    for round in 0..24 {
        let spacing = spacings[round % 4];
        let three = spacing.len() == 3 || (spacing.len() == 1 && round % 3 == 0);
        let dims: Vec<usize> = if three { vec![6, 7, 5] } else { vec![13, 11] };
        let s: usize = dims.iter().product();
        let x: Vec<f32> = (0..s).map(|_| if next(3) == 0 { 2.0 } else { -2.0 }).collect();
        let t: Vec<f32> = (0..s).map(|_| f32::from(u8::from(next(4) == 0))).collect();
        let mut shape = vec![1, 1];
        shape.extend(&dims);
        let input = Input::new(Cow::Owned(x), Target::Dense(Cow::Owned(t)), &shape, Mode::Binary, None).unwrap();
        // a tolerance exactly some lattice distance: offsets of up to 4 voxels per axis
        let h = |a: usize| if spacing.len() == 1 { spacing[0] } else { spacing[a] };
        let tau: f64 = (0..dims.len()).map(|a| ((next(5) as f64) * h(a)).powi(2)).sum::<f64>().sqrt();
        let sp: Vec<String> = spacing.iter().map(f64::to_string).collect();
        let m: Metric = format!("nsd:tolerance={tau},spacing={}", sp.join(";")).parse().unwrap();
        let (_, got) = engine.evaluate_with_metrics_blocking(&input, &[], false, std::slice::from_ref(&m)).unwrap();
        let want = reference::evaluate(&input, &m).unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, want.value, "{m} on {dims:?}");
    }
}

#[test]
fn metric_text_errors_list_what_the_metric_takes() {
    let err = |t: &str| t.parse::<Metric>().unwrap_err().to_string();
    for (text, needle) in [
        ("gdice:reduction=macro", "gdice has no reduction macro; reductions for gdice: mean, mean_channel, sum"),
        ("confusion:reduction=mean", "confusion has no reduction mean; reductions for confusion: micro, none"),
        ("hd:reduction=micro", "surface metrics have no count reductions; hd has no reduction micro; reductions for hd: macro-imagewise, none, mean, mean_batch, mean_channel, sum"),
        ("counts@monai", "counts has no preset monai; presets for counts: smp"),
        ("precision@torchmetrics", "presets for precision: smp, monai"),
        ("iou@keras", "presets: smp, monai, torchmetrics"),
        // (review) a repeated key is a mistake, not "the last one wins"
        ("iou:threshold=0.3,threshold=0.7", "key 'threshold' is given twice"),
    ] {
        let e = err(text);
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn weighted_scores_take_one_weight_per_class_or_per_selected_class() {
    // smp's class_weights go with the selected classes' counts: smp 0.6.0 on the golden case
    // multiclass_small, get_stats(argmax(x), t) sliced to the classes, reduction='weighted'
    // (float32 weights, so the values carry float32 rounding)
    let (_, input, _) = golden_cases().into_iter().find(|c| c.0 == "multiclass_small").unwrap();
    let cases = [
        ("iou:reduction=weighted,weights=1;3,classes=0;2", 0.5015266537666321),
        ("iou:reduction=weighted,weights=1;0;3;0;0,classes=0;2", 0.5015266537666321),
        ("dice:reduction=weighted,weights=1;3,classes=0;2", 0.6679686903953552),
        ("iou:reduction=weighted,weights=1;2;3;4,background=false", 0.36527419090270996),
    ];
    let metrics: Vec<Metric> = cases.iter().map(|c| c.0.parse().unwrap()).collect();
    let (_, gpu) = common::gpu().evaluate_with_metrics_blocking(&input, &[], false, &metrics).unwrap();
    for ((text, want), (m, g)) in cases.iter().zip(metrics.iter().zip(gpu)) {
        for got in [reference::evaluate(&input, m).unwrap(), g.unwrap()] {
            let v = got.value.unwrap();
            assert!((v - want).abs() <= 2e-7 * want, "{text}: {v} vs {want}");
        }
    }
    let e = "iou:reduction=weighted,weights=1;2;3,classes=0;2".parse::<Metric>().unwrap();
    let err = reference::evaluate(&input, &e).unwrap_err().to_string();
    assert!(err.contains("one per class, or one per selected class"), "{err}");
}

/// (review) A multiclass ignore index inside `0..C-1` was taken silently: the metrics counted a
/// class the caller asked to ignore (smp refuses it). Every metric path now gives an error that
/// names it, on the GPU, the CPU engine, the reference and a running metric; losses keep
/// accepting it (as torch's cross-entropy does), and an index outside the classes is fine.
#[test]
fn a_multiclass_ignore_index_among_the_classes_is_refused_by_the_metrics() {
    use segloss::metrics::Running;
    let logits: Vec<f32> = (0..27).map(|i| ((i * 7) % 5) as f32 * 0.3).collect();
    let labels: Vec<i64> = vec![0, 1, 1, 0, 1, 2, 0, 0, 0];
    let inside = Input::labels(&logits, &labels, &[1, 3, 3, 3], Some(1)).unwrap();
    let outside = Input::labels(&logits, &labels, &[1, 3, 3, 3], Some(255)).unwrap();
    let cpu = segloss::Engine::cpu(None);
    for text in ["iou:reduction=none", "counts", "confusion", "hd@monai"] {
        let m: Metric = text.parse().unwrap();
        let named = |e: segloss::Error| e.to_string().contains("ignore_index 1");
        assert!(reference::evaluate(&inside, &m).is_err_and(named), "{text}: reference");
        assert!(reference::evaluate(&outside, &m).is_ok(), "{text}: 255");
        for engine in [common::gpu(), &cpu] {
            let ce: segloss::LossExpr = "ce".parse().unwrap();
            let (losses, got) = engine
                .evaluate_with_metrics_blocking(&inside, std::slice::from_ref(&ce), false, std::slice::from_ref(&m))
                .unwrap();
            assert!(losses[0].value.is_finite(), "{text}: the loss beside it");
            assert!(got.into_iter().next().unwrap().is_err_and(named), "{text}: engine");
            let mut run = Running::new(m.clone());
            assert!(run.update_blocking(engine, &inside).is_err_and(named), "{text}: running");
        }
    }
}
