//! Checks on the raw TOML document, before serde: counts (positive, below
//! their bounds), every float finite, table-typed keys given as tables.
//! Each bad value is reported and replaced by a placeholder, so the rest of
//! the load still runs and reports its own problems.

use std::collections::HashSet;

use crate::manifest::error::ManifestDiagnostic;
use crate::manifest::load::Context;
use crate::manifest::spans::KeyPath;
use crate::util::limits::{MAX_BATCH, MAX_CLASSES, MAX_EXAMPLES, MAX_TIMESTEPS};

/// Integer keys: whether 0 is allowed (seeds, labels) or not (counts), and
/// the largest value accepted. The upper bounds keep a typo such as
/// `batch = 1600000000` from reaching an allocation that aborts the process;
/// they are far above anything that runs on one machine, and the plan's
/// memory estimate (`plan::memory`) checks the sizes that depend on the
/// model against the machine's memory.
const COUNTS: &[(&[&str], Sign, Option<i64>)] = &[
    (&["run", "seed"], Sign::NonNegative, None),
    (&["target", "limit"], Sign::Positive, Some(MAX_EXAMPLES)),
    (
        &["target", "holdout"],
        Sign::NonNegative,
        Some(MAX_EXAMPLES),
    ),
    (&["target", "resolution"], Sign::Positive, Some(4096)),
    (&["target", "split_seed"], Sign::NonNegative, None),
    (
        &["source", "data", "limit"],
        Sign::Positive,
        Some(MAX_EXAMPLES),
    ),
    (&["train", "steps"], Sign::Positive, None),
    (&["train", "batch"], Sign::Positive, Some(MAX_BATCH)),
    (&["train", "checkpoint_every"], Sign::Positive, None),
    (&["train", "timesteps"], Sign::Positive, Some(MAX_TIMESTEPS)),
    (&["sample", "steps"], Sign::Positive, Some(MAX_TIMESTEPS)),
    (&["sample", "count"], Sign::Positive, Some(MAX_EXAMPLES)),
    (&["sample", "batch"], Sign::Positive, Some(MAX_BATCH)),
    (&["sample", "label"], Sign::NonNegative, Some(MAX_CLASSES)),
    (
        &["sample", "max_attempts_factor"],
        Sign::Positive,
        Some(1000),
    ),
];

#[derive(Clone, Copy, PartialEq)]
enum Sign {
    Positive,
    NonNegative,
}

/// The value at `path` in `doc`, when every step is a table.
fn raw_value_mut<'a>(doc: &'a mut toml::Table, path: &[&str]) -> Option<&'a mut toml::Value> {
    let (last, head) = path.split_last()?;
    let mut table = doc;
    for key in head {
        match table.get_mut(*key) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return None,
        }
    }
    table.get_mut(*last)
}

/// Checks the integer keys of `doc`, replacing each bad one by a valid
/// placeholder and adding its path to `reported` (so later checks skip it).
pub(crate) fn check_counts(
    doc: &mut toml::Table,
    context: &Context,
    reported: &mut HashSet<KeyPath>,
) -> Vec<ManifestDiagnostic> {
    let mut problems = Vec::new();
    for &(keys, sign, max) in COUNTS {
        let Some(value) = raw_value_mut(doc, keys) else {
            continue;
        };
        let key = keys[keys.len() - 1];
        let (wanted, placeholder) = match sign {
            Sign::Positive => ("a positive integer", 1),
            Sign::NonNegative => ("a non-negative integer", 0),
        };
        let path = keys.iter().fold(KeyPath::root(), |p, k| p.key(*k));
        let (got, help) = match &*value {
            toml::Value::Integer(n) if max.is_some_and(|m| *n > m) => {
                let max = max.unwrap_or_default();
                let mut d = context
                    .at_value(
                        &path,
                        format!("`{path}` is {n}, more than the largest accepted value, {max}"),
                    )
                    .with_code("manifest::too-large");
                d.help = Some(format!(
                    "use at most {max}; this bound keeps a typo from exhausting memory (docs/manifest.md, \"Limits\")"
                ));
                problems.push(d);
                *value = toml::Value::Integer(placeholder.max(1).min(max));
                reported.insert(path);
                continue;
            }
            toml::Value::Integer(n) if *n > 0 || (*n == 0 && sign == Sign::NonNegative) => continue,
            toml::Value::Integer(n) => (n.to_string(), count_help(&path, sign)),
            toml::Value::Float(f) if f.fract() == 0.0 && *f >= 1.0 => (
                format!("{f:?}"),
                Some(format!("write it without a decimal point: `{key} = {f}`")),
            ),
            toml::Value::String(s) if s.trim().parse::<u64>().is_ok() => (
                format!("the string {s:?}"),
                Some(format!("write it without quotes: `{key} = {}`", s.trim())),
            ),
            toml::Value::String(s) => (format!("the string {s:?}"), None),
            other => (format!("{other}"), None),
        };
        let mut d = context
            .at_value(&path, format!("`{path}` must be {wanted}, got {got}"))
            .with_code("manifest::not-a-count");
        d.help = help;
        problems.push(d);
        *value = toml::Value::Integer(placeholder);
        reported.insert(path);
    }
    problems
}

