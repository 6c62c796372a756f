//! The host's two vtables: tensor operations and host services.
//!
//! Operations that come in families (unary maps, binary maps, reductions,
//! comparisons) take an op code: a `u32` newtype with named constants, so a later
//! minor version can add codes without changing any layout. A host that does not
//! know a code answers with an [`super::ErrorKind::UNSUPPORTED`] error naming it.

use super::{AbiResult, DType, ModelDetails, ParamId, TensorId, Which};
use abi_stable::{
    StableAbi,
    std_types::{ROption, RSlice, RStr, RString, RVec},
};

macro_rules! op_codes {
    ($(#[$m:meta])* $ty:ident { $($(#[$cm:meta])* $name:ident = $v:expr => $s:literal,)* }) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
        pub struct $ty(pub u32);
        impl $ty {
            $($(#[$cm])* pub const $name: Self = Self($v);)*
            /// The op's name, or `None` for a code this version does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($v => Some($s),)* _ => None }
            }
        }
    };
}

op_codes! {
    /// Elementwise maps of one float tensor.
    UnaryOp {
        /// `-x`
        NEG = 0 => "neg",
        /// `exp(x)`
        EXP = 1 => "exp",
        /// `ln(x)`
        LOG = 2 => "log",
        /// `sqrt(x)`
        SQRT = 3 => "sqrt",
        /// `|x|`
        ABS = 4 => "abs",
        /// `tanh(x)`
        TANH = 5 => "tanh",
        /// `1 / (1 + exp(-x))`
        SIGMOID = 6 => "sigmoid",
        /// `max(x, 0)`
        RELU = 7 => "relu",
        /// `x · sigmoid(x)`
        SILU = 8 => "silu",
        /// GELU (erf form)
        GELU = 9 => "gelu",
        /// `sin(x)`
        SIN = 10 => "sin",
        /// `cos(x)`
        COS = 11 => "cos",
        /// `1 / x`
        RECIP = 12 => "recip",
        /// `ln(1 + exp(x))`, computed stably
        SOFTPLUS = 13 => "softplus",
        /// `x²`
        SQUARE = 14 => "square",
    }
}

op_codes! {
    /// Elementwise maps of two float tensors, with broadcasting.
    BinaryOp {
        /// `a + b`
        ADD = 0 => "add",
        /// `a − b`
        SUB = 1 => "sub",
        /// `a · b`
        MUL = 2 => "mul",
        /// `a / b`
        DIV = 3 => "div",
        /// `a^b`
        POW = 4 => "pow",
        /// `max(a, b)`
        MAX = 5 => "max",
        /// `min(a, b)`
        MIN = 6 => "min",
    }
}

op_codes! {
    /// Elementwise maps of a float tensor and a scalar `s`.
    ScalarOp {
        /// `x + s`
        ADD = 0 => "add_scalar",
        /// `x − s`
        SUB = 1 => "sub_scalar",
        /// `x · s`
        MUL = 2 => "mul_scalar",
        /// `x / s`
        DIV = 3 => "div_scalar",
        /// `x^s`
        POW = 4 => "pow_scalar",
        /// `s − x`
        RSUB = 5 => "rsub_scalar",
        /// `s / x`
        RDIV = 6 => "rdiv_scalar",
    }
}

op_codes! {
    /// Reductions over a set of dimensions.
    ReduceOp {
        /// sum
        SUM = 0 => "sum",
        /// mean
        MEAN = 1 => "mean",
        /// maximum
        MAX = 2 => "max",
        /// minimum
        MIN = 3 => "min",
    }
}

op_codes! {
    /// Comparisons; the result is a bool tensor.
    CompareOp {
        /// `a == b`
        EQ = 0 => "eq",
        /// `a > b`
        GT = 1 => "gt",
        /// `a >= b`
        GE = 2 => "ge",
        /// `a < b`
        LT = 3 => "lt",
        /// `a <= b`
        LE = 4 => "le",
    }
}

op_codes! {
    /// Interpolation modes.
    InterpolateMode {
        /// nearest neighbour
        NEAREST = 0 => "nearest",
        /// bilinear (align_corners = false)
        BILINEAR = 1 => "bilinear",
    }
}

op_codes! {
    /// Random distributions for [`TensorOps::random`].
    Distribution {
        /// Normal with mean `a` and standard deviation `b`.
        NORMAL = 0 => "normal",
        /// Uniform on `[a, b)`.
        UNIFORM = 1 => "uniform",
    }
}

/// A `start..end` range with a step along one dimension, for [`TensorOps::slice`].
/// Negative `start`/`end` count from the end; `end = i64::MAX` means "to the end".
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub struct SliceRange {
    /// First index.
    pub start: i64,
    /// One past the last index.
    pub end: i64,
    /// Step (> 0).
    pub step: i64,
}

/// Options of a 2-D convolution (NCHW input, `[C_out, C_in/groups, kH, kW]` weight).
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Zero padding `[h, w]`.
    pub padding: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
    /// Extra output padding `[h, w]` (transposed convolution only).
    pub padding_out: [usize; 2],
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            padding_out: [0, 0],
        }
    }
}

