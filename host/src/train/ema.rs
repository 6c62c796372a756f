//! Exponential moving average of the trained parameters (base and plugins):
//! `θ̄ ← d · θ̄ + (1 − d) · θ` after every optimizer step; sampling uses θ̄ by
//! default. ("Denoising Diffusion Probabilistic Models", Ho et al. 2020,
//! Appendix B, uses d = 0.9999.)

use crate::tensor_abi::ParamStore;
use burn::tensor::Scalar;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use std::collections::BTreeMap;

/// The averaged values, by parameter name.
pub struct Ema<B: AutodiffBackend> {
    /// Decay `d`.
    pub decay: f32,
    /// θ̄ per trained parameter (inner backend: no graph).
    pub shadow: BTreeMap<String, FloatTensor<B::InnerBackend>>,
}

impl<B: AutodiffBackend> Ema<B> {
    /// Starts at the current values of the trained parameters.
    pub fn new(decay: f32, store: &ParamStore<B>) -> Self {
        let shadow = store
            .entries()
            .iter()
            .filter(|e| e.trainable)
            .map(|e| (e.name.clone(), B::inner(e.value.clone())))
            .collect();
        Ema { decay, shadow }
    }

    /// One update from the store's current values.
    pub fn update(&mut self, store: &ParamStore<B>) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        for e in store.entries().iter().filter(|e| e.trainable) {
            let theta = B::inner(e.value.clone());
            let next = match self.shadow.remove(&e.name) {
                // One pass per parameter on the CPU backend, bit for bit
                // what `step_ops` computes.
                Some(avg) => crate::kernels::adam::ema_tensors::<I<B>>(self.decay, avg, &theta)
                    .unwrap_or_else(|avg| step_ops::<I<B>>(self.decay, avg, theta)),
                None => theta,
            };
            self.shadow.insert(e.name.clone(), next);
        }
    }

    /// The store's values with the trained ones replaced by their averages
    /// (for sampling), by name.
    pub fn values(&self, store: &ParamStore<B>) -> Vec<(String, FloatTensor<B>)> {
        store
            .entries()
            .iter()
            .map(|e| match self.shadow.get(&e.name) {
                Some(avg) => (e.name.clone(), B::from_inner(avg.clone())),
                None => (
                    e.name.clone(),
                    crate::tensor_abi::untracked::<B>(e.value.clone()),
                ),
            })
            .collect()
    }
}

/// `avg·d + θ·(1 − d)` op by op, on any backend.
fn step_ops<I: Backend>(decay: f32, avg: FloatTensor<I>, theta: FloatTensor<I>) -> FloatTensor<I> {
    I::float_add(
        I::float_mul_scalar(avg, Scalar::from(decay)),
        I::float_mul_scalar(theta, Scalar::from(1.0 - decay)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_abi::CpuBackend as B;
    use burn::tensor::{Tensor, TensorPrimitive};

    #[test]
    fn ema_follows_its_recurrence() {
        let dev = Default::default();
        let mut store = ParamStore::<B>::default();
        let id = store
            .register_base(
                "w",
                Tensor::<B, 1>::from_floats([1.0, 2.0], &dev)
                    .into_primitive()
                    .tensor(),
                true,
            )
            .unwrap();
        store
            .register_base(
                "frozen",
                Tensor::<B, 1>::from_floats([5.0], &dev)
                    .into_primitive()
                    .tensor(),
                false,
            )
            .unwrap();
        let mut ema = Ema::new(0.9, &store);
        assert_eq!(ema.shadow.len(), 1, "only trained parameters are averaged");
        store.get_mut(id).unwrap().value = Tensor::<B, 1>::from_floats([3.0, 4.0], &dev)
            .into_primitive()
            .tensor();
        ema.update(&store);
        let avg = Tensor::<<B as AutodiffBackend>::InnerBackend, 1>::from_primitive(
            TensorPrimitive::Float(ema.shadow["w"].clone()),
        );
        // 0.9·[1, 2] + 0.1·[3, 4] = [1.2, 2.2]
        let v = avg.into_data().to_vec::<f32>().unwrap();
        assert!(
            (v[0] - 1.2).abs() < 1e-6 && (v[1] - 2.2).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn the_one_pass_update_is_bit_for_bit_the_op_by_op_one() {
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        let random = |seed: u64| {
            <I as Backend>::seed(&dev, seed);
            Tensor::<I, 1>::random([70_000], burn::tensor::Distribution::Normal(0.0, 3.0), &dev)
                .into_primitive()
                .tensor()
        };
        for decay in [0.9999f32, 0.99, 0.5] {
            let (mut fused, mut ops) = (random(1), random(1));
            for step in 0..3 {
                let theta = random(10 + step);
                fused = crate::kernels::adam::ema_tensors::<I>(decay, fused, &theta)
                    .unwrap_or_else(|_| panic!("the flex backend has the kernel"));
                ops = step_ops::<I>(decay, ops, theta);
            }
            let bits = |t: FloatTensor<I>| -> Vec<u32> {
                Tensor::<I, 1>::from_primitive(TensorPrimitive::Float(t))
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert!(bits(fused) == bits(ops), "decay {decay}");
        }
    }
}
