//! `--set key.path=value` overrides: parsed, then written into the TOML
//! document before serde sees it, so an overridden value is checked like any
//! other and an unknown key is an unknown key.

use super::spans::{KeyPath, Segment};

/// One `--set key.path=value` applied to the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where the value went.
    pub path: KeyPath,
    /// The override as typed, `train.steps=10`.
    pub text: String,
}

/// Applies `key.path=value` to `doc`, returning the path it set.
pub(crate) fn apply_override(doc: &mut toml::Table, raw: &str) -> Result<KeyPath, String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| "no `=` between key and value".to_owned())?;
    if key.trim().is_empty() {
        return Err("the key before `=` is empty".to_owned());
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
fn parse_value(text: &str) -> Result<toml::Value, String> {
    let parsed = toml::from_str::<toml::Table>(&format!("value = {text}"))
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("value"));
    if let Some(value) = parsed {
        return Ok(value);
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(format!(
            "`{text}` is outside the range of a 64-bit integer ({} to {})",
            i64::MIN,
            i64::MAX
        ));
    }
    Ok(toml::Value::String(text.to_owned()))
}

fn insert(root: &mut toml::Value, path: &KeyPath, value: toml::Value) -> Result<(), String> {
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
                    return Err(format!(
                        "index {index} is out of range: `{here}` has {len} entr{}",
                        if len == 1 { "y" } else { "ies" }
                    ));
                };
                if last {
                    *item = value;
                    return Ok(());
                }
                here = here.index(*index);
                item
            }
            (toml::Value::Array(_), Segment::Key(key)) => {
                return Err(format!(
                    "`{here}` is an array: pick an entry by index, as in `{here}[0].{key}`"
                ));
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
                    return Err(format!(
                        "`{here}` is not in the manifest, so it has no entries"
                    ));
                }
                table
                    .entry(key)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            (other, _) => {
                return Err(format!(
                    "`{here}` is {}, not a table",
                    article_type(other.type_str())
                ));
            }
        };
    }
    Err("empty key path".to_owned())
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
        let err = apply_override(&mut doc, "train.batch=18446744073709551616").unwrap_err();
        assert!(
            err.contains("outside the range of a 64-bit integer"),
            "{err}"
        );
        let err = apply_override(&mut doc, "plugin.config.lambda=1").unwrap_err();
        assert_eq!(
            err,
            "`plugin` is an array: pick an entry by index, as in `plugin[0].config`"
        );
    }
}
