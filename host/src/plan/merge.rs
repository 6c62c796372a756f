//! What of a run can be merged into its base weights, and the source run of
//! a `kind = "dtx"` source whose plugins are merged when it loads.
//!
//! A plugin whose model change is a `weights` hook (`lora`, `difffit`)
//! merges: W' is what the run samples with, and `dtx export --format
//! diffusers` writes it. An `inject` module, a `score` correction or a
//! `filter` acts outside the weights and cannot be merged; `loss` and
//! `prepare` hooks only shaped training. `dtx export` and a `kind = "dtx"`
//! source refuse the same plugins with the same words ([`refusal`]).

use super::Plan;
use crate::manifest::{Init, LoadedManifest, ManifestDiagnostic, ManifestError, SourceKind};
use dtx_plugin_api::abi::Hook;
use std::path::Path;

/// Hooks whose effect lives outside the base weights.
const UNMERGEABLE: &[Hook] = &[Hook::Inject, Hook::Score, Hook::Filter];

/// The plugins of `plan` that cannot be merged into the base weights, as
/// `` `name` (hooks) ``.
pub fn unmergeable(plan: &Plan) -> Vec<String> {
    plan.plugins
        .iter()
        .filter_map(|p| {
            let hooks: Vec<&str> = p
                .hooks
                .iter()
                .filter(|h| UNMERGEABLE.contains(h))
                .map(|h| h.name())
                .collect();
            (!hooks.is_empty()).then(|| format!("`{}` ({})", p.name, hooks.join(", ")))
        })
        .collect()
}

/// Why the run's plugins cannot be merged into its base weights, naming
/// each that cannot and its hooks; `None` when they all can.
pub fn refusal(plan: &Plan) -> Option<String> {
    let refused = unmergeable(plan);
    (!refused.is_empty()).then(|| {
        format!(
            "cannot merge {} into the base weights: what they do happens outside them \
             (only plugins whose model changes are `weights` hooks, such as `lora` and \
             `difffit`, merge; `loss` and `prepare` hooks only shaped training and need no \
             merging)",
            refused.join(", ")
        )
    })
}

/// The plugins of `plan` whose `weights` hook a merge applies, in manifest
/// order.
pub fn merged_plugins(plan: &Plan) -> Vec<&str> {
    super::with_hook(&plan.plugins, Hook::Weights)
}

/// The plan of the run a `kind = "dtx"` source names, when that run has
/// plugins whose `weights` hooks are merged into the weights this run
/// loads; `None` for any other source, and for a run without such plugins
/// (its checkpoint's base parameters are then the weights, as they are).
/// A source run whose plugins cannot be loaded or merged is an error at
/// `source.path`, followed by what its own manifest said.
pub(super) fn source_run<B: burn::tensor::backend::AutodiffBackend>(
    loaded: &LoadedManifest,
) -> Result<Option<Plan>, Vec<ManifestDiagnostic>> {
    let Some(src) = loaded.manifest.source.as_ref() else {
        return Ok(None);
    };
    let (SourceKind::Dtx, Some(path), Init::Pretrained) = (&src.kind, &src.path, &src.init) else {
        return Ok(None);
    };
    let folder = crate::model::dtx_run_folder(&loaded.resolve_path(path));
    let file = folder.join("manifest.toml");
    let at =
        |message: String, help: Option<String>| loaded.diagnostic("source.path", message, help);
    let names = plugin_names(&file).map_err(|e| vec![at(e, None)])?;
    if names.is_empty() {
        return Ok(None);
    }
    let run = format!("the source run `{}`", folder.display());
    let listed = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    // the run's own backend setting does not matter: its plugins load on this one
    let sets = ["run.backend=\"cpu\"".to_owned()];
    let resolved = crate::manifest::load(&file, &sets).and_then(super::resolve_on::<B>);
    let plan = match resolved {
        Ok(p) => p,
        Err(ManifestError::Invalid { diagnostics }) => {
            let mut out = vec![at(
                format!(
                    "{run} has plugins ({listed}), which are merged into the weights a `dtx` \
                     source loads, and they cannot be loaded (its manifest's problems follow)"
                ),
                Some(format!(
                    "fix or rebuild them so that `dtx plan {}` passes",
                    file.display()
                )),
            )];
            out.extend(diagnostics);
            return Err(out);
        }
        Err(e) => return Err(vec![at(format!("{run}: {e}"), None)]),
    };
    if let Some(why) = refusal(&plan) {
        return Err(vec![at(
            format!(
                "{run}: {why}; a `dtx` source is that run's model as plain weights, and \
                 without them it would not be the model the run samples"
            ),
            Some(format!(
                "start from that run's own source (its manifest's [source], `{}`), or sample \
                 the run itself with `dtx sample {}`",
                file.display(),
                folder.display()
            )),
        )]);
    }
    Ok((!merged_plugins(&plan).is_empty()).then_some(plan))
}

/// The `[[plugin]]` names of the run manifest `file` (none when it has no
/// plugin), read from its TOML text alone.
fn plugin_names(file: &Path) -> Result<Vec<String>, String> {
    let text = crate::util::fs::read_to_string(file)
        .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("`{}` is not a dtx run manifest: {e}", file.display()))?;
    let Some(plugins) = table.get("plugin") else {
        return Ok(Vec::new());
    };
    let plugins = plugins
        .as_array()
        .ok_or_else(|| format!("`{}`: `plugin` is not an array of tables", file.display()))?;
    Ok(plugins
        .iter()
        .map(|p| {
            p.get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or("?")
                .to_owned()
        })
        .collect())
}
