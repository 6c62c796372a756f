//! The kernels as autodiff ops of the CPU backend: group norm (+ SiLU),
//! SiLU and multi-head attention, each with its own backward step. Both return `None`
//! for any other backend, dtype or shape, and the caller runs its op-by-op
//! code instead (the operands are borrowed, so nothing is lost).

use super::attention::{self, Heads};
use super::gemm::{View, transpose_into};
use super::norm::{self, NormGeometry};
use super::scratch::Output;
use super::{AdTensor, back, cast, flex, values};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// The CPU backend's tensor behind `t`, when `B` is the CPU backend and `t`
/// is f32.
pub(super) fn cpu<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<AdTensor> {
    let prim = t.clone().into_primitive().tensor();
    cast::<_, AdTensor>(prim)
        .ok()
        .filter(|t| t.primitive.dtype() == DType::F32)
}

pub(super) fn ranked<B: Backend, const D: usize>(t: AdTensor) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(back(t)))
}

/// `silu(group_norm(x)·γ + β)` (or without SiLU) on the CPU backend, or
/// `None` (see the module docs).
///
/// # Shapes
/// - x: `[N, C, H, W]`; gamma, beta: `[C]`; output: `[N, C, H, W]`
pub fn group_norm<B: Backend>(
    x: &Tensor<B, 4>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Option<Tensor<B, 4>> {
    let [n, c, h, w] = x.dims();
    let g = NormGeometry {
        n,
        c,
        hw: h * w,
        groups,
        eps,
    };
    if !g.valid() || gamma.dims() != [c] || beta.dims() != [c] {
        return None;
    }
    let (x, gamma, beta) = (cpu(x)?, cpu(gamma)?, cpu(beta)?);
    let (out, mean, rstd) = norm::forward(
        &g,
        &values(&x.primitive)?,
        &values(&gamma.primitive)?,
        &values(&beta.primitive)?,
        silu,
    );
    let out = flex(out, vec![n, c, h, w]);
    let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let y = match GroupNormBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = NormSaved {
                x: x.primitive,
                gamma: gamma.primitive,
                beta: beta.primitive,
                mean,
                rstd,
                g,
                silu,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

#[derive(Debug)]
struct GroupNormBackward;

#[derive(Debug, Clone)]
struct NormSaved {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    g: NormGeometry,
    silu: bool,
}

impl Backward<Flex, 3> for GroupNormBackward {
    type State = NormSaved;

    fn backward(self, ops: Ops<NormSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let operands = (
            values(&s.x),
            values(&s.gamma),
            values(&s.beta),
            values(&dout),
        );
        let (Some(x), Some(gamma), Some(beta), Some(dout)) = operands else {
            unreachable!("the forward checked every operand is f32")
        };
        let (dx, dgamma, dbeta) =
            norm::backward(&s.g, &x, &gamma, &beta, &s.mean, &s.rstd, &dout, s.silu);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, s.x.shape().to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, vec![s.g.c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, vec![s.g.c]));
        }
    }
}

/// `x·sigmoid(x)` on the CPU backend, or `None` (see the module docs).
pub fn silu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let x = cpu(x)?;
    let shape = x.primitive.shape().to_vec();
    let out = flex(norm::silu(&values(&x.primitive)?), shape);
    let y = match SiluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(x.primitive, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

#[derive(Debug)]
struct SiluBackward;

impl Backward<Flex, 1> for SiluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let x = ops.state;
        let (Some(xv), Some(dv)) = (values(&x), values(&dout)) else {
            unreachable!("the forward checked the operand is f32")
        };
        if let Some(node) = node_x {
            grads.register::<Flex>(
                node.id,
                flex(norm::silu_backward(&xv, &dv), x.shape().to_vec()),
            );
        }
    }
}

/// Multi-head attention on the projections' layout (see
/// [`super::attention`]) on the CPU backend, or `None` (see the module
/// docs).
///
/// # Shapes
/// - q, k, v: `[B, N, heads·d]`; output: `[B, N, heads·d]`
pub fn attention<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    heads: usize,
) -> Option<Tensor<B, 3>> {
    let [b, n, width] = q.dims();
    if heads == 0 || !width.is_multiple_of(heads) || k.dims() != q.dims() || v.dims() != q.dims() {
        return None;
    }
    let g = Heads {
        b,
        n,
        heads,
        d: width / heads,
    };
    let (q, k, v) = (cpu(q)?, cpu(k)?, cpu(v)?);
    let (qv, kv, vv) = (
        values(&q.primitive)?,
        values(&k.primitive)?,
        values(&v.primitive)?,
    );
    let (out, lse) = attention::forward(&g, &qv, &kv, &vv);
    let out = flex(out, vec![b, n, width]);
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let y = match AttentionBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = AttentionSaved {
                q: q.primitive,
                k: k.primitive,
                v: v.primitive,
                lse,
                g,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Debug, Clone)]