/// Keys whose value is a table (or an inline table): serde would also build
/// them from an array (`ema = []` read as the defaults), so anything but a
/// table is refused here, before serde.
/// Sections (`[[train]]`) are left to the schema stage, which explains
/// double brackets.
const TABLES: &[&[&str]] = &[
    &["source", "config"],
    &["source", "data"],
    &["source", "data", "config"],
    &["target", "config"],
    &["train", "ema"],
];

/// Every float in `doc` must be finite: NaN and infinities would reach the
/// engine (or, in a plugin's config, turn into JSON `null` and so into the
/// plugin's default). Each one is reported at its key and replaced by 1.0
/// for the rest of the load; table-typed keys given as another type are
/// reported too.
pub(crate) fn check_raw_values(
    doc: &mut toml::Table,
    context: &Context,
    reported: &mut HashSet<KeyPath>,
) -> Vec<ManifestDiagnostic> {
    let mut problems = Vec::new();
    for keys in TABLES {
        let Some(value) = raw_value_mut(doc, keys) else {
            continue;
        };
        if value.is_table() {
            continue;
        }
        let path = keys.iter().fold(KeyPath::root(), |p, k| p.key(*k));
        let example = match keys.last() {
            Some(&"ema") => "`ema = { decay = 0.999 }`, or remove `ema` for no EMA".to_owned(),
            _ => format!("write it as a `[{path}]` section or an inline table `{{ … }}`"),
        };
        problems.push(
            context
                .at_value(
                    &path,
                    format!("`{path}` must be a table, got {}", value.type_str()),
                )
                .with_code("manifest::not-a-table")
                .with_help(example),
        );
        *value = toml::Value::Table(toml::Table::new());
        reported.insert(path);
    }
    let mut bad = Vec::new();
    non_finite(doc, &KeyPath::root(), &mut bad);
    for (path, v) in bad {
        problems.push(
            context
                .at_value(&path, format!("`{path}` must be a finite number, got {v:?}"))
                .with_code("manifest::not-finite")
                .with_help("NaN and infinities are refused everywhere in a manifest, plugin configs included"),
        );
        reported.insert(path);
    }
    problems
}

/// Collects (and replaces by 1.0) every non-finite float under `table`.
fn non_finite(table: &mut toml::Table, at: &KeyPath, out: &mut Vec<(KeyPath, f64)>) {
    for (key, value) in table.iter_mut() {
        non_finite_value(value, at.clone().key(key.clone()), out);
    }
}

fn non_finite_value(value: &mut toml::Value, at: KeyPath, out: &mut Vec<(KeyPath, f64)>) {
    match value {
        toml::Value::Float(f) if !f.is_finite() => {
            out.push((at, *f));
            *f = 1.0;
        }
        toml::Value::Table(t) => non_finite(t, &at, out),
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                non_finite_value(item, at.clone().index(i), out);
            }
        }
        _ => {}
    }
}

fn count_help(path: &KeyPath, sign: Sign) -> Option<String> {
    if sign == Sign::NonNegative {
        return Some("seeds and labels start at 0".to_owned());
    }
    Some(match path.to_string().as_str() {
        "train.steps" => {
            "train for at least one step (or remove `[train]` to only sample)".to_owned()
        }
        "train.batch" | "sample.batch" => {
            "a batch holds at least one example; the default is 16".to_owned()
        }
        "sample.count" => "draw at least one sample (or remove `[sample]`)".to_owned(),
        "target.limit" => "remove `limit` to use the whole dataset".to_owned(),
        _ => "use 1 or more".to_owned(),
    })
}
