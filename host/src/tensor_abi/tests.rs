//! Tests of the tensor ABI through the plugin-facing safe layer, in-process:
//! every op against hand-computed values, and gradients through plugin ops
//! against the same computation written directly in burn and against central
//! finite differences.

use super::{CpuBackend, Session, SessionGuard, Stored, vtables};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor as BTensor, TensorPrimitive};
use dtx_plugin_api::abi::{CompareOp, Conv2dOptions, InterpolateMode, TensorId};
use dtx_plugin_api::{DType, Host, Tensor};

type B = CpuBackend;

/// A session on the CPU backend with plugin `t` running (also for
/// `train::optim`'s tests).
pub(crate) fn session(seed: u64) -> SessionGuard {
    dtx_plugin_api::__private::install_host(vtables::<B>());
    let guard = Session::<B>::install(Default::default(), seed);
    Session::<B>::with(|s| s.current_plugin = Some("t".into())).unwrap();
    guard
}

/// Asserts `a ≈ b` entry by entry, relative tolerance `tol`.
pub(crate) fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "index {i}: {x} vs {y} (tol {tol})"
        );
    }
}

/// Expected values in these tests are worked by hand (or by numpy, noted).
#[test]
fn elementwise_and_reductions_match_hand_values() {
    let _s = session(0);
    let m = Tensor::from_f32(&[1.0, -2.0, 3.0, 4.0], &[2, 2]);
    close(&(&m + &m).to_f32_vec(), &[2.0, -4.0, 6.0, 8.0], 0.0);
    close(&(&m * 2.0).to_f32_vec(), &[2.0, -4.0, 6.0, 8.0], 0.0);
    close(&m.abs().to_f32_vec(), &[1.0, 2.0, 3.0, 4.0], 0.0);
    close(&m.relu().to_f32_vec(), &[1.0, 0.0, 3.0, 4.0], 0.0);
    close(&m.rsub(1.0).to_f32_vec(), &[0.0, 3.0, -2.0, -3.0], 0.0);
    close(
        &m.rdiv(1.0).to_f32_vec(),
        &[1.0, -0.5, 1.0 / 3.0, 0.25],
        1e-7,
    );
    close(&m.clamp(0.0, 3.0).to_f32_vec(), &[1.0, 0.0, 3.0, 3.0], 0.0);
    // softplus(x) = ln(1 + e^x): numpy.logaddexp(0, [1, -2, 3, 4]).
    close(
        &m.softplus().to_f32_vec(),
        &[1.3132616, 0.12692805, 3.0485873, 4.01815],
        1e-6,
    );
    close(
        &Tensor::from_f32(&[100.0], &[1]).softplus().to_f32_vec(),
        &[100.0],
        1e-6,
    );
    close(&m.sum().to_f32_vec(), &[6.0], 0.0);
    close(&m.mean_dims(&[0], false).to_f32_vec(), &[2.0, 1.0], 0.0);
    close(&m.max_dims(&[1], true).to_f32_vec(), &[1.0, 4.0], 0.0);
    assert_eq!(m.max_dims(&[1], true).shape(), vec![2, 1]);
    assert_eq!(m.argmax(1).to_i64_vec(), vec![0, 1]);
    // Broadcasting: [2, 2] + [2] adds the row vector to each row.
    let row = Tensor::from_f32(&[10.0, 20.0], &[2]);
    close(&(&m + &row).to_f32_vec(), &[11.0, 18.0, 13.0, 24.0], 0.0);
    close(
        &m.maximum(&Tensor::zeros(&[1])).to_f32_vec(),
        &[1.0, 0.0, 3.0, 4.0],
        0.0,
    );
    let mask = m.compare_scalar(CompareOp::GT, 2.0);
    assert_eq!(mask.dtype(), DType::Bool);
    close(
        &mask.where_(&m, &Tensor::zeros(&[1])).to_f32_vec(),
        &[0.0, 0.0, 3.0, 4.0],
        0.0,
    );
    // softmax([1, -2]) = [e / (e + e^-2), …]
    let sm = m.softmax(-1).to_f32_vec();
    close(&sm[..2], &[0.95257413, 0.04742587], 1e-6);
    close(
        &m.log_softmax(-1).exp().to_f32_vec(),
        &m.softmax(-1).to_f32_vec(),
        1e-6,
    );
}

