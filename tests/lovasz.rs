//! Lovász hinge and Lovász-Softmax on the GPU against the f64 CPU reference: per_image both ways,
//! present/all classes, ignore_index, empty and full targets, ignore-only images, tied errors,
//! logits of +-80, segment sizes from 1 to 2^20, bit-identical repeats, and use inside sums.

mod common;

use std::borrow::Cow;

use common::Rng;
use segloss::{reference, Input, InputKind, LossExpr, Mode, Target};

struct Case {
    shape: Vec<usize>,
    mode: Mode,
    logits: Vec<f32>,
    target: Target<'static>,
    ignore: Option<i64>,
    kind: InputKind,
}

impl Case {
    fn input(&self) -> Input<'_> {
        Input::new(Cow::Borrowed(&self.logits), self.target.clone(), &self.shape, self.mode, self.ignore)
            .unwrap()
            .with_kind(self.kind)
            .unwrap()
    }
}

/// kind: 0 random, 1 empty target, 2 all foreground, 3 first image ignored entirely, 4 rare foreground
fn case(rng: &mut Rng, mode: Mode, shape: Vec<usize>, kind: usize, quantize: bool) -> Case {
    let (n, c) = (shape[0], shape[1]);
    let s: usize = shape[2..].iter().product();
    let logits: Vec<f32> = (0..n * c * s)
        .map(|_| {
            let x = rng.normal() * 3.0;
            if quantize {
                ((x * 2.0).round() / 2.0) as f32
            } else {
                x as f32
            }
        })
        .collect();
    let ignore = Some(255);
    let target = if mode == Mode::Multiclass {
        Target::Labels(Cow::Owned(
            (0..n * s)
                .map(|i| match kind {
                    1 => 0,
                    2 => (c - 1) as i64,
                    3 if i < s => 255,
                    4 => {
                        if rng.below(30) == 0 {
                            1
                        } else {
                            0
                        }
                    }
                    _ => {
                        if rng.below(8) == 0 {
                            255
                        } else {
                            rng.below(c) as i64
                        }
                    }
                })
                .collect(),
        ))
    } else {
        Target::Dense(Cow::Owned(
            (0..n * c * s)
                .map(|i| match kind {
                    1 => 0.0,
                    2 => 1.0,
                    3 if i < c * s => 255.0,
                    4 => (rng.below(30) == 0) as u8 as f32,
                    _ => {
                        if rng.below(9) == 0 {
                            255.0
                        } else {
                            (rng.below(3) == 0) as u8 as f32
                        }
                    }
                })
                .collect(),
        ))
    };
    Case { shape, mode, logits, target, ignore, kind: InputKind::Logits }
}

/// Values must agree; gradients must agree except at a few elements whose f32 and f64 errors
/// order differently (near-ties), and their sums must agree.
fn compare(c: &Case, texts: &[&str]) {
    compare_on(common::gpu(), c, texts);
}

/// [`compare`] on `engine`.
fn compare_on(engine: &segloss::Engine, c: &Case, texts: &[&str]) {
    let input = c.input();
    let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
    let gpu = engine.evaluate_blocking(&input, &exprs, true).unwrap();
    for (e, g) in exprs.iter().zip(gpu) {
        let r = reference::evaluate(&input, e).unwrap();
        let what = format!("'{e}' {} {:?}", c.mode, c.shape);
        assert!(
            (g.value - r.value).abs() <= 1e-5 + 2e-4 * r.value.abs(),
            "{what}: value gpu {} cpu {}",
            g.value,
            r.value
        );
        let grad = g.grad.unwrap();
        let (_, m) = common::max_diff(&grad, &r.grad);
        let bad = grad.iter().zip(&r.grad).filter(|(a, b)| (**a as f64 - **b).abs() > 1e-7 + 2e-3 * m).count();
        assert!(bad * 200 <= grad.len().max(200), "{what}: {bad} of {} gradient elements differ", grad.len());
        let (sg, sr): (f64, f64) = (grad.iter().map(|&x| x as f64).sum(), r.grad.iter().sum());
        let abs: f64 = r.grad.iter().map(|x| x.abs()).sum();
        assert!((sg - sr).abs() <= 1e-6 + 1e-3 * abs, "{what}: gradient sums {sg} vs {sr}");
    }
}

