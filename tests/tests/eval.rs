//! Evaluation end to end: `[eval]` at the end of a run (metrics in
//! `eval.json`, `metrics.jsonl` and `report.md` with its loss curves), the
//! checks that refuse bad settings before anything trains, `dtx eval` on
//! folders of images, and `dtx eval --features` on feature files: FD and
//! KID against numpy/scipy (`tests/fixtures/eval/make_features.py`,
//! relative error ≤ 1e-6) and each bad file's error.

use dtx::data::shapes::ShapesConfig;
use dtx_tests::files::{Entry, f32_bytes, fixture, i64_bytes, write_safetensors};
use dtx_tests::run_in_process;
use dtx_tests::runs::{dtx_run, out_dir};
use std::path::Path;

const ALL_METRICS: &str = r#"eval.metrics=["kid", "fd", "nearest", "source_distance"]"#;

#[test]
fn a_run_evaluates_its_samples_and_reports_them() {
    let out = out_dir("eval", "run");
    let r = dtx_run(
        "shapes-unet.toml",
        &out,
        &[
            ALL_METRICS,
            "sample.count=6",
            "sample.batch=6",
            "sample.sampler=\"ddim\"",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = out.join("shapes-unet");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
    for key in [
        "KID_dtx",
        "KID_dtx_std",
        "KID_dtx_full",
        "FD_dtx",
        "nearest_train_distance",
        "reference_nearest_train_distance",
        "source_distance",
    ] {
        let v = e[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key} = {:?} in {e}", e[key]);
    }
    assert_eq!(e["samples"], 6);
    // 4 held-out images: KID subsets of min(6, 4)
    assert_eq!(e["reference_images"], 4);
    assert_eq!(e["KID_dtx_subset_size"], 4);
    assert!(e["source_distance"].as_f64().unwrap() > 0.0);
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(
        jsonl.lines().any(|l| l.starts_with(r#"{"eval":"#)),
        "{jsonl}"
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for part in [
        "## Evaluation",
        "KID_dtx ×10³",
        "FD_dtx",
        "## Loss curves",
        "`loss`",
        "`val.simple`",
    ] {
        assert!(report.contains(part), "{part} missing from\n{report}");
    }
    let png = image::open(dir.join("loss.png")).unwrap();
    assert!(png.height() >= 2 * 150, "one panel per curve");
    let _ = std::fs::remove_dir_all(&out);
}

/// Each bad `[eval]` setting fails with a message naming it, and before the
/// run folder exists (nothing trains that cannot be evaluated).
#[test]
fn bad_eval_settings_are_refused_before_the_run_starts() {
    let out = out_dir("eval", "bad");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &[r#"eval.metrics=["kld"]"#],
            &["unknown metric `kld`", "did you mean `kid`"],
        ),
        (
            &[r#"eval.metrics=["kid"]"#, r#"eval.extractor="inception""#],
            &["eval.inception_weights"],
        ),
        (
            &[
                r#"eval.metrics=["kid"]"#,
                r#"eval.extractor="inception""#,
                r#"eval.inception_weights="no-such-weights.pth""#,
            ],
            &["no-such-weights.pth"],
        ),
        (
            &[
                r#"eval.metrics=["kid"]"#,
                r#"eval.reference="held_out""#,
                "target.holdout=0",
            ],
            &["target.holdout"],
        ),
        (
            &[
                r#"eval.metrics=["kid"]"#,
                r#"eval.reference="no-such-folder""#,
            ],
            &["eval.reference", "no-such-folder"],
        ),
    ];
    for (sets, wanted) in cases {
        let r = dtx_run("shapes-unet.toml", &out, sets, &[]);
        assert_ne!(r.code, 0, "{sets:?} ran");
        for w in wanted {
            assert!(r.stderr.contains(w), "{sets:?}: `{w}` not in\n{}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(
            !out.join("shapes-unet").exists(),
            "{sets:?} left a run folder behind"
        );
    }
}

fn write_shapes(dir: &Path, preset: &str, seed: u64, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = ShapesConfig::preset(preset);
    cfg.resolution = 16;
    let ds = cfg.dataset(seed, n);
    for i in 0..n {
        let img = dtx::data::rgb_from_chw(ds.sample(i), 3, 16, 16).unwrap();
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    let r = run_in_process(&all);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// `dtx eval` on folders: two draws of the target family are closer in
/// KID_dtx than the target and the source family; `--train` adds the
/// nearest-training-image distances; bad arguments are errors.
#[test]
fn dtx_eval_compares_folders_of_images() {
    let root = out_dir("eval", "folders");
    let (a, b, s) = (root.join("a"), root.join("b"), root.join("s"));
    write_shapes(&a, "target", 1, 24);
    write_shapes(&b, "target", 2, 24);
    write_shapes(&s, "source", 3, 24);
    let p = |d: &Path| d.display().to_string();
    let same = eval_json(&[&p(&a), &p(&b)]);
    let apart = eval_json(&[&p(&a), &p(&s), "--train", &p(&b)]);
    let k = |v: &serde_json::Value| v["KID_dtx"].as_f64().unwrap();
    assert!(k(&same) < 0.25 * k(&apart), "{same} vs {apart}");
    assert!(same.get("nearest_train_distance").is_none());
    assert!(apart["nearest_train_distance"].as_f64().unwrap() > 0.0);

    let r = run_in_process(&["eval", &p(&a), &p(&root.join("missing"))]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
    let r = run_in_process(&["eval", &p(&a), &p(&b), "--metrics", "nearest"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--train"), "{}", r.stderr);
    let r = run_in_process(&["eval", &p(&a), &p(&b), "--metrics", "kdi"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown metric `kdi`"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(&root);
}

/// `tests/fixtures/eval/features/expected.json`: numpy/scipy's numbers
/// (`tests/fixtures/eval/make_features.py`).
fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("eval/features/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn features_json(a: &str, b: &str, extra: &[&str]) -> serde_json::Value {
    let (a, b) = (
        fixture(&format!("eval/features/{a}")),
        fixture(&format!("eval/features/{b}")),
    );
    let mut args = vec!["eval", "--features", &a, &b, "--json"];
    args.extend(extra);
    let out = run_in_process(&args);
    out.ok();
    serde_json::from_str(&out.stdout).unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs();
    assert!(rel <= 1e-6, "{what}: {got} vs {want} (relative {rel})");
}

#[test]
fn eval_features_matches_numpy_and_scipy() {
    let e = expected();
    // F32 against F64 (the key named); one 2-D tensor found by itself.
    let v = features_json("a.safetensors", "b.safetensors:pool", &[]);
    close(
        v["fd"].as_f64().unwrap(),
        e["a_b"]["fd"].as_f64().unwrap(),
        "FD a_b",
    );
    close(
        v["kid"].as_f64().unwrap(),
        e["a_b"]["kid"].as_f64().unwrap(),
        "KID a_b",
    );
    assert_eq!(v["a"]["key"], "features");
    assert_eq!(v["kid_subsets"]["subsets"], 100);
    assert_eq!(v["kid_subsets"]["subset_size"], 50);
    // More features than rows (singular covariances); with equal counts and
    // subsets of every row, each subset is the whole set in another order:
    // the subset mean is the full-set KID and the spread is zero.
    let v = features_json(
        "c.safetensors",
        "d.safetensors",
        &["--kid-subsets", "3", "--kid-subset-size", "24"],
    );
    close(
        v["fd"].as_f64().unwrap(),
        e["c_d"]["fd"].as_f64().unwrap(),
        "FD c_d",
    );
    let kid = e["c_d"]["kid"].as_f64().unwrap();
    close(v["kid"].as_f64().unwrap(), kid, "KID c_d");
    close(
        v["kid_subsets"]["mean"].as_f64().unwrap(),
        kid,
        "KID subsets c_d",
    );
    assert!(v["kid_subsets"]["std"].as_f64().unwrap() < 1e-12);
    // Text output says the same.
    let out = run_in_process(&[
        "eval",
        "--features",
        &fixture("eval/features/c.safetensors"),
        &fixture("eval/features/d.safetensors"),
    ]);
    out.ok();
    assert!(out.stdout.contains("FD   21.59748"), "{}", out.stdout);
    assert!(
        out.stdout.contains("(100 subsets of 24, seed 0)"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_feature_files_are_clear_errors() {
    use safetensors::Dtype::{F32, F64, I64};
    let dir = out_dir("model-cli", "features");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, t: Vec<Entry<'_>>| {
        let p = dir.join(name);
        write_safetensors(&p, &t);
        p.display().to_string()
    };
    let good = write(
        "good.safetensors",
        vec![(
            "f",
            F32,
            vec![3, 2],
            f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 7.0]),
        )],
    );
    let nan = write(
        "nan.safetensors",
        vec![("f", F32, vec![2, 2], f32_bytes(&[1.0, 2.0, f32::NAN, 4.0]))],
    );
    let inf = write(
        "inf.safetensors",
        vec![(
            "f",
            F64,
            vec![2, 2],
            [1.0f64, f64::INFINITY, 0.0, 4.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )],
    );
    let one = write(
        "one.safetensors",
        vec![("f", F32, vec![1, 2], f32_bytes(&[1.0, 2.0]))],
    );
    let wide = write(
        "wide.safetensors",
        vec![("f", F32, vec![2, 3], f32_bytes(&[0.0; 6]))],
    );
    let ints = write(
        "ints.safetensors",
        vec![("f", I64, vec![2, 2], i64_bytes(&[1, 2, 3, 4]))],
    );
    let cases = [
        (&nan, "holds NaN at row 1, column 0"),
        (&inf, "holds inf at row 0, column 1"),
        (
            &one,
            "has 1 row(s); FD and KID need at least 2 feature vectors",
        ),
        (&wide, "has 2 features per row but `"),
        (&ints, "has dtype I64; expected F32 or F64"),
    ];
    for (bad, want) in cases {
        let out = run_in_process(&["eval", "--features", &good, bad]);
        let err = out.failed();
        assert!(err.contains(want), "{bad}:\n{err}\nwanted: {want}");
    }
    let out = run_in_process(&[
        "eval",
        "--features",
        &good,
        &fixture("eval/features/b.safetensors"),
    ]);
    assert!(
        out.failed()
            .contains("holds 2 2-D tensors (`logits`, `pool`): name one as")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
