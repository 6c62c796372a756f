//! guided-diffusion's `AttentionBlock` (`unet.py`; Dhariwal & Nichol 2021,
//! arXiv:2105.05233, Section 3, after Nichol & Dhariwal 2021,
//! arXiv:2102.09672): self-attention over the `H·W` positions with one fused
//! 1×1 `qkv` projection, split into heads by `QKVAttentionLegacy` or
//! `QKVAttention`.

use super::config::{AttentionOrder, EPS, GROUPS};
use crate::model::layers::{Params, attend, group_norm, param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// A `Conv1d` of kernel 1 (weight `[out, in, 1]`) on `[N, in]` rows:
/// `x · W[:, :, 0]ᵀ + b`.
fn conv1x1<B: AutodiffBackend>(params: &Params<B>, name: &str, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = param::<B, 3>(params, &format!("{name}.weight"));
    let [o, i, _] = w.dims();
    let b = param::<B, 1>(params, &format!("{name}.bias"));
    x.matmul(w.reshape([o, i]).transpose()) + b.unsqueeze()
}

/// `AttentionBlock` at `pre` with `heads` heads of `C / heads` channels:
///
/// ```text
/// u = norm(x) as [B, HW, C]
/// [q, k, v] = qkv(u), split into heads (legacy: per head [q_h, k_h, v_h];
///             new: [q, k, v], each split into heads)
/// a = softmax(q kᵀ / sqrt(C / heads)) v, heads concatenated
/// out = x + proj_out(a)
/// ```
///
/// guided-diffusion scales q and k by `(C / heads)^(-1/4)` each before the
/// product; that is the same `1 / sqrt(C / heads)` up to rounding.
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, H, W]`
pub(crate) fn attention<B: AutodiffBackend>(
    params: &Params<B>,
    pre: &str,
    x: Tensor<B, 4>,
    heads: usize,
    order: AttentionOrder,
) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let n = h * w;
    let d = c / heads;
    let u = group_norm(params, &format!("{pre}.norm"), x.clone(), GROUPS, EPS)
        .reshape([b, c, n])
        .swap_dims(1, 2)
        .reshape([b * n, c]); // [B·HW, C]
    let qkv = conv1x1(params, &format!("{pre}.qkv"), u); // [B·HW, 3C]
    // The 3C channels as [.., heads, 3, d] (legacy) or [.., 3, heads, d].
    let (split_dim, shape) = match order {
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
    let o = conv1x1(params, &format!("{pre}.proj_out"), a) // [B·HW, C]
        .reshape([b, n, c])
        .swap_dims(1, 2)
        .reshape([b, c, h, w]);
    x + o
}