const HINGE: &[&str] = &["lovasz", "lovasz:per_image=true", "bce+lovasz:per_image=true", "0.5*dice+0.5*lovasz"];
const SOFTMAX: &[&str] = &[
    "lovasz",
    "lovasz:per_image=true",
    "lovasz:classes=all",
    "lovasz:per_image=true,classes=all",
    "0.8*ce+0.2*lovasz",
];

#[test]
fn hinge_matches_reference() {
    let mut rng = Rng(31);
    for (i, mode) in [Mode::Binary, Mode::Multilabel].into_iter().cycle().take(10).enumerate() {
        let c = if mode == Mode::Binary { 1 } else { 1 + rng.below(4) };
        let shape = vec![1 + rng.below(4), c, 1 + rng.below(70), 1 + rng.below(70)];
        compare(&case(&mut rng, mode, shape, i % 5, false), HINGE);
    }
}

#[test]
fn softmax_matches_reference() {
    let mut rng = Rng(32);
    for i in 0..10 {
        let shape = vec![1 + rng.below(4), 2 + rng.below(12), 1 + rng.below(60), 1 + rng.below(60)];
        compare(&case(&mut rng, Mode::Multiclass, shape, i % 5, false), SOFTMAX);
    }
}

#[test]
fn segment_sizes_from_1_to_2_pow_20() {
    let mut rng = Rng(33);
    for s in [1usize, 2, 3, 1000, 1023, 1025, 4099, 65_537, (1 << 20) - 5, 1 << 20] {
        compare(&case(&mut rng, Mode::Binary, vec![1, 1, s], 0, false), &["lovasz"]);
    }
    for s in [1usize, 7, 1025, 100_003] {
        compare(&case(&mut rng, Mode::Multiclass, vec![2, 3, s], 0, false), &["lovasz:per_image=true"]);
    }
}

#[test]
fn extreme_logits_match_reference() {
    // Every kind of target (random, empty, all foreground, an ignore-only image, rare foreground)
    // with logits of scale 80:
    // - the hinge: N(0, 120^2) clipped at +-80 (errors up to 81), and exactly +-80;
    // - the softmax: N(0, 30^2) (logits past +-100), and exactly +-80 with m = 1, 3 or 4 of the 4
    //   classes at +80: p is 1/m there and 0 (f32) or e^-160/m (f64) elsewhere, so the tie groups
    //   are the same in f32 and f64. (With m = 2, a foreground error 1 - p and a background error p
    //   tie at 0.5 in f32 but not in f64, where exp rounds p off 0.5; Lovász may order ties in any
    //   way, and the two orders give those elements different gradients: the tied-errors test below
    //   checks ties through tie-group sums instead.) At the zero-error ties, d p / d x is 0 in f32.
    let mut rng = Rng(38);
    for kind in 0..5 {
        for (mode, c, texts) in [(Mode::Multiclass, 4, SOFTMAX), (Mode::Binary, 1, HINGE), (Mode::Multilabel, 3, HINGE)]
        {
            for exact in [false, true] {
                let mut case = case(&mut rng, mode, vec![2, c, 30, 33], kind, false);
                let s = 30 * 33;
                match (exact, mode) {
                    (false, Mode::Multiclass) => case.logits.iter_mut().for_each(|x| *x *= 10.0),
                    (false, _) => case.logits.iter_mut().for_each(|x| *x = (*x * 40.0).clamp(-80.0, 80.0)),
                    (true, Mode::Multiclass) => {
                        for px in 0..2 * s {
                            let m = [1, 3, 4][rng.below(3)];
                            let mut classes = [0, 1, 2, 3];
                            for i in (1..4).rev() {
                                classes.swap(i, rng.below(i + 1));
                            }
                            for (j, &k) in classes.iter().enumerate() {
                                case.logits[((px / s) * c + k) * s + px % s] = if j < m { 80.0 } else { -80.0 };
                            }
                        }
                    }
                    (true, _) => case.logits.iter_mut().for_each(|x| *x = 80f32.copysign(*x)),
                }
                compare(&case, texts);
            }
        }
    }
}

