//! The relation cache: what pgoutput told us about each table, bound to the
//! rules that match it.
//!
//! pgoutput describes a table with a Relation message before its first change
//! in a session and again whenever its schema changed, so the cache is
//! rebuilt entry by entry as the stream goes. Binding happens here, once per
//! Relation message, so that evaluating a row is index lookups only.
//!
//! Binary mode (`source.binary`): values arrive in their types' binary send
//! format, and the rules read text. Binding then also decides, per column
//! the rules read, how its values are rendered ([`crate::binary`]), and
//! refuses a column whose type has no rendering: a key that would silently
//! differ from text mode's is worse than not starting. [`check_binary`] does
//! the same against the catalog before streaming, so that such rules stop
//! walbust at start-up rather than at the table's first change, and resolves
//! enums and domains, which the stream only names by OID. [`TupleRow`]
//! renders the values a row's rules read into a reused buffer.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use tokio_postgres::Client;
use walbust_pgoutput::{OldTuple, ReplicaIdentity, Tuple, TypeMsg, Value};
use walbust_rules::{BoundTable, Datum, RowValues, RuleSet};

use crate::binary::Rendering;
use crate::error::{SourceError, StreamError};
use crate::metrics as m;

/// One table as described by the latest Relation message.
pub struct RelationEntry {
    /// `schema.table`, for messages and the live view.
    pub name: String,
    /// Which columns belong to the replica identity key.
    pub key_columns: Vec<bool>,
    pub replica_identity: ReplicaIdentity,
    /// The rules bound to this table's columns; `None` when no rule matches.
    pub bound: Option<BoundTable>,
    /// Binary mode: every column the bound rules read, with the rendering
    /// of its type. Empty in text mode.
    renderings: ColumnRenderings,
    /// The description itself, kept to bind again when the rules change.
    relation: walbust_pgoutput::Relation,
}

/// Renderings of the types that are not built in (enums, domains), by OID.
pub type TypeRenderings = HashMap<u32, Rendering>;

/// Column indexes the rules read, each with the rendering of its type.
type ColumnRenderings = Vec<(usize, Rendering)>;

#[derive(Default)]
pub struct RelationCache {
    entries: HashMap<u32, RelationEntry>,
    /// Values arrive in binary format (`source.binary`).
    binary: bool,
    /// Non-built-in types resolved by [`check_binary`].
    types: TypeRenderings,
    /// `schema.name` of non-built-in types from Type messages, for errors.
    type_names: HashMap<u32, String>,
    scratch: Scratch,
}

/// Reused buffers for the text of one change's binary values.
#[derive(Default)]
pub struct Scratch {
    pub old: Rendered,
    pub new: Rendered,
}

impl RelationCache {
    /// An empty cache; `binary` tells whether the stream sends binary values.
    pub fn new(binary: bool) -> Self {
        RelationCache {
            binary,
            ..RelationCache::default()
        }
    }

    /// Whether the stream sends binary values.
    pub fn binary(&self) -> bool {
        self.binary
    }

    /// Renderings of non-built-in types, from [`check_binary`]; they apply
    /// to tables described from now on.
    pub fn set_type_renderings(&mut self, types: TypeRenderings) {
        self.types = types;
    }

    /// Adds renderings of types created since [`check_binary`] ran (a
    /// column changed to a new enum); they apply to tables described from
    /// now on.
    pub fn add_type_renderings(&mut self, types: TypeRenderings) {
        self.types.extend(types);
    }

