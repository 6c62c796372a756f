//! The per-thread session: the handle table that maps [`TensorId`]s to burn
//! primitives, the seeded RNG, the parameter store and the services a run
//! provides (denoiser, data, schedule).
//!
//! Plugins call the vtables without a context argument, so the session lives in a
//! thread-local: the host installs it on the thread that runs the hooks
//! ([`Session::install`]) and every vtable entry finds it there. Hooks must call
//! tensor ops from that thread.

use super::params::ParamStore;
use super::services::RunServices;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{DeviceSettings, TensorMetadata, get_device_settings};
use dtx_plugin_api::abi::{AbiError, DType, ErrorKind, TensorId};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::any::Any;
use std::cell::RefCell;

/// A tensor in the handle table.
#[derive(Debug, Clone)]
pub enum Stored<B: Backend> {
    /// Float tensor (tracked by autodiff when `B` is an autodiff backend).
    Float(FloatTensor<B>),
    /// Integer tensor.
    Int(IntTensor<B>),
    /// Bool tensor.
    Bool(BoolTensor<B>),
}

impl<B: Backend> Stored<B> {
    /// Shape of the tensor.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Stored::Float(t) => t.shape().to_vec(),
            Stored::Int(t) => t.shape().to_vec(),
            Stored::Bool(t) => t.shape().to_vec(),
        }
    }

    /// ABI element type.
    pub fn dtype(&self) -> DType {
        match self {
            Stored::Float(_) => DType::F32,
            Stored::Int(_) => DType::I64,
            Stored::Bool(_) => DType::Bool,
        }
    }
}

struct Slot<B: Backend> {
    generation: u32,
    value: Option<Stored<B>>,
}

/// Everything the vtables reach on this thread.
pub struct Session<B: AutodiffBackend> {
    slots: Vec<Slot<B>>,
    free: Vec<u32>,
    live: usize,
    /// Device every tensor is created on.
    pub device: B::Device,
    /// Default dtypes of the device.
    pub settings: DeviceSettings,
    /// The seeded RNG behind `random`.
    pub rng: StdRng,
    /// Parameters registered by plugins.
    pub params: ParamStore<B>,
    /// Services of the run (denoiser, data, schedule, logging).
    pub services: RunServices<B>,
    /// The plugin whose code is running (for parameter and log names).
    pub current_plugin: Option<String>,
}

thread_local! {
    static SESSION: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Uninstalls the session when dropped, putting back the one it replaced (so a
/// planning session inside a run leaves the run's session as it was).
#[must_use = "the session is uninstalled when the guard drops"]
pub struct SessionGuard {
    previous: Option<Box<dyn Any>>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SESSION.with(|s| *s.borrow_mut() = previous);
    }
}

impl<B: AutodiffBackend> Session<B> {
    /// Installs a fresh session on this thread, with tensors on `device` and the
    /// RNG seeded by `seed`; the session it replaces comes back when the guard
    /// drops.
    pub fn install(device: B::Device, seed: u64) -> SessionGuard {
        let settings = get_device_settings::<B>(&device);
        let session = Session::<B> {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            device,
            settings,
            rng: StdRng::seed_from_u64(seed),
            params: ParamStore::default(),
            services: RunServices::default(),
            current_plugin: None,
        };
        let previous = SESSION.with(|s| s.borrow_mut().replace(Box::new(session)));
        SessionGuard { previous }
    }

    /// Runs `f` with this thread's session. Errors when none is installed (or one
    /// of another backend is).
    ///
    /// `f` must not call back into plugins: the session stays borrowed while it runs.
    pub fn with<R>(f: impl FnOnce(&mut Session<B>) -> R) -> Result<R, AbiError> {
        SESSION.with(|s| {
            let mut guard = s.try_borrow_mut().map_err(|_| {
                AbiError::other("dtx host: the tensor session is busy (re-entrant call)")
            })?;
            let session = guard
                .as_mut()
                .and_then(|b| b.downcast_mut::<Session<B>>())
                .ok_or_else(|| {
                    AbiError::new(
                        ErrorKind::UNSUPPORTED,
                        "dtx host: no tensor session on this thread (tensor ops must run on the thread that called the hook)",
                    )
                })?;
            Ok(f(session))
        })
    }

    /// Stores a tensor and returns a new handle to it.
    pub fn insert(&mut self, value: Stored<B>) -> TensorId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            return TensorId(((slot.generation as u64) << 32) | index as u64);
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 1,
            value: Some(value),
        });
        TensorId((1u64 << 32) | index as u64)
    }

    fn slot(&self, id: TensorId) -> Result<&Stored<B>, AbiError> {
        let (index, generation) = ((id.0 & 0xffff_ffff) as usize, (id.0 >> 32) as u32);
        match self.slots.get(index) {
            Some(Slot {
                generation: g,
                value: Some(v),
            }) if *g == generation => Ok(v),
            _ => Err(AbiError::new(
                ErrorKind::HANDLE,
                format!("tensor handle {:#x} is unknown or already released", id.0),
            )),
        }
    }

    /// A clone of the stored tensor (cheap: burn tensors share their buffers).
    pub fn get(&self, id: TensorId) -> Result<Stored<B>, AbiError> {
        self.slot(id).cloned()
    }

    /// The float tensor behind `id`, or an error naming the dtype found.
    pub fn float(&self, id: TensorId) -> Result<FloatTensor<B>, AbiError> {
        match self.slot(id)? {
            Stored::Float(t) => Ok(t.clone()),
            other => Err(dtype_error(DType::F32, other.dtype())),
        }
    }

    /// The integer tensor behind `id`.
    pub fn int(&self, id: TensorId) -> Result<IntTensor<B>, AbiError> {
        match self.slot(id)? {
            Stored::Int(t) => Ok(t.clone()),
            other => Err(dtype_error(DType::I64, other.dtype())),
        }
    }

    /// The bool tensor behind `id`.
    pub fn bool(&self, id: TensorId) -> Result<BoolTensor<B>, AbiError> {
        match self.slot(id)? {
            Stored::Bool(t) => Ok(t.clone()),
            other => Err(dtype_error(DType::Bool, other.dtype())),
        }
    }

    /// Releases a handle; unknown handles are ignored (a double release is a
    /// plugin bug, but never a crash).
    pub fn remove(&mut self, id: TensorId) -> Option<Stored<B>> {
        self.slot(id).ok()?;
        let index = (id.0 & 0xffff_ffff) as usize;
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(index as u32);
        self.live -= 1;
        slot.value.take()
    }

    /// Number of live handles (a test checks plugins release what they take).
    pub fn live_handles(&self) -> usize {
        self.live
    }

    /// The float dtype tensors are created with.
    pub fn float_dtype(&self) -> burn::tensor::FloatDType {
        self.settings.float_dtype
    }
}

fn dtype_error(expected: DType, found: DType) -> AbiError {
    AbiError::new(
        ErrorKind::SHAPE,
        format!("expected a {expected} tensor, got a {found} tensor"),
    )
}
