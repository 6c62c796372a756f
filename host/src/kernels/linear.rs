//! A linear layer, `y = x Wᵀ + b` with PyTorch's weight layout `[out, in]`,
//! as one op of the CPU backend with its own backward step:
//!
//! ```text
//! dx = dy W        dW = dyᵀ x        db = Σ_rows dy
//! ```
//!
//! Forward and dx go over blocks of rows in parallel, each GEMM on one
//! thread; dW is one GEMM over all rows, threaded inside (it splits the
//! output, not the sum, so the result does not depend on the thread
//! count). Burn's version is a matmul whose output the calling thread
//! zero-fills, a broadcast bias add, and a bias gradient summed on one
//! thread.

use super::gemm::{View, gemm};
use super::ops::{cpu, ranked};
use super::scratch::{Output, zeroed};
use super::{flex, values};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorMetadata};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// Rows per parallel task.
const ROWS: usize = 128;

/// The sizes: `m` rows of `k` inputs, `n` outputs.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Rows.
    pub m: usize,
    /// Inputs.
    pub k: usize,
    /// Outputs.
    pub n: usize,
}

/// `x Wᵀ + b`: x `[m, k]`, weight `[n, k]`, bias `[n]`; output `[m, n]`.
pub fn forward(d: Dims, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    assert!(
        x.len() == d.m * d.k && weight.len() == d.n * d.k && bias.len() == d.n,
        "linear operands"
    );
    let mut out = Output::new(d.m * d.n);
    if d.n == 0 {
        return out.into_vec();
    }
    let w_t = View::row_major(weight, d.n, d.k).t();
    out.par_chunks_mut(ROWS * d.n)
        .enumerate()
        .for_each(|(i, out)| {
            let rows = out.len() / d.n;
            for row in out.chunks_exact_mut(d.n) {
                row.copy_from_slice(bias);
            }
            let x = View::row_major(&x[i * ROWS * d.k..][..rows * d.k], rows, d.k);
            gemm(out, x, w_t, true, 1);
        });
    out.into_vec()
}

/// The gradients `(dx, dweight, dbias)` from `dy` `[m, n]`.
pub fn backward(d: Dims, x: &[f32], weight: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        x.len() == d.m * d.k && weight.len() == d.n * d.k && dy.len() == d.m * d.n,
        "linear backward operands"
    );
    let mut dx = Output::new(d.m * d.k);
    let w = View::row_major(weight, d.n, d.k);
    if d.k > 0 {
        dx.par_chunks_mut(ROWS * d.k)
            .enumerate()
            .for_each(|(i, dx)| {
                let rows = dx.len() / d.k;
                let dy = View::row_major(&dy[i * ROWS * d.n..][..rows * d.n], rows, d.n);
                gemm(dx, dy, w, false, 1);
            });
    }
    let mut dw = zeroed(d.n * d.k);
    let dy_t = View::row_major(dy, d.m, d.n).t();
    gemm(
        &mut dw,
        dy_t,
        View::row_major(x, d.m, d.k),
        false,
        rayon::current_num_threads(),
    );
    // Σ over rows in row order, each output's column separately; the
    // outputs spread over the threads in blocks.
    let mut db = vec![0.0f32; d.n];
    const COLS: usize = 64;
    db.par_chunks_mut(COLS).enumerate().for_each(|(c, db)| {
        for row in dy.chunks_exact(d.n.max(1)) {
            let row = &row[c * COLS..][..db.len()];
            db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
    });
    (dx.into_vec(), dw, db)
}

/// `x.matmul(weight.transpose()) + bias` on the CPU backend, or `None`
/// for any other backend, dtype or shape (the caller runs burn's ops).
///
/// # Shapes
/// - x: `[m, k]`; weight: `[n, k]`; bias: `[n]`; output: `[m, n]`
pub fn linear<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: &Tensor<B, 1>,
) -> Option<Tensor<B, 2>> {
    let ([m, k], [n, kw], [nb]) = (x.dims(), weight.dims(), bias.dims());
    if kw != k || nb != n {
        return None;
    }
    let d = Dims { m, k, n };
    let (x, w, b) = (cpu(x)?, cpu(weight)?, cpu(bias)?);
    let out = forward(
        d,
        &values(&x.primitive)?,
        &values(&w.primitive)?,
        &values(&b.primitive)?,
    );
    let out = flex(out, vec![m, n]);
    let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
    let y = match LinearBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, d), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(ranked(y))
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (FlexTensor, FlexTensor, Dims);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let (x, w, d) = ops.state;
        let (Some(xv), Some(wv), Some(dv)) = (values(&x), values(&w), values(&dout)) else {
            unreachable!("the forward checked every operand is f32")
        };
        let (dx, dw, db) = backward(d, &xv, &wv, &dv);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, x.shape().to_vec()));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, flex(dw, w.shape().to_vec()));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex(db, vec![d.n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::close_to_burn as close;
    use burn::tensor::Distribution;
    use burn_autodiff::Autodiff;

    type Ad = Autodiff<Flex>;

    #[test]
    fn linear_matches_burns_ops_and_gradients() {
        let dev = Default::default();
        // One block of rows, and several with a partial last one; more
        // outputs than a block of bias columns.
        for (m, k, n) in [(5, 3, 4), (300, 17, 70), (1, 1, 1)] {
            let make = |shape: Vec<usize>| {
                Tensor::<Flex, 1>::random(
                    [shape.iter().product::<usize>()],
                    Distribution::Uniform(-1.0, 1.0),
                    &dev,
                )
            };
            let (x, w, b) = (
                make(vec![m, k]).reshape([m, k]),
                make(vec![n, k]).reshape([n, k]),
                make(vec![n]),
            );
            let weights = Tensor::<Ad, 2>::from_inner(make(vec![m, n]).reshape([m, n]));
            let leaves = || {
                (
                    Tensor::<Ad, 2>::from_inner(x.clone()).require_grad(),
                    Tensor::<Ad, 2>::from_inner(w.clone()).require_grad(),
                    Tensor::<Ad, 1>::from_inner(b.clone()).require_grad(),
                )
            };
            let ((x1, w1, b1), (x2, w2, b2)) = (leaves(), leaves());
            let y1 = linear(&x1, &w1, &b1).expect("the CPU backend");
            let y2 = x2.clone().matmul(w2.clone().transpose()) + b2.clone().unsqueeze();
            close("y", y1.clone().inner(), y2.clone().inner());
            let g1 = (y1 * weights.clone()).sum().backward();
            let g2 = (y2 * weights).sum().backward();
            close("dx", x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap());
            close("dw", w1.grad(&g1).unwrap(), w2.grad(&g2).unwrap());
            close("db", b1.grad(&g1).unwrap(), b2.grad(&g2).unwrap());
        }
    }

    #[test]
    fn mismatched_shapes_fall_back() {
        let dev = Default::default();
        let t = |shape: [usize; 2]| Tensor::<Ad, 2>::zeros(shape, &dev);
        let b = Tensor::<Ad, 1>::zeros([4], &dev);
        assert!(linear(&t([2, 3]), &t([4, 5]), &b).is_none());
        assert!(linear(&t([2, 3]), &t([5, 3]), &b).is_none());
    }
}
