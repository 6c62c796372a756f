//! Key paths (`plugin[1].config.lambda`) and where each key and value sits in
//! the manifest text.
//!
//! The schema structs hold plain values; spans live beside them in a
//! [`SpanMap`] built from a second pass over the text. That pass deserialises
//! into a tree whose every key and value asks toml for its span, using the
//! same protocol as `toml::Spanned` (a struct with reserved field names that
//! toml's deserializer recognises). Unlike `toml::Spanned`, it tolerates values
//! toml cannot span (inside datetimes, some dotted-key tables) and records no
//! span for them instead of failing.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// One step of a [`KeyPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A table key, `steps` in `train.steps`.
    Key(String),
    /// An array index, `1` in `plugin[1]`.
    Index(usize),
}

/// Where a value sits in the manifest's tree, written `train.steps` or
/// `plugin[1].config.lambda` (keys that are not bare TOML keys are quoted:
/// `config."a.b"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath {
    segments: Vec<Segment>,
}

impl KeyPath {
    /// The path of the whole document.
    pub fn root() -> Self {
        KeyPath::default()
    }

    /// This path extended by a table key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.segments.push(Segment::Key(key.into()));
        self
    }

    /// This path extended by an array index.
    pub fn index(mut self, index: usize) -> Self {
        self.segments.push(Segment::Index(index));
        self
    }

    /// The steps from the root, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True for the root path.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path one step up, or `None` at the root.
    pub fn parent(&self) -> Option<KeyPath> {
        let (_, head) = self.segments.split_last()?;
        Some(KeyPath {
            segments: head.to_vec(),
        })
    }

    /// True when `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &KeyPath) -> bool {
        self.segments.starts_with(&other.segments)
    }

    /// Parses `a.b[2].c`, `a.b.2.c` (an all-digit segment is an index) and
    /// quoted keys (`config."a.b"`).
    pub fn parse(text: &str) -> Result<KeyPath, KeyPathError> {
        let mut path = KeyPath::root();
        let mut chars = text.trim().chars().peekable();
        if chars.peek().is_none() {
            return Err(KeyPathError::Empty);
        }
        let mut expect_segment = true;
        while let Some(&c) = chars.peek() {
            match c {
                '.' if !expect_segment => {
                    chars.next();
                    expect_segment = true;
                }
                '[' if !expect_segment => {
                    chars.next();
                    let digits: String = chars.by_ref().take_while(|&c| c != ']').collect();
                    let index = digits
                        .trim()
                        .parse()
                        .map_err(|_| KeyPathError::BadIndex { index: digits })?;
                    path = path.index(index);
                }
                '"' if expect_segment => {
                    chars.next();
                    let mut key = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => key.extend(chars.next()),
                            Some(c) => key.push(c),
                            None => {
                                return Err(KeyPathError::UnclosedQuote {
                                    path: text.to_owned(),
                                });
                            }
                        }
                    }
                    path = path.key(key);
                    expect_segment = false;
                }
                _ if expect_segment && is_bare_key_char(c) => {
                    let mut key = String::new();
                    while let Some(&c) = chars.peek().filter(|&&c| is_bare_key_char(c)) {
                        key.push(c);
                        chars.next();
                    }
                    path = match key.parse::<usize>() {
                        Ok(index) if !path.is_root() => path.index(index),
                        _ => path.key(key),
                    };
                    expect_segment = false;
                }
                _ => {
                    return Err(KeyPathError::Unexpected {
                        found: c,
                        path: text.to_owned(),
                    });
                }
            }
        }
        if expect_segment {
            return Err(KeyPathError::TrailingDot {
                path: text.to_owned(),
            });
        }
        Ok(path)
    }
}

/// Why text is not a [`KeyPath`]; each variant keeps the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPathError {
    /// Nothing but whitespace.
    #[error("empty key path")]
    Empty,
    /// Brackets around something other than a whole number.
    #[error("`[{index}]` is not an array index")]
    BadIndex {
        /// What stood between the brackets.
        index: String,
    },
    /// A `"` with no closing `"`.
    #[error("unclosed quote in `{path}`")]
    UnclosedQuote {
        /// The key path as given.
        path: String,
    },
    /// A character that cannot start or follow a segment there.
    #[error("unexpected `{found}` in key path `{path}`")]
    Unexpected {
        /// The character.
        found: char,
        /// The key path as given.
        path: String,
    },
    /// A `.` with no segment after it.
    #[error("key path `{path}` ends with `.`")]
    TrailingDot {
        /// The key path as given.
        path: String,
    },
}

fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if !key.is_empty() && key.chars().all(is_bare_key_char) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl FromStr for KeyPath {
    type Err = KeyPathError;
    fn from_str(text: &str) -> Result<Self, KeyPathError> {
        KeyPath::parse(text)
    }
}

