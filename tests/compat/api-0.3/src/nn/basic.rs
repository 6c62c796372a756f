//! Linear, convolution, normalisation, MLP and timestep-embedding blocks.

use crate::abi::{AbiError, CompareOp, Conv2dOptions, ParamInit};
use crate::{Host, Param, Tensor};

/// Activation functions for [`Mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `x · sigmoid(x)` (default, as in diffusion U-Nets).
    #[default]
    Silu,
    /// GELU.
    Gelu,
    /// ReLU.
    Relu,
    /// tanh.
    Tanh,
}

impl Activation {
    /// Its derivative at `x`, elementwise, from ordinary ops (so that a
    /// loss containing it can itself be differentiated: see
    /// [`Mlp::forward_with_input_grad`]).
    /// - SiLU: σ(x) (1 + x (1 − σ(x)));
    /// - GELU (the erf form): Φ(x) + x φ(x), with Φ(x) = GELU(x) / x away
    ///   from 0 and 1/2 + x φ(0) for |x| < 1e-4 (first order);
    /// - ReLU: 1 for x > 0, else 0;
    /// - tanh: 1 − tanh²(x).
    pub fn derivative(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => {
                let s = x.sigmoid();
                &s * ((x * s.rsub(1.0)) + 1.0)
            }
            Activation::Gelu => {
                let inv_sqrt_2pi = 0.398_942_3_f32;
                let pdf = (x.square() * -0.5).exp() * inv_sqrt_2pi;
                let small = x.abs().compare_scalar(CompareOp::LT, 1e-4);
                // a denominator that is never 0 (its result is unused there)
                let safe = small.where_(&Tensor::ones(&x.shape()), x);
                let cdf = small.where_(&(x * inv_sqrt_2pi + 0.5), &(x.gelu() / &safe));
                cdf + x * pdf
            }
            Activation::Relu => x
                .compare_scalar(CompareOp::GT, 0.0)
                .where_(&Tensor::ones(&x.shape()), &Tensor::zeros(&x.shape())),
            Activation::Tanh => x.tanh().square().rsub(1.0),
        }
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// Configuration of a [`Linear`] layer.
#[derive(Debug, Clone)]
pub struct LinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether there is a bias (default `true`).
    pub bias: bool,
    /// Zero-initialise weight and bias (default `false`), so the layer starts as 0:
    /// used for residual branches that must start as the identity.
    pub zero_init: bool,
}

impl LinearConfig {
    /// `d_input → d_output` with bias, Kaiming-uniform init as PyTorch's `nn.Linear`.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        LinearConfig {
            d_input,
            d_output,
            bias: true,
            zero_init: false,
        }
    }
    /// Sets `bias`.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Sets `zero_init`.
    pub fn with_zero_init(mut self, zero: bool) -> Self {
        self.zero_init = zero;
        self
    }

    /// Registers the parameters `<prefix>.weight` `[d_input, d_output]` and
    /// `<prefix>.bias` `[d_output]`, uniform on ±1/sqrt(d_input) (PyTorch's law).
    pub fn init(&self, host: &Host, prefix: &str) -> Result<Linear, AbiError> {
        let bound = 1.0 / (self.d_input.max(1) as f32).sqrt();
        let init = if self.zero_init {
            ParamInit::zeros()
        } else {
            ParamInit::uniform(-bound, bound)
        };
        let weight = host.param(
            &format!("{prefix}.weight"),
            &[self.d_input, self.d_output],
            init,
        )?;
        let bias = if self.bias {
            Some(host.param(&format!("{prefix}.bias"), &[self.d_output], init)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

/// `y = x W + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[d_input, d_output]`.
    pub weight: Param,
    /// `[d_output]`.
    pub bias: Option<Param>,
}

impl Linear {
    /// # Shapes
    /// - x: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.matmul(&self.weight.value());
        match &self.bias {
            Some(b) => y + b.value(),
            None => y,
        }
    }
}

/// Configuration of a [`Conv2d`] layer.
#[derive(Debug, Clone)]
pub struct Conv2dConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride, padding, dilation, groups (default: stride 1, padding `kernel / 2`).
    pub options: Conv2dOptions,
    /// Whether there is a bias (default `true`).
    pub bias: bool,
    /// Zero-initialise weight and bias (default `false`).
    pub zero_init: bool,
}

impl Conv2dConfig {
    /// A `kernel × kernel` convolution with "same" padding.
    pub fn new(channels_in: usize, channels_out: usize, kernel: usize) -> Self {
        let options = Conv2dOptions {
            padding: [kernel / 2, kernel / 2],
            ..Default::default()
        };
        Conv2dConfig {
            channels_in,
            channels_out,
            kernel,
            options,
            bias: true,
            zero_init: false,
        }
    }
    /// Sets `zero_init`.
    pub fn with_zero_init(mut self, zero: bool) -> Self {
        self.zero_init = zero;
        self
    }

