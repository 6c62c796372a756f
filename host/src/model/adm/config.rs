//! [`AdmConfig`]: the architecture of a guided-diffusion `UNetModel`, read from
//! the flags an `adm` [`ModelDescription`] holds (guided-diffusion's defaults
//! already filled in by `model::adm`; `UNetModel.__init__` of
//! guided-diffusion's `unet.py`, Dhariwal & Nichol 2021, arXiv:2105.05233).
//! The network it defines is [`super::AdmNet`].

use super::AdmError;
use crate::model::ModelDescription;

/// guided-diffusion's `normalization(channels)` is `GroupNorm32(32, channels)`.
pub(crate) const GROUPS: usize = 32;
/// `nn.GroupNorm`'s default epsilon.
pub(crate) const EPS: f64 = 1e-5;

/// How an attention block splits its fused `qkv` projection into heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionOrder {
    /// `QKVAttentionLegacy` (`use_new_attention_order = false`, the default):
    /// the `3C` channels are `heads` blocks of `[q, k, v]`, each `C / heads`
    /// wide.
    Legacy,
    /// `QKVAttention` (`use_new_attention_order = true`): `[q, k, v]`, each
    /// split into `heads` blocks.
    New,
}

/// A guided-diffusion / improved-diffusion `UNetModel` (Nichol & Dhariwal,
/// *Improved Denoising Diffusion Probabilistic Models*, 2021,
/// arXiv:2102.09672; Dhariwal & Nichol, *Diffusion Models Beat GANs on Image
/// Synthesis*, 2021, arXiv:2105.05233), as far as its forward pass needs.
/// Fields are named for guided-diffusion's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmConfig {
    /// `image_size`: image side.
    pub image_size: usize,
    /// `in_channels`.
    pub in_channels: usize,
    /// `num_channels` (`model_channels`): width of the first level and of
    /// the sinusoidal time embedding.
    pub model_channels: usize,
    /// Output channels: `in_channels`, twice that with `learn_sigma`.
    pub out_channels: usize,
    /// `num_res_blocks`: ResBlocks per input level (output levels have one more).
    pub num_res_blocks: usize,
    /// Channels of each level, `int(channel_mult[l] · num_channels)`.
    pub channels: Vec<usize>,
    /// Downsampling factors with attention (`image_size / r` for each `r` in
    /// `attention_resolutions`).
    pub attention_ds: Vec<usize>,
    /// `num_heads`, used when `num_head_channels` is unset.
    pub num_heads: usize,
    /// `num_head_channels` (`None` for guided-diffusion's `-1`): heads of this
    /// width, whatever the block's channels.
    pub num_head_channels: Option<usize>,
    /// `num_heads_upsample` (`-1` resolved to `num_heads`): heads of the
    /// output blocks' attention when `num_head_channels` is unset.
    pub num_heads_upsample: usize,
    /// `use_scale_shift_norm`: ResBlocks apply the time embedding as
    /// `norm(h) · (1 + scale) + shift`.
    pub use_scale_shift_norm: bool,
    /// `resblock_updown`: resolution changes are ResBlocks with up/down
    /// resampling instead of a strided conv / upsample-then-conv.
    pub resblock_updown: bool,
    /// Rows of `label_emb` when `class_cond`.
    pub num_classes: Option<usize>,
    /// `use_new_attention_order`.
    pub attention_order: AttentionOrder,
    /// `dropout`: each ResBlock's rate in `out_layers`, in training only.
    pub dropout: f64,
}

fn invalid(key: &str, reason: String) -> AdmError {
    AdmError::Config {
        key: key.into(),
        reason,
    }
}

/// guided-diffusion's `-1` ("unset") or a positive count.
fn count_or_unset(d: &ModelDescription, key: &str) -> Result<Option<usize>, AdmError> {
    match d.i64_value(key)? {
        -1 => Ok(None),
        n if n > 0 => Ok(Some(n as usize)),
        n => Err(invalid(
            key,
            format!("must be -1 (unset) or positive, found {n}"),
        )),
    }
}

