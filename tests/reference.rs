//! The f64 CPU reference against central finite differences of its own values, and its
//! definitions checked by hand-computed small cases.

mod common;

use std::borrow::Cow;

use common::Rng;
use segloss::{reference, Error, Input, InputKind, LossExpr, Mode, Target};

fn fd_check(shape: &[usize], mode: Mode, target: Target<'static>, ignore: Option<i64>, texts: &[&str], rng: &mut Rng) {
    fd_check_kind(shape, mode, InputKind::Logits, target, ignore, texts, rng)
}

/// Central differences of the reference's values against its gradient, by the logits or (away
/// from the clamps) by the probabilities.
fn fd_check_kind(
    shape: &[usize],
    mode: Mode,
    kind: InputKind,
    target: Target<'static>,
    ignore: Option<i64>,
    texts: &[&str],
    rng: &mut Rng,
) {
    let numel: usize = shape.iter().product();
    let logits: Vec<f32> = (0..numel)
        .map(|_| match kind {
            InputKind::Logits => (rng.normal() * 2.0) as f32,
            InputKind::Probs => (0.05 + 0.9 * rng.uniform()) as f32,
        })
        .collect();
    fn make<'a>(
        x: Cow<'a, [f32]>,
        t: &Target<'static>,
        shape: &[usize],
        mode: Mode,
        ignore: Option<i64>,
        kind: InputKind,
    ) -> Input<'a> {
        Input::new(x, t.clone(), shape, mode, ignore).unwrap().with_kind(kind).unwrap()
    }
    for text in texts {
        let expr: LossExpr = text.parse().unwrap();
        let input = make(Cow::Borrowed(&logits), &target, shape, mode, ignore, kind);
        let r = reference::evaluate(&input, &expr).unwrap();
        let h = 1e-3f32;
        for i in 0..numel {
            let mut lp = logits.clone();
            lp[i] += h;
            let mut lm = logits.clone();
            lm[i] -= h;
            // f32 logits: the step is exact in f32, so use the actual step
            let step = (lp[i] as f64) - (lm[i] as f64);
            let vp =
                reference::evaluate(&make(Cow::Owned(lp), &target, shape, mode, ignore, kind), &expr).unwrap().value;
            let vm =
                reference::evaluate(&make(Cow::Owned(lm), &target, shape, mode, ignore, kind), &expr).unwrap().value;
            let fd = (vp - vm) / step;
            let tol = 1e-5 + 2e-3 * fd.abs().max(r.grad[i].abs());
            assert!(
                (fd - r.grad[i]).abs() <= tol,
                "'{text}' {mode} {shape:?}: d/dx[{i}] analytic {} vs finite difference {fd}",
                r.grad[i]
            );
        }
    }
}

const DENSE: &[&str] = &[
    "bce",
    "bce:pos_weight=auto,label_smoothing=0.1",
    "focal:alpha=0.25",
    "focal:gamma=0.5",
    "dice",
    "dice:squared=true,log=true",
    "dice@monai",
    "dice@keras",
    "jaccard:squared=true",
    "jaccard@paddle",
    "tversky:alpha=0.3,beta=0.7,gamma=0.75",
    "gdice@monai",
    "gdice:weight=simple",
    "sensspec",
    "lovasz",
    "lovasz:per_image=true",
    "0.3*bce+0.7*dice:log=true",
];

#[test]
fn dense_gradients_match_finite_differences() {
    let mut rng = Rng(11);
    for (shape, mode) in [(vec![2, 1, 3, 4], Mode::Binary), (vec![2, 3, 5], Mode::Multilabel)] {
        let numel: usize = shape.iter().product();
        let t: Vec<f32> = (0..numel).map(|_| (rng.below(3) == 0) as u8 as f32).collect();
        fd_check(&shape, mode, Target::Dense(Cow::Owned(t)), None, DENSE, &mut rng);
        // soft labels (no Lovász) and ignored elements
        let soft: Vec<f32> = (0..numel).map(|i| if i % 7 == 3 { 255.0 } else { rng.uniform() as f32 }).collect();
        let no_lovasz: Vec<&str> = DENSE.iter().copied().filter(|t| !t.contains("lovasz")).collect();
        fd_check(&shape, mode, Target::Dense(Cow::Owned(soft)), Some(255), &no_lovasz, &mut rng);
    }
}

