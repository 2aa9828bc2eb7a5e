//! Bad input gives a typed error that names the problem, never a panic or a NaN.

mod common;

use std::borrow::Cow;

use segloss::expr::{BceParams, Loss, PosWeight};
use segloss::{reference, Error, Input, LossExpr, Mode, Target};

fn parse_err(text: &str) -> String {
    match text.parse::<LossExpr>() {
        Ok(e) => panic!("'{text}' parsed as {e}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loss_text_errors_list_what_is_allowed() {
    assert!(parse_err("dicee").contains("unknown loss 'dicee'"));
    assert!(parse_err("dicee").contains("jaccard"));
    assert!(parse_err("dice@pytorch").contains("presets: smp, monai, keras, paddle, kornia"));
    assert!(parse_err("dice:smoth=1").contains("allowed keys"));
    assert!(parse_err("dice:pool=everything").contains("allowed values are batch, image, all, image_all"));
    assert!(parse_err("dice:smooth=-1").contains(">= 0"));
    assert!(parse_err("focal:alpha=2").contains("[0, 1]"));
    assert!(parse_err("x*dice").contains("not a number"));
    assert!(parse_err("dice+").contains("empty term"));
    // the error names the whole text, not the empty term
    for text in ["dice+", "+", "dice++bce", "deep()"] {
        let e = text.parse::<LossExpr>().unwrap_err().to_string();
        assert!(e.contains(&format!("'{text}'")), "{text}: {e}");
    }
    assert!(parse_err("").contains("empty loss text"));
    // nested deep supervision, refused before its inside is parsed: a text of 16000 levels
    // overflowed the stack (and aborted the process) on the way down
    assert!(parse_err("deep(deep@two(bce))").contains("cannot be nested"));
    let nested = format!("{}bce{}", "deep(".repeat(16000), ")".repeat(16000));
    assert!(parse_err(&nested).contains("cannot be nested"));
    assert!(parse_err("tversky:squared=true").contains("allowed keys"));
    assert!(parse_err("gdice:pool=all").contains("pool=all"));
    assert!(parse_err("focal@keras").contains("preset 'keras' defines nothing for focal"));
    assert!(parse_err("dice:log").contains("not key=value"));
    // class weights and norms
    assert!(parse_err("gdice:weights=1;2").contains("allowed keys"));
    assert!(parse_err("dice:weights=1;-2").contains(">= 0"));
    assert!(parse_err("dice:norm=median").contains("allowed values are count, weights, image"));
    assert!(parse_err("focal:norm=image").contains("norm=count or norm=weights"));
    assert!(parse_err("jaccard@kornia").contains("preset 'kornia' defines nothing for jaccard"));
    assert!(parse_err("gdice:pool=image_all").contains("pool=image_all"));
    assert!(parse_err("sensspec@kornia").contains("preset 'kornia'"));
    // keras's preset pools the classes (pool=all), which gdice does itself: its smoothing with
    // another pool is a gdice
    let e = parse_err("gdice@keras");
    assert!(e.contains("keras preset's pool=all pools the classes") && e.contains("pool=batch or pool=image"), "{e}");
    let g: LossExpr = "gdice@keras:pool=batch".parse().unwrap();
    assert_eq!(g.to_string(), "gdice:smooth=1");
    assert!(parse_err("gdice@kornia").contains("presets for gdice: smp, monai, keras, paddle"));
    assert!(parse_err("lovasz:classes=0;2;0").contains("classes lists 0 twice"));
    // (review) a key given twice was taken as its last value: an error; a preset's keys may
    // still be overridden
    assert!(parse_err("dice:smooth=1,smooth=2").contains("key 'smooth' is given twice"));
    assert!(parse_err("bce:reduction=none,reduction=mean").contains("key 'reduction' is given twice"));
    assert!(parse_err("deep:weights=1;1,weights=1;2(bce)").contains("key 'weights' is given twice"));
    assert_eq!(
        "dice@monai:smooth_nr=0".parse::<LossExpr>().unwrap().to_string(),
        "dice:pool=image,smooth_nr=0,smooth_dr=0.00001,eps=0,empty=formula,norm=count,intersection=product"
    );
    // (review) every loss's key list names `reduction`, which every loss takes
    for (text, last) in [("dice:smoth=1", "intersection, reduction"), ("bce:x=1", "label_smoothing, reduction")] {
        let e = parse_err(text);
        assert!(e.ends_with(last), "{text}: {e}");
    }
    assert!(!parse_err("deep:x=1(dice)").contains("reduction"));
    // a NaN smoothing is named as written (NaN is not NaN: it was named smooth_nr)
    assert!(parse_err("dice:smooth=nan").contains("smooth=NaN"));
    // deep(...) inside a sum, or under a factor: what is wrong, not "unknown loss"
    for text in
        ["ce+deep(dice)", "0.5*deep(dice)", "ce+deep(dice+bce)", "ce+deep@two(dice)", "ce+deep:weights=1;2(dice)"]
    {
        let e = parse_err(text);
        assert!(e.contains("deep(...) wraps the whole expression, without a factor"), "{text}: {e}");
    }
    // spaces around deep's parts are ignored, as around a loss's
    for (text, same) in
        [("deep@two (dice)", "deep@two(dice)"), ("deep (dice)", "deep(dice)"), ("deep @ same (ce)", "deep@same(ce)")]
    {
        let (a, b): (LossExpr, LossExpr) = (text.parse().unwrap(), same.parse().unwrap());
        assert_eq!(a.to_string(), b.to_string(), "{text}");
    }
    assert!(parse_err("deep@ten(dice)").contains("unknown deep mode 'ten'; modes: exp, two, same"));
}

#[test]
fn numbers_with_a_plus_sign_are_not_split_into_terms() {
    // a '+' joins terms, except as a number's sign (after an exponent's e, an '=' or a ';')
    let pairs = [
        ("1e+0*dice+ce", "1*dice+ce"),
        ("dice:smooth=1e+0+ce", "dice:smooth=1+ce"),
        ("dice:smooth=+1", "dice:smooth=1"),
        ("2.5E+1*dice", "25*dice"),
        ("ce:weights=1;+2", "ce:weights=1;2"),
        ("dice:smooth=.5e+1", "dice:smooth=5"),
    ];
    for (text, same) in pairs {
        let (a, b): (LossExpr, LossExpr) = (text.parse().unwrap(), same.parse().unwrap());
        assert_eq!(a, b, "{text}");
    }
    // a single loss with a signed number is one loss
    assert!("dice:smooth=1e+0".parse::<segloss::expr::Loss>().is_ok());
    // terms still split after a name ending in e (dice+ce, per_image=true+dice)
    assert_eq!("dice+ce".parse::<LossExpr>().unwrap().terms.len(), 2);
    assert_eq!("lovasz:per_image=true+dice".parse::<LossExpr>().unwrap().terms.len(), 2);
    assert!(parse_err("dice++ce").contains("empty term"));
}

#[test]
fn loss_text_round_trips() {
    for t in [
        "dice",
        "0.8*ce+0.2*lovasz",
        "bce+dice:log=true",
        "tversky:alpha=0.3,beta=0.7,gamma=0.75",
        "dice@monai+focal@monai",
        "ce:weights=1;2;3,label_smoothing=0.1",
        "gdice:weight=simple,pool=image",
        "lovasz:per_image=true,classes=all",
        "dice:classes=0;2;5,empty=skip",
        "dice:weights=0.5;1;2,norm=count,pool=image_all",
        "dice@kornia:weights=1;2",
        "tversky@kornia:alpha=0.3",
        "focal@kornia:alpha=0.25,weights=1;0;2",
        "focal:act=softmax,norm=count",
        "bce:pos_weight=1;2.5;0.5",
        // (review) a one-entry list wrote `pos_weight=2`, which reads back as one weight for
        // every channel
        "bce:pos_weight=2;",
        "dice:weights=3;",
        // (the diff's review) a '+' after a list's ';' starts a term unless a number follows
        "bce:pos_weight=2;+dice",
        "0.5*dice:weights=3;+0.5*ce",
        "dice:classes=0;2;+bce",
        "dice:weights=1;+2,smooth=+1",
    ] {
        let e: LossExpr = t.parse().unwrap();
        let again: LossExpr = e.to_string().parse().unwrap();
        assert_eq!(e, again, "{t} -> {e}");
    }
    assert_eq!("bce:pos_weight=2;+dice".parse::<LossExpr>().unwrap().terms.len(), 2);
    assert_eq!("dice:weights=1;+2".parse::<LossExpr>().unwrap().terms.len(), 1);
    // every loss under every preset that defines it writes a text that parses back to it
    // (gdice@monai wrote empty= and norm=, which gdice does not take)
    for name in ["bce", "ce", "focal", "dice", "jaccard", "tversky", "gdice", "sensspec", "lovasz"] {
        for preset in ["", "@smp", "@monai", "@keras", "@paddle", "@kornia"] {
            let Ok(e) = format!("{name}{preset}").parse::<LossExpr>() else { continue };
            match e.to_string().parse::<LossExpr>() {
                Ok(again) => assert_eq!(e, again, "{name}{preset} -> {e}"),
                Err(err) => panic!("{name}{preset} -> {e}: {err}"),
            }
        }
    }
    let e: LossExpr = "dice@monai:smooth=0".parse().unwrap();
    assert_eq!(
        e.to_string(),
        "dice:pool=image,eps=0,empty=formula,norm=count,intersection=product",
        "keys after a preset override it"
    );
}

#[test]
fn losses_that_do_not_fit_the_mode_are_errors() {
    let x = vec![0.0f32; 8];
    let g = vec![0.0f32; 8];
    let dense = Input::dense(&x, &g, &[1, 2, 4], Mode::Multilabel).unwrap();
    for (text, needle) in [
        ("ce", "needs multiclass"),
        ("focal:act=softmax", "needs multiclass"),
        ("dice:classes=0;5", "classes lists 5"),
        ("lovasz:classes=0", "classes belongs to Lovász-Softmax"),
        ("lovasz:classes=all", "classes belongs to Lovász-Softmax"),
    ] {
        let err = reference::evaluate(&dense, &text.parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
        let err = common::gpu().evaluate_blocking(&dense, &[text.parse().unwrap()], true).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let labels = vec![0i64, 1, 1, 0];
    let mc = Input::labels(&x, &labels, &[1, 2, 4], None).unwrap();
    let err = reference::evaluate(&mc, &"bce".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("use ce"), "{err}");
    let err = reference::evaluate(&mc, &"ce:weights=1;2;3".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("weights has 3 entries but the input has C=2"), "{err}");
    for (text, needle) in [
        ("dice:weights=1;2;3", "weights has 3 entries but there are 2 (one per channel)"),
        (
            "dice:classes=1,weights=1;2;3",
            "weights has 3 entries but there are 1 (one per listed class, or 2: one per channel)",
        ),
        ("focal:weights=1", "weights has 1 entries but there are 2"),
    ] {
        let err = reference::evaluate(&mc, &text.parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
        let err = common::gpu().evaluate_blocking(&mc, &[text.parse().unwrap()], true).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let err = reference::evaluate(&dense, &"bce:pos_weight=1;2;3".parse().unwrap()).unwrap_err().to_string();
    assert!(err.contains("pos_weight has 3 entries but there are 2"), "{err}");
    // a one-entry list is a list, in code and in its text alike
    let one = LossExpr::from(Loss::Bce(BceParams { pos_weight: PosWeight::Channels(vec![2.0]), label_smoothing: 0.0 }));
    let again: LossExpr = one.to_string().parse().unwrap();
    for e in [&one, &again] {
        let err = reference::evaluate(&dense, e).unwrap_err().to_string();
        assert!(err.contains("pos_weight has 1 entries but there are 2"), "{e}: {err}");
    }
}

#[test]
fn expressions_built_in_code_are_held_to_the_rules_of_the_text() {
    use segloss::expr::{Classes, DeepWeights, Loss, Reduction, RegionKind};
    let x = vec![0.5f32, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25, 3.0];
    let g = vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let input = Input::dense(&x, &g, &[1, 2, 4], Mode::Multilabel).unwrap();
    // each: a text that parses, how to break it in code, what the error names
    type Edit = fn(&mut LossExpr);
    let cases: [(&str, Edit, &str); 21] = [
        (
            "focal",
            |e| {
                if let Loss::Focal(p) = &mut e.terms[0].loss {
                    p.gamma = f64::NAN
                }
            },
            "gamma=NaN",
        ),
        (
            "focal",
            |e| {
                if let Loss::Focal(p) = &mut e.terms[0].loss {
                    p.alpha = Some(1.5)
                }
            },
            "alpha=1.5: must be in [0, 1]",
        ),
        (
            "focal",
            |e| {
                if let Loss::Focal(p) = &mut e.terms[0].loss {
                    p.norm = segloss::expr::Norm::Image
                }
            },
            "norm=image",
        ),
        (
            "bce",
            |e| {
                if let Loss::Bce(p) = &mut e.terms[0].loss {
                    p.label_smoothing = -0.1
                }
            },
            "label_smoothing=-0.1",
        ),
        (
            "bce",
            |e| {
                if let Loss::Bce(p) = &mut e.terms[0].loss {
                    p.pos_weight = segloss::expr::PosWeight::Value(f64::INFINITY)
                }
            },
            "pos_weight=inf: expected a finite number",
        ),
        (
            "dice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.smooth_dr = -1.0
                }
            },
            "smooth_dr=-1: must be >= 0",
        ),
        (
            "dice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.classes = Classes::List(vec![])
                }
            },
            "classes lists no class",
        ),
        (
            "dice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.weights = Some(vec![1.0, -2.0])
                }
            },
            "weights=-2 (entry 1): must be >= 0",
        ),
        (
            "tversky",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.kind = RegionKind::Tversky { alpha: 0.5, beta: 0.5, gamma: 0.0 }
                }
            },
            "gamma=0: must be > 0",
        ),
        (
            "gdice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.pool = segloss::expr::Pool::All
                }
            },
            "pool=all",
        ),
        (
            "sensspec",
            |e| {
                if let Loss::SensSpec(p) = &mut e.terms[0].loss {
                    p.lambda = 2.0
                }
            },
            "lambda=2: must be in [0, 1]",
        ),
        (
            "lovasz",
            |e| {
                if let Loss::Lovasz(p) = &mut e.terms[0].loss {
                    p.classes = Classes::List(vec![])
                }
            },
            "classes lists no class",
        ),
        (
            "dice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.classes = Classes::Present
                }
            },
            "classes=present belongs to Lovász-Softmax",
        ),
        (
            "gdice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.weights = Some(vec![1.0, 2.0])
                }
            },
            "gdice takes no class weights",
        ),
        (
            "lovasz",
            |e| {
                if let Loss::Lovasz(p) = &mut e.terms[0].loss {
                    p.classes = Classes::List(vec![1, 0, 1])
                }
            },
            "classes lists 1 twice",
        ),
        // (review) an empty list, written `weights=`, which does not parse
        (
            "dice",
            |e| {
                if let Loss::Region(r) = &mut e.terms[0].loss {
                    r.params.weights = Some(vec![])
                }
            },
            "weights lists no weight",
        ),
        (
            "ce",
            |e| {
                if let Loss::Ce(p) = &mut e.terms[0].loss {
                    p.weights = Some(vec![])
                }
            },
            "weights lists no weight",
        ),
        ("dice", |e| e.terms[0].weight = 1e39, "the factor 1e39: beyond the f32 range"),
        ("dice", |e| e.terms.clear(), "expression: it has no term"),
        ("lovasz", |e| e.reduction = Reduction::None, "lovasz has no unreduced form"),
        ("dice", |e| e.deep = Some(DeepWeights::List(vec![f64::NAN])), "weights=NaN"),
    ];
    for (text, edit, needle) in cases {
        let mut e: LossExpr = text.parse().unwrap();
        assert!(e.check_params().is_ok(), "{text}");
        edit(&mut e);
        let err = e.check_params().unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
        // every evaluation refuses it, on the GPU and on the CPU reference, before any work
        let err = reference::evaluate(&input, &e).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
        let err = common::gpu().evaluate_blocking(&input, std::slice::from_ref(&e), true).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // gdice reads no `empty`: with empty=skip set in code it still has its unreduced entries
    let mut g: LossExpr = "gdice:reduction=none".parse().unwrap();
    if let Loss::Region(r) = &mut g.terms[0].loss {
        r.params.empty = segloss::expr::Empty::Skip;
    }
    assert!(g.check_params().is_ok());
    // a level's factor past the f32 range (the term's times the level's weight) names the level
    let deep: LossExpr = "deep:weights=1;4(1e38*dice)".parse().unwrap();
    let err = deep.check_levels(2).unwrap_err().to_string();
    assert!(err.contains("level 1: the factor 4e38 of dice"), "{err}");
    assert!(deep.check_levels(1).is_ok());
    // the parser refuses what the check refuses, naming the key
    for (text, needle) in [
        ("focal:gamma=nan", "gamma=NaN: expected a finite number"),
        ("tversky:gamma=0", "gamma=0: must be > 0"),
        ("ce:weights=1;-2", "weights=-2 (entry 1)"),
        ("deep:weights=1;-1(dice)", "weights=-1 (entry 1)"),
        ("inf*dice", "the factor inf"),
        ("tversky:beta=-1", "tversky: beta=-1: must be >= 0"),
        ("dice:smooth=-1", "dice: smooth=-1: must be >= 0"),
        ("dice:smooth_nr=1,smooth_dr=-1", "smooth_dr=-1"),
    ] {
        assert!(parse_err(text).contains(needle), "{text}: {}", parse_err(text));
    }
}

