//! A transformers `CLIPConfig` (`config.json` of a `CLIPModel` folder) read
//! into the hyperparameters the encoder uses, with transformers' defaults
//! (`models/clip/configuration_clip.py`, 5.24.0) for every absent key.

use crate::model::config::ConfigReader;
use crate::model::error::{KeyLocation, ModelError, Origin};
use serde_json::{Map, Value};
use std::path::Path;

/// The activation of the encoder MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// `quick_gelu`: x · σ(1.702 x), OpenAI CLIP's approximation.
    QuickGelu,
    /// `gelu`: the exact x · Φ(x) = x · (1 + erf(x / √2)) / 2.
    Gelu,
}

/// What both towers share: a pre-norm transformer encoder.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EncoderConfig {
    /// `hidden_size`: width of the tokens.
    pub hidden: usize,
    /// `intermediate_size`: width of the MLP's hidden layer.
    pub intermediate: usize,
    /// `num_attention_heads`; divides `hidden`.
    pub heads: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `hidden_act`.
    pub act: Activation,
    /// `layer_norm_eps`, of every layer norm in the tower.
    pub eps: f64,
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct VisionConfig {
    pub encoder: EncoderConfig,
    /// `image_size`: side of the square input (default 224).
    pub image_size: usize,
    /// `patch_size`: side and stride of the patch convolution (default 32).
    pub patch_size: usize,
    /// `num_channels` (default 3).
    pub channels: usize,
}

impl VisionConfig {
    /// Patches per side: `image_size / patch_size`, rounded down as the
    /// strided convolution does.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TextConfig {
    pub encoder: EncoderConfig,
    /// `vocab_size` (default 49408).
    pub vocab: usize,
    /// `max_position_embeddings`: the token length (default 77).
    pub max_len: usize,
    /// `eos_token_id` (default 49407); 2 selects the legacy pooling rule.
    pub eos_token_id: i64,
}

/// `CLIPConfig`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// `projection_dim`: width of the embeddings (default 512).
    pub projection_dim: usize,
}

/// Rewrites the key of a config error read from the sub-object `section` as
/// `section.key`.
fn in_section(mut e: ModelError, section: &str) -> ModelError {
    if let ModelError::WrongType { at, .. }
    | ModelError::MissingKey { at, .. }
    | ModelError::Unsupported { at, .. }
    | ModelError::Invalid { at, .. }
    | ModelError::UnknownKey { at, .. } = &mut e
    {
        at.key = format!("{section}.{}", at.key);
    }
    e
}

/// The sub-config `name` (`text_config`, `vision_config`) as transformers
/// builds it: `<name>_dict`, when present, wins whole (its absent keys take
/// the defaults, as `CLIPConfig.__post_init__` updates `<name>` with the
/// complete `CLIP*Config(**<name>_dict)`); else `<name>`, or all defaults
/// when absent or null. Returns the object and the key it was read from.
fn section<'a>(
    file: &Path,
    root: &'a Map<String, Value>,
    name: &str,
    empty: &'a Map<String, Value>,
) -> Result<(&'a Map<String, Value>, String), ModelError> {
    for key in [format!("{name}_dict"), name.to_owned()] {
        match root.get(&key) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(map)) => return Ok((map, key)),
            Some(other) => {
                return Err(ModelError::WrongType {
                    at: KeyLocation {
                        origin: Origin::File(file.to_owned()),
                        key,
                    },
                    expected: "an object".into(),
                    found: crate::model::config::found(other),
                });
            }
        }
    }
    Ok((empty, name.to_owned()))
}

