//! The pure core of the reader: transport events in, pipeline items out.
//!
//! [`Assembler`] holds everything that needs no I/O: the relation cache,
//! the open transaction and its rule budget, and the invalidations its rows
//! produced so far. The reader feeds it events from the replication
//! connection and hands the items it emits to the pipeline; tests and the
//! fuzz target feed it directly. It never panics on any input: malformed
//! bytes and protocol violations are errors.
//!
//! Items always form `Begin, Changes*, Commit` sequences in commit order. A
//! transaction's changes are emitted in chunks of [`CHUNK_ENTRIES`] so that
//! a huge transaction streams through in bounded memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use walbust_publish::Item;
use walbust_rules::{Invalidations, Op, RuleSet, TxBudget};

use crate::error::StreamError;
use crate::metrics as m;
use crate::reader::{ChangeEvent, ChangeTap};
use crate::relations::{RelationCache, RelationEntry, TupleRow};

/// Prefix of the logical messages that carry explicit invalidations
/// (`pg_logical_emit_message(true, 'walbust', '{"keys":[...]}')`).
pub const EXPLICIT_PREFIX: &str = "walbust";

/// Pending invalidations of the open transaction are handed on once they
/// hold this many entries, so a huge transaction streams through.
pub const CHUNK_ENTRIES: usize = 1024;

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_SECS: i64 = walbust_publish::format::PG_EPOCH_UNIX_SECS;

struct OpenTx {
    xid: u32,
    commit_lsn: u64,
    commit_time_micros: i64,
    budget: TxBudget,
}

/// The open transaction and what its rows produced so far.
struct Rows {
    open: Option<OpenTx>,
    /// Invalidations of the open transaction not yet handed over.
    pending: Invalidations,
    tap: Option<ChangeTap>,
    metrics: m::Hot,
}

impl Rows {
    /// Evaluates one row change (or a truncate, with no rows) against the
    /// rules bound to its table.
    fn evaluate(
        &mut self,
        entry: &RelationEntry,
        op: Op,
        old: Option<&dyn walbust_rules::RowValues>,
        new: Option<&dyn walbust_rules::RowValues>,
    ) {
        self.metrics.changes(op).increment(1);
        let Some(bound) = entry.bound.as_ref() else {
            return;
        };
        let marks = Marks::of(&self.pending);
        let outcome = if op == Op::Truncate {
            bound.truncate(&mut self.pending)
        } else {
            let mut fallback_budget = TxBudget::default();
            let budget = match self.open.as_mut() {
                Some(tx) => &mut tx.budget,
                None => &mut fallback_budget,
            };
            bound.evaluate(op, old, new, budget, &mut self.pending)
        };
        record_outcome(&outcome);
        if let Some(tap) = &self.tap {
            tap_change(
                tap,
                self.open.as_ref(),
                &entry.name,
                op,
                &self.pending,
                marks,
            );
        }
    }
}

/// Turns transport events into pipeline items; see the module docs.
pub struct Assembler {
    rules: Arc<RuleSet>,
    relations: RelationCache,
    rows: Rows,
    /// End LSN of the last transaction emitted.
    last_sent_end: u64,
    out: VecDeque<Item>,
}

impl Assembler {
    pub fn new(rules: Arc<RuleSet>, binary: bool) -> Self {
        Assembler {
            rules,
            relations: RelationCache::new(binary),
            rows: Rows {
                open: None,
                pending: Invalidations::default(),
                tap: None,
                metrics: m::Hot::register(),
            },
            last_sent_end: 0,
            out: VecDeque::new(),
        }
    }

    /// Calls `tap` for every evaluated row change.
    pub fn with_tap(mut self, tap: Option<ChangeTap>) -> Self {
        self.rows.tap = tap;
        self
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Switches to new rules, binding every known table again; all or
    /// nothing (on error the old rules stay).
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) -> Result<(), StreamError> {
        self.relations.rebind(&rules)?;
        self.rules = rules;
        Ok(())
    }

    pub fn relations_mut(&mut self) -> &mut RelationCache {
        &mut self.relations
    }

