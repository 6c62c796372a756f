//! [`ModelDescription`]: what a denoiser looks like (data shape, time
//! embedding, injection points, base parameters, config in force), built from
//! its config and checkpoint header by [`describe`] without running it.

use super::{ModelError, adm, diffusers, mlp};
use abi_stable::std_types::{RString, RVec};
use dtx_plugin_api::{ModelInfo, PointInfo};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One injection point: the output of a residual block, a residual branch
/// before its skip sum, or the time embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// DESIGN.md's name: `temb`, `down.{i}.res.{j}`, `mid.res.{j}`,
    /// `up.{i}.res.{j}`; a block's residual branch `<block>.branch`; an
    /// attention's output before its residual sum `down.{i}.attn.{j}.branch`,
    /// `mid.attn.0.branch`, `up.{i}.attn.{j}.branch`.
    pub name: String,
    /// Channels of the activation (`D` at `temb` and for vector models).
    pub channels: usize,
    /// Spatial height at the model's resolution; 0 for vector activations.
    pub height: usize,
    /// Spatial width at the model's resolution; 0 for vector activations.
    pub width: usize,
    /// Checkpoint key prefix of the module whose output this is
    /// (`down_blocks.1.resnets.0`, `input_blocks.4.0`, `time_embed`;
    /// `down_blocks.1.resnets.0.conv2`, `input_blocks.4.1.proj_out` at a
    /// branch): the loader's table from point names to its own layout.
    pub module: String,
}

impl Point {
    /// A point on a `channels × size × size` feature map.
    pub(crate) fn image(name: String, channels: usize, size: usize, module: String) -> Self {
        Self {
            name,
            channels,
            height: size,
            width: size,
            module,
        }
    }

    /// A point on a vector of width `channels`.
    pub(crate) fn vector(
        name: impl Into<String>,
        channels: usize,
        module: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            channels,
            height: 0,
            width: 0,
            module: module.into(),
        }
    }
}

/// A denoiser, described from its config and checkpoint header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    /// `diffusers`, `adm` or `mlp`.
    pub kind: String,
    /// Channels of the data: image `C` (`in_channels`) or vector `D`.
    pub data_channels: usize,
    /// Channels of the network output (`2 C` for ADM with `learn_sigma`).
    pub out_channels: usize,
    /// Image side (`sample_size`, `image_size`); 0 for vector models.
    pub resolution: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// Every injection point, in forward order.
    pub points: Vec<Point>,
    /// Every base parameter with its shape, under its checkpoint key, when
    /// known (empty when the checkpoint's names cannot be read without loading
    /// it, e.g. a `.pt` pickle or a diffusers folder without safetensors).
    pub parameters: Vec<(String, Vec<usize>)>,
    /// Every config value in force (defaults included), `(key, value as
    /// text)`, sorted by key.
    pub config: Vec<(String, String)>,
}

impl ModelDescription {
    /// Whether [`Self::parameters`] lists the checkpoint's parameters.
    pub fn parameters_known(&self) -> bool {
        !self.parameters.is_empty()
    }

    /// Number of scalars in all base parameters; 0 when they are unknown
    /// (see [`Self::parameters_known`]).
    pub fn total_parameters(&self) -> usize {
        self.parameters.iter().map(|(_, shape)| numel(shape)).sum()
    }

    /// Number of scalars in the parameters whose names match any of `globs`
    /// (`*` matches any run of characters, as in `train.trainable`).
    pub fn count_matching(&self, globs: &[String]) -> usize {
        self.parameters
            .iter()
            .filter(|(name, _)| {
                globs
                    .iter()
                    .any(|g| dtx_plugin_api::points::matches(g, name))
            })
            .map(|(_, shape)| numel(shape))
            .sum()
    }

    /// How many times the network halves the image side: its side over the
    /// smallest feature map of any point (1 for vector models). An input
    /// side must be a multiple of it for every map to stay whole.
    pub fn downsampling(&self) -> usize {
        self.points
            .iter()
            .filter(|p| p.height > 0)
            .map(|p| p.height)
            .min()
            .map_or(1, |s| self.resolution / s.max(1))
    }

    /// The point called `name`.
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    /// The value in force of config key `key`, as text.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// What plugins receive when they are built.
    pub fn to_model_info(&self) -> ModelInfo {
        ModelInfo {
            kind: RString::from(self.kind.as_str()),
            data_channels: self.data_channels,
            resolution: self.resolution,
            temb_channels: self.temb_channels,
            points: self
                .points
                .iter()
                .map(|p| PointInfo {
                    name: RString::from(p.name.as_str()),
                    channels: p.channels,
                    height: p.height,
                    width: p.width,
                })
                .collect::<RVec<_>>(),
        }
    }
}

