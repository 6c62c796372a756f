//! `dtx plan` of the shipped manifests/lora.toml with this crate's plugin
//! type (no library file): the snapshot is what a user's plan shows of it
//! (parameters, targets, LoRA+'s group, the frozen base, the stages).

use dtx_plugin_lora::Lora;
use std::path::Path;

#[test]
fn the_shipped_manifest_plans_with_the_linked_plugin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let text = dtx_plugin_testing::plan::<Lora>(&root.join("manifests/lora.toml"), &[]).unwrap();
    insta::with_settings!({filters => vec![(root.to_str().unwrap(), "[repo]")]}, {
        insta::assert_snapshot!(text);
    });
}

#[test]
fn a_bad_config_is_the_plans_diagnostic() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/lora.toml");
    let err = dtx_plugin_testing::plan::<Lora>(&manifest, &["plugin[0].config.rank=0"])
        .expect_err("rank 0 is refused");
    assert!(
        err.contains("plugin[0].config.rank") && err.contains("at least 1"),
        "{err}"
    );
}
