//! [`AdmNet`]: the ADM U-Net, guided-diffusion's `UNetModel`
//! (Dhariwal & Nichol, *Diffusion Models Beat GANs on Image Synthesis*, 2021,
//! arXiv:2105.05233, building on the improved-diffusion U-Net of Nichol &
//! Dhariwal, *Improved Denoising Diffusion Probabilistic Models*, 2021,
//! arXiv:2102.09672; layout and behaviour from guided-diffusion's
//! `guided_diffusion/unet.py` and `nn.py`), built once from its
//! [`AdmConfig`] into blocks whose parameters are declared under their
//! `state_dict()` keys (`input_blocks.1.0.in_layers.2.weight`). The
//! attention block is `attention.rs`; the ResBlock, group norm, resamplers
//! and time embedding are `model::nn::layers`, shared with the diffusers
//! U-Net.
//!
//! Supported flags: everything `model::adm` accepts (`num_res_blocks`,
//! `channel_mult`, `attention_resolutions`, `num_heads`,
//! `num_head_channels`, `num_heads_upsample`, `use_scale_shift_norm`,
//! `resblock_updown`, `learn_sigma`, `class_cond`, `use_new_attention_order`).
//! `use_fp16` and `use_checkpoint` change neither names nor results (the host
//! computes in f32, as `GroupNorm32` does). `dropout` applies in the
//! training forward alone (a forward given the step's `DropoutRng`); every other forward is guided-diffusion's in eval mode.
//!
//! # Injection points and skip connections
//!
//! The forward calls the hook `(point, h, temb) -> h'` at `temb` (the time
//! embedding after the class embedding is added) and at the output of every
//! ResBlock that `model::adm` lists: `down.{l}.res.{j}` is
//! `input_blocks.{1 + l·(num_res_blocks + 1) + j}.0`, `mid.res.{0,1}` are
//! `middle_block.{0,2}`, `up.{i}.res.{j}` is
//! `output_blocks.{i·(num_res_blocks + 1) + j}.0` (docs/models.md). The
//! point is the ResBlock's output, *before* the attention block that follows
//! it. Inside the blocks it calls the hook at each of these ResBlocks'
//! residual branch (`out_layers.3`'s output, before the skip connection is
//! added), `<point>.branch`, and at each attention block's `proj_out`
//! output before its residual sum: `down.{l}.attn.{j}.branch`
//! (`input_blocks.{k}.1`), `mid.attn.0.branch` (`middle_block.1`),
//! `up.{i}.attn.{j}.branch` (`output_blocks.{k}.1`); there the hook's result
//! takes the branch's place in the sum. A layer's points come in forward
//! order: `….res.{j}.branch`, `….res.{j}`, `….attn.{j}.branch`. **The
//! hook's result replaces the activation everywhere downstream, skip
//! connections included**: an input block's skip is its output after
//! the hook and the attention, as guided-diffusion stores `hs.append(h)`
//! after the whole block. Every ResBlock gets the hooked `temb`. The
//! resampling ResBlocks of `resblock_updown` are not injection points.

use super::attention::AttentionBlock;
use super::config::{AdmConfig, EPS, GROUPS};
use crate::model::nn::hooks::{Hooks, LayerPoints};
use crate::model::nn::layers::{
    Conv2d, DropoutRng, GroupNorm, Linear, ResBlock, ResSpec, Resample, ResnetKeys, TimeEmbedding,
    Upsample, temb_point, timestep_embedding,
};
use crate::model::nn::{Catalogue, Vars, Weights};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use std::cell::RefCell;

/// guided-diffusion's `ResBlock` layer names: `in_layers` is (norm, SiLU,
/// conv), `emb_layers` (SiLU, linear), `out_layers` (norm, SiLU, dropout,
/// conv).
const ADM_RESBLOCK: ResnetKeys = ResnetKeys {
    norm1: "in_layers.0",
    conv1: "in_layers.2",
    emb_proj: "emb_layers.1",
    norm2: "out_layers.0",
    conv2: "out_layers.3",
    shortcut: "skip_connection",
};

/// A resolution change between levels.
#[derive(Debug, Clone, PartialEq)]
enum Resampler {
    /// A ResBlock that resamples (`resblock_updown`).
    Res(ResBlock),
    /// `Downsample` with `conv_resample`: a 3×3 convolution of stride 2 (`op`).
    Conv(Conv2d),
    /// `Upsample` with `conv_resample`: nearest 2×, then a 3×3 convolution.
    Up(Upsample),
}

/// A ResBlock and the attention block after it (levels in
/// `attention_resolutions`), with their points.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    res: ResBlock,
    attention: Option<AttentionBlock>,
    points: LayerPoints,
}

/// A level of input or output blocks: its layers, then the resampler.
#[derive(Debug, Clone, PartialEq)]
struct Level {
    layers: Vec<Layer>,
    resample: Option<Resampler>,
}

