//! Every value a plugin hands back is checked before the host uses it: a
//! malformed return is an error naming the plugin, the hook, the point or
//! term and both shapes, with exit status 1 — never a crash (exit 101).
//! The test plugin's `malform` key makes it return each one.

use dtx_tests::runs::{dtx_run, out_dir};

/// `two-plugins.toml` (an MLP, the example adapter, then the test plugin as
/// `probe` at `mid.res.0`) with the probe returning `malform`: its exit
/// status and stderr.
fn run_malformed(malform: &str) -> (i32, String) {
    let out = out_dir("malformed", malform);
    let set = format!("plugin[1].config.malform=\"{malform}\"");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=2",
            "train.batch=8",
            "sample.count=4",
            "sample.steps=2",
            &set,
        ],
        &[],
    );
    let _ = std::fs::remove_dir_all(&out);
    (r.code, r.stderr)
}

fn assert_refused(malform: &str, wanted: &[&str]) {
    let (code, stderr) = run_malformed(malform);
    assert_eq!(code, 1, "{malform}: exit {code}\n{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "{malform}: no `{w}` in\n{stderr}");
    }
}

#[test]
fn an_inject_of_another_shape_or_dtype_names_plugin_hook_point_and_shapes() {
    let hook = "plugin `probe` failed in hook `inject`";
    assert_refused(
        "inject_channels",
        &[
            hook,
            "the activation returned at point `mid.res.0` has shape [8, 32]; expected [8, 64]",
        ],
    );
    assert_refused(
        "inject_batch",
        &[
            hook,
            "the activation returned at point `mid.res.0` has shape [1, 64]; expected [8, 64]",
        ],
    );
    assert_refused(
        "inject_dtype",
        &[hook, "expected a float tensor back, got a i64 tensor"],
    );
}

#[test]
fn a_loss_term_that_is_not_a_scalar_is_named() {
    assert_refused(
        "loss_vector",
        &[
            "plugin `probe` failed in hook `loss`",
            "loss term `per_example` has shape [8]; a loss term must be a scalar",
        ],
    );
}

#[test]
fn a_score_or_filter_short_of_the_batch_is_refused() {
    assert_refused(
        "score_short",
        &[
            "plugin `probe` failed in hook `score`",
            "the returned ε has shape [3, 2]; expected [4, 2]",
        ],
    );
    assert_refused(
        "filter_short",
        &[
            "plugin `probe` failed in hook `filter`",
            "filter returned 4 scores and 3 decisions for 4 samples",
        ],
    );
}

#[test]
fn a_weight_of_another_shape_names_the_parameter() {
    let out = out_dir("malformed", "weights");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=2",
            "train.batch=8",
            "plugin[1].config.malform=\"weights_shape\"",
            "plugin[1].config.weights=[\"mid.res.0.fc1.weight\"]",
        ],
        &[],
    );
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for w in [
        "plugin `probe` failed in hook `weights`",
        "the weight returned for `mid.res.0.fc1.weight` has shape [63, 128]; expected [64, 128]",
    ] {
        assert!(r.stderr.contains(w), "no `{w}` in\n{}", r.stderr);
    }
}

#[test]
fn a_well_formed_probe_runs() {
    let (code, stderr) = run_malformed("");
    assert_eq!(code, 0, "{stderr}");
}
