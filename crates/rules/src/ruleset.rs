//! Loading: YAML text → validated, compiled [`RuleSet`]; and binding a rule
//! set to one table's columns → [`BoundTable`].
//!
//! All checks that do not need the database happen here, once, with the
//! position of the offending node. What needs the table's columns happens in
//! [`RuleSet::bind`]; what needs the live database (publication, replica
//! identity) is the caller's, helped by [`RuleSet::tables`] and
//! [`BoundTable::needs_old_values`].

use std::fmt;
use std::path::Path;

use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use crate::condition::{Cond, Test};
use crate::error::{escape_controls, BindError, Position, RuleRef, RulesError};
use crate::eval::{fit_long_key, BoundRule, BoundTable, Cover, KeyLimit};
use crate::hash::HASH_LEN;
use crate::row::{Op, OpSet};
use crate::syntax::{
    CondDoc, FileDoc, LongKeyDoc, OpDoc, OversizeDoc, RuleDoc, SideDoc, TermDoc, TestDoc,
};
use crate::template::{glob_escape, Side, Template};

/// The only rules file version this walbust reads.
pub const SUPPORTED_VERSION: u32 = 1;
/// Default `max_key_bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Largest `max_key_bytes`: it bounds every entry walbust renders, and with
/// it what one row can make walbust hold (see docs/reliability.md).
pub const MAX_MAX_KEY_BYTES: usize = 64 << 10;
/// Default `max_keys_per_tx`.
pub const DEFAULT_MAX_KEYS_PER_TX: u32 = 10_000;
/// A hashed long key is the prefix, `#`, and the hash.
const HASHED_KEY_OVERHEAD: usize = 1 + HASH_LEN;

/// What happens to a rendered key longer than `max_key_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongKeyPolicy {
    /// Replace it by `<prefix>#<16 hex digits of FNV-1a 64 of the unprefixed key>`.
    Hash,
    /// Drop it and count it in [`crate::Outcome::refused`].
    Refuse,
}

/// What stands in for a pattern rendered longer than `max_key_bytes` (a
/// pattern cannot be hashed like a key: it would no longer match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OversizePolicy {
    /// The template's own glob, each placeholder a `*` (the default): it
    /// matches whatever the long value would have.
    Glob,
    /// The rule's placeholder-free tags and patterns, as when its
    /// per-transaction budget runs out.
    Fallback,
    /// Everything the rules naming the same table cover (their constant
    /// keys, tags and patterns, and the globs of their key and pattern
    /// templates).
    Table,
}

/// A schema-qualified table name; either part may hold the globs `*` and `?`
/// when it comes from a rule's `table:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Whether either part holds a glob (`*` or `?`).
    pub fn is_glob(&self) -> bool {
        self.schema.contains(['*', '?']) || self.name.contains(['*', '?'])
    }

    /// Whether the table `schema.name` is this one, or matches this glob.
    /// Names compare exactly (as Postgres reports them: unquoted identifiers
    /// are already lowercase).
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        glob_str(&self.schema, schema) && glob_str(&self.name, name)
    }

    /// `products` → `public.products`; `shop.products` as is.
    fn parse(text: &str) -> Result<TableName, String> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", text),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(format!(
                "table {text:?} is not `schema.table` or `table` (globs `*` and `?` allowed)"
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '"')
        {
            return Err(format!("table {text:?}: names cannot contain {c:?}"));
        }
        Ok(TableName::new(schema, name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

fn glob_str(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    // Binding is rare: characters, not bytes, so `?` is one character.
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_match(&pattern, &text)
}

/// `*` matches any run of characters, `?` one; iterative with single
/// backtracking, so linear-ish and never recursive.
fn glob_match(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&tc) = text.get(t) {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == tc => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == '*')
}

/// What tooling can know about a rule without binding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// 0-based position in the `rules:` list (messages count from 1).
    pub index: usize,
    /// The `table:` text as written.
    pub table: String,
    /// Where the rule starts in the file.
    pub line: u32,
    pub column: u32,
    /// The operations it reacts to.
    pub on: Vec<Op>,
    /// Whether it has a tag or pattern without placeholders: what it falls
    /// back to when its key budget runs out, and what TRUNCATE can
    /// invalidate. A rule without one is never escalated.
    pub has_fallback: bool,
    /// Its `at:` templates as written: when the rule's output for a row is
    /// invalidated again.
    pub at: Vec<String>,
    /// `refresh: true`: its keys also go to the refresh stream.
    pub refresh: bool,
}

/// A column name as written, with where it was written (for bind errors).
#[derive(Clone, Debug)]
pub(crate) struct Named {
    pub name: String,
    pub at: Position,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Key,
    Tag,
    Pattern,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Tag => "tag",
            Kind::Pattern => "pattern",
        }
    }
}

/// A template with placeholders, waiting for a table to bind to.
#[derive(Clone, Debug)]
struct TemplateEntry {
    kind: Kind,
    source: String,
    at: Position,
    template: Template<String>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    table: TableName,
    ops: OpSet,
    when: Option<Cond<Named>>,
    key_prefix: String,
    pattern_prefix: String,
    const_keys: Vec<String>,
    const_tags: Vec<String>,
    const_patterns: Vec<String>,
    templates: Vec<TemplateEntry>,
    max_keys_per_tx: u32,
    on_oversize: OversizePolicy,
    /// `at:` templates (one placeholder each).
    at: Vec<TemplateEntry>,
    refresh: bool,
}

/// What a rule set covers; see [`RuleSet::coverage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Constant keys.
    pub keys: Vec<String>,
    /// Constant tags.
    pub tags: Vec<String>,
    /// Globs over every key and pattern the rules can render.
    pub patterns: Vec<String>,
    /// Globs over the tags with placeholders.
    pub tag_globs: Vec<String>,
}

