//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::borrow::Cow;

use segloss::{Engine, Input, Mode, Target};

/// The GPU engine shared by a test binary. Fails (never skips) when no adapter exists.
pub fn gpu() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| match Engine::gpu_blocking() {
        Ok(e) => e,
        Err(e) => panic!(
            "these tests need a GPU adapter and found none ({e}).\n\
             On Debian/Ubuntu install Mesa's software Vulkan driver (lavapipe):\n    \
             apt-get update && apt-get install -y mesa-vulkan-drivers"
        ),
    })
}

/// The golden cases, `tests/golden` at the repository root (found from the library's tests and
/// from the command line's, which include this file).
pub fn golden_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|d| d.join("tests").join("golden"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| here.join("tests").join("golden"))
}

pub fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

pub fn read_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<i64>().unwrap())
}

/// Max |a - b| and max |b| over two gradients.
pub fn max_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "gradient lengths differ");
    let mut d = 0f64;
    let mut m = 0f64;
    for (x, y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = ((*x).into(), (*y).into());
        d = d.max((x - y).abs());
        m = m.max(y.abs());
    }
    (d, m)
}

/// Small deterministic generator for test data (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A batch's data: logits, and dense targets or class labels.
pub struct Case {
    pub shape: Vec<usize>,
    pub mode: Mode,
    pub logits: Vec<f32>,
    pub dense: Vec<f32>,
    pub labels: Vec<i64>,
    pub ignore: Option<i64>,
}

impl Case {
    /// Images `from..to` as an input of their own, borrowing the data.
    pub fn images(&self, from: usize, to: usize) -> Input<'_> {
        let s: usize = self.shape[2..].iter().product();
        let c = self.shape[1];
        let mut shape = self.shape.clone();
        shape[0] = to - from;
        let target = if self.mode == Mode::Multiclass {
            Target::Labels(Cow::Borrowed(&self.labels[from * s..to * s]))
        } else {
            Target::Dense(Cow::Borrowed(&self.dense[from * c * s..to * c * s]))
        };
        Input::new(Cow::Borrowed(&self.logits[from * c * s..to * c * s]), target, &shape, self.mode, self.ignore)
            .unwrap()
    }

    /// The whole batch as an input.
    pub fn whole(&self) -> Input<'_> {
        self.images(0, self.shape[0])
    }
}
