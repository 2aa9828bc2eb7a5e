//! The GPU against the f64 CPU reference on many seeded random batches: 1D/2D/3D, C = 1..21,
//! N = 1..5, odd sizes, ignore_index, empty and all-foreground targets, logits up to +-80, and every
//! loss with many parameter choices.

mod common;

use std::borrow::Cow;

use common::Rng;
use segloss::{reference, Input, InputKind, LossExpr, Mode, Target};

const DENSE: &[&str] = &[
    "bce",
    "bce:pos_weight=auto",
    "bce:pos_weight=3,label_smoothing=0.1",
    "focal",
    "focal:alpha=0.25",
    "focal:gamma=0.5,alpha=0.9",
    "focal:gamma=0",
    "dice",
    "dice:squared=true",
    "dice@monai",
    "dice@keras",
    "dice@paddle",
    "dice:log=true",
    "dice:empty=skip,pool=image",
    "jaccard",
    "iou:squared=true,smooth=0.5",
    "jaccard@monai:log=true",
    "tversky:alpha=0.3,beta=0.7",
    "tversky:gamma=0.75",
    "tversky@monai:alpha=0.3,beta=0.7,gamma=2",
    "gdice",
    "gdice@monai",
    "gdice:weight=simple,pool=image,smooth=1",
    "gdice:weight=uniform",
    "sensspec",
    "sensspec:lambda=0.5,smooth=0",
    "0.8*bce+0.2*dice",
    "bce+dice:log=true",
    "dice@monai+focal@monai",
    "bce:pos_weight=auto+focal:alpha=0.25+tversky+sensspec",
];

const MULTICLASS: &[&str] = &[
    "ce",
    "ce:label_smoothing=0.1",
    "focal",
    "focal:act=softmax",
    "focal:act=softmax,alpha=0.25,gamma=1.5",
    "focal:alpha=0.25,gamma=3",
    "dice",
    "dice@monai",
    "dice:pool=all,smooth=1",
    "dice:empty=skip",
    "dice:log=true,squared=true",
    "jaccard",
    "jaccard@paddle",
    "tversky:alpha=0.3,beta=0.7",
    "tversky@monai:gamma=1.5",
    "gdice",
    "gdice@monai",
    "gdice:pool=image,weight=simple",
    "sensspec",
    "ce+dice",
    "0.8*ce+0.2*dice@monai",
    "ce:label_smoothing=0.2+focal:act=softmax+dice:classes=0;1",
];

struct Batch {
    shape: Vec<usize>,
    mode: Mode,
    logits: Vec<f32>,
    target: Target<'static>,
    ignore: Option<i64>,
    what: String,
    kind: InputKind,
}

impl Batch {
    /// A batch of logits named by its mode and shape.
    fn logits(shape: Vec<usize>, mode: Mode, logits: Vec<f32>, target: Target<'static>, ignore: Option<i64>) -> Batch {
        Batch { what: format!("{mode} {shape:?}"), shape, mode, logits, target, ignore, kind: InputKind::Logits }
    }
}

