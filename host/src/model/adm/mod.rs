//! Describes a guided-diffusion / improved-diffusion ADM U-Net from the
//! manifest's `[source.config]` (flags named as guided-diffusion's
//! `model_and_diffusion_defaults`) and, for a `.safetensors` checkpoint, its
//! header.
//!
//! Layout as `UNetModel.__init__` in guided-diffusion (`guided_diffusion/unet.py`,
//! Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021,
//! arXiv:2105.05233): `input_blocks.0` is the input conv; input level `l`
//! holds `num_res_blocks` ResBlocks (each `input_blocks.{k}.0`, an attention
//! block at `.1` where the level's downsampling factor is in
//! `attention_resolutions`), then a downsampler except on the last level;
//! `middle_block` is ResBlock, attention, ResBlock; output level `i` (lowest
//! resolution first) holds `num_res_blocks + 1` ResBlocks (`output_blocks.{k}.0`)
//! with an upsampler after the last one except on the last level.
//!
//! The rest of the folder is the model itself: `config.rs` reads the
//! architecture ([`AdmConfig`]) from a description, `net.rs` builds the
//! network ([`AdmNet`]) and runs its forward (`attention.rs` is its
//! attention block), `weights.rs` loads `.safetensors` and `torch.save`
//! checkpoints into the host's parameter store.

mod attention;
mod config;
mod error;
mod net;
#[cfg(test)]
mod net_tests;
mod weights;

pub use config::{AdmConfig, AttentionOrder};
pub use error::AdmError;
pub use net::AdmNet;
pub use weights::load_weights;

use super::config::{ConfigReader, check_keys, found, table_to_json};
use super::describe::{Point, header_parameters};
use super::nn::hooks::LayerPoints;
use super::{KeyLocation, ModelDescription, ModelError, Origin};
use serde_json::Value;
use std::path::Path;

/// Every `[source.config]` key an `adm` source reads.
pub const KEYS: &[&str] = &[
    "image_size",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "resblock_updown",
    "learn_sigma",
    "class_cond",
    "num_classes",
    "in_channels",
    "dropout",
    "use_fp16",
    "use_checkpoint",
    "use_new_attention_order",
];

/// ADM normalizes with `GroupNorm32(32, channels)`.
const GROUPS: usize = 32;

/// Where guided-diffusion's diffusion flags belong in a dtx manifest.
fn diffusion_flag_hint(key: &str) -> Option<String> {
    let place = match key {
        "diffusion_steps" => "set `train.timesteps`",
        "noise_schedule" => "set `train.schedule`",
        "timestep_respacing" => "set `sample.steps`",
        "predict_xstart" => "set `source.prediction = \"sample\"`",
        "use_kl" | "rescale_timesteps" | "rescale_learned_sigmas" | "learn_sigma_loss" => {
            "dtx's diffusion settings live in [train] and [sample]"
        }
        _ => return None,
    };
    Some(format!(
        "`{key}` is a diffusion flag, not a model hyperparameter: {place}"
    ))
}

/// guided-diffusion's `channel_mult` for `image_size` when the flag is empty
/// (`create_model` in `guided_diffusion/script_util.py`).
fn default_channel_mult(image_size: usize) -> Option<Vec<f64>> {
    Some(match image_size {
        512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        _ => return None,
    })
}

fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:?}")
    }
}

