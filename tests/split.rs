//! Statistics that merge, and inputs past the binding limit: the statistics of the parts of a
//! batch, joined, give the whole batch's values and each part's gradient of the whole batch's
//! loss; an engine that plans with a lowered binding limit evaluates in pieces and gives the
//! unsplit results. Both are held to the f64 reference and to the unsplit device evaluation.

mod common;

use common::{gpu, max_diff, Case, Rng};
use segloss::{reference, Engine, EngineOptions, Error, Evaluation, Input, LossExpr, Mode, Statistics};

fn case(seed: u64, shape: &[usize], mode: Mode) -> Case {
    let mut r = Rng(seed);
    let numel: usize = shape.iter().product();
    let logits: Vec<f32> = (0..numel).map(|_| (r.normal() * 3.0) as f32).collect();
    let c = shape[1];
    if mode == Mode::Multiclass {
        let labels = (0..numel / c).map(|_| if r.uniform() < 0.1 { 255 } else { r.below(c) as i64 }).collect();
        Case { shape: shape.to_vec(), mode, logits, dense: vec![], labels, ignore: Some(255) }
    } else {
        let dense = (0..numel).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
        Case { shape: shape.to_vec(), mode, logits, dense, labels: vec![], ignore: None }
    }
}

const BINARY: &[&str] = &[
    "bce",
    "0.5*bce+0.5*dice",
    "dice@monai+focal@monai",
    "jaccard:log=true",
    "tversky:alpha=0.3,beta=0.7,gamma=0.75",
    "gdice@monai",
    "sensspec",
    "bce:pos_weight=auto",
    "dice:pool=image",
    "lovasz:per_image=true",
    "bce+lovasz:per_image=true",
];
const MULTICLASS: &[&str] = &[
    "ce",
    "0.8*ce+0.2*dice",
    "dice@monai",
    "focal:act=softmax",
    "ce:weights=1;2;0.5,label_smoothing=0.1",
    "jaccard@keras",
    "gdice@monai",
    "lovasz:per_image=true",
    "0.8*ce+0.2*lovasz:per_image=true",
];

fn exprs(texts: &[&str]) -> Vec<LossExpr> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

/// Values and gradients within f32 tolerance of the f64 reference.
fn assert_reference(input: &Input, exprs: &[LossExpr], got: &[Evaluation], what: &str) {
    for (e, ev) in exprs.iter().zip(got) {
        let r = reference::evaluate(input, e).unwrap();
        assert!(
            (ev.value - r.value).abs() <= 1e-4 + 1e-3 * r.value.abs(),
            "{what} '{e}': {} vs reference {}",
            ev.value,
            r.value
        );
        if let Some(g) = &ev.grad {
            let (d, m) = max_diff(g, &r.grad);
            assert!(d <= 1e-6 + 2e-3 * m, "{what} '{e}': gradient off by {d} (max {m})");
        }
    }
}

fn cases() -> Vec<(Case, &'static [&'static str])> {
    vec![
        (case(1, &[5, 1, 9, 13], Mode::Binary), BINARY),
        (case(2, &[4, 3, 3, 5, 7], Mode::Multilabel), BINARY),
        (case(3, &[5, 3, 11, 6], Mode::Multiclass), MULTICLASS),
        (case(4, &[3, 3, 2, 4, 5], Mode::Multiclass), MULTICLASS),
        // one image larger than a statistics tile, in pieces of one tile and less
        (case(9, &[3, 3, 47, 61], Mode::Multiclass), MULTICLASS),
        (case(10, &[3, 1, 3, 29, 31], Mode::Binary), BINARY),
    ]
}

