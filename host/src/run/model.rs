//! What a run shares with the host services: the model with its plugins (the
//! student, and the frozen source for `denoise(source)` / `features`), and the
//! target data for `dataset_batch`.

use crate::data::{self, BatchIter, Dataset};
use crate::diffusion::prediction::{BatchScalar, Prediction, to_epsilon};
use crate::model::net::Net;
use crate::plan::Plan;
use crate::plugins::{InjectArgs, Instance};
use crate::tensor_abi::{DataService, DenoiseService, Session, Stored};
use anyhow::{Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use dtx_plugin_api::abi::{AbiError, ErrorKind, Hook, Which};
use rand::Rng;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type P<B> = FloatTensor<B>;

/// The model and plugins of a run, shared with the host services.
pub(super) struct Engine<B: AutodiffBackend> {
    pub(super) net: Net,
    /// Each plugin in its own cell: a hook that calls `denoise(student)` or
    /// `features(student)` holds its own, and the forward it asks for runs
    /// every other plugin's `inject`.
    pub(super) plugins: Vec<RefCell<Instance<B>>>,
    /// Frozen copy of the source weights, for `denoise(source)`.
    pub(super) source: HashMap<String, P<B>>,
    /// What the network predicts, ᾱ_t and the data's channels: `denoise`
    /// answers ε of the data's channels whatever the network outputs.
    pub(super) prediction: Prediction,
    pub(super) alpha_bars: Vec<f64>,
    pub(super) data_channels: usize,
    /// Classes samples are drawn for: the net's, else (a labelled target
    /// that plugins condition on) the target's; 0 without classes.
    pub(super) classes: usize,
    /// The weights being sampled from (EMA when the run keeps one), while
    /// sampling: `denoise(student)` / `features(student)` from a `score` or
    /// `filter` hook use them rather than the raw training weights.
    pub(super) sampling_weights: RefCell<Option<HashMap<String, P<B>>>>,
    /// The masks samples are conditioned on in turn (`sample.masks`).
    pub(super) sample_masks: Option<Dataset>,
    /// The current training step's dropout stream (for a U-Net whose
    /// `dropout` is positive), used by the objective's forward alone, not
    /// by the forwards plugins ask for, validation or sampling.
    pub(super) dropout: RefCell<Option<crate::model::DropoutRng>>,
    /// The `[condition]` encoder and the embedding forwards see.
    pub(super) condition: Option<super::condition::RunCondition<B>>,
}

/// The network output `out` as ε: the mean channels of a learned-variance
/// output, converted from x0 or v with ᾱ at each example's `t`.
fn as_eps<B: AutodiffBackend, const D: usize>(
    out: P<B>,
    x_t: P<B>,
    t: P<B>,
    prediction: Prediction,
    alpha_bars: &[f64],
    channels: usize,
) -> Result<P<B>, AbiError> {
    let out: Tensor<B, D> = Tensor::from_primitive(TensorPrimitive::Float(out));
    let out = if D > 2 && out.dims()[1] == 2 * channels {
        out.narrow(1, 0, channels)
    } else {
        out
    };
    if prediction == Prediction::Epsilon {
        return Ok(out.into_primitive().tensor());
    }
    let ts: Vec<f32> = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| AbiError::other(format!("reading timesteps: {e:?}")))?;
    let ab: Vec<f32> = ts
        .iter()
        .map(|&t| {
            let i = (t.round().max(0.0) as usize).min(alpha_bars.len() - 1);
            alpha_bars[i] as f32
        })
        .collect();
    let n = ab.len();
    let ab = BatchScalar::PerSample(Tensor::<B, 1>::from_data(
        TensorData::new(ab, [n]),
        &out.device(),
    ));
    let x_t: Tensor<B, D> = Tensor::from_primitive(TensorPrimitive::Float(x_t));
    Ok(to_epsilon(out, x_t, &ab, prediction)
        .into_primitive()
        .tensor())
}