    /// Binary mode: the type OIDs of `rel`'s columns that have no known
    /// rendering, each once. Empty in text mode.
    pub fn unrendered_types(&self, rel: &walbust_pgoutput::Relation) -> Vec<u32> {
        if !self.binary {
            return Vec::new();
        }
        let mut oids: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| rendering_of(*oid, &self.types).is_none())
            .collect();
        oids.sort_unstable();
        oids.dedup();
        oids
    }

    /// Forgets every table (a new session describes them again); the mode
    /// and the type renderings stay.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.type_names.clear();
    }

    /// Notes a Type message: only its name is of use, for errors.
    pub fn note_type(&mut self, ty: &TypeMsg) {
        let name = if ty.namespace.is_empty() {
            ty.name.clone()
        } else {
            format!("{}.{}", ty.namespace, ty.name)
        };
        self.type_names.insert(ty.id, name);
    }

    /// Records (or replaces) a table's description and binds the rules to it.
    ///
    /// A rule that cannot be rendered against this description is bound in
    /// degraded form ([`walbust_rules::RuleSet::bind_lenient`]), counted and
    /// warned about once per description: Postgres decodes older changes
    /// with the table as it was, and a column added, renamed or left out of
    /// the publication since must not stop invalidation of every table on
    /// every start. The same goes for old values the replica identity no
    /// longer sends. In binary mode a rule reading a column walbust cannot
    /// render is an error: a key that would differ from text mode's.
    pub fn update(
        &mut self,
        rel: &walbust_pgoutput::Relation,
        rules: &RuleSet,
    ) -> Result<(), StreamError> {
        let name = format!("{}.{}", rel.namespace, rel.name);
        let (bound, renderings) = self.bind(rel, &name, rules, false)?;
        // Postgres sends the same description again after any cache
        // invalidation; a warning belongs to a new description only.
        let known = self
            .entries
            .get(&rel.id)
            .is_some_and(|e| e.relation == *rel);
        if !known {
            report_degraded(&name, bound.as_ref());
        }
        self.entries.insert(
            rel.id,
            RelationEntry {
                name,
                key_columns: rel.columns.iter().map(|c| c.is_key()).collect(),
                replica_identity: rel.replica_identity,
                bound,
                renderings,
                relation: rel.clone(),
            },
        );
        Ok(())
    }

    pub fn get(&self, relation_id: u32) -> Result<&RelationEntry, StreamError> {
        self.entries
            .get(&relation_id)
            .ok_or(StreamError::UnknownRelation { relation_id })
    }

    /// A table's entry with the buffers its rows' binary values are
    /// rendered into (see [`TupleRow::rendered`]).
    pub fn for_row(
        &mut self,
        relation_id: u32,
    ) -> Result<(&RelationEntry, &mut Scratch), StreamError> {
        let entry = self
            .entries
            .get(&relation_id)
            .ok_or(StreamError::UnknownRelation { relation_id })?;
        Ok((entry, &mut self.scratch))
    }

    /// Binds every known table to new rules. All or nothing: if any table
    /// fails to bind, the cache keeps the old bindings and the error says why.
    /// New rules must fit the descriptions strictly (a rule naming a column
    /// the table does not have is a mistake in the file, which the reload
    /// refuses); what the replica identity does not send still degrades.
    pub fn rebind(&mut self, rules: &RuleSet) -> Result<(), StreamError> {
        let mut bound = Vec::with_capacity(self.entries.len());
        for (id, entry) in &self.entries {
            bound.push((*id, self.bind(&entry.relation, &entry.name, rules, true)?));
        }
        for (id, (b, renderings)) in bound {
            if let Some(entry) = self.entries.get_mut(&id) {
                report_degraded(&entry.name, b.as_ref());
                entry.bound = b;
                entry.renderings = renderings;
            }
        }
        Ok(())
    }

    /// Binds `rules` to `rel`, leniently unless `strict` (then a column the
    /// description lacks is an error).
    fn bind(
        &self,
        rel: &walbust_pgoutput::Relation,
        name: &str,
        rules: &RuleSet,
        strict: bool,
    ) -> Result<(Option<BoundTable>, ColumnRenderings), StreamError> {
        let columns: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        if strict {
            rules
                .bind(&rel.namespace, &rel.name, &columns)
                .map_err(|source| StreamError::Bind {
                    table: name.to_string(),
                    source,
                })?;
        }
        let bound = rules.bind_lenient(&rel.namespace, &rel.name, &columns, &old_sent(rel));
        let mut renderings = Vec::new();
        if let (true, Some(table)) = (self.binary, &bound) {
            for index in table.used_columns() {
                let Some(column) = rel.columns.get(index) else {
                    continue;
                };
                let oid = column.type_oid;
                let rendering =
                    rendering_of(oid, &self.types).ok_or_else(|| StreamError::BinaryValue {
                        table: name.to_string(),
                        column: column.name.clone(),
                        type_name: self
                            .type_names
                            .get(&oid)
                            .cloned()
                            .unwrap_or_else(|| format!("with OID {oid}")),
                    })?;
                renderings.push((index, rendering));
            }
        }
        Ok((bound, renderings))
    }
}

