//! The `tgdp` plugin (plugins/tgdp, docs/plugins/tgdp.md) through the real
//! loader: the sign test with two Gaussians whose diffused density ratio is
//! closed-form, and `dtx run` / `dtx sample` end to end on the MLP denoiser
//! and on a tiny U-Net.

use dtx::tensor_abi::Session;
use dtx_tests::mock::Normal;
use dtx_tests::runs::{self, tensors};
use dtx_tests::two_gaussians::{
    B, ExactSource, GUIDED_TOL, MU_P, MU_Q, alpha_bars, ddim, exact_grad, learned_grads, mean,
    mean_error, score_fn, session, tgdp,
};
use std::rc::Rc;

/// The sign test. With p and q Gaussian, the ideal guidance is closed-form
/// (∇ log q_t/p_t = √ᾱ (μ_q − μ_p)/v_t, both diffused to t), so:
///
/// 1. after `prepare`, the learned ∇ log h_ψ (read back through the score
///    hook: −(ε_guided − ε)/√(1 − ᾱ)) matches it on target-like points at
///    six timesteps: mean error within 30 % of its norm + 0.05 (a small
///    MLP trained for a few hundred steps; the norm falls to 0.045 at t = 95);
/// 2. DDIM from p's exact score with the plugin's guidance lands on q: the
///    sample mean is within GUIDED_TOL · |μ_q − μ_p| of μ_q (|μ_q − μ_p| =
///    0.72), while without guidance it stays within 0.1 of μ_p and with
///    the closed-form guidance within 0.1 of μ_q (sampler and formula are
///    right);
/// 3. the opposite sign (the authors' public code) moves the samples away
///    from q, past p: the test fails if the hook's sign flips.
#[test]
fn guided_sampling_from_p_lands_on_q() {
    let source = Rc::new(ExactSource {
        alpha_bars: alpha_bars(),
    });
    let _s = session(source.clone());
    // the plugin's defaults except sizes, step counts and a faster lr
    let cfg = r#"{"hidden": 64, "depth": 2, "time_dim": 16, "classifier_steps": 400,
        "time_classifier_steps": 400, "guidance_steps": 800, "lr": 0.003,
        "batch": 256, "source": "data"}"#;
    let mut inst = tgdp(cfg);
    inst.prepare("sample", "").expect("prepare");
    let logs = Session::<B>::with(|s| s.services.take_logs()).unwrap();
    let last = |k: &str| logs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v);
    println!(
        "classifier acc {:?}, time classifier acc {:?}, l_guidance {:?}, l_cycle {:?}, l_consistence {:?}",
        last("tgdp.classifier_accuracy"),
        last("tgdp.time_classifier_accuracy"),
        last("tgdp.l_guidance"),
        last("tgdp.l_cycle"),
        last("tgdp.l_consistence")
    );

    // the guided ε through the real score hook
    let mut score = score_fn(&mut inst);

    // 1. the learned gradient against the closed form
    let mut rng = Normal(777);
    for t in [2, 10, 20, 50, 80, 95] {
        let (learned, want) = learned_grads(&source, &mut score, t, &mut rng);
        let norm = (want[0].powi(2) + want[1].powi(2)).sqrt();
        let err = mean_error(&learned, want);
        let flat: Vec<f32> = learned.iter().flatten().map(|&v| v as f32).collect();
        let got = mean(&flat);
        println!("t = {t}: mean learned ∇log h {got:?}, exact {want:?}, mean error {err:.3}");
        assert!(
            err < 0.3 * norm + 0.05,
            "t = {t}: learned ∇log h is {err:.3} from the exact {want:?} (norm {norm:.3}); mean learned {got:?}"
        );
    }

    // 2. guided sampling lands on q; unguided stays on p
    let n = 1000;
    let plain = mean(&ddim(&source, n, |eps, _, _| eps.to_vec()));
    let guided = mean(&ddim(&source, n, &mut score));
    let dist = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    // the closed-form guidance, entered as the hook enters it
    let ab = source.alpha_bars.clone();
    let exact = mean(&ddim(&source, n, |eps, _, t| {
        let g = exact_grad(ab[t]);
        let s1a = (1.0 - ab[t]).sqrt();
        eps.iter()
            .enumerate()
            .map(|(k, e)| (*e as f64 - s1a * g[k % 2]) as f32)
            .collect()
    }));
    println!(
        "unguided mean {plain:?}, exact guidance {exact:?}, plugin guidance {guided:?}, μ_q {MU_Q:?}"
    );
    assert!(dist(plain, MU_P) < 0.1, "unguided mean {plain:?}");
    assert!(dist(exact, MU_Q) < 0.1, "exactly guided mean {exact:?}");
    let gap = dist(MU_P, MU_Q);
    assert!(
        dist(guided, MU_Q) < GUIDED_TOL * gap,
        "guided mean {guided:?} vs μ_q {MU_Q:?}"
    );

    // 3. the opposite sign: ε + w √(1 − ᾱ) ∇log h = 2ε − ε_guided
    let flipped = mean(&ddim(&source, n, |eps, x, t| {
        score(eps, x, t)
            .iter()
            .zip(eps)
            .map(|(g, e)| 2.0 * e - g)
            .collect()
    }));
    println!("opposite sign mean {flipped:?}");
    assert!(
        dist(flipped, MU_Q) > dist(MU_P, MU_Q) + 0.5,
        "the opposite sign should move away from q: {flipped:?}"
    );
}

