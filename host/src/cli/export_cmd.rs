//! `dtx export RUN --format diffusers|peft [--out DIR]`: an adapted model as
//! files other tools read (docs/export.md).
//!
//! - `diffusers`: the run's model with its weight-level plugins merged
//!   (`crate::run::export`) as a diffusers `UNet2DModel` folder
//!   (`config.json`, `diffusion_pytorch_model.safetensors`); for an ADM
//!   source, guided-diffusion's state dict as `model.safetensors` with its
//!   flags in `config.toml`.
//! - `peft`: a LoRA run's factors as PEFT writes an adapter
//!   (`adapter_config.json`, `adapter_model.safetensors` with keys
//!   `base_model.model.<module>.lora_A.weight`), for
//!   `PeftModel.from_pretrained` on the source model.

use crate::manifest;
use crate::plan;
use crate::tensor_abi::CpuBackend;
use anyhow::{Context, anyhow, bail};
use dtx_plugin_api::abi::Hook;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `dtx export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run folder (`runs/<name>`).
    pub run_dir: PathBuf,
    /// `diffusers`: the merged model as a folder diffusers loads (an ADM
    /// source: a guided-diffusion state dict); `peft`: a LoRA run's
    /// adapter as PEFT saves one.
    #[arg(long, default_value = "diffusers")]
    pub format: String,
    /// The folder to write (default: `<run>/export-<format>`); it must not
    /// exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `dtx export`.
pub fn run(a: &ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if !["diffusers", "peft"].contains(&a.format.as_str()) {
        bail!(
            "--format: `{}` is not a format; choose `diffusers` (the merged model) or `peft` \
             (a LoRA adapter)",
            a.format
        );
    }
    let ckpt = a.run_dir.join("checkpoints").join("latest.safetensors");
    if !ckpt.is_file() {
        bail!(
            "`{}` has no checkpoint (expected `{}`): is it a run folder?",
            a.run_dir.display(),
            ckpt.display()
        );
    }
    let dest = a
        .out
        .clone()
        .unwrap_or_else(|| a.run_dir.join(format!("export-{}", a.format)));
    if dest.exists() && (!dest.is_dir() || std::fs::read_dir(&dest)?.next().is_some()) {
        bail!(
            "`{}` already exists and is not an empty folder: nothing was written (give another --out)",
            dest.display()
        );
    }
    // exports run on the CPU whatever backend the run trained on
    let sets = ["run.backend=\"cpu\"".to_owned()];
    let loaded = manifest::load(&a.run_dir.join("manifest.toml"), &sets)?;
    let plan = plan::resolve(loaded)?;
    let kind = plan
        .model
        .as_ref()
        .map(|d| d.kind.clone())
        .ok_or_else(|| anyhow!("the run has no [source] model"))?;
    match a.format.as_str() {
        "peft" => peft(&plan, &ckpt, &dest, out),
        _ => merged(&plan, &kind, &ckpt, &dest, out),
    }
}

fn merged(
    plan: &plan::Plan,
    kind: &str,
    ckpt: &Path,
    dest: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if kind == "mlp" {
        bail!(
            "the run's source is dtx's MLP denoiser, which no other library reads: its \
             checkpoint is the model (`dtx model inspect`, `dtx model forward`)"
        );
    }
    // refuses what cannot be merged before it creates `dest`
    let existed = dest.exists();
    let exported = crate::run::export::merged_weights::<CpuBackend>(plan, ckpt, dest);
    // the run's scaffolding in the folder is not part of the export
    for f in ["metrics.jsonl", ".lock"] {
        let _ = std::fs::remove_file(dest.join(f));
    }
    let e = match exported {
        Ok(e) => e,
        Err(err) => {
            if !existed {
                // empty again: nothing of a failed export stays
                let _ = std::fs::remove_dir(dest);
            }
            return Err(err.into());
        }
    };
    let desc = plan.model.as_ref().expect("checked above");
    let (weights, config) = if kind == "adm" {
        ("model.safetensors", "config.toml")
    } else {
        (crate::model::diffusers::WEIGHTS_FILE, "config.json")
    };
    write_f32(
        &dest.join(weights),
        e.tensors
            .iter()
            .map(|(k, s, v)| (k.clone(), s.clone(), v.as_slice())),
    )?;
    let text = if kind == "adm" {
        adm_flags(&desc.config)?
    } else {
        diffusers_config(&desc.config)?
    };
    std::fs::write(dest.join(config), text)
        .with_context(|| format!("writing `{}`", dest.join(config).display()))?;
    writeln!(
        out,
        "exported `{}` ({kind}, {} tensors, step {}{}) to `{}`",
        ckpt.display(),
        e.tensors.len(),
        e.step,
        if e.ema { ", EMA values" } else { "" },
        dest.display()
    )?;
    for (name, n) in &e.merged {
        writeln!(out, "  merged `{name}`: {n} weights")?;
    }
    Ok(())
}

/// `config.json` of a diffusers `UNet2DModel` from the values in force.
fn diffusers_config(config: &[(String, String)]) -> anyhow::Result<String> {
    let mut m = serde_json::Map::new();
    m.insert("_class_name".into(), "UNet2DModel".into());
    for (k, v) in config.iter().filter(|(k, _)| !k.starts_with("dtx_")) {
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
        m.insert(k.clone(), v);
    }
    Ok(serde_json::to_string_pretty(&serde_json::Value::Object(m))? + "\n")
}

/// The ADM flags in force as TOML (`dtx model inspect --config` reads it;
/// guided-diffusion's `create_model_and_diffusion` takes the same names).
fn adm_flags(config: &[(String, String)]) -> anyhow::Result<String> {
    let mut t = toml::Table::new();
    for (k, v) in config.iter().filter(|(k, _)| !k.starts_with("dtx_")) {
        let parsed = format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        t.insert(k.clone(), parsed);
    }
    Ok(format!(
        "# guided-diffusion flags of the exported model (model.safetensors)\n{}",
        toml::to_string(&t)?
    ))
}

/// Writes `tensors` (key, shape, f32 values) as a safetensors file.
fn write_f32<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> anyhow::Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    write_f32_bytes(path, &owned)
}

/// Writes f32 tensors given as little-endian bytes (key, shape, bytes) as a
/// safetensors file, atomically.
fn write_f32_bytes(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> anyhow::Result<()> {
    let views = tensors
        .iter()
        .map(|(k, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow!("`{k}`: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let data = safetensors::serialize(views, Some(meta))?;
    crate::util::write_atomic(path, &data)
        .with_context(|| format!("writing `{}`", path.display()))?;
    Ok(())
}

/// A LoRA plugin's rank and α from its config (`rank`, `alpha`; α defaults
/// to the rank, as the `lora` plugin's does).
fn rank_and_alpha(p: &plan::PlannedPlugin) -> anyhow::Result<(u64, f64)> {
    let v: serde_json::Value = serde_json::from_str(&p.config_json)?;
    let rank = v
        .get("rank")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            anyhow!(
                "plugin `{}`: its config has no integer `rank`; --format peft writes LoRA adapters \
             (the `lora` plugin's config: rank, alpha)",
                p.name
            )
        })?;
    let alpha = match v.get("alpha") {
        None | Some(serde_json::Value::Null) => rank as f64,
        Some(a) => a
            .as_f64()
            .ok_or_else(|| anyhow!("plugin `{}`: `alpha` is not a number", p.name))?,
    };
    Ok((rank, alpha))
}

fn peft(plan: &plan::Plan, ckpt: &Path, dest: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let refused = crate::run::export::unmergeable(plan);
    if !refused.is_empty() {
        bail!(
            "a PEFT adapter holds LoRA factors alone; the run also has {}, which it cannot carry",
            refused.join(", ")
        );
    }
    let lora: Vec<&plan::PlannedPlugin> = plan
        .plugins
        .iter()
        .filter(|p| p.hooks.contains(&Hook::Weights))
        .collect();
    let p = match lora.as_slice() {
        [p] => *p,
        [] => bail!("the run has no weight-level plugin (`lora`): there is no adapter to export"),
        many => bail!(
            "the run has {} weight-level plugins ({}); a PEFT adapter holds one: export the \
             merged model with --format diffusers",
            many.len(),
            many.iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let (rank, alpha) = rank_and_alpha(p)?;
    let bytes = std::fs::read(ckpt).with_context(|| format!("reading `{}`", ckpt.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("`{}`: {e}", ckpt.display()))?;
    let names = st.names();
    // base tensors that trained (moments or an average kept) cannot ride
    // in an adapter
    let trained_base: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("adam_m/").or_else(|| n.strip_prefix("ema/")))
        .filter(|n| !n.starts_with("plugin."))
        .collect();
    if !trained_base.is_empty() {
        bail!(
            "the run also trained {} base tensors (`{}`, …), which a LoRA adapter cannot \
             carry: export the merged model with --format diffusers",
            trained_base.len(),
            trained_base[0]
        );
    }
    let ema = names.iter().any(|n| n.starts_with("ema/plugin."));
    let prefix = format!("plugin.{}.", p.name);
    let mut factors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut modules = std::collections::BTreeSet::new();
    for name in names {
        let Some(rest) = name.strip_prefix("param/") else {
            continue;
        };
        let Some(local) = rest.strip_prefix(&prefix) else {
            continue;
        };
        let module = local
            .strip_suffix(".lora_A.weight")
            .or_else(|| local.strip_suffix(".lora_B.weight"))
            .ok_or_else(|| {
                anyhow!(
                    "plugin `{}`: parameter `{local}` is not a LoRA factor \
                     (`<module>.lora_A.weight`, `<module>.lora_B.weight`)",
                    p.name
                )
            })?;
        modules.insert(module.to_owned());
        // the values sampling uses: the EMA average when the run keeps one
        let source = if ema {
            format!("ema/{rest}")
        } else {
            name.to_string()
        };
        let view = st
            .tensor(&source)
            .map_err(|e| anyhow!("`{}`: `{source}`: {e}", ckpt.display()))?;
        factors.insert(
            format!("base_model.model.{local}"),
            (view.shape().to_vec(), view.data().to_vec()),
        );
    }
    if factors.is_empty() {
        bail!("plugin `{}` has no parameters in the checkpoint", p.name);
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating `{}`", dest.display()))?;
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> =
        factors.into_iter().map(|(k, (s, b))| (k, s, b)).collect();
    write_f32_bytes(&dest.join("adapter_model.safetensors"), &owned)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": null,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": modules.iter().collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "inference_mode": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    std::fs::write(
        dest.join("adapter_config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    writeln!(
        out,
        "exported `{}`'s LoRA factors ({} modules, r {rank}, alpha {alpha}{}) to `{}`",
        p.name,
        modules.len(),
        if ema { ", EMA values" } else { "" },
        dest.display()
    )?;
    Ok(())
}