    /// Forgets what belonged to a connection that ended: the next one sends
    /// Relation messages and the unfinished transaction again.
    pub fn reset(&mut self) {
        self.relations.clear();
        self.rows.open = None;
        self.rows.pending.clear();
    }

    pub fn in_transaction(&self) -> bool {
        self.rows.open.is_some()
    }

    /// End LSN of the last transaction emitted.
    pub fn last_sent_end(&self) -> u64 {
        self.last_sent_end
    }

    /// The next item for the pipeline.
    pub fn next_item(&mut self) -> Option<Item> {
        self.out.pop_front()
    }

    pub fn begin(&mut self, xid: u32, commit_lsn: u64, commit_time_micros: i64) {
        // A Begin inside a transaction means the previous one was cut off
        // (a reconnect): its pending part is dropped, the pipeline drops the
        // rest, and the server sends it again.
        self.rows.pending.clear();
        self.rows.open = Some(OpenTx {
            xid,
            commit_lsn,
            commit_time_micros,
            budget: TxBudget::default(),
        });
        self.out.push_back(Item::Begin {
            xid,
            commit_lsn,
            commit_time_micros,
        });
    }

    pub fn commit(&mut self, end_lsn: u64) {
        if self.rows.open.take().is_none() {
            // A Commit without a Begin carries nothing to publish; emitting
            // it would break the pipeline's sequence.
            return;
        }
        self.flush_pending();
        self.last_sent_end = self.last_sent_end.max(end_lsn);
        self.out.push_back(Item::Commit { end_lsn });
    }

    /// One pgoutput message other than Begin and Commit.
    pub fn data(&mut self, wal_end: u64, data: &Bytes) -> Result<(), StreamError> {
        self.change(wal_end, data)?;
        if self.rows.pending.len() >= CHUNK_ENTRIES {
            self.flush_pending();
        }
        Ok(())
    }

    /// A logical decoding message; only those with [`EXPLICIT_PREFIX`] matter.
    pub fn message(&mut self, transactional: bool, lsn: u64, prefix: &str, content: &[u8]) {
        if prefix != EXPLICIT_PREFIX {
            return;
        }
        let inv = match self.rules.explicit(content) {
            Ok(inv) => inv,
            Err(e) => {
                // The content may hold application data: log the reason only.
                metrics::counter!(m::EXPLICIT_MESSAGES, "result" => "malformed").increment(1);
                tracing::warn!(lsn = %walbust_pgoutput::format_lsn(lsn), reason = %e, "ignored a malformed explicit invalidation message");
                return;
            }
        };
        metrics::counter!(m::EXPLICIT_MESSAGES, "result" => "ok").increment(1);
        if transactional && self.rows.open.is_some() {
            self.rows.pending.extend(inv);
            return;
        }
        // A non-transactional message stands alone at its own position:
        // every transaction committed before it was already emitted, so it
        // is delivered and acknowledged like a transaction of its own.
        self.out.push_back(Item::Begin {
            xid: 0,
            commit_lsn: lsn,
            commit_time_micros: pg_now_micros(),
        });
        self.out.push_back(Item::Changes(inv));
        self.last_sent_end = self.last_sent_end.max(lsn);
        self.out.push_back(Item::Commit { end_lsn: lsn });
    }

    fn flush_pending(&mut self) {
        if !self.rows.pending.is_empty() {
            let chunk = std::mem::take(&mut self.rows.pending);
            self.out.push_back(Item::Changes(chunk));
        }
    }

