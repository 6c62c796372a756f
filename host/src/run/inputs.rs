//! What a run reads before anything trains: the target set and its held-out
//! split, `[source.data]`, the classes samples are drawn for, the masks
//! `sample.masks` names, and the settings this engine does not carry out —
//! all checked against the model, so bad data leaves no run folder behind.
//! [`Data`] serves them to plugins (`dataset_batch`).

use super::error::{Result, fail, run_error};
use crate::data::{self, BatchIter, Dataset};
use crate::model::Denoiser;
use crate::model::Net;
use crate::plan::Plan;
use crate::tensor_abi::{DataService, Labels, Ranked, Session};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use dtx_plugin_api::abi::{AbiError, ErrorKind};
use rand::Rng;
use std::cell::RefCell;
use std::rc::Rc;

/// The run's data with the device its batches go to, shared by the training
/// loop and the `dataset_batch` service.
pub(super) type SharedData<B> = Rc<RefCell<(Data, burn::tensor::Device<B>)>>;

/// The data sets a run's plugins draw from.
pub(super) struct Data {
    pub(super) target: Dataset,
    pub(super) iter: BatchIter,
    /// `[source.data]`, served as split `source`.
    pub(super) source: Option<Dataset>,
    /// The held-out target images (`target.holdout`), served as split
    /// `validation`.
    pub(super) held_out: Option<Dataset>,
}