#[test]
fn multiclass_gradients_match_finite_differences() {
    let mut rng = Rng(12);
    let texts = [
        "ce",
        "ce:weights=1;2;0.5;3,label_smoothing=0.1",
        "focal",
        "focal:act=softmax,alpha=0.25,gamma=1.5",
        "dice",
        "dice@monai:squared=true",
        "jaccard:log=true",
        "tversky@monai:alpha=0.3,beta=0.7",
        "gdice@monai",
        "gdice:classes=1;3",
        "sensspec",
        "lovasz",
        "lovasz:per_image=true,classes=all",
        "0.8*ce+0.2*dice",
    ];
    let shape = [2, 4, 3, 3];
    let labels: Vec<i64> = (0..18).map(|i| if i % 5 == 4 { -100 } else { rng.below(4) as i64 }).collect();
    fd_check(&shape, Mode::Multiclass, Target::Labels(Cow::Owned(labels)), Some(-100), &texts, &mut rng);
}

#[test]
fn probability_gradients_match_finite_differences() {
    let mut rng = Rng(13);
    let dense = [
        "bce",
        "bce:label_smoothing=0.1",
        "focal",
        "focal:alpha=0.25,gamma=1.5",
        "dice",
        "dice@monai:squared=true",
        "jaccard:log=true",
        "tversky@monai:alpha=0.3,beta=0.7,gamma=1.5",
        "gdice@monai",
        "sensspec",
        "0.5*bce+dice",
    ];
    for (shape, mode) in [(vec![2, 1, 3, 4], Mode::Binary), (vec![2, 3, 5], Mode::Multilabel)] {
        let numel: usize = shape.iter().product();
        let t: Vec<f32> = (0..numel).map(|_| (rng.below(3) == 0) as u8 as f32).collect();
        fd_check_kind(&shape, mode, InputKind::Probs, Target::Dense(Cow::Owned(t)), None, &dense, &mut rng);
        let soft: Vec<f32> = (0..numel).map(|i| if i % 7 == 3 { 255.0 } else { rng.uniform() as f32 }).collect();
        fd_check_kind(&shape, mode, InputKind::Probs, Target::Dense(Cow::Owned(soft)), Some(255), &dense, &mut rng);
    }
    let multiclass =
        ["focal:alpha=0.25", "dice", "dice@monai", "jaccard", "tversky:alpha=0.3,beta=0.7", "gdice@monai", "lovasz"];
    let labels: Vec<i64> = (0..18).map(|i| if i % 5 == 4 { 255 } else { rng.below(4) as i64 }).collect();
    let target = Target::Labels(Cow::Owned(labels));
    fd_check_kind(&[2, 4, 3, 3], Mode::Multiclass, InputKind::Probs, target, Some(255), &multiclass, &mut rng);
}

/// Hand-computed values on probabilities: PyTorch's binary_cross_entropy clamps each log at -100;
/// smp's focal clamps p to [1e-7, 1 - 1e-7] (no gradient where it binds).
#[test]
fn probability_definitions_at_exact_zero_and_one() {
    let p = [0.0f32, 1.0, 0.0, 1.0];
    let g = [0.0f32, 1.0, 1.0, 0.0];
    let input = Input::dense_probs(&p, &g, &[1, 1, 4], Mode::Binary).unwrap();
    let bce = reference::evaluate(&input, &"bce".parse().unwrap()).unwrap();
    assert!((bce.value - 200.0 / 4.0).abs() < 1e-12, "{}", bce.value);
    // (p - g) / max(p (1 - p), 1e-12) / count
    assert_eq!(bce.grad, vec![0.0, 0.0, -1e12 / 4.0, 1e12 / 4.0]);
    let focal = reference::evaluate(&input, &"focal:gamma=0".parse().unwrap()).unwrap();
    let lo = -(1e-7f64).ln();
    let hi = -(-1e-7f64).ln_1p();
    assert!((focal.value - (2.0 * hi + 2.0 * lo) / 4.0).abs() < 1e-8, "{}", focal.value);
    assert!(focal.grad.iter().all(|&d| d == 0.0));
    // a region loss on exact probabilities: dice of a perfect prediction is 0
    let exact = Input::dense_probs(&g, &g, &[1, 1, 4], Mode::Binary).unwrap();
    assert_eq!(reference::evaluate(&exact, &"dice".parse().unwrap()).unwrap().value, 0.0);
    // refused: values outside [0, 1], and the losses that need logits
    assert!(Input::dense_probs(&[1.5f32], &[1.0], &[1, 1, 1], Mode::Binary).is_err());
    // a NaN or -inf among probabilities is named as a probability (Error::Input), not as a logit
    let nan = Input::dense_probs(&[f32::NAN], &[1.0], &[1, 1, 1], Mode::Binary).unwrap_err();
    assert!(matches!(&nan, Error::Input(m) if m.contains("probs[0] = NaN")), "{nan:?}");
    let neg = Input::labels_probs(&[f32::NEG_INFINITY, 1.0], &[1], &[1, 2, 1], None).unwrap_err();
    assert!(matches!(&neg, Error::Input(m) if m.contains("probs[0] = -inf")), "{neg:?}");
    for text in ["lovasz", "bce:pos_weight=2", "bce:pos_weight=auto"] {
        assert!(reference::evaluate(&input, &text.parse().unwrap()).is_err(), "{text}");
    }
    let pm = [0.5f32, 0.5, 0.5, 0.5];
    let mc = Input::labels_probs(&pm, &[0, 1], &[1, 2, 2], None).unwrap();
    for text in ["ce", "focal:act=softmax", "0.5*dice+ce"] {
        let e = reference::evaluate(&mc, &text.parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("probabilities"), "{text}: {e}");
    }
}

