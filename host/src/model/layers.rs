//! The layers the U-Nets share, as functions of the parameter map:
//! convolutions, group norm, the positional time embedding, the residual
//! block, scaled dot-product attention, and the resamplers. Each takes the
//! module's checkpoint key prefix (`down_blocks.1.resnets.0`,
//! `input_blocks.4.0`) and reads `<prefix>.<param>`; PyTorch layouts are kept
//! (`[out, in, kh, kw]` convolutions, `[out, in]` linears).
//!
//! Behaviour follows diffusers 0.42.1 (`src/diffusers/models/`):
//! `resnet.py` `ResnetBlock2D.forward`, `attention_processor.py`
//! `AttnProcessor2_0.__call__`, `downsampling.py` `Downsample2D.forward`,
//! `upsampling.py` `Upsample2D.forward`, `embeddings.py`
//! `get_timestep_embedding`; guided-diffusion's `ResBlock` and `nn.py`
//! `timestep_embedding` are the same computations under other names
//! (`model::adm_net`).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::{avg_pool2d, conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, FloatTensor, InterpolateMode, InterpolateOptions, PadMode};
use burn::tensor::{Tensor, TensorData, TensorPrimitive, activation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::HashMap;

/// The parameter map the forward reads.
pub(crate) type Params<B> = HashMap<String, FloatTensor<B>>;

/// A burn tensor of rank `D` over a primitive.
pub(crate) fn tensor<B: AutodiffBackend, const D: usize>(p: &FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p.clone()))
}

/// Parameter `name` as a rank-`D` tensor, or a panic naming it (the loaders
/// check every key against the config, so a miss is a host bug).
pub(crate) fn param<B: AutodiffBackend, const D: usize>(
    params: &Params<B>,
    name: &str,
) -> Tensor<B, D> {
    tensor(
        params
            .get(name)
            .unwrap_or_else(|| panic!("parameter `{name}` is missing from the store")),
    )
}

/// `nn.Conv2d` with square kernel, `stride` and symmetric `padding`.
///
/// # Shapes
/// - x: `[B, C_in, H, W]`, weight `[C_out, C_in, k, k]`
/// - output: `[B, C_out, H', W']`
pub(crate) fn conv<B: AutodiffBackend>(
    params: &Params<B>,
    name: &str,
    x: Tensor<B, 4>,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let w = param::<B, 4>(params, &format!("{name}.weight"));
    let b = param::<B, 1>(params, &format!("{name}.bias"));
    conv2d(
        x,
        w,
        Some(b),
        ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
    )
}

/// `nn.Linear`: `x · Wᵀ + b` with PyTorch's `[out, in]` weight.
///
/// # Shapes
/// - x: `[N, in]`; output: `[N, out]`
pub(crate) fn linear<B: AutodiffBackend>(
    params: &Params<B>,
    name: &str,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let w = param::<B, 2>(params, &format!("{name}.weight"));
    let b = param::<B, 1>(params, &format!("{name}.bias"));
    x.matmul(w.transpose()) + b.unsqueeze()
}