/// A config value of a [`ModelDescription`] that a network cannot be built
/// from; each network's error renders it with where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The config key.
    pub key: String,
    /// What is wrong, naming the value.
    pub reason: String,
}

impl ConfigProblem {
    /// `key` holds `v`, which is not `expected`.
    pub(crate) fn expected(key: &str, v: &Value, expected: &str) -> ConfigProblem {
        ConfigProblem {
            key: key.into(),
            reason: format!("expected {expected}, found {v}"),
        }
    }
}

/// Typed reads of the config values in force, which `describe` records as
/// JSON text (`4`, `true`, `[1, 2, 2]`, `null`).
impl ModelDescription {
    /// The value of `key`, parsed.
    pub(crate) fn value(&self, key: &str) -> Result<Value, ConfigProblem> {
        let text = self.config_value(key).ok_or_else(|| ConfigProblem {
            key: key.into(),
            reason: "not in the model description".into(),
        })?;
        serde_json::from_str(text).map_err(|e| ConfigProblem {
            key: key.into(),
            reason: format!("cannot read value {text}: {e}"),
        })
    }

    /// A non-negative integer.
    pub(crate) fn usize_value(&self, key: &str) -> Result<usize, ConfigProblem> {
        let v = self.value(key)?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| ConfigProblem::expected(key, &v, "a non-negative integer"))
    }

    /// A non-negative integer or null.
    pub(crate) fn opt_usize_value(&self, key: &str) -> Result<Option<usize>, ConfigProblem> {
        match self.value(key)? {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| ConfigProblem::expected(key, &v, "a non-negative integer or null")),
        }
    }

    /// An integer.
    pub(crate) fn i64_value(&self, key: &str) -> Result<i64, ConfigProblem> {
        let v = self.value(key)?;
        v.as_i64()
            .ok_or_else(|| ConfigProblem::expected(key, &v, "an integer"))
    }

    /// A number.
    pub(crate) fn f64_value(&self, key: &str) -> Result<f64, ConfigProblem> {
        let v = self.value(key)?;
        v.as_f64()
            .ok_or_else(|| ConfigProblem::expected(key, &v, "a number"))
    }

    /// A boolean.
    pub(crate) fn bool_value(&self, key: &str) -> Result<bool, ConfigProblem> {
        let v = self.value(key)?;
        v.as_bool()
            .ok_or_else(|| ConfigProblem::expected(key, &v, "a boolean"))
    }

    /// An array of numbers.
    pub(crate) fn numbers_value(&self, key: &str) -> Result<Vec<f64>, ConfigProblem> {
        let v = self.value(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect())
            .ok_or_else(|| ConfigProblem::expected(key, &v, "an array of numbers"))
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Describes the source model of kind `kind` (`diffusers`, `adm`, `mlp`) from
/// `path` (already resolved against the manifest's folder) and the
/// manifest's `[source.config]` table. Reads config files and checkpoint
/// headers only, never tensor data.
pub fn describe(
    kind: &str,
    path: Option<&Path>,
    config: &toml::Table,
) -> Result<ModelDescription, ModelError> {
    match kind {
        "diffusers" => {
            let path = path.ok_or_else(|| ModelError::MissingPath {
                kind: kind.into(),
                expected: "a diffusers `UNet2DModel` folder with config.json".into(),
            })?;
            if !config.is_empty() {
                let key = config.keys().next().cloned().unwrap_or_default();
                return Err(ModelError::UnknownKey {
                    at: super::KeyLocation {
                        origin: super::Origin::SourceConfig,
                        key,
                    },
                    suggestion: None,
                    hint: Some("a diffusers model is configured by its config.json".into()),
                    valid: Vec::new(),
                });
            }
            diffusers::describe(path)
        }
        "adm" => {
            let path = path.ok_or_else(|| ModelError::MissingPath {
                kind: kind.into(),
                expected: "a guided-diffusion `.pt` or `.safetensors` checkpoint".into(),
            })?;
            adm::describe(path, config)
        }
        "mlp" => mlp::describe(path, config),
        "dtx" => {
            let path = path.ok_or_else(|| ModelError::MissingPath {
                kind: kind.into(),
                expected: "a dtx run folder (with manifest.toml and checkpoints/)".into(),
            })?;
            if !config.is_empty() {
                return Err(ModelError::BadPath {
                    path: path.into(),
                    reason: "a `dtx` source takes its architecture from the run's manifest; \
                             remove [source.config]"
                        .into(),
                });
            }
            describe_dtx(path, 0)
        }
        other => Err(ModelError::UnsupportedKind {
            kind: other.into(),
            reason: "supported kinds are `diffusers`, `adm` and `mlp`".into(),
        }),
    }
}

/// The run folder of a `dtx` source: the folder itself, or the run folder
/// of a checkpoint file inside its `checkpoints/`.
pub fn dtx_run_folder(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// The checkpoint a `dtx` source reads: the file given, or the run
/// folder's `checkpoints/latest.safetensors`.
pub fn dtx_checkpoint(path: &Path) -> PathBuf {
    if path.is_file() {
        path.to_path_buf()
    } else {
        path.join("checkpoints").join("latest.safetensors")
    }
}

/// Describes the model a dtx run trained, from the `[source]` of the
/// manifest its folder keeps (paths there are absolute). A run whose
/// source was itself a dtx run is followed, up to 8 deep.
fn describe_dtx(path: &Path, depth: usize) -> Result<ModelDescription, ModelError> {
    let folder = dtx_run_folder(path);
    let manifest = folder.join("manifest.toml");
    let ckpt = dtx_checkpoint(path);
    if !ckpt.is_file() {
        return Err(ModelError::MissingFile {
            path: ckpt,
            expected: "the checkpoint of a dtx run".into(),
        });
    }
    let text = crate::util::fs::read_to_string(&manifest).map_err(|source| ModelError::Io {
        path: manifest.clone(),
        source,
    })?;
    let bad = |reason: String| ModelError::BadPath {
        path: manifest.clone(),
        reason,
    };
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| bad(format!("not a dtx run manifest: {e}")))?;
    let src = table
        .get("source")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| bad("the run has no [source]".into()))?;
    let kind = src.get("kind").and_then(toml::Value::as_str).unwrap_or("");
    let inner_path = src
        .get("path")
        .and_then(toml::Value::as_str)
        .map(PathBuf::from);
    let config = src
        .get("config")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    let mut d = match kind {
        "dtx" if depth < 8 => {
            let p = inner_path.ok_or_else(|| bad("its `dtx` source has no path".into()))?;
            describe_dtx(&p, depth + 1)?
        }
        "dtx" => return Err(bad("dtx sources nest more than 8 deep".into())),
        _ => describe(kind, inner_path.as_deref(), &config)?,
    };
    d.config
        .push(("dtx_checkpoint".into(), ckpt.display().to_string()));
    d.config.sort();
    Ok(d)
}

