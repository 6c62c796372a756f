//! [`Tensor`]: an RAII handle to a tensor the host owns.
//!
//! Every method runs a host operation through the [`TensorOps`] vtable.
//!
//! Sizes and shapes are `usize` everywhere (`shape()`, `dim()`, `reshape`,
//! `narrow`'s start and length, constructors); an axis argument is an `isize`
//! that counts from the end when negative (`softmax(-1)`, `permute(&[0, 2, 1, 3])`,
//! `cat(.., 1)`). No call needs a cast between integer types.
//!
//! Operations that the host rejects (mismatched shapes, a released handle) unwind with the
//! host's [`AbiError`] as payload (without printing a panic message); the plugin
//! adapter catches it and returns it from the hook with the plugin's and hook's
//! names. So plugin code reads like ordinary tensor code: `(&a + &b).matmul(&w)`.

use crate::abi::{
    AbiError, AbiResult, BinaryOp, CompareOp, Conv2dOptions, DType, Distribution, HostVtables,
    InterpolateMode, ReduceOp, ScalarOp, SliceRange, TensorId, TensorOpsRef, UnaryOp,
};
use abi_stable::std_types::{RNone, ROption, RSome};
use std::mem::ManuallyDrop;
use std::ops::{Add, Deref, Div, Mul, Neg, Sub};
use std::sync::OnceLock;

static VTABLES: OnceLock<HostVtables> = OnceLock::new();

/// Stores the host's vtables (called by the root module's `init_host`). The first
/// call wins; a host loads each library once.
pub fn install(vtables: HostVtables) {
    let _ = VTABLES.set(vtables);
}

pub(crate) fn vtables() -> &'static HostVtables {
    VTABLES.get().unwrap_or_else(|| {
        fail(AbiError::other(
            "dtx-plugin-api: no host vtables installed (the host calls init_host before new)",
        ))
    })
}

fn ops() -> TensorOpsRef {
    vtables().tensor
}

/// Unwinds with `err` as payload, without running the panic hook (no message is
/// printed); the plugin adapter turns it back into an error.
pub(crate) fn fail(err: AbiError) -> ! {
    std::panic::resume_unwind(Box::new(err))
}

pub(crate) fn check<T>(r: AbiResult<T>) -> T {
    r.into_result().unwrap_or_else(|e| fail(e))
}

/// A tensor owned by the host. Dropping it releases the host's handle.
#[derive(Debug)]
pub struct Tensor {
    id: TensorId,
}

/// A tensor borrowed from a hook context: usable as a [`Tensor`] (through `Deref`),
/// released by the host after the hook returns.
#[derive(Debug)]
pub struct TensorRef(ManuallyDrop<Tensor>);

impl TensorRef {
    /// Borrows a handle the host keeps.
    ///
    /// # Safety
    /// `id` must stay valid for as long as the `TensorRef` is used.
    pub unsafe fn from_raw(id: TensorId) -> TensorRef {
        TensorRef(ManuallyDrop::new(Tensor { id }))
    }
}

impl Deref for TensorRef {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        if let Some(v) = VTABLES.get() {
            (v.tensor.release())(self.id)
        }
    }
}

impl Clone for Tensor {
    fn clone(&self) -> Tensor {
        Tensor::wrap((ops().clone_handle())(self.id))
    }
}

impl Tensor {
    fn wrap(r: AbiResult<TensorId>) -> Tensor {
        Tensor { id: check(r) }
    }

    /// Takes ownership of a handle the host gave.
    ///
    /// # Safety
    /// `id` must be a live handle owned by the caller.
    pub unsafe fn from_raw(id: TensorId) -> Tensor {
        Tensor { id }
    }

    /// Gives the handle away (to return it to the host).
    pub fn into_raw(self) -> TensorId {
        let this = ManuallyDrop::new(self);
        this.id
    }

    /// The raw handle, still owned by `self`.
    pub fn id(&self) -> TensorId {
        self.id
    }