#[test]
fn statistics_of_parts_joined_give_the_whole_batch() {
    let engine = gpu();
    for (c, texts) in cases() {
        let ex = exprs(texts);
        let n = c.shape[0];
        let cut = n / 2 + 1;
        let (a, b) = (c.images(0, cut), c.images(cut, n));
        let mut stats = engine.statistics_blocking(&a, &ex).unwrap();
        stats.append(&engine.statistics_blocking(&b, &ex).unwrap()).unwrap();
        assert_eq!(stats.images(), n);
        let whole = c.whole();
        let values = stats.finish().unwrap();
        assert_reference(&whole, &ex, &values, &format!("{:?} finish", c.shape));
        // each part's gradient of the whole batch's loss is that part of the whole gradient
        let ga = engine.gradient_blocking(&a, &stats, 0, &ex).unwrap();
        let gb = engine.gradient_blocking(&b, &stats, cut, &ex).unwrap();
        for (i, e) in ex.iter().enumerate() {
            let mut g = ga[i].grad.clone().unwrap();
            g.extend_from_slice(gb[i].grad.as_ref().unwrap());
            let joined = Evaluation {
                value: ga[i].value,
                term_values: vec![],
                grad: Some(g),
                unreduced: None,
                level_grads: vec![],
            };
            assert_reference(&whole, std::slice::from_ref(e), &[joined], &format!("{:?} gradient", c.shape));
            assert_eq!(ga[i].value.to_bits(), gb[i].value.to_bits(), "both parts see the whole batch's value");
        }
        // placed tables added (an all-reduce) equal the appended statistics
        let mut sum = engine.statistics_blocking(&a, &ex).unwrap().placed(0, n).unwrap();
        sum.add(&engine.statistics_blocking(&b, &ex).unwrap().placed(cut, n).unwrap()).unwrap();
        assert_eq!(sum, stats);
        // a worker with no image of the batch adds zeros, and changes nothing
        let whole_in = c.whole();
        let none = Statistics::zeros(whole_in.mode(), whole_in.kind(), whole_in.classes(), n, &ex).unwrap();
        assert!(none.as_slice().iter().all(|&x| x == 0.0));
        sum.add(&none).unwrap();
        assert_eq!(sum, stats);
    }
}

#[test]
fn cpu_statistics_give_the_reference_values() {
    let engine = Engine::cpu(None);
    for (c, texts) in cases() {
        let ex = exprs(texts);
        let n = c.shape[0];
        let mut stats = engine.statistics_blocking(&c.images(0, 2), &ex).unwrap();
        stats.append(&engine.statistics_blocking(&c.images(2, n), &ex).unwrap()).unwrap();
        assert_reference(&c.whole(), &ex, &stats.finish().unwrap(), "cpu finish");
        assert!(matches!(engine.gradient_blocking(&c.whole(), &stats, 0, &ex), Err(Error::Unsupported(_))));
    }
}