/// `nn.GroupNorm(groups, C, eps)`: per sample and group of `C / groups`
/// channels, `y = (x − mean) / sqrt(var + eps) · γ + β` with the biased
/// variance, as PyTorch computes it.
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, H, W]`
pub(crate) fn group_norm<B: AutodiffBackend>(
    params: &Params<B>,
    name: &str,
    x: Tensor<B, 4>,
    groups: usize,
    eps: f64,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let g = x.reshape([n, groups, (c / groups) * h * w]);
    let mean = g.clone().mean_dim(2);
    let centered = g - mean;
    let var = centered.clone().powf_scalar(2.0).mean_dim(2);
    let y = (centered / (var + eps).sqrt()).reshape([n, c, h, w]);
    // The affine as [N, C, 1, 1] tensors (C·N values, copied): burn-flex
    // runs `[N, C, H, W] ∘ [N, C, 1, 1]` on its SIMD per-row path, while a
    // `[1, C, 1, 1]` operand falls back to a scalar strided loop.
    let per_sample = |v: Tensor<B, 1>| v.reshape([1, c]).repeat_dim(0, n).reshape([n, c, 1, 1]);
    let gamma = per_sample(param::<B, 1>(params, &format!("{name}.weight")));
    let beta = per_sample(param::<B, 1>(params, &format!("{name}.bias")));
    y * gamma + beta
}

/// The U-Nets' embedding MLP and the `temb` injection point:
/// `temb = lin2(silu(lin1(e)))`, plus row `labels` of the class table when
/// both are given, then `hook("temb", temb, temb)`. Returns the hooked
/// `temb` (what later hooks receive) and `silu(temb)`, which every residual
/// block projects. `names` are the two linear layers' and the class table's
/// checkpoint names.
pub(crate) fn embed_time<B: AutodiffBackend, E>(
    params: &Params<B>,
    e: Tensor<B, 2>,
    names: [&str; 3],
    labels: Option<burn::tensor::ops::IntTensor<B>>,
    hook: &mut crate::model::mlp_net::PointHook<'_, B, E>,
) -> Result<(FloatTensor<B>, Tensor<B, 2>), E> {
    let [lin1, lin2, classes] = names;
    let mut temb = linear(params, lin2, activation::silu(linear(params, lin1, e))); // [B, T]
    if let Some(y) = labels {
        let table = param::<B, 2>(params, classes); // [K, T]
        temb = temb + table.select(0, Tensor::<B, 1, burn::tensor::Int>::from_primitive(y));
    }
    let temb0 = temb.into_primitive().tensor();
    let temb = hook("temb", temb0.clone(), &temb0)?;
    let act = activation::silu(tensor::<B, 2>(&temb));
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

/// How a [`resnet`] is set up.
pub(crate) struct ResnetSpec<'a> {
    /// Layer names.
    pub keys: &'static ResnetKeys,
    /// `norm1` / `norm2` groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
    /// `resnet_time_scale_shift == "scale_shift"` (`use_scale_shift_norm`).
    pub scale_shift: bool,
    /// `output_scale_factor` (1, or the mid block's `mid_block_scale_factor`).
    pub output_scale: f64,
    /// Dropout before `conv2`: its rate and the training step's stream;
    /// `None` (or a rate of 0) for none.
    pub dropout: Option<(f64, &'a DropoutRng)>,
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
/// out = (shortcut(x) or x + h) / output_scale
/// ```
///
/// # Shapes
/// - x: `[B, C_in, H, W]`, temb_act: `[B, T]`; output: `[B, C_out, H', W']`
///   (`H' = H`, `2H` or `H/2` with the resample)
pub(crate) fn resnet<B: AutodiffBackend>(
    params: &Params<B>,
    pre: &str,
    x: Tensor<B, 4>,
    temb_act: &Tensor<B, 2>,
    s: &ResnetSpec,
    resample: Resample,
) -> Tensor<B, 4> {
    let k = s.keys;
    let u = activation::silu(group_norm(
        params,
        &format!("{pre}.{}", k.norm1),
        x.clone(),
        s.groups,
        s.eps,
    ));
    let (u, x) = (resample.apply(u), resample.apply(x));
    let h = conv(params, &format!("{pre}.{}", k.conv1), u, 1, 1); // [B, C, H, W]
    let [b, c, _, _] = h.dims();
    let p = linear(params, &format!("{pre}.{}", k.emb_proj), temb_act.clone()); // [B, C or 2C]
    let norm2 = format!("{pre}.{}", k.norm2);
    let h = if s.scale_shift {
        let scale = p.clone().slice([0..b, 0..c]).reshape([b, c, 1, 1]);
        let shift = p.slice([0..b, c..2 * c]).reshape([b, c, 1, 1]);
        group_norm(params, &norm2, h, s.groups, s.eps) * (scale + 1.0) + shift
    } else {
        group_norm(params, &norm2, h + p.reshape([b, c, 1, 1]), s.groups, s.eps)
    };
    let h = activation::silu(h);
    let h = match s.dropout {
        Some((p, rng)) => dropout(h, p, rng),
        None => h,
    };
    let h = conv(params, &format!("{pre}.{}", k.conv2), h, 1, 1);
    let shortcut = format!("{pre}.{}", k.shortcut);
    let x = if params.contains_key(&format!("{shortcut}.weight")) {
        conv(params, &shortcut, x, 1, 0)
    } else {
        x
    };
    let out = x + h;
    if s.output_scale == 1.0 {
        out
    } else {
        out.div_scalar(s.output_scale)
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
/// out = (to_out.0(a) + x) / rescale
/// ```
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, H, W]`
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<B: AutodiffBackend>(
    params: &Params<B>,
    pre: &str,
    x: Tensor<B, 4>,
    heads: usize,
    head_dim: usize,
    norm_groups: Option<usize>,
    eps: f64,
    rescale: f64,
) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let n = h * w;
    let inner = heads * head_dim;
    let u = match norm_groups {
        Some(g) => group_norm(params, &format!("{pre}.group_norm"), x.clone(), g, eps),
        None => x.clone(),
    };
    let u = u.reshape([b, c, n]).swap_dims(1, 2).reshape([b * n, c]); // [B·HW, C]
    let split = |name: &str| {
        linear(params, &format!("{pre}.{name}"), u.clone())
            .reshape([b, n, heads, head_dim])
            .swap_dims(1, 2) // [B, heads, HW, d]
    };
    let a = attend(split("to_q"), split("to_k"), split("to_v")); // [B, heads, HW, d]
    let a = a.swap_dims(1, 2).reshape([b * n, inner]);
    let o = linear(params, &format!("{pre}.to_out.0"), a) // [B·HW, C]
        .reshape([b, n, c])
        .swap_dims(1, 2)
        .reshape([b, c, h, w]);
    let out = o + x;
    if rescale == 1.0 {
        out
    } else {
        out.div_scalar(rescale)
    }
}

/// `Downsample2D` with `use_conv`: a 3×3 convolution of stride 2 with
/// symmetric `padding` (`downsample_padding = 1`), or, for padding 0, after
/// padding one zero column on the right and one zero row at the bottom
/// (diffusers pads `(0, 1, 0, 1)`).
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, H/2, W/2]`
pub(crate) fn downsample<B: AutodiffBackend>(
    params: &Params<B>,
    pre: &str,
    x: Tensor<B, 4>,
    padding: usize,
) -> Tensor<B, 4> {
    let x = if padding == 0 {
        x.pad((0, 1, 0, 1), PadMode::Constant(0.0))
    } else {
        x
    };
    conv(params, &format!("{pre}.conv"), x, 2, padding)
}

/// `Upsample2D` with `use_conv` (guided-diffusion's `Upsample` with
/// `conv_resample`): nearest 2× upsampling, then a 3×3 convolution.
///
/// # Shapes
/// - x: `[B, C, H, W]`; output: `[B, C, 2H, 2W]`
pub(crate) fn upsample<B: AutodiffBackend>(
    params: &Params<B>,
    pre: &str,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    conv(params, &format!("{pre}.conv"), upsample_nearest(x), 1, 1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_abi::CpuBackend as B;

    fn params(w: Tensor<B, 4>) -> Params<B> {
        let dev = Default::default();
        let c = w.dims()[0];
        HashMap::from([
            ("d.conv.weight".to_owned(), w.into_primitive().tensor()),
            (
                "d.conv.bias".to_owned(),
                Tensor::<B, 1>::zeros([c], &dev).into_primitive().tensor(),
            ),
        ])
    }

    #[test]
    fn dropout_zeroes_a_fraction_p_and_rescales_the_rest() {
        let dev = Default::default();
        let x = Tensor::<B, 2>::ones([100, 100], &dev);
        let v = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
        let a = v(dropout(x.clone(), 0.25, &DropoutRng::new(7)));
        // 10 000 Bernoulli(0.25) draws: sd of the fraction 0.0043; 0.02 is
        // more than 4 sd.
        let zeros = a.iter().filter(|&&z| z == 0.0).count() as f64 / 1e4;
        assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
        assert!(a.iter().all(|&z| z == 0.0 || z == 1.0 / 0.75));
        // the same stream gives the same mask; another seed another one
        assert_eq!(a, v(dropout(x.clone(), 0.25, &DropoutRng::new(7))));
        assert_ne!(a, v(dropout(x.clone(), 0.25, &DropoutRng::new(8))));
        // p = 0 is the identity and draws nothing
        let rng = DropoutRng::new(7);
        assert_eq!(v(dropout(x.clone(), 0.0, &rng)), v(x.clone()));
        assert_eq!(a, v(dropout(x, 0.25, &rng)));
    }

    #[test]
    fn downsample_padding_0_pads_right_and_bottom_only() {
        // x = 1..16 on a 4x4 grid, a 3x3 all-ones kernel, stride 2. With
        // diffusers' (0, 1, 0, 1) pad the windows start at rows/cols 0 and 2:
        // out[0,0] = sum x[0..3, 0..3] = 1+2+3+5+6+7+9+10+11 = 54,
        // out[1,1] = sum x[2..4, 2..4] (the padded row and column add 0)
        //          = 11+12+15+16 = 54; out[0,1] = x[0..3, 2..4] = 3+4+7+8+11+12 = 45;
        // out[1,0] = x[2..4, 0..3] = 9+10+11+13+14+15 = 72.
        let dev = Default::default();
        let x = Tensor::<B, 1>::from_floats(
            [
                1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16.,
            ],
            &dev,
        )
        .reshape([1, 1, 4, 4]);
        let p = params(Tensor::ones([1, 1, 3, 3], &dev));
        let out = downsample(&p, "d", x.clone(), 0);
        assert_eq!(out.dims(), [1, 1, 2, 2]);
        assert_eq!(
            out.into_data().to_vec::<f32>().unwrap(),
            [54., 45., 72., 54.]
        );
        // Padding 1 is symmetric: out[0,0] = x[0..2, 0..2] = 1+2+5+6 = 14.
        let out = downsample(&p, "d", x, 1);
        assert_eq!(out.into_data().to_vec::<f32>().unwrap()[0], 14.);
    }

    #[test]
    fn timestep_embedding_matches_get_timestep_embedding() {
        // diffusers get_timestep_embedding(tensor([2.]), 4, flip, shift):
        // half = 2, f = [1, exp(-ln(1e4)/(2 - shift))].
        let dev = Default::default();
        let t = || Tensor::<B, 1>::from_floats([2.0], &dev);
        let got = timestep_embedding(t(), 4, false, 1.0)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let f1 = (-(10000f32.ln())).exp(); // shift 1: half - shift = 1
        let want = [2f32.sin(), (2. * f1).sin(), 2f32.cos(), (2. * f1).cos()];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let got = timestep_embedding(t(), 5, true, 0.0)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let f1 = (-(10000f32.ln()) / 2.).exp();
        let want = [2f32.cos(), (2. * f1).cos(), 2f32.sin(), (2. * f1).sin(), 0.];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
