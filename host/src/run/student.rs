//! The student: the network being trained with every plugin built against
//! it, the frozen source weights (`denoise(source)`, `features`), and what
//! the denoiser services need. Which plugin's hook is running is tracked
//! explicitly ([`Student::each_hooked`]): a hook that asks for the student's
//! forward gets every other plugin's `inject`, not its own.

use super::error::Result;
use crate::data::Dataset;
use crate::diffusion::prediction::{BatchScalar, Prediction, to_epsilon};
use crate::model::{Denoiser, Hooks, Net, Recorder, Weights};
use crate::plugins::{InjectArgs, Instance};
use crate::tensor_abi::{DenoiseService, Labels, Ranked, Session};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use dtx_plugin_api::abi::{AbiError, Hook, Which};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The model and plugins of a run, shared with the host services.
pub(super) struct Student<B: AutodiffBackend> {
    pub(super) net: Net,
    /// Each plugin in its own cell: a hook that calls `denoise(student)` or
    /// `features(student)` holds its own, and the forward it asks for runs
    /// every other plugin's `inject`.
    pub(super) plugins: Vec<RefCell<Instance<B>>>,
    /// The indices in `plugins` of the plugins whose hooks are running, the
    /// innermost last ([`Student::each_hooked`]; an `inject` is one too).
    pub(super) running: RefCell<Vec<usize>>,
    /// Frozen copy of the source weights, for `denoise(source)`.
    pub(super) source: Weights<B>,
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
    pub(super) sampling_weights: RefCell<Option<Weights<B>>>,
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
    out: Tensor<B, D>,
    x_t: Tensor<B, D>,
    t: Tensor<B, 1>,
    prediction: Prediction,
    alpha_bars: &[f64],
    channels: usize,
) -> Result<Tensor<B, D>, AbiError> {
    let out = if D > 2 && out.dims()[1] == 2 * channels {
        out.narrow(1, 0, channels)
    } else {
        out
    };
    if prediction == Prediction::Epsilon {
        return Ok(out);
    }
    let ts: Vec<f32> = t
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
    Ok(to_epsilon(out, x_t, &ab, prediction))
}

impl<B: AutodiffBackend> Student<B> {
    /// The current training weights of the base model (the session's base
    /// parameters), as the network's table.
    pub(super) fn params(&self) -> Result<Weights<B>, AbiError> {
        Session::<B>::with(|s| {
            let base: HashMap<&str, &_> = s
                .params
                .entries()
                .iter()
                .filter(|e| e.owner == crate::tensor_abi::BASE_OWNER)
                .map(|e| (e.name.as_str(), &e.value))
                .collect();
            Weights::gather(self.net.catalogue(), |k| base.get(k).map(|&v| v.clone()))
                .map_err(|e| AbiError::other(format!("the student's base weights: {e}")))
        })?
    }

    /// The student's weights for the services: the sampled ones while
    /// sampling, else the current training weights with every plugin's
    /// `weights` hook (but a running one's).
    fn student_weights(&self) -> Result<Weights<B>, AbiError> {
        match &*self.sampling_weights.borrow() {
            Some(w) => Ok(w.clone()),
            None => self.adapted(self.params()?, false),
        }
    }

    /// `base` with every plugin's `weights` hook applied to its targets, in
    /// manifest order (each sees the weight after the plugins before it);
    /// plugins whose hooks are running are left out, as in
    /// [`Student::forward`]. The frozen source is never adapted.
    pub(super) fn adapted(&self, base: Weights<B>, training: bool) -> Result<Weights<B>, AbiError> {
        let mut w = base;
        for (i, cell) in self.plugins.iter().enumerate() {
            if self.is_running(i) || !cell.borrow().implements(Hook::Weights) {
                continue;
            }
            let _running = Running::mark(&self.running, i);
            let mut inst = cell.borrow_mut();
            for key in inst.weight_targets().to_vec() {
                let at = self.net.catalogue().index_of(&key).ok_or_else(|| {
                    AbiError::other(format!(
                        "plugin `{}`: `{key}` is not a weight of this model",
                        inst.name
                    ))
                })?;
                let new = inst
                    .weights(&key, w.tensor(at), training)
                    .map_err(|e| AbiError::new(e.error.kind, e.to_string()))?;
                w.set(at, new);
            }
        }
        Ok(w)
    }

