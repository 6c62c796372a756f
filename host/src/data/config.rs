//! Reading a built-in set's config table: unknown keys are errors that
//! suggest the nearest valid key, and each getter names the key path and the
//! value when the type or range is wrong.

use super::DataError;
use crate::util::nearest;

/// A view of one config table (or a nested table, with its key path).
pub(crate) struct Config<'a> {
    /// The built-in set, for messages.
    pub dataset: &'static str,
    table: &'a toml::Table,
    /// Key path of this table inside the config (`""` at the top,
    /// `components[2].` inside).
    prefix: String,
}

impl<'a> Config<'a> {
    /// The top-level config of `dataset`; errors on any key not in `known`.
    pub fn new(
        dataset: &'static str,
        table: &'a toml::Table,
        known: &[&str],
    ) -> Result<Config<'a>, DataError> {
        Config::nested(dataset, table, String::new(), known)
    }

    /// A nested table whose keys are written after `prefix`.
    pub fn nested(
        dataset: &'static str,
        table: &'a toml::Table,
        prefix: String,
        known: &[&str],
    ) -> Result<Config<'a>, DataError> {
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        if let Some(key) = keys.into_iter().find(|k| !known.contains(&k.as_str())) {
            return Err(DataError::UnknownKey {
                dataset: dataset.into(),
                key: format!("{prefix}{key}"),
                suggestion: nearest(key, known.iter().copied()).map(str::to_owned),
                valid: known.iter().map(|k| (*k).to_owned()).collect(),
            });
        }
        Ok(Config {
            dataset,
            table,
            prefix,
        })
    }

    /// The key path of `key`, for messages.
    pub fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// An error about `key`.
    pub fn bad(&self, key: &str, reason: impl Into<String>) -> DataError {
        DataError::BadValue {
            dataset: self.dataset.into(),
            key: self.path(key),
            reason: reason.into(),
        }
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.get(key)
    }

    /// A number (integers are accepted).
    pub fn f64(&self, key: &str, default: f64) -> Result<f64, DataError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.number(key, v),
        }
    }

    /// A number at `key` (or `key[i]`), given its value.
    pub fn number(&self, key: &str, v: &toml::Value) -> Result<f64, DataError> {
        match v {
            toml::Value::Float(x) => Ok(*x),
            toml::Value::Integer(i) => Ok(*i as f64),
            other => Err(self.bad(key, format!("expected a number, found {}", show(other)))),
        }
    }

    /// A positive integer.
    pub fn positive(&self, key: &str, default: usize) -> Result<usize, DataError> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(i)) if *i > 0 => Ok(*i as usize),
            Some(other) => Err(self.bad(
                key,
                format!("expected a positive integer, found {}", show(other)),
            )),
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, DataError> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(self.bad(
                key,
                format!("expected true or false, found {}", show(other)),
            )),
        }
    }

    /// One of `choices`.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, DataError> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::String(s)) => self.pick(key, s, choices),
            Some(other) => Err(self.bad(
                key,
                format!("expected one of {}, found {}", quoted(choices), show(other)),
            )),
        }
    }

    /// A non-empty list of distinct strings, each one of `choices`.
    pub fn choices(
        &self,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<Vec<&'static str>>, DataError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let toml::Value::Array(items) = v else {
            return Err(self.bad(
                key,
                format!("expected a list of strings, found {}", show(v)),
            ));
        };
        if items.is_empty() {
            return Err(self.bad(
                key,
                format!("the list is empty; choose from {}", quoted(choices)),
            ));
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let toml::Value::String(s) = item else {
                return Err(self.bad(&at, format!("expected a string, found {}", show(item))));
            };
            let c = self.pick(&at, s, choices)?;
            if out.contains(&c) {
                return Err(self.bad(&at, format!("\"{c}\" is listed twice")));
            }
            out.push(c);
        }
        Ok(Some(out))
    }

    fn pick(
        &self,
        key: &str,
        s: &str,
        choices: &[&'static str],
    ) -> Result<&'static str, DataError> {
        if let Some(c) = choices.iter().find(|c| **c == s) {
            return Ok(c);
        }
        let hint = nearest(s, choices.iter().copied())
            .map(|n| format!(" (did you mean \"{n}\"?)"))
            .unwrap_or_default();
        Err(self.bad(
            key,
            format!(
                "unknown value \"{s}\"{hint}; expected one of {}",
                quoted(choices)
            ),
        ))
    }
}

/// A toml value for messages: its type and value.
pub(crate) fn show(v: &toml::Value) -> String {
    format!("{} {v}", v.type_str())
}

fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
