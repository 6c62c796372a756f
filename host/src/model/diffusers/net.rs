//! [`UNet2D`]: the network of diffusers' `UNet2DModel` (Ho et al.,
//! *Denoising Diffusion Probabilistic Models*, 2020, arXiv:2006.11239; the
//! diffusers implementation, `src/diffusers/models/unets/unet_2d.py`,
//! v0.42.1), built once from its [`UNet2DConfig`] into blocks whose
//! parameters are declared under their checkpoint keys
//! (`down_blocks.0.resnets.0.conv1.weight`).
//!
//! Supported: `DownBlock2D`, `AttnDownBlock2D`, `UNetMidBlock2D`,
//! `UpBlock2D`, `AttnUpBlock2D`, positional time embedding, class embedding
//! (`num_class_embeds`), `resnet_time_scale_shift` `default` and
//! `scale_shift`, `downsample_padding` 0 and 1.
//!
//! # Injection points and skip connections
//!
//! The forward calls the hook `(point, h, temb) -> h'` at `temb` (after the
//! class embedding is added) and at the output of every resnet:
//! `down.{i}.res.{j}`, `mid.res.{j}`, `up.{i}.res.{j}` (docs/models.md). In
//! attention blocks the point is the resnet's output, *before* the attention
//! that follows it. Inside the blocks it calls the hook at each resnet's
//! residual branch (`conv2`'s output, before the shortcut is added),
//! `<resnet>.branch`, and at each attention's output before its residual
//! sum, `down.{i}.attn.{j}.branch`, `mid.attn.0.branch`,
//! `up.{i}.attn.{j}.branch`; there the hook's result takes the branch's
//! place in the sum. A layer's points come in forward order:
//! `….res.{j}.branch`, `….res.{j}`, `….attn.{j}.branch`. **The hook's
//! result replaces the activation everywhere downstream, skip connections
//! included**: a down level's skip stores the
//! value after the hook (and after the attention, as diffusers stores the
//! attention's output), so a module injected at `down.{i}.res.{j}` also
//! changes what the decoder receives through the skip. Every resnet gets the
//! hooked `temb`.

use super::config::{BlockKind, TimeShift, UNet2DConfig};
use crate::model::nn::hooks::{Hooks, LayerPoints};
use crate::model::nn::layers::{
    Attention, Conv2d, DIFFUSERS_RESNET, Downsample, DropoutRng, GroupNorm, Linear, ResBlock,
    ResSpec, Resample, TimeEmbedding, Upsample, temb_point, timestep_embedding,
};
use crate::model::nn::{Catalogue, Vars, Weights};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use std::cell::RefCell;

/// One resnet of a down or up block, with the attention that follows it in
/// an `Attn` block.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    resnet: ResBlock,
    attention: Option<Attention>,
    points: LayerPoints,
}

/// A down level: its layers, then a downsampler (all levels but the last).
#[derive(Debug, Clone, PartialEq)]
struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Downsample>,
}

/// An up level: its layers, then an upsampler (all levels but the last).
#[derive(Debug, Clone, PartialEq)]
struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Upsample>,
}

/// `UNetMidBlock2D`: resnet, attention (`add_attention`), resnet.
#[derive(Debug, Clone, PartialEq)]
struct MidBlock {
    resnet0: ResBlock,
    attention: Option<Attention>,
    resnet1: ResBlock,
    /// `mid.res.0` (with `mid.attn.0.branch`) and `mid.res.1`.
    points: [LayerPoints; 2],
}