    /// Calls `f` on each plugin `select` picks, in manifest order, with that
    /// plugin marked as the one running a hook for the call: a
    /// `denoise(student)` or `features(student)` it asks for leaves its own
    /// modules out. Stops at the first error.
    pub(super) fn each_hooked<E>(
        &self,
        select: impl Fn(&Instance<B>) -> bool,
        mut f: impl FnMut(&mut Instance<B>) -> Result<(), E>,
    ) -> Result<(), E> {
        for (i, cell) in self.plugins.iter().enumerate() {
            if self.is_running(i) || !select(&cell.borrow()) {
                continue;
            }
            let _running = Running::mark(&self.running, i);
            f(&mut cell.borrow_mut())?;
        }
        Ok(())
    }

    /// Whether a plugin other than the one running a hook implements `hook`.
    pub(super) fn others_implement(&self, hook: Hook) -> bool {
        self.plugins
            .iter()
            .enumerate()
            .any(|(i, p)| !self.is_running(i) && p.borrow().implements(hook))
    }

    /// Whether plugin `i` is running a hook (it is on the call stack).
    fn is_running(&self, i: usize) -> bool {
        self.running.borrow().contains(&i)
    }

    /// The student's forward: base weights `params` with every plugin's
    /// `inject` at its points, in manifest order — except a plugin calling
    /// this from inside one of its own hooks, whose modules are left out of
    /// that call (docs/plugin-authoring.md, "Host services").
    pub(super) fn forward<const D: usize>(
        &self,
        params: &Weights<B>,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        training: bool,
    ) -> Result<Tensor<B, D>, AbiError> {
        let mut injecting = Injecting {
            student: self,
            t: t.clone(),
            cond: self.current_condition(),
            labels: labels.clone().map(Labels::Classes),
            training,
        };
        let dropout = self.dropout.borrow();
        let dropout = dropout.as_ref().filter(|_| training);
        self.net
            .forward(params, x, t, labels, &mut injecting, dropout)
    }

    /// The frozen source's forward (no plugin), outside every graph.
    pub(super) fn source_forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Tensor<B, D> {
        let out = self.net.predict(&self.source, x, t, labels);
        Tensor::from_inner(out.inner())
    }

