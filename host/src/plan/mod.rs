//! The resolved plan: what a manifest will do, with every plugin found, checked
//! and built against the model, so that every mistake is reported before any
//! work starts. `dtx plan` prints it ([`Plan::render`]).
//!
//! The manifest layer below reads and validates TOML and knows nothing of
//! plugins or models; this layer binds a manifest to them: `preflight`
//! checks the source checkpoint's headers and the built-in data configs,
//! `memory` estimates what the run needs against the machine's memory.

mod memory;
pub mod merge;
mod preflight;
mod render;

pub(crate) use render::thousands;

use crate::manifest::{LoadedManifest, ManifestDiagnostic, ManifestError};
use crate::model::Denoiser;
use crate::model::{self, ModelDescription};
use crate::plugins::{self, Instance, LoadError, PluginLibrary};
use crate::tensor_abi::{CpuBackend, Session, vtables};
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::{ErrorKind, Hook, ModelInfo, PluginRecipe};
use std::path::PathBuf;
use std::sync::Arc;

/// A plugin as the plan binds it.
#[derive(Debug, Clone)]
pub struct PlannedPlugin {
    /// Instance name from the manifest (`[[plugin]] name`): names its loss
    /// terms, logs and parameters. Two instances of one plugin need two names.
    pub name: String,
    /// The checked library.
    pub library: Arc<PluginLibrary>,
    /// Hooks bound (the plugin's, restricted by `hooks = [...]`).
    pub hooks: Vec<Hook>,
    /// Injection points it injects at.
    pub points: Vec<String>,
    /// Number of trainable scalars it registered.
    pub parameters: usize,
    /// The base weights its `weights` hook re-parameterises (api 0.4).
    pub weight_targets: Vec<String>,
    /// What it asks of training (api 0.4): base parameters to train,
    /// groups of its own parameters with their own rate.
    pub recipe: PluginRecipe,
    /// Its config as JSON, as it is handed to the plugin.
    pub config_json: String,
}

/// A stage of the run, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// `prepare`, `train`, `sample`, `filter` or `eval`.
    pub name: &'static str,
    /// What it does, one line.
    pub detail: String,
}

/// Everything `dtx plan` shows and the engine runs from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The manifest it came from.
    pub manifest: LoadedManifest,
    /// The source model, when the manifest has one.
    pub model: Option<ModelDescription>,
    /// Plugins in manifest order.
    pub plugins: Vec<PlannedPlugin>,
    /// The `[condition]` encoder, resolved against the model.
    pub condition: Option<crate::condition::ConditionPlan>,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// For a `kind = "dtx"` source whose run has weight-level plugins: that
    /// run's plan. Their `weights` hooks are merged into the weights this
    /// run loads (`merge::source_run`).
    pub source_run: Option<Box<Plan>>,
}

/// A plugin's config table as the JSON text handed to the plugin. Every value
/// is carried over exactly: integers as integers, floats by their shortest
/// round-trip form (NaN and infinities were refused when the manifest was
/// loaded, so none turns into `null` here), datetimes as the text written.
pub(crate) fn config_json(table: &toml::Table) -> String {
    fn value(v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(s.clone()),
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            toml::Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
            toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
            toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(value).collect()),
            toml::Value::Table(t) => {
                serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), value(v))).collect())
            }
        }
    }
    let object: serde_json::Map<String, serde_json::Value> =
        table.iter().map(|(k, v)| (k.clone(), value(v))).collect();
    serde_json::Value::Object(object).to_string()
}

/// Resolves a loaded manifest: describes the model, finds, checks and builds
/// every plugin, and checks hooks and injection points. All problems are
/// collected into one error.
pub fn resolve(loaded: LoadedManifest) -> Result<Plan, ManifestError> {
    resolve_on::<CpuBackend>(loaded)
}