#[test]
fn tied_errors_give_the_reference_value_and_tie_group_sums() {
    // Logits on a half-integer grid: errors 1 - x (2g - 1) are exact in f32 and f64, with huge tie
    // groups. The value does not depend on the tie order; the sum over a tie group of each
    // element's Jaccard weight (gradient / d error / d x) does not either.
    let mut rng = Rng(34);
    for per_image in [false, true] {
        let c = case(&mut rng, Mode::Binary, vec![3, 1, 40, 50], 0, true);
        let input = c.input();
        let expr: LossExpr = if per_image { "lovasz:per_image=true" } else { "lovasz" }.parse().unwrap();
        let g = common::gpu().evaluate_blocking(&input, std::slice::from_ref(&expr), true).unwrap().remove(0);
        let r = reference::evaluate(&input, &expr).unwrap();
        assert!((g.value - r.value).abs() <= 1e-5 * r.value.abs().max(1.0), "{} vs {}", g.value, r.value);
        let Target::Dense(t) = &c.target else { unreachable!() };
        let mut groups = std::collections::BTreeMap::<(usize, i64), (f64, f64)>::new();
        let per = c.logits.len() / 3;
        for i in 0..c.logits.len() {
            if t[i] == 255.0 {
                continue;
            }
            let sign = 2.0 * t[i] as f64 - 1.0;
            let err = 1.0 - c.logits[i] as f64 * sign;
            if err <= 0.0 {
                continue;
            }
            let seg = if per_image { i / per } else { 0 };
            let e = groups.entry((seg, (err * 4.0).round() as i64)).or_default();
            e.0 += g.grad.as_ref().unwrap()[i] as f64 * -sign;
            e.1 += r.grad[i] * -sign;
        }
        assert!(groups.len() > 5);
        for ((seg, key), (a, b)) in groups {
            assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "segment {seg} error {}: {a} vs {b}", key as f64 / 4.0);
        }
    }
}

#[test]
fn repeated_runs_are_bit_identical() {
    let mut rng = Rng(35);
    for (mode, shape, texts) in
        [(Mode::Multiclass, vec![2, 5, 50, 70], SOFTMAX), (Mode::Binary, vec![3, 1, 70, 90], HINGE)]
    {
        let c = case(&mut rng, mode, shape, 0, true);
        let input = c.input();
        let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let a = common::gpu().evaluate_blocking(&input, &exprs, true).unwrap();
        for _ in 0..2 {
            let b = common::gpu().evaluate_blocking(&input, &exprs, true).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.value.to_bits(), y.value.to_bits());
                let (gx, gy) = (x.grad.as_ref().unwrap(), y.grad.as_ref().unwrap());
                assert!(gx.iter().zip(gy).all(|(p, q)| p.to_bits() == q.to_bits()));
            }
        }
    }
}

/// The sort, compaction and Jaccard weights of a CPU adapter (a thread per tile) and of a GPU
/// (a workgroup per tile) are stable and count in integers, so they order ties alike and weigh
/// alike: the same gradients bit for bit, on segments of several tiles, with ties (quantized
/// logits) and ignored pixels. The values add their tiles' terms in another order (in sequence,
/// against a tree): equal to float rounding.
#[test]
fn both_tilings_give_the_same_gradient_bits() {
    let other = segloss::Engine::gpu_blocking().unwrap();
    // (the engine's default: a thread per tile on CPU adapters)
    other.set_tile_scatter(other.info().device_type != "Cpu");
    let mut rng = Rng(36);
    for (mode, shape, texts) in
        [(Mode::Multiclass, vec![2, 5, 90, 70], SOFTMAX), (Mode::Binary, vec![3, 1, 110, 90], HINGE)]
    {
        let c = case(&mut rng, mode, shape, 0, true);
        let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let a = common::gpu().evaluate_blocking(&c.input(), &exprs, true).unwrap();
        let b = other.evaluate_blocking(&c.input(), &exprs, true).unwrap();
        for ((x, y), t) in a.iter().zip(&b).zip(texts) {
            assert!((x.value - y.value).abs() <= 1e-6 * x.value.abs(), "{t}: {} vs {}", x.value, y.value);
            let (gx, gy) = (x.grad.as_ref().unwrap(), y.grad.as_ref().unwrap());
            assert!(gx.iter().zip(gy).all(|(p, q)| p.to_bits() == q.to_bits()), "{t}");
        }
    }
}

