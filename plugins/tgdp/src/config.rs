//! `[plugin.config]` of `tgdp`: keys, defaults and their checks.

use dtx_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which network family the three networks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// MLP for vector models, conv net for image models.
    Auto,
    /// An MLP on the flattened sample (vectors only).
    Mlp,
    /// The small conv net (images only).
    Conv,
}

/// Where the source-domain samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFrom {
    /// `[source.data]` when the manifest has it, else the source model.
    Auto,
    /// `[source.data]` (an error without it).
    Data,
    /// `source_samples` drawn from the source model.
    Model,
}

/// `[plugin.config]` of `tgdp`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Guidance scale w: ε − w·sqrt(1−ᾱ)·∇log h.
    pub w: f32,
    /// "auto", "mlp" (vectors) or "conv" (images).
    pub network: Network,
    /// MLP width.
    pub hidden: usize,
    /// MLP hidden layers.
    pub depth: usize,
    /// Conv net base channels.
    pub channels: usize,
    /// Sinusoidal time features (even).
    pub time_dim: usize,
    /// Adam steps of the domain classifier c (step 1).
    pub classifier_steps: u64,
    /// Adam steps of the time-dependent classifier c' (step 2).
    pub time_classifier_steps: u64,
    /// Adam steps of the guidance network h (step 3).
    pub guidance_steps: u64,
    /// Adam learning rate of the three networks.
    pub lr: f32,
    /// Source and target samples per step.
    pub batch: usize,
    /// η1, weight of the cycle term (>= 0).
    pub eta1: f32,
    /// η2, weight of the consistency term (>= 0).
    pub eta2: f32,
    /// Source samples: "auto", "data" ([source.data]) or "model".
    pub source: SourceFrom,
    /// Samples drawn from the source model when it is the source.
    pub source_samples: usize,
    /// Class-conditional ratio q(x0,y)/p(x0,y) and guidance.
    pub conditional: bool,
    /// Source model classes (conditional).
    pub num_classes: usize,
    /// Target label i is source label label_map[i].
    pub label_map: Vec<usize>,
    /// Ratio targets are clipped to [0, max_ratio].
    pub max_ratio: f32,
    /// Log the losses every this many steps.
    pub log_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            w: 1.0,
            network: Network::Auto,
            hidden: 256,
            depth: 3,
            channels: 32,
            time_dim: 32,
            classifier_steps: 2000,
            time_classifier_steps: 2000,
            guidance_steps: 4000,
            lr: 3e-4,
            batch: 256,
            eta1: 0.1,
            eta2: 1.0,
            source: SourceFrom::Auto,
            source_samples: 2048,
            conditional: false,
            num_classes: 0,
            label_map: Vec::new(),
            max_ratio: 100.0,
            log_every: 10,
        }
    }
}

impl Config {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), AbiError> {
        for (key, v, min) in [
            ("w", self.w, f32::NEG_INFINITY),
            ("eta1", self.eta1, 0.0),
            ("eta2", self.eta2, 0.0),
        ] {
            if !(v.is_finite() && v >= min) {
                return Err(AbiError::config(
                    key,
                    format!(
                        "must be a finite number{}, got {v}",
                        if min == 0.0 { " >= 0" } else { "" }
                    ),
                ));
            }
        }
        for (key, v) in [("lr", self.lr), ("max_ratio", self.max_ratio)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(AbiError::config(
                    key,
                    format!("must be a finite number > 0, got {v}"),
                ));
            }
        }
        // Upper bounds keep a typo from an allocation that would abort the
        // process (one-hot labels are batch × num_classes values built here).
        for (key, v, max) in [
            ("hidden", self.hidden, 65_536),
            ("depth", self.depth, 64),
            ("channels", self.channels, 4096),
            ("batch", self.batch, 65_536),
            ("source_samples", self.source_samples, 1_000_000),
            ("log_every", self.log_every as usize, usize::MAX),
            ("num_classes", self.num_classes.max(1), 10_000),
            ("time_dim", self.time_dim.max(2), 4096),
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
        if self.time_dim == 0 || !self.time_dim.is_multiple_of(2) {
            return Err(AbiError::config(
                "time_dim",
                format!("must be even and at least 2, got {}", self.time_dim),
            ));
        }
        if self.conditional && self.num_classes == 0 {
            return Err(AbiError::config(
                "num_classes",
                "`conditional = true` needs the source model's number of classes",
            ));
        }
        if let Some(&bad) = self
            .label_map
            .iter()
            .find(|&&l| l >= self.num_classes.max(1))
        {
            return Err(AbiError::config(
                "label_map",
                format!(
                    "maps to class {bad}, but num_classes is {}",
                    self.num_classes
                ),
            ));
        }
        if !self.label_map.is_empty() && !self.conditional {
            return Err(AbiError::config(
                "label_map",
                "only used with `conditional = true`",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_names_its_key() {
        let cases: Vec<(&str, Config)> = vec![
            (
                "eta1",
                Config {
                    eta1: -1.0,
                    ..Config::default()
                },
            ),
            (
                "eta2",
                Config {
                    eta2: f32::NAN,
                    ..Config::default()
                },
            ),
            (
                "lr",
                Config {
                    lr: 0.0,
                    ..Config::default()
                },
            ),
            (
                "max_ratio",
                Config {
                    max_ratio: -2.0,
                    ..Config::default()
                },
            ),
            (
                "batch",
                Config {
                    batch: 0,
                    ..Config::default()
                },
            ),
            (
                "time_dim",
                Config {
                    time_dim: 7,
                    ..Config::default()
                },
            ),
            // a typo that would allocate batch × 4e9 one-hot values
            (
                "num_classes",
                Config {
                    conditional: true,
                    num_classes: 4_000_000_000,
                    ..Config::default()
                },
            ),
            (
                "source_samples",
                Config {
                    source_samples: 25_600_000_000,
                    ..Config::default()
                },
            ),
            (
                "num_classes",
                Config {
                    conditional: true,
                    ..Config::default()
                },
            ),
            (
                "label_map",
                Config {
                    conditional: true,
                    num_classes: 3,
                    label_map: vec![0, 3],
                    ..Config::default()
                },
            ),
            (
                "label_map",
                Config {
                    label_map: vec![0],
                    ..Config::default()
                },
            ),
        ];
        for (key, cfg) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.key_path.as_str(), key, "{err:?}");
        }
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_values() {
        let c: Config =
            dtx_plugin_api::config::parse(r#"{"network": "conv", "eta1": 0.5}"#).unwrap();
        assert_eq!(c.network, Network::Conv);
        assert_eq!((c.eta1, c.eta2, c.lr, c.w), (0.5, 1.0, 3e-4, 1.0));
        let err = dtx_plugin_api::config::parse::<Config>(r#"{"source": "both"}"#).unwrap_err();
        assert_eq!(err.key_path.as_str(), "source", "{err:?}");
        let err = dtx_plugin_api::config::parse::<Config>(r#"{"eta3": 1}"#).unwrap_err();
        assert!(err.message.contains("eta3"), "{err:?}");
    }
}
