//! Parameters held by the host — the base model's and every plugin's — with
//! their values (autodiff leaves), owners, whether they train, and optimizer
//! state. One store serves the optimizer, the EMA and checkpoints alike.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use dtx_plugin_api::abi::{AbiError, ParamId};

use super::optim::{Adam, AdamConfig, AdamState};

/// One registered parameter.
pub struct ParamEntry<B: AutodiffBackend> {
    /// Full name: `plugin.<plugin>.<name>`, or the checkpoint key for base
    /// parameters (`down.0.res.0.fc1.weight`).
    pub name: String,
    /// The plugin that registered it, or [`BASE_OWNER`].
    pub owner: String,
    /// Current value: a leaf that requires gradients when it trains.
    pub value: FloatTensor<B>,
    /// Whether the optimizer updates it.
    pub trainable: bool,
    /// Adam moments, once it has been stepped.
    pub adam: Option<AdamState<B>>,
}

/// Owner of the base model's parameters.
pub const BASE_OWNER: &str = "base";

/// Every parameter registered in a session, in registration order.
pub struct ParamStore<B: AutodiffBackend> {
    entries: Vec<ParamEntry<B>>,
}

impl<B: AutodiffBackend> Default for ParamStore<B> {
    fn default() -> Self {
        ParamStore {
            entries: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend> ParamStore<B> {
    /// Adds a plugin parameter, named `plugin.<owner>.<name>`; it trains.
    pub fn register(
        &mut self,
        owner: &str,
        name: &str,
        value: FloatTensor<B>,
    ) -> Result<ParamId, AbiError> {
        self.insert(format!("plugin.{owner}.{name}"), owner, value, true)
    }

    /// Adds a base-model parameter under its checkpoint key.
    pub fn register_base(
        &mut self,
        name: &str,
        value: FloatTensor<B>,
        trainable: bool,
    ) -> Result<ParamId, AbiError> {
        self.insert(name.to_owned(), BASE_OWNER, value, trainable)
    }

    fn insert(
        &mut self,
        full: String,
        owner: &str,
        value: FloatTensor<B>,
        trainable: bool,
    ) -> Result<ParamId, AbiError> {
        if self.entries.iter().any(|e| e.name == full) {
            return Err(AbiError::other(format!(
                "parameter `{full}` is registered twice"
            )));
        }
        let value = B::float_set_require_grad(B::float_detach(value), trainable);
        self.entries.push(ParamEntry {
            name: full,
            owner: owner.to_owned(),
            value,
            trainable,
            adam: None,
        });
        Ok(ParamId(self.entries.len() as u64 - 1))
    }

    /// The id of the parameter called `name` (full name).
    pub fn by_name(&self, name: &str) -> Option<ParamId> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(|i| ParamId(i as u64))
    }

    /// Every entry, in registration order.
    pub fn entries(&self) -> &[ParamEntry<B>] {
        &self.entries
    }

    /// Mutable entries.
    pub fn entries_mut(&mut self) -> &mut [ParamEntry<B>] {
        &mut self.entries
    }

    /// Ids of the parameters that train.
    pub fn trainable_ids(&self) -> Vec<ParamId> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].trainable)
            .map(|i| ParamId(i as u64))
            .collect()
    }

    /// The entry behind `id`.
    pub fn get(&self, id: ParamId) -> Result<&ParamEntry<B>, AbiError> {
        self.entries
            .get(id.0 as usize)
            .ok_or_else(|| AbiError::other(format!("unknown parameter id {}", id.0)))
    }

    /// Mutable entry behind `id`.
    pub fn get_mut(&mut self, id: ParamId) -> Result<&mut ParamEntry<B>, AbiError> {
        self.entries
            .get_mut(id.0 as usize)
            .ok_or_else(|| AbiError::other(format!("unknown parameter id {}", id.0)))
    }

    /// Ids of every parameter `owner` registered.
    pub fn ids_of(&self, owner: &str) -> Vec<ParamId> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].owner == owner)
            .map(|i| ParamId(i as u64))
            .collect()
    }

    /// Every id.
    pub fn ids(&self) -> Vec<ParamId> {
        (0..self.entries.len() as u64).map(ParamId).collect()
    }

    /// One Adam(W) step on `ids` for the scalar `loss`: backward through the
    /// whole graph (plugin ops included), then update each parameter.
    pub fn step(
        &mut self,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        config: AdamConfig,
    ) -> Result<(), AbiError> {
        self.step_clipped(loss, ids, config, None).map(|_| ())
    }

    /// [`ParamStore::step`] with the gradient's global L2 norm over `ids`
    /// clipped to `max_norm` (PyTorch's `clip_grad_norm_`: every gradient
    /// scaled by `min(1, max_norm / (norm + 1e-6))`). Returns the norm before
    /// clipping.
    pub fn step_clipped(
        &mut self,
        loss: FloatTensor<B>,
        ids: &[ParamId],
        config: AdamConfig,
        max_norm: Option<f32>,
    ) -> Result<f32, AbiError> {
        use burn::tensor::TensorMetadata;
        if loss.shape().num_elements() != 1 {
            return Err(AbiError::new(
                dtx_plugin_api::abi::ErrorKind::SHAPE,
                format!(
                    "the loss must be a scalar, got shape {:?}",
                    loss.shape().to_vec()
                ),
            ));
        }
        let grads = B::backward(loss);
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let mut sq = 0f64;
        for &id in ids {
            if let Some(g) = B::grad(&self.get(id)?.value, &grads) {
                let s = I::<B>::float_sum(I::<B>::float_mul(g.clone(), g));
                let d = burn::tensor::read_sync(I::<B>::float_into_data(s))
                    .map_err(|e| AbiError::other(format!("reading a gradient norm: {e:?}")))?;
                sq += d.iter::<f64>().next().unwrap_or(0.0);
            }
        }
        let norm = sq.sqrt() as f32;
        let scale = match max_norm {
            Some(m) if norm > m => m / (norm + 1e-6),
            _ => 1.0,
        };
        let adam = Adam::new(config);
        for &id in ids {
            adam.step_param(self.get_mut(id)?, &grads, scale);
        }
        Ok(norm)
    }

    /// Every value by name as a rank-1-typed tensor (its data keeps the
    /// stored shape; callers reshape by their layout), for a network that
    /// reads its weights by name.
    pub fn named_tensors(&self) -> std::collections::HashMap<String, burn::tensor::Tensor<B, 1>> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
                        e.value.clone(),
                    )),
                )
            })
            .collect()
    }

    /// Number of scalars owned by `owner`.
    pub fn count_of(&self, owner: &str) -> usize {
        use burn::tensor::TensorMetadata;
        self.entries
            .iter()
            .filter(|e| e.owner == owner)
            .map(|e| e.value.shape().num_elements())
            .sum()
    }
}
