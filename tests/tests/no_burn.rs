//! Plugins reach tensors only through `dtx-plugin-api`: no plugin crate may
//! depend on burn, directly or through another crate.

use std::collections::{HashMap, HashSet};

#[test]
fn no_plugin_crate_depends_on_burn() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(dtx_tests::workspace_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Normal (non-dev, non-build) dependency edges of the resolved graph.
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_owned())
            .collect();
        edges.insert(node["id"].as_str().unwrap().to_owned(), deps);
    }
    let mut checked = 0;
    for member in meta["workspace_members"].as_array().unwrap() {
        let id = member.as_str().unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["manifest_path"]
            .as_str()
            .unwrap()
            .to_owned();
        if !manifest.contains("/plugins/") {
            continue;
        }
        checked += 1;
        let mut stack = vec![id.to_owned()];
        let mut seen = HashSet::new();
        while let Some(pkg) = stack.pop() {
            if !seen.insert(pkg.clone()) {
                continue;
            }
            let name = name_of(&pkg);
            assert!(
                !name.starts_with("burn"),
                "{} depends on {name}",
                name_of(id)
            );
            stack.extend(edges.get(&pkg).cloned().unwrap_or_default());
        }
    }
    assert!(checked >= 4, "found only {checked} plugin crates");
}
