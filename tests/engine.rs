//! The engine on the caller's device and buffers: buffer inputs at non-zero offsets equal host
//! inputs bit for bit, gradients overwrite or add into the caller's buffer, the checks of buffer
//! inputs run on the device and come back as typed errors, one submission per evaluation, and
//! eight threads on one engine give what one thread gives.

mod common;

use std::borrow::Cow;

use common::{Case, Rng};
use segloss::{
    reference, BufferInput, BufferSlice, Engine, Error, Evaluation, GradOut, Input, InputKind, LossExpr, Mode, Target,
    TargetBuffer,
};
use wgpu::util::DeviceExt;

/// A device of our own, made the way a wgpu program makes it (lavapipe in CI).
fn caller_device() -> (wgpu::AdapterInfo, wgpu::Device, wgpu::Queue) {
    caller_device_with(|_| {}, wgpu::Features::empty())
}

/// [`caller_device`] with the adapter's limits changed by `edit`, and those of `features` the
/// adapter has.
fn caller_device_with(
    edit: impl FnOnce(&mut wgpu::Limits),
    features: wgpu::Features,
) -> (wgpu::AdapterInfo, wgpu::Device, wgpu::Queue) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let inst = wgpu::Instance::new(desc);
    let adapter = futures::executor::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("a Vulkan adapter (apt-get install mesa-vulkan-drivers)");
    let mut limits = adapter.limits();
    edit(&mut limits);
    let (device, queue) = futures::executor::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("caller"),
        required_limits: limits,
        required_features: adapter.features() & features,
        ..Default::default()
    }))
    .expect("device");
    (adapter.get_info(), device, queue)
}

fn caller_engine() -> &'static (Engine, wgpu::Device, wgpu::Queue) {
    static E: std::sync::OnceLock<(Engine, wgpu::Device, wgpu::Queue)> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        let (info, device, queue) = caller_device();
        let engine =
            Engine::from_device_blocking(&info, device.clone(), queue.clone()).expect("engine on the caller's device");
        (engine, device, queue)
    })
}

fn parse(texts: &[&str]) -> Vec<LossExpr> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

/// A buffer holding `pad` words of junk, then `data`, then junk: the slice starts at `pad * 4`.
fn buffer_with(device: &wgpu::Device, data: &[u32], pad: usize) -> wgpu::Buffer {
    let mut words = vec![0xDEAD_BEEFu32; pad];
    words.extend_from_slice(data);
    words.extend(std::iter::repeat_n(0xDEAD_BEEFu32, 64));
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("caller data"),
        contents: bytemuck::cast_slice(&words),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

fn read_buffer(device: &wgpu::Device, queue: &wgpu::Queue, buf: &wgpu::Buffer, offset: u64, len: usize) -> Vec<f32> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (len * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, offset, &staging, 0, (len * 4) as u64);
    queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let out = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap());
    staging.unmap();
    out
}

fn dense_case(seed: u64, shape: &[usize], mode: Mode) -> Case {
    let mut r = Rng(seed);
    let numel: usize = shape.iter().product();
    let logits = (0..numel).map(|_| (r.normal() * 3.0) as f32).collect();
    let dense = (0..numel).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
    Case { shape: shape.to_vec(), mode, logits, dense, labels: vec![], ignore: None }
}

fn label_case(seed: u64, shape: &[usize], ignore: i64) -> Case {
    let mut r = Rng(seed);
    let numel: usize = shape.iter().product();
    let logits = (0..numel).map(|_| (r.normal() * 3.0) as f32).collect();
    let c = shape[1] as i64;
    let labels =
        (0..numel / shape[1]).map(|_| if r.uniform() < 0.1 { ignore } else { r.below(c as usize) as i64 }).collect();
    Case { shape: shape.to_vec(), mode: Mode::Multiclass, logits, dense: vec![], labels, ignore: Some(ignore) }
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
    "lovasz",
    "lovasz:per_image=true",
    // (host inputs: the hinge's weights pass writes these gradients, gpu::lovasz::HingeGrad;
    // buffer inputs, checked on the device: the gradient pass)
    "0.3*lovasz:per_image=true",
    "bce+lovasz",
];
const MULTICLASS: &[&str] = &[
    "ce",
    "0.8*ce+0.2*dice",
    "dice@monai",
    "focal:act=softmax",
    "ce:weights=1;2;0.5,label_smoothing=0.1",
    "jaccard@keras",
    "lovasz",
    "lovasz:per_image=true",
    "0.8*ce+0.2*lovasz",
];

fn assert_same(a: &[Evaluation], b: &[Evaluation], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.value.to_bits(), y.value.to_bits(), "{what}: values differ: {} vs {}", x.value, y.value);
        assert_eq!(x.grad, y.grad, "{what}: gradients differ");
        assert_eq!(x.unreduced, y.unreduced, "{what}: unreduced entries differ");
    }
}

#[test]
fn buffer_inputs_at_offsets_equal_host_inputs_bit_for_bit() {
    let (engine, device, queue) = caller_engine();
    let align = device.limits().min_storage_buffer_offset_alignment as usize / 4;
    for (case, texts) in [
        (dense_case(1, &[2, 1, 9, 13], Mode::Binary), BINARY),
        (dense_case(2, &[2, 3, 5, 4, 3], Mode::Multilabel), BINARY),
        (label_case(3, &[2, 3, 11, 7], 255), MULTICLASS),
        (label_case(4, &[3, 3, 16], -100), MULTICLASS),
    ] {
        let exprs = parse(texts);
        let host = engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
        let numel = case.logits.len();
        let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 3 * align);
        let logits = BufferSlice::new(&lbuf, (3 * align * 4) as u64, numel as u64);
        let (words, tbuf): (Vec<u32>, wgpu::Buffer);
        let target = if case.mode == Mode::Multiclass {
            words = case.labels.iter().map(|&l| l as i32 as u32).collect();
            tbuf = buffer_with(device, &words, align);
            let s = BufferSlice::new(&tbuf, (align * 4) as u64, words.len() as u64);
            if case.ignore == Some(-100) {
                TargetBuffer::ClassI32(s)
            } else {
                TargetBuffer::ClassU32(s)
            }
        } else {
            words = bytemuck::cast_slice(&case.dense).to_vec();
            tbuf = buffer_with(device, &words, 2 * align);
            TargetBuffer::Dense(BufferSlice::new(&tbuf, (2 * align * 4) as u64, numel as u64))
        };
        let input = BufferInput::new(logits, target, &case.shape, case.mode, case.ignore).unwrap();
        // gradients read back to the host
        let grads = vec![GradOut::Host; exprs.len()];
        let out = engine.evaluate_buffers_blocking(&input, &exprs, &grads).unwrap();
        assert_same(&out, &host, &format!("{:?}", case.shape));
        // written into the caller's buffer at an offset, and added to what is there
        let gbuf = buffer_with(device, &vec![0u32; numel], 5 * align);
        let goff = (5 * align * 4) as u64;
        for (i, e) in exprs.iter().enumerate() {
            let gs = BufferSlice::new(&gbuf, goff, numel as u64);
            let v = engine.evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[GradOut::Write(gs)]).unwrap();
            assert_eq!(v[0].value.to_bits(), host[i].value.to_bits());
            let written = read_buffer(device, queue, &gbuf, goff, numel);
            assert_eq!(Some(&written), host[i].grad.as_ref(), "{}: written gradient", texts[i]);
            engine.evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[GradOut::Add(gs)]).unwrap();
            let added = read_buffer(device, queue, &gbuf, goff, numel);
            let want: Vec<f32> = written.iter().map(|&g| g + g).collect();
            assert_eq!(added, want, "{}: accumulated gradient", texts[i]);
            // the words around the slice are untouched
            let before = read_buffer(device, queue, &gbuf, 0, 5 * align);
            assert!(before.iter().all(|&w| w.to_bits() == 0xDEAD_BEEF));
        }
    }
}

/// Several expressions' gradients into slices of one buffer (a framework's gradient pool), a
/// hinge among them whose own passes could write its gradient early (gpu::lovasz::HingeGrad): each
/// slice ends as the expressions, in their order, leave it, and nothing is bound read-only and
/// written in one dispatch.
#[test]
fn gradients_into_one_buffer_keep_the_expressions_order() {
    let (engine, device, queue) = caller_engine();
    let align = device.limits().min_storage_buffer_offset_alignment as usize / 4;
    let case = dense_case(7, &[2, 1, 9, 13], Mode::Binary);
    let numel = case.logits.len();
    let host = engine.evaluate_blocking(&case.whole(), &parse(&["lovasz", "bce"]), true).unwrap();
    let (hinge, bce) = (host[0].grad.clone().unwrap(), host[1].grad.clone().unwrap());
    let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
    let tbuf = buffer_with(device, bytemuck::cast_slice(&case.dense), 0);
    let input = BufferInput::new(
        BufferSlice::new(&lbuf, 0, numel as u64),
        TargetBuffer::Dense(BufferSlice::new(&tbuf, 0, numel as u64)),
        &case.shape,
        Mode::Binary,
        None,
    )
    .unwrap();
    let second = numel.div_ceil(align) * align;
    let gbuf = buffer_with(device, &vec![0x3F80_0000u32; second + numel], 0); // 1.0 everywhere
    let (a, b) = (BufferSlice::new(&gbuf, 0, numel as u64), BufferSlice::new(&gbuf, (second * 4) as u64, numel as u64));
    let read = |at: usize| read_buffer(device, queue, &gbuf, (at * 4) as u64, numel);
    let sum = |x: &[f32], y: &[f32]| -> Vec<f32> { x.iter().zip(y).map(|(p, q)| p + q).collect() };
    // two slices of one buffer
    engine
        .evaluate_buffers_blocking(&input, &parse(&["lovasz", "bce"]), &[GradOut::Write(a), GradOut::Write(b)])
        .unwrap();
    assert_eq!(read(0), hinge);
    assert_eq!(read(second), bce);
    // one slice: written, then added to
    engine
        .evaluate_buffers_blocking(&input, &parse(&["lovasz", "bce"]), &[GradOut::Write(a), GradOut::Add(a)])
        .unwrap();
    assert_eq!(read(0), sum(&hinge, &bce));
    // added to, then overwritten by the hinge
    engine
        .evaluate_buffers_blocking(&input, &parse(&["bce", "lovasz"]), &[GradOut::Add(a), GradOut::Write(a)])
        .unwrap();
    assert_eq!(read(0), hinge);
    // the hinge beside bce in one expression, and bce alone, into one slice
    engine
        .evaluate_buffers_blocking(&input, &parse(&["bce+lovasz", "bce"]), &[GradOut::Write(a), GradOut::Add(a)])
        .unwrap();
    let both = engine.evaluate_blocking(&case.whole(), &parse(&["bce+lovasz"]), true).unwrap();
    assert_eq!(read(0), sum(both[0].grad.as_ref().unwrap(), &bce));
}

/// A framework's memory pool (burn's cubecl) hands out slices of one buffer: logits, targets and
/// the gradient side by side. The gradient then cannot be a written binding of the passes that
/// read the input, so the engine writes scratch and copies it into the slice, in the same single
/// submission; the results are the host input's, bit for bit, and the words around are untouched.
#[test]
fn logits_targets_and_gradient_in_one_pooled_buffer() {
    // an engine of its own: the other tests' submissions would count on a shared one
    let (info, device, queue) = caller_device();
    let engine = &Engine::from_device_blocking(&info, device.clone(), queue.clone()).unwrap();
    let (device, queue) = (&device, &queue);
    let align = device.limits().min_storage_buffer_offset_alignment as usize / 4;
    for (case, texts) in
        [(dense_case(5, &[2, 1, 9, 13], Mode::Binary), BINARY), (label_case(6, &[2, 3, 11, 7], 255), MULTICLASS)]
    {
        let exprs = parse(texts);
        let host = engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
        let numel = case.logits.len();
        let target: Vec<u32> = if case.mode == Mode::Multiclass {
            case.labels.iter().map(|&l| l as u32).collect()
        } else {
            bytemuck::cast_slice(&case.dense).to_vec()
        };
        // [junk | logits | junk | target | junk | gradient | junk], each slice aligned
        let up = |n: usize| n.div_ceil(align) * align;
        let (lo, to) = (align, align + up(numel) + align);
        let go = to + up(target.len()) + align;
        let mut words = vec![0xDEAD_BEEFu32; go + up(numel) + align];
        words[lo..lo + numel].copy_from_slice(bytemuck::cast_slice(&case.logits));
        words[to..to + target.len()].copy_from_slice(&target);
        words[go..go + numel].fill(0);
        let pool = buffer_with(device, &words, 0);
        let slice = |at: usize, len: usize| BufferSlice::new(&pool, (at * 4) as u64, len as u64);
        let tb = if case.mode == Mode::Multiclass {
            TargetBuffer::ClassU32(slice(to, target.len()))
        } else {
            TargetBuffer::Dense(slice(to, numel))
        };
        let input = BufferInput::new(slice(lo, numel), tb, &case.shape, case.mode, case.ignore).unwrap();
        for (i, e) in exprs.iter().enumerate() {
            let before = engine.activity();
            let v = engine
                .evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[GradOut::Write(slice(go, numel))])
                .unwrap();
            let after = engine.activity();
            assert_eq!(after.submissions - before.submissions, 1, "{}", texts[i]);
            assert_eq!(v[0].value.to_bits(), host[i].value.to_bits(), "{}", texts[i]);
            let written = read_buffer(device, queue, &pool, (go * 4) as u64, numel);
            assert_eq!(Some(&written), host[i].grad.as_ref(), "{}: written gradient", texts[i]);
            engine
                .evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[GradOut::Add(slice(go, numel))])
                .unwrap();
            let added = read_buffer(device, queue, &pool, (go * 4) as u64, numel);
            let want: Vec<f32> = written.iter().map(|&g| g + g).collect();
            assert_eq!(added, want, "{}: accumulated gradient", texts[i]);
            // the input and the junk around the slices are as they were
            let all: Vec<u32> = read_buffer(device, queue, &pool, 0, words.len()).iter().map(|w| w.to_bits()).collect();
            assert_eq!(&all[..go], &words[..go], "{}", texts[i]);
            assert_eq!(&all[go + numel..], &words[go + numel..], "{}", texts[i]);
        }
        // two expressions into the one slice: the first writes, the second adds to it
        let gs = [GradOut::Write(slice(go, numel)), GradOut::Add(slice(go, numel))];
        engine.evaluate_buffers_blocking(&input, &exprs[..2], &gs).unwrap();
        let both = read_buffer(device, queue, &pool, (go * 4) as u64, numel);
        let (g0, g1) = (host[0].grad.as_ref().unwrap(), host[1].grad.as_ref().unwrap());
        let want: Vec<f32> = g0.iter().zip(g1).map(|(a, b)| a + b).collect();
        assert_eq!(both, want, "{} then {}", texts[0], texts[1]);
        // bad input leaves the slice as it was, written or added to (the scratch is copied into
        // it only where the checks passed)
        let mut bad = words.clone();
        bad[lo + numel / 2] = f32::NAN.to_bits();
        bad[go..go + numel].copy_from_slice(bytemuck::cast_slice(&both));
        queue.write_buffer(&pool, 0, bytemuck::cast_slice(&bad));
        for g in [GradOut::Write(slice(go, numel)), GradOut::Add(slice(go, numel))] {
            for e in &exprs {
                let r = engine.evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[g]);
                assert!(matches!(r, Err(Error::NonFinite(_))), "{e:?}: {r:?}");
                let kept = read_buffer(device, queue, &pool, (go * 4) as u64, numel);
                assert_eq!(kept, both, "{e:?}: the gradient slice after bad input");
            }
        }
    }
}

#[test]
fn device_resident_evaluation_is_one_submission_and_no_wait() {
    // an engine of its own: the other tests' submissions would count on a shared one
    let (info, device, queue) = caller_device();
    let engine = &Engine::from_device_blocking(&info, device.clone(), queue.clone()).unwrap();
    let (device, queue) = (&device, &queue);
    let case = dense_case(7, &[2, 1, 16, 16], Mode::Binary);
    let exprs = parse(&["0.5*bce+0.5*dice", "lovasz"]);
    let host = engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
    let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
    let tbuf = buffer_with(device, bytemuck::cast_slice(&case.dense), 0);
    let n = case.logits.len() as u64;
    let input = BufferInput::new(
        BufferSlice::new(&lbuf, 0, n),
        TargetBuffer::Dense(BufferSlice::new(&tbuf, 0, n)),
        &case.shape,
        case.mode,
        None,
    )
    .unwrap();
    let g0 = buffer_with(device, &vec![0; n as usize], 0);
    let g1 = buffer_with(device, &vec![0; n as usize], 0);
    let before = engine.activity();
    let sub = engine
        .submit_buffers(
            &input,
            &exprs,
            &[GradOut::Write(BufferSlice::new(&g0, 0, n)), GradOut::Write(BufferSlice::new(&g1, 0, n))],
        )
        .unwrap();
    let after = engine.activity();
    assert_eq!(after.submissions - before.submissions, 1);
    assert_eq!(after.host_waits - before.host_waits, 0);
    // the values sit in a device buffer; read them (a second submission and one wait)
    let vals = futures::executor::block_on(sub.read()).unwrap();
    for (v, h) in vals.iter().zip(&host) {
        assert_eq!(v.value.to_bits(), h.value.to_bits());
    }
    assert_eq!(Some(&read_buffer(device, queue, &g0, 0, n as usize)), host[0].grad.as_ref());
    assert_eq!(Some(&read_buffer(device, queue, &g1, 0, n as usize)), host[1].grad.as_ref());
    // with gradients read back: one submission, one wait
    let before = engine.activity();
    engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
    let after = engine.activity();
    assert_eq!((after.submissions - before.submissions, after.host_waits - before.host_waits), (1, 1));
}