/// The source model's description (with its parameters from the
/// architecture when the folder has no weights), or the diagnostic saying
/// why it cannot be described, pointed at the key at fault.
fn describe_source(
    loaded: &LoadedManifest,
    src: &crate::manifest::Source,
) -> Result<ModelDescription, Box<ManifestDiagnostic>> {
    let path = src.path.as_ref().map(|p| loaded.resolve_path(p));
    match model::describe(src.kind.as_str(), path.as_deref(), &src.config) {
        Ok(mut d) => {
            // A folder without weights (random init): the architecture
            // still names every parameter.
            if !d.parameters_known()
                && let Ok(net) = model::Net::from_description(&d)
            {
                d.parameters = net.parameters();
            }
            Ok(d)
        }
        Err(e) => {
            let message = format!("cannot describe the source model: {e}");
            // a `[source.config]` key is pointed at where it is written
            Err(Box::new(match e.location() {
                Some(at) if at.origin == model::Origin::SourceConfig => {
                    let key = format!("source.config.{}", at.key);
                    if matches!(e, model::ModelError::UnknownKey { .. }) {
                        loaded.key_diagnostic(&key, message, None)
                    } else {
                        loaded.diagnostic(&key, message, None)
                    }
                }
                _ if src.path.is_some() => loaded.diagnostic("source.path", message, None),
                _ => loaded.diagnostic("source.kind", message, None),
            }))
        }
    }
}

/// [`resolve`] with plugins loaded against backend `B`'s vtables. A plugin
/// library keeps the first vtables it is given, so a process plans with the
/// backend it will run on (`dtx run` with `backend = "cuda"`).
pub fn resolve_on<B: AutodiffBackend>(loaded: LoadedManifest) -> Result<Plan, ManifestError> {
    let m = &loaded.manifest;
    let mut diags: Vec<ManifestDiagnostic> = Vec::new();

    if m.run.backend.as_str() == "cuda" && !crate::tensor_abi::HAS_CUDA {
        diags.push(loaded.diagnostic(
            "run.backend",
            "this dtx was built without the CUDA backend",
            Some("rebuild with `cargo build --release -p dtx --features cuda`, or use `backend = \"cpu\"`".into()),
        ));
    }
    let model = match &m.source {
        Some(src) => match describe_source(&loaded, src) {
            Ok(d) => Some(d),
            Err(d) => {
                diags.push(*d);
                None
            }
        },
        None => None,
    };
    if let (Some(src), Some(d)) = (&m.source, &model) {
        diags.extend(preflight::check_source(&loaded, src, d));
        for too_large in memory::check(m, d, memory::machine_memory()) {
            diags.push(
                loaded
                    .diagnostic(
                        too_large.key,
                        too_large.message,
                        Some("lower it; the estimate is in docs/manifest.md, \"Limits\"".into()),
                    )
                    .with_code("manifest::too-large"),
            );
        }
    }
    diags.extend(preflight::check_builtin_data(&loaded));
    diags.extend(preflight::check_data_paths(&loaded));
    // a source run's plugins load only once its model is described
    let source_run = if model.is_some() {
        merge::source_run::<B>(&loaded).unwrap_or_else(|mut d| {
            diags.append(&mut d);
            None
        })
    } else {
        None
    };
    if m.source.is_some() && model.is_none() {
        // Plugins built without the model would only add errors of their
        // own ("no denoiser") that fixing the source removes.
        return Err(ManifestError::from_diagnostics(diags));
    }
    if diags
        .iter()
        .any(|d| d.code.as_deref() == Some("manifest::too-large"))
    {
        // Plugins sized from the same counts would only allocate in vain.
        return Err(ManifestError::from_diagnostics(diags));
    }
    let model_info = model
        .as_ref()
        .map(ModelDescription::to_model_info)
        .unwrap_or_default();

    let condition = match (&m.condition, &model) {
        (Some(c), Some(d)) => {
            let dir = c.path.as_ref().map(|p| loaded.resolve_path(p));
            match crate::condition::resolve(c, d, dir.as_deref()) {
                Ok(p) => Some(p),
                Err(e) => {
                    // plugins that need the condition would only repeat it
                    diags.push(loaded.diagnostic(&e.key, e.message, None));
                    return Err(ManifestError::from_diagnostics(diags));
                }
            }
        }
        _ => None,
    };

    // Plugins are built in a planning session: their parameters are counted,
    // their configs and injection points checked, and nothing else runs.
    let _session = Session::<B>::install(Default::default(), m.run.seed);
    let details = model.as_ref().map(|d| {
        let prediction = m.source.as_ref().map(|s| s.prediction.as_str());
        crate::model::details(d, prediction.unwrap_or("epsilon"))
    });
    Session::<B>::with(|s| {
        s.services.condition_shape = condition.as_ref().map(|c| c.shape);
        s.services.model_details = details;
    })
    .expect("the planning session was just installed");
    let dirs = plugins::search_dirs(Some(&loaded.base_dir()));
    let mut planned = Vec::new();
    for (i, spec) in m.plugins.iter().enumerate() {
        match plan_plugin::<B>(&loaded, i, &dirs, &model_info) {
            Ok(p) => planned.push(p),
            Err(mut d) => diags.append(&mut d),
        }
        let _ = spec;
    }

    if !diags.is_empty() {
        return Err(ManifestError::from_diagnostics(diags));
    }
    let stages = stages(&loaded, &planned, condition.as_ref());
    Ok(Plan {
        model,
        plugins: planned,
        condition,
        stages,
        source_run: source_run.map(Box::new),
        manifest: loaded,
    })
}