impl<B: AutodiffBackend> Engine<B> {
    /// [`as_eps`] at the rank of `x_t`.
    fn eps_of(&self, out: P<B>, x_t: P<B>, t: P<B>) -> Result<P<B>, AbiError> {
        use burn::tensor::TensorMetadata;
        let (p, ab, c) = (
            self.prediction,
            self.alpha_bars.as_slice(),
            self.data_channels,
        );
        match x_t.shape().num_dims() {
            2 => as_eps::<B, 2>(out, x_t, t, p, ab, c),
            4 => as_eps::<B, 4>(out, x_t, t, p, ab, c),
            r => Err(AbiError::new(
                ErrorKind::SHAPE,
                format!("denoise: x_t of rank {r}; this model takes rank 2 or 4"),
            )),
        }
    }
}

impl<B: AutodiffBackend> Engine<B> {
    pub(super) fn params(&self) -> HashMap<String, P<B>> {
        Session::<B>::with(|s| {
            s.params
                .entries()
                .iter()
                .filter(|e| e.owner == crate::tensor_abi::BASE_OWNER)
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The student's weights for the services: the sampled ones while
    /// sampling, else the current training weights.
    fn student_weights(&self) -> HashMap<String, P<B>> {
        match &*self.sampling_weights.borrow() {
            Some(w) => w.clone(),
            None => self.params(),
        }
    }

    /// The plugins `select` picks, each borrowed in turn (manifest order).
    pub(super) fn hooked<'a>(
        &'a self,
        select: impl Fn(&Instance<B>) -> bool + 'a,
    ) -> impl Iterator<Item = std::cell::RefMut<'a, Instance<B>>> + 'a {
        self.plugins
            .iter()
            .filter(move |p| select(&p.borrow()))
            .map(|p| p.borrow_mut())
    }

    /// The student's forward: base weights `params` with every plugin's
    /// `inject` at its points, in manifest order — except a plugin calling
    /// this from inside one of its own hooks, whose modules are left out of
    /// that call (docs/plugin-authoring.md, "Host services").
    pub(super) fn student(
        &self,
        params: &HashMap<String, P<B>>,
        x: P<B>,
        t: P<B>,
        labels: Option<IntTensor<B>>,
        training: bool,
    ) -> Result<P<B>, AbiError> {
        let t_stored = Stored::Float(t.clone());
        let labels2 = labels.clone();
        let cond = self.current_condition();
        let dropout = self.dropout.borrow();
        let dropout = dropout.as_ref().filter(|_| training);
        self.net.forward_with::<B, AbiError>(
            params,
            x,
            t,
            labels,
            &mut |point, h, temb| {
                let mut h = h;
                // a plugin whose hook is running (its cell is taken) is skipped
                for mut inst in self
                    .plugins
                    .iter()
                    .filter_map(|p| p.try_borrow_mut().ok())
                    .filter(|p| p.implements(Hook::Inject) && p.points().iter().any(|q| q == point))
                {
                    h = inst
                        .inject(InjectArgs {
                            point,
                            h: &h,
                            t: &t_stored,
                            temb,
                            cond: cond.as_ref(),
                            labels: labels2.as_ref(),
                            training,
                        })
                        .map_err(|e| AbiError::new(e.error.kind, e.to_string()))?;
                }
                Ok(h)
            },
            dropout,
        )
    }

    pub(super) fn source_forward(
        &self,
        x: P<B>,
        t: P<B>,
        labels: Option<IntTensor<B>>,
    ) -> Result<P<B>, AbiError> {
        let out = self
            .net
            .forward::<B, AbiError>(&self.source, x, t, labels, &mut |_, h, _| Ok(h))?;
        Ok(crate::tensor_abi::untracked::<B>(out))
    }
}

fn t_float<B: AutodiffBackend>(t: &Stored<B>) -> Result<P<B>, AbiError> {
    Ok(match t {
        Stored::Float(t) => t.clone(),
        Stored::Int(t) => B::int_into_float(t.clone(), burn::tensor::FloatDType::F32),
        Stored::Bool(_) => return Err(AbiError::other("timesteps must be numbers")),
    })
}

impl<B: AutodiffBackend> DenoiseService<B> for Rc<Engine<B>> {
    fn denoise(
        &self,
        x_t: P<B>,
        t: Stored<B>,
        which: Which,
        labels: Option<IntTensor<B>>,
    ) -> Result<P<B>, AbiError> {
        let t = t_float(&t)?;
        let out = match which {
            Which::Source => self.source_forward(x_t.clone(), t.clone(), labels)?,
            Which::Student => self.student(
                &self.student_weights(),
                x_t.clone(),
                t.clone(),
                labels,
                false,
            )?,
        };
        self.eps_of(out, x_t, t)
    }

    fn features(
        &self,
        x: P<B>,
        t: Stored<B>,
        points: &[String],
        which: Which,
    ) -> Result<Vec<P<B>>, AbiError> {
        let t = t_float(&t)?;
        let params = match which {
            Which::Source => self.source.clone(),
            Which::Student => self.student_weights(),
        };
        let mut found: HashMap<String, P<B>> = HashMap::new();
        self.net
            .forward::<B, AbiError>(&params, x, t, None, &mut |point, h, _| {
                if points.iter().any(|p| p == point) {
                    found.insert(point.to_owned(), h.clone());
                }
                Ok(h)
            })?;
        points
            .iter()
            .map(|p| {
                found.remove(p).ok_or_else(|| {
                    AbiError::other(format!("`{p}` is not an injection point of this model"))
                })
            })
            .collect()
    }
}

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
    fn batch(&mut self, split: &str, n: usize) -> Result<(P<B>, Option<IntTensor<B>>), AbiError> {
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
        let (x, labels) = set.to_tensor::<B>(&idx, dev);
        if !masks {
            return Ok((x, labels));
        }
        match set.mask_tensor::<B>(&idx, dev) {
            Some(m) => Ok((x, Some(m))),
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
                .map_err(|e| anyhow!("[source.data]: {e}"))?
        }
        None => {
            let path = plan
                .manifest
                .resolve_path(std::path::Path::new(&sd.dataset));
            let ds = data::load_folder(&path, model_res.unwrap_or(32), sd.labels)
                .map_err(|e| anyhow!("[source.data]: {e}"))?;
            match sd.limit {
                Some(n) if n < ds.len() => ds.limit(n, m.run.seed)?,
                _ => ds,
            }
        }
    };
    if ds.sample_shape != data_shape {
        bail!(
            "[source.data] `{}` gives examples of shape {:?}, but the source model takes {:?}",
            sd.dataset,
            ds.sample_shape,
            data_shape
        );
    }
    if sd.labels && ds.labels.is_none() {
        bail!(
            "`source.data.labels = true` but `{}` has no labels",
            sd.dataset
        );
    }
    Ok(Some(if sd.labels { ds } else { ds.without_labels() }))
}

/// The target set of a run, split into `(train, held_out)` (`target.holdout`
/// examples held out first, then `limit` chosen from the rest), checked
/// against the shape the model takes.
pub(crate) fn load_target(plan: &Plan, data_shape: &[usize]) -> Result<(Dataset, Dataset)> {
    let m = &plan.manifest.manifest;
    let t = m
        .target
        .as_ref()
        .ok_or_else(|| anyhow!("training needs a [target] section"))?;
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
        bail!(
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
        bail!("`target.labels = true` but `{}` has no labels", t.dataset);
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

/// The classes a run samples for (see [`Engine::classes`]): the net's;
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
            bail!(
                "`dtx run` does not carry out `sample.label`: the source model is not class-conditional and the run has no labelled target (`target.labels = true`) for a plugin to condition on"
            );
        }
        if l as usize >= k {
            bail!(
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
        bail!("`sample.masks`: the run has no {key} images");
    };
    if set.masks.is_none() {
        bail!(
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
    bail!(
        "`dtx run` does not carry out these settings: {}",
        problems.join("; ")
    )
}
