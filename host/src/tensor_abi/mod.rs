//! The host side of the tensor ABI: a per-thread [`Session`] holding every
//! tensor a plugin can name, and the two vtables ([`tensor_ops`],
//! [`host_services`]) implemented over burn primitives of an autodiff backend.
//!
//! burn 0.21's backend API works on rank-free primitives (`FloatTensor<B>`), so
//! a handle is just an index into the session's table; autodiff tracks those
//! primitives, which is how gradients flow through plugin code.

pub(crate) mod ops;
mod params;
mod services;
mod session;
mod typed;

pub use ops::tensor_ops;
pub use params::{BASE_OWNER, ParamEntry, ParamStore};
pub use services::{
    ConditionService, DataService, DenoiseService, ParamStepper, RunServices, SampleService,
    host_services,
};
pub use session::{Session, SessionGuard, Stored};
pub use typed::{Labels, Ranked, classes_at, float_at, timesteps};

use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::HostVtables;
use std::any::TypeId;
use std::sync::Mutex;

/// The vtables for backend `B`, built on first use and shared afterwards.
pub fn vtables<B: AutodiffBackend>() -> HostVtables {
    static CACHE: Mutex<Vec<(TypeId, HostVtables)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let key = TypeId::of::<B>();
    if let Some((_, v)) = cache.iter().find(|(k, _)| *k == key) {
        return *v;
    }
    ops::install_quiet_panic_hook();
    let v = HostVtables {
        tensor: tensor_ops::<B>(),
        services: host_services::<B>(),
    };
    cache.push((key, v));
    v
}

/// `p`'s values as a tensor outside every autodiff graph: no history and no
/// gradient requirement, so nothing computed from it is recorded. (burn's
/// `float_detach` keeps a parameter's `require_grad`, so ops on a detached
/// parameter still build a graph.)
pub fn untracked<B: AutodiffBackend>(
    p: burn::tensor::ops::FloatTensor<B>,
) -> burn::tensor::ops::FloatTensor<B> {
    B::from_inner(B::inner(p))
}

/// Frees the autodiff graph recorded from the leaf `leaf` once nothing that
/// was computed from it is needed any more.
///
/// burn's autodiff (0.21) frees recorded operations only during a backward
/// pass: a graph that never reaches one stays in memory for the life of the
/// process. Sampling with `score` hooks records one through the whole U-Net
/// at every step (ε is tracked from x_t so a hook can differentiate through
/// it); when no hook does, that is about 100 MB per step at batch 8. A
/// backward from `0 · Σ leaf` consumes the leaf, which makes every operation
/// recorded from it unreachable, and the same pass frees them. It reads the
/// leaf alone, so it costs next to nothing; gradients still flow for any
/// backward a hook ran before.
pub fn release_graph<B: AutodiffBackend, const D: usize>(leaf: burn::tensor::Tensor<B, D>) {
    let _ = (leaf * 0.0).sum().backward();
}

/// A rank-free float tensor of backend `B`: what the ABI's handles hold and
/// what plugins' hooks exchange (the host's code above this layer works on
/// ranked `burn::tensor::Tensor`s and converts at the hook calls).
pub type Prim<B> = burn::tensor::ops::FloatTensor<B>;

/// The CPU backend: burn's `flex` backend with autodiff.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// The CUDA backend (feature `cuda`): `burn-cuda` with autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// Whether this build of dtx has the CUDA backend.
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

#[cfg(test)]
pub(crate) mod tests;
