//! Surface metrics on the CPU: boundaries (face neighbours), an exact Euclidean distance
//! transform with anisotropic spacing (the separable lower envelope of parabolas of Felzenszwalb
//! and Huttenlocher, one pass per axis), and Hausdorff, average surface distance and normalized
//! surface Dice per image and class.

use super::reference::hard;
use super::scores::reduce_grid;
use super::{Metric, MetricName, MetricValue};
use crate::error::Error;
use crate::input::Input;
use crate::Mode;

/// The voxels of `mask` (shape `dims`) with a face neighbour outside it (or at the array's edge).
pub(crate) fn boundary(mask: &[bool], dims: &[usize]) -> Vec<bool> {
    let strides: Vec<usize> = (0..dims.len()).map(|a| dims[a + 1..].iter().product()).collect();
    (0..mask.len())
        .map(|i| {
            mask[i]
                && (0..dims.len()).any(|a| {
                    let coord = (i / strides[a]) % dims[a];
                    coord == 0 || coord + 1 == dims[a] || !mask[i - strides[a]] || !mask[i + strides[a]]
                })
        })
        .collect()
}

/// Squared Euclidean distance (coordinates times `spacing`) from every voxel to the nearest
/// voxel of `seeds`; infinite when there is none.
pub(crate) fn edt_squared(seeds: &[bool], dims: &[usize], spacing: &[f64]) -> Vec<f64> {
    let mut d: Vec<f64> = seeds.iter().map(|&s| if s { 0.0 } else { f64::INFINITY }).collect();
    let strides: Vec<usize> = (0..dims.len()).map(|a| dims[a + 1..].iter().product()).collect();
    for a in 0..dims.len() {
        let (len, stride, h) = (dims[a], strides[a], spacing[a]);
        let mut f = vec![0f64; len];
        let mut out = vec![0f64; len];
        // every line along axis a: starts are the indices whose coordinate on a is 0
        for start in (0..d.len()).filter(|&i| (i / stride) % len == 0) {
            for (q, fq) in f.iter_mut().enumerate() {
                *fq = d[start + q * stride];
            }
            envelope(&f, h, &mut out);
            for (q, o) in out.iter().enumerate() {
                d[start + q * stride] = *o;
            }
        }
    }
    d
}

/// `out[p] = min_q ((p - q) h)^2 + f[q]`, exactly, by the lower envelope of the parabolas rooted
/// at the finite `f[q]`.
fn envelope(f: &[f64], h: f64, out: &mut [f64]) {
    // parabolas of the envelope (their roots) and where each starts to be the lowest
    let mut v: Vec<usize> = Vec::with_capacity(f.len());
    let mut z: Vec<f64> = Vec::with_capacity(f.len() + 1);
    for q in 0..f.len() {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let Some(&r) = v.last() else {
                v.push(q);
                z.push(f64::NEG_INFINITY);
                break;
            };
            // intersection of the parabolas rooted at r and q, in voxel units
            let s = ((f[q] - f[r]) / (h * h * (q - r) as f64) + (q + r) as f64) / 2.0;
            if s <= *z.last().unwrap_or(&f64::NEG_INFINITY) {
                v.pop();
                z.pop();
            } else {
                v.push(q);
                z.push(s);
                break;
            }
        }
    }
    if v.is_empty() {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    }
    let mut k = 0;
    for (p, o) in out.iter_mut().enumerate() {
        while k + 1 < v.len() && z[k + 1] < p as f64 {
            k += 1;
        }
        let dx = p.abs_diff(v[k]) as f64 * h;
        *o = dx * dx + f[v[k]];
    }
}

/// Linear interpolation between the order statistics (numpy's default percentile).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let at = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

/// One (image, class) value from the masks of the prediction and the target.
/// The directed distances of one (image, class): from each boundary voxel of the prediction to
/// the target's boundary, and back.
fn directed(p: &[bool], g: &[bool], dims: &[usize], spacing: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (bp, bg) = (boundary(p, dims), boundary(g, dims));
    let to_g = edt_squared(&bg, dims, spacing);
    let to_p = edt_squared(&bp, dims, spacing);
    let d_pg: Vec<f64> = (0..bp.len()).filter(|&i| bp[i]).map(|i| to_g[i].sqrt()).collect();
    let d_gp: Vec<f64> = (0..bg.len()).filter(|&i| bg[i]).map(|i| to_p[i].sqrt()).collect();
    (d_pg, d_gp)
}

