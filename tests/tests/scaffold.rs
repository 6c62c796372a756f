//! `dtx plugins new` (issue 22 item 1): from an empty folder outside this
//! repository, the generated crate passes `cargo test`, builds, loads, and
//! `dtx run run.toml` trains and samples with it, with no edit; in the
//! order README.md and docs/plugin-authoring.md give.

use dtx_tests::outside::{built_library, cargo, share_workspace_build};
use dtx_tests::runs::out_dir;
use dtx_tests::{run_dtx, workspace_root};

#[test]
fn a_new_plugin_with_every_hook_tests_builds_plans_and_runs_unedited() {
    let root = out_dir("scaffold", "all");
    std::fs::create_dir_all(&root).unwrap();
    let made = run_dtx(
        &[
            "plugins",
            "new",
            "mymethod",
            "--hooks",
            "filter,score,loss,weights,inject",
        ],
        &root,
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    let dir = root.join("mymethod");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/config.rs",
        "tests/hooks.rs",
        "run.toml",
        "README.md",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing:\n{}", made.stdout);
    }
    assert!(made.stdout.contains("cargo test"), "{}", made.stdout);
    // the manifest uses the shipped source model by its absolute path
    let manifest = std::fs::read_to_string(dir.join("run.toml")).unwrap();
    let shipped = workspace_root()
        .join("manifests/models/shapes-source")
        .canonicalize()
        .unwrap();
    assert!(
        manifest.contains(&shipped.display().to_string()),
        "{manifest}"
    );

    share_workspace_build(&dir);
    cargo(&dir, &["test"]);
    cargo(&dir, &["build"]);
    let lib = built_library("dtx-plugin-mymethod");

    let inspect = run_dtx(&["plugins", "inspect", lib.to_str().unwrap()], &dir);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    let hooks = inspect
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("hooks: "))
        .unwrap_or_default();
    let mut hooks: Vec<&str> = hooks.split(',').collect();
    hooks.sort();
    assert_eq!(hooks, ["filter", "inject", "loss", "score", "weights"]);
    for key in ["points", "targets", "lambda", "guidance", "threshold"] {
        assert!(inspect.stdout.contains(key), "{key}:\n{}", inspect.stdout);
    }

    // run.toml names target/release/…; the test built the debug profile
    let library = format!("plugin[0].library=\"{}\"", lib.display());
    let plan = run_dtx(&["plan", "run.toml", "--set", &library], &dir);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let run = run_dtx(
        &[
            "run",
            "run.toml",
            "--quiet",
            "--set",
            &library,
            "--set",
            "train.steps=2",
            "--set",
            "sample.count=2",
            "--set",
            "sample.batch=2",
            "--set",
            "sample.steps=2",
        ],
        &dir,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let folder = dir.join("runs/mymethod");
    assert!(folder.join("checkpoints/latest.safetensors").is_file());
    // the scores of the filter, one row per drawn sample
    let scores = std::fs::read_to_string(folder.join("samples/scores.csv")).unwrap();
    assert!(scores.lines().count() >= 3, "{scores}");
    // the plugin's parameters are in the checkpoint
    let shown = run_dtx(&["model", "inspect", folder.to_str().unwrap()], &dir);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("plugin.mymethod."),
        "{}",
        shown.stdout
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_existing_folder_or_a_bad_name_is_refused_and_nothing_is_written() {
    let root = out_dir("scaffold", "refused");
    std::fs::create_dir_all(root.join("taken")).unwrap();
    std::fs::write(root.join("taken/keep.txt"), "mine").unwrap();
    let taken = run_dtx(&["plugins", "new", "taken"], &root);
    assert!(
        taken.failed().contains("already exists"),
        "{}",
        taken.stderr
    );
    assert_eq!(
        std::fs::read_dir(root.join("taken")).unwrap().count(),
        1,
        "nothing added"
    );
    let bad = run_dtx(&["plugins", "new", "My Method"], &root);
    assert!(bad.failed().contains("lowercase"), "{}", bad.stderr);
    let hook = run_dtx(&["plugins", "new", "ok", "--hooks", "injekt"], &root);
    assert!(
        hook.failed()
            .contains("inject, weights, loss, score, filter"),
        "{}",
        hook.stderr
    );
    assert!(!root.join("ok").exists());
    let _ = std::fs::remove_dir_all(&root);
}