/// Per column, whether Update and Delete send its old value: every column
/// under `REPLICA IDENTITY FULL`, the key's otherwise (none under NOTHING,
/// whose key flags are all clear).
fn old_sent(rel: &walbust_pgoutput::Relation) -> Vec<bool> {
    let full = rel.replica_identity == ReplicaIdentity::Full;
    rel.columns.iter().map(|c| full || c.is_key()).collect()
}

/// Counts and warns about the rules `bound` binds in degraded form. Names
/// rules, columns and templates only, never row values.
fn report_degraded(table: &str, bound: Option<&BoundTable>) {
    for d in bound.map(BoundTable::degraded).unwrap_or_default() {
        let fallback = if d.escalates {
            "the rule's placeholder-free tags and patterns".to_owned()
        } else {
            format!("patterns {:?}", d.fallback)
        };
        let reasons = [
            (
                m::DEGRADED_MISSING_COLUMN,
                &d.missing_columns,
                "the table's description in the replication stream lacks columns a rule reads \
                 (a change written before the column existed, or a publication column list); \
                 the rule falls back until the table is described again",
            ),
            (
                m::DEGRADED_OLD_NOT_SENT,
                &d.old_not_sent,
                "the table's replica identity does not send old values a rule reads; updates \
                 and deletes fall back (ALTER TABLE ... REPLICA IDENTITY FULL restores them)",
            ),
        ];
        for (reason, columns, message) in reasons {
            if columns.is_empty() {
                continue;
            }
            metrics::counter!(m::DEGRADED_BINDINGS, m::LABEL_REASON => reason).increment(1);
            tracing::warn!(
                table,
                rule = d.rule + 1,
                ?columns,
                fallback,
                uncovered_tags = ?d.uncovered,
                "{message}"
            );
        }
    }
}

fn rendering_of(type_oid: u32, types: &TypeRenderings) -> Option<Rendering> {
    Rendering::for_type(type_oid).or_else(|| types.get(&type_oid).copied())
}

/// The text of one row's rendered binary values, reused from row to row so
/// that rendering allocates only while the buffers grow.
#[derive(Default)]
pub struct Rendered {
    text: String,
    /// Per column: where its text lies in `text`, if it was rendered.
    spans: Vec<Option<Range<usize>>>,
}

impl Rendered {
    /// Renders the binary values of the `renderings` columns of `tuple`.
    /// A value whose bytes do not fit its type stays unrendered: the rules
    /// see it as not arrived, as they do invalid UTF-8 in text mode.
    fn fill(&mut self, tuple: &Tuple, renderings: &[(usize, Rendering)]) {
        self.text.clear();
        self.spans.clear();
        self.spans.resize(tuple.len(), None);
        for &(column, rendering) in renderings {
            let Some(Value::Binary(bytes)) = tuple.get(column) else {
                continue;
            };
            let start = self.text.len();
            if rendering.render(bytes, &mut self.text).is_ok() {
                if let Some(span) = self.spans.get_mut(column) {
                    *span = Some(start..self.text.len());
                }
            }
        }
    }

    fn get(&self, column: usize) -> Option<&str> {
        let span = self.spans.get(column)?.clone()?;
        self.text.get(span)
    }
}

/// A decoded tuple seen through the rules' eyes.
pub struct TupleRow<'a> {
    tuple: &'a Tuple,
    /// Set for a key-only old tuple ('K'): its non-key columns are sent as
    /// nulls but are in truth unknown.
    key_only: Option<&'a [bool]>,
    /// Binary mode: the text of the binary values the rules read.
    rendered: Option<&'a Rendered>,
}

impl<'a> TupleRow<'a> {
    pub fn new(tuple: &'a Tuple) -> Self {
        TupleRow {
            tuple,
            key_only: None,
            rendered: None,
        }
    }

    pub fn old(old: &'a OldTuple, key_columns: &'a [bool]) -> Self {
        match old {
            OldTuple::Key(t) => TupleRow {
                tuple: t,
                key_only: Some(key_columns),
                rendered: None,
            },
            OldTuple::Full(t) => TupleRow::new(t),
        }
    }

    /// Binary mode: renders the binary values of the columns `entry`'s
    /// rules read into `scratch`, where [`RowValues::get`] finds them. Does
    /// nothing in text mode.
    pub fn rendered(mut self, entry: &RelationEntry, scratch: &'a mut Rendered) -> Self {
        if !entry.renderings.is_empty() {
            scratch.fill(self.tuple, &entry.renderings);
            self.rendered = Some(scratch);
        }
        self
    }
}