#[test]
fn shape_ops_match_hand_values() {
    let _s = session(0);
    let m = Tensor::from_f32(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3]);
    close(
        &m.transpose(0, 1).flatten(0).to_f32_vec(),
        &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
        0.0,
    );
    // sizes are usize, axes count from the end when negative
    let t = Tensor::from_f32(&(0..24).map(|v| v as f32).collect::<Vec<_>>(), &[2, 3, 4]);
    assert_eq!(t.flatten(1).shape(), vec![2, 12]);
    assert_eq!(t.flatten(-1).shape(), vec![2, 3, 4]);
    assert_eq!(t.reshape(&[6, 4]).shape(), vec![6, 4]);
    close(
        &t.permute(&[-1, 0, 1]).to_f32_vec(),
        &t.permute(&[2, 0, 1]).to_f32_vec(),
        0.0,
    );
    assert_eq!(t.permute(&[-1, 0, 1]).shape(), vec![4, 2, 3]);
    assert_eq!(Tensor::cat(&[&t, &t], -1).shape(), vec![2, 3, 8]);
    assert_eq!(Tensor::stack(&[&t, &t], -1).shape(), vec![2, 3, 4, 2]);
    let idx = Tensor::from_i64(&[3, 0], &[2]);
    close(
        &t.index_select(-1, &idx).to_f32_vec(),
        &t.index_select(2, &idx).to_f32_vec(),
        0.0,
    );
    close(&m.narrow(1, 1, 2).to_f32_vec(), &[1.0, 2.0, 4.0, 5.0], 0.0);
    assert_eq!(Tensor::cat(&[&m, &m], 1).shape(), vec![2, 6]);
    assert_eq!(Tensor::stack(&[&m, &m], 0).shape(), vec![2, 2, 3]);
    assert_eq!(
        Tensor::from_f32(&[1.0, 2.0, 3.0], &[3])
            .expand(&[2, 3])
            .shape(),
        vec![2, 3]
    );
    let idx = Tensor::from_i64(&[2, 0], &[2]);
    close(
        &m.index_select(1, &idx).to_f32_vec(),
        &[2.0, 0.0, 5.0, 3.0],
        0.0,
    );
    let gidx = Tensor::from_i64(&[1, 0], &[2, 1]);
    close(&m.gather(1, &gidx).to_f32_vec(), &[1.0, 3.0], 0.0);
    close(
        &m.matmul(&m.transpose(0, 1)).to_f32_vec(),
        &[5.0, 14.0, 14.0, 50.0],
        0.0,
    );
}

#[test]
fn module_ops_match_hand_values() {
    let _s = session(0);
    // 3x3 all-ones kernel with padding 1 on a 2x2 image of ones: each output
    // pixel sees 4 ones.
    let img = Tensor::ones(&[1, 1, 2, 2]);
    let k = Tensor::ones(&[1, 1, 3, 3]);
    let y = img.conv2d(
        &k,
        Some(&Tensor::from_f32(&[0.5], &[1])),
        Conv2dOptions {
            padding: [1, 1],
            ..Default::default()
        },
    );
    close(&y.to_f32_vec(), &[4.5; 4], 0.0);
    // Transposed 2x2 stride-2 conv of a single 1 spreads the kernel.
    let one = Tensor::ones(&[1, 1, 1, 1]);
    let kt = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
    let yt = one.conv_transpose2d(
        &kt,
        None,
        Conv2dOptions {
            stride: [2, 2],
            ..Default::default()
        },
    );
    close(&yt.to_f32_vec(), &[1.0, 2.0, 3.0, 4.0], 0.0);
    let up = kt
        .interpolate([4, 4], InterpolateMode::NEAREST)
        .to_f32_vec();
    close(&up[..4], &[1.0, 1.0, 2.0, 2.0], 0.0);
    // group norm of [0, 1, 2, 3] in one group: (x - 1.5) / sqrt(1.25 + eps).
    let g = Tensor::from_f32(&[0.0, 1.0, 2.0, 3.0], &[1, 2, 2, 1]).group_norm(1, None, None, 0.0);
    let s = 1.25f32.sqrt();
    close(
        &g.to_f32_vec(),
        &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s],
        1e-6,
    );
    let ln = Tensor::from_f32(&[0.0, 1.0, 2.0, 3.0], &[1, 4]).layer_norm(
        None,
        Some(&Tensor::ones(&[4])),
        0.0,
    );
    close(
        &ln.to_f32_vec(),
        &[1.0 - 1.5 / s, 1.0 - 0.5 / s, 1.0 + 0.5 / s, 1.0 + 1.5 / s],
        1e-6,
    );
}