impl<B: AutodiffBackend> DataService<B> for Rc<RefCell<(Data, B::Device)>> {
    fn batch(&mut self, split: &str, n: usize) -> Result<(Ranked<B>, Option<Labels<B>>), AbiError> {
        let (d, dev) = &mut *self.borrow_mut();
        // `<split>:masks`: the per-pixel masks `[B, H, W]` as the labels
        let (split, masks) = match split.strip_suffix(":masks") {
            Some(base) => (base, true),
            None => (split, false),
        };
        let set = match (split, &d.source) {
            ("target", _) => &d.target,
            ("validation", _) => match &d.held_out {
                Some(h) => h,
                None => {
                    return Err(AbiError::new(
                        ErrorKind::UNSUPPORTED,
                        "dataset split `validation`: this run holds out no target images (set `target.holdout`)",
                    ));
                }
            },
            ("source", Some(s)) => s,
            ("source", None) => {
                return Err(AbiError::new(
                    ErrorKind::UNSUPPORTED,
                    "dataset split `source`: this run has no source data (add `[source.data]` to the manifest)",
                ));
            }
            _ => {
                return Err(AbiError::new(
                    ErrorKind::UNSUPPORTED,
                    format!(
                        "dataset split `{split}`: this run has `target`{}{}",
                        if d.held_out.is_some() {
                            ", `validation`"
                        } else {
                            ""
                        },
                        if d.source.is_some() {
                            " and `source`"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        };
        // Drawn from the session's RNG, which the trainer re-seeds every step.
        let len = set.len();
        let idx: Vec<usize> =
            Session::<B>::with(|s| (0..n).map(|_| s.rng.random_range(0..len)).collect())?;
        let (x, labels) = ranked_batch::<B>(set, &idx, dev)?;
        if !masks {
            return Ok((x, labels.map(Labels::Classes)));
        }
        match set.mask_tensor::<B>(&idx, dev) {
            Some(m) => Ok((x, Some(Labels::Masks(m)))),
            None => Err(AbiError::new(
                ErrorKind::UNSUPPORTED,
                format!(
                    "dataset split `{split}:masks`: `{}` has no masks (`builtin:shapes` has them; a folder set needs `target.masks`)",
                    set.source
                ),
            )),
        }
    }
}

/// The samples of `set` at `idx` as a batch of the set's rank, with their
/// classes.
#[allow(clippy::type_complexity)]
fn ranked_batch<B: AutodiffBackend>(
    set: &Dataset,
    idx: &[usize],
    dev: &B::Device,
) -> Result<(Ranked<B>, Option<Tensor<B, 1, Int>>), AbiError> {
    match set.sample_shape.len() {
        1 => {
            let (x, l) = set.to_tensor::<B, 2>(idx, dev);
            Ok((Ranked::Two(x), l))
        }
        3 => {
            let (x, l) = set.to_tensor::<B, 4>(idx, dev);
            Ok((Ranked::Four(x), l))
        }
        r => Err(AbiError::new(
            ErrorKind::UNSUPPORTED,
            format!(
                "dataset `{}`: samples of shape {:?} (rank {r}); a batch is points or images",
                set.source, set.sample_shape
            ),
        )),
    }
}

/// `[source.data]`, when the manifest has it, checked against the shape the
/// model takes. A built-in is generated from a seed apart from the target's.
pub(super) fn load_source_data(plan: &Plan, data_shape: &[usize]) -> Result<Option<Dataset>> {
    let m = &plan.manifest.manifest;
    let Some(sd) = m.source.as_ref().and_then(|s| s.data.as_ref()) else {
        return Ok(None);
    };
    let model_res = plan.model.as_ref().map(|d| d.resolution).filter(|&r| r > 0);
    let ds = match sd.builtin() {
        Some(name) => {
            let mut config = sd.config.clone();
            if let (Some(res), false) = (model_res, config.contains_key("resolution"))
                && name == "shapes"
            {
                config.insert("resolution".into(), toml::Value::Integer(res as i64));
            }
            let seed = m.run.seed ^ 0x5eed_0f50_12ce;
            data::builtin(name, &config, seed, sd.limit.unwrap_or(10_000))
                .map_err(|e| run_error!("[source.data]: {e}"))?
        }
        None => {
            let path = plan
                .manifest
                .resolve_path(std::path::Path::new(&sd.dataset));
            let ds = data::load_folder(&path, model_res.unwrap_or(32), sd.labels)
                .map_err(|e| run_error!("[source.data]: {e}"))?;
            match sd.limit {
                Some(n) if n < ds.len() => ds.limit(n, m.run.seed)?,
                _ => ds,
            }
        }
    };
    if ds.sample_shape != data_shape {
        fail!(
            "[source.data] `{}` gives examples of shape {:?}, but the source model takes {:?}",
            sd.dataset,
            ds.sample_shape,
            data_shape
        );
    }
    if sd.labels && ds.labels.is_none() {
        fail!(
            "`source.data.labels = true` but `{}` has no labels",
            sd.dataset
        );
    }
    Ok(Some(if sd.labels { ds } else { ds.without_labels() }))
}

/// The target set and its held-out images, when the run has a `[target]`,
/// checked against the model's classes.
pub(super) fn load_targets(
    plan: &Plan,
    net: &Net,
    example: &[usize],
) -> Result<(Option<Dataset>, Option<Dataset>)> {
    if plan.manifest.manifest.target.is_none() {
        return Ok((None, None));
    }
    let (t, h) = load_target(plan, example)?;
    let k = net.num_classes();
    if let Some(&top) = t.labels.iter().chain(h.labels.iter()).flatten().max()
        && top as usize >= k
        && (k > 0 || plan.plugins.is_empty())
    {
        fail!(
            "target `{}` has class label {top}, but the source model has {k} classes (labels 0 to {})",
            t.source,
            k.saturating_sub(1)
        );
    }
    Ok((Some(t), Some(h).filter(|h| !h.is_empty())))
}

/// The target set of a run, split into `(train, held_out)` (`target.holdout`
/// examples held out first, then `limit` chosen from the rest), checked
/// against the shape the model takes.
pub fn load_target(plan: &Plan, data_shape: &[usize]) -> Result<(Dataset, Dataset)> {
    let m = &plan.manifest.manifest;
    let t = m
        .target
        .as_ref()
        .ok_or_else(|| run_error!("training needs a [target] section"))?;
    let model_res = plan.model.as_ref().map(|d| d.resolution).filter(|&r| r > 0);
    let ds = match t.builtin() {
        Some(name) => {
            let mut config = t.config.clone();
            // procedural images at the model's side unless the manifest says otherwise
            if let (Some(res), false) = (
                t.resolution.or(model_res),
                config.contains_key("resolution"),
            ) && name == "shapes"
            {
                config.insert("resolution".into(), toml::Value::Integer(res as i64));
            }
            let count = t.limit.unwrap_or(1000) + t.holdout;
            data::builtin(name, &config, m.run.seed, count)?
        }
        None => {
            let path = plan.manifest.resolve_path(std::path::Path::new(&t.dataset));
            let res = t.resolution.or(model_res).unwrap_or(32);
            let masks = t
                .masks
                .as_ref()
                .map(|m| plan.manifest.resolve_path(std::path::Path::new(m)));
            data::load_folder_with_masks(&path, res, t.labels, masks.as_deref())?
        }
    };
    let split_seed = t.split_seed.unwrap_or(m.run.seed);
    let (rest, held) = ds.hold_out(t.holdout, split_seed)?;
    let train = match t.limit {
        Some(n) if n < rest.len() => rest.limit(n, split_seed)?,
        Some(n) if n > rest.len() => rest.limit(n, split_seed)?, // the error names the set
        _ => rest,
    };
    if train.sample_shape != data_shape {
        fail!(
            "target `{}` gives examples of shape {:?}, but the source model takes {:?}{}",
            t.dataset,
            train.sample_shape,
            data_shape,
            if data_shape.len() == 3 {
                "; set `target.resolution` to the model's side, or use a model of this size"
            } else {
                ""
            }
        );
    }
    if t.labels && train.labels.is_none() {
        fail!("`target.labels = true` but `{}` has no labels", t.dataset);
    }
    let train = if t.labels {
        train
    } else {
        train.without_labels()
    };
    let held = if t.labels {
        held
    } else {
        held.without_labels()
    };
    Ok((train, held))
}

/// The classes a run samples for (see `Student::classes`): the net's;
/// else, with plugins to condition on them, the labelled target's (train and
/// held-out labels together). `sample.label` must be one of them.
pub(super) fn run_classes(
    plan: &Plan,
    net: &Net,
    target: Option<&Dataset>,
    held_out: Option<&Dataset>,
) -> Result<usize> {
    let m = &plan.manifest.manifest;
    let k = match net.num_classes() {
        0 if !plan.plugins.is_empty() => target
            .iter()
            .chain(held_out.iter())
            .filter_map(|d| d.labels.as_ref())
            .flatten()
            .max()
            .map_or(0, |&top| {
                (top as usize + 1).max(target.map_or(0, |t| t.class_names.len()))
            }),
        k => k,
    };
    if let Some(l) = m.sample.as_ref().and_then(|s| s.label) {
        if k == 0 {
            fail!(
                "`dtx run` does not carry out `sample.label`: the source model is not class-conditional and the run has no labelled target (`target.labels = true`) for a plugin to condition on"
            );
        }
        if l as usize >= k {
            fail!(
                "`sample.label = {l}`: the run has {k} classes, 0 to {}",
                k - 1
            );
        }
    }
    Ok(k)
}

/// The set whose masks `sample.masks` names, checked to have masks.
pub(super) fn sample_masks(
    plan: &Plan,
    target: Option<&Dataset>,
    held_out: Option<&Dataset>,
) -> Result<Option<Dataset>> {
    use crate::manifest::MaskSource;
    let Some(which) = plan.manifest.manifest.sample.as_ref().and_then(|s| s.masks) else {
        return Ok(None);
    };
    let (set, key) = match which {
        MaskSource::HeldOut => (held_out, "held_out (set `target.holdout`)"),
        MaskSource::Target => (target, "target"),
    };
    let Some(set) = set.filter(|s| !s.is_empty()) else {
        fail!("`sample.masks`: the run has no {key} images");
    };
    if set.masks.is_none() {
        fail!(
            "`sample.masks`: `{}` has no masks (`builtin:shapes` has them; a folder set needs `target.masks`)",
            set.source
        );
    }
    Ok(Some(set.clone()))
}

/// Settings a manifest may hold that this engine does not carry out yet: an
/// error naming each, rather than a run that silently ignores it.
pub(super) fn unsupported_settings(plan: &Plan, net: &Net) -> Result<()> {
    let m = &plan.manifest.manifest;
    let mut problems = Vec::new();
    if m.sample.as_ref().is_some_and(|s| s.guidance != 0.0) {
        problems.push(
            "`sample.guidance` (host-side classifier-free guidance is not implemented; set it to 0, or use the denoiser-guidance plugin's `cfg_weight` with its class embedding)"
                .to_owned(),
        );
    }
    if m.eval.as_ref().is_some_and(|e| !e.metrics.is_empty()) && net.data_shape().len() != 3 {
        problems.push(
            "`[eval] metrics` (feature metrics need image samples; this model makes vectors)"
                .to_owned(),
        );
    }
    if m.target.as_ref().is_some_and(|t| t.labels)
        && net.num_classes() == 0
        && plan.plugins.is_empty()
    {
        problems.push(
            "`target.labels` (the source model has no class embedding, and no plugin conditions on labels)"
                .to_owned(),
        );
    }
    if problems.is_empty() {
        return Ok(());
    }
    fail!(
        "`dtx run` does not carry out these settings: {}",
        problems.join("; ")
    )
}
