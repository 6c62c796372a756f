//! The layers the U-Nets share, each a struct built once from its config
//! with its parameters declared under the checkpoint's key prefix
//! (`down_blocks.1.resnets.0`, `input_blocks.4.0`): convolutions, group
//! norm, the time-embedding MLP, the residual block, attention and the
//! resamplers. PyTorch layouts are kept (`[out, in, kh, kw]`
//! convolutions, `[out, in]` linears).
//!
//! Behaviour follows diffusers 0.42.1 (`src/diffusers/models/`):
//! `resnet.py` `ResnetBlock2D.forward`, `attention_processor.py`
//! `AttnProcessor2_0.__call__`, `downsampling.py` `Downsample2D.forward`,
//! `upsampling.py` `Upsample2D.forward`, `embeddings.py`
//! `get_timestep_embedding`; guided-diffusion's `ResBlock` and `nn.py`
//! `timestep_embedding` are the same computations under other names
//! (`model::adm`).

use super::hooks::Hooks;
use super::{Param, Vars, Weights};
use crate::kernels::conv2d_tensor as conv2d;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions, PadMode};
use burn::tensor::{Int, Tensor, TensorData, activation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

/// `nn.Conv2d` with square kernel, `stride` and symmetric `padding`:
/// `weight` `[C_out, C_in, k, k]`, `bias` `[C_out]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conv2d {
    weight: Param<4>,
    bias: Param<1>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A `k`×`k` convolution `c_in → c_out` declared under `vars`.
    pub(crate) fn new(
        vars: &Vars,
        c_out: usize,
        c_in: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Conv2d {
            weight: vars.param("weight", [c_out, c_in, k, k]),
            bias: vars.param("bias", [c_out]),
            stride,
            padding,
        }
    }

    /// # Shapes
    /// - x: `[B, C_in, H, W]`; output: `[B, C_out, H', W']`
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let (s, p) = (self.stride, self.padding);
        conv2d(
            x,
            w.get(self.weight),
            Some(w.get(self.bias)),
            ConvOptions::new([s, s], [p, p], [1, 1], 1),
        )
    }
}

/// `nn.Linear`: `x · Wᵀ + b` with PyTorch's `[out, in]` weight.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Linear {
    weight: Param<2>,
    bias: Param<1>,
}

impl Linear {
    /// A linear map `d_in → d_out` declared under `vars`.
    pub(crate) fn new(vars: &Vars, d_out: usize, d_in: usize) -> Self {
        Linear {
            weight: vars.param("weight", [d_out, d_in]),
            bias: vars.param("bias", [d_out]),
        }
    }

    /// # Shapes
    /// - x: `[N, in]`; output: `[N, out]`
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let (weight, bias) = (w.get(self.weight), w.get(self.bias));
        crate::kernels::linear(&x, &weight, &bias)
            .unwrap_or_else(|| x.matmul(weight.transpose()) + bias.unsqueeze())
    }
}

/// `nn.GroupNorm(groups, C, eps)`: per sample and group of `C / groups`
/// channels, `y = (x − mean) / sqrt(var + eps) · γ + β` with the biased
/// variance, as PyTorch computes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupNorm {
    weight: Param<1>,
    bias: Param<1>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// A group norm over `c` channels declared under `vars`.
    pub(crate) fn new(vars: &Vars, c: usize, groups: usize, eps: f64) -> Self {
        GroupNorm {
            weight: vars.param("weight", [c]),
            bias: vars.param("bias", [c]),
            groups,
            eps,
        }
    }

    /// # Shapes
    /// - x: `[B, C, H, W]`; output: `[B, C, H, W]`
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.apply(w, x, false)
    }

    /// `silu(self.forward(w, x))`, fused on the CPU backend.
    pub(crate) fn forward_silu<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.apply(w, x, true)
    }

    /// The norm (and SiLU): one kernel with its own backward on the CPU
    /// backend (`kernels::group_norm`), op by op elsewhere.
    fn apply<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        act: bool,
    ) -> Tensor<B, 4> {
        let (gamma, beta) = (w.get(self.weight), w.get(self.bias));
        if let Some(y) = crate::kernels::group_norm(&x, &gamma, &beta, self.groups, self.eps, act) {
            return y;
        }
        let y = self.ops(x, gamma, beta);
        if act { silu(y) } else { y }
    }

    /// The norm op by op.
    fn ops<B: AutodiffBackend>(
        &self,
        x: Tensor<B, 4>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
    ) -> Tensor<B, 4> {
        let [n, c, h, wd] = x.dims();
        let g = x.reshape([n, self.groups, (c / self.groups) * h * wd]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().powf_scalar(2.0).mean_dim(2);
        let y = (centered / (var + self.eps).sqrt()).reshape([n, c, h, wd]);
        // The affine as [N, C, 1, 1] tensors (C·N values, copied): burn-flex
        // runs `[N, C, H, W] ∘ [N, C, 1, 1]` on its SIMD per-row path, while a
        // `[1, C, 1, 1]` operand falls back to a scalar strided loop.
        let per_sample = |v: Tensor<B, 1>| v.reshape([1, c]).repeat_dim(0, n).reshape([n, c, 1, 1]);
        y * per_sample(gamma) + per_sample(beta)
    }
}

