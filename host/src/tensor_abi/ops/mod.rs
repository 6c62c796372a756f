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

mod data;
mod elementwise;
mod grad;
mod modules;
mod reduce;
mod shape;

use data::*;
use elementwise::*;
use grad::*;
use modules::*;
use reduce::*;
use shape::*;

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

/// Runs `f` and never lets a panic out: errors pass through; a panic becomes
/// a [`ErrorKind::SHAPE`] error saying what failed (`what` is only called then).
pub(crate) fn guard<T>(
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<T, AbiError>,
) -> AbiResult<T> {
    let was = IN_OP.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_OP.with(|c| c.set(was));
    match result {
        Ok(r) => r.into(),
        Err(payload) => Err(AbiError::new(
            ErrorKind::SHAPE,
            format!("{} failed: {}", what(), panic_message(payload)),
        ))
        .into(),
    }
}

/// Runs one tensor op under [`guard`].
fn run<T>(op: &str, f: impl FnOnce() -> Result<T, AbiError>) -> AbiResult<T> {
    guard(|| format!("tensor op `{op}`"), f)
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

/// The element count of a tensor of `shape` that a plugin asks the host to
/// create, or an error when it overflows or cannot fit in memory (a plugin
/// config's huge width must not abort the process).
fn alloc(shape: &[usize]) -> Result<usize, AbiError> {
    crate::util::check_allocation(shape, 8).map_err(|e| shape_err(e.to_string()))
}

fn check_len(len: usize, shape: &[usize]) -> Result<(), AbiError> {
    let n = alloc(shape)?;
    if n != len {
        return Err(shape_err(format!(
            "{len} values do not fill shape {shape:?} ({n} elements)"
        )));
    }
    Ok(())
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
