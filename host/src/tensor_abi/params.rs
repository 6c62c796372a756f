//! Plugin parameters held by the host: their values (autodiff leaves), owners
//! and optimizer state.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use dtx_plugin_api::abi::{AbiError, ParamId};

use crate::train::optim::{Adam, AdamConfig, AdamState};

/// One registered parameter.
pub struct ParamEntry<B: AutodiffBackend> {
    /// Full name: `plugin.<plugin>.<name>`.
    pub name: String,
    /// The plugin that registered it.
    pub owner: String,
    /// Current value: a leaf that requires gradients.
    pub value: FloatTensor<B>,
    /// Adam moments, once it has been stepped.
    pub adam: Option<AdamState<B>>,
}

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
    /// Adds a parameter; names are unique.
    pub fn register(
        &mut self,
        owner: &str,
        name: &str,
        value: FloatTensor<B>,
    ) -> Result<ParamId, AbiError> {
        let full = format!("plugin.{owner}.{name}");
        if self.entries.iter().any(|e| e.name == full) {
            return Err(AbiError::other(format!(
                "parameter `{full}` is registered twice"
            )));
        }
        let value = B::float_set_require_grad(value, true);
        self.entries.push(ParamEntry {
            name: full,
            owner: owner.to_owned(),
            value,
            adam: None,
        });
        Ok(ParamId(self.entries.len() as u64 - 1))
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
        let adam = Adam::new(config);
        for &id in ids {
            adam.step_param(self.get_mut(id)?, &grads);
        }
        Ok(())
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