#[test]
fn statistics_refuse_what_does_not_merge() {
    let engine = gpu();
    let c = case(5, &[2, 1, 4, 4], Mode::Binary);
    let whole: LossExpr = "lovasz".parse().unwrap();
    assert!(matches!(engine.statistics_blocking(&c.whole(), std::slice::from_ref(&whole)), Err(Error::Unsupported(_))));
    // zero statistics refuse the same, and what the mode or the input's kind does not take
    use segloss::InputKind::{Logits, Probs};
    assert!(matches!(Statistics::zeros(Mode::Binary, Logits, 1, 2, &[whole]), Err(Error::Unsupported(_))));
    assert!(matches!(
        Statistics::zeros(Mode::Binary, Logits, 1, 2, &exprs(&["deep(dice)"])),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(Statistics::zeros(Mode::Binary, Logits, 1, 2, &exprs(&["ce"])), Err(Error::LossMode { .. })));
    assert!(matches!(Statistics::zeros(Mode::Multiclass, Probs, 3, 2, &exprs(&["ce"])), Err(Error::LossMode { .. })));
    assert!(matches!(Statistics::zeros(Mode::Binary, Logits, 1, usize::MAX, &exprs(&["dice"])), Err(Error::Input(_))));
    // classes and images as a batch has them: not 0, fitting the mode, bounded before anything is
    // allocated for them
    for (mode, c, n) in [
        (Mode::Multilabel, usize::MAX / 2, 1),
        (Mode::Multilabel, 1 << 40, 1),
        (Mode::Multilabel, 0, 1),
        (Mode::Binary, 3, 1),
        (Mode::Binary, 1, 0),
    ] {
        assert!(
            matches!(Statistics::zeros(mode, Logits, c, n, &exprs(&["dice"])), Err(Error::Shape(_))),
            "{mode} {c} {n}"
        );
    }
    let ex = exprs(&["dice"]);
    // statistics, and the gradients from them, hold one level
    let small = [0.25f32; 8];
    let levels = c.whole().with_levels(vec![(std::borrow::Cow::Borrowed(&small[..]), vec![2, 1, 2, 2])]).unwrap();
    assert!(matches!(engine.statistics_blocking(&levels, &ex), Err(Error::Unsupported(_))));
    let whole_stats = engine.statistics_blocking(&c.whole(), &ex).unwrap();
    assert!(matches!(engine.gradient_blocking(&levels, &whole_stats, 0, &ex), Err(Error::Unsupported(_))));
    let stats = engine.statistics_blocking(&c.images(0, 1), &ex).unwrap();
    // images past the statistics' batch, an expression they do not hold, another kind
    assert!(matches!(engine.gradient_blocking(&c.images(0, 2), &stats, 0, &ex), Err(Error::Input(_))));
    assert!(matches!(engine.gradient_blocking(&c.images(0, 1), &stats, 0, &exprs(&["bce"])), Err(Error::Input(_))));
    let other = engine.statistics_blocking(&c.images(1, 2), &exprs(&["bce"])).unwrap();
    assert!(matches!(stats.clone().append(&other), Err(Error::Input(_))));
    let _: &Statistics = &stats;
}

fn limited(bytes: u64) -> Engine {
    Engine::with_options_blocking(&EngineOptions {
        max_binding_bytes: Some(bytes),
        allow_cpu_fallback: false,
        ..EngineOptions::from_env()
    })
    .unwrap()
}

#[test]
fn inputs_past_a_lowered_binding_limit_give_the_unsplit_results() {
    let unsplit = gpu();
    for (c, texts) in cases() {
        let ex = exprs(texts);
        let input = c.whole();
        let image = (c.shape[1..].iter().product::<usize>() * 4) as u64;
        let want = unsplit.evaluate_blocking(&input, &ex, true).unwrap();
        // by images (two images a piece), then by pixels (a third of an image a piece; Lovász
        // sorts one image and cannot run on pieces of one)
        for (limit, by) in [(2 * image + 8, "images"), (image / 3 + 4, "pixels")] {
            let engine = limited(limit);
            assert!(engine.max_binding_bytes().unwrap() < (input.logits().len() * 4) as u64);
            let usable: Vec<LossExpr> = ex.iter().filter(|e| by == "images" || !e.has_lovasz()).cloned().collect();
            let got = engine.evaluate_blocking(&input, &usable, true).unwrap();
            assert_reference(&input, &usable, &got, &format!("{:?} split by {by}", c.shape));
            let want: Vec<&Evaluation> =
                ex.iter().zip(&want).filter(|(e, _)| usable.contains(e)).map(|p| p.1).collect();
            for ((e, g), w) in usable.iter().zip(&got).zip(want) {
                assert!(
                    (g.value - w.value).abs() <= 1e-5 + 1e-4 * w.value.abs(),
                    "'{e}' by {by}: {} vs {}",
                    g.value,
                    w.value
                );
            }
        }
    }
}

#[test]
fn lovasz_past_the_binding_limit_is_a_limit_error_where_it_cannot_be_split() {
    let c = case(6, &[4, 3, 32, 32], Mode::Multiclass);
    let input = c.whole();
    let image = 3 * 32 * 32 * 4;
    let by_images = limited(2 * image);
    let whole_batch: LossExpr = "lovasz".parse().unwrap();
    assert!(matches!(by_images.evaluate_blocking(&input, &[whole_batch], true), Err(Error::Limit { .. })));
    let by_pixels = limited(image / 2);
    let per_image: LossExpr = "lovasz:per_image=true".parse().unwrap();
    assert!(matches!(
        by_pixels.evaluate_blocking(&input, std::slice::from_ref(&per_image), true),
        Err(Error::Limit { .. })
    ));
    // per image, by images: fine
    let got = by_images.evaluate_blocking(&input, std::slice::from_ref(&per_image), true).unwrap();
    assert_reference(&input, &[per_image], &got, "per-image lovasz by images");
}

#[test]
fn a_batch_evaluates_an_input_past_the_limit_in_pieces() {
    let engine = limited(3 * 32 * 32 * 4);
    let big = case(7, &[4, 3, 32, 32], Mode::Multiclass);
    let small = case(8, &[1, 3, 8, 8], Mode::Multiclass);
    let ex = exprs(&["0.8*ce+0.2*dice"]);
    let mut batch = engine.batch();
    let (bi, si) = (big.whole(), small.whole());
    let pb = batch.push(&bi, &ex, true).unwrap();
    let ps = batch.push(&si, &ex, false).unwrap();
    batch.flush_blocking().unwrap();
    assert_reference(&bi, &ex, &pb.wait().unwrap(), "batched big input");
    let s = ps.wait().unwrap();
    assert!(s[0].grad.is_none());
    assert_reference(&si, &ex, &s, "batched small input");
}

#[test]
fn two_adapters_give_the_single_adapter_results() {
    // lavapipe on Vulkan and llvmpipe on OpenGL (CI has both)
    let opts = EngineOptions { backend: None, ..EngineOptions::from_env() };
    let multi = segloss::MultiEngine::open_blocking(&opts, "vulkan,gl").unwrap();
    let backends: Vec<&str> = multi.engines().iter().map(|e| e.info().backend.as_str()).collect();
    assert!(multi.engines().len() >= 2, "two adapters needed, found {backends:?}");
    let one = gpu();
    let runs = cases().into_iter().flat_map(|(c, texts)| {
        // spread over the adapters; then with a whole-batch sort, all on the first adapter
        let mut with = texts.to_vec();
        with.push("lovasz");
        [(case(c.shape.len() as u64, &c.shape, c.mode), texts.to_vec()), (c, with)]
    });
    for (c, texts) in runs {
        let ex = exprs(&texts);
        let input = c.whole();
        let want = one.evaluate_blocking(&input, &ex, true).unwrap();
        let before = multi.engines()[1].activity().submissions;
        let got = multi.evaluate_blocking(&input, &ex, true).unwrap();
        let spread = multi.engines()[1].activity().submissions > before;
        assert_eq!(spread, !texts.contains(&"lovasz"), "the second adapter works unless a whole-batch sort runs");
        assert_reference(&input, &ex, &got, &format!("{:?} on {backends:?}", c.shape));
        for ((e, g), w) in ex.iter().zip(&got).zip(&want) {
            assert!((g.value - w.value).abs() <= 1e-5 + 1e-4 * w.value.abs(), "'{e}': {} vs {}", g.value, w.value);
            let (d, m) = max_diff(g.grad.as_ref().unwrap(), w.grad.as_ref().unwrap());
            assert!(d <= 1e-7 + 1e-4 * m, "'{e}': gradient off by {d}");
        }
        let values = multi.evaluate_blocking(&input, &ex[..1], false).unwrap();
        assert!(values[0].grad.is_none());
    }
}

/// `data` in a new storage buffer of the engine's device.
fn device_buffer(engine: &Engine, data: &[u32]) -> segloss::wgpu::Buffer {
    use segloss::wgpu::util::DeviceExt;
    engine.device().unwrap().create_buffer_init(&segloss::wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(data),
        usage: segloss::wgpu::BufferUsages::STORAGE
            | segloss::wgpu::BufferUsages::COPY_SRC
            | segloss::wgpu::BufferUsages::COPY_DST,
    })
}

