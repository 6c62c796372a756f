//! Plain data that crosses the boundary: handles, errors, hook sets and the
//! contexts each hook receives.

use abi_stable::{
    StableAbi,
    std_types::{ROption, RStr, RString, RVec},
};
use std::fmt;

/// An opaque handle to a tensor owned by the host.
///
/// A handle is owned by whoever received it from the host (and must be released
/// with [`super::TensorOps::drop`]), except the handles inside a hook context,
/// which the host keeps and releases after the hook returns.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub u64);

/// An opaque handle to a parameter registered with the host.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub u64);

/// Element type of a tensor.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float (the host's float type; `f16`/`bf16` backends report this too).
    F32,
    /// 64-bit integer (indices, labels).
    I64,
    /// Boolean (masks).
    Bool,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        })
    }
}

/// Kinds of [`AbiError`]. A newtype over `u32` so that later versions can add
/// kinds without changing the layout.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// Anything else.
    pub const OTHER: Self = Self(0);
    /// A plugin config value is wrong; `key_path` names the key.
    pub const CONFIG: Self = Self(1);
    /// Tensor shapes do not fit an operation.
    pub const SHAPE: Self = Self(2);
    /// A handle is unknown or already released.
    pub const HANDLE: Self = Self(3);
    /// A plugin panicked; the message names the plugin and the hook.
    pub const PANIC: Self = Self(4);
    /// The host does not offer this (an older host, or no model in this run).
    pub const UNSUPPORTED: Self = Self(5);
}

/// An error crossing the boundary, as a value.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct AbiError {
    /// What kind of error.
    pub kind: ErrorKind,
    /// For config errors, the dotted key path inside `[plugin.config]`; otherwise
    /// empty.
    pub key_path: RString,
    /// What went wrong, for a person.
    pub message: RString,
}

impl AbiError {
    /// An error of kind [`ErrorKind::OTHER`].
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OTHER, message)
    }

    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            key_path: RString::new(),
            message: RString::from(message.into()),
        }
    }

    /// A config error at `key_path`.
    pub fn config(key_path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::CONFIG,
            key_path: RString::from(key_path.into()),
            message: RString::from(message.into()),
        }
    }
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key_path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key_path, self.message)
        }
    }
}

impl std::error::Error for AbiError {}

/// The set of hooks a plugin implements, as bits.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct HookSet(pub u32);

/// One hook of the plugin interface.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `inject`: modules inside the denoiser's forward.
    Inject,
    /// `loss`: terms added to the training objective.
    Loss,
    /// `score`: corrections of ε at each sampling step.
    Score,
    /// `filter`: keep/reject decisions on finished samples.
    Filter,
    /// `prepare`: auxiliary training before the main stages.
    Prepare,
}

impl Hook {
    /// Every hook, in the order the stages run them.
    pub const ALL: [Hook; 5] = [
        Hook::Prepare,
        Hook::Inject,
        Hook::Loss,
        Hook::Score,
        Hook::Filter,
    ];

    /// The hook's name as written in manifests and docs.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Inject => "inject",
            Hook::Loss => "loss",
            Hook::Score => "score",
            Hook::Filter => "filter",
            Hook::Prepare => "prepare",
        }
    }

    /// Parses a hook name.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    const fn bit(self) -> u32 {
        match self {
            Hook::Inject => 1,
            Hook::Loss => 2,
            Hook::Score => 4,
            Hook::Filter => 8,
            Hook::Prepare => 16,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl HookSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// This set with `hook` added.
    pub const fn with(self, hook: Hook) -> Self {
        Self(self.0 | hook.bit())
    }

    /// Whether the set holds `hook`.
    pub const fn contains(self, hook: Hook) -> bool {
        self.0 & hook.bit() != 0
    }

    /// The hooks in the set, in stage order.
    pub fn iter(self) -> impl Iterator<Item = Hook> {
        Hook::ALL.into_iter().filter(move |h| self.contains(*h))
    }
}

