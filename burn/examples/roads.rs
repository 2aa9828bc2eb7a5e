//! The experiment behind segloss: does an overlap loss beside BCE train a better road model than
//! plain cross-entropy when roads are 4.5% of the pixels?
//!
//! A small U-Net in burn is trained on synthetic aerial scenes (`segloss_data::synth::road_scene`:
//! thin curved roads, textured fields, road-coloured roofs, road-shaped tracks, a river, trees,
//! noise) with each loss below, from the same initialization, for a few seeds, and evaluated on
//! held-out scenes from other seeds: IoU of the road class and mIoU (road and background).
//!
//! ```text
//! cargo run --release -p segloss-burn --example roads -- --out docs/roads      # the full run
//! cargo run --release -p segloss-burn --example roads -- --quick               # seconds (CI)
//! cargo run --release -p segloss-burn --example roads -- --step-timing         # loss cost in a step
//! ```
//!
//! It prints a line per epoch (training loss, held-out IoU and mIoU, time per step), and writes
//! `roads.csv`, `roads.png` (held-out road IoU per epoch, mean over seeds) and `samples.png`
//! (held-out scenes, their roads, and each loss's predictions) into `--out`.

use std::error::Error;
use std::io::Write;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use segloss::Mode;
use segloss_burn::SegLoss;

#[derive(Parser, Debug)]
#[command(about = "Train a small U-Net on synthetic roads with several losses and compare them")]
struct Args {
    /// CI mode: tiny images, two epochs, one seed; fails unless every loss falls.
    #[arg(long)]
    quick: bool,
    /// Time one training step with segloss's bce+dice against the same loss in burn tensor ops.
    #[arg(long)]
    step_timing: bool,
    /// burn device: `flex` (CPU) or `wgpu` (shared with segloss: no host copies).
    #[arg(long, default_value = "flex")]
    device: String,
    /// Seeds (model initialization and batch order).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Training scenes.
    #[arg(long, default_value_t = 256)]
    train: usize,
    /// Held-out scenes (other seeds than the training scenes').
    #[arg(long, default_value_t = 64)]
    held_out: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Width of the first U-Net level.
    #[arg(long, default_value_t = 8)]
    width: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Losses to compare (names below).
    #[arg(long, value_delimiter = ',', default_value = "ce,bce,bce+dice,bce+lovasz,ce+lovasz")]
    losses: Vec<String>,
    /// Where the CSV and the plot go.
    #[arg(long, default_value = "target/roads")]
    out: std::path::PathBuf,
}

/// A loss of the comparison: the segloss text, its mode, and the model's output channels.
struct Setup {
    name: String,
    mode: Mode,
    classes: usize,
}

fn setup(name: &str) -> Result<Setup, Box<dyn Error>> {
    // two-class softmax losses see the road as class 1; the sigmoid ones a single logit
    let multiclass = name.split('+').any(|t| t == "ce") && !name.contains("bce");
    let _: segloss::LossExpr = name.parse()?;
    Ok(Setup {
        name: name.to_string(),
        mode: if multiclass { Mode::Multiclass } else { Mode::Binary },
        classes: if multiclass { 2 } else { 1 },
    })
}

/// A U-Net of three levels: two 3x3 convolutions per level, max pooling down, nearest
/// upsampling and skip connections up.
#[derive(Module, Debug)]
struct UNet {
    e1: [Conv2d; 2],
    e2: [Conv2d; 2],
    e3: [Conv2d; 2],
    d2: [Conv2d; 2],
    d1: [Conv2d; 2],
    head: Conv2d,
    pool: MaxPool2d,
    up: Interpolate2d,
}

fn conv(i: usize, o: usize, k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [k, k]).with_padding(PaddingConfig2d::Same).init(device)
}

fn pair(i: usize, o: usize, device: &Device) -> [Conv2d; 2] {
    [conv(i, o, 3, device), conv(o, o, 3, device)]
}