/// A hinge alone writes its gradient from its weights pass (gpu::lovasz::HingeGrad), and beside
/// one pixel term adds it to the one the statistics pass wrote; with another expression on the
/// same Lovász loss it goes through the gradient pass. Both give the reference's
/// values and the same gradients, on empty and full targets, ignored images and odd sizes.
#[test]
fn the_hinge_alone_writes_the_gradient_pass_gradient() {
    let mut rng = Rng(41);
    let pairs = [
        ("lovasz", "bce+lovasz"),
        ("0.3*lovasz", "bce+lovasz"),
        ("lovasz:per_image=true", "dice+lovasz:per_image=true"),
        ("2*lovasz:per_image=true", "bce+lovasz:per_image=true"),
        // (beside a pixel term, the hinge's gradient added to the one the statistics pass wrote)
        ("bce+lovasz:per_image=true", "lovasz:per_image=true"),
        ("focal+0.5*lovasz", "dice+0.5*lovasz"),
    ];
    // (and the GPU kernels, on an engine of their own)
    let other = segloss::Engine::gpu_blocking().unwrap();
    other.set_tile_scatter(other.info().device_type != "Cpu");
    for (i, mode) in [Mode::Binary, Mode::Multilabel].into_iter().cycle().take(10).enumerate() {
        let c = if mode == Mode::Binary { 1 } else { 1 + rng.below(3) };
        let shape = vec![1 + rng.below(4), c, 1 + rng.below(60), 1 + rng.below(60)];
        let case = case(&mut rng, mode, shape, i % 5, i % 3 == 0);
        for (alone, partner) in pairs {
            compare(&case, &[alone]);
            let exprs: Vec<LossExpr> = [alone, partner].iter().map(|t| t.parse().unwrap()).collect();
            for engine in [common::gpu(), &other] {
                let one = engine.evaluate_blocking(&case.input(), &exprs[..1], true).unwrap();
                let both = engine.evaluate_blocking(&case.input(), &exprs, true).unwrap();
                assert_eq!(one[0].value.to_bits(), both[0].value.to_bits(), "{alone} {:?}", case.shape);
                assert_eq!(one[0].grad, both[0].grad, "{alone} {:?}", case.shape);
            }
        }
    }
}

#[test]
fn soft_labels_are_rejected() {
    let x = vec![0.5f32; 8];
    let t = vec![0.3f32; 8];
    let input = Input::dense(&x, &t, &[1, 1, 8], Mode::Binary).unwrap();
    let e = common::gpu().evaluate_blocking(&input, &["lovasz".parse().unwrap()], true).unwrap_err().to_string();
    assert!(e.contains("hard 0/1 labels"), "{e}");
    // the first soft element named, as the device's checks of a buffer input name it; the
    // reference, the statistics and a batch alike
    let t = [1.0f32, 0.0, 255.0, 0.5, 1.0, 0.25];
    let input =
        Input::new(Cow::Borrowed(&x[..6]), Target::Dense(Cow::Borrowed(&t)), &[1, 2, 3], Mode::Multilabel, Some(255))
            .unwrap();
    let want = "lovasz needs hard 0/1 labels, but target element 3 (at index [0, 1, 0]) is soft";
    let lovasz: LossExpr = "dice+lovasz".parse().unwrap();
    let engine = common::gpu();
    let mut batch = engine.batch();
    let pending = batch.push(&input, std::slice::from_ref(&lovasz), true).unwrap();
    batch.flush_blocking().unwrap();
    let got = [
        engine.evaluate_blocking(&input, std::slice::from_ref(&lovasz), true).unwrap_err(),
        reference::evaluate(&input, &lovasz).unwrap_err(),
        engine.statistics_blocking(&input, std::slice::from_ref(&lovasz)).unwrap_err(),
        pending.wait().unwrap_err(),
    ];
    for e in got {
        assert_eq!(e.to_string(), format!("bad target value: {want}"));
    }
}