/// `x·sigmoid(x)`: one kernel with its own backward on the CPU backend
/// (`kernels::silu`), burn's op elsewhere.
pub(crate) fn silu<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match crate::kernels::silu(&x) {
        Some(y) => y,
        None => activation::silu(x),
    }
}

/// The U-Nets' embedding MLP with the optional class table:
/// `temb = lin2(silu(lin1(e)))`, plus row `labels` of the table when both
/// are there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimeEmbedding {
    pub(crate) lin1: Linear,
    pub(crate) lin2: Linear,
    /// `[K, T]`, for a class-conditional net.
    pub(crate) classes: Option<Param<2>>,
}

impl TimeEmbedding {
    /// `temb` before the `temb` point, as `[B, T]`.
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        e: Tensor<B, 2>,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Tensor<B, 2> {
        let temb = self.lin2.forward(w, silu(self.lin1.forward(w, e))); // [B, T]
        match (self.classes, labels) {
            (Some(table), Some(y)) => temb + w.get(table).select(0, y),
            _ => temb,
        }
    }
}

/// The `temb` injection point: returns the hooked `temb` (what later
/// hooks receive) and `silu(temb)`, which every residual block projects.
pub(crate) fn temb_point<B: AutodiffBackend, H: Hooks<B, D>, const D: usize>(
    temb: Tensor<B, 2>,
    hooks: &mut H,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>), H::Error> {
    let temb = hooks.temb(temb)?;
    let act = silu(temb.clone());
    Ok((temb, act))
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, freq_shift)`
/// (scale 1, max period 10 000): with `half = dim / 2` and
/// `f_k = exp(−ln(10000) · k / (half − freq_shift))`,
/// `e = [sin(t·f), cos(t·f)]`, or `[cos, sin]` when `flip_sin_to_cos`, and a
/// zero column when `dim` is odd. Frequencies are computed in f32 in the same
/// order of operations as diffusers.
///
/// # Shapes
/// - t: `[B]`; output: `[B, dim]`
pub fn timestep_embedding<B: AutodiffBackend>(
    t: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let denom = half as f32 - freq_shift as f32;
    let ln = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (ln * k as f32 / denom).exp()).collect();
    let device = t.device();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &device);
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze(); // [B, half]
    let (sin, cos) = (args.clone().sin(), args.cos());
    let mut parts = if flip_sin_to_cos {
        vec![cos, sin]
    } else {
        vec![sin, cos]
    };
    if dim % 2 == 1 {
        let [b, _] = parts[0].dims();
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1)
}

/// The names of a residual block's layers under its prefix.
pub(crate) struct ResnetKeys {
    /// First group norm.
    pub norm1: &'static str,
    /// First 3×3 convolution.
    pub conv1: &'static str,
    /// Linear projection of `silu(temb)`.
    pub emb_proj: &'static str,
    /// Second group norm.
    pub norm2: &'static str,
    /// Second 3×3 convolution.
    pub conv2: &'static str,
    /// 1×1 convolution of the input when channels change.
    pub shortcut: &'static str,
}

/// diffusers' `ResnetBlock2D` names.
pub(crate) const DIFFUSERS_RESNET: ResnetKeys = ResnetKeys {
    norm1: "norm1",
    conv1: "conv1",
    emb_proj: "time_emb_proj",
    norm2: "norm2",
    conv2: "conv2",
    shortcut: "conv_shortcut",
};

/// The random stream of a training forward's dropout masks: seeded by the
/// run per step, so a step draws the same masks on every backend and after a
/// resume. A forward without one (sampling, validation, the frozen source,
/// `dtx model forward`) applies no dropout, as PyTorch's eval mode.
pub struct DropoutRng(RefCell<StdRng>);

impl DropoutRng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        DropoutRng(RefCell::new(StdRng::seed_from_u64(seed)))
    }
}

/// `nn.Dropout(p)` in training mode (Srivastava et al., *Dropout*, JMLR
/// 2014): each value kept with probability 1 − p and then divided by
/// 1 − p, else zeroed; the mask drawn from `rng` in row-major order.
pub(crate) fn dropout<B: AutodiffBackend, const D: usize>(
    x: Tensor<B, D>,
    p: f64,
    rng: &DropoutRng,
) -> Tensor<B, D> {
    if p <= 0.0 {
        return x;
    }
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let n = x.shape().num_elements();
    let mut r = rng.0.borrow_mut();
    let mask: Vec<f32> = (0..n)
        .map(|_| if r.random::<f64>() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, x.shape()), &x.device());
    x * mask
}

/// How a [`ResBlock`] is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResSpec {
    /// Input and output channels.
    pub c_in: usize,
    pub c_out: usize,
    /// Width of `temb`.
    pub temb: usize,
    /// `norm1` / `norm2` groups and epsilon.
    pub groups: usize,
    pub eps: f64,
    /// `resnet_time_scale_shift == "scale_shift"` (`use_scale_shift_norm`).
    pub scale_shift: bool,
    /// `output_scale_factor` (1, or the mid block's `mid_block_scale_factor`).
    pub output_scale: f64,
    /// The dropout rate before `conv2` in a training forward.
    pub dropout: f64,
    /// A resolution change inside the block.
    pub resample: Resample,
}

/// A resolution change inside a residual block (guided-diffusion's
/// `ResBlock(up=True)` / `ResBlock(down=True)`, used with `resblock_updown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resample {
    /// Same resolution.
    None,
    /// Nearest 2× upsampling ([`upsample_nearest`]).
    Up,
    /// 2×2 average pooling ([`avg_pool`]).
    Down,
}

