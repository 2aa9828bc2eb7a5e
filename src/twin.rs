//! The device finalize (`finalize.wgsl`, f32) against its f64 host twin (`plan::finalize`) on the
//! same statistics: every loss family and parameter family, term values and every coefficient of
//! the gradient blocks.

use std::borrow::Cow;

use crate::expr::LossExpr;
use crate::gpu::eval::{DevInput, GradTo};
use crate::gpu::record::Recording;
use crate::plan::{self, BlockLayout, LovaszSums, StatsPlan, Sums};
use crate::stats::host_sums;
use crate::{Engine, Input, Mode, Target};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn engine() -> Engine {
    Engine::gpu_blocking().expect("the twin test needs a GPU adapter (apt-get install mesa-vulkan-drivers)")
}

/// Runs the device pipeline on `input` and compares the device finalize with the host twin.
fn check(engine: &Engine, input: &Input, texts: &[&str]) {
    let gpu = engine.gpu_ref().expect("gpu engine");
    let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
    let prep = engine.prepare(input.clone()).unwrap();
    let (lb, tb) = prep.buffers().unwrap();
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let softmax = input.mode() == Mode::Multiclass;
    let mut rec = Recording::new(&gpu.limits);
    let inp = DevInput {
        logits: rec.external(lb, 0, lb.size()),
        target: rec.external(tb, 0, tb.size()),
        n,
        c,
        s,
        softmax,
        probs: input.kind() == crate::InputKind::Probs,
        groups: 1,
        ignore: None,
        validate: 0,
        counted: None,
    };
    let grads = vec![GradTo::Host; exprs.len()];
    let r = gpu.record_eval(&mut rec, &inp, &exprs, &grads, true).unwrap().swap_remove(0);
    // the whole finalize output; the host twin recomputes the statistics and the layout
    let out_rb = rec.readback(r.out.size, "out").unwrap();
    rec.copy(r.out, out_rb);
    let plan = StatsPlan::new(&exprs, c, softmax);
    let fut = gpu.execute(rec);
    let data = futures::executor::block_on(fut).unwrap();
    let out: Vec<f32> = bytemuck::pod_collect_to_vec(&data[data.len() - 1]);
    // host statistics: the f64 sums of the reference, channel by channel
    let sums = host_sums(input, &plan);
    let k = plan.host_channels();
    let view = Sums { data: &sums, n, c, k, tpmin: plan.tp_min.then(|| k - 1) };
    let lov = lovasz_sums(input, &plan);
    let mut cursor = 0;
    let mut vals = Vec::new();
    for e in &exprs {
        vals.push(cursor);
        cursor += 1 + e.terms.len();
    }
    for (i, e) in exprs.iter().enumerate() {
        let layout = BlockLayout::new(e, &plan, (n, c, s), softmax);
        cursor = cursor.next_multiple_of(64);
        let block = cursor;
        cursor += layout.len;
        let host = plan::finalize(e, &plan, &layout, &view, input.mode(), &lov);
        for (t, hv) in host.term_values.iter().enumerate() {
            let dv = f64::from(out[vals[i] + 1 + t]);
            assert!((dv - hv).abs() <= 1e-6 + 2e-4 * hv.abs(), "'{}' term {t}: device {dv} host {hv}", texts[i]);
        }
        let dvalue = f64::from(out[vals[i]]);
        assert!((dvalue - host.value).abs() <= 1e-6 + 2e-4 * host.value.abs(), "'{}' value", texts[i]);
        let scale = host.block.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (j, hb) in host.block.iter().enumerate() {
            let db = f64::from(out[block + j]);
            assert!(
                (db - hb).abs() <= 1e-9 + 2e-4 * scale.max(hb.abs()),
                "'{}' coefficient {j} of {}: device {db} host {hb}",
                texts[i],
                layout.len
            );
        }
        // without `slope`, d/dSPP, d/dSS1 and d/dSS2 are exactly 0 on the device: the softmax
        // gradient leaves the lines' slope out (grad.wgsl: SLOPE)
        if !layout.slope {
            for entry in 0..n * c {
                for k in 2..5 {
                    let j = layout.region_base + entry * plan::NCOEF + k;
                    assert_eq!(out[block + j].to_bits(), 0, "'{}' coefficient {k} of entry {entry}", texts[i]);
                }
            }
        }
    }
}

/// Per-segment Lovász sums from the reference's definition (value, fg, bg).
fn lovasz_sums(input: &Input, plan: &StatsPlan) -> Vec<LovaszSums> {
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let softmax = input.mode() == Mode::Multiclass;
    plan.lovasz
        .iter()
        .map(|lp| {
            let (segs, _) = plan::lovasz_segments(softmax, lp.per_image, n, c, s);
            let segs = crate::reference::lovasz_segments(input, lp.per_image, segs);
            LovaszSums { segs }
        })
        .collect()
}