/// Per image and selected class, the directed distances of the two boundaries: what every
/// surface metric of the same classes, threshold and spacing is made of.
pub(crate) type Distances = Vec<Vec<(Vec<f64>, Vec<f64>)>>;

/// A surface metric's value per image and selected class from the distances.
pub(crate) fn values(m: &Metric, d: &Distances) -> Vec<Vec<f64>> {
    d.iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, (pg, gp))| from_distances(m, pg.clone(), gp.clone(), tolerance_of(m, j)))
                .collect()
        })
        .collect()
}

/// What the distances of `m` depend on: the selected classes, the threshold and the spacing
/// (not the percentile or direction), and `nsd`'s tolerance, near which the device's distances
/// are replaced by the CPU's (`surface_gpu::refine_nsd`).
pub(crate) type DistanceKey = (Vec<usize>, u64, Vec<u64>, Option<Vec<u64>>);

pub(crate) fn distance_key(m: &Metric, classes: usize, axes: usize) -> Result<DistanceKey, Error> {
    let spacing = spacing_of(m, axes)?;
    let tolerance = (m.name == MetricName::Nsd).then(|| m.tolerance.iter().flatten().map(|x| x.to_bits()).collect());
    Ok((m.selected(classes), m.logit_threshold().to_bits(), spacing.iter().map(|x| x.to_bits()).collect(), tolerance))
}

/// One (image, class) value from the directed distances of the two boundaries (prediction to
/// target, target to prediction); empty lists follow the empty-mask rules.
pub(crate) fn from_distances(m: &Metric, mut d_pg: Vec<f64>, mut d_gp: Vec<f64>, tolerance: f64) -> f64 {
    let (np, ng) = (d_pg.len(), d_gp.len());
    match (np, ng) {
        (0, 0) => return f64::NAN,
        (0, _) | (_, 0) => {
            return match m.name {
                MetricName::Nsd => 0.0,
                MetricName::Hd if m.percentile.is_some() => f64::NAN,
                _ => f64::INFINITY,
            }
        }
        _ => {}
    }
    match m.name {
        MetricName::Hd => {
            let q = |v: &mut Vec<f64>| match m.percentile {
                Some(pc) => percentile(v, pc),
                None => v.iter().copied().fold(0.0, f64::max),
            };
            let a = q(&mut d_pg);
            if m.directed {
                a
            } else {
                a.max(q(&mut d_gp))
            }
        }
        MetricName::Assd => {
            if m.symmetric {
                (d_pg.iter().sum::<f64>() + d_gp.iter().sum::<f64>()) / (np + ng) as f64
            } else {
                d_pg.iter().sum::<f64>() / np as f64
            }
        }
        _ => {
            // as MONAI compares: its distances in float32 against the tolerance rounded to
            // float32 (a distance of sqrt(2) is within a tolerance of 1.4142135, not 1.414213).
            // The device's distances near the tolerance are the CPU's (surface_gpu::refine_nsd):
            // its float32 sums can round to another float32 than the exact distance.
            let tau = tolerance as f32;
            let within = d_pg.iter().chain(&d_gp).filter(|&&d| d as f32 <= tau).count();
            within as f64 / (np + ng) as f64
        }
    }
}

/// The voxel size of each of `axes` spatial axes.
pub(crate) fn spacing_of(m: &Metric, axes: usize) -> Result<Vec<f64>, Error> {
    match m.spacing.len() {
        1 => Ok(vec![m.spacing[0]; axes]),
        k if k == axes => Ok(m.spacing.clone()),
        k => Err(Error::Metric {
            text: m.text().to_string(),
            msg: format!("spacing has {k} entries for {axes} spatial axes"),
        }),
    }
}

/// The tolerance of selected class `j`.
pub(crate) fn tolerance_of(m: &Metric, j: usize) -> f64 {
    m.tolerance.as_ref().map_or(0.0, |t| if t.len() == 1 { t[0] } else { t[j] })
}

