//! Plugins linked into the process (a plugin crate's own tests) that a
//! manifest planned on this thread names instead of a library file.

use super::PluginLibrary;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

thread_local! {
    static REGISTERED: RefCell<HashMap<String, Arc<PluginLibrary>>> = RefCell::new(HashMap::new());
}

/// Makes `library = "<its name>"` (or the library name of its crate by the
/// convention `dtx-plugin-<name>` → `dtx_plugin_<name>`, as the shipped
/// manifests write it) in a manifest that `dtx plan` resolves on this
/// thread mean `lib` (from [`super::in_process_library`]) rather than
/// a file: how `dtx-plugin-testing` plans a manifest with the plugin type
/// its test links. Replaces an earlier registration of the same name.
pub fn register_in_process(lib: Arc<PluginLibrary>) {
    REGISTERED.with(|r| r.borrow_mut().insert(lib.description.name.to_string(), lib));
}

/// The library registered on this thread that `library` names, if any.
pub fn registered_in_process(library: &str) -> Option<Arc<PluginLibrary>> {
    REGISTERED.with(|r| {
        r.borrow()
            .iter()
            .find(|(name, _)| {
                library == name.as_str()
                    || library == format!("dtx_plugin_{}", name.replace('-', "_"))
            })
            .map(|(_, lib)| lib.clone())
    })
}
