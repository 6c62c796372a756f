//! Typed reads of model hyperparameters from a JSON object (a diffusers
//! `config.json`, or `[source.config]` converted from TOML), with defaults,
//! errors that name the key, and a record of every value in force.

use super::error::{KeyLocation, ModelError, Origin};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Reads keys of one config object and records what it read.
pub(crate) struct ConfigReader<'a> {
    origin: Origin,
    map: &'a Map<String, Value>,
    in_force: BTreeMap<String, String>,
}

/// A `[source.config]` table as a JSON object (TOML integers, floats, strings,
/// booleans and arrays map one to one).
pub(crate) fn table_to_json(table: &toml::Table) -> Map<String, Value> {
    match serde_json::to_value(table) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Rejects keys of `[source.config]` that the kind does not read, suggesting
/// the nearest valid one; `hint` gives advice for well-known foreign keys.
pub(crate) fn check_keys(
    map: &Map<String, Value>,
    valid: &[&str],
    hint: impl Fn(&str) -> Option<String>,
) -> Result<(), ModelError> {
    match map.keys().find(|k| !valid.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => {
            let mut sorted: Vec<String> = valid.iter().map(|s| s.to_string()).collect();
            sorted.sort();
            Err(ModelError::UnknownKey {
                at: KeyLocation {
                    origin: Origin::SourceConfig,
                    key: key.clone(),
                },
                suggestion: crate::util::nearest(key, valid.iter().copied()).map(str::to_owned),
                hint: hint(key),
                valid: sorted,
            })
        }
    }
}

/// A value as text for `config` listings and messages: strings quoted,
/// arrays bracketed, floats with a decimal point or exponent.
pub(crate) fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format!("{f:?}"),
            _ => n.to_string(),
        },
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(_) => serde_json::to_string(value).unwrap_or_default(),
    }
}

/// The type and value of `value`, for "expected X, found Y".
pub(crate) fn found(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".into(),
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    };
    format!("{kind} {}", value_text(value))
}

impl<'a> ConfigReader<'a> {
    pub(crate) fn new(origin: Origin, map: &'a Map<String, Value>) -> Self {
        Self {
            origin,
            map,
            in_force: BTreeMap::new(),
        }
    }

    /// The location of `key`.
    pub(crate) fn at(&self, key: &str) -> KeyLocation {
        KeyLocation {
            origin: self.origin.clone(),
            key: key.to_owned(),
        }
    }

    /// The raw value of `key`, if present (`null` included).
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// Records `key = text` as in force.
    pub(crate) fn record(&mut self, key: &str, text: impl Into<String>) {
        self.in_force.insert(key.to_owned(), text.into());
    }

    /// An error at the first key whose count exceeds its upper bound, given
    /// as (key, value, most). The bounds keep a typo (`layers_per_block =
    /// 4294967296`) from describing a network whose layer list alone would
    /// exhaust memory; they are far above any model dtx can train.
    pub(crate) fn at_most(&self, limits: &[(&str, usize, usize)]) -> Result<(), ModelError> {
        match limits.iter().find(|&&(_, v, most)| v > most) {
            Some(&(key, v, most)) => Err(ModelError::Invalid {
                at: self.at(key),
                reason: format!("must be at most {most}, got {v}"),
            }),
            None => Ok(()),
        }
    }

    /// Every value recorded, sorted by key.
    pub(crate) fn finish(self) -> Vec<(String, String)> {
        self.in_force.into_iter().collect()
    }

    pub(crate) fn wrong_type(&self, key: &str, expected: &str, value: &Value) -> ModelError {
        ModelError::WrongType {
            at: self.at(key),
            expected: expected.to_owned(),
            found: found(value),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            at: self.at(key),
            hint: None,
        }
    }

    /// A present, non-null value, or the default, or a missing-key error.
    fn value_or<T>(
        &mut self,
        key: &str,
        default: Option<T>,
        parse: impl Fn(&Value) -> Option<T>,
        expected: &str,
        text: impl Fn(&T) -> String,
    ) -> Result<T, ModelError> {
        let v = match self.raw(key) {
            Some(Value::Null) | None => default.ok_or_else(|| self.missing(key))?,
            Some(value) => parse(value).ok_or_else(|| self.wrong_type(key, expected, value))?,
        };
        let t = text(&v);
        self.record(key, t);
        Ok(v)
    }

