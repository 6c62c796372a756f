//! `dtx plan` of a manifest that names the plugin under test.

use crate::B;
use dtx::plugins::{in_process_library, register_in_process};
use dtx::tensor_abi::vtables;
use dtx_plugin_api::Plugin;
use std::path::Path;

/// What `dtx plan MANIFEST --set …` prints, where a `[[plugin]]` whose
/// `library` is `P::NAME` is the plugin type `P` this test links (no
/// library file is built or read): the plugin's parameter count, points,
/// targets, recipe and the stages, for a snapshot of what a user's plan
/// shows (`insta::assert_snapshot!(plan::<MyMethod>(…)?)`). The plan's
/// `plugins:` lines give `<in-process NAME>` for its file, and paths in it
/// are this machine's: filter them in a snapshot. An invalid manifest is
/// the plan's diagnostics, rendered as `dtx plan` prints them.
pub fn plan<P: Plugin>(manifest: &Path, set: &[&str]) -> Result<String, String> {
    let lib = in_process_library(
        dtx_plugin_api::__private::root_module::<P>(),
        vtables::<B>(),
    )
    .map_err(|e| e.to_string())?;
    register_in_process(lib);
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    let loaded = dtx::manifest::load(manifest, &set).map_err(|e| e.render())?;
    let plan = dtx::plan::resolve_on::<B>(loaded).map_err(|e| e.render())?;
    Ok(plan.render())
}
