//! Opening a model outside a run, for `dtx model inspect` and `dtx model
//! forward`: the kind (given, or told from the path), its description, the
//! network, and its weights checked key by key against what the config
//! implies and loaded on the CPU in f32. Every missing, unexpected,
//! misshaped or unreadable checkpoint key is reported at once, naming the
//! file.

use crate::model::Denoiser;
use crate::model::Net;
use crate::model::{ModelDescription, describe, dtx_checkpoint, dtx_run_folder};
use crate::tensor_abi::{CpuBackend, ParamStore};
use anyhow::{anyhow, bail};
use burn::tensor::ops::FloatTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The kinds `--kind` takes.
pub const KINDS: &[&str] = &["diffusers", "adm", "mlp", "dtx"];

/// A model with its weights loaded.
pub struct OpenedModel {
    /// `diffusers`, `adm`, `mlp` or `dtx` (a run's checkpoint; then
    /// [`ModelDescription::kind`] is the kind of the model it trained).
    pub kind: String,
    /// What the config defines; for a `dtx` run, the config of its source
    /// with `dtx_checkpoint` added.
    pub description: ModelDescription,
    /// The network.
    pub net: Net,
    /// The file the weights were read from; `None` for an `mlp` built from
    /// its config alone (no weights).
    pub weights: Option<PathBuf>,
    /// The base weights by checkpoint key (empty without weights).
    pub params: HashMap<String, FloatTensor<CpuBackend>>,
    /// A dtx checkpoint's plugin parameters (`plugin.<instance>.<name>`)
    /// with their shapes and sizes: kept in the file, not part of the base
    /// model.
    pub plugin_parameters: Vec<PluginTensor>,
    /// Whether the weights are a dtx checkpoint's EMA values (loaded in
    /// place of the trained values, as `dtx sample` does).
    pub ema: bool,
}

/// One plugin parameter of a dtx checkpoint: its trained value's shape and
/// size, so a user sees that it trained (a LoRA `B` that left zero).
#[derive(Debug, Clone)]
pub struct PluginTensor {
    /// `plugin.<instance>.<name>`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Euclidean norm of all its values.
    pub norm: f64,
    /// Largest absolute value.
    pub max_abs: f64,
}

/// The plugin parameters (`param/plugin.…`) of the dtx checkpoint `ckpt`,
/// in the file's order, with their norms (f32 values; f64 accumulation).
fn plugin_tensors(ckpt: &Path) -> anyhow::Result<Vec<PluginTensor>> {
    let bytes = std::fs::read(ckpt).map_err(|e| anyhow!("`{}`: {e}", ckpt.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("`{}`: not a safetensors file: {e}", ckpt.display()))?;
    let mut out = Vec::new();
    for (key, view) in st.tensors() {
        let Some(name) = key
            .strip_prefix("param/")
            .filter(|n| n.starts_with("plugin."))
        else {
            continue;
        };
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "`{}`: `{key}` is {:?}; dtx checkpoints hold f32",
                ckpt.display(),
                view.dtype()
            );
        }
        let (mut sq, mut max_abs) = (0f64, 0f64);
        for c in view.data().chunks_exact(4) {
            let v = f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            sq += v * v;
            max_abs = max_abs.max(v.abs());
        }
        out.push(PluginTensor {
            name: name.to_owned(),
            shape: view.shape().to_vec(),
            norm: sq.sqrt(),
            max_abs,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The kind of model at `path`: a folder with `config.json` is a diffusers
/// model, a folder with `manifest.toml` (or a file in its `checkpoints/`)
/// a dtx run, a `.pt`/`.pth`/`.ckpt`/`.safetensors` file an ADM checkpoint.
pub fn detect_kind(path: &Path) -> anyhow::Result<&'static str> {
    if !path.exists() {
        bail!("`{}`: no such file or folder", path.display());
    }
    let in_run = path.is_file()
        && path
            .parent()
            .is_some_and(|p| p.file_name().is_some_and(|n| n == "checkpoints"))
        && dtx_run_folder(path).join("manifest.toml").is_file();
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok("diffusers");
        }
        if path.join("manifest.toml").is_file() {
            return Ok("dtx");
        }
    } else if in_run {
        return Ok("dtx");
    } else {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ["pt", "pth", "ckpt", "safetensors"].contains(&ext) {
            return Ok("adm");
        }
    }
    bail!(
        "cannot tell what kind of model `{}` is (a diffusers folder has config.json, a dtx run \
         folder manifest.toml, an ADM checkpoint ends in .pt or .safetensors): give --kind {}",
        path.display(),
        KINDS.join("|")
    )
}

