//! `#[hooks]`, re-exported as `dtx_plugin_api::hooks`: put it on a plugin's
//! `impl Plugin for …` block and the hook list (`Plugin::HOOKS`) is derived
//! from the hook methods the block defines, so it cannot disagree with them.
//! The mismatches a hook list used to hide are compile errors, pointing at
//! the method:
//!
//! - `inject` without the points it injects at (`injection_points()` or
//!   `points(&self)`), or points without `inject`;
//! - `weights` without `weight_targets(&self)`, or targets without `weights`;
//! - a hand-written `HOOKS` beside the attribute;
//! - no hook method at all.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, parse_macro_input};

/// Hook methods and the `Hook` variant each one declares.
const HOOK_METHODS: [(&str, &str); 6] = [
    ("prepare", "Prepare"),
    ("weights", "Weights"),
    ("inject", "Inject"),
    ("loss", "Loss"),
    ("score", "Score"),
    ("filter", "Filter"),
];

/// Derives `const HOOKS` of an `impl Plugin for …` block from the hook
/// methods it defines (`prepare`, `weights`, `inject`, `loss`, `score`,
/// `filter`), and checks that `inject` comes with its points and `weights`
/// with its targets.
#[proc_macro_attribute]
pub fn hooks(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[hooks] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    match derive(&mut block) {
        Ok(()) => quote!(#block).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn derive(block: &mut ItemImpl) -> syn::Result<()> {
    let mut methods = Vec::new();
    for item in &block.items {
        match item {
            ImplItem::Fn(f) => methods.push((f.sig.ident.to_string(), f.sig.ident.span())),
            ImplItem::Const(c) if c.ident == "HOOKS" => {
                return Err(syn::Error::new(
                    c.ident.span(),
                    "#[hooks] derives `HOOKS` from the hook methods this block defines: remove it",
                ));
            }
            _ => {}
        }
    }
    let has = |name: &str| methods.iter().find(|(m, _)| m == name).map(|(_, s)| *s);
    let points = has("injection_points").or(has("points"));
    match (has("inject"), points) {
        (Some(span), None) => {
            return Err(syn::Error::new(
                span,
                "`inject` needs the points it injects at: define `injection_points()` \
                 (fixed names or globs) or `points(&self)` (from the config)",
            ));
        }
        (None, Some(span)) => {
            return Err(syn::Error::new(
                span,
                "injection points without an `inject` method: the host would never call it",
            ));
        }
        _ => {}
    }
    match (has("weights"), has("weight_targets")) {
        (Some(span), None) => {
            return Err(syn::Error::new(
                span,
                "`weights` needs the base parameters it re-parameterises: define \
                 `weight_targets(&self)`",
            ));
        }
        (None, Some(span)) => {
            return Err(syn::Error::new(
                span,
                "`weight_targets` without a `weights` method: the host would never call it",
            ));
        }
        _ => {}
    }
    let hooks: Vec<syn::Ident> = HOOK_METHODS
        .iter()
        .filter(|(method, _)| has(method).is_some())
        .map(|(_, variant)| syn::Ident::new(variant, proc_macro2::Span::call_site()))
        .collect();
    if hooks.is_empty() {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "this plugin defines no hook method (prepare, weights, inject, loss, score, filter)",
        ));
    }
    block.items.push(syn::parse_quote! {
        const HOOKS: &'static [::dtx_plugin_api::Hook] = &[#(::dtx_plugin_api::Hook::#hooks),*];
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::derive;
    use quote::ToTokens;
    use syn::ItemImpl;

    fn run(block: ItemImpl) -> Result<String, String> {
        let mut block = block;
        derive(&mut block)
            .map(|()| block.to_token_stream().to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_hook_list_is_the_methods_defined_in_stage_order() {
        let out = run(syn::parse_quote! {
            impl Plugin for P {
                fn loss(&mut self) {}
                fn injection_points() -> Vec<String> { vec![] }
                fn inject(&mut self) {}
                fn weight_targets(&self) -> Vec<String> { vec![] }
                fn weights(&mut self) {}
                fn new() {}
            }
        })
        .unwrap();
        let hooks = out.split("const HOOKS").nth(1).expect("HOOKS added");
        let order: Vec<usize> = ["Weights", "Inject", "Loss"]
            .iter()
            .map(|h| hooks.find(h).expect(h))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{hooks}");
        assert!(
            !hooks.contains("Score") && !hooks.contains("Prepare"),
            "{hooks}"
        );
    }

    #[test]
    fn mismatches_are_errors_naming_what_is_missing() {
        let cases: [(ItemImpl, &str); 6] = [
            (
                syn::parse_quote! { impl Plugin for P { fn inject(&mut self) {} } },
                "`inject` needs the points",
            ),
            (
                syn::parse_quote! { impl Plugin for P { fn loss(&mut self) {} fn points(&self) {} } },
                "injection points without an `inject`",
            ),
            (
                syn::parse_quote! { impl Plugin for P { fn weights(&mut self) {} } },
                "`weights` needs the base parameters",
            ),
            (
                syn::parse_quote! { impl Plugin for P { fn loss(&mut self) {} fn weight_targets(&self) {} } },
                "`weight_targets` without a `weights`",
            ),
            (
                syn::parse_quote! { impl Plugin for P { const HOOKS: &'static [Hook] = &[]; fn loss(&mut self) {} } },
                "remove it",
            ),
            (
                syn::parse_quote! { impl Plugin for P { fn new() {} } },
                "defines no hook method",
            ),
        ];
        for (block, says) in cases {
            let err = run(block).expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }
}
