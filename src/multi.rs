//! Several adapters at once: a batch split by images, each part's statistics on its own
//! adapter at the same time, joined on the host, then each part's gradient of the whole batch's
//! loss on its adapter. The results are the single adapter's within f32 tolerance.

#[cfg(not(target_arch = "wasm32"))]
use crate::engine::EngineOptions;
use crate::engine::{Engine, Evaluation};
use crate::error::Error;
use crate::expr::LossExpr;
use crate::input::Input;
use crate::stats::Statistics;

/// Engines on several adapters used as one: [`MultiEngine::evaluate`] splits a batch by images
/// across them ([`MultiEngine::spread`]), runs the parts at the same time and merges their
/// [`Statistics`]. Region and pixel losses merge exactly through their per-(image, class) sums;
/// an expression list with what does not merge runs on the first adapter alone: a whole-batch
/// Lovász (`per_image=false`, one sort over the batch), `reduction=none` (its entries) or deep
/// supervision (an input with levels).
///
/// ```no_run
/// # fn main() -> Result<(), segloss::Error> {
/// use segloss::{EngineOptions, Input, LossExpr, Mode, MultiEngine};
/// // every adapter (here: lavapipe on Vulkan and llvmpipe on OpenGL)
/// let multi = MultiEngine::open_blocking(&EngineOptions::from_env(), "all")?;
/// let logits = vec![0.3f32; 8 * 64 * 64];
/// let target = vec![1.0f32; 8 * 64 * 64];
/// let input = Input::dense(&logits, &target, &[8, 1, 64, 64], Mode::Binary)?;
/// let expr: LossExpr = "dice+bce".parse()?;
/// println!("{:?}", multi.spread(8)); // images per adapter
/// let out = multi.evaluate_blocking(&input, &[expr], true)?;
/// # let _ = out; Ok(()) }
/// ```
pub struct MultiEngine {
    engines: Vec<Engine>,
    /// The chosen adapters that did not open: `name (backend): why`.
    skipped: Vec<String>,
}

/// Whether an adapter described as `name (backend)` is one of `choice`: `all`, or a comma list
/// of case-insensitive substrings of the name or the backend.
#[cfg(not(target_arch = "wasm32"))]
fn chosen(choice: &str, desc: &str) -> bool {
    let d = desc.to_lowercase();
    choice.trim().eq_ignore_ascii_case("all")
        || choice.split(',').map(|c| c.trim().to_lowercase()).any(|c| !c.is_empty() && d.contains(&c))
}

impl MultiEngine {
    /// Engines over the given engines, in order (the first takes what runs on one adapter).
    pub fn from_engines(engines: Vec<Engine>) -> Result<MultiEngine, Error> {
        if engines.is_empty() {
            return Err(Error::Input("a multi-adapter engine needs at least one engine".into()));
        }
        Ok(MultiEngine { engines, skipped: Vec::new() })
    }