#[test]
fn random_draws_follow_the_session_seed() {
    let a = {
        let _s = session(7);
        Tensor::randn(&[64]).to_f32_vec()
    };
    let b = {
        let _s = session(7);
        Tensor::randn(&[64]).to_f32_vec()
    };
    let c = {
        let _s = session(8);
        Tensor::randn(&[64]).to_f32_vec()
    };
    assert_eq!(a, b);
    assert_ne!(a, c);
    let _s = session(1);
    let u = Tensor::rand(&[1000], 2.0, 3.0).to_f32_vec();
    assert!(u.iter().all(|&v| (2.0..3.0).contains(&v)));
}

#[test]
fn bad_shapes_are_errors_not_crashes() {
    let _s = session(0);
    let a = Tensor::ones(&[2, 3]);
    let b = Tensor::ones(&[4, 5]);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.matmul(&b))).unwrap_err();
    let err = err
        .downcast_ref::<dtx_plugin_api::AbiError>()
        .expect("an AbiError payload");
    assert!(
        err.message.contains("matmul of [2, 3] and [4, 5]"),
        "{}",
        err.message
    );
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| &a + &b)).unwrap_err();
    let err = err.downcast_ref::<dtx_plugin_api::AbiError>().unwrap();
    assert!(err.message.contains("do not broadcast"), "{}", err.message);
}

/// Sizes and exponents from a plugin config that burn itself would panic
/// or abort on come back as errors (or values), never as a crash.
#[test]
fn huge_shapes_and_exponents_are_errors_or_values_not_aborts() {
    let _s = session(0);
    for shape in [&[usize::MAX, 2][..], &[1 << 40, 1 << 10]] {
        let err = std::panic::catch_unwind(|| Tensor::zeros(shape)).unwrap_err();
        let err = err.downcast_ref::<dtx_plugin_api::AbiError>().unwrap();
        assert!(
            err.message.contains("more elements than a tensor can hold")
                || err.message.contains("more than this machine's"),
            "{}",
            err.message
        );
    }
    // γ = 9.2e18 (an integral f32 past i32): 0.5^γ underflows to 0, 1^γ = 1.
    let x = Tensor::from_f32(&[0.5, 1.0], &[2]);
    close(&x.powf(9.2e18).to_f32_vec(), &[0.0, 1.0], 0.0);
}

#[test]
fn handles_are_released() {
    let _s = session(0);
    let before = Session::<B>::with(|s| s.live_handles()).unwrap();
    {
        let a = Tensor::ones(&[3]);
        let _b = (&a + 1.0).exp().sum();
    }
    assert_eq!(Session::<B>::with(|s| s.live_handles()).unwrap(), before);
}

// --- gradients -----------------------------------------------------------------

/// The block the ABI benchmark times, written on plugin ops: cross-attention of
/// `x` `[B, N, C]` over `ctx` `[B, M, C]`, then an MLP, both residual.
fn block_via_plugin_ops(x: &Tensor, ctx: &Tensor, w: &[Tensor]) -> Tensor {
    let (wq, wk, wv, wo, w1, w2) = (&w[0], &w[1], &w[2], &w[3], &w[4], &w[5]);
    let d = wq.dim(1) as f32;
    let q = x.matmul(wq);
    let k = ctx.matmul(wk);
    let v = ctx.matmul(wv);
    let a = (q.matmul(&k.transpose(-2, -1)) * (1.0 / d.sqrt()))
        .softmax(-1)
        .matmul(&v);
    let h = x + a.matmul(wo);
    &h + h.matmul(w1).silu().matmul(w2)
}