fn read_back(engine: &Engine, buf: &segloss::wgpu::Buffer) -> Vec<f32> {
    use segloss::wgpu;
    let (device, queue) = (engine.device().unwrap(), engine.queue().unwrap());
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let out = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap());
    staging.unmap();
    out
}

#[test]
fn statistics_and_gradients_of_device_buffers_equal_those_of_host_inputs() {
    use segloss::{BufferInput, BufferSlice, GradOut, TargetBuffer};
    let engine = gpu();
    let c = case(12, &[4, 3, 9, 11], Mode::Multiclass);
    let ex = exprs(&["0.8*ce+0.2*dice", "lovasz:per_image=true"]);
    let (c_, s) = (3, 99);
    let mut host = engine.statistics_blocking(&c.images(0, 2), &ex).unwrap();
    host.append(&engine.statistics_blocking(&c.images(2, 4), &ex).unwrap()).unwrap();
    let mut dev: Option<Statistics> = None;
    let mut bufs = Vec::new();
    for (from, to) in [(0, 2), (2, 4)] {
        let l = device_buffer(engine, bytemuck::cast_slice(&c.logits[from * c_ * s..to * c_ * s]));
        let words: Vec<u32> = c.labels[from * s..to * s].iter().map(|&v| v as i32 as u32).collect();
        let t = device_buffer(engine, &words);
        bufs.push((l, t, from, to));
    }
    let inputs: Vec<BufferInput<'_>> = bufs
        .iter()
        .map(|(l, t, from, to)| {
            BufferInput::new(
                BufferSlice::whole(l),
                TargetBuffer::ClassI32(BufferSlice::whole(t)),
                &[to - from, 3, 9, 11],
                Mode::Multiclass,
                Some(255),
            )
            .unwrap()
        })
        .collect();
    for b in &inputs {
        let st = engine.statistics_buffers_blocking(b, &ex).unwrap();
        match &mut dev {
            None => dev = Some(st),
            Some(d) => d.append(&st).unwrap(),
        }
    }
    let dev = dev.unwrap();
    assert_eq!(dev, host, "the same sums from buffers as from host slices");
    // the second half's gradients: one read back, one written into a buffer of the caller
    let out = device_buffer(engine, &vec![0u32; 2 * 3 * 99]);
    let grads = [GradOut::Host, GradOut::Write(BufferSlice::whole(&out))];
    let got = engine.gradient_buffers_blocking(&inputs[1], &dev, 2, &ex, &grads).unwrap();
    let want = engine.gradient_blocking(&c.images(2, 4), &host, 2, &ex).unwrap();
    assert_eq!(got[0].grad, want[0].grad);
    assert_eq!(read_back(engine, &out), want[1].grad.clone().unwrap());
    assert_eq!(got[0].value.to_bits(), want[0].value.to_bits());
    // bad values in a buffer come back as the typed error of the device's checks
    let mut bad = c.logits[..2 * 3 * 99].to_vec();
    bad[5] = f32::NAN;
    let l = device_buffer(engine, bytemuck::cast_slice(&bad));
    let b = BufferInput::new(
        BufferSlice::whole(&l),
        TargetBuffer::ClassI32(BufferSlice::whole(&bufs[0].1)),
        &[2, 3, 9, 11],
        Mode::Multiclass,
        Some(255),
    )
    .unwrap();
    let e = engine.statistics_buffers_blocking(&b, &ex);
    assert!(matches!(e, Err(Error::NonFinite(_))), "{e:?}");
}