    /// A non-negative integer.
    pub(crate) fn usize(&mut self, key: &str, default: Option<usize>) -> Result<usize, ModelError> {
        self.value_or(key, default, as_usize, "a non-negative integer", |v| {
            v.to_string()
        })
    }

    /// An integer (may be negative: ADM's `-1` means "unset").
    pub(crate) fn i64(&mut self, key: &str, default: Option<i64>) -> Result<i64, ModelError> {
        self.value_or(key, default, Value::as_i64, "an integer", |v| v.to_string())
    }

    /// A number (an integer is accepted as a float).
    pub(crate) fn f64(&mut self, key: &str, default: Option<f64>) -> Result<f64, ModelError> {
        self.value_or(key, default, Value::as_f64, "a number", |v| {
            format!("{v:?}")
        })
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, key: &str, default: Option<bool>) -> Result<bool, ModelError> {
        self.value_or(key, default, Value::as_bool, "a boolean", |v| v.to_string())
    }

    /// A string.
    pub(crate) fn string(
        &mut self,
        key: &str,
        default: Option<&str>,
    ) -> Result<String, ModelError> {
        self.value_or(
            key,
            default.map(str::to_owned),
            |v| v.as_str().map(str::to_owned),
            "a string",
            |v| format!("{v:?}"),
        )
    }

    /// A string or `null` (absent reads as `default`).
    pub(crate) fn opt_string(
        &mut self,
        key: &str,
        default: Option<&str>,
    ) -> Result<Option<String>, ModelError> {
        let v = match self.raw(key) {
            None => default.map(str::to_owned),
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(value) => return Err(self.wrong_type(key, "a string or null", value)),
        };
        let text = v.as_ref().map_or("null".into(), |s| format!("{s:?}"));
        self.record(key, text);
        Ok(v)
    }

    /// A non-negative integer or `null` (absent reads as `default`).
    pub(crate) fn opt_usize(
        &mut self,
        key: &str,
        default: Option<usize>,
    ) -> Result<Option<usize>, ModelError> {
        let v = match self.raw(key) {
            None => default,
            Some(Value::Null) => None,
            Some(value) => Some(
                as_usize(value)
                    .ok_or_else(|| self.wrong_type(key, "a non-negative integer or null", value))?,
            ),
        };
        self.record(key, v.map_or("null".into(), |n| n.to_string()));
        Ok(v)
    }

    /// An array of non-negative integers.
    pub(crate) fn usize_list(
        &mut self,
        key: &str,
        default: Option<&[usize]>,
    ) -> Result<Vec<usize>, ModelError> {
        let list = self.list(
            key,
            default.map(|d| d.iter().map(|&n| Value::from(n)).collect()),
        )?;
        let at = self.at(key);
        let values = list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_usize(v).ok_or_else(|| ModelError::WrongType {
                    at: at.index(i),
                    expected: "a non-negative integer".into(),
                    found: found(v),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.record(key, value_text(&Value::Array(list)));
        Ok(values)
    }

    /// An array of strings.
    pub(crate) fn string_list(
        &mut self,
        key: &str,
        default: Option<&[&str]>,
    ) -> Result<Vec<String>, ModelError> {
        let list = self.list(
            key,
            default.map(|d| d.iter().map(|&s| Value::from(s)).collect()),
        )?;
        let at = self.at(key);
        let values = list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ModelError::WrongType {
                        at: at.index(i),
                        expected: "a string".into(),
                        found: found(v),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.record(key, value_text(&Value::Array(list)));
        Ok(values)
    }

    fn list(&self, key: &str, default: Option<Vec<Value>>) -> Result<Vec<Value>, ModelError> {
        match self.raw(key) {
            Some(Value::Null) | None => default.ok_or_else(|| self.missing(key)),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(value) => Err(self.wrong_type(key, "an array", value)),
        }
    }
}

fn as_usize(value: &Value) -> Option<usize> {
    value.as_u64().and_then(|n| usize::try_from(n).ok())
}