/// On a device whose storage bindings hold 1 MiB, the Lovász sorts' interleaved items (8 bytes
/// an element) do not fit one binding while the keys do: a CPU adapter's Lovász then takes the
/// GPU kernels over two arrays (`Gpu::sort_items`), a device-checked hinge alone among them (its
/// key pass checks, where the tile kernels' key count would). Values and gradient bits equal the
/// default engine's (items and tile kernels), host and buffer inputs alike.
#[test]
fn lovasz_items_larger_than_a_binding_take_the_two_array_kernels() {
    // (timestamps, where the adapter has them: the profile below)
    let (info, device, queue) =
        caller_device_with(|l| l.max_storage_buffer_binding_size = 1 << 20, wgpu::Features::TIMESTAMP_QUERY);
    let small = Engine::from_device_blocking(&info, device.clone(), queue.clone()).expect("engine");
    let (device, queue) = (&device, &queue);
    let full = common::gpu();
    let binary = dense_case(77, &[1, 1, 384, 384], Mode::Binary);
    // (3 x 224 x 224: 1.2 MB of items, and the weights with each pixel's max and log of its sum,
    // five floats a pixel, 1.0 MB)
    let mut multi = label_case(78, &[1, 3, 224, 224], 255);
    multi.ignore = None;
    for l in multi.labels.iter_mut() {
        *l %= 3;
    }
    let cases: [(&Case, &[&str]); 2] = [
        (&binary, &["lovasz", "lovasz:per_image=true", "bce+lovasz", "0.5*lovasz"]),
        (&multi, &["lovasz", "lovasz:per_image=true", "ce+lovasz"]),
    ];
    for (case, texts) in cases {
        let exprs = parse(texts);
        // the sort's kernels say which path ran, where the device has timestamps: the two arrays'
        // on the small bindings; on a CPU adapter's default engine, the tile kernels
        let tiles = |engine: &Engine| {
            let prep = engine.prepare(case.whole()).expect("prepare");
            match engine.profile_prepared_blocking(&prep, &exprs[..1], segloss::GradMode::DeviceOnly) {
                Ok(p) => Some(p.kernels.iter().any(|k| k.kernel.starts_with("radix") && k.kernel.ends_with("_tiles"))),
                Err(Error::Unsupported(_)) => None,
                Err(e) => panic!("profile: {e}"),
            }
        };
        assert_ne!(tiles(&small), Some(true), "{texts:?}: the items do not fit a binding");
        if full.info().device_type == "Cpu" {
            assert_ne!(tiles(full), Some(false), "{texts:?}: a CPU adapter's default sort");
        }
        let want = full.evaluate_blocking(&case.whole(), &exprs, true).expect("default engine");
        let got = small.evaluate_blocking(&case.whole(), &exprs, true).expect("1 MiB bindings");
        let numel = case.logits.len();
        // the same input in the caller's buffers, checked on the device, each gradient into a
        // slice of its own
        let lb = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
        let (tb, target) = if case.mode == Mode::Multiclass {
            let words: Vec<u32> = case.labels.iter().map(|&l| l as u32).collect();
            let tb = buffer_with(device, &words, 0);
            (tb, words.len())
        } else {
            (buffer_with(device, bytemuck::cast_slice(&case.dense), 0), numel)
        };
        let t = BufferSlice::new(&tb, 0, target as u64);
        let tbuf = if case.mode == Mode::Multiclass { TargetBuffer::ClassU32(t) } else { TargetBuffer::Dense(t) };
        let input = BufferInput::new(BufferSlice::new(&lb, 0, numel as u64), tbuf, &case.shape, case.mode, None)
            .expect("buffer input");
        let grads: Vec<wgpu::Buffer> =
            texts.iter().map(|_| buffer_with(device, &vec![0x3F80_0000; numel], 0)).collect();
        let outs: Vec<GradOut> = grads.iter().map(|g| GradOut::Write(BufferSlice::new(g, 0, numel as u64))).collect();
        let on_buffers = small.evaluate_buffers_blocking(&input, &exprs, &outs).expect("buffer input, 1 MiB bindings");
        for (i, t) in texts.iter().enumerate() {
            let (w, g, b) = (&want[i], &got[i], &on_buffers[i]);
            for v in [g.value, b.value] {
                assert!((v - w.value).abs() <= 1e-6 * w.value.abs(), "{t}: {v} against {}", w.value);
            }
            let wg = w.grad.as_ref().expect("gradient");
            let same = |x: &[f32]| x.iter().zip(wg).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(g.grad.as_ref().expect("gradient")), "{t}: host input's gradient");
            assert!(same(&read_buffer(device, queue, &grads[i], 0, numel)), "{t}: buffer input's gradient");
        }
    }
}

/// Bad elements found by many threads of the statistics pass (each reports what its checks found
/// once, at its end): the error names the smallest offending index, on each kernel the pass can
/// take (binary over quads, multiclass with the classes in registers from 2^20 elements, and the
/// plain class loop), on the Lovász key passes where Lovász is all an input needs (Lovász-Softmax
/// with the classes in registers or not, the hinge's key count on a CPU adapter over quads and
/// element by element on images of 4k + 2 elements, and with the tile kernels off the GPU's key
/// pass for both), and the caller's gradient stays untouched. Multiclass: pixels whose
/// every class is -inf, and a thread that meets a larger bad index before the smallest (its
/// pixels' last class bad, then the first class of a later pixel). Which kernels run depends on
/// the adapter: lavapipe (CI) takes all of those named; elsewhere the same cases run the kernels
/// the adapter takes.
#[test]
fn the_smallest_bad_index_is_reported_whichever_thread_finds_it() {
    let (engine, device, queue) = caller_engine();
    let cases: [(&[usize], Mode, &str); 11] = [
        (&[2, 1, 256, 256], Mode::Binary, "bce+dice"),
        // Lovász alone: its key passes make the checks (no statistics pass); the hinge's on a CPU
        // adapter is its key count
        (&[2, 1, 256, 256], Mode::Binary, "lovasz"),
        (&[2, 1, 63, 30], Mode::Binary, "lovasz:per_image=true"),
        (&[1, 16, 256, 256], Mode::Multiclass, "lovasz"),
        (&[2, 3, 16, 24], Mode::Multiclass, "lovasz:per_image=true"),
        // the class sums' walk, and cross-entropy's pixel walk, each with the logits in registers
        (&[1, 16, 256, 256], Mode::Multiclass, "ce+dice"),
        (&[1, 16, 256, 256], Mode::Multiclass, "ce"),
        (&[2, 3, 16, 24], Mode::Multiclass, "ce+dice"),
        (&[2, 3, 16, 24], Mode::Multiclass, "ce"),
        // two Lovász losses: each key pass checks
        (&[2, 1, 63, 30], Mode::Binary, "lovasz+0.5*lovasz:per_image=true"),
        (&[2, 3, 16, 24], Mode::Multiclass, "lovasz+lovasz:per_image=true"),
    ];
    smallest_bad_index_cases(engine, device, queue, &cases);
    // the GPU kernels (a CPU adapter's default is its tile kernels): an engine of its own
    let (info, device, queue) = caller_device();
    let gpu_kernels = Engine::from_device_blocking(&info, device.clone(), queue.clone()).expect("engine");
    gpu_kernels.set_tile_scatter(false);
    let lovasz: Vec<_> = cases.iter().copied().filter(|c| c.2.contains("lovasz")).collect();
    smallest_bad_index_cases(&gpu_kernels, &device, &queue, &lovasz);
}

/// The cases of [`the_smallest_bad_index_is_reported_whichever_thread_finds_it`] on `engine`.
fn smallest_bad_index_cases(
    engine: &Engine,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    cases: &[(&[usize], Mode, &str)],
) {
    for &(shape, mode, text) in cases {
        let numel: usize = shape.iter().product();
        let c = shape[1];
        let pixels = numel / c;
        let logits: Vec<f32> = (0..numel).map(|i| ((i * 7) % 11) as f32 / 4.0 - 1.0).collect();
        let gbuf = buffer_with(device, &vec![0x3F80_0000; numel], 0);
        let run = |logits: &[f32], target: &[u32]| {
            let lb = buffer_with(device, bytemuck::cast_slice(logits), 0);
            let tb = buffer_with(device, target, 0);
            let t = BufferSlice::new(&tb, 0, target.len() as u64);
            let target = if mode == Mode::Multiclass { TargetBuffer::ClassU32(t) } else { TargetBuffer::Dense(t) };
            let input = BufferInput::new(BufferSlice::new(&lb, 0, numel as u64), target, shape, mode, None).unwrap();
            engine.evaluate_buffers_blocking(
                &input,
                &parse(&[text]),
                &[GradOut::Write(BufferSlice::new(&gbuf, 0, numel as u64))],
            )
        };
        let good: Vec<u32> = if mode == Mode::Multiclass {
            (0..pixels).map(|i| (i % c) as u32).collect()
        } else {
            (0..numel).map(|i| ((i % 3 == 0) as u8 as f32).to_bits()).collect()
        };
        // bad elements far apart (other workgroups), the smallest neither first nor last found
        let spots = [numel * 3 / 4 + 5, numel / 3 + 1, numel - 2, numel / 2];
        let smallest = numel / 3 + 1;
        let mut bad = logits.clone();
        for &i in &spots {
            bad[i] = if i % 2 == 0 { f32::NAN } else { f32::INFINITY };
        }
        match run(&bad, &good) {
            Err(Error::NonFinite(m)) => assert!(m.contains(&format!("element {smallest} ")), "{shape:?} {text}: {m}"),
            other => panic!("{shape:?} {text}: expected a non-finite error, got {other:?}"),
        }
        let mut target = good.clone();
        let tspots = [target.len() - 1, target.len() / 5 + 3, target.len() / 2];
        for &i in &tspots {
            target[i] = if mode == Mode::Multiclass { c as u32 + 4 } else { 2.5f32.to_bits() };
        }
        let tsmallest = target.len() / 5 + 3;
        match run(&logits, &target) {
            Err(Error::ClassIndex(m) | Error::TargetValue(m)) => {
                assert!(m.contains(&format!("element {tsmallest} ")), "{shape:?} {text}: {m}")
            }
            other => panic!("{shape:?} {text}: expected a target error, got {other:?}"),
        }
        if mode == Mode::Multiclass {
            // the last class bad at the last pixels of image 0, the smallest bad index the first
            // class of its last pixel: a thread that walks its pixels in order (or its classes,
            // pixel by pixel) meets larger bad indices first
            let s = pixels / shape[0];
            let tail = (s / 2).min(256);
            let mut late = logits.clone();
            for p in s - tail..s {
                late[(c - 1) * s + p] = f32::NAN;
            }
            late[s - 1] = f32::INFINITY;
            match run(&late, &good) {
                Err(Error::NonFinite(m)) => {
                    assert!(m.contains(&format!("element {} ", s - 1)), "{shape:?} {text}: {m}")
                }
                other => panic!("{shape:?} {text}: expected a non-finite error, got {other:?}"),
            }
            // pixels with every class -inf: the error names the first element of the first one
            let mut masked = logits.clone();
            for p in [pixels - 3, pixels / 4 + 7, pixels / 2] {
                let (img, px) = (p / s, p % s);
                for k in 0..c {
                    masked[(img * c + k) * s + px] = f32::NEG_INFINITY;
                }
            }
            let first = ((pixels / 4 + 7) / s * c) * s + (pixels / 4 + 7) % s;
            match run(&masked, &good) {
                Err(Error::NonFinite(m)) => assert!(m.contains(&format!("element {first} ")), "{shape:?} {text}: {m}"),
                other => panic!("{shape:?} {text}: expected a masked-pixel error, got {other:?}"),
            }
        }
        assert!(read_buffer(device, queue, &gbuf, 0, numel).iter().all(|&x| x == 1.0), "{shape:?} {text}");
        run(&logits, &good).expect("good input");
    }
}

#[test]
fn bad_buffer_inputs_are_typed_errors_found_on_the_device() {
    let (engine, device, queue) = caller_engine();
    let shape = [1usize, 3, 4, 4];
    let numel = 48;
    let logits: Vec<f32> = (0..numel).map(|i| (i % 5) as f32 - 2.0).collect();
    let lbuf = buffer_with(device, bytemuck::cast_slice(&logits), 0);
    let exprs = parse(&["ce+dice"]);
    let gbuf = buffer_with(device, &vec![0x3F80_0000; numel], 0); // 1.0 everywhere
                                                                  // (each expression's gradient written into `grad`)
    let run_into = |grad: &wgpu::Buffer, lb: &wgpu::Buffer, labels: &[u32], ignore: Option<i64>, exprs: &[LossExpr]| {
        let tbuf = buffer_with(device, labels, 0);
        let input = BufferInput::new(
            BufferSlice::new(lb, 0, numel as u64),
            TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, labels.len() as u64)),
            &shape,
            Mode::Multiclass,
            ignore,
        )
        .unwrap();
        let g = GradOut::Write(BufferSlice::new(grad, 0, numel as u64));
        engine.evaluate_buffers_blocking(&input, exprs, &vec![g; exprs.len()])
    };
    let run = |lb: &wgpu::Buffer, labels: &[u32], ignore: Option<i64>, exprs: &[LossExpr]| {
        run_into(&gbuf, lb, labels, ignore, exprs)
    };
    let mut labels: Vec<u32> = (0..16).map(|i| i % 3).collect();
    labels[9] = 7;
    match run(&lbuf, &labels, Some(255), &exprs) {
        Err(Error::ClassIndex(m)) => assert!(m.contains("element 9") && m.contains("0..3"), "{m}"),
        other => panic!("expected a class index error, got {other:?}"),
    }
    // the caller's gradient buffer is untouched after bad input
    assert!(read_buffer(device, queue, &gbuf, 0, numel).iter().all(|&x| x == 1.0));
    labels[9] = 255;
    run(&lbuf, &labels, Some(255), &exprs).expect("255 is the ignore index");
    match run(&lbuf, &labels, None, &exprs) {
        Err(Error::ClassIndex(m)) => assert!(m.contains("element 9"), "{m}"),
        other => panic!("without an ignore index 255 is not a class: {other:?}"),
    }
    let mut bad = logits.clone();
    bad[20] = f32::NAN;
    let nbuf = buffer_with(device, bytemuck::cast_slice(&bad), 0);
    // with class sums (ce+dice), and cross-entropy alone (its statistics skip the class loop)
    for exprs in [&exprs, &parse(&["ce", "ce:label_smoothing=0.1"])] {
        match run(&nbuf, &labels, Some(255), exprs) {
            Err(Error::NonFinite(m)) => assert!(m.contains("element 20"), "{m}"),
            other => panic!("expected a non-finite error, got {other:?}"),
        }
    }
    // logits of an ignored pixel are checked too (pixel 9 is ignored; its class-1 logit is 16 + 9)
    let mut bad = logits.clone();
    bad[25] = f32::INFINITY;
    let ibuf = buffer_with(device, bytemuck::cast_slice(&bad), 0);
    assert!(matches!(run(&ibuf, &labels, Some(255), &exprs), Err(Error::NonFinite(_))));
    // and by Lovász-Softmax's key pass, where no statistics pass runs (the gradient slice, filled
    // afresh, left as it was)
    let fresh = buffer_with(device, &vec![0x3F80_0000; numel], 0);
    let lov = |lb: &wgpu::Buffer, labels: &[u32], text: &str| run_into(&fresh, lb, labels, Some(255), &parse(&[text]));
    for text in ["lovasz", "lovasz:per_image=true"] {
        match lov(&ibuf, &labels, text) {
            Err(Error::NonFinite(m)) => assert!(m.contains("element 25"), "{text}: {m}"),
            other => panic!("{text}: expected a non-finite error, got {other:?}"),
        }
        match lov(&lbuf, &[7; 16], text) {
            Err(Error::ClassIndex(m)) => assert!(m.contains("element 0"), "{text}: {m}"),
            other => panic!("{text}: expected a class index error, got {other:?}"),
        }
        assert!(read_buffer(device, queue, &fresh, 0, numel).iter().all(|&x| x == 1.0), "{text}");
    }

    // dense targets: outside [0, 1], and soft labels where Lovász needs hard ones
    let dshape = [1usize, 1, 4, 4];
    let dl: Vec<f32> = (0..16).map(|i| i as f32 / 4.0 - 2.0).collect();
    let dlb = buffer_with(device, bytemuck::cast_slice(&dl), 0);
    let dense = |t: &[f32], e: &[&str]| {
        let tb = buffer_with(device, bytemuck::cast_slice(t), 0);
        let input = BufferInput::new(
            BufferSlice::new(&dlb, 0, 16),
            TargetBuffer::Dense(BufferSlice::new(&tb, 0, 16)),
            &dshape,
            Mode::Binary,
            None,
        )
        .unwrap();
        engine.evaluate_buffers_blocking(&input, &parse(e), &[GradOut::Skip])
    };
    let mut t = vec![0.0f32; 16];
    t[3] = 1.5;
    assert!(matches!(dense(&t, &["dice"]), Err(Error::TargetValue(m)) if m.contains("element 3")));
    t[3] = 0.5;
    dense(&t, &["dice"]).expect("soft labels are fine for dice");
    assert!(matches!(dense(&t, &["lovasz"]), Err(Error::TargetValue(m)) if m.contains("hard")));

    // the hinge alone, its gradient written by its own weights pass (gpu::lovasz::HingeGrad):
    // bad input leaves the caller's slice untouched too, good input overwrites all of it
    let hinge = |logits: &[f32], t: &[f32], per_image: bool| {
        let (lb, tb) =
            (buffer_with(device, bytemuck::cast_slice(logits), 0), buffer_with(device, bytemuck::cast_slice(t), 0));
        let input = BufferInput::new(
            BufferSlice::new(&lb, 0, 16),
            TargetBuffer::Dense(BufferSlice::new(&tb, 0, 16)),
            &dshape,
            Mode::Binary,
            None,
        )
        .unwrap();
        let gb = buffer_with(device, &[0x3F80_0000; 16], 0);
        let text = if per_image { "lovasz:per_image=true" } else { "lovasz" };
        let r =
            engine.evaluate_buffers_blocking(&input, &parse(&[text]), &[GradOut::Write(BufferSlice::new(&gb, 0, 16))]);
        (r, read_buffer(device, queue, &gb, 0, 16))
    };
    for per_image in [false, true] {
        let (r, g) = hinge(&dl, &t, per_image);
        assert!(matches!(r, Err(Error::TargetValue(_))), "{r:?}");
        assert!(g.iter().all(|&x| x == 1.0), "soft labels: {g:?}");
        let hard: Vec<f32> = (0..16).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let mut nan = dl.clone();
        nan[5] = f32::NAN;
        let (r, g) = hinge(&nan, &hard, per_image);
        assert!(matches!(r, Err(Error::NonFinite(_))), "{r:?}");
        assert!(g.iter().all(|&x| x == 1.0), "a NaN logit: {g:?}");
        let (r, g) = hinge(&dl, &hard, per_image);
        let host =
            Input::new(Cow::Borrowed(&dl[..]), Target::Dense(Cow::Borrowed(&hard[..])), &dshape, Mode::Binary, None)
                .unwrap();
        let text = if per_image { "lovasz:per_image=true" } else { "lovasz" };
        let want = engine.evaluate_blocking(&host, &parse(&[text]), true).unwrap();
        assert_eq!(r.unwrap()[0].value.to_bits(), want[0].value.to_bits());
        assert_eq!(Some(&g), want[0].grad.as_ref(), "good input: every element written");
    }

    // buffers that cannot be used as given
    let ub = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let tbuf = buffer_with(device, &labels, 0);
    let tgt = TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, 16));
    fn input<'a>(l: BufferSlice<'a>, t: TargetBuffer<'a>) -> BufferInput<'a> {
        BufferInput::new(l, t, &[1, 3, 4, 4], Mode::Multiclass, Some(255)).unwrap()
    }
    let mk = |l| input(l, tgt);
    let ev = |i: &BufferInput, g: GradOut| engine.evaluate_buffers_blocking(i, &exprs, &[g]);
    assert!(
        matches!(ev(&mk(BufferSlice::new(&ub, 0, 48)), GradOut::Skip), Err(Error::Buffer(m)) if m.contains("usage"))
    );
    assert!(
        matches!(ev(&mk(BufferSlice::new(&lbuf, 4, 48)), GradOut::Skip), Err(Error::Buffer(m)) if m.contains("alignment"))
    );
    let big = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    // a slice past its buffer's end is refused as the input is made, before any size is
    // computed from its length (on wasm32 a length of 2^30 overflowed a usize of bytes first)
    assert!(matches!(
        BufferInput::new(BufferSlice::new(&big, 0, 48), tgt, &shape, Mode::Multiclass, Some(255)),
        Err(Error::Buffer(m)) if m.contains("logits slice (bytes 0..192) runs past the end of its buffer (64 bytes)")
    ));
    let huge = 1u64 << 30;
    assert!(matches!(
        BufferInput::new(
            BufferSlice::new(&big, 0, huge),
            TargetBuffer::Dense(BufferSlice::new(&big, 0, huge)),
            &[1, 1, 1 << 30],
            Mode::Binary,
            None
        ),
        Err(Error::Buffer(m)) if m.contains("past the end")
    ));
    assert!(matches!(
        BufferInput::new(BufferSlice::new(&lbuf, 0, 48), TargetBuffer::ClassU32(BufferSlice::new(&big, 32, 16)), &shape, Mode::Multiclass, None),
        Err(Error::Buffer(m)) if m.contains("target slice (bytes 32..96)")
    ));
    let input = mk(BufferSlice::new(&lbuf, 0, 48));
    assert!(
        matches!(ev(&input, GradOut::Write(BufferSlice::new(&lbuf, 0, 48))), Err(Error::Buffer(m)) if m.contains("overlaps"))
    );
    assert!(matches!(ev(&input, GradOut::Write(BufferSlice::new(&gbuf, 0, 40))), Err(Error::Shape(_))));
    assert!(matches!(
        BufferInput::new(BufferSlice::new(&lbuf, 0, 47), tgt, &shape, Mode::Multiclass, None),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        BufferInput::new(BufferSlice::new(&lbuf, 0, 48), tgt, &shape, Mode::Binary, None),
        Err(Error::Input(_) | Error::Shape(_))
    ));
    assert!(matches!(
        BufferInput::new(BufferSlice::new(&lbuf, 0, 48), tgt, &shape, Mode::Multiclass, Some(-1)),
        Err(Error::Input(m)) if m.contains("u32")
    ));
}