/// A diffusers `UNet2DModel`: its config and its blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2D {
    /// The architecture.
    pub config: UNet2DConfig,
    catalogue: Catalogue,
    conv_in: Conv2d,
    time_embedding: TimeEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2D {
    /// The network `config` defines, its parameters declared in the order
    /// of diffusers' `state_dict()` save for `conv_in`, which comes first.
    pub fn new(config: UNet2DConfig) -> Self {
        let cat = RefCell::new(Catalogue::default());
        let vars = Vars::root(&cat);
        let cfg = &config;
        let c = &cfg.block_out_channels;
        let t = cfg.temb_channels;
        let levels = cfg.levels();
        let res = |vars: &Vars, c_in: usize, c_out: usize, output_scale: f64| {
            let spec = ResSpec {
                c_in,
                c_out,
                temb: t,
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                scale_shift: cfg.time_shift == TimeShift::ScaleShift,
                output_scale,
                dropout: cfg.dropout,
                resample: Resample::None,
            };
            ResBlock::new(vars, &DIFFUSERS_RESNET, spec)
        };
        let attention = |vars: &Vars, ch: usize, norm_groups: Option<usize>, rescale: f64| {
            let norm = norm_groups.map(|g| (g, cfg.norm_eps));
            Attention::new(vars, ch, cfg.heads(ch), norm, rescale)
        };
        let layer = |vars: &Vars, level: &str, kind: BlockKind, j: usize, c_in, c_out| Layer {
            resnet: res(&vars.pp("resnets").pp(j), c_in, c_out, 1.0),
            attention: (kind == BlockKind::Attn).then(|| {
                let vars = vars.pp("attentions").pp(j);
                attention(&vars, c_out, Some(cfg.norm_num_groups), 1.0)
            }),
            points: LayerPoints::new(level, j),
        };

        let conv_in = Conv2d::new(&vars.pp("conv_in"), c[0], cfg.in_channels, 3, 1, 1);
        let te = vars.pp("time_embedding");
        let time_embedding = TimeEmbedding {
            lin1: Linear::new(&te.pp("linear_1"), t, c[0]),
            lin2: Linear::new(&te.pp("linear_2"), t, t),
            classes: cfg
                .num_class_embeds
                .map(|k| vars.pp("class_embedding").param("weight", [k, t])),
        };
        let down_blocks = c
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let vars = vars.pp("down_blocks").pp(i);
                let level = format!("down.{i}");
                DownBlock {
                    layers: (0..cfg.layers_per_block)
                        .map(|j| {
                            let c_in = if j > 0 { o } else { c[i.saturating_sub(1)] };
                            layer(&vars, &level, cfg.down[i], j, c_in, o)
                        })
                        .collect(),
                    downsampler: (i + 1 < levels).then(|| {
                        Downsample::new(&vars.pp("downsamplers.0"), o, cfg.downsample_padding)
                    }),
                }
            })
            .collect();
        let mid_block = cfg.mid_block.then(|| {
            let (m, scale) = (c[levels - 1], cfg.mid_block_scale_factor);
            let vars = vars.pp("mid_block");
            MidBlock {
                resnet0: res(&vars.pp("resnets.0"), m, m, scale),
                attention: cfg
                    .add_attention
                    .then(|| attention(&vars.pp("attentions.0"), m, cfg.mid_attn_groups(), scale)),
                resnet1: res(&vars.pp("resnets.1"), m, m, scale),
                points: [LayerPoints::new("mid", 0), LayerPoints::new("mid", 1)],
            }
        });
        let up_blocks = (0..levels)
            .map(|i| {
                let o = c[levels - 1 - i];
                let vars = vars.pp("up_blocks").pp(i);
                let level = format!("up.{i}");
                UpBlock {
                    layers: (0..=cfg.layers_per_block)
                        .map(|j| layer(&vars, &level, cfg.up[i], j, cfg.up_resnet_in(i, j), o))
                        .collect(),
                    upsampler: (i + 1 < levels).then(|| Upsample::new(&vars.pp("upsamplers.0"), o)),
                }
            })
            .collect();
        let conv_norm_out = GroupNorm::new(
            &vars.pp("conv_norm_out"),
            c[0],
            cfg.norm_num_groups,
            cfg.norm_eps,
        );
        let conv_out = Conv2d::new(&vars.pp("conv_out"), cfg.out_channels, c[0], 3, 1, 1);
        drop(vars);
        UNet2D {
            catalogue: cat.into_inner(),
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            config,
        }
    }

    /// The network a `diffusers` description defines.
    pub fn from_description(d: &crate::model::ModelDescription) -> Result<Self, super::UNetError> {
        UNet2DConfig::from_description(d).map(UNet2D::new)
    }

    /// Every parameter under its checkpoint key with its PyTorch shape.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The forward pass: the model output (ε, or whatever the checkpoint
    /// predicts) for `x` at timesteps `t` (float, one per sample), with class
    /// `labels` for a class-conditional model, calling
    /// `hooks` at every injection point in forward order (see the module
    /// doc). Without `labels` no class embedding is added
    /// (diffusers raises instead). `dropout`: the training step's stream,
    /// with which every resnet applies the config's `dropout` rate; `None`
    /// is eval mode.
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
        let cfg = &self.config;
        // 0. center the input
        let mut h = x;
        if cfg.center_input_sample {
            h = h.mul_scalar(2.0).sub_scalar(1.0);
        }

        // 1. time (and class) embedding -> `temb`; every resnet's silu(temb)
        let e = timestep_embedding(
            t,
            cfg.block_out_channels[0],
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
        );
        let (temb, temb_act) = temb_point(self.time_embedding.forward(w, e, labels), hooks)?;
        let mut at = |point: &str, h: Tensor<B, 4>| hooks.block(point, h, &temb);
        // A resnet with the hook at its branch (`<point>.branch`), then
        // at its output (`<point>`).
        type At<'h, B, E> = dyn FnMut(&str, Tensor<B, 4>) -> Result<Tensor<B, 4>, E> + 'h;
        let resnet = |at: &mut At<'_, B, H::Error>,
                      r: &ResBlock,
                      p: &LayerPoints,
                      h: Tensor<B, 4>|
         -> Result<Tensor<B, 4>, H::Error> {
            let h = r.forward_with(w, h, &temb_act, dropout, |b| at(&p.branch, b))?;
            at(&p.res, h)
        };
        // An attention with the hook at its branch (`….attn.{j}.branch`).
        let attend = |at: &mut At<'_, B, H::Error>,
                      a: &Option<Attention>,
                      p: &LayerPoints,
                      h: Tensor<B, 4>|
         -> Result<Tensor<B, 4>, H::Error> {
            match a {
                Some(a) => a.forward_with(w, h, |o| at(&p.attn_branch, o)),
                None => Ok(h),
            }
        };
        // One layer of a down or up block: resnet -> points -> attention.
        let layer = |at: &mut At<'_, B, H::Error>, l: &Layer, h: Tensor<B, 4>| {
            let h = resnet(at, &l.resnet, &l.points, h)?;
            attend(at, &l.attention, &l.points, h)
        };

        // 2. pre-process
        h = self.conv_in.forward(w, h);
        let mut skips = vec![h.clone()];

        // 3. down: resnet -> points -> attention, skip after each; downsampler
        for block in &self.down_blocks {
            for l in &block.layers {
                h = layer(&mut at, l, h)?;
                skips.push(h.clone());
            }
            if let Some(d) = &block.downsampler {
                h = d.forward(w, h);
                skips.push(h.clone());
            }
        }

        // 4. mid: resnet -> points -> attention -> resnet -> points
        if let Some(mid) = &self.mid_block {
            let [p0, p1] = &mid.points;
            h = resnet(&mut at, &mid.resnet0, p0, h)?;
            h = attend(&mut at, &mid.attention, p0, h)?;
            h = resnet(&mut at, &mid.resnet1, p1, h)?;
        }

        // 5. up: concat skip -> resnet -> points -> attention; upsampler
        for block in &self.up_blocks {
            for l in &block.layers {
                let skip = skips
                    .pop()
                    .expect("one skip per up resnet (diffusers' layout)");
                h = crate::kernels::cat_channels(&h, &skip)
                    .unwrap_or_else(|| Tensor::cat(vec![h, skip], 1));
                h = layer(&mut at, l, h)?;
            }
            if let Some(u) = &block.upsampler {
                h = u.forward(w, h);
            }
        }

        // 6. post-process
        let h = self.conv_norm_out.forward_silu(w, h);
        Ok(self.conv_out.forward(w, h))
    }
}
