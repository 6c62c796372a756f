//! `dtx model inspect` and `dtx model forward`: a checkpoint's structure and
//! injection points, and one forward pass on the user's inputs, for holding
//! dtx against diffusers or guided-diffusion tensor by tensor.

use super::model_open::{OpenedModel, at_resolution, block_counts, counts_by, open};
use crate::model::Denoiser;
use crate::plan::thousands;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

/// Where the model is and how to read it, shared by both commands.
#[derive(Debug, clap::Args)]
pub struct ModelSource {
    /// Model kind: `diffusers` (a `UNet2DModel` folder), `adm` (a
    /// guided-diffusion `.pt` or `.safetensors` checkpoint), `mlp` (dtx's
    /// residual MLP, from --set alone) or `dtx` (a dtx run folder or one of
    /// its checkpoints). Default: told from the path.
    #[arg(long)]
    pub kind: Option<String>,
    /// A TOML file of config values (ADM flags such as `image_size`,
    /// `num_channels`, `class_cond`; MLP sizes); --set overrides it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A config value, `key=value` (TOML value, else text): ADM flags as
    /// guided-diffusion's scripts take them (`--set image_size=64 --set
    /// channel_mult=1,2,3,4`), MLP sizes (`--set hidden=64`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ModelSource {
    /// Opens the model. The model loaders name a config value by where a
    /// manifest keeps it (`[source.config].image_size`); here it came from
    /// the command line, and the error says so.
    pub(super) fn open(&self, path: Option<&std::path::Path>) -> anyhow::Result<OpenedModel> {
        let config = config_table(self.config.as_deref(), &self.set)?;
        open(path, self.kind.as_deref(), &config).map_err(|e| {
            let text = format!("{e:#}")
                .replace("[source.config].", "--set ")
                .replace("[source.config]", "the --set/--config values");
            anyhow::anyhow!(text)
        })
    }
}

/// `dtx model <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Load a model and check its checkpoint against its config (every
    /// missing, unexpected or misshaped key is listed); print its kind,
    /// every config value in force, parameter counts in total and per
    /// top-level block, and every injection point with its channels and
    /// spatial size.
    Inspect(InspectArgs),
    /// Run the denoiser once on the CPU in f32 on inputs from a safetensors
    /// file (`x`, `timesteps`, `class_labels`) and write its output (`out`)
    /// and, with --points, the activation at each named injection point.
    Forward(super::model_forward::ForwardArgs),
}

/// `dtx model inspect` arguments.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The model: a diffusers folder, an ADM checkpoint, a dtx run folder or
    /// checkpoint (none for `--kind mlp`).
    pub path: Option<PathBuf>,
    /// The model's kind and config.
    #[command(flatten)]
    pub source: ModelSource,
    /// Image side to give the injection points' sizes at (default: the
    /// config's `sample_size` / `image_size`).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also list every base parameter with its shape, role and block: the
    /// catalogue plugins read (`host.model_details()`, api 0.4).
    #[arg(long)]
    pub parameters: bool,
}

/// Runs `dtx model <command>`.
pub fn run(command: &ModelCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        ModelCommand::Inspect(a) => inspect(a, out),
        ModelCommand::Forward(a) => {
            let m = a.source.open(Some(&a.path))?;
            super::model_forward::run(a, &m, out)
        }
    }
}