impl RowValues for TupleRow<'_> {
    fn get(&self, column: usize) -> Datum<'_> {
        if let Some(keys) = self.key_only {
            if !keys.get(column).copied().unwrap_or(false) {
                return Datum::Absent;
            }
        }
        match self.tuple.get(column) {
            None => Datum::Absent,
            Some(Value::Null) => Datum::Null,
            Some(Value::UnchangedToast) => Datum::Unchanged,
            // Postgres sends text in the server encoding; walbust requires
            // UTF8 databases, so anything else is treated as not arrived
            // rather than turned into a wrong key.
            Some(Value::Text(bytes)) => match std::str::from_utf8(bytes) {
                Ok(s) => Datum::Text(s),
                Err(_) => Datum::Absent,
            },
            // Rendered when bound; a column no rule reads, or a malformed
            // value, stays unknown.
            Some(Value::Binary(_)) => match self.rendered.and_then(|r| r.get(column)) {
                Some(s) => Datum::Text(s),
                None => Datum::Absent,
            },
        }
    }
}

/// One column of a published table, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    pub type_oid: u32,
    /// `format_type`, for messages.
    pub type_name: String,
}

/// Binary mode, before streaming: checks that the rules read no column of a
/// published table whose type walbust cannot render, and resolves the
/// renderings of the non-built-in types of published columns (an enum
/// renders as its label, a domain as its base type).
///
/// Checks the columns the catalog lists; a publication column list that
/// leaves out a column the rules read fails at bind time instead.
pub async fn check_binary(
    client: &Client,
    publication: &str,
    rules: &RuleSet,
) -> Result<TypeRenderings, StreamError> {
    let query = |what| move |e| StreamError::Source(SourceError::query(what, e));
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, a.attname::text, a.atttypid, \
                    format_type(a.atttypid, a.atttypmod) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE pt.pubname = $1 \
             ORDER BY 1, 2, a.attnum",
            &[&publication],
        )
        .await
        .map_err(query("list the published columns"))?;
    let mut tables: BTreeMap<(String, String), Vec<CatalogColumn>> = BTreeMap::new();
    for row in &rows {
        tables
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(CatalogColumn {
                name: row.get(2),
                type_oid: row.get(3),
                type_name: row.get(4),
            });
    }
    let mut others: Vec<u32> = tables
        .values()
        .flatten()
        .map(|c| c.type_oid)
        .filter(|oid| Rendering::for_type(*oid).is_none())
        .collect();
    others.sort_unstable();
    others.dedup();
    let types = resolve_types(client, &others).await?;
    check_tables(&tables, &types, rules)?;
    Ok(types)
}

