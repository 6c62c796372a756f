//! The host side of [`TensorOps`]: every entry over burn primitives of an
//! autodiff backend `B`, so plugin computations join the host's autodiff graph.
//!
//! Each entry runs inside [`run`], which turns burn's panics (shape mismatches)
//! into [`ErrorKind::SHAPE`] errors naming the op, and never lets a panic cross
//! the boundary.

use super::session::{Session, Stored};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{ROption, RSlice, RString, RVec};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, FloatTensor, InterpolateOptions};
use burn::tensor::{
    DType as BurnDType, Scalar, Shape, Slice, TensorData, TensorMetadata, read_sync,
};
use dtx_plugin_api::abi::{
    AbiError, AbiResult, BinaryOp, CompareOp, Conv2dOptions, DType, Distribution, ErrorKind,
    InterpolateMode, ReduceOp, ScalarOp, SliceRange, TensorId, TensorOps, TensorOpsRef, UnaryOp,
};
use rand_distr::{Distribution as _, Normal, Uniform};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static IN_OP: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays quiet for panics inside tensor ops,
/// which are returned to the plugin as errors, and defers to the previous hook
/// for every other panic.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_OP.with(Cell::get) {
                previous(info)
            }
        }));
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs one op: errors pass through; a panic becomes a shape error naming `op`.
fn run<T>(op: &str, f: impl FnOnce() -> Result<T, AbiError>) -> AbiResult<T> {
    let was = IN_OP.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_OP.with(|c| c.set(was));
    match result {
        Ok(r) => r.into(),
        Err(payload) => Err(AbiError::new(
            ErrorKind::SHAPE,
            format!("tensor op `{op}` failed: {}", panic_message(payload)),
        ))
        .into(),
    }
}

fn with<B: AutodiffBackend, R>(f: impl FnOnce(&mut Session<B>) -> R) -> Result<R, AbiError> {
    Session::<B>::with(f)
}

fn float<B: AutodiffBackend>(id: TensorId) -> Result<FloatTensor<B>, AbiError> {
    with::<B, _>(|s| s.float(id))?
}

fn out<B: AutodiffBackend>(t: FloatTensor<B>) -> Result<TensorId, AbiError> {
    with::<B, _>(|s| s.insert(Stored::Float(t)))
}

fn shape_err(msg: impl Into<String>) -> AbiError {
    AbiError::new(ErrorKind::SHAPE, msg)
}

fn unknown(kind: &str, code: u32) -> AbiError {
    AbiError::new(
        ErrorKind::UNSUPPORTED,
        format!(
            "unknown {kind} op code {code}: the plugin was built against a newer dtx-plugin-api than this host ({})",
            dtx_plugin_api::abi::API_VERSION
        ),
    )
}

/// Reshapes `t` to `rank` dims by prepending 1s (numpy-style rank alignment).
fn lift<B: AutodiffBackend>(t: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let shape = t.shape().to_vec();
    if shape.len() >= rank {
        return t;
    }
    let mut dims = vec![1; rank - shape.len()];
    dims.extend(shape);
    B::float_reshape(t, Shape::from(dims))
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, AbiError> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(shape_err(format!(
                "shapes {a:?} and {b:?} do not broadcast"
            ))),
        })
        .collect()
}

/// Both operands lifted to one rank and expanded to their broadcast shape.
fn broadcast<B: AutodiffBackend>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
) -> Result<(FloatTensor<B>, FloatTensor<B>), AbiError> {
    let shape = broadcast_shape(&a.shape(), &b.shape())?;
    let expand = |t: FloatTensor<B>| {
        let t = lift::<B>(t, shape.len());
        if t.shape().to_vec() == shape {
            t
        } else {
            B::float_expand(t, Shape::from(shape.clone()))
        }
    };
    Ok((expand(a), expand(b)))
}

fn float_data<B: AutodiffBackend>(
    s: &Session<B>,
    values: Vec<f32>,
    shape: &[usize],
) -> FloatTensor<B> {
    let data =
        TensorData::new(values, shape.to_vec()).convert_dtype(BurnDType::from(s.float_dtype()));
    B::float_from_data(data, &s.device)
}

fn check_len(len: usize, shape: &[usize]) -> Result<(), AbiError> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(shape_err(format!(
            "{len} values do not fill shape {shape:?} ({n} elements)"
        )));
    }
    Ok(())
}

// --- handles and data ---------------------------------------------------------

