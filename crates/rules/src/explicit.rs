//! Explicit invalidations: the JSON applications send through the WAL with
//! `pg_logical_emit_message(true, 'walbust', '{"keys":["cart:42"]}')`.
//!
//! The payload is an object with the optional fields `keys`, `tags` and
//! `patterns`, each an array of non-empty strings. Anything else is an error
//! (a misspelt `"key"` must not be dropped silently). Patterns are used as
//! written: the application chose its wildcards.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::{ExplicitError, Invalidations};

/// The top level of a message: an object's fields in order, duplicates
/// kept (a JSON map type would silently keep only the last `keys`), or
/// anything else.
enum Top {
    Object(Vec<(String, Value)>),
    Other,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Top::Object(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
                Ok(Top::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
                Ok(Top::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an explicit invalidation message as sent, without any prefix
/// (see [`crate::RuleSet::explicit`] for the prefixed form walbust
/// publishes).
pub fn parse_explicit(content: &[u8]) -> Result<Invalidations, ExplicitError> {
    let top: Top = serde_json::from_slice(content).map_err(ExplicitError::Json)?;
    let Top::Object(fields) = top else {
        return Err(ExplicitError::NotObject);
    };
    let mut out = Invalidations::default();
    let mut seen: Vec<&'static str> = Vec::with_capacity(3);
    for (name, value) in fields {
        let (field, list) = match name.as_str() {
            "keys" => ("keys", &mut out.keys),
            "tags" => ("tags", &mut out.tags),
            "patterns" => ("patterns", &mut out.patterns),
            _ => return Err(ExplicitError::UnknownField(field_name_for_message(&name))),
        };
        if seen.contains(&field) {
            return Err(ExplicitError::DuplicateField(field));
        }
        seen.push(field);
        let Value::Array(items) = value else {
            return Err(ExplicitError::NotArray(field));
        };
        list.reserve(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) if s.is_empty() => {
                    return Err(ExplicitError::Empty { field, index })
                }
                Value::String(s) => list.push(s),
                _ => return Err(ExplicitError::NotString { field, index }),
            }
        }
    }
    Ok(out)
}

/// What explicit messages walbust accepts (the `explicit:` section of its
/// configuration). Any database role can call `pg_logical_emit_message`, so
/// by default a message cannot empty the whole cache and its size is
/// bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplicitPolicy {
    /// Read explicit messages at all.
    pub enabled: bool,
    /// Largest message content accepted, in bytes.
    pub max_bytes: usize,
    /// Most keys, tags and patterns one message may carry, together.
    pub max_entries: usize,
    /// Accept a pattern that matches every key (`*`, or only wildcards):
    /// a flush of the whole cache.
    pub allow_flush_all: bool,
}

/// Default of [`ExplicitPolicy::max_bytes`]: 64 KiB.
pub const DEFAULT_EXPLICIT_MAX_BYTES: usize = 64 * 1024;
/// Default of [`ExplicitPolicy::max_entries`].
pub const DEFAULT_EXPLICIT_MAX_ENTRIES: usize = 10_000;

impl Default for ExplicitPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: DEFAULT_EXPLICIT_MAX_BYTES,
            max_entries: DEFAULT_EXPLICIT_MAX_ENTRIES,
            allow_flush_all: false,
        }
    }
}

/// Why a well-formed explicit message was refused by the [`ExplicitPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("explicit messages are disabled (explicit.enabled: false)")]
    Disabled,
    #[error("the message has {bytes} bytes, more than explicit.max_bytes ({max})")]
    TooLarge { bytes: usize, max: usize },
    #[error("the message has {entries} entries, more than explicit.max_entries ({max})")]
    TooManyEntries { entries: usize, max: usize },
    #[error("pattern {pattern:?} would purge every key (explicit.allow_flush_all: false)")]
    FlushAll { pattern: String },
}

impl Refusal {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::TooManyEntries { .. } => "too_many_entries",
            Refusal::FlushAll { .. } => "flush_all",
        }
    }

    /// Every [`reason`](Self::reason).
    pub const REASONS: [&'static str; 4] =
        ["disabled", "too_large", "too_many_entries", "flush_all"];
}