/// Opens the model at `path` of kind `kind` (detected when `None`) with the
/// config values `config` (ADM flags and MLP sizes; diffusers and dtx
/// models take theirs from their files), checking and loading its weights.
pub fn open(
    path: Option<&Path>,
    kind: Option<&str>,
    config: &toml::Table,
) -> anyhow::Result<OpenedModel> {
    let kind = match (kind, path) {
        (Some(k), _) => KINDS
            .iter()
            .copied()
            .find(|&x| x == k)
            .ok_or_else(|| anyhow!("unknown model kind `{k}` (kinds: {})", KINDS.join(", ")))?,
        (None, Some(p)) => detect_kind(p)?,
        (None, None) => bail!("give the model's path, or --kind mlp for an MLP built from --set"),
    };
    if kind == "mlp" && path.is_some() {
        bail!(
            "an `mlp` model is built from --set values alone and has no weights file of its own; \
             to open trained MLP weights give the dtx run folder that trained them"
        );
    }
    let description = describe(kind, path, config)?;
    let net = Net::from_description(&description).map_err(|e| anyhow!("{e}"))?;
    let device = Default::default();
    let mut store = ParamStore::<CpuBackend>::default();
    let mut ema = false;
    let (weights, plugin_parameters) = match (kind, path) {
        ("mlp", _) | (_, None) => (None, Vec::new()),
        ("dtx", Some(p)) => {
            let ckpt = dtx_checkpoint(p);
            let from_source = |p: &Path, s: &mut ParamStore<CpuBackend>| {
                net.load(p, s, &device, &|_| false)
                    .map_err(|e| e.to_string())
            };
            crate::train::checkpoint::load_base::<CpuBackend>(
                &ckpt,
                &net.parameters(),
                &mut store,
                &device,
                &|_| false,
                Some(&from_source),
            )?;
            let header = crate::model::read_safetensors_header(&ckpt)?;
            ema = header.iter().any(|t| t.name.starts_with("ema/"));
            let plugins = plugin_tensors(&ckpt)?;
            (Some(ckpt), plugins)
        }
        (_, Some(p)) => {
            net.load(p, &mut store, &device, &|_| false)
                .map_err(|e| anyhow!("{e}"))?;
            let file = if p.is_dir() {
                p.join(crate::model::diffusers::WEIGHTS_FILE)
            } else {
                p.to_path_buf()
            };
            (Some(file), Vec::new())
        }
    };
    let params = store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    Ok(OpenedModel {
        kind: kind.to_owned(),
        description,
        net,
        weights,
        params,
        plugin_parameters,
        ema,
    })
}

/// Parameter counts by top-level block, in the network's order: a key's
/// first segment, and for a list of blocks (`down_blocks`, `up_blocks`,
/// `input_blocks`, `output_blocks`, the MLP's `down` and `up`) the index
/// too (`down_blocks.1`, `input_blocks.4`), so each block is its own row.
pub fn block_counts(parameters: &[(String, Vec<usize>)]) -> Vec<(String, usize)> {
    counts_by(parameters, |name| {
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default();
        match parts.next() {
            Some(n)
                if n.parse::<usize>().is_ok()
                    && (first.ends_with("blocks") || first == "down" || first == "up") =>
            {
                format!("{first}.{n}")
            }
            _ => first.to_owned(),
        }
    })
}

