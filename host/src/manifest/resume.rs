//! What `dtx run --resume` may change: the resolved manifest of the first
//! part is compared key by key with the one being resumed, and only the keys
//! in [`SAFE_TO_CHANGE`] may differ.

use super::spans::KeyPath;

/// Keys (and whole sections) a resumed run may change: how long it trains,
/// how often it checkpoints and validates, and what happens after training
/// (sampling and evaluation). Anything else would make the resumed run
/// differ from the run its checkpoint belongs to.
pub const SAFE_TO_CHANGE: &[&str] = &[
    "train.steps",
    "train.checkpoint_every",
    "train.validate_every",
    "sample",
    "eval",
];

/// One key whose value differs between two manifests.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where, `train.lr`.
    pub path: KeyPath,
    /// The value in the first manifest (`None`: absent).
    pub old: Option<String>,
    /// The value in the second (`None`: absent).
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(
            f,
            "`{}`: {} → {}",
            self.path,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// Every key whose value differs between the TOML texts `old` and `new`
/// (tables are compared key by key, arrays of tables entry by entry).
pub fn changes(old: &str, new: &str) -> Result<Vec<Change>, toml::de::Error> {
    let old: toml::Table = toml::from_str(old)?;
    let new: toml::Table = toml::from_str(new)?;
    let mut out = Vec::new();
    diff_tables(&old, &new, &KeyPath::root(), &mut out);
    Ok(out)
}

/// The changes that [`SAFE_TO_CHANGE`] does not allow.
pub fn unsafe_changes(changes: &[Change]) -> Vec<&Change> {
    changes
        .iter()
        .filter(|c| {
            !SAFE_TO_CHANGE
                .iter()
                .any(|safe| KeyPath::parse(safe).is_ok_and(|safe| c.path.starts_with(&safe)))
        })
        .collect()
}

fn diff_tables(old: &toml::Table, new: &toml::Table, at: &KeyPath, out: &mut Vec<Change>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        diff_values(old.get(key), new.get(key), at.clone().key(key.clone()), out);
    }
}

fn diff_values(
    old: Option<&toml::Value>,
    new: Option<&toml::Value>,
    at: KeyPath,
    out: &mut Vec<Change>,
) {
    match (old, new) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => diff_tables(a, b, &at, out),
        (Some(toml::Value::Array(a)), Some(toml::Value::Array(b)))
            if a.len() == b.len() && a.iter().chain(b).all(toml::Value::is_table) =>
        {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_values(Some(x), Some(y), at.clone().index(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change {
            path: at,
            old: a.map(ToString::to_string),
            new: b.map(ToString::to_string),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"
[run]
name = "r"
seed = 0
[train]
steps = 10
lr = 1e-4
[[plugin]]
name = "a"
config = { w = 1 }
[sample]
count = 4
"#;

    #[test]
    fn lists_each_changed_key_with_old_and_new() {
        let new = OLD
            .replace("lr = 1e-4", "lr = 2e-4")
            .replace("seed = 0", "seed = 1")
            .replace("w = 1", "w = 2")
            .replace("steps = 10", "steps = 20")
            .replace("count = 4", "count = 8");
        let c = changes(OLD, &new).unwrap();
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "`plugin[0].config.w`: 1 → 2",
                "`run.seed`: 0 → 1",
                "`sample.count`: 4 → 8",
                "`train.lr`: 0.0001 → 0.0002",
                "`train.steps`: 10 → 20",
            ]
        );
        let refused: Vec<String> = unsafe_changes(&c)
            .iter()
            .map(|c| c.path.to_string())
            .collect();
        assert_eq!(refused, ["plugin[0].config.w", "run.seed", "train.lr"]);
    }

    #[test]
    fn added_and_removed_keys_and_plugins_count() {
        let new = OLD.replace("lr = 1e-4", "");
        let c = changes(OLD, &new).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].new, None);
        let fewer = OLD.replace("[[plugin]]\nname = \"a\"\nconfig = { w = 1 }\n", "");
        let c = changes(OLD, &fewer).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path.to_string(), "plugin");
        assert_eq!(unsafe_changes(&c).len(), 1);
        assert!(changes(OLD, OLD).unwrap().is_empty());
    }
}