/// A random batch; `kind` picks the target's character.
fn batch(rng: &mut Rng, mode: Mode, kind: usize) -> Batch {
    let n = 1 + rng.below(5);
    let c = match mode {
        Mode::Binary => 1,
        Mode::Multilabel => 1 + rng.below(6),
        Mode::Multiclass => 2 + rng.below(20),
    };
    let dims = 1 + rng.below(3);
    let spatial: Vec<usize> = (0..dims)
        .map(|_| match dims {
            1 => 1 + rng.below(3000),
            2 => 1 + rng.below(60),
            _ => 1 + rng.below(14),
        })
        .collect();
    let mut shape = vec![n, c];
    shape.extend(&spatial);
    let s: usize = spatial.iter().product();
    let scale = [1.0, 3.0, 10.0, 80.0][rng.below(4)];
    let logits: Vec<f32> = (0..n * c * s)
        .map(|_| {
            if scale == 80.0 && rng.below(3) == 0 {
                if rng.below(2) == 0 {
                    80.0
                } else {
                    -80.0
                }
            } else {
                (rng.normal() * scale) as f32
            }
        })
        .collect();
    let ignore = if rng.below(2) == 0 { Some(255) } else { None };
    // kind: 0 random, 1 empty (all background), 2 all foreground, 3 rare foreground, 4 soft labels
    let target = if mode == Mode::Multiclass {
        let labels: Vec<i64> = (0..n * s)
            .map(|_| {
                if ignore.is_some() && rng.below(7) == 0 {
                    return 255;
                }
                match kind {
                    1 => 0,
                    2 => (c - 1) as i64,
                    3 => {
                        if rng.below(50) == 0 {
                            1
                        } else {
                            0
                        }
                    }
                    _ => rng.below(c) as i64,
                }
            })
            .collect();
        Target::Labels(Cow::Owned(labels))
    } else {
        let t: Vec<f32> = (0..n * c * s)
            .map(|_| {
                if ignore.is_some() && rng.below(9) == 0 {
                    return 255.0;
                }
                match kind {
                    1 => 0.0,
                    2 => 1.0,
                    3 => (rng.below(40) == 0) as u8 as f32,
                    4 => rng.uniform() as f32,
                    _ => (rng.below(3) == 0) as u8 as f32,
                }
            })
            .collect();
        Target::Dense(Cow::Owned(t))
    };
    let what = format!("{mode} shape {shape:?} kind {kind} logit scale {scale} ignore {ignore:?}");
    Batch { shape, mode, logits, target, ignore, what, kind: InputKind::Logits }
}