/// Byte ranges of one entry in the manifest text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySpans {
    /// The key as written (`steps`, or `plugin` inside `[[plugin]]`); none
    /// for array elements.
    pub key: Option<Range<usize>>,
    /// The value; for a `[table]` its header and body. Toml gives none for
    /// tables made only by dotted keys.
    pub value: Option<Range<usize>>,
}

/// Spans of every key and value of one manifest text, by key path.
#[derive(Debug, Clone, Default)]
pub struct SpanMap {
    entries: HashMap<KeyPath, EntrySpans>,
}

impl SpanMap {
    /// Reads the spans of `text`, which must be valid TOML (parse it with
    /// `toml` first for a proper syntax error).
    pub fn parse(text: &str) -> Result<SpanMap, toml::de::Error> {
        let tree: SpannedNode = toml::from_str(text)?;
        let mut map = SpanMap::default();
        map.record(KeyPath::root(), None, tree);
        Ok(map)
    }

    fn record(&mut self, path: KeyPath, key: Option<Range<usize>>, node: SpannedNode) {
        let value = node.span;
        match node.node {
            Node::Table(entries) => {
                for (child_key, child) in entries {
                    let child_path = path.clone().key(child_key.name);
                    self.record(child_path, child_key.span, child);
                }
            }
            Node::Array(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    self.record(path.clone().index(index), None, item);
                }
            }
            Node::Leaf => {}
        }
        if !path.is_root() {
            self.entries.insert(path, EntrySpans { key, value });
        }
    }

    /// Spans recorded for `path`, if it was written in the text.
    pub fn get(&self, path: &KeyPath) -> Option<&EntrySpans> {
        self.entries.get(path)
    }

    /// The value's span, else the key's.
    pub fn value_or_key(&self, path: &KeyPath) -> Option<Range<usize>> {
        let entry = self.entries.get(path)?;
        entry.value.clone().or_else(|| entry.key.clone())
    }

    /// The key's span, else the value's (array elements have no key).
    pub fn key_or_value(&self, path: &KeyPath) -> Option<Range<usize>> {
        let entry = self.entries.get(path)?;
        entry.key.clone().or_else(|| entry.value.clone())
    }

    /// Forgets `path` and everything under it (its value was replaced by an
    /// override, so the text no longer describes it).
    pub fn forget(&mut self, path: &KeyPath) {
        self.entries.retain(|p, _| !p.starts_with(path));
    }
}

// The `toml::Spanned` protocol (serde_spanned 0.6): a struct with these names
// is answered by toml with a map of start, end and the value.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
// toml hands a datetime to serde as a one-key table with this key.
const DATETIME_KEY: &str = "$__toml_private_datetime";

struct SpannedKey {
    span: Option<Range<usize>>,
    name: String,
}

impl<'de> Deserialize<'de> for SpannedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = SpannedKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<SpannedKey, E> {
                Ok(SpannedKey {
                    span: None,
                    name: name.to_owned(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedKey, A::Error> {
                let (span, name) = read_spanned(&mut map, PhantomSeed::<String>::default())?;
                Ok(SpannedKey {
                    span: Some(span),
                    name,
                })
            }
        }
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

/// After the start key was read: start, end, value.
fn read_spanned<'de, A: MapAccess<'de>, S: DeserializeSeed<'de>>(
    map: &mut A,
    seed: S,
) -> Result<(Range<usize>, S::Value), A::Error> {
    let start: usize = map.next_value()?;
    let _: Option<de::IgnoredAny> = map.next_key()?;
    let end: usize = map.next_value()?;
    let _: Option<de::IgnoredAny> = map.next_key()?;
    let value = map.next_value_seed(seed)?;
    Ok((start..end, value))
}

#[derive(Default)]
struct PhantomSeed<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for PhantomSeed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(deserializer)
    }
}

struct SpannedNode {
    span: Option<Range<usize>>,
    node: Node,
}

enum Node {
    Table(Vec<(SpannedKey, SpannedNode)>),
    Array(Vec<SpannedNode>),
    Leaf,
}

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(
            SPANNED_NAME,
            SPANNED_FIELDS,
            NodeVisitor { asked_span: true },
        )
    }
}

/// Deserialises a node without asking for its span (the inner value of a
/// spanned answer).
struct InnerSeed;

impl<'de> DeserializeSeed<'de> for InnerSeed {
    type Value = SpannedNode;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<SpannedNode, D::Error> {
        deserializer.deserialize_any(NodeVisitor { asked_span: false })
    }
}

struct NodeVisitor {
    asked_span: bool,
}