#[test]
fn eight_threads_on_one_engine_match_one_thread() {
    let engine = common::gpu();
    let cases =
        [(dense_case(11, &[2, 1, 24, 24], Mode::Binary), BINARY), (label_case(12, &[2, 3, 16, 16], 255), MULTICLASS)];
    for (case, texts) in &cases {
        let exprs = parse(texts);
        let input = case.whole();
        let one = engine.evaluate_blocking(&input, &exprs, true).unwrap();
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| {
                        let mut all = Vec::new();
                        for _ in 0..3 {
                            all.push(engine.evaluate_blocking(&input, &exprs, true).unwrap());
                        }
                        all
                    })
                })
                .collect();
            for h in handles {
                for r in h.join().unwrap() {
                    assert_same(&r, &one, "a thread");
                }
            }
        });
    }
}

/// Blocking calls poll the device on their own thread, one poll at a time with the poll thread's
/// and each other's: futures awaited on other threads (the poll thread's) and blocking calls,
/// mixed on one engine, all finish with the one-thread results.
#[test]
fn blocking_calls_and_futures_mixed_on_one_engine() {
    let engine = common::gpu();
    let case = label_case(14, &[2, 3, 16, 16], 255);
    let exprs = parse(MULTICLASS);
    let input = case.whole();
    let one = engine.evaluate_blocking(&input, &exprs, true).unwrap();
    std::thread::scope(|sc| {
        let futures: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    (0..5)
                        .map(|_| futures::executor::block_on(engine.evaluate(&input, &exprs, true)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let blocking: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| (0..5).map(|_| engine.evaluate_blocking(&input, &exprs, true).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        for h in futures.into_iter().chain(blocking) {
            for r in h.join().unwrap() {
                assert_same(&r, &one, "a thread");
            }
        }
    });
}

#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let engine = common::gpu();
    let case = dense_case(13, &[1, 1, 4, 4], Mode::Binary);
    let input = case.whole();
    let exprs = parse(&["bce"]);
    let f = engine.evaluate(&input, &exprs, true);
    send(&f);
    let prep = engine.prepare(input.clone()).unwrap();
    let f2 = engine.evaluate_prepared(&prep, &exprs, segloss::GradMode::Read);
    send(&f2);
    drop((f, f2));
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    // a future runs on another thread
    let out =
        std::thread::scope(|s| s.spawn(|| futures::executor::block_on(engine.evaluate(&input, &exprs, false))).join());
    assert!(out.unwrap().is_ok());
}

/// Expressions the reference evaluates evaluate on the GPU too: several Lovász losses, many
/// pixel terms, more distinct pixel losses than one statistics pass holds.
#[test]
fn no_arbitrary_limits_on_expressions() {
    let engine = common::gpu();
    let dense = dense_case(21, &[2, 1, 12, 12], Mode::Binary);
    let labels = label_case(22, &[2, 3, 8, 8], 255);
    let nine_bce = ["bce"; 9].join("+");
    let five_focal = "focal:gamma=0+focal:gamma=1+focal:gamma=2+focal:gamma=3+focal:gamma=4";
    let mixed = "bce+bce:label_smoothing=0.1+focal+focal:gamma=1,alpha=0.3+bce:pos_weight=2+focal:gamma=3+dice";
    let pairs: [(&Case, Vec<&str>); 2] = [
        (&dense, vec!["lovasz+lovasz:per_image=true", &nine_bce, five_focal, mixed, "0.5*lovasz+bce+0.5*lovasz"]),
        (
            &labels,
            vec![
                "lovasz+lovasz:per_image=true+lovasz:classes=all",
                "ce+ce:label_smoothing=0.2+ce:weights=1;2;3+focal+focal:act=softmax+focal:gamma=1",
            ],
        ),
    ];
    for (case, texts) in pairs {
        let input = case.whole();
        let exprs = parse(&texts);
        let gpu = engine.evaluate_blocking(&input, &exprs, true).unwrap();
        for (i, e) in exprs.iter().enumerate() {
            let r = reference::evaluate(&input, e).unwrap();
            assert!(
                (gpu[i].value - r.value).abs() <= 1e-5 + 1e-4 * r.value.abs(),
                "{}: {} vs {}",
                texts[i],
                gpu[i].value,
                r.value
            );
            let (d, m) = common::max_diff(gpu[i].grad.as_ref().unwrap(), &r.grad);
            let tol = if texts[i].contains("lovasz") { 2e-3 } else { 1e-4 };
            assert!(d <= 1e-9 + tol * m, "{}: gradient differs by {d} (max {m})", texts[i]);
        }
    }
}

#[test]
fn limits_are_typed_errors_before_anything_runs() {
    // an engine of its own: the other tests' submissions would count on a shared one
    let engine = &Engine::gpu_blocking().unwrap();
    let max = engine.limits().unwrap().max_storage_buffer_binding_size;
    // statistics partials of N x tiles x C x 16 floats: past the binding limit for N = 65535, C = 40
    let n = ((max / (40 * 16 * 4)) + 1) as usize;
    let logits = vec![0.0f32; n * 40];
    let labels = vec![0i64; n];
    let input = Input::labels(&logits, &labels, &[n, 40, 1], None).unwrap();
    let before = engine.activity();
    match engine.evaluate_blocking(&input, &parse(&["ce"]), false) {
        Err(Error::Limit { what, needed, max: m }) => {
            assert!(what.contains("statistics"), "{what}");
            assert!(needed > m && m == max, "{needed} {m}");
        }
        other => panic!("expected a limit error, got {:?}", other.map(|v| v.len())),
    }
    assert_eq!(engine.activity().submissions, before.submissions, "nothing was submitted");
}

#[test]
fn parameters_and_values_past_f32_range() {
    let engine = common::gpu();
    for text in
        ["ce:weights=1e39;1;1;1", "focal:gamma=1e39", "bce:pos_weight=1e39", "1e308*bce+1e308*bce", "-1e39*dice"]
    {
        match text.parse::<LossExpr>() {
            Err(Error::Parse { msg, .. }) => assert!(msg.contains("f32 range"), "{text}: {msg}"),
            other => panic!("{text}: expected a parse error, got {other:?}"),
        }
    }
    let case = dense_case(31, &[2, 1, 8, 8], Mode::Binary);
    let input = case.whole();
    // an overflowing value is an error on the GPU and on the CPU reference
    let e: LossExpr = "3e38*dice+3e38*dice".parse().unwrap();
    assert!(matches!(engine.evaluate_blocking(&input, std::slice::from_ref(&e), false), Err(Error::Overflow(_))));
    assert!(matches!(reference::evaluate(&input, &e), Err(Error::Overflow(_))));
    // beside another expression, the error names the one that overflowed (review: it did not say
    // which, and the call's other results are lost with it), on the GPU and on the CPU engine
    let pair = [parse(&["bce"]).remove(0), e.clone()];
    for eng in [engine, &Engine::cpu(None)] {
        for grads in [false, true] {
            match eng.evaluate_blocking(&input, &pair, grads) {
                Err(Error::Overflow(m)) => assert!(m.starts_with("expression 2: "), "{m}"),
                other => panic!("expected an overflow of expression 2, got {:?}", other.map(|v| v.len())),
            }
        }
    }
    // large but valid parameters: finite, and the GPU agrees with the CPU
    let labels = label_case(32, &[2, 4, 8, 8], 255);
    let linput = labels.whole();
    for (inp, text) in [
        (&linput, "ce:weights=1e38;1;1;1"),
        (&linput, "focal:gamma=1e38"),
        (&input, "bce:pos_weight=1e30"),
        (&input, "-1*dice"),
    ] {
        let e: LossExpr = text.parse().unwrap();
        let g = engine.evaluate_blocking(inp, std::slice::from_ref(&e), true).unwrap();
        let r = reference::evaluate(inp, &e).unwrap();
        assert!(
            g[0].value.is_finite() && (g[0].value - r.value).abs() <= 1e-5 + 1e-4 * r.value.abs(),
            "{text}: {} vs {}",
            g[0].value,
            r.value
        );
        assert!(g[0].grad.as_ref().unwrap().iter().all(|x| x.is_finite()), "{text}: gradient");
    }
    // 0/0: an empty target and a prediction that is 0 to working precision scores 1 everywhere
    let logits = vec![-110.0f32; 64];
    let target = vec![0.0f32; 64];
    let input = Input::dense(&logits, &target, &[1, 1, 8, 8], Mode::Binary).unwrap();
    for text in ["dice@monai:smooth=0", "jaccard:eps=0,empty=formula,log=true"] {
        let e: LossExpr = text.parse().unwrap();
        let g = engine.evaluate_blocking(&input, std::slice::from_ref(&e), true).unwrap();
        let r = reference::evaluate(&input, &e).unwrap();
        assert_eq!((g[0].value, r.value), (0.0, 0.0), "{text}");
    }
}

/// `log=true` with `eps = 0` (MONAI's preset) takes the formula's `-log(score)` of a small,
/// positive score, with its gradient: the floor is for a score of 0 (an infinite value), not for
/// one below 1e-7 (which the floor was, giving -log(1e-7) = 16.12 and no gradient here).
#[test]
fn log_of_a_small_score_without_eps_follows_the_formula() {
    let engine = common::gpu();
    // one image of 1024 pixels, every pixel foreground, every logit -40: dice@monai's score is
    // (2 TP + 1e-5) / (2 TP + FP + FN + 1e-5) with TP = 1024 p, FP = 0, FN = 1024 (1 - p)
    let (n, x) = (1024usize, -40.0f64);
    let p = 1.0 / (1.0 + (-x).exp());
    let tp = n as f64 * p;
    let score = (2.0 * tp + 1e-5) / (2.0 * tp + (n as f64 - tp) + 1e-5);
    assert!(score > 0.0 && score < 1e-7, "the case must sit below the old floor: {score}");
    let logits = vec![x as f32; n];
    let target = vec![1.0f32; n];
    let input = Input::dense(&logits, &target, &[1, 1, 32, 32], Mode::Binary).unwrap();
    for text in ["dice@monai:log=true", "dice:eps=0,smooth=1e-5,log=true"] {
        let e: LossExpr = text.parse().unwrap();
        let g = engine.evaluate_blocking(&input, std::slice::from_ref(&e), true).unwrap();
        let r = reference::evaluate(&input, &e).unwrap();
        let want = -score.ln();
        for (who, v) in [("gpu", g[0].value), ("reference", r.value)] {
            assert!((v - want).abs() <= 1e-5 * want, "{text} {who}: {v} vs -log(score) = {want}");
        }
        let (worst, scale) = common::max_diff(g[0].grad.as_ref().unwrap(), &r.grad);
        assert!(scale > 0.0, "{text}: the reference has a gradient");
        assert!(worst <= 1e-4 * scale, "{text}: gradient off by {worst} of {scale}");
    }
}

/// Values within 1e-5 (relative, or absolute below 1) and gradients within 1e-4 of the largest
/// reference gradient element, of each expression evaluated together on `engine`.
fn assert_matches_reference(engine: &Engine, case: &Case, exprs: &[LossExpr], what: &str) {
    let gpu = engine.evaluate_blocking(&case.whole(), exprs, true).unwrap();
    for (g, e) in gpu.iter().zip(exprs) {
        let w = reference::evaluate(&case.whole(), e).unwrap();
        assert!((g.value - w.value).abs() <= 1e-5 * w.value.abs().max(1.0), "{what} {e}: {} vs {}", g.value, w.value);
        let (worst, scale) = common::max_diff(g.grad.as_ref().unwrap(), &w.grad);
        assert!(worst <= 1e-4 * scale, "{what} {e}: gradient off by {worst} (largest {scale})");
    }
}

/// Many expressions with gradients over 32 x 2000 (image, class) entries: every value and
/// gradient agrees with the reference. Mesa's llvmpipe (lavapipe) ends every loop of an invocation
/// once its loops have run 65535 steps in all: a finalize that zeroed the coefficient blocks
/// itself (6 floats per entry and expression) and ran every op in one dispatch gave its last ops
/// short values, or 0 (at 8 x 8000). Where one op alone could pass the limit (8 x 8000: its walks
/// over the classes of each image), a CPU adapter refuses with a typed error.
#[test]
fn many_expressions_over_many_entries_agree_with_the_reference() {
    let engine = common::gpu();
    let case = dense_case(90, &[32, 2000, 2], Mode::Multilabel);
    let exprs = parse(&[
        "bce:pos_weight=3",
        "dice",
        "focal:alpha=0.25",
        "bce+sensspec",
        "bce+bce:label_smoothing=0.1+focal+focal:gamma=1+bce:pos_weight=2",
        "gdice:pool=image+dice:pool=image_all",
        "tversky:pool=image,norm=image",
    ]);
    assert_matches_reference(engine, &case, &exprs, "[32, 2000, 2]");
    let big = dense_case(93, &[8, 8000, 2], Mode::Multilabel);
    if engine.info().name.contains("llvmpipe") {
        match engine.evaluate_blocking(&big.whole(), &exprs, true) {
            Err(Error::Limit { max: 65535, what, .. }) => assert!(what.contains("finalize"), "{what}"),
            other => panic!("8 x 8000 on a CPU adapter: {:?}", other.map(|v| v.len())),
        }
    } else {
        assert_matches_reference(engine, &big, &exprs, "[8, 8000, 2]");
    }
}

/// One engine, shapes of growing and shrinking size in turn (so pooled buffers of one shape meet
/// the next), one tile per image and several: every value and gradient agrees with the CPU
/// reference.
#[test]
fn one_engine_across_shapes_agrees_with_the_reference() {
    let engine = common::gpu();
    let shapes: &[&[usize]] =
        &[&[1, 1, 64, 64], &[1, 1, 256, 256], &[8, 1, 512, 512], &[2, 1, 64, 64], &[3, 4, 40, 50]];
    for (k, shape) in shapes.iter().enumerate() {
        let mode = if shape[1] == 1 { Mode::Binary } else { Mode::Multilabel };
        let case = dense_case(40 + k as u64, shape, mode);
        assert_matches_reference(engine, &case, &parse(&["bce", "dice", "bce+dice"]), &format!("{shape:?}"));
    }
}

/// The statistics pass's two tile widths (a CPU adapter's wide tiles, a GPU's short ones),
/// sigmoid and softmax, agree with the reference, with one tile per image and several, on a separate engine so
/// that no other test sees the switch.
#[test]
fn both_statistics_tile_widths_agree_with_the_reference() {
    let engine = Engine::gpu_blocking().unwrap();
    let exprs = parse(&["bce", "dice@monai+focal@monai", "sensspec", "bce:pos_weight=auto+jaccard"]);
    // lavapipe has subgroup operations: its wide softmax tiles take them, or the portable kernel
    let info = engine.info();
    if info.device_type == "Cpu" && info.name.contains("llvmpipe") && info.backend == "vulkan" {
        assert!(engine.statistics_subgroup().is_some(), "{info:?}");
    }
    for (wide, subgroups) in [(false, false), (true, false), (true, true)] {
        engine.set_wide_statistics(wide);
        engine.set_subgroups(subgroups);
        // on a GPU's tiles, 2 to 16 pixels per thread as the image size asks: the small shapes
        // take 2, [2, 1, 256, 512] 4, [1, 2, 512, 512] 8 and [1, 1, 1024, 1024] 16
        let shapes = [
            &[2usize, 1, 40, 50][..],
            &[3, 2, 100, 90],
            &[1, 1, 20000],
            &[2, 1, 256, 512],
            &[1, 2, 512, 512],
            &[1, 1, 1024, 1024],
        ];
        for (k, shape) in shapes.iter().enumerate() {
            let mode = if shape[1] == 1 { Mode::Binary } else { Mode::Multilabel };
            let case = dense_case(70 + k as u64, shape, mode);
            assert_matches_reference(&engine, &case, &exprs, &format!("wide {wide} {shape:?}"));
        }
        // softmax: one tile per image and several, ignored pixels among them (with subgroups:
        // several slots of partials in one tile too)
        for (k, shape) in [&[2usize, 3, 9, 11][..], &[2, 3, 70, 90]].iter().enumerate() {
            let case = label_case(80 + k as u64, shape, 255);
            // (Lovász takes no statistics tiles, and its gradient at tied errors is compared elsewhere)
            let mc: Vec<LossExpr> = exprs_for(&case).into_iter().filter(|e| !e.has_lovasz()).collect();
            assert_matches_reference(&engine, &case, &mc, &format!("wide {wide} subgroups {subgroups} {shape:?}"));
        }
    }
}

/// A CPU adapter's softmax statistics and gradient passes with each pixel's classes in registers
/// (the `@unroll` walks, up to 32 classes) give the bits of the walks in memory, values and
/// gradients, and agree with the reference: 3, 21 and 32 classes (and 33, past the registers),
/// ignored pixels, fused and weighted cross-entropy, label smoothing, region losses, softmax and
/// sigmoid focal, Lovász-Softmax (its keys and gradient), several terms in one expression; on
/// small images and on the long statistics tiles of larger ones (32 and 128 pixels per thread
/// with subgroups, a last tile cut short), which both walks take. A separate engine, so that no
/// other test sees the switch.
#[test]
fn class_registers_give_the_bits_of_the_walks_in_memory() {
    let engine = Engine::gpu_blocking().unwrap();
    // (lavapipe has subgroup operations, which the long tiles take)
    let info = engine.info();
    if info.device_type == "Cpu" && info.name.contains("llvmpipe") && info.backend == "vulkan" {
        assert!(engine.statistics_subgroup().is_some(), "{info:?}");
    }
    let texts = [
        "ce",
        "ce:label_smoothing=0.1",
        "0.8*ce+0.2*dice",
        "dice",
        "dice@monai",
        "focal:act=softmax",
        "jaccard@keras",
        "tversky:alpha=0.3,beta=0.7",
        "gdice@monai",
        "sensspec",
        "ce+dice+focal:act=softmax+ce:label_smoothing=0.2",
        "focal:act=sigmoid+dice",
        "lovasz",
        "lovasz:per_image=true",
        "0.8*ce+0.2*lovasz+dice",
    ];
    for (k, shape) in [
        &[2usize, 3, 40, 50][..],
        &[1, 21, 33, 47],
        &[2, 32, 20, 30],
        &[1, 33, 20, 20],
        &[2, 5, 130, 131],
        &[1, 4, 256, 256],
    ]
    .iter()
    .enumerate()
    {
        let case = label_case(300 + k as u64, shape, 255);
        let mut t = texts.to_vec();
        if shape[1] == 3 {
            t.push("ce:weights=1;2;0.5,label_smoothing=0.1+dice");
        }
        let exprs = parse(&t);
        engine.set_class_registers(Some(false));
        let memory = engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
        engine.set_class_registers(Some(true));
        let registers = engine.evaluate_blocking(&case.whole(), &exprs, true).unwrap();
        assert_same(&registers, &memory, &format!("{shape:?}"));
        // (Lovász-Softmax: its gradient at tied errors is compared elsewhere)
        let plain: Vec<LossExpr> = exprs.into_iter().filter(|e| !e.has_lovasz()).collect();
        assert_matches_reference(&engine, &case, &plain, &format!("registers {shape:?}"));
    }
}

/// On a CPU adapter the sigmoid statistics and gradient passes read and write images of `4k`
/// pixels four elements at a time (the `stats4` and `gradient4` kernels) and other images one at
/// a time: both agree with the reference, with ignored elements, several channels and images, a
/// plane ending inside the tile, and one image the size of a single quad; softmax inputs of the
/// same shapes (one element at a time) beside them.
#[test]
fn quads_and_single_elements_agree_with_the_reference() {
    let engine = common::gpu();
    let mut exprs = parse(BINARY);
    exprs.extend(parse(&["focal:alpha=0.25+bce:label_smoothing=0.1", "bce+focal", "2*focal+0.5*dice"]));
    for shape in [&[2usize, 3, 16, 20][..], &[2, 3, 15, 21], &[1, 1, 2, 2], &[3, 1, 4099], &[3, 1, 4100]] {
        let mut case = dense_case(shape.iter().product::<usize>() as u64, shape, Mode::Multilabel);
        assert_matches_reference(engine, &case, &exprs, &format!("{shape:?}"));
        // ignored elements (among them a whole quad) take the gradient pass
        case.ignore = Some(-1);
        let last = case.dense.len() - 1;
        for i in [0, 1, 2, 3, 5.min(last), last] {
            case.dense[i] = -1.0;
        }
        assert_matches_reference(engine, &case, &exprs, &format!("{shape:?} with ignored elements"));
    }
    for shape in [&[2usize, 3, 16, 20][..], &[2, 3, 15, 21], &[1, 3, 2, 2], &[3, 3, 4099], &[3, 3, 4100]] {
        let case = label_case(shape.iter().product::<usize>() as u64, shape, 255);
        // (Lovász-Softmax: its gradient at tied errors is compared elsewhere)
        let mut mc: Vec<LossExpr> = parse(MULTICLASS).into_iter().filter(|e| !e.has_lovasz()).collect();
        mc.extend(parse(&["focal:act=softmax+dice", "ce:label_smoothing=0.2+jaccard"]));
        assert_matches_reference(engine, &case, &mc, &format!("{shape:?}"));
    }
}

/// Each case's expressions: the binary ones on sigmoid inputs, the multiclass ones on labels.
fn exprs_for(c: &Case) -> Vec<LossExpr> {
    parse(if c.mode == Mode::Multiclass { MULTICLASS } else { BINARY })
}

#[test]
fn a_batch_equals_one_by_one_in_one_submission() {
    // an engine of its own: its counters see no other test's submissions
    let engine = &Engine::gpu_blocking().unwrap();
    let (device, queue) = (engine.device().unwrap(), engine.queue().unwrap());
    let cases = [
        dense_case(101, &[2, 1, 33, 17], Mode::Binary),
        label_case(102, &[2, 3, 9, 11], 255),
        dense_case(103, &[1, 3, 16, 16], Mode::Multilabel),
        dense_case(104, &[2, 1, 4, 5, 6], Mode::Binary), // 3D
        label_case(105, &[3, 3, 70], 255),
    ];
    let singles: Vec<Vec<Evaluation>> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| engine.evaluate_blocking(&c.whole(), &exprs_for(c), i % 2 == 0).unwrap())
        .collect();

    // the last case again, in the caller's buffers, its gradients written into a buffer
    let last = &cases[4];
    let logits = buffer_with(device, bytemuck::cast_slice(&last.logits), 64);
    let labels: Vec<u32> = last.labels.iter().map(|&l| l as u32).collect();
    let target = buffer_with(device, &labels, 128);
    let numel = last.logits.len() as u64;
    let input = BufferInput::new(
        BufferSlice::new(&logits, 256, numel),
        TargetBuffer::ClassU32(BufferSlice::new(&target, 512, labels.len() as u64)),
        &last.shape,
        Mode::Multiclass,
        Some(255),
    )
    .unwrap();
    let dice: Vec<LossExpr> = parse(&["0.8*ce+0.2*dice"]);
    let grad_buf = buffer_with(device, &vec![0; numel as usize], 0);
    let host_dice = engine.evaluate_blocking(&last.whole(), &dice, true).unwrap();

    let before = engine.activity();
    let mut batch = engine.batch();
    let mut pending = Vec::new();
    let inputs: Vec<Input<'_>> = cases.iter().map(Case::whole).collect();
    for (i, (c, inp)) in cases.iter().zip(&inputs).enumerate() {
        let exprs = exprs_for(c);
        if i == 0 {
            // the same input pushed in two parts: they share its statistics pass
            let (a, b) = exprs.split_at(4);
            pending.push(vec![batch.push(inp, a, true).unwrap(), batch.push(inp, b, true).unwrap()]);
        } else {
            pending.push(vec![batch.push(inp, &exprs, i % 2 == 0).unwrap()]);
        }
    }
    let buffered = batch.push_buffers(&input, &dice, &[GradOut::Write(BufferSlice::new(&grad_buf, 0, numel))]).unwrap();
    assert_eq!(batch.len(), 7);
    batch.flush_blocking().unwrap();
    let after = engine.activity();
    assert_eq!(after.submissions - before.submissions, 1, "one submission for the whole batch");
    assert_eq!(after.host_waits - before.host_waits, 1, "one wait for the whole batch");

    for (i, (p, single)) in pending.into_iter().zip(&singles).enumerate() {
        let got: Vec<Evaluation> = p.into_iter().flat_map(|p| p.wait().unwrap()).collect();
        assert_eq!(got.len(), single.len());
        assert_same(&got, single, &format!("case {i} batched"));
    }
    let b = buffered.wait().unwrap();
    assert_eq!(b[0].value.to_bits(), host_dice[0].value.to_bits(), "buffer input in a batch");
    assert!(b[0].grad.is_none());
    let g = read_buffer(device, queue, &grad_buf, 0, numel as usize);
    assert_eq!(Some(g), host_dice[0].grad, "gradient written into the caller's buffer");
}

#[test]
fn a_bad_evaluation_in_a_batch_fails_alone() {
    let (engine, device, _) = caller_engine();
    let good = dense_case(111, &[2, 1, 16, 16], Mode::Binary);
    let mut nan = good.logits.clone();
    nan[37] = f32::NAN;
    let nan_buf = buffer_with(device, bytemuck::cast_slice(&nan), 0);
    let tgt_buf = buffer_with(device, bytemuck::cast_slice(&good.dense), 0);
    let numel = nan.len() as u64;
    let bad = BufferInput::new(
        BufferSlice::new(&nan_buf, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&tgt_buf, 0, numel)),
        &good.shape,
        Mode::Binary,
        None,
    )
    .unwrap();
    let soft: Vec<f32> = good.dense.iter().map(|&t| 0.25 + 0.5 * t).collect();
    let soft_input = Input::dense(&good.logits, &soft, &good.shape, Mode::Binary).unwrap();
    let exprs = parse(&["0.5*bce+0.5*dice"]);
    let lovasz = parse(&["lovasz"]);
    let expected = engine.evaluate_blocking(&good.whole(), &exprs, true).unwrap();

    let mut batch = engine.batch();
    let input = good.whole();
    let a = batch.push(&input, &exprs, true).unwrap();
    let b = batch.push_buffers(&bad, &exprs, &[GradOut::Skip]).unwrap();
    let c = batch.push(&soft_input, &lovasz, false).unwrap();
    let d = batch.push(&input, &exprs, false).unwrap();
    // refused at once: a multiclass loss on a binary input
    assert!(batch.push(&input, &parse(&["ce"]), false).is_err());
    batch.flush_blocking().unwrap();
    assert_same(&a.wait().unwrap(), &expected, "the good evaluation");
    assert!(matches!(b.wait(), Err(Error::NonFinite(_))), "NaN logits are a typed error");
    assert!(matches!(c.wait(), Err(Error::TargetValue(_))), "soft labels for lovasz are a typed error");
    assert_eq!(d.wait().unwrap()[0].value.to_bits(), expected[0].value.to_bits());

    // on one input, a request it cannot serve fails alone: Lovász on soft labels beside a Dice
    // loss; a gradient slice of the wrong length beside a good one (both failed with the
    // other's error: the input's checks took the union of its requests)
    let soft_expected = engine.evaluate_blocking(&soft_input, &exprs, false).unwrap();
    let grad_buf = buffer_with(device, &vec![0u32; 2 * numel as usize], 0);
    let good_buf = buffer_with(device, bytemuck::cast_slice(&good.logits), 0);
    let good_in = BufferInput::new(
        BufferSlice::new(&good_buf, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&tgt_buf, 0, numel)),
        &good.shape,
        Mode::Binary,
        None,
    )
    .unwrap();
    let mut batch = engine.batch();
    let e = batch.push(&soft_input, &exprs, false).unwrap();
    let f = batch.push(&soft_input, &lovasz, false).unwrap();
    let g = batch.push_buffers(&good_in, &exprs, &[GradOut::Write(BufferSlice::new(&grad_buf, 0, numel))]).unwrap();
    let h = batch.push_buffers(&good_in, &exprs, &[GradOut::Write(BufferSlice::new(&grad_buf, 0, numel + 1))]).unwrap();
    // (a slice off the storage alignment, in a buffer of its own: bound whole, it is refused)
    let other_buf = buffer_with(device, &vec![0u32; numel as usize + 64], 0);
    let i = batch.push_buffers(&good_in, &exprs, &[GradOut::Write(BufferSlice::new(&other_buf, 4, numel))]).unwrap();
    batch.flush_blocking().unwrap();
    assert!(matches!(i.wait(), Err(Error::Buffer(_))));

    // on a buffer input too: its device checks flag the input for every evaluation of a pass,
    // so Lovász on soft labels failed a Dice loss beside it; and two evaluations' gradient
    // slices that overlap fail the second, not both
    let soft_buf = buffer_with(device, bytemuck::cast_slice(&soft), 0);
    let soft_in = BufferInput::new(
        BufferSlice::new(&good_buf, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&soft_buf, 0, numel)),
        &good.shape,
        Mode::Binary,
        None,
    )
    .unwrap();
    let wide_buf = buffer_with(device, &vec![0u32; 2 * numel as usize], 0);
    let mut batch = engine.batch();
    let j = batch.push_buffers(&soft_in, &exprs, &[GradOut::Skip]).unwrap();
    let k = batch.push_buffers(&soft_in, &lovasz, &[GradOut::Skip]).unwrap();
    let first = batch.push_buffers(&good_in, &exprs, &[GradOut::Write(BufferSlice::new(&wide_buf, 0, numel))]).unwrap();
    let overlapping =
        batch.push_buffers(&good_in, &exprs, &[GradOut::Write(BufferSlice::new(&wide_buf, 256, numel))]).unwrap();
    batch.flush_blocking().unwrap();
    assert_eq!(j.wait().unwrap()[0].value.to_bits(), soft_expected[0].value.to_bits());
    assert!(matches!(k.wait(), Err(Error::TargetValue(_))));
    assert_eq!(first.wait().unwrap()[0].value.to_bits(), expected[0].value.to_bits());
    assert!(matches!(overlapping.wait(), Err(Error::Buffer(_))));
    assert_eq!(e.wait().unwrap()[0].value.to_bits(), soft_expected[0].value.to_bits());
    assert!(matches!(f.wait(), Err(Error::TargetValue(_))));
    assert_eq!(g.wait().unwrap()[0].value.to_bits(), expected[0].value.to_bits());
    assert!(matches!(h.wait(), Err(Error::Shape(_))));

    // a batch dropped before its flush fails its futures
    let mut batch = engine.batch();
    let p = batch.push(&input, &exprs, false).unwrap();
    drop(batch);
    assert!(matches!(p.wait(), Err(Error::Input(_))));
}

