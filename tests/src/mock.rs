//! Small pieces the plugin tests' mock sessions share: a deterministic
//! normal generator and timesteps as the host stores them.

use burn::tensor::{Tensor, TensorData};
use dtx::tensor_abi::{CpuBackend, Stored};

/// A small deterministic normal generator (xorshift + Box–Muller), so a
/// test's data do not depend on a rand version.
pub struct Normal(pub u64);

impl Normal {
    /// Uniform on (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Timesteps `[n]`, all `t`, as a float tensor of the session.
pub fn t_stored(t: usize, n: usize) -> Stored<CpuBackend> {
    Stored::Float(
        Tensor::<CpuBackend, 1>::from_data(
            TensorData::new(vec![t as f32; n], [n]),
            &Default::default(),
        )
        .into_primitive()
        .tensor(),
    )
}