/// The encoder keys both towers share, with the tower's defaults
/// `[hidden, intermediate, heads, layers]`.
fn encoder(r: &mut ConfigReader, defaults: [usize; 4]) -> Result<EncoderConfig, ModelError> {
    let [hidden, intermediate, heads, layers] = defaults;
    let hidden = r.usize("hidden_size", Some(hidden))?;
    let intermediate = r.usize("intermediate_size", Some(intermediate))?;
    let heads = r.usize("num_attention_heads", Some(heads))?;
    let layers = r.usize("num_hidden_layers", Some(layers))?;
    let act = match r.string("hidden_act", Some("quick_gelu"))?.as_str() {
        "quick_gelu" => Activation::QuickGelu,
        "gelu" => Activation::Gelu,
        other => {
            return Err(ModelError::Unsupported {
                at: r.at("hidden_act"),
                value: format!("{other:?}"),
                supported: "dtx implements \"quick_gelu\" and \"gelu\"".into(),
            });
        }
    };
    let eps = r.f64("layer_norm_eps", Some(1e-5))?;
    if hidden == 0 || heads == 0 || hidden % heads != 0 {
        return Err(ModelError::Invalid {
            at: r.at("num_attention_heads"),
            reason: format!("{heads} heads do not divide hidden_size {hidden}"),
        });
    }
    for (key, value) in [("intermediate_size", intermediate), ("hidden_size", hidden)] {
        if value == 0 {
            return Err(ModelError::Invalid {
                at: r.at(key),
                reason: "must be at least 1".into(),
            });
        }
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(ModelError::Invalid {
            at: r.at("layer_norm_eps"),
            reason: format!("{eps} is not a positive number"),
        });
    }
    Ok(EncoderConfig {
        hidden,
        intermediate,
        heads,
        layers,
        act,
        eps,
    })
}

fn text(r: &mut ConfigReader) -> Result<TextConfig, ModelError> {
    let encoder = encoder(r, [512, 2048, 8, 12])?;
    let vocab = r.usize("vocab_size", Some(49408))?;
    let max_len = r.usize("max_position_embeddings", Some(77))?;
    let eos_token_id = r.i64("eos_token_id", Some(49407))?;
    for (key, value) in [("vocab_size", vocab), ("max_position_embeddings", max_len)] {
        if value == 0 {
            return Err(ModelError::Invalid {
                at: r.at(key),
                reason: "must be at least 1".into(),
            });
        }
    }
    Ok(TextConfig {
        encoder,
        vocab,
        max_len,
        eos_token_id,
    })
}

fn vision(r: &mut ConfigReader) -> Result<VisionConfig, ModelError> {
    let encoder = encoder(r, [768, 3072, 12, 12])?;
    let image_size = r.usize("image_size", Some(224))?;
    let patch_size = r.usize("patch_size", Some(32))?;
    let channels = r.usize("num_channels", Some(3))?;
    if patch_size == 0 || patch_size > image_size {
        return Err(ModelError::Invalid {
            at: r.at("patch_size"),
            reason: format!("{patch_size} must be between 1 and image_size {image_size}"),
        });
    }
    if channels == 0 {
        return Err(ModelError::Invalid {
            at: r.at("num_channels"),
            reason: "must be at least 1".into(),
        });
    }
    Ok(VisionConfig {
        encoder,
        image_size,
        patch_size,
        channels,
    })
}

impl ClipConfig {
    /// Parses the `CLIPConfig` JSON text of `file`. Keys dtx does not use
    /// (`model_type`, `initializer_range`, `bos_token_id`, …) are ignored.
    pub(super) fn parse(file: &Path, text_json: &str) -> Result<Self, ModelError> {
        let root: Value = serde_json::from_str(text_json).map_err(|e| ModelError::BadJson {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let Value::Object(root) = root else {
            return Err(ModelError::BadJson {
                file: file.to_owned(),
                message: "the top level is not an object".into(),
            });
        };
        let origin = Origin::File(file.to_owned());
        let empty = Map::new();

        let (map, key) = section(file, &root, "text_config", &empty)?;
        let text =
            text(&mut ConfigReader::new(origin.clone(), map)).map_err(|e| in_section(e, &key))?;
        let (map, key) = section(file, &root, "vision_config", &empty)?;
        let vision =
            vision(&mut ConfigReader::new(origin.clone(), map)).map_err(|e| in_section(e, &key))?;
        let mut r = ConfigReader::new(origin, &root);
        let projection_dim = r.usize("projection_dim", Some(512))?;
        if projection_dim == 0 {
            return Err(ModelError::Invalid {
                at: r.at("projection_dim"),
                reason: "must be at least 1".into(),
            });
        }
        Ok(ClipConfig {
            text,
            vision,
            projection_dim,
        })
    }
}