/// Scalars per group of parameters, `group(name)` naming each one's group;
/// groups in order of first appearance.
pub fn counts_by(
    parameters: &[(String, Vec<usize>)],
    group: impl Fn(&str) -> String,
) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (name, shape) in parameters {
        let g = group(name);
        let n: usize = shape.iter().product();
        match counts.iter_mut().find(|(k, _)| *k == g) {
            Some((_, c)) => *c += n,
            None => counts.push((g, n)),
        }
    }
    counts
}

/// The description's injection points at image side `resolution` instead
/// of the config's: every spatial size scaled by `resolution / config
/// side`. The side must keep every feature map whole (a multiple of the
/// total downsampling factor); vector models have no side.
pub fn at_resolution(d: &mut ModelDescription, resolution: usize) -> anyhow::Result<()> {
    if d.resolution == 0 {
        bail!(
            "--resolution: a `{}` model works on vectors and has no image side",
            d.kind
        );
    }
    let factor = d.downsampling();
    if resolution == 0 || !resolution.is_multiple_of(factor) {
        bail!(
            "--resolution {resolution}: the model downsamples by {factor}, so the side must be a \
             positive multiple of {factor}"
        );
    }
    for p in &mut d.points {
        if p.height > 0 {
            p.height = p.height * resolution / d.resolution;
            p.width = p.width * resolution / d.resolution;
        }
    }
    d.resolution = resolution;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_group_list_entries_and_keep_network_order() {
        let p = |n: &str, s: &[usize]| (n.to_owned(), s.to_vec());
        let counts = block_counts(&[
            p("conv_in.weight", &[4, 3, 3, 3]),
            p("conv_in.bias", &[4]),
            p("down_blocks.0.resnets.0.conv1.weight", &[4, 4, 1, 1]),
            p("down_blocks.1.resnets.0.conv1.weight", &[2, 4]),
            p("down_blocks.0.resnets.0.conv1.bias", &[4]),
            p("mid_block.attentions.0.to_q.weight", &[3, 3]),
            p("time_embed.0.weight", &[2, 2]),
            p("time_embed.2.weight", &[2, 2]),
        ]);
        assert_eq!(
            counts,
            [
                ("conv_in".to_owned(), 112),
                ("down_blocks.0".to_owned(), 20),
                ("down_blocks.1".to_owned(), 8),
                ("mid_block".to_owned(), 9),
                ("time_embed".to_owned(), 8),
            ]
        );
    }

    #[test]
    fn resolution_scales_points_and_must_keep_maps_whole() {
        let mut d = describe("mlp", None, &toml::Table::new()).unwrap();
        let err = at_resolution(&mut d, 32).unwrap_err().to_string();
        assert!(err.contains("has no image side"), "{err}");

        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unet/small");
        let mut d = describe("diffusers", Some(&dir), &toml::Table::new()).unwrap();
        assert_eq!(d.resolution, 16);
        at_resolution(&mut d, 64).unwrap();
        let p = d.point("down.1.res.0").unwrap();
        assert_eq!((p.channels, p.height, p.width), (64, 32, 32));
        assert_eq!(d.point("temb").unwrap().height, 0);
        let err = at_resolution(&mut d, 33).unwrap_err().to_string();
        assert!(err.contains("positive multiple of 2"), "{err}");
    }

    #[test]
    fn kinds_are_told_from_the_path() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        assert_eq!(detect_kind(&root.join("unet/small")).unwrap(), "diffusers");
        assert_eq!(detect_kind(&root.join("adm/full/model.pt")).unwrap(), "adm");
        let err = detect_kind(&root.join("eval")).unwrap_err().to_string();
        assert!(err.contains("give --kind diffusers|adm|mlp|dtx"), "{err}");
        let err = detect_kind(&root.join("nothing")).unwrap_err().to_string();
        assert!(err.contains("no such file or folder"), "{err}");
    }
}
