//! serde's first error, reworded: what key, what was expected in manifest
//! words ("a number", not "f64"), and a hint (nearest key, alias, quoting,
//! brackets).

use std::collections::HashSet;

use super::error::ManifestDiagnostic;
use super::load::Context;
use super::schema::SECTION_KEYS;
use super::spans::{KeyPath, Segment};
use crate::util::nearest;

/// Turns serde's first error into a diagnostic at its key path.
/// `root_tables` are the top-level keys holding tables or arrays (sections),
/// as opposed to stray keys written before the first header.
pub(crate) fn serde_error(
    context: &Context,
    err: &serde_path_to_error::Error<toml::de::Error>,
    root_tables: &HashSet<String>,
) -> ManifestDiagnostic {
    let mut path = KeyPath::root();
    for segment in err.path().iter() {
        path = match segment {
            serde_path_to_error::Segment::Map { key } => path.key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => path.index(*index),
            _ => path,
        };
    }
    let message = err.inner().message().trim().to_owned();
    // `[[train]]`: serde reads a struct from an array positionally, and its
    // message would be about the first field. Say what happened instead.
    if let [Segment::Key(section), Segment::Index(_), ..] = path.segments()
        && section != "plugin"
        && SECTION_KEYS.iter().any(|(name, _)| name == section)
    {
        let at = KeyPath::root().key(section.clone()).index(0);
        return context
            .at_value(&at, format!("`{section}` must be a table, found an array"))
            .with_code("manifest::invalid-type")
            .with_help(format!(
                "write `[{section}]` with single brackets: a manifest has one `[{section}]` section"
            ));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown_field(context, &path, rest, root_tables);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        return missing_field(context, &path, rest);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown_variant(context, &path, rest);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return invalid_value(context, &path, rest);
        }
    }

    context
        .at_value(&path, format!("`{path}`: {message}"))
        .with_code("manifest::invalid")
}

/// Where `path` is, in words: "at the top level", "in a `[[plugin]]`
/// entry", "in `[train]`".
fn where_in(path: &KeyPath) -> String {
    match path.to_string().as_str() {
        "" => "at the top level".to_owned(),
        p if p.starts_with("plugin[") && !p.contains('.') => "in a `[[plugin]]` entry".to_owned(),
        p => format!("in `[{p}]`"),
    }
}

