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
    /// Start of the dispatch, milliseconds after the first dispatch of the evaluation started
    /// (an input evaluated in pieces makes several submissions: one clock for all of them).
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

thread_local! {
    /// The profile armed on this thread: the evaluations this thread records and submits are
    /// timed into it (those of other threads are not).
    static ARMED: std::cell::RefCell<Option<Sink>> = const { std::cell::RefCell::new(None) };
}

/// The sink armed on this thread, if any.
pub(crate) fn armed() -> Option<Sink> {
    ARMED.with(|a| a.borrow().clone())
}

#[cfg(not(target_arch = "wasm32"))]
/// Arms `sink` on this thread until the guard drops (on return and on unwinding alike), when the
/// profile armed before, if any, is armed again.
pub(crate) fn arm(sink: Sink) -> Armed {
    Armed(ARMED.with(|a| a.replace(Some(sink))))
}

/// Guard of [`arm`].
#[cfg(not(target_arch = "wasm32"))]
pub(crate) struct Armed(Option<Sink>);

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Armed {
    fn drop(&mut self) {
        let prev = self.0.take();
        ARMED.with(|a| *a.borrow_mut() = prev);
    }
}

/// The most dispatches one submission times (two queries each; wgpu's query sets hold 4096);
/// the dispatches after them run untimed. An evaluation records a few dozen.
pub(crate) const MAX_TIMED: usize = 2048;

/// A dispatch the executor timed: its name and grid, in query order.
pub(crate) struct Timed {
    pub kernel: &'static str,
    pub workgroups: Option<[u32; 3]>,
}

/// Turns resolved timestamps (two per dispatch, in ticks) into kernel times, starts on the
/// device's clock ([`normalize`] makes them relative).
pub(crate) fn decode(ticks: &[u64], timed: &[Timed], period_ns: f32) -> Vec<KernelTime> {
    let ms = |t: u64| t as f64 * f64::from(period_ns) * 1e-6;
    timed
        .iter()
        .zip(ticks.chunks_exact(2))
        .map(|(d, t)| KernelTime {
            kernel: d.kernel,
            workgroups: d.workgroups,
            start_ms: ms(t[0]),
            ms: ms(t[1].saturating_sub(t[0])),
        })
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
/// The profile of `kernels` (starts on the device's clock, every submission of one evaluation):
/// starts from the earliest one, the span from there to the latest end.
pub(crate) fn normalize(mut kernels: Vec<KernelTime>, wall_ms: f64) -> Profile {
    let first = kernels.iter().map(|k| k.start_ms).fold(f64::INFINITY, f64::min);
    kernels.iter_mut().for_each(|k| k.start_ms -= first);
    kernels.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let device_ms = kernels.iter().map(|k| k.start_ms + k.ms).fold(0.0, f64::max);
    Profile { kernels, device_ms, wall_ms }
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
        // period 2 ns per tick; the last dispatch a second submission of the same evaluation
        let ticks = [1000, 1500, 1600, 3600, 4000, 4250];
        let mut kernels = decode(&ticks[..4], &timed[..2], 2.0);
        kernels.extend(decode(&ticks[4..], &timed[2..], 2.0));
        assert_eq!(kernels.len(), 3);
        assert!((kernels[0].ms - 0.001).abs() < 1e-12);
        assert!((kernels[1].ms - 0.004).abs() < 1e-12);
        let p = normalize(kernels, 0.01);
        assert_eq!(p.kernels[0].start_ms, 0.0);
        assert!((p.kernels[1].start_ms - 0.0012).abs() < 1e-12);
        assert!((p.kernels[2].start_ms - 0.006).abs() < 1e-12);
        assert!((p.device_ms - 0.0065).abs() < 1e-12);
        let by = p.by_kernel();
        assert_eq!(by[0].0, "b");
        assert_eq!((by[1].0, by[1].1), ("a", 2));
        assert!((by[1].2 - 0.0015).abs() < 1e-12);
    }
}