fn load_diagnostic(loaded: &LoadedManifest, i: usize, e: &LoadError) -> ManifestDiagnostic {
    let (key, help) = match e {
        LoadError::NotFound { .. } => (
            "library",
            Some(format!(
                "build the plugin (`cargo build --release --workspace` puts workspace plugins next to `dtx`), give a path, or add its folder to {}",
                plugins::PLUGIN_PATH_VAR
            )),
        ),
        LoadError::MissingFile { .. } => (
            "library",
            Some("check the path: relative paths are relative to the manifest's folder".into()),
        ),
        LoadError::Sha256Mismatch { .. } => ("sha256", None),
        _ => ("library", None),
    };
    loaded.diagnostic(&format!("plugin[{i}].{key}"), e.to_string(), help)
}

fn plan_plugin<B: AutodiffBackend>(
    loaded: &LoadedManifest,
    i: usize,
    dirs: &[PathBuf],
    model: &ModelInfo,
) -> Result<PlannedPlugin, Vec<ManifestDiagnostic>> {
    let spec = &loaded.manifest.plugins[i];
    let library = match plugins::registered_in_process(&spec.library) {
        Some(linked) => linked,
        None => {
            let path = plugins::resolve_library(&spec.library, dirs, Some(&loaded.base_dir()))
                .map_err(|e| vec![load_diagnostic(loaded, i, &e)])?;
            plugins::load_library(&path, spec.sha256.as_deref(), vtables::<B>())
                .map_err(|e| vec![load_diagnostic(loaded, i, &e)])?
        }
    };
    let desc = &library.description;
    let mut diags = Vec::new();
    let implemented: Vec<Hook> = desc.hooks.iter().collect();
    let hooks = match &spec.hooks {
        None => implemented.clone(),
        Some(names) => {
            let mut bound = Vec::new();
            for (j, n) in names.iter().enumerate() {
                match Hook::from_name(n) {
                    Some(h) if implemented.contains(&h) => bound.push(h),
                    Some(h) => diags.push(loaded.diagnostic(
                        &format!("plugin[{i}].hooks[{j}]"),
                        format!("plugin `{}` does not implement hook `{h}`", desc.name),
                        Some(format!("it implements: {}", hook_list(&implemented))),
                    )),
                    // Unknown hook names are reported by validation.
                    None => {}
                }
            }
            bound
        }
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    let json = config_json(&spec.config);
    let instance = Instance::<B>::new(&spec.name, library.clone(), &json, model).map_err(|e| {
        let key_path = e.error.key_path.to_string();
        let (key, point_at_key) = if key_path.is_empty() {
            (format!("plugin[{i}].config"), false)
        } else {
            let key = format!("plugin[{i}].config.{key_path}");
            // An unknown key has no value of its own to point at: point at the key.
            let unknown = e.error.message.contains("unknown field");
            (key, unknown)
        };
        let msg = if e.error.kind == ErrorKind::CONFIG || !key_path.is_empty() {
            format!(
                "plugin `{}` rejected its config: {}",
                spec.name, e.error.message
            )
        } else {
            e.to_string()
        };
        let help = (e.error.kind == ErrorKind::CONFIG).then(|| {
            format!(
                "`dtx plugins inspect {}` lists its config keys",
                library.description.name
            )
        });
        let d = if point_at_key {
            loaded.key_diagnostic(&key, msg, help)
        } else {
            loaded.diagnostic(&key, msg, help)
        };
        vec![d]
    })?;
    let parameters = instance
        .parameters()
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let points = if hooks.contains(&Hook::Inject) {
        instance.points().to_vec()
    } else {
        Vec::new()
    };
    let weight_targets = if hooks.contains(&Hook::Weights) {
        instance.weight_targets().to_vec()
    } else {
        Vec::new()
    };
    let recipe = instance.recipe();
    Ok(PlannedPlugin {
        name: spec.name.clone(),
        library,
        hooks,
        points,
        parameters,
        weight_targets,
        recipe,
        config_json: json,
    })
}

fn hook_list(hooks: &[Hook]) -> String {
    if hooks.is_empty() {
        return "no hooks".into();
    }
    hooks
        .iter()
        .map(|h| h.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn with_hook(plugins: &[PlannedPlugin], hook: Hook) -> Vec<&str> {
    plugins
        .iter()
        .filter(|p| p.hooks.contains(&hook))
        .map(|p| p.name.as_str())
        .collect()
}

fn stages(
    loaded: &LoadedManifest,
    plugins: &[PlannedPlugin],
    condition: Option<&crate::condition::ConditionPlan>,
) -> Vec<Stage> {
    let m = &loaded.manifest;
    let mut out = Vec::new();
    if let Some(c) = condition {
        out.push(Stage {
            name: "condition",
            detail: c.describe(),
        });
    }
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let preparing = with_hook(plugins, Hook::Prepare);
    if !preparing.is_empty() {
        out.push(Stage {
            name: "prepare",
            detail: format!("auxiliary training by {}", preparing.join(", ")),
        });
    }
    if let Some(t) = &m.train {
        let simple = match t.loss_weight.as_str() {
            "p2" => format!("P2(k={}, γ={})-weighted L_simple", t.p2_k, t.p2_gamma),
            "min_snr" => format!("min-SNR-{}-weighted L_simple", t.snr_gamma),
            _ => "L_simple".to_string(),
        };
        let mut terms = vec![simple];
        terms.extend(
            with_hook(plugins, Hook::Loss)
                .iter()
                .map(|p| format!("{p}.*")),
        );
        out.push(Stage {
            name: "train",
            detail: format!(
                "{} steps, batch {}, {} lr {}{}, {} schedule over {} timesteps; objective {}{}",
                t.steps,
                t.batch,
                t.optimizer.as_str(),
                t.lr,
                if t.warmup > 0 {
                    format!(" (warmup {} steps)", t.warmup)
                } else {
                    String::new()
                },
                t.schedule.as_str(),
                t.timesteps,
                terms.join(" + "),
                t.validate_every
                    .map(|v| format!("; validation loss every {v} steps"))
                    .unwrap_or_default()
            ),
        });
    }
    if let Some(s) = &m.sample {
        out.push(Stage {
            name: "sample",
            detail: format!(
                "{}, {} steps, eta {}, {} samples in batches of {}; score corrections: {}{}",
                s.sampler.as_str(),
                s.steps,
                s.eta,
                s.count,
                s.batch,
                names(with_hook(plugins, Hook::Score)),
                match (&m.condition, &s.prompt) {
                    (None, _) => String::new(),
                    (Some(_), Some(p)) => format!("; conditioned on the prompt {p:?}"),
                    (Some(_), None) => format!(
                        "; conditioned on {} images, mask rate {}{}",
                        s.condition.as_deref().unwrap_or("target"),
                        s.mask_rate.unwrap_or(crate::condition::DEFAULT_MASK_RATE),
                        if s.mask_per_sample {
                            " (a mask per sample)"
                        } else {
                            ""
                        }
                    ),
                }
            ),
        });
        let filters = with_hook(plugins, Hook::Filter);
        if !filters.is_empty() {
            out.push(Stage {
                name: "filter",
                detail: format!("keep samples accepted by all of: {}", filters.join(", ")),
            });
        }
    }
    if let Some(e) = m.eval.as_ref().filter(|e| !e.metrics.is_empty()) {
        out.push(Stage {
            name: "eval",
            detail: format!(
                "{} with the `{}` extractor",
                e.metrics.join(", "),
                e.extractor
            ),
        });
    }
    out
}
