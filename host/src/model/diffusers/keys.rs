//! Reading a `UNet2DModel` `config.json`: every key in diffusers' order with
//! its default ([`read_keys`]), the values dtx does not implement
//! ([`check_supported`]), the values that do not fit together
//! ([`check_consistency`]), and the injection points they imply
//! ([`points`]).

use super::super::ModelError;
use super::super::config::{ConfigReader, value_text};
use super::super::describe::Point;
use super::super::mlp::{MAX_DEPTH, MAX_WIDTH};
use super::super::nn::hooks::LayerPoints;
use serde_json::Value;

const DOWN_TYPES: &[&str] = &["DownBlock2D", "AttnDownBlock2D"];
const UP_TYPES: &[&str] = &["UpBlock2D", "AttnUpBlock2D"];

/// The config values the network depends on, as read (defaults applied).
pub(super) struct Keys {
    pub(super) resolution: usize,
    pub(super) in_channels: usize,
    pub(super) out_channels: usize,
    pub(super) time_embedding_dim: Option<usize>,
    pub(super) down_types: Vec<String>,
    pub(super) mid_type: Option<String>,
    pub(super) up_types: Vec<String>,
    pub(super) channels: Vec<usize>,
    pub(super) layers: usize,
    pub(super) padding: usize,
    pub(super) downsample_type: String,
    pub(super) upsample_type: String,
    pub(super) act_fn: String,
    pub(super) groups: usize,
    pub(super) attn_groups: Option<usize>,
    pub(super) eps: f64,
    pub(super) shift: String,
    pub(super) add_attention: bool,
    pub(super) class_embed_type: Option<String>,
}

/// `ModelError::Unsupported` at `key`.
fn unsupported(r: &ConfigReader, key: &str, value: String, supported: &str) -> ModelError {
    ModelError::Unsupported {
        at: r.at(key),
        value,
        supported: supported.into(),
    }
}

/// `ModelError::Invalid` at `key`.
fn invalid(r: &ConfigReader, key: &str, reason: String) -> ModelError {
    ModelError::Invalid {
        at: r.at(key),
        reason,
    }
}

/// Reads every key of a `UNet2DModel` config, in diffusers' order, recording
/// each value in force; the class name and the resolution are checked here.
pub(super) fn read_keys(r: &mut ConfigReader) -> Result<Keys, ModelError> {
    if let Some(class) = r.raw("_class_name").and_then(Value::as_str)
        && class != "UNet2DModel"
    {
        return Err(unsupported(
            r,
            "_class_name",
            format!("{class:?}"),
            "dtx reads `UNet2DModel` configs",
        ));
    }

    // Resolution: an int, or a square `[h, w]`.
    let resolution = match r.raw("sample_size") {
        None | Some(Value::Null) => {
            return Err(ModelError::MissingKey {
                at: r.at("sample_size"),
                hint: Some("the side of the images the model was trained on".into()),
            });
        }
        Some(Value::Array(hw)) if hw.len() == 2 && hw[0] == hw[1] && hw[0].as_u64().is_some() => {
            hw[0].as_u64().unwrap_or(0) as usize
        }
        Some(v @ Value::Array(_)) => {
            return Err(unsupported(
                r,
                "sample_size",
                value_text(v),
                "dtx supports square images",
            ));
        }
        Some(_) => r.usize("sample_size", None)?,
    };
    r.record("sample_size", resolution.to_string());

    let in_channels = r.usize("in_channels", Some(3))?;
    let out_channels = r.usize("out_channels", Some(3))?;
    r.bool("center_input_sample", Some(false))?;
    let time_embedding_type = r.string("time_embedding_type", Some("positional"))?;
    if time_embedding_type != "positional" {
        return Err(unsupported(
            r,
            "time_embedding_type",
            format!("{time_embedding_type:?}"),
            "dtx supports \"positional\"",
        ));
    }
    let time_embedding_dim = r.opt_usize("time_embedding_dim", None)?;
    r.i64("freq_shift", Some(0))?;
    r.bool("flip_sin_to_cos", Some(true))?;
    let down_types = r.string_list(
        "down_block_types",
        Some(&[
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ]),
    )?;
    let mid_type = r.opt_string("mid_block_type", Some("UNetMidBlock2D"))?;
    let up_types = r.string_list(
        "up_block_types",
        Some(&[
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
        ]),
    )?;
    let channels = r.usize_list("block_out_channels", Some(&[224, 448, 672, 896]))?;
    let layers = r.usize("layers_per_block", Some(2))?;
    r.f64("mid_block_scale_factor", Some(1.0))?;
    let padding = r.usize("downsample_padding", Some(1))?;
    let downsample_type = r.string("downsample_type", Some("conv"))?;
    let upsample_type = r.string("upsample_type", Some("conv"))?;
    r.f64("dropout", Some(0.0))?;
    let act_fn = r.string("act_fn", Some("silu"))?;
    r.opt_usize("attention_head_dim", Some(8))?;
    let groups = r.usize("norm_num_groups", Some(32))?;
    let attn_groups = r.opt_usize("attn_norm_num_groups", None)?;
    let eps = r.f64("norm_eps", Some(1e-5))?;
    let shift = r.string("resnet_time_scale_shift", Some("default"))?;
    let add_attention = r.bool("add_attention", Some(true))?;
    let class_embed_type = r.opt_string("class_embed_type", None)?;
    r.opt_usize("num_class_embeds", None)?;
    r.opt_usize("num_train_timesteps", None)?;
    Ok(Keys {
        resolution,
        in_channels,
        out_channels,
        time_embedding_dim,
        down_types,
        mid_type,
        up_types,
        channels,
        layers,
        padding,
        downsample_type,
        upsample_type,
        act_fn,
        groups,
        attn_groups,
        eps,
        shift,
        add_attention,
        class_embed_type,
    })
}