impl AdmConfig {
    /// The U-Net an `adm` description defines.
    pub fn from_description(d: &ModelDescription) -> Result<AdmConfig, AdmError> {
        if d.kind != "adm" {
            return Err(invalid(
                "kind",
                format!("a `{}` model is not an ADM U-Net", d.kind),
            ));
        }
        let image_size = d.usize_value("image_size")?;
        let model_channels = d.usize_value("num_channels")?;
        let channels: Vec<usize> = d
            .numbers_value("channel_mult")?
            .iter()
            .map(|&m| (m * model_channels as f64) as usize)
            .collect();
        let attention_ds = d
            .numbers_value("attention_resolutions")?
            .iter()
            .map(|&r| match r as usize {
                0 => Err(invalid(
                    "attention_resolutions",
                    "a resolution must be at least 1".into(),
                )),
                r => Ok(image_size / r),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let num_heads = count_or_unset(d, "num_heads")?
            .ok_or_else(|| invalid("num_heads", "must be positive, found -1".into()))?;
        let num_heads_upsample = count_or_unset(d, "num_heads_upsample")?.unwrap_or(num_heads);
        let net = AdmConfig {
            image_size,
            in_channels: d.usize_value("in_channels")?,
            model_channels,
            out_channels: d.out_channels,
            num_res_blocks: d.usize_value("num_res_blocks")?,
            channels,
            attention_ds,
            num_heads,
            num_head_channels: count_or_unset(d, "num_head_channels")?,
            num_heads_upsample,
            use_scale_shift_norm: d.bool_value("use_scale_shift_norm")?,
            resblock_updown: d.bool_value("resblock_updown")?,
            num_classes: if d.bool_value("class_cond")? {
                Some(d.usize_value("num_classes")?)
            } else {
                None
            },
            attention_order: if d.bool_value("use_new_attention_order")? {
                AttentionOrder::New
            } else {
                AttentionOrder::Legacy
            },
            dropout: d.f64_value("dropout")?,
        };
        net.check()?;
        Ok(net)
    }

    /// What `model::adm` checks when it describes the flags, again, so that
    /// a hand-made description cannot make the forward pass panic.
    fn check(&self) -> Result<(), AdmError> {
        for (key, n) in [
            ("image_size", self.image_size),
            ("num_channels", self.model_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if self.channels.is_empty() {
            return Err(invalid(
                "channel_mult",
                "must list at least one level".into(),
            ));
        }
        if let Some(l) = self
            .channels
            .iter()
            .position(|&c| c == 0 || c % GROUPS != 0)
        {
            return Err(invalid(
                "channel_mult",
                format!(
                    "level {l} has {} channels, not a positive multiple of {GROUPS}",
                    self.channels[l]
                ),
            ));
        }
        let scale = 1usize << (self.levels() - 1).min(63);
        if !self.image_size.is_multiple_of(scale) {
            return Err(invalid(
                "image_size",
                format!(
                    "{} cannot be halved {} times",
                    self.image_size,
                    self.levels() - 1
                ),
            ));
        }
        let last = self.levels() - 1;
        let mut blocks: Vec<(usize, bool)> = vec![(self.channels[last], false)]; // middle_block.1
        for (l, &ch) in self.channels.iter().enumerate() {
            if self.has_attention(l) {
                blocks.extend([(ch, false), (ch, true)]);
            }
        }
        for (ch, up) in blocks {
            if self.heads(ch, up).is_none() {
                let key = match (self.num_head_channels, up) {
                    (Some(_), _) => "num_head_channels",
                    (None, false) => "num_heads",
                    (None, true) => "num_heads_upsample",
                };
                return Err(invalid(
                    key,
                    format!(
                        "an attention block with {ch} channels cannot be split into these heads"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Number of levels (`len(channel_mult)`).
    pub fn levels(&self) -> usize {
        self.channels.len()
    }

    /// Width of the time embedding, `4 · num_channels`.
    pub fn temb_channels(&self) -> usize {
        4 * self.model_channels
    }

    /// Whether level `l` (downsampling factor `2^l`) has attention blocks.
    pub fn has_attention(&self, l: usize) -> bool {
        self.attention_ds.contains(&(1 << l))
    }

    /// `(heads, head_dim)` of an attention block over `channels`: heads of
    /// `num_head_channels`, else `num_heads` (`num_heads_upsample` in the
    /// output blocks, `up`) heads. `None` when they do not divide.
    pub fn heads(&self, channels: usize, up: bool) -> Option<(usize, usize)> {
        let (heads, width) = match self.num_head_channels {
            Some(w) => (channels / w, w),
            None => {
                let h = if up {
                    self.num_heads_upsample
                } else {
                    self.num_heads
                };
                (h, channels / h)
            }
        };
        (heads > 0 && heads * width == channels).then_some((heads, width))
    }
}
