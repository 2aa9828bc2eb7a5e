//! The browser side of segloss: the same engine and WGSL kernels, compiled to wasm32 and driven
//! from `web/app.js` through wasm-bindgen, on the browser's WebGPU adapter.

use std::borrow::Cow;
use std::cell::RefCell;

use segloss::{Engine, EngineOptions, Input, InputKind, LossExpr, Mode, Target};
use segloss_data::synth;
use serde_json::json;
use wasm_bindgen::prelude::*;

/// Runs when the module loads: a panic then reaches the console (and the page's error handler)
/// with its message.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or_else(js_sys::Date::now)
}

/// The engine on the browser's WebGPU adapter.
#[wasm_bindgen]
pub struct WebEngine {
    engine: Engine,
    grad: RefCell<Vec<f32>>,
}

#[wasm_bindgen]
impl WebEngine {
    /// Opens the WebGPU adapter; fails with a message when the browser has none.
    pub async fn open() -> Result<WebEngine, JsError> {
        let opts = EngineOptions { allow_cpu_fallback: false, ..Default::default() };
        let engine = Engine::with_options(&opts).await.map_err(js_err)?;
        Ok(WebEngine { engine, grad: RefCell::new(Vec::new()) })
    }

    /// The adapter as JSON: `{"name", "backend", "type", "driver"}`.
    pub fn info(&self) -> String {
        serde_json::to_string(self.engine.info()).unwrap_or_default()
    }

    /// Evaluates each loss text (one per line) on logits `[n, c, h, w]` (or probabilities, with
    /// `probs`) and a target (dense 0/1 for `binary`, class indices as numbers for `multiclass`).
    /// Returns JSON `{"results": [{"loss", "value", "ms", "error"}], "metrics": [{"metric", "value",
    /// "error"}]}` (IoU and Dice score of the hard prediction; a value is null when it is not a
    /// number, with the reason in `error` when there is one); the gradient of loss `grad_of` (the
    /// index among the non-empty lines) is then available from [`WebEngine::grad`], empty when
    /// that loss gave none (an error, or no such line).
    // the page's call passes plain values (no JS object to decode): one argument each
    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate(
        &self,
        logits: Vec<f32>,
        target: Vec<f32>,
        shape: Vec<u32>,
        mode: String,
        losses: String,
        grad_of: u32,
        probs: bool,
    ) -> Result<String, JsError> {
        // a gradient shown must be this call's, of this loss
        self.grad.borrow_mut().clear();
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let mode: Mode = mode.parse().map_err(js_err)?;
        let target = if mode == Mode::Multiclass {
            // (JavaScript numbers: a label that is not a whole number is an error, not rounded)
            if let Some(i) = target.iter().position(|v| v.fract() != 0.0 || !v.is_finite()) {
                return Err(JsError::new(&format!(
                    "class label {} at index {i} is not a whole number (multiclass targets are class indices)",
                    target[i]
                )));
            }
            Target::Labels(Cow::Owned(target.iter().map(|&v| v as i64).collect()))
        } else {
            Target::Dense(Cow::Owned(target))
        };
        let kind = if probs { InputKind::Probs } else { InputKind::Logits };
        let input = Input::new_of_kind(Cow::Owned(logits), target, &shape, mode, None, kind).map_err(js_err)?;
        // IoU and Dice score of the hard prediction (micro: all pixels and classes pooled)
        let metrics: Vec<serde_json::Value> = ["iou", "dice"]
            .iter()
            .map(|t| {
                let v = t
                    .parse::<segloss::metrics::Metric>()
                    .and_then(|m| segloss::metrics::reference::evaluate(&input, &m));
                match v {
                    Ok(v) => json!({"metric": t, "value": v.value.filter(|x| x.is_finite()), "error": null}),
                    Err(e) => json!({"metric": t, "value": null, "error": e.to_string()}),
                }
            })
            .collect();
        let prep = self.engine.prepare(input).map_err(js_err)?;
        let mut results = Vec::new();
        for (i, text) in losses.lines().map(str::trim).filter(|t| !t.is_empty()).enumerate() {
            let want_grad = i as u32 == grad_of;
            let t0 = now_ms();
            let r = match text.parse::<LossExpr>() {
                Ok(e) => {
                    let g = if want_grad { segloss::GradMode::Read } else { segloss::GradMode::DeviceOnly };
                    self.engine.evaluate_prepared(&prep, std::slice::from_ref(&e), g).await.map(|mut v| v.remove(0))
                }
                Err(e) => Err(e),
            };
            let ms = now_ms() - t0;
            match r {
                Ok(ev) => {
                    if let Some(g) = ev.grad {
                        *self.grad.borrow_mut() = g;
                    }
                    results.push(json!({"loss": text, "value": ev.value, "ms": ms, "error": null}));
                }
                Err(e) => results.push(json!({"loss": text, "value": null, "ms": null, "error": e.to_string()})),
            }
        }
        Ok(json!({ "results": results, "metrics": metrics }).to_string())
    }

    /// The gradient of the loss chosen in the last [`WebEngine::evaluate`], in the input's layout
    /// (by the logits, or by the probabilities).
    pub fn grad(&self) -> Vec<f32> {
        self.grad.borrow().clone()
    }
}

/// A thin-roads mask `[h, w]` with about 4.5% foreground (DeepGlobe-like imbalance).
#[wasm_bindgen]
pub fn roads_mask(h: u32, w: u32, seed: u32) -> Result<Vec<f32>, JsError> {
    Ok(synth::roads(1, h as usize, w as usize, u64::from(seed)).map_err(js_err)?.target)
}

/// A multiclass scene `[h, w]` of class indices 0..classes, as numbers.
#[wasm_bindgen]
pub fn scene_labels(classes: u32, h: u32, w: u32, seed: u32) -> Result<Vec<f32>, JsError> {
    let s = synth::scene(1, classes as usize, h as usize, w as usize, u64::from(seed)).map_err(js_err)?;
    Ok(s.labels.iter().map(|&v| v as f32).collect())
}

/// A `.npy` file of f32 data with the given shape (for exporting the page's inputs).
#[wasm_bindgen]
pub fn npy_f32(data: Vec<f32>, shape: Vec<u32>) -> Result<Vec<u8>, JsError> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    segloss_data::npy::to_bytes(&data, &shape).map_err(js_err)
}

/// A `.npy` file of i64 class indices with the given shape.
#[wasm_bindgen]
pub fn npy_labels(data: Vec<f32>, shape: Vec<u32>) -> Result<Vec<u8>, JsError> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let labels: Vec<i64> = data.iter().map(|&v| v as i64).collect();
    segloss_data::npy::to_bytes(&labels, &shape).map_err(js_err)
}
