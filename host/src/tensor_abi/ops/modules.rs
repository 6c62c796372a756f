//! Convolutions, interpolation, normalisation.

use super::*;

fn opt_float<B: AutodiffBackend>(
    id: ROption<TensorId>,
) -> Result<Option<FloatTensor<B>>, AbiError> {
    id.into_option().map(float::<B>).transpose()
}

fn check_rank4(op: &str, shape: &[usize]) -> Result<(), AbiError> {
    if shape.len() != 4 {
        return Err(shape_err(format!(
            "{op} expects a [B, C, H, W] input, got {shape:?}"
        )));
    }
    Ok(())
}

pub(super) extern "C" fn conv2d_<B: AutodiffBackend>(
    x: TensorId,
    w: TensorId,
    bias: ROption<TensorId>,
    o: Conv2dOptions,
) -> AbiResult<TensorId> {
    run("conv2d", || {
        let (t, w, b) = (float::<B>(x)?, float::<B>(w)?, opt_float::<B>(bias)?);
        let (xs, ws) = (t.shape().to_vec(), w.shape().to_vec());
        check_rank4("conv2d", &xs)?;
        if ws.len() != 4 || xs[1] != ws[1] * o.groups.max(1) {
            return Err(shape_err(format!(
                "conv2d: input {xs:?} does not fit weight {ws:?} with groups {}",
                o.groups
            )));
        }
        let opts = ConvOptions::new(o.stride, o.padding, o.dilation, o.groups);
        out::<B>(crate::kernels::conv2d::<B>(t, w, b, opts))
    })
}

pub(super) extern "C" fn conv_transpose2d_<B: AutodiffBackend>(
    x: TensorId,
    w: TensorId,
    bias: ROption<TensorId>,
    o: Conv2dOptions,
) -> AbiResult<TensorId> {
    run("conv_transpose2d", || {
        let (t, w, b) = (float::<B>(x)?, float::<B>(w)?, opt_float::<B>(bias)?);
        let (xs, ws) = (t.shape().to_vec(), w.shape().to_vec());
        check_rank4("conv_transpose2d", &xs)?;
        if ws.len() != 4 || xs[1] != ws[0] {
            return Err(shape_err(format!(
                "conv_transpose2d: input {xs:?} does not fit weight {ws:?}"
            )));
        }
        let opts =
            ConvTransposeOptions::new(o.stride, o.padding, o.padding_out, o.dilation, o.groups);
        out::<B>(B::conv_transpose2d(t, w, b, opts))
    })
}

pub(super) extern "C" fn interpolate_<B: AutodiffBackend>(
    x: TensorId,
    out_h: usize,
    out_w: usize,
    mode: InterpolateMode,
) -> AbiResult<TensorId> {
    run("interpolate", || {
        let t = float::<B>(x)?;
        check_rank4("interpolate", &t.shape())?;
        let mode = match mode {
            InterpolateMode::NEAREST => burn::tensor::ops::InterpolateMode::Nearest,
            InterpolateMode::BILINEAR => burn::tensor::ops::InterpolateMode::Bilinear,
            other => return Err(unknown("interpolate", other.0)),
        };
        let opts = InterpolateOptions {
            mode,
            align_corners: false,
        };
        out::<B>(B::interpolate(t, [out_h, out_w], opts))
    })
}

/// `(x − mean) / sqrt(var + eps)` over the last dim (biased variance, as PyTorch).
fn normalize_last<B: AutodiffBackend>(x: FloatTensor<B>, eps: f32) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    B::float_div(
        centered,
        B::float_sqrt(B::float_add_scalar(var, Scalar::from(eps))),
    )
}

fn affine<B: AutodiffBackend>(
    y: FloatTensor<B>,
    gamma: Option<FloatTensor<B>>,
    beta: Option<FloatTensor<B>>,
    param_shape: Vec<usize>,
) -> FloatTensor<B> {
    let mut y = y;
    if let Some(g) = gamma {
        y = B::float_mul(y, B::float_reshape(g, Shape::from(param_shape.clone())));
    }
    if let Some(b) = beta {
        y = B::float_add(y, B::float_reshape(b, Shape::from(param_shape)));
    }
    y
}

pub(super) extern "C" fn group_norm_<B: AutodiffBackend>(
    x: TensorId,
    groups: usize,
    gamma: ROption<TensorId>,
    beta: ROption<TensorId>,
    eps: f32,
) -> AbiResult<TensorId> {
    run("group_norm", || {
        let t = float::<B>(x)?;
        let shape = t.shape().to_vec();
        if shape.len() < 2 || groups == 0 || shape[1] % groups != 0 {
            return Err(shape_err(format!(
                "group_norm: {shape:?} has no channel dim divisible into {groups} groups"
            )));
        }
        let (b, c) = (shape[0], shape[1]);
        let rest: usize = shape[2..].iter().product();
        let grouped = B::float_reshape(t, Shape::from(vec![b, groups, c / groups * rest]));
        let y = B::float_reshape(
            normalize_last::<B>(grouped, eps),
            Shape::from(shape.clone()),
        );
        let mut pshape = vec![1; shape.len()];
        pshape[1] = c;
        out::<B>(affine::<B>(
            y,
            opt_float::<B>(gamma)?,
            opt_float::<B>(beta)?,
            pshape,
        ))
    })
}

pub(super) extern "C" fn layer_norm_<B: AutodiffBackend>(
    x: TensorId,
    gamma: ROption<TensorId>,
    beta: ROption<TensorId>,
    eps: f32,
) -> AbiResult<TensorId> {
    run("layer_norm", || {
        let t = float::<B>(x)?;
        let shape = t.shape().to_vec();
        let mut pshape = vec![1; shape.len()];
        pshape[shape.len() - 1] = shape[shape.len() - 1];
        let y = normalize_last::<B>(t, eps);
        out::<B>(affine::<B>(
            y,
            opt_float::<B>(gamma)?,
            opt_float::<B>(beta)?,
            pshape,
        ))
    })
}