fn binary(n: usize, c: usize, h: usize, w: usize, seed: u64, empty: bool) -> Input<'static> {
    let mut r = Rng(seed);
    let numel = n * c * h * w;
    let logits: Vec<f32> = (0..numel).map(|_| (r.uniform() - 0.5) * 8.0).collect();
    let target: Vec<f32> =
        (0..numel).map(|i| if empty && i % n == 0 { 0.0 } else { (r.uniform() > 0.7) as u8 as f32 }).collect();
    let mode = if c == 1 { Mode::Binary } else { Mode::Multilabel };
    Input::new(Cow::Owned(logits), Target::Dense(Cow::Owned(target)), &[n, c, h, w], mode, None).unwrap()
}

fn multiclass(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Input<'static> {
    let mut r = Rng(seed);
    let logits: Vec<f32> = (0..n * c * h * w).map(|_| (r.uniform() - 0.5) * 6.0).collect();
    // class c-1 absent; some pixels ignored
    let labels: Vec<i64> = (0..n * h * w)
        .map(|_| {
            let u = r.uniform();
            if u < 0.05 {
                255
            } else {
                ((u * (c - 1) as f32) as i64).min(c as i64 - 2)
            }
        })
        .collect();
    Input::new(Cow::Owned(logits), Target::Labels(Cow::Owned(labels)), &[n, c, h, w], Mode::Multiclass, Some(255))
        .unwrap()
}

const REGION: &[&str] = &[
    "dice",
    "dice@monai",
    "dice@keras",
    "dice@paddle",
    "dice:squared=true,log=true",
    "dice:empty=skip,classes=0",
    "jaccard",
    "jaccard:squared=true,pool=image",
    "jaccard:eps=0,empty=formula,log=true",
    "tversky:alpha=0.3,beta=0.7,gamma=0.75",
    "tversky@monai",
    "gdice@monai",
    "gdice:weight=simple",
    "gdice:weight=uniform,pool=image",
    "sensspec",
    "0.5*dice+0.25*jaccard@monai+2*tversky:alpha=0.7,beta=0.3",
];

#[test]
fn device_finalize_matches_host_binary() {
    let e = engine();
    let mut texts: Vec<&str> = REGION.to_vec();
    texts.extend([
        "bce",
        "bce:pos_weight=auto",
        "bce:pos_weight=3,label_smoothing=0.1",
        "focal",
        "focal:gamma=0,alpha=0.25",
        "lovasz",
        "lovasz:per_image=true",
        "bce+dice+lovasz+lovasz:per_image=true",
        // per-channel weights (C = 3 only)
        "bce:pos_weight=1;2.5;0.5",
        "focal@monai:weights=1;2;0.5",
        "focal:alpha=0.25,weights=1;0;0.5",
        "dice:weights=1;2;0.5",
        "dice@monai:weights=1;2;0",
        "dice@kornia:weights=1;2;0.5",
        "jaccard:pool=image,norm=image,empty=skip,weights=2;1;0.5",
        "tversky:gamma=1.5,weights=0.5;1;2,norm=count",
    ]);
    for input in [binary(3, 1, 9, 7, 1, false), binary(2, 1, 8, 8, 2, true), binary(2, 3, 5, 6, 3, true)] {
        // the texts that fit the input's channels
        let fit: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| t.parse::<LossExpr>().unwrap().check(input.mode(), input.classes()).is_ok())
            .filter(|t| input.classes() == 1 || !t.contains("classes=0"))
            .collect();
        for t in &fit {
            check(&e, &input, &[t]);
        }
        // everything at once: one recording, all ops of all expressions
        check(&e, &input, &fit);
    }
}

#[test]
fn device_finalize_matches_host_multiclass() {
    let e = engine();
    let mut texts: Vec<&str> = REGION.iter().copied().filter(|t| !t.starts_with("sensspec")).collect();
    texts.extend([
        "ce",
        "ce:weights=1;2;0.5;3,label_smoothing=0.1",
        "focal",
        "focal:act=softmax,gamma=2,alpha=0.25",
        "lovasz",
        "lovasz:per_image=true,classes=all",
        "lovasz:classes=0;2",
        "0.8*ce+0.2*lovasz",
        "sensspec",
        "dice:weights=0.5;1;2;0",
        "dice@monai:weights=0.5;1;2;1.5",
        "jaccard:pool=image,norm=image,empty=skip,weights=1;0;2;1",
        "dice@kornia",
        "dice@kornia:weights=0.5;1;2;1.5",
        "tversky@kornia:alpha=0.3,beta=0.7",
        "dice:pool=all,weights=1;2;3;0.5",
        "tversky:gamma=1.5,weights=0.5;1;2;1.5,norm=count",
        "dice:classes=1;3,weights=2;0.5",
        "focal:weights=0.5;1;2;1.5",
        "focal@monai:act=softmax,alpha=0.25,weights=0.5;1;2;1.5",
        "focal@kornia:alpha=0.25",
        "focal:act=softmax,norm=count",
    ]);
    for input in [multiclass(2, 4, 9, 7, 5), multiclass(3, 4, 4, 4, 6)] {
        for t in &texts {
            check(&e, &input, &[t]);
        }
        check(&e, &input, &texts);
    }
}