/// A list flag written as a comma-separated string (`"16,8"`, as on
/// guided-diffusion's command line) or as an array of numbers. `None` when
/// absent or empty.
fn number_list(r: &ConfigReader, key: &str) -> Result<Option<Vec<f64>>, ModelError> {
    let at = r.at(key);
    let bad = |at: KeyLocation, v: &Value| ModelError::WrongType {
        at,
        expected: "a positive number".into(),
        found: found(v),
    };
    let values: Vec<f64> = match r.raw(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s
            .split(',')
            .enumerate()
            .map(|(i, part)| {
                part.trim()
                    .parse::<f64>()
                    .map_err(|_| ModelError::WrongType {
                        at: at.index(i),
                        expected: "a positive number".into(),
                        found: format!("{:?}", part.trim()),
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().ok_or_else(|| bad(at.index(i), v)))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(r.wrong_type(
                key,
                "a comma-separated string such as \"1,2,2,2\" or an array",
                v,
            ));
        }
    };
    if let Some(i) = values.iter().position(|&x| x <= 0.0 || !x.is_finite()) {
        return Err(ModelError::Invalid {
            at: at.index(i),
            reason: format!("must be positive, found {}", number_text(values[i])),
        });
    }
    if values.is_empty() {
        Ok(None)
    } else {
        Ok(Some(values))
    }
}

/// Describes the ADM U-Net at `path` (a `.pt` or `.safetensors` checkpoint)
/// with hyperparameters from `config`.
pub fn describe(path: &Path, config: &toml::Table) -> Result<ModelDescription, ModelError> {
    let mut description = describe_config(config)?;
    if !path.exists() {
        return Err(ModelError::MissingFile {
            path: path.to_owned(),
            expected: "a guided-diffusion checkpoint (.pt or .safetensors)".into(),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        _ if path.is_dir() => Err(ModelError::BadPath {
            path: path.to_owned(),
            reason: "an `adm` source is a checkpoint file (.pt or .safetensors), not a folder"
                .into(),
        }),
        "safetensors" => {
            description.parameters = header_parameters(path)?;
            Ok(description)
        }
        // A torch pickle: its names are read when the weights are loaded.
        "pt" | "pth" | "ckpt" => Ok(description),
        _ => Err(ModelError::BadPath {
            path: path.to_owned(),
            reason:
                "an `adm` checkpoint ends in .pt (guided-diffusion's torch.save) or .safetensors"
                    .into(),
        }),
    }
}

/// Describes the ADM U-Net that `[source.config]` defines.
pub fn describe_config(config: &toml::Table) -> Result<ModelDescription, ModelError> {
    let map = table_to_json(config);
    check_keys(&map, KEYS, diffusion_flag_hint)?;
    let mut r = ConfigReader::new(Origin::SourceConfig, &map);
    let invalid = |r: &ConfigReader, key: &str, reason: String| ModelError::Invalid {
        at: r.at(key),
        reason,
    };

    let image_size = r.usize("image_size", None)?;
    let nc = r.usize("num_channels", None)?;
    let nrb = r.usize("num_res_blocks", None)?;
    let mult = match number_list(&r, "channel_mult")? {
        Some(m) => m,
        None => default_channel_mult(image_size).ok_or_else(|| ModelError::MissingKey {
            at: r.at("channel_mult"),
            hint: Some(format!(
                "guided-diffusion picks it only for image_size 64, 128, 256 and 512, not {image_size}; \
                 improved-diffusion's 32x32 models use \"1,2,2,2\""
            )),
        })?,
    };
    let mult_text: Vec<String> = mult.iter().map(|&m| number_text(m)).collect();
    r.record("channel_mult", format!("[{}]", mult_text.join(", ")));
    let attn_res = attention_resolutions(&mut r)?;
    let num_heads = r.i64("num_heads", Some(4))?;
    let num_head_channels = r.i64("num_head_channels", Some(-1))?;
    let num_heads_upsample = r.i64("num_heads_upsample", Some(-1))?;
    r.bool("use_scale_shift_norm", Some(true))?;
    r.bool("resblock_updown", Some(false))?;
    let learn_sigma = r.bool("learn_sigma", Some(false))?;
    r.bool("class_cond", Some(false))?;
    let num_classes = r.usize("num_classes", Some(1000))?;
    let in_channels = r.usize("in_channels", Some(3))?;
    let dropout = r.f64("dropout", Some(0.0))?;
    r.bool("use_fp16", Some(false))?;
    r.bool("use_checkpoint", Some(false))?;
    // Changes how the qkv projection is split into heads, not any name or
    // shape: the engine honours it (`QKVAttention` vs `QKVAttentionLegacy`).
    r.bool("use_new_attention_order", Some(false))?;

    // Consistency.
    check_counts(
        &r,
        &[
            ("image_size", image_size),
            ("num_channels", nc),
            ("num_res_blocks", nrb),
            ("in_channels", in_channels),
            ("num_classes", num_classes),
        ],
        mult.len(),
    )?;
    if !(0.0..1.0).contains(&dropout) {
        return Err(invalid(
            &r,
            "dropout",
            format!("must be in [0, 1), found {dropout:?}"),
        ));
    }
    let levels = mult.len();
    let scale = 1usize << (levels - 1).min(63);
    if image_size % scale != 0 {
        return Err(invalid(
            &r,
            "image_size",
            format!(
                "{image_size} cannot be halved {} times ({levels} levels in channel_mult); use a multiple of {scale}",
                levels - 1
            ),
        ));
    }
    // `int(mult * model_channels)`, as unet.py computes it.
    let channels: Vec<usize> = mult.iter().map(|&m| (m * nc as f64) as usize).collect();
    if let Some(l) = channels.iter().position(|&c| c == 0 || c % GROUPS != 0) {
        return Err(invalid(
            &r,
            "num_channels",
            format!(
                "{nc} x channel_mult[{l}] = {} channels, not a positive multiple of {GROUPS} (ADM normalizes with GroupNorm(32))",
                channels[l]
            ),
        ));
    }
    let attention_ds: Vec<usize> = attn_res
        .iter()
        .enumerate()
        .map(|(i, &res)| match res {
            0 => Err(ModelError::Invalid {
                at: r.at("attention_resolutions").index(i),
                reason: "must be at least 1".into(),
            }),
            res => Ok(image_size / res),
        })
        .collect::<Result<_, _>>()?;
    let heads = Heads {
        num_heads,
        num_head_channels,
        num_heads_upsample,
    };
    heads.check(&r, &channels, &attention_ds)?;

    let temb_channels = nc * 4;
    let has_attention = |l: usize| attention_ds.contains(&(1 << l));
    let points = points(&channels, nrb, image_size, temb_channels, has_attention);
    Ok(ModelDescription {
        kind: "adm".into(),
        data_channels: in_channels,
        out_channels: if learn_sigma {
            in_channels * 2
        } else {
            in_channels
        },
        resolution: image_size,
        temb_channels,
        points,
        parameters: Vec::new(),
        config: r.finish(),
    })
}

/// `attention_resolutions` as whole pixel counts (guided-diffusion's default
/// "16,8" when the key is absent, none when it is empty), recorded.
fn attention_resolutions(r: &mut ConfigReader) -> Result<Vec<usize>, ModelError> {
    let attn_res = number_list(r, "attention_resolutions")?;
    let attn_res: Vec<usize> = match (r.raw("attention_resolutions"), attn_res) {
        (None, _) => vec![16, 8],
        (_, None) => Vec::new(),
        (_, Some(list)) => {
            if let Some(i) = list.iter().position(|x| x.fract() != 0.0) {
                return Err(ModelError::Invalid {
                    at: r.at("attention_resolutions").index(i),
                    reason: format!("must be a whole number of pixels, found {}", list[i]),
                });
            }
            list.iter().map(|&x| x as usize).collect()
        }
    };
    r.record(
        "attention_resolutions",
        format!(
            "[{}]",
            attn_res
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(attn_res)
}

/// The counts ADM's config sets: each at least 1 and at most its bound
/// (widths and sides 65,536, `num_res_blocks` 1024, `num_classes`
/// 1,000,000, 16 levels of `channel_mult`), so a typo is an error at its key
/// before any layer list is built.
fn check_counts(
    r: &ConfigReader,
    counts: &[(&str, usize)],
    levels: usize,
) -> Result<(), ModelError> {
    use super::mlp::{MAX_DEPTH, MAX_WIDTH};
    let most = |key: &str| match key {
        "num_res_blocks" => MAX_DEPTH,
        "num_classes" => crate::util::limits::MAX_CLASSES as usize,
        _ => MAX_WIDTH,
    };
    let mut limits: Vec<(&str, usize, usize)> =
        counts.iter().map(|&(k, n)| (k, n, most(k))).collect();
    limits.push(("channel_mult", levels, 16));
    r.at_most(&limits)?;
    for &(key, n) in counts {
        if n == 0 {
            return Err(ModelError::Invalid {
                at: r.at(key),
                reason: "must be at least 1".into(),
            });
        }
    }
    Ok(())
}

/// ADM's head settings, checked against every attention block's channels.
struct Heads {
    num_heads: i64,
    num_head_channels: i64,
    num_heads_upsample: i64,
}

impl Heads {
    /// Every attention block (at the downsampling factors `attention_ds`,
    /// and the middle block) splits into whole heads, down and up.
    fn check(
        &self,
        r: &ConfigReader,
        channels: &[usize],
        attention_ds: &[usize],
    ) -> Result<(), ModelError> {
        let Heads {
            num_heads,
            num_head_channels,
            num_heads_upsample,
        } = *self;
        let levels = channels.len();
        let heads = |ch: usize, n: i64, key: &str| -> Result<(), ModelError> {
            let ok = if num_head_channels == -1 {
                n > 0 && ch.is_multiple_of(n as usize)
            } else {
                num_head_channels > 0 && ch.is_multiple_of(num_head_channels as usize)
            };
            if ok {
                return Ok(());
            }
            let (key, what) = if num_head_channels == -1 {
                (key, format!("{n} heads"))
            } else {
                (
                    "num_head_channels",
                    format!("heads of {num_head_channels} channels"),
                )
            };
            Err(ModelError::Invalid {
                at: r.at(key),
                reason: format!(
                    "an attention block with {ch} channels cannot be split into {what}"
                ),
            })
        };
        let up_heads = if num_heads_upsample == -1 {
            num_heads
        } else {
            num_heads_upsample
        };
        for (l, &ch) in channels.iter().enumerate() {
            if attention_ds.contains(&(1 << l)) {
                heads(ch, num_heads, "num_heads")?;
                heads(ch, up_heads, "num_heads_upsample")?;
            }
        }
        heads(channels[levels - 1], num_heads, "num_heads")?;
        Ok(())
    }
}

/// The injection points, in forward order, with their ADM modules: `temb`,
/// then per layer its ResBlock's branch (`out_layers.3`), the ResBlock's
/// output, and the branch of the attention block after it (`proj_out`) on
/// the levels `has_attention` names and in the middle block.
fn points(
    channels: &[usize],
    nrb: usize,
    image_size: usize,
    temb_channels: usize,
    has_attention: impl Fn(usize) -> bool,
) -> Vec<Point> {
    let levels = channels.len();
    let mut points = vec![Point::vector("temb", temb_channels, "time_embed")];
    // A layer's points at `ch` channels on a `size` map; `res` is its
    // ResBlock's module, `attn` its attention block's, if any.
    let mut layer = |p: LayerPoints, ch, size, res: String, attn: Option<String>| {
        points.push(Point::image(
            p.branch,
            ch,
            size,
            format!("{res}.out_layers.3"),
        ));
        points.push(Point::image(p.res, ch, size, res));
        if let Some(attn) = attn {
            let module = format!("{attn}.proj_out");
            points.push(Point::image(p.attn_branch, ch, size, module));
        }
    };
    for (l, &ch) in channels.iter().enumerate() {
        for j in 0..nrb {
            let k = 1 + l * (nrb + 1) + j;
            let attn = has_attention(l).then(|| format!("input_blocks.{k}.1"));
            let p = LayerPoints::new(&format!("down.{l}"), j);
            layer(p, ch, image_size >> l, format!("input_blocks.{k}.0"), attn);
        }
    }
    let (ch, size) = (channels[levels - 1], image_size >> (levels - 1));
    let attn = Some("middle_block.1".to_owned());
    layer(
        LayerPoints::new("mid", 0),
        ch,
        size,
        "middle_block.0".into(),
        attn,
    );
    layer(
        LayerPoints::new("mid", 1),
        ch,
        size,
        "middle_block.2".into(),
        None,
    );
    for (i, &ch) in channels.iter().rev().enumerate() {
        let l = levels - 1 - i;
        for j in 0..=nrb {
            let k = i * (nrb + 1) + j;
            let attn = has_attention(l).then(|| format!("output_blocks.{k}.1"));
            let p = LayerPoints::new(&format!("up.{i}"), j);
            layer(p, ch, image_size >> l, format!("output_blocks.{k}.0"), attn);
        }
    }
    points
}

#[cfg(test)]
mod describe_tests;
