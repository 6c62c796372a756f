//! The 2-D convolution.

use super::Initializer;
use crate::abi::{AbiError, Conv2dOptions};
use crate::{Param, Scope, Tensor};

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
    /// Law of the weight and the bias (default [`Initializer::KaimingUniform`],
    /// PyTorch's `nn.Conv2d`).
    pub initializer: Initializer,
}

setters!(Conv2dConfig { with_bias: bias: bool, with_initializer: initializer: Initializer });

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
            initializer: Initializer::KaimingUniform,
        }
    }
    /// Sets the stride (both directions).
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.options.stride = [stride, stride];
        self
    }
    /// Sets stride, padding, dilation and groups at once.
    pub fn with_options(mut self, options: Conv2dOptions) -> Self {
        self.options = options;
        self
    }

    /// Registers `weight` `[C_out, C_in/groups, k, k]` and `bias` `[C_out]`
    /// in `scope`, drawn from the initializer with fan-in `C_in/groups · k²`.
    pub fn init(&self, scope: &Scope) -> Result<Conv2d, AbiError> {
        let groups = self.options.groups.max(1);
        if !self.channels_in.is_multiple_of(groups) || !self.channels_out.is_multiple_of(groups) {
            return Err(AbiError::other(format!(
                "{}: channels {} → {} are not divisible by groups {groups}",
                scope.prefix(),
                self.channels_in,
                self.channels_out
            )));
        }
        let fan_in = self.channels_in / groups * self.kernel * self.kernel;
        let law = self.initializer.law(fan_in);
        let shape = [
            self.channels_out,
            self.channels_in / groups,
            self.kernel,
            self.kernel,
        ];
        let weight = scope.param("weight", &shape, law)?;
        let bias = if self.bias {
            Some(scope.param("bias", &[self.channels_out], law)?)
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
    /// counterpart of [`super::Mlp::forward_with_input_grad`].
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