struct AttentionSaved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    lse: Vec<f32>,
    g: Heads,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionSaved;

    fn backward(self, ops: Ops<AttentionSaved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let operands = (values(&s.q), values(&s.k), values(&s.v), values(&dout));
        let (Some(q), Some(k), Some(v), Some(dout)) = operands else {
            unreachable!("the forward checked every operand is f32")
        };
        let (dq, dk, dv) = attention::backward(&s.g, &q, &k, &v, &s.lse, &dout);
        let shape = s.q.shape().to_vec();
        for (node, grad) in nodes.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(grad, shape.clone()));
            }
        }
    }
}

/// `t.swap_dims(1, 2)` as a contiguous tensor on the CPU backend: one tiled
/// transpose per sample, the samples spread over rayon's threads (burn's
/// swapped view would be copied element by element, on one thread, by the
/// next reshape). A pure copy, so the values are exactly burn's. `None`
/// elsewhere (see the module docs).
///
/// # Shapes
/// - t: `[B, R, C]`; output: `[B, C, R]`
pub fn swap_rows_cols<B: Backend>(t: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let [b, r, c] = t.dims();
    let t = cpu(t)?;
    let out = flex(transposed(&values(&t.primitive)?, r, c), vec![b, c, r]);
    let y = match TransposeBackward
        .prepare::<NoCheckpointing>([t.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish([b, r, c], out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

/// Each `rows × cols` matrix of `src` transposed, in parallel.
fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Output::new(src.len());
    let size = (rows * cols).max(1);
    out.par_chunks_mut(size)
        .zip(src.par_chunks(size))
        .for_each(|(o, s)| transpose_into(View::row_major(s, rows, cols), o));
    out.into_vec()
}

#[derive(Debug)]
struct TransposeBackward;

impl Backward<Flex, 1> for TransposeBackward {
    type State = [usize; 3];

    fn backward(self, ops: Ops<[usize; 3], 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let [b, r, c] = ops.state;
        let Some(dv) = values(&dout) else {
            unreachable!("the forward checked the operand is f32")
        };
        if let Some(node) = node {
            grads.register::<Flex>(node.id, flex(transposed(&dv, c, r), vec![b, r, c]));
        }
    }
}

/// `Tensor::cat([a, b], 1)` on the CPU backend, contiguous, the samples
/// spread over rayon's threads; its backward gives each part a contiguous
/// gradient (burn's gives slices of the output's, which every later
/// element-wise op then walks index by index on one thread). A pure copy,
/// so the values are exactly burn's. `None` elsewhere, or when the dims
/// other than 1 differ.
///
/// # Shapes
/// - a: `[N, Ca, …]`; b: `[N, Cb, …]`; output: `[N, Ca + Cb, …]`
pub fn cat_channels<B: Backend, const D: usize>(
    a: &Tensor<B, D>,
    b: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let (da, db) = (a.dims(), b.dims());
    let same = (0..D).all(|i| i == 1 || da[i] == db[i]);
    if D < 2 || !same || da[0] == 0 {
        return None;
    }
    let (a, b) = (cpu(a)?, cpu(b)?);
    let (av, bv) = (values(&a.primitive)?, values(&b.primitive)?);
    let n = da[0];
    let split = Split {
        a: av.len() / n,
        b: bv.len() / n,
    };
    let mut out = Output::new(av.len() + bv.len());
    out.par_chunks_mut(split.a + split.b)
        .zip(
            av.par_chunks(split.a.max(1))
                .zip(bv.par_chunks(split.b.max(1))),
        )
        .for_each(|(o, (x, y))| {
            o[..split.a].copy_from_slice(x);
            o[split.a..].copy_from_slice(y);
        });
    let mut shape = da.to_vec();
    shape[1] += db[1];
    let out = flex(out.into_vec(), shape);
    let y = match CatBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let shapes = [a.primitive.shape().to_vec(), b.primitive.shape().to_vec()];
            prep.finish((split, shapes), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

/// The values per sample of each part of [`cat_channels`].
#[derive(Debug, Clone, Copy)]
struct Split {
    a: usize,
    b: usize,
}

#[derive(Debug)]
struct CatBackward;

impl Backward<Flex, 2> for CatBackward {
    type State = (Split, [Vec<usize>; 2]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let (split, [shape_a, shape_b]) = ops.state;
        let Some(dv) = values(&dout) else {
            unreachable!("the forward checked the operands are f32")
        };
        let part = |offset: usize, len: usize| -> Vec<f32> {
            let mut out = Output::new(dv.len() / (split.a + split.b) * len);
            out.par_chunks_mut(len.max(1))
                .zip(dv.par_chunks(split.a + split.b))
                .for_each(|(o, d)| o.copy_from_slice(&d[offset..][..len]));
            out.into_vec()
        };
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, flex(part(0, split.a), shape_a));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex(part(split.a, split.b), shape_b));
        }
    }
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
