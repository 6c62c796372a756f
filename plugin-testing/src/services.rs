//! What a plugin's hooks may ask the harness's host for: the tiny model's
//! forward (`denoise`, `features`), or a denoiser and a data set the test
//! writes as functions of [`Array`]s.

use crate::{Array, B, Labels};
use burn::tensor::{Int, Tensor, TensorData};
use dtx::model::{Denoiser, Net, Recorder, Weights};
use dtx::tensor_abi::{DataService, DenoiseService, Labels as HostLabels, Ranked};
use dtx_plugin_api::abi::{AbiError, Which};

/// The host's model as the run's student and source alike: its forward
/// with the base weights, in eval mode. A run's student would also apply
/// the *other* plugins' `inject`s and `weights`; the harness builds one
/// plugin, so both answer the same.
pub(crate) struct NetService {
    pub(crate) net: Net,
    pub(crate) weights: Weights<B>,
}

impl NetService {
    fn features_at<const D: usize>(
        &self,
        x: Tensor<B, D>,
        t: Tensor<B, 1>,
        points: &[String],
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        let mut record = Recorder::<B, D>::new(points);
        let Ok(_) = self
            .net
            .forward(&self.weights, x, t, labels, &mut record, None);
        points
            .iter()
            .map(|p| {
                let found = match (p.as_str(), &record.temb) {
                    ("temb", Some(temb)) => Some(Ranked::Two(temb.clone())),
                    _ => record.blocks.remove(p).map(Ranked::new),
                };
                found.ok_or_else(|| AbiError::other(format!("the model has no point `{p}`")))
            })
            .collect()
    }
}

impl DenoiseService<B> for NetService {
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        _which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        Ok(match x_t {
            Ranked::Two(x) => Ranked::Two(self.net.predict(&self.weights, x, t, labels)),
            Ranked::Four(x) => Ranked::Four(self.net.predict(&self.weights, x, t, labels)),
        })
    }

    fn features(
        &self,
        x: Ranked<B>,
        t: Tensor<B, 1>,
        points: &[String],
        _which: Which,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        match x {
            Ranked::Two(x) => self.features_at(x, t, points, labels),
            Ranked::Four(x) => self.features_at(x, t, points, labels),
        }
    }
}

/// A denoiser the test writes: ε of `which` for `x_t` at timesteps `t`.
pub type DenoiseFn = dyn Fn(&Array, &[f32], Which) -> Array;

/// [`DenoiseFn`] as the host's service. Its answers are values, outside
/// the autodiff graph: a gradient through `denoise` needs the model
/// ([`NetService`]).
pub(crate) struct FnDenoiser(pub(crate) Box<DenoiseFn>);

impl DenoiseService<B> for FnDenoiser {
    fn denoise(
        &self,
        x_t: Ranked<B>,
        t: Tensor<B, 1>,
        which: Which,
        _labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Ranked<B>, AbiError> {
        let x = Array::of_prim(dtx::tensor_abi::untracked::<B>(x_t.into_float()));
        let ts = t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| AbiError::other(format!("timesteps: {e:?}")))?;
        let out = (self.0)(&x, &ts, which);
        if out.shape != x.shape {
            return Err(AbiError::other(format!(
                "the test's denoiser returned shape {:?} for x_t of shape {:?}",
                out.shape, x.shape
            )));
        }
        Ranked::from_float("the test's denoiser", out.to_prim())
    }

    fn features(
        &self,
        _x: Ranked<B>,
        _t: Tensor<B, 1>,
        _points: &[String],
        _which: Which,
        _labels: Option<Tensor<B, 1, Int>>,
    ) -> Result<Vec<Ranked<B>>, AbiError> {
        Err(AbiError::other(
            "this test host's denoiser is a function the test wrote: it has no features \
             (leave out `with_denoiser` to get the model's)",
        ))
    }
}

/// A data set the test writes: `batch` examples of `split` (`target`,
/// `source`, `validation`, `<split>:masks`) and their labels.
pub type DataFn = dyn FnMut(&str, usize) -> Result<(Array, Option<Labels>), String>;

/// [`DataFn`] as the host's service.
pub(crate) struct FnData(pub(crate) Box<DataFn>);

impl DataService<B> for FnData {
    fn batch(
        &mut self,
        split: &str,
        batch: usize,
    ) -> Result<(Ranked<B>, Option<HostLabels<B>>), AbiError> {
        let (x, labels) = (self.0)(split, batch).map_err(AbiError::other)?;
        let x = Ranked::from_float("the test's data", x.to_prim())?;
        let labels = labels
            .map(|l| l.to_host())
            .transpose()
            .map_err(AbiError::other)?;
        Ok((x, labels))
    }
}

/// Timesteps `t` as a host tensor.
pub(crate) fn timesteps(t: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(t.to_vec(), [t.len()]), &Default::default())
}