fn inspect(a: &InspectArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut m = a.source.open(a.path.as_deref())?;
    if let Some(r) = a.resolution {
        at_resolution(&mut m.description, r)?;
    }
    let parameters = m.net.parameters();
    let blocks = block_counts(&parameters);
    let total: usize = blocks.iter().map(|(_, n)| n).sum();
    let d = &m.description;
    let catalogue = a
        .parameters
        .then(|| crate::model::base_parameters(&parameters, &m.description));
    if a.json {
        let mut value = inspect_json(a, &m, &parameters, &blocks, total);
        if let Some(c) = &catalogue {
            value["catalogue"] = c
                .iter()
                .map(|p| {
                    json!({"key": p.key.as_str(), "shape": p.shape.as_slice(),
                        "role": p.role.name(), "block": p.block.as_str()})
                })
                .collect();
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    let kind = if m.kind == d.kind {
        d.kind.clone()
    } else {
        format!("{}, a {} model", m.kind, d.kind)
    };
    match &a.path {
        Some(p) => writeln!(out, "model `{}` ({kind})", p.display())?,
        None => writeln!(out, "model ({kind}, from its config alone)")?,
    }
    match &m.weights {
        Some(w) => writeln!(
            out,
            "weights `{}`{}: every key fits the config ({} tensors)",
            w.display(),
            if m.ema { " (EMA values)" } else { "" },
            parameters.len()
        )?,
        None => writeln!(out, "weights: none (built from its config)")?,
    }
    let classes = match m.net.num_classes() {
        0 => "unconditional".to_owned(),
        k => format!("{k} classes"),
    };
    let side = if d.resolution == 0 {
        format!("vectors of {}", d.data_channels)
    } else {
        format!("{} × {r} × {r} images", d.data_channels, r = d.resolution)
    };
    writeln!(
        out,
        "data: {side}; output channels {}; {classes}",
        d.out_channels
    )?;
    inspect_tables(&m, &parameters, &blocks, total, out)?;
    if let Some(c) = &catalogue {
        writeln!(out, "\nbase parameters (key, shape, role, block):")?;
        write_catalogue(c, out)?;
    }
    Ok(())
}

/// The base-parameter catalogue, one line each: key, shape, role, block
/// (`dtx model inspect --parameters`, `dtx plugins inspect --model`).
pub(super) fn write_catalogue(
    c: &[dtx_plugin_api::abi::BaseParamInfo],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let width = c.iter().map(|p| p.key.len()).max().unwrap_or(0);
    for p in c {
        let shape = format!("{:?}", p.shape.as_slice());
        let block = if p.block.is_empty() {
            "-"
        } else {
            p.block.as_str()
        };
        writeln!(
            out,
            "  {:<width$}  {shape:<16}  {:<9}  {block}",
            p.key.as_str(),
            p.role.name()
        )?;
    }
    Ok(())
}

/// `dtx model inspect --json`: everything the text output shows, as JSON.
fn inspect_json(
    a: &InspectArgs,
    m: &OpenedModel,
    parameters: &[(String, Vec<usize>)],
    blocks: &[(String, usize)],
    total: usize,
) -> Value {
    let d = &m.description;
    let config: serde_json::Map<String, Value> = d
        .config
        .iter()
        .map(|(k, v)| {
            let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            (k.clone(), v)
        })
        .collect();
    let plugin_total: usize = m
        .plugin_parameters
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let value = json!({
        "kind": m.kind,
        "model_kind": d.kind,
        "path": a.path.as_ref().map(|p| p.display().to_string()),
        "weights": m.weights.as_ref().map(|p| p.display().to_string()),
        "ema": m.ema,
        "data_channels": d.data_channels,
        "out_channels": d.out_channels,
        "resolution": d.resolution,
        "num_classes": m.net.num_classes(),
        "config": config,
        "parameters": {
            "total": total,
            "tensors": parameters.len(),
            "blocks": blocks.iter().map(|(b, n)| json!({"block": b, "count": n})).collect::<Vec<_>>(),
        },
        "points": d.points.iter().map(|p| json!({
            "name": p.name, "channels": p.channels, "height": p.height,
            "width": p.width, "module": p.module,
        })).collect::<Vec<_>>(),
        "plugin_parameters": {
            "total": plugin_total,
            "tensors": m.plugin_parameters.len(),
            "list": m.plugin_parameters.iter().map(|t| json!({
                "name": t.name, "shape": t.shape, "norm": t.norm, "max_abs": t.max_abs,
            })).collect::<Vec<_>>(),
        },
    });
    value
}

/// The text output's tables: config in force, parameters per block, plugin
/// parameters, injection points.
fn inspect_tables(
    m: &OpenedModel,
    parameters: &[(String, Vec<usize>)],
    blocks: &[(String, usize)],
    total: usize,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let d = &m.description;
    writeln!(out, "\nconfig in force:")?;
    let width = d.config.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &d.config {
        writeln!(out, "  {k:<width$}  {v}")?;
    }
    writeln!(
        out,
        "\nparameters: {} in {} tensors",
        thousands(total),
        parameters.len()
    )?;
    let width = blocks.iter().map(|(b, _)| b.len()).max().unwrap_or(0);
    for (b, n) in blocks {
        writeln!(out, "  {b:<width$}  {:>12}", thousands(*n))?;
    }
    if !m.plugin_parameters.is_empty() {
        // per instance: `plugin.<instance>`
        let shapes: Vec<(String, Vec<usize>)> = m
            .plugin_parameters
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let per = counts_by(&shapes, |name| {
            name.split('.').take(2).collect::<Vec<_>>().join(".")
        });
        let n: usize = per.iter().map(|(_, c)| c).sum();
        writeln!(
            out,
            "\nplugin parameters in the checkpoint (not part of the base model; \
             `dtx model forward` runs the base model alone): {}",
            thousands(n)
        )?;
        let width = per.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
        for (inst, c) in &per {
            writeln!(out, "  {inst:<width$}  {:>12}", thousands(*c))?;
        }
        writeln!(out, "\n  each (name, shape, norm, max |value|):")?;
        let width = m
            .plugin_parameters
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(0);
        for t in &m.plugin_parameters {
            let shape = format!("{:?}", t.shape);
            writeln!(
                out,
                "  {:<width$}  {shape:<16}  {:>11.5e}  {:>11.5e}",
                t.name, t.norm, t.max_abs
            )?;
        }
    }
    match d.resolution {
        0 => writeln!(out, "\ninjection points:")?,
        r => writeln!(out, "\ninjection points at {r} × {r}:")?,
    }
    let width = d.points.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &d.points {
        let shape = if p.height == 0 {
            format!("{}", p.channels)
        } else {
            format!("{} × {} × {}", p.channels, p.height, p.width)
        };
        writeln!(out, "  {:<width$}  {shape:<16}  {}", p.name, p.module)?;
    }
    Ok(())
}

/// Reads `--config FILE` (a TOML table) and applies `--set key=value`
/// overrides on top, each value read as TOML or else as a string.
pub fn config_table(file: Option<&Path>, sets: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = match file {
        Some(f) => {
            let text = crate::util::fs::read_to_string(f)
                .with_context(|| format!("reading `{}`", f.display()))?;
            toml::from_str(&text).with_context(|| {
                format!("`{}` is not a TOML table of config values", f.display())
            })?
        }
        None => toml::Table::new(),
    };
    for s in sets {
        crate::manifest::apply_override(&mut table, s).map_err(|e| anyhow!("--set {s}: {e}"))?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_come_from_the_file_then_the_flags() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/adm/full");
        let t = config_table(
            Some(&dir.join("config.toml")),
            &["num_classes=7".into(), "channel_mult=1,1".into()],
        )
        .unwrap();
        assert_eq!(t["num_classes"].as_integer(), Some(7));
        assert_eq!(t["image_size"].as_integer(), Some(8));
        assert_eq!(t["channel_mult"].as_str(), Some("1,1"));
        let err = config_table(None, &["oops".into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--set oops: no `=`"), "{err}");
    }
}
