//! The `segloss` binary: `eval` JSON output, gradient files, per-loss errors, exit codes.

mod common;

use std::path::Path;
use std::process::Command;

fn segloss(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_segloss")).args(args).output().expect("run segloss")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_matches_golden_values_and_writes_gradients() {
    let case = common::golden_dir().join("multiclass_ignore");
    let dir = std::env::temp_dir().join(format!("segloss-cli-{}", std::process::id()));
    let out = segloss(&[
        "eval",
        "--logits",
        s(&case.join("logits.npy")),
        "--target",
        s(&case.join("target.npy")),
        "--ignore-index",
        "255",
        "--loss",
        "ce",
        "--loss",
        "dicee",
        "--loss",
        "bce",
        "--loss",
        "ce+dice",
        "--grad-dir",
        s(&dir),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("exactly one JSON object on stdout");
    assert!(v["device"]["name"].is_string() && v["device"]["backend"].is_string() && v["device"]["type"].is_string());
    assert_eq!(v["mode"], "multiclass", "mode inferred from the int64 target");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("expected.json")).unwrap()).unwrap();
    for (i, name) in [(0, "ce"), (3, "ce_dice")] {
        let want = expected["losses"][name]["value"].as_f64().unwrap();
        let got = r[i]["value"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-6 + 1e-4 * want, "{name}: {got} vs {want}");
        assert!(r[i]["error"].is_null());
        let (shape, g) = common::read_f32(Path::new(r[i]["grad_file"].as_str().unwrap()));
        assert_eq!(shape, vec![2, 5, 64, 64]);
        let (_, gref) = common::read_f32(&case.join(format!("grad_{name}.npy")));
        let (d, m) = common::max_diff(&g, &gref);
        assert!(d <= 1e-10 + 1e-4 * m);
    }
    assert!(r[1]["error"].as_str().unwrap().contains("unknown loss 'dicee'"));
    assert!(r[2]["error"].as_str().unwrap().contains("use ce"));
    assert!(r[1]["grad_file"].is_null() && r[1]["value"].is_null());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_files_exit_with_code_2_and_a_message() {
    let case = common::golden_dir().join("binary_small_random");
    let other = common::golden_dir().join("multiclass_small");
    // shapes that do not fit
    let out = segloss(&[
        "eval",
        "--logits",
        s(&case.join("logits.npy")),
        "--target",
        s(&other.join("target.npy")),
        "--loss",
        "dice",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"), "{}", String::from_utf8_lossy(&out.stderr));
    // a file that is not .npy
    let out = segloss(&[
        "eval",
        "--logits",
        s(&case.join("case.json")),
        "--target",
        s(&case.join("target.npy")),
        "--loss",
        "dice",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("logits"));
    // a missing file
    let out =
        segloss(&["eval", "--logits", "/nonexistent.npy", "--target", s(&case.join("target.npy")), "--loss", "dice"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_json_has_the_documented_fields() {
    let out = segloss(&["bench", "--shape", "2x3x16x16", "--loss", "ce", "--loss", "dice", "--iters", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shape"], serde_json::json!([2, 3, 16, 16]));
    for r in v["results"].as_array().unwrap() {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0 && r["min_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(v["together"]["median_ms"].as_f64().unwrap() > 0.0);
}