/// A rule bound in degraded form by [`RuleSet::bind_lenient`]: some of its
/// values cannot arrive with this relation description, so it invalidates
/// more instead of stopping the stream. All text comes from the rules and
/// the schema, never from rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    /// The rule ([`RuleInfo::index`]).
    pub rule: usize,
    /// Columns the rule reads that the description lacks (Postgres decodes
    /// older changes with the table as it was, or a publication column list
    /// leaves them out). Every template reading one is skipped.
    pub missing_columns: Vec<String>,
    /// Columns whose old values the rule reads on update or delete that the
    /// relation's replica identity does not send.
    pub old_not_sent: Vec<String>,
    /// What stands in for the templates that cannot render: `true` when the
    /// rule's placeholder-free tags and patterns (its escalation) do, for
    /// the whole table.
    pub escalates: bool,
    /// Otherwise the globs that do (see [`RuleSet::coverage`]), output
    /// when a template could not render.
    pub fallback: Vec<String>,
    /// Tag templates nothing covers: a tag with placeholders cannot be
    /// widened into a glob. Such a cache may go stale.
    pub uncovered: Vec<String>,
}

/// A loaded, validated and compiled rules file. Immutable; share it behind
/// an `Arc` and swap the whole set on reload.
#[derive(Clone, Debug)]
pub struct RuleSet {
    origin: String,
    prefix: String,
    limit: KeyLimit,
    rules: Vec<CompiledRule>,
    infos: Vec<RuleInfo>,
}

/// The context every validation error of one rule shares.
struct RuleCx<'a> {
    origin: &'a str,
    rule: RuleRef,
}

impl RuleCx<'_> {
    fn err(&self, at: Position, message: impl Into<String>) -> RulesError {
        RulesError::Invalid {
            origin: self.origin.to_owned(),
            at,
            rule: Some(self.rule.clone()),
            message: escape_controls(&message.into()).into_owned(),
        }
    }
}

fn top_err(origin: &str, at: Position, message: impl Into<String>) -> RulesError {
    RulesError::Invalid {
        origin: origin.to_owned(),
        at,
        rule: None,
        message: escape_controls(&message.into()).into_owned(),
    }
}

/// A YAML parse error as its position (0:0 when unknown) and a one-line
/// message without the parser's snippet: the snippet spans several lines
/// and may quote a value substituted from the environment (a password).
pub fn yaml_error_line(e: &serde_saphyr::Error) -> (Position, String) {
    let at = e.location().map(Position::at).unwrap_or_default();
    // The parser's renderer would neutralise control characters, its bare
    // message does not.
    let message =
        escape_controls(&UserMessageFormatter.format_message(e.without_snippet())).into_owned();
    (at, message)
}

impl RuleSet {
    /// Parses, validates and compiles rules from YAML text. `origin` names the
    /// text in messages (usually the file name).
    pub fn from_yaml(src: &str, origin: &str) -> Result<RuleSet, RulesError> {
        let doc: FileDoc = serde_saphyr::from_str(src).map_err(|e| {
            let (at, message) = yaml_error_line(&e);
            RulesError::Yaml {
                origin: origin.to_owned(),
                at,
                message,
                yaml_error: Box::new(e),
            }
        })?;
        Self::compile(doc, origin)
    }