/// serde's "unknown field `key`, expected …" (`rest` follows the first
/// backtick): the key or section at fault, the nearest valid name, or where
/// the key belongs.
fn unknown_field(
    context: &Context,
    path: &KeyPath,
    rest: &str,
    root_tables: &HashSet<String>,
) -> ManifestDiagnostic {
    let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let parent = path.parent().unwrap_or_default();
    let valid = backticked(expected);
    let is_section = parent.is_root() && root_tables.contains(key);
    let (what, shown) = if is_section {
        ("section", format!("[{key}]"))
    } else {
        ("key", key.to_owned())
    };
    let mut d = context
        .at_key(
            path,
            match is_section {
                true => format!("unknown section `{shown}`"),
                false => format!("unknown key `{shown}` {}", where_in(&parent)),
            },
        )
        .with_code("manifest::unknown-key");
    let homes = sections_with_key(key);
    d.help = Some(match nearest(key, valid.iter().copied()) {
        Some(best) if is_section => format!("did you mean `[{best}]`?"),
        Some(best) => format!("did you mean `{best}`?"),
        None if parent.is_root() && !is_section && !homes.is_empty() => format!(
            "`{key}` belongs in a section: move it under {}",
            homes
                .iter()
                .map(|h| format!("`[{h}]`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        None if valid.is_empty() => "remove it".to_owned(),
        None if is_section => format!(
            "sections are {}",
            valid
                .iter()
                .map(|v| format!("`[{v}]`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("valid {what}s here: {}", quote_list(&valid)),
    });
    d
}

/// serde's "missing field `key`": the key or section to add.
fn missing_field(context: &Context, path: &KeyPath, rest: &str) -> ManifestDiagnostic {
    let key = rest.split('`').next().unwrap_or(rest);
    let full = path.clone().key(key);
    let entry = match path.segments().last() {
        Some(Segment::Index(_)) => "this `[[plugin]]` entry".to_owned(),
        _ => format!("`[{path}]`"),
    };
    let (text, help) = if path.is_root() {
        (
            format!("the manifest has no `[{key}]` section"),
            if key == "run" {
                "every manifest starts with `[run]` and `name = \"…\"`".to_owned()
            } else {
                format!("add a `[{key}]` section")
            },
        )
    } else {
        (
            format!("`{full}` is required {}", where_in(path)),
            format!("add `{key} = …` to {entry}"),
        )
    };
    context
        .at_key(path, text)
        .with_code("manifest::missing-key")
        .with_help(help)
}

/// serde's "unknown variant `value`, expected …": the value at fault and the
/// nearest accepted one.
fn unknown_variant(context: &Context, path: &KeyPath, rest: &str) -> ManifestDiagnostic {
    let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let valid = backticked(expected);
    let mut d = context
        .at_value(path, format!("`{path}` cannot be `{value}`"))
        .with_code("manifest::unknown-value");
    let alias = ALIASES
        .iter()
        .find(|(alias, meant)| alias.eq_ignore_ascii_case(value) && valid.contains(meant))
        .map(|&(_, meant)| meant);
    d.help = Some(
        match alias.or_else(|| nearest(value, valid.iter().copied())) {
            Some(best) => format!("did you mean `{best}`? (expected {})", quote_list(&valid)),
            None => format!("expected {}", quote_list(&valid)),
        },
    );
    d
}

/// serde's "invalid type/value: found, expected …": both in plain words, with
/// a hint for the usual slips (quoted numbers, `[plugin]`, a bare glob).
fn invalid_value(context: &Context, path: &KeyPath, rest: &str) -> ManifestDiagnostic {
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
    let expected = plain_expected(expected);
    let found = plain_found(found);
    let mut d = context
        .at_value(path, format!("`{path}` must be {expected}, found {found}"))
        .with_code("manifest::invalid-type");
    let key = match path.segments().last() {
        Some(Segment::Key(key)) => key.as_str(),
        _ => "value",
    };
    // serde shows strings as `string "text"`, quotes included.
    let quoted = found.strip_prefix("string ");
    let unquoted = quoted.map(|q| q.trim_matches('"'));
    if let Some(text) =
        unquoted.filter(|_| expected.contains("number") || expected.contains("integer"))
    {
        d = d.with_help(format!(
            "numbers are written without quotes: `{key} = {text}`"
        ));
    } else if path.to_string() == "plugin" && found == "a table" {
        d = d.with_help(
            "write `[[plugin]]` with double brackets: each plugin is one entry of an array",
        );
    } else if let Some(glob) = quoted.filter(|_| path.to_string() == "train.trainable") {
        d = d.with_help(format!(
            "a single pattern is still an array: `trainable = [{glob}]`"
        ));
    } else if expected == "a table" && found == "an array" {
        d = d.with_help(format!("write `[{path}]` with single brackets"));
    }
    d
}

/// Values people write for another spelling: `gpu` means `cuda`.
const ALIASES: &[(&str, &str)] = &[
    ("gpu", "cuda"),
    ("nvidia", "cuda"),
    ("eps", "epsilon"),
    ("noise", "epsilon"),
    ("v", "v_prediction"),
    ("x0", "sample"),
    ("adam_w", "adamw"),
];

/// The sections whose tables accept `key`.
fn sections_with_key(key: &str) -> Vec<&'static str> {
    SECTION_KEYS
        .iter()
        .filter(|(_, keys)| keys.contains(&key))
        .map(|&(section, _)| section)
        .collect()
}

/// The words between backticks in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn quote_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

/// serde's "expected" phrase in manifest words.
fn plain_expected(expected: &str) -> String {
    match expected {
        "f64" | "f32" => "a number".to_owned(),
        "u64" | "u32" | "usize" | "u16" | "u8" => "a non-negative integer".to_owned(),
        "i64" | "i32" => "an integer".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        e if e.starts_with("struct ") => "a table".to_owned(),
        e if e.starts_with("one of ") || e.starts_with('`') => e.to_owned(),
        e => e.to_owned(),
    }
}

/// serde's "found" phrase (`integer \`3\``, `map`) in manifest words.
fn plain_found(found: &str) -> String {
    match found {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        f => f.replace("floating point", "number"),
    }
}