impl FromIterator<Hook> for HookSet {
    fn from_iter<I: IntoIterator<Item = Hook>>(iter: I) -> Self {
        iter.into_iter().fold(HookSet::EMPTY, HookSet::with)
    }
}

/// Which denoiser a host service runs: the model being trained, or the frozen
/// source model.
#[repr(u8)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Which {
    /// The model being trained (with every plugin's `inject` modules).
    Student,
    /// The frozen pretrained source model (no plugin modules, no gradients to it).
    Source,
}

/// One injection point of the run's denoiser.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PointInfo {
    /// Name (`temb`, `down.{i}.res.{j}`, `mid.res.{j}`, `up.{i}.res.{j}`).
    pub name: RString,
    /// Channels of the activation there (`D` at `temb`).
    pub channels: usize,
    /// Spatial size `H` of the activation (0 for vector activations).
    pub height: usize,
    /// Spatial size `W` of the activation (0 for vector activations).
    pub width: usize,
}

/// What a plugin learns about the run's denoiser when it is built.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    /// Model kind (`diffusers`, `adm`, `mlp`, `dtx`; empty when the run has none).
    pub kind: RString,
    /// Channels of the data (`C` of images, `D` of vectors).
    pub data_channels: usize,
    /// Image side length (0 for vectors).
    pub resolution: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// Every injection point, in forward order.
    pub points: RVec<PointInfo>,
}

/// Context of the `inject` hook.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct InjectCtx<'a> {
    /// The injection point (`temb`, `down.0.res.1`, `mid.res.0`, `up.2.res.0`, …).
    pub point: RStr<'a>,
    /// The activation at that point: `[B, C, H, W]` after a residual block, `[B, D]`
    /// at `temb`.
    pub h: TensorId,
    /// Timesteps, `[B]`.
    pub t: TensorId,
    /// The time embedding, `[B, D]`.
    pub temb: TensorId,
    /// The condition embedding `[B, N, D_c]`, when the run has one.
    pub cond: ROption<TensorId>,
    /// Class labels `[B]` (i64), when the run has them.
    pub labels: ROption<TensorId>,
    /// Whether the forward is a training forward (dropout, label dropout).
    pub training: bool,
}

/// Context of the `loss` hook: one training step.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct LossCtx {
    /// Clean target batch `x0`.
    pub x0: TensorId,
    /// The step's noise `ε`.
    pub noise: TensorId,
    /// Timesteps `[B]`.
    pub t: TensorId,
    /// The noised batch `x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε`.
    pub x_t: TensorId,
    /// The student's prediction for `x_t` (the same forward that feeds L_simple).
    pub pred: TensorId,
    /// Class labels `[B]` (i64), when the target set has them.
    pub labels: ROption<TensorId>,
    /// The training step, from 0.
    pub step: u64,
}

/// Context of the `score` hook: one sampling step.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct ScoreCtx {
    /// The current sample `x_t`.
    pub x_t: TensorId,
    /// Timesteps `[B]`.
    pub t: TensorId,
    /// The current ε prediction (after earlier plugins' corrections).
    pub eps: TensorId,
    /// Class labels `[B]` (i64) asked for, when sampling is conditional.
    pub labels: ROption<TensorId>,
    /// Index of this step in the sampler's loop, from 0.
    pub step_index: u64,
    /// Number of steps in the sampler's loop.
    pub num_steps: u64,
}

/// Context of the `filter` hook: one finished batch.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FilterCtx {
    /// Finished samples `x_0`.
    pub samples: TensorId,
    /// Class labels `[B]` (i64) asked for, when sampling is conditional.
    pub labels: ROption<TensorId>,
}

/// Context of the `prepare` hook.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct PrepareCtx<'a> {
    /// The stage that follows (`train` or `sample`).
    pub before: RStr<'a>,
    /// The run's output folder, for anything the plugin writes itself.
    pub run_dir: RStr<'a>,
}
