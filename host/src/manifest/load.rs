//! Reading a manifest: TOML text → `--set` overrides → [`Manifest`] →
//! validation, with spans kept for every key so errors (ours and the plugin
//! stage's) point at the text.
//!
//! Order of work, and what stops it:
//! 1. TOML syntax; an error stops here.
//! 2. Overrides, applied to the parsed document; malformed ones are all
//!    reported, then loading stops.
//! 3. Checks on the raw document: every float finite and table-typed keys
//!    given as tables (`validate::check_raw_values`), counts positive and
//!    below their bounds (`validate::check_counts`); each bad value is
//!    replaced with a placeholder so the next steps still run.
//! 4. serde into [`Manifest`]; its first error is reported.
//! 5. Every other check (`validate::check`), all reported together.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ManifestDiagnostic, ManifestError, diagnostic};
use super::overrides::{Override, apply_override};
use super::schema::Manifest;
use super::serde_errors::serde_error;
use super::spans::{KeyPath, SpanMap};
use super::validate;

/// A manifest read from a file, with what is needed to point at its text.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// The validated manifest, defaults filled in, overrides applied.
    pub manifest: Manifest,
    /// The manifest file as given (relative paths in the manifest are
    /// relative to its folder).
    pub file: PathBuf,
    /// The text the spans index into.
    pub source_text: String,
    context: Context,
}

impl LoadedManifest {
    /// Byte range in `source_text` of the value at `key_path` (its key when
    /// the value has no span of its own, as for tables made by dotted keys).
    /// `key_path` is written `train.steps`, `plugin[1].config.lambda` or
    /// `plugin.1.config.lambda`. None when the value came from an override or
    /// a default, or the path does not parse.
    pub fn span_of(&self, key_path: &str) -> Option<Range<usize>> {
        let path = KeyPath::parse(key_path).ok()?;
        self.context.spans.value_or_key(&path)
    }

    /// Byte range of the key itself (`lamda` in `lamda = 0.1`): the place to
    /// point at for an unknown key. For array elements, the element.
    pub fn key_span_of(&self, key_path: &str) -> Option<Range<usize>> {
        let path = KeyPath::parse(key_path).ok()?;
        self.context.spans.key_or_value(&path)
    }

    /// Every recorded span, by key path.
    pub fn spans(&self) -> &SpanMap {
        &self.context.spans
    }

    /// The `--set` overrides applied, in order.
    pub fn overrides(&self) -> &[Override] {
        &self.context.overrides
    }

    /// A diagnostic about the value at `key_path`: points at the value, or at
    /// the nearest enclosing key written in the file when the value is a
    /// default, and notes the `--set` that gave it when there was one.
    pub fn diagnostic(
        &self,
        key_path: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) -> ManifestDiagnostic {
        let path = KeyPath::parse(key_path).unwrap_or_default();
        let mut d = self.context.at_value(&path, message);
        d.help = help;
        d
    }

    /// Like [`LoadedManifest::diagnostic`], pointing at the key rather than
    /// its value (for keys a plugin does not know).
    pub fn key_diagnostic(
        &self,
        key_path: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) -> ManifestDiagnostic {
        let path = KeyPath::parse(key_path).unwrap_or_default();
        let mut d = self.context.at_key(&path, message);
        d.help = help;
        d
    }

    /// The manifest's folder (`.` for a bare file name).
    pub fn base_dir(&self) -> PathBuf {
        base_dir(&self.file)
    }

    /// `path` resolved against the manifest's folder (absolute paths kept).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        self.base_dir().join(path)
    }

    /// `run.output_dir` resolved against the manifest's folder, with `.`
    /// and `dir/..` steps folded away (`manifests/../runs` is `runs`).
    pub fn output_dir(&self) -> PathBuf {
        super::paths::lexically_normal(&self.resolve_path(&self.manifest.run.output_dir))
    }

    /// The resolved manifest (defaults and overrides included) as TOML.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(&self.manifest).expect("a Manifest always serialises to TOML")
    }
}

fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads, overrides, deserialises and validates the manifest at `path`.
/// `overrides` are `--set` arguments, `key.path=value`.
pub fn load(path: &Path, overrides: &[String]) -> Result<LoadedManifest, ManifestError> {
    let read = |io| ManifestError::Read {
        path: path.to_path_buf(),
        io,
    };
    let bytes = crate::util::fs::read(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // where the bad byte is, as a text editor counts it
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: the byte at line {line}, column {column} (byte offset {}) starts no UTF-8 character", good.len()),
        ))
    })?;
    load_text(text, path.to_path_buf(), overrides)
}

