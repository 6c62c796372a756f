//! Describes a diffusers `UNet2DModel` folder: `config.json` (with diffusers'
//! defaults for absent keys) and, when present, the header of
//! `diffusion_pytorch_model.safetensors`.
//!
//! Defaults and block layout follow `UNet2DModel.__init__` in diffusers
//! (`src/diffusers/models/unets/unet_2d.py`): down level `i` holds
//! `layers_per_block` resnets at `sample_size / 2^i` and, except the last,
//! a downsampler; the mid block (`UNetMidBlock2D`, one layer) holds two
//! resnets; up level `i` (lowest resolution first) holds
//! `layers_per_block + 1` resnets with `reversed(block_out_channels)[i]`
//! channels, then an upsampler except on the last level.

use super::config::{ConfigReader, value_text};
use super::describe::{Point, header_parameters};
use super::mlp::{MAX_DEPTH, MAX_WIDTH};
use super::{ModelDescription, ModelError, Origin};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The weights file diffusers' `save_pretrained` writes.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

const DOWN_TYPES: &[&str] = &["DownBlock2D", "AttnDownBlock2D"];
const UP_TYPES: &[&str] = &["UpBlock2D", "AttnUpBlock2D"];

/// The folder's `config.json`: `dir/config.json`, or `dir/unet/config.json`
/// for a pipeline folder.
fn config_file(dir: &Path) -> Result<PathBuf, ModelError> {
    if !dir.exists() {
        return Err(ModelError::MissingFile {
            path: dir.to_owned(),
            expected: "a diffusers `UNet2DModel` folder (config.json and weights)".into(),
        });
    }
    if !dir.is_dir() {
        return Err(ModelError::BadPath {
            path: dir.to_owned(),
            reason: "a `diffusers` source is a folder holding config.json, not a file".into(),
        });
    }
    let direct = dir.join("config.json");
    let in_pipeline = dir.join("unet").join("config.json");
    if !direct.exists() && in_pipeline.exists() {
        return Ok(in_pipeline);
    }
    if !direct.exists() {
        return Err(ModelError::MissingFile {
            path: direct,
            expected: "the `UNet2DModel` config that diffusers' `save_pretrained` writes".into(),
        });
    }
    Ok(direct)
}