/// Values dtx does not implement.
pub(super) fn check_supported(r: &ConfigReader, k: &Keys) -> Result<(), ModelError> {
    let Keys {
        down_types,
        mid_type,
        up_types,
        padding,
        downsample_type,
        upsample_type,
        act_fn,
        shift,
        class_embed_type,
        ..
    } = k;
    let padding = *padding;
    for (i, t) in down_types.iter().enumerate() {
        if !DOWN_TYPES.contains(&t.as_str()) {
            let at = r.at("down_block_types").index(i);
            return Err(ModelError::Unsupported {
                at,
                value: format!("{t:?}"),
                supported: format!("dtx supports {}", DOWN_TYPES.join(", ")),
            });
        }
    }
    for (i, t) in up_types.iter().enumerate() {
        if !UP_TYPES.contains(&t.as_str()) {
            let at = r.at("up_block_types").index(i);
            return Err(ModelError::Unsupported {
                at,
                value: format!("{t:?}"),
                supported: format!("dtx supports {}", UP_TYPES.join(", ")),
            });
        }
    }
    if let Some(t) = mid_type
        && t != "UNetMidBlock2D"
    {
        return Err(unsupported(
            r,
            "mid_block_type",
            format!("{t:?}"),
            "dtx supports \"UNetMidBlock2D\" or null",
        ));
    }
    for (key, value, ok) in [
        ("downsample_type", downsample_type, "conv"),
        ("upsample_type", upsample_type, "conv"),
        ("act_fn", act_fn, "silu"),
    ] {
        if value != ok {
            return Err(unsupported(
                r,
                key,
                format!("{value:?}"),
                &format!("dtx supports \"{ok}\""),
            ));
        }
    }
    if !matches!(shift.as_str(), "default" | "scale_shift") {
        return Err(unsupported(
            r,
            "resnet_time_scale_shift",
            format!("{shift:?}"),
            "dtx supports \"default\" and \"scale_shift\"",
        ));
    }
    if let Some(t) = class_embed_type {
        return Err(unsupported(
            r,
            "class_embed_type",
            format!("{t:?}"),
            "dtx supports null (a label table of `num_class_embeds` rows)",
        ));
    }
    if padding > 1 {
        return Err(unsupported(
            r,
            "downsample_padding",
            padding.to_string(),
            "dtx supports 0 and 1",
        ));
    }
    Ok(())
}

