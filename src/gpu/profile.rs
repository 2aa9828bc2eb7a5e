//! Timing every dispatch of a submission on the device (timestamp queries), for
//! [`crate::Engine::profile_prepared_blocking`] and `segloss bench --profile`.
//!
//! While a profile is armed, the executor gives every dispatch a compute pass of its own with a
//! timestamp at its start and end, resolves the queries at the end of the encoder and reads them
//! back; the readback's callback appends one [`KernelTime`] per dispatch to the armed sink.
//! One pass per dispatch costs a little more than the shared pass of an ordinary evaluation, so a
//! profile's kernel times are an upper bound of theirs.

use std::sync::{Arc, Mutex};

/// Device time of one dispatch of a profiled evaluation.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct KernelTime {
    /// The kernel's entry point (`shaders/*.wgsl`).
    pub kernel: &'static str,
    /// Workgroups dispatched (x, y, z); `None` for an indirect dispatch (counts the device wrote).
    pub workgroups: Option<[u32; 3]>,
    /// Start of the dispatch, milliseconds after the first dispatch of the submission started.
    pub start_ms: f64,
    /// Device time of the dispatch, milliseconds.
    pub ms: f64,
}

/// Where the device time of one profiled evaluation goes.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Profile {
    /// Every dispatch, in submission order.
    pub kernels: Vec<KernelTime>,
    /// From the start of the first dispatch to the end of the last one, milliseconds (kernels,
    /// the gaps between them, and the clears and copies between passes).
    pub device_ms: f64,
    /// The whole evaluation on the host's clock: recording, encoding, submission, the wait and the
    /// readback, milliseconds.
    pub wall_ms: f64,
}

impl Profile {
    /// Device time per kernel name, largest first: (kernel, dispatches, milliseconds).
    pub fn by_kernel(&self) -> Vec<(&'static str, usize, f64)> {
        let mut out: Vec<(&'static str, usize, f64)> = Vec::new();
        for k in &self.kernels {
            match out.iter_mut().find(|o| o.0 == k.kernel) {
                Some(o) => {
                    o.1 += 1;
                    o.2 += k.ms;
                }
                None => out.push((k.kernel, 1, k.ms)),
            }
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }
}

/// The dispatches of the submissions made while a profile is armed.
pub(crate) type Sink = Arc<Mutex<Vec<KernelTime>>>;

/// The most dispatches one submission times (two queries each; wgpu's query sets hold 4096).
pub(crate) const MAX_TIMED: usize = 2048;

/// A dispatch the executor timed: its name and grid, in query order.
pub(crate) struct Timed {
    pub kernel: &'static str,
    pub workgroups: Option<[u32; 3]>,
}

/// Turns resolved timestamps (two per dispatch, in ticks) into kernel times.
pub(crate) fn decode(ticks: &[u64], timed: &[Timed], period_ns: f32) -> Vec<KernelTime> {
    let ms = |t: u64| t as f64 * f64::from(period_ns) * 1e-6;
    let first = ticks.first().copied().unwrap_or(0);
    timed
        .iter()
        .zip(ticks.chunks_exact(2))
        .map(|(d, t)| KernelTime {
            kernel: d.kernel,
            workgroups: d.workgroups,
            start_ms: ms(t[0].saturating_sub(first)),
            ms: ms(t[1].saturating_sub(t[0])),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_sum_by_kernel() {
        let timed = [
            Timed { kernel: "a", workgroups: Some([2, 1, 1]) },
            Timed { kernel: "b", workgroups: None },
            Timed { kernel: "a", workgroups: Some([1, 1, 1]) },
        ];
        // period 2 ns per tick
        let ticks = [1000, 1500, 1600, 3600, 4000, 4250];
        let kernels = decode(&ticks, &timed, 2.0);
        assert_eq!(kernels.len(), 3);
        assert!((kernels[0].ms - 0.001).abs() < 1e-12);
        assert!((kernels[1].start_ms - 0.0012).abs() < 1e-12);
        assert!((kernels[1].ms - 0.004).abs() < 1e-12);
        let p = Profile { kernels, device_ms: 0.0065, wall_ms: 0.01 };
        let by = p.by_kernel();
        assert_eq!(by[0].0, "b");
        assert_eq!((by[1].0, by[1].1), ("a", 2));
        assert!((by[1].2 - 0.0015).abs() < 1e-12);
    }
}
