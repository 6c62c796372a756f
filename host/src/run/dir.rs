//! The run folder `runs/<name>/`: the resolved manifest, `metrics.jsonl`,
//! checkpoints, samples and `report.md`.
//!
//! One process owns a folder at a time: [`RunDir`] holds an advisory lock on
//! `runs/<name>/.lock` for as long as it lives. The operating system drops
//! the lock when the process ends, however it ends, so a crashed or killed
//! run never leaves the folder locked.

use crate::manifest::resume;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file in a run folder.
pub const LOCK_FILE: &str = ".lock";

/// A run's folder, locked for this process.
pub struct RunDir {
    /// `runs/<name>`.
    pub path: PathBuf,
    metrics: File,
    _lock: File,
}

/// Why a run folder cannot be opened, written or resumed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file-system step failed on a path.
    #[error("{doing} `{}`", path.display())]
    Io {
        /// What was being done (`creating`, `writing`, …).
        doing: &'static str,
        /// The path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Appending to `metrics.jsonl` failed.
    #[error("writing metrics.jsonl")]
    Metrics(#[source] std::io::Error),
    /// Another process holds the folder's lock.
    #[error(
        "run folder `{}` is in use by {who}; nothing was written. Wait for it to finish, or set another `run.name` (`--set run.name=…`)",
        dir.display()
    )]
    InUse {
        /// The run folder.
        dir: PathBuf,
        /// Who holds it, as far as its lock file says.
        who: String,
    },
    /// A fresh run in a folder that has a checkpoint.
    #[error(
        "run folder `{}` already holds a run: resume it with `dtx run --resume`, or set another `run.name` (`--set run.name=…`)",
        .0.display()
    )]
    HoldsRun(PathBuf),
    /// `--resume` of a folder without a checkpoint.
    #[error(
        "nothing to resume: `{}` has no checkpoint (a run writes its first one after `train.checkpoint_every` steps, or at the end); run it again without `--resume`",
        .0.display()
    )]
    NothingToResume(PathBuf),
    /// `--resume` of a folder whose `manifest.toml` is gone.
    #[error(
        "cannot resume `{}`: its `manifest.toml` is missing, so what the first part ran with is unknown",
        .0.display()
    )]
    ManifestMissing(PathBuf),
    /// The recorded manifest cannot be compared with the new one.
    #[error("reading the run's manifest in `{}`", dir.display())]
    RecordedManifest {
        /// The run folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// `--resume` with a manifest changed where it may not change.
    #[error(
        "cannot resume `{}`: the manifest differs from the one its checkpoint was trained with:\n{changes}\nonly {allowed} may change on resume; undo these changes, or start a new run with another `run.name`",
        dir.display()
    )]
    Changed {
        /// The run folder.
        dir: PathBuf,
        /// One indented line per refused change.
        changes: String,
        /// The keys that may change, quoted.
        allowed: String,
    },
}

type Result<T> = std::result::Result<T, RunDirError>;

/// A closure that wraps an I/O error as [`RunDirError::Io`].
fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError {
    let path = path.to_path_buf();
    move |source| RunDirError::Io {
        doing,
        path,
        source,
    }
}

/// Locks `dir` (created if needed) for this process, or says which process
/// holds it.
pub fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("opening the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another dtx process".to_owned()
            } else {
                format!("another dtx process ({holder})")
            };
            return Err(RunDirError::InUse {
                dir: dir.to_path_buf(),
                who,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(io("locking", &path)(e));
        }
    }
    // Who holds it, for the message above; best effort.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "pid {}", std::process::id());
    let _ = file.flush();
    Ok(file)
}