    /// [`Student::forward`] (or the source's, `which`) as ε, for the
    /// `denoise` service.
    fn denoise_at<const D: usize>(
        &self,
        which: Which,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Tensor<B, D>, AbiError> {
        let out = match which {
            Which::Source => self.source_forward(x.clone(), t.clone(), labels),
            Which::Student => self.forward(
                &self.student_weights()?,
                x.clone(),
                t.clone(),
                labels,
                false,
            )?,
        };
        let (p, ab, c) = (
            self.prediction,
            self.alpha_bars.as_slice(),
            self.data_channels,
        );
        as_eps::<B, D>(out, x, t, p, ab, c)
    }

    /// The activations at `points` of the source's weights (no plugin), or
    /// of the student's with every plugin's `inject` but the running one's
    /// (what the rest of the network sees at each point).
    fn features_at<const D: usize>(
        &self,
        which: Which,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        points: &[String],
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        let mut record = Recorder::<B, D>::new(points);
        match which {
            Which::Source => match self
                .net
                .forward(&self.source, x, t, labels, &mut record, None)
            {
                Ok(_) => {}
                Err(never) => match never {},
            },
            Which::Student => {
                let mut observed = Observed {
                    inject: Injecting {
                        student: self,
                        t: t.clone(),
                        cond: self.current_condition(),
                        labels: labels.clone().map(Labels::Classes),
                        training: false,
                    },
                    record: &mut record,
                };
                let weights = self.student_weights()?;
                self.net
                    .forward(&weights, x, t, labels, &mut observed, None)?;
            }
        }
        points
            .iter()
            .map(|p| {
                let found = match (p.as_str(), &record.temb) {
                    ("temb", Some(temb)) => Some(Ranked::Two(temb.clone())),
                    _ => record.blocks.remove(p).map(Ranked::new),
                };
                found.ok_or_else(|| {
                    AbiError::other(format!("`{p}` is not an injection point of this model"))
                })
            })
            .collect()
    }
}

/// The student's forward for `features(student)`: every plugin's `inject`
/// (the running one's left out), then the activation recorded.
struct Observed<'a, 'r, B: AutodiffBackend, const D: usize> {
    inject: Injecting<'a, B>,
    record: &'r mut Recorder<B, D>,
}

impl<B: AutodiffBackend, const D: usize> Hooks<B, D> for Observed<'_, '_, B, D> {
    type Error = AbiError;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, AbiError> {
        let temb = Hooks::<B, D>::temb(&mut self.inject, temb)?;
        match self.record.temb(temb) {
            Ok(t) => Ok(t),
            Err(never) => match never {},
        }
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, AbiError> {
        let h = self.inject.block(point, h, temb)?;
        match self.record.block(point, h, temb) {
            Ok(h) => Ok(h),
            Err(never) => match never {},
        }
    }
}

/// Every plugin's `inject` at the points of one student forward, those
/// whose hooks are running left out.
struct Injecting<'a, B: AutodiffBackend> {
    student: &'a Student<B>,
    t: Tensor<B, 1>,
    cond: Option<Tensor<B, 3>>,
    labels: Option<Labels<B>>,
    training: bool,
}

impl<B: AutodiffBackend> Injecting<'_, B> {
    /// `h` at `point` through each bound plugin, in manifest order.
    fn at<const K: usize>(
        &self,
        point: &str,
        h: Tensor<B, K>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, K>, AbiError> {
        let student = self.student;
        let mut h = h;
        for (i, cell) in student.plugins.iter().enumerate() {
            if student.is_running(i) {
                continue;
            }
            let mut inst = cell.borrow_mut();
            if !(inst.implements(Hook::Inject) && inst.points().iter().any(|q| q == point)) {
                continue;
            }
            let _running = Running::mark(&student.running, i);
            h = inst
                .inject(InjectArgs {
                    point,
                    h: &h,
                    t: &self.t,
                    temb,
                    cond: self.cond.as_ref(),
                    labels: self.labels.as_ref(),
                    training: self.training,
                })
                .map_err(|e| AbiError::new(e.error.kind, e.to_string()))?;
        }
        Ok(h)
    }
}

impl<B: AutodiffBackend, const D: usize> Hooks<B, D> for Injecting<'_, B> {
    type Error = AbiError;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, AbiError> {
        self.at("temb", temb.clone(), &temb)
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, AbiError> {
        self.at(point, h, temb)
    }
}

impl<B: AutodiffBackend> DenoiseService<B> for Rc<Student<B>> {
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        Ok(match x_t {
            Ranked::Two(x) => Ranked::Two(self.denoise_at(which, x, t, labels)?),
            Ranked::Four(x) => Ranked::Four(self.denoise_at(which, x, t, labels)?),
        })
    }

    fn features(
        &self,
        x: Ranked<B>,
        t: Tensor<B, 1>,
        points: &[String],
        which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        match x {
            Ranked::Two(x) => self.features_at(which, x, t, points, labels),
            Ranked::Four(x) => self.features_at(which, x, t, points, labels),
        }
    }
}

/// Marks plugin `i` as running a hook while alive (pushed on the stack of
/// running plugins, popped on drop, also when the hook fails).
struct Running<'a>(&'a RefCell<Vec<usize>>);

impl<'a> Running<'a> {
    fn mark(stack: &'a RefCell<Vec<usize>>, i: usize) -> Self {
        stack.borrow_mut().push(i);
        Running(stack)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().pop();
    }
}