/// Initialisation law of a parameter, for [`HostServices::param_new`].
#[repr(C)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq)]
pub struct ParamInit {
    /// The law ([`ParamInit::ZEROS`], …).
    pub kind: u32,
    /// First argument (value, bound, or standard deviation).
    pub a: f32,
    /// Second argument (upper bound).
    pub b: f32,
}

impl ParamInit {
    /// All zeros.
    pub const ZEROS: u32 = 0;
    /// All `a`.
    pub const CONSTANT: u32 = 1;
    /// Uniform on `[a, b)`.
    pub const UNIFORM: u32 = 2;
    /// Normal with mean 0 and standard deviation `a`.
    pub const NORMAL: u32 = 3;

    /// All zeros.
    pub fn zeros() -> Self {
        Self {
            kind: Self::ZEROS,
            a: 0.0,
            b: 0.0,
        }
    }
    /// All `value`.
    pub fn constant(value: f32) -> Self {
        Self {
            kind: Self::CONSTANT,
            a: value,
            b: 0.0,
        }
    }
    /// Uniform on `[lo, hi)`.
    pub fn uniform(lo: f32, hi: f32) -> Self {
        Self {
            kind: Self::UNIFORM,
            a: lo,
            b: hi,
        }
    }
    /// Normal with mean 0 and standard deviation `std`.
    pub fn normal(std: f32) -> Self {
        Self {
            kind: Self::NORMAL,
            a: std,
            b: 0.0,
        }
    }
}

/// A batch from the host's datasets, for [`HostServices::dataset_batch`].
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DataBatch {
    /// Samples (images `[B, C, H, W]` in [-1, 1], or vectors `[B, D]`).
    pub x: TensorId,
    /// Labels `[B]` (i64), when the set has them.
    pub labels: ROption<TensorId>,
}