fn value(logits: &[f32], target: &[f32], shape: &[usize], text: &str) -> f64 {
    let input = Input::dense(logits, target, shape, Mode::Binary).unwrap();
    reference::evaluate(&input, &text.parse().unwrap()).unwrap().value
}

#[test]
fn definitions_on_hand_computed_cases() {
    // logits 0 -> p = 1/2 everywhere; 4 pixels, 1 foreground.
    let x = [0.0f32; 4];
    let g = [1.0f32, 0.0, 0.0, 0.0];
    let s = [1, 1, 4];
    let ln2 = std::f64::consts::LN_2;
    assert!((value(&x, &g, &s, "bce") - ln2).abs() < 1e-12);
    // pos_weight auto = (4 - 1) / 1 = 3: (3 ln2 + 3 ln2) / 4
    assert!((value(&x, &g, &s, "bce:pos_weight=auto") - 1.5 * ln2).abs() < 1e-12);
    // TP = 1/2, SP = 2, SG = 1: dice = 1 / 3
    assert!((value(&x, &g, &s, "dice") - (1.0 - 1.0 / 3.0)).abs() < 1e-12);
    // jaccard = 0.5 / (2 + 1 - 0.5) = 0.2
    assert!((value(&x, &g, &s, "jaccard") - 0.8).abs() < 1e-12);
    // tversky a=b=0.5 equals dice
    assert!((value(&x, &g, &s, "tversky") - value(&x, &g, &s, "dice")).abs() < 1e-12);
    // keras: 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert!((value(&x, &g, &s, "dice@keras") - 0.5).abs() < 1e-12);
    // focal gamma 2: p_t = 1/2 everywhere -> 0.25 ln 2; alpha 0.25: (0.25 + 3 * 0.75) / 4 of that
    assert!((value(&x, &g, &s, "focal") - 0.25 * ln2).abs() < 1e-12);
    assert!((value(&x, &g, &s, "focal:alpha=0.25") - 0.25 * ln2 * 2.5 / 4.0).abs() < 1e-12);
    // sensspec: (g-p)^2 = 1/4 everywhere; 0.05 * 0.25 / (1 + 1e-5) + 0.95 * 0.75 / (3 + 1e-5)
    let want = 0.05 * 0.25 / (1.0 + 1e-5) + 0.95 * 0.75 / (3.0 + 1e-5);
    assert!((value(&x, &g, &s, "sensspec") - want).abs() < 1e-12);
    // empty target: smp gives 0 for the empty class, MONAI the smoothed formula
    let e = [0.0f32; 4];
    assert_eq!(value(&x, &e, &s, "dice"), 0.0);
    let monai = 1.0 - 1e-5 / (2.0 + 1e-5);
    assert!((value(&x, &e, &s, "dice@monai") - monai).abs() < 1e-12);
    // bce:pos_weight=auto on an empty target is finite (PyTorch: inf weight)
    assert!(value(&x, &e, &s, "bce:pos_weight=auto").is_finite());
    // log of a zero score is finite: -log(eps)
    let far = [-80.0f32; 4];
    assert!((value(&far, &g, &s, "dice:log=true") + (1e-7f64).ln()).abs() < 1e-6);
}

