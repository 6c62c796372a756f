//! Plugins: finding their files, checking them (sha256 pin, api version,
//! layout), describing them, building instances and calling their hooks.

mod in_process;
mod instance;
mod load;

pub use crate::tensor_abi::Labels;
pub use in_process::{register_in_process, registered_in_process};
pub use instance::{HookError, InjectArgs, Instance, LossArgs};
pub use load::{
    ConfigKeyDescription, LoadError, PLUGIN_PATH_VAR, PluginDescription, PluginLibrary,
    in_process_library, is_path, library_file_name, library_names_in, load_library,
    resolve_library, search_dirs, sha256_file,
};

use dtx_plugin_api::abi::HostVtables;
use std::path::PathBuf;
use std::sync::Arc;

/// Every plugin found in `dirs`: loaded libraries, and the files that failed to
/// load with why. Libraries that are not dtx plugins are skipped.
pub fn discover(
    dirs: &[PathBuf],
    vtables: HostVtables,
) -> (Vec<Arc<PluginLibrary>>, Vec<(PathBuf, LoadError)>) {
    let mut found = Vec::new();
    let mut failed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        for name in library_names_in(dir) {
            let path = dir.join(library_file_name(&name));
            if !seen.insert(path.canonicalize().unwrap_or_else(|_| path.clone())) {
                continue;
            }
            match load_library(&path, None, vtables) {
                Ok(lib) => {
                    if !found
                        .iter()
                        .any(|l: &Arc<PluginLibrary>| l.description.name == lib.description.name)
                    {
                        found.push(lib)
                    }
                }
                Err(LoadError::NotAPlugin { .. }) => {}
                Err(e) => failed.push((path, e)),
            }
        }
    }
    (found, failed)
}