    /// Reads and loads a rules file; messages name it as `path` is written.
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let src = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&src, &path.display().to_string())
    }

    fn compile(doc: FileDoc, origin: &str) -> Result<RuleSet, RulesError> {
        if doc.version.value != SUPPORTED_VERSION {
            return Err(top_err(
                origin,
                Position::of(&doc.version),
                format!(
                    "unsupported version {} (this walbust reads version {SUPPORTED_VERSION})",
                    doc.version.value
                ),
            ));
        }
        let prefix = doc
            .prefix
            .as_ref()
            .map(|p| p.value.clone())
            .unwrap_or_default();
        let max_key_bytes = match &doc.max_key_bytes {
            None => DEFAULT_MAX_KEY_BYTES,
            Some(m) => match usize::try_from(m.value) {
                Ok(v) if (1..=MAX_MAX_KEY_BYTES).contains(&v) => v,
                _ => {
                    return Err(top_err(
                        origin,
                        Position::of(m),
                        format!("max_key_bytes must be between 1 and {MAX_MAX_KEY_BYTES}"),
                    ))
                }
            },
        };
        let policy = match doc.on_long_key.as_ref().map(|p| p.value) {
            None | Some(LongKeyDoc::Hash) => LongKeyPolicy::Hash,
            Some(LongKeyDoc::Refuse) => LongKeyPolicy::Refuse,
        };
        let limit = KeyLimit {
            max_key_bytes,
            policy,
        };
        let limit_at = doc
            .max_key_bytes
            .as_ref()
            .map(Position::of)
            .or(doc.prefix.as_ref().map(Position::of))
            .unwrap_or_default();
        if let Some(msg) = prefix_fits(&prefix, limit) {
            return Err(top_err(origin, limit_at, msg));
        }
        let max_keys_per_tx = doc
            .max_keys_per_tx
            .map_or(DEFAULT_MAX_KEYS_PER_TX, |m| m.value);
        let on_oversize = doc
            .on_oversize
            .as_ref()
            .map_or(OversizePolicy::Glob, |o| oversize_policy(o.value));

        let mut rules = Vec::with_capacity(doc.rules.len());
        let mut infos = Vec::with_capacity(doc.rules.len());
        for (index, rule) in doc.rules.into_iter().enumerate() {
            let at = Position::of(&rule);
            let cx = RuleCx {
                origin,
                rule: RuleRef {
                    index,
                    table: rule.value.table.value.clone(),
                },
            };
            let defaults = RuleDefaults {
                global_prefix: &prefix,
                limit,
                budget: max_keys_per_tx,
                on_oversize,
            };
            let compiled = compile_rule(rule.value, at, &cx, &defaults)?;
            infos.push(RuleInfo {
                index,
                table: cx.rule.table,
                line: at.line,
                column: at.column,
                on: compiled.ops.to_vec(),
                has_fallback: compiled.has_fallback(),
                at: compiled.at.iter().map(|t| t.source.clone()).collect(),
                refresh: compiled.refresh,
            });
            rules.push(compiled);
        }
        Ok(RuleSet {
            origin: origin.to_owned(),
            prefix,
            limit,
            rules,
            infos,
        })
    }

    /// The name the rules were loaded under (the file name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The global key prefix (`""` when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `max_key_bytes` and `on_long_key`.
    pub fn key_limit(&self) -> (usize, LongKeyPolicy) {
        (self.limit.max_key_bytes, self.limit.policy)
    }

    /// The tables rules name exactly (no glob), each once, in file order:
    /// what the publication must include.
    pub fn tables(&self) -> Vec<TableName> {
        self.unique_tables(false)
    }

    /// The glob `table:` entries (`public.orders_*`), each once, in file
    /// order: the publication must include every table they match.
    pub fn table_patterns(&self) -> Vec<TableName> {
        self.unique_tables(true)
    }

    fn unique_tables(&self, globs: bool) -> Vec<TableName> {
        let mut out: Vec<TableName> = Vec::new();
        for r in &self.rules {
            if r.table.is_glob() == globs && !out.contains(&r.table) {
                out.push(r.table.clone());
            }
        }
        out
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.infos
    }

    /// Every pattern the rules produce, in the shape they render (each placeholder filled with
    /// the plain value `x`, under the rule's prefixes), with its rule. Row values are escaped
    /// into patterns, so every rendering has this shape: a check of the sample (a literal prefix
    /// then one `*`, for versioned patterns) holds for all of them.
    pub fn pattern_samples(&self) -> Vec<(&RuleInfo, String)> {
        let mut out = Vec::new();
        for (info, rule) in self.infos.iter().zip(&self.rules) {
            for p in &rule.const_patterns {
                out.push((info, p.clone()));
            }
            for t in rule.templates.iter().filter(|t| t.kind == Kind::Pattern) {
                out.push((
                    info,
                    format!("{}{}", rule.pattern_prefix, t.template.sample("x")),
                ));
            }
        }
        out
    }

    /// Compiles the rules that match table `schema.table` against its
    /// columns (in the order the replication stream sends them; a row's
    /// [`crate::RowValues::get`] takes indexes into this list).
    ///
    /// `Ok(None)`: no rule names this table. `Err`: a rule names a column the
    /// table does not have (the first such, with its position).
    pub fn bind(
        &self,
        schema: &str,
        table: &str,
        columns: &[&str],
    ) -> Result<Option<BoundTable>, BindError> {
        self.bind_where(schema, table, columns, None, |_| true)
    }

    /// [`RuleSet::bind`] for a relation description from the replication
    /// stream, which never fails: a rule that cannot be rendered against
    /// this description is bound in degraded form ([`BoundTable::degraded`])
    /// rather than stopping invalidation for every table.
    ///
    /// Postgres decodes a change with the table as it was when the change
    /// was written, so a description may lack a column the rules (checked
    /// against today's catalog) name; templates reading it render nothing.
    /// `old_sent[i]` tells whether the replica identity sends column `i`'s
    /// old value on update and delete; a `{col}` or `{old.col}` of a column
    /// it does not send is unknown on the old side, not equal to the new
    /// value. Either way the template counts as [`crate::Outcome::missing`]
    /// and the rule falls back: its placeholder-free tags and patterns
    /// stand for the whole table, as in an escalation; a rule without them
    /// gets globs over its keys and patterns ([`Degraded::fallback`]).
    pub fn bind_lenient(
        &self,
        schema: &str,
        table: &str,
        columns: &[&str],
        old_sent: &[bool],
    ) -> Option<BoundTable> {
        // Lenient binding reports no error: unknown columns are degraded.
        self.bind_where(schema, table, columns, Some(old_sent), |_| true)
            .ok()
            .flatten()
    }

    /// [`RuleSet::bind`] with rule `index` ([`RuleInfo::index`]) alone: what
    /// that rule makes of a change, under this set's prefix and key limit,
    /// as if the file held no other rule. For tooling that attributes output
    /// to rules (`walbust explain`) or asks what one rule needs
    /// (`walbust check --db`). The rule keeps its number, so that
    /// [`BoundTable::rule_indexes`] and errors name it as the whole set does.
    ///
    /// `Ok(None)`: there is no rule `index`, or it does not name this table.
    pub fn bind_only(
        &self,
        index: usize,
        schema: &str,
        table: &str,
        columns: &[&str],
    ) -> Result<Option<BoundTable>, BindError> {
        self.bind_where(schema, table, columns, None, |id| id == index)
    }

    /// The columns whose values rule `index` ([`RuleInfo::index`]) renders
    /// into its keys, tags and patterns, each with the row it reads, in
    /// template order (keys, tags, then patterns), as often as they are
    /// written. Empty when there is no rule `index`. `when` conditions render
    /// nothing and are not listed.
    pub fn template_columns(&self, index: usize) -> Vec<(Side, &str)> {
        self.rules
            .get(index)
            .into_iter()
            .flat_map(|r| &r.templates)
            .flat_map(|t| t.template.holes())
            .map(|h| (h.side, h.column.as_str()))
            .collect()
    }

    /// The operations the rules matching table `schema.table` (exactly or
    /// by glob) react to, in [`Op::ALL`] order; empty when no rule matches.
    /// What a publication must publish for the table, asked without binding.
    pub fn ops_for(&self, schema: &str, table: &str) -> Vec<Op> {
        let mut ops = OpSet::default();
        for rule in self.rules.iter().filter(|r| r.table.matches(schema, table)) {
            for op in rule.ops.to_vec() {
                ops.insert(op);
            }
        }
        ops.to_vec()
    }

    /// The columns the rules matching table `schema.table` read on any
    /// operation: placeholders in keys, tags and patterns, and every column
    /// a `when` condition names. Each once, in order of first appearance.
    /// What a publication's column list must keep, asked without binding.
    pub fn columns_read(&self, schema: &str, table: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.table.matches(schema, table)) {
            let holes = (rule.templates.iter().chain(&rule.at)).flat_map(|t| t.template.holes());
            let mut read: Vec<&str> = holes.map(|h| h.column.as_str()).collect();
            if let Some(when) = &rule.when {
                when.columns(&mut |n: &Named| read.push(n.name.as_str()));
            }
            for column in read {
                if !out.contains(&column) {
                    out.push(column);
                }
            }
        }
        out
    }

    /// Binds the matching rules; `lenient` (the replica identity's
    /// `old_sent`) degrades what [`RuleSet::bind`] refuses.
    fn bind_where(
        &self,
        schema: &str,
        table: &str,
        columns: &[&str],
        lenient: Option<&[bool]>,
        keep: impl Fn(usize) -> bool,
    ) -> Result<Option<BoundTable>, BindError> {
        let name = TableName::new(schema, table);
        let mut bound = Vec::new();
        let mut degraded = Vec::new();
        let mut old_unsent = vec![false; columns.len()];
        for (id, rule) in self.rules.iter().enumerate() {
            if keep(id) && rule.table.matches(schema, table) {
                let mut b = Binding {
                    columns,
                    lenient: lenient.is_some(),
                    absent: Vec::new(),
                };
                let mut r = self.bind_rule(id, rule, &name, &mut b)?;
                if let Some(old_sent) = lenient {
                    let d = self.degrade(rule, &mut r, &b, old_sent, &mut old_unsent);
                    degraded.extend(d);
                }
                bound.push(r);
            }
        }
        if bound.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            BoundTable::new(
                name,
                columns.iter().map(|c| (*c).to_owned()).collect(),
                bound,
                self.limit,
            )
            .with_degraded(old_unsent, degraded),
        ))
    }

    fn bind_rule(
        &self,
        id: usize,
        rule: &CompiledRule,
        table: &TableName,
        b: &mut Binding<'_>,
    ) -> Result<BoundRule, BindError> {
        let rule_ref = || RuleRef {
            index: id,
            table: self
                .infos
                .get(id)
                .map(|i| i.table.clone())
                .unwrap_or_default(),
        };
        let missing = |named: &Named, what: String| {
            BindError::new(&self.origin, named.at, rule_ref(), &named.name, table, what)
        };
        let when = match &rule.when {
            None => None,
            Some(c) => Some(c.try_map(&mut |n: &Named| {
                b.index_of(&n.name)
                    .ok_or_else(|| missing(n, "in when".to_owned()))
            })?),
        };
        let (mut keys, mut tags, mut patterns) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = Vec::new();
        let at_len = rule.at.len();
        for (i, entry) in rule.at.iter().chain(&rule.templates).enumerate() {
            let bound = entry.template.try_map(|hole| {
                b.index_of(&hole.column).ok_or_else(|| {
                    missing(
                        &Named {
                            name: hole.column.clone(),
                            at: entry.at,
                        },
                        match i < at_len {
                            true => format!("in at template {:?}", entry.source),
                            false => {
                                format!("in {} template {:?}", entry.kind.as_str(), entry.source)
                            }
                        },
                    )
                })
            })?;
            if i < at_len {
                at.push(bound);
                continue;
            }
            match entry.kind {
                Kind::Key => keys.push(bound),
                Kind::Tag => tags.push(bound),
                Kind::Pattern => patterns.push(bound),
            }
        }
        let pattern_covers = rule
            .templates
            .iter()
            .filter(|t| t.kind == Kind::Pattern)
            .map(|t| self.oversize_cover(rule, t))
            .collect();
        Ok(BoundRule {
            id,
            ops: rule.ops,
            when,
            key_prefix: rule.key_prefix.clone().into_boxed_str(),
            pattern_prefix: rule.pattern_prefix.clone().into_boxed_str(),
            const_keys: rule.const_keys.clone(),
            const_tags: rule.const_tags.clone(),
            const_patterns: rule.const_patterns.clone(),
            keys,
            tags,
            patterns,
            max_keys_per_tx: rule.max_keys_per_tx,
            has_fallback: rule.has_fallback(),
            fallback: Vec::new(),
            pattern_covers,
            at,
            refresh: rule.refresh,
        })
    }

    /// What stands in for pattern template `t` of `rule` when it renders
    /// longer than `max_key_bytes` (see [`OversizePolicy`]).
    fn oversize_cover(&self, rule: &CompiledRule, t: &TemplateEntry) -> Cover {
        match rule.on_oversize {
            OversizePolicy::Glob => Cover {
                patterns: vec![rule.glob_of(t)],
                ..Cover::default()
            },
            OversizePolicy::Fallback => Cover {
                keys: Vec::new(),
                tags: rule.const_tags.clone(),
                patterns: rule.const_patterns.clone(),
            },
            OversizePolicy::Table => {
                let c = self.coverage_where(|r| r.table == rule.table);
                Cover {
                    keys: c.keys,
                    tags: c.tags,
                    patterns: c.patterns,
                }
            }
        }
    }

    /// Lenient binding, after [`RuleSet::bind_rule`]: what of `rule` cannot
    /// arrive with this description, and what stands in for it. Marks the
    /// unsent old columns `rule` reads in `old_unsent`.
    fn degrade(
        &self,
        rule: &CompiledRule,
        bound: &mut BoundRule,
        b: &Binding<'_>,
        old_sent: &[bool],
        old_unsent: &mut [bool],
    ) -> Option<Degraded> {
        let reads_old = rule.ops.contains(Op::Update) || rule.ops.contains(Op::Delete);
        let unsent = |name: &str| {
            let i = b.columns.iter().position(|c| *c == name)?;
            (reads_old && !old_sent.get(i).copied().unwrap_or(false)).then_some(i)
        };
        let mut old_not_sent: Vec<String> = Vec::new();
        let mut note = |name: &str, i: usize, old_unsent: &mut [bool]| {
            if let Some(flag) = old_unsent.get_mut(i) {
                *flag = true;
            }
            if !old_not_sent.iter().any(|n| n == name) {
                old_not_sent.push(name.to_owned());
            }
        };
        if let Some(when) = &rule.when {
            let mut names = Vec::new();
            when.old_columns(rule.ops.contains(Op::Update), &mut |n: &Named| {
                names.push(n.name.as_str());
            });
            for name in names {
                if let Some(i) = unsent(name) {
                    note(name, i, old_unsent);
                }
            }
        }
        let mut degraded_templates = Vec::new();
        for entry in &rule.templates {
            let mut degraded = false;
            for hole in entry.template.holes() {
                if !b.columns.contains(&hole.column.as_str()) {
                    degraded = true;
                } else if hole.side != Side::New {
                    if let Some(i) = unsent(&hole.column) {
                        note(&hole.column, i, old_unsent);
                        degraded = true;
                    }
                }
            }
            if degraded {
                degraded_templates.push(entry);
            }
        }
        if b.absent.is_empty() && old_not_sent.is_empty() {
            return None;
        }
        let escalates = rule.has_fallback();
        let (mut fallback, mut uncovered) = (Vec::new(), Vec::new());
        if !escalates {
            for entry in degraded_templates {
                match rule.template_glob(entry, self.limit.policy) {
                    Some(globs) => {
                        for g in globs {
                            if !fallback.contains(&g) {
                                fallback.push(g);
                            }
                        }
                    }
                    None => uncovered.push(entry.source.clone()),
                }
            }
        }
        bound.fallback.clone_from(&fallback);
        Some(Degraded {
            rule: bound.id,
            missing_columns: b.absent.clone(),
            old_not_sent,
            escalates,
            fallback,
            uncovered,
        })
    }

    /// Everything these rules can ever invalidate, for purging caches after
    /// a gap in the change stream (a slot lost or dropped, a failover to a
    /// server without it): over-invalidation is always safe, a silent gap
    /// never is.
    ///
    /// Keys and patterns with placeholders become globs (each placeholder a
    /// `*`); constant keys, tags and patterns are listed as they are. Tags
    /// with placeholders cannot be listed; their globs are in
    /// [`Coverage::tag_globs`] for a sink that can enumerate tags. Hashed
    /// long keys are covered by `<prefix>#*`.
    pub fn coverage(&self) -> Coverage {
        self.coverage_where(|_| true)
    }

    /// What the rules naming one of `tables` cover (see [`Self::coverage`]):
    /// the purge for changes of those tables that were never seen.
    pub fn coverage_of(&self, tables: &[TableName]) -> Coverage {
        self.coverage_where(|rule| tables.contains(&rule.table))
    }

    fn coverage_where(&self, wanted: impl Fn(&CompiledRule) -> bool) -> Coverage {
        let mut c = Coverage::default();
        let push = |list: &mut Vec<String>, s: String| {
            if !list.contains(&s) {
                list.push(s);
            }
        };
        for rule in self.rules.iter().filter(|r| wanted(r)) {
            for k in &rule.const_keys {
                push(&mut c.keys, k.clone());
            }
            for t in &rule.const_tags {
                push(&mut c.tags, t.clone());
            }
            for p in &rule.const_patterns {
                push(&mut c.patterns, p.clone());
            }
            for t in &rule.templates {
                match t.kind {
                    Kind::Key | Kind::Pattern => {
                        push(&mut c.patterns, rule.glob_of(t));
                    }
                    Kind::Tag => push(&mut c.tag_globs, t.template.coverage_glob(true)),
                }
            }
            if matches!(self.limit.policy, LongKeyPolicy::Hash) {
                push(&mut c.patterns, format!("{}#*", rule.pattern_prefix));
            }
        }
        c
    }

    /// Parses an explicit invalidation message ([`crate::parse_explicit`])
    /// and applies this rule set's global prefix and long-key policy to its
    /// keys, and the (glob-escaped) prefix to its patterns. Tags are used as
    /// sent.
    pub fn explicit(&self, content: &[u8]) -> Result<crate::Invalidations, crate::ExplicitError> {
        let raw = crate::explicit::parse_explicit(content)?;
        let mut out = crate::Invalidations::default();
        for (index, key) in raw.keys.into_iter().enumerate() {
            let mut full = String::with_capacity(self.prefix.len() + key.len());
            full.push_str(&self.prefix);
            full.push_str(&key);
            match fit_long_key(full, self.prefix.len(), self.limit) {
                Some(k) => out.keys.push(k),
                None => {
                    return Err(crate::ExplicitError::KeyTooLong {
                        index,
                        max_key_bytes: self.limit.max_key_bytes,
                    })
                }
            }
        }
        out.tags = raw.tags;
        if self.prefix.is_empty() {
            out.patterns = raw.patterns;
        } else {
            let escaped = glob_escape(&self.prefix);
            out.patterns = raw
                .patterns
                .into_iter()
                .map(|p| format!("{escaped}{p}"))
                .collect();
        }
        Ok(out)
    }
}

