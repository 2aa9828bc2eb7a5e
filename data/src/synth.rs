//! Synthetic batches for the demo, the benchmarks and the web page: thin roads on a large
//! background (the imbalance of the DeepGlobe road-extraction task), and multiclass scenes.
//!
//! ```
//! let b = segloss_data::synth::roads(2, 64, 64, 7).unwrap();
//! let fg = b.target.iter().sum::<f32>() / b.target.len() as f32;
//! assert!(fg > 0.02 && fg < 0.08);
//! // more elements than an input may have (2^31 - 1), or than a usize holds: an error
//! assert!(segloss_data::synth::roads(1 << 20, 1 << 10, 1 << 10, 7).is_err());
//! ```

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use segloss::Error;

/// The elements of a synthetic batch of `dims`, checked before anything is allocated: at most
/// what a segloss input may hold (2^31 - 1), and no overflow on the way (a wrapped product gave
/// an empty batch, then a panic indexing it).
fn elements(what: &str, dims: &[usize]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= u32::MAX as usize / 2)
        .ok_or_else(|| Error::Shape(format!("{what} {dims:?}: more elements than an input may have (2^31 - 1)")))
}

/// A binary batch `[N, 1, H, W]`: targets and a noisy prediction's logits.
#[derive(Clone, Debug)]
pub struct DenseBatch {
    /// `[N, 1, H, W]`
    pub shape: Vec<usize>,
    /// Logits of an imperfect prediction.
    pub logits: Vec<f32>,
    /// 0/1 road mask.
    pub target: Vec<f32>,
}

/// A multiclass batch `[N, C, H, W]` with class indices `[N, H, W]`.
#[derive(Clone, Debug)]
pub struct LabelBatch {
    /// `[N, C, H, W]`
    pub shape: Vec<usize>,
    /// Logits of an imperfect prediction.
    pub logits: Vec<f32>,
    /// Class indices.
    pub labels: Vec<i64>,
}

fn normal(rng: &mut SmallRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(1e-7);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Draws a thick polyline from a random border point with a slowly turning heading.
fn road(mask: &mut [f32], h: usize, w: usize, rng: &mut SmallRng) {
    let (mut y, mut x, mut dir) = match rng.random_range(0..4) {
        0 => (0.0, rng.random_range(0.0..w as f32), std::f32::consts::FRAC_PI_2),
        1 => (h as f32 - 1.0, rng.random_range(0.0..w as f32), -std::f32::consts::FRAC_PI_2),
        2 => (rng.random_range(0.0..h as f32), 0.0, 0.0),
        _ => (rng.random_range(0.0..h as f32), w as f32 - 1.0, std::f32::consts::PI),
    };
    let half = rng.random_range(0.8f32..2.2) * (w.min(h) as f32 / 256.0).max(0.5);
    let steps = 4 * (h + w);
    for _ in 0..steps {
        let r = half.ceil() as i64;
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dy * dy + dx * dx) as f32) <= half * half {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                        mask[yy as usize * w + xx as usize] = 1.0;
                    }
                }
            }
        }
        dir += rng.random_range(-0.05f32..0.05);
        y += dir.sin();
        x += dir.cos();
        if y < 0.0 || x < 0.0 || y >= h as f32 || x >= w as f32 {
            break;
        }
    }
}

/// A box blur of radius `r` (two separable passes).
fn blur(img: &mut [f32], h: usize, w: usize, r: usize) {
    if r == 0 {
        return;
    }
    let mut tmp = vec![0.0; img.len()];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r).min(w - 1));
            tmp[y * w + x] = (a..=b).map(|i| img[y * w + i]).sum::<f32>() / (b - a + 1) as f32;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (y.saturating_sub(r), (y + r).min(h - 1));
            img[y * w + x] = (a..=b).map(|i| tmp[i * w + x]).sum::<f32>() / (b - a + 1) as f32;
        }
    }
}