extern "C" fn release_<B: AutodiffBackend>(x: TensorId) {
    let _ = with::<B, _>(|s| s.remove(x));
}

extern "C" fn clone_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("clone", || with::<B, _>(|s| s.get(x).map(|v| s.insert(v)))?)
}

extern "C" fn shape_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<usize>> {
    run("shape", || {
        with::<B, _>(|s| s.get(x).map(|v| v.shape().into()))?
    })
}

extern "C" fn dtype_<B: AutodiffBackend>(x: TensorId) -> AbiResult<DType> {
    run("dtype", || with::<B, _>(|s| s.get(x).map(|v| v.dtype()))?)
}

extern "C" fn device_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RString> {
    run("device", || {
        with::<B, _>(|s| {
            s.get(x)
                .map(|_| RString::from(format!("{:?}", s.device).to_lowercase()))
        })?
    })
}

extern "C" fn from_f32_<B: AutodiffBackend>(
    data: RSlice<'_, f32>,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("from_f32", || {
        check_len(data.len(), &shape)?;
        with::<B, _>(|s| {
            let t = float_data::<B>(s, data.to_vec(), &shape);
            s.insert(Stored::Float(t))
        })
    })
}

extern "C" fn from_i64_<B: AutodiffBackend>(
    data: RSlice<'_, i64>,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("from_i64", || {
        check_len(data.len(), &shape)?;
        with::<B, _>(|s| {
            let d = TensorData::new(data.to_vec(), shape.to_vec())
                .convert_dtype(BurnDType::from(s.settings.int_dtype));
            let t = B::int_from_data(d, &s.device);
            s.insert(Stored::Int(t))
        })
    })
}

fn read<B: AutodiffBackend>(x: TensorId) -> Result<TensorData, AbiError> {
    let v = with::<B, _>(|s| s.get(x))??;
    let data = match v {
        Stored::Float(t) => read_sync(B::float_into_data(t)),
        Stored::Int(t) => read_sync(B::int_into_data(t)),
        Stored::Bool(t) => read_sync(B::bool_into_data(t)),
    };
    data.map_err(|e| AbiError::other(format!("reading tensor data failed: {e:?}")))
}

extern "C" fn to_f32_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<f32>> {
    run("to_f32", || {
        let d = read::<B>(x)?;
        Ok(match d.dtype {
            BurnDType::Bool(_) => d.iter::<bool>().map(|b| b as u8 as f32).collect(),
            _ => d.iter::<f32>().collect(),
        })
    })
}

extern "C" fn to_i64_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<i64>> {
    run("to_i64", || {
        let d = read::<B>(x)?;
        Ok(match d.dtype {
            BurnDType::Bool(_) => d.iter::<bool>().map(|b| b as i64).collect(),
            _ => d.iter::<i64>().collect(),
        })
    })
}

extern "C" fn full_<B: AutodiffBackend>(
    shape: RSlice<'_, usize>,
    value: f64,
    dtype: DType,
) -> AbiResult<TensorId> {
    run("full", || {
        let n: usize = shape.iter().product();
        with::<B, _>(|s| {
            let stored = match dtype {
                DType::F32 => Stored::Float(float_data::<B>(s, vec![value as f32; n], &shape)),
                DType::I64 => {
                    let d = TensorData::new(vec![value as i64; n], shape.to_vec())
                        .convert_dtype(BurnDType::from(s.settings.int_dtype));
                    Stored::Int(B::int_from_data(d, &s.device))
                }
                DType::Bool => {
                    let d = TensorData::new(vec![value != 0.0; n], shape.to_vec())
                        .convert_dtype(BurnDType::from(s.settings.bool_dtype));
                    Stored::Bool(B::bool_from_data(d, &s.device))
                }
            };
            s.insert(stored)
        })
    })
}

extern "C" fn random_<B: AutodiffBackend>(
    shape: RSlice<'_, usize>,
    dist: Distribution,
    a: f32,
    b: f32,
) -> AbiResult<TensorId> {
    run("random", || {
        let n: usize = shape.iter().product();
        with::<B, _>(|s| {
            let values: Vec<f32> = match dist {
                Distribution::NORMAL => {
                    let d =
                        Normal::new(a, b.max(0.0)).map_err(|e| AbiError::other(e.to_string()))?;
                    (0..n).map(|_| d.sample(&mut s.rng)).collect()
                }
                Distribution::UNIFORM => {
                    let d = Uniform::new(a, b)
                        .map_err(|e| AbiError::other(format!("uniform({a}, {b}): {e}")))?;
                    (0..n).map(|_| d.sample(&mut s.rng)).collect()
                }
                other => return Err(unknown("distribution", other.0)),
            };
            let t = float_data::<B>(s, values, &shape);
            Ok(s.insert(Stored::Float(t)))
        })?
    })
}

