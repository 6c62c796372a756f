//! `dtx plugins new NAME`: a plugin crate outside any workspace that builds
//! and loads on the first try: `Cargo.toml` on `dtx-plugin-api`, a
//! documented `src/lib.rs` with a small working example in each chosen
//! hook, a test, a manifest running it on the shipped source model, and a
//! README with the steps (docs/plugin-authoring.md, "Start from a
//! scaffold").

use anyhow::{Context, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    fn has(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h == hook)
    }

    /// The crate's package name.
    pub fn package(&self) -> String {
        format!("dtx-plugin-{}", self.name)
    }

    /// The Rust type of the plugin: `my_method` → `MyMethod`.
    fn type_name(&self) -> String {
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
    let files: [(&'static str, String); 5] = [
        ("Cargo.toml", cargo_toml(s)),
        ("src/lib.rs", lib_rs(s)),
        ("tests/config.rs", test_rs(s)),
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

/// A TOML basic string holding `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

fn cargo_toml(s: &Scaffold) -> String {
    let api = match &s.api {
        Some(p) => format!("dtx-plugin-api = {{ path = {} }}", toml_path(p)),
        None => format!("dtx-plugin-api = \"{}\"", dtx_plugin_api::abi::API_VERSION),
    };
    format!(
        r#"[package]
name = "{package}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the library dtx loads; rlib: for this crate's own tests
crate-type = ["cdylib", "rlib"]

[dependencies]
# the api of the dtx that made this crate: after a dtx upgrade, point this
# at the new dtx's plugin-api and rebuild (docs/abi-policy.md)
{api}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
serde_json = "1"

# a workspace of its own; remove this table to add the crate to yours
[workspace]
"#,
        package = s.package()
    )
}

fn lib_rs(s: &Scaffold) -> String {
    let ty = s.type_name();
    let mut o = String::new();
    let hooks_line = s.hooks.join(", ");
    let _ = write!(
        o,
        r#"//! `{name}`: <one line on your method>.
//!
//! Generated by `dtx plugins new {name} --hooks {hooks_line}`. Each hook
//! holds a small working example, correct and tested, to replace with your
//! method; cite the paper's equations here. docs/plugin-authoring.md (in the
//! dtx repository) explains every part.
//!
//! Tensors live in the host: `Tensor` ops run there (autodiff included),
//! and a shape mistake comes back to the user as an error naming this
//! plugin, the hook and the op.

use dtx_plugin_api::prelude::*;
use serde::{{Deserialize, Serialize}};

/// `[plugin.config]` of `{name}`. Every key has a default (below); a wrong
/// type or an unknown key is reported with its manifest line.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {{
"#,
        name = s.name
    );
    let mut fields: Vec<(&str, &str, &str, &str, &str)> = Vec::new();
    // (field, type, default expr, config-key type, help)
    if s.has("inject") {
        fields.push((
            "points",
            "Vec<String>",
            "vec![\"mid.*\".into()]",
            "[string]",
            "injection points (names or globs; `dtx plan` lists a model's)",
        ));
    }
    if s.has("weights") {
        fields.push((
            "targets",
            "Vec<String>",
            "vec![\"*\".into()]",
            "[string]",
            "base weights to re-parameterise: checkpoint keys or globs, among the convolution and linear weights",
        ));
    }
    if s.has("loss") {
        fields.push((
            "lambda",
            "f32",
            "0.0",
            "float",
            "weight λ of the loss term (>= 0)",
        ));
    }
    if s.has("score") {
        fields.push((
            "guidance",
            "f32",
            "0.0",
            "float",
            "scale of the score correction ε + guidance·x_t",
        ));
    }
    if s.has("filter") {
        fields.push((
            "threshold",
            "f32",
            "1.0",
            "float",
            "keep a sample when its mean square is at most this",
        ));
    }
    for (f, t, _, _, help) in &fields {
        let _ = writeln!(o, "    /// {}.\n    pub {f}: {t},", capitalised(help));
    }
    o.push_str("}\n\nimpl Default for Config {\n    fn default() -> Self {\n        Config {\n");
    for (f, _, d, _, _) in &fields {
        let _ = writeln!(o, "            {f}: {d},");
    }
    o.push_str("        }\n    }\n}\n\n");

    // the plugin's state
    let _ = writeln!(o, "/// The `{}` plugin.\npub struct {ty} {{", s.name);
    if s.has("inject") {
        o.push_str(
            "    /// Per point: its name and a per-channel scale `s` (zero at first).\n    \
             scales: Vec<(String, Param)>,\n",
        );
    }
    if s.has("weights") {
        o.push_str(
            "    /// Per target weight: its checkpoint key and a scalar `g` (zero at first).\n    \
             gains: Vec<(String, Param)>,\n",
        );
    }
    for (f, t, ..) in fields
        .iter()
        .filter(|(f, ..)| !["points", "targets"].contains(f))
    {
        let _ = writeln!(o, "    {f}: {t},");
    }
    o.push_str("}\n\n");

    let hook_consts: Vec<String> = s
        .hooks
        .iter()
        .map(|h| {
            let mut c = h.chars();
            format!(
                "Hook::{}",
                c.next().unwrap().to_ascii_uppercase().to_string() + c.as_str()
            )
        })
        .collect();
    let _ = write!(
        o,
        r#"impl Plugin for {ty} {{
    type Config = Config;
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "<one line on your method>";
    const HOOKS: &'static [Hook] = &[{hooks}];

    fn config_keys() -> Vec<ConfigKey> {{
        vec![
"#,
        name = s.name,
        hooks = hook_consts.join(", ")
    );
    for (f, _, _, kt, help) in &fields {
        let _ = writeln!(o, "            ConfigKey::new({f:?}, {kt:?}, {help:?}),");
    }
    o.push_str("        ]\n    }\n\n");
    if s.has("inject") {
        o.push_str(
            "    fn injection_points() -> Vec<String> {\n        Config::default().points\n    }\n\n",
        );
    }

    // new
    o.push_str(
        "    /// Checks the config (errors name the key) and registers the\n    \
         /// parameters: the host owns, trains, averages and saves them.\n    \
         fn new(config: Config, host: &Host, model: &ModelInfo) -> Result<Self, AbiError> {\n",
    );
    if !s.has("inject") {
        o.push_str("        let _ = model;\n");
    }
    if !s.has("inject") && !s.has("weights") {
        o.push_str("        let _ = host;\n");
    }
    if s.has("loss") {
        o.push_str(
            "        if !(config.lambda >= 0.0 && config.lambda.is_finite()) {\n            \
             return Err(AbiError::config(\"lambda\", format!(\"must be >= 0, got {}\", config.lambda)));\n        }\n",
        );
    }
    for key in ["guidance", "threshold"] {
        if fields.iter().any(|(f, ..)| *f == key) {
            let _ = write!(
                o,
                "        if !config.{key}.is_finite() {{\n            \
                 return Err(AbiError::config(\"{key}\", format!(\"must be a finite number, got {{}}\", config.{key})));\n        }}\n"
            );
        }
    }
    if s.has("inject") {
        o.push_str(
            r#"        // x ← x ⊙ (1 + s) at every selected point: s = 0 is the source model
        let available: Vec<String> = model.points.iter().map(|p| p.name.to_string()).collect();
        let selected = dtx_plugin_api::points::resolve(&config.points, &available)
            .map_err(|msg| AbiError::config("points", msg))?;
        let mut scales = Vec::new();
        for name in selected {
            let info = model
                .points
                .iter()
                .find(|p| p.name.as_str() == name.as_str())
                .ok_or_else(|| AbiError::config("points", format!("no point `{name}`")))?;
            // [1, C, 1, 1] for image activations, [1, C] for vectors
            let shape = if info.height > 0 {
                vec![1, info.channels, 1, 1]
            } else {
                vec![1, info.channels]
            };
            let s = host.param(&format!("{name}.scale"), &shape, ParamInit::zeros())?;
            scales.push((name.to_string(), s));
        }
"#,
        );
    }
    if s.has("weights") {
        o.push_str(
            r#"        // W' = W · (1 + g) for every selected weight: g = 0 is the source model
        let details = host.model_details()?;
        let mut gains = Vec::new();
        for p in details.parameters.iter() {
            let key = p.key.as_str();
            let role = p.role.name();
            let selected = config
                .targets
                .iter()
                .any(|g| dtx_plugin_api::points::matches(g, key));
            if selected && (role == "conv" || role == "linear") {
                let shape = vec![1; p.shape.len()]; // broadcasts over W
                let g = host.param(&format!("{key}.gain"), &shape, ParamInit::zeros())?;
                gains.push((key.to_owned(), g));
            }
        }
        if gains.is_empty() {
            return Err(AbiError::config(
                "targets",
                format!(
                    "{:?} selects no convolution or linear weight (`dtx plugins inspect NAME --model PATH` lists them)",
                    config.targets
                ),
            ));
        }
"#,
        );
    }
    let _ = writeln!(o, "        Ok({ty} {{");
    if s.has("inject") {
        o.push_str("            scales,\n");
    }
    if s.has("weights") {
        o.push_str("            gains,\n");
    }
    for (f, ..) in fields
        .iter()
        .filter(|(f, ..)| !["points", "targets"].contains(f))
    {
        let _ = writeln!(o, "            {f}: config.{f},");
    }
    o.push_str("        })\n    }\n");

    if s.has("inject") {
        o.push_str(
            r#"
    fn points(&self) -> Vec<String> {
        self.scales.iter().map(|(n, _)| n.clone()).collect()
    }

    /// `inject`: the activation at `ctx.point`, returned at its shape.
    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        let (_, s) = self
            .scales
            .iter()
            .find(|(n, _)| n == ctx.point)
            .ok_or_else(|| AbiError::other(format!("not bound to `{}`", ctx.point)))?;
        let h: &Tensor = &ctx.h; // [B, C, H, W] or [B, C]
        Ok(h * (s.value() + 1.0)) // h ⊙ (1 + s)
    }
"#,
        );
    }
    if s.has("weights") {
        o.push_str(
            r#"
    fn weight_targets(&self) -> Vec<String> {
        self.gains.iter().map(|(k, _)| k.clone()).collect()
    }

    /// `weights`: `W'` for the base weight `ctx.key`, at `W`'s shape; the
    /// host uses it in every student forward (once per sampling run).
    fn weights(&mut self, ctx: &Weights<'_>) -> Result<Tensor, AbiError> {
        let (_, g) = self
            .gains
            .iter()
            .find(|(k, _)| k == ctx.key)
            .ok_or_else(|| AbiError::other(format!("not adapting `{}`", ctx.key)))?;
        Ok(&*ctx.w * (g.value() + 1.0)) // W · (1 + g)
    }
"#,
        );
    }
    if s.has("loss") {
        o.push_str(
            r#"
    /// `loss`: named scalar terms, already weighted; the host adds them to
    /// its objective and logs each as `<plugin>.<term>`.
    fn loss(&mut self, ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        // λ · mean(ε̂²): a toy term on the student's prediction
        let term = ctx.pred.square().mean() * self.lambda;
        Ok(vec![("pred_l2".into(), term)])
    }
"#,
        );
    }
    if s.has("score") {
        o.push_str(
            r#"
    /// `score`: the corrected ε at one sampling step, at ε's shape.
    fn score(&mut self, ctx: &Score<'_>) -> Result<Tensor, AbiError> {
        // ε + guidance · x_t: guidance toward the origin (the score of N(0, I)
        // is −x_t, and a guidance term g enters as ε − √(1−ᾱ_t)·g)
        let x: Tensor = (*ctx.x_t).clone();
        Ok(&*ctx.eps + x * self.guidance)
    }
"#,
        );
    }
    if s.has("filter") {
        o.push_str(
            r#"
    /// `filter`: one score and one decision per finished sample; the
    /// scores go to `samples/scores.csv`.
    fn filter(&mut self, ctx: &Filter<'_>) -> Result<FilterOutput, AbiError> {
        let b = ctx.samples.dim(0) as i64;
        let scores = ctx
            .samples
            .square()
            .reshape(&[b, -1])
            .mean_dims(&[1], false)
            .to_f32_vec();
        let keep: Vec<bool> = scores.iter().map(|&m| m <= self.threshold).collect();
        Ok(FilterOutput {
            scores: scores.into(),
            keep: keep.into(),
        })
    }
"#,
        );
    }
    let _ = write!(o, "}}\n\nexport_plugin!({ty});\n");
    o
}

fn test_rs(s: &Scaffold) -> String {
    let krate = s.package().replace('-', "_");
    let ty = s.type_name();
    let hooks: Vec<String> = s.hooks.iter().map(|h| format!("{h:?}")).collect();
    format!(
        r##"//! What this crate can check without a host: the config's defaults and
//! refusals, and the plugin's declarations. The hooks run in dtx: `dtx plan
//! run.toml` and `dtx run run.toml` (README.md).

use dtx_plugin_api::prelude::*;
use {krate}::{{Config, {ty}}};

#[test]
fn an_empty_config_is_the_default_and_an_unknown_key_is_refused() {{
    let empty: Config = serde_json::from_str("{{}}").unwrap();
    assert_eq!(
        serde_json::to_value(&empty).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
    let err = serde_json::from_str::<Config>(r#"{{"no_such_key": 1}}"#).unwrap_err();
    assert!(err.to_string().contains("no_such_key"), "{{err}}");
}}

#[test]
fn the_declared_hooks_and_config_keys_are_the_implemented_ones() {{
    let hooks: Vec<&str> = {ty}::HOOKS.iter().map(|h| h.name()).collect();
    assert_eq!(hooks, [{hooks}]);
    assert_eq!({ty}::NAME, "{name}");
    // every field of Config is described, and nothing else
    let fields: Vec<String> = match serde_json::to_value(Config::default()).unwrap() {{
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("{{other}}"),
    }};
    let mut keys: Vec<String> = {ty}::config_keys().iter().map(|k| k.key.to_string()).collect();
    keys.sort();
    assert_eq!(keys, fields);
}}
"##,
        hooks = hooks.join(", "),
        name = s.name
    )
}

fn manifest(s: &Scaffold) -> String {
    let lib = crate::plugins::library_file_name(&s.package());
    // what trains: this plugin's parameters over a frozen base; with a
    // `loss` and no parameters, the base itself (the term shapes it)
    let own = s.has("inject") || s.has("weights");
    let train = if own {
        Some((
            "none",
            "the base stays frozen; this plugin's parameters train",
        ))
    } else if s.has("loss") {
        Some((
            "all",
            "every base weight fine-tunes under the plugin's loss term",
        ))
    } else {
        None
    };
    let mut o = format!(
        r#"# `{name}` on a source model: its parameters train on 10 images of shapes
# the source never saw, then 8 samples. `dtx plan run.toml` checks
# everything without running; `dtx run run.toml` runs it into runs/{name}/.
[run]
name = "{name}"
seed = 0
output_dir = "runs"

[source]
kind = "diffusers"
path = {model}

[target]
dataset = "builtin:shapes"
limit = 10
config = {{ preset = "target" }}
"#,
        name = s.name,
        model = toml_path(&s.model)
    );
    if let Some((trainable, why)) = train {
        let lr = if own { "1e-3" } else { "2e-4" };
        let _ = write!(
            o,
            "\n[train]\nsteps = 20\nbatch = 4\nlr = {lr}\ntrainable = \"{trainable}\"   # {why}\n"
        );
    }
    let _ = write!(
        o,
        r#"
[[plugin]]
name = "{name}"
# built by `cargo build --release` (a path is taken from this file's folder)
library = "target/release/{lib}"
# config = {{ ... }}   # keys: `dtx plugins inspect target/release/{lib}`

[sample]
sampler = "ddim"
steps = 10
count = 8
batch = 8
"#,
        name = s.name
    );
    o
}

fn readme(s: &Scaffold) -> String {
    format!(
        r#"# {package}

A dtx plugin (hooks: {hooks}), made by `dtx plugins new {name}`.

```sh
cargo test                      # the config and declarations
cargo build --release           # target/release/{lib}
dtx plugins inspect target/release/{lib}
dtx plan run.toml               # checks library, hooks, config, points
dtx run run.toml                # trains and samples into runs/{name}/
```

Edit `src/lib.rs` (each hook holds a small example to replace) and the
`[plugin] config` in `run.toml`. After upgrading dtx, point the
`dtx-plugin-api` dependency at the new version and rebuild: a plugin built
against another minor version is refused with the command to run.
"#,
        package = s.package(),
        hooks = s.hooks.join(", "),
        name = s.name,
        lib = crate::plugins::library_file_name(&s.package()),
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
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