#[test]
fn bad_inputs_name_the_problem() {
    let x = vec![0.0f32; 8];
    let g = vec![0.0f32; 8];
    let check = |r: Result<Input, Error>, needle: &str| {
        let e = r.expect_err("should fail").to_string();
        assert!(e.contains(needle), "expected '{needle}' in: {e}");
    };
    check(Input::dense(&x, &g, &[1, 1, 7], Mode::Binary), "logits have 8 elements but shape [1, 1, 7] needs 7");
    check(Input::dense(&x, &g[..4], &[1, 1, 8], Mode::Binary), "target has 4 elements");
    check(Input::dense(&x, &g, &[1, 2, 4], Mode::Binary), "binary mode needs C = 1");
    check(Input::dense(&[], &[], &[0, 1, 4], Mode::Binary), "is empty");
    check(Input::dense(&x, &g, &[8], Mode::Binary), "must be [N, C, S...]");
    let mut nan = x.clone();
    nan[3] = f32::NAN;
    check(Input::dense(&nan, &g, &[1, 1, 8], Mode::Binary), "logits[3] = NaN");
    let mut inf = x.clone();
    inf[5] = f32::NEG_INFINITY;
    check(Input::dense(&inf, &g, &[1, 1, 2, 4], Mode::Binary), "at index [0, 0, 1, 1]");
    let mut soft = g.clone();
    soft[2] = 1.5;
    check(Input::dense(&x, &soft, &[1, 1, 8], Mode::Binary), "target[2] = 1.5");
    check(Input::labels(&x, &[0, 1, 2, 0], &[1, 2, 4], None), "target[2] = 2 is not a class in 0..2");
    check(Input::labels(&x, &[0, 1, 255, 0], &[1, 2, 4], Some(254)), "is not the ignore index 254");
    check(Input::labels(&x, &[0; 8], &[1, 1, 8], None), "multiclass mode needs C >= 2");
    check(Input::labels(&x, &[0; 3], &[1, 2, 4], None), "target has 3 class indices");
    check(
        Input::new(Cow::Borrowed(&x), Target::Dense(Cow::Borrowed(&g)), &[1, 2, 4], Mode::Multiclass, None),
        "needs class-index targets",
    );
    // soft labels to Lovász
    let soft = vec![0.5f32; 8];
    let input = Input::dense(&x, &soft, &[1, 1, 8], Mode::Binary).unwrap();
    let e = reference::evaluate(&input, &"lovasz".parse().unwrap()).unwrap_err().to_string();
    assert!(e.contains("lovasz needs hard 0/1 labels"), "{e}");
}

