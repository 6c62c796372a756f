//! A plugin built against dtx-plugin-api 0.3 (`tests/compat/plugin-0.3`,
//! on the 0.3.0 sources frozen in `tests/compat/api-0.3`) in this 0.4 host:
//! refused in a few lines that name the file, both versions and how to
//! rebuild (abi_stable would refuse every shared type by package version;
//! docs/abi-policy.md says why 0.x minors do not mix).

use dtx::plugins::{LoadError, load_library};
use dtx::tensor_abi::{CpuBackend, vtables};
use dtx_tests::plugin_path;

type B = CpuBackend;

#[test]
fn a_plugin_built_against_api_0_3_is_refused_in_a_few_lines() {
    let path = plugin_path("dtx-test-plugin-api03");
    let Err(err) = load_library(&path, None, vtables::<B>()) else {
        panic!("a 0.3 plugin is refused by a 0.4 host");
    };
    assert!(
        matches!(&err, LoadError::IncompatibleApi { plugin_api, host_api, .. }
            if plugin_api == "0.3.0" && host_api == "0.4.0"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.lines().count() <= 3, "{msg}");
    for want in [
        "libdtx_test_plugin_api03",
        "dtx-plugin-api 0.3.0",
        "this host's 0.4.0",
        "dtx-plugin-api = \"0.4.0\"",
        "cargo build --release",
    ] {
        assert!(msg.contains(want), "no `{want}` in: {msg}");
    }
}
