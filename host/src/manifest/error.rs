//! Manifest errors: one [`ManifestDiagnostic`] per problem, with file, span
//! and key path, rendered by codespan-reporting into plain text.
//!
//! Several diagnostics travel together in one [`ManifestError`], so a user
//! fixes every problem of a manifest in one go. Later stages (plugin
//! resolution) build diagnostics the same way, from spans found with
//! [`super::LoadedManifest::span_of`], and merge them into one error.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::NoColor};

/// One problem in a manifest: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestDiagnostic {
    /// The manifest file, as given to `load`.
    pub file: PathBuf,
    /// The whole manifest text (shared between diagnostics of one file).
    pub source_text: Arc<str>,
    /// Byte range of the offending text; none when the value came from an
    /// override or a default.
    pub span: Option<Range<usize>>,
    /// Key path of the offending value, `train.steps` or `plugin[1].library`;
    /// empty for the whole document.
    pub key_path: String,
    /// What is wrong, one line.
    pub message: String,
    /// How to fix it, shown as `= help: …`.
    pub help: Option<String>,
    /// Extra facts, each shown as `= note: …` (for example which `--set`
    /// override gave the value).
    pub notes: Vec<String>,
    /// Other places worth showing, with a short label (the first entry of a
    /// duplicated plugin name).
    pub related: Vec<(Range<usize>, String)>,
    /// A stable name for the kind of problem, `manifest::unknown-key`.
    pub code: Option<String>,
}

/// Builds a diagnostic pointing at `span` of `text` (the public builder the
/// plugin stage uses; spans come from `LoadedManifest::span_of`).
pub fn diagnostic(
    file: impl Into<PathBuf>,
    text: impl Into<Arc<str>>,
    span: Option<Range<usize>>,
    key_path: impl fmt::Display,
    message: impl Into<String>,
    help: Option<String>,
) -> ManifestDiagnostic {
    ManifestDiagnostic {
        file: file.into(),
        source_text: text.into(),
        span,
        key_path: key_path.to_string(),
        message: message.into(),
        help,
        notes: Vec::new(),
        related: Vec::new(),
        code: None,
    }
}

impl ManifestDiagnostic {
    /// Sets the stable code shown as `error[code]`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets the help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a note line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Adds a secondary label at `span`.
    pub fn with_related(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }

    /// 1-based line and column (in characters) of the span start.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        let span = self.span.as_ref()?;
        Some(line_col(&self.source_text, span.start))
    }

    /// The diagnostic as plain text: `error[code]: message`, then
    /// `┌─ file:line:col`, the source line with `^^^` under the span labelled
    /// with the key path, and the help and notes.
    pub fn render(&self) -> String {
        let name = self.file.display().to_string();
        let file = SimpleFile::new(name.as_str(), &*self.source_text);
        let mut labels = Vec::new();
        if let Some(span) = &self.span {
            let span = first_line(&self.source_text, span);
            let label = if self.key_path.is_empty() {
                "here".to_owned()
            } else {
                self.key_path.clone()
            };
            labels.push(Label::primary((), span).with_message(label));
        }
        for (span, label) in &self.related {
            labels.push(
                Label::secondary((), clamp(span, self.source_text.len())).with_message(label),
            );
        }
        let mut notes = Vec::new();
        if self.span.is_none() {
            let key = if self.key_path.is_empty() {
                String::new()
            } else {
                format!(", key `{}`", self.key_path)
            };
            notes.push(format!("in {name}{key}"));
        }
        notes.extend(self.notes.iter().map(|note| format!("note: {note}")));
        notes.extend(self.help.iter().map(|help| format!("help: {help}")));
        let mut report = Diagnostic::error()
            .with_message(&self.message)
            .with_labels(labels)
            .with_notes(notes);
        if let Some(code) = &self.code {
            report = report.with_code(code);
        }
        let mut out = NoColor::new(Vec::new());
        let config = term::Config::default();
        if term::emit(&mut out, &config, &file, &report).is_err() {
            // Only reachable with a span outside the text; clamp prevents it.
            return format!("error: {} ({name}, {})", self.message, self.key_path);
        }
        String::from_utf8_lossy(&out.into_inner()).into_owned()
    }
}

fn clamp(span: &Range<usize>, len: usize) -> Range<usize> {
    span.start.min(len)..span.end.min(len).max(span.start.min(len))
}