impl ExplicitPolicy {
    /// Checks what can be known before parsing: enabled, size.
    pub fn admit_content(&self, content: &[u8]) -> Result<(), Refusal> {
        if !self.enabled {
            return Err(Refusal::Disabled);
        }
        if content.len() > self.max_bytes {
            return Err(Refusal::TooLarge {
                bytes: content.len(),
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Checks the parsed message (with the rules' prefix applied, so that
    /// `*` under a prefix is a purge of that prefix, not of everything).
    pub fn admit(&self, inv: &Invalidations) -> Result<(), Refusal> {
        let entries = inv.keys.len() + inv.tags.len() + inv.patterns.len();
        if entries > self.max_entries {
            return Err(Refusal::TooManyEntries {
                entries,
                max: self.max_entries,
            });
        }
        if !self.allow_flush_all {
            if let Some(p) = inv.patterns.iter().find(|p| matches_every_key(p)) {
                return Err(Refusal::FlushAll { pattern: p.clone() });
            }
        }
        Ok(())
    }
}

/// Whether a Redis glob pattern matches every key: it holds no literal
/// character and no character class, only `*` and `?` (`?*` matches every
/// non-empty key, which is every key Redis holds).
pub fn matches_every_key(pattern: &str) -> bool {
    pattern.contains('*') && pattern.chars().all(|c| c == '*' || c == '?')
}

/// An unknown field's name is application text: bound it before it goes
/// into a message.
fn field_name_for_message(name: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut out: String = name.chars().take(MAX_CHARS).collect();
    if name.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_fields() {
        let inv = parse_explicit(
            br#"{"keys":["cart:1","cart:2"],"tags":["user:7"],"patterns":["feed:7:*"]}"#,
        )
        .expect("valid");
        assert_eq!(inv.keys, vec!["cart:1", "cart:2"]);
        assert_eq!(inv.tags, vec!["user:7"]);
        // Not escaped: the application wrote the wildcard.
        assert_eq!(inv.patterns, vec!["feed:7:*"]);
    }

    #[test]
    fn fields_are_optional() {
        assert!(parse_explicit(b"{}").expect("valid").is_empty());
        let inv = parse_explicit(br#" {"tags": ["a"]} "#).expect("valid");
        assert_eq!(inv.tags, vec!["a"]);
        assert!(inv.keys.is_empty() && inv.patterns.is_empty());
    }

    #[test]
    fn malformed() {
        let e = |s: &[u8]| parse_explicit(s).expect_err("malformed").to_string();
        assert_eq!(e(b""), "explicit invalidation message is not valid JSON");
        assert_eq!(
            e(b"{\"keys\":[\"a\""),
            "explicit invalidation message is not valid JSON"
        );
        assert_eq!(
            e(b"\xff\xfe"),
            "explicit invalidation message is not valid JSON"
        );
        assert_eq!(
            e(br#"["a"]"#),
            "explicit invalidation message is not a JSON object"
        );
        assert_eq!(
            e(br#"{"key":["a"]}"#),
            r#"explicit invalidation message has unknown field "key" (known: keys, tags, patterns)"#
        );
        assert_eq!(
            e(br#"{"keys":"a"}"#),
            "explicit invalidation message: `keys` is not an array of strings"
        );
        assert_eq!(
            e(br#"{"tags":null}"#),
            "explicit invalidation message: `tags` is not an array of strings"
        );
        assert_eq!(
            e(br#"{"patterns":["a",1]}"#),
            "explicit invalidation message: `patterns[1]` is not a string"
        );
        assert_eq!(
            e(br#"{"keys":["a",""]}"#),
            "explicit invalidation message: `keys[1]` is empty"
        );
        assert_eq!(
            e(br#"{"keys":["a"],"keys":["b"]}"#),
            "explicit invalidation message has field `keys` twice"
        );
        assert_eq!(
            e(b"42"),
            "explicit invalidation message is not a JSON object"
        );
        assert_eq!(
            e(b"null"),
            "explicit invalidation message is not a JSON object"
        );
        assert_eq!(
            e(b"{} {}"),
            "explicit invalidation message is not valid JSON"
        );
    }

    #[test]
    fn the_policy_refuses_by_reason() {
        let policy = ExplicitPolicy::default();
        assert_eq!(policy.admit_content(b"{}"), Ok(()));
        let off = ExplicitPolicy {
            enabled: false,
            ..policy
        };
        assert_eq!(off.admit_content(b"{}").unwrap_err().reason(), "disabled");
        let big = vec![b' '; DEFAULT_EXPLICIT_MAX_BYTES + 1];
        assert_eq!(
            policy.admit_content(&big).unwrap_err().reason(),
            "too_large"
        );
        let many = Invalidations {
            keys: (0..DEFAULT_EXPLICIT_MAX_ENTRIES + 1)
                .map(|i| i.to_string())
                .collect(),
            ..Invalidations::default()
        };
        assert_eq!(
            policy.admit(&many).unwrap_err().reason(),
            "too_many_entries"
        );
        for everything in ["*", "**", "?*", "*?"] {
            let inv = Invalidations {
                patterns: vec!["feed:*".into(), everything.into()],
                ..Invalidations::default()
            };
            assert_eq!(policy.admit(&inv).unwrap_err().reason(), "flush_all");
            let allowed = ExplicitPolicy {
                allow_flush_all: true,
                ..policy
            };
            assert_eq!(allowed.admit(&inv), Ok(()));
        }
        for scoped in ["app:v1:*", "*:7", "[a]*", "?", "\\*"] {
            assert!(!matches_every_key(scoped), "{scoped}");
        }
    }

    #[test]
    fn long_unknown_field_names_are_cut() {
        let name = "x".repeat(100);
        let msg = parse_explicit(format!("{{\"{name}\":[]}}").as_bytes())
            .expect_err("unknown")
            .to_string();
        assert!(msg.contains(&format!("\"{}…\"", "x".repeat(40))), "{msg}");
    }

    #[test]
    fn json_errors_keep_their_source() {
        let err = parse_explicit(b"{").expect_err("truncated");
        assert!(std::error::Error::source(&err).is_some());
    }
}