impl CompiledRule {
    fn has_fallback(&self) -> bool {
        !self.const_tags.is_empty() || !self.const_patterns.is_empty()
    }

    /// The glob, under the rule's prefixes, over every string a key or
    /// pattern template renders (each placeholder a `*`).
    fn glob_of(&self, t: &TemplateEntry) -> String {
        let escape_literals = t.kind == Kind::Key;
        format!(
            "{}{}",
            self.pattern_prefix,
            t.template.coverage_glob(escape_literals)
        )
    }

    /// The globs over what template `t` renders, hashed long keys included;
    /// `None` for a tag template, which no glob can stand for.
    fn template_glob(&self, t: &TemplateEntry, policy: LongKeyPolicy) -> Option<Vec<String>> {
        match t.kind {
            Kind::Tag => None,
            Kind::Pattern => Some(vec![self.glob_of(t)]),
            Kind::Key if policy == LongKeyPolicy::Hash => {
                Some(vec![self.glob_of(t), format!("{}#*", self.pattern_prefix)])
            }
            Kind::Key => Some(vec![self.glob_of(t)]),
        }
    }
}

/// Column lookup while binding one rule. Lenient binding gives a column
/// the description lacks an index past its end, which every row reads as
/// absent ([`crate::RowValues`]' contract), so the templates reading it
/// are skipped as missing.
struct Binding<'a> {
    columns: &'a [&'a str],
    lenient: bool,
    /// The names given indexes past the end, in order.
    absent: Vec<String>,
}