#[test]
fn reused_scratch_buffers_do_not_leak_between_evaluations() {
    // The engine keeps scratch buffers between calls. Interleave batches whose buffers have the
    // same sizes but different contents (softmax and hinge, different data, different parameters)
    // on a private engine: every result must equal the first evaluation of the same batch.
    let engine = segloss::Engine::gpu_blocking().expect("a GPU adapter (see tests/common)");
    let mut rng = Rng(36);
    let cases = [
        case(&mut rng, Mode::Multiclass, vec![2, 4, 30, 40], 0, false),
        case(&mut rng, Mode::Multiclass, vec![2, 4, 30, 40], 4, false),
        case(&mut rng, Mode::Multilabel, vec![2, 4, 30, 40], 0, false),
        case(&mut rng, Mode::Binary, vec![8, 1, 30, 40], 3, false),
    ];
    let texts: Vec<Vec<LossExpr>> = [
        &["lovasz", "0.8*ce+0.2*lovasz:per_image=true"][..],
        &["lovasz:classes=all", "dice+lovasz"][..],
        &["lovasz:per_image=true", "bce+lovasz"][..],
        &["lovasz", "focal+lovasz:per_image=true"][..],
    ]
    .iter()
    .map(|ts| ts.iter().map(|t| t.parse().unwrap()).collect())
    .collect();
    let run = |i: usize| engine.evaluate_blocking(&cases[i].input(), &texts[i], true).unwrap();
    let first: Vec<_> = (0..cases.len()).map(run).collect();
    for round in 0..2 {
        for i in (0..cases.len()).rev() {
            for (a, b) in first[i].iter().zip(run(i)) {
                assert_eq!(a.value.to_bits(), b.value.to_bits(), "case {i}, round {round}: value");
                let (ga, gb) = (a.grad.as_ref().unwrap(), b.grad.as_ref().unwrap());
                assert!(ga.iter().zip(gb).all(|(p, q)| p.to_bits() == q.to_bits()), "case {i}, round {round}: grad");
            }
        }
    }
    // freeing the kept buffers changes nothing either
    engine.release_scratch();
    for (i, a) in first.iter().enumerate() {
        for (x, y) in a.iter().zip(run(i)) {
            assert_eq!(x.value.to_bits(), y.value.to_bits(), "case {i} after release_scratch");
        }
    }
    // and the first evaluations were right to begin with
    for (c, exprs) in cases.iter().zip(&texts) {
        compare(
            c,
            &exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        );
    }
}

#[test]
fn softmax_with_confident_and_wrong_pixels_matches_reference() {
    // Lovász-Softmax at its edges: foreground pixels predicted with p = 1 exactly in f32 (error 0,
    // keys that sort last), classes without foreground (classes=all), confidently wrong pixels, and
    // segments whose foreground all sits at the top.
    let mut rng = Rng(37);
    for variant in 0..4 {
        let (n, c, s) = (2, 5, 40 * 30);
        let labels: Vec<i64> =
            (0..n * s).map(|_| if rng.below(10) == 0 { 255 } else { rng.below(c - 1) as i64 }).collect();
        let mut logits = vec![0f32; n * c * s];
        for img in 0..n {
            for i in 0..s {
                let lab = labels[img * s + i];
                for k in 0..c {
                    let x = rng.normal() as f32;
                    logits[(img * c + k) * s + i] = match variant {
                        // confident and right: p = 1 exactly for the true class
                        0 if k as i64 == lab && i % 3 == 0 => 40.0,
                        // confident and right everywhere: the largest foreground error is tiny
                        1 if k as i64 == lab => 12.0 + x,
                        // confident and wrong on a third of the pixels
                        2 if i % 3 == 0 && k as i64 == (lab + 1) % c as i64 => 30.0,
                        _ => 3.0 * x,
                    };
                }
            }
        }
        let c_ = Case {
            shape: vec![n, c, 40, 30],
            mode: Mode::Multiclass,
            logits,
            target: Target::Labels(Cow::Owned(labels)),
            kind: InputKind::Logits,
            ignore: Some(255),
        };
        compare(&c_, SOFTMAX);
    }
}

#[test]
fn softmax_on_probabilities_matches_reference() {
    // Lovász-Softmax on given probabilities (no softmax): unnormalized channels, exact one-hot
    // pixels equal to the target (error 0) and exact zeros, per batch and per image.
    let mut rng = Rng(38);
    for kind in 0..3 {
        let mut c = case(&mut rng, Mode::Multiclass, vec![3, 4, 23, 17], kind, false);
        let Target::Labels(labels) = &c.target else { unreachable!() };
        let (n, k, s) = (3, 4, 23 * 17);
        for img in 0..n {
            for i in 0..s {
                let lab = labels[img * s + i];
                let hot = rng.below(5) == 0 && lab != 255;
                for ch in 0..k {
                    let e = (img * k + ch) * s + i;
                    c.logits[e] = if hot {
                        (ch as i64 == lab) as u8 as f32
                    } else if rng.below(10) == 0 {
                        0.0
                    } else {
                        rng.uniform() as f32
                    };
                }
            }
        }
        c.kind = InputKind::Probs;
        compare(&c, &["lovasz", "lovasz:per_image=true", "lovasz:classes=all", "0.5*dice+lovasz:per_image=true"]);
    }
}

