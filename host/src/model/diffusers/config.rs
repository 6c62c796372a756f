//! [`UNet2DConfig`]: the architecture of a diffusers `UNet2DModel`, read from the
//! config values a [`ModelDescription`] holds (diffusers' defaults already
//! filled in by `model::diffusers`). The network it defines, with its
//! parameters under their checkpoint keys, is [`super::UNet2DConfig`].

use super::UNetError;
use crate::model::{ConfigProblem, ModelDescription};

/// Kind of a down or up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `DownBlock2D` / `UpBlock2D`: resnets only.
    Plain,
    /// `AttnDownBlock2D` / `AttnUpBlock2D`: a self-attention after each resnet.
    Attn,
}

/// How a resnet adds the time embedding (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeShift {
    /// `"default"`: `h = norm2(conv1(..) + proj(temb))`.
    Default,
    /// `"scale_shift"`: `h = norm2(conv1(..)) · (1 + scale) + shift`, with
    /// `[scale, shift] = proj(temb)` (twice the channels).
    ScaleShift,
}

/// A diffusers `UNet2DModel`, as far as its forward pass needs. Field names
/// are the `config.json` keys; defaults are diffusers' (`UNet2DModel.__init__`).
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConfig {
    /// `sample_size`: image side.
    pub sample_size: usize,
    /// `in_channels`.
    pub in_channels: usize,
    /// `out_channels`.
    pub out_channels: usize,
    /// `block_out_channels`: channels of each level, full resolution first.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`: resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// `down_block_types`.
    pub down: Vec<BlockKind>,
    /// `up_block_types` (lowest resolution first).
    pub up: Vec<BlockKind>,
    /// `mid_block_type` is `UNetMidBlock2D` (not null).
    pub mid_block: bool,
    /// `add_attention`: the mid block has its attention.
    pub add_attention: bool,
    /// Width of the time embedding (`time_embedding_dim`, or `4 · block_out_channels[0]`).
    pub temb_channels: usize,
    /// `flip_sin_to_cos`.
    pub flip_sin_to_cos: bool,
    /// `freq_shift`.
    pub freq_shift: f64,
    /// `norm_num_groups`.
    pub norm_num_groups: usize,
    /// `attn_norm_num_groups` (mid block attention only).
    pub attn_norm_num_groups: Option<usize>,
    /// `norm_eps`.
    pub norm_eps: f64,
    /// `attention_head_dim` (null: one head as wide as the block).
    pub attention_head_dim: Option<usize>,
    /// `resnet_time_scale_shift`.
    pub time_shift: TimeShift,
    /// `num_class_embeds` (rows of `class_embedding.weight`).
    pub num_class_embeds: Option<usize>,
    /// `downsample_padding`: 1 (symmetric), or 0 (pad right and bottom by one).
    pub downsample_padding: usize,
    /// `mid_block_scale_factor`: the mid block's resnets and attention divide
    /// their output by it.
    pub mid_block_scale_factor: f64,
    /// `center_input_sample`: the input is mapped `x -> 2x - 1` first.
    pub center_input_sample: bool,
    /// `dropout`: each resnet's rate before `conv2`, in training only.
    pub dropout: f64,
}

impl From<ConfigProblem> for UNetError {
    fn from(p: ConfigProblem) -> Self {
        UNetError::Config {
            key: p.key,
            reason: p.reason,
        }
    }
}

fn strings_of(d: &ModelDescription, key: &str) -> Result<Vec<String>, UNetError> {
    let v = d.value(key)?;
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ConfigProblem::expected(key, &v, "an array of strings").into())
}

fn kinds(
    d: &ModelDescription,
    key: &str,
    plain: &str,
    attn: &str,
) -> Result<Vec<BlockKind>, UNetError> {
    strings_of(d, key)?
        .iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            t if t == plain => Ok(BlockKind::Plain),
            t if t == attn => Ok(BlockKind::Attn),
            other => Err(UNetError::Config {
                key: format!("{key}[{i}]"),
                reason: format!("unsupported value {other:?}; dtx supports {plain}, {attn}"),
            }),
        })
        .collect()
}