    /// Decodes one pgoutput message and evaluates it against the rules.
    fn change(&mut self, wal_end: u64, data: &Bytes) -> Result<(), StreamError> {
        let msg = walbust_pgoutput::decode(data).map_err(|source| StreamError::Decode {
            lsn: walbust_pgoutput::format_lsn(wal_end),
            source,
        })?;
        use walbust_pgoutput::Message as M;
        match msg {
            M::Relation(rel) => self.relations.update(&rel, &self.rules)?,
            M::Type(ty) => self.relations.note_type(&ty),
            M::Insert(ins) => {
                let (entry, scratch) = self.relations.for_row(ins.relation_id)?;
                let new = TupleRow::new(&ins.new).rendered(entry, &mut scratch.new);
                self.rows.evaluate(entry, Op::Insert, None, Some(&new));
            }
            M::Update(upd) => {
                let (entry, scratch) = self.relations.for_row(upd.relation_id)?;
                let old = upd.old.as_ref().map(|o| {
                    TupleRow::old(o, &entry.key_columns).rendered(entry, &mut scratch.old)
                });
                let new = TupleRow::new(&upd.new).rendered(entry, &mut scratch.new);
                let old_ref = old.as_ref().map(|o| o as &dyn walbust_rules::RowValues);
                self.rows.evaluate(entry, Op::Update, old_ref, Some(&new));
            }
            M::Delete(del) => {
                let (entry, scratch) = self.relations.for_row(del.relation_id)?;
                let old =
                    TupleRow::old(&del.old, &entry.key_columns).rendered(entry, &mut scratch.old);
                self.rows.evaluate(entry, Op::Delete, Some(&old), None);
            }
            M::Truncate(tr) => {
                for id in &tr.relation_ids {
                    let entry = self.relations.get(*id)?;
                    self.rows.evaluate(entry, Op::Truncate, None, None);
                }
            }
            // Origin carries nothing to invalidate; Begin, Commit and
            // Message arrive as typed transport events instead.
            _ => {}
        }
        Ok(())
    }
}

/// Positions in the pending lists before a row was evaluated, so the tap
/// sees just that row's output.
#[derive(Clone, Copy)]
struct Marks {
    keys: usize,
    tags: usize,
    patterns: usize,
}

impl Marks {
    fn of(inv: &Invalidations) -> Marks {
        Marks {
            keys: inv.keys.len(),
            tags: inv.tags.len(),
            patterns: inv.patterns.len(),
        }
    }
}

fn tap_change(
    tap: &ChangeTap,
    open: Option<&OpenTx>,
    table: &str,
    op: Op,
    pending: &Invalidations,
    marks: Marks,
) {
    let (xid, commit_lsn, commit_time_micros) = open
        .map(|t| (t.xid, t.commit_lsn, t.commit_time_micros))
        .unwrap_or((0, 0, 0));
    tap(&ChangeEvent {
        commit_lsn,
        xid,
        commit_time_micros,
        table,
        op,
        keys: pending.keys.get(marks.keys..).unwrap_or_default(),
        tags: pending.tags.get(marks.tags..).unwrap_or_default(),
        patterns: pending.patterns.get(marks.patterns..).unwrap_or_default(),
    });
}

fn record_outcome(outcome: &walbust_rules::Outcome) {
    if outcome.missing > 0 {
        metrics::counter!(m::MISSING_VALUES).increment(u64::from(outcome.missing));
    }
    if outcome.null > 0 {
        metrics::counter!(m::NULL_VALUES).increment(u64::from(outcome.null));
    }
    if outcome.escalated > 0 {
        metrics::counter!(m::ESCALATIONS).increment(u64::from(outcome.escalated));
    }
}

/// Now, in microseconds since the Postgres epoch.
pub fn pg_now_micros() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_SECS * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use walbust_pgoutput::encode::encode;
    use walbust_pgoutput::{
        Column, Insert, Message, Relation, ReplicaIdentity, Tuple, Update, Value,
    };

    const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}"]
