//! A plugin that claims `dtx-plugin-api` 9.0.0 and exports a root module of
//! another shape, as a plugin built against a future major version would. The
//! host must refuse it with a message naming the file and both versions, before
//! running any of its code beyond abi_stable's header.
#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    StableAbi, declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RString,
};

/// A root module of a shape the host does not know.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = FutureModule_Ref)))]
pub struct FutureModule {
    /// Something a future api might have.
    #[sabi(last_prefix_field)]
    pub hello: extern "C" fn(u64) -> RString,
}

impl RootModule for FutureModule_Ref {
    declare_root_module_statics! {FutureModule_Ref}
    const BASE_NAME: &'static str = "dtx_plugin";
    const NAME: &'static str = "dtx_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("9.0.0");
}

extern "C" fn hello(n: u64) -> RString {
    format!("hello {n}").into()
}

/// The exported root module.
#[export_root_module]
pub fn get_library() -> FutureModule_Ref {
    FutureModule { hello }.leak_into_prefix()
}
