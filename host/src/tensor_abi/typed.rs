//! The typed side of the boundary: what the host services and hook calls
//! hand the layers above instead of the rank-free primitive. A handle's
//! tensor is checked and converted here, once; above `tensor_abi` and
//! `plugins`, tensors carry their rank.

use super::session::Stored;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorMetadata, TensorPrimitive};
use dtx_plugin_api::abi::{AbiError, ErrorKind};

/// A float tensor whose rank a service call knows only at run time: a
/// batch of points `[N, F]` or of images `[N, C, H, W]`, or an activation
/// of either rank (a `features` point; `temb` is `[N, E]`).
#[derive(Debug, Clone)]
pub enum Ranked<B: Backend> {
    /// Rank 2.
    Two(Tensor<B, 2>),
    /// Rank 4.
    Four(Tensor<B, 4>),
}

impl<B: Backend> Ranked<B> {
    /// `t` of rank `D` (2 or 4; another rank is a caller's bug: it panics).
    pub fn new<const D: usize>(t: Tensor<B, D>) -> Self {
        match D {
            2 => Ranked::Two(Tensor::from_primitive(t.into_primitive())),
            4 => Ranked::Four(Tensor::from_primitive(t.into_primitive())),
            _ => panic!("a batch or activation has rank 2 or 4, not {D}"),
        }
    }

    /// A service's float input `p`, of rank 2 or 4; another rank is an
    /// error naming `what` (the service and argument).
    pub fn from_float(what: &str, p: FloatTensor<B>) -> Result<Self, AbiError> {
        let p = TensorPrimitive::Float(p);
        match p.shape().num_dims() {
            2 => Ok(Ranked::Two(Tensor::from_primitive(p))),
            4 => Ok(Ranked::Four(Tensor::from_primitive(p))),
            r => Err(AbiError::new(
                ErrorKind::SHAPE,
                format!(
                    "{what} has rank {r} (shape {:?}); expected rank 2 or 4",
                    p.shape().to_vec()
                ),
            )),
        }
    }

    /// The tensor at rank `D`; another rank is an error naming `what`.
    pub fn at<const D: usize>(self, what: &str) -> Result<Tensor<B, D>, AbiError> {
        let (p, r) = match self {
            Ranked::Two(t) => (t.into_primitive(), 2),
            Ranked::Four(t) => (t.into_primitive(), 4),
        };
        if r != D {
            return Err(AbiError::new(
                ErrorKind::SHAPE,
                format!("{what} has rank {r}; this model's data has rank {D}"),
            ));
        }
        Ok(Tensor::from_primitive(p))
    }

    /// The primitive a handle holds.
    pub fn into_float(self) -> FloatTensor<B> {
        match self {
            Ranked::Two(t) => t.into_primitive().tensor(),
            Ranked::Four(t) => t.into_primitive().tensor(),
        }
    }

    /// Its shape.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Ranked::Two(t) => t.dims().to_vec(),
            Ranked::Four(t) => t.dims().to_vec(),
        }
    }
}

/// What each example is labelled with: its class (`[N]`), or a per-pixel
/// mask (`[N, H, W]`: a `<split>:masks` batch, or the masks samples are
/// conditioned on).
#[derive(Debug, Clone)]
pub enum Labels<B: Backend> {
    /// Class ids.
    Classes(Tensor<B, 1, Int>),
    /// Integer masks.
    Masks(Tensor<B, 3, Int>),
}

impl<B: Backend> Labels<B> {
    /// As a handle's tensor.
    pub fn stored(&self) -> Stored<B> {
        match self {
            Labels::Classes(t) => Stored::Int(t.clone().into_primitive()),
            Labels::Masks(t) => Stored::Int(t.clone().into_primitive()),
        }
    }
}

/// A float tensor of rank `D` from a handle's primitive `p`; another shape
/// rank is an error naming `what`.
pub fn float_at<B: Backend, const D: usize>(
    what: &str,
    p: FloatTensor<B>,
) -> Result<Tensor<B, D>, AbiError> {
    let r = p.shape().num_dims();
    if r != D {
        return Err(AbiError::new(
            ErrorKind::SHAPE,
            format!(
                "{what} has rank {r} (shape {:?}); expected rank {D}",
                p.shape().to_vec()
            ),
        ));
    }
    Ok(Tensor::from_primitive(TensorPrimitive::Float(p)))
}

/// Class ids `[N]` from a handle's primitive; another rank is an error
/// naming `what`.
pub fn classes_at<B: Backend>(what: &str, p: IntTensor<B>) -> Result<Tensor<B, 1, Int>, AbiError> {
    let r = p.shape().num_dims();
    if r != 1 {
        return Err(AbiError::new(
            ErrorKind::SHAPE,
            format!(
                "{what} has rank {r} (shape {:?}); class labels are one id per example, `[N]`",
                p.shape().to_vec()
            ),
        ));
    }
    Ok(Tensor::from_primitive(p))
}

/// Timesteps `[N]` as floats, from a float or integer handle; another
/// rank or a bool tensor is an error naming `what`.
pub fn timesteps<B: Backend>(what: &str, t: Stored<B>) -> Result<Tensor<B, 1>, AbiError> {
    match t {
        Stored::Float(p) => float_at::<B, 1>(what, p),
        Stored::Int(p) => Ok(classes_at::<B>(what, p)?.float()),
        Stored::Bool(_) => Err(AbiError::new(
            ErrorKind::SHAPE,
            format!("{what}: timesteps must be numbers, not bools"),
        )),
    }
}