    /// Opens every usable adapter of the backends `opts` allows that `choice` names: `all`, or
    /// a comma list of substrings of adapter names or backends (`vulkan,gl`, `nvidia`);
    /// the `--adapters` of the command line, also read from `SEGLOSS_ADAPTERS`. A chosen adapter
    /// that fails to open (its device refused) is left out, and [`MultiEngine::skipped`] says
    /// why; only when none opens is that an error, naming each.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn open(opts: &EngineOptions, choice: &str) -> Result<MultiEngine, Error> {
        let list = crate::list_adapters(opts).await?;
        let (mut engines, mut skipped) = (Vec::new(), Vec::new());
        for (i, a) in list.iter().enumerate() {
            let desc = format!("{} ({})", a.info.name, a.info.backend);
            if !a.usable || !chosen(choice, &desc) {
                continue;
            }
            match Engine::open_nth(opts, i).await {
                Ok(e) => engines.push(e),
                Err(e) => skipped.push(format!("{desc}: {e}")),
            }
        }
        if engines.is_empty() && skipped.is_empty() {
            return Err(Error::NoAdapter(format!("no usable adapter matches '{choice}' among {} found", list.len())));
        }
        if engines.is_empty() {
            return Err(Error::NoAdapter(format!(
                "none of the adapters '{choice}' names opened: {}",
                skipped.join("; ")
            )));
        }
        Ok(MultiEngine { engines, skipped })
    }

    /// The chosen adapters that [`MultiEngine::open`] left out because they failed to open, each
    /// as `name (backend): why`.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Blocking [`MultiEngine::open`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(opts: &EngineOptions, choice: &str) -> Result<MultiEngine, Error> {
        futures::executor::block_on(MultiEngine::open(opts, choice))
    }

    /// The engines, in the order the parts of a batch go to them.
    pub fn engines(&self) -> &[Engine] {
        &self.engines
    }

    /// How a batch of `n` images is spread: the image range of each engine (balanced; the first
    /// engines take one image more; engines past `n` get none).
    pub fn spread(&self, n: usize) -> Vec<std::ops::Range<usize>> {
        let k = self.engines.len().min(n).max(1);
        let (q, r) = (n / k, n % k);
        let mut at = 0;
        (0..self.engines.len())
            .map(|i| {
                let len = if i < k { q + usize::from(i < r) } else { 0 };
                at += len;
                at - len..at
            })
            .collect()
    }

    /// Evaluates `exprs` on `input`, its images spread over the engines: one statistics
    /// submission per engine, at the same time, then (gradients) one gradient submission per
    /// engine. Values are those of the joined statistics ([`Statistics::finish`]).
    pub async fn evaluate(&self, input: &Input<'_>, exprs: &[LossExpr], grads: bool) -> Result<Vec<Evaluation>, Error> {
        // what does not come from merged statistics runs on the first adapter: a whole-batch
        // Lovász (one sort over the batch), unreduced entries, deep supervision's levels
        let whole_lovasz = exprs
            .iter()
            .flat_map(|e| &e.terms)
            .any(|t| matches!(&t.loss, crate::expr::Loss::Lovasz(p) if !p.per_image));
        let one_engine = whole_lovasz
            || input.levels() > 1
            || exprs.iter().any(|e| e.deep.is_some() || e.unreduced())
            || self.engines.iter().any(|e| e.is_cpu());
        let n = input.batch();
        if self.engines.len() == 1 || n == 1 || one_engine {
            return self.engines[0].evaluate(input, exprs, grads).await;
        }
        // the -inf and hard-label rules on the whole batch first, so an error names the batch's
        // element (each part would name its own)
        crate::input::check_neg_inf(input, exprs)?;
        crate::engine::check_hard_labels(exprs, || input.first_soft(), input.shape())?;
        let spread: Vec<_> = self.spread(n).into_iter().filter(|r| !r.is_empty()).collect();
        let parts: Vec<Input<'_>> = spread.iter().map(|r| input.images(r.start, r.end)).collect::<Result<_, _>>()?;
        let stats =
            futures::future::join_all(self.engines.iter().zip(&parts).map(|(e, p)| e.statistics(p, exprs))).await;
        let mut joined: Option<Statistics> = None;
        for s in stats {
            let s = s?;
            match &mut joined {
                None => joined = Some(s),
                Some(j) => j.append(&s)?,
            }
        }
        let stats = joined.ok_or_else(|| Error::Input("no parts".into()))?;
        let mut out = stats.finish()?;
        if grads {
            let g = futures::future::join_all(
                self.engines.iter().zip(&parts).zip(&spread).map(|((e, p), r)| e.gradient(p, &stats, r.start, exprs)),
            )
            .await;
            let mut whole: Vec<Vec<f32>> = vec![Vec::with_capacity(input.logits().len()); exprs.len()];
            for part in g {
                for (w, ev) in whole.iter_mut().zip(part?) {
                    w.extend_from_slice(ev.grad.as_deref().unwrap_or(&[]));
                }
            }
            for (o, w) in out.iter_mut().zip(whole) {
                o.grad = Some(w);
            }
        }
        Ok(out)
    }

    /// Blocking [`MultiEngine::evaluate`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_blocking(
        &self,
        input: &Input<'_>,
        exprs: &[LossExpr],
        grads: bool,
    ) -> Result<Vec<Evaluation>, Error> {
        futures::executor::block_on(self.evaluate(input, exprs, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_are_chosen_by_name_or_backend() {
        assert!(chosen("all", "llvmpipe (vulkan)"));
        assert!(chosen("vulkan, gl", "llvmpipe (LLVM 15) (gl)"));
        assert!(chosen("NVIDIA", "NVIDIA H200 (vulkan)"));
        assert!(!chosen("metal", "llvmpipe (vulkan)"));
        assert!(!chosen("", "llvmpipe (vulkan)"));
    }

    #[test]
    fn a_batch_is_spread_in_balanced_image_ranges() {
        let m =
            MultiEngine { engines: vec![Engine::cpu(None), Engine::cpu(None), Engine::cpu(None)], skipped: Vec::new() };
        assert_eq!(m.spread(8), vec![0..3, 3..6, 6..8]);
        assert_eq!(m.spread(2), vec![0..1, 1..2, 2..2]);
    }
}
