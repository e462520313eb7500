//! rules.yaml as written: serde types that mirror the file, with source
//! positions, before any validation.
//!
//! Kept apart from the compiled form so that every check in `ruleset` sees
//! the whole document and can point at the offending node. Unknown fields
//! are errors everywhere (a misspelt `wehn:` must not silently drop a
//! filter).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::condition::CmpSide;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDoc {
    pub version: Spanned<u32>,
    pub prefix: Option<Spanned<String>>,
    pub max_key_bytes: Option<Spanned<u64>>,
    pub on_long_key: Option<Spanned<LongKeyDoc>>,
    pub on_oversize: Option<Spanned<OversizeDoc>>,
    pub max_keys_per_tx: Option<Spanned<u32>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RuleDoc>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LongKeyDoc {
    Hash,
    Refuse,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OversizeDoc {
    Glob,
    Fallback,
    Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    pub table: Spanned<String>,
    pub on: Option<Spanned<Vec<Spanned<OpDoc>>>>,
    pub prefix: Option<Spanned<String>>,
    pub when: Option<Spanned<CondDoc>>,
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub patterns: Vec<Spanned<String>>,
    pub max_keys_per_tx: Option<Spanned<u32>>,
    pub on_oversize: Option<Spanned<OversizeDoc>>,
    /// Timestamps (one placeholder each) at which the rule's output for the
    /// row is invalidated again.
    #[serde(default)]
    pub at: Vec<Spanned<String>>,
    /// The rule's keys also go to the refresh stream for warmers.
    pub refresh: Option<Spanned<bool>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpDoc {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// A `when` mapping. Several keys in one mapping all have to hold.
#[derive(Debug)]
pub(crate) struct CondDoc {
    pub terms: Vec<(Spanned<String>, TermDoc)>,
}

#[derive(Debug)]
pub(crate) enum TermDoc {
    Changed(Spanned<Vec<Spanned<String>>>),
    All(Spanned<Vec<Spanned<CondDoc>>>),
    Any(Spanned<Vec<Spanned<CondDoc>>>),
    Not(Box<Spanned<CondDoc>>),
    Compare(CmpSide, Spanned<SideDoc>),
}

/// `{ status: { eq: paid }, deleted_at: null }` under `old:` or `new:`.
#[derive(Debug)]
pub(crate) struct SideDoc {
    pub tests: Vec<(Spanned<String>, TestDoc)>,
}

#[derive(Debug)]
pub(crate) enum TestDoc {
    IsNull,
    NotNull,
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
}

const COND_KEYS: &[&str] = &["changed", "all", "any", "not", "old", "new"];
const TEST_KEYS: &[&str] = &["eq", "ne", "in", "not_in"];

impl<'de> Deserialize<'de> for CondDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CondDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a condition mapping with changed, all, any, not, old or new")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CondDoc, A::Error> {
                let mut terms = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let term = match key.value.as_str() {
                        "changed" => TermDoc::Changed(map.next_value()?),
                        "all" => TermDoc::All(map.next_value()?),
                        "any" => TermDoc::Any(map.next_value()?),
                        "not" => TermDoc::Not(Box::new(map.next_value()?)),
                        "old" => TermDoc::Compare(CmpSide::Old, map.next_value()?),
                        "new" => TermDoc::Compare(CmpSide::New, map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, COND_KEYS)),
                    };
                    terms.push((key, term));
                }
                Ok(CondDoc { terms })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for SideDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SideDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from column names to tests")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SideDoc, A::Error> {
                let mut tests = Vec::new();
                while let Some(column) = map.next_key::<Spanned<String>>()? {
                    tests.push((column, map.next_value()?));
                }
                Ok(SideDoc { tests })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for TestDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TestDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null, not_null, or a mapping with one of eq, ne, in, not_in")
            }
            fn visit_unit<E: de::Error>(self) -> Result<TestDoc, E> {
                Ok(TestDoc::IsNull)
            }
            fn visit_none<E: de::Error>(self) -> Result<TestDoc, E> {
                Ok(TestDoc::IsNull)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TestDoc, E> {
                match v {
                    "not_null" => Ok(TestDoc::NotNull),
                    _ => Err(de::Error::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TestDoc, A::Error> {
                const ONE_KEY: &str =
                    "a test is a mapping with exactly one of eq, ne, in, not_in (combine tests with all:)";
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(ONE_KEY));
                };
                let test = match key.as_str() {
                    "eq" => TestDoc::Eq(map.next_value()?),
                    "ne" => TestDoc::Ne(map.next_value()?),
                    "in" => TestDoc::In(map.next_value()?),
                    "not_in" => TestDoc::NotIn(map.next_value()?),
                    other => return Err(de::Error::unknown_field(other, TEST_KEYS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(ONE_KEY));
                }
                Ok(test)
            }
        }
        d.deserialize_any(V)
    }
}
