//! The `lora` plugin in process (dtx-plugin-testing, no nested build), on
//! the tiny U-Net's own weights: `W' = W + (α/r)·B·A` against loops in f64
//! (tolerance 1e-5) for an attention projection (linear) and a 3×3
//! convolution, `W' = W` bit for bit before training (B = 0), and the
//! gradients reaching A and B against central finite differences.

use dtx_plugin_lora::Lora;
use dtx_plugin_testing::{Array, TestHost};

const LINEAR: &str = "mid_block.attentions.0.to_q.weight";
const CONV: &str = "down_blocks.0.resnets.0.conv1.weight";

/// `W + scale · B·A` by loops: `B [out, r]`, `A [r, fan_in]`, `W` flat.
fn reference(w: &Array, b: &Array, a: &Array, r: usize, scale: f64) -> Vec<f32> {
    let out = w.shape[0];
    let fan_in = w.values.len() / out;
    let mut o = Vec::with_capacity(w.values.len());
    for i in 0..out {
        for j in 0..fan_in {
            let d: f64 = (0..r)
                .map(|k| b.values[i * r + k] as f64 * a.values[k * fan_in + j] as f64)
                .sum();
            o.push((w.values[i * fan_in + j] as f64 + scale * d) as f32);
        }
    }
    o
}

#[test]
fn the_update_is_w_plus_scaled_b_a_and_starts_at_w() {
    let host = TestHost::tiny_unet();
    let config = format!("rank = 2\nalpha = 3.0\ntargets = [\"{LINEAR}\", \"{CONV}\"]");
    let mut p = host.plugin::<Lora>(&config).unwrap();
    let mut targets = p.weight_targets();
    targets.sort();
    assert_eq!(targets, [CONV, LINEAR]);
    for (key, seed) in [(LINEAR, 1), (CONV, 2)] {
        let w = host.base_weight(key);
        // B = 0: the source's weight exactly
        assert_eq!(p.weights(key, &w).unwrap(), w);
        let module = key.strip_suffix(".weight").unwrap();
        let (a_name, b_name) = (
            format!("{module}.lora_A.weight"),
            format!("{module}.lora_B.weight"),
        );
        let b = Array::random(&p.param(&b_name).unwrap().shape, seed);
        p.set_param(&b_name, &b).unwrap();
        let a = p.param(&a_name).unwrap();
        let got = p.weights(key, &w).unwrap();
        let want = reference(&w, &b, &a, 2, 3.0 / 2.0);
        let err = got
            .values
            .iter()
            .zip(&want)
            .map(|(g, r)| (g - r).abs())
            .fold(0.0, f32::max);
        assert!(err <= 1e-5, "{key}: {err}");
    }
}

#[test]
fn gradients_reach_both_factors_as_finite_differences_say() {
    let host = TestHost::tiny_unet();
    let config = format!("rank = 2\ntargets = [\"{LINEAR}\"]");
    let mut p = host.plugin::<Lora>(&config).unwrap();
    let module = LINEAR.strip_suffix(".weight").unwrap();
    // a non-zero B, so A's gradient is not zero either
    let b_name = format!("{module}.lora_B.weight");
    let b = Array::random(&p.param(&b_name).unwrap().shape, 3);
    p.set_param(&b_name, &b).unwrap();
    let w = host.base_weight(LINEAR);
    for factor in ["lora_A", "lora_B"] {
        let name = format!("{module}.{factor}.weight");
        let err = p.check_weights_gradient(LINEAR, &w, &name, 1e-2).unwrap();
        // W' is linear in each factor: central differences are exact but
        // for f32 rounding
        assert!(err < 1e-2, "{factor}: relative error {err}");
    }
}

#[test]
fn the_factors_have_peft_shapes_and_start_as_the_paper_says() {
    let host = TestHost::tiny_unet();
    let config = format!("rank = 2\ntargets = [\"{LINEAR}\", \"{CONV}\"]");
    let p = host.plugin::<Lora>(&config).unwrap();
    let (lin, conv) = (host.base_weight(LINEAR), host.base_weight(CONV));
    let (o, i) = (lin.shape[0], lin.shape[1]);
    let (co, ci, k) = (conv.shape[0], conv.shape[1], conv.shape[2]);
    let mut shapes = p.parameters();
    shapes.sort();
    let mut want = vec![
        (
            "mid_block.attentions.0.to_q.lora_A.weight".to_owned(),
            vec![2, i],
        ),
        (
            "mid_block.attentions.0.to_q.lora_B.weight".to_owned(),
            vec![o, 2],
        ),
        (
            "down_blocks.0.resnets.0.conv1.lora_A.weight".to_owned(),
            vec![2, ci, k, k],
        ),
        (
            "down_blocks.0.resnets.0.conv1.lora_B.weight".to_owned(),
            vec![co, 2, 1, 1],
        ),
    ];
    want.sort();
    assert_eq!(shapes, want);
    // A Kaiming-uniform (a = √5): on ±1/√fan_in and not all zero; B zero
    for (module, fan_in) in [
        ("mid_block.attentions.0.to_q", i),
        ("down_blocks.0.resnets.0.conv1", ci * k * k),
    ] {
        let a = p.param(&format!("{module}.lora_A.weight")).unwrap().values;
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|&x| x != 0.0));
        let b = p.param(&format!("{module}.lora_B.weight")).unwrap().values;
        assert!(b.iter().all(|&x| x == 0.0));
    }
}

#[test]
fn bad_configs_name_the_key() {
    let host = TestHost::tiny_unet();
    for (config, key, says) in [
        ("rank = 0", "rank", "at least 1"),
        ("alpha = -1.0", "alpha", "must be > 0"),
        ("roles = [\"norm\"]", "roles[0]", "not a role LoRA adapts"),
        (
            "targets = [\"nothing.*\"]",
            "targets",
            "select no base weight",
        ),
        ("lr_ratio = 0.0", "lr_ratio", "must be > 0"),
    ] {
        let e = host.plugin::<Lora>(config).err().expect(config);
        assert!(e.contains(key) && e.contains(says), "{config}: {e}");
    }
}