    /// Registers `<prefix>.weight` `[C_out, C_in/groups, k, k]` and `<prefix>.bias`,
    /// uniform on ±1/sqrt(fan_in) (PyTorch's law).
    pub fn init(&self, host: &Host, prefix: &str) -> Result<Conv2d, AbiError> {
        let groups = self.options.groups.max(1);
        if !self.channels_in.is_multiple_of(groups) || !self.channels_out.is_multiple_of(groups) {
            return Err(AbiError::other(format!(
                "{prefix}: channels {} → {} are not divisible by groups {groups}",
                self.channels_in, self.channels_out
            )));
        }
        let fan_in = self.channels_in / groups * self.kernel * self.kernel;
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let init = if self.zero_init {
            ParamInit::zeros()
        } else {
            ParamInit::uniform(-bound, bound)
        };
        let shape = [
            self.channels_out,
            self.channels_in / groups,
            self.kernel,
            self.kernel,
        ];
        let weight = host.param(&format!("{prefix}.weight"), &shape, init)?;
        let bias = if self.bias {
            Some(host.param(&format!("{prefix}.bias"), &[self.channels_out], init)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            options: self.options,
        })
    }
}

/// A 2-D convolution.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[C_out, C_in/groups, k, k]`.
    pub weight: Param,
    /// `[C_out]`.
    pub bias: Option<Param>,
    /// Stride, padding, dilation, groups.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// # Shapes
    /// - x: `[B, C_in, H, W]`
    /// - output: `[B, C_out, H', W']`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let b = self.bias.as_ref().map(Param::value);
        x.conv2d(&self.weight.value(), b.as_ref(), self.options)
    }

    /// The vector-Jacobian product `gᵀ ∂y/∂x` for cotangent `g` (shaped as
    /// the output) and an input of spatial size `input_hw`: a transposed
    /// convolution by the same weight, with the output padding that restores
    /// `input_hw` when the stride drops rows (the bias drops out). Ordinary
    /// ops, so a loss of it trains the weight: the convolutional
    /// counterpart of [`Mlp::forward_with_input_grad`].
    ///
    /// # Shapes
    /// - g: `[B, C_out, H', W']`
    /// - output: `[B, C_in, H, W]` with `[H, W] = input_hw`
    pub fn input_grad(&self, g: &Tensor, input_hw: [usize; 2]) -> Tensor {
        let o = self.options;
        let k = [self.weight.shape()[2], self.weight.shape()[3]];
        let out_hw = [g.dim(2), g.dim(3)];
        let mut padding_out = [0usize; 2];
        for i in 0..2 {
            // what a transposed convolution gives without output padding
            let natural = ((out_hw[i] - 1) * o.stride[i] + o.dilation[i] * (k[i] - 1) + 1)
                .saturating_sub(2 * o.padding[i]);
            padding_out[i] = input_hw[i].saturating_sub(natural);
        }
        let opts = Conv2dOptions { padding_out, ..o };
        g.conv_transpose2d(&self.weight.value(), None, opts)
    }
}

/// Group normalisation with a learned affine (γ = 1, β = 0 at init).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// Number of groups.
    pub groups: usize,
    /// `[C]`.
    pub gamma: Param,
    /// `[C]`.
    pub beta: Param,
    /// Added to the variance (default 1e-5 as PyTorch; diffusers U-Nets use 1e-6).
    pub eps: f32,
}

impl GroupNorm {
    /// Registers `<prefix>.gamma` and `<prefix>.beta` for `channels` channels.
    pub fn init(
        host: &Host,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f32,
    ) -> Result<Self, AbiError> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(AbiError::other(format!(
                "{prefix}: {channels} channels are not divisible into {groups} groups"
            )));
        }
        Ok(GroupNorm {
            groups,
            gamma: host.param(
                &format!("{prefix}.gamma"),
                &[channels],
                ParamInit::constant(1.0),
            )?,
            beta: host.param(&format!("{prefix}.beta"), &[channels], ParamInit::zeros())?,
            eps,
        })
    }

    /// # Shapes
    /// - x: `[B, C, ...]`
    /// - output: same
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.gamma.value()),
            Some(&self.beta.value()),
            self.eps,
        )
    }
}

/// Layer normalisation over the last dim with a learned affine.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[D]`.
    pub gamma: Param,
    /// `[D]`.
    pub beta: Param,
    /// Added to the variance (default 1e-5).
    pub eps: f32,
}