/// Every tensor operation a plugin can run. The host implements it over its own
/// tensors (with autodiff), so gradients flow through plugin computations.
///
/// Float ops take and return `f32` tensors; integer tensors are for indices and
/// labels; bool tensors are masks. Each returned [`TensorId`] is owned by the caller.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = TensorOpsRef)))]
#[sabi(missing_field(option))]
pub struct TensorOps {
    /// Releases a handle.
    pub release: extern "C" fn(x: TensorId),
    /// A second handle to the same tensor (no copy).
    pub clone_handle: extern "C" fn(x: TensorId) -> AbiResult<TensorId>,
    /// Shape.
    pub shape: extern "C" fn(x: TensorId) -> AbiResult<RVec<usize>>,
    /// Element type.
    pub dtype: extern "C" fn(x: TensorId) -> AbiResult<DType>,
    /// Device, as the host names it (`cpu`, `cuda:0`).
    pub device: extern "C" fn(x: TensorId) -> AbiResult<RString>,
    /// A float tensor from row-major data.
    pub from_f32:
        extern "C" fn(data: RSlice<'_, f32>, shape: RSlice<'_, usize>) -> AbiResult<TensorId>,
    /// An integer tensor from row-major data.
    pub from_i64:
        extern "C" fn(data: RSlice<'_, i64>, shape: RSlice<'_, usize>) -> AbiResult<TensorId>,
    /// Row-major data of a tensor as `f32` (integers and bools converted).
    pub to_f32: extern "C" fn(x: TensorId) -> AbiResult<RVec<f32>>,
    /// Row-major data of a tensor as `i64` (floats truncated, bools 0/1).
    pub to_i64: extern "C" fn(x: TensorId) -> AbiResult<RVec<i64>>,
    /// A tensor filled with `value`.
    pub full:
        extern "C" fn(shape: RSlice<'_, usize>, value: f64, dtype: DType) -> AbiResult<TensorId>,
    /// A float tensor drawn from the host's seeded RNG.
    pub random: extern "C" fn(
        shape: RSlice<'_, usize>,
        dist: Distribution,
        a: f32,
        b: f32,
    ) -> AbiResult<TensorId>,
    /// Converts between element types.
    pub cast: extern "C" fn(x: TensorId, dtype: DType) -> AbiResult<TensorId>,
    /// Elementwise map of one tensor.
    pub unary: extern "C" fn(op: UnaryOp, x: TensorId) -> AbiResult<TensorId>,
    /// Elementwise map of two tensors (broadcasting).
    pub binary: extern "C" fn(op: BinaryOp, a: TensorId, b: TensorId) -> AbiResult<TensorId>,
    /// Elementwise map of a tensor and a scalar.
    pub scalar: extern "C" fn(op: ScalarOp, x: TensorId, s: f32) -> AbiResult<TensorId>,
    /// Clamps to `[min, max]`.
    pub clamp: extern "C" fn(x: TensorId, min: f32, max: f32) -> AbiResult<TensorId>,
    /// Elementwise comparison of two tensors (broadcasting); a bool tensor.
    pub compare: extern "C" fn(op: CompareOp, a: TensorId, b: TensorId) -> AbiResult<TensorId>,
    /// Elementwise comparison with a scalar; a bool tensor.
    pub compare_scalar: extern "C" fn(op: CompareOp, x: TensorId, s: f32) -> AbiResult<TensorId>,
    /// `mask ? a : b`, elementwise (broadcasting).
    pub where_: extern "C" fn(mask: TensorId, a: TensorId, b: TensorId) -> AbiResult<TensorId>,
    /// Batched matrix product over the last two dims (leading dims broadcast).
    pub matmul: extern "C" fn(a: TensorId, b: TensorId) -> AbiResult<TensorId>,
    /// Reduction over `dims` (all dims when empty).
    pub reduce: extern "C" fn(
        op: ReduceOp,
        x: TensorId,
        dims: RSlice<'_, usize>,
        keepdim: bool,
    ) -> AbiResult<TensorId>,
    /// Index of the maximum along `dim` (keeps the dim, i64).
    pub argmax: extern "C" fn(x: TensorId, dim: usize) -> AbiResult<TensorId>,
    /// Softmax along `dim`.
    pub softmax: extern "C" fn(x: TensorId, dim: usize) -> AbiResult<TensorId>,
    /// Log-softmax along `dim`.
    pub log_softmax: extern "C" fn(x: TensorId, dim: usize) -> AbiResult<TensorId>,
    /// Reshape; one entry may be `-1`.
    pub reshape: extern "C" fn(x: TensorId, shape: RSlice<'_, i64>) -> AbiResult<TensorId>,
    /// Permutes dims.
    pub permute: extern "C" fn(x: TensorId, axes: RSlice<'_, usize>) -> AbiResult<TensorId>,
    /// Swaps two dims.
    pub transpose: extern "C" fn(x: TensorId, dim0: usize, dim1: usize) -> AbiResult<TensorId>,
    /// Slices; one range per leading dim (missing dims are whole).
    pub slice: extern "C" fn(x: TensorId, ranges: RSlice<'_, SliceRange>) -> AbiResult<TensorId>,
    /// Concatenates along `dim`.
    pub cat: extern "C" fn(xs: RSlice<'_, TensorId>, dim: usize) -> AbiResult<TensorId>,
    /// Stacks along a new `dim`.
    pub stack: extern "C" fn(xs: RSlice<'_, TensorId>, dim: usize) -> AbiResult<TensorId>,
    /// Broadcasts to `shape` (size-1 dims expand; new leading dims allowed).
    pub expand: extern "C" fn(x: TensorId, shape: RSlice<'_, usize>) -> AbiResult<TensorId>,
    /// Selects entries along `dim` by a 1-D i64 index tensor.
    pub index_select:
        extern "C" fn(x: TensorId, dim: usize, index: TensorId) -> AbiResult<TensorId>,
    /// `out[..i..] = x[..index[..i..]..]` along `dim` (index has x's rank).
    pub gather: extern "C" fn(x: TensorId, dim: usize, index: TensorId) -> AbiResult<TensorId>,
    /// 2-D convolution; `bias` is `[C_out]`.
    pub conv2d: extern "C" fn(
        x: TensorId,
        weight: TensorId,
        bias: ROption<TensorId>,
        opts: Conv2dOptions,
    ) -> AbiResult<TensorId>,
    /// 2-D transposed convolution; weight `[C_in, C_out/groups, kH, kW]`.
    pub conv_transpose2d: extern "C" fn(
        x: TensorId,
        weight: TensorId,
        bias: ROption<TensorId>,
        opts: Conv2dOptions,
    ) -> AbiResult<TensorId>,
    /// Resizes `[B, C, H, W]` to `[B, C, out_h, out_w]`.
    pub interpolate: extern "C" fn(
        x: TensorId,
        out_h: usize,
        out_w: usize,
        mode: InterpolateMode,
    ) -> AbiResult<TensorId>,
    /// Group norm over `[B, C, …]` with optional affine `[C]`.
    pub group_norm: extern "C" fn(
        x: TensorId,
        groups: usize,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f32,
    ) -> AbiResult<TensorId>,
    /// Layer norm over the last dim with optional affine `[D]`.
    pub layer_norm: extern "C" fn(
        x: TensorId,
        gamma: ROption<TensorId>,
        beta: ROption<TensorId>,
        eps: f32,
    ) -> AbiResult<TensorId>,
    /// The same values with no gradient history.
    pub detach: extern "C" fn(x: TensorId) -> AbiResult<TensorId>,
    /// A leaf copy of `x` that tracks gradients (for [`TensorOps::grad`]).
    pub require_grad: extern "C" fn(x: TensorId) -> AbiResult<TensorId>,
    /// ∇ of the scalar `y` w.r.t. each of `wrt` (each made by `require_grad` or a
    /// parameter), computed by the host's autodiff. The gradients carry no history.
    /// Consumes `y`'s graph: use in `score`, `filter` and `prepare`, not in `loss`.
    ///
    /// This is the last field of the first version of the ABI.
    #[sabi(last_prefix_field)]
    pub grad: extern "C" fn(y: TensorId, wrt: RSlice<'_, TensorId>) -> AbiResult<RVec<TensorId>>,
}

/// Services the host offers plugins beyond tensor ops.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostServicesRef)))]
#[sabi(missing_field(option))]
pub struct HostServices {
    /// The host's version (`dtx` crate version).
    pub host_version: extern "C" fn() -> RString,
    /// Registers a trainable parameter of the plugin being constructed; the host
    /// trains it, keeps its EMA and saves it in checkpoints as
    /// `plugin.<plugin>.<name>`.
    pub param_new: extern "C" fn(
        name: RStr<'_>,
        shape: RSlice<'_, usize>,
        init: ParamInit,
    ) -> AbiResult<ParamId>,
    /// The parameter's current value (tracks gradients).
    pub param_value: extern "C" fn(id: ParamId) -> AbiResult<TensorId>,
    /// Logs a scalar as `<plugin>.<name>` at the current step.
    pub log_scalar: extern "C" fn(name: RStr<'_>, value: f64),
    /// Runs a denoiser on `x_t` at `t`: the student (with plugin modules) or the
    /// frozen source. Returns the ε prediction.
    pub denoise: extern "C" fn(
        x_t: TensorId,
        t: TensorId,
        which: Which,
        labels: ROption<TensorId>,
    ) -> AbiResult<TensorId>,
    /// Activations of a denoiser at named injection points (differentiable w.r.t. `x`).
    pub features: extern "C" fn(
        x: TensorId,
        t: TensorId,
        points: RSlice<'_, RStr<'_>>,
        which: Which,
    ) -> AbiResult<RVec<TensorId>>,
    /// `ᾱ_t` of the run's noise schedule at integer timesteps `t` (`[B]` → `[B]`).
    pub alpha_bar: extern "C" fn(t: TensorId) -> AbiResult<TensorId>,
    /// The next batch of a dataset split (`source`, `target`, `validation`).
    pub dataset_batch: extern "C" fn(split: RStr<'_>, batch: usize) -> AbiResult<DataBatch>,
    /// One optimizer step on `params` for the scalar `loss` (for `prepare`), with
    /// learning rate `lr`; the host keeps an Adam state per parameter.
    ///
    /// This is the last field of the first version of the ABI (0.1).
    #[sabi(last_prefix_field)]
    pub optimizer_step:
        extern "C" fn(params: RSlice<'_, ParamId>, loss: TensorId, lr: f32) -> AbiResult<()>,
    /// T, the number of timesteps of the run's noise schedule (`t` in `0..T`).
    /// Added in 0.2; read as `None` from an older host.
    pub num_timesteps: extern "C" fn() -> AbiResult<usize>,
    /// `count` samples of the frozen source model alone (no plugin hooks), with
    /// the run's sampler (its `[sample]` settings, else 50 DDIM steps): `[count, …]`.
    /// `labels` `[count]` for a class-conditional source. Added in 0.2.
    pub sample_source:
        extern "C" fn(count: usize, labels: ROption<TensorId>) -> AbiResult<TensorId>,
    /// `[N, D_c]`, the shape of one condition embedding of the run's
    /// `[condition]` encoder (`N` tokens of width `D_c`); empty when the run
    /// has none. Available while a plugin is constructed. Added in 0.3.
    pub condition_shape: extern "C" fn() -> AbiResult<RVec<usize>>,
    /// Condition embeddings `[B, N, D_c]` of images `[B, C, H, W]` in data
    /// space ([−1, 1]) with the run's `[condition]` encoder. Added in 0.3.
    pub encode_image: extern "C" fn(x: TensorId) -> AbiResult<TensorId>,
    /// The condition embedding `[1, N, D_c]` of a text prompt (a CLIP
    /// `[condition]` encoder only). Added in 0.3.
    pub encode_text: extern "C" fn(prompt: RStr<'_>) -> AbiResult<TensorId>,
    /// The run's denoiser beyond `ModelInfo`: its prediction type, class
    /// count, data shape and every base parameter (key, shape, role,
    /// block). Available while a plugin is constructed. Added in 0.4.
    pub model_details: extern "C" fn() -> AbiResult<ModelDetails>,
    /// An input of the running hook beyond its context struct, by name;
    /// `None` when the hook has no such input. The contexts' layouts are
    /// fixed within a major version: a later minor version adds hook inputs
    /// here instead (api 0.4 defines none). Added in 0.4.
    pub hook_input: extern "C" fn(name: RStr<'_>) -> AbiResult<ROption<TensorId>>,
    /// `features` with class `labels` `[B]` for a class-conditional model
    /// (and for the plugins' `inject`s that read labels). Added in 0.4.
    pub features_labelled: extern "C" fn(
        x: TensorId,
        t: TensorId,
        points: RSlice<'_, RStr<'_>>,
        which: Which,
        labels: ROption<TensorId>,
    ) -> AbiResult<RVec<TensorId>>,
}