fn block_in_burn(x: BTensor<B, 3>, ctx: BTensor<B, 3>, w: &[BTensor<B, 2>]) -> BTensor<B, 3> {
    let d = w[0].dims()[1] as f32;
    let q = x.clone().matmul(w[0].clone().unsqueeze());
    let k = ctx.clone().matmul(w[1].clone().unsqueeze());
    let v = ctx.matmul(w[2].clone().unsqueeze());
    let a = burn::tensor::activation::softmax(q.matmul(k.swap_dims(1, 2)) / d.sqrt(), 2).matmul(v);
    let h = x + a.matmul(w[3].clone().unsqueeze());
    h.clone()
        + burn::tensor::activation::silu(h.matmul(w[4].clone().unsqueeze()))
            .matmul(w[5].clone().unsqueeze())
}

/// The float tensor behind handle `id`.
pub(crate) fn float_of(id: TensorId) -> burn::tensor::ops::FloatTensor<B> {
    Session::<B>::with(|s| s.float(id)).unwrap().unwrap()
}

fn grads_via_plugin_ops(seed: u64) -> (f32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let _s = session(seed);
    let x = Tensor::randn(&[2, 5, 8]).require_grad();
    let ctx = Tensor::randn(&[2, 3, 8]);
    let w: Vec<Tensor> = [[8, 8], [8, 8], [8, 8], [8, 8], [8, 16], [16, 8]]
        .iter()
        .map(|s| (Tensor::randn(s) * 0.3).require_grad())
        .collect();
    let loss = block_via_plugin_ops(&x, &ctx, &w).square().mean();
    let value = loss.item();
    // The host's own backward on the plugin's graph.
    let grads = <B as AutodiffBackend>::backward(float_of(loss.id()));
    let grad_of = |t: &Tensor| {
        let g = <B as AutodiffBackend>::grad(&float_of(t.id()), &grads).expect("a gradient");
        BTensor::<<B as AutodiffBackend>::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(
            g,
        ))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
    };
    let gw: Vec<Vec<f32>> = w.iter().map(grad_of).collect();
    let inputs = vec![x.to_f32_vec(), ctx.to_f32_vec()]
        .into_iter()
        .chain(w.iter().map(Tensor::to_f32_vec))
        .collect();
    (value, gw, inputs)
}

#[test]
fn gradients_through_plugin_ops_equal_burn_and_finite_differences() {
    let (value, gw, inputs) = grads_via_plugin_ops(3);
    // Same computation directly in burn, from the same numbers.
    let dev = Default::default();
    let x = BTensor::<B, 1>::from_floats(inputs[0].as_slice(), &dev).reshape([2, 5, 8]);
    let ctx = BTensor::<B, 1>::from_floats(inputs[1].as_slice(), &dev).reshape([2, 3, 8]);
    let shapes = [[8, 8], [8, 8], [8, 8], [8, 8], [8, 16], [16, 8]];
    let w: Vec<BTensor<B, 2>> = inputs[2..]
        .iter()
        .zip(shapes)
        .map(|(v, s)| {
            BTensor::<B, 1>::from_floats(v.as_slice(), &dev)
                .reshape(s)
                .require_grad()
        })
        .collect();
    let loss = block_in_burn(x.clone(), ctx.clone(), &w)
        .powf_scalar(2.0)
        .mean();
    let direct_value = loss.clone().into_scalar();
    let grads = loss.backward();
    // Relative error ≤ 1e-5 against burn (same ops, same order: rounding only).
    assert!(
        (value - direct_value).abs() <= 1e-5 * direct_value.abs(),
        "{value} vs {direct_value}"
    );
    for (i, wi) in w.iter().enumerate() {
        let direct = wi
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let norm: f32 = direct.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff: f32 = direct
            .iter()
            .zip(&gw[i])
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm.max(1e-12),
            "weight {i}: relative error {}",
            diff / norm
        );
    }
    // Central finite differences of the plugin-op forward, on a few entries of
    // W_q and W_2 (step 1e-2 in f64-accumulated f32 arithmetic: ≤ 1e-3 relative).
    let f = |wi: usize, k: usize, delta: f32| -> f64 {
        let _s = session(0);
        let t = |v: &Vec<f32>, s: &[usize]| Tensor::from_f32(v, s);
        let x = t(&inputs[0], &[2, 5, 8]);
        let ctx = t(&inputs[1], &[2, 3, 8]);
        let w: Vec<Tensor> = inputs[2..]
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(j, (v, s))| {
                let mut v = v.clone();
                if j == wi {
                    v[k] += delta;
                }
                t(&v, &s)
            })
            .collect();
        block_via_plugin_ops(&x, &ctx, &w).square().mean().item() as f64
    };
    for (wi, k) in [(0, 3), (0, 17), (5, 40), (4, 100)] {
        let h = 1e-2;
        let fd = (f(wi, k, h) - f(wi, k, -h)) / (2.0 * h as f64);
        let g = gw[wi][k] as f64;
        assert!(
            (fd - g).abs() <= 1e-3 * g.abs().max(1e-2),
            "W{wi}[{k}]: fd {fd} vs autodiff {g}"
        );
    }
}