extern "C" fn cast_<B: AutodiffBackend>(x: TensorId, dtype: DType) -> AbiResult<TensorId> {
    run("cast", || {
        with::<B, _>(|s| {
            let st = &s.settings;
            let v = s.get(x)?;
            let casted = match (v, dtype) {
                (v @ Stored::Float(_), DType::F32)
                | (v @ Stored::Int(_), DType::I64)
                | (v @ Stored::Bool(_), DType::Bool) => v,
                (Stored::Float(t), DType::I64) => Stored::Int(B::float_into_int(t, st.int_dtype)),
                (Stored::Float(t), DType::Bool) => Stored::Bool(B::float_not_equal_elem(
                    t,
                    Scalar::from(0.0f32),
                    st.bool_dtype,
                )),
                (Stored::Int(t), DType::F32) => Stored::Float(B::int_into_float(t, st.float_dtype)),
                (Stored::Int(t), DType::Bool) => {
                    Stored::Bool(B::int_not_equal_elem(t, Scalar::from(0i64), st.bool_dtype))
                }
                (Stored::Bool(t), DType::F32) => {
                    Stored::Float(B::bool_into_float(t, st.float_dtype))
                }
                (Stored::Bool(t), DType::I64) => Stored::Int(B::bool_into_int(t, st.int_dtype)),
            };
            Ok(s.insert(casted))
        })?
    })
}

// --- elementwise ----------------------------------------------------------------

/// `ln(1 + exp(x))` as `relu(x) + ln(1 + exp(−|x|))`, which neither overflows for
/// large `x` nor loses precision for very negative `x`.
fn softplus<B: AutodiffBackend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let tail = B::float_log1p(B::float_exp(B::float_neg(B::float_abs(x.clone()))));
    B::float_add(B::relu(x), tail)
}

extern "C" fn unary_<B: AutodiffBackend>(op: UnaryOp, x: TensorId) -> AbiResult<TensorId> {
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

extern "C" fn binary_<B: AutodiffBackend>(
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

extern "C" fn scalar_<B: AutodiffBackend>(
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
            ScalarOp::POW => B::float_powf_scalar(t, s),
            ScalarOp::RSUB => B::float_add_scalar(B::float_neg(t), s),
            ScalarOp::RDIV => B::float_mul_scalar(B::float_recip(t), s),
            other => return Err(unknown("scalar", other.0)),
        };
        out::<B>(y)
    })
}