#[test]
fn buffer_inputs_past_a_lowered_binding_limit_give_the_unsplit_results() {
    use segloss::{BufferInput, BufferSlice, GradOut, TargetBuffer};
    for (c, texts) in cases() {
        let input = c.whole();
        let numel = c.logits.len();
        let image = (numel / c.shape[0] * 4) as u64;
        for (limit, by) in [(2 * image + 8, "images"), (image / 3 + 4, "pixels")] {
            let engine = limited(limit);
            assert!(engine.max_binding_bytes().unwrap() < (numel * 4) as u64);
            let ex: Vec<LossExpr> = exprs(texts).into_iter().filter(|e| by == "images" || !e.has_lovasz()).collect();
            let l = device_buffer(&engine, bytemuck::cast_slice(&c.logits));
            let multiclass = c.mode == Mode::Multiclass;
            let t = if multiclass {
                device_buffer(&engine, &c.labels.iter().map(|&v| v as u32).collect::<Vec<_>>())
            } else {
                device_buffer(&engine, bytemuck::cast_slice(&c.dense))
            };
            let target = if multiclass {
                TargetBuffer::ClassU32(BufferSlice::whole(&t))
            } else {
                TargetBuffer::Dense(BufferSlice::whole(&t))
            };
            let b = BufferInput::new(BufferSlice::whole(&l), target, &c.shape, c.mode, c.ignore).unwrap();
            // each expression's gradient: read back, written, and added to ones
            let written: Vec<_> = ex.iter().map(|_| device_buffer(&engine, &vec![0u32; numel])).collect();
            let ones: Vec<u32> = vec![1f32.to_bits(); numel];
            let added: Vec<_> = ex.iter().map(|_| device_buffer(&engine, &ones)).collect();
            let want = gpu().evaluate_blocking(&input, &ex, true).unwrap();
            let host: Vec<GradOut<'_>> = ex.iter().map(|_| GradOut::Host).collect();
            let got = engine.evaluate_buffers_blocking(&b, &ex, &host).unwrap();
            assert_reference(&input, &ex, &got, &format!("{:?} buffers by {by}", c.shape));
            let w: Vec<GradOut<'_>> = written.iter().map(|x| GradOut::Write(BufferSlice::whole(x))).collect();
            engine.evaluate_buffers_blocking(&b, &ex, &w).unwrap();
            let a: Vec<GradOut<'_>> = added.iter().map(|x| GradOut::Add(BufferSlice::whole(x))).collect();
            engine.evaluate_buffers_blocking(&b, &ex, &a).unwrap();
            for (i, e) in ex.iter().enumerate() {
                let g = got[i].grad.as_ref().unwrap();
                let (d, m) = max_diff(g, want[i].grad.as_ref().unwrap());
                assert!(d <= 1e-7 + 1e-4 * m, "'{e}' by {by}: gradient off by {d}");
                assert_eq!(&read_back(&engine, &written[i])[..numel], &g[..], "'{e}' written");
                let plus: Vec<f32> = g.iter().map(|x| x + 1.0).collect();
                assert_eq!(&read_back(&engine, &added[i])[..numel], &plus[..], "'{e}' added");
            }
        }
    }
    // a bad value is named by its index in the whole batch, not in its piece
    let c = case(13, &[3, 2, 8, 8], Mode::Multilabel);
    let engine = limited(2 * 64 * 4 / 3);
    let mut logits = c.logits.clone();
    logits[2 * 128 + 64 + 37] = f32::INFINITY;
    let l = device_buffer(&engine, bytemuck::cast_slice(&logits));
    let t = device_buffer(&engine, bytemuck::cast_slice(&c.dense));
    let b =
        BufferInput::new(BufferSlice::whole(&l), TargetBuffer::Dense(BufferSlice::whole(&t)), &c.shape, c.mode, None)
            .unwrap();
    let e = engine.evaluate_buffers_blocking(&b, &exprs(&["dice"]), &[GradOut::Skip]).unwrap_err();
    assert!(e.to_string().contains("[2, 1, 4, 5]"), "{e}");
}

