//! Parameters held by the host — the base model's and every plugin's — with
//! their values (autodiff leaves), owners and whether they train: the table
//! a plugin's `ParamId`s index. One store serves the optimizer (whose moments
//! are `train::optim`'s, by these ids), the EMA and checkpoints alike.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use dtx_plugin_api::abi::{AbiError, ParamId};

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

    /// Makes the parameter `id` train (a plugin's recipe asks for it).
    pub fn set_trainable(&mut self, id: ParamId) -> Result<(), AbiError> {
        let e = self.get_mut(id)?;
        if !e.trainable {
            e.trainable = true;
            e.value = B::float_set_require_grad(B::float_detach(e.value.clone()), true);
        }
        Ok(())
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
