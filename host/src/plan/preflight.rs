//! What `dtx plan` checks so that a run does not fail as it loads its
//! inputs: the source network builds, its checkpoint's header fits the
//! config (or, for a `dtx` source, its run's model), and built-in data
//! sets accept their configs. Headers only, except a `.pt` archive.

use crate::manifest::{LoadedManifest, ManifestDiagnostic};
use crate::model::Denoiser;
use crate::model::{self, ModelDescription};

/// What would stop the run as soon as it loads its source: a config the
/// network cannot be built from, and (for pretrained weights) a checkpoint
/// whose header does not fit the config. Headers only; no tensor data.
pub(super) fn check_source(
    loaded: &LoadedManifest,
    src: &crate::manifest::Source,
    d: &ModelDescription,
) -> Vec<ManifestDiagnostic> {
    let key = if src.path.is_some() {
        "source.path"
    } else {
        "source.config"
    };
    let net = match model::Net::from_description(d) {
        Ok(net) => net,
        Err(e) => {
            return vec![loaded.diagnostic(
                key,
                format!("cannot build the source model: {e}"),
                None,
            )];
        }
    };
    let pretrained = src.init != crate::manifest::Init::Random;
    let checked = match (&src.kind, &src.path) {
        (crate::manifest::SourceKind::Diffusers | crate::manifest::SourceKind::Adm, Some(p))
            if pretrained =>
        {
            net.check_weights(&loaded.resolve_path(p))
        }
        (crate::manifest::SourceKind::Dtx, Some(p)) if pretrained => {
            check_dtx_checkpoint(&net, &model::dtx_checkpoint(&loaded.resolve_path(p)))
        }
        _ => Ok(()),
    };
    if let Err(e) = checked {
        return vec![loaded.diagnostic(
            "source.path",
            e.to_string(),
            Some("`dtx model inspect PATH` lists the checkpoint's keys against the config".into()),
        )];
    }
    Vec::new()
}

/// A dtx run's checkpoint as a source: its base-model tensors
/// (`param/<key>`, plugin parameters left out) against the network, from
/// the header alone, as `train::checkpoint::load_base` will check them.
fn check_dtx_checkpoint(net: &model::Net, ckpt: &std::path::Path) -> Result<(), model::NetError> {
    let header =
        model::read_safetensors_header(ckpt).map_err(|e| model::NetError::Read(e.to_string()))?;
    // What `load_base` registers: a base parameter's EMA value when the
    // checkpoint keeps one (`ema/<key>`), else its value (`param/<key>`).
    let mut found = std::collections::BTreeMap::new();
    for t in &header {
        if let Some(key) = t.name.strip_prefix("param/")
            && !key.starts_with("plugin.")
        {
            found
                .entry(key.to_owned())
                .or_insert_with(|| (t.shape.clone(), t.dtype.clone()));
        }
    }
    for t in &header {
        if let Some(key) = t.name.strip_prefix("ema/")
            && found.contains_key(key)
        {
            found.insert(key.to_owned(), (t.shape.clone(), t.dtype.clone()));
        }
    }
    let found = found.into_iter().collect();
    let problems = model::weights::header_problems(&net.parameters(), found);
    if problems.is_empty() {
        return Ok(());
    }
    Err(model::NetError::CheckpointDoesNotFit {
        file: ckpt.to_path_buf(),
        problems: model::weights::problem_list(&problems),
    })
}

/// Built-in data sets' configs (`[target.config]`, `[source.data.config]`):
/// checked by building one example, so a misspelled key stops the plan.
pub(super) fn check_builtin_data(loaded: &LoadedManifest) -> Vec<ManifestDiagnostic> {
    let m = &loaded.manifest;
    let mut out = Vec::new();
    let mut check = |name: &str, config: &toml::Table, at: &str| {
        if let Err(e) = crate::data::builtin(name, config, m.run.seed, 1) {
            let key = match &e {
                crate::data::DataError::UnknownKey { key, .. }
                | crate::data::DataError::BadValue { key, .. } => format!("{at}.{key}"),
                crate::data::DataError::UnknownDataset { .. } => at.replace(".config", ".dataset"),
                _ => at.to_owned(),
            };
            let section = at.trim_end_matches(".config");
            out.push(loaded.diagnostic(&key, format!("[{section}]: {e}"), None));
        }
    };
    if let Some(t) = &m.target
        && let Some(name) = t.builtin()
    {
        check(name, &t.config, "target.config");
    }
    if let Some(sd) = m.source.as_ref().and_then(|s| s.data.as_ref())
        && let Some(name) = sd.builtin()
    {
        check(name, &sd.config, "source.data.config");
    }
    out
}

/// `run.output_dir` must be a folder (or not exist yet). The folders and
/// files a run's data comes from (`target.dataset`,
/// `target.masks`, `source.data.dataset`, an `eval.reference` folder, a
/// `sample.condition` image or folder): each must exist and be of its kind,
/// so that a mistyped path stops the plan rather than the run. What is in
/// them (decodable images, `labels.csv` rows) is read when the run loads
/// them (docs/manifest.md).
pub(super) fn check_data_paths(loaded: &LoadedManifest) -> Vec<ManifestDiagnostic> {
    let m = &loaded.manifest;
    let mut wanted: Vec<(&str, std::path::PathBuf, bool)> = Vec::new();
    if let Some(t) = &m.target {
        if t.builtin().is_none() {
            wanted.push(("target.dataset", t.dataset.clone().into(), true));
        }
        if let Some(masks) = &t.masks {
            wanted.push(("target.masks", masks.into(), true));
        }
    }
    if let Some(sd) = m.source.as_ref().and_then(|s| s.data.as_ref())
        && sd.builtin().is_none()
    {
        wanted.push(("source.data.dataset", sd.dataset.clone().into(), true));
    }
    if let Some(crate::manifest::Reference::Folder(f)) =
        m.eval.as_ref().and_then(|e| e.reference.as_ref())
    {
        wanted.push(("eval.reference", f.clone(), true));
    }
    if let Some(c) = m.sample.as_ref().and_then(|s| s.condition.as_deref())
        && !matches!(c, "target" | "held_out")
    {
        wanted.push(("sample.condition", c.into(), false));
    }
    let mut out = Vec::new();
    let output = loaded.output_dir();
    let output_problem = if output.as_os_str().as_encoded_bytes().contains(&0) {
        Some("contains a NUL byte, which no file name may hold".to_owned())
    } else {
        match std::fs::metadata(&output) {
            Ok(meta) if !meta.is_dir() => Some(format!(
                "`{}` exists and is not a folder, so runs cannot be written under it",
                output.display()
            )),
            _ => None,
        }
    };
    if let Some(p) = output_problem {
        out.push(loaded.diagnostic("run.output_dir", p, None));
    }
    for (key, path, folder) in wanted {
        let full = loaded.resolve_path(&path);
        let problem = match std::fs::metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "`{}`: no such {}",
                full.display(),
                if folder { "folder" } else { "file or folder" }
            )),
            Err(e) => Some(format!("`{}`: cannot read: {e}", full.display())),
            Ok(meta) if folder && !meta.is_dir() => {
                Some(format!("`{}` is not a folder of images", full.display()))
            }
            Ok(meta) if !meta.is_dir() && !meta.is_file() => Some(format!(
                "`{}`: {}, not a regular file",
                full.display(),
                crate::util::fs::special_kind(&meta.file_type())
            )),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            out.push(loaded.diagnostic(key, p, None));
        }
    }
    out
}
