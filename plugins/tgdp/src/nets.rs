//! The three small networks of TGDP, each a scalar function of a sample
//! (and, as configured, of the timestep and the class):
//!
//! - the domain classifier c_ω(x0) (logit; no time),
//! - the time-dependent domain classifier c'_ω(x_t, t) (logit),
//! - the guidance network h_ψ(x_t, t) = exp(raw_ψ(x_t, t)), so
//!   log h_ψ = raw_ψ and ∇ₓ log h_ψ = ∇ₓ raw_ψ.
//!
//! [`ScalarNet::forward_with_input_grad`] returns the output and its
//! gradient with respect to x as ordinary ops (the safe layer's
//! `Mlp::forward_with_input_grad` and `Conv2d::input_grad`), so the
//! consistency term, a loss of ∇ₓ log h_ψ, trains ψ through the host's
//! ordinary backward (burn has no double backward).

use dtx_plugin_api::nn::{Activation, Conv2d, Conv2dConfig, Linear, LinearConfig, Mlp, MlpConfig};
use dtx_plugin_api::prelude::*;

/// What a network sees besides x.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// Width of the sinusoidal time features (0: no time input).
    pub time_dim: usize,
    /// Timesteps are scaled by this before the sinusoidal features
    /// (1000 / T: every schedule looks like DDPM's 1000 steps, whose
    /// frequencies the features are made for).
    pub time_scale: f32,
    /// Classes of the one-hot label input (0: unconditional).
    pub classes: usize,
}

impl Inputs {
    fn width(&self) -> usize {
        self.time_dim + self.classes
    }

    /// `[B, time_dim + classes]`: sinusoidal features of `t` then one-hot
    /// `labels`; `None` when the network takes neither.
    fn features(&self, b: usize, t: Option<&Tensor>, labels: Option<&[i64]>) -> Option<Tensor> {
        let mut parts = Vec::new();
        if self.time_dim > 0 {
            let t = t.expect("a time-dependent network gets timesteps");
            parts.push(nn::sinusoidal_embedding(
                &(t * self.time_scale),
                self.time_dim,
            ));
        }
        if self.classes > 0 {
            let labels = labels.expect("a conditional network gets labels");
            let mut v = vec![0f32; b * self.classes];
            for (i, &y) in labels.iter().enumerate() {
                v[i * self.classes + y as usize] = 1.0;
            }
            parts.push(Tensor::from_f32(&v, &[b, self.classes]));
        }
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)),
        }
    }
}

/// An MLP on `[x, time features, one-hot y]`.
#[derive(Debug, Clone)]
pub struct MlpNet {
    mlp: Mlp,
    inputs: Inputs,
    dim: usize,
}

/// A small conv net for images: three 3×3 convolutions (stride 1, 2, 2),
/// each plus a per-channel bias from the time/label features, SiLU, then a
/// global mean and a linear head.
#[derive(Debug, Clone)]
pub struct ConvNet {
    convs: Vec<Conv2d>,
    /// One per convolution when the net has time or label inputs.
    cond: Vec<Linear>,
    head: Linear,
    inputs: Inputs,
}

/// One of TGDP's scalar networks.
#[derive(Debug, Clone)]
pub enum ScalarNet {
    /// For vectors `[B, D]`.
    Mlp(MlpNet),
    /// For images `[B, C, H, W]`.
    Conv(ConvNet),
}

const ACT: Activation = Activation::Silu;

impl ScalarNet {
    /// An MLP `[D + time_dim + classes] → hidden × depth → 1`, parameters
    /// `{i}.weight/bias` in `scope`.
    pub fn mlp(
        scope: &Scope,
        dim: usize,
        hidden: usize,
        depth: usize,
        inputs: Inputs,
    ) -> Result<ScalarNet, AbiError> {
        let mut sizes = vec![dim + inputs.width()];
        sizes.extend(std::iter::repeat_n(hidden, depth.max(1)));
        sizes.push(1);
        let mlp = MlpConfig::new(&sizes).with_activation(ACT).init(scope)?;
        Ok(ScalarNet::Mlp(MlpNet { mlp, inputs, dim }))
    }