/// Like [`load`], for text already in memory; `file_name` is shown in errors
/// and its folder resolves relative paths.
pub fn load_str(
    text: &str,
    file_name: &str,
    overrides: &[String],
) -> Result<LoadedManifest, ManifestError> {
    load_text(text.to_owned(), PathBuf::from(file_name), overrides)
}

fn load_text(
    text: String,
    file: PathBuf,
    overrides: &[String],
) -> Result<LoadedManifest, ManifestError> {
    let shared: Arc<str> = Arc::from(text.as_str());
    let mut doc: toml::Table = match toml::from_str(&text) {
        Ok(doc) => doc,
        Err(err) => return Err(syntax_error(&file, shared, &err).into()),
    };
    // Cannot fail on text toml just accepted; without spans errors still name
    // the key path.
    let spans = SpanMap::parse(&text).unwrap_or_default();
    let mut context = Context {
        file: file.clone(),
        text: shared,
        spans,
        overrides: Vec::new(),
    };

    let mut problems = Vec::new();
    for raw in overrides {
        match apply_override(&mut doc, raw) {
            Ok(path) => {
                context.spans.forget(&path);
                context.overrides.push(Override {
                    path,
                    text: raw.clone(),
                });
            }
            Err(reason) => {
                // A command-line problem: there is no span in the file.
                let key = raw
                    .split_once('=')
                    .map_or(raw.as_str(), |(key, _)| key.trim());
                let message = format!("bad override `--set {raw}`: {reason}");
                let d = diagnostic(file.clone(), context.text.clone(), None, key, message, None)
                    .with_code("manifest::bad-override")
                    .with_help(OVERRIDE_HELP);
                problems.push(d);
            }
        }
    }
    if !problems.is_empty() {
        return Err(ManifestError::from_diagnostics(problems));
    }

    let mut reported: HashSet<KeyPath> = HashSet::new();
    problems.extend(validate::check_raw_values(
        &mut doc,
        &context,
        &mut reported,
    ));
    problems.extend(validate::check_counts(&mut doc, &context, &mut reported));
    let root_tables: HashSet<String> = doc
        .iter()
        .filter(|(_, value)| value.is_table() || value.is_array())
        .map(|(key, _)| key.clone())
        .collect();
    match serde_path_to_error::deserialize::<_, Manifest>(toml::Value::Table(doc)) {
        Ok(manifest) => {
            problems.extend(validate::check(&manifest, &context, &reported));
            if problems.is_empty() {
                return Ok(LoadedManifest {
                    manifest,
                    file,
                    source_text: text,
                    context,
                });
            }
        }
        Err(err) => problems.push(serde_error(&context, &err, &root_tables)),
    }
    problems.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
    Err(ManifestError::from_diagnostics(problems))
}

const OVERRIDE_HELP: &str = "overrides are written `--set key.path=value`, \
     e.g. `--set train.steps=10` or `--set plugin[0].config.lambda=0.5`";

/// What diagnostics need besides the message: file, text, spans, overrides.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) file: PathBuf,
    pub(crate) text: Arc<str>,
    pub(crate) spans: SpanMap,
    pub(crate) overrides: Vec<Override>,
}

impl Context {
    /// A diagnostic pointing at the value at `path`.
    pub(crate) fn at_value(
        &self,
        path: &KeyPath,
        message: impl Into<String>,
    ) -> ManifestDiagnostic {
        self.locate(path, message, SpanMap::value_or_key)
    }

    /// A diagnostic pointing at the key at `path`.
    pub(crate) fn at_key(&self, path: &KeyPath, message: impl Into<String>) -> ManifestDiagnostic {
        self.locate(path, message, SpanMap::key_or_value)
    }

    fn locate(
        &self,
        path: &KeyPath,
        message: impl Into<String>,
        pick: fn(&SpanMap, &KeyPath) -> Option<Range<usize>>,
    ) -> ManifestDiagnostic {
        // A value set by `--set`, or a table that only exists because one
        // set something inside it, has no place in the file to point at.
        let overrides = || self.overrides.iter().rev();
        let mut set_by = overrides().find(|o| path.starts_with(&o.path));
        let mut span = None;
        if set_by.is_none() {
            span = self.nearest_span(path, pick);
            if span.is_none() {
                set_by = overrides().find(|o| !path.is_root() && o.path.starts_with(path));
                if set_by.is_none() {
                    span = Some(0..0);
                }
            }
        }
        let mut d = diagnostic(
            self.file.clone(),
            self.text.clone(),
            span,
            path,
            message,
            None,
        );
        if let Some(o) = set_by {
            d = d.with_note(format!("the value comes from `--set {}`", o.text));
        }
        d
    }

