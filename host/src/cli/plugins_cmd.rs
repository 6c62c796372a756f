//! `dtx plugins list` and `dtx plugins inspect`: the plugins in the search
//! path, and one plugin's description.

use super::model_cmd::ModelSource;
use crate::plugins::{self, PluginLibrary};
use crate::tensor_abi::{CpuBackend, vtables};
use abi_stable::std_types::RVec;
use anyhow::{Context, bail};
use dtx_plugin_api::abi::BaseParamInfo;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn dirs_with(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = extra.to_vec();
    dirs.extend(plugins::search_dirs(None));
    dirs
}

fn hooks_text(lib: &PluginLibrary) -> String {
    let hooks: Vec<&str> = lib.description.hooks.iter().map(|h| h.name()).collect();
    if hooks.is_empty() {
        "-".into()
    } else {
        hooks.join(",")
    }
}

pub(super) fn list(extra: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    let dirs = dirs_with(extra);
    let (found, failed) = plugins::discover(&dirs, vtables::<CpuBackend>());
    if found.is_empty() && failed.is_empty() {
        writeln!(
            out,
            "no plugins found in: {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        return Ok(());
    }
    for lib in &found {
        let d = &lib.description;
        writeln!(
            out,
            "{:<20} {:<8} {:<32} {}",
            d.name,
            d.version,
            hooks_text(lib),
            lib.path.display()
        )?;
    }
    for (path, e) in &failed {
        writeln!(
            out,
            "{:<20} {:<8} {:<32} {}",
            "(refused)",
            "-",
            "-",
            path.display()
        )?;
        writeln!(out, "  {e}")?;
    }
    Ok(())
}

fn find_plugin(name: &str, extra: &[PathBuf]) -> anyhow::Result<Arc<PluginLibrary>> {
    let vt = vtables::<CpuBackend>();
    if plugins::is_path(name) {
        return plugins::load_library(&PathBuf::from(name), None, vt)
            .with_context(|| format!("inspecting `{name}`"));
    }
    let dirs = dirs_with(extra);
    let (found, _) = plugins::discover(&dirs, vt);
    if let Some(lib) = found.iter().find(|l| l.description.name == name) {
        return Ok(lib.clone());
    }
    match plugins::resolve_library(name, &dirs, None) {
        Ok(path) => Ok(plugins::load_library(&path, None, vt)?),
        Err(_) => {
            let names: Vec<&str> = found.iter().map(|l| l.description.name.as_str()).collect();
            let hint = crate::util::nearest(name, names.iter().copied())
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            bail!(
                "no plugin named `{name}` (found: {}){hint}\n\
                 searched: {}; a plugin built elsewhere: give its file \
                 (`dtx plugins inspect path/to/libmy_plugin.so`), its folder (`--dir DIR`), \
                 or add the folder to {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
                if searched.is_empty() {
                    "no folder".to_string()
                } else {
                    searched.join(", ")
                },
                plugins::PLUGIN_PATH_VAR
            )
        }
    }
}

pub(super) fn inspect(
    name: &str,
    extra: &[PathBuf],
    model: Option<(Option<&Path>, &ModelSource)>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let lib = find_plugin(name, extra)?;
    // the model is read before anything is printed: an error stands alone
    let catalogue = model.map(|(p, s)| catalogue(p, s)).transpose()?;
    let d = &lib.description;
    writeln!(out, "{} {}: {}", d.name, d.version, d.description)?;
    writeln!(out, "file: {}", lib.path.display())?;
    writeln!(out, "built against dtx-plugin-api {}", d.api_version)?;
    writeln!(out, "hooks: {}", hooks_text(&lib))?;
    writeln!(
        out,
        "injection points (default): {}",
        if d.injection_points.is_empty() {
            "-".into()
        } else {
            d.injection_points.join(", ")
        }
    )?;
    writeln!(out, "config keys:")?;
    if d.config.is_empty() {
        writeln!(out, "  (none)")?;
    }
    let width = d.config.iter().map(|k| k.key.len()).max().unwrap_or(0);
    for k in &d.config {
        // every key has a default (configs are `#[serde(default)]`); an
        // empty one is an optional value left unset (`None`), whose help
        // says what stands in for it
        let default = if k.default.is_empty() {
            "unset by default".to_string()
        } else {
            format!("default {}", k.default)
        };
        writeln!(
            out,
            "  {:<width$}  {:<10} {:<24} {}",
            k.key, k.ty, default, k.help
        )?;
    }
    if let Some((head, c)) = catalogue {
        writeln!(out, "{head}")?;
        super::model_cmd::write_catalogue(&c, out)?;
    }
    Ok(())
}

/// `dtx plugins inspect --model`: the base parameters of the model, as the
/// plugin reads them from `host.model_details()` (the list `dtx model
/// inspect --parameters` prints), under a heading naming the model.
fn catalogue(
    path: Option<&Path>,
    source: &ModelSource,
) -> anyhow::Result<(String, RVec<BaseParamInfo>)> {
    let m = source.open(path)?;
    use crate::model::Denoiser;
    let c = crate::model::base_parameters(&m.net.parameters(), &m.description);
    let name = path.map_or_else(|| m.kind.clone(), |p| format!("`{}`", p.display()));
    Ok((
        format!(
            "base parameters of {name}, as host.model_details() gives them \
             (key, shape, role, block):"
        ),
        c,
    ))
}

/// `dtx plugins new`: writes the crate and says what to run next.
pub(super) fn new(
    name: &str,
    hooks: &[String],
    path: Option<PathBuf>,
    api: Option<PathBuf>,
    model: Option<PathBuf>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use super::scaffold;
    let hooks = scaffold::check(name, hooks)?;
    let api = match api {
        Some(p) => {
            if !p.join("Cargo.toml").is_file() {
                bail!(
                    "--api `{}`: no Cargo.toml there (give dtx-plugin-api's folder, `plugin-api/` in the dtx repository)",
                    p.display()
                );
            }
            Some(std::path::absolute(&p)?)
        }
        None => scaffold::api_beside_host(),
    };
    let model = match model {
        Some(p) => {
            if !p.exists() {
                bail!("--model `{}`: no such file or folder", p.display());
            }
            std::path::absolute(&p)?
        }
        None => scaffold::shipped_model().ok_or_else(|| {
            anyhow::anyhow!(
                "the shipped source model (manifests/models/shapes-source) was not found beside \
                 this dtx: give --model PATH (a diffusers folder or ADM checkpoint), or set \
                 DTX_MANIFESTS to the shipped manifests folder"
            )
        })?,
    };
    let dir = path.unwrap_or_else(|| PathBuf::from(name));
    let s = scaffold::Scaffold {
        name: name.to_owned(),
        hooks,
        dir: dir.clone(),
        api: api.clone(),
        model,
    };
    let files = scaffold::write(&s)?;
    writeln!(
        out,
        "created `{}`: crate {} (hooks {})",
        dir.display(),
        s.package(),
        s.hooks.join(", ")
    )?;
    for f in files {
        writeln!(out, "  {f}")?;
    }
    if api.is_none() {
        writeln!(
            out,
            "note: dtx-plugin-api's sources were not found beside this dtx; Cargo.toml asks for \
             version {} by name: point it at your dtx checkout's plugin-api/ with a path",
            dtx_plugin_api::abi::API_VERSION
        )?;
    }
    writeln!(
        out,
        "next:\n  cd {}\n  cargo test\n  cargo build --release\n  dtx run run.toml",
        dir.display()
    )?;
    Ok(())
}