#[test]
fn stored_dtypes_are_reported() {
    let _s = session(0);
    let t = Tensor::from_i64(&[1, 2], &[2]);
    assert_eq!(t.dtype(), DType::I64);
    let id = t.id();
    assert!(matches!(
        Session::<B>::with(|s| s.get(id)).unwrap().unwrap(),
        Stored::Int(_)
    ));
}

// --- host services -------------------------------------------------------------

/// A stand-in denoiser: ε = 0.5 · x (student) or 0.25 · x (source); features
/// are `x` at every point.
struct Halver;

impl super::DenoiseService<B> for Halver {
    fn denoise(
        &self,
        x_t: super::Ranked<B>,
        _t: BTensor<B, 1>,
        which: dtx_plugin_api::Which,
        _labels: Option<BTensor<B, 1, burn::tensor::Int>>,
    ) -> Result<super::Ranked<B>, dtx_plugin_api::AbiError> {
        let k = if which == dtx_plugin_api::Which::Student {
            0.5
        } else {
            0.25
        };
        let x = x_t.at::<2>("x_t")?;
        Ok(super::Ranked::Two(x * k))
    }

    fn features(
        &self,
        x: super::Ranked<B>,
        _t: BTensor<B, 1>,
        points: &[String],
        _which: dtx_plugin_api::Which,
        labels: Option<BTensor<B, 1, burn::tensor::Int>>,
    ) -> Result<Vec<super::Ranked<B>>, dtx_plugin_api::AbiError> {
        // with labels: x times the first label, so a test sees them arrive
        let x = match labels {
            Some(l) => {
                let k = l.into_data().iter::<i64>().next().unwrap_or(1) as f32;
                super::Ranked::Two(x.at::<2>("x")? * k)
            }
            None => x,
        };
        Ok(points.iter().map(|_| x.clone()).collect())
    }
}

/// A stand-in dataset: batches of ones with label 3.
struct Ones;

impl super::DataService<B> for Ones {
    fn batch(
        &mut self,
        split: &str,
        n: usize,
    ) -> Result<(super::Ranked<B>, Option<super::Labels<B>>), dtx_plugin_api::AbiError> {
        if split != "target" {
            return Err(dtx_plugin_api::AbiError::other(format!(
                "no split `{split}`"
            )));
        }
        let dev = Default::default();
        let x = BTensor::<B, 2>::ones([n, 2], &dev);
        let y = BTensor::<B, 1, burn::tensor::Int>::full([n], 3, &dev);
        Ok((super::Ranked::Two(x), Some(super::Labels::Classes(y))))
    }
}