    /// The span of `path`, or else the key of the closest enclosing entry
    /// written in the file (a default's `[section]` header); none when no
    /// enclosing entry was written. Cut to its first line: a table's span
    /// covers its whole body.
    fn nearest_span(
        &self,
        path: &KeyPath,
        pick: fn(&SpanMap, &KeyPath) -> Option<Range<usize>>,
    ) -> Option<Range<usize>> {
        let mut found = pick(&self.spans, path);
        let mut at = path.parent();
        while found.is_none() {
            match at {
                Some(p) if !p.is_root() => {
                    found = self.spans.key_or_value(&p);
                    at = p.parent();
                }
                _ => return None,
            }
        }
        let span = found?;
        let end = self.text[span.clone()]
            .find('\n')
            .map_or(span.end, |i| span.start + i);
        Some(span.start..end)
    }
}

fn syntax_error(file: &Path, text: Arc<str>, err: &toml::de::Error) -> ManifestDiagnostic {
    let mut lines = err.message().lines();
    let first = lines.next().unwrap_or("invalid TOML");
    let mut d = diagnostic(
        file.to_path_buf(),
        text,
        err.span(),
        "",
        format!("invalid TOML: {first}"),
        None,
    )
    .with_code("manifest::syntax");
    for line in lines {
        d = d.with_note(line);
    }
    if first == "invalid string" {
        d = d.with_help("text values are quoted: `name = \"my-run\"`");
    }
    d
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::manifest::schema::{Backend, Optimizer, Trainable};

    const FULL: &str = r#"
[run]
name = "gmm-transfer"
seed = 7
backend = "cpu"
output_dir = "out"

[source]
kind = "mlp"
prediction = "epsilon"

[source.config]
hidden = 64
blocks = 2
[target]
dataset = "builtin:gmm"
limit = 10
split_seed = 3
holdout = 2
labels = true

[train]
steps = 200
batch = 8
optimizer = "adam"
lr = 2e-3
weight_decay = 0.01
grad_clip = 1.0
trainable = ["blocks.*.norm*"]
ema = { decay = 0.99 }
checkpoint_every = 50
schedule = "cosine"
timesteps = 100

[[plugin]]
name = "example"
library = "dtx_plugin_example"
hooks = ["loss"]

[plugin.config]
lambda = 0.5

[[plugin]]
name = "probe"
library = "./plugins/libdtx_test_plugin.so"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
config = { points = ["mid.res.0"] }

[sample]
sampler = "ddpm"
steps = 100
count = 64
eta = 1.0
batch = 32
guidance = 1.5
label = 2

[eval]
metrics = ["fd", "kid"]
reference = "held_out"
extractor = "inception"
inception_weights = "weights/pt_inception-2015-12-05.pth"
"#;

    fn ok(text: &str, overrides: &[&str]) -> LoadedManifest {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        match load_str(text, "dir/m.toml", &overrides) {
            Ok(loaded) => loaded,
            Err(err) => panic!("{}", err.render()),
        }
    }

    fn err(text: &str, overrides: &[&str]) -> ManifestError {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        load_str(text, "dir/m.toml", &overrides).expect_err("manifest should be rejected")
    }

    /// A byte that starts no UTF-8 character is located (found by fuzzing:
    /// the message named neither line nor offset).
    #[test]
    fn a_manifest_that_is_not_utf8_names_the_place() {
        let file = std::env::temp_dir().join(format!("dtx-not-utf8-{}.toml", std::process::id()));
        std::fs::write(&file, b"[run]\nname = \"x\xff\"\n").unwrap();
        let e = load(&file, &[]).expect_err("not UTF-8").to_string();
        assert!(
            e.contains("not UTF-8 text: the byte at line 2, column 10 (byte offset 15)"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn full_manifest_parses() {
        let m = ok(FULL, &[]).manifest;
        assert_eq!(m.run.seed, 7);
        assert_eq!(m.run.backend, Backend::Cpu);
        let source = m.source.as_ref().unwrap();
        assert_eq!(source.config["hidden"].as_integer(), Some(64));
        assert_eq!(m.target.as_ref().unwrap().builtin(), Some("gmm"));
        let train = m.train.as_ref().unwrap();
        assert_eq!(train.optimizer, Optimizer::Adam);
        assert_eq!(
            train.trainable,
            Trainable::Globs(vec!["blocks.*.norm*".into()])
        );
        assert_eq!(train.ema.unwrap().decay, 0.99);
        assert_eq!(m.plugins.len(), 2);
        assert_eq!(
            m.plugins[0].hooks.as_deref(),
            Some(&["loss".to_owned()][..])
        );
        assert_eq!(m.plugins[1].config["points"].as_array().unwrap().len(), 1);
        assert_eq!(m.sample.as_ref().unwrap().label, Some(2));
        assert_eq!(m.eval.as_ref().unwrap().metrics, ["fd", "kid"]);
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let text = "[run]\nname = \"r\"\n[source]\nkind = \"mlp\"\n[target]\ndataset = \"builtin:gmm\"\n[train]\nsteps = 5\n[sample]\n[eval]\n";
        let loaded = ok(text, &[]);
        let m = &loaded.manifest;
        assert_eq!((m.run.seed, m.run.backend), (0, Backend::Cpu));
        assert_eq!(loaded.output_dir(), Path::new("dir/runs"));
        let train = m.train.as_ref().unwrap();
        assert_eq!((train.batch, train.lr, train.weight_decay), (16, 1e-4, 0.0));
        assert_eq!(
            (train.timesteps, train.trainable.clone()),
            (1000, Trainable::None)
        );
        assert!(train.ema.is_none() && train.grad_clip.is_none());
        let sample = m.sample.as_ref().unwrap();
        assert_eq!((sample.steps, sample.count, sample.batch), (50, 16, 16));
        assert_eq!((sample.eta, sample.guidance), (0.0, 0.0));
        assert_eq!(m.eval.as_ref().unwrap().extractor, "dtx");
        assert!(m.plugins.is_empty());
    }

    #[test]
    fn resolved_manifest_round_trips() {
        let loaded = ok(FULL, &[]);
        let again = ok(&loaded.to_toml_string(), &[]);
        assert_eq!(loaded.manifest, again.manifest);
    }

    #[test]
    fn overrides_set_values_including_array_entries() {
        let loaded = ok(
            FULL,
            &[
                "train.steps=10",
                "run.name=\"renamed\"",
                "run.backend=cuda",
                "plugin.0.config.lambda=0.25",
                "plugin[1].config.points=[\"up.0.res.1\"]",
                "sample.eta = 0.5",
            ],
        );
        let m = &loaded.manifest;
        assert_eq!(m.train.as_ref().unwrap().steps, 10);
        assert_eq!(m.run.name, "renamed");
        assert_eq!(m.run.backend, Backend::Cuda);
        assert_eq!(m.plugins[0].config["lambda"].as_float(), Some(0.25));
        assert_eq!(
            m.plugins[1].config["points"][0].as_str(),
            Some("up.0.res.1")
        );
        assert_eq!(m.sample.as_ref().unwrap().eta, 0.5);
        assert_eq!(loaded.overrides().len(), 6);
        // Overridden values have no span; their neighbours keep theirs.
        assert_eq!(loaded.span_of("train.steps"), None);
        assert_eq!(loaded.span_of("plugin[0].config.lambda"), None);
        assert!(loaded.span_of("train.batch").is_some());
    }

    #[test]
    fn override_can_create_a_section() {
        let loaded = ok("[run]\nname = \"r\"\n", &["source.kind=mlp"]);
        assert!(loaded.manifest.source.is_some());
        // A section made by an override is blamed on the override.
        let e = err("[run]\nname = \"r\"\n", &["sample.steps=5"]);
        let d = &e.diagnostics()[0];
        assert_eq!(
            d.message,
            "`[sample]` needs a `[source]` section: there is no model to sample"
        );
        assert_eq!(d.span, None);
        assert_eq!(d.notes, ["the value comes from `--set sample.steps=5`"]);
    }

    #[test]
    fn malformed_overrides_are_all_reported() {
        let e = err(
            FULL,
            &["train.steps", "=3", "plugin[5].name=x", "train.steps.x=1"],
        );
        let text = e.render();
        assert_eq!(e.diagnostics().len(), 4, "{text}");
        assert!(
            text.contains("bad override `--set train.steps`: no `=`"),
            "{text}"
        );
        assert!(text.contains("the key before `=` is empty"), "{text}");
        assert!(
            text.contains("index 5 is out of range: `plugin` has 2 entries"),
            "{text}"
        );
        assert!(
            text.contains("`train.steps` is an integer, not a table"),
            "{text}"
        );
    }

    #[test]
    fn override_to_unknown_key_is_an_unknown_key() {
        let e = err(FULL, &["train.stepz=3"]);
        let text = e.render();
        assert!(text.contains("unknown key `stepz` in `[train]`"), "{text}");
        assert!(text.contains("did you mean `steps`?"), "{text}");
        assert!(
            text.contains("the value comes from `--set train.stepz=3`"),
            "{text}"
        );
    }

    #[test]
    fn span_lookup_points_into_the_text() {
        let loaded = ok(FULL, &[]);
        let text = &loaded.source_text;
        let at = |path: &str| &text[loaded.span_of(path).unwrap()];
        assert_eq!(at("train.steps"), "200");
        assert_eq!(
            at("plugin[1].library"),
            "\"./plugins/libdtx_test_plugin.so\""
        );
        assert_eq!(at("plugin.0.config.lambda"), "0.5");
        assert_eq!(at("plugin[0].hooks[0]"), "\"loss\"");
        assert_eq!(at("plugin[1].config.points[0]"), "\"mid.res.0\"");
        assert_eq!(
            &text[loaded.key_span_of("plugin[0].config.lambda").unwrap()],
            "lambda"
        );
        assert_eq!(loaded.span_of("train.timesteps_missing"), None);
        assert_eq!(
            loaded.span_of("sample.label"),
            Some(text.find("label = 2").unwrap() + 8..text.find("label = 2").unwrap() + 9)
        );
    }

    #[test]
    fn plugin_stage_diagnostics_use_the_same_rendering() {
        let loaded = ok(FULL, &[]);
        let d = loaded
            .key_diagnostic(
                "plugin[0].config.lambda",
                "plugin `example` has no config key `lambda`",
                Some("did you mean `lamda`?".into()),
            )
            .with_code("plugin::unknown-config-key");
        let text = d.render();
        assert!(text.contains("dir/m.toml:41:1"), "{text}");
        assert!(text.contains("^^^^^^ plugin[0].config.lambda"), "{text}");
        let err = ManifestError::from(d);
        assert_eq!(err.diagnostics().len(), 1);
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = load(Path::new("/no/such/manifest.toml"), &[]).unwrap_err();
        let text = e.render();
        assert!(
            text.contains("cannot read manifest `/no/such/manifest.toml`"),
            "{text}"
        );
    }

    #[test]
    fn error_rendering_has_line_col_key_and_caret() {
        let text = "[run]\nname = \"r\"\n\n[train]\nsteps = \"ten\"\n";
        let rendered = err(text, &[]).render();
        assert!(rendered.contains("dir/m.toml:5:9"), "{rendered}");
        assert!(rendered.contains("steps = \"ten\""), "{rendered}");
        assert!(rendered.contains("^^^^^ train.steps"), "{rendered}");
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let text = "[run]\nname = \"r\"\n[source]\nkind = \"mlp\"\n[target]\ndataset = \"d\"\n[train]\nstpes = 10\n";
        let rendered = err(text, &[]).render();
        assert!(
            rendered.contains("unknown key `stpes` in `[train]`"),
            "{rendered}"
        );
        assert!(rendered.contains("^^^^^ train.stpes"), "{rendered}");
        assert!(
            rendered.contains("help: did you mean `steps`?"),
            "{rendered}"
        );
        let rendered = err("[rnu]\nname = \"r\"\n", &[]).render();
        assert!(rendered.contains("unknown section `[rnu]`"), "{rendered}");
        assert!(rendered.contains("did you mean `[run]`?"), "{rendered}");
    }

    #[test]
    fn unknown_value_suggests_the_nearest() {
        let rendered = err("[run]\nname = \"r\"\nbackend = \"cdua\"\n", &[]).render();
        assert!(
            rendered.contains("`run.backend` cannot be `cdua`"),
            "{rendered}"
        );
        assert!(rendered.contains("did you mean `cuda`?"), "{rendered}");
    }

    #[test]
    fn double_brackets_on_a_section_are_explained() {
        let rendered = err("[[run]]\nname = \"r\"\n", &[]).render();
        assert!(
            rendered.contains("`run` must be a table, found an array"),
            "{rendered}"
        );
        assert!(
            rendered.contains("write `[run]` with single brackets"),
            "{rendered}"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_text() {
        let e = err("[run]\nname = r\n", &[]);
        let d = &e.diagnostics()[0];
        assert_eq!(d.line_col(), Some((2, 8)));
        assert!(d.render().contains("invalid TOML: invalid string"));
    }

    #[test]
    fn missing_run_section_is_reported() {
        let e = err("[train]\nsteps = 1\n", &[]);
        assert!(
            e.render().contains("the manifest has no `[run]` section"),
            "{}",
            e.render()
        );
    }
}