impl UNet2DConfig {
    /// The U-Net a `diffusers` description defines.
    pub fn from_description(d: &ModelDescription) -> Result<UNet2DConfig, UNetError> {
        if d.kind != "diffusers" {
            return Err(UNetError::Config {
                key: "kind".into(),
                reason: format!("a `{}` model is not a diffusers UNet2DModel", d.kind),
            });
        }
        let channels: Vec<usize> = {
            let v = d.value("block_out_channels")?;
            v.as_array()
                .and_then(|a| a.iter().map(|n| n.as_u64().map(|n| n as usize)).collect())
                .ok_or_else(|| {
                    ConfigProblem::expected("block_out_channels", &v, "an array of integers")
                })?
        };
        let shift = match d.value("resnet_time_scale_shift")?.as_str() {
            Some("default") => TimeShift::Default,
            Some("scale_shift") => TimeShift::ScaleShift,
            other => {
                return Err(UNetError::Config {
                    key: "resnet_time_scale_shift".into(),
                    reason: format!(
                        "unsupported value {other:?}; dtx supports \"default\", \"scale_shift\""
                    ),
                });
            }
        };
        let net = UNet2DConfig {
            sample_size: d.usize_value("sample_size")?,
            in_channels: d.usize_value("in_channels")?,
            out_channels: d.usize_value("out_channels")?,
            layers_per_block: d.usize_value("layers_per_block")?,
            down: kinds(d, "down_block_types", "DownBlock2D", "AttnDownBlock2D")?,
            up: kinds(d, "up_block_types", "UpBlock2D", "AttnUpBlock2D")?,
            mid_block: !d.value("mid_block_type")?.is_null(),
            add_attention: d.bool_value("add_attention")?,
            temb_channels: d.temb_channels,
            flip_sin_to_cos: d.bool_value("flip_sin_to_cos")?,
            freq_shift: d.f64_value("freq_shift")?,
            norm_num_groups: d.usize_value("norm_num_groups")?,
            attn_norm_num_groups: d.opt_usize_value("attn_norm_num_groups")?,
            norm_eps: d.f64_value("norm_eps")?,
            attention_head_dim: d.opt_usize_value("attention_head_dim")?,
            time_shift: shift,
            num_class_embeds: d.opt_usize_value("num_class_embeds")?,
            downsample_padding: d.usize_value("downsample_padding")?,
            mid_block_scale_factor: d.f64_value("mid_block_scale_factor")?,
            center_input_sample: d.bool_value("center_input_sample")?,
            dropout: d.f64_value("dropout")?,
            block_out_channels: channels,
        };
        if net.downsample_padding > 1 {
            return Err(UNetError::Config {
                key: "downsample_padding".into(),
                reason: format!(
                    "unsupported value {}; dtx supports 0 and 1",
                    net.downsample_padding
                ),
            });
        }
        if let Some(0) = net.attention_head_dim {
            return Err(UNetError::Config {
                key: "attention_head_dim".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(net)
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// `(heads, head_dim)` of an attention over `channels` channels:
    /// diffusers' `heads = channels // attention_head_dim`.
    pub fn heads(&self, channels: usize) -> (usize, usize) {
        let d = self.attention_head_dim.unwrap_or(channels);
        (channels / d, d)
    }

    /// Groups of the mid block attention's norm: `attn_norm_num_groups`, else
    /// `norm_num_groups` with the default time shift and no norm with
    /// `scale_shift` (diffusers `UNetMidBlock2D.__init__`).
    pub fn mid_attn_groups(&self) -> Option<usize> {
        self.attn_norm_num_groups.or(match self.time_shift {
            TimeShift::Default => Some(self.norm_num_groups),
            TimeShift::ScaleShift => None,
        })
    }

    /// Input channels of resnet `j` of up level `i`, with the skip it
    /// concatenates (diffusers `UNet2DModel.__init__` and `AttnUpBlock2D`).
    pub(crate) fn up_resnet_in(&self, i: usize, j: usize) -> usize {
        let rc: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let levels = rc.len();
        let prev = rc[i.saturating_sub(1)];
        let out = rc[i];
        let input = rc[(i + 1).min(levels - 1)];
        let skip = if j == self.layers_per_block {
            input
        } else {
            out
        };
        let resnet_in = if j == 0 { prev } else { out };
        resnet_in + skip
    }
}