impl Resample {
    fn apply<B: AutodiffBackend>(self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Resample::None => x,
            Resample::Up => upsample_nearest(x),
            Resample::Down => avg_pool(x),
        }
    }
}

/// The residual block of diffusers' `ResnetBlock2D` and guided-diffusion's
/// `ResBlock` (He et al., *Deep Residual Learning for Image Recognition*,
/// 2015, arXiv:1512.03385, with the time conditioning of Ho et al.,
/// *Denoising Diffusion Probabilistic Models*, 2020, arXiv:2006.11239, and
/// the scale-shift norm of Dhariwal & Nichol, *Diffusion Models Beat GANs on
/// Image Synthesis*, 2021, arXiv:2105.05233, Section 3):
///
/// ```text
/// u = silu(norm1(x)); with a resample r: u, x = r(u), r(x)
/// h = conv1(u)
/// p = emb_proj(silu(temb))                           (temb_act is silu(temb))
/// default:     h = norm2(h + p)
/// scale_shift: h = norm2(h) · (1 + p[:C]) + p[C:]
/// h = conv2(dropout(silu(h)))                        (dropout only in training)
///                                                    -> the `….branch` point
/// out = (shortcut(x) or x + h) / output_scale
/// ```
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    /// A 1×1 convolution of the input when the channels change.
    shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale: f64,
    dropout: f64,
    resample: Resample,
}

impl ResBlock {
    /// A block declared under `vars` with the layer names `keys`.
    pub(crate) fn new(vars: &Vars, keys: &ResnetKeys, s: ResSpec) -> Self {
        let (i, o) = (s.c_in, s.c_out);
        let proj = if s.scale_shift { 2 * o } else { o };
        ResBlock {
            norm1: GroupNorm::new(&vars.pp(keys.norm1), i, s.groups, s.eps),
            conv1: Conv2d::new(&vars.pp(keys.conv1), o, i, 3, 1, 1),
            emb_proj: Linear::new(&vars.pp(keys.emb_proj), proj, s.temb),
            norm2: GroupNorm::new(&vars.pp(keys.norm2), o, s.groups, s.eps),
            conv2: Conv2d::new(&vars.pp(keys.conv2), o, o, 3, 1, 1),
            shortcut: (i != o).then(|| Conv2d::new(&vars.pp(keys.shortcut), o, i, 1, 1, 0)),
            scale_shift: s.scale_shift,
            output_scale: s.output_scale,
            dropout: s.dropout,
            resample: s.resample,
        }
    }