#[test]
fn a_batch_on_the_cpu_reference_equals_the_reference() {
    let engine = Engine::cpu(None);
    let case = label_case(121, &[2, 3, 5, 7], 255);
    let exprs = parse(MULTICLASS);
    let mut batch = engine.batch();
    let input = case.whole();
    let p = batch.push(&input, &exprs, true).unwrap();
    batch.flush_blocking().unwrap();
    let got = p.wait().unwrap();
    for (g, e) in got.iter().zip(&exprs) {
        let r = reference::evaluate(&input, e).unwrap();
        assert_eq!(g.value, r.value);
        let rg: Vec<f32> = r.grad.iter().map(|&x| x as f32).collect();
        assert_eq!(g.grad.as_ref(), Some(&rg));
    }
}

#[test]
fn inputs_of_one_shape_in_a_batch_share_their_passes_and_equal_one_by_one() {
    let engine = &Engine::gpu_blocking().unwrap();
    // CI runs this test through OpenGL too: on the backend asked for
    if let Ok(b) = std::env::var("SEGLOSS_BACKEND") {
        assert_eq!(engine.info().backend, b, "the engine runs on {}", engine.info().name);
    }
    // several inputs of each shape: a batch records each shape's set of inputs as one
    // evaluation of many groups (the finalize and the coefficient blocks one per input)
    let no_lovasz = |list: &[&str]| -> Vec<LossExpr> { parse(list).into_iter().filter(|e| !e.has_lovasz()).collect() };
    let mut cases: Vec<Case> = (0..6).map(|i| dense_case(200 + i, &[2, 1, 9, 13], Mode::Binary)).collect();
    cases.extend((0..4).map(|i| label_case(300 + i, &[1, 3, 7, 5], if i % 2 == 0 { 255 } else { -100 })));
    cases.extend((0..3).map(|i| dense_case(400 + i, &[3, 2, 33], Mode::Multilabel)));
    // images a GPU tiles by their own size, not by the batch's: eight of them coalesced get
    // the tiles (and so the sums, bit for bit) each gets alone (on this engine the GPU tiling)
    engine.set_wide_statistics(false);
    cases.extend((0..8).map(|i| dense_case(500 + i, &[1, 1, 256, 256], Mode::Binary)));
    // per-image pooling, class lists and empty-class rules: finalize ops that index images
    let extra = parse(&[
        "dice:pool=image",
        "jaccard:classes=0,empty=skip",
        "dice:pool=all",
        // unreduced entries: each input's share of the set's
        "dice:pool=image,reduction=none",
        "gdice:reduction=none",
        "2*focal:alpha=0.25,reduction=none",
    ]);
    let exprs_of = |c: &Case| -> Vec<LossExpr> {
        let mut e = no_lovasz(if c.mode == Mode::Multiclass { MULTICLASS } else { BINARY });
        e.extend(extra.iter().cloned());
        e
    };
    let singles: Vec<Vec<Evaluation>> =
        cases.iter().map(|c| engine.evaluate_blocking(&c.whole(), &exprs_of(c), true).unwrap()).collect();
    let inputs: Vec<Input<'_>> = cases.iter().map(Case::whole).collect();
    let before = engine.activity();
    let mut batch = engine.batch();
    let pending: Vec<_> = cases.iter().zip(&inputs).map(|(c, i)| batch.push(i, &exprs_of(c), true).unwrap()).collect();
    batch.flush_blocking().unwrap();
    assert_eq!(engine.activity().submissions - before.submissions, 1);
    for (i, (p, single)) in pending.into_iter().zip(&singles).enumerate() {
        let got = p.wait().unwrap();
        assert_eq!(got.len(), single.len());
        assert_same(&got, single, &format!("input {i} of a shared set"));
    }
}

#[test]
fn large_inputs_in_a_batch_equal_one_by_one() {
    // past the size at which a batch shares upload buffers and passes: uploaded on their own
    let engine = common::gpu();
    let cases = [dense_case(500, &[1, 1, 520, 512], Mode::Binary), label_case(501, &[1, 3, 300, 300], 255)];
    let inputs: Vec<Input<'_>> = cases.iter().map(Case::whole).collect();
    let mut batch = engine.batch();
    let pending: Vec<_> =
        cases.iter().zip(&inputs).map(|(c, i)| batch.push(i, &exprs_for(c)[..3], true).unwrap()).collect();
    let small = dense_case(502, &[1, 1, 16, 16], Mode::Binary);
    let small_input = small.whole();
    let p_small = batch.push(&small_input, &exprs_for(&small), true).unwrap();
    batch.flush_blocking().unwrap();
    for ((c, i), p) in cases.iter().zip(&inputs).zip(pending) {
        assert_same(&p.wait().unwrap(), &engine.evaluate_blocking(i, &exprs_for(c)[..3], true).unwrap(), "large input");
    }
    assert_same(
        &p_small.wait().unwrap(),
        &engine.evaluate_blocking(&small_input, &exprs_for(&small), true).unwrap(),
        "small input beside large ones",
    );
}

#[test]
fn probabilities_in_buffers_equal_host_probabilities_and_are_checked_on_the_device() {
    let (engine, device, queue) = caller_engine();
    let mut r = Rng(71);
    for (shape, mode) in [(vec![2usize, 1, 9, 13], Mode::Binary), (vec![2, 4, 5, 7], Mode::Multiclass)] {
        let numel: usize = shape.iter().product();
        let (c, s) = (shape[1], numel / shape[0] / shape[1]);
        let mut probs: Vec<f32> = (0..numel).map(|_| r.uniform() as f32).collect();
        probs[0] = 0.0;
        probs[1] = 1.0;
        let (texts, words, host): (&[&str], Vec<u32>, Vec<Evaluation>);
        if mode == Mode::Multiclass {
            // one-hot pixels and unnormalized channels alike
            for k in 0..c {
                probs[k * s + 2] = (k == 1) as u8 as f32;
            }
            let labels: Vec<i64> = (0..numel / c).map(|_| r.below(c) as i64).collect();
            texts = &["dice", "dice@monai+focal@monai", "lovasz", "0.5*jaccard+lovasz:per_image=true"];
            let input = Input::labels_probs(&probs, &labels, &shape, None).unwrap();
            host = engine.evaluate_blocking(&input, &parse(texts), true).unwrap();
            words = labels.iter().map(|&l| l as u32).collect();
        } else {
            let t: Vec<f32> = (0..numel).map(|_| (r.uniform() < 0.3) as u8 as f32).collect();
            texts = &["bce", "0.5*bce+0.5*dice", "focal:alpha=0.25", "tversky@monai:alpha=0.3,beta=0.7"];
            let input = Input::dense_probs(&probs, &t, &shape, mode).unwrap();
            host = engine.evaluate_blocking(&input, &parse(texts), true).unwrap();
            words = bytemuck::cast_slice(&t).to_vec();
        }
        let run = |p: &[f32]| {
            let (lbuf, tbuf) = (buffer_with(device, bytemuck::cast_slice(p), 0), buffer_with(device, &words, 0));
            let l = BufferSlice::new(&lbuf, 0, numel as u64);
            let t = BufferSlice::new(&tbuf, 0, words.len() as u64);
            let target = if mode == Mode::Multiclass { TargetBuffer::ClassU32(t) } else { TargetBuffer::Dense(t) };
            let input = BufferInput::new(l, target, &shape, mode, None).unwrap().with_kind(InputKind::Probs);
            let exprs = parse(texts);
            let gbuf = buffer_with(device, &vec![0u32; numel], 0);
            let g = BufferSlice::new(&gbuf, 0, numel as u64);
            let out = engine.evaluate_buffers_blocking(&input, &exprs[..1], &[GradOut::Write(g)]);
            let rest = engine.evaluate_buffers_blocking(&input, &exprs, &vec![GradOut::Host; exprs.len()]);
            out.map(|o| (o, read_buffer(device, queue, &gbuf, 0, numel))).and_then(|x| rest.map(|r| (x, r)))
        };
        let ((first, written), all) = run(&probs).unwrap();
        assert_same(&all, &host, &format!("{mode} probabilities"));
        assert_eq!(first[0].value.to_bits(), host[0].value.to_bits());
        assert_eq!(Some(&written), host[0].grad.as_ref());
        // a probability outside [0, 1], and a logit-only loss, are refused
        for (i, bad) in [(5usize, 1.25f32), (7, -0.5), (11, f32::NAN), (13, f32::NEG_INFINITY)] {
            let mut p = probs.clone();
            p[i] = bad;
            match run(&p) {
                Err(Error::Input(m)) => assert!(m.contains(&format!("element {i}")) && m.contains("[0, 1]"), "{m}"),
                other => panic!("expected a probability error, got {:?}", other.map(|_| ())),
            }
        }
    }
    let (lbuf, tbuf) = (buffer_with(device, &[0; 8], 0), buffer_with(device, &[0; 4], 0));
    let input = BufferInput::new(
        BufferSlice::new(&lbuf, 0, 8),
        TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, 4)),
        &[1, 2, 4],
        Mode::Multiclass,
        None,
    )
    .unwrap()
    .with_kind(InputKind::Probs);
    let e = engine.evaluate_buffers_blocking(&input, &parse(&["ce"]), &[GradOut::Skip]).unwrap_err();
    assert!(e.to_string().contains("probabilities"), "{e}");
}

