//! The classifiers on denoiser features:
//!
//! - labels (attributes, classes): `layers` 3×3 convolutions (the first
//!   from the feature channels to `channels`), each followed by SiLU, then
//!   a global mean over space and a linear layer to the class logits `[B, K]`;
//! - masks: a per-pixel MLP written as 1×1 convolutions, `layers − 1`
//!   hidden layers of `channels` with SiLU and an output layer to the class
//!   logits of every pixel `[B, K, H, W]`.

use dtx_plugin_api::nn::{Activation, Conv2d, Conv2dConfig, Linear, LinearConfig};
use dtx_plugin_api::prelude::*;

/// What follows the convolutions.
#[derive(Debug, Clone)]
enum Head {
    /// Global mean, then a linear layer: one label per image.
    Pooled(Linear),
    /// A 1×1 convolution: one label per pixel.
    PerPixel(Conv2d),
}

/// A small net from features `[B, C, h, w]` to logits.
#[derive(Debug, Clone)]
pub struct Classifier {
    convs: Vec<Conv2d>,
    head: Head,
}

fn detached_conv(c: &Conv2d) -> Conv2d {
    Conv2d {
        weight: c.weight.detached(),
        bias: c.bias.as_ref().map(Param::detached),
        options: c.options,
    }
}

impl Classifier {
    /// The classifier, parameters `conv{i}.*` and `head.*` in `scope`: for
    /// labels `layers` 3×3 convolutions and the
    /// pooled linear head; for `masks` the per-pixel MLP, `layers` ≥ 1
    /// layers in all (output layer included).
    pub fn new(
        scope: &Scope,
        masks: bool,
        in_channels: usize,
        channels: usize,
        layers: usize,
        classes: usize,
    ) -> Result<Classifier, AbiError> {
        let (hidden, kernel) = if masks { (layers - 1, 1) } else { (layers, 3) };
        let convs = Self::convs(scope, in_channels, channels, hidden, kernel)?;
        let c_in = if convs.is_empty() {
            in_channels
        } else {
            channels
        };
        let head = if masks {
            Head::PerPixel(Conv2dConfig::new(c_in, classes, 1).init(&scope.pp("head"))?)
        } else {
            Head::Pooled(LinearConfig::new(c_in, classes).init(&scope.pp("head"))?)
        };
        Ok(Classifier { convs, head })
    }

    fn convs(
        scope: &Scope,
        in_channels: usize,
        channels: usize,
        layers: usize,
        kernel: usize,
    ) -> Result<Vec<Conv2d>, AbiError> {
        let mut c_in = in_channels;
        (0..layers)
            .map(|i| {
                let conv =
                    Conv2dConfig::new(c_in, channels, kernel).init(&scope.pp(format!("conv{i}")));
                c_in = channels;
                conv
            })
            .collect()
    }

    /// Logits: `[B, K]` (labels) or `[B, K, h, w]` (masks).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.clone();
        for conv in &self.convs {
            h = Activation::Silu.apply(&conv.forward(&h));
        }
        match &self.head {
            Head::Pooled(l) => l.forward(&h.mean_dims(&[2, 3], false)),
            Head::PerPixel(c) => c.forward(&h),
        }
    }

    /// The same net with [detached](Param::detached) parameters, for
    /// evaluating it at sampling time without recording their graph.
    pub fn detached(&self) -> Classifier {
        Classifier {
            convs: self.convs.iter().map(detached_conv).collect(),
            head: match &self.head {
                Head::Pooled(l) => Head::Pooled(Linear {
                    weight: l.weight.detached(),
                    bias: l.bias.as_ref().map(Param::detached),
                }),
                Head::PerPixel(c) => Head::PerPixel(detached_conv(c)),
            },
        }
    }

    /// Every parameter, for the host's `optimizer_step`.
    pub fn params(&self) -> Vec<Param> {
        let mut v = Vec::new();
        let convs = self.convs.iter().chain(match &self.head {
            Head::PerPixel(c) => Some(c),
            Head::Pooled(_) => None,
        });
        for c in convs {
            v.push(c.weight.clone());
            v.extend(c.bias.clone());
        }
        if let Head::Pooled(l) = &self.head {
            v.push(l.weight.clone());
            v.extend(l.bias.clone());
        }
        v
    }

    /// log p(y | ·) per example `[B]`, summed over pixels for masks: `y`
    /// (i64) is `[B]` for labels, `[B, h, w]` for masks.
    pub fn log_prob(&self, features: &Tensor, y: &Tensor) -> Tensor {
        let mut shape = vec![y.dim(0), 1];
        shape.extend_from_slice(&y.shape()[1..]);
        self.forward(features)
            .log_softmax(1)
            .gather(1, &y.reshape(&shape))
            .flatten(1)
            .sum_dims(&[1], false)
    }

    /// The predicted class, shaped as `y` would be (`[B]` or `[B, h, w]`).
    pub fn predict(&self, features: &Tensor) -> Vec<i64> {
        self.forward(features).argmax(1).to_i64_vec()
    }
}
