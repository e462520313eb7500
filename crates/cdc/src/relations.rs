//! The relation cache: what pgoutput told us about each table, bound to the
//! rules that match it.
//!
//! pgoutput describes a table with a Relation message before its first change
//! in a session and again whenever its schema changed, so the cache is
//! rebuilt entry by entry as the stream goes. Binding happens here, once per
//! Relation message, so that evaluating a row is index lookups only.

use std::collections::HashMap;

use pgoutput::{OldTuple, ReplicaIdentity, Tuple, Value};
use rules::{BoundTable, Datum, RowValues, RuleSet};

use crate::error::StreamError;

/// One table as described by the latest Relation message.
pub struct RelationEntry {
    /// `schema.table`, for messages and the live view.
    pub name: String,
    /// Which columns belong to the replica identity key.
    pub key_columns: Vec<bool>,
    pub replica_identity: ReplicaIdentity,
    /// The rules bound to this table's columns; `None` when no rule matches.
    pub bound: Option<BoundTable>,
    /// The description itself, kept to bind again when the rules change.
    relation: pgoutput::Relation,
}

#[derive(Default)]
pub struct RelationCache {
    entries: HashMap<u32, RelationEntry>,
}

impl RelationCache {
    /// Records (or replaces) a table's description and binds the rules to it.
    /// A rule naming a column the table does not have is an error: running
    /// on would silently stop invalidating what that rule protects.
    pub fn update(&mut self, rel: &pgoutput::Relation, rules: &RuleSet) -> Result<(), StreamError> {
        let name = format!("{}.{}", rel.namespace, rel.name);
        let bound = bind(rel, &name, rules)?;
        self.entries.insert(
            rel.id,
            RelationEntry {
                name,
                key_columns: rel.columns.iter().map(|c| c.is_key()).collect(),
                replica_identity: rel.replica_identity,
                bound,
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

    /// Binds every known table to new rules. All or nothing: if any table
    /// fails to bind, the cache keeps the old bindings and the error says why.
    pub fn rebind(&mut self, rules: &RuleSet) -> Result<(), StreamError> {
        let mut bound = Vec::with_capacity(self.entries.len());
        for (id, entry) in &self.entries {
            bound.push((*id, bind(&entry.relation, &entry.name, rules)?));
        }
        for (id, b) in bound {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.bound = b;
            }
        }
        Ok(())
    }
}

fn bind(
    rel: &pgoutput::Relation,
    name: &str,
    rules: &RuleSet,
) -> Result<Option<BoundTable>, StreamError> {
    let columns: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    rules
        .bind(&rel.namespace, &rel.name, &columns)
        .map_err(|source| StreamError::Bind {
            table: name.to_string(),
            source,
        })
}

/// A decoded tuple seen through the rules' eyes.
pub struct TupleRow<'a> {
    tuple: &'a Tuple,
    /// Set for a key-only old tuple ('K'): its non-key columns are sent as
    /// nulls but are in truth unknown.
    key_only: Option<&'a [bool]>,
}

impl<'a> TupleRow<'a> {
    pub fn new(tuple: &'a Tuple) -> Self {
        TupleRow {
            tuple,
            key_only: None,
        }
    }

    pub fn old(old: &'a OldTuple, key_columns: &'a [bool]) -> Self {
        match old {
            OldTuple::Key(t) => TupleRow {
                tuple: t,
                key_only: Some(key_columns),
            },
            OldTuple::Full(t) => TupleRow::new(t),
        }
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
            Some(Value::Binary(_)) => Datum::Absent,
        }
    }
}
