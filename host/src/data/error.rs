//! What can go wrong while building, loading or batching a dataset: every
//! variant names the dataset, file, folder or config key it is about, and
//! renders one sentence that says what to do.

use std::path::PathBuf;

/// An error from `data/`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `builtin:NAME` names no built-in set.
    ///
    /// Fix: use one of the listed names (`dtx list` shows them).
    #[error(
        "no built-in dataset `{name}`{}; built-in datasets: {}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        valid.join(", ")
    )]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The nearest built-in name, if one is close.
        suggestion: Option<String>,
        /// Every built-in name.
        valid: Vec<String>,
    },
    /// A config key the built-in set does not read.
    ///
    /// Fix: remove it, or correct its spelling (see docs/data.md).
    #[error(
        "builtin:{dataset}: unknown config key `{key}`{}; valid keys: {}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        valid.join(", ")
    )]
    UnknownKey {
        /// The built-in set.
        dataset: String,
        /// The key path, e.g. `components[2].stdev`.
        key: String,
        /// The nearest valid key, if one is close.
        suggestion: Option<String>,
        /// Every key valid at that place.
        valid: Vec<String>,
    },
    /// A config value of the wrong type or out of range.
    ///
    /// Fix: as the message says; docs/data.md lists every key's type and range.
    #[error("builtin:{dataset}: `{key}`: {reason}")]
    BadValue {
        /// The built-in set.
        dataset: String,
        /// The key path.
        key: String,
        /// What is wrong, naming the value, and what is expected.
        reason: String,
    },
    /// A few-shot `limit` larger than the dataset.
    ///
    /// Fix: lower `limit`, or add samples.
    #[error("{source_name}: has {have} samples, fewer than the {want} asked for by `limit`")]
    TooFewSamples {
        /// The dataset (its `source`).
        source_name: String,
        /// Samples it has.
        have: usize,
        /// Samples asked for.
        want: usize,
    },
    /// An argument that makes no sense for this dataset (a held-out fraction
    /// outside [0, 1), a zero batch size, an iterator position past the end,
    /// horizontal flips on points).
    #[error("{source_name}: {reason}")]
    Invalid {
        /// The dataset (its `source`).
        source_name: String,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// Listing a folder or reading a file failed.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.png`/`.jpg`/`.jpeg` file that does not decode.
    ///
    /// Fix: re-export the image, or remove it from the folder.
    #[error("{}: not a readable image: {reason}", path.display())]
    CorruptImage {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A file in an image folder that is not PNG or JPEG.
    ///
    /// Fix: convert it to PNG, or move it out of the folder (names starting
    /// with `.` are skipped).
    #[error(
        "{}: not an image dtx reads (only .png, .jpg and .jpeg); convert it or move it out of the folder",
        path.display()
    )]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
    },
    /// Something in an image folder that is neither a regular file nor a
    /// folder (a FIFO, a socket, a device), or a folder link that leads back
    /// into a folder already being read.
    ///
    /// Fix: move it out of the folder (names starting with `.` are skipped).
    #[error("{}: {what}; move it out of the folder", path.display())]
    NotRegular {
        /// The entry.
        path: PathBuf,
        /// What it is.
        what: String,
    },
    /// A folder (or class sub-folder) with no images.
    #[error("{}: no .png, .jpg or .jpeg images in this folder", path.display())]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// `labels = true` on a folder with no class sub-folders.
    ///
    /// Fix: put each class's images in its own sub-folder, or set
    /// `labels = false`.
    #[error(
        "{}: labels were requested but the folder has no class sub-folders; put each class's images in its own sub-folder, or set `labels = false`",
        path.display()
    )]
    NoClassFolders {
        /// The folder.
        path: PathBuf,
    },
    /// `labels = true` and an image sits next to the class sub-folders, so it
    /// has no class.
    ///
    /// Fix: move it into a class sub-folder.
    #[error(
        "{}: labels were requested, so images must sit in class sub-folders of {}; move this one into one",
        path.display(),
        folder.display()
    )]
    UnlabelledImage {
        /// The image.
        path: PathBuf,
        /// The dataset folder.
        folder: PathBuf,
    },
}