/// Values that do not fit together (levels, groups, sizes).
pub(super) fn check_consistency(r: &ConfigReader, k: &Keys) -> Result<(), ModelError> {
    let &Keys {
        resolution,
        in_channels,
        out_channels,
        ref down_types,
        ref up_types,
        ref channels,
        layers,
        groups,
        attn_groups,
        eps,
        ..
    } = k;
    r.at_most(&[
        ("sample_size", resolution, MAX_WIDTH),
        ("in_channels", in_channels, MAX_WIDTH),
        ("out_channels", out_channels, MAX_WIDTH),
        ("layers_per_block", layers, MAX_DEPTH),
        ("block_out_channels", channels.len(), 16),
    ])?;
    if let Some(i) = channels.iter().position(|&c| c > MAX_WIDTH) {
        return Err(ModelError::Invalid {
            at: r.at("block_out_channels").index(i),
            reason: format!("must be at most {MAX_WIDTH}, got {}", channels[i]),
        });
    }
    let levels = channels.len();
    if levels == 0 {
        return Err(invalid(
            r,
            "block_out_channels",
            "needs at least one level".into(),
        ));
    }
    for (key, n) in [
        ("down_block_types", down_types.len()),
        ("up_block_types", up_types.len()),
    ] {
        if n != levels {
            return Err(invalid(
                r,
                key,
                format!(
                    "has {n} entries but block_out_channels has {levels}; each level needs one down and one up block"
                ),
            ));
        }
    }
    if layers == 0 {
        return Err(invalid(r, "layers_per_block", "must be at least 1".into()));
    }
    if in_channels == 0 || out_channels == 0 {
        let key = if in_channels == 0 {
            "in_channels"
        } else {
            "out_channels"
        };
        return Err(invalid(r, key, "must be at least 1".into()));
    }
    let scale = 1usize << (levels - 1);
    if resolution == 0 || resolution % scale != 0 {
        return Err(invalid(
            r,
            "sample_size",
            format!(
                "{resolution} cannot be halved {} times ({levels} levels); use a multiple of {scale}",
                levels - 1
            ),
        ));
    }
    for (key, g) in [
        ("norm_num_groups", Some(groups)),
        ("attn_norm_num_groups", attn_groups),
    ] {
        let Some(g) = g else { continue };
        if g == 0 {
            return Err(invalid(r, key, "must be at least 1".into()));
        }
        if let Some((i, c)) = channels
            .iter()
            .enumerate()
            .find(|&(_, &c)| c == 0 || c % g != 0)
        {
            return Err(ModelError::Invalid {
                at: r.at("block_out_channels").index(i),
                reason: format!("{c} channels cannot be split into {key} = {g} groups"),
            });
        }
    }
    if eps <= 0.0 || eps.is_nan() {
        return Err(invalid(
            r,
            "norm_eps",
            format!("must be positive, found {eps:?}"),
        ));
    }
    Ok(())
}

/// The injection points, in forward order: `temb`, then per layer its
/// resnet's branch (`conv2`), the resnet's output, and the branch of the
/// attention after it (`to_out.0`) where the block has one.
pub(super) fn points(k: &Keys, temb_channels: usize) -> Vec<Point> {
    let Keys {
        resolution,
        ref channels,
        layers,
        ref down_types,
        ref mid_type,
        ref up_types,
        add_attention,
        ..
    } = *k;
    let levels = channels.len();
    let mut points = vec![Point::vector("temb", temb_channels, "time_embedding")];
    // A layer's points at `c` channels on a `size` map; `block` is its
    // checkpoint prefix (`down_blocks.0`), `attn` whether it has attention.
    let mut layer = |p: LayerPoints, c, size, block: &str, j: usize, attn: bool| {
        let resnet = format!("{block}.resnets.{j}");
        points.push(Point::image(p.branch, c, size, format!("{resnet}.conv2")));
        points.push(Point::image(p.res, c, size, resnet));
        if attn {
            let module = format!("{block}.attentions.{j}.to_out.0");
            points.push(Point::image(p.attn_branch, c, size, module));
        }
    };
    for (i, &c) in channels.iter().enumerate() {
        let attn = down_types[i] == "AttnDownBlock2D";
        for j in 0..layers {
            let p = LayerPoints::new(&format!("down.{i}"), j);
            layer(p, c, resolution >> i, &format!("down_blocks.{i}"), j, attn);
        }
    }
    if mid_type.is_some() {
        let (c, size) = (channels[levels - 1], resolution >> (levels - 1));
        for j in 0..2 {
            let attn = j == 0 && add_attention;
            layer(LayerPoints::new("mid", j), c, size, "mid_block", j, attn);
        }
    }
    for (i, &c) in channels.iter().rev().enumerate() {
        let attn = up_types[i] == "AttnUpBlock2D";
        for j in 0..=layers {
            let p = LayerPoints::new(&format!("up.{i}"), j);
            let size = resolution >> (levels - 1 - i);
            layer(p, c, size, &format!("up_blocks.{i}"), j, attn);
        }
    }
    points
}
