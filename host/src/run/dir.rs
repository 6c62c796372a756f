//! The run folder `runs/<name>/`: the resolved manifest, `metrics.jsonl`,
//! checkpoints, samples and `report.md`.
//!
//! One process owns a folder at a time: [`RunDir`] holds an advisory lock on
//! `runs/<name>/.lock` for as long as it lives. The operating system drops
//! the lock when the process ends, however it ends, so a crashed or killed
//! run never leaves the folder locked.

use crate::manifest::resume;
use anyhow::{Context, Result, bail};
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

/// Locks `dir` (created if needed) for this process, or says which process
/// holds it.
pub fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file `{}`", path.display()))?;
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
            bail!(
                "run folder `{}` is in use by {who}; nothing was written. Wait for it to finish, or set another `run.name` (`--set run.name=…`)",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking `{}`", path.display()));
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
                bail!(
                    "run folder `{}` already holds a run: resume it with `dtx run --resume`, or set another `run.name` (`--set run.name=…`)",
                    path.display()
                );
            }
            Ok(())
        };
        refuse_fresh()?;
        if resume && !latest.exists() {
            bail!(
                "nothing to resume: `{}` has no checkpoint (a run writes its first one after `train.checkpoint_every` steps, or at the end); run it again without `--resume`",
                path.display()
            );
        }
        let lock = lock(&path)?;
        // Checked again under the lock: another run may have written its
        // first checkpoint in between.
        refuse_fresh()?;
        let ckpt = path.join("checkpoints");
        std::fs::create_dir_all(&ckpt).with_context(|| format!("creating `{}`", ckpt.display()))?;
        let manifest_path = path.join("manifest.toml");
        if resume {
            record_resume(&path, &manifest_path, manifest_toml)?;
        } else {
            crate::util::write_atomic(&manifest_path, manifest_toml.as_bytes())
                .with_context(|| format!("writing `{}`", manifest_path.display()))?;
        }
        let metrics_path = path.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&metrics_path)
            .with_context(|| format!("opening `{}`", metrics_path.display()))?;
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
        let metrics = File::create(&metrics_path)
            .with_context(|| format!("creating `{}`", metrics_path.display()))?;
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
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading `{}`", path.display()))?;
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
        crate::util::write_atomic(&path, kept.as_bytes())
            .with_context(|| format!("writing `{}`", path.display()))?;
        self.metrics = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening `{}`", path.display()))?;
        Ok(())
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{record}").context("writing metrics.jsonl")?;
        Ok(())
    }

    /// Writes a file in the run folder.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing `{}`", p.display()))?;
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
            bail!(
                "cannot resume `{}`: its `manifest.toml` is missing, so what the first part ran with is unknown",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading `{}`", first.display())),
    };
    // The most recent record is what the checkpoint continues from.
    let mut latest = old;
    let mut k = 1;
    loop {
        let p = dir.join(format!("manifest.resume-{k}.toml"));
        match std::fs::read_to_string(&p) {
            Ok(t) => latest = t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e).with_context(|| format!("reading `{}`", p.display())),
        }
        k += 1;
    }
    let changes = resume::changes(&latest, manifest_toml)
        .with_context(|| format!("reading the run's manifest in `{}`", dir.display()))?;
    let refused = resume::unsafe_changes(&changes);
    if !refused.is_empty() {
        let list: Vec<String> = refused.iter().map(|c| format!("  {c}")).collect();
        bail!(
            "cannot resume `{}`: the manifest differs from the one its checkpoint was trained with:\n{}\nonly {} may change on resume; undo these changes, or start a new run with another `run.name`",
            dir.display(),
            list.join("\n"),
            resume::SAFE_TO_CHANGE
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !changes.is_empty() {
        let p = dir.join(format!("manifest.resume-{k}.toml"));
        crate::util::write_atomic(&p, manifest_toml.as_bytes())
            .with_context(|| format!("writing `{}`", p.display()))?;
    }
    Ok(())
}