/// A GPU sorts every Lovász segment of up to 2048 elements with the bitonic network, over each
/// segment's kept elements only (variable lengths, compact.wgsl); lavapipe's own crossover is 16.
/// Here the GPU's crossover runs on it, with the GPU's kernels and with the CPU adapters' tiles
/// (whose compaction leaves such a segment dense: one tile).
#[test]
fn the_bitonic_network_up_to_2048_matches_the_reference_with_either_kernels() {
    for tiles in [false, true] {
        let engine = segloss::Engine::gpu_blocking().unwrap();
        engine.set_tile_scatter(tiles);
        engine.set_bitonic_crossover(2048);
        assert_eq!(engine.bitonic_crossover(), 2048);
        let mut rng = Rng(57);
        for kind in 0..5 {
            // per image, segments of 1 to 2025 elements (the bitonic network); over a batch, up
            // to 6075 (the radix sort past 2048)
            let shape = vec![1 + rng.below(3), 2 + rng.below(3), 1 + rng.below(45), 1 + rng.below(45)];
            compare_on(&engine, &case(&mut rng, Mode::Multiclass, shape, kind, kind % 2 == 0), SOFTMAX);
            let shape = vec![1 + rng.below(3), 1, 1 + rng.below(30), 1 + rng.below(30)];
            compare_on(&engine, &case(&mut rng, Mode::Binary, shape, kind, kind % 2 == 1), HINGE);
        }
    }
}

#[test]
fn tiles_that_keep_no_element_after_scratch_of_other_data() {
    // On CPU adapters the compactions write the kept keys to the front of each tile of the sort's
    // first pass, and that pass reads each tile's count: tiles whose elements are all ignored (or,
    // for the hinge, confidently right: error <= 0) keep nothing, and their digit counts must
    // still be zeroed (the scratch holds an earlier evaluation's). Segments of 8-bit tiles (2048)
    // and of the wide tiles of long segments (16384, from 2^20 elements). (The CPU adapters'
    // kernels on any adapter.)
    let engine = segloss::Engine::gpu_blocking().unwrap();
    engine.set_tile_scatter(true);
    let mut rng = Rng(42);
    // Lovász-Softmax's compaction: a class segment's tiles of ignored pixels keep nothing
    for shape in [vec![2, 3, 64, 64], vec![1, 2, 1024, 1024]] {
        let warm = case(&mut rng, Mode::Multiclass, shape.clone(), 0, false);
        let mut c = case(&mut rng, Mode::Multiclass, shape.clone(), 0, false);
        let Target::Labels(l) = &mut c.target else { unreachable!() };
        let l = l.to_mut();
        let run = (3 * 16384).min(l.len() / 2);
        l[..run].iter_mut().for_each(|v| *v = 255);
        for text in ["lovasz", "lovasz:per_image=true", "lovasz:classes=all"] {
            let e: Vec<LossExpr> = vec![text.parse().unwrap()];
            engine.evaluate_blocking(&warm.input(), &e, true).unwrap();
            compare_on(&engine, &c, &[text]);
        }
    }
    // the hinge's: tiles whose elements are all right or ignored
    for shape in [vec![2, 1, 64, 128], vec![1, 1, 1024, 1024]] {
        let warm = case(&mut rng, Mode::Binary, shape.clone(), 0, false);
        let mut c = case(&mut rng, Mode::Binary, shape.clone(), 0, false);
        let Target::Dense(t) = &mut c.target else { unreachable!() };
        let t = t.to_mut();
        let per = c.logits.len() / shape[0];
        for img in 0..shape[0] {
            // the first image (and the first three wide tiles) right; then a run ignored
            let right = if img == 0 { per.min(3 * 16384) } else { 2048 };
            let (a, b) = (img * per, img * per + right);
            for (x, g) in c.logits[a..b].iter_mut().zip(&mut t[a..b]) {
                if *g == 255.0 {
                    *g = 0.0;
                }
                *x = if *g == 1.0 { 4.0 } else { -4.0 };
            }
            t[b..(b + 2048).min((img + 1) * per)].iter_mut().for_each(|g| *g = 255.0);
        }
        let c = Case { ignore: Some(255), ..c };
        for text in ["lovasz", "lovasz:per_image=true"] {
            let e: Vec<LossExpr> = vec![text.parse().unwrap()];
            engine.evaluate_blocking(&warm.input(), &e, true).unwrap();
            compare_on(&engine, &c, &[text]);
        }
    }
}

