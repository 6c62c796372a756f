//! What can go wrong while describing a model: every variant carries the file
//! or `[source.config]` key it is about, and renders one clear sentence.

use std::fmt;
use std::path::PathBuf;

/// Where a config value comes from: a model's own config file, or the
/// manifest's `[source.config]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file shipped with the model (a diffusers `config.json`).
    File(PathBuf),
    /// The manifest's `[source.config]` table.
    SourceConfig,
}

impl ModelError {
    /// The config key the error is about, when it is about one.
    pub fn location(&self) -> Option<&KeyLocation> {
        match self {
            ModelError::Unsupported { at, .. }
            | ModelError::Invalid { at, .. }
            | ModelError::MissingKey { at, .. }
            | ModelError::WrongType { at, .. }
            | ModelError::UnknownKey { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// A key inside an [`Origin`]: renders as `path/config.json: down_block_types[2]`
/// or `[source.config].channel_mult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLocation {
    /// The file or table.
    pub origin: Origin,
    /// The key, with an `[index]` suffix for an element of an array.
    pub key: String,
}

impl KeyLocation {
    /// The location of element `index` of this (array) key.
    pub fn index(&self, index: usize) -> KeyLocation {
        KeyLocation {
            origin: self.origin.clone(),
            key: format!("{}[{index}]", self.key),
        }
    }
}

impl fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File(path) => write!(f, "{}: {}", path.display(), self.key),
            Origin::SourceConfig => write!(f, "[source.config].{}", self.key),
        }
    }
}

/// An error describing a model from its config and checkpoint header.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or folder the model needs is not there.
    #[error("{}: no such file or folder; expected {expected}", path.display())]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What should be there.
        expected: String,
    },
    /// The path exists but is the wrong kind of thing (a file for a folder,
    /// an unknown extension).
    #[error("{}: {reason}", path.display())]
    BadPath {
        /// The path given.
        path: PathBuf,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// Reading a file failed.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A config file is not valid JSON (or not a JSON object).
    #[error("{}: not valid JSON: {message}", file.display())]
    BadJson {
        /// The file.
        file: PathBuf,
        /// serde_json's message (with line and column).
        message: String,
    },
    /// A config value dtx does not implement.
    #[error("{at}: unsupported value {value}; {supported}")]
    Unsupported {
        /// The key.
        at: KeyLocation,
        /// The value as written.
        value: String,
        /// What is supported, as a sentence fragment.
        supported: String,
    },
    /// A config value that is inconsistent or out of range.
    #[error("{at}: {reason}")]
    Invalid {
        /// The key.
        at: KeyLocation,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// A required key is absent.
    #[error("{at}: missing required key{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingKey {
        /// The key.
        at: KeyLocation,
        /// What to write, when there is something to say.
        hint: Option<String>,
    },
    /// A value of the wrong type.
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        at: KeyLocation,
        /// The type wanted.
        expected: String,
        /// What was written (its type and value).
        found: String,
    },
    /// A `[source.config]` key that the model kind does not read.
    #[error(
        "{at}: unknown key{}{}{}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default(),
        if valid.is_empty() { String::new() } else { format!("; valid keys: {}", valid.join(", ")) }
    )]
    UnknownKey {
        /// The key.
        at: KeyLocation,
        /// The nearest valid key, if one is close.
        suggestion: Option<String>,
        /// Where the setting belongs instead, for well-known keys of other
        /// sections (guided-diffusion's diffusion flags).
        hint: Option<String>,
        /// Every key the kind reads.
        valid: Vec<String>,
    },
    /// A safetensors header that cannot be read.
    #[error("{}: cannot read the safetensors header: {reason}", file.display())]
    BadHeader {
        /// The checkpoint file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `source.path` is needed for this kind but not given.
    #[error("a `{kind}` source needs `path` ({expected})")]
    MissingPath {
        /// The model kind.
        kind: String,
        /// What the path should name.
        expected: String,
    },
    /// A model kind this module cannot describe.
    #[error("cannot describe a `{kind}` model: {reason}")]
    UnsupportedKind {
        /// The kind given.
        kind: String,
        /// Why, and what is supported.
        reason: String,
    },
    /// A checkpoint whose tensors do not fit the model's config; every
    /// missing, unexpected, mis-shaped and unreadable key is listed.
    ///
    /// ## Resolution
    /// The config (`config.json` beside the weights) must be the one the
    /// weights were saved with: a missing key or a shape mismatch usually
    /// means a config of another model size, an unexpected key a checkpoint
    /// of another architecture.
    #[error(
        "{}: the weights do not fit the config {}",
        file.display(),
        super::weights::problem_list(problems)
    )]
    Weights {
        /// The weights file.
        file: PathBuf,
        /// Every problem, in key order.
        problems: Vec<super::weights::WeightProblem>,
    },
    /// A tokenizer file that cannot be loaded, or text it cannot encode.
    #[error("{}: {reason}", file.display())]
    Tokenizer {
        /// The tokenizer file (`tokenizer.json`).
        file: PathBuf,
        /// What went wrong, with the tokenizer's own message.
        reason: String,
    },
    /// An input tensor the model cannot take (a wrong channel count).
    #[error("{what}: {reason}")]
    BadInput {
        /// The input and the call it was given to.
        what: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}
