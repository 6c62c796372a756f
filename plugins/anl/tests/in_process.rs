//! `anl`'s modules in process on `dtx-plugin-testing`'s tiny U-Net: the
//! adapted model starts at the source, the modules fit every residual
//! block, Eq. 8–9 against plain f64 loops, gradients against finite
//! differences, and config errors naming the key.

use dtx_plugin_anl::Anl;
use dtx_plugin_testing::{Array, InjectInputs, TestHost};
use std::collections::HashMap;

/// A residual block's output (ANL's default points), not a branch inside.
fn is_block_output(point: &str) -> bool {
    point.contains(".res.") && !point.ends_with("branch")
}

/// Zero-initialised f (the default): before the first step the adapted
/// U-Net's output is the source's, bit for bit (every module adds 0), for
/// the conditional and the unconditional variant.
#[test]
fn zero_initialised_adapters_leave_the_source_output_unchanged() {
    for (config, cond) in [
        ("mode = \"conditional\"", Some((8usize, 64usize))),
        ("mode = \"unconditional\"", None),
    ] {
        let host = match cond {
            Some((n, d)) => TestHost::tiny_unet().with_condition(n, d),
            None => TestHost::tiny_unet(),
        };
        let mut p = host.plugin::<Anl>(config).unwrap();
        let blocks: Vec<&str> = host
            .model()
            .points
            .iter()
            .map(|p| p.name.as_str())
            .filter(|p| is_block_output(p))
            .collect();
        assert_eq!(p.instance().points(), blocks, "every residual block");
        let x = Array::random(&host.data_shape(2), 7);
        let c = cond.map(|(n, d)| Array::random(&[2, n, d], 8));
        let inputs = InjectInputs {
            cond: c.as_ref(),
            ..Default::default()
        };
        let adapted = p.forward(&x, &[500.0, 500.0], &inputs).unwrap();
        assert_eq!(adapted, host.denoise(&x, &[500.0, 500.0]), "{config}");
    }
}

/// With f's last layer random (`zero_init = false`), each point's module
/// maps `[B, C, H, W]` to `[B, C, H, W]` and changes it, with several
/// condition tokens (real attention), one token (no W_Q, W_K) and
/// self-attention; the parameter count is Eq. 8–9's.
#[test]
fn attention_shapes_fit_every_residual_block() {
    for (mode, cond) in [
        ("conditional", Some((5usize, 12usize))),
        ("conditional", Some((1, 12))),
        ("unconditional", None),
    ] {
        let host = match cond {
            Some((n, d)) => TestHost::tiny_unet().with_condition(n, d),
            None => TestHost::tiny_unet(),
        };
        let config = format!("mode = \"{mode}\"\nzero_init = false\nheads = 2\nhidden_mult = 2");
        let mut p = host.plugin::<Anl>(&config).unwrap();
        let c = cond.map(|(n, d)| Array::random(&[2, n, d], 2));
        let mut per_point = 0;
        for point in host
            .model()
            .points
            .iter()
            .filter(|q| is_block_output(&q.name))
        {
            let shape = host.point_shape(&point.name, 2);
            let h = Array::random(&shape, 1);
            let inputs = InjectInputs {
                cond: c.as_ref(),
                t: &[10.0, 10.0],
                training: true,
                ..Default::default()
            };
            let out = p.inject_with(&point.name, &h, &inputs).unwrap();
            assert_eq!(out.shape, shape, "{mode} {}", point.name);
            assert_ne!(out, h, "{mode} {}", point.name);
            let d = point.channels;
            // W_Q, W_K (none for one token), W_V, then f: d → 2d → d with biases
            let (qk, dc) = match cond {
                Some((1, dc)) => (0, dc),
                Some((_, dc)) => (d * d + dc * d, dc),
                None => (2 * d * d, d),
            };
            per_point += qk + dc * d + (d * 2 * d + 2 * d) + (2 * d * d + d);
        }
        let registered: usize = p
            .parameters()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(registered, per_point, "{mode} {cond:?}");
    }
}

#[test]
fn config_errors_name_the_key() {
    let host = TestHost::tiny_unet();
    let e = host.plugin::<Anl>("mode = \"conditional\"").err().unwrap();
    assert!(e.contains("mode") && e.contains("[condition]"), "{e}");
    let e = host
        .plugin::<Anl>("mode = \"unconditional\"\npoints = [\"down.9.*\"]")
        .err()
        .unwrap();
    assert!(
        e.contains("points") && e.contains("select no residual block"),
        "{e}"
    );
    let e = host
        .plugin::<Anl>("mode = \"unconditional\"\nheads = 3")
        .err()
        .unwrap();
    assert!(e.contains("heads"), "{e}");
    for huge in [
        "hidden_mult = 100000000",
        "d_attn = 4000000000",
        "heads = 1000000",
    ] {
        let config = format!("mode = \"unconditional\"\n{huge}");
        let e = host.plugin::<Anl>(&config).err().unwrap();
        assert!(e.contains("must be at most"), "{huge}: {e}");
    }
    let e = host
        .plugin::<Anl>("mode = \"unconditional\"\npoints = [\"temb\"]")
        .err()
        .unwrap();
    assert!(e.contains("points"), "{e}");
}

