//! Configs in burn's style (`#[derive(Config)]`: `new`, `with_*`, saved and loaded as JSON with
//! the rest of a training config) for any loss text and for the common losses one by one.
//!
//! ```no_run
//! use segloss::Mode;
//! use segloss_burn::{DiceLossConfig, FocalLossConfig, SegLossConfig};
//! # fn main() -> Result<(), segloss_burn::Error> {
//! let dice = DiceLossConfig::new(Mode::Binary).with_smooth(1.0).with_log(true);
//! assert_eq!(dice.text(), "dice:smooth=1,eps=0.0000001,log=true,squared=false,pool=batch");
//! let loss = dice.init()?;
//! // several terms: any loss text
//! let focal = FocalLossConfig::new(Mode::Binary).with_alpha(Some(0.25));
//! let mixed = SegLossConfig::new(format!("{}+dice@monai", focal.text()), Mode::Binary).init()?;
//! # let _ = (loss, mixed); Ok(()) }
//! ```

use std::sync::Arc;

use burn::config::Config;
use segloss::{Engine, Mode};

use crate::{Error, SegLoss};

/// Any segloss loss text (`"0.5*bce+0.5*dice"`, `"dice@monai+focal@monai"`, `"ce+lovasz"`).
#[derive(Config, Debug)]
pub struct SegLossConfig {
    /// The loss text.
    pub loss: String,
    /// How targets are given: binary, multilabel (float masks) or multiclass (class indices).
    pub mode: Mode,
    /// Targets equal to this value take no part in the loss.
    #[config(default = "None")]
    pub ignore_index: Option<i64>,
}

impl SegLossConfig {
    /// The loss, on segloss's default engine for tensors that go through host memory (opened at
    /// the first of them: [`SegLoss::new`]).
    pub fn init(&self) -> Result<SegLoss, Error> {
        self.ignoring(SegLoss::new(&self.loss, self.mode)?)
    }

    /// The loss, on `engine` (one engine for several losses; on a shared wgpu device, the engine
    /// of [`crate::wgpu::init`]).
    pub fn init_with(&self, engine: Arc<Engine>) -> Result<SegLoss, Error> {
        self.ignoring(SegLoss::with_engine(self.loss.parse()?, self.mode, engine))
    }

    fn ignoring(&self, loss: SegLoss) -> Result<SegLoss, Error> {
        Ok(match self.ignore_index {
            Some(k) => loss.ignore_index(k),
            None => loss,
        })
    }
}

/// A number as the loss text writes it (Rust's shortest round-trip decimal: no exponent).
fn num(v: f64) -> String {
    format!("{v}")
}

/// A region loss's `pool`, one of the words the loss text takes (a config is loaded from JSON,
/// and its text is spliced in: `image+bce` would add a term, `batch,smooth=5` a key).
fn check_pool(pool: &str) -> Result<(), Error> {
    let words = segloss::expr::Pool::WORDS.map(|(w, _)| w);
    if words.contains(&pool) {
        Ok(())
    } else {
        Err(Error::Segloss(segloss::Error::Input(format!("pool '{pool}' is not one of {}", words.join(", ")))))
    }
}