/// `dtx run` end to end on the toy MLP (source samples from
/// `[source.data]`) and on a tiny U-Net (source samples from the source
/// model: conv networks), then `dtx sample` reusing the saved networks.
#[test]
fn tgdp_runs_from_a_manifest_and_dtx_sample_reuses_its_networks() {
    for (manifest, from_model) in [("tgdp-mlp", 0.0), ("tgdp-unet", 1.0)] {
        let out = runs::out_dir("tgdp", manifest);
        let o = runs::dtx_run(&format!("{manifest}.toml"), &out, &[], &[]);
        assert_eq!(o.code, 0, "{manifest}: {}", o.stderr);
        let run = out.join(manifest);
        // the three networks are in the run's checkpoint
        let (_, t) = tensors(&run.join("checkpoints/latest.safetensors"));
        for net in ["classifier", "time_classifier", "guidance"] {
            assert!(
                t.keys()
                    .any(|k| k.starts_with(&format!("param/plugin.tgdp.{net}."))),
                "{manifest}: no {net} weights in {:?}",
                t.keys().collect::<Vec<_>>()
            );
        }
        // the choice of source samples is logged
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let line = metrics
            .lines()
            .find(|l| l.contains("tgdp.source_from_model"))
            .expect("source choice logged");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["value"].as_f64(), Some(from_model), "{manifest}: {line}");
        // dtx sample loads them and samples again
        let o = dtx_tests::run_in_process(&["sample", run.to_str().unwrap(), "--count", "2"]);
        assert_eq!(o.code, 0, "{manifest} sample: {}", o.stderr);
        assert!(o.stdout.contains("samples:"), "{}", o.stdout);
    }
}

/// A `[source.data]` the host cannot build stops the run before anything
/// is written, with an error naming the section and the nearest built-in.
#[test]
fn a_bad_source_data_set_is_named_in_the_error() {
    let out = runs::out_dir("tgdp", "bad-source-data");
    let o = runs::dtx_run(
        "tgdp-mlp.toml",
        &out,
        &["source.data.dataset=\"builtin:gmn\""],
        &[],
    );
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("[source.data]"), "{}", o.stderr);
    assert!(o.stderr.contains("gmm"), "{}", o.stderr);
    assert!(!out.join("tgdp-mlp").exists(), "nothing written");
}

/// The conditional variant end to end: a class-conditional MLP (8 classes,
/// the mixture's components), labels on both domains, `label_map` sending
/// every target class to source class 0…7 reversed, and `sample.label`
/// (prepare fails if either domain's batches lack labels). A missing
/// `num_classes` is a config error naming the key.
#[test]
fn the_conditional_variant_runs_with_labels_and_a_label_map() {
    let sets = [
        "source.config.num_classes=8",
        "target.labels=true",
        "source.data.labels=true",
        "plugin.0.config.conditional=true",
        "plugin.0.config.num_classes=8",
        "plugin.0.config.label_map=[7, 6, 5, 4, 3, 2, 1, 0]",
        "sample.label=2",
    ];
    let out = runs::out_dir("tgdp", "conditional");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let samples = out.join("tgdp-mlp/samples.json");
    assert!(samples.is_file(), "no samples");

    let out = runs::out_dir("tgdp", "conditional-bad");
    let o = runs::dtx_run("tgdp-mlp.toml", &out, &sets[..4], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("num_classes"), "{}", o.stderr);
}
