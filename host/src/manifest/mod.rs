//! Manifests: the TOML file that describes one run (source model, target
//! data, training, plugins, sampling, evaluation), read into a validated
//! [`Manifest`] with the span of every key kept for error messages.
//!
//! [`load`] reads a file, applies `--set key.path=value` overrides, and either
//! returns a [`LoadedManifest`] or a [`ManifestError`] holding every problem
//! found, each with file, line, column and key path. Later stages report
//! their own problems in the same form: [`LoadedManifest::span_of`] finds the
//! text of `plugin[1].config.lambda`, [`LoadedManifest::diagnostic`] or
//! [`diagnostic`] build the message, [`ManifestError::from_diagnostics`]
//! gathers them. The user guide is `docs/manifest.md`.

mod convert;
mod error;
mod load;
mod overrides;
mod paths;
pub(crate) mod resume;
mod schema;
mod serde_errors;
mod spans;
mod validate;

pub use error::{ManifestDiagnostic, ManifestError, diagnostic, line_col};
pub use load::{LoadedManifest, load, load_str};
pub(crate) use overrides::apply_override;
pub use overrides::{Override, OverrideError};
pub use schema::{
    Backend, Condition, EXTRACTORS, Ema, EncoderKind, Eval, HOOK_NAMES, Init, LossWeight, METRICS,
    Manifest, MaskSource, Optimizer, PluginSpec, Prediction, Reference, Run, SECTION_KEYS, Sample,
    Sampler, Schedule, Source, SourceData, SourceKind, Target, TokenKind, Train, Trainable,
    UnknownVariant,
};
pub use spans::{EntrySpans, KeyPath, KeyPathError, Segment, SpanMap};
pub use validate::{MAX_BATCH, MAX_CLASSES, MAX_EXAMPLES, MAX_TIMESTEPS};

#[cfg(test)]
mod tests {
    //! The manifests under `tests/manifests/`: every `ok/` one loads, every
    //! `broken/` one fails here unless its mistake is one only the plugin
    //! stage can see.
    use std::path::{Path, PathBuf};

    use super::load;

    /// Broken manifests that are schema-valid: plugin resolution rejects them.
    const PLUGIN_STAGE: &[&str] = &[
        "unknown-plugin.toml",
        "library-not-found.toml",
        "plugin-config-rejected.toml",
        "plugin-config-unknown-key.toml",
        "hook-not-implemented.toml",
        "bad-injection-point.toml",
        "sha256-mismatch.toml",
        "cuda-not-built.toml",
        "condition-point-not-in-model.toml",
        // checked when the plan is resolved against the model and the data
        "builtin-config-typo.toml",
        "source-weights-missing.toml",
        "source-weights-do-not-fit.toml",
        "memory-estimate.toml",
        "attention-head-dim-zero.toml",
        "source-config-bad-value.toml",
        "source-weights-pt-do-not-fit.toml",
        "target-folder-missing.toml",
        "output-dir-is-a-file.toml",
    ];

    fn manifests(kind: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/manifests")
            .join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no manifests in {}", dir.display());
        files
    }

    #[test]
    fn ok_manifests_load() {
        for file in manifests("ok") {
            if let Err(err) = load(&file, &[]) {
                panic!("{} should load:\n{}", file.display(), err.render());
            }
        }
    }

    #[test]
    fn broken_manifests_fail_with_one_located_problem() {
        let files = manifests("broken");
        assert!(files.len() >= 18 + PLUGIN_STAGE.len());
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap();
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("# "),
                "{name} should open with a comment saying its mistake"
            );
            let result = load(&file, &[]);
            if PLUGIN_STAGE.contains(&name) {
                if let Err(err) = result {
                    panic!("{name} should pass the manifest stage:\n{}", err.render());
                }
                continue;
            }
            let err = match result {
                Ok(_) => panic!("{name} should be rejected"),
                Err(err) => err,
            };
            let diagnostics = err.diagnostics();
            assert_eq!(
                diagnostics.len(),
                1,
                "{name} shows one mistake:\n{}",
                err.render()
            );
            assert!(
                diagnostics[0].line_col().is_some(),
                "{name}: no location\n{}",
                err.render()
            );
        }
    }
}
