//! The run folder `runs/<name>/`: the resolved manifest, `metrics.jsonl`,
//! checkpoints, samples and `report.md`.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A run's folder.
pub struct RunDir {
    /// `runs/<name>`.
    pub path: PathBuf,
    metrics: File,
}

impl RunDir {
    /// Creates (or, with `resume`, reopens) the folder of run `name` under `root`.
    /// A new run refuses a folder that already has checkpoints, so no work is
    /// overwritten: resume it, or pick another name.
    pub fn open(root: &Path, name: &str, resume: bool, manifest_toml: &str) -> Result<RunDir> {
        let path = root.join(name);
        let ckpt = path.join("checkpoints");
        if !resume && ckpt.join("latest.safetensors").exists() {
            anyhow::bail!(
                "run folder `{}` already holds a run: resume it with `dtx run --resume`, or set another `run.name` (`--set run.name=…`)",
                path.display()
            );
        }
        std::fs::create_dir_all(&ckpt).with_context(|| format!("creating `{}`", ckpt.display()))?;
        std::fs::write(path.join("manifest.toml"), manifest_toml)
            .with_context(|| format!("writing `{}`", path.display()))?;
        let metrics_path = path.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&metrics_path)
            .with_context(|| format!("opening `{}`", metrics_path.display()))?;
        Ok(RunDir { path, metrics })
    }

    /// A folder for the output of `dtx sample` (created; its metrics file
    /// replaced).
    pub fn at(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path).with_context(|| format!("creating `{}`", path.display()))?;
        let metrics_path = path.join("metrics.jsonl");
        let metrics = File::create(&metrics_path)
            .with_context(|| format!("creating `{}`", metrics_path.display()))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics,
        })
    }

    /// The latest checkpoint's path.
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.path.join("checkpoints").join("latest.safetensors")
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
