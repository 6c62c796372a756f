//! Elementwise maps and comparisons.

use super::*;

/// `ln(1 + exp(x))` as `relu(x) + ln(1 + exp(−|x|))`, which neither overflows for
/// large `x` nor loses precision for very negative `x`.
fn softplus<B: AutodiffBackend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let tail = B::float_log1p(B::float_exp(B::float_neg(B::float_abs(x.clone()))));
    B::float_add(B::relu(x), tail)
}

pub(super) extern "C" fn unary_<B: AutodiffBackend>(
    op: UnaryOp,
    x: TensorId,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("unary"), || {
        let t = float::<B>(x)?;
        let y = match op {
            UnaryOp::NEG => B::float_neg(t),
            UnaryOp::EXP => B::float_exp(t),
            UnaryOp::LOG => B::float_log(t),
            UnaryOp::SQRT => B::float_sqrt(t),
            UnaryOp::ABS => B::float_abs(t),
            UnaryOp::TANH => B::float_tanh(t),
            UnaryOp::SIGMOID => B::sigmoid(t),
            UnaryOp::RELU => B::relu(t),
            UnaryOp::SILU => B::float_mul(t.clone(), B::sigmoid(t)),
            UnaryOp::GELU => B::gelu(t),
            UnaryOp::SIN => B::float_sin(t),
            UnaryOp::COS => B::float_cos(t),
            UnaryOp::RECIP => B::float_recip(t),
            UnaryOp::SOFTPLUS => softplus::<B>(t),
            UnaryOp::SQUARE => B::float_mul(t.clone(), t),
            other => return Err(unknown("unary", other.0)),
        };
        out::<B>(y)
    })
}

pub(super) extern "C" fn binary_<B: AutodiffBackend>(
    op: BinaryOp,
    a: TensorId,
    b: TensorId,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("binary"), || {
        let (x, y) = (float::<B>(a)?, float::<B>(b)?);
        let rank = x.shape().num_dims().max(y.shape().num_dims());
        let (x, y) = (lift::<B>(x, rank), lift::<B>(y, rank));
        broadcast_shape(&x.shape(), &y.shape())?;
        let z = match op {
            BinaryOp::ADD => B::float_add(x, y),
            BinaryOp::SUB => B::float_sub(x, y),
            BinaryOp::MUL => B::float_mul(x, y),
            BinaryOp::DIV => B::float_div(x, y),
            BinaryOp::POW => {
                let (x, y) = broadcast::<B>(x, y)?;
                B::float_powf(x, y)
            }
            BinaryOp::MAX | BinaryOp::MIN => {
                let (x, y) = broadcast::<B>(x, y)?;
                let bool_dtype = with::<B, _>(|s| s.settings.bool_dtype)?;
                let mask = if op == BinaryOp::MAX {
                    B::float_greater(x.clone(), y.clone(), bool_dtype)
                } else {
                    B::float_lower(x.clone(), y.clone(), bool_dtype)
                };
                B::float_mask_where(y, mask, x)
            }
            other => return Err(unknown("binary", other.0)),
        };
        out::<B>(z)
    })
}

pub(super) extern "C" fn scalar_<B: AutodiffBackend>(
    op: ScalarOp,
    x: TensorId,
    v: f32,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("scalar"), || {
        let t = float::<B>(x)?;
        let s = Scalar::from(v);
        let y = match op {
            ScalarOp::ADD => B::float_add_scalar(t, s),
            ScalarOp::SUB => B::float_sub_scalar(t, s),
            ScalarOp::MUL => B::float_mul_scalar(t, s),
            ScalarOp::DIV => B::float_div_scalar(t, s),
            // burn takes an integral exponent as an i32 (and panics past
            // its range): such exponents go through the tensor power.
            ScalarOp::POW if v.fract() == 0.0 && v.abs() > i32::MAX as f32 => {
                let shape = t.shape();
                let dtype = t.dtype();
                let device = B::float_device(&t);
                let e = B::float_full(shape, Scalar::from(v), &device, dtype.into());
                B::float_powf(t, e)
            }
            ScalarOp::POW => B::float_powf_scalar(t, s),
            ScalarOp::RSUB => B::float_add_scalar(B::float_neg(t), s),
            ScalarOp::RDIV => B::float_mul_scalar(B::float_recip(t), s),
            other => return Err(unknown("scalar", other.0)),
        };
        out::<B>(y)
    })
}

pub(super) extern "C" fn clamp_<B: AutodiffBackend>(
    x: TensorId,
    min: f32,
    max: f32,
) -> AbiResult<TensorId> {
    run("clamp", || {
        if min > max {
            return Err(shape_err(format!("clamp: min {min} > max {max}")));
        }
        out::<B>(B::float_clamp(
            float::<B>(x)?,
            Scalar::from(min),
            Scalar::from(max),
        ))
    })
}

pub(super) extern "C" fn compare_<B: AutodiffBackend>(
    op: CompareOp,
    a: TensorId,
    b: TensorId,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("compare"), || {
        let (x, y) = broadcast::<B>(float::<B>(a)?, float::<B>(b)?)?;
        with::<B, _>(|s| {
            let d = s.settings.bool_dtype;
            let m = match op {
                CompareOp::EQ => B::float_equal(x, y, d),
                CompareOp::GT => B::float_greater(x, y, d),
                CompareOp::GE => B::float_greater_equal(x, y, d),
                CompareOp::LT => B::float_lower(x, y, d),
                CompareOp::LE => B::float_lower_equal(x, y, d),
                other => return Err(unknown("compare", other.0)),
            };
            Ok(s.insert(Stored::Bool(m)))
        })?
    })
}

pub(super) extern "C" fn compare_scalar_<B: AutodiffBackend>(
    op: CompareOp,
    x: TensorId,
    v: f32,
) -> AbiResult<TensorId> {
    run(op.name().unwrap_or("compare_scalar"), || {
        let t = float::<B>(x)?;
        let v = Scalar::from(v);
        with::<B, _>(|s| {
            let d = s.settings.bool_dtype;
            let m = match op {
                CompareOp::EQ => B::float_equal_elem(t, v, d),
                CompareOp::GT => B::float_greater_elem(t, v, d),
                CompareOp::GE => B::float_greater_equal_elem(t, v, d),
                CompareOp::LT => B::float_lower_elem(t, v, d),
                CompareOp::LE => B::float_lower_equal_elem(t, v, d),
                other => return Err(unknown("compare", other.0)),
            };
            Ok(s.insert(Stored::Bool(m)))
        })?
    })
}

pub(super) extern "C" fn where_<B: AutodiffBackend>(
    mask: TensorId,
    a: TensorId,
    b: TensorId,
) -> AbiResult<TensorId> {
    run("where", || {
        let m = with::<B, _>(|s| s.bool(mask))??;
        let (x, y) = broadcast::<B>(float::<B>(a)?, float::<B>(b)?)?;
        let shape = broadcast_shape(&x.shape(), &m.shape())?;
        let (x, y) = (
            B::float_expand(lift::<B>(x, shape.len()), Shape::from(shape.clone())),
            B::float_expand(lift::<B>(y, shape.len()), Shape::from(shape.clone())),
        );
        let mshape = m.shape().to_vec();
        let mut lifted = vec![1; shape.len() - mshape.len()];
        lifted.extend(mshape);
        let m = B::bool_expand(B::bool_reshape(m, Shape::from(lifted)), Shape::from(shape));
        out::<B>(B::float_mask_where(y, m, x))
    })
}