#[test]
fn neg_inf_logits_in_buffers_are_checked_on_the_device() {
    let (engine, device, _) = caller_engine();
    let inf = f32::NEG_INFINITY;
    // [1, 3, 4]: pixel 1 masks classes 1 and 2, pixel 3 classes 0 and 1
    let x = vec![0.5, 1.0, 0.0, inf, 0.2, inf, 1.0, inf, -1.0, inf, 2.0, 0.3];
    let run = |x: &[f32], labels: &[u32], texts: &[&str]| {
        let (lb, tb) = (buffer_with(device, bytemuck::cast_slice(x), 0), buffer_with(device, labels, 0));
        let input = BufferInput::new(
            BufferSlice::new(&lb, 0, 12),
            TargetBuffer::ClassU32(BufferSlice::new(&tb, 0, 4)),
            &[1, 3, 4],
            Mode::Multiclass,
            None,
        )
        .unwrap();
        let exprs = parse(texts);
        engine.evaluate_buffers_blocking(&input, &exprs, &vec![GradOut::Host; exprs.len()])
    };
    let labels = [0u32, 0, 2, 2];
    let texts = ["ce", "dice@monai+ce", "focal:act=softmax,alpha=0.25", "lovasz"];
    let host_labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let host =
        engine.evaluate_blocking(&Input::labels(&x, &host_labels, &[1, 3, 4], None).unwrap(), &parse(&texts), true);
    assert_same(&run(&x, &labels, &texts).unwrap(), &host.unwrap(), "masked classes");
    let neg = |r: Result<Vec<Evaluation>, Error>, at: usize| match r {
        Err(Error::NonFinite(m)) => assert!(m.contains(&format!("element {at}")) && m.contains("-inf"), "{m}"),
        other => panic!("expected a -inf error, got {:?}", other.map(|v| v[0].value)),
    };
    // on the true class (pixel 3, class 0: element 3), for ce and softmax focal; anywhere for
    // the sigmoid focal and label smoothing (the first -inf: element 3)
    neg(run(&x, &[0, 0, 2, 0], &["dice+ce"]), 3);
    neg(run(&x, &[0, 0, 2, 0], &["focal:act=softmax"]), 3);
    neg(run(&x, &labels, &["focal"]), 3);
    neg(run(&x, &labels, &["ce:label_smoothing=0.1"]), 3);
    // label smoothing: the -inf logits of ignored pixels (1 and 3) take no part, as on the host
    let ignored = [0u32, 255, 2, 255];
    let (lb, tb) = (buffer_with(device, bytemuck::cast_slice(&x), 0), buffer_with(device, &ignored, 0));
    let input = BufferInput::new(
        BufferSlice::new(&lb, 0, 12),
        TargetBuffer::ClassU32(BufferSlice::new(&tb, 0, 4)),
        &[1, 3, 4],
        Mode::Multiclass,
        Some(255),
    )
    .unwrap();
    let smooth = parse(&["ce:label_smoothing=0.1"]);
    let dev = engine.evaluate_buffers_blocking(&input, &smooth, &[GradOut::Host]).unwrap();
    let host_ignored: Vec<i64> = ignored.iter().map(|&l| l as i64).collect();
    let host =
        engine.evaluate_blocking(&Input::labels(&x, &host_ignored, &[1, 3, 4], Some(255)).unwrap(), &smooth, true);
    assert_same(&dev, &host.unwrap(), "label smoothing, -inf on ignored pixels");
    // every class of pixel 3 masked (its first element, 3)
    let mut all = x.clone();
    all[11] = inf;
    neg(run(&all, &labels, &["dice"]), 3);
}

#[test]
fn a_batch_keeps_logits_and_probabilities_of_one_shape_apart_and_deep_with_metrics_sums_levels() {
    let engine = common::gpu();
    let case = dense_case(81, &[2, 1, 9, 13], Mode::Binary);
    let probs: Vec<f32> = case.logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
    let exprs = parse(&["dice", "bce", "focal:alpha=0.25"]);
    let logits_in = case.whole();
    let probs_in = Input::dense_probs(&probs, &case.dense, &case.shape, Mode::Binary).unwrap();
    // the same slices read both ways, and different slices of one shape
    let same_slices = Input::dense(&probs, &case.dense, &case.shape, Mode::Binary).unwrap();
    let one: Vec<Vec<Evaluation>> = [&logits_in, &probs_in, &same_slices]
        .iter()
        .map(|i| engine.evaluate_blocking(i, &exprs, true).unwrap())
        .collect();
    let mut batch = engine.batch();
    let pending: Vec<_> =
        [&logits_in, &probs_in, &same_slices].iter().map(|i| batch.push(i, &exprs, true).unwrap()).collect();
    batch.flush_blocking().unwrap();
    for (k, (p, single)) in pending.into_iter().zip(&one).enumerate() {
        assert_same(&p.wait().unwrap(), single, &format!("input {k}"));
    }
    // the same slices as probabilities and as logits differ
    assert!((one[1][0].value - one[2][0].value).abs() > 1e-3, "{} vs {}", one[1][0].value, one[2][0].value);

    // deep supervision next to metrics: the losses over every level, the metrics of level 0
    let small = dense_case(82, &[2, 1, 5, 7], Mode::Binary);
    let deep_in = logits_in
        .clone()
        .with_levels(vec![(std::borrow::Cow::Borrowed(&small.logits[..]), small.shape.clone())])
        .unwrap();
    let deep = parse(&["deep:weights=0.3;0.7(dice)"]);
    let metrics: Vec<segloss::metrics::Metric> = vec!["iou".parse().unwrap()];
    let (evals, values) = engine.evaluate_with_metrics_blocking(&deep_in, &deep, true, &metrics).unwrap();
    let want = reference::evaluate(&deep_in, &deep[0]).unwrap();
    assert!(
        (evals[0].value - want.value).abs() <= 1e-5 * want.value.abs().max(1.0),
        "{} vs {}",
        evals[0].value,
        want.value
    );
    assert_eq!(evals[0].level_grads.len(), 1);
    let iou = segloss::metrics::reference::evaluate(&logits_in, &metrics[0]).unwrap();
    assert_eq!(values[0].as_ref().unwrap(), &iou);
    // -inf in a level (multiclass) is named with its level, on the engine and the reference
    let (x0, mut x1) = (vec![0.5f32; 8], vec![0.5f32; 4]);
    x1[1] = f32::NEG_INFINITY;
    let levels = Input::labels(&x0, &[0i64; 4], &[1, 2, 4], None)
        .unwrap()
        .with_levels(vec![(std::borrow::Cow::Borrowed(&x1[..]), vec![1, 2, 2])])
        .unwrap();
    let ce = parse(&["deep(ce)"]);
    let want = "logits of level 1[1] (at index [0, 0, 1]) is -inf";
    for r in
        [engine.evaluate_blocking(&levels, &ce, false).map(|_| ()), reference::evaluate(&levels, &ce[0]).map(|_| ())]
    {
        assert!(matches!(&r, Err(Error::NonFinite(m)) if m.contains(want)), "{r:?}");
    }
    // a plain loss on several levels is refused there too
    assert!(engine.evaluate_with_metrics_blocking(&deep_in, &parse(&["dice"]), true, &metrics).is_err());
    assert!(engine.statistics_blocking(&deep_in, &parse(&["dice"])).is_err());
}

/// Whether the engine's device has timestamp queries, which profiles need. Lavapipe through Vulkan,
/// the tests' adapter in CI, has them: there the profile tests cannot pass by skipping.
fn timestamps(engine: &Engine) -> bool {
    let has = engine.device().is_some_and(|d| d.features().contains(segloss::wgpu::Features::TIMESTAMP_QUERY));
    let info = engine.info();
    assert!(
        has || !(info.backend == "vulkan" && info.name.contains("llvmpipe")),
        "lavapipe has timestamp queries, but the engine's device lacks them"
    );
    has
}

/// A profile times every dispatch of the evaluation (the gradient pass only when a gradient is
/// asked for and the loss's own passes do not write it), on the device's clock, and leaves later evaluations untimed and unchanged.
#[test]
fn a_profile_times_every_dispatch_of_one_evaluation() {
    let engine = Engine::gpu_blocking().unwrap();
    let case = dense_case(91, &[2, 1, 64, 64], Mode::Binary);
    let prep = engine.prepare(case.whole()).unwrap();
    let exprs = parse(&["bce+dice", "lovasz"]);
    let p = match engine.profile_prepared_blocking(&prep, &exprs, segloss::GradMode::DeviceOnly) {
        Ok(p) => p,
        Err(segloss::Error::Unsupported(why)) if !timestamps(&engine) => {
            // an adapter without timestamp queries (not lavapipe: see `timestamps`)
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = p.kernels.iter().map(|k| k.kernel).collect();
    // (the hinge's keys and weights: a thread per tile on a CPU adapter, the keys to the front of
    // the radix sort's tiles)
    let cpu = engine.info().device_type == "Cpu";
    let (keys, weights) =
        if cpu { ("hinge_local_tiles", "lovasz_weights_tiles") } else { ("lovasz_keys", "lovasz_weights") };
    for k in ["stats", "finalize", "gradient", keys, weights] {
        assert!(names.contains(&k), "{k} missing from {names:?}");
    }
    // (bce+dice's: the hinge's weights pass writes the hinge's gradient, gpu::lovasz::HingeGrad)
    assert_eq!(names.iter().filter(|k| **k == "gradient").count(), 1, "{names:?}");
    assert!(p.kernels.windows(2).all(|w| w[0].start_ms <= w[1].start_ms), "{:?}", p.kernels);
    assert!(p.kernels.iter().all(|k| k.ms >= 0.0));
    assert!(p.device_ms > 0.0 && p.device_ms <= p.wall_ms, "{} of {}", p.device_ms, p.wall_ms);
    let total: usize = p.by_kernel().iter().map(|b| b.1).sum();
    assert_eq!(total, p.kernels.len());
    let f = engine.profile_prepared_blocking(&prep, &exprs, segloss::GradMode::Skip).unwrap();
    assert!(!f.kernels.iter().any(|k| k.kernel == "gradient"), "{:?}", f.kernels);
    assert_matches_reference(&engine, &case, &exprs[..1], "after a profile");
}

/// An input past the binding limit is evaluated in pieces, several submissions: its profile has
/// every piece's dispatches on one clock, from 0 to the span.
#[test]
fn a_profile_of_an_input_in_pieces_has_one_clock() {
    let engine = Engine::with_options_blocking(&segloss::EngineOptions {
        max_binding_bytes: Some(4096),
        ..segloss::EngineOptions::from_env()
    })
    .unwrap();
    let case = dense_case(92, &[4, 1, 32, 32], Mode::Binary);
    let prep = engine.prepare(case.whole()).unwrap();
    let p = match engine.profile_prepared_blocking(&prep, &parse(&["bce+dice"]), segloss::GradMode::Read) {
        Ok(p) => p,
        Err(segloss::Error::Unsupported(_)) if !timestamps(&engine) => return,
        Err(e) => panic!("{e}"),
    };
    assert!(p.kernels.iter().filter(|k| k.kernel == "stats").count() > 1, "{:?}", p.kernels);
    assert_eq!(p.kernels[0].start_ms, 0.0);
    assert!(p.kernels.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
    let end = p.kernels.iter().map(|k| k.start_ms + k.ms).fold(0.0, f64::max);
    assert_eq!(p.device_ms, end);
    assert!(p.device_ms <= p.wall_ms, "{} of {}", p.device_ms, p.wall_ms);
}

/// Mesa's llvmpipe ends a shader's loops after 65535 iterations in all, and a softmax statistics
/// thread walks every class of its pixels: on llvmpipe the engine takes the classes its step bound
/// allows (buffer inputs, whose checks walk the classes too: 949; with a label-smoothed
/// cross-entropy, 771) and refuses one more with a typed error rather than summing short (2500
/// classes gave a wrong dice there). Images of 2048 pixels, so that every statistics thread has
/// all of its 16 pixels. Elsewhere every case is evaluated.
#[test]
fn softmax_classes_at_and_past_llvmpipes_loop_limit() {
    let (engine, device, _) = caller_engine();
    let llvmpipe = engine.info().name.contains("llvmpipe");
    for (c, texts) in [(949, &["ce", "dice", "focal:act=softmax"][..]), (771, &["ce:label_smoothing=0.1+dice"][..])] {
        let exprs = parse(texts);
        for (classes, within) in [(c, true), (c + 1, false)] {
            let case = label_case(91, &[1, classes, 64, 32], 255);
            let words: Vec<u32> = case.labels.iter().map(|&l| l as u32).collect();
            let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
            let tbuf = buffer_with(device, &words, 0);
            let input = BufferInput::new(
                BufferSlice::new(&lbuf, 0, case.logits.len() as u64),
                TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, words.len() as u64)),
                &case.shape,
                case.mode,
                case.ignore,
            )
            .unwrap();
            let out = engine.evaluate_buffers_blocking(&input, &exprs, &vec![GradOut::Host; exprs.len()]);
            if llvmpipe && !within {
                match out {
                    Err(Error::Limit { max: 65535, what, .. }) => assert!(what.contains("softmax"), "{what}"),
                    other => panic!("{classes} classes on llvmpipe: {:?}", other.map(|v| v.len())),
                }
                continue;
            }
            for (g, e) in out.unwrap().iter().zip(&exprs) {
                let w = reference::evaluate(&case.whole(), e).unwrap();
                assert!(
                    (g.value - w.value).abs() <= 1e-5 * w.value.abs().max(1.0),
                    "{classes} {e}: {} vs {}",
                    g.value,
                    w.value
                );
                let (worst, scale) = common::max_diff(g.grad.as_ref().unwrap(), &w.grad);
                assert!(worst <= 1e-4 * scale, "{classes} classes {e}: gradient off by {worst} (largest {scale})");
            }
        }
    }
}

/// On a GPU the statistics pass takes short tiles (an image has up to 256 of them, then tiles
/// of 256 pixels): an image of more than 2^27 pixels (16384 x 16384) took more tiles than a
/// dimension of workgroups holds, and its evaluation was refused with a typed error although it
/// fit the binding. The tiles now fold into x and z. Here on any adapter, with the GPU's tiling
/// forced and the device's workgroups per dimension lowered to 32 (353 and 149 tiles per image).
#[test]
fn statistics_tiles_past_the_workgroups_per_dimension_fold() {
    let (info, device, queue) =
        caller_device_with(|l| l.max_compute_workgroups_per_dimension = 32, wgpu::Features::empty());
    let engine = Engine::from_device_blocking(&info, device, queue).unwrap();
    engine.set_wide_statistics(false);
    for (case, texts) in [
        (dense_case(5, &[2, 1, 300, 301], Mode::Binary), &["bce", "dice", "0.5*bce+0.5*dice", "lovasz"][..]),
        (label_case(6, &[1, 3, 200, 190], 255), &["ce", "dice@monai", "0.8*ce+0.2*lovasz"][..]),
    ] {
        assert_matches_reference(&engine, &case, &parse(texts), &format!("{:?}", case.shape));
    }
}

/// The softmax statistics of a CPU adapter with subgroups write a partial per subgroup: 1 KiB per
/// image and class on lavapipe, whatever the image's size, so many small images' partials passed
/// a binding their logits fit (a typed error for every loss). An image whose partials would
/// outgrow its logits (under 256 pixels there) takes the portable kernel, a partial per tile,
/// whatever its batch: a first fix decided by the batch's partials, so an image gave other bits in
/// a large batch than in a small one. Here with the binding lowered to 1 MiB: 220 images of 5 x 15
/// x 15 (990 KB of logits, 1.1 MB of partials per subgroup) hold the reference's values, and
/// their first four the bits of those four alone. Elsewhere (no subgroups) the same.
#[test]
fn small_images_whose_subgroup_partials_pass_the_binding() {
    let (info, device, queue) =
        caller_device_with(|l| l.max_storage_buffer_binding_size = 1 << 20, wgpu::Features::SUBGROUP);
    let engine = Engine::from_device_blocking(&info, device, queue).unwrap();
    let big = label_case(7, &[220, 5, 15, 15], 255);
    assert_matches_reference(&engine, &big, &parse(&["ce", "dice", "0.5*ce+0.5*dice@monai"]), "220x5x15x15");
    let exprs = parse(&["dice:pool=image,reduction=none", "ce:reduction=none"]);
    let a = engine.evaluate_blocking(&big.images(0, 4), &exprs, false).unwrap();
    let b = engine.evaluate_blocking(&big.whole(), &exprs, false).unwrap();
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (&x.unreduced.as_ref().unwrap().values, &y.unreduced.as_ref().unwrap().values);
        // (dice per image and class: the first 4 x 5 entries; ce per pixel: the first 4 images')
        let k = x.len();
        assert_eq!(x[..], y[..k], "the first four images' entries alone and in the batch of 220");
    }
}

/// A region loss's class list may repeat classes (as smp's `classes`), and the finalize walks the
/// list: on llvmpipe, which ends a shader's loops after 65535 iterations in all, the engine bounds
/// the walk by the list's length, not the class count, and refuses a list past it with a typed
/// error. Before, 20000 entries passed the bound on C = 3 and the loops ended early: the other
/// losses of the evaluation came back 0.0, silently. Elsewhere, and within the bound, every value
/// is the reference's.
#[test]
fn region_class_lists_longer_than_llvmpipes_loop_limit() {
    let (engine, _, _) = caller_engine();
    let llvmpipe = engine.info().name.contains("llvmpipe");
    let case = label_case(93, &[1, 3, 4, 4], 255);
    for (repeats, within) in [(50, true), (20000, false)] {
        let list = vec!["1"; repeats].join(";");
        let texts = [format!("dice:classes={list}"), "dice:classes=1".to_string(), "ce".to_string()];
        let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let out = engine.evaluate_blocking(&case.whole(), &exprs, true);
        if llvmpipe && !within {
            match out {
                Err(Error::Limit { what, .. }) => assert!(what.contains("finalize"), "{what}"),
                other => panic!(
                    "{repeats} entries on llvmpipe: {:?}",
                    other.map(|v| v.iter().map(|e| e.value).collect::<Vec<_>>())
                ),
            }
            continue;
        }
        let out = out.unwrap();
        for (g, e) in out.iter().zip(&exprs) {
            let w = reference::evaluate(&case.whole(), e).unwrap();
            assert!(
                (g.value - w.value).abs() <= 1e-5 * w.value.abs().max(1.0),
                "{repeats}: {}: {} vs {}",
                &texts[0][..20],
                g.value,
                w.value
            );
        }
        assert!((out[0].value - out[1].value).abs() <= 1e-6, "{} vs {}", out[0].value, out[1].value);
    }
}

/// Cross-entropy alone over a host input writes its gradient from the statistics pass, a walk
/// over the classes per pixel after its log-sum-exp: on llvmpipe, which ends a shader's loops
/// after 65535 iterations in all, the engine fuses it only while the pass's loop steps allow
/// (1236 classes) and beyond leaves the gradient to its own pass. Before that bound, 3300 classes
/// (every statistics thread with 16 pixels: 53 000 steps of the fused walks alone) gave the value
/// 12.06 for the reference's 12.49, silently. Every adapter: values and gradients match the
/// reference.
#[test]
fn cross_entropy_past_the_fused_class_bound_keeps_its_gradient() {
    let (engine, _, _) = caller_engine();
    for classes in [1236, 1237, 3300] {
        let case = label_case(97, &[1, classes, 64, 32], 255);
        let exprs = parse(&["ce"]);
        assert_matches_reference(engine, &case, &exprs, &format!("ce over {classes} classes"));
    }
}