#[test]
fn services_reach_the_run_and_say_what_is_missing() {
    let _s = session(0);
    let host = Host::get();
    let x = Tensor::from_f32(&[2.0, -4.0], &[1, 2]);
    let t = Tensor::from_i64(&[10], &[1]);
    // Without a denoiser, data or schedule: clear errors naming the manifest section.
    let err = host
        .denoise(&x, &t, dtx_plugin_api::Which::Source, None)
        .unwrap_err();
    assert!(err.message.contains("[source]"), "{}", err.message);
    assert!(
        host.dataset_batch("target", 2)
            .unwrap_err()
            .message
            .contains("[target]")
    );
    assert!(
        host.alpha_bar(&t)
            .unwrap_err()
            .message
            .contains("noise schedule")
    );

    Session::<B>::with(|s| {
        s.services.denoiser = Some(std::rc::Rc::new(Halver));
        s.services.data = Some(std::rc::Rc::new(std::cell::RefCell::new(Ones)));
        s.services.alpha_bar = Some(vec![0.9, 0.8, 0.7]);
    })
    .unwrap();
    let eps = host
        .denoise(&x, &t, dtx_plugin_api::Which::Source, None)
        .unwrap();
    close(&eps.to_f32_vec(), &[0.5, -1.0], 0.0);
    let eps = host
        .denoise(&x, &t, dtx_plugin_api::Which::Student, None)
        .unwrap();
    close(&eps.to_f32_vec(), &[1.0, -2.0], 0.0);
    // Gradients flow through the service: d(sum(0.5 x))/dx = 0.5.
    let leaf = x.require_grad();
    let g = host
        .denoise(&leaf, &t, dtx_plugin_api::Which::Student, None)
        .unwrap()
        .sum()
        .grad(&[&leaf]);
    close(&g[0].to_f32_vec(), &[0.5, 0.5], 0.0);
    let feats = host
        .features(
            &x,
            &t,
            &["mid.res.0", "up.0.res.0"],
            dtx_plugin_api::Which::Source,
        )
        .unwrap();
    assert_eq!(feats.len(), 2);
    // features with labels reach the denoiser (the mock scales by the first)
    let feats = host
        .features_labelled(
            &x,
            &t,
            &["mid.res.0"],
            dtx_plugin_api::Which::Source,
            Some(&Tensor::from_i64(&[3], &[1])),
        )
        .unwrap();
    close(&feats[0].to_f32_vec(), &[6.0, -12.0], 0.0);
    let (batch, labels) = host.dataset_batch("target", 3).unwrap();
    assert_eq!(batch.shape(), vec![3, 2]);
    assert_eq!(labels.unwrap().to_i64_vec(), vec![3, 3, 3]);
    assert!(
        host.dataset_batch("source", 3)
            .unwrap_err()
            .message
            .contains("no split `source`")
    );
    let a = host.alpha_bar(&Tensor::from_i64(&[0, 2], &[2])).unwrap();
    close(&a.to_f32_vec(), &[0.9, 0.7], 0.0);
    let err = host.alpha_bar(&Tensor::from_i64(&[3], &[1])).unwrap_err();
    assert!(err.message.contains("outside 0..3"), "{}", err.message);
    // A service checks what a plugin hands it before the run sees it.
    let err = host
        .denoise(
            &Tensor::ones(&[2, 2, 2]),
            &t,
            dtx_plugin_api::Which::Source,
            None,
        )
        .unwrap_err();
    assert!(
        err.message.contains("denoise: x_t has rank 3") && err.message.contains("rank 2 or 4"),
        "{}",
        err.message
    );
    let err = host
        .denoise(
            &x,
            &Tensor::from_i64(&[1, 2], &[1, 2]),
            dtx_plugin_api::Which::Source,
            None,
        )
        .unwrap_err();
    assert!(
        err.message.contains("denoise: t has rank 2"),
        "{}",
        err.message
    );
}

#[test]
fn sinusoidal_embedding_matches_its_formula() {
    let _s = session(0);
    // dim 4: frequencies 10000^(-i/2) for i = 0, 1 are 1 and 0.01.
    let e =
        dtx_plugin_api::nn::sinusoidal_embedding(&Tensor::from_i64(&[0, 1], &[2]), 4).to_f32_vec();
    let expected = [
        1.0,
        1.0,
        0.0,
        0.0,
        1f32.cos(),
        0.01f32.cos(),
        1f32.sin(),
        0.01f32.sin(),
    ];
    close(&e, &expected, 1e-6);
}

#[test]
fn a_nested_session_gives_the_outer_one_back() {
    let _outer = session(0);
    let t = Tensor::ones(&[2]);
    {
        let _inner = Session::<B>::install(Default::default(), 1);
        assert_eq!(Session::<B>::with(|s| s.live_handles()).unwrap(), 0);
    }
    // The outer session, with its handle, is back.
    assert_eq!(t.to_f32_vec(), vec![1.0, 1.0]);
}

mod nn;