impl UNet {
    fn new(w: usize, classes: usize, device: &Device) -> UNet {
        UNet {
            e1: pair(3, w, device),
            e2: pair(w, 2 * w, device),
            e3: pair(2 * w, 4 * w, device),
            d2: pair(6 * w, 2 * w, device),
            d1: pair(3 * w, w, device),
            head: conv(w, classes, 1, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            up: Interpolate2dConfig::new()
                .with_scale_factor(Some([2.0, 2.0]))
                .with_mode(InterpolateMode::Nearest)
                .init(),
        }
    }

    fn block(b: &[Conv2d; 2], x: Tensor<4>) -> Tensor<4> {
        relu(b[1].forward(relu(b[0].forward(x))))
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s1 = Self::block(&self.e1, x);
        let s2 = Self::block(&self.e2, self.pool.forward(s1.clone()));
        let s3 = Self::block(&self.e3, self.pool.forward(s2.clone()));
        let u2 = Self::block(&self.d2, Tensor::cat(vec![self.up.forward(s3), s2], 1));
        let u1 = Self::block(&self.d1, Tensor::cat(vec![self.up.forward(u2), s1], 1));
        self.head.forward(u1)
    }
}

/// Scenes as tensors: images `[N, 3, H, W]`, masks `[N, 1, H, W]` and class indices `[N, H, W]`.
struct Data {
    n: usize,
    size: usize,
    image: Vec<f32>,
    mask: Vec<f32>,
}

impl Data {
    fn new(n: usize, size: usize, seed: u64) -> Result<Data, segloss::Error> {
        let b = segloss_data::synth::road_scene(n, size, size, seed)?;
        Ok(Data { n, size, image: b.image, mask: b.mask })
    }

    fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<4>, Tensor<4>, Tensor<3, Int>) {
        let (s, hw) = (self.size, self.size * self.size);
        let mut img = Vec::with_capacity(idx.len() * 3 * hw);
        let mut m = Vec::with_capacity(idx.len() * hw);
        for &i in idx {
            img.extend_from_slice(&self.image[i * 3 * hw..(i + 1) * 3 * hw]);
            m.extend_from_slice(&self.mask[i * hw..(i + 1) * hw]);
        }
        let labels: Vec<i64> = m.iter().map(|&v| v as i64).collect();
        let n = idx.len();
        (
            Tensor::from_data(TensorData::new(img, [n, 3, s, s]), device),
            Tensor::from_data(TensorData::new(m, [n, 1, s, s]), device),
            Tensor::from_data(TensorData::new(labels, [n, s, s]), device),
        )
    }
}

/// Road IoU and mIoU (road, background) of the model on `data`, pixels pooled over the set.
fn evaluate(model: &UNet, data: &Data, batch: usize, device: &Device) -> Result<(f64, f64), Box<dyn Error>> {
    let (mut tp, mut fp, mut fn_, mut tn) = (0u64, 0u64, 0u64, 0u64);
    let idx: Vec<usize> = (0..data.n).collect();
    for chunk in idx.chunks(batch) {
        let (x, m, _) = data.batch(chunk, device);
        let out = model.forward(x);
        let road = if out.dims()[1] == 1 {
            out.greater_elem(0.0).float()
        } else {
            let [n, _, h, w] = out.dims();
            out.argmax(1).float().reshape([n, 1, h, w])
        };
        let p = road.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let g = m.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        for (p, g) in p.iter().zip(&g) {
            match (*p > 0.5, *g > 0.5) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => tn += 1,
            }
        }
    }
    let iou = |a: u64, b: u64, c: u64| if a + b + c == 0 { 1.0 } else { a as f64 / (a + b + c) as f64 };
    let road = iou(tp, fp, fn_);
    let back = iou(tn, fn_, fp);
    Ok((road, (road + back) / 2.0))
}

/// A permutation of `0..n` from `seed` (xorshift).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// One row of the results.
struct Row {
    loss: String,
    seed: u64,
    epoch: usize,
    train_loss: f64,
    iou: f64,
    miou: f64,
    ms_per_step: f64,
}

fn loss_of(
    loss: &SegLoss,
    st: &Setup,
    out: Tensor<4>,
    m: Tensor<4>,
    labels: Tensor<3, Int>,
) -> Result<Tensor<1>, Box<dyn Error>> {
    Ok(match st.mode {
        Mode::Multiclass => loss.forward_classes(out, labels)?,
        _ => loss.forward(out, m)?,
    })
}