impl Binding<'_> {
    fn index_of(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.columns.iter().position(|c| *c == name) {
            return Some(i);
        }
        if !self.lenient {
            return None;
        }
        let k = match self.absent.iter().position(|n| n == name) {
            Some(k) => k,
            None => {
                self.absent.push(name.to_owned());
                self.absent.len() - 1
            }
        };
        Some(self.columns.len() + k)
    }
}

/// `Some(message)` when keys under `prefix` cannot be made to fit `limit`.
fn prefix_fits(prefix: &str, limit: KeyLimit) -> Option<String> {
    let needed = match limit.policy {
        LongKeyPolicy::Hash => prefix.len() + HASHED_KEY_OVERHEAD,
        LongKeyPolicy::Refuse => prefix.len() + 1,
    };
    (needed > limit.max_key_bytes).then(|| {
        format!(
            "key prefix {prefix:?} leaves no room for keys within max_key_bytes {} (needs at least {needed})",
            limit.max_key_bytes
        )
    })
}

/// What a rule gets from the top of the rules file.
struct RuleDefaults<'a> {
    global_prefix: &'a str,
    limit: KeyLimit,
    budget: u32,
    on_oversize: OversizePolicy,
}

fn oversize_policy(doc: OversizeDoc) -> OversizePolicy {
    match doc {
        OversizeDoc::Glob => OversizePolicy::Glob,
        OversizeDoc::Fallback => OversizePolicy::Fallback,
        OversizeDoc::Table => OversizePolicy::Table,
    }
}

