//! Sinusoidal timestep features and the DDPM time embedding.

use super::{Activation, Initializer, Mlp, MlpConfig};
use crate::abi::AbiError;
use crate::{Scope, Tensor};

/// The sinusoidal embedding of timesteps used by DDPM U-Nets ("Attention Is All
/// You Need", Vaswani et al. 2017, Sec. 3.5; diffusers' `get_timestep_embedding`
/// with `flip_sin_to_cos = true`, `downscale_freq_shift = 0`):
/// `emb[i] = cos(t · 10000^(−i/half))`, `emb[half + i] = sin(t · 10000^(−i/half))`.
///
/// # Shapes
/// - t: `[B]` (float or integer timesteps)
/// - output: `[B, dim]` (`dim` even)
pub fn sinusoidal_embedding(t: &Tensor, dim: usize) -> Tensor {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_f32(&freqs, &[1, half]);
    let b = t.dim(0);
    let t = t.cast(crate::DType::F32).reshape(&[b, 1]);
    let args = t.matmul(&freqs);
    Tensor::cat(&[&args.cos(), &args.sin()], 1)
}

/// Configuration of a [`TimestepEmbedding`].
#[derive(Debug, Clone)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal features.
    pub freq_dim: usize,
    /// Width of the embedding.
    pub dim: usize,
    /// Activation between the two layers (default SiLU).
    pub activation: Activation,
    /// Law of both layers (default [`Initializer::KaimingUniform`]).
    pub initializer: Initializer,
}

setters!(TimestepEmbeddingConfig { with_initializer: initializer: Initializer });

impl TimestepEmbeddingConfig {
    /// `freq_dim` sinusoidal features mapped to `dim`.
    pub fn new(freq_dim: usize, dim: usize) -> Self {
        TimestepEmbeddingConfig {
            freq_dim,
            dim,
            activation: Activation::Silu,
            initializer: Initializer::KaimingUniform,
        }
    }
    /// Sets the activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }

    /// Registers `mlp.0` (`freq_dim → dim`) and `mlp.1` (`dim → dim`) in `scope`.
    pub fn init(&self, scope: &Scope) -> Result<TimestepEmbedding, AbiError> {
        let mlp = MlpConfig::new(&[self.freq_dim, self.dim, self.dim])
            .with_activation(self.activation)
            .with_initializer(self.initializer)
            .init(&scope.pp("mlp"))?;
        Ok(TimestepEmbedding {
            freq_dim: self.freq_dim,
            mlp,
        })
    }
}

/// Sinusoidal timestep features followed by `Linear → SiLU → Linear`, as the
/// time embedding of DDPM U-Nets.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    /// Width of the sinusoidal features.
    pub freq_dim: usize,
    /// The MLP.
    pub mlp: Mlp,
}

impl TimestepEmbedding {
    /// # Shapes
    /// - t: `[B]`
    /// - output: `[B, dim]`
    pub fn forward(&self, t: &Tensor) -> Tensor {
        self.mlp.forward(&sinusoidal_embedding(t, self.freq_dim))
    }
}
