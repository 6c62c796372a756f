//! `[condition]`: the encoder that turns images (and, for CLIP, text) into
//! the condition embeddings `c` that plugins receive in `inject`
//! (docs/manifest.md, "[condition]").

use super::{EncoderKind, TokenKind};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default `condition.points`: the bottleneck's residual blocks.
pub const DEFAULT_CONDITION_POINTS: &[&str] = &["mid.res.*"];
/// Default `condition.t`.
pub const DEFAULT_CONDITION_T: usize = 50;
/// Default `condition.grid`.
pub const DEFAULT_CONDITION_GRID: usize = 2;

/// `[condition]`: the run's condition encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// `unet` (embedded) or `clip`. Default: `unet`.
    #[serde(default)]
    pub encoder: EncoderKind,
    /// The CLIP model folder (`encoder = "clip"` only): `config.json`,
    /// `model.safetensors`, `tokenizer.json`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// CLIP tokens: `pooled` or `patches` (`encoder = "clip"` only).
    /// Default: `pooled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenKind>,
    /// U-Net injection points (names or globs) whose activations are pooled
    /// into tokens (`encoder = "unet"` only). Default: `["mid.res.*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<String>>,
    /// The timestep the U-Net sees the image at (`encoder = "unet"` only).
    /// Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<usize>,
    /// Each point is average-pooled to a `grid × grid` grid of tokens
    /// (`encoder = "unet"` only). Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<usize>,
}

impl Condition {
    /// `points`, or the default.
    pub fn points(&self) -> Vec<String> {
        self.points.clone().unwrap_or_else(|| {
            DEFAULT_CONDITION_POINTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }
    /// `t`, or the default.
    pub fn t(&self) -> usize {
        self.t.unwrap_or(DEFAULT_CONDITION_T)
    }
    /// `grid`, or the default.
    pub fn grid(&self) -> usize {
        self.grid.unwrap_or(DEFAULT_CONDITION_GRID)
    }
    /// `tokens`, or the default.
    pub fn tokens(&self) -> TokenKind {
        self.tokens.unwrap_or_default()
    }
}