#[allow(clippy::too_many_arguments)]
fn train(
    st: &Setup,
    seed: u64,
    args: &Args,
    train: &Data,
    held: &Data,
    device: &Device,
    engine: &std::sync::Arc<segloss::Engine>,
    rows: &mut Vec<Row>,
) -> Result<Vec<f32>, Box<dyn Error>> {
    let loss = SegLoss::with_engine(st.name.parse()?, st.mode, engine.clone());
    device.seed(seed);
    let mut model = UNet::new(args.width, st.classes, device);
    let mut optim = AdamConfig::new().init();
    for epoch in 1..=args.epochs {
        let order = shuffled(train.n, seed * 1000 + epoch as u64);
        let (mut sum, mut steps) = (0.0, 0usize);
        let t0 = Instant::now();
        for idx in order.chunks(args.batch) {
            let (x, m, labels) = train.batch(idx, device);
            let out = model.forward(x);
            let l = loss_of(&loss, st, out, m, labels)?;
            let grads = l.backward();
            sum += f64::from(l.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?[0]);
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(args.lr, model, grads);
            steps += 1;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let (iou, miou) = evaluate(&model.clone().valid(), held, args.batch, device)?;
        let row =
            Row { loss: st.name.clone(), seed, epoch, train_loss: sum / steps as f64, iou, miou, ms_per_step: ms };
        eprintln!(
            "{:>11} seed {seed} epoch {epoch:>3}: loss {:.4}  held-out road IoU {:.4}  mIoU {:.4}  {:.1} ms/step",
            row.loss, row.train_loss, row.iou, row.miou, row.ms_per_step
        );
        rows.push(row);
    }
    // the trained model's road predictions on the first held-out scenes (the samples figure)
    let k = held.n.min(SAMPLES);
    let idx: Vec<usize> = (0..k).collect();
    let out = model.valid().forward(held.batch(&idx, device).0);
    let road = if st.classes == 1 { out.greater_elem(0.0).float() } else { out.argmax(1).float() };
    Ok(road.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?)
}

/// Held-out scenes in the samples figure.
const SAMPLES: usize = 4;

/// The samples figure: per held-out scene (a row), the image, the true roads, and each loss's
/// predicted roads (seed 1).
fn samples(held: &Data, preds: &[(String, Vec<f32>)], path: &std::path::Path) -> Result<(), Box<dyn Error>> {
    use plotters::prelude::*;
    let (s, k) = (held.size, held.n.min(SAMPLES));
    let cell = 2 * s + 8;
    let cols = 2 + preds.len();
    let root = BitMapBackend::new(path, ((cols * cell) as u32, (k * cell + 28) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let heads: Vec<String> =
        ["scene", "roads"].iter().map(|h| h.to_string()).chain(preds.iter().map(|(n, _)| n.clone())).collect();
    for (c, h) in heads.iter().enumerate() {
        root.draw(&Text::new(h.clone(), ((c * cell + 4) as i32, 6), ("sans-serif", 16)))?;
    }
    let hw = s * s;
    for r in 0..k {
        for c in 0..cols {
            for y in 0..s {
                for x in 0..s {
                    let i = y * s + x;
                    let rgb = match c {
                        0 => {
                            let v = |ch: usize| (held.image[(r * 3 + ch) * hw + i] * 255.0) as u8;
                            RGBColor(v(0), v(1), v(2))
                        }
                        1 => mono(held.mask[r * hw + i]),
                        _ => {
                            let p = preds[c - 2].1[r * hw + i];
                            let g = held.mask[r * hw + i];
                            // white: road found, red: road missed, blue: false road
                            match (p > 0.5, g > 0.5) {
                                (true, true) => WHITE,
                                (false, true) => RGBColor(220, 40, 40),
                                (true, false) => RGBColor(60, 110, 255),
                                _ => BLACK,
                            }
                        }
                    };
                    let (x0, y0) = ((c * cell + 2 * x) as i32, (28 + r * cell + 2 * y) as i32);
                    for (dx, dy) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        root.draw_pixel((x0 + dx, y0 + dy), &rgb)?;
                    }
                }
            }
        }
    }
    root.present()?;
    Ok(())
}

fn mono(v: f32) -> plotters::style::RGBColor {
    let v = (v * 255.0) as u8;
    plotters::style::RGBColor(v, v, v)
}

/// The held-out road IoU per epoch, mean over seeds, one line per loss.
fn plot(rows: &[Row], losses: &[Setup], path: &std::path::Path) -> Result<(), Box<dyn Error>> {
    use plotters::prelude::*;
    let epochs = rows.iter().map(|r| r.epoch).max().unwrap_or(1);
    plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| "the plot's font did not load")?;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.iou).fold(0.0f64, f64::max).max(0.05) * 1.08;
    let mut chart = ChartBuilder::on(&root)
        .caption("held-out road IoU per epoch (mean over seeds)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..epochs as f64, 0f64..top.min(1.0))?;
    chart.configure_mesh().x_desc("epoch").y_desc("road IoU").draw()?;
    for (k, st) in losses.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let pts: Vec<(f64, f64)> = (1..=epochs)
            .filter_map(|e| {
                let v: Vec<f64> = rows.iter().filter(|r| r.loss == st.name && r.epoch == e).map(|r| r.iou).collect();
                (!v.is_empty()).then(|| (e as f64, v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(st.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// The same BCE+Dice in burn tensor operations (smp's dice: batch-pooled, eps 1e-7, no smoothing;
/// its term is kept only when the batch has road pixels).
fn burn_bce_dice(x: Tensor<4>, g: Tensor<4>) -> Tensor<1> {
    let bce = (relu(x.clone()) - x.clone() * g.clone() + (x.clone().abs().neg().exp() + 1.0).log()).mean();
    let p = sigmoid(x);
    let inter = (p.clone() * g.clone()).sum();
    let card = p.sum() + g.clone().sum();
    let dice = (inter * 2.0).div(card.clamp_min(1e-7)).neg() + 1.0;
    // (zero when the batch has no road pixel, as smp)
    let present = g.sum().greater_elem(0.0).float();
    bce + dice * present
}

/// Mean time of a training step (forward, loss, backward, optimizer) with segloss's loss and with
/// the burn-ops one, alternating, after warm-up.
fn step_timing(args: &Args, device: &Device, engine: &std::sync::Arc<segloss::Engine>) -> Result<(), Box<dyn Error>> {
    let data = Data::new(args.batch, args.size, 1)?;
    let idx: Vec<usize> = (0..args.batch).collect();
    let seg = SegLoss::with_engine("bce+dice".parse()?, Mode::Binary, engine.clone());
    device.seed(1);
    let mut model = UNet::new(args.width, 1, device);
    let mut optim = AdamConfig::new().init();
    let reps = if args.quick { 2 } else { 12 };
    let (mut t_seg, mut t_burn, mut v_seg, mut v_burn) = (0.0, 0.0, 0.0, 0.0);
    for rep in 0..reps + 2 {
        for which in [0, 1] {
            let (x, m, _) = data.batch(&idx, device);
            let t0 = Instant::now();
            let out = model.forward(x);
            let l = if which == 0 { seg.forward(out, m)? } else { burn_bce_dice(out, m) };
            let grads = l.backward();
            let v = f64::from(l.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?[0]);
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(0.0, model, grads);
            device.sync()?;
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            if rep >= 2 {
                if which == 0 {
                    (t_seg, v_seg) = (t_seg + dt, v);
                } else {
                    (t_burn, v_burn) = (t_burn + dt, v);
                }
            }
        }
    }
    // the loss alone: forward and backward on fixed logits, the gradient waited for
    let (x, m, _) = data.batch(&idx, device);
    let logits = model.forward(x).detach();
    let (mut l_seg, mut l_burn) = (0.0, 0.0);
    for rep in 0..reps + 2 {
        for which in [0, 1] {
            let x = logits.clone().require_grad();
            let t0 = Instant::now();
            let l = if which == 0 { seg.forward(x.clone(), m.clone())? } else { burn_bce_dice(x.clone(), m.clone()) };
            let g = x.grad(&l.backward()).ok_or("no gradient")?;
            device.sync()?;
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            drop(g);
            if rep >= 2 {
                if which == 0 {
                    l_seg += dt;
                } else {
                    l_burn += dt;
                }
            }
        }
    }
    let (la, lb) = (l_seg / reps as f64, l_burn / reps as f64);
    println!("loss alone (forward and backward): segloss {la:.2} ms, burn-ops {lb:.2} ms (ratio {:.3})", la / lb);
    let (a, b) = (t_seg / reps as f64, t_burn / reps as f64);
    println!(
        "training step, {} images {}x{}, U-Net width {}, burn on {} (segloss engine: {}): segloss bce+dice {a:.2} ms, burn-ops bce+dice {b:.2} ms (ratio {:.3}); values {v_seg:.6} vs {v_burn:.6}",
        args.batch,
        args.size,
        args.size,
        args.width,
        args.device,
        engine.info().name,
        a / b
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = Args::parse();
    if args.quick {
        args.seeds = 1;
        args.epochs = 2;
        args.train = 32;
        args.held_out = 16;
        args.size = 32;
        args.batch = 8;
    }
    let (device, engine) = match args.device.as_str() {
        "flex" => (Device::flex().autodiff(), std::sync::Arc::new(segloss::Engine::new_blocking()?)),
        "wgpu" => {
            let (d, e) = segloss_burn::wgpu::init(&Default::default())?;
            (d.autodiff(), e)
        }
        other => return Err(format!("unknown device {other:?}: flex or wgpu").into()),
    };
    eprintln!("burn device {:?}; segloss engine on {}", device, engine.info().name);
    if args.step_timing {
        return step_timing(&args, &device, &engine);
    }
    let losses: Vec<Setup> = args.losses.iter().map(|l| setup(l)).collect::<Result<_, _>>()?;
    let train_set = Data::new(args.train, args.size, 1)?;
    let held = Data::new(args.held_out, args.size, 1_000_003)?;
    let fg = held.mask.iter().sum::<f32>() / held.mask.len() as f32;
    eprintln!(
        "{} training scenes, {} held-out scenes of {}x{} ({:.1}% road)",
        args.train,
        args.held_out,
        args.size,
        args.size,
        100.0 * fg
    );
    let mut rows = Vec::new();
    let mut preds = Vec::new();
    for seed in 1..=args.seeds {
        for st in &losses {
            let p = train(st, seed, &args, &train_set, &held, &device, &engine, &mut rows)?;
            if seed == 1 {
                preds.push((st.name.clone(), p));
            }
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let mut csv = std::fs::File::create(args.out.join("roads.csv"))?;
    writeln!(csv, "loss,seed,epoch,train_loss,road_iou,miou,ms_per_step")?;
    for r in &rows {
        writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{:.6},{:.3}",
            r.loss, r.seed, r.epoch, r.train_loss, r.iou, r.miou, r.ms_per_step
        )?;
    }
    plot(&rows, &losses, &args.out.join("roads.png"))?;
    samples(&held, &preds, &args.out.join("samples.png"))?;
    // the table: last epoch, mean and each seed
    println!("| loss | road IoU (mean) | mIoU (mean) | road IoU per seed | ms/step |");
    println!("|---|---|---|---|---|");
    for st in &losses {
        let last: Vec<&Row> = rows.iter().filter(|r| r.loss == st.name && r.epoch == args.epochs).collect();
        let mean = |f: fn(&Row) -> f64| last.iter().map(|r| f(r)).sum::<f64>() / last.len().max(1) as f64;
        let per: Vec<String> = last.iter().map(|r| format!("{:.4}", r.iou)).collect();
        println!(
            "| {} | {:.4} | {:.4} | {} | {:.1} |",
            st.name,
            mean(|r| r.iou),
            mean(|r| r.miou),
            per.join(", "),
            mean(|r| r.ms_per_step)
        );
    }
    if args.quick {
        // the check CI makes: every loss fell from the first epoch to the last
        for st in &losses {
            let of = |e: usize| rows.iter().find(|r| r.loss == st.name && r.epoch == e).map(|r| r.train_loss);
            match (of(1), of(args.epochs)) {
                (Some(a), Some(b)) if b < a => {}
                (a, b) => return Err(format!("{}: the training loss did not fall ({a:?} -> {b:?})", st.name).into()),
            }
        }
        eprintln!("quick: every loss fell");
    }
    eprintln!("wrote {}", args.out.join("roads.csv").display());
    Ok(())
}