/// guided-diffusion's `UNetModel`: its config and its blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmNet {
    /// The architecture.
    pub config: AdmConfig,
    catalogue: Catalogue,
    time_embed: TimeEmbedding,
    conv_in: Conv2d,
    input: Vec<Level>,
    middle: (ResBlock, AttentionBlock, ResBlock),
    /// `mid.res.0` (with `mid.attn.0.branch`) and `mid.res.1`.
    middle_points: [LayerPoints; 2],
    /// Lowest resolution first.
    output: Vec<Level>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
}

impl AdmNet {
    /// The network `config` defines, its parameters declared in
    /// `state_dict()` order.
    pub fn new(config: AdmConfig) -> Self {
        let cat = RefCell::new(Catalogue::default());
        let vars = Vars::root(&cat);
        let cfg = &config;
        let t = cfg.temb_channels();
        let c = &cfg.channels;
        let res = |vars: &Vars, c_in: usize, c_out: usize, resample: Resample| {
            let spec = ResSpec {
                c_in,
                c_out,
                temb: t,
                groups: GROUPS,
                eps: EPS,
                scale_shift: cfg.use_scale_shift_norm,
                output_scale: 1.0,
                dropout: cfg.dropout,
                resample,
            };
            ResBlock::new(vars, &ADM_RESBLOCK, spec)
        };
        let attention = |vars: &Vars, ch: usize, up: bool| {
            let (heads, _) = cfg
                .heads(ch, up)
                .expect("head split checked by AdmConfig::from_description");
            AttentionBlock::new(vars, ch, heads, cfg.attention_order)
        };

        let time_embed = TimeEmbedding {
            lin1: Linear::new(&vars.pp("time_embed.0"), t, cfg.model_channels),
            lin2: Linear::new(&vars.pp("time_embed.2"), t, t),
            classes: cfg
                .num_classes
                .map(|k| vars.pp("label_emb").param("weight", [k, t])),
        };
        let conv_in = Conv2d::new(&vars.pp("input_blocks.0.0"), c[0], cfg.in_channels, 3, 1, 1);
        // input blocks, numbered k from 1: ResBlock (+ attention) per
        // layer, then the downsampler; every block's output is a skip
        let blocks = vars.pp("input_blocks");
        let (mut k, mut ch, mut skips) = (1, c[0], vec![c[0]]);
        let mut input = Vec::new();
        for (l, &out) in c.iter().enumerate() {
            let mut layers = Vec::new();
            let level = format!("down.{l}");
            for j in 0..cfg.num_res_blocks {
                let block = blocks.pp(k);
                let r = res(&block.pp(0), ch, out, Resample::None);
                ch = out;
                let a = cfg
                    .has_attention(l)
                    .then(|| attention(&block.pp(1), ch, false));
                layers.push(Layer {
                    res: r,
                    attention: a,
                    points: LayerPoints::new(&level, j),
                });
                skips.push(ch);
                k += 1;
            }
            let resample = (l + 1 < cfg.levels()).then(|| {
                let pre = blocks.pp(k).pp(0);
                skips.push(ch);
                k += 1;
                if cfg.resblock_updown {
                    Resampler::Res(res(&pre, ch, ch, Resample::Down))
                } else {
                    Resampler::Conv(Conv2d::new(&pre.pp("op"), ch, ch, 3, 2, 1))
                }
            });
            input.push(Level { layers, resample });
        }
        let mid = vars.pp("middle_block");
        let middle = (
            res(&mid.pp(0), ch, ch, Resample::None),
            attention(&mid.pp(1), ch, false),
            res(&mid.pp(2), ch, ch, Resample::None),
        );
        // output blocks, numbered k from 0, lowest resolution first:
        // concat skip -> ResBlock (+ attention); an upsampler last
        let blocks = vars.pp("output_blocks");
        let mut k = 0;
        let mut output = Vec::new();
        for (l, &out) in c.iter().enumerate().rev() {
            let mut layers = Vec::new();
            let mut resample = None;
            let level = format!("up.{}", output.len());
            for j in 0..=cfg.num_res_blocks {
                let block = blocks.pp(k);
                let skip = skips.pop().unwrap_or(0);
                let r = res(&block.pp(0), ch + skip, out, Resample::None);
                ch = out;
                let a = cfg
                    .has_attention(l)
                    .then(|| attention(&block.pp(1), ch, true));
                if l > 0 && j == cfg.num_res_blocks {
                    let pre = block.pp(if a.is_some() { 2 } else { 1 });
                    resample = Some(if cfg.resblock_updown {
                        Resampler::Res(res(&pre, ch, ch, Resample::Up))
                    } else {
                        Resampler::Up(Upsample::new(&pre, ch))
                    });
                }
                layers.push(Layer {
                    res: r,
                    attention: a,
                    points: LayerPoints::new(&level, j),
                });
                k += 1;
            }
            output.push(Level { layers, resample });
        }
        let out_norm = GroupNorm::new(&vars.pp("out.0"), ch, GROUPS, EPS);
        let out_conv = Conv2d::new(&vars.pp("out.2"), cfg.out_channels, c[0], 3, 1, 1);
        drop((vars, blocks, mid));
        AdmNet {
            catalogue: cat.into_inner(),
            time_embed,
            conv_in,
            input,
            middle,
            middle_points: [LayerPoints::new("mid", 0), LayerPoints::new("mid", 1)],
            output,
            out_norm,
            out_conv,
            config,
        }
    }

