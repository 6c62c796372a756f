//! The ABI benchmark's block written directly in burn, mirroring the `block`
//! plugin op for op (same reshapes, same head split), so that timing the two
//! measures the ABI and nothing else. A test checks they agree numerically.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorPrimitive, activation};
use dtx::tensor_abi::Session;

/// The block's parameters, read from the session's parameter store.
pub struct BlockParams<B: AutodiffBackend> {
    /// `attn.{q,k,v,out}.{weight,bias}` in that order.
    pub attn: Vec<(Tensor<B, 2>, Tensor<B, 1>)>,
    /// `mlp.{0,1}.{weight,bias}`.
    pub mlp: Vec<(Tensor<B, 2>, Tensor<B, 1>)>,
}

fn param<B: AutodiffBackend, const D: usize>(s: &Session<B>, name: &str) -> Tensor<B, D> {
    let full = format!("plugin.block.{name}");
    let id = s
        .params
        .ids()
        .into_iter()
        .find(|&id| s.params.get(id).unwrap().name == full)
        .unwrap_or_else(|| panic!("no {full}"));
    Tensor::from_primitive(TensorPrimitive::Float(
        s.params.get(id).unwrap().value.clone(),
    ))
}

impl<B: AutodiffBackend> BlockParams<B> {
    /// Reads the parameters the plugin registered.
    pub fn from_session() -> Self {
        Session::<B>::with(|s| {
            let lin = |n: &str| {
                (
                    param::<B, 2>(s, &format!("{n}.weight")),
                    param::<B, 1>(s, &format!("{n}.bias")),
                )
            };
            BlockParams {
                attn: ["attn.q", "attn.k", "attn.v", "attn.out"]
                    .iter()
                    .map(|n| lin(n))
                    .collect(),
                mlp: ["mlp.0", "mlp.1"].iter().map(|n| lin(n)).collect(),
            }
        })
        .expect("a session")
    }
}

fn linear<B: AutodiffBackend>(
    x: Tensor<B, 3>,
    (w, b): &(Tensor<B, 2>, Tensor<B, 1>),
) -> Tensor<B, 3> {
    x.matmul(w.clone().unsqueeze()) + b.clone().unsqueeze()
}

/// The block on `h` `[B, C, H, W]` with context `cond` `[B, M, C]`, one head.
pub fn block<B: AutodiffBackend>(
    h: Tensor<B, 4>,
    cond: Tensor<B, 3>,
    p: &BlockParams<B>,
) -> Tensor<B, 4> {
    let [b, c, hh, ww] = h.dims();
    let n = hh * ww;
    let m = cond.dims()[1];
    let x = h.reshape([b, c, n]).swap_dims(1, 2); // [B, N, C]
    let split = |t: Tensor<B, 3>, len: usize| t.reshape([b, len, 1, c]).permute([0, 2, 1, 3]); // [B, 1, L, C]
    let q = split(linear(x.clone(), &p.attn[0]), n);
    let k = split(linear(cond.clone(), &p.attn[1]), m);
    let v = split(linear(cond, &p.attn[2]), m);
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (c as f32).sqrt());
    let a = activation::softmax(scores, 3).matmul(v); // [B, 1, N, C]
    let a = a.permute([0, 2, 1, 3]).reshape([b, n, c]);
    let x = x.clone() + linear(a, &p.attn[3]);
    let x = x.clone() + linear(activation::gelu(linear(x, &p.mlp[0])), &p.mlp[1]);
    x.swap_dims(1, 2).reshape([b, c, hh, ww])
}
