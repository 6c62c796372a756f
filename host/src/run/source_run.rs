//! A `kind = "dtx"` source whose run has weight-level plugins: the weights
//! the new run starts from are that run's W' — its checkpoint (EMA averages
//! where it kept an EMA) passed through its plugins' `weights` hooks, the
//! values `dtx sample` uses and `dtx export --format diffusers` writes
//! ([`super::export::merged_weights`]). A source run without such plugins
//! is read by `train::checkpoint::load_base` as before.

use super::error::{Result, run_error};
use crate::model::weights::{LoadFailure, StoredTensor, problem_list, register_fitting};
use crate::model::{Denoiser, Net};
use crate::plan::Plan;
use crate::tensor_abi::Session;
use burn::tensor::backend::AutodiffBackend;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A merged weight: its shape and f32 values.
struct Merged {
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl StoredTensor for Merged {
    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn dtype(&self) -> String {
        "F32".into()
    }

    fn to_f32(&self) -> Option<Vec<f32>> {
        Some(self.values.clone())
    }
}

/// Registers the base weights of `net` from the source run `source_run`
/// (its plan) restored from `checkpoint`, its weight-level plugins merged,
/// as base parameters of the session's store; `trainable(key)` decides
/// which train.
pub(super) fn load_merged<B: AutodiffBackend>(
    source_run: &Plan,
    checkpoint: &Path,
    net: &Net,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let folder = crate::model::dtx_run_folder(checkpoint);
    let at = format!("[source]: the dtx run `{}`", folder.display());
    // the source run is restored as `dtx export` restores it, writing its
    // (empty) metrics into a folder of its own, removed after
    let scratch = scratch_dir();
    let exported = super::export::merged_weights::<B>(source_run, checkpoint, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let exported = exported.map_err(|e| run_error!("{at}: merging its plugins: {e}"))?;
    let found: BTreeMap<String, Merged> = exported
        .tensors
        .into_iter()
        .map(|(key, shape, values)| (key, Merged { shape, values }))
        .collect();
    let registered = Session::<B>::with(|s| {
        register_fitting(&net.parameters(), found, &mut s.params, device, trainable)
    })?;
    registered.map_err(|failure| match failure {
        LoadFailure::Problems(p) => run_error!(
            "{at}: its merged weights do not fit the run's model {}",
            problem_list(&p)
        ),
        LoadFailure::Read(m) | LoadFailure::Store(m) => run_error!("{at}: {m}"),
    })?;
    let merged: Vec<String> = exported
        .merged
        .iter()
        .map(|(name, n)| format!("`{name}` ({n} weights)"))
        .collect();
    tracing::info!(
        step = exported.step,
        ema = exported.ema,
        "source `{}` loaded with its plugins merged: {}",
        checkpoint.display(),
        merged.join(", ")
    );
    Ok(())
}

/// A fresh folder under the system's temporary folder (not created).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "dtx-source-run-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