#[test]
fn degenerate_inputs_give_finite_values() {
    let engine = common::gpu();
    // every pixel ignored
    let x = vec![1.0f32; 12];
    let labels = vec![255i64; 4];
    let input = Input::labels(&x, &labels, &[1, 3, 4], Some(255)).unwrap();
    let exprs: Vec<LossExpr> =
        ["ce", "dice", "dice@monai", "focal", "focal:act=softmax", "gdice", "tversky:gamma=0.5", "sensspec"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
    for r in engine.evaluate_blocking(&input, &exprs, true).unwrap() {
        assert!(r.value.is_finite());
        assert!(r.grad.unwrap().iter().all(|&g| g == 0.0), "ignored pixels get no gradient");
    }
    // empty target with eps = 0 and no smoothing: 0/0 is defined
    let x = vec![-80.0f32; 4];
    let g = vec![0.0f32; 4];
    let input = Input::dense(&x, &g, &[1, 1, 4], Mode::Binary).unwrap();
    let exprs: Vec<LossExpr> =
        ["dice:eps=0,empty=formula", "jaccard:eps=0,empty=formula,log=true", "bce:pos_weight=auto", "gdice:eps=0"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
    for (e, r) in exprs.iter().zip(engine.evaluate_blocking(&input, &exprs, true).unwrap()) {
        assert!(r.value.is_finite(), "{e}: {}", r.value);
        let cpu = reference::evaluate(&input, e).unwrap();
        assert!((cpu.value - r.value).abs() < 1e-5, "{e}: gpu {} cpu {}", r.value, cpu.value);
        assert!(r.grad.unwrap().iter().all(|g| g.is_finite()));
    }
    // focal with gamma < 1 on a confident, right prediction: (1 - pt)^(gamma - 1) of a subnormal
    // 1 - pt overflows (the f64 reference's 1 - pt is 5e-324 at a logit of 745)
    let x = vec![745.0f32, 720.0, -3.0, 0.5];
    let g = vec![1.0f32, 1.0, 0.0, 1.0];
    let dense = Input::dense(&x, &g, &[1, 1, 4], Mode::Binary).unwrap();
    let xs = vec![745.0f32, 720.0, 0.5, 0.0, 0.0, -1.0];
    let labels = vec![0i64, 0, 1];
    let mc = Input::labels(&xs, &labels, &[1, 2, 3], None).unwrap();
    // and a true class whose probability is 0 behind a logit gap near the f32 range
    let (far, far_labels) = (vec![-1e38f32, 1e38], vec![0i64]);
    let gap = Input::labels(&far, &far_labels, &[1, 2, 1], None).unwrap();
    for (input, text) in [
        (&dense, "focal:gamma=0.01"),
        (&dense, "focal:gamma=0.5"),
        (&mc, "focal:act=softmax,gamma=0.01"),
        (&gap, "focal:act=softmax"),
        (&gap, "focal:act=softmax,gamma=5"),
    ] {
        let e: LossExpr = text.parse().unwrap();
        let cpu = reference::evaluate(input, &e).unwrap();
        let cg = cpu.grad;
        assert!(cpu.value.is_finite() && cg.iter().all(|g| g.is_finite()), "{text}: cpu {} {cg:?}", cpu.value);
        let r = engine.evaluate_blocking(input, std::slice::from_ref(&e), true).unwrap().remove(0);
        let gg = r.grad.unwrap();
        assert!(gg.iter().all(|g| g.is_finite()), "{text}: gpu {gg:?}");
        let (d, _) = common::max_diff(&gg, &cg);
        assert!(
            d < 1e-5 && (r.value - cpu.value).abs() < 1e-5,
            "{text}: gpu {} {gg:?} cpu {} {cg:?}",
            r.value,
            cpu.value
        );
    }
}

#[test]
fn neg_inf_logits_mask_classes_in_multiclass_mode_only() {
    let inf = f32::NEG_INFINITY;
    // [1, 3, 4]: pixel 1 masks classes 1 and 2, pixel 3 classes 0 and 1
    let x = vec![0.5, 1.0, 0.0, inf, /* c1 */ 0.2, inf, 1.0, inf, /* c2 */ -1.0, inf, 2.0, 0.3];
    let labels = vec![0i64, 0, 2, 2];
    let input = Input::labels(&x, &labels, &[1, 3, 4], None).unwrap();
    let engine = common::gpu();
    for text in ["ce", "dice", "dice@monai+ce", "focal:act=softmax", "lovasz", "jaccard:pool=image"] {
        let e: LossExpr = text.parse().unwrap();
        let r = reference::evaluate(&input, &e).unwrap();
        let g = engine.evaluate_blocking(&input, std::slice::from_ref(&e), true).unwrap().remove(0);
        assert!((g.value - r.value).abs() <= 1e-5 + 1e-4 * r.value.abs(), "{text}: {} vs {}", g.value, r.value);
        let grad = g.grad.unwrap();
        // a masked class has p = 0 and gradient 0
        for i in [3usize, 5, 7, 9] {
            assert_eq!(grad[i], 0.0, "{text}: element {i}");
            assert_eq!(r.grad[i], 0.0, "{text}: element {i}");
        }
    }
    // refused: the sigmoid focal and label smoothing anywhere, ce and softmax focal on the true class
    let refuse = |input: &Input, text: &str, needle: &str| {
        let e: LossExpr = text.parse().unwrap();
        let err = reference::evaluate(input, &e).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
        let err = engine.evaluate_blocking(input, &[e], true).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    };
    refuse(&input, "focal", "sigmoid focal loss needs finite logits; logits[3]");
    refuse(&input, "ce:label_smoothing=0.1", "label_smoothing needs finite logits");
    let on_true = vec![0i64, 0, 2, 0];
    let input = Input::labels(&x, &on_true, &[1, 3, 4], None).unwrap();
    refuse(&input, "ce", "ce needs a finite logit on the true class; logits[3]");
    refuse(&input, "dice+focal:act=softmax", "focal:act=softmax needs a finite logit on the true class");
    // the same checks in a batch, and on every level of deep supervision
    let mut batch = engine.batch();
    let pending = batch.push(&input, &["ce".parse().unwrap()], true).unwrap();
    batch.flush_blocking().unwrap();
    let err = pending.wait().unwrap_err().to_string();
    assert!(err.contains("ce needs a finite logit on the true class"), "{err}");
    let x1 = [0.0f32; 6];
    let deep = Input::labels(&x, &on_true, &[1, 3, 4], None)
        .unwrap()
        .with_levels(vec![(std::borrow::Cow::Borrowed(&x1[..]), vec![1, 3, 2])])
        .unwrap();
    let err = engine.evaluate_blocking(&deep, &["deep(ce)".parse().unwrap()], true).unwrap_err().to_string();
    assert!(err.contains("ce needs a finite logit on the true class"), "{err}");
    // ignored, the same pixel is fine
    let input = Input::labels(&x, &on_true, &[1, 3, 4], Some(0)).unwrap();
    assert!(engine.evaluate_blocking(&input, &["ce".parse().unwrap()], true).is_ok());
    // label smoothing takes every class of a pixel that is not ignored (refused above); the -inf
    // logits of ignored pixels (1 and 3: elements 3, 5, 7, 9) take no part, as in PyTorch: the
    // value and gradient of the same input with those logits finite
    let smooth: LossExpr = "ce:label_smoothing=0.1".parse().unwrap();
    let mut finite = x.clone();
    for i in [3, 5, 7, 9] {
        finite[i] = 0.0;
    }
    let ignored = [0i64, 255, 2, 255];
    let masked = Input::labels(&x, &ignored, &[1, 3, 4], Some(255)).unwrap();
    let plain = Input::labels(&finite, &ignored, &[1, 3, 4], Some(255)).unwrap();
    let want = reference::evaluate(&plain, &smooth).unwrap();
    let cpu = reference::evaluate(&masked, &smooth).unwrap();
    assert_eq!((cpu.value, &cpu.grad), (want.value, &want.grad), "label smoothing, -inf on ignored pixels");
    let g = engine.evaluate_blocking(&masked, std::slice::from_ref(&smooth), true).unwrap().remove(0);
    let w = engine.evaluate_blocking(&plain, std::slice::from_ref(&smooth), true).unwrap().remove(0);
    assert_eq!((g.value, &g.grad), (w.value, &w.grad), "label smoothing on the device, -inf on ignored pixels");
    // input errors: every class masked, -inf in binary mode, +inf and NaN
    let mut all = x.clone();
    all[11] = inf;
    let e = Input::labels(&all, &labels, &[1, 3, 4], None).unwrap_err().to_string();
    assert!(e.contains("every logit of pixel at index [0, 3] is -inf"), "{e}");
    let e = Input::dense(&[0.0, inf], &[0.0, 1.0], &[1, 1, 2], Mode::Binary).unwrap_err().to_string();
    assert!(e.contains("multiclass mode only"), "{e}");
    let mut pinf = x.clone();
    pinf[0] = f32::INFINITY;
    assert!(Input::labels(&pinf, &labels, &[1, 3, 4], None).is_err());
}

/// Public calls on absurd arguments found by a review (each panicked, overflowed or aborted on
/// an allocation) are typed errors.
#[test]
fn absurd_arguments_to_public_calls_are_typed_errors_not_panics() {
    use segloss::metrics::{self, Metric};
    // a level past deep's levels; deep weights of an absurd number of levels
    let deep: LossExpr = "deep(dice)".parse().unwrap();
    assert!(matches!(deep.level(3, 2), Err(Error::Input(m)) if m.contains("level 3 of 2")));
    assert!(matches!(deep.deep.as_ref().unwrap().of(1 << 40), Err(Error::LossMode { .. })));
    // a class list checked against C = 0
    for text in ["dice:classes=0", "lovasz:classes=0"] {
        let e: LossExpr = text.parse().unwrap();
        assert!(matches!(e.check(Mode::Multilabel, 0), Err(Error::LossMode { .. })), "{text}");
    }
    // counts past the images or classes counted
    let x = [0.5f32; 16];
    let t = [1.0f32; 16];
    let input = Input::dense(&x, &t, &[1, 1, 4, 4], Mode::Binary).unwrap();
    let counts = metrics::reference::counts(&input, 0.0).unwrap();
    assert_eq!(counts.get(0, 0), Some([16, 0, 0, 0]));
    assert_eq!((counts.get(5, 3), counts.get(1, 0), counts.get(0, 1)), (None, None, None));
    // metric fields set in code are held to the text's rules
    let mut hd: Metric = "hd:percentile=95".parse().unwrap();
    for p in [1000.0, 0.0, -1.0, f64::NAN] {
        hd.percentile = Some(p);
        assert!(matches!(metrics::reference::evaluate(&input, &hd), Err(Error::Metric { .. })), "{p}");
    }
    let mut nsd: Metric = "nsd:tolerance=1".parse().unwrap();
    nsd.spacing = vec![0.0];
    assert!(matches!(metrics::reference::evaluate(&input, &nsd), Err(Error::Metric { .. })));
    // statistics placed in an absurd batch
    let cpu = segloss::Engine::cpu(None);
    let st = cpu.statistics_blocking(&input, &["dice".parse().unwrap()]).unwrap();
    for total in [usize::MAX, 1 << 40] {
        assert!(matches!(st.placed(0, total), Err(Error::Input(_))), "{total}");
    }
    // the confusion matrices of a million classes (a 4 MB input of one pixel)
    let big = vec![0.0f32; 1 << 20];
    let input = Input::labels(&big, &[0], &[1, 1 << 20, 1], None).unwrap();
    let iou: Metric = "iou".parse().unwrap();
    assert!(
        matches!(metrics::reference::evaluate(&input, &iou), Err(Error::Unsupported(m)) if m.contains("N x C x C"))
    );
}
