//! `--set key.path=value` overrides: parsed, then written into the TOML
//! document before serde sees it, so an overridden value is checked like any
//! other and an unknown key is an unknown key.

use super::spans::{KeyPath, KeyPathError, Segment};

/// One `--set key.path=value` applied to the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where the value went.
    pub path: KeyPath,
    /// The override as typed, `train.steps=10`.
    pub text: String,
}

/// Why a `--set key.path=value` cannot be applied: one sentence, without
/// the override itself (the caller names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// No `=` in the override.
    #[error("no `=` between key and value")]
    NoEquals,
    /// Nothing before the `=`.
    #[error("the key before `=` is empty")]
    EmptyKey,
    /// The key is not a key path.
    #[error(transparent)]
    KeyPath(#[from] KeyPathError),
    /// A whole number TOML cannot hold.
    #[error(
        "`{text}` is outside the range of a 64-bit integer ({} to {})",
        i64::MIN,
        i64::MAX
    )]
    IntegerRange {
        /// The value as typed.
        text: String,
    },
    /// An array index past the array's end.
    #[error(
        "index {index} is out of range: `{array}` has {len} entr{}",
        if *len == 1 { "y" } else { "ies" }
    )]
    IndexOutOfRange {
        /// The index given.
        index: usize,
        /// The array's key path.
        array: KeyPath,
        /// How many entries the array has.
        len: usize,
    },
    /// A table key given where the document has an array.
    #[error("`{array}` is an array: pick an entry by index, as in `{array}[0].{key}`")]
    ArrayNeedsIndex {
        /// The array's key path.
        array: KeyPath,
        /// The key given after it.
        key: String,
    },
    /// An index into an array the manifest does not have.
    #[error("`{path}` is not in the manifest, so it has no entries")]
    NoEntries {
        /// The missing array's key path.
        path: KeyPath,
    },
    /// A key below a value that is neither a table nor an array.
    #[error("`{path}` is {}, not a table", article_type(found))]
    NotATable {
        /// The value's key path.
        path: KeyPath,
        /// Its TOML type (`integer`, `string`, …).
        found: &'static str,
    },
}

/// Applies `key.path=value` to `doc`, returning the path it set.
pub(crate) fn apply_override(doc: &mut toml::Table, raw: &str) -> Result<KeyPath, OverrideError> {
    let (key, value) = raw.split_once('=').ok_or(OverrideError::NoEquals)?;
    if key.trim().is_empty() {
        return Err(OverrideError::EmptyKey);
    }
    let path = KeyPath::parse(key)?;
    let value = parse_value(value.trim())?;
    let mut root = toml::Value::Table(std::mem::take(doc));
    let result = insert(&mut root, &path, value);
    if let toml::Value::Table(table) = root {
        *doc = table;
    }
    result.map(|()| path)
}

/// The value as TOML (`10`, `0.5`, `"x"`, `[1, 2]`, `{ decay = 0.9 }`), or
/// else the text itself as a string — except a whole number TOML cannot
/// hold, which is an error rather than a string the key then refuses.
fn parse_value(text: &str) -> Result<toml::Value, OverrideError> {
    let parsed = toml::from_str::<toml::Table>(&format!("value = {text}"))
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("value"));
    if let Some(value) = parsed {
        return Ok(value);
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(OverrideError::IntegerRange {
            text: text.to_owned(),
        });
    }
    Ok(toml::Value::String(text.to_owned()))
}

fn insert(root: &mut toml::Value, path: &KeyPath, value: toml::Value) -> Result<(), OverrideError> {
    let segments = path.segments();
    let mut node = root;
    let mut here = KeyPath::root();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let next_is_index = matches!(segments.get(i + 1), Some(Segment::Index(_)));
        node = match (node, segment) {
            (toml::Value::Array(items), Segment::Index(index)) => {
                let len = items.len();
                let Some(item) = items.get_mut(*index) else {
                    return Err(OverrideError::IndexOutOfRange {
                        index: *index,
                        array: here,
                        len,
                    });
                };
                if last {
                    *item = value;
                    return Ok(());
                }
                here = here.index(*index);
                item
            }
            (toml::Value::Array(_), Segment::Key(key)) => {
                return Err(OverrideError::ArrayNeedsIndex {
                    array: here,
                    key: key.clone(),
                });
            }
            (toml::Value::Table(table), segment) => {
                let key = match segment {
                    Segment::Key(key) => key.clone(),
                    Segment::Index(index) => index.to_string(),
                };
                if last {
                    table.insert(key, value);
                    return Ok(());
                }
                here = here.key(key.clone());
                if !table.contains_key(&key) && next_is_index {
                    return Err(OverrideError::NoEntries { path: here });
                }
                table
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            (other, _) => {
                return Err(OverrideError::NotATable {
                    path: here,
                    found: other.type_str(),
                });
            }
        };
    }
    Err(KeyPathError::Empty.into())
}

fn article_type(type_str: &str) -> String {
    match type_str {
        "integer" => "an integer".to_owned(),
        "array" => "an array".to_owned(),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_toml_or_fall_back_to_strings() {
        assert_eq!(parse_value("10").unwrap(), toml::Value::Integer(10));
        assert_eq!(
            parse_value("\"x\"").unwrap(),
            toml::Value::String("x".into())
        );
        assert_eq!(
            parse_value("cuda").unwrap(),
            toml::Value::String("cuda".into())
        );
        assert_eq!(
            parse_value("[1, 2]").unwrap().as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(
            parse_value("{ decay = 0.9 }").unwrap()["decay"].as_float(),
            Some(0.9)
        );
    }

    #[test]
    fn insert_walks_tables_and_array_entries() {
        let mut doc: toml::Table =
            toml::from_str("[[plugin]]\nname = \"a\"\n[plugin.config]\nlambda = 1.0\n").unwrap();
        let path = apply_override(&mut doc, "plugin[0].config.lambda=0.5").unwrap();
        assert_eq!(path.to_string(), "plugin[0].config.lambda");
        assert_eq!(doc["plugin"][0]["config"]["lambda"].as_float(), Some(0.5));
        apply_override(&mut doc, "train.steps=3").unwrap();
        assert_eq!(doc["train"]["steps"].as_integer(), Some(3));
        let err = apply_override(&mut doc, "train.batch=18446744073709551616")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside the range of a 64-bit integer"),
            "{err}"
        );
        let err = apply_override(&mut doc, "plugin.config.lambda=1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`plugin` is an array: pick an entry by index, as in `plugin[0].config`"
        );
    }
}
