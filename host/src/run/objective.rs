//! The denoising objective of a training step: the random draw (timesteps
//! and noise), the forward process, the student's prediction and the
//! (weighted) simple loss; the same on a held-out set for validation.

use super::error::Result;
use super::student::Student;
use super::support::{normal, step_rng};
use crate::data::Dataset;
use crate::diffusion::Weighting;
use crate::diffusion::prediction::{
    BatchScalar, Prediction, q_sample, split_learned_sigma, to_epsilon, v_from_eps_x0,
};
use crate::diffusion::schedule::snr;
use crate::diffusion::vlb::vlb_terms;
use crate::tensor_abi::Ranked;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

/// The random part of one training step on a batch of rank `D`: a timestep
/// per example, drawn uniformly from `0..T`, then standard normal noise of
/// the batch's shape.
pub(super) struct Draw<B: AutodiffBackend, const D: usize> {
    pub(super) ts: Vec<i64>,
    /// The noise ε.
    pub(super) noise: Tensor<B, D>,
    device: B::Device,
}

impl<B: AutodiffBackend, const D: usize> Draw<B, D> {
    /// Draws for the batch `x0` (timesteps first, then noise, from `rng`).
    pub(super) fn new(
        rng: &mut StdRng,
        x0: &Tensor<B, D>,
        timesteps: usize,
        device: &B::Device,
    ) -> Self {
        let dims = x0.dims();
        let ts: Vec<i64> = (0..dims[0])
            .map(|_| rng.random_range(0..timesteps as i64))
            .collect();
        let noise = normal::<B, D>(rng, dims, device);
        Draw {
            ts,
            noise,
            device: device.clone(),
        }
    }

    /// The timesteps as floats `[B]`, as the denoisers take them.
    pub(super) fn t_float(&self) -> Tensor<B, 1> {
        let n = self.ts.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(self.ts.clone(), [n]), &self.device).float()
    }
}

/// Named scalar loss terms (`[1]` each), in order.
pub(super) type Terms<B> = Vec<(String, Tensor<B, 1>)>;

/// What the base model is trained to do.
pub(super) struct Objective<'a> {
    /// ᾱ_t for t = 0..T−1.
    pub(super) alpha_bars: &'a [f64],
    /// What the network predicts.
    pub(super) prediction: Prediction,
    /// Per-timestep loss weight.
    pub(super) weighting: Weighting,
    /// Channels of the data (a learned-variance net outputs twice as many).
    pub(super) data_channels: usize,
}

impl Objective<'_> {
    /// The network's mean output and, for a learned-sigma output (2C
    /// channels), its variance channels.
    pub(super) fn split_output<B: AutodiffBackend, const D: usize>(
        &self,
        out: Tensor<B, D>,
    ) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
        if D > 2 && out.dims()[1] == 2 * self.data_channels {
            let (mean, v) = split_learned_sigma(out, self.data_channels);
            (mean, Some(v))
        } else {
            (out, None)
        }
    }

    /// The forward process and the student's loss on it:
    /// x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε, L = mean_i w(t_i) · mean ‖target_i − out_i‖²
    /// (target ε, x0 or v as the network predicts; w from the weighting,
    /// 1 for `none`). Returns the terms — `loss.simple`, and `loss.vlb` for a
    /// learned-variance net (the hybrid objective, docs/runs.md) — the
    /// prediction converted to ε (what plugins see) and x_t.
    #[allow(clippy::type_complexity)]
    pub(super) fn simple<B: AutodiffBackend, const D: usize>(
        &self,
        student: &Student<B>,
        params: &crate::model::Weights<B>,
        x0: &Tensor<B, D>,
        labels: Option<Tensor<B, 1, Int>>,
        draw: &Draw<B, D>,
        training: bool,
    ) -> Result<(Terms<B>, Tensor<B, D>, Tensor<B, D>)> {
        let n = draw.ts.len();
        let dev = &draw.device;
        let ab: Vec<f32> = draw
            .ts
            .iter()
            .map(|&i| self.alpha_bars[i as usize] as f32)
            .collect();
        let ab_t = Tensor::<B, 1>::from_data(TensorData::new(ab, [n]), dev);
        let x0r = x0.clone();
        let noise = draw.noise.clone();
        let x_t = q_sample(x0r.clone(), noise.clone(), ab_t.clone());
        let t = draw.t_float();
        let out = student.forward(params, x_t.clone(), t, labels, training)?;
        let (out, variance) = self.split_output(out);
        let ab_b = BatchScalar::PerSample(ab_t);
        let target = match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::Sample => x0r.clone(),
            Prediction::VPrediction => v_from_eps_x0(noise, x0r.clone(), &ab_b),
        };
        let sq = (out.clone() - target).powf_scalar(2.0);
        let simple: Tensor<B, 1> = match self.weighting {
            Weighting::None => sq.mean(),
            w => {
                let weights: Vec<f32> = draw
                    .ts
                    .iter()
                    .map(|&i| w.weight(snr(self.alpha_bars[i as usize]), self.prediction) as f32)
                    .collect();
                let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), dev);
                let per_example: Tensor<B, 1> = sq.reshape([n as i32, -1]).mean_dim(1).reshape([n]);
                (per_example * w).mean()
            }
        };
        let eps = to_epsilon(out, x_t.clone(), &ab_b, self.prediction);
        let mut terms = vec![("loss.simple".to_owned(), simple)];
        if let Some(v_raw) = variance {
            // hybrid objective: (T / 1000) · L_t, the mean behind a stop-gradient
            let t_count = self.alpha_bars.len() as f64;
            let vb = vlb_terms(
                x0r,
                x_t.clone(),
                eps.clone().detach(),
                v_raw,
                &draw.ts,
                self.alpha_bars,
            )
            .mean()
            .mul_scalar(t_count / 1000.0);
            terms.push(("loss.vlb".to_owned(), vb));
        }
        Ok((terms, eps, x_t))
    }

    /// The base objective (weighted L_simple, plus L_vlb for a learned
    /// variance) of the current student on every example of
    /// `held` (no plugin losses, no gradients kept), with timesteps and
    /// noise from a fixed seed so values at different steps compare.
    pub(super) fn validation<B: AutodiffBackend, const D: usize>(
        &self,
        student: &Student<B>,
        held: &Dataset,
        seed: u64,
        batch: usize,
        device: &B::Device,
    ) -> Result<f64> {
        let params = student.adapted(student.params()?, false)?;
        let mut rng = step_rng(seed, u64::MAX - 2);
        let idx: Vec<usize> = (0..held.len()).collect();
        let mut sum = 0.0;
        for chunk in idx.chunks(batch.max(1)) {
            let (x0, labels) = held.to_tensor::<B, D>(chunk, device);
            if student.condition.is_some() {
                let images = Ranked::new(x0.clone()).at::<4>("a held-out batch")?;
                student.set_condition(Some(student.encode(images, None)?));
            }
            let draw = Draw::new(&mut rng, &x0, self.alpha_bars.len(), device);
            let (terms, _, _) = self.simple::<B, D>(student, &params, &x0, labels, &draw, false)?;
            // the base objective: L_simple (+ L_vlb for a learned variance)
            let total = terms
                .into_iter()
                .map(|(_, t)| Tensor::from_inner(t.inner()).reshape([1]))
                .reduce(|a: Tensor<B, 1>, b| a + b)
                .expect("L_simple is always there");
            sum += super::support::scalar(&total) * chunk.len() as f64;
        }
        Ok(sum / held.len().max(1) as f64)
    }
}
