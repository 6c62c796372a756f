//! Tests of the shared layers (`layers.rs`): dropout, the downsampler's
//! padding, the timestep embedding, and the residual branches of
//! [`ResBlock`] and [`Attention`] that the `….branch` injection points hook.

use super::layers::*;
use super::{Catalogue, Vars, Weights};
use crate::tensor_abi::CpuBackend as B;
use burn::tensor::{Distribution, Tensor, TensorData};
use std::cell::RefCell;

/// A downsampler over one channel at `d`, its kernel `kernel`, bias 0.
fn downsampler(kernel: Tensor<B, 4>, padding: usize) -> (Downsample, Weights<B>) {
    let c = RefCell::new(Catalogue::default());
    let d = Downsample::new(&Vars::root(&c).pp("d"), 1, padding);
    let c = c.into_inner();
    let w = Weights::gather(&c, |k| {
        Some(match k {
            "d.conv.weight" => kernel.clone().into_primitive().tensor(),
            _ => Tensor::<B, 1>::zeros([1], &Default::default())
                .into_primitive()
                .tensor(),
        })
    })
    .unwrap();
    (d, w)
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
    let (d, w) = downsampler(Tensor::ones([1, 1, 3, 3], &dev), 0);
    let out = d.forward(&w, x.clone());
    assert_eq!(out.dims(), [1, 1, 2, 2]);
    assert_eq!(
        out.into_data().to_vec::<f32>().unwrap(),
        [54., 45., 72., 54.]
    );
    // Padding 1 is symmetric: out[0,0] = x[0..2, 0..2] = 1+2+5+6 = 14.
    let (d, w) = downsampler(Tensor::ones([1, 1, 3, 3], &dev), 1);
    let out = d.forward(&w, x);
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

/// `cat`'s parameters drawn from N(0, 0.5²) (seeded by the backend's
/// default device), so every branch is far from zero.
fn random_weights(cat: &Catalogue) -> Weights<B> {
    let dev = Default::default();
    Weights::gather(cat, |k| {
        let shape = cat.shape_of(k)?.to_vec();
        let n: usize = shape.iter().product();
        let flat = Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 0.5), &dev);
        let data = TensorData::new(values(&flat), shape);
        Some(<B as burn::tensor::ops::FloatTensorOps<B>>::float_from_data(data, &dev))
    })
    .unwrap()
}

fn values<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().to_vec::<f32>().unwrap()
}

/// A residual block `c_in → c_out` (`output_scale` 2) with random weights.
fn res_block(c_in: usize, c_out: usize) -> (ResBlock, Weights<B>) {
    let cat = RefCell::new(Catalogue::default());
    let spec = ResSpec {
        c_in,
        c_out,
        temb: 6,
        groups: 2,
        eps: 1e-5,
        scale_shift: false,
        output_scale: 2.0,
        dropout: 0.0,
        resample: Resample::None,
    };
    let r = ResBlock::new(&Vars::root(&cat).pp("r"), &DIFFUSERS_RESNET, spec);
    let w = random_weights(&cat.into_inner());
    (r, w)
}

/// The branch callback sees `conv2`'s output, what it returns takes the
/// branch's place in `(shortcut(x) + branch) / output_scale`, and an
/// identity callback is the plain forward, bit for bit.
#[test]
fn res_block_branch_replaces_the_residual_before_the_skip_sum() {
    let dev = Default::default();
    let x = Tensor::<B, 4>::random([2, 4, 3, 3], Distribution::Normal(0.0, 1.0), &dev);
    let temb = Tensor::<B, 2>::random([2, 6], Distribution::Normal(0.0, 1.0), &dev);
    let (r, w) = res_block(4, 4);
    let plain = r.forward(&w, x.clone(), &temb, None);
    let mut seen = None;
    let same = r
        .forward_with(&w, x.clone(), &temb, None, |b| {
            seen = Some(b.clone());
            Ok::<_, ()>(b)
        })
        .unwrap();
    assert_eq!(values(&plain), values(&same));
    let branch = seen.unwrap();
    assert_eq!(branch.dims(), [2, 4, 3, 3]);
    assert_eq!(
        values(&plain),
        values(&(x.clone() + branch).div_scalar(2.0))
    );
    // A zero branch leaves the shortcut (here the identity) alone.
    let zero = r
        .forward_with(&w, x.clone(), &temb, None, |b| Ok::<_, ()>(b * 0.0))
        .unwrap();
    assert_eq!(values(&zero), values(&x.clone().div_scalar(2.0)));
    // The callback's error ends the forward.
    let err = r.forward_with(&w, x, &temb, None, |_| Err("no"));
    assert_eq!(err.unwrap_err(), "no");
}

/// With a channel change the shortcut is the 1×1 convolution: a zero
/// branch gives `conv_shortcut(x) / output_scale`.
#[test]
fn res_block_with_a_shortcut_conv_keeps_it_outside_the_branch() {
    let dev = Default::default();
    let x = Tensor::<B, 4>::random([1, 2, 2, 2], Distribution::Normal(0.0, 1.0), &dev);
    let temb = Tensor::<B, 2>::random([1, 6], Distribution::Normal(0.0, 1.0), &dev);
    let (r, w) = res_block(2, 4);
    let mut branch = None;
    let plain = r
        .forward_with(&w, x.clone(), &temb, None, |b| {
            branch = Some(b.clone());
            Ok::<_, ()>(b)
        })
        .unwrap();
    let zero = r
        .forward_with(&w, x, &temb, None, |b| Ok::<_, ()>(b * 0.0))
        .unwrap();
    let branch = branch.unwrap();
    assert_eq!(branch.dims(), [1, 4, 2, 2]);
    // plain = (s + b) / 2 and zero = s / 2: plain − zero = b / 2.
    let diff = values(&(plain - zero));
    let half = values(&branch.div_scalar(2.0));
    for (a, b) in diff.iter().zip(&half) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// The attention's branch is `to_out.0`'s output as `[B, C, H, W]`, and
/// the output `(branch + x) / rescale`, bit for bit.
#[test]
fn attention_branch_replaces_its_output_before_the_residual_sum() {
    let dev = Default::default();
    let cat = RefCell::new(Catalogue::default());
    let a = Attention::new(&Vars::root(&cat).pp("a"), 4, (2, 2), Some((2, 1e-5)), 2.0);
    let w = random_weights(&cat.into_inner());
    let x = Tensor::<B, 4>::random([2, 4, 3, 3], Distribution::Normal(0.0, 1.0), &dev);
    let mut seen = None;
    let plain = a
        .forward_with(&w, x.clone(), |o| {
            seen = Some(o.clone());
            Ok::<_, ()>(o)
        })
        .unwrap();
    let o = seen.unwrap();
    assert_eq!(o.dims(), [2, 4, 3, 3]);
    assert_eq!(values(&plain), values(&(o + x.clone()).div_scalar(2.0)));
    let zero = a
        .forward_with(&w, x.clone(), |o| Ok::<_, ()>(o * 0.0))
        .unwrap();
    assert_eq!(values(&zero), values(&x.div_scalar(2.0)));
}
