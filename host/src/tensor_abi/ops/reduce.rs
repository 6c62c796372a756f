//! Matrix products, reductions, softmax.

use super::*;

pub(super) extern "C" fn matmul_<B: AutodiffBackend>(
    a: TensorId,
    b: TensorId,
) -> AbiResult<TensorId> {
    run("matmul", || {
        let (x, y) = (float::<B>(a)?, float::<B>(b)?);
        let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
        if xs.len() < 2 || ys.len() < 2 || xs[xs.len() - 1] != ys[ys.len() - 2] {
            return Err(shape_err(format!(
                "matmul of {xs:?} and {ys:?}: inner dims differ"
            )));
        }
        let rank = xs.len().max(ys.len());
        out::<B>(B::float_matmul(lift::<B>(x, rank), lift::<B>(y, rank)))
    })
}

pub(super) extern "C" fn reduce_<B: AutodiffBackend>(
    op: ReduceOp,
    x: TensorId,
    dims: RSlice<'_, usize>,
    keepdim: bool,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("reduce"), || {
        let mut t = float::<B>(x)?;
        let shape = t.shape().to_vec();
        let rank = shape.len();
        let all: Vec<usize> = if dims.is_empty() {
            (0..rank).collect()
        } else {
            dims.to_vec()
        };
        if let Some(d) = all.iter().find(|&&d| d >= rank) {
            return Err(shape_err(format!(
                "reduce over dim {d} of a rank-{rank} tensor"
            )));
        }
        for &d in &all {
            t = match op {
                ReduceOp::SUM => B::float_sum_dim(t, d),
                ReduceOp::MEAN => B::float_mean_dim(t, d),
                ReduceOp::MAX => B::float_max_dim(t, d),
                ReduceOp::MIN => B::float_min_dim(t, d),
                other => return Err(unknown("reduce", other.0)),
            };
        }
        if !keepdim {
            let kept: Vec<usize> = (0..rank)
                .filter(|d| !all.contains(d))
                .map(|d| shape[d])
                .collect();
            // A full reduction gives shape [1], as burn does.
            let kept = if kept.is_empty() { vec![1] } else { kept };
            t = B::float_reshape(t, Shape::from(kept));
        }
        out::<B>(t)
    })
}

pub(super) extern "C" fn argmax_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
) -> AbiResult<TensorId> {
    run("argmax", || {
        let t = float::<B>(x)?;
        with::<B, _>(|s| {
            let i = B::float_argmax(t, dim, s.settings.int_dtype);
            s.insert(Stored::Int(i))
        })
    })
}

pub(super) extern "C" fn softmax_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
) -> AbiResult<TensorId> {
    run("softmax", || out::<B>(B::softmax(float::<B>(x)?, dim)))
}

pub(super) extern "C" fn log_softmax_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
) -> AbiResult<TensorId> {
    run("log_softmax", || {
        out::<B>(B::log_softmax(float::<B>(x)?, dim))
    })
}