    /// `rng`: the training step's dropout stream (`None`: eval mode).
    ///
    /// # Shapes
    /// - x: `[B, C_in, H, W]`, temb_act: `[B, T]`; output: `[B, C_out, H', W']`
    ///   (`H' = H`, `2H` or `H/2` with the resample)
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        temb_act: &Tensor<B, 2>,
        rng: Option<&DropoutRng>,
    ) -> Tensor<B, 4> {
        let identity = Ok::<_, std::convert::Infallible>;
        match self.forward_with(w, x, temb_act, rng, identity) {
            Ok(out) => out,
            Err(never) => match never {},
        }
    }

    /// [`Self::forward`] with `branch` applied to the residual branch (the
    /// output of `conv2`) before the skip sum: `out = (shortcut(x) +
    /// branch(h)) / output_scale`. An identity `branch` is `forward`, op
    /// for op.
    ///
    /// # Shapes
    /// - as [`Self::forward`]; `branch` takes and returns `[B, C_out, H', W']`
    pub(crate) fn forward_with<B: AutodiffBackend, E>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        temb_act: &Tensor<B, 2>,
        rng: Option<&DropoutRng>,
        branch: impl FnOnce(Tensor<B, 4>) -> Result<Tensor<B, 4>, E>,
    ) -> Result<Tensor<B, 4>, E> {
        let u = self.norm1.forward_silu(w, x.clone());
        let (u, x) = (self.resample.apply(u), self.resample.apply(x));
        let h = self.conv1.forward(w, u); // [B, C, H, W]
        let [b, c, _, _] = h.dims();
        let p = self.emb_proj.forward(w, temb_act.clone()); // [B, C or 2C]
        let h = if self.scale_shift {
            let scale = p.clone().slice([0..b, 0..c]).reshape([b, c, 1, 1]);
            let shift = p.slice([0..b, c..2 * c]).reshape([b, c, 1, 1]);
            silu(self.norm2.forward(w, h) * (scale + 1.0) + shift)
        } else {
            self.norm2.forward_silu(w, h + p.reshape([b, c, 1, 1]))
        };
        let h = match rng {
            Some(rng) if self.dropout > 0.0 => dropout(h, self.dropout, rng),
            _ => h,
        };
        let h = branch(self.conv2.forward(w, h))?;
        let x = match &self.shortcut {
            Some(conv) => conv.forward(w, x),
            None => x,
        };
        let out = x + h;
        Ok(if self.output_scale == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale)
        })
    }
}

/// Scaled dot-product attention (Vaswani et al., *Attention Is All You
/// Need*, 2017, arXiv:1706.03762, eq. 1): `softmax(q kᵀ / sqrt(d)) v`, per
/// sample and head.
///
/// # Shapes
/// - q, k, v: `[B, heads, N, d]`; output: `[B, heads, N, d]`
pub(crate) fn attend<B: AutodiffBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let d = q.dims()[3];
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt()); // [B, heads, N, N]
    activation::softmax(scores, 3).matmul(v)
}

/// diffusers' `Attention` as U-Net blocks build it (self-attention over the
/// `H·W` positions, `residual_connection`, `AttnProcessor2_0`; Vaswani et
/// al., *Attention Is All You Need*, 2017, arXiv:1706.03762):
///
/// ```text
/// u = group_norm(x) (when the block has one), as [B, HW, C]
/// q, k, v = to_q(u), to_k(u), to_v(u), split into `heads` of `head_dim`
/// a = softmax(q kᵀ / sqrt(head_dim)) v
/// o = to_out.0(a) as [B, C, H, W]                    -> the `….attn.{j}.branch` point
/// out = (o + x) / rescale
/// ```
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale: f64,
}

impl Attention {
    /// An attention over `c` channels in `heads` heads of `head_dim`,
    /// declared under `vars`; `norm`: the group norm's groups and epsilon.
    pub(crate) fn new(
        vars: &Vars,
        c: usize,
        (heads, head_dim): (usize, usize),
        norm: Option<(usize, f64)>,
        rescale: f64,
    ) -> Self {
        let inner = heads * head_dim;
        Attention {
            group_norm: norm.map(|(g, eps)| GroupNorm::new(&vars.pp("group_norm"), c, g, eps)),
            to_q: Linear::new(&vars.pp("to_q"), inner, c),
            to_k: Linear::new(&vars.pp("to_k"), inner, c),
            to_v: Linear::new(&vars.pp("to_v"), inner, c),
            to_out: Linear::new(&vars.pp("to_out.0"), c, inner),
            heads,
            head_dim,
            rescale,
        }
    }

