//! Detach, leaves and gradients.

use super::*;

pub(super) extern "C" fn detach_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("detach", || {
        out::<B>(crate::tensor_abi::untracked::<B>(float::<B>(x)?))
    })
}

pub(super) extern "C" fn require_grad_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("require_grad", || {
        out::<B>(B::float_set_require_grad(
            B::float_detach(float::<B>(x)?),
            true,
        ))
    })
}

pub(super) extern "C" fn grad_<B: AutodiffBackend>(
    y: TensorId,
    wrt: RSlice<'_, TensorId>,
) -> AbiResult<RVec<TensorId>> {
    run("grad", || {
        let y = float::<B>(y)?;
        if y.shape().num_elements() != 1 {
            return Err(shape_err(format!(
                "grad of a non-scalar of shape {:?}",
                y.shape().to_vec()
            )));
        }
        let inputs = wrt
            .iter()
            .map(|&id| float::<B>(id))
            .collect::<Result<Vec<_>, _>>()?;
        let grads = B::backward(y);
        let outs = inputs
            .iter()
            .map(|x| match B::grad(x, &grads) {
                Some(g) => B::from_inner(g),
                None => B::float_zeros(x.shape(), &B::float_device(x), x.dtype().into()),
            })
            .collect::<Vec<_>>();
        with::<B, _>(|s| {
            outs.into_iter()
                .map(|g| s.insert(Stored::Float(g)))
                .collect()
        })
    })
}