fn leaf<E>() -> Result<SpannedNode, E> {
    Ok(SpannedNode {
        span: None,
        node: Node::Leaf,
    })
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = SpannedNode;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<SpannedNode, E> {
        leaf()
    }
    fn visit_i64<E>(self, _: i64) -> Result<SpannedNode, E> {
        leaf()
    }
    fn visit_u64<E>(self, _: u64) -> Result<SpannedNode, E> {
        leaf()
    }
    fn visit_f64<E>(self, _: f64) -> Result<SpannedNode, E> {
        leaf()
    }
    fn visit_str<E>(self, _: &str) -> Result<SpannedNode, E> {
        leaf()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedNode, A::Error> {
        let Some(first) = map.next_key::<SpannedKey>()? else {
            return Ok(SpannedNode {
                span: None,
                node: Node::Table(Vec::new()),
            });
        };
        if self.asked_span && first.span.is_none() && first.name == SPANNED_START {
            let (span, inner) = read_spanned(&mut map, InnerSeed)?;
            return Ok(SpannedNode {
                span: Some(span),
                node: inner.node,
            });
        }
        if first.name == DATETIME_KEY {
            let _: de::IgnoredAny = map.next_value()?;
            return leaf();
        }
        let mut entries = vec![(first, map.next_value::<SpannedNode>()?)];
        while let Some(key) = map.next_key::<SpannedKey>()? {
            let value = map.next_value::<SpannedNode>()?;
            entries.push((key, value));
        }
        Ok(SpannedNode {
            span: None,
            node: Node::Table(entries),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpannedNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<SpannedNode>()? {
            items.push(item);
        }
        Ok(SpannedNode {
            span: None,
            node: Node::Array(items),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[run]
name = "x"
born = 1979-05-27T07:32:00Z

[train]
steps = 10
trainable = ["up.*", "mid.*"]
ema = { decay = 0.9 }

[[plugin]]
name = "a"
config.lambda = 0.5

[[plugin]]
name = "b"
[plugin.config]
"a.b" = 1
"#;

    fn at(text: &str, span: Option<Range<usize>>) -> &str {
        &text[span.expect("span")]
    }

    #[test]
    fn key_paths_parse_both_index_spellings_and_quotes() {
        let dotted = KeyPath::parse("plugin.1.config.lambda").unwrap();
        let bracket = KeyPath::parse("plugin[1].config.lambda").unwrap();
        assert_eq!(dotted, bracket);
        assert_eq!(bracket.to_string(), "plugin[1].config.lambda");
        let quoted = KeyPath::parse(r#"plugin[0].config."a.b""#).unwrap();
        assert_eq!(
            quoted,
            KeyPath::root()
                .key("plugin")
                .index(0)
                .key("config")
                .key("a.b")
        );
        assert_eq!(quoted.to_string(), r#"plugin[0].config."a.b""#);
        assert!(KeyPath::parse("").is_err());
        assert!(KeyPath::parse("train.").is_err());
        assert!(KeyPath::parse("plugin[x]").is_err());
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let map = SpanMap::parse(TEXT).unwrap();
        let path = |text: &str| KeyPath::parse(text).unwrap();
        assert_eq!(at(TEXT, map.value_or_key(&path("train.steps"))), "10");
        assert_eq!(at(TEXT, map.key_or_value(&path("train.steps"))), "steps");
        assert_eq!(
            at(TEXT, map.value_or_key(&path("train.trainable[1]"))),
            r#""mid.*""#
        );
        assert_eq!(at(TEXT, map.value_or_key(&path("train.ema.decay"))), "0.9");
        assert_eq!(
            at(TEXT, map.value_or_key(&path("plugin[1].name"))),
            r#""b""#
        );
        assert_eq!(
            at(TEXT, map.value_or_key(&path("plugin[0].config.lambda"))),
            "0.5"
        );
        // A dotted-key table has no value span: fall back to its key.
        assert_eq!(
            at(TEXT, map.value_or_key(&path("plugin[0].config"))),
            "config"
        );
        assert_eq!(
            at(TEXT, map.key_or_value(&path(r#"plugin[1].config."a.b""#))),
            r#""a.b""#
        );
        assert_eq!(
            at(TEXT, map.value_or_key(&path("run.born"))),
            "1979-05-27T07:32:00Z"
        );
        assert!(map.get(&path("train.lr")).is_none());
    }

    #[test]
    fn forget_drops_a_subtree() {
        let mut map = SpanMap::parse(TEXT).unwrap();
        map.forget(&KeyPath::parse("plugin[0]").unwrap());
        assert!(
            map.get(&KeyPath::parse("plugin[0].config.lambda").unwrap())
                .is_none()
        );
        assert!(
            map.get(&KeyPath::parse("plugin[1].name").unwrap())
                .is_some()
        );
    }
}