    /// The attention's forward with `branch` applied to its output
    /// `to_out.0(a)`, as `[B, C, H, W]`, before the residual sum: `out =
    /// (branch(o) + x) / rescale` (an identity `branch`: diffusers' `(o +
    /// x) / rescale`, op for op).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`; `branch` takes and returns `[B, C, H, W]`;
    ///   output: `[B, C, H, W]`
    pub(crate) fn forward_with<B: AutodiffBackend, E>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        branch: impl FnOnce(Tensor<B, 4>) -> Result<Tensor<B, 4>, E>,
    ) -> Result<Tensor<B, 4>, E> {
        let [b, c, h, wd] = x.dims();
        let (heads, head_dim) = (self.heads, self.head_dim);
        let n = h * wd;
        let u = match &self.group_norm {
            Some(norm) => norm.forward(w, x.clone()),
            None => x.clone(),
        };
        let u = swap12(u.reshape([b, c, n])).reshape([b * n, c]); // [B·HW, C]
        let inner = heads * head_dim;
        let project = |lin: &Linear| lin.forward(w, u.clone()).reshape([b, n, inner]);
        let (q, k, v) = (
            project(&self.to_q),
            project(&self.to_k),
            project(&self.to_v),
        );
        // One kernel on the CPU backend, on the projections' own layout
        // (no head split or merge); op by op elsewhere.
        let a = match crate::kernels::attention(&q, &k, &v, heads) {
            Some(a) => a,
            None => {
                let split = |t: Tensor<B, 3>| t.reshape([b, n, heads, head_dim]).swap_dims(1, 2);
                attend(split(q), split(k), split(v))
                    .swap_dims(1, 2)
                    .reshape([b, n, inner])
            }
        };
        let a = a.reshape([b * n, inner]);
        let o = swap12(self.to_out.forward(w, a).reshape([b, n, c])).reshape([b, c, h, wd]);
        let out = branch(o)? + x;
        Ok(if self.rescale == 1.0 {
            out
        } else {
            out.div_scalar(self.rescale)
        })
    }
}

/// `t.swap_dims(1, 2)`, contiguous: the CPU kernel where it applies.
fn swap12<B: AutodiffBackend>(t: Tensor<B, 3>) -> Tensor<B, 3> {
    crate::kernels::swap_rows_cols(&t).unwrap_or_else(|| t.swap_dims(1, 2))
}

/// `Downsample2D` with `use_conv`: a 3×3 convolution of stride 2 with
/// symmetric `padding` (`downsample_padding = 1`), or, for padding 0, after
/// padding one zero column on the right and one zero row at the bottom
/// (diffusers pads `(0, 1, 0, 1)`). Its convolution is `<prefix>.conv`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Downsample {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample {
    /// A downsampler over `c` channels declared under `vars`.
    pub(crate) fn new(vars: &Vars, c: usize, padding: usize) -> Self {
        Downsample {
            conv: Conv2d::new(&vars.pp("conv"), c, c, 3, 2, padding),
            pad_right_bottom: padding == 0,
        }
    }

    /// # Shapes
    /// - x: `[B, C, H, W]`; output: `[B, C, H/2, W/2]`
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let x = if self.pad_right_bottom {
            x.pad((0, 1, 0, 1), PadMode::Constant(0.0))
        } else {
            x
        };
        self.conv.forward(w, x)
    }
}

/// `Upsample2D` with `use_conv` (guided-diffusion's `Upsample` with
/// `conv_resample`): nearest 2× upsampling, then the 3×3 convolution
/// `<prefix>.conv`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// An upsampler over `c` channels declared under `vars`.
    pub(crate) fn new(vars: &Vars, c: usize) -> Self {
        Upsample {
            conv: Conv2d::new(&vars.pp("conv"), c, c, 3, 1, 1),
        }
    }

    /// # Shapes
    /// - x: `[B, C, H, W]`; output: `[B, C, 2H, 2W]`
    pub(crate) fn forward<B: AutodiffBackend>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        self.conv.forward(w, upsample_nearest(x))
    }
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")`.
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, 2H, 2W]`
pub(crate) fn upsample_nearest<B: AutodiffBackend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    interpolate(
        x,
        [2 * h, 2 * w],
        InterpolateOptions::new(InterpolateMode::Nearest),
    )
}

/// `F.avg_pool2d(x, 2, 2)`: the mean of each 2×2 block.
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, H/2, W/2]`
pub(crate) fn avg_pool<B: AutodiffBackend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false)
}