    /// The network an `adm` description defines.
    pub fn from_description(d: &crate::model::ModelDescription) -> Result<Self, super::AdmError> {
        AdmConfig::from_description(d).map(AdmNet::new)
    }

    /// Every parameter under its `state_dict()` key with its PyTorch shape.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The forward pass: the model output for `x` at timesteps `t` (float,
    /// one per sample), with class `labels` for a class-conditional model,
    /// calling `hooks` at every injection point in forward order (see the
    /// module doc). Without `labels` no class embedding is
    /// added (guided-diffusion asserts instead).
    ///
    /// With `learn_sigma` the output is ε and the variance interpolation `v`
    /// (Nichol & Dhariwal 2021, eq. 15) concatenated along channels; the
    /// caller splits them (`diffusion::prediction::split_learned_sigma`).
    ///
    /// `dropout`: the training step's stream, with which every ResBlock
    /// applies the config's `dropout` rate; `None` is eval mode.
    ///
    /// # Shapes
    /// - x: `[B, in_channels, S, S]`, t: `[B]`, labels: `[B]`
    /// - output: `[B, out_channels, S, S]`
    pub(crate) fn forward<B: AutodiffBackend, H: Hooks<B, 4>>(
        &self,
        w: &Weights<B>,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        labels: Option<Tensor<B, 1, Int>>,
        hooks: &mut H,
        dropout: Option<&DropoutRng>,
    ) -> Result<Tensor<B, 4>, H::Error> {
        // 1. time (and class) embedding -> `temb`:
        //    emb = time_embed(timestep_embedding(t, num_channels)) (+ label_emb(y))
        let e = timestep_embedding(t, self.config.model_channels, true, 0.0);
        let (temb, temb_act) = temb_point(self.time_embed.forward(w, e, labels), hooks)?; // temb_act: every ResBlock's silu(emb)
        let mut at = |point: &str, h: Tensor<B, 4>| hooks.block(point, h, &temb);
        type At<'h, B, E> = dyn FnMut(&str, Tensor<B, 4>) -> Result<Tensor<B, 4>, E> + 'h;
        // A ResBlock with the hook at its branch (`<point>.branch`), then at
        // its output (`<point>`).
        let res = |at: &mut At<'_, B, H::Error>,
                   r: &ResBlock,
                   p: &LayerPoints,
                   h: Tensor<B, 4>|
         -> Result<Tensor<B, 4>, H::Error> {
            let h = r.forward_with(w, h, &temb_act, dropout, |b| at(&p.branch, b))?;
            at(&p.res, h)
        };
        // An attention block with the hook at its branch.
        let attend = |at: &mut At<'_, B, H::Error>,
                      a: Option<&AttentionBlock>,
                      p: &LayerPoints,
                      h: Tensor<B, 4>|
         -> Result<Tensor<B, 4>, H::Error> {
            match a {
                Some(a) => a.forward_with(w, h, |o| at(&p.attn_branch, o)),
                None => Ok(h),
            }
        };
        let layer = |at: &mut At<'_, B, H::Error>, l: &Layer, h: Tensor<B, 4>| {
            let h = res(at, &l.res, &l.points, h)?;
            attend(at, l.attention.as_ref(), &l.points, h)
        };
        let resample = |r: &Resampler, h: Tensor<B, 4>| match r {
            Resampler::Res(r) => r.forward(w, h, &temb_act, dropout),
            Resampler::Conv(c) => c.forward(w, h),
            Resampler::Up(u) => u.forward(w, h),
        };

        // 2. input blocks: conv; per level ResBlock -> points -> attention,
        //    then a downsampler; every block's output is a skip
        let mut h = self.conv_in.forward(w, x);
        let mut skips = vec![h.clone()];
        for level in &self.input {
            for l in &level.layers {
                h = layer(&mut at, l, h)?;
                skips.push(h.clone());
            }
            if let Some(r) = &level.resample {
                h = resample(r, h);
                skips.push(h.clone());
            }
        }

        // 3. middle block: ResBlock -> points -> attention -> ResBlock -> points
        let (r0, a, r1) = &self.middle;
        let [p0, p1] = &self.middle_points;
        h = res(&mut at, r0, p0, h)?;
        h = attend(&mut at, Some(a), p0, h)?;
        h = res(&mut at, r1, p1, h)?;

        // 4. output blocks, lowest resolution first: concat skip -> ResBlock
        //    -> points -> attention, and an upsampler after a level's last
        for level in &self.output {
            for l in &level.layers {
                let skip = skips
                    .pop()
                    .expect("one skip per output block (guided-diffusion's layout)");
                let hs = crate::kernels::cat_channels(&h, &skip)
                    .unwrap_or_else(|| Tensor::cat(vec![h, skip], 1));
                h = layer(&mut at, l, hs)?;
            }
            if let Some(r) = &level.resample {
                h = resample(r, h);
            }
        }

        // 5. out: norm, SiLU, conv
        let h = self.out_norm.forward_silu(w, h);
        Ok(self.out_conv.forward(w, h))
    }
}