/// Gradients of the module's output against central differences: with
/// respect to f's first layer and W_V (parameters), and to the activation
/// `h` itself (what the backward through the rest of the U-Net relies
/// on). f32 forward, step 1e-2: 2 % of the largest gradient entry.
#[test]
fn gradients_match_finite_differences() {
    let host = TestHost::tiny_unet();
    // d_attn = 8 keeps W_V and f's first layer at 512 entries each
    let config = "mode = \"unconditional\"\nzero_init = false\nheads = 2\nd_attn = 8\n\
                  points = [\"mid.res.0\"]";
    let mut p = host.plugin::<Anl>(config).unwrap();
    let h = Array::random(&host.point_shape("mid.res.0", 1), 3);
    for param in ["mid.res.0.f.0.weight", "mid.res.0.v.weight"] {
        let err = p
            .check_inject_gradient("mid.res.0", &h, param, 1e-2)
            .unwrap();
        assert!(err < 2e-2, "{param}: relative error {err}");
    }
    let err = p
        .check_inject_input_gradient("mid.res.0", &h, 1e-2)
        .unwrap();
    assert!(err < 2e-2, "input: relative error {err}");
}

/// The module's values, `h + f(softmax(Q Kᵀ / √d_head) V)` (Eq. 8–9, two
/// heads), at `mid.res.0` with f's last layer random (`zero_init = false`),
/// against the same equations written out in plain f64 loops from the
/// registered parameters (`Linear` weights are `[d_in, d_out]`). ReLU for
/// f's activation, so the reference needs no erf. Tolerance 1e-4 absolute
/// (f32 forward). Three condition tokens; and one, where softmax over a
/// single key is 1, A = W_V c, and the module has no W_Q or W_K to use.
#[test]
fn the_module_computes_eq_8_and_9() {
    eq_8_and_9_with_tokens(3);
    eq_8_and_9_with_tokens(1);
}

fn eq_8_and_9_with_tokens(tokens: usize) {
    let host = TestHost::tiny_unet().with_condition(tokens, 5);
    let mut p = host
        .plugin::<Anl>(
            "mode = \"conditional\"\nzero_init = false\nheads = 2\nd_attn = 8\n\
             activation = \"relu\"\npoints = [\"mid.res.0\"]",
        )
        .unwrap();
    let shape = host.point_shape("mid.res.0", 2);
    let (b, c, hw) = (2usize, shape[1], shape[2] * shape[3]);
    let h = Array::random(&shape, 9);
    let cond = Array::random(&[b, tokens, 5], 10);
    let inputs = InjectInputs {
        cond: Some(&cond),
        t: &[10.0, 10.0],
        ..Default::default()
    };
    let got = p.inject_with("mid.res.0", &h, &inputs).unwrap().values;
    let w: HashMap<String, Vec<f64>> = p
        .parameters()
        .into_iter()
        .map(|(name, _)| {
            let v = p.param(&name).unwrap().values;
            (name, v.into_iter().map(f64::from).collect())
        })
        .collect();
    let lin = |x: &[f64], name: &str, din: usize, dout: usize| -> Vec<f64> {
        let wt = &w[&format!("mid.res.0.{name}.weight")];
        let bias = w.get(&format!("mid.res.0.{name}.bias"));
        (0..dout)
            .map(|o| {
                (0..din).map(|i| x[i] * wt[i * dout + o]).sum::<f64>()
                    + bias.map_or(0.0, |bv| bv[o])
            })
            .collect()
    };
    let (dk, heads, dh) = (8usize, 2usize, 4usize);
    let mut max_err = 0f64;
    for bi in 0..b {
        let token = |m: usize| -> Vec<f64> {
            (0..5)
                .map(|j| f64::from(cond.values[(bi * tokens + m) * 5 + j]))
                .collect()
        };
        let vals: Vec<Vec<f64>> = (0..tokens).map(|m| lin(&token(m), "v", 5, dk)).collect();
        // One token: no W_K (nor W_Q) is registered, and none is needed.
        let keys: Vec<Vec<f64>> = if tokens == 1 {
            assert!(!w.contains_key("mid.res.0.k.weight"));
            assert!(!w.contains_key("mid.res.0.q.weight"));
            Vec::new()
        } else {
            (0..tokens).map(|m| lin(&token(m), "k", 5, dk)).collect()
        };
        for pos in 0..hw {
            let x: Vec<f64> = (0..c)
                .map(|ch| f64::from(h.values[(bi * c + ch) * hw + pos]))
                .collect();
            let mut a = vals[0].clone();
            if tokens > 1 {
                let q = lin(&x, "q", c, dk);
                for hd in 0..heads {
                    let r = hd * dh..(hd + 1) * dh;
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|k| r.clone().map(|i| q[i] * k[i]).sum::<f64>() / (dh as f64).sqrt())
                        .collect();
                    let top = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - top).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in r {
                        a[i] = (0..tokens).map(|m| e[m] / z * vals[m][i]).sum();
                    }
                }
            }
            let hidden: Vec<f64> = lin(&a, "f.0", dk, c)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let f = lin(&hidden, "f.1", c, c);
            for ch in 0..c {
                let want = x[ch] + f[ch];
                let g = f64::from(got[(bi * c + ch) * hw + pos]);
                max_err = max_err.max((g - want).abs());
            }
        }
    }
    assert!(
        max_err < 1e-4,
        "{tokens} token(s): max |ANL − reference| = {max_err}"
    );
}