/// Parameters from a safetensors checkpoint header, as `(name, shape)`.
pub(crate) fn header_parameters(file: &Path) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    Ok(super::read_safetensors_header(file)?
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn counts_and_model_info_follow_the_parameters_and_points() {
        let d = describe("mlp", None, &table("hidden = 4\nblocks = 1")).unwrap();
        assert!(d.parameters_known());
        let all = d.total_parameters();
        let up = d.count_matching(&["up.*".into()]);
        // One block: norm 2·4, fc1 4·8 + 8, temb_proj 4·8 + 8, fc2 8·4 + 4.
        assert_eq!(up, 8 + 40 + 40 + 36);
        assert_eq!(
            d.count_matching(&["up.*".into(), "*.fc1.*".into()]),
            up + 2 * 40
        );
        assert_eq!(d.count_matching(&["nothing".into()]), 0);
        assert!(all > up);

        let info = d.to_model_info();
        assert_eq!(info.kind.as_str(), "mlp");
        assert_eq!(info.data_channels, 2);
        assert_eq!(info.temb_channels, 4);
        assert_eq!(info.points.len(), d.points.len());
        assert_eq!(info.points[1].name.as_str(), "down.0.res.0.branch");
        assert_eq!(info.points[2].name.as_str(), "down.0.res.0");
    }

    #[test]
    fn unknown_parameters_count_zero() {
        let d = ModelDescription {
            kind: "adm".into(),
            data_channels: 3,
            out_channels: 3,
            resolution: 32,
            temb_channels: 512,
            points: Vec::new(),
            parameters: Vec::new(),
            config: Vec::new(),
        };
        assert!(!d.parameters_known());
        assert_eq!(d.total_parameters(), 0);
        assert_eq!(d.count_matching(&["*".into()]), 0);
    }

    #[test]
    fn kinds_without_a_describer_are_named() {
        let err = describe("dtx", None, &toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("a `dtx` source needs `path`"), "{err}");
        let err = describe("onnx", None, &toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot describe a `onnx` model"), "{err}");
        let err = describe("diffusers", None, &toml::Table::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "a `diffusers` source needs `path` (a diffusers `UNet2DModel` folder with config.json)"
        );
        let err = describe("vae", None, &toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("supported kinds are `diffusers`, `adm` and `mlp`"),
            "{err}"
        );
    }

    #[test]
    fn diffusers_rejects_a_source_config_table() {
        let err = describe("diffusers", Some(Path::new("x")), &table("hidden = 4"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("[source.config].hidden: unknown key; a diffusers model is configured by its config.json"),
            "{err}"
        );
    }
}
