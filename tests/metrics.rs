//! Metrics against the libraries' own values (`tests/golden_metrics`, computed by
//! segmentation_models_pytorch, MONAI and torchmetrics on the inputs of `tests/golden`): every
//! text of each case, integers exactly, scores to 1e-6 relative, distances to 1e-4 relative;
//! the texts the contract rejects are errors.

mod common;

use std::borrow::Cow;
use std::path::Path;

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
    let kind = entry["kind"].as_str().unwrap();
    let got = text.parse::<Metric>().and_then(|m| reference::evaluate(input, &m));
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

#[test]
fn metrics_match_the_libraries_on_every_golden_case() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut checked = 0;
    for case in ["binary_small_random", "multiclass_ignore", "multiclass_small"] {
        let expected = json(&here.join("golden_metrics").join(case).join("expected.json"));
        let (shape, logits) = common::read_f32(&here.join("golden").join(case).join("logits.npy"));
        let tpath = here.join("golden").join(case).join("target.npy");
        let ignore = expected["ignore_index"].as_i64();
        let (mode, target) = if expected["mode"] == "multiclass" {
            (Mode::Multiclass, Target::Labels(Cow::Owned(common::read_i64(&tpath).1)))
        } else {
            (Mode::Binary, Target::Dense(Cow::Owned(common::read_f32(&tpath).1)))
        };
        let input = Input::new(Cow::Owned(logits), target, &shape, mode, ignore).unwrap();
        for entry in expected["metrics"].as_array().unwrap() {
            check(case, &input, entry);
            checked += 1;
        }
    }
    assert_eq!(checked, 67 + 74 + 74);
}