    /// The conv net with `channels`, `2·channels`, `2·channels` feature maps.
    pub fn conv(
        scope: &Scope,
        in_channels: usize,
        channels: usize,
        inputs: Inputs,
    ) -> Result<ScalarNet, AbiError> {
        let widths = [channels, 2 * channels, 2 * channels];
        let mut convs = Vec::new();
        let mut cond = Vec::new();
        let mut c_in = in_channels;
        for (i, &c) in widths.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let conv = Conv2dConfig::new(c_in, c, 3).with_stride(stride);
            convs.push(conv.init(&scope.pp(format!("conv{i}")))?);
            if inputs.width() > 0 {
                cond.push(
                    LinearConfig::new(inputs.width(), c).init(&scope.pp(format!("cond{i}")))?,
                );
            }
            c_in = c;
        }
        let head = LinearConfig::new(c_in, 1).init(&scope.pp("head"))?;
        Ok(ScalarNet::Conv(ConvNet {
            convs,
            cond,
            head,
            inputs,
        }))
    }

    /// Sets the timestep scale of the time features (see [`Inputs::time_scale`]).
    pub fn set_time_scale(&mut self, scale: f32) {
        match self {
            ScalarNet::Mlp(n) => n.inputs.time_scale = scale,
            ScalarNet::Conv(n) => n.inputs.time_scale = scale,
        }
    }

    /// The same network with [detached](Param::detached) parameters: for
    /// evaluating it without recording an autodiff graph.
    pub fn detached(&self) -> ScalarNet {
        let linear = |l: &Linear| Linear {
            weight: l.weight.detached(),
            bias: l.bias.as_ref().map(Param::detached),
        };
        match self {
            ScalarNet::Mlp(n) => ScalarNet::Mlp(MlpNet {
                mlp: Mlp {
                    layers: n.mlp.layers.iter().map(linear).collect(),
                    activation: n.mlp.activation,
                },
                ..n.clone()
            }),
            ScalarNet::Conv(n) => ScalarNet::Conv(ConvNet {
                convs: n
                    .convs
                    .iter()
                    .map(|c| Conv2d {
                        weight: c.weight.detached(),
                        bias: c.bias.as_ref().map(Param::detached),
                        options: c.options,
                    })
                    .collect(),
                cond: n.cond.iter().map(linear).collect(),
                head: linear(&n.head),
                inputs: n.inputs,
            }),
        }
    }

    /// Every parameter, for the host's `optimizer_step`.
    pub fn params(&self) -> Vec<Param> {
        let linear = |l: &Linear| {
            let mut v = vec![l.weight.clone()];
            v.extend(l.bias.clone());
            v
        };
        match self {
            ScalarNet::Mlp(n) => n.mlp.layers.iter().flat_map(linear).collect(),
            ScalarNet::Conv(n) => {
                let mut v = Vec::new();
                for c in &n.convs {
                    v.push(c.weight.clone());
                    v.extend(c.bias.clone());
                }
                v.extend(n.cond.iter().flat_map(linear));
                v.extend(linear(&n.head));
                v
            }
        }
    }

    /// The output `[B]` for `x` at timesteps `t` `[B]` (time-dependent nets)
    /// with class `labels` (conditional nets).
    pub fn forward(&self, x: &Tensor, t: Option<&Tensor>, labels: Option<&[i64]>) -> Tensor {
        self.run(x, t, labels, false).0
    }

    /// The output `[B]` and its gradient with respect to `x` (shaped as x),
    /// both in the forward graph.
    pub fn forward_with_input_grad(
        &self,
        x: &Tensor,
        t: Option<&Tensor>,
        labels: Option<&[i64]>,
    ) -> (Tensor, Tensor) {
        let (y, g) = self.run(x, t, labels, true);
        (y, g.expect("asked for the gradient"))
    }

    fn run(
        &self,
        x: &Tensor,
        t: Option<&Tensor>,
        labels: Option<&[i64]>,
        grad: bool,
    ) -> (Tensor, Option<Tensor>) {
        let b = x.dim(0);
        match self {
            ScalarNet::Mlp(n) => {
                let input = match n.inputs.features(b, t, labels) {
                    Some(f) => Tensor::cat(&[x, &f], 1),
                    None => x.clone(),
                };
                if grad {
                    let (y, g) = n
                        .mlp
                        .forward_with_input_grad(&input, &Tensor::ones(&[b, 1]));
                    (y.reshape(&[b]), Some(g.narrow(1, 0, n.dim)))
                } else {
                    (n.mlp.forward(&input).reshape(&[b]), None)
                }
            }
            ScalarNet::Conv(n) => n.run(x, t, labels, grad),
        }
    }
}

impl ConvNet {
    fn run(
        &self,
        x: &Tensor,
        t: Option<&Tensor>,
        labels: Option<&[i64]>,
        grad: bool,
    ) -> (Tensor, Option<Tensor>) {
        let b = x.dim(0);
        let feats = self.inputs.features(b, t, labels);
        let mut h = x.clone();
        let mut sides = Vec::new(); // input side of each convolution
        let mut pre = Vec::new(); // pre-activations
        for (i, conv) in self.convs.iter().enumerate() {
            sides.push([h.dim(2), h.dim(3)]);
            let mut a = conv.forward(&h);
            if let Some(f) = &feats {
                let c = a.dim(1);
                a = a + self.cond[i].forward(f).reshape(&[b, c, 1, 1]);
            }
            h = ACT.apply(&a);
            pre.push(a);
        }
        let (c, hh, ww) = (h.dim(1), h.dim(2), h.dim(3));
        let pooled = h.mean_dims(&[2, 3], false); // [B, C]
        let y = self.head.forward(&pooled).reshape(&[b]);
        if !grad {
            return (y, None);
        }
        // backward through the head and the mean: ∂y/∂h = W_head / (H W)
        let w = self.head.weight.value().reshape(&[1, c, 1, 1]);
        let mut g = (w * (1.0 / (hh * ww) as f32)).expand(&[b, c, hh, ww]);
        for (i, conv) in self.convs.iter().enumerate().rev() {
            g = g * ACT.derivative(&pre[i]);
            g = conv.input_grad(&g, sides[i]);
        }
        (y, Some(g))
    }
}
