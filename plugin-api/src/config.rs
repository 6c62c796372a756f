//! Typed plugin configs: the host hands a plugin its `[plugin.config]` table as
//! JSON; the plugin's `Config` type (serde, `deny_unknown_fields`, defaults)
//! parses it, and a bad key comes back with its path.
//!
//! Everything `dtx plugins inspect` says about a key comes from the config
//! struct, stated once: its name and order from serde (renames included), its
//! type and help (the doc comment's first paragraph) from the struct's
//! `JsonSchema` derive, its default from `Config::default()`.

use crate::abi::{AbiError, ConfigKeyInfo};
use schemars::JsonSchema;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// The key table of config type `C`: each key in declaration order with its
/// type, its default (from `C::default()`, as TOML text) and its help.
pub fn describe<C>() -> Vec<ConfigKeyInfo>
where
    C: Serialize + DeserializeOwned + Default + JsonSchema,
{
    let defaults = serde_json::to_value(C::default()).unwrap_or(Value::Null);
    let schema = schemars::schema_for!(C).to_value();
    let empty = Map::new();
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let defs = schema.get("$defs").and_then(Value::as_object);
    field_names::<C>()
        .iter()
        .map(|&key| {
            let prop = props.get(key).unwrap_or(&Value::Null);
            let default = defaults.get(key).map(json_to_toml).unwrap_or_default();
            ConfigKeyInfo {
                key: key.into(),
                ty: type_label(prop, defs).into(),
                default: default.into(),
                help: help(prop).into(),
            }
        })
        .collect()
}

/// The struct's field names as serde reads them, in declaration order: a
/// deserializer whose only answer is to record the `fields` a derived
/// `Deserialize` passes to `deserialize_struct`.
fn field_names<'de, C: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = C::deserialize(&mut fields);
    fields.0
}

/// A key's type as a user reads it: `float`, `integer`, `bool`, `string`,
/// `[T]` for lists, `"a" | "b"` for a choice of strings, `table`.
fn type_label(prop: &Value, defs: Option<&Map<String, Value>>) -> String {
    if let Some(name) = prop.get("$ref").and_then(Value::as_str) {
        let def = name
            .rsplit('/')
            .next()
            .and_then(|n| defs.and_then(|d| d.get(n)));
        return def.map_or("value".into(), |d| type_label(d, defs));
    }
    let choices: Option<Vec<String>> = match (prop.get("enum"), prop.get("oneOf")) {
        (Some(Value::Array(values)), _) => Some(values.iter().map(Value::to_string).collect()),
        (_, Some(Value::Array(alts))) => alts
            .iter()
            .map(|a| a.get("const").map(Value::to_string))
            .collect(),
        _ => None,
    };
    if let Some(choices) = choices {
        return choices.join(" | ");
    }
    if let Some(Value::Array(alts)) = prop.get("anyOf") {
        // Option<T> of a referenced type: T or null
        let labels: Vec<String> = alts
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            .map(|a| type_label(a, defs))
            .collect();
        return labels.join(" | ");
    }
    let ty = match prop.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // Option<T>: ["T", "null"]
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("value"),
        _ => "value",
    };
    match ty {
        "number" => "float".into(),
        "boolean" => "bool".into(),
        "object" => "table".into(),
        "array" => {
            let item = prop
                .get("items")
                .map_or("value".into(), |i| type_label(i, defs));
            format!("[{item}]")
        }
        other => other.into(),
    }
}

/// The first paragraph of a key's doc comment, on one line.
fn help(prop: &Value) -> String {
    let text = prop
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let first = text.split("\n\n").next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn json_to_toml(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(json_to_toml).collect();
            format!("[{}]", parts.join(", "))
        }
        // an f32 default widened to f64 (0.1 → 0.10000000149011612): print
        // the shortest decimal that reads back as the same f32
        serde_json::Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(v) if f64::from(v as f32) == v => format!("{:?}", v as f32),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A choice.
    #[derive(Deserialize, Serialize, JsonSchema, Debug, PartialEq, Default, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        /// First.
        #[default]
        Conditional,
        /// Second.
        Unconditional,
    }

    #[derive(Deserialize, Serialize, JsonSchema, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        /// Weight of the term.
        ///
        /// A second paragraph the table leaves out.
        lambda: f32,
        /// A rate.
        lr: f32,
        /// Where it applies.
        points: Vec<String>,
        /// Its rank,
        /// over two lines.
        rank: usize,
        /// Unset: the rank.
        alpha: Option<f32>,
        mode: Mode,
        #[serde(rename = "zero")]
        zero_init: bool,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Cfg {
                lambda: 0.5,
                lr: 1e-3,
                points: vec!["mid.res.0".into()],
                rank: 4,
                alpha: None,
                mode: Mode::Conditional,
                zero_init: true,
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
    fn the_key_table_comes_from_the_struct() {
        assert_eq!(parse::<Cfg>("{}").unwrap(), Cfg::default());
        let rows: Vec<[String; 4]> = describe::<Cfg>()
            .iter()
            .map(|k| {
                [
                    k.key.to_string(),
                    k.ty.to_string(),
                    k.default.to_string(),
                    k.help.to_string(),
                ]
            })
            .collect();
        let want = [
            ["lambda", "float", "0.5", "Weight of the term."],
            ["lr", "float", "0.001", "A rate."],
            ["points", "[string]", "[\"mid.res.0\"]", "Where it applies."],
            ["rank", "integer", "4", "Its rank, over two lines."],
            ["alpha", "float", "", "Unset: the rank."],
            [
                "mode",
                "\"conditional\" | \"unconditional\"",
                "\"conditional\"",
                "",
            ],
            ["zero", "bool", "true", ""],
        ];
        assert_eq!(rows.len(), want.len());
        for (row, want) in rows.iter().zip(want) {
            assert_eq!(row.clone(), want.map(String::from));
        }
    }
}
