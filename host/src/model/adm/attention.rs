//! guided-diffusion's `AttentionBlock` (`unet.py`; Dhariwal & Nichol 2021,
//! arXiv:2105.05233, Section 3, after Nichol & Dhariwal 2021,
//! arXiv:2102.09672): self-attention over the `H·W` positions with one fused
//! 1×1 `qkv` projection, split into heads by `QKVAttentionLegacy` or
//! `QKVAttention`.

use super::config::{AttentionOrder, EPS, GROUPS};
use crate::model::nn::layers::{GroupNorm, attend};
use crate::model::nn::{Param, Vars, Weights};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// A `Conv1d` of kernel 1 (weight `[out, in, 1]`) applied to `[N, in]` rows:
/// `x · W[:, :, 0]ᵀ + b`.
#[derive(Debug, Clone, PartialEq)]
struct Conv1x1 {
    weight: Param<3>,
    bias: Param<1>,
}

impl Conv1x1 {
    fn new(vars: &Vars, c_out: usize, c_in: usize) -> Self {
        Conv1x1 {
            weight: vars.param("weight", [c_out, c_in, 1]),
            bias: vars.param("bias", [c_out]),
        }
    }

    fn forward<B: AutodiffBackend>(&self, w: &Weights<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let weight = w.get(self.weight);
        let [o, i, _] = weight.dims();
        x.matmul(weight.reshape([o, i]).transpose()) + w.get(self.bias).unsqueeze()
    }
}

/// `AttentionBlock` with `heads` heads of `C / heads` channels:
///
/// ```text
/// u = norm(x) as [B, HW, C]
/// [q, k, v] = qkv(u), split into heads (legacy: per head [q_h, k_h, v_h];
///             new: [q, k, v], each split into heads)
/// a = softmax(q kᵀ / sqrt(C / heads)) v, heads concatenated
/// o = proj_out(a) as [B, C, H, W]                   -> the `….attn.{j}.branch` point
/// out = x + o
/// ```
///
/// guided-diffusion scales q and k by `(C / heads)^(-1/4)` each before the
/// product; that is the same `1 / sqrt(C / heads)` up to rounding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttentionBlock {
    norm: GroupNorm,
    qkv: Conv1x1,
    proj_out: Conv1x1,
    heads: usize,
    order: AttentionOrder,
}

impl AttentionBlock {
    /// A block over `c` channels declared under `vars`.
    pub(crate) fn new(vars: &Vars, c: usize, heads: usize, order: AttentionOrder) -> Self {
        AttentionBlock {
            norm: GroupNorm::new(&vars.pp("norm"), c, GROUPS, EPS),
            qkv: Conv1x1::new(&vars.pp("qkv"), 3 * c, c),
            proj_out: Conv1x1::new(&vars.pp("proj_out"), c, c),
            heads,
            order,
        }
    }

    /// The block's forward with `branch` applied to `proj_out(a)`, as
    /// `[B, C, H, W]`, before the residual sum: `out = x + branch(o)` (an
    /// identity `branch`: guided-diffusion's `x + o`, op for op).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`; `branch` takes and returns `[B, C, H, W]`;
    ///   output: `[B, C, H, W]`
    pub(crate) fn forward_with<B: AutodiffBackend, E>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        branch: impl FnOnce(Tensor<B, 4>) -> Result<Tensor<B, 4>, E>,
    ) -> Result<Tensor<B, 4>, E> {
        let [b, c, h, wd] = x.dims();
        let (n, heads) = (h * wd, self.heads);
        let d = c / heads;
        let u = self
            .norm
            .forward(w, x.clone())
            .reshape([b, c, n])
            .swap_dims(1, 2)
            .reshape([b * n, c]); // [B·HW, C]
        let qkv = self.qkv.forward(w, u); // [B·HW, 3C]
        // The 3C channels as [.., heads, 3, d] (legacy) or [.., 3, heads, d].
        let (split_dim, shape) = match self.order {
            AttentionOrder::Legacy => (3, [b, n, heads, 3, d]),
            AttentionOrder::New => (2, [b, n, 3, heads, d]),
        };
        let qkv = qkv.reshape(shape);
        let part = |i: usize| {
            qkv.clone()
                .narrow(split_dim, i, 1)
                .reshape([b, n, heads, d])
                .swap_dims(1, 2) // [B, heads, HW, d]
        };
        let a = attend(part(0), part(1), part(2)) // [B, heads, HW, d]
            .swap_dims(1, 2)
            .reshape([b * n, c]); // head-major channels, as `a.reshape(bs, -1, length)`
        let o = self
            .proj_out
            .forward(w, a) // [B·HW, C]
            .reshape([b, n, c])
            .swap_dims(1, 2)
            .reshape([b, c, h, wd]);
        Ok(x + branch(o)?)
    }
}
