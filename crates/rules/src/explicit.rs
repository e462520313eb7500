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