"#;

    fn assembler() -> Assembler {
        Assembler::new(
            Arc::new(RuleSet::from_yaml(RULES, "rules.yaml").unwrap()),
            false,
        )
    }

    fn relation() -> Bytes {
        let col = |name: &str, key: bool| Column {
            flags: u8::from(key),
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        };
        encode(&Message::Relation(Relation {
            id: 7,
            namespace: "public".into(),
            name: "products".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![col("id", true), col("category_id", false)],
        }))
        .unwrap()
    }

    fn row(id: &str, category: &str) -> Tuple {
        Tuple::from_values([Value::Text(id.as_bytes()), Value::Text(category.as_bytes())]).unwrap()
    }

    fn drain(a: &mut Assembler) -> Vec<Item> {
        std::iter::from_fn(|| a.next_item()).collect()
    }

    #[test]
    fn a_transaction_becomes_begin_changes_commit() {
        let mut a = assembler();
        a.begin(42, 100, 5);
        a.data(0, &relation()).unwrap();
        let insert = encode(&Message::Insert(Insert {
            relation_id: 7,
            new: row("1", "3"),
        }))
        .unwrap();
        a.data(0, &insert).unwrap();
        let update = encode(&Message::Update(Update {
            relation_id: 7,
            old: Some(walbust_pgoutput::OldTuple::Full(row("1", "3"))),
            new: row("1", "4"),
        }))
        .unwrap();
        a.data(0, &update).unwrap();
        assert!(a.in_transaction());
        a.commit(120);
        assert!(!a.in_transaction());
        assert_eq!(a.last_sent_end(), 120);
        let items = drain(&mut a);
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(matches!(
            items[0],
            Item::Begin {
                xid: 42,
                commit_lsn: 100,
                ..
            }
        ));
        let Item::Changes(inv) = &items[1] else {
            panic!("{items:?}")
        };
        // Duplicates across rows are the pipeline's to coalesce.
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(set(&inv.keys), set(&["product:1".to_string()]));
        assert_eq!(
            set(&inv.tags),
            set(&["category:3".to_string(), "category:4".to_string()])
        );
        assert!(matches!(items[2], Item::Commit { end_lsn: 120 }));
    }

    #[test]
    fn large_transactions_are_emitted_in_chunks() {
        let mut a = assembler();
        a.begin(1, 10, 0);
        a.data(0, &relation()).unwrap();
        for i in 0..5000 {
            let insert = encode(&Message::Insert(Insert {
                relation_id: 7,
                new: row(&i.to_string(), "1"),
            }))
            .unwrap();
            a.data(0, &insert).unwrap();
        }
        let before_commit = drain(&mut a);
        assert!(
            before_commit.len() > 3,
            "changes must flow before the commit"
        );
        a.commit(20);
        let all: Vec<Item> = before_commit.into_iter().chain(drain(&mut a)).collect();
        let keys: usize = all
            .iter()
            .map(|i| match i {
                Item::Changes(inv) => inv.keys.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(keys, 5000);
        assert!(matches!(all.last(), Some(Item::Commit { end_lsn: 20 })));
    }

    #[test]
    fn a_change_for_an_undescribed_table_is_an_error_and_garbage_is_refused() {
        let mut a = assembler();
        a.begin(1, 10, 0);
        let insert = encode(&Message::Insert(Insert {
            relation_id: 99,
            new: row("1", "1"),
        }))
        .unwrap();
        assert!(matches!(
            a.data(0, &insert),
            Err(StreamError::UnknownRelation { relation_id: 99 })
        ));
        assert!(matches!(
            a.data(0, &Bytes::from_static(b"I\x00\x00")),
            Err(StreamError::Decode { .. })
        ));
    }

    #[test]
    fn explicit_messages_join_their_transaction_or_stand_alone() {
        let mut a = assembler();
        a.begin(1, 10, 0);
        a.message(true, 11, EXPLICIT_PREFIX, br#"{"keys":["cart:1"]}"#);
        a.message(true, 11, "other", br#"{"keys":["nope"]}"#);
        a.message(true, 11, EXPLICIT_PREFIX, b"not json");
        a.commit(12);
        let items = drain(&mut a);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[1], Item::Changes(inv) if inv.keys == ["cart:1"]));
        a.message(false, 30, EXPLICIT_PREFIX, br#"{"tags":["t"]}"#);
        let items = drain(&mut a);
        assert!(matches!(items[0], Item::Begin { commit_lsn: 30, .. }));
        assert!(matches!(items[2], Item::Commit { end_lsn: 30 }));
        assert_eq!(a.last_sent_end(), 30);
    }

    #[test]
    fn a_commit_without_begin_emits_nothing() {
        let mut a = assembler();
        a.commit(5);
        assert!(a.next_item().is_none());
    }
}
