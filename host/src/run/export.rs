//! `dtx export`: a run's model as one set of base weights, its weight-level
//! plugins merged in. Each tensor is what the run samples with: the
//! checkpoint's values (its EMA averages when the run keeps an EMA, base
//! and plugin parameters alike), passed once through every plugin's
//! `weights` hook in manifest order (LoRA's `W + (α/r)·B·A`), exactly as
//! sampling computes them. A plugin whose effect is not in the weights (an
//! `inject` module, a `score` correction, a `filter`) cannot be merged: the
//! export is refused, naming it and the hook, before anything runs.

use super::error::{Result, fail, run_error};
use super::student::Student;
use crate::model::{Denoiser, Net, Weights};
use crate::plan::Plan;
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::Hook;
use std::path::Path;

/// The merged model.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Every base parameter by checkpoint key, in the network's order:
    /// shape and f32 values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The plugins merged (instance name, how many weights each changed).
    pub merged: Merged,
    /// The checkpoint's training step.
    pub step: u64,
    /// Whether the values are EMA averages.
    pub ema: bool,
}

/// The plugins merged: instance name and how many weights each changed.
type Merged = Vec<(String, usize)>;

pub use crate::plan::merge::{refusal, unmergeable};

/// The run `plan` describes, restored from `checkpoint`, as merged base
/// weights: what `dtx export --format diffusers` writes and a `kind =
/// "dtx"` source loads. `scratch` is a folder the run may create, lock and
/// write its (empty) metrics file into; the caller removes what it does not
/// keep. A plugin that cannot be merged ([`refusal`]) is refused before
/// anything is read or written.
pub fn merged_weights<B: AutodiffBackend>(
    plan: &Plan,
    checkpoint: &Path,
    scratch: &Path,
) -> Result<Exported> {
    if let Some(why) = refusal(plan) {
        fail!("{why}");
    }
    // what the run evaluates plays no part in its weights: its extractor
    // and reference images are not loaded
    let mut plan = plan.clone();
    plan.manifest.manifest.eval = None;
    let plan = &plan;
    let desc = plan
        .model
        .as_ref()
        .ok_or_else(|| run_error!("the run has no [source] model"))?;
    let net = Net::from_description(desc).map_err(|e| run_error!("[source]: {e}"))?;
    match net.data_shape().len() {
        1 => merged_ranked::<B, 2>(plan, checkpoint, scratch, net),
        3 => merged_ranked::<B, 4>(plan, checkpoint, scratch, net),
        n => fail!("[source]: examples of rank {n} are not supported"),
    }
}

fn merged_ranked<B: AutodiffBackend, const D: usize>(
    plan: &Plan,
    checkpoint: &Path,
    scratch: &Path,
    net: Net,
) -> Result<Exported> {
    let (ctx, progress) = super::restored::<B, D>(plan, net, checkpoint, scratch)?;
    let ema = ctx.ema.is_some();
    // the values sampling uses: EMA averages of plugin parameters swapped
    // into the store for the hooks, the base's gathered from the average
    let merged = super::sampling::with_plugin_averages(ctx.ema.as_ref(), || {
        merge::<B>(&ctx.student, ctx.ema.as_ref())
    });
    let (weights, merged) = merged?;
    let catalogue = ctx.student.net.catalogue().clone();
    let mut tensors = Vec::with_capacity(catalogue.len());
    for (i, (key, shape)) in catalogue.entries().iter().enumerate() {
        let data = burn::tensor::read_sync(B::float_into_data(weights.tensor(i).clone()))
            .map_err(|e| run_error!("reading `{key}`: {e:?}"))?;
        let values: Vec<f32> = data
            .convert::<f32>()
            .to_vec()
            .map_err(|e| run_error!("reading `{key}`: {e:?}"))?;
        tensors.push((key.clone(), shape.clone(), values));
    }
    Ok(Exported {
        tensors,
        merged,
        step: progress.step,
        ema,
    })
}

/// The student's base weights (EMA averages when kept) through every
/// plugin's `weights` hook, and how many weights each plugin changed.
fn merge<B: AutodiffBackend>(
    student: &Student<B>,
    ema: Option<&crate::train::ema::Ema<B>>,
) -> Result<(Weights<B>, Merged)> {
    let base = super::sampling::sampled_base(student, ema)?;
    let (_sampling, adapted) = super::sampling::SamplingWeights::set(student, &base)?;
    let merged = student
        .plugins
        .iter()
        .filter_map(|cell| {
            let inst = cell.borrow();
            inst.implements(Hook::Weights)
                .then(|| (inst.name.clone(), inst.weight_targets().len()))
        })
        .collect();
    Ok((adapted, merged))
}
