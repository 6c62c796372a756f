//! `dtx plugins new NAME`: a plugin crate outside any workspace that builds
//! and loads on the first try: `Cargo.toml` on `dtx-plugin-api`, a
//! documented `src/lib.rs` with a small working example in each chosen
//! hook, a test, a manifest running it on the shipped source model, and a
//! README with the steps (docs/plugin-authoring.md, "Start from a
//! scaffold").

mod hooks_test;
mod templates;

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use templates::{cargo_toml, lib_rs, manifest, readme, test_rs};

/// The hooks a scaffold can hold, in the order they are written.
pub const SCAFFOLD_HOOKS: &[&str] = &["inject", "weights", "loss", "score", "filter"];

/// What `dtx plugins new` was asked for.
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// The plugin's name (`[[plugin]] name`); the crate is `dtx-plugin-NAME`.
    pub name: String,
    /// Hooks to implement, each one of [`SCAFFOLD_HOOKS`].
    pub hooks: Vec<String>,
    /// The folder to create (must not exist, or be empty).
    pub dir: PathBuf,
    /// `dtx-plugin-api`'s source folder for a path dependency; `None`: by
    /// version.
    pub api: Option<PathBuf>,
    /// The source model the manifest uses.
    pub model: PathBuf,
}

impl Scaffold {
    pub(super) fn has(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h == hook)
    }

    /// The crate's package name.
    pub fn package(&self) -> String {
        format!("dtx-plugin-{}", self.name)
    }

    /// The Rust type of the plugin: `my_method` → `MyMethod`.
    pub(super) fn type_name(&self) -> String {
        self.name
            .split(['-', '_'])
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut c = s.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Checks NAME and the hooks; the hooks default to `inject,loss`.
pub fn check(name: &str, hooks: &[String]) -> anyhow::Result<Vec<String>> {
    let ok = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        bail!(
            "plugin name `{name}`: use 1 to 40 lowercase letters, digits, `_` or `-`, starting \
             with a letter (it names the plugin in manifests and its parameters in checkpoints)"
        );
    }
    let mut out: Vec<String> = Vec::new();
    for h in hooks.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        if !SCAFFOLD_HOOKS.contains(&h) {
            let hint = if h == "prepare" {
                " (`prepare` is not scaffolded: add it by hand, docs/plugin-authoring.md)"
            } else {
                ""
            };
            bail!(
                "--hooks: `{h}` is not a hook a scaffold holds; choose among {}{hint}",
                SCAFFOLD_HOOKS.join(", ")
            );
        }
        if !out.iter().any(|o| o == h) {
            out.push(h.to_owned());
        }
    }
    if out.is_empty() {
        out = vec!["inject".into(), "loss".into()];
    }
    out.sort_by_key(|h| SCAFFOLD_HOOKS.iter().position(|k| k == h));
    Ok(out)
}

/// Writes the crate; returns the files written, relative to its folder.
pub fn write(s: &Scaffold) -> anyhow::Result<Vec<&'static str>> {
    if s.dir.exists() {
        let empty = s.dir.is_dir()
            && std::fs::read_dir(&s.dir)
                .with_context(|| format!("reading `{}`", s.dir.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "`{}` already exists and is not an empty folder: nothing was written \
                 (give another --path)",
                s.dir.display()
            );
        }
    }
    let files: [(&'static str, String); 6] = [
        ("Cargo.toml", cargo_toml(s)),
        ("src/lib.rs", lib_rs(s)),
        ("tests/config.rs", test_rs(s)),
        ("tests/hooks.rs", hooks_test::hooks_rs(s)),
        ("run.toml", manifest(s)),
        ("README.md", readme(s)),
    ];
    for (rel, text) in &files {
        let path = s.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating `{}`", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
    }
    Ok(files.iter().map(|(r, _)| *r).collect())
}

/// `dtx-plugin-api`'s sources beside this build of dtx (a build from the
/// repository), if they are there.
pub fn api_beside_host() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    p.join("Cargo.toml")
        .is_file()
        .then(|| p.canonicalize().unwrap_or(p))
}

/// The shipped source model (`manifests/models/shapes-source`), found as
/// the benchmarks find the manifests: `DTX_MANIFESTS`, the repository of
/// this executable, an installed layout, the working folder.
pub fn shipped_model() -> Option<PathBuf> {
    let rel = Path::new("models").join("shapes-source");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("DTX_MANIFESTS").filter(|v| !v.is_empty()) {
        dirs.push(d.into());
    }
    if let Some(exe) = crate::util::exe_dir() {
        if let Some(root) = exe.parent().and_then(Path::parent) {
            dirs.push(root.join("manifests"));
        }
        if let Some(prefix) = exe.parent() {
            dirs.push(prefix.join("share/dtx/manifests"));
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests"));
    dirs.push(PathBuf::from("manifests"));
    dirs.into_iter()
        .map(|d| d.join(&rel))
        .find(|p| p.join("config.json").is_file())
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .map(|p| p.canonicalize().unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaffold(hooks: &[&str]) -> Scaffold {
        let hooks: Vec<String> = hooks.iter().map(|h| h.to_string()).collect();
        Scaffold {
            name: "my_method".into(),
            hooks: check("my_method", &hooks).unwrap(),
            dir: PathBuf::from("unused"),
            api: None,
            model: PathBuf::from("/m"),
        }
    }

    #[test]
    fn each_hook_set_writes_exactly_its_methods_and_keys() {
        let all = ["inject", "weights", "loss", "score", "filter"];
        let methods = [
            ("inject", "fn inject("),
            ("weights", "fn weights("),
            ("loss", "fn loss("),
            ("score", "fn score("),
            ("filter", "fn filter("),
        ];
        for mask in 1u32..32 {
            let chosen: Vec<&str> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, h)| *h)
                .collect();
            let s = scaffold(&chosen);
            let lib = lib_rs(&s);
            for (hook, method) in methods {
                assert_eq!(lib.contains(method), chosen.contains(&hook), "{chosen:?}");
            }
            assert!(lib.contains("pub struct MyMethod"), "{lib}");
            assert!(lib.contains("export_plugin!(MyMethod);"));
            // [train] only where something trains: the plugin's own
            // parameters over a frozen base, or the base under its loss
            let own = chosen.contains(&"inject") || chosen.contains(&"weights");
            let m = manifest(&s);
            assert_eq!(m.contains("[train]"), own || chosen.contains(&"loss"));
            assert_eq!(m.contains("trainable = \"none\""), own, "{m}");
            assert!(m.parse::<toml::Table>().is_ok(), "{m}");
        }
    }

    #[test]
    fn names_and_hooks_are_checked() {
        assert!(check("MyMethod", &[]).is_err());
        assert!(check("1x", &[]).is_err());
        assert!(check("a b", &[]).is_err());
        assert_eq!(check("ok-name_2", &[]).unwrap(), ["inject", "loss"]);
        let e = check("x", &["prepare".into()]).unwrap_err().to_string();
        assert!(e.contains("not scaffolded"), "{e}");
        let e = check("x", &["injct".into()]).unwrap_err().to_string();
        assert!(e.contains("inject, weights, loss, score, filter"), "{e}");
        // order and duplicates do not matter
        assert_eq!(
            check("x", &["filter".into(), "inject".into(), "filter".into()]).unwrap(),
            ["inject", "filter"]
        );
    }
}