#[test]
fn pieces_of_unequal_sizes_with_more_pixel_losses_than_one_pass_holds() {
    // 3 images in pieces of 2 and 1 (statistics of different strides), five pixel losses (two
    // statistics passes)
    let c = case(14, &[3, 4, 8, 8], Mode::Multiclass);
    let ex = exprs(&[
        "ce",
        "ce:label_smoothing=0.1",
        "focal:act=softmax",
        "focal:act=softmax,gamma=1.5",
        "ce:weights=1;2;0.5;3",
        "0.5*ce+0.5*dice",
    ]);
    let engine = limited(2 * 4 * 64 * 4);
    let input = c.whole();
    let got = engine.evaluate_blocking(&input, &ex, true).unwrap();
    assert_reference(&input, &ex, &got, "5 pixel losses in pieces of 2 and 1 images");
    let stats = engine.statistics_blocking(&input, &ex).unwrap();
    assert_reference(&input, &ex, &stats.finish().unwrap(), "their statistics");
}

#[test]
fn a_batch_refuses_soft_labels_for_lovasz_past_the_limit_too() {
    let c = case(15, &[4, 1, 8, 8], Mode::Binary);
    let soft = vec![0.3f32; c.logits.len()];
    let input = Input::dense(&c.logits, &soft, &c.shape, Mode::Binary).unwrap();
    let engine = limited(2 * 64 * 4);
    let ex = exprs(&["lovasz:per_image=true"]);
    assert!(matches!(engine.evaluate_blocking(&input, &ex, false), Err(Error::TargetValue(_))));
    let mut batch = engine.batch();
    let p = batch.push(&input, &ex, false).unwrap();
    batch.flush_blocking().unwrap();
    assert!(matches!(p.wait(), Err(Error::TargetValue(_))));
}

