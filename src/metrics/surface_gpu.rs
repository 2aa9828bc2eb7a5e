//! Surface metrics on the device: hard labels, boundaries and the exact distance transform
//! (`surface.wgsl`) in one submission; the host reads the squared distances at the boundary
//! voxels and makes each (image, class) value from them.

use super::surface::{spacing_of, tolerance_of, values, Distances, Planes};
use super::{Metric, MetricName};
use crate::engine::{words, Engine, Prepared};
use crate::error::Error;
use crate::gpu::context::Gpu;
use crate::gpu::lovasz::grid;
use crate::gpu::record::{Grid, Recording};
use crate::gpu::Spec;
use crate::input::Input;
use crate::shaders;
use crate::Mode;

/// Parameters of the surface kernels (`surface.wgsl`: SurfParams).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SurfParams {
    n: u32,
    c: u32,
    s: u32,
    k: u32,
    ndim: u32,
    d: [u32; 3],
    st: [u32; 3],
    len: u32,
    stride: u32,
    lines: u32,
    fields: u32,
    thr: f32,
    h: f32,
    pad: [u32; 3],
}

/// The longest axis on the device (longer ones run on the CPU reference): a line is one
/// thread's loop, which software adapters cut short past some tens of thousands of iterations.
const MAX_AXIS: usize = 4096;

/// The range of squared distances the device's float32 fields hold: from one voxel of the
/// smallest spacing, a normal number with room below it, to the diameter of the image, far below
/// the sentinel (1e30) past which a field reads as having no boundary. Spacings outside it take
/// the CPU reference.
const SMALLEST_SQUARE: f64 = 1e-30;
const LARGEST_SQUARE: f64 = 1e28;

impl Engine {
    /// A surface metric's value per image and selected class (see [`Engine::surface_distances`]).
    pub(crate) async fn surface_grid(&self, input: &Input<'_>, m: &Metric) -> Result<Vec<Vec<f64>>, Error> {
        Ok(values(m, &self.surface_distances(input, m, None).await?))
    }

    /// The directed boundary distances of a surface metric per image and selected class, on the
    /// device when the engine has one and the input fits (its distance fields and envelopes
    /// within a binding), else on the CPU reference. `prep`: the input already on the device.
    pub(crate) async fn surface_distances(
        &self,
        input: &Input<'_>,
        m: &Metric,
        prep: Option<&Prepared<'_>>,
    ) -> Result<Distances, Error> {
        let dims = &input.shape()[2..];
        let spacing = spacing_of(m, dims.len())?;
        let ks = m.selected(input.classes());
        let (n, s) = (input.batch(), input.spatial());
        let fields_bytes = (2 * n * ks.len() * s * 4) as u64;
        // the device takes 0/1 targets (soft ones: the reference names the bad value), class
        // indices that pack into 16 bits, axes one thread walks, fields within a binding, and
        // spacings whose squared distances are normal float32 numbers well below its sentinel
        // for "no boundary" (1e30)
        let diameter: f64 = dims.iter().zip(&spacing).map(|(&d, &h)| (d as f64 * h).powi(2)).sum();
        let spacing_fits = spacing.iter().all(|&h| h * h >= SMALLEST_SQUARE) && diameter <= LARGEST_SQUARE;
        let fits = |g: &Gpu| {
            spacing_fits
                && dims.iter().all(|&d| d <= MAX_AXIS)
                && 2 * fields_bytes <= crate::stats::binding_limit(g)
                && input.classes() < 0xFFFF
                && (input.mode() == Mode::Multiclass || input.hard_labels())
        };
        let gpu = match self.gpu_ref() {
            Some(g) if fits(g) => g,
            _ => return super::surface::distances(input, m),
        };
        let own;
        let prep = match prep {
            Some(p) => p,
            None => {
                own = self.prepare(input.clone())?;
                &own
            }
        };
        let Some((lb, tb)) = prep.buffers() else {
            return super::surface::distances(input, m);
        };
        let mut d = device_distances(gpu, input, m, &ks, &spacing, lb, tb).await?;
        refine_nsd(input, m, &spacing, &mut d)?;
        Ok(d)
    }
}

/// Whether the device's float32 squared distances are exact: spacings that are integers after
/// one power of two scales them all (1, 0.5, 2.5 and 0.25), and squared distances so scaled below
/// 2^24, float32's last run of consecutive integers (every product and sum is then exact).
fn exact_on_device(spacing: &[f64], dims: &[usize]) -> bool {
    (0..=12).any(|e| {
        let scale = f64::from(1u32 << e);
        let diameter: f64 = dims.iter().zip(spacing).map(|(&d, &h)| (d as f64 * h * scale).powi(2)).sum();
        spacing.iter().all(|h| (h * scale).fract() == 0.0) && diameter < f64::from(1u32 << 24)
    })
}

/// How far (relative) from `nsd`'s tolerance a device distance may be on the wrong side of it:
/// the device's squared distances are float32 sums a few ulps (1.2e-7 each) off the exact ones.
const NSD_BAND: f64 = 2e-6;