/// Thin roads covering about 4.5% of each image, and the logits of a blurred, noisy prediction
/// that misses parts of them and sees a few false roads. A size of 0 gives an empty batch.
pub fn roads(n: usize, h: usize, w: usize, seed: u64) -> Result<DenseBatch, Error> {
    let count = elements("roads", &[n, 1, h, w])?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut target = vec![0.0f32; count];
    let mut logits = vec![0.0f32; count];
    if h == 0 || w == 0 {
        // no pixel to start a road from (an empty range to draw from)
        return Ok(DenseBatch { shape: vec![n, 1, h, w], logits, target });
    }
    for img in 0..n {
        let mask = &mut target[img * h * w..(img + 1) * h * w];
        let mut guard = 0;
        while mask.iter().sum::<f32>() < 0.045 * (h * w) as f32 && guard < 200 {
            road(mask, h, w, &mut rng);
            guard += 1;
        }
        // Prediction: the mask, blurred, with dropped stretches and false positives.
        let mut pred = mask.to_vec();
        let mut fake = vec![0.0f32; h * w];
        road(&mut fake, h, w, &mut rng);
        for (p, f) in pred.iter_mut().zip(&fake) {
            *p = p.max(0.7 * f);
        }
        blur(&mut pred, h, w, (w / 128).max(1));
        for (i, p) in pred.iter().enumerate() {
            logits[img * h * w + i] = 6.0 * (p - 0.35) + 1.2 * normal(&mut rng);
        }
    }
    Ok(DenseBatch { shape: vec![n, 1, h, w], logits, target })
}

/// A multiclass scene: background (class 0) with blobs of classes 1..C of varied size, and logits
/// of a noisy prediction favouring the true class. A size of 0 gives an empty batch; so does
/// `c = 0` (no class to label a pixel with): no logits and no labels.
pub fn scene(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Result<LabelBatch, Error> {
    let count = elements("scene", &[n, c, h, w])?;
    let mut rng = SmallRng::seed_from_u64(seed);
    if c == 0 || h == 0 || w == 0 {
        return Ok(LabelBatch { shape: vec![n, c, h, w], logits: Vec::new(), labels: Vec::new() });
    }
    let mut labels = vec![0i64; count / c];
    let mut logits = vec![0.0f32; count];
    for img in 0..n {
        let lab = &mut labels[img * h * w..(img + 1) * h * w];
        for _ in 0..(2 * c) {
            let k = rng.random_range(1..c.max(2)) as i64;
            let (cy, cx) = (rng.random_range(0..h) as f32, rng.random_range(0..w) as f32);
            let r = rng.random_range(0.03f32..0.15) * h.min(w) as f32;
            for y in 0..h {
                for x in 0..w {
                    let (dy, dx) = (y as f32 - cy, x as f32 - cx);
                    if dy * dy + dx * dx <= r * r {
                        lab[y * w + x] = k.min(c as i64 - 1);
                    }
                }
            }
        }
        for ch in 0..c {
            for i in 0..h * w {
                let hit = lab[i] == ch as i64;
                logits[(img * c + ch) * h * w + i] = if hit { 2.0 } else { 0.0 } + 1.5 * normal(&mut rng);
            }
        }
    }
    Ok(LabelBatch { shape: vec![n, c, h, w], logits, labels })
}

/// Aerial-looking scenes for training a road model: `[N, 3, H, W]` images in [0, 1] and their
/// `[N, 1, H, W]` 0/1 road masks (at least 4.5% road per image, near DeepGlobe road extraction's).
#[derive(Clone, Debug)]
pub struct SceneBatch {
    /// `[N, 3, H, W]`
    pub shape: Vec<usize>,
    /// RGB, channel-major per image.
    pub image: Vec<f32>,
    /// 0/1 road mask, `[N, 1, H, W]`.
    pub mask: Vec<f32>,
}

/// Paints `color` (RGB, jittered per pixel by `noise`) where `mask` is set.
fn paint(img: &mut [f32], mask: &[f32], hw: usize, color: [f32; 3], noise: f32, rng: &mut SmallRng) {
    for (i, &m) in mask.iter().enumerate() {
        if m > 0.0 {
            for (ch, c) in color.iter().enumerate() {
                img[ch * hw + i] = c + noise * normal(rng);
            }
        }
    }
}

/// A filled disc (`r` pixels) or square (`square`) in a fresh mask.
fn blob(h: usize, w: usize, rng: &mut SmallRng, r: f32, square: bool) -> Vec<f32> {
    let mut m = vec![0.0f32; h * w];
    let (cy, cx) = (rng.random_range(0.0..h as f32), rng.random_range(0.0..w as f32));
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (y as f32 - cy, x as f32 - cx);
            let inside = if square { dy.abs() <= r && dx.abs() <= r } else { dy * dy + dx * dx <= r * r };
            if inside {
                m[y * w + x] = 1.0;
            }
        }
    }
    m
}