#[test]
fn split_buffer_gradients_sharing_one_slice_add_up_as_unsplit() {
    use segloss::{BufferInput, BufferSlice, GradOut, TargetBuffer};
    let c = case(16, &[3, 2, 8, 8], Mode::Multilabel);
    let numel = c.logits.len();
    let ex = exprs(&["bce", "dice", "0.5*dice+0.5*bce"]);
    let run = |engine: &Engine| {
        let l = device_buffer(engine, bytemuck::cast_slice(&c.logits));
        let t = device_buffer(engine, bytemuck::cast_slice(&c.dense));
        let b = BufferInput::new(
            BufferSlice::whole(&l),
            TargetBuffer::Dense(BufferSlice::whole(&t)),
            &c.shape,
            c.mode,
            None,
        )
        .unwrap();
        let g = device_buffer(engine, &vec![0u32; numel]);
        let sl = BufferSlice::whole(&g);
        // written by the first, added to by the others
        engine.evaluate_buffers_blocking(&b, &ex, &[GradOut::Write(sl), GradOut::Add(sl), GradOut::Add(sl)]).unwrap();
        read_back(engine, &g)
    };
    let unsplit = run(gpu());
    let split = run(&limited(2 * 128 * 4));
    let (d, m) = max_diff(&split, &unsplit);
    assert!(d <= 1e-7 + 1e-5 * m, "shared gradient slice: off by {d} of {m}");
}

#[test]
fn gradient_buffers_checks_the_values_and_offsets_are_checked() {
    use segloss::{BufferInput, BufferSlice, GradOut, TargetBuffer};
    let engine = gpu();
    let c = case(17, &[2, 3, 4, 4], Mode::Multiclass);
    let ex = exprs(&["0.8*ce+0.2*dice"]);
    let stats = engine.statistics_blocking(&c.whole(), &ex).unwrap();
    let mut bad = c.logits.clone();
    bad[7] = f32::NAN;
    let l = device_buffer(engine, bytemuck::cast_slice(&bad));
    let w: Vec<u32> = c.labels.iter().map(|&v| v as u32).collect();
    let t = device_buffer(engine, &w);
    let b = BufferInput::new(
        BufferSlice::whole(&l),
        TargetBuffer::ClassU32(BufferSlice::whole(&t)),
        &c.shape,
        c.mode,
        c.ignore,
    )
    .unwrap();
    let e = engine.gradient_buffers_blocking(&b, &stats, 0, &ex, &[GradOut::Host]);
    assert!(matches!(e, Err(Error::NonFinite(_))), "{e:?}");
    assert!(matches!(stats.placed(usize::MAX, 2), Err(Error::Input(_))));
    assert!(matches!(engine.gradient_blocking(&c.whole(), &stats, usize::MAX, &ex), Err(Error::Input(_))));
}

#[test]
fn pixel_parts_of_one_image_add_up_except_a_per_image_lovasz() {
    let engine = gpu();
    // one image [1, 2, 1, 4] in two halves of its pixels (reviewed case: the sum of the halves'
    // Lovász values, 0.5795, came back for the whole image's 0.2922)
    let x = [2.0f32, -1.0, 0.5, -0.3, 1.0, 0.2, -2.0, 0.1];
    let t = [0i64, 1, 0, 1];
    let whole = Input::labels(&x, &t, &[1, 2, 1, 4], None).unwrap();
    let a = Input::labels(&[2.0f32, -1.0, 1.0, 0.2], &t[..2], &[1, 2, 1, 2], None).unwrap();
    let b = Input::labels(&[0.5f32, -0.3, -2.0, 0.1], &t[2..], &[1, 2, 1, 2], None).unwrap();
    let sums = exprs(&["0.8*ce+0.2*dice", "iou@monai"]);
    let mut st = engine.statistics_blocking(&a, &sums).unwrap();
    st.add(&engine.statistics_blocking(&b, &sums).unwrap()).unwrap();
    assert_reference(&whole, &sums, &st.finish().unwrap(), "pixel halves of sums");
    for text in ["lovasz:per_image=true", "ce+lovasz:per_image=true"] {
        let ex = exprs(&[text]);
        let mut st = engine.statistics_blocking(&a, &ex).unwrap();
        let before = st.clone();
        match st.add(&engine.statistics_blocking(&b, &ex).unwrap()) {
            Err(Error::Unsupported(m)) => assert!(m.contains("image 0"), "{text}: {m}"),
            r => panic!("{text}: {r:?}"),
        }
        assert_eq!(st, before, "{text}: a refused add leaves the statistics as they were");
    }
}