/// `ce` on a labels case in buffers of the caller's device, ignore index 255, its gradient
/// written into a buffer: the evaluation, and that buffer read back.
fn ce_on_buffers(case: &Case) -> (Result<Vec<Evaluation>, Error>, Vec<f32>) {
    let (engine, device, queue) = caller_engine();
    let numel = case.logits.len();
    let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
    let labels: Vec<u32> = case.labels.iter().map(|&l| l as u32).collect();
    let tbuf = buffer_with(device, &labels, 0);
    let gbuf = buffer_with(device, &vec![0u32; numel], 0);
    let input = BufferInput::new(
        BufferSlice::new(&lbuf, 0, numel as u64),
        TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, labels.len() as u64)),
        &case.shape,
        Mode::Multiclass,
        Some(255),
    )
    .unwrap();
    let got = engine.evaluate_buffers_blocking(
        &input,
        &parse(&["ce"]),
        &[GradOut::Write(BufferSlice::new(&gbuf, 0, numel as u64))],
    );
    (got, read_buffer(device, queue, &gbuf, 0, numel))
}

/// Cross-entropy over many classes where llvmpipe's loop limit (65535 steps an invocation, past
/// which every loop ends silently) would cut a pass short: a checked buffer input with ignored
/// pixels (its statistics pass walks the classes three times per pixel) and eight pixel terms (the
/// gradient pass walks them per class). Within the bounds the values and gradients agree with the
/// reference; past them a CPU adapter refuses with a typed error. Before the bounds counted these
/// walks, lavapipe gave `ce` at 1500 classes the value 11.56 where the reference gives 11.69, and
/// eight cross-entropy terms over 7900 classes wrong gradients from class 6553 on
/// (`loop_limit_probe`).
#[test]
fn cross_entropy_over_many_classes_stays_within_the_loop_limit_or_is_refused() {
    let (engine, _, _) = caller_engine();
    let llvmpipe = engine.info().name.contains("llvmpipe");
    for classes in [1200, 1500] {
        let case = label_case(98, &[1, classes, 64, 32], 255);
        let exprs = parse(&["ce"]);
        let (got, g) = ce_on_buffers(&case);
        if llvmpipe && classes == 1500 {
            match got {
                Err(Error::Limit { max: 65535, what, .. }) => assert!(what.contains("statistics pass"), "{what}"),
                other => panic!("ce over 1500 classes on llvmpipe: {:?}", other.map(|v| v[0].value)),
            }
            continue;
        }
        let v = got.unwrap_or_else(|e| panic!("ce over {classes} classes: {e}"));
        let w = reference::evaluate(&case.whole(), &exprs[0]).unwrap();
        assert!(
            (v[0].value - w.value).abs() <= 1e-5 * w.value.abs(),
            "ce over {classes}: {} vs {}",
            v[0].value,
            w.value
        );
        let (worst, scale) = common::max_diff(&g, &w.grad);
        assert!(worst <= 1e-4 * scale, "ce over {classes}: gradient off by {worst} (largest {scale})");
    }
    let eight = parse(&["ce+ce+ce+ce+ce+ce+ce+ce"]);
    assert_matches_reference(engine, &label_case(99, &[1, 1400, 64, 32], 255), &eight, "eight ce terms");
    let big = label_case(99, &[1, 7900, 64, 32], 255);
    if llvmpipe {
        match engine.evaluate_blocking(&big.whole(), &eight, true) {
            Err(Error::Limit { max: 65535, what, .. }) => assert!(what.contains("gradient pass"), "{what}"),
            other => panic!("eight ce terms over 7900 classes on llvmpipe: {:?}", other.map(|v| v[0].value)),
        }
    } else {
        assert_matches_reference(engine, &big, &eight, "eight ce terms");
    }
}

/// Prints what the cases of the test above give against the reference, as the README quotes
/// them: run with the library of a commit before the bounds (98cfd9f) to see the wrong values,
/// with today's to see the refusals. `cargo test --release --test engine loop_limit_probe --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn loop_limit_probe() {
    let (engine, _, _) = caller_engine();
    let bad = |g: &[f32], w: &[f64]| {
        let off = |(a, b): (&f32, &f64)| (f64::from(*a) - b).abs() > 1e-3 * b.abs() + 1e-12;
        (g.iter().zip(w).filter(|&p| off(p)).count(), g.iter().zip(w).position(off))
    };
    for classes in [1200, 1500, 1770] {
        let case = label_case(97, &[1, classes, 64, 32], 255);
        let w = reference::evaluate(&case.whole(), &parse(&["ce"])[0]).unwrap();
        let numel = case.logits.len();
        match ce_on_buffers(&case) {
            (Ok(v), g) => {
                let (n, _) = bad(&g, &w.grad);
                eprintln!(
                    "ce, buffer input, {classes} classes: {} (reference {}), {n} of {numel} gradient elements off",
                    v[0].value, w.value
                );
            }
            (Err(e), _) => eprintln!("ce, buffer input, {classes} classes: {e}"),
        }
    }
    for (text, classes) in [("ce", 7900), ("ce+ce+ce+ce+ce+ce+ce+ce", 1400), ("ce+ce+ce+ce+ce+ce+ce+ce", 7900)] {
        let case = label_case(99, &[1, classes, 64, 32], 255);
        let exprs = parse(&[text]);
        let w = reference::evaluate(&case.whole(), &exprs[0]).unwrap();
        match engine.evaluate_blocking(&case.whole(), &exprs, true) {
            Ok(v) => {
                let (n, first) = bad(v[0].grad.as_deref().unwrap_or(&[]), &w.grad);
                let class = first.map(|i| i / 2048);
                eprintln!(
                    "{text}, {classes} classes: {} (reference {}), {n} gradient elements off, the first in class {class:?}",
                    v[0].value, w.value
                );
            }
            Err(e) => eprintln!("{text}, {classes} classes: {e}"),
        }
    }
}

/// A dense case's logits and targets in buffers of `device`.
fn dense_buffers(device: &wgpu::Device, case: &Case) -> (wgpu::Buffer, wgpu::Buffer) {
    (
        buffer_with(device, bytemuck::cast_slice(&case.logits), 0),
        buffer_with(device, bytemuck::cast_slice(&case.dense), 0),
    )
}

/// The buffer input of a dense case over its `dense_buffers`.
fn dense_input<'a>(bufs: &'a (wgpu::Buffer, wgpu::Buffer), case: &Case, ignore: Option<i64>) -> BufferInput<'a> {
    let numel = case.logits.len() as u64;
    BufferInput::new(
        BufferSlice::new(&bufs.0, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&bufs.1, 0, numel)),
        &case.shape,
        case.mode,
        ignore,
    )
    .unwrap()
}

/// Sigmoid pixel losses over an input checked on the host (which counts the elements that are
/// not ignored): the statistics pass writes the gradient (one read of the input, no gradient pass), bit for bit the
/// gradient pass's (the same input as buffers takes the gradient pass), and the reference's:
/// every admitted kind of term alone (pos_weight, per-channel pos_weight, label smoothing, focal
/// with and without class weights, repeated and four terms), on logits and on probabilities. With
/// an ignore index too (0 at the ignored elements); with a region term the gradient pass runs.
#[test]
fn a_pixel_loss_gradient_comes_from_the_statistics_pass() {
    let (engine, device, _) = caller_engine();
    // an engine on its own device, which asks for timestamp queries (the profiles below)
    let own = Engine::gpu_blocking().unwrap();
    let fused_texts: &[&str] = &[
        "0.7*bce+focal:alpha=0.25",
        "bce:pos_weight=2,label_smoothing=0.1",
        "focal:gamma=0",
        "focal:gamma=1.5,norm=weights",
        "bce+bce",
        "bce+focal+bce:label_smoothing=0.2+focal:gamma=1",
    ];
    let weighted: &[&str] = &["bce:pos_weight=1;2;0.5", "focal:weights=1;2;0.5,norm=count"];
    for (shape, mode) in [(&[2, 1, 37, 41][..], Mode::Binary), (&[2, 3, 9, 7][..], Mode::Multilabel)] {
        let mut case = dense_case(94, shape, mode);
        let mut texts = fused_texts.to_vec();
        if mode == Mode::Multilabel {
            texts.extend_from_slice(weighted);
        }
        for kind in [InputKind::Logits, InputKind::Probs] {
            if kind == InputKind::Probs {
                case.logits = case.logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
            }
            let bufs = dense_buffers(device, &case);
            let input = dense_input(&bufs, &case, None).with_kind(kind);
            let whole = case.whole().with_kind(kind).unwrap();
            let prep = own.prepare(case.whole().with_kind(kind).unwrap()).unwrap();
            for text in &texts {
                let e: LossExpr = text.parse().unwrap();
                if e.check_input(mode, shape[1], kind).is_err() {
                    continue;
                }
                let what = format!("{shape:?} {kind:?} {text}");
                let host = engine.evaluate_blocking(&whole, std::slice::from_ref(&e), true).unwrap();
                let bufs =
                    engine.evaluate_buffers_blocking(&input, std::slice::from_ref(&e), &[GradOut::Host]).unwrap();
                assert_same(&host, &bufs, &format!("{what}: fused against the gradient pass"));
                let w = reference::evaluate(&whole, &e).unwrap();
                let (worst, scale) = common::max_diff(host[0].grad.as_ref().unwrap(), &w.grad);
                assert!(worst <= 1e-4 * scale, "{what}: gradient off by {worst} (largest {scale})");
                // the fused evaluation has no gradient pass
                match own.profile_prepared_blocking(&prep, std::slice::from_ref(&e), segloss::GradMode::DeviceOnly) {
                    Ok(p) => assert!(!p.kernels.iter().any(|k| k.kernel == "gradient"), "{what}: {:?}", p.kernels),
                    Err(segloss::Error::Unsupported(why)) => eprintln!("profile skipped: {why}"),
                    Err(err) => panic!("{err}"),
                }
            }
        }
    }
    // a region term: the gradient pass runs; an ignore index: the host counts the other
    // elements, and the statistics pass writes the gradient (0 at the ignored ones), the bits of
    // the gradient pass of the same input as buffers
    let mut case = dense_case(95, &[2, 1, 16, 16], Mode::Binary);
    let exprs = parse(&["bce+dice"]);
    assert_matches_reference(engine, &case, &exprs, "bce+dice");
    case.ignore = Some(-1);
    for i in [3, 40, 41, 200] {
        case.dense[i] = -1.0;
    }
    let exprs = parse(&["bce", "focal"]);
    assert_matches_reference(engine, &case, &exprs, "with an ignore index");
    let bufs = dense_buffers(device, &case);
    let input = dense_input(&bufs, &case, Some(-1));
    for e in &exprs {
        let host = engine.evaluate_blocking(&case.whole(), std::slice::from_ref(e), true).unwrap();
        let bufs = engine.evaluate_buffers_blocking(&input, std::slice::from_ref(e), &[GradOut::Host]).unwrap();
        assert_same(&host, &bufs, &format!("{e} with an ignore index: fused against the gradient pass"));
        assert_eq!(host[0].grad.as_ref().unwrap()[40], 0.0, "{e}: an ignored element's gradient");
    }
    let prep = own.prepare(case.whole()).unwrap();
    for (e, pass) in parse(&["bce+dice", "bce"]).iter().zip([true, false]) {
        if let Ok(p) = own.profile_prepared_blocking(&prep, std::slice::from_ref(e), segloss::GradMode::DeviceOnly) {
            assert_eq!(p.kernels.iter().any(|k| k.kernel == "gradient"), pass, "{e}: {:?}", p.kernels);
        }
    }
    // every element ignored: nothing counts, nothing is fused, and the loss is 0
    case.dense.fill(-1.0);
    assert_matches_reference(engine, &case, &exprs, "every element ignored");
}

/// Unweighted cross-entropy over softmax logits of a host input: the statistics pass writes the
/// gradient too (0 at ignored pixels), bit for bit the gradient pass's (the same input as
/// buffers) and the reference's, with label smoothing and two terms, in one image tile and
/// several, with and without ignored pixels. Beside an expression whose gradient pass reads the
/// pixels' log-sum-exps, or with class weights, the gradient pass runs; with every pixel
/// ignored nothing is fused.
#[test]
fn a_cross_entropy_gradient_comes_from_the_statistics_pass() {
    let (engine, device, _) = caller_engine();
    let own = Engine::gpu_blocking().unwrap();
    for (shape, ignored) in [(&[2usize, 5, 9, 11][..], false), (&[2, 4, 70, 90], false), (&[2, 5, 9, 11], true)] {
        let mut case = label_case(96, shape, 255);
        if !ignored {
            // every pixel counts
            for l in case.labels.iter_mut().filter(|l| **l == 255) {
                *l = 0;
            }
            case.ignore = None;
        }
        assert_eq!(case.labels.contains(&255), ignored);
        let numel = case.logits.len();
        let labels: Vec<u32> = case.labels.iter().map(|&l| l as u32).collect();
        let lbuf = buffer_with(device, bytemuck::cast_slice(&case.logits), 0);
        let tbuf = buffer_with(device, bytemuck::cast_slice(&labels), 0);
        let input = BufferInput::new(
            BufferSlice::new(&lbuf, 0, numel as u64),
            TargetBuffer::ClassU32(BufferSlice::new(&tbuf, 0, labels.len() as u64)),
            &case.shape,
            case.mode,
            case.ignore,
        )
        .unwrap();
        let whole = case.whole();
        let prep = own.prepare(case.whole()).unwrap();
        let gradient_pass = |exprs: &[LossExpr]| -> Option<bool> {
            match own.profile_prepared_blocking(&prep, exprs, segloss::GradMode::DeviceOnly) {
                Ok(p) => Some(p.kernels.iter().any(|k| k.kernel == "gradient")),
                Err(segloss::Error::Unsupported(why)) => {
                    eprintln!("profile skipped: {why}");
                    None
                }
                Err(err) => panic!("{err}"),
            }
        };
        for text in ["ce", "ce:label_smoothing=0.1", "0.5*ce+ce:label_smoothing=0.2"] {
            let e: LossExpr = text.parse().unwrap();
            let what = format!("{shape:?} {text}");
            let host = engine.evaluate_blocking(&whole, std::slice::from_ref(&e), true).unwrap();
            let bufs = engine.evaluate_buffers_blocking(&input, std::slice::from_ref(&e), &[GradOut::Host]).unwrap();
            assert_same(&host, &bufs, &format!("{what}: fused against the gradient pass"));
            let w = reference::evaluate(&whole, &e).unwrap();
            let (worst, scale) = common::max_diff(host[0].grad.as_ref().unwrap(), &w.grad);
            assert!(worst <= 1e-4 * scale, "{what}: gradient off by {worst} (largest {scale})");
            assert_ne!(gradient_pass(std::slice::from_ref(&e)), Some(true), "{what}: a gradient pass ran");
        }
        // beside dice, whose gradient pass reads the log-sum-exps; with class weights
        let exprs = parse(&["ce", "dice"]);
        assert_matches_reference(engine, &case, &exprs, "ce beside dice");
        assert_ne!(gradient_pass(&exprs), Some(false), "{shape:?}: no gradient pass beside dice");
        let weighted = parse(&["ce:weights=1;2;0.5;1"]);
        if shape[1] == 4 {
            assert_matches_reference(engine, &case, &weighted, "weighted ce");
            assert_ne!(gradient_pass(&weighted), Some(false), "{shape:?}: no gradient pass with class weights");
        }
    }
    let mut case = label_case(97, &[1, 3, 5, 7], 255);
    case.labels.fill(255);
    assert_matches_reference(engine, &case, &parse(&["ce", "ce:label_smoothing=0.1"]), "every pixel ignored");
}

/// kornia's macro Dice and Tversky (`norm=image` under `pool=image`): an image whose counted
/// weights sum to 0 (every pixel ignored, or its only class weighted 0) has loss 1, not 0; with
/// every pixel of the batch ignored the loss is 1. The expected values are kornia 0.9.0's
/// (`dice_loss(average='macro')`, `tversky_loss(alpha=0.3, beta=0.7)`, float64) on these
/// logits; the sum of the gradient's magnitudes is kornia's too (image 0's gradient is 0).
#[test]
fn kornia_images_without_counted_weight_have_loss_one() {
    let engine = Engine::gpu_blocking().unwrap();
    let x = review_logits();
    let mut ignored = vec![255i64; 20];
    ignored.extend([1, 2, 1, 2, 1, 1, 0, 0, 0, 2, 2, 2, 1, 1, 2, 0, 2, 2, 2, 2]);
    let mut class0 = vec![0i64; 20];
    class0.extend_from_slice(&ignored[20..]);
    let all_ignored = vec![255i64; 40];
    let cases: [(&[i64], &str, f64, f64); 4] = [
        (&ignored, "dice@kornia:pool=image,empty=skip", 0.8682706231332451, 0.08483761337996545),
        (&ignored, "tversky@kornia:alpha=0.3,beta=0.7", 0.8669552892707865, 0.08564807414223977),
        (&class0, "dice@kornia:pool=image,empty=skip,weights=0;1;1", 0.8169675602272477, 0.10256860215557864),
        (&all_ignored, "dice@kornia:pool=image,empty=skip", 1.0, 0.0),
    ];
    for (t, text, value, grad_l1) in cases {
        let input = Input::labels(&x, t, &[2, 3, 4, 5], Some(255)).unwrap();
        let expr: LossExpr = text.parse().unwrap();
        let gpu = engine.evaluate_blocking(&input, std::slice::from_ref(&expr), true).unwrap().remove(0);
        let cpu = reference::evaluate(&input, &expr).unwrap();
        assert!((gpu.value - value).abs() <= 1e-6 * value, "{text}: {} against kornia's {value}", gpu.value);
        assert!(
            (cpu.value - value).abs() <= 1e-6 * value,
            "{text} (reference): {} against kornia's {value}",
            cpu.value
        );
        let gg = gpu.grad.expect("gradient");
        let l1: f64 = cpu.grad.iter().map(|g| g.abs()).sum();
        assert!(
            (l1 - grad_l1).abs() <= 1e-6 * grad_l1.max(1e-12),
            "{text}: gradient magnitudes {l1} against {grad_l1}"
        );
        assert!(gg[..60].iter().all(|&g| g == 0.0), "{text}: image 0's gradient");
        for (i, (&a, &b)) in gg.iter().zip(&cpu.grad).enumerate() {
            assert!((f64::from(a) - b).abs() <= 1e-6, "{text}: gradient {i} {a} against the reference's {b}");
        }
    }
}

/// Softmax of large logits keeps the log of the sum apart from the max (`(x - m) - log sum`, as
/// PyTorch's log_softmax): a tie of three logits at 1e10 or 3e38 has p = 1/3 each (the sum
/// `m + log 3` in f32 is m, which gave every class p = 1 and every loss 0). The expected numbers
/// are exact: ce = ln 3 and its gradient p - g; smp's multiclass Dice (1 - 2 (1/3) / (4/3)) / 3;
/// Lovász-Softmax 1 - 1/3; softmax focal (2/3)^2 ln 3; a tie of two at 3e38 beside -3e38, ln 2.
/// And logits around 1e4, where the rounding of `m + log sum` (ulp 1e-3) moved every loss by
/// about 5e-5: each loss against the f64 reference.
#[test]
fn softmax_of_large_logits_keeps_the_log_of_the_sum() {
    let engine = Engine::gpu_blocking().unwrap();
    let texts = ["ce", "dice", "lovasz", "focal:act=softmax"];
    let exprs = parse(&texts);
    let ln3 = 3f64.ln();
    let want = [ln3, 0.5 / 3.0, 2.0 / 3.0, 4.0 / 9.0 * ln3];
    for big in [1e10f32, 3e38] {
        let x = [big; 3];
        let input = Input::labels(&x, &[1], &[1, 3, 1, 1], None).unwrap();
        let got = engine.evaluate_blocking(&input, &exprs, true).unwrap();
        for ((t, e), w) in texts.iter().zip(&got).zip(want) {
            assert!((e.value - w).abs() <= 1e-6 * w, "{t} at {big}: {} against {w}", e.value);
            let cpu = reference::evaluate(&input, &t.parse().unwrap()).unwrap().value;
            assert!((cpu - w).abs() <= 1e-12, "{t} at {big} (reference): {cpu} against {w}");
        }
        let g = got[0].grad.as_ref().expect("gradient");
        for (k, want) in [1.0 / 3.0, -2.0 / 3.0, 1.0 / 3.0].into_iter().enumerate() {
            assert!((f64::from(g[k]) - want).abs() <= 1e-6, "ce's gradient at {big}: {g:?}");
        }
    }
    let input = Input::labels(&[3e38f32, 3e38, -3e38], &[0], &[1, 3, 1, 1], None).unwrap();
    let ce = engine.evaluate_blocking(&input, &exprs[..1], false).unwrap()[0].value;
    assert!((ce - 2f64.ln()).abs() <= 1e-6, "ce of (3e38, 3e38, -3e38): {ce}");
    // logits around 1e4
    let mut r = Rng(77);
    let (n, c, s) = (2usize, 5, 64);
    let x: Vec<f32> = (0..n * c * s).map(|_| (1e4 + 2.0 * r.normal()) as f32).collect();
    let t: Vec<i64> = (0..n * s).map(|_| r.below(c) as i64).collect();
    let input = Input::labels(&x, &t, &[n, c, 8, 8], None).unwrap();
    let got = engine.evaluate_blocking(&input, &exprs, true).unwrap();
    for (e, expr) in got.iter().zip(&exprs) {
        let cpu = reference::evaluate(&input, expr).unwrap();
        assert!((e.value - cpu.value).abs() <= 2e-6 * cpu.value, "{expr} near 1e4: {} against {}", e.value, cpu.value);
        let g = e.grad.as_ref().expect("gradient");
        let scale = cpu.grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&a, &b)) in g.iter().zip(&cpu.grad).enumerate() {
            assert!((f64::from(a) - b).abs() <= 1e-4 * scale, "{expr} near 1e4: gradient {i} {a} against {b}");
        }
    }
}