/// Scenes of thin curved gray roads (roads are drawn until they cover 4.5% of each image) on a textured background of
/// fields, with distractors a model has to learn to reject: gray roofs of the roads' colour,
/// brown field tracks of the roads' shape, a blue river, trees over parts of the roads, and
/// pixel noise. `seed` picks the scenes: held-out sets use seeds the training set does not.
///
/// ```
/// let b = segloss_data::synth::road_scene(4, 64, 64, 3).unwrap();
/// let fg = b.mask.iter().sum::<f32>() / b.mask.len() as f32;
/// assert!(fg > 0.03 && fg < 0.09, "{fg}");
/// assert!(b.image.iter().all(|v| (0.0..=1.0).contains(v)));
/// ```
pub fn road_scene(n: usize, h: usize, w: usize, seed: u64) -> Result<SceneBatch, Error> {
    // (the mask is a segloss input; the image, three times as long, only has to fit a usize)
    let count = elements("road_scene mask", &[n, 1, h, w])?;
    let pixels = count.checked_mul(3).ok_or_else(|| {
        Error::Shape(format!("road_scene image [{n}, 3, {h}, {w}]: more elements than a usize holds"))
    })?;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5ce4e);
    let hw = h * w;
    let mut image = vec![0.0f32; pixels];
    let mut mask = vec![0.0f32; count];
    if hw == 0 {
        return Ok(SceneBatch { shape: vec![n, 3, h, w], image, mask });
    }
    let scale = (h.min(w) as f32 / 64.0).max(0.5);
    for k in 0..n {
        let img = &mut image[k * 3 * hw..(k + 1) * 3 * hw];
        // fields: a smooth two-tone texture, green to brown
        let (fy, fx, ph) =
            (rng.random_range(0.05f32..0.2), rng.random_range(0.05f32..0.2), rng.random_range(0.0f32..6.3));
        let base = [rng.random_range(0.25f32..0.4), rng.random_range(0.4f32..0.55), rng.random_range(0.2f32..0.3)];
        for y in 0..h {
            for x in 0..w {
                let t = 0.5 + 0.5 * ((y as f32 * fy + ph).sin() * (x as f32 * fx).cos());
                let i = y * w + x;
                img[i] = base[0] + 0.15 * t;
                img[hw + i] = base[1] - 0.1 * t;
                img[2 * hw + i] = base[2] + 0.05 * t;
            }
        }
        for _ in 0..3 {
            let f = {
                let r = rng.random_range(6.0..16.0) * scale;
                blob(h, w, &mut rng, r, true)
            };
            let c = [rng.random_range(0.3f32..0.5), rng.random_range(0.35f32..0.5), rng.random_range(0.15f32..0.3)];
            paint(img, &f, hw, c, 0.03, &mut rng);
        }
        // distractors: a river, field tracks (road-shaped, brown), roofs (road-coloured)
        let mut river = vec![0.0f32; hw];
        road(&mut river, h, w, &mut rng);
        paint(img, &river, hw, [0.15, 0.3, 0.55], 0.04, &mut rng);
        let mut track = vec![0.0f32; hw];
        road(&mut track, h, w, &mut rng);
        paint(img, &track, hw, [0.5, 0.38, 0.22], 0.05, &mut rng);
        // roads
        let m = &mut mask[k * hw..(k + 1) * hw];
        let mut guard = 0;
        while m.iter().sum::<f32>() < 0.045 * hw as f32 && guard < 200 {
            road(m, h, w, &mut rng);
            guard += 1;
        }
        let gray = rng.random_range(0.5f32..0.7);
        paint(img, m, hw, [gray, gray, gray + 0.02], 0.06, &mut rng);
        for _ in 0..4 {
            let roof = {
                let r = rng.random_range(1.5..3.5) * scale;
                blob(h, w, &mut rng, r, true)
            };
            let g = rng.random_range(0.5f32..0.7);
            paint(img, &roof, hw, [g, g, g], 0.05, &mut rng);
        }
        // trees over anything, roads included (the mask keeps the road)
        for _ in 0..6 {
            let tree = {
                let r = rng.random_range(1.0..2.5) * scale;
                blob(h, w, &mut rng, r, false)
            };
            paint(img, &tree, hw, [0.1, 0.3, 0.1], 0.04, &mut rng);
        }
        for v in img.iter_mut() {
            *v = (*v + 0.04 * normal(&mut rng)).clamp(0.0, 1.0);
        }
    }
    Ok(SceneBatch { shape: vec![n, 3, h, w], image, mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A height or width of 0 drew from an empty range (a panic), and `c = 0` labelled every
    /// pixel -1.
    #[test]
    fn zero_sizes_give_empty_batches() {
        for (h, w) in [(0, 5), (5, 0), (0, 0)] {
            let r = roads(2, h, w, 1).unwrap();
            assert_eq!(r.shape, vec![2, 1, h, w]);
            assert!(r.logits.is_empty() && r.target.is_empty());
            let s = scene(2, 3, h, w, 1).unwrap();
            assert_eq!(s.shape, vec![2, 3, h, w]);
            assert!(s.logits.is_empty() && s.labels.is_empty());
            let b = road_scene(2, h, w, 1).unwrap();
            assert!(b.image.is_empty() && b.mask.is_empty());
        }
        let s = scene(2, 0, 4, 4, 1).unwrap();
        assert_eq!(s.shape, vec![2, 0, 4, 4]);
        assert!(s.logits.is_empty() && s.labels.is_empty(), "{:?}", &s.labels[..s.labels.len().min(4)]);
        assert!(roads(0, 8, 8, 1).unwrap().target.is_empty() && scene(0, 3, 8, 8, 1).unwrap().labels.is_empty());
    }

    /// Sizes whose element count overflows a usize (a wrapped product allocated an empty batch,
    /// then indexed it) or passes an input's 2^31 - 1: errors naming the batch.
    #[test]
    fn sizes_past_an_input_are_errors() {
        let big = 1usize << 40;
        assert!(roads(big, big, big, 1).unwrap_err().to_string().contains("roads"));
        assert!(scene(2, 4, 1 << 15, 1 << 15, 1).is_err());
        assert!(road_scene(big, 2, 2, 1).is_err());
        assert!(roads(2, 1 << 15, 1 << 15, 1).is_err());
    }

    #[test]
    fn labels_are_classes_of_the_scene() {
        for c in [1, 2, 5] {
            let s = scene(2, c, 9, 7, 3).unwrap();
            assert_eq!((s.labels.len(), s.logits.len()), (2 * 9 * 7, 2 * c * 9 * 7));
            assert!(s.labels.iter().all(|&k| (0..c as i64).contains(&k)), "c = {c}");
        }
        let r = roads(1, 1, 1, 3).unwrap();
        assert!(r.target.len() == 1 && r.logits[0].is_finite());
    }
}