#[test]
fn errors_over_two_adapters_name_the_batch_element() {
    let multi = two_adapters();
    // [4, 2, 2]: image 3's true class 0 at pixel 1 is -inf (element 13); each adapter's part
    // alone would name its own element 5
    let mut x = vec![0.5f32; 16];
    x[3 * 4 + 1] = f32::NEG_INFINITY;
    let input = Input::labels(&x, &[0i64; 8], &[4, 2, 2], None).unwrap();
    for (text, grads) in [("ce", false), ("0.5*ce+0.5*dice", true), ("focal:act=softmax", true)] {
        let single = gpu().evaluate_blocking(&input, &exprs(&[text]), grads).unwrap_err().to_string();
        let spread = multi.evaluate_blocking(&input, &exprs(&[text]), grads).unwrap_err().to_string();
        assert!(single.contains("logits[13] (at index [3, 0, 1])"), "{text}: {single}");
        assert_eq!(spread, single, "{text}");
    }
    // (review) a soft target under per-image Lovász: element 13 of [4, 1, 2, 2] (image 3), which
    // the adapter holding images 2..4 named as its own element 5
    let x: Vec<f32> = (0..16).map(|i| (i % 5) as f32 - 2.0).collect();
    let mut t: Vec<f32> = (0..16).map(|i| (i % 2) as f32).collect();
    t[13] = 0.5;
    let input = Input::dense(&x, &t, &[4, 1, 2, 2], Mode::Binary).unwrap();
    let text = "bce+lovasz:per_image=true";
    let single = gpu().evaluate_blocking(&input, &exprs(&[text]), true).unwrap_err().to_string();
    let spread = multi.evaluate_blocking(&input, &exprs(&[text]), true).unwrap_err().to_string();
    assert!(single.contains("element 13 (at index [3, 0, 0, 1])"), "{text}: {single}");
    assert_eq!(spread, single, "{text}");
}

#[test]
fn what_does_not_merge_runs_on_the_first_of_two_adapters() {
    let multi = two_adapters();
    let c = case(91, &[3, 4, 5, 6], Mode::Multiclass);
    let input = c.whole();
    // unreduced entries: the first adapter's, entries and all
    let ex = exprs(&["dice@monai:reduction=none", "0.5*ce+0.5*dice"]);
    let want = gpu().evaluate_blocking(&input, &ex, true).unwrap();
    let before = multi.engines()[1].activity().submissions;
    let got = multi.evaluate_blocking(&input, &ex, true).unwrap();
    assert_eq!(multi.engines()[1].activity().submissions, before, "the second adapter stays idle");
    assert_eq!(got[0].unreduced, want[0].unreduced);
    assert_reference(&input, &ex, &got, "reduction=none over two adapters");
    // deep supervision: the levels on the first adapter
    let small = case(92, &[3, 4, 3, 2], Mode::Multiclass);
    let deep_in =
        input.clone().with_levels(vec![(std::borrow::Cow::Borrowed(&small.logits[..]), small.shape)]).unwrap();
    let deep = exprs(&["deep(dice+ce)"]);
    let got = multi.evaluate_blocking(&deep_in, &deep, true).unwrap();
    let want = reference::evaluate(&deep_in, &deep[0]).unwrap();
    assert!(
        (got[0].value - want.value).abs() <= 1e-5 * want.value.abs().max(1.0),
        "{} vs {}",
        got[0].value,
        want.value
    );
    assert_eq!(got[0].level_grads.len(), 1);
}

/// lavapipe on Vulkan and llvmpipe on OpenGL as one engine (CI has both).
fn two_adapters() -> segloss::MultiEngine {
    let opts = EngineOptions { backend: None, ..EngineOptions::from_env() };
    let multi = segloss::MultiEngine::open_blocking(&opts, "vulkan,gl").unwrap();
    assert!(multi.engines().len() >= 2, "two adapters needed");
    multi
}