/// `nsd` compares each distance rounded to float32 with the tolerance rounded to float32, as MONAI
/// does. A device distance a few ulps off the exact one can round to the other side (9 voxels of
/// spacing 0.1: 0.90000004 on the device, 0.9 exactly), so an (image, class) with a distance
/// within [`NSD_BAND`] of its tolerance takes the CPU's distances; with [`exact_on_device`]
/// distances none does.
fn refine_nsd(input: &Input<'_>, m: &Metric, spacing: &[f64], d: &mut Distances) -> Result<(), Error> {
    if m.name != MetricName::Nsd || exact_on_device(spacing, &input.shape()[2..]) {
        return Ok(());
    }
    let mut planes = None;
    for (ni, row) in d.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            let tau = tolerance_of(m, j);
            // (at a tolerance of 0 only a distance of 0 is within, and the device's are exact)
            if tau > 0.0 && cell.0.iter().chain(&cell.1).any(|x| (x - tau).abs() <= NSD_BAND * tau) {
                let p = match &mut planes {
                    Some(p) => p,
                    None => planes.insert(Planes::new(input, m)?),
                };
                *cell = p.directed(ni, p.ks[j]);
            }
        }
    }
    Ok(())
}

async fn device_distances(
    gpu: &Gpu,
    input: &Input<'_>,
    m: &Metric,
    ks: &[usize],
    spacing: &[f64],
    lb: &wgpu::Buffer,
    tb: &wgpu::Buffer,
) -> Result<Distances, Error> {
    let dims = &input.shape()[2..];
    let (n, c, s) = (input.batch(), input.classes(), input.spatial());
    let kk = ks.len();
    let softmax = input.mode() == Mode::Multiclass;
    let mut d = [1u32; 3];
    let mut st = [1u32; 3];
    for (a, &len) in dims.iter().enumerate() {
        d[a] = len as u32;
        st[a] = dims[a + 1..].iter().product::<usize>() as u32;
    }
    let base = SurfParams {
        n: n as u32,
        c: c as u32,
        s: s as u32,
        k: kk as u32,
        ndim: dims.len() as u32,
        d,
        st,
        fields: (2 * n * kk) as u32,
        thr: super::device::f32_threshold(m.input_threshold(input.kind())),
        ..SurfParams::default()
    };
    let mut rec = Recording::new(&gpu.limits);
    let sel: Vec<u32> = ks.iter().map(|&k| k as u32).collect();
    let selb = rec.data(&sel);
    let logits = rec.external(lb, 0, lb.size());
    let target = rec.external(tb, 0, tb.size());
    let labs = rec.scratch(if softmax { (n * s * 4) as u64 } else { 16 }, "surface labels")?;
    let field_bytes = (2 * n * kk * s * 4) as u64;
    let fa = rec.scratch(field_bytes, "distance fields")?;
    let fb = rec.scratch(field_bytes, "distance fields")?;
    let edges = rec.scratch((n * kk * s * 4) as u64, "boundaries")?;
    let env = rec.scratch(2 * field_bytes, "distance envelopes")?;
    let spec = Spec::softmax(softmax);
    let binds = |p, fa, fb| {
        [
            ("SP", p),
            ("logits", logits),
            ("tgt", target),
            ("sel", selb),
            ("labs", labs),
            ("fa", fa),
            ("fb", fb),
            ("edges", edges),
            ("env", env),
        ]
    };
    let dispatch = |rec: &mut Recording, k, items: usize, p, a, b| {
        let (gx, gz) = grid(&gpu.limits, items);
        rec.dispatch(k, spec, Grid::Direct(gx, 1, gz), &binds(p, a, b))
    };
    let p = rec.uniform(&base);
    if softmax {
        dispatch(&mut rec, &shaders::SURF_LABELS, n * s, p, fa, fb)?;
    }
    dispatch(&mut rec, &shaders::SURF_EDGES, n * kk * s, p, fa, fb)?;
    // one pass per axis, the fields going back and forth between the two buffers
    let (mut cur, mut next) = (fa, fb);
    for (a, &len) in dims.iter().enumerate() {
        let p = rec.uniform(&SurfParams {
            len: len as u32,
            stride: st[a],
            lines: (s / len) as u32,
            h: spacing[a] as f32,
            ..base
        });
        dispatch(&mut rec, &shaders::EDT_LINE, 2 * n * kk * (s / len), p, cur, next)?;
        std::mem::swap(&mut cur, &mut next);
    }
    let rf = rec.readback(field_bytes, "distances")?;
    rec.copy(cur.sub(0, field_bytes), rf);
    let eb = (n * kk * s * 4) as u64;
    let re = rec.readback(eb, "boundaries")?;
    rec.copy(edges.sub(0, eb), re);
    let fut = gpu.execute(rec);
    gpu.note_wait();
    let data = fut.await?;
    let dist: Vec<f32> = bytemuck::pod_collect_to_vec(&data[0]);
    let flags = words(&data[1]);
    Ok((0..n)
        .map(|ni| {
            (0..kk)
                .map(|j| {
                    let q = ni * kk + j;
                    let (to_p, to_g) = (&dist[2 * q * s..(2 * q + 1) * s], &dist[(2 * q + 1) * s..(2 * q + 2) * s]);
                    let f = &flags[q * s..(q + 1) * s];
                    let d_pg = (0..s).filter(|&v| f[v] & 1 != 0).map(|v| f64::from(to_g[v]).sqrt()).collect();
                    let d_gp = (0..s).filter(|&v| f[v] & 2 != 0).map(|v| f64::from(to_p[v]).sqrt()).collect();
                    (d_pg, d_gp)
                })
                .collect()
        })
        .collect())
}