/// `span` within the text, cut at its first line break: toml points at the
/// newline for an unclosed header, and one line reads better than a fence.
fn first_line(text: &str, span: &Range<usize>) -> Range<usize> {
    let span = clamp(span, text.len());
    match text.get(span.clone()).and_then(|s| s.find('\n')) {
        Some(i) => span.start..span.start + i,
        None => span,
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Why a manifest could not be loaded.
///
/// # Resolution
///
/// Print it with [`ManifestError::render`] (or `Display`, which is the same):
/// each diagnostic names the file, line, column and key path and says what to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read manifest `{}`: {io}", path.display())]
    Read {
        /// The path given to `load`.
        path: PathBuf,
        /// What the file system said.
        io: std::io::Error,
    },
    /// One or more problems in the manifest text or its overrides.
    #[error("{}", render_all(diagnostics))]
    Invalid {
        /// Every problem found, in file order (serde's first error at most
        /// once, then all validation problems).
        diagnostics: Vec<ManifestDiagnostic>,
    },
}

impl ManifestError {
    /// An error holding these diagnostics.
    pub fn from_diagnostics(diagnostics: Vec<ManifestDiagnostic>) -> Self {
        ManifestError::Invalid { diagnostics }
    }

    /// The diagnostics (none for a read error).
    pub fn diagnostics(&self) -> &[ManifestDiagnostic] {
        match self {
            ManifestError::Read { .. } => &[],
            ManifestError::Invalid { diagnostics } => diagnostics,
        }
    }

    /// Adds one more diagnostic (a read error stays a read error).
    pub fn push(&mut self, diagnostic: ManifestDiagnostic) {
        if let ManifestError::Invalid { diagnostics } = self {
            diagnostics.push(diagnostic);
        }
    }

    /// The path of the manifest the error is about.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ManifestError::Read { path, .. } => Some(path),
            ManifestError::Invalid { diagnostics } => diagnostics.first().map(|d| d.file.as_path()),
        }
    }

    /// Every diagnostic rendered, followed by a count when there are several.
    pub fn render(&self) -> String {
        match self {
            ManifestError::Read { .. } => format!("error: {self}\n"),
            ManifestError::Invalid { diagnostics } => render_all(diagnostics),
        }
    }
}

impl From<ManifestDiagnostic> for ManifestError {
    fn from(diagnostic: ManifestDiagnostic) -> Self {
        ManifestError::from_diagnostics(vec![diagnostic])
    }
}

fn render_all(diagnostics: &[ManifestDiagnostic]) -> String {
    let mut out: String = diagnostics.iter().map(ManifestDiagnostic::render).collect();
    if diagnostics.len() > 1 {
        let file = diagnostics[0].file.display();
        out.push_str(&format!(
            "error: {} problems in {file}\n",
            diagnostics.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[run]\nname = \"x\"\n\n[train]\nsteps = 0\n";

    #[test]
    fn render_shows_file_line_col_key_and_caret() {
        let span = TEXT.find('0').unwrap()..TEXT.find('0').unwrap() + 1;
        let d = diagnostic(
            "m.toml",
            TEXT,
            Some(span),
            "train.steps",
            "`train.steps` must be a positive integer, got 0",
            Some("train for at least one step".into()),
        )
        .with_code("manifest::not-positive");
        assert_eq!(d.line_col(), Some((5, 9)));
        let text = d.render();
        assert!(
            text.contains("error[manifest::not-positive]: `train.steps` must be"),
            "{text}"
        );
        assert!(text.contains("m.toml:5:9"), "{text}");
        assert!(text.contains("steps = 0"), "{text}");
        assert!(text.contains("^ train.steps"), "{text}");
        assert!(
            text.contains("= help: train for at least one step"),
            "{text}"
        );
    }

    #[test]
    fn render_without_span_names_file_and_key() {
        let d = diagnostic("m.toml", TEXT, None, "train.lr", "bad lr", None)
            .with_note("set by `--set train.lr=-1`");
        let text = d.render();
        assert!(text.contains("in m.toml, key `train.lr`"), "{text}");
        assert!(text.contains("note: set by `--set train.lr=-1`"), "{text}");
    }

    #[test]
    fn error_counts_several_diagnostics() {
        let one = diagnostic("m.toml", TEXT, Some(0..1), "run", "first", None);
        let mut err = ManifestError::from(one.clone());
        err.push(one);
        assert_eq!(err.diagnostics().len(), 2);
        assert!(err.render().ends_with("error: 2 problems in m.toml\n"));
        assert_eq!(err.to_string(), err.render());
    }
}
