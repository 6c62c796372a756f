//! What the denoisers are built from. A network is built once, from its
//! config, into structs of blocks and layers ([`layers`]); each layer
//! declares its parameters through [`Vars`] under the checkpoint's own keys
//! (`vars.pp("norm1").param("weight", [c])`, as candle's `VarBuilder::pp`
//! does) and keeps a typed handle, [`Param<D>`], its index in the network's
//! [`Catalogue`]. A forward reads the tensors of a [`Weights`] table by
//! those handles: no key is built and no name is looked up during a
//! forward, and a table is only made ([`Weights::gather`]) when every key
//! of the catalogue is present with its shape, so a missing or misshapen
//! weight is an error naming the key and both shapes before anything runs.

pub(crate) mod hooks;
pub(crate) mod layers;
#[cfg(test)]
mod layers_tests;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use std::cell::RefCell;
use std::fmt::Display;

/// A parameter of rank `D`: its index in the network's [`Catalogue`],
/// fixed when the network is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<const D: usize>(usize);

/// Every parameter of a network, under its checkpoint key with its PyTorch
/// shape, in the order the network declared them (the order weights are
/// initialised and registered in).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalogue {
    entries: Vec<(String, Vec<usize>)>,
}

impl Catalogue {
    /// The `(key, shape)` pairs, in declaration order.
    pub fn entries(&self) -> &[(String, Vec<usize>)] {
        &self.entries
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The position of `key` in the catalogue (and in a [`Weights`] table).
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == key)
    }

    /// The shape of `key`, if the network has it.
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.as_slice())
    }
}

/// Declares parameters under a key prefix while a network is built.
pub(crate) struct Vars<'a> {
    prefix: String,
    catalogue: &'a RefCell<Catalogue>,
}

impl<'a> Vars<'a> {
    /// Declarations at the top level of `catalogue`.
    pub(crate) fn root(catalogue: &'a RefCell<Catalogue>) -> Self {
        Vars {
            prefix: String::new(),
            catalogue,
        }
    }

    /// Declarations under `<prefix>.<name>`.
    pub(crate) fn pp(&self, name: impl Display) -> Vars<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Vars {
            prefix,
            catalogue: self.catalogue,
        }
    }

    /// Declares parameter `<prefix>.<name>` of `shape`.
    pub(crate) fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<D> {
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        };
        let mut c = self.catalogue.borrow_mut();
        c.entries.push((key, shape.to_vec()));
        Param(c.entries.len() - 1)
    }
}

/// Why a [`Weights`] table cannot be made for a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    /// A parameter of the network has no tensor.
    #[error("weight `{key}` (shape {expected:?}) is missing")]
    Missing {
        /// Checkpoint key.
        key: String,
        /// The shape the network declares.
        expected: Vec<usize>,
    },
    /// A tensor's shape is not the one the network declares.
    #[error("weight `{key}` has shape {found:?}; the network expects {expected:?}")]
    Shape {
        /// Checkpoint key.
        key: String,
        /// The shape the network declares.
        expected: Vec<usize>,
        /// The tensor's shape.
        found: Vec<usize>,
    },
}

/// One tensor for every parameter of a network, in its [`Catalogue`]'s
/// order: what a forward reads.
#[derive(Debug, Clone)]
pub struct Weights<B: Backend> {
    tensors: Vec<FloatTensor<B>>,
}

impl<B: Backend> Weights<B> {
    /// The table for `catalogue`, each key's tensor from `find`; an error
    /// for the first key without one or with another shape.
    pub fn gather(
        catalogue: &Catalogue,
        mut find: impl FnMut(&str) -> Option<FloatTensor<B>>,
    ) -> Result<Self, WeightsError> {
        let mut tensors = Vec::with_capacity(catalogue.len());
        for (key, expected) in catalogue.entries() {
            let t = find(key).ok_or_else(|| WeightsError::Missing {
                key: key.clone(),
                expected: expected.clone(),
            })?;
            let found = t.shape().to_vec();
            if &found != expected {
                return Err(WeightsError::Shape {
                    key: key.clone(),
                    expected: expected.clone(),
                    found,
                });
            }
            tensors.push(t);
        }
        Ok(Weights { tensors })
    }

    /// Each tensor passed through `f` (e.g. detached), in the same order.
    pub fn map(&self, f: impl Fn(FloatTensor<B>) -> FloatTensor<B>) -> Self {
        Weights {
            tensors: self.tensors.iter().cloned().map(f).collect(),
        }
    }

    /// The tensor at position `i` of the catalogue (rank-free: a weight's
    /// rank is its layer's). Panics when `i` is out of range.
    pub fn tensor(&self, i: usize) -> &FloatTensor<B> {
        &self.tensors[i]
    }

    /// Replaces the tensor at position `i` (the caller checked its shape:
    /// a plugin's `weights` return is, in `plugins/instance.rs`).
    pub fn set(&mut self, i: usize, t: FloatTensor<B>) {
        self.tensors[i] = t;
    }

    /// The same values outside every autodiff graph (no history, no
    /// gradient): for forwards that nothing differentiates.
    pub fn untracked(&self) -> Self
    where
        B: burn::tensor::backend::AutodiffBackend,
    {
        self.map(crate::tensor_abi::untracked::<B>)
    }

    /// Parameter `p` as a rank-`D` tensor.
    pub(crate) fn get<const D: usize>(&self, p: Param<D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(self.tensors[p.0].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_abi::CpuBackend as B;

    #[test]
    fn vars_declare_keys_under_their_prefix_in_order() {
        let c = RefCell::new(Catalogue::default());
        let root = Vars::root(&c);
        let a = root.param::<1>("scale", [3]);
        let block = root.pp("down_blocks").pp(1).pp("resnets.0");
        let w = block.pp("conv1").param::<4>("weight", [8, 4, 3, 3]);
        let c = c.into_inner();
        assert_eq!(
            c.entries(),
            [
                ("scale".to_owned(), vec![3]),
                (
                    "down_blocks.1.resnets.0.conv1.weight".to_owned(),
                    vec![8, 4, 3, 3]
                ),
            ]
        );
        assert_eq!((a, w), (Param(0), Param(1)));
        assert_eq!(c.shape_of("scale"), Some(&[3][..]));
    }

    #[test]
    fn gather_names_a_missing_or_misshapen_key() {
        let c = RefCell::new(Catalogue::default());
        let p = Vars::root(&c).pp("lin").param::<2>("weight", [2, 3]);
        let c = c.into_inner();
        let dev = Default::default();
        let t = |s: [usize; 2]| Tensor::<B, 2>::zeros(s, &dev).into_primitive().tensor();
        assert_eq!(
            Weights::<B>::gather(&c, |_| None).unwrap_err(),
            WeightsError::Missing {
                key: "lin.weight".into(),
                expected: vec![2, 3]
            }
        );
        let e = Weights::<B>::gather(&c, |_| Some(t([3, 2]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "weight `lin.weight` has shape [3, 2]; the network expects [2, 3]"
        );
        let w = Weights::<B>::gather(&c, |k| (k == "lin.weight").then(|| t([2, 3]))).unwrap();
        assert_eq!(w.get(p).dims(), [2, 3]);
    }
}
