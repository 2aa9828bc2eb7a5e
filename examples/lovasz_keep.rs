//! How much of the Lovász sorts the engine skips on the benchmarks' synthetic data, computed on the
//! CPU in f64. Lovász-Softmax on the multiclass scene: per class, the share of pixels whose error is
//! at least the smallest foreground error (those are sorted; the background below it has Jaccard
//! weight zero and is left out). Lovász hinge on the road batch: the share of positive errors.
//!
//! `cargo run --release --example lovasz_keep -- 4 21 256 256` (scene N C H W; roads 8 x 512 x 512)

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let [n, c, h, w] = match args[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => [4, 21, 256, 256],
    };
    let b = segloss_data::synth::scene(n, c, h, w, 7).expect("a batch of the benchmarks' sizes"); // the data `segloss bench` uses
    let s = h * w;
    let (mut kept, mut total) = (0usize, 0usize);
    let mut msd = Msd::default();
    for k in 0..c {
        let mut errs = Vec::with_capacity(n * s);
        let mut min_fg = f64::INFINITY;
        for img in 0..n {
            for i in 0..s {
                let x = |j: usize| f64::from(b.logits[(img * c + j) * s + i]);
                let m = (0..c).map(x).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = (0..c).map(|j| (x(j) - m).exp()).sum();
                let p = (x(k) - m).exp() / z;
                let fg = b.labels[img * s + i] == k as i64;
                let e = if fg { 1.0 - p } else { p };
                if fg {
                    min_fg = min_fg.min(e);
                }
                errs.push(e);
            }
        }
        let keep = if min_fg.is_finite() { errs.iter().filter(|&&e| e >= min_fg).count() } else { 1 };
        println!(
            "class {k:>2}: smallest foreground error {min_fg:.2e}, sorted {:5.1}%",
            100.0 * keep as f64 / errs.len() as f64
        );
        let sorted: Vec<f32> = errs.iter().filter(|&&e| e >= min_fg).map(|&e| e as f32).collect();
        msd.add(&sorted);
        kept += keep;
        total += errs.len();
    }
    println!("all classes: {kept} of {total} keys sorted ({:.1}%)", 100.0 * kept as f64 / total as f64);
    msd.report("Lovász-Softmax kept keys");

    let r = segloss_data::synth::roads(8, 512, 512, 7).expect("a batch of the benchmarks' sizes"); // `segloss bench --shape 8x1x512x512`
    let pos =
        r.logits.iter().zip(&r.target).filter(|(&x, &g)| 1.0 - f64::from(x) * (2.0 * f64::from(g) - 1.0) > 0.0).count();
    println!(
        "hinge, roads 8x1x512x512: {pos} of {} errors positive ({:.1}%)",
        r.logits.len(),
        100.0 * pos as f64 / r.logits.len() as f64
    );
    for (what, len) in [
        ("hinge positive errors, one segment (per_image=false)", r.logits.len()),
        ("hinge positive errors, per image", 512 * 512),
    ] {
        let mut msd = Msd::default();
        for (x, g) in r.logits.chunks(len).zip(r.target.chunks(len)) {
            msd.add(
                &x.iter().zip(g).map(|(&x, &g)| 1.0 - x * (2.0 * g - 1.0)).filter(|&e| e > 0.0).collect::<Vec<_>>(),
            );
        }
        msd.report(what);
    }
}

/// Keys counted by whether their MSD bucket (top `BITS[j]` bits of the key) outgrows a local sort.
#[derive(Default)]
struct Msd {
    keys: usize,
    oversized: [usize; 3],
    largest: [usize; 3],
}

const BITS: [u32; 3] = [8, 12, 16];
const LOCAL: usize = 2048;

impl Msd {
    /// One segment's keys (non-negative f32s, whose bits order them).
    fn add(&mut self, seg: &[f32]) {
        self.keys += seg.len();
        for (j, bits) in BITS.iter().enumerate() {
            let mut count = std::collections::HashMap::<u32, usize>::new();
            for k in seg {
                *count.entry(k.to_bits() >> (32 - bits)).or_default() += 1;
            }
            self.oversized[j] += count.values().filter(|&&c| c > LOCAL).sum::<usize>();
            self.largest[j] = self.largest[j].max(count.values().copied().max().unwrap_or(0));
        }
    }

    fn report(&self, what: &str) {
        for (j, bits) in BITS.iter().enumerate() {
            println!(
                "MSD split on the top {bits:>2} bits, {what}: {:5.1}% of keys in buckets over {LOCAL} (largest bucket {})",
                100.0 * self.oversized[j] as f64 / self.keys.max(1) as f64,
                self.largest[j]
            );
        }
    }
}