/// The batch's logits turned into probabilities (sigmoid, or softmax over C), with some values
/// exactly 0 or 1: right (equal to the target), wrong, and whole one-hot pixels (multiclass).
fn probs(rng: &mut Rng, mut b: Batch) -> Batch {
    let (n, c) = (b.shape[0], b.shape[1]);
    let s: usize = b.shape[2..].iter().product();
    let mut p = vec![0f32; b.logits.len()];
    for img in 0..n {
        for pos in 0..s {
            let at = |k: usize| (img * c + k) * s + pos;
            if b.mode == Mode::Multiclass {
                let m = (0..c).map(|k| b.logits[at(k)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = (0..c).map(|k| (b.logits[at(k)] as f64 - m).exp()).sum();
                let hot = rng.below(5) == 0;
                let k0 = rng.below(c);
                for k in 0..c {
                    p[at(k)] =
                        if hot { (k == k0) as u8 as f32 } else { ((b.logits[at(k)] as f64 - m).exp() / z) as f32 };
                }
            } else {
                for k in 0..c {
                    let x = b.logits[at(k)] as f64;
                    p[at(k)] = match rng.below(6) {
                        0 => 0.0,
                        1 => 1.0,
                        _ => (1.0 / (1.0 + (-x).exp())) as f32,
                    };
                }
            }
        }
    }
    b.logits = p;
    b.kind = InputKind::Probs;
    b.what = format!("{} (probabilities)", b.what);
    b
}

fn texts(mode: Mode, c: usize) -> Vec<String> {
    let mut v: Vec<String> = match mode {
        Mode::Multiclass => MULTICLASS.iter().map(|s| s.to_string()).collect(),
        _ => DENSE.iter().map(|s| s.to_string()).collect(),
    };
    if mode == Mode::Multilabel && c >= 2 {
        v.push("dice:classes=0;1,pool=image".into());
        v.push("gdice:classes=1".into());
    }
    v.retain(|t| !(t.contains("classes=0;1") && c < 2));
    // per-class weights (one a zero), norms, the kornia preset, pooled images
    let w: Vec<String> = (0..c).map(|k| ["0.5", "1", "2", "0", "1.5"][k % 5].to_string()).collect();
    let w = w.join(";");
    v.extend([
        format!("dice:weights={w}"),
        format!("jaccard@monai:weights={w}"),
        format!("tversky:alpha=0.3,beta=0.7,gamma=1.5,weights={w}"),
        format!("dice:pool=image,norm=image,empty=skip,weights={w}"),
        format!("dice:pool=image_all,weights={w}"),
        format!("iou:pool=all,weights={w}"),
        format!("focal:weights={w}"),
        format!("focal@monai:weights={w}"),
        format!("focal@kornia:alpha=0.25,weights={w}"),
        "dice@kornia".to_string(),
        "tversky@kornia:alpha=0.3,beta=0.7".to_string(),
    ]);
    // unreduced entries
    v.extend(
        [
            "dice:reduction=none",
            "0.5*dice@monai:reduction=none",
            "gdice@monai:reduction=none",
            "gdice:reduction=none",
            "tversky:gamma=2,reduction=none",
            "dice:pool=image_all,reduction=none",
            "iou:pool=all,smooth=1,reduction=none",
            "2*focal:alpha=0.25,reduction=none",
        ]
        .map(String::from),
    );
    v.push(format!("dice:weights={w},norm=count,pool=image,reduction=none"));
    v.push(format!("focal@monai:weights={w},reduction=none"));
    if mode == Mode::Multiclass {
        v.push("ce:reduction=none".into());
        v.push(format!("0.5*ce:weights={w},label_smoothing=0.1,reduction=none"));
        v.push("focal@monai:act=softmax,alpha=0.25,reduction=none".into());
    } else {
        v.push("bce:reduction=none".into());
        v.push("bce:pos_weight=auto,label_smoothing=0.1,reduction=none".into());
        v.push(format!("bce:pos_weight={w},reduction=none"));
    }
    if mode == Mode::Multiclass {
        v.push(format!("focal@monai:act=softmax,alpha=0.25,weights={w}"));
        v.push("focal:act=softmax,norm=count,gamma=1".into());
    } else {
        // one entry per channel (a single number is the scalar pos_weight)
        v.push(format!("bce:pos_weight={w}"));
    }
    v
}

fn compare(b: &Batch, exprs: &[LossExpr]) {
    let engine = common::gpu();
    let input = Input::new(Cow::Borrowed(&b.logits), b.target.clone(), &b.shape, b.mode, b.ignore)
        .unwrap()
        .with_kind(b.kind)
        .unwrap();
    // Several expressions in one call share one statistics pass.
    for chunk in exprs.chunks(7) {
        let gpu = engine.evaluate_blocking(&input, chunk, true).unwrap_or_else(|e| panic!("{}: {e}", b.what));
        for (e, g) in chunk.iter().zip(gpu) {
            let r = reference::evaluate(&input, e).unwrap();
            let tol = 2e-5 + 2e-4 * r.value.abs();
            assert!(g.value.is_finite(), "{}: '{e}' gave {}", b.what, g.value);
            assert!((g.value - r.value).abs() <= tol, "{}: '{e}' value gpu {} cpu {}", b.what, g.value, r.value);
            let grad = g.grad.unwrap();
            assert!(grad.iter().all(|x| x.is_finite()), "{}: '{e}' non-finite gradient", b.what);
            let (d, m) = common::max_diff(&grad, &r.grad);
            assert!(d <= 1e-9 + 5e-4 * m, "{}: '{e}' grad max diff {d:e}, max |ref| {m:e}", b.what);
            // reduction=none: the same entries, shapes alike
            match (&g.unreduced, &r.unreduced) {
                (None, None) => {}
                (Some(u), Some((shape, want))) => {
                    assert_eq!(&u.shape, shape, "{}: '{e}' unreduced shape", b.what);
                    let (d, m) = common::max_diff(&u.values, want);
                    assert!(d <= 2e-5 + 2e-4 * m, "{}: '{e}' unreduced max diff {d:e}, max |ref| {m:e}", b.what);
                }
                (a, b2) => {
                    panic!("{}: '{e}' unreduced on one side only: {:?} / {:?}", b.what, a.is_some(), b2.is_some())
                }
            }
        }
    }
}

fn run(mode: Mode, seed: u64, cases: usize) {
    run_kind(mode, InputKind::Logits, seed, cases)
}

fn run_kind(mode: Mode, kind: InputKind, seed: u64, cases: usize) {
    let mut rng = Rng(seed);
    for i in 0..cases {
        let kinds = if mode == Mode::Multiclass { 4 } else { 5 };
        let mut b = batch(&mut rng, mode, i % kinds);
        let texts = texts(mode, b.shape[1]);
        if kind == InputKind::Probs {
            b = probs(&mut rng, b);
        }
        let c = b.shape[1];
        // the losses that take this kind of input (on probabilities: no ce, softmax focal,
        // hinge or pos_weight)
        let exprs: Vec<LossExpr> = texts
            .iter()
            .map(|t| t.parse::<LossExpr>().unwrap())
            .filter(|e| e.check_input(mode, c, kind).is_ok())
            .collect();
        assert!(exprs.len() >= 8, "{}: {} losses", b.what, exprs.len());
        compare(&b, &exprs);
    }
}

#[test]
fn binary_probabilities_match_reference() {
    run_kind(Mode::Binary, InputKind::Probs, 21, 10);
}

#[test]
fn multilabel_probabilities_match_reference() {
    run_kind(Mode::Multilabel, InputKind::Probs, 22, 10);
}

#[test]
fn multiclass_probabilities_match_reference() {
    run_kind(Mode::Multiclass, InputKind::Probs, 23, 12);
}

#[test]
fn binary_matches_reference() {
    run(Mode::Binary, 1, 12);
}

#[test]
fn multilabel_matches_reference() {
    run(Mode::Multilabel, 2, 12);
}

#[test]
fn multiclass_matches_reference() {
    run(Mode::Multiclass, 3, 12);
}

#[test]
fn large_multiclass_and_64_classes_match_reference() {
    let mut rng = Rng(4);
    for (shape, ignore) in [(vec![2, 64, 37, 41], Some(255)), (vec![1, 3, 300, 301], None), (vec![3, 1, 5000], None)] {
        let mode = if shape[1] == 1 { Mode::Binary } else { Mode::Multiclass };
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let logits: Vec<f32> = (0..n * c * s).map(|_| (rng.normal() * 4.0) as f32).collect();
        let target = if mode == Mode::Multiclass {
            Target::Labels(Cow::Owned(
                (0..n * s)
                    .map(|_| if ignore.is_some() && rng.below(10) == 0 { 255 } else { rng.below(c) as i64 })
                    .collect(),
            ))
        } else {
            Target::Dense(Cow::Owned((0..n * c * s).map(|_| (rng.below(20) == 0) as u8 as f32).collect()))
        };
        let b = Batch::logits(shape, mode, logits, target, ignore);
        let texts: &[&str] = if mode == Mode::Multiclass {
            &["ce", "dice", "focal:act=softmax", "gdice@monai", "0.8*ce+0.2*tversky:gamma=2"]
        } else {
            &["bce:pos_weight=auto", "dice@keras", "focal:alpha=0.25", "sensspec", "jaccard:squared=true"]
        };
        compare(&b, &texts.iter().map(|t| t.parse().unwrap()).collect::<Vec<_>>());
    }
}

/// Expressions whose region lines have a slope (squared denominators, sensspec) and others, in one
/// evaluation: each expression's gradient pass takes its own (`SLOPE`), beside Lovász-Softmax too;
/// on an input large enough for the class registers of CPU adapters and on a small one.
#[test]
fn region_lines_with_and_without_slope_match_reference() {
    let mut rng = Rng(6);
    for shape in [vec![1, 21, 224, 224], vec![2, 5, 9, 11]] {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let logits: Vec<f32> = (0..n * c * s).map(|_| (rng.normal() * 3.0) as f32).collect();
        let target = Target::Labels(Cow::Owned((0..n * s).map(|_| rng.below(c) as i64).collect()));
        let b = Batch::logits(shape, Mode::Multiclass, logits, target, None);
        let texts = [
            "dice",
            "dice+jaccard:squared=true",
            "dice:squared=true+lovasz",
            "sensspec+lovasz",
            "tversky:alpha=0.3,beta=0.7+ce",
            "dice@monai:squared=true",
        ];
        compare(&b, &texts.iter().map(|t| t.parse().unwrap()).collect::<Vec<_>>());
    }
}

/// The sigmoid statistics, gradient and hinge key passes run a workgroup row per (image, channel)
/// plane; more planes than a dispatch dimension holds (65535 rows) take several dispatches: both
/// against the reference, all expressions in one evaluation.
#[test]
fn more_channel_planes_than_workgroup_rows_match_reference() {
    let mut rng = Rng(5);
    for shape in [vec![3, 7, 5, 3], vec![64, 1025, 1]] {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let logits: Vec<f32> = (0..n * c * s).map(|_| (rng.normal() * 4.0) as f32).collect();
        let target = Target::Dense(Cow::Owned(
            (0..n * c * s).map(|_| if rng.below(9) == 0 { -1.0 } else { (rng.below(4) == 0) as u8 as f32 }).collect(),
        ));
        let b = Batch::logits(shape, Mode::Multilabel, logits, target, Some(-1));
        let texts = [
            "bce:pos_weight=3,reduction=none",
            "dice",
            "focal:alpha=0.25",
            "bce+sensspec",
            "bce+bce:label_smoothing=0.1+focal+focal:gamma=1+bce:pos_weight=2",
            "lovasz+lovasz:per_image=true",
        ];
        compare(&b, &texts.iter().map(|t| t.parse().unwrap()).collect::<Vec<_>>());
    }
}

#[test]
fn same_input_gives_bit_identical_results() {
    let mut rng = Rng(5);
    let engine = common::gpu();
    for mode in [Mode::Binary, Mode::Multiclass] {
        let b = batch(&mut rng, mode, 0);
        let input = Input::new(Cow::Borrowed(&b.logits), b.target.clone(), &b.shape, b.mode, b.ignore).unwrap();
        // All losses at once: more distinct pixel losses than one statistics pass holds.
        let exprs: Vec<LossExpr> = texts(mode, b.shape[1]).iter().map(|t| t.parse().unwrap()).collect();
        let first = engine.evaluate_blocking(&input, &exprs, true).unwrap();
        for _ in 0..3 {
            let again = engine.evaluate_blocking(&input, &exprs, true).unwrap();
            for (a, b) in first.iter().zip(&again) {
                assert_eq!(a.value.to_bits(), b.value.to_bits());
                let (ga, gb) = (a.grad.as_ref().unwrap(), b.grad.as_ref().unwrap());
                assert!(ga.iter().zip(gb).all(|(x, y)| x.to_bits() == y.to_bits()), "gradients differ between runs");
            }
        }
    }
}

/// A batch with levels: level 0 from `batch`, levels 1.. of odd sizes (each axis about halved).
fn with_levels(rng: &mut Rng, b: &Batch, levels: usize) -> Vec<(Vec<f32>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut shape = b.shape.clone();
    for _ in 1..levels {
        for d in shape.iter_mut().skip(2) {
            *d = (*d).div_ceil(2).max(1) + rng.below(2);
        }
        let numel: usize = shape.iter().product();
        let x: Vec<f32> = (0..numel)
            .map(|_| match b.kind {
                InputKind::Logits => (rng.normal() * 3.0) as f32,
                InputKind::Probs => [0.0, 1.0, rng.uniform() as f32][rng.below(3)],
            })
            .collect();
        out.push((x, shape.clone()));
    }
    out
}

#[test]
fn deep_supervision_matches_reference_on_odd_sizes_3d_and_probabilities() {
    let mut rng = Rng(31);
    let engine = common::gpu();
    for i in 0..10 {
        let mode = [Mode::Binary, Mode::Multilabel, Mode::Multiclass][i % 3];
        let mut b = batch(&mut rng, mode, i % 4);
        if i % 4 == 3 {
            b = probs(&mut rng, b);
        }
        let lv = with_levels(&mut rng, &b, 2 + i % 2);
        let levels = lv.iter().map(|(x, s)| (Cow::Borrowed(&x[..]), s.clone())).collect();
        let input = Input::new(Cow::Borrowed(&b.logits), b.target.clone(), &b.shape, b.mode, b.ignore)
            .unwrap()
            .with_levels(levels)
            .unwrap()
            .with_kind(b.kind)
            .unwrap();
        let texts: &[&str] = if mode == Mode::Multiclass {
            &[
                "deep(dice@monai)",
                "deep@two(dice@monai+focal@monai)",
                "deep@same(ce)",
                "deep:weights=1;0.3;0.1;9(dice+ce)",
            ]
        } else {
            &[
                "deep(dice@monai)",
                "deep@two(dice@monai+focal@monai)",
                "deep@same(bce)",
                "deep:weights=1;0.3;0.1;9(0.5*dice+bce)",
            ]
        };
        let exprs: Vec<LossExpr> = texts
            .iter()
            .map(|t| t.parse::<LossExpr>().unwrap())
            .filter(|e| e.check_input(mode, b.shape[1], b.kind).is_ok())
            .collect();
        assert!(exprs.len() >= 2);
        let what = format!("{} with {} levels", b.what, input.levels());
        let gpu = engine.evaluate_blocking(&input, &exprs, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (e, g) in exprs.iter().zip(gpu) {
            let r = reference::evaluate(&input, e).unwrap();
            assert!(
                (g.value - r.value).abs() <= 2e-5 + 2e-4 * r.value.abs(),
                "{what}: '{e}' {} vs {}",
                g.value,
                r.value
            );
            assert_eq!(g.level_grads.len(), input.levels() - 1, "{what}: '{e}'");
            let grads = std::iter::once(g.grad.as_ref().unwrap()).chain(&g.level_grads);
            let refs = std::iter::once(&r.grad).chain(&r.level_grads);
            for (l, (a, want)) in grads.zip(refs).enumerate() {
                let (d, m) = common::max_diff(a, want);
                assert!(d <= 1e-9 + 5e-4 * m, "{what}: '{e}' level {l} gradient max diff {d:e} of {m:e}");
            }
            // the sum of the levels' own evaluations, each against its resized target
            let n = input.levels();
            let sum: f64 = (0..n)
                .map(|l| reference::evaluate(&input.level(l).unwrap(), &e.level(l, n).unwrap()).unwrap().value)
                .sum();
            assert!((sum - r.value).abs() <= 1e-9 * r.value.abs().max(1.0), "{what}: '{e}' {sum} vs {}", r.value);
        }
    }
}

#[test]
fn levels_take_the_target_by_nearest_exact_indices() {
    // 26 -> 11 along one axis: i reads floor((2i + 1) 26 / 22)
    let labels: Vec<i64> = (0..26).collect();
    let c = 26;
    let x = vec![0.0f32; c * 26];
    let x1 = vec![0.0f32; c * 11];
    let input = Input::labels(&x, &labels, &[1, c, 26], None)
        .unwrap()
        .with_levels(vec![(Cow::Borrowed(&x1[..]), vec![1, c, 11])])
        .unwrap();
    let level = input.level(1).unwrap();
    let Target::Labels(t) = level.target() else { panic!("labels") };
    let want: Vec<i64> = (0..11).map(|i| ((2 * i + 1) * 26 / 22).min(25) as i64).collect();
    assert_eq!(t.to_vec(), want);
    assert_eq!(want, vec![1, 3, 5, 8, 10, 13, 15, 17, 20, 22, 24]);
    // a level of another N, C or rank is refused
    let bad = Input::labels(&x, &labels, &[1, c, 26], None)
        .unwrap()
        .with_levels(vec![(Cow::Borrowed(&x1[..]), vec![1, c, 11, 1])]);
    assert!(bad.unwrap_err().to_string().contains("levels share N, C"));
}

#[test]
fn masked_classes_with_neg_inf_logits_match_reference_or_are_refused_alike() {
    let mut rng = Rng(41);
    let engine = common::gpu();
    for i in 0..8 {
        let mut b = batch(&mut rng, Mode::Multiclass, i % 4);
        let (n, c) = (b.shape[0], b.shape[1]);
        let s: usize = b.shape[2..].iter().product();
        let Target::Labels(labels) = &b.target else { unreachable!() };
        // mask 30% of the classes of each pixel, never its true class (nor, when ignored, class 0);
        // some cases also mask the true class somewhere: ce and softmax focal must refuse those
        let on_true = i % 4 == 3;
        for img in 0..n {
            for p in 0..s {
                let lab = labels[img * s + p];
                let keep = if lab == 255 { 0 } else { lab as usize };
                for k in 0..c {
                    if (k != keep && rng.below(10) < 3) || (on_true && k == keep && lab != 255 && rng.below(50) == 0) {
                        b.logits[(img * c + k) * s + p] = f32::NEG_INFINITY;
                    }
                }
                if on_true && (0..c).all(|k| b.logits[(img * c + k) * s + p] == f32::NEG_INFINITY) {
                    b.logits[(img * c + (keep + 1) % c) * s + p] = 0.0;
                }
            }
        }
        let input = Input::new(Cow::Borrowed(&b.logits), b.target.clone(), &b.shape, b.mode, b.ignore).unwrap();
        let exprs: Vec<LossExpr> = texts(Mode::Multiclass, c).iter().map(|t| t.parse().unwrap()).collect();
        let mut compared = 0;
        for e in &exprs {
            let r = reference::evaluate(&input, e);
            let g = engine.evaluate_blocking(&input, std::slice::from_ref(e), true);
            match (r, g) {
                (Ok(r), Ok(mut g)) => {
                    let g = g.remove(0);
                    assert!(
                        (g.value - r.value).abs() <= 2e-5 + 2e-4 * r.value.abs(),
                        "{}: '{e}' {} vs {}",
                        b.what,
                        g.value,
                        r.value
                    );
                    let (d, m) = common::max_diff(g.grad.as_ref().unwrap(), &r.grad);
                    assert!(d <= 1e-9 + 5e-4 * m, "{}: '{e}' gradient {d:e} of {m:e}", b.what);
                    assert!(g.grad.unwrap().iter().all(|x| x.is_finite()));
                    compared += 1;
                }
                (Err(a), Err(b2)) => assert_eq!(a.to_string(), b2.to_string(), "{}: '{e}'", b.what),
                (a, g) => {
                    panic!("{}: '{e}' reference {:?} engine {:?}", b.what, a.map(|r| r.value), g.map(|v| v[0].value))
                }
            }
        }
        assert!(compared >= 10, "{}: {compared} compared", b.what);
    }
}

#[test]
fn huge_class_weights_give_the_reference_values_not_an_overflow() {
    // weights near the f32 range: the device divides them by their largest (the sums would
    // overflow f32 otherwise); values that fit in f32 come out as the f64 reference has them
    let mut rng = Rng(51);
    let engine = common::gpu();
    for mode in [Mode::Multiclass, Mode::Multilabel] {
        let mut b = batch(&mut rng, mode, 0);
        while b.shape[1] < 3 {
            b = batch(&mut rng, mode, 0);
        }
        let c = b.shape[1];
        let w = |big: &str| {
            (0..c).map(|k| if k % 2 == 0 { big.to_string() } else { "1e36".into() }).collect::<Vec<_>>().join(";")
        };
        let mut texts = vec![
            format!("focal:weights={}", w("2e38")),
            format!("focal@monai:weights={}", w("1e37")),
            format!("dice:weights={}", w("2e38")),
            format!("dice@monai:weights={}", w("3e38")),
            format!("0.000000000000000000000000000001*jaccard@monai:weights={},norm=count", w("1e37")),
        ];
        if mode == Mode::Multiclass {
            texts.push(format!("focal:act=softmax,weights={}", w("1e37")));
        } else {
            texts.push(format!("bce:pos_weight={}", w("1e30")));
        }
        let input = Input::new(Cow::Borrowed(&b.logits), b.target.clone(), &b.shape, b.mode, b.ignore).unwrap();
        let mut compared = 0;
        for t in &texts {
            let e: LossExpr = t.parse().unwrap();
            let r = reference::evaluate(&input, &e);
            let g = engine.evaluate_blocking(&input, std::slice::from_ref(&e), true);
            match (r, g) {
                (Ok(r), Ok(g)) => {
                    let g = &g[0];
                    assert!(
                        (g.value - r.value).abs() <= 1e-5 * r.value.abs().max(1e-30),
                        "{}: '{t}' {} vs {}",
                        b.what,
                        g.value,
                        r.value
                    );
                    let (d, m) = common::max_diff(g.grad.as_ref().unwrap(), &r.grad);
                    assert!(d <= 1e-3 * m, "{}: '{t}' gradient {d:e} of {m:e}", b.what);
                    compared += 1;
                }
                // a value past the f32 range is an overflow on both
                (Err(a), Err(b2)) => assert_eq!(a.to_string().split(':').next(), b2.to_string().split(':').next()),
                (a, g) => {
                    panic!("{}: '{t}' reference {:?} engine {:?}", b.what, a.map(|r| r.value), g.map(|v| v[0].value))
                }
            }
        }
        assert!(compared >= 5, "{}: {compared} compared", b.what);
    }
}
