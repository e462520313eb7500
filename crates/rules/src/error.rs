//! Errors of loading rules, binding them to a table, and parsing explicit
//! invalidation messages.
//!
//! Every rules error displays as one line that starts with `file:line:column`
//! so editors and CI logs can jump to it. No error text carries row data.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use crate::TableName;

/// A position in the rules file (1-based; 0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl Position {
    pub(crate) fn of<T>(s: &serde_saphyr::Spanned<T>) -> Position {
        Self::at(s.referenced)
    }

    pub(crate) fn at(l: serde_saphyr::Location) -> Position {
        // A rules file with four billion lines is not a rules file.
        Position {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        }
    }
}

/// `s` with control characters written as escapes (`\n`), so that every
/// message stays on one line whatever the file or the database holds.
pub(crate) fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Which rule an error is about, as shown in messages: `rule 3 (public.orders)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// 0-based position in the `rules:` list (messages count from 1).
    pub index: usize,
    /// The rule's `table:` text.
    pub table: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} ({})",
            self.index + 1,
            escape_controls(&self.table)
        )
    }
}

/// `origin:line:column` (or just `origin` when the position is unknown).
struct Located<'a>(&'a str, Position);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = escape_controls(self.0);
        if self.1.line == 0 {
            f.write_str(&origin)
        } else {
            write!(f, "{}:{}:{}", origin, self.1.line, self.1.column)
        }
    }
}

/// Loading rules failed. Display is one line:
/// `rules.yaml:14:9: rule 3 (public.orders): unknown placeholder {nwe.total}: ...`.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rules file could not be read.
    #[error("{}: cannot read the rules file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or YAML that does not have the shape of a rules file (unknown
    /// field, wrong type, unknown operation...). The position comes from the
    /// YAML parser.
    // The parser's own error is kept for callers that want its multi-line
    // snippet rendering (`yaml_error`), but not as `source`: its Display
    // repeats this message over several lines.
    #[error("{}: {message}", Located(origin, *at))]
    Yaml {
        origin: String,
        at: Position,
        message: String,
        yaml_error: Box<serde_saphyr::Error>,
    },
    /// Well-formed YAML that breaks a rule of the language.
    #[error("{}: {}{message}", Located(origin, *at), RuleLabel(rule.as_ref()))]
    Invalid {
        origin: String,
        at: Position,
        /// The rule at fault, if the error is inside one.
        rule: Option<RuleRef>,
        message: String,
    },
}

struct RuleLabel<'a>(Option<&'a RuleRef>);

impl fmt::Display for RuleLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{r}: "),
            None => Ok(()),
        }
    }
}

impl RulesError {
    /// Where in the rules file the error is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            RulesError::Read { .. } => None,
            RulesError::Yaml { at, .. } | RulesError::Invalid { at, .. } => {
                (at.line != 0).then_some(*at)
            }
        }
    }
}

/// A rule does not fit the table it matched (from [`crate::RuleSet::bind`]):
/// it names a column the table does not have.
///
/// Display: `rules.yaml:7:12: rule 2 (public.orders): column "totl" does not
/// exist in table public.orders (in key template "order:{id}:{totl}")`.
// Boxed: binding is rare, but callers wrap this error in their own, and a
// large error makes every `Result` on their hot paths large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindError(Box<BindErrorDetail>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: {rule}: column {column_name:?} does not exist in table {} ({what})",
    Located(origin, *at),
    escape_controls(&table.to_string())
)]
struct BindErrorDetail {
    origin: String,
    at: Position,
    rule: RuleRef,
    column_name: String,
    table: TableName,
    what: String,
}

impl BindError {
    pub(crate) fn new(
        origin: &str,
        at: Position,
        rule: RuleRef,
        column_name: &str,
        table: &TableName,
        what: String,
    ) -> Self {
        BindError(Box::new(BindErrorDetail {
            origin: origin.to_owned(),
            at,
            rule,
            column_name: column_name.to_owned(),
            table: table.clone(),
            what,
        }))
    }

    /// The rule at fault.
    pub fn rule(&self) -> &RuleRef {
        &self.0.rule
    }

    /// Where the rules file names the column.
    pub fn position(&self) -> Position {
        self.0.at
    }

    /// The column name the rule uses.
    pub fn column_name(&self) -> &str {
        &self.0.column_name
    }

    /// The table being bound.
    pub fn table(&self) -> &TableName {
        &self.0.table
    }
}

/// An explicit invalidation message (`pg_logical_emit_message(true,
/// 'walbust', ...)`) is malformed. Messages name fields and positions, never
/// the payload's values.
#[derive(Debug, thiserror::Error)]
pub enum ExplicitError {
    /// Not JSON (syntax error, truncated, not UTF-8).
    #[error("explicit invalidation message is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("explicit invalidation message is not a JSON object")]
    NotObject,
    /// A field other than `keys`, `tags`, `patterns`.
    #[error("explicit invalidation message has unknown field {0:?} (known: keys, tags, patterns)")]
    UnknownField(String),
    /// A field given twice.
    #[error("explicit invalidation message has field `{0}` twice")]
    DuplicateField(&'static str),
    /// A field that is not an array of strings.
    #[error("explicit invalidation message: `{0}` is not an array of strings")]
    NotArray(&'static str),
    /// An element that is not a string.
    #[error("explicit invalidation message: `{field}[{index}]` is not a string")]
    NotString { field: &'static str, index: usize },
    /// An empty string (it would invalidate nothing, or everything for a pattern).
    #[error("explicit invalidation message: `{field}[{index}]` is empty")]
    Empty { field: &'static str, index: usize },
    /// A key longer than `max_key_bytes` with `on_long_key: refuse`.
    #[error("explicit invalidation message: `keys[{index}]` is longer than max_key_bytes ({max_key_bytes})")]
    KeyTooLong { index: usize, max_key_bytes: usize },
}
