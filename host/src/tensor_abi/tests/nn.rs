//! The safe layer's `nn` blocks through the host: parameter naming, and the
//! MLP's input gradient as ordinary ops.

use super::{B, BTensor, close, session};
use crate::tensor_abi::Session;
use dtx_plugin_api::nn::{
    Activation, GroupNormConfig, Initializer, MlpConfig, MultiHeadAttentionConfig,
};
use dtx_plugin_api::{Host, Tensor};

#[test]
fn nn_blocks_register_named_parameters_and_run() {
    let _s = session(0);
    let host = Host::get();
    let attn = MultiHeadAttentionConfig::cross_attention(8, 4, 8, 2)
        .init(&host.scope().pp("attn"))
        .unwrap();
    let mlp = MlpConfig::new(&[8, 16, 8])
        .with_activation(Activation::Gelu)
        .with_last_initializer(Initializer::Zeros)
        .init(&host.scope().pp("mlp"))
        .unwrap();
    let bare = MultiHeadAttentionConfig::self_attention(8, 2)
        .with_bias(false)
        .init(&host.scope().pp("blocks").pp(3).pp("attn"))
        .unwrap();
    assert!(bare.q.bias.is_none() && bare.out.bias.is_none());
    let norm = GroupNormConfig::new(2, 8)
        .with_bias(false)
        .with_initializer(Initializer::Constant(2.0))
        .init(&host.scope().pp("norm"))
        .unwrap();
    assert!(norm.beta.is_none());
    assert_eq!(norm.gamma.value().to_f32_vec(), vec![2.0; 8]);
    let x = Tensor::randn(&[2, 5, 8]);
    let c = Tensor::randn(&[2, 3, 4]);
    let y = attn.forward(&x, Some(&c));
    assert_eq!(y.shape(), vec![2, 5, 8]);
    // A zero-initialised last layer makes the MLP output exactly 0.
    assert!(mlp.forward(&y).to_f32_vec().iter().all(|&v| v == 0.0));
    let names: Vec<String> = Session::<B>::with(|s| {
        s.params
            .ids()
            .iter()
            .map(|&id| s.params.get(id).unwrap().name.clone())
            .collect()
    })
    .unwrap();
    assert!(
        names.contains(&"plugin.t.attn.q.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"plugin.t.mlp.1.bias".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"plugin.t.blocks.3.attn.out.weight".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"plugin.t.blocks.3.attn.q.bias".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"plugin.t.norm.gamma".to_string()),
        "{names:?}"
    );
    // the multi-head core is the block's forward less its projections
    let (x, c) = (Tensor::randn(&[2, 5, 8]), Tensor::randn(&[2, 3, 4]));
    let core = dtx_plugin_api::nn::attention(
        &attn.q.forward(&x),
        &attn.k.forward(&c),
        &attn.v.forward(&c),
        2,
    );
    close(
        &attn.out.forward(&core).to_f32_vec(),
        &attn.forward(&x, Some(&c)).to_f32_vec(),
        0.0,
    );
}

/// `Mlp::forward_with_input_grad` for every activation: its input gradient
/// equals the ABI's autodiff gradient (1e-5) and a central finite
/// difference (1e-3 relative, f32 with h = 1e-2); and a loss *of* that
/// gradient differentiates with respect to the weights (finite difference
/// on one weight), which is what TGDP's consistency term needs.
#[test]
fn mlp_input_gradient_is_in_the_forward_graph() {
    use dtx_plugin_api::Param;
    for act in [
        Activation::Silu,
        Activation::Gelu,
        Activation::Relu,
        Activation::Tanh,
    ] {
        let _s = session(3);
        let host = Host::get();
        let mlp = MlpConfig::new(&[3, 16, 16, 1])
            .with_activation(act)
            .init(&host.scope().pp("m"))
            .unwrap();
        let x = Tensor::randn(&[5, 3]).require_grad();
        let (y, g) = mlp.forward_with_input_grad(&x, &Tensor::ones(&[5, 1]));
        close(&y.to_f32_vec(), &mlp.forward(&x).to_f32_vec(), 1e-6);
        let auto = y.sum().grad(&[&x]).remove(0);
        close(&g.to_f32_vec(), &auto.to_f32_vec(), 1e-5);
        // finite differences on the input
        let xs = x.to_f32_vec();
        let gs = g.to_f32_vec();
        let f = |k: usize, h: f32| {
            let mut v = xs.clone();
            v[k] += h;
            mlp.forward(&Tensor::from_f32(&v, &[5, 3])).sum().item() as f64
        };
        for k in [0, 4, 8, 14] {
            let fd = (f(k, 1e-2) - f(k, -1e-2)) / 2e-2;
            let tol = if act == Activation::Relu { 5e-2 } else { 1e-3 };
            assert!(
                (fd - gs[k] as f64).abs() <= tol * (gs[k] as f64).abs().max(1e-1),
                "{act:?} x[{k}]: fd {fd} vs {}",
                gs[k]
            );
        }
        // a loss of the input gradient, differentiated w.r.t. a weight
        let w: &Param = &mlp.layers[0].weight;
        let loss_of = |mlp: &dtx_plugin_api::nn::Mlp| {
            let (_, g) = mlp.forward_with_input_grad(&x.detach(), &Tensor::ones(&[5, 1]));
            g.square().sum()
        };
        let dw = loss_of(&mlp).grad(&[&w.value()]).remove(0).to_f32_vec();
        let w0 = w.value().to_f32_vec();
        let set = |v: &[f32]| {
            Session::<B>::with(|s| {
                let t = BTensor::<B, 2>::from_data(
                    burn::tensor::TensorData::new(v.to_vec(), [3, 16]),
                    &Default::default(),
                )
                .require_grad();
                s.params.get_mut(w.id()).unwrap().value = t.into_primitive().tensor();
            })
            .unwrap();
        };
        let at = |k: usize, h: f32| {
            let mut v = w0.clone();
            v[k] += h;
            set(&v);
            let l = loss_of(&mlp).item() as f64;
            set(&w0);
            l
        };
        if act != Activation::Relu {
            for k in [1, 20] {
                let fd = (at(k, 1e-2) - at(k, -1e-2)) / 2e-2;
                assert!(
                    (fd - dw[k] as f64).abs() <= 2e-2 * (dw[k] as f64).abs().max(1e-1),
                    "{act:?} ∂loss/∂W[{k}]: fd {fd} vs {}",
                    dw[k]
                );
            }
        }
    }
}

/// `Conv2d::input_grad` equals the ABI's autodiff gradient of `⟨g, conv(x)⟩`
/// (1e-5) for strides 1 and 2 (an odd input side, where the stride drops a
/// row and the output padding must restore it), with padding and groups; and
/// a loss of it differentiates with respect to the weight (checked against
/// the autodiff gradient of the closed form ⟨g, conv(x)⟩ being linear in W:
/// ∂/∂W ‖input_grad(g)‖² by central difference, 2e-2 relative).
#[test]
fn conv_input_gradient_is_a_transposed_convolution() {
    use dtx_plugin_api::abi::Conv2dOptions;
    use dtx_plugin_api::nn::Conv2dConfig;
    for (stride, groups, side) in [(1, 1, 6), (2, 1, 7), (2, 2, 8), (2, 1, 6)] {
        let _s = session(5);
        let host = Host::get();
        let mut cfg = Conv2dConfig::new(4, 6, 3);
        cfg.options = Conv2dOptions {
            stride: [stride, stride],
            padding: [1, 1],
            groups,
            ..Default::default()
        };
        let conv = cfg.init(&host.scope().pp("c")).unwrap();
        let x = Tensor::randn(&[2, 4, side, side]).require_grad();
        let y = conv.forward(&x);
        let g = Tensor::randn(&y.shape());
        let auto = (&y * &g).sum().grad(&[&x]).remove(0);
        let vjp = conv.input_grad(&g, [side, side]);
        assert_eq!(vjp.shape(), x.shape(), "stride {stride} side {side}");
        close(&vjp.to_f32_vec(), &auto.to_f32_vec(), 1e-5);
        // a loss of the input gradient trains the weight
        let w = conv.weight.clone();
        let loss_of = || conv.input_grad(&g, [side, side]).square().sum();
        let dw = loss_of().grad(&[&w.value()]).remove(0).to_f32_vec();
        let w0 = w.value().to_f32_vec();
        let shape = w.shape().to_vec();
        let set = |v: &[f32]| {
            Session::<B>::with(|s| {
                let t = BTensor::<B, 4>::from_data(
                    burn::tensor::TensorData::new(v.to_vec(), [shape[0], shape[1], 3, 3]),
                    &Default::default(),
                )
                .require_grad();
                s.params.get_mut(w.id()).unwrap().value = t.into_primitive().tensor();
            })
            .unwrap();
        };
        for k in [0, 17] {
            let at = |h: f32| {
                let mut v = w0.clone();
                v[k] += h;
                set(&v);
                let l = loss_of().item() as f64;
                set(&w0);
                l
            };
            let fd = (at(1e-2) - at(-1e-2)) / 2e-2;
            assert!(
                (fd - dw[k] as f64).abs() <= 2e-2 * (dw[k] as f64).abs().max(1e-1),
                "stride {stride}: ∂loss/∂W[{k}]: fd {fd} vs {}",
                dw[k]
            );
        }
    }
}