/// A surface metric of `input` on the CPU.
pub(crate) fn evaluate(input: &Input<'_>, m: &Metric) -> Result<MetricValue, Error> {
    Ok(reduce_grid(values(m, &distances(input, m)?), m.reduction, m.empty_mean))
}

/// The distances of a surface metric of `input`, on the CPU.
pub(crate) fn distances(input: &Input<'_>, m: &Metric) -> Result<Distances, Error> {
    let planes = Planes::new(input, m)?;
    Ok((0..input.batch()).map(|ni| planes.ks.iter().map(|&k| planes.directed(ni, k)).collect()).collect())
}

/// The hard masks of `input` for a surface metric, from which the CPU makes the distances of
/// any (image, class).
pub(crate) struct Planes<'i, 'a> {
    input: &'i Input<'a>,
    h: super::reference::Hard,
    spacing: Vec<f64>,
    pub ks: Vec<usize>,
}

impl<'i, 'a> Planes<'i, 'a> {
    pub(crate) fn new(input: &'i Input<'a>, m: &Metric) -> Result<Self, Error> {
        let spacing = spacing_of(m, input.shape().len() - 2)?;
        let h = hard(input, m.input_threshold(input.kind()))?;
        Ok(Planes { input, h, spacing, ks: m.selected(input.classes()) })
    }

    /// The directed distances of image `ni`, class `k`.
    pub(crate) fn directed(&self, ni: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let (c, s) = (self.input.classes(), self.input.spatial());
        let multiclass = self.input.mode() == Mode::Multiclass;
        // ignored pixels are background in both masks
        let (p, g): (Vec<bool>, Vec<bool>) = (0..s)
            .map(|si| {
                let (e, kk) = if multiclass { (ni * s + si, k as u32) } else { ((ni * c + k) * s + si, 1) };
                match self.h.target[e] {
                    None => (false, false),
                    Some(t) => (self.h.pred[e] == kk, t == kk),
                }
            })
            .unzip();
        directed(&p, &g, &self.input.shape()[2..], &self.spacing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: every voxel against every seed.
    fn brute(seeds: &[bool], dims: &[usize], spacing: &[f64]) -> Vec<f64> {
        let coord = |i: usize| -> Vec<f64> {
            let mut c = vec![0.0; dims.len()];
            let mut r = i;
            for a in (0..dims.len()).rev() {
                c[a] = (r % dims[a]) as f64 * spacing[a];
                r /= dims[a];
            }
            c
        };
        (0..seeds.len())
            .map(|i| {
                let ci = coord(i);
                (0..seeds.len())
                    .filter(|&j| seeds[j])
                    .map(|j| coord(j).iter().zip(&ci).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn the_distance_transform_is_exact_in_2d_and_3d_with_spacing() {
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (dims, spacing) in [
            (vec![9usize, 13], vec![1.0, 1.0]),
            (vec![11, 7], vec![0.7, 1.3]),
            (vec![5, 6, 7], vec![2.5, 0.8, 0.8]),
            (vec![1, 17], vec![1.0, 1.0]),
        ] {
            for density in [2u64, 10, 60] {
                let len: usize = dims.iter().product();
                let seeds: Vec<bool> = (0..len).map(|_| rnd() % 100 < density).collect();
                let got = edt_squared(&seeds, &dims, &spacing);
                let want = brute(&seeds, &dims, &spacing);
                for (g, w) in got.iter().zip(&want) {
                    assert!(g == w || (g - w).abs() <= 1e-9 * w.max(1.0), "{dims:?} {spacing:?}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn boundaries_are_the_voxels_with_a_face_neighbour_outside() {
        // a 3x3 square in a 5x5 image: its ring of 8 is the boundary, the centre is not
        let mut mask = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = true;
            }
        }
        let b = boundary(&mask, &[5, 5]);
        assert_eq!(b.iter().filter(|&&v| v).count(), 8);
        assert!(!b[12]);
        // at the array's edge everything is boundary
        assert!(boundary(&[true; 4], &[2, 2]).iter().all(|&v| v));
    }
}
