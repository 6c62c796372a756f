//! Typed plugin configs: the host hands a plugin its `[plugin.config]` table as
//! JSON; the plugin's `Config` type (serde, `deny_unknown_fields`, defaults)
//! parses it, and a bad key comes back with its path.

use crate::abi::{AbiError, ConfigKeyInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A config key as `dtx plugins inspect` shows it. The default is filled in from
/// the config type's `Default`, so it cannot drift from the code.
#[derive(Debug, Clone)]
pub struct ConfigKey {
    /// Key name.
    pub key: &'static str,
    /// Type as a user reads it (`float`, `integer`, `string`, `bool`, `[string]`).
    pub ty: &'static str,
    /// One-line help.
    pub help: &'static str,
}

impl ConfigKey {
    /// A key with its type and help.
    pub const fn new(key: &'static str, ty: &'static str, help: &'static str) -> Self {
        ConfigKey { key, ty, help }
    }
}

/// Parses a plugin config from JSON text; errors carry the key path.
pub fn parse<C: DeserializeOwned>(json: &str) -> Result<C, AbiError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        // serde_json appends " at line L column C" of the JSON text, which the user
        // never wrote: drop it.
        let msg = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        AbiError::config(path, msg)
    })
}

/// The key table with defaults from `C::default()`, as TOML text.
pub fn describe<C: Serialize + Default>(keys: &[ConfigKey]) -> Vec<ConfigKeyInfo> {
    let defaults = serde_json::to_value(C::default()).unwrap_or(serde_json::Value::Null);
    keys.iter()
        .map(|k| {
            let default = defaults.get(k.key).map(json_to_toml).unwrap_or_default();
            ConfigKeyInfo {
                key: k.key.into(),
                ty: k.ty.into(),
                default: default.into(),
                help: k.help.into(),
            }
        })
        .collect()
}

fn json_to_toml(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(json_to_toml).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Serialize, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        lambda: f32,
        points: Vec<String>,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg {
                lambda: 0.5,
                points: vec!["mid.res.0".into()],
            }
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse::<Cfg>(r#"{"lambda": "big"}"#).unwrap_err();
        assert_eq!(err.key_path.as_str(), "lambda");
        assert!(err.message.contains("expected f32"), "{}", err.message);
        assert!(!err.message.contains("line"), "{}", err.message);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse::<Cfg>(r#"{"lamda": 1.0}"#).unwrap_err();
        assert!(
            err.message.contains("unknown field `lamda`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn defaults_fill_missing_keys_and_the_help_table() {
        assert_eq!(parse::<Cfg>("{}").unwrap(), Cfg::default());
        let keys = describe::<Cfg>(&[
            ConfigKey::new("lambda", "float", "w"),
            ConfigKey::new("points", "[string]", "p"),
        ]);
        assert_eq!(keys[0].default.as_str(), "0.5");
        assert_eq!(keys[1].default.as_str(), "[\"mid.res.0\"]");
    }
}