/// Region weights beside a `classes` list: one per listed class, or one per channel (smp's
/// `class_weights` beside `classes`, which reads them per channel). Both give smp 0.6.0's
/// `DiceLoss('multiclass', classes=[0, 2], class_weights=[1, 2, 0.5])` (float64) on these
/// logits, and the same gradient, on the device and in the reference; a list of neither length
/// is refused, naming both.
#[test]
fn region_weights_with_a_class_list_take_one_per_listed_class_or_per_channel() {
    let engine = Engine::gpu_blocking().unwrap();
    let x = review_logits();
    let mut t = vec![0i64; 20];
    t.extend([1, 2, 1, 2, 1, 1, 0, 0, 0, 2, 2, 2, 1, 1, 2, 0, 2, 2, 2, 2]);
    let input = Input::labels(&x, &t, &[2, 3, 4, 5], None).unwrap();
    let smp = 0.6935544646303372;
    let listed = parse(&["dice:weights=1;0.5,classes=0;2"]);
    let channels = parse(&["dice:weights=1;2;0.5,classes=0;2"]);
    let a = engine.evaluate_blocking(&input, &listed, true).unwrap().remove(0);
    let b = engine.evaluate_blocking(&input, &channels, true).unwrap().remove(0);
    assert!((a.value - smp).abs() <= 1e-6 * smp, "per listed class: {} against smp's {smp}", a.value);
    assert_eq!((a.value, &a.grad), (b.value, &b.grad), "per channel");
    let ra = reference::evaluate(&input, &listed[0]).unwrap();
    let rb = reference::evaluate(&input, &channels[0]).unwrap();
    assert!((ra.value - smp).abs() <= 1e-9, "reference: {} against smp's {smp}", ra.value);
    assert_eq!((ra.value, &ra.grad), (rb.value, &rb.grad), "reference, per channel");
    let e = engine.evaluate_blocking(&input, &parse(&["dice:weights=1;2;0.5;4,classes=0;2"]), true).unwrap_err();
    assert!(e.to_string().contains("one per listed class, or 3: one per channel"), "{e}");
    // a list as long as the channels takes its weights per listed class, in the list's order
    // (documented; the two readings differ on a permutation): class 2 weighs 1, class 0 weighs 3
    let permuted = parse(&["dice:classes=2;1;0,weights=1;2;3"]);
    let by_channel = parse(&["dice:weights=3;2;1"]);
    let p = engine.evaluate_blocking(&input, &permuted, true).unwrap().remove(0);
    let q = engine.evaluate_blocking(&input, &by_channel, true).unwrap().remove(0);
    let (rp, rq) =
        (reference::evaluate(&input, &permuted[0]).unwrap(), reference::evaluate(&input, &by_channel[0]).unwrap());
    assert!((rp.value - rq.value).abs() <= 1e-12, "reference: {} against {}", rp.value, rq.value);
    assert!((p.value - q.value).abs() <= 1e-6 * q.value.abs(), "{} against {}", p.value, q.value);
}

/// Misuse from the outside that used to hang, panic or give another buffer's numbers (found by
/// a review of the API): a batch prepared by another engine's device, statistics of logits
/// used for a gradient of probabilities, two gradient slices that overlap without being the same
/// slice (the split evaluation refused them; one binding did not), and a `Pending` waited on
/// before its batch was flushed. Each is a typed error.
#[test]
fn misuse_across_engines_kinds_slices_and_batches_is_a_typed_error() {
    let (engine, device, _) = caller_engine();
    let other = Engine::gpu_blocking().unwrap();
    let x: Vec<f32> = (0..64).map(|i| ((i * 7) % 11) as f32 / 4.0 - 1.0).collect();
    let p: Vec<f32> = x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let t: Vec<f32> = (0..64).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let input = Input::dense(&x, &t, &[1, 1, 8, 8], Mode::Binary).unwrap();
    let exprs = parse(&["dice"]);
    // another device's upload
    let prep = other.prepare(input.clone()).unwrap();
    match engine.evaluate_prepared_blocking(&prep, &exprs, segloss::GradMode::Read) {
        Err(Error::Input(m)) => assert!(m.contains("another engine"), "{m}"),
        r => panic!("another device's prepared batch: {:?}", r.map(|v| v[0].value)),
    }
    assert!(other.evaluate_prepared_blocking(&prep, &exprs, segloss::GradMode::Read).is_ok());
    // statistics of logits, a gradient of probabilities
    let st = engine.statistics_blocking(&input, &exprs).unwrap();
    let probs = Input::dense_probs(&p, &t, &[1, 1, 8, 8], Mode::Binary).unwrap();
    match engine.gradient_blocking(&probs, &st, 0, &exprs) {
        Err(Error::Input(m)) => assert!(m.contains("probs") && m.contains("logits"), "{m}"),
        r => panic!("a gradient of probabilities from statistics of logits: {:?}", r.map(|v| v[0].value)),
    }
    assert_eq!(st.kind(), InputKind::Logits);
    // gradient slices that overlap (8 floats apart) in one buffer of one binding
    let gbuf = buffer_with(device, &[0u32; 72], 0);
    let (a, b) = (BufferSlice::new(&gbuf, 0, 64), BufferSlice::new(&gbuf, 32, 64));
    let (lb, tb) = (buffer_with(device, bytemuck::cast_slice(&x), 0), buffer_with(device, bytemuck::cast_slice(&t), 0));
    let binput = BufferInput::new(
        BufferSlice::new(&lb, 0, 64),
        TargetBuffer::Dense(BufferSlice::new(&tb, 0, 64)),
        &[1, 1, 8, 8],
        Mode::Binary,
        None,
    )
    .unwrap();
    match engine.evaluate_buffers_blocking(&binput, &parse(&["dice", "bce"]), &[GradOut::Write(a), GradOut::Write(b)]) {
        Err(Error::Buffer(m)) => assert!(m.contains("overlap"), "{m}"),
        r => panic!("overlapping gradient slices: {:?}", r.map(|v| v[0].value)),
    }
    // the same slice twice is fine (the second adds or overwrites, in order)
    assert!(engine
        .evaluate_buffers_blocking(&binput, &parse(&["dice", "bce"]), &[GradOut::Write(a), GradOut::Add(a)])
        .is_ok());
    // a Pending waited on before the flush
    let mut batch = engine.batch();
    let early = batch.push(&input, &exprs, false).unwrap();
    assert!(matches!(early.wait(), Err(Error::Input(_))));
    let later = batch.push(&input, &exprs, false).unwrap();
    batch.flush_blocking().unwrap();
    assert!(later.wait().is_ok());
}

/// The 2x3x4x5 logits of the reviews' kornia and smp cases (`rng = default_rng(10)`,
/// `standard_normal((2, 3, 4, 5)) * 3` as float32), written out in f64.
fn review_logits() -> Vec<f32> {
    const X: [f64; 120] = [
        -3.3100154399871826,
        -2.1750738620758057,
        -2.3454158306121826,
        0.8009275794029236,
        -0.7457422018051147,
        0.37944915890693665,
        2.529127597808838,
        2.5738096237182617,
        1.425550937652588,
        -1.3523057699203491,
        -2.264796733856201,
        -2.4444422721862793,
        -1.0315645933151245,
        -0.15414027869701385,
        -2.916821002960205,
        -3.4034626483917236,
        0.9171156287193298,
        -5.555055141448975,
        -0.5311605334281921,
        1.2774770259857178,
        -2.956066846847534,
        -3.338862419128418,
        -2.2818779945373535,
        1.9440737962722778,
        -0.38949406147003174,
        -5.608791828155518,
        -1.2700473070144653,
        3.0416903495788574,
        2.951146125793457,
        1.8901258707046509,
        -0.7141764163970947,
        -5.534819602966309,
        0.5087332129478455,
        -0.5279332995414734,
        0.23039959371089935,
        4.6269121170043945,
        0.55105060338974,
        0.8290014266967773,
        1.815292477607727,
        -0.7697067260742188,
        -1.993069052696228,
        -2.2121191024780273,
        2.3008995056152344,
        1.513658046722412,
        -1.4686393737792969,
        3.4580860137939453,
        0.552994430065155,
        -4.020655155181885,
        1.8176368474960327,
        -0.41845703125,
        -3.986405372619629,
        1.5464545488357544,
        -1.034449577331543,
        -1.1770278215408325,
        1.7696877717971802,
        -6.577490329742432,
        -3.8319005966186523,
        -1.2735605239868164,
        0.7474907040596008,
        -1.9953218698501587,
        -2.9901516437530518,
        -3.157269239425659,
        -0.35187944769859314,
        2.025059700012207,
        -4.350006103515625,
        -6.2411370277404785,
        -0.8921285271644592,
        -1.1460543870925903,
        -2.7269413471221924,
        1.8352283239364624,
        2.4138946533203125,
        -1.692502737045288,
        -1.0333542823791504,
        1.7100876569747925,
        -1.2876378297805786,
        -4.209433078765869,
        -0.20270472764968872,
        -2.7126975059509277,
        0.975840151309967,
        -1.515521764755249,
        -0.5674567222595215,
        1.5582400560379028,
        -0.37445729970932007,
        -1.9020487070083618,
        -3.0193707942962646,
        5.163209915161133,
        3.3198258876800537,
        -4.510958194732666,
        -3.15730619430542,
        1.7520360946655273,
        -1.765094518661499,
        0.045490238815546036,
        2.4420347213745117,
        0.3863672912120819,
        -0.3876491189002991,
        -1.42079758644104,
        -0.25926780700683594,
        1.16005277633667,
        5.2042999267578125,
        3.195009231567383,
        -0.5983411073684692,
        2.7496941089630127,
        0.3514271676540375,
        -4.444149017333984,
        -0.319954514503479,
        2.9840614795684814,
        -1.789088249206543,
        2.807971239089966,
        -0.9200487732887268,
        0.07946986705064774,
        -3.573448657989502,
        6.210535526275635,
        1.3603116273880005,
        3.025289297103882,
        -1.3581279516220093,
        -4.390213966369629,
        3.6348257064819336,
        -2.135593891143799,
        4.956157207489014,
        -0.5133064985275269,
    ];
    X.iter().map(|&v| v as f32).collect()
}

/// On a caller's device the engine installs no uncaptured-error handler, and wgpu's default one
/// panics: what the engine allocates outside a submission (uploads, pieces, value buffers) is
/// made inside error scopes of its own, which on native settle at once, so a refused allocation
/// is a typed error and the engine goes on working.
#[test]
fn a_refused_allocation_on_the_callers_device_is_an_error_not_a_panic() {
    // a device whose buffers hold at most 64 KiB, so that a refusal costs no memory
    let (info, device, queue) = caller_device_with(
        |l| {
            l.max_buffer_size = 1 << 16;
            l.max_storage_buffer_binding_size = 1 << 16;
        },
        wgpu::Features::empty(),
    );
    let max = device.limits().max_buffer_size;
    let engine = Engine::from_device_blocking(&info, device, queue).expect("engine");
    for init in [false, true] {
        engine.allocation_probe(1024, init).expect("a small buffer");
        // (wgpu's create_buffer_init panics on this one; the plain buffer would reach wgpu's
        // default uncaptured-error handler, which panics too)
        match engine.allocation_probe(max + 4, init) {
            Err(Error::Gpu(msg)) => assert!(!msg.is_empty()),
            other => panic!("expected a device error, got {other:?}"),
        }
    }
    let logits = [0.5f32, -1.0, 2.0, 0.0];
    let target = [1.0f32, 0.0, 1.0, 1.0];
    let input = Input::dense(&logits, &target, &[1, 1, 2, 2], Mode::Binary).unwrap();
    let got = engine.evaluate_blocking(&input, &parse(&["bce"]), false).expect("evaluation after the refusal");
    let want = reference::evaluate(&input, &parse(&["bce"])[0]).unwrap();
    assert!((got[0].value - want.value).abs() < 1e-5, "{} against {}", got[0].value, want.value);
}