/// Describes the `UNet2DModel` in folder `dir`.
pub fn describe(dir: &Path) -> Result<ModelDescription, ModelError> {
    let file = config_file(dir)?;
    let text = crate::util::fs::read_to_string(&file).map_err(|e| ModelError::Io {
        path: file.clone(),
        source: e,
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let Value::Object(map) = json else {
        return Err(ModelError::BadJson {
            file,
            message: "expected a JSON object of config keys".into(),
        });
    };
    let mut description = describe_config(&file, &map)?;
    let weights = file.with_file_name(WEIGHTS_FILE);
    if weights.is_file() {
        description.parameters = header_parameters(&weights)?;
    }
    Ok(description)
}

/// Describes a `UNet2DModel` config read from `file`.
fn describe_config(
    file: &Path,
    map: &serde_json::Map<String, Value>,
) -> Result<ModelDescription, ModelError> {
    let mut r = ConfigReader::new(Origin::File(file.to_owned()), map);
    let k = read_keys(&mut r)?;
    check_supported(&r, &k)?;
    check_consistency(&r, &k)?;
    let temb_channels = k.time_embedding_dim.unwrap_or(k.channels[0] * 4);
    let points = points(&k, temb_channels);
    let Keys {
        resolution,
        in_channels,
        out_channels,
        ..
    } = k;
    Ok(ModelDescription {
        kind: "diffusers".into(),
        data_channels: in_channels,
        out_channels,
        resolution,
        temb_channels,
        points,
        parameters: Vec::new(),
        config: r.finish(),
    })
}

/// The config values the network depends on, as read (defaults applied).
struct Keys {
    resolution: usize,
    in_channels: usize,
    out_channels: usize,
    time_embedding_dim: Option<usize>,
    down_types: Vec<String>,
    mid_type: Option<String>,
    up_types: Vec<String>,
    channels: Vec<usize>,
    layers: usize,
    padding: usize,
    downsample_type: String,
    upsample_type: String,
    act_fn: String,
    groups: usize,
    attn_groups: Option<usize>,
    eps: f64,
    shift: String,
    class_embed_type: Option<String>,
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
fn read_keys(r: &mut ConfigReader) -> Result<Keys, ModelError> {
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
    r.bool("add_attention", Some(true))?;
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
        class_embed_type,
    })
}

/// Values dtx does not implement.
fn check_supported(r: &ConfigReader, k: &Keys) -> Result<(), ModelError> {
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
fn check_consistency(r: &ConfigReader, k: &Keys) -> Result<(), ModelError> {
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

/// The injection points, in forward order.
fn points(k: &Keys, temb_channels: usize) -> Vec<Point> {
    let Keys {
        resolution,
        ref channels,
        layers,
        ref mid_type,
        ..
    } = *k;
    let levels = channels.len();
    let mut points = vec![Point::vector("temb", temb_channels, "time_embedding")];
    for (i, &c) in channels.iter().enumerate() {
        for j in 0..layers {
            points.push(Point::image(
                format!("down.{i}.res.{j}"),
                c,
                resolution >> i,
                format!("down_blocks.{i}.resnets.{j}"),
            ));
        }
    }
    if mid_type.is_some() {
        for j in 0..2 {
            points.push(Point::image(
                format!("mid.res.{j}"),
                channels[levels - 1],
                resolution >> (levels - 1),
                format!("mid_block.resnets.{j}"),
            ));
        }
    }
    for (i, &c) in channels.iter().rev().enumerate() {
        for j in 0..=layers {
            points.push(Point::image(
                format!("up.{i}.res.{j}"),
                c,
                resolution >> (levels - 1 - i),
                format!("up_blocks.{i}.resnets.{j}"),
            ));
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::super::safetensors_header::tests::{temp_dir, write_safetensors};
    use super::*;

    const SMALL: &str = r#"{
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.30.0",
        "sample_size": 16,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8
    }"#;

    fn folder(name: &str, config: &str) -> PathBuf {
        let dir = temp_dir(name);
        std::fs::write(dir.join("config.json"), config).unwrap();
        dir
    }

    fn points(d: &ModelDescription) -> Vec<(String, usize, usize, usize)> {
        d.points
            .iter()
            .map(|p| (p.name.clone(), p.channels, p.height, p.width))
            .collect()
    }

    #[test]
    fn small_config_has_diffusers_points() {
        let d = describe(&folder("diffusers-small", SMALL)).unwrap();
        assert_eq!(
            (
                d.kind.as_str(),
                d.data_channels,
                d.resolution,
                d.temb_channels
            ),
            ("diffusers", 3, 16, 128)
        );
        let want: Vec<(String, usize, usize, usize)> = [
            ("temb", 128, 0, 0),
            ("down.0.res.0", 32, 16, 16),
            ("down.1.res.0", 64, 8, 8),
            ("mid.res.0", 64, 8, 8),
            ("mid.res.1", 64, 8, 8),
            ("up.0.res.0", 64, 8, 8),
            ("up.0.res.1", 64, 8, 8),
            ("up.1.res.0", 32, 16, 16),
            ("up.1.res.1", 32, 16, 16),
        ]
        .iter()
        .map(|&(n, c, h, w)| (n.to_owned(), c, h, w))
        .collect();
        assert_eq!(points(&d), want);
        assert_eq!(
            d.point("up.1.res.1").unwrap().module,
            "up_blocks.1.resnets.1"
        );
        assert_eq!(d.point("mid.res.1").unwrap().module, "mid_block.resnets.1");
        // Defaults are in force and listed, sorted; metadata keys are not.
        assert_eq!(d.config_value("norm_eps"), Some("1e-5"));
        assert_eq!(d.config_value("mid_block_type"), Some("\"UNetMidBlock2D\""));
        assert_eq!(d.config_value("block_out_channels"), Some("[32, 64]"));
        assert_eq!(d.config_value("_class_name"), None);
        assert!(d.config.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(!d.parameters_known());
    }

    /// Counts past their bounds are errors at their key, not a layer list
    /// that exhausts memory (found by fuzzing: `layers_per_block =
    /// 4294967296` aborted `dtx plan`).
    #[test]
    fn huge_counts_are_errors_at_their_key() {
        for (from, to, key) in [
            (
                "\"layers_per_block\": 1",
                "\"layers_per_block\": 4294967296",
                "layers_per_block",
            ),
            (
                "\"sample_size\": 16",
                "\"sample_size\": 1099511627776",
                "sample_size",
            ),
            ("[32, 64]", "[32, 4294967296]", "block_out_channels[1]"),
        ] {
            let config = SMALL.replace(from, to);
            let err = describe(&folder("diffusers-huge", &config))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("must be at most"),
                "{err}"
            );
        }
    }

    #[test]
    fn null_mid_block_has_no_mid_points() {
        let config = SMALL.replace(
            "\"norm_num_groups\": 8",
            "\"norm_num_groups\": 8, \"mid_block_type\": null",
        );
        let d = describe(&folder("diffusers-nomid", &config)).unwrap();
        assert!(d.points.iter().all(|p| !p.name.starts_with("mid")));
        assert_eq!(d.config_value("mid_block_type"), Some("null"));
    }

    #[test]
    fn parameters_come_from_the_safetensors_header() {
        let dir = folder("diffusers-weights", SMALL);
        write_safetensors(
            &dir.join(WEIGHTS_FILE),
            r#"{"conv_in.weight":{"dtype":"F32","shape":[32,3,3,3],"data_offsets":[0,3456]},
               "conv_in.bias":{"dtype":"F32","shape":[32],"data_offsets":[3456,3584]}}"#,
            3584,
        );
        let d = describe(&dir).unwrap();
        assert_eq!(
            d.parameters,
            [
                ("conv_in.weight".to_owned(), vec![32, 3, 3, 3]),
                ("conv_in.bias".to_owned(), vec![32])
            ]
        );
        assert_eq!(d.total_parameters(), 864 + 32);
        assert_eq!(d.count_matching(&["*.bias".into()]), 32);
    }

    #[test]
    fn pipeline_folders_use_their_unet() {
        let dir = temp_dir("diffusers-pipeline");
        std::fs::create_dir_all(dir.join("unet")).unwrap();
        std::fs::write(dir.join("unet/config.json"), SMALL).unwrap();
        assert_eq!(describe(&dir).unwrap().resolution, 16);
    }

    #[test]
    fn missing_config_json_names_the_file() {
        let dir = temp_dir("diffusers-empty");
        let err = describe(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: no such file or folder; expected the `UNet2DModel` config that diffusers' `save_pretrained` writes",
                dir.join("config.json").display()
            )
        );
        let err = describe(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.contains("absent: no such file or folder"), "{err}");
    }

    #[test]
    fn unsupported_block_type_names_key_index_and_choices() {
        let config = SMALL.replace("\"AttnDownBlock2D\"]", "\"CrossAttnDownBlock2D\"]");
        let dir = folder("diffusers-crossattn", &config);
        let err = describe(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: down_block_types[1]: unsupported value \"CrossAttnDownBlock2D\"; dtx supports DownBlock2D, AttnDownBlock2D",
                dir.join("config.json").display()
            )
        );
    }

    #[test]
    fn bad_json_and_bad_values_are_located() {
        let err = describe(&folder("diffusers-json", "{\"sample_size\": 16,"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json: not valid JSON: EOF"), "{err}");

        let config = SMALL.replace("\"layers_per_block\": 1", "\"layers_per_block\": \"one\"");
        let err = describe(&folder("diffusers-type", &config))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("config.json: layers_per_block: expected a non-negative integer, found a string \"one\""), "{err}");

        let config = SMALL.replace("\"norm_num_groups\": 8", "\"norm_num_groups\": 24");
        let err = describe(&folder("diffusers-groups", &config))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("block_out_channels[0]: 32 channels cannot be split into norm_num_groups = 24 groups"), "{err}");

        let config = SMALL.replace("\"sample_size\": 16", "\"sample_size\": 15");
        let err = describe(&folder("diffusers-size", &config))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "sample_size: 15 cannot be halved 1 times (2 levels); use a multiple of 2"
            ),
            "{err}"
        );

        let config = SMALL.replace(
            "\"up_block_types\": [\"AttnUpBlock2D\", ",
            "\"up_block_types\": [",
        );
        let err = describe(&folder("diffusers-levels", &config))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("up_block_types: has 1 entries but block_out_channels has 2"),
            "{err}"
        );
    }

    #[test]
    fn fixture_describes() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tiny-diffusers");
        let d = describe(&dir).unwrap();
        assert_eq!(
            (d.resolution, d.points.len(), d.temb_channels),
            (16, 9, 128)
        );
    }
}
