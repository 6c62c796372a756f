//! `dtx plugins list` and `dtx plugins inspect`: the plugins in the search
//! path, and one plugin's description.

use crate::plugins::{self, PluginLibrary};
use crate::tensor_abi::{CpuBackend, vtables};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;
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

pub(super) fn inspect(name: &str, extra: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    let lib = find_plugin(name, extra)?;
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
        let default = if k.default.is_empty() {
            "required".to_string()
        } else {
            format!("default {}", k.default)
        };
        writeln!(
            out,
            "  {:<width$}  {:<10} {:<24} {}",
            k.key, k.ty, default, k.help
        )?;
    }
    Ok(())
}
