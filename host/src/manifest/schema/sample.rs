//! `[sample]`: how images are drawn from the (transferred) model.

use super::{Sampler, default_attempts_factor, default_batch, default_one, default_sample_steps};
use serde::{Deserialize, Serialize};

/// `[sample]`: how images are drawn from the (transferred) model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Sampler. Default: `ddim`.
    #[serde(default)]
    pub sampler: Sampler,
    /// Denoising steps. Default: 50.
    #[serde(default = "default_sample_steps")]
    pub steps: usize,
    /// Number of samples to draw. Default: 16.
    #[serde(default = "default_batch")]
    pub count: usize,
    /// DDIM η: 0 is deterministic, 1 matches DDPM's variance, >= 0.
    /// Default: 0.0.
    #[serde(default)]
    pub eta: f64,
    /// Samples per forward pass. Default: 16.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Guidance scale, >= 0; 0 disables guidance. Default: 0.0.
    #[serde(default)]
    pub guidance: f64,
    /// Class to sample for a class-conditional model. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u64>,
    /// Clip each step's predicted x0 to [−clip_range, clip_range] (diffusers'
    /// `clip_sample`). Default: true for images, false for vector data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    /// The range of `clip_sample`, > 0. Default: 1.0 (data in [−1, 1]).
    #[serde(default = "default_one")]
    pub clip_range: f64,
    /// With `filter` plugins, draw at most `max_attempts_factor × count`
    /// samples while waiting for `count` to be accepted. Default: 10.
    #[serde(default = "default_attempts_factor")]
    pub max_attempts_factor: usize,
    /// Condition each sample on a mask of the target's masks, in turn:
    /// `held_out` or `target` (the training images'). Plugins' `score` and
    /// `filter` hooks get the masks `[B, H, W]` as their labels. Default:
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<MaskSource>,
    /// With `[condition]`: the images samples are conditioned on, in turn:
    /// `target` (the training images, "seen"), `held_out` ("unseen"), or
    /// the path of an image or a folder of images. Default: `target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// With `[condition]`: the side fraction δ of the rectangle masked out
    /// of each condition image before it is encoded (ANL's masked
    /// sampling), in [0, 1). Default: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_rate: Option<f64>,
    /// One mask per sample instead of one per batch. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_per_sample: bool,
    /// With a CLIP `[condition]`: condition every sample on this text
    /// instead of images (it replaces `condition`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// Where `sample.masks` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// The held-out target images' masks (`target.holdout`).
    HeldOut,
    /// The training target images' masks.
    Target,
}
