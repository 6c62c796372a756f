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
//!
//! The rest of the folder is the model itself: `config.rs` reads the
//! architecture ([`UNet2DConfig`]) from a description, `net.rs` builds the
//! network ([`UNet2D`]) and runs its forward, `weights.rs` loads
//! `diffusion_pytorch_model.safetensors` into the host's parameter store.

mod config;
mod error;
mod keys;
mod net;
#[cfg(test)]
mod net_tests;
mod weights;

pub use config::{BlockKind, TimeShift, UNet2DConfig};
pub use error::{UNetError, WeightProblem};
pub use net::UNet2D;
pub(crate) use weights::current_name;
pub use weights::{load_safetensors, weights_file};

use super::config::ConfigReader;
use super::describe::header_parameters;
use super::{ModelDescription, ModelError, Origin};
use keys::{Keys, check_consistency, check_supported, points, read_keys};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The weights file diffusers' `save_pretrained` writes.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

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
        // Per layer: the resnet's branch, its output, the attention's
        // branch (AttnDownBlock2D at level 1, AttnUpBlock2D at up level 0,
        // the mid block).
        let want: Vec<(String, usize, usize, usize)> = [
            ("temb", 128, 0, 0),
            ("down.0.res.0.branch", 32, 16, 16),
            ("down.0.res.0", 32, 16, 16),
            ("down.1.res.0.branch", 64, 8, 8),
            ("down.1.res.0", 64, 8, 8),
            ("down.1.attn.0.branch", 64, 8, 8),
            ("mid.res.0.branch", 64, 8, 8),
            ("mid.res.0", 64, 8, 8),
            ("mid.attn.0.branch", 64, 8, 8),
            ("mid.res.1.branch", 64, 8, 8),
            ("mid.res.1", 64, 8, 8),
            ("up.0.res.0.branch", 64, 8, 8),
            ("up.0.res.0", 64, 8, 8),
            ("up.0.attn.0.branch", 64, 8, 8),
            ("up.0.res.1.branch", 64, 8, 8),
            ("up.0.res.1", 64, 8, 8),
            ("up.0.attn.1.branch", 64, 8, 8),
            ("up.1.res.0.branch", 32, 16, 16),
            ("up.1.res.0", 32, 16, 16),
            ("up.1.res.1.branch", 32, 16, 16),
            ("up.1.res.1", 32, 16, 16),
        ]
        .iter()
        .map(|&(n, c, h, w)| (n.to_owned(), c, h, w))
        .collect();
        assert_eq!(points(&d), want);
        let module = |p: &str| d.point(p).unwrap().module.as_str();
        assert_eq!(module("temb"), "time_embedding");
        assert_eq!(module("up.1.res.1"), "up_blocks.1.resnets.1");
        assert_eq!(module("mid.res.1"), "mid_block.resnets.1");
        assert_eq!(
            module("down.0.res.0.branch"),
            "down_blocks.0.resnets.0.conv2"
        );
        assert_eq!(
            module("down.1.attn.0.branch"),
            "down_blocks.1.attentions.0.to_out.0"
        );
        assert_eq!(module("mid.res.1.branch"), "mid_block.resnets.1.conv2");
        assert_eq!(
            module("mid.attn.0.branch"),
            "mid_block.attentions.0.to_out.0"
        );
        assert_eq!(
            module("up.0.attn.1.branch"),
            "up_blocks.0.attentions.1.to_out.0"
        );
        // Without `add_attention` the mid block has no attention point.
        let config = SMALL.replace(
            "\"norm_num_groups\": 8",
            "\"norm_num_groups\": 8, \"add_attention\": false",
        );
        let d = describe(&folder("diffusers-no-mid-attn", &config)).unwrap();
        assert!(d.point("mid.attn.0.branch").is_none());
        assert!(d.point("mid.res.1.branch").is_some());
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
        // 8 block outputs and temb, 8 resnet branches, 1 + 1 + 2 attentions
        assert_eq!(
            (d.resolution, d.points.len(), d.temb_channels),
            (16, 9 + 8 + 4, 128)
        );
    }
}