impl RunDir {
    /// Creates (or, with `resume`, reopens) the folder of run `name` under
    /// `root`, locked for this process.
    ///
    /// A new run refuses a folder that already has checkpoints, so no work is
    /// overwritten: resume it, or pick another name. A resumed run needs a
    /// checkpoint, refuses a manifest that differs from the first part's in
    /// anything but [`resume::SAFE_TO_CHANGE`] (listing every changed key),
    /// keeps `manifest.toml` as it was and records an allowed change in
    /// `manifest.resume-<k>.toml`.
    pub fn open(root: &Path, name: &str, resume: bool, manifest_toml: &str) -> Result<RunDir> {
        let path = root.join(name);
        let latest = path.join("checkpoints").join("latest.safetensors");
        // Checks that need no lock come first, so a refused run creates nothing.
        let refuse_fresh = || -> Result<()> {
            if !resume && latest.exists() {
                return Err(RunDirError::HoldsRun(path.clone()));
            }
            Ok(())
        };
        refuse_fresh()?;
        if resume && !latest.exists() {
            return Err(RunDirError::NothingToResume(path));
        }
        let lock = lock(&path)?;
        // Checked again under the lock: another run may have written its
        // first checkpoint in between.
        refuse_fresh()?;
        let ckpt = path.join("checkpoints");
        std::fs::create_dir_all(&ckpt).map_err(io("creating", &ckpt))?;
        let manifest_path = path.join("manifest.toml");
        if resume {
            record_resume(&path, &manifest_path, manifest_toml)?;
        } else {
            crate::util::write_atomic(&manifest_path, manifest_toml.as_bytes())
                .map_err(io("writing", &manifest_path))?;
        }
        let metrics_path = path.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&metrics_path)
            .map_err(io("opening", &metrics_path))?;
        Ok(RunDir {
            path,
            metrics,
            _lock: lock,
        })
    }

    /// A folder for the output of `dtx sample` (created and locked; its
    /// metrics file replaced).
    pub fn at(path: &Path) -> Result<RunDir> {
        let lock = lock(path)?;
        let metrics_path = path.join("metrics.jsonl");
        let metrics = File::create(&metrics_path).map_err(io("creating", &metrics_path))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics,
            _lock: lock,
        })
    }

    /// The latest checkpoint's path.
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.path.join("checkpoints").join("latest.safetensors")
    }

    /// Drops every `metrics.jsonl` record written after training step `step`
    /// (training steps after it, and any sampling or evaluation record), so
    /// that a resumed run, which writes them again, leaves the file as an
    /// uninterrupted run would. `prepare` records stay.
    pub fn truncate_metrics_after(&mut self, step: u64) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        let mut kept = String::new();
        for line in text.lines() {
            let keep = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.get("prepare").is_some() => true,
                Ok(v) => v
                    .get("step")
                    .and_then(serde_json::Value::as_u64)
                    .is_some_and(|s| s <= step),
                // A line cut short by a kill: it is written again.
                Err(_) => false,
            };
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        crate::util::write_atomic(&path, kept.as_bytes()).map_err(io("writing", &path))?;
        self.metrics = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        Ok(())
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{record}").map_err(RunDirError::Metrics)?;
        Ok(())
    }

    /// Writes a file in the run folder.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, bytes).map_err(io("writing", &p))?;
        Ok(p)
    }
}

/// Compares the manifest being resumed with the first part's: refuses any
/// change outside [`resume::SAFE_TO_CHANGE`]; records an allowed one in the
/// next free `manifest.resume-<k>.toml`. `manifest.toml` is never rewritten.
fn record_resume(dir: &Path, first: &Path, manifest_toml: &str) -> Result<()> {
    let old = match std::fs::read_to_string(first) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunDirError::ManifestMissing(dir.to_path_buf()));
        }
        Err(e) => return Err(io("reading", first)(e)),
    };
    // The most recent record is what the checkpoint continues from.
    let mut latest = old;
    let mut k = 1;
    loop {
        let p = dir.join(format!("manifest.resume-{k}.toml"));
        match std::fs::read_to_string(&p) {
            Ok(t) => latest = t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(io("reading", &p)(e)),
        }
        k += 1;
    }
    let changes = resume::changes(&latest, manifest_toml).map_err(|source| {
        RunDirError::RecordedManifest {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    let refused = resume::unsafe_changes(&changes);
    if !refused.is_empty() {
        let list: Vec<String> = refused.iter().map(|c| format!("  {c}")).collect();
        return Err(RunDirError::Changed {
            dir: dir.to_path_buf(),
            changes: list.join("\n"),
            allowed: resume::SAFE_TO_CHANGE
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if !changes.is_empty() {
        let p = dir.join(format!("manifest.resume-{k}.toml"));
        crate::util::write_atomic(&p, manifest_toml.as_bytes()).map_err(io("writing", &p))?;
    }
    Ok(())
}