macro_rules! typed {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty = $default:literal),* $(,)? } => |$s:ident| $text:expr $(, check |$cs:ident| $check:expr)?) => {
        $(#[$doc])*
        #[derive(Config, Debug)]
        pub struct $name {
            /// How targets are given.
            pub mode: Mode,
            $($(#[$fdoc])* #[config(default = $default)] pub $field: $ty,)*
            /// Targets equal to this value take no part in the loss.
            #[config(default = "None")]
            pub ignore_index: Option<i64>,
        }

        impl $name {
            /// The loss text this config stands for.
            pub fn text(&self) -> String {
                let $s = self;
                $text
            }

            /// The loss, on segloss's default engine for tensors that go through host memory.
            pub fn init(&self) -> Result<SegLoss, Error> {
                self.config()?.init()
            }

            /// The loss, on `engine`.
            pub fn init_with(&self, engine: Arc<Engine>) -> Result<SegLoss, Error> {
                self.config()?.init_with(engine)
            }

            /// As a [`SegLossConfig`]; an error where a field is not one of the words the loss
            /// text takes.
            pub fn config(&self) -> Result<SegLossConfig, Error> {
                $(let $cs = self; $check?;)?
                Ok(SegLossConfig { loss: self.text(), mode: self.mode, ignore_index: self.ignore_index })
            }
        }
    };
}

typed!(
    /// Dice loss: `1 - (2 TP + s) / max(2 TP + FP + FN + s, eps)` per class, mean over classes
    /// (segmentation_models_pytorch's `DiceLoss` with the defaults).
    DiceLossConfig {
        /// Smoothing added to numerator and denominator.
        smooth: f64 = 0.0,
        /// Floor of the denominator.
        eps: f64 = 1e-7,
        /// `-log(score)` instead of `1 - score`.
        log: bool = false,
        /// `sum p^2 + sum g^2` as the denominator.
        squared: bool = false,
        /// `batch` (sums over the batch), `image` (per image, then the mean) or `all`.
        pool: String = "String::from(\"batch\")",
    } => |c| format!("dice:smooth={},eps={},log={},squared={},pool={}", num(c.smooth), num(c.eps), c.log, c.squared, c.pool),
    check |c| check_pool(&c.pool)
);

typed!(
    /// Jaccard (IoU) loss: `1 - (TP + s) / max(TP + FP + FN + s, eps)` per class.
    JaccardLossConfig {
        /// Smoothing added to numerator and denominator.
        smooth: f64 = 0.0,
        /// Floor of the denominator.
        eps: f64 = 1e-7,
        /// `-log(score)` instead of `1 - score`.
        log: bool = false,
        /// `batch`, `image` or `all`.
        pool: String = "String::from(\"batch\")",
    } => |c| format!("jaccard:smooth={},eps={},log={},pool={}", num(c.smooth), num(c.eps), c.log, c.pool),
    check |c| check_pool(&c.pool)
);

typed!(
    /// Tversky loss: `(mean_c (1 - (TP + s) / max(TP + alpha FP + beta FN + s, eps)))^gamma`
    /// (gamma != 1: the focal Tversky loss).
    TverskyLossConfig {
        /// Weight of false positives.
        alpha: f64 = 0.5,
        /// Weight of false negatives.
        beta: f64 = 0.5,
        /// Exponent.
        gamma: f64 = 1.0,
        /// Smoothing.
        smooth: f64 = 0.0,
    } => |c| format!("tversky:alpha={},beta={},gamma={},smooth={}", num(c.alpha), num(c.beta), num(c.gamma), num(c.smooth))
);

typed!(
    /// Focal loss: `a_t (1 - p_t)^gamma BCE`, mean over all elements (one-vs-rest sigmoid in
    /// multiclass mode, as smp and MONAI).
    FocalLossConfig {
        /// Focusing exponent.
        gamma: f64 = 2.0,
        /// Weight of the positive class (`None`: no weighting).
        alpha: Option<f64> = "None",
    } => |c| match c.alpha {
        Some(a) => format!("focal:gamma={},alpha={}", num(c.gamma), num(a)),
        None => format!("focal:gamma={}", num(c.gamma)),
    }
);

typed!(
    /// Lovász loss: the hinge in binary and multilabel mode, Lovász-Softmax in multiclass mode.
    LovaszLossConfig {
        /// One Lovász extension per image, then the mean (false: one over the batch).
        per_image: bool = false,
    } => |c| format!("lovasz:per_image={}", c.per_image)
);

typed!(
    /// Binary cross-entropy on logits (PyTorch's `BCEWithLogitsLoss`).
    BceLossConfig {
        /// Weight of positive targets.
        pos_weight: f64 = 1.0,
        /// Label smoothing.
        label_smoothing: f64 = 0.0,
    } => |c| format!("bce:pos_weight={},label_smoothing={}", num(c.pos_weight), num(c.label_smoothing))
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every typed config's text parses, and means what the default text means.
    #[test]
    fn texts_parse_to_the_default_losses() {
        let m = Mode::Binary;
        let pairs = [
            (DiceLossConfig::new(m).text(), "dice"),
            (JaccardLossConfig::new(m).text(), "jaccard"),
            (TverskyLossConfig::new(m).text(), "tversky"),
            (FocalLossConfig::new(m).text(), "focal"),
            (LovaszLossConfig::new(m).text(), "lovasz"),
            (BceLossConfig::new(m).text(), "bce"),
        ];
        for (text, default) in pairs {
            let a: segloss::LossExpr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let b: segloss::LossExpr = default.parse().unwrap();
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
        }
        assert_eq!(num(1e-7), "0.0000001");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(2.0), "2");
        let c = FocalLossConfig::new(m).with_alpha(Some(0.25)).with_gamma(1.5);
        assert_eq!(c.text(), "focal:gamma=1.5,alpha=0.25");
        // saved and loaded as burn saves configs
        let c = SegLossConfig::new("bce+dice".into(), Mode::Multilabel).with_ignore_index(Some(255));
        let json = burn::config::config_to_json(&c);
        let back = SegLossConfig::load_binary(json.as_bytes()).unwrap();
        assert_eq!((back.loss.as_str(), back.mode, back.ignore_index), ("bce+dice", Mode::Multilabel, Some(255)));
    }

    /// (review) `pool` was spliced into the text unchecked: `image+bce` added a term and
    /// `batch,smooth=5` a key, silently.
    #[test]
    fn a_pool_that_is_not_a_pool_word_is_an_error() {
        let m = Mode::Binary;
        for pool in ["image+bce", "batch,smooth=5", "batch,empty=skip", "everything", ""] {
            for err in [
                DiceLossConfig::new(m).with_pool(pool.into()).init().err(),
                JaccardLossConfig::new(m).with_pool(pool.into()).init().err(),
            ] {
                let e = err.unwrap_or_else(|| panic!("pool '{pool}' was accepted")).to_string();
                assert!(e.contains(&format!("pool '{pool}' is not one of batch, image, all, image_all")), "{e}");
            }
        }
        for pool in ["batch", "image", "all", "image_all"] {
            let c = DiceLossConfig::new(m).with_pool(pool.into()).config().unwrap();
            assert!(c.loss.ends_with(&format!("pool={pool}")), "{}", c.loss);
            assert!(JaccardLossConfig::new(m).with_pool(pool.into()).init().is_ok());
        }
    }
}