/// Renderings of the non-built-in types `oids` from the catalog, each type
/// followed through its domains to the type underneath. Types without a
/// rendering (or unknown to the catalog) are left out.
pub async fn resolve_types(client: &Client, oids: &[u32]) -> Result<TypeRenderings, StreamError> {
    let query = |what| move |e| StreamError::Source(SourceError::query(what, e));
    let rows = client
        .query(
            "WITH RECURSIVE chain(start, cur) AS ( \
                 SELECT t.oid, t.oid FROM pg_type t WHERE t.oid = ANY ($1::oid[]) \
                 UNION ALL \
                 SELECT c.start, t.typbasetype FROM chain c JOIN pg_type t ON t.oid = c.cur \
                 WHERE t.typtype = 'd' \
             ) \
             SELECT c.start, c.cur, t.typtype::text FROM chain c JOIN pg_type t ON t.oid = c.cur \
             WHERE t.typtype <> 'd'",
            &[&oids],
        )
        .await
        .map_err(query("resolve column types"))?;
    let resolved: Vec<(u32, u32, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(type_renderings(&resolved))
}

/// Renderings of non-built-in types from `(type, underlying type, its
/// typtype)`: a domain renders as what it is over, an enum (`e`) as text.
pub fn type_renderings(resolved: &[(u32, u32, String)]) -> TypeRenderings {
    resolved
        .iter()
        .filter_map(|(start, base, typtype)| {
            let rendering = match typtype.as_str() {
                "e" => Some(Rendering::Text),
                _ => Rendering::for_type(*base),
            };
            rendering.map(|r| (*start, r))
        })
        .collect()
}

/// The pure half of [`check_binary`]: binds `rules` to each table's columns
/// and refuses a column they read that has no rendering.
pub fn check_tables(
    tables: &BTreeMap<(String, String), Vec<CatalogColumn>>,
    types: &TypeRenderings,
    rules: &RuleSet,
) -> Result<(), StreamError> {
    for ((schema, table), columns) in tables {
        let name = format!("{schema}.{table}");
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let bound = rules
            .bind(schema, table, &names)
            .map_err(|source| StreamError::Bind {
                table: name.clone(),
                source,
            })?;
        let Some(bound) = bound else {
            continue;
        };
        for index in bound.used_columns() {
            let Some(column) = columns.get(index) else {
                continue;
            };
            if rendering_of(column.type_oid, types).is_none() {
                return Err(StreamError::BinaryValue {
                    table: name,
                    column: column.name.clone(),
                    type_name: column.type_name.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::oid;
    use bytes::Bytes;
    use walbust_pgoutput::{Column, Message, Relation};

    const POINT: u32 = 600;
    const MOOD: u32 = 16_390;

    fn relation(columns: &[(&str, u32)]) -> Relation {
        Relation {
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, (name, type_oid))| Column {
                    flags: u8::from(i == 0),
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn rules(yaml: &str) -> RuleSet {
        RuleSet::from_yaml(&format!("version: 1\nrules:\n{yaml}"), "rules.yaml").unwrap()
    }

    /// An Insert message's new tuple, from (kind, bytes) per column.
    fn tuple(values: &[(u8, &[u8])]) -> Tuple {
        let mut msg = vec![b'I'];
        msg.extend(7u32.to_be_bytes());
        msg.push(b'N');
        msg.extend((values.len() as u16).to_be_bytes());
        for (kind, bytes) in values {
            msg.push(*kind);
            if matches!(kind, b't' | b'b') {
                msg.extend((bytes.len() as i32).to_be_bytes());
                msg.extend(*bytes);
            }
        }
        match walbust_pgoutput::decode(&Bytes::from(msg)).unwrap() {
            Message::Insert(ins) => ins.new,
            other => panic!("{other:?}"),
        }
    }

    fn eval(cache: &mut RelationCache, tuple: &Tuple) -> Vec<String> {
        let (entry, scratch) = cache.for_row(7).unwrap();
        let row = TupleRow::new(tuple).rendered(entry, &mut scratch.new);
        let mut out = walbust_rules::Invalidations::default();
        entry.bound.as_ref().unwrap().evaluate(
            walbust_rules::Op::Insert,
            None,
            Some(&row),
            &mut walbust_rules::TxBudget::default(),
            &mut out,
        );
        out.keys
    }

    #[test]
    fn binary_values_render_as_text() {
        let set = rules(
            "  - table: t\n    keys: [\"k:{id}:{name}:{flag}\"]\n    when: { new: { mood: { eq: ok } } }\n",
        );
        let mut cache = RelationCache::new(true);
        cache.set_type_renderings(TypeRenderings::from([(MOOD, Rendering::Text)]));
        cache
            .update(
                &relation(&[
                    ("id", oid::INT8),
                    ("name", oid::VARCHAR),
                    ("flag", oid::BOOL),
                    ("mood", MOOD),
                    ("where", POINT),
                ]),
                &set,
            )
            .unwrap();
        let point = [0u8; 16];
        let row = tuple(&[
            (b'b', &(-5i64).to_be_bytes()),
            (b'b', b"ann"),
            (b'b', &[1]),
            (b'b', b"ok"),
            (b'b', &point),
        ]);
        assert_eq!(eval(&mut cache, &row), ["k:-5:ann:t"]);
        // The buffers are reused: a second row renders its own values.
        let row = tuple(&[
            (b'b', &42i64.to_be_bytes()),
            (b'b', b"bo"),
            (b'b', &[0]),
            (b'b', b"ok"),
            (b'b', &point),
        ]);
        assert_eq!(eval(&mut cache, &row), ["k:42:bo:f"]);
        // A malformed value is not arrived: no key from it.
        let row = tuple(&[
            (b'b', &[0, 1]),
            (b'b', b"x"),
            (b'b', &[1]),
            (b'b', b"ok"),
            (b'b', &point),
        ]);
        assert!(eval(&mut cache, &row).is_empty());
        // Text values (a type without a send function) pass as they are.
        let row = tuple(&[
            (b't', b"9"),
            (b'b', b"x"),
            (b'n', b""),
            (b'b', b"ok"),
            (b'n', b""),
        ]);
        assert!(eval(&mut cache, &row).is_empty(), "NULL flag skips the key");
        let row = tuple(&[
            (b't', b"9"),
            (b'b', b"x"),
            (b't', b"t"),
            (b'b', b"ok"),
            (b'n', b""),
        ]);
        assert_eq!(eval(&mut cache, &row), ["k:9:x:t"]);
    }

    #[test]
    fn binary_values_stay_unknown_in_text_mode() {
        let set = rules("  - table: t\n    keys: [\"k:{id}\"]\n");
        let mut cache = RelationCache::new(false);
        cache.update(&relation(&[("id", oid::INT4)]), &set).unwrap();
        let row = tuple(&[(b'b', &1i32.to_be_bytes())]);
        assert!(eval(&mut cache, &row).is_empty());
    }

    #[test]
    fn binary_mode_refuses_columns_without_rendering() {
        let reads_point = rules("  - table: t\n    keys: [\"k:{id}:{where}\"]\n");
        let mut cache = RelationCache::new(true);
        let rel = relation(&[("id", oid::INT4), ("where", POINT)]);
        let err = cache.update(&rel, &reads_point).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "table public.t: the rules read column where of type with OID 600, which binary mode \
             (source.binary: true) cannot render as text; use a column of another type in the \
             rules, or turn binary mode off"
        );
        // A condition reads the column too.
        let compares =
            rules("  - table: t\n    keys: [\"k:{id}\"]\n    when: { changed: [where] }\n");
        assert!(matches!(
            cache.update(&rel, &compares),
            Err(StreamError::BinaryValue { .. })
        ));
        // A column no rule reads may have any type.
        let ok = rules("  - table: t\n    keys: [\"k:{id}\"]\n");
        cache.update(&rel, &ok).unwrap();
        // Text mode renders nothing and refuses nothing.
        RelationCache::new(false)
            .update(&rel, &reads_point)
            .unwrap();
        // A Type message names a user-defined type in the error.
        let mut cache = RelationCache::new(true);
        cache.note_type(&TypeMsg {
            id: MOOD,
            namespace: "public".into(),
            name: "mood".into(),
        });
        let err = cache
            .update(
                &relation(&[("id", oid::INT4), ("where", MOOD)]),
                &reads_point,
            )
            .expect_err("refused");
        assert!(err.to_string().contains("of type public.mood,"), "{err}");
    }

    #[test]
    fn a_type_learned_later_renders_the_next_description() {
        let set = rules("  - table: t\n    keys: [\"k:{id}:{mood}\"]\n");
        let mut cache = RelationCache::new(true);
        let rel = relation(&[("id", oid::INT4), ("mood", MOOD), ("where", POINT)]);
        assert!(cache.update(&rel, &set).is_err());
        // Every column type without a rendering, whether a rule reads it
        // or not: the catalog is asked once for all of them.
        assert_eq!(cache.unrendered_types(&rel), [POINT, MOOD]);
        cache.add_type_renderings(TypeRenderings::from([(MOOD, Rendering::Text)]));
        assert_eq!(cache.unrendered_types(&rel), [POINT]);
        cache.update(&rel, &set).unwrap();
        let row = tuple(&[(b'b', &3i32.to_be_bytes()), (b'b', b"ok"), (b'n', b"")]);
        assert_eq!(eval(&mut cache, &row), ["k:3:ok"]);
        // Text mode has nothing to learn.
        assert!(RelationCache::new(false).unrendered_types(&rel).is_empty());
    }

    #[test]
    fn rebind_in_binary_mode_is_all_or_nothing() {
        let mut cache = RelationCache::new(true);
        let rel = relation(&[("id", oid::INT4), ("where", POINT)]);
        cache
            .update(&rel, &rules("  - table: t\n    keys: [\"k:{id}\"]\n"))
            .unwrap();
        let bad = rules("  - table: t\n    keys: [\"k:{where}\"]\n");
        assert!(cache.rebind(&bad).is_err());
        let row = tuple(&[(b'b', &3i32.to_be_bytes()), (b'n', b"")]);
        assert_eq!(eval(&mut cache, &row), ["k:3"]);
    }

    #[test]
    fn an_older_description_degrades_the_rule_and_a_reload_stays_strict() {
        let set = rules("  - table: t\n    keys: [\"k:{id}\", \"k:{id}:{aa}\"]\n");
        let mut cache = RelationCache::new(false);
        // Written before `aa` existed: bound, not refused.
        let mut older = relation(&[("id", oid::INT4)]);
        older.replica_identity = ReplicaIdentity::Full;
        cache.update(&older, &set).unwrap();
        let bound = cache.get(7).unwrap().bound.as_ref().unwrap();
        assert_eq!(bound.degraded()[0].missing_columns, ["aa"]);
        assert_eq!(bound.degraded()[0].fallback, ["k:*:*", "#*"]);
        let row = tuple(&[(b't', b"5")]);
        assert_eq!(eval(&mut cache, &row), ["k:5"]);
        // A reload must fit the description as it is.
        assert!(matches!(cache.rebind(&set), Err(StreamError::Bind { .. })));
        // Described again with the column: bound in full.
        let mut newer = relation(&[("id", oid::INT4), ("aa", oid::TEXT)]);
        newer.replica_identity = ReplicaIdentity::Full;
        cache.update(&newer, &set).unwrap();
        let bound = cache.get(7).unwrap().bound.as_ref().unwrap();
        assert!(bound.degraded().is_empty());
    }

    #[test]
    fn old_values_follow_the_replica_identity() {
        let set = rules("  - table: t\n    keys: [\"fc:{cat}\"]\n");
        let mut rel = relation(&[("id", oid::INT4), ("cat", oid::INT4)]);
        rel.replica_identity = ReplicaIdentity::Full;
        assert_eq!(old_sent(&rel), [true, true]);
        let mut cache = RelationCache::new(false);
        cache.update(&rel, &set).unwrap();
        assert!(cache
            .get(7)
            .unwrap()
            .bound
            .as_ref()
            .unwrap()
            .degraded()
            .is_empty());
        rel.replica_identity = ReplicaIdentity::Default;
        assert_eq!(old_sent(&rel), [true, false]);
        cache.update(&rel, &set).unwrap();
        let bound = cache.get(7).unwrap().bound.as_ref().unwrap();
        assert_eq!(bound.degraded()[0].old_not_sent, ["cat"]);
        // A reload keeps what the identity does not send.
        cache.rebind(&set).unwrap();
        let bound = cache.get(7).unwrap().bound.as_ref().unwrap();
        assert_eq!(bound.degraded()[0].old_not_sent, ["cat"]);
    }

    #[test]
    fn catalog_check_names_table_column_and_type() {
        let col = |name: &str, type_oid, type_name: &str| CatalogColumn {
            name: name.into(),
            type_oid,
            type_name: type_name.into(),
        };
        let tables = BTreeMap::from([
            (
                ("public".to_string(), "t".to_string()),
                vec![
                    col("id", oid::INT4, "integer"),
                    col("mood", MOOD, "mood"),
                    col("spot", POINT, "point"),
                ],
            ),
            (
                ("public".to_string(), "other".to_string()),
                vec![col("spot", POINT, "point")],
            ),
        ]);
        let types = type_renderings(&[
            (MOOD, MOOD, "e".to_string()),
            (16_400, oid::INT8, "b".to_string()),
            (16_401, POINT, "b".to_string()),
        ]);
        assert_eq!(types.get(&MOOD), Some(&Rendering::Text));
        assert_eq!(types.get(&16_400), Some(&Rendering::Int8));
        assert_eq!(types.get(&16_401), None);
        let fine = rules("  - table: t\n    keys: [\"k:{id}:{mood}\"]\n");
        check_tables(&tables, &types, &fine).unwrap();
        let bad = rules("  - table: t\n    tags: [\"at:{old.spot}\"]\n");
        match check_tables(&tables, &types, &bad) {
            Err(StreamError::BinaryValue {
                table,
                column,
                type_name,
            }) => assert_eq!(
                (table.as_str(), column.as_str(), type_name.as_str()),
                ("public.t", "spot", "point")
            ),
            other => panic!("{other:?}"),
        }
    }
}