fn compile_rule(
    doc: RuleDoc,
    at: Position,
    cx: &RuleCx<'_>,
    defaults: &RuleDefaults<'_>,
) -> Result<CompiledRule, RulesError> {
    let (global_prefix, limit) = (defaults.global_prefix, defaults.limit);
    let table =
        TableName::parse(&doc.table.value).map_err(|m| cx.err(Position::of(&doc.table), m))?;

    let (ops, on_explicit) = match &doc.on {
        None => (OpSet::ALL, false),
        Some(list) => {
            if list.value.is_empty() {
                return Err(cx.err(
                    Position::of(list),
                    "`on` is empty (leave it out to react to every operation)",
                ));
            }
            let mut ops = OpSet::default();
            for op in &list.value {
                let o = match op.value {
                    OpDoc::Insert => Op::Insert,
                    OpDoc::Update => Op::Update,
                    OpDoc::Delete => Op::Delete,
                    OpDoc::Truncate => Op::Truncate,
                };
                if !ops.insert(o) {
                    return Err(cx.err(
                        Position::of(op),
                        format!("operation {o} is listed twice in `on`"),
                    ));
                }
            }
            (ops, true)
        }
    };

    let mut key_prefix = global_prefix.to_owned();
    if let Some(p) = &doc.prefix {
        key_prefix.push_str(&p.value);
        if let Some(msg) = prefix_fits(&key_prefix, limit) {
            return Err(cx.err(Position::of(p), msg));
        }
    }
    let pattern_prefix = glob_escape(&key_prefix);

    let mut rule = CompiledRule {
        table,
        ops,
        when: None,
        key_prefix,
        pattern_prefix,
        const_keys: Vec::new(),
        const_tags: Vec::new(),
        const_patterns: Vec::new(),
        templates: Vec::new(),
        max_keys_per_tx: doc.max_keys_per_tx.map_or(defaults.budget, |m| m.value),
        on_oversize: doc
            .on_oversize
            .as_ref()
            .map_or(defaults.on_oversize, |o| oversize_policy(o.value)),
        at: Vec::new(),
        refresh: doc.refresh.as_ref().is_some_and(|r| r.value),
    };
    if let Some(refresh) = doc.refresh.as_ref().filter(|r| r.value) {
        if doc.keys.is_empty() {
            return Err(cx.err(
                Position::of(refresh),
                "refresh: true needs keys: the refresh stream carries the rule's keys",
            ));
        }
    }
    for (i, entry) in doc.at.iter().enumerate() {
        let at = Position::of(entry);
        if doc.at[..i].iter().any(|e| e.value == entry.value) {
            return Err(cx.err(at, format!("duplicate at template {:?}", entry.value)));
        }
        let template = Template::parse(&entry.value).map_err(|m| cx.err(at, m))?;
        let single = {
            let mut holes = template.holes();
            match (holes.next(), holes.next()) {
                (Some(h), None) => !h.hash && template.literal_text().is_empty(),
                _ => false,
            }
        };
        if !single {
            return Err(cx.err(
                at,
                format!(
                    "at template {:?} must be one placeholder naming a timestamp column, \
                     like \"{{ends_at}}\"",
                    entry.value
                ),
            ));
        }
        if let Some(why) = never_renders(&template, ops) {
            return Err(cx.err(at, format!("at template {:?} {why}", entry.value)));
        }
        rule.at.push(TemplateEntry {
            // Bound apart from the key templates (see `bind_rule`).
            kind: Kind::Key,
            source: entry.value.clone(),
            at,
            template,
        });
    }

    if doc.keys.is_empty() && doc.tags.is_empty() && doc.patterns.is_empty() {
        return Err(cx.err(
            at,
            "the rule has no keys, tags or patterns: it would invalidate nothing",
        ));
    }
    for (kind, list) in [
        (Kind::Key, &doc.keys),
        (Kind::Tag, &doc.tags),
        (Kind::Pattern, &doc.patterns),
    ] {
        for (i, entry) in list.iter().enumerate() {
            let at = Position::of(entry);
            if list[..i].iter().any(|e| e.value == entry.value) {
                return Err(cx.err(
                    at,
                    format!("duplicate {} template {:?}", kind.as_str(), entry.value),
                ));
            }
            let template = Template::parse(&entry.value).map_err(|m| cx.err(at, m))?;
            if let Some(why) = never_renders(&template, ops) {
                return Err(cx.err(
                    at,
                    format!("{} template {:?} {why}", kind.as_str(), entry.value),
                ));
            }
            if template.is_constant() {
                let text = template.literal_text();
                match kind {
                    Kind::Key => {
                        let mut full = rule.key_prefix.clone();
                        full.push_str(&text);
                        let key = fit_long_key(full, rule.key_prefix.len(), limit).ok_or_else(|| {
                            cx.err(
                                at,
                                format!(
                                    "key {:?} is longer than max_key_bytes ({}) and on_long_key is refuse",
                                    entry.value, limit.max_key_bytes
                                ),
                            )
                        })?;
                        rule.const_keys.push(key);
                    }
                    Kind::Tag => rule.const_tags.push(text),
                    Kind::Pattern => rule
                        .const_patterns
                        .push(format!("{}{text}", rule.pattern_prefix)),
                }
            } else {
                rule.templates.push(TemplateEntry {
                    kind,
                    source: entry.value.clone(),
                    at,
                    template,
                });
            }
        }
    }

    if on_explicit
        && ops.contains(Op::Truncate)
        && !rule.templates.is_empty()
        && !rule.has_fallback()
    {
        return Err(cx.err(
            doc.on.as_ref().map(Position::of).unwrap_or_default(),
            "the rule reacts to truncate but has no tag or pattern without placeholders: \
             TRUNCATE has no row values, so it would invalidate none of the rule's templates",
        ));
    }

    check_oversize_cover(
        &rule,
        doc.on_oversize.as_ref().map_or(at, Position::of),
        cx,
        limit,
    )?;

    if let Some(when) = &doc.when {
        rule.when = Some(compile_cond(&when.value, Position::of(when), cx)?);
    }
    Ok(rule)
}