impl LayerNorm {
    /// Registers `<prefix>.gamma` and `<prefix>.beta` of size `d`.
    pub fn init(host: &Host, prefix: &str, d: usize, eps: f32) -> Result<Self, AbiError> {
        Ok(LayerNorm {
            gamma: host.param(&format!("{prefix}.gamma"), &[d], ParamInit::constant(1.0))?,
            beta: host.param(&format!("{prefix}.beta"), &[d], ParamInit::zeros())?,
            eps,
        })
    }

    /// # Shapes
    /// - x: `[..., D]`
    /// - output: same
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            Some(&self.gamma.value()),
            Some(&self.beta.value()),
            self.eps,
        )
    }
}

/// Configuration of an [`Mlp`]: `Linear → act → Linear → … → Linear`.
#[derive(Debug, Clone)]
pub struct MlpConfig {
    /// Sizes from input to output: `[d_in, hidden…, d_out]` (at least two).
    pub sizes: Vec<usize>,
    /// Activation between layers (default SiLU).
    pub activation: Activation,
    /// Zero-initialise the last layer (default `false`), so the MLP starts at 0.
    pub zero_last: bool,
}

impl MlpConfig {
    /// An MLP through `sizes`.
    pub fn new(sizes: &[usize]) -> Self {
        MlpConfig {
            sizes: sizes.to_vec(),
            activation: Activation::Silu,
            zero_last: false,
        }
    }
    /// Sets the activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Sets `zero_last`.
    pub fn with_zero_last(mut self, z: bool) -> Self {
        self.zero_last = z;
        self
    }

    /// Registers `<prefix>.{i}.weight/bias` for each layer.
    pub fn init(&self, host: &Host, prefix: &str) -> Result<Mlp, AbiError> {
        if self.sizes.len() < 2 {
            return Err(AbiError::other(format!(
                "{prefix}: an MLP needs at least two sizes"
            )));
        }
        let n = self.sizes.len() - 1;
        let layers = (0..n)
            .map(|i| {
                LinearConfig::new(self.sizes[i], self.sizes[i + 1])
                    .with_zero_init(self.zero_last && i + 1 == n)
                    .init(host, &format!("{prefix}.{i}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mlp {
            layers,
            activation: self.activation,
        })
    }
}

/// A multilayer perceptron.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// The layers.
    pub layers: Vec<Linear>,
    /// Activation between layers (not after the last).
    pub activation: Activation,
}

impl Mlp {
    /// # Shapes
    /// - x: `[..., d_in]`
    /// - output: `[..., d_out]`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.layers[0].forward(x);
        for layer in &self.layers[1..] {
            h = layer.forward(&self.activation.apply(&h));
        }
        h
    }

    /// The output and the vector-Jacobian product `vᵀ ∂y/∂x` with
    /// cotangent `v` (shaped as the output), both built from ordinary ops:
    /// the backward of each Linear is a matmul by its weight's transpose,
    /// of each activation a product with its [derivative](Activation::derivative).
    /// For a scalar output and `v = 1` the product is ∇ₓy. Because it sits
    /// in the forward graph, a loss of it can be differentiated with respect
    /// to the weights by the host's ordinary backward — a gradient of a
    /// gradient without double backward (TGDP's consistency term).
    ///
    /// # Shapes
    /// - x: `[..., d_in]`, v: `[..., d_out]`
    /// - output: (`[..., d_out]`, `[..., d_in]`)
    pub fn forward_with_input_grad(&self, x: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let mut pre = Vec::with_capacity(self.layers.len());
        let mut h = self.layers[0].forward(x);
        for layer in &self.layers[1..] {
            pre.push(h.clone());
            h = layer.forward(&self.activation.apply(&h));
        }
        let mut g = v.clone();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            // y = x W + b with W [d_in, d_out]: ∂/∂x is g Wᵀ
            g = g.matmul(&layer.weight.value().transpose(0, 1));
            if i > 0 {
                g = g * self.activation.derivative(&pre[i - 1]);
            }
        }
        (h, g)
    }
}

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
    let t = t.cast(crate::DType::F32).reshape(&[b as i64, 1]);
    let args = t.matmul(&freqs);
    Tensor::cat(&[&args.cos(), &args.sin()], 1)
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
    /// Registers `<prefix>.mlp.{0,1}` mapping `freq_dim → dim → dim`.
    pub fn init(host: &Host, prefix: &str, freq_dim: usize, dim: usize) -> Result<Self, AbiError> {
        let mlp = MlpConfig::new(&[freq_dim, dim, dim]).init(host, &format!("{prefix}.mlp"))?;
        Ok(TimestepEmbedding { freq_dim, mlp })
    }

    /// # Shapes
    /// - t: `[B]`
    /// - output: `[B, dim]`
    pub fn forward(&self, t: &Tensor) -> Tensor {
        self.mlp.forward(&sinusoidal_embedding(t, self.freq_dim))
    }
}