#[test]
fn weighted_gradients_match_finite_differences() {
    let mut rng = Rng(14);
    let dense = [
        "bce:pos_weight=1;2.5;0.5",
        "focal:alpha=0.25,weights=1;2;0.5",
        "focal@monai:weights=1;0;0.5",
        "dice:weights=1;2;0.5",
        "dice@monai:weights=1;2;0.5",
        "dice@kornia:weights=1;2;0.5",
        "jaccard:pool=all,weights=2;1;0.5",
        "tversky:alpha=0.3,beta=0.7,gamma=1.5,weights=0.5;1;2",
        "dice:pool=image,norm=image,empty=skip,weights=2;1;0.5",
        "tversky@kornia:alpha=0.3,beta=0.7",
    ];
    let t: Vec<f32> = (0..2 * 3 * 5).map(|_| (rng.below(3) == 0) as u8 as f32).collect();
    fd_check(&[2, 3, 5], Mode::Multilabel, Target::Dense(Cow::Owned(t)), None, &dense, &mut rng);
    let multiclass = [
        "focal:weights=0.5;1;2;1.5",
        "focal@monai:act=softmax,alpha=0.25,weights=0.5;1;2;1.5",
        "focal@kornia:alpha=0.25",
        "focal:act=softmax,alpha=0.25,gamma=1.5",
        "dice:weights=0.5;1;2;0",
        "dice@monai:weights=0.5;1;2;1.5",
        "dice@kornia",
        "dice:classes=1;3,weights=2;0.5,pool=image_all",
        "jaccard:pool=image,norm=image,empty=skip,weights=1;0;2;1",
        "tversky@kornia:alpha=0.3,beta=0.7",
    ];
    let labels: Vec<i64> = (0..18).map(|i| if i % 5 == 4 { 255 } else { rng.below(4) as i64 }).collect();
    fd_check(&[2, 4, 3, 3], Mode::Multiclass, Target::Labels(Cow::Owned(labels)), Some(255), &multiclass, &mut rng);
}

/// Class weights and their norms on a case small enough to compute by hand.
#[test]
fn class_weight_norms_by_hand() {
    // two images, C = 2 (multilabel), one pixel each: class 1 absent from image 1
    let p = [1.0f32, 0.5, 0.25, 0.0];
    let g = [1.0f32, 1.0, 0.0, 0.0];
    let input = Input::dense_probs(&p, &g, &[2, 2, 1], Mode::Multilabel).unwrap();
    let v = |t: &str| reference::evaluate(&input, &t.parse().unwrap()).unwrap().value;
    // per (image, class) dice with no smoothing and eps = 0: (0,0) loss 0, (0,1) 1 - 2*.5/1.5;
    // image 1 has no target: both its classes are skipped
    let d01 = 1.0 - 1.0 / 1.5;
    let (w0, w1) = (2.0, 0.5);
    let base = "dice:pool=image,smooth=0,eps=0,empty=skip";
    let count = (w0 * 0.0 + w1 * d01) / 2.0;
    assert!((v(&format!("{base},weights=2;0.5,norm=count")) - count).abs() < 1e-12);
    let weights = (w0 * 0.0 + w1 * d01) / (w0 + w1);
    assert!((v(&format!("{base},weights=2;0.5,norm=weights")) - weights).abs() < 1e-12);
    // norm=image: image 0 (w0 * 0 + w1 * d01) / (w0 + w1); image 1 counts nothing: loss 1
    // (kornia's macro Dice)
    let image = ((w1 * d01) / (w0 + w1) + 1.0) / 2.0;
    assert!((v(&format!("{base},weights=2;0.5,norm=image")) - image).abs() < 1e-12);
    // weights of zero everywhere: 0 under norm=weights
    assert_eq!(v(&format!("{base},weights=0;0")), 0.0);
    // pool=image_all: weights inside the sums of each image; image 1 is empty (zero)
    let img0 = 1.0 - 2.0 * (w0 * 1.0 + w1 * 0.5) / (w0 * 2.0 + w1 * 1.5);
    assert!((v("dice:pool=image_all,smooth=0,eps=0,weights=2;0.5") - img0 / 2.0).abs() < 1e-12);
    // wrong lengths are refused with the count
    let e = reference::evaluate(&input, &"dice:weights=1;2;3".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("3 entries"), "{e}");
}