#[test]
fn lovasz_softmax_whose_weights_pass_the_binding_is_split_though_its_logits_fit() {
    // a device whose storage bindings hold 8 KiB, and two classes: the Lovász weights hold each
    // pixel's log-sum-exp (two words) beside its two weights, twice the logits' bytes. Logits
    // filling the binding were bound whole, and the weights refused ("lovasz weights needs
    // 16384, the device allows 8192"); now pieces of images are sized for the weights.
    let (info, device, queue) =
        caller_device_with(|l| l.max_storage_buffer_binding_size = 8192, wgpu::Features::empty());
    let engine = Engine::from_device_blocking(&info, device, queue).expect("engine");
    let mut r = Rng(31);
    let shape = [4usize, 2, 16, 16];
    let logits: Vec<f32> = (0..2048).map(|_| (r.normal() * 3.0) as f32).collect();
    let labels: Vec<i64> = (0..1024).map(|_| r.below(2) as i64).collect();
    assert_eq!(logits.len() * 4, 8192);
    let input = Input::labels(&logits, &labels, &shape, None).unwrap();
    let ex = parse(&["lovasz:per_image=true", "ce+lovasz:per_image=true"]);
    let check = |got: &[Evaluation], what: &str| assert_reference_values(&input, &ex, got, what);
    check(&engine.evaluate_blocking(&input, &ex, true).unwrap(), "host input");
    let mut batch = engine.batch();
    let p = batch.push(&input, &ex, true).unwrap();
    batch.flush_blocking().unwrap();
    check(&p.wait().unwrap(), "batched");
    let dev = engine.device().unwrap();
    let init = |contents: &[u8]| {
        dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let l = init(bytemuck::cast_slice(&logits));
    let t = init(bytemuck::cast_slice(&labels.iter().map(|&v| v as u32).collect::<Vec<_>>()));
    let b = BufferInput::new(
        BufferSlice::whole(&l),
        TargetBuffer::ClassU32(BufferSlice::whole(&t)),
        &shape,
        Mode::Multiclass,
        None,
    )
    .unwrap();
    let host: Vec<GradOut<'_>> = ex.iter().map(|_| GradOut::Host).collect();
    check(&engine.evaluate_buffers_blocking(&b, &ex, &host).unwrap(), "buffer input");
    // over the whole batch the sort cannot be split: a limit error that says so
    match engine.evaluate_blocking(&input, &parse(&["lovasz"]), true) {
        Err(Error::Limit { what, .. }) => assert!(what.contains("per_image=false"), "{what}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn more_images_than_a_dispatch_dimension_holds_run_in_runs_of_rows() {
    // a device of at most 64 workgroups per dimension, 130 images: the softmax passes take a
    // workgroup row per image (now in dispatches of at most 64 rows, as sigmoid planes were), the
    // reductions of partials and of confusion counts one per image (now folded into z), and a
    // per-image Lovász-Softmax one segment per image and class (pieces of 21 images). 130 images
    // were a limit error ("stats workgroups per dimension"). Images of 32 x 32 take several
    // statistics tiles on the GPU's tiling (set_wide_statistics(false)), so the reductions run.
    let (info, device, queue) =
        caller_device_with(|l| l.max_compute_workgroups_per_dimension = 64, wgpu::Features::empty());
    let engine = Engine::from_device_blocking(&info, device, queue).expect("engine");
    let mut r = Rng(41);
    let check = assert_reference_values;
    let logits: Vec<f32> = (0..130 * 3 * 1024).map(|_| (r.normal() * 3.0) as f32).collect();
    let labels: Vec<i64> = (0..130 * 1024).map(|_| r.below(3) as i64).collect();
    let target: Vec<f32> = (0..130 * 1024).map(|_| f32::from(u8::from(r.uniform() < 0.3))).collect();
    let multiclass = Input::labels(&logits, &labels, &[130, 3, 32, 32], None).unwrap();
    let binary = Input::dense(&logits[..130 * 1024], &target, &[130, 1, 32, 32], Mode::Binary).unwrap();
    for wide in [true, false] {
        engine.set_wide_statistics(wide);
        // (a whole-batch and a per-image Lovász in one evaluation: the pieces the second needs
        // cannot hold the first's sort, a limit error)
        for (input, lists) in [
            (&multiclass, [&["ce", "0.5*ce+0.5*dice", "lovasz"][..], &["lovasz:per_image=true"]]),
            (&binary, [&["bce", "dice", "lovasz"][..], &["bce+lovasz:per_image=true"]]),
        ] {
            for texts in lists {
                let ex = parse(texts);
                check(input, &ex, &engine.evaluate_blocking(input, &ex, true).unwrap(), "one input");
            }
        }
        let ex = parse(&["bce", "dice", "lovasz"]);
        let mut batch = engine.batch();
        let p = batch.push(&binary, &ex, true).unwrap();
        batch.flush_blocking().unwrap();
        check(&binary, &ex, &p.wait().unwrap(), "batched");
        let metrics: Vec<segloss::metrics::Metric> =
            ["iou", "dice:reduction=none", "hd"].iter().map(|t| t.parse().unwrap()).collect();
        for input in [&multiclass, &binary] {
            let (_, got) = engine.evaluate_with_metrics_blocking(input, &[], false, &metrics).unwrap();
            for (m, g) in metrics.iter().zip(&got) {
                let want = segloss::metrics::reference::evaluate(input, m).unwrap();
                assert_eq!(g.as_ref().unwrap(), &want, "{m}");
                let mut running = segloss::metrics::Running::new(m.clone());
                assert_eq!(running.update_blocking(&engine, input).unwrap(), want, "running {m}");
            }
        }
    }
}

#[test]
fn a_lovasz_segment_of_more_tiles_than_a_dispatch_dimension_holds_folds_its_grid() {
    // the workgroup kernels of GPUs take a workgroup per 2048 elements of a segment: past the
    // device's limit in x (65535 on most, so a single segment of 2^27 elements: a hinge over
    // 8 x 4096 x 4096) their grid folds into z. A device of 64 workgroups per dimension folds
    // segments past 2^17 elements; the values and gradient bits equal an unfolded device's.
    let (info, device, queue) =
        caller_device_with(|l| l.max_compute_workgroups_per_dimension = 64, wgpu::Features::empty());
    let folded = Engine::from_device_blocking(&info, device, queue).expect("engine");
    let plain = Engine::gpu_blocking().expect("engine");
    for e in [&folded, &plain] {
        e.set_tile_scatter(false);
    }
    let mut r = Rng(43);
    let logits: Vec<f32> = (0..4 * 3 * 256 * 256).map(|_| (r.normal() * 2.0) as f32).collect();
    let target: Vec<f32> = (0..512 * 512).map(|_| f32::from(u8::from(r.uniform() < 0.3))).collect();
    let labels: Vec<i64> = (0..4 * 256 * 256).map(|_| r.below(3) as i64).collect();
    let hinge = Input::dense(&logits[..512 * 512], &target, &[1, 1, 512, 512], Mode::Binary).unwrap();
    let softmax = Input::labels(&logits, &labels, &[4, 3, 256, 256], None).unwrap();
    for (input, texts) in [(&hinge, ["lovasz", "bce+lovasz"]), (&softmax, ["lovasz", "0.5*ce+0.5*lovasz"])] {
        let ex = parse(&texts);
        let a = folded.evaluate_blocking(input, &ex, true).unwrap();
        let b = plain.evaluate_blocking(input, &ex, true).unwrap();
        for ((x, y), t) in a.iter().zip(&b).zip(texts) {
            let want = reference::evaluate(input, &t.parse().unwrap()).unwrap();
            assert!((x.value - want.value).abs() <= 1e-5 * want.value.abs(), "{t}: {} against {}", x.value, want.value);
            assert_eq!(x.value.to_bits(), y.value.to_bits(), "{t}");
            let (gx, gy) = (x.grad.as_ref().unwrap(), y.grad.as_ref().unwrap());
            assert!(gx.iter().zip(gy).all(|(p, q)| p.to_bits() == q.to_bits()), "{t}: gradient bits");
        }
    }
    // the radix sort alone, one segment of 2^18 keys (128 tiles)
    let keys: Vec<u32> = (0..1u32 << 18).map(|i| i.wrapping_mul(2_654_435_761) >> 3).collect();
    let (sorted, idx) =
        folded.sort_segments_with_blocking(&keys, keys.len(), segloss::internals::SortAlgo::Radix).unwrap();
    let mut want: Vec<u32> = (0..keys.len() as u32).collect();
    want.sort_by_key(|&i| keys[i as usize]);
    assert_eq!(idx, want);
    assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn a_destroyed_device_gives_typed_errors_and_no_panic_or_hang() {
    // what a lost device does: wgpu makes invalid buffers and runs mapping callbacks with an
    // error. Uploads went through wgpu's create_buffer_init, which panicked ("Failed to get
    // mapped range"); an evaluation prepared before the loss reads back an error
    let (info, device, queue) = caller_device();
    let engine = std::sync::Arc::new(Engine::from_device_blocking(&info, device.clone(), queue).expect("engine"));
    let logits: &'static [f32] = vec![0.5f32; 4096].leak();
    let target: &'static [f32] = vec![1.0f32; 4096].leak();
    let input = Input::dense(logits, target, &[1, 1, 64, 64], Mode::Binary).unwrap();
    let ex = parse(&["bce"]);
    engine.evaluate_blocking(&input, &ex, false).expect("before the loss");
    let prep = engine.prepare(input.clone()).unwrap();
    device.destroy();
    let (tx, rx) = std::sync::mpsc::channel();
    let e = engine.clone();
    std::thread::spawn(move || {
        let ex = parse(&["bce"]);
        let prepared = futures::executor::block_on(e.evaluate_prepared(&prep, &ex, segloss::GradMode::Skip)).err();
        let fresh = Input::dense(logits, target, &[1, 1, 64, 64], Mode::Binary).unwrap();
        let asynchronous = futures::executor::block_on(e.evaluate(&fresh, &ex, false)).err();
        let blocking = e.evaluate_blocking(&fresh, &ex, false).err();
        let _ = tx.send([prepared, asynchronous, blocking]);
    });
    let errs = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("no hang");
    for (e, what) in errs.iter().zip(["prepared before the loss", "async", "blocking"]) {
        assert!(matches!(e, Some(Error::Gpu(_))), "{what}: {e:?}");
    }
}

/// (review) On one input, an expression whose value overflows the f32 range fails its own
/// request only: the requests evaluated beside it in the batch keep their values (every request
/// of the input failed with its error; the CPU engine kept them apart already).
#[test]
fn an_overflow_in_a_batch_fails_its_own_request_only() {
    let c = dense_case(118, &[2, 1, 8, 8], Mode::Binary);
    let input = c.whole();
    let (big, plain) = (parse(&["3e38*bce+3e38*bce"]), parse(&["bce", "dice"]));
    for engine in [Engine::gpu_blocking().unwrap(), Engine::cpu(None)] {
        let want = engine.evaluate_blocking(&input, &plain, true).unwrap();
        let mut batch = engine.batch();
        let a = batch.push(&input, &plain, true).unwrap();
        let b = batch.push(&input, &big, true).unwrap();
        let c = batch.push(&input, &plain[..1], false).unwrap();
        batch.flush_blocking().unwrap();
        assert!(matches!(b.wait(), Err(Error::Overflow(_))), "the overflowing request");
        let got = a.wait().expect("the request before it");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.value.to_bits(), w.value.to_bits());
            assert_eq!(g.grad, w.grad);
        }
        assert_eq!(c.wait().expect("the request after it")[0].value.to_bits(), want[0].value.to_bits());
    }
}

/// (review) Evaluations of one input share its statistics pass in a batch; where that pass,
/// over all their expressions, passes a device limit that none of them alone does (llvmpipe's
/// loop limit: ce with label smoothing over 1500 classes beside dice), each is recorded on its
/// own: both give their values, as evaluated alone (both failed with the limit; the folder mode
/// of `eval`, which pushes each loss of a file on its own, gave neither).
#[test]
fn a_limit_of_evaluations_together_is_not_one_of_each() {
    let engine = Engine::gpu_blocking().unwrap();
    let (c, s) = (1500usize, 16usize);
    let mut r = Rng(119);
    let x: Vec<f32> = (0..c * s).map(|_| (r.normal() * 2.0) as f32).collect();
    let t: Vec<i64> = (0..s).map(|_| r.below(c) as i64).collect();
    let input = Input::labels(&x, &t, &[1, c, 4, 4], None).unwrap();
    let (ce, dice) = (parse(&["ce:label_smoothing=0.1"]), parse(&["dice"]));
    let together = engine.evaluate_blocking(&input, &[ce[0].clone(), dice[0].clone()], true);
    if engine.info().name.contains("llvmpipe") && engine.info().backend == "vulkan" {
        assert!(matches!(together, Err(Error::Limit { .. })), "the case must pass llvmpipe's loop limit together");
    }
    let (want_ce, want_dice) =
        (engine.evaluate_blocking(&input, &ce, true).unwrap(), engine.evaluate_blocking(&input, &dice, true).unwrap());
    let mut batch = engine.batch();
    let a = batch.push(&input, &ce, true).unwrap();
    let b = batch.push(&input, &dice, true).unwrap();
    batch.flush_blocking().unwrap();
    for (p, want, what) in [(a, &want_ce, "ce"), (b, &want_dice, "dice")] {
        let got = p.wait().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got[0].value.to_bits(), want[0].value.to_bits(), "{what}");
        assert_eq!(got[0].grad, want[0].grad, "{what}");
    }
    // (review of the fix) two inputs of one shape, coalesced into one recording, each with the
    // two losses pushed on their own (eval's folder mode): all four give their values
    let x2: Vec<f32> = x.iter().map(|v| -0.5 * v).collect();
    let other = Input::labels(&x2, &t, &[1, c, 4, 4], None).unwrap();
    let want_other: Vec<f64> =
        [&ce, &dice].iter().map(|e| engine.evaluate_blocking(&other, e, true).unwrap()[0].value).collect();
    let mut batch = engine.batch();
    let pend: Vec<_> = [(&input, &ce), (&input, &dice), (&other, &ce), (&other, &dice)]
        .iter()
        .map(|(i, e)| batch.push(i, e, true).unwrap())
        .collect();
    batch.flush_blocking().unwrap();
    let wants = [want_ce[0].value, want_dice[0].value, want_other[0], want_other[1]];
    for (k, (p, w)) in pend.into_iter().zip(wants).enumerate() {
        let got = p.wait().unwrap_or_else(|e| panic!("request {k}: {e}"));
        assert_eq!(got[0].value.to_bits(), w.to_bits(), "request {k}");
    }
}

/// (review) Two engines as one, the second's device destroyed: the spread evaluation (whose
/// blocking form waits with `futures::executor::block_on`, not by driving the devices) ends in
/// a typed error, not a hang; the first engine alone still evaluates.
#[test]
fn a_multi_engine_with_a_destroyed_device_gives_a_typed_error() {
    let (info, device, queue) = caller_device();
    let first = Engine::from_device_blocking(&info, device, queue).expect("engine");
    let (info, lost, queue) = caller_device();
    let second = Engine::from_device_blocking(&info, lost.clone(), queue).expect("engine");
    let multi = std::sync::Arc::new(segloss::MultiEngine::from_engines(vec![first, second]).unwrap());
    let mut r = Rng(117);
    let x: Vec<f32> = (0..4 * 3 * 64).map(|_| (r.normal() * 3.0) as f32).collect();
    let t: Vec<i64> = (0..4 * 64).map(|_| r.below(3) as i64).collect();
    let ex = parse(&["0.5*ce+0.5*dice"]);
    let input = Input::labels(&x, &t, &[4, 3, 8, 8], None).unwrap();
    let before = multi.evaluate_blocking(&input, &ex, true).expect("before the loss");
    lost.destroy();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = multi.clone();
    std::thread::spawn(move || {
        let input = Input::labels(&x, &t, &[4, 3, 8, 8], None).unwrap();
        let spread = m.evaluate_blocking(&input, &parse(&["0.5*ce+0.5*dice"]), true).err();
        let alone = m.engines()[0].evaluate_blocking(&input, &parse(&["0.5*ce+0.5*dice"]), true);
        let _ = tx.send((spread, alone.map(|v| v[0].value)));
    });
    let (spread, alone) = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("no hang");
    assert!(matches!(spread, Some(Error::Gpu(_))), "spread over a lost device: {spread:?}");
    let v = alone.expect("the first engine alone");
    assert!((v - before[0].value).abs() <= 1e-6 * v.abs().max(1.0), "{v} against {}", before[0].value);
}

#[test]
fn a_batch_takes_gradient_slices_of_inputs_evaluated_in_pieces() {
    // a device of 8 KiB bindings: a 32 KiB buffer input goes in pieces, whose gradient slice is
    // never bound whole. The batch's own checks of each evaluation refused it ("the gradient
    // slice" past the binding), though evaluate_buffers takes it
    let (info, device, queue) =
        caller_device_with(|l| l.max_storage_buffer_binding_size = 8192, wgpu::Features::empty());
    let engine = Engine::from_device_blocking(&info, device.clone(), queue).expect("engine");
    let c = dense_case(113, &[4, 2, 32, 32], Mode::Multilabel);
    let numel = c.logits.len() as u64;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let make = |data: &[u32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let (l, t, g) = (
        make(bytemuck::cast_slice(&c.logits)),
        make(bytemuck::cast_slice(&c.dense)),
        make(&vec![0u32; numel as usize]),
    );
    let b = BufferInput::new(
        BufferSlice::whole(&l),
        TargetBuffer::Dense(BufferSlice::whole(&t)),
        &c.shape,
        Mode::Multilabel,
        None,
    )
    .unwrap();
    let ex = parse(&["bce+dice"]);
    let want = engine.evaluate_blocking(&c.whole(), &ex, true).unwrap();
    let mut batch = engine.batch();
    let p = batch.push_buffers(&b, &ex, &[GradOut::Write(BufferSlice::whole(&g))]).unwrap();
    batch.flush_blocking().unwrap();
    let got = p.wait().unwrap();
    assert!((got[0].value - want[0].value).abs() <= 1e-6 * want[0].value.abs());
}

/// Each evaluation of `ex` on `input` against the reference: its value within f32 tolerance, its
/// gradient within 1e-5 everywhere.
fn assert_reference_values(input: &Input, ex: &[LossExpr], got: &[Evaluation], what: &str) {
    for (e, g) in ex.iter().zip(got) {
        let want = reference::evaluate(input, e).unwrap();
        assert!(
            (g.value - want.value).abs() <= 1e-5 + 1e-4 * want.value.abs(),
            "{what} '{e}': {} against {}",
            g.value,
            want.value
        );
        let grad = g.grad.as_ref().expect("gradient");
        let worst = grad.iter().zip(&want.grad).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{what} '{e}': gradient off by {worst}");
    }
}

#[test]
fn an_ignore_index_of_zero_ignores_negative_zero_targets_in_buffers_as_on_the_host() {
    // a host input compares a dense target's value with the ignore index, so -0.0 == 0 is
    // ignored; a buffer input compared the words, and counted -0.0 as a target of 0
    let (engine, device, _) = caller_engine();
    let c = dense_case(117, &[2, 1, 8, 8], Mode::Binary);
    let target: Vec<f32> =
        c.dense.iter().enumerate().map(|(i, &t)| if i % 3 == 0 && t == 0.0 { -0.0 } else { t }).collect();
    assert!(target.iter().any(|t| t.to_bits() == 0x8000_0000));
    let host =
        Input::new(Cow::Borrowed(&c.logits), Target::Dense(Cow::Borrowed(&target)), &c.shape, Mode::Binary, Some(0))
            .unwrap();
    let l = buffer_with(device, bytemuck::cast_slice(&c.logits), 0);
    let t = buffer_with(device, bytemuck::cast_slice(&target), 0);
    let numel = c.logits.len() as u64;
    let b = BufferInput::new(
        BufferSlice::new(&l, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&t, 0, numel)),
        &c.shape,
        Mode::Binary,
        Some(0),
    )
    .unwrap();
    let ex = parse(&["bce", "dice"]);
    let want = engine.evaluate_blocking(&host, &ex, true).unwrap();
    let got = engine.evaluate_buffers_blocking(&b, &ex, &[GradOut::Host, GradOut::Host]).unwrap();
    for ((g, w), e) in got.iter().zip(&want).zip(&ex) {
        assert_eq!(g.value.to_bits(), w.value.to_bits(), "{e}");
        assert_eq!(g.grad, w.grad, "{e}");
    }
}

#[test]
fn count_metrics_whose_counts_pass_the_binding_take_the_reference() {
    // a device whose storage bindings hold 8 KiB, 6 images of 2x2 pixels and 16 classes: logits
    // of 1.5 KiB and statistics sums of 6 KiB fit, but the 64-bit confusion counts (16 x 16
    // cells per image) take 12 KiB. The count metrics were a limit error ("confusion counts
    // needs 12288, the device allows 8192"); now they come from the reference, the losses still
    // from the device.
    let (info, device, queue) =
        caller_device_with(|l| l.max_storage_buffer_binding_size = 8192, wgpu::Features::empty());
    let engine = Engine::from_device_blocking(&info, device, queue).expect("engine");
    let mut r = Rng(32);
    let metrics: Vec<segloss::metrics::Metric> =
        ["iou", "dice@monai:reduction=mean_batch", "confusion"].iter().map(|t| t.parse().unwrap()).collect();
    let shape = [6usize, 16, 2, 2];
    let logits: Vec<f32> = (0..6 * 64).map(|_| (r.normal() * 2.0) as f32).collect();
    let labels: Vec<i64> = (0..6 * 4).map(|_| r.below(16) as i64).collect();
    let input = Input::labels(&logits, &labels, &shape, None).unwrap();
    let ex = parse(&["ce+dice"]);
    let (losses, values) = engine.evaluate_with_metrics_blocking(&input, &ex, true, &metrics).unwrap();
    assert_reference_values(&input, &ex, &losses, "losses beside the metrics");
    for (m, v) in metrics.iter().zip(values) {
        let want = segloss::metrics::reference::evaluate(&input, m).unwrap();
        assert_eq!(format!("{:?}", v.unwrap()), format!("{want:?}"), "{m:?}");
    }
    let counts = engine.counts_blocking(&input, &metrics[0]).unwrap();
    assert_eq!(format!("{counts:?}"), format!("{:?}", segloss::metrics::reference::counts(&input, 0.0).unwrap()));
    // (16 such images: the statistics sums themselves pass the binding, one buffer over the
    // whole batch even in pieces: a typed limit error that names them)
    let logits = [logits.clone(), logits.clone(), logits[..256].to_vec()].concat();
    let labels = [labels.clone(), labels.clone(), labels[..16].to_vec()].concat();
    let input = Input::labels(&logits, &labels, &[16, 16, 2, 2], None).unwrap();
    match engine.evaluate_blocking(&input, &ex, true) {
        Err(Error::Limit { what, .. }) => assert!(what.contains("statistics sums"), "{what}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// (review) A buffer the device refuses at submission (here destroyed by the caller; a buffer
/// still mapped, or of another device, alike) passes every check the engine can make before it,
/// and failed the batch's one submission: every item of the batch lost its result. A failed
/// submission ran nothing, so each of its items is now evaluated on its own: only the bad one
/// fails.
#[test]
fn a_buffer_the_device_refuses_fails_its_own_item_of_a_batch() {
    let (engine, device, _) = caller_engine();
    let good = dense_case(121, &[2, 1, 16, 16], Mode::Binary);
    let other = dense_case(122, &[1, 1, 8, 12], Mode::Binary);
    let numel = good.logits.len() as u64;
    let gone = buffer_with(device, bytemuck::cast_slice(&good.logits), 0);
    let tgt = buffer_with(device, bytemuck::cast_slice(&good.dense), 0);
    let bad = BufferInput::new(
        BufferSlice::new(&gone, 0, numel),
        TargetBuffer::Dense(BufferSlice::new(&tgt, 0, numel)),
        &good.shape,
        Mode::Binary,
        None,
    )
    .unwrap();
    gone.destroy();
    let exprs = parse(&["bce", "dice"]);
    let (a_in, c_in) = (good.whole(), other.whole());
    let want_a = engine.evaluate_blocking(&a_in, &exprs, true).unwrap();
    let want_c = engine.evaluate_blocking(&c_in, &exprs, false).unwrap();
    let mut batch = engine.batch();
    let a = batch.push(&a_in, &exprs, true).unwrap();
    let b = batch.push_buffers(&bad, &exprs, &[GradOut::Skip, GradOut::Skip]).unwrap();
    let c = batch.push(&c_in, &exprs, false).unwrap();
    let _ = batch.flush_blocking();
    assert_same(&a.wait().expect("the host item before it"), &want_a, "a");
    assert_same(&c.wait().expect("the host item after it"), &want_c, "c");
    assert!(matches!(b.wait(), Err(Error::Gpu(_))), "the destroyed buffer's item");
    // every item of the failed submission failed again on its own: the flush says so too
    let mut batch = engine.batch();
    let b1 = batch.push_buffers(&bad, &exprs, &[GradOut::Skip, GradOut::Skip]).unwrap();
    let b2 = batch.push_buffers(&bad, &exprs[..1], &[GradOut::Skip]).unwrap();
    assert!(matches!(batch.flush_blocking(), Err(Error::Gpu(_))), "the flush of bad items only");
    assert!(b1.wait().is_err() && b2.wait().is_err());
}

/// (review) A flush future dropped after its submission (polled once, then cancelled) failed
/// its evaluations with "the batch was dropped before it was flushed", which was not so: the
/// submission ran, and gradients into the caller's buffers may have been written.
#[test]
fn a_flush_dropped_midway_says_so() {
    let engine = common::gpu();
    let c = dense_case(131, &[2, 1, 16, 16], Mode::Binary);
    let input = c.whole();
    let mut batch = engine.batch();
    let p = batch.push(&input, &parse(&["dice"]), false).unwrap();
    let mut flush = Box::pin(batch.flush());
    let waker = futures::task::noop_waker();
    let first = std::future::Future::poll(flush.as_mut(), &mut std::task::Context::from_waker(&waker));
    drop(flush);
    assert!(p.is_flushed());
    match p.wait() {
        Err(Error::Input(m)) => assert!(m.contains("flush was dropped before it completed"), "{m}"),
        // (an adapter that finished within the first poll)
        other => assert!(first.is_ready() && other.is_ok(), "{other:?}"),
    }
}