    // --- creation -----------------------------------------------------------

    /// A float tensor from row-major data.
    pub fn from_f32(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::wrap((ops().from_f32())(data.into(), shape.into()))
    }

    /// An i64 tensor from row-major data (indices, labels).
    pub fn from_i64(data: &[i64], shape: &[usize]) -> Tensor {
        Tensor::wrap((ops().from_i64())(data.into(), shape.into()))
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        Tensor::wrap((ops().full())(shape.into(), value, dtype))
    }

    /// Float zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0, DType::F32)
    }

    /// Float ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0, DType::F32)
    }

    /// Standard normal samples from the host's seeded RNG.
    pub fn randn(shape: &[usize]) -> Tensor {
        Tensor::wrap((ops().random())(
            shape.into(),
            Distribution::NORMAL,
            0.0,
            1.0,
        ))
    }

    /// Uniform samples on `[lo, hi)` from the host's seeded RNG.
    pub fn rand(shape: &[usize], lo: f32, hi: f32) -> Tensor {
        Tensor::wrap((ops().random())(
            shape.into(),
            Distribution::UNIFORM,
            lo,
            hi,
        ))
    }

    // --- queries ------------------------------------------------------------

    /// Shape.
    pub fn shape(&self) -> Vec<usize> {
        check((ops().shape())(self.id)).into_vec()
    }

    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> usize {
        let shape = self.shape();
        shape[self.axis(d, shape.len())]
    }

    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        check((ops().dtype())(self.id))
    }

    /// Device name (`cpu`, `cuda:0`).
    pub fn device(&self) -> String {
        check((ops().device())(self.id)).into()
    }

    /// Row-major values as `f32`.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        check((ops().to_f32())(self.id)).into_vec()
    }

    /// Row-major values as `i64`.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        check((ops().to_i64())(self.id)).into_vec()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f32 {
        let v = self.to_f32_vec();
        if v.len() != 1 {
            fail(AbiError::new(
                crate::abi::ErrorKind::SHAPE,
                format!("item() on a tensor of shape {:?}", self.shape()),
            ));
        }
        v[0]
    }

    fn axis(&self, d: isize, rank: usize) -> usize {
        let a = if d < 0 { rank as isize + d } else { d };
        if a < 0 || a as usize >= rank {
            fail(AbiError::new(
                crate::abi::ErrorKind::SHAPE,
                format!("dim {d} is out of range for rank {rank}"),
            ));
        }
        a as usize
    }

    // --- elementwise --------------------------------------------------------

    /// Converts to another element type.
    pub fn cast(&self, dtype: DType) -> Tensor {
        Tensor::wrap((ops().cast())(self.id, dtype))
    }

    fn unary(&self, op: UnaryOp) -> Tensor {
        Tensor::wrap((ops().unary())(op, self.id))
    }

    fn binary(&self, op: BinaryOp, other: &Tensor) -> Tensor {
        Tensor::wrap((ops().binary())(op, self.id, other.id))
    }

    fn scalar(&self, op: ScalarOp, s: f32) -> Tensor {
        Tensor::wrap((ops().scalar())(op, self.id, s))
    }

    /// `exp(x)`.
    pub fn exp(&self) -> Tensor {
        self.unary(UnaryOp::EXP)
    }
    /// `ln(x)`.
    pub fn log(&self) -> Tensor {
        self.unary(UnaryOp::LOG)
    }
    /// `sqrt(x)`.
    pub fn sqrt(&self) -> Tensor {
        self.unary(UnaryOp::SQRT)
    }
    /// `|x|`.
    pub fn abs(&self) -> Tensor {
        self.unary(UnaryOp::ABS)
    }
    /// `x²`.
    pub fn square(&self) -> Tensor {
        self.unary(UnaryOp::SQUARE)
    }
    /// `1 / x`.
    pub fn recip(&self) -> Tensor {
        self.unary(UnaryOp::RECIP)
    }
    /// `tanh(x)`.
    pub fn tanh(&self) -> Tensor {
        self.unary(UnaryOp::TANH)
    }
    /// `sigmoid(x)`.
    pub fn sigmoid(&self) -> Tensor {
        self.unary(UnaryOp::SIGMOID)
    }
    /// `max(x, 0)`.
    pub fn relu(&self) -> Tensor {
        self.unary(UnaryOp::RELU)
    }
    /// `x · sigmoid(x)`.
    pub fn silu(&self) -> Tensor {
        self.unary(UnaryOp::SILU)
    }
    /// GELU (erf form).
    pub fn gelu(&self) -> Tensor {
        self.unary(UnaryOp::GELU)
    }
    /// `ln(1 + exp(x))`.
    pub fn softplus(&self) -> Tensor {
        self.unary(UnaryOp::SOFTPLUS)
    }
    /// `sin(x)`.
    pub fn sin(&self) -> Tensor {
        self.unary(UnaryOp::SIN)
    }
    /// `cos(x)`.
    pub fn cos(&self) -> Tensor {
        self.unary(UnaryOp::COS)
    }
    /// `x^p` elementwise.
    pub fn pow(&self, p: &Tensor) -> Tensor {
        self.binary(BinaryOp::POW, p)
    }
    /// `x^p` for a scalar `p`.
    pub fn powf(&self, p: f32) -> Tensor {
        self.scalar(ScalarOp::POW, p)
    }
    /// `s − x`.
    pub fn rsub(&self, s: f32) -> Tensor {
        self.scalar(ScalarOp::RSUB, s)
    }
    /// `s / x`.
    pub fn rdiv(&self, s: f32) -> Tensor {
        self.scalar(ScalarOp::RDIV, s)
    }
    /// Elementwise maximum.
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::MAX, other)
    }
    /// Elementwise minimum.
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        self.binary(BinaryOp::MIN, other)
    }
    /// Clamps to `[min, max]`.
    pub fn clamp(&self, min: f32, max: f32) -> Tensor {
        Tensor::wrap((ops().clamp())(self.id, min, max))
    }

    /// Elementwise comparison (bool result).
    pub fn compare(&self, op: CompareOp, other: &Tensor) -> Tensor {
        Tensor::wrap((ops().compare())(op, self.id, other.id))
    }
    /// Elementwise comparison with a scalar (bool result).
    pub fn compare_scalar(&self, op: CompareOp, s: f32) -> Tensor {
        Tensor::wrap((ops().compare_scalar())(op, self.id, s))
    }
    /// `self ? a : b`, with `self` a bool mask.
    pub fn where_(&self, a: &Tensor, b: &Tensor) -> Tensor {
        Tensor::wrap((ops().where_())(self.id, a.id, b.id))
    }

    // --- linear algebra and reductions --------------------------------------

    /// Batched matrix product over the last two dims.
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        Tensor::wrap((ops().matmul())(self.id, other.id))
    }

    fn reduce(&self, op: ReduceOp, dims: &[isize], keepdim: bool) -> Tensor {
        let rank = self.rank();
        let dims: Vec<usize> = dims.iter().map(|&d| self.axis(d, rank)).collect();
        Tensor::wrap((ops().reduce())(
            op,
            self.id,
            dims.as_slice().into(),
            keepdim,
        ))
    }

    /// Sum of all elements (shape `[1]`).
    pub fn sum(&self) -> Tensor {
        self.reduce(ReduceOp::SUM, &[], false)
    }
    /// Mean of all elements (shape `[1]`).
    pub fn mean(&self) -> Tensor {
        self.reduce(ReduceOp::MEAN, &[], false)
    }
    /// Sum over `dims`.
    pub fn sum_dims(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::SUM, dims, keepdim)
    }
    /// Mean over `dims`.
    pub fn mean_dims(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::MEAN, dims, keepdim)
    }
    /// Maximum over `dims`.
    pub fn max_dims(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::MAX, dims, keepdim)
    }
    /// Minimum over `dims`.
    pub fn min_dims(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::MIN, dims, keepdim)
    }
    /// Index of the maximum along `dim` (kept, i64).
    pub fn argmax(&self, dim: isize) -> Tensor {
        let d = self.axis(dim, self.rank());
        Tensor::wrap((ops().argmax())(self.id, d))
    }
    /// Softmax along `dim`.
    pub fn softmax(&self, dim: isize) -> Tensor {
        let d = self.axis(dim, self.rank());
        Tensor::wrap((ops().softmax())(self.id, d))
    }
    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Tensor {
        let d = self.axis(dim, self.rank());
        Tensor::wrap((ops().log_softmax())(self.id, d))
    }

    // --- shape --------------------------------------------------------------

    /// Reshape to `shape` (same number of elements; [`Tensor::flatten`]
    /// merges trailing dims without spelling their product).
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Tensor::wrap((ops().reshape())(self.id, dims.as_slice().into()))
    }
    /// Merges the dims from `start` (negative counts from the end) to the
    /// last into one: `[B, C, H, W].flatten(1)` is `[B, C·H·W]`.
    pub fn flatten(&self, start: isize) -> Tensor {
        let shape = self.shape();
        let s = self.axis(start, shape.len());
        let mut dims = shape[..s].to_vec();
        dims.push(shape[s..].iter().product());
        self.reshape(&dims)
    }
    /// Permutes dims (each axis may count from the end when negative).
    pub fn permute(&self, axes: &[isize]) -> Tensor {
        let rank = self.rank();
        let axes: Vec<usize> = axes.iter().map(|&a| self.axis(a, rank)).collect();
        Tensor::wrap((ops().permute())(self.id, axes.as_slice().into()))
    }
    /// Swaps two dims (negative counts from the end).
    pub fn transpose(&self, d0: isize, d1: isize) -> Tensor {
        let rank = self.rank();
        let (a, b) = (self.axis(d0, rank), self.axis(d1, rank));
        Tensor::wrap((ops().transpose())(self.id, a, b))
    }
    /// Slices `start..end` along `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Tensor {
        let rank = self.rank();
        let d = self.axis(dim, rank);
        let mut ranges = vec![
            SliceRange {
                start: 0,
                end: i64::MAX,
                step: 1
            };
            rank
        ];
        ranges[d] = SliceRange {
            start: start as i64,
            end: (start + len) as i64,
            step: 1,
        };
        self.slice(&ranges)
    }
    /// Slices with one range per leading dim.
    pub fn slice(&self, ranges: &[SliceRange]) -> Tensor {
        Tensor::wrap((ops().slice())(self.id, ranges.into()))
    }
    /// Concatenates along `dim` (negative counts from the end).
    pub fn cat(xs: &[&Tensor], dim: isize) -> Tensor {
        let ids: Vec<TensorId> = xs.iter().map(|t| t.id).collect();
        let d = match xs.first() {
            Some(x) => x.axis(dim, x.rank()),
            None => dim.max(0) as usize,
        };
        Tensor::wrap((ops().cat())(ids.as_slice().into(), d))
    }
    /// Stacks along a new `dim` (negative counts from the end of the result).
    pub fn stack(xs: &[&Tensor], dim: isize) -> Tensor {
        let ids: Vec<TensorId> = xs.iter().map(|t| t.id).collect();
        let d = match xs.first() {
            Some(x) => x.axis(dim, x.rank() + 1),
            None => dim.max(0) as usize,
        };
        Tensor::wrap((ops().stack())(ids.as_slice().into(), d))
    }
    /// Broadcasts to `shape`.
    pub fn expand(&self, shape: &[usize]) -> Tensor {
        Tensor::wrap((ops().expand())(self.id, shape.into()))
    }
    /// Selects along `dim` (negative counts from the end) with a 1-D i64 index.
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Tensor {
        let d = self.axis(dim, self.rank());
        Tensor::wrap((ops().index_select())(self.id, d, index.id))
    }
    /// Gathers along `dim` (negative counts from the end) with an i64 index
    /// of the same rank.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Tensor {
        let d = self.axis(dim, self.rank());
        Tensor::wrap((ops().gather())(self.id, d, index.id))
    }

    // --- modules ------------------------------------------------------------

    /// 2-D convolution (NCHW).
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: Conv2dOptions) -> Tensor {
        Tensor::wrap((ops().conv2d())(self.id, weight.id, opt_id(bias), opts))
    }
    /// 2-D transposed convolution (NCHW).
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
    ) -> Tensor {
        Tensor::wrap((ops().conv_transpose2d())(
            self.id,
            weight.id,
            opt_id(bias),
            opts,
        ))
    }
    /// Resizes the spatial dims of `[B, C, H, W]`.
    pub fn interpolate(&self, out_hw: [usize; 2], mode: InterpolateMode) -> Tensor {
        Tensor::wrap((ops().interpolate())(self.id, out_hw[0], out_hw[1], mode))
    }
    /// Group norm with optional affine.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: Option<&Tensor>,
        beta: Option<&Tensor>,
        eps: f32,
    ) -> Tensor {
        Tensor::wrap((ops().group_norm())(
            self.id,
            groups,
            opt_id(gamma),
            opt_id(beta),
            eps,
        ))
    }
    /// Layer norm over the last dim with optional affine.
    pub fn layer_norm(&self, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32) -> Tensor {
        Tensor::wrap((ops().layer_norm())(
            self.id,
            opt_id(gamma),
            opt_id(beta),
            eps,
        ))
    }

    // --- gradients ----------------------------------------------------------

    /// The same values without gradient history.
    pub fn detach(&self) -> Tensor {
        Tensor::wrap((ops().detach())(self.id))
    }
    /// A leaf copy that tracks gradients, for [`Tensor::grad`].
    pub fn require_grad(&self) -> Tensor {
        Tensor::wrap((ops().require_grad())(self.id))
    }
    /// ∇ of the scalar `self` w.r.t. each of `wrt` (see [`TensorOps::grad`]).
    ///
    /// [`TensorOps::grad`]: crate::abi::TensorOps
    pub fn grad(&self, wrt: &[&Tensor]) -> Vec<Tensor> {
        let ids: Vec<TensorId> = wrt.iter().map(|t| t.id).collect();
        check((ops().grad())(self.id, ids.as_slice().into()))
            .into_iter()
            .map(|id| Tensor { id })
            .collect()
    }
}

fn opt_id(t: Option<&Tensor>) -> ROption<TensorId> {
    match t {
        Some(t) => RSome(t.id),
        None => RNone,
    }
}

macro_rules! binary_operator {
    ($trait:ident, $method:ident, $op:expr, $sop:expr) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.binary($op, rhs)
            }
        }
        impl $trait<Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                self.binary($op, &rhs)
            }
        }
        impl $trait<&Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.binary($op, rhs)
            }
        }
        impl $trait<Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                self.binary($op, &rhs)
            }
        }
        impl $trait<f32> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f32) -> Tensor {
                self.scalar($sop, rhs)
            }
        }
        impl $trait<f32> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: f32) -> Tensor {
                self.scalar($sop, rhs)
            }
        }
    };
}

binary_operator!(Add, add, BinaryOp::ADD, ScalarOp::ADD);
binary_operator!(Sub, sub, BinaryOp::SUB, ScalarOp::SUB);
binary_operator!(Mul, mul, BinaryOp::MUL, ScalarOp::MUL);
binary_operator!(Div, div, BinaryOp::DIV, ScalarOp::DIV);

impl Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::NEG)
    }
}

impl Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::NEG)
    }
}
