//! `[plugin.config]` of `denoiser-guidance`: keys, defaults and their checks.

use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which defaults the classifier takes (the paper's two settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Sec. 5.1: bottleneck + second up block at t = 700, 3 conv layers,
    /// 100 steps; guidance on, rejection off.
    Attribute,
    /// Sec. 5.3: bottleneck at t = 300 and t = 800, 4 conv layers;
    /// rejection on, guidance off.
    Rejection,
    /// Sec. 5.2: segmentation masks; decoder features at t = 500
    /// upsampled to the image, a 3-layer per-pixel MLP, 50 steps, λ = 2e-4;
    /// guidance on, rejection off.
    Mask,
}

/// Where the classifier's labels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    /// The labelled target set's classes (`target.labels = true`).
    Target,
    /// Two classes: source samples (0) against target images (1); the
    /// target class is 1 (an unlabelled target).
    Domain,
}

/// `[plugin.config]` of `denoiser-guidance`. Keys left out take the
/// preset's value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// "attribute" (bottleneck + up.1 at t=700, 3 conv layers, 100 steps, guide, λ 1),
    /// "rejection" (bottleneck at t=300,800, 4 conv layers, 300 steps, reject) or "mask"
    /// (decoder at t=500, 3-layer per-pixel MLP, 50 steps, guide, λ 2e-4).
    pub preset: Preset,
    /// "target" (the labelled target's classes) or "domain" (target images against source-model
    /// samples).
    pub labels: Labels,
    /// Classes of the labelled target set (of its mask pixels for `mask`).
    pub num_classes: usize,
    /// Feature points: "bottleneck", "decoder", "up.{i}", "down.{i}" or point names (default:
    /// preset).
    pub points: Option<Vec<String>>,
    /// Feature timesteps t_f, concatenated (default: preset).
    pub timesteps: Option<Vec<u32>>,
    /// Conv layers of the classifier (default: preset).
    pub layers: Option<usize>,
    /// Classifier width.
    pub channels: usize,
    /// Adam steps of the classifier (default: preset).
    pub steps: Option<u64>,
    /// Adam learning rate of the classifier.
    pub lr: f32,
    /// Examples per classifier step.
    pub batch: usize,
    /// Labelled draws whose features train the classifier.
    pub pool: usize,
    /// Held-out draws for the logged accuracy (0: none).
    pub validation: usize,
    /// q_sample the feature input at t_f everywhere (default: clean, as the paper).
    pub feature_noise: bool,
    /// Classifier guidance in score (default: preset).
    pub guide: Option<bool>,
    /// λ of Eq. 13, on log p(y|x̂0) summed over the batch and mask pixels (default: preset).
    pub lambda: Option<f32>,
    /// Reject samples in filter (default: preset).
    pub reject: Option<bool>,
    /// Keep a sample when p(y|x) >= threshold.
    pub threshold: f32,
    /// Trainable class embedding at temb, label dropout and CFG.
    pub class_embedding: bool,
    /// Probability of the null class for a training label.
    pub label_dropout: f32,
    /// w of ε = (1 + w) ε_cond − w ε_null.
    pub cfg_weight: f32,
    /// Log the classifier loss every this many steps.
    pub log_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            preset: Preset::Attribute,
            labels: Labels::Target,
            num_classes: 0,
            points: None,
            timesteps: None,
            layers: None,
            channels: 64,
            steps: None,
            lr: 1e-3,
            batch: 32,
            pool: 512,
            validation: 256,
            feature_noise: false,
            guide: None,
            lambda: None,
            reject: None,
            threshold: 0.2,
            class_embedding: false,
            label_dropout: 0.1,
            cfg_weight: 0.01,
            log_every: 10,
        }
    }
}

/// A config with every preset value filled in.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub points: Vec<String>,
    pub timesteps: Vec<u32>,
    pub layers: usize,
    pub steps: u64,
    pub guide: bool,
    pub reject: bool,
    /// Classes of the classifier (2 for `domain`).
    pub classes: usize,
    /// Per-pixel masks rather than one label per image.
    pub masks: bool,
    /// λ of Eq. 13.
    pub lambda: f32,
}

impl Config {
    /// The preset's values where the config leaves them out.
    pub fn resolve(&self) -> Resolved {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // points, t_f, layers, steps, guide and λ of each preset
        let (points, timesteps, layers, steps, guide, lambda) = match self.preset {
            Preset::Attribute => (
                strings(&["bottleneck", "up.1"]),
                vec![700],
                3,
                100,
                true,
                1.0,
            ),
            Preset::Rejection => (strings(&["bottleneck"]), vec![300, 800], 4, 300, false, 1.0),
            Preset::Mask => (strings(&["decoder"]), vec![500], 3, 50, true, 2e-4),
        };
        Resolved {
            points: self.points.clone().unwrap_or(points),
            timesteps: self.timesteps.clone().unwrap_or(timesteps),
            layers: self.layers.unwrap_or(layers),
            steps: self.steps.unwrap_or(steps),
            guide: self.guide.unwrap_or(guide),
            reject: self.reject.unwrap_or(self.preset == Preset::Rejection),
            masks: self.preset == Preset::Mask,
            lambda: self.lambda.unwrap_or(lambda),
            classes: match self.labels {
                Labels::Target => self.num_classes,
                Labels::Domain => 2,
            },
        }
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), AbiError> {
        let r = self.resolve();
        for (key, v) in [("lambda", r.lambda), ("cfg_weight", self.cfg_weight)] {
            if !v.is_finite() {
                return Err(AbiError::config(key, format!("must be finite, got {v}")));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(AbiError::config(
                "lr",
                format!("must be a finite number > 0, got {}", self.lr),
            ));
        }
        for (key, v) in [
            ("threshold", self.threshold),
            ("label_dropout", self.label_dropout),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(AbiError::config(key, format!("must be in [0, 1], got {v}")));
            }
        }
        // Upper bounds keep a typo from an allocation that would abort the
        // process (the plugin builds label vectors and pools of this size).
        for (key, v, max) in [
            ("channels", self.channels, 4096),
            ("batch", self.batch, 65_536),
            ("pool", self.pool, 1_000_000),
            ("layers", r.layers, 64),
            ("steps", r.steps as usize, usize::MAX),
            ("log_every", self.log_every as usize, usize::MAX),
            ("num_classes", self.num_classes.max(1), 10_000),
        ] {
            if v == 0 {
                return Err(AbiError::config(key, "must be at least 1"));
            }
            if v > max {
                return Err(AbiError::config(
                    key,
                    format!("must be at most {max}, got {v}"),
                ));
            }
        }
        if r.points.is_empty() {
            return Err(AbiError::config("points", "needs at least one point"));
        }
        if r.timesteps.is_empty() {
            return Err(AbiError::config("timesteps", "needs at least one timestep"));
        }
        if self.labels == Labels::Target && self.num_classes < 2 {
            return Err(AbiError::config(
                "num_classes",
                format!(
                    "must be at least 2 with `labels = \"target\"` (the classes of the labelled target set), got {}",
                    self.num_classes
                ),
            ));
        }
        if r.masks && self.labels == Labels::Domain {
            return Err(AbiError::config(
                "labels",
                "`domain` labels whole images; the `mask` preset needs the target's masks (`labels = \"target\"`)",
            ));
        }
        if self.class_embedding && self.labels == Labels::Domain {
            return Err(AbiError::config(
                "class_embedding",
                "needs class labels (`labels = \"target\"`); `domain` has none to embed",
            ));
        }
        Ok(())
    }
}