/// Refuses an `on_oversize` that could not stand in for the rule's pattern
/// templates: `fallback` without a placeholder-free tag or pattern, or a
/// glob that is itself longer than `max_key_bytes`.
fn check_oversize_cover(
    rule: &CompiledRule,
    at: Position,
    cx: &RuleCx<'_>,
    limit: KeyLimit,
) -> Result<(), RulesError> {
    let mut patterns = rule
        .templates
        .iter()
        .filter(|t| t.kind == Kind::Pattern)
        .peekable();
    if patterns.peek().is_none() {
        return Ok(());
    }
    match rule.on_oversize {
        OversizePolicy::Fallback if !rule.has_fallback() => Err(cx.err(
            at,
            "on_oversize is fallback but the rule has no tag or pattern without placeholders to fall back to",
        )),
        OversizePolicy::Glob => match patterns.find(|t| rule.glob_of(t).len() > limit.max_key_bytes) {
            Some(t) => Err(cx.err(
                t.at,
                format!(
                    "pattern template {:?}: its glob, which stands in for a pattern longer than max_key_bytes ({}), is itself longer",
                    t.source, limit.max_key_bytes
                ),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Why a template can never render under `ops`, if it cannot.
fn never_renders(t: &Template<String>, ops: OpSet) -> Option<&'static str> {
    if t.is_constant() {
        return None;
    }
    let row_ops = [Op::Insert, Op::Update, Op::Delete]
        .into_iter()
        .any(|o| ops.contains(o));
    let (old, new) = (t.reads(Side::Old), t.reads(Side::New));
    if !row_ops {
        Some("has placeholders, but the rule only reacts to truncate, which has no row")
    } else if old && new && !ops.contains(Op::Update) {
        Some("reads both old and new values, which only an update has, but the rule does not react to update")
    } else if old && !ops.contains(Op::Update) && !ops.contains(Op::Delete) {
        Some("reads old values, but the rule reacts to neither update nor delete")
    } else if new && !ops.contains(Op::Insert) && !ops.contains(Op::Update) {
        Some("reads new values, but the rule reacts to neither insert nor update")
    } else {
        None
    }
}

fn named(s: &Spanned<String>, cx: &RuleCx<'_>) -> Result<Named, RulesError> {
    let at = Position::of(s);
    if s.value.is_empty() {
        return Err(cx.err(at, "empty column name in when"));
    }
    Ok(Named {
        name: s.value.clone(),
        at,
    })
}

fn compile_cond(doc: &CondDoc, at: Position, cx: &RuleCx<'_>) -> Result<Cond<Named>, RulesError> {
    if doc.terms.is_empty() {
        return Err(cx.err(
            at,
            "empty condition (expected changed, all, any, not, old or new)",
        ));
    }
    let mut terms = Vec::with_capacity(doc.terms.len());
    for (key, term) in &doc.terms {
        let key_at = Position::of(key);
        match term {
            TermDoc::Changed(cols) => {
                if cols.value.is_empty() {
                    return Err(cx.err(key_at, "`changed` lists no column"));
                }
                let cols = cols
                    .value
                    .iter()
                    .map(|c| named(c, cx))
                    .collect::<Result<_, _>>()?;
                terms.push(Cond::Changed(cols));
            }
            TermDoc::All(list) | TermDoc::Any(list) => {
                if list.value.is_empty() {
                    return Err(cx.err(key_at, format!("`{}` lists no condition", key.value)));
                }
                let conds = list
                    .value
                    .iter()
                    .map(|c| compile_cond(&c.value, Position::of(c), cx))
                    .collect::<Result<Vec<_>, _>>()?;
                terms.push(if matches!(term, TermDoc::All(_)) {
                    Cond::All(conds)
                } else {
                    Cond::Any(conds)
                });
            }
            TermDoc::Not(inner) => {
                terms.push(Cond::Not(Box::new(compile_cond(
                    &inner.value,
                    Position::of(inner),
                    cx,
                )?)));
            }
            TermDoc::Compare(side, tests) => {
                terms.extend(compile_side(*side, &tests.value, key_at, cx)?)
            }
        }
    }
    Ok(if terms.len() == 1 {
        terms.pop().unwrap_or(Cond::All(Vec::new()))
    } else {
        Cond::All(terms)
    })
}

fn compile_side(
    side: crate::condition::CmpSide,
    doc: &SideDoc,
    at: Position,
    cx: &RuleCx<'_>,
) -> Result<Vec<Cond<Named>>, RulesError> {
    if doc.tests.is_empty() {
        return Err(cx.err(at, "comparison names no column"));
    }
    doc.tests
        .iter()
        .map(|(column, test)| {
            let column = named(column, cx)?;
            let test = match test {
                TestDoc::IsNull => Test::IsNull,
                TestDoc::NotNull => Test::NotNull,
                TestDoc::Eq(v) => Test::Eq(v.as_str().into()),
                TestDoc::Ne(v) => Test::Ne(v.as_str().into()),
                TestDoc::In(vs) | TestDoc::NotIn(vs) => {
                    if vs.is_empty() {
                        return Err(cx.err(
                            column.at,
                            format!("empty list in the test of column {:?}", column.name),
                        ));
                    }
                    let set = vs.iter().map(|v| v.as_str().into()).collect();
                    if matches!(test, TestDoc::In(_)) {
                        Test::In(set)
                    } else {
                        Test::NotIn(set)
                    }
                }
            };
            Ok(Cond::Compare { side, column, test })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = glob_str;
        assert!(g("orders_*", "orders_2024"));
        assert!(g("orders_*", "orders_"));
        assert!(!g("orders_*", "order"));
        assert!(g("*", ""));
        assert!(g("a?c", "abc"));
        assert!(g("a?c", "aéc"), "? is one character");
        assert!(!g("a?c", "ac"));
        assert!(g("*a*b*", "xxaxxbxx"));
        assert!(!g("*a*b", "xxbxxa"));
        assert!(g("products", "products"));
        assert!(!g("products", "products2"));
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("products"),
            Ok(TableName::new("public", "products"))
        );
        assert_eq!(
            TableName::parse("shop.items"),
            Ok(TableName::new("shop", "items"))
        );
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".b").is_err());
        assert!(TableName::parse("a.").is_err());
        assert!(TableName::parse("my table").is_err());
        let g = TableName::parse("public.orders_*").expect("glob");
        assert!(g.is_glob());
        assert!(g.matches("public", "orders_2025"));
        assert!(!g.matches("shop", "orders_2025"));
        assert_eq!(g.to_string(), "public.orders_*");
    }
}

#[cfg(test)]
mod load_tests;

#[cfg(test)]
mod coverage_tests {
    use super::*;

    #[test]
    fn coverage_turns_templates_into_globs() {
        let rules = RuleSet::from_yaml(
            r#"
version: 1
prefix: "app:"
rules:
  - table: products
    keys: ["product:{id}", "static:home", "pair:{a}{b}", "lit*:{id}"]
    tags: ["category:{category_id}", "products"]
    patterns: ["list:{category_id}:*", "search:*"]
"#,
            "rules.yaml",
        )
        .unwrap();
        let c = rules.coverage();
        assert_eq!(c.keys, ["app:static:home"]);
        assert_eq!(c.tags, ["products"]);
        assert_eq!(
            c.patterns,
            [
                "app:search:*",
                "app:product:*",
                "app:pair:*",
                "app:lit\\*:*",
                "app:list:*:*",
                "app:#*"
            ]
        );
        assert_eq!(c.tag_globs, ["category:*"]);
    }
}

#[cfg(test)]
mod one_rule_tests {
    use super::*;
    use crate::{Datum, Invalidations, TxBudget};

    const RULES: &str = r#"
version: 1
prefix: "app:"
rules:
  - table: public.products
    keys: ["product:{id}", "static"]
    tags: ["category:{category_id}", "products"]
  - table: products
    on: [update]
    when: { new: { price: { eq: 1.50 } } }
    tags: ["cheap:{{{new.name:hash}}}", "products"]
    patterns: ["list:{old.category_id}:*"]
  - table: public.orders
    keys: ["order:{id}"]
"#;

    fn set() -> RuleSet {
        RuleSet::from_yaml(RULES, "rules.yaml").unwrap()
    }

    const COLUMNS: [&str; 4] = ["id", "category_id", "price", "name"];

    fn alone(set: &RuleSet, index: usize) -> BoundTable {
        set.bind_only(index, "public", "products", &COLUMNS)
            .unwrap()
            .expect("the rule names products")
    }

    fn update(table: &BoundTable) -> Invalidations {
        let old = [
            Datum::Text("1"),
            Datum::Text("3"),
            Datum::Text("2"),
            Datum::Text("a"),
        ];
        let new = [
            Datum::Text("1"),
            Datum::Text("4"),
            Datum::Text("1.50"),
            Datum::Text("a"),
        ];
        let mut out = Invalidations::default();
        table.evaluate(
            Op::Update,
            Some(&old),
            Some(&new),
            &mut TxBudget::default(),
            &mut out,
        );
        out
    }

    #[test]
    fn bind_only_evaluates_one_rule_under_the_set_settings() {
        let set = set();
        let all = set.bind("public", "products", &COLUMNS).unwrap().unwrap();
        assert_eq!(all.rule_indexes(), [0, 1]);
        let first = alone(&set, 0);
        assert_eq!(first.rule_indexes(), [0]);
        let out = update(&first);
        assert_eq!(out.keys, ["app:static", "app:product:1"]);
        assert_eq!(out.tags, ["products", "category:3", "category:4"]);
        assert!(out.patterns.is_empty());

        // The second rule keeps its number, its condition and the global prefix.
        let second = alone(&set, 1);
        assert_eq!(second.rule_indexes(), [1]);
        let out = update(&second);
        assert!(out.keys.is_empty());
        assert_eq!(out.tags[0], "products");
        assert!(out.tags[1].starts_with("cheap:{"), "{:?}", out.tags);
        assert_eq!(out.patterns, ["app:list:3:*"]);
        assert_eq!(second.needs_old_values(), ["category_id"]);
        assert_eq!(all.needs_old_values(), ["id", "category_id"]);
    }

    #[test]
    fn bind_only_elsewhere_is_none_and_errors_name_the_rule() {
        let set = set();
        assert!(set
            .bind_only(2, "public", "products", &COLUMNS)
            .unwrap()
            .is_none());
        assert!(set
            .bind_only(3, "public", "products", &COLUMNS)
            .unwrap()
            .is_none());
        let e = set
            .bind_only(1, "public", "products", &["id", "category_id"])
            .expect_err("rule 2 reads price");
        assert_eq!(e.column_name(), "price");
        assert_eq!(e.rule().index, 1);
        // Rule 1 alone does not read what rule 2 reads.
        assert!(set
            .bind_only(0, "public", "products", &["id", "category_id"])
            .unwrap()
            .is_some());
    }

    #[test]
    fn template_columns_follow_the_template_grammar() {
        let set = set();
        assert_eq!(
            set.template_columns(0),
            [(Side::Row, "id"), (Side::Row, "category_id")]
        );
        // `{{` is a literal brace, `:hash` a modifier; constants read nothing.
        assert_eq!(
            set.template_columns(1),
            [(Side::New, "name"), (Side::Old, "category_id")]
        );
        assert!(set.template_columns(3).is_empty());
    }
}
