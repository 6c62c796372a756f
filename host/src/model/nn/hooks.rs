//! What a forward calls at its injection points ([`Hooks`]), the two hooks
//! the host needs everywhere ([`NoHooks`], [`Recorder`]), the names of a
//! layer's points ([`LayerPoints`]), and the rank cast between a forward
//! typed at the data's rank and a network's own.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// What a forward calls at its injection points, in forward order; each
/// returns the activation the rest of the network uses in place of the one
/// it was given (the run's plugins' `inject`, or recording for
/// `features`). The defaults pass every activation on unchanged.
pub trait Hooks<B: Backend, const D: usize> {
    /// What a hook may fail with.
    type Error;

    /// At `temb`: the time (and class) embedding, `[B, T]`.
    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, Self::Error> {
        Ok(temb)
    }

    /// At a block's point (`down.0.res.1`, `mid.res.0`, …): its output `h`,
    /// at the data's rank `D`, and the hooked `temb`. Also at a branch point
    /// (`down.0.res.1.branch`, `mid.attn.0.branch`, …): `h` is then the
    /// residual branch before its skip sum, and what the hook returns takes
    /// its place in the sum.
    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, Self::Error> {
        let _ = (point, temb);
        Ok(h)
    }
}

/// The injection points of one residual block and the attention that may
/// follow it in the same layer, named once when a network is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerPoints {
    /// `<level>.res.{j}`: the block's output.
    pub res: String,
    /// `<level>.res.{j}.branch`: its residual branch before the skip sum.
    pub branch: String,
    /// `<level>.attn.{j}.branch`: the attention's output before its
    /// residual sum (a name only, where the layer has no attention).
    pub attn_branch: String,
}

impl LayerPoints {
    /// The points of layer `j` of `level` (`down.0`, `mid`, `up.2`).
    pub(crate) fn new(level: &str, j: usize) -> Self {
        LayerPoints {
            res: format!("{level}.res.{j}"),
            branch: format!("{level}.res.{j}.branch"),
            attn_branch: format!("{level}.attn.{j}.branch"),
        }
    }
}

/// No hooks: every point passes its activation on.
pub struct NoHooks;

impl<B: Backend, const D: usize> Hooks<B, D> for NoHooks {
    type Error = std::convert::Infallible;
}

/// Hooks that keep the activations at chosen points (the `temb` point
/// included when chosen) and change nothing: what `features` and
/// `dtx model forward` read.
pub struct Recorder<B: Backend, const D: usize> {
    wanted: Vec<String>,
    /// Each chosen block point's activation, by point.
    pub blocks: std::collections::HashMap<String, Tensor<B, D>>,
    /// `temb`, when chosen.
    pub temb: Option<Tensor<B, 2>>,
}

impl<B: Backend, const D: usize> Recorder<B, D> {
    /// A recorder of `points`.
    pub fn new(points: &[String]) -> Self {
        Recorder {
            wanted: points.to_vec(),
            blocks: Default::default(),
            temb: None,
        }
    }
}

impl<B: Backend, const D: usize> Hooks<B, D> for Recorder<B, D> {
    type Error = std::convert::Infallible;

    fn temb(&mut self, temb: Tensor<B, 2>) -> Result<Tensor<B, 2>, Self::Error> {
        if self.wanted.iter().any(|p| p == "temb") {
            self.temb = Some(temb.clone());
        }
        Ok(temb)
    }

    fn block(
        &mut self,
        point: &str,
        h: Tensor<B, D>,
        _temb: &Tensor<B, 2>,
    ) -> Result<Tensor<B, D>, Self::Error> {
        if self.wanted.iter().any(|p| p == point) {
            self.blocks.insert(point.to_owned(), h.clone());
        }
        Ok(h)
    }
}

/// `t` typed at rank `Z`: the same tensor, at the rank the caller
/// dispatched on.
///
/// # Panics
/// When `A ≠ Z`: the engine instantiates a forward at the data's rank
/// (2 for the MLP, 4 for the U-Nets), so this is a host bug.
pub(crate) fn at_rank<B: Backend, const A: usize, const Z: usize>(t: Tensor<B, A>) -> Tensor<B, Z> {
    assert_eq!(
        A, Z,
        "a rank-{A} tensor where this network takes rank {Z} (a host bug: the engine dispatches on the data's rank)"
    );
    Tensor::from_primitive(t.into_primitive())
}