extern "C" fn clamp_<B: AutodiffBackend>(x: TensorId, min: f32, max: f32) -> AbiResult<TensorId> {
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

extern "C" fn compare_<B: AutodiffBackend>(
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

extern "C" fn compare_scalar_<B: AutodiffBackend>(
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

extern "C" fn where_<B: AutodiffBackend>(
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

// --- linear algebra and reductions ---------------------------------------------

extern "C" fn matmul_<B: AutodiffBackend>(a: TensorId, b: TensorId) -> AbiResult<TensorId> {
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

extern "C" fn reduce_<B: AutodiffBackend>(
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

extern "C" fn argmax_<B: AutodiffBackend>(x: TensorId, dim: usize) -> AbiResult<TensorId> {
    run("argmax", || {
        let t = float::<B>(x)?;
        with::<B, _>(|s| {
            let i = B::float_argmax(t, dim, s.settings.int_dtype);
            s.insert(Stored::Int(i))
        })
    })
}

extern "C" fn softmax_<B: AutodiffBackend>(x: TensorId, dim: usize) -> AbiResult<TensorId> {
    run("softmax", || out::<B>(B::softmax(float::<B>(x)?, dim)))
}

extern "C" fn log_softmax_<B: AutodiffBackend>(x: TensorId, dim: usize) -> AbiResult<TensorId> {
    run("log_softmax", || {
        out::<B>(B::log_softmax(float::<B>(x)?, dim))
    })
}

// --- shape -------------------------------------------------------------------------

fn resolve_shape(numel: usize, shape: &[i64], from: &[usize]) -> Result<Vec<usize>, AbiError> {
    let bad = || {
        shape_err(format!(
            "cannot reshape {from:?} ({numel} elements) to {shape:?}"
        ))
    };
    let known: i64 = shape.iter().filter(|&&d| d != -1).product();
    let holes = shape.iter().filter(|&&d| d == -1).count();
    if holes > 1 || shape.iter().any(|&d| d < -1) {
        return Err(bad());
    }
    let resolved: Vec<usize> = shape
        .iter()
        .map(|&d| {
            if d == -1 {
                if known == 0 {
                    0
                } else {
                    numel / known as usize
                }
            } else {
                d as usize
            }
        })
        .collect();
    if resolved.iter().product::<usize>() != numel {
        return Err(bad());
    }
    Ok(resolved)
}

extern "C" fn reshape_<B: AutodiffBackend>(
    x: TensorId,
    shape: RSlice<'_, i64>,
) -> AbiResult<TensorId> {
    run("reshape", || {
        let v = with::<B, _>(|s| s.get(x))??;
        let from = v.shape();
        let target = Shape::from(resolve_shape(from.iter().product(), &shape, &from)?);
        let r = match v {
            Stored::Float(t) => Stored::Float(B::float_reshape(t, target)),
            Stored::Int(t) => Stored::Int(B::int_reshape(t, target)),
            Stored::Bool(t) => Stored::Bool(B::bool_reshape(t, target)),
        };
        with::<B, _>(|s| s.insert(r))
    })
}

extern "C" fn permute_<B: AutodiffBackend>(
    x: TensorId,
    axes: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("permute", || {
        let t = float::<B>(x)?;
        let rank = t.shape().num_dims();
        let mut seen = axes.to_vec();
        seen.sort_unstable();
        if seen != (0..rank).collect::<Vec<_>>() {
            return Err(shape_err(format!(
                "permute axes {:?} are not a permutation of 0..{rank}",
                axes.as_slice()
            )));
        }
        out::<B>(B::float_permute(t, &axes))
    })
}

extern "C" fn transpose_<B: AutodiffBackend>(
    x: TensorId,
    d0: usize,
    d1: usize,
) -> AbiResult<TensorId> {
    run("transpose", || {
        out::<B>(B::float_swap_dims(float::<B>(x)?, d0, d1))
    })
}

extern "C" fn slice_<B: AutodiffBackend>(
    x: TensorId,
    ranges: RSlice<'_, SliceRange>,
) -> AbiResult<TensorId> {
    run("slice", || {
        let v = with::<B, _>(|s| s.get(x))??;
        let slices: Vec<Slice> = ranges
            .iter()
            .map(|r| Slice {
                start: r.start as isize,
                end: if r.end == i64::MAX {
                    None
                } else {
                    Some(r.end as isize)
                },
                step: r.step as isize,
            })
            .collect();
        let r = match v {
            Stored::Float(t) => Stored::Float(B::float_slice(t, &slices)),
            Stored::Int(t) => Stored::Int(B::int_slice(t, &slices)),
            Stored::Bool(t) => Stored::Bool(B::bool_slice(t, &slices)),
        };
        with::<B, _>(|s| s.insert(r))
    })
}

fn gather_all<B: AutodiffBackend>(xs: RSlice<'_, TensorId>) -> Result<Vec<Stored<B>>, AbiError> {
    if xs.is_empty() {
        return Err(shape_err("no tensors given"));
    }
    with::<B, _>(|s| xs.iter().map(|&id| s.get(id)).collect())?
}

fn concat<B: AutodiffBackend>(items: Vec<Stored<B>>, dim: usize) -> Result<Stored<B>, AbiError> {
    let mut floats = Vec::new();
    let mut ints = Vec::new();
    for item in items {
        match item {
            Stored::Float(t) => floats.push(t),
            Stored::Int(t) => ints.push(t),
            Stored::Bool(_) => return Err(shape_err("cat/stack of bool tensors is not supported")),
        }
    }
    match (floats.is_empty(), ints.is_empty()) {
        (false, true) => Ok(Stored::Float(B::float_cat(floats, dim))),
        (true, false) => Ok(Stored::Int(B::int_cat(ints, dim))),
        _ => Err(shape_err("cat/stack of tensors with different dtypes")),
    }
}

extern "C" fn cat_<B: AutodiffBackend>(
    xs: RSlice<'_, TensorId>,
    dim: usize,
) -> AbiResult<TensorId> {
    run("cat", || {
        let r = concat::<B>(gather_all::<B>(xs)?, dim)?;
        with::<B, _>(|s| s.insert(r))
    })
}

extern "C" fn stack_<B: AutodiffBackend>(
    xs: RSlice<'_, TensorId>,
    dim: usize,
) -> AbiResult<TensorId> {
    run("stack", || {
        let items = gather_all::<B>(xs)?
            .into_iter()
            .map(|v| {
                let mut shape = v.shape();
                shape.insert(dim.min(shape.len()), 1);
                let shape = Shape::from(shape);
                match v {
                    Stored::Float(t) => Stored::Float(B::float_reshape(t, shape)),
                    Stored::Int(t) => Stored::Int(B::int_reshape(t, shape)),
                    Stored::Bool(t) => Stored::Bool(B::bool_reshape(t, shape)),
                }
            })
            .collect();
        let r = concat::<B>(items, dim)?;
        with::<B, _>(|s| s.insert(r))
    })
}

extern "C" fn expand_<B: AutodiffBackend>(
    x: TensorId,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("expand", || {
        let t = float::<B>(x)?;
        let target = shape.to_vec();
        if broadcast_shape(&t.shape(), &target)? != target {
            return Err(shape_err(format!(
                "cannot expand {:?} to {target:?}",
                t.shape().to_vec()
            )));
        }
        out::<B>(B::float_expand(
            lift::<B>(t, target.len()),
            Shape::from(target),
        ))
    })
}

extern "C" fn index_select_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
    index: TensorId,
) -> AbiResult<TensorId> {
    run("index_select", || {
        let (t, i) = (float::<B>(x)?, with::<B, _>(|s| s.int(index))??);
        out::<B>(B::float_select(t, dim, i))
    })
}

extern "C" fn gather_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
    index: TensorId,
) -> AbiResult<TensorId> {
    run("gather", || {
        let (t, i) = (float::<B>(x)?, with::<B, _>(|s| s.int(index))??);
        out::<B>(B::float_gather(dim, t, i))
    })
}

// --- modules -----------------------------------------------------------------------

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

extern "C" fn conv2d_<B: AutodiffBackend>(
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
        out::<B>(B::conv2d(t, w, b, opts))
    })
}

extern "C" fn conv_transpose2d_<B: AutodiffBackend>(
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

extern "C" fn interpolate_<B: AutodiffBackend>(
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

extern "C" fn group_norm_<B: AutodiffBackend>(
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

extern "C" fn layer_norm_<B: AutodiffBackend>(
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

// --- gradients ---------------------------------------------------------------------

extern "C" fn detach_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("detach", || out::<B>(B::float_detach(float::<B>(x)?)))
}

extern "C" fn require_grad_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("require_grad", || {
        out::<B>(B::float_set_require_grad(
            B::float_detach(float::<B>(x)?),
            true,
        ))
    })
}

extern "C" fn grad_<B: AutodiffBackend>(
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

/// The tensor-op vtable over backend `B`, built once per backend and leaked.
pub fn tensor_ops<B: AutodiffBackend>() -> TensorOpsRef {
    TensorOps {
        release: release_::<B>,
        clone_handle: clone_::<B>,
        shape: shape_::<B>,
        dtype: dtype_::<B>,
        device: device_::<B>,
        from_f32: from_f32_::<B>,
        from_i64: from_i64_::<B>,
        to_f32: to_f32_::<B>,
        to_i64: to_i64_::<B>,
        full: full_::<B>,
        random: random_::<B>,
        cast: cast_::<B>,
        unary: unary_::<B>,
        binary: binary_::<B>,
        scalar: scalar_::<B>,
        clamp: clamp_::<B>,
        compare: compare_::<B>,
        compare_scalar: compare_scalar_::<B>,
        where_: where_::<B>,
        matmul: matmul_::<B>,
        reduce: reduce_::<B>,
        argmax: argmax_::<B>,
        softmax: softmax_::<B>,
        log_softmax: log_softmax_::<B>,
        reshape: reshape_::<B>,
        permute: permute_::<B>,
        transpose: transpose_::<B>,
        slice: slice_::<B>,
        cat: cat_::<B>,
        stack: stack_::<B>,
        expand: expand_::<B>,
        index_select: index_select_::<B>,
        gather: gather_::<B>,
        conv2d: conv2d_::<B>,
        conv_transpose2d: conv_transpose2d_::<B>,
        interpolate: interpolate_::<B>,
        group_norm: group_norm_::<B>,
        layer_norm: layer_norm_::<B>,
        detach: detach_::<B>,
        require_grad: require_grad_::<B>,
        grad: grad_::<B>,
    }
    .leak_into_prefix()
}
