//! Activations, the linear layer and the MLP.

use super::Initializer;
use crate::abi::{AbiError, CompareOp};
use crate::{Param, Scope, Tensor};

/// Activation functions for [`Mlp`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
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
    /// Law of the weight and the bias (default [`Initializer::KaimingUniform`],
    /// PyTorch's `nn.Linear`); [`Initializer::Zeros`] makes a residual branch
    /// start as the identity.
    pub initializer: Initializer,
}

setters!(LinearConfig { with_bias: bias: bool, with_initializer: initializer: Initializer });

impl LinearConfig {
    /// `d_input → d_output` with bias, initialised as PyTorch's `nn.Linear`.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        LinearConfig {
            d_input,
            d_output,
            bias: true,
            initializer: Initializer::KaimingUniform,
        }
    }

    /// Registers `weight` `[d_input, d_output]` and `bias` `[d_output]` in
    /// `scope`, both drawn from the initializer with fan-in `d_input`.
    pub fn init(&self, scope: &Scope) -> Result<Linear, AbiError> {
        let law = self.initializer.law(self.d_input);
        let weight = scope.param("weight", &[self.d_input, self.d_output], law)?;
        let bias = if self.bias {
            Some(scope.param("bias", &[self.d_output], law)?)
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

/// Configuration of an [`Mlp`]: `Linear → act → Linear → … → Linear`.
#[derive(Debug, Clone)]
pub struct MlpConfig {
    /// Sizes from input to output: `[d_in, hidden…, d_out]` (at least two).
    pub sizes: Vec<usize>,
    /// Activation between layers (default SiLU).
    pub activation: Activation,
    /// Whether the layers have biases (default `true`).
    pub bias: bool,
    /// Law of every layer's weight and bias (default [`Initializer::KaimingUniform`]).
    pub initializer: Initializer,
    /// Law of the last layer instead, when set ([`Initializer::Zeros`]: the
    /// MLP starts at 0).
    pub last_initializer: Option<Initializer>,
}

setters!(MlpConfig { with_bias: bias: bool, with_initializer: initializer: Initializer });

impl MlpConfig {
    /// An MLP through `sizes`.
    pub fn new(sizes: &[usize]) -> Self {
        MlpConfig {
            sizes: sizes.to_vec(),
            activation: Activation::Silu,
            bias: true,
            initializer: Initializer::KaimingUniform,
            last_initializer: None,
        }
    }
    /// Sets the activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Sets `last_initializer`.
    pub fn with_last_initializer(mut self, initializer: Initializer) -> Self {
        self.last_initializer = Some(initializer);
        self
    }

    /// Registers each layer's `weight` and `bias` under `0`, `1`, … in `scope`.
    pub fn init(&self, scope: &Scope) -> Result<Mlp, AbiError> {
        if self.sizes.len() < 2 {
            return Err(AbiError::other(format!(
                "{}: an MLP needs at least two sizes",
                scope.prefix()
            )));
        }
        let n = self.sizes.len() - 1;
        let layers = (0..n)
            .map(|i| {
                let law = match self.last_initializer {
                    Some(last) if i + 1 == n => last,
                    _ => self.initializer,
                };
                LinearConfig::new(self.sizes[i], self.sizes[i + 1])
                    .with_bias(self.bias)
                    .with_initializer(law)
                    .init(&scope.pp(i))
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