/// `len` values `lo + (i + 1/4) step`, shuffled. With `lo` a multiple of `step / 2`, no two of
/// them add up to 0 (so no hinge errors `1 - x` and `1 + x'` tie) or to 1 (nor softmax errors
/// `1 - p` and `p'`), and for the grids below the errors are exact in f32 and f64: the GPU sorts
/// them in the reference's order, and every element's weight can be held to the reference's.
fn distinct_grid(rng: &mut Rng, len: usize, lo: f64, step: f64) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|i| (lo + (i as f64 + 0.25) * step) as f32).collect();
    for i in (1..len).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Segments of 2^20 elements and more, every element kept: a CPU adapter's local compaction and
/// the sort's first pass walk a whole compaction tile in one thread, and llvmpipe ends a shader's
/// loops after 65535 iterations in all, silently. With tiles of 4 x 16384 elements the walks
/// stopped short: the last element of every tile was left out of the sort (a zero gradient where
/// the reference's is not), and with every element kept the first pass left slots of stale
/// scratch (NaN values). Errors distinct and exact, so no element may differ.
#[test]
fn segments_of_2_pow_20_and_more_sort_every_kept_element() {
    let mut rng = Rng(41);
    let len = 1usize << 20;
    let hinge = |rng: &mut Rng, shape: Vec<usize>| {
        let numel: usize = shape.iter().product();
        // |x| < 1/2 on a grid of 2^-21 (errors within 1/2..3/2, to 2^-23: exact): every error
        // 1 - x (2g - 1) is positive, every element kept
        let step = 1.0 / (1u64 << 21) as f64;
        let logits = distinct_grid(rng, numel, -((numel / 2) as f64) * step, step);
        let target = Target::Dense(Cow::Owned((0..numel).map(|_| rng.below(2) as f32).collect()));
        Case { shape, mode: Mode::Binary, logits, target, ignore: None, kind: InputKind::Logits }
    };
    let mut cases = vec![
        (hinge(&mut rng, vec![1, 1, len]), "lovasz"),
        (hinge(&mut rng, vec![1, 1, len + 3]), "lovasz"),
        (hinge(&mut rng, vec![2, 1, len]), "lovasz:per_image=true"),
        (hinge(&mut rng, vec![1, 1, len + 1]), "bce+lovasz"),
    ];
    // Lovász-Softmax on probabilities (channels need not sum to 1): one segment per class of
    // 2^20 + 1 pixels
    let s = len + 1;
    let probs = distinct_grid(&mut rng, 2 * s, 0.0, 1.0 / (1u64 << 22) as f64);
    let labels = Target::Labels(Cow::Owned((0..s).map(|_| rng.below(2) as i64).collect()));
    cases.push((
        Case {
            shape: vec![1, 2, s],
            mode: Mode::Multiclass,
            logits: probs,
            target: labels,
            ignore: None,
            kind: InputKind::Probs,
        },
        "lovasz:classes=all",
    ));
    for (c, text) in &cases {
        let input = c.input();
        let expr: LossExpr = text.parse().unwrap();
        let g = common::gpu().evaluate_blocking(&input, std::slice::from_ref(&expr), true).unwrap().remove(0);
        let r = reference::evaluate(&input, &expr).unwrap();
        let what = format!("'{text}' {:?}", c.shape);
        assert!((g.value - r.value).abs() <= 1e-5 * r.value.abs().max(1.0), "{what}: value {} vs {}", g.value, r.value);
        let grad = g.grad.unwrap();
        let (_, m) = common::max_diff(&grad, &r.grad);
        let bad: Vec<usize> = (0..grad.len())
            .filter(|&i| grad[i].is_nan() || (grad[i] as f64 - r.grad[i]).abs() > 1e-9 + 1e-3 * m)
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: {} gradient elements differ, the first at {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
}
