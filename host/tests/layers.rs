//! The host's layering (docs/architecture.md): a module may use the modules
//! of its own layer and the layers below it, never one above. This test reads
//! every source file under `host/src` (unit-test code aside), collects its
//! `crate::<module>` paths, and fails on any path from a lower layer to a
//! higher one that is not in [`KNOWN`]; it also fails when an entry of
//! [`KNOWN`] no longer occurs, so that list only shrinks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers from the bottom up, each a list of top-level modules of
/// `host/src`. Keep in step with docs/architecture.md.
const LAYERS: &[&[&str]] = &[
    // `kernels`: dtx's own CPU kernels behind burn's op signatures.
    &["util", "registry", "kernels"],
    &["tensor_abi"],
    &["plugins"],
    &["model"],
    &["diffusion"],
    &["data"],
    &["train"],
    &["eval"],
    &["manifest"],
    &["condition", "plan"],
    &["run"],
    // The research benchmarks are a crate of their own (`bench/`, on top
    // of this library); `bench` here is `dtx bench engine`.
    &["cli", "bench"],
];

/// Upward uses that remain, as (file under host/src, module it uses), each
/// with the step of the restructuring that removes it. None is left; an
/// entry added here needs its reason.
const KNOWN: &[(&str, &str)] = &[];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a file without its comments and without a trailing
/// `#[cfg(test)] mod tests` (test code may reach anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module named after `crate::` in `code`, including the
/// ones inside `use crate::{a::x, b}` groups.
fn used_modules(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut used = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut found = BTreeSet::new();
    let mut unplaced = BTreeSet::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("/tests.rs") {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let Some(own) = layer_of(module) else {
            unplaced.insert(module.to_owned());
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for used in used_modules(&code) {
            if layer_of(&used).is_some_and(|l| l > own) {
                found.insert((rel.clone(), used));
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules with no layer in LAYERS (add them here and to docs/architecture.md): {unplaced:?}"
    );
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|&(f, m)| (f.to_owned(), m.to_owned()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(
        new.is_empty(),
        "these files use a module of a higher layer (docs/architecture.md): {new:?}"
    );
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "these known exceptions no longer occur; remove them from KNOWN: {gone:?}"
    );
}

#[test]
fn the_scan_sees_grouped_and_plain_paths() {
    let code = code_of(
        "use crate::{train::optim::Adam, util};\n\
         // crate::cli in a comment\n\
         let x = crate::run::go();\n\
         #[cfg(test)]\nmod tests {\n    use crate::bench;\n}\n",
    );
    let used = used_modules(&code);
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["run", "train", "util"]
    );
}
