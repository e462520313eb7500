//! The pure core of the reader: transport events in, pipeline items out.
//!
//! [`Assembler`] holds everything that needs no I/O: the relation cache,
//! the open transaction and its rule budget, and the invalidations its rows
//! produced so far. The reader feeds it events from the replication
//! connection and hands the items it emits to the pipeline; tests and the
//! fuzz target feed it directly. It never panics on any input: malformed
//! bytes and protocol violations are errors.
//!
//! Items always form `Begin, Changes*, Commit` sequences in commit order,
//! whatever the input: a row change that arrives with no transaction open
//! is an error ([`StreamError::OutsideTransaction`]), and a
//! non-transactional explicit message that arrives inside one joins it. A
//! transaction's changes are emitted in chunks of [`CHUNK_ENTRIES`] so that
//! a huge transaction streams through in bounded memory.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use walbust_flow::Item;
use walbust_rules::{Invalidations, Op, RuleSet, Scheduled, TxBudget};

use crate::error::StreamError;
use crate::metrics as m;
use crate::relations::{RelationCache, RelationEntry, TupleRow};
use crate::window::{Verdict, WindowGuard, DDL_PREFIX};

/// Prefix of the logical messages that carry explicit invalidations
/// (`pg_logical_emit_message(true, 'walbust', '{"keys":[...]}')`).
pub const EXPLICIT_PREFIX: &str = "walbust";

/// Pending invalidations of the open transaction are handed on once they
/// hold this many entries, so a huge transaction streams through.
pub const CHUNK_ENTRIES: usize = 1024;

/// ... or this many bytes of entries, so that what the pipeline's channel
/// holds is bounded in bytes too: at most `publish.channel_capacity` items
/// of `CHUNK_BYTES` plus one entry (itself at most `max_key_bytes`, or an
/// explicit message's `explicit.max_bytes`). See docs/reliability.md.
pub const CHUNK_BYTES: usize = 64 << 10;

/// One evaluated row change, for live views (`walbust demo`, `walbust tail`).
pub struct ChangeEvent<'a> {
    pub commit_lsn: u64,
    pub xid: u32,
    pub commit_time_micros: i64,
    pub table: &'a str,
    pub op: Op,
    pub keys: &'a [String],
    pub tags: &'a [String],
    pub patterns: &'a [String],
}

/// Receives every evaluated change; runs on the reader task, keep it cheap.
pub type ChangeTap = Arc<dyn Fn(&ChangeEvent<'_>) + Send + Sync>;

struct OpenTx {
    xid: u32,
    commit_lsn: u64,
    commit_time_micros: i64,
    budget: TxBudget,
}

/// The open transaction, the invalidations its rows produced and not yet
/// handed over, and who watches each row's evaluation.
struct Transaction {
    open: Option<OpenTx>,
    /// Invalidations of the open transaction not yet handed over.
    pending: Invalidations,
    /// Bytes of the entries in `pending`.
    pending_bytes: usize,
    tap: Option<ChangeTap>,
    metrics: m::EventMetrics,
}

impl Transaction {
    /// Evaluates one row change (or a truncate, with no rows) against the
    /// rules bound to its table, into the open transaction.
    fn evaluate(
        &mut self,
        entry: &RelationEntry,
        op: Op,
        old: Option<&dyn walbust_rules::RowValues>,
        new: Option<&dyn walbust_rules::RowValues>,
    ) -> Result<(), StreamError> {
        let Some(tx) = self.open.as_mut() else {
            return Err(StreamError::OutsideTransaction {
                table: entry.name.clone(),
            });
        };
        self.metrics.changes(op).increment(1);
        let Some(bound) = entry.bound.as_ref() else {
            return Ok(());
        };
        let marks = Marks::of(&self.pending);
        let outcome = if op == Op::Truncate {
            bound.truncate(&mut self.pending)
        } else {
            bound.evaluate(op, old, new, &mut tx.budget, &mut self.pending)
        };
        record_outcome(&outcome);
        self.pending_bytes += marks.bytes_since(&self.pending);
        if let Some(tap) = &self.tap {
            tap(&ChangeEvent {
                commit_lsn: tx.commit_lsn,
                xid: tx.xid,
                commit_time_micros: tx.commit_time_micros,
                table: &entry.name,
                op,
                keys: self.pending.keys.get(marks.keys..).unwrap_or_default(),
                tags: self.pending.tags.get(marks.tags..).unwrap_or_default(),
                patterns: self
                    .pending
                    .patterns
                    .get(marks.patterns..)
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Turns transport events into pipeline items; see the module docs.
pub struct Assembler {
    rules: Arc<RuleSet>,
    relations: RelationCache,
    tx: Transaction,
    /// End LSN of the last transaction emitted.
    last_sent_end: u64,
    out: VecDeque<Item>,
    /// Windows the publication withheld rule tables in (DDL guard); none
    /// for views that acknowledge nothing (`tail`).
    guard: Option<WindowGuard>,
    /// What explicit messages are accepted.
    explicit: walbust_rules::ExplicitPolicy,
}

impl Assembler {
    pub fn new(rules: Arc<RuleSet>, binary: bool) -> Self {
        Assembler {
            rules,
            relations: RelationCache::new(binary),
            tx: Transaction {
                open: None,
                pending: Invalidations::default(),
                pending_bytes: 0,
                tap: None,
                metrics: m::EventMetrics::register(),
            },
            last_sent_end: 0,
            out: VecDeque::new(),
            guard: None,
            explicit: walbust_rules::ExplicitPolicy::default(),
        }
    }

    /// Accepts explicit messages as `policy` says (default: enabled, 64 KiB,
    /// 10,000 entries, no flush of every key).
    pub fn with_explicit_policy(mut self, policy: walbust_rules::ExplicitPolicy) -> Self {
        self.explicit = policy;
        self
    }

    /// Tracks the DDL guard's messages with `guard`: see [`crate::window`].
    pub fn with_guard(mut self, guard: WindowGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// How far an acknowledgement of `confirmed` may go (not past a window
    /// the publication withheld rule tables in, until it was purged).
    pub fn ack_limit(&mut self, confirmed: u64) -> u64 {
        match &mut self.guard {
            Some(guard) => guard.ack_limit(confirmed),
            None => confirmed,
        }
    }

    /// Calls `tap` for every evaluated row change.
    pub fn with_tap(mut self, tap: Option<ChangeTap>) -> Self {
        self.tx.tap = tap;
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
        self.tx.open = None;
        self.tx.pending.clear();
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.open.is_some()
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
        self.tx.pending.clear();
        self.tx.open = Some(OpenTx {
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
        let Some(open) = self.tx.open.take() else {
            // A Commit without a Begin carries nothing to publish; emitting
            // it would break the pipeline's sequence.
            return;
        };
        if let Some(guard) = &mut self.guard {
            guard.commit(open.commit_lsn, end_lsn);
        }
        self.flush_pending();
        self.last_sent_end = self.last_sent_end.max(end_lsn);
        self.out.push_back(Item::Commit { end_lsn });
    }

    /// One pgoutput message other than Begin and Commit.
    pub fn data(&mut self, wal_end: u64, data: &Bytes) -> Result<(), StreamError> {
        self.change(wal_end, data)?;
        self.flush_if_full();
        Ok(())
    }

    /// A logical decoding message; only those with [`EXPLICIT_PREFIX`] and
    /// [`DDL_PREFIX`] matter. An error is a window the configuration says
    /// to refuse.
    ///
    /// Transactional or not, a message joins the open transaction if there
    /// is one, and otherwise stands alone at its own position.
    pub fn message(&mut self, lsn: u64, prefix: &str, content: &[u8]) -> Result<(), StreamError> {
        if prefix == DDL_PREFIX {
            return self.ddl_message(lsn, content);
        }
        if prefix != EXPLICIT_PREFIX {
            return Ok(());
        }
        let refused = |refusal: walbust_rules::ExplicitRefusal| {
            metrics::counter!(m::EXPLICIT_MESSAGES, m::LABEL_RESULT => refusal.reason())
                .increment(1);
            tracing::warn!(lsn = %walbust_pgoutput::format_lsn(lsn), reason = %refusal, "refused an explicit invalidation message (see the explicit: section of the configuration)");
        };
        if let Err(refusal) = self.explicit.admit_content(content) {
            refused(refusal);
            return Ok(());
        }
        let inv = match self.rules.explicit(content) {
            Ok(inv) => inv,
            Err(e) => {
                // The content may hold application data: log the reason only.
                metrics::counter!(m::EXPLICIT_MESSAGES, m::LABEL_RESULT => m::RESULT_MALFORMED)
                    .increment(1);
                tracing::warn!(lsn = %walbust_pgoutput::format_lsn(lsn), reason = %e, "ignored a malformed explicit invalidation message");
                return Ok(());
            }
        };
        if let Err(refusal) = self.explicit.admit(&inv) {
            refused(refusal);
            return Ok(());
        }
        metrics::counter!(m::EXPLICIT_MESSAGES, m::LABEL_RESULT => m::RESULT_OK).increment(1);
        self.join_or_stand_alone(lsn, inv);
        Ok(())
    }

    /// A DDL guard message: may open a window, or close one with a purge.
    fn ddl_message(&mut self, lsn: u64, content: &[u8]) -> Result<(), StreamError> {
        let Some(guard) = &mut self.guard else {
            return Ok(());
        };
        // The guard emits its message inside the DDL's transaction; one
        // outside any stands at its own position.
        let at = self.tx.open.as_ref().map_or(lsn, |tx| tx.commit_lsn);
        match guard.message(&self.rules, at, content) {
            Ok(Verdict::Nothing) => Ok(()),
            Ok(Verdict::Purge(inv)) => {
                if self.tx.open.is_none() {
                    // Stands alone: its own Begin/Commit, which the guard
                    // must see commit to release acknowledgements.
                    if let Some(guard) = &mut self.guard {
                        guard.commit(lsn, lsn);
                    }
                }
                self.join_or_stand_alone(lsn, inv);
                Ok(())
            }
            Err(e) => Err(StreamError::Source(e)),
        }
    }

    /// Adds `inv` to the open transaction, or emits it as a transaction of
    /// its own at `lsn`.
    fn join_or_stand_alone(&mut self, lsn: u64, inv: Invalidations) {
        if self.tx.open.is_some() {
            // A transactional message belongs here. A non-transactional one
            // cannot arrive inside a transaction under protocol 1 (the server
            // sends a transaction whole, at its commit); should it, it joins
            // the open transaction: it is then delivered no later than that
            // transaction, and if the transaction is cut off the server sends
            // both again, so it is never acknowledged undelivered.
            self.tx.pending_bytes += Marks::default().bytes_since(&inv);
            self.tx.pending.extend(inv);
            self.flush_if_full();
            return;
        }
        // A non-transactional message stands alone at its own position:
        // every transaction committed before it was already emitted, so it
        // is delivered and acknowledged like a transaction of its own.
        self.out.push_back(Item::Begin {
            xid: 0,
            commit_lsn: lsn,
            commit_time_micros: walbust_pgoutput::time::now_micros(),
        });
        self.out.push_back(Item::Changes(inv));
        self.last_sent_end = self.last_sent_end.max(lsn);
        self.out.push_back(Item::Commit { end_lsn: lsn });
    }

    fn flush_pending(&mut self) {
        self.tx.pending_bytes = 0;
        if !self.tx.pending.is_empty() {
            let chunk = std::mem::take(&mut self.tx.pending);
            self.out.push_back(Item::Changes(chunk));
        }
    }

    /// Hands the open transaction's invalidations on once they make a chunk.
    fn flush_if_full(&mut self) {
        if self.tx.pending.len() >= CHUNK_ENTRIES || self.tx.pending_bytes >= CHUNK_BYTES {
            self.flush_pending();
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
                self.tx.evaluate(entry, Op::Insert, None, Some(&new))?;
            }
            M::Update(upd) => {
                let (entry, scratch) = self.relations.for_row(upd.relation_id)?;
                let old = upd.old.as_ref().map(|o| {
                    TupleRow::old(o, &entry.key_columns).rendered(entry, &mut scratch.old)
                });
                let new = TupleRow::new(&upd.new).rendered(entry, &mut scratch.new);
                let old_ref = old.as_ref().map(|o| o as &dyn walbust_rules::RowValues);
                self.tx.evaluate(entry, Op::Update, old_ref, Some(&new))?;
            }
            M::Delete(del) => {
                let (entry, scratch) = self.relations.for_row(del.relation_id)?;
                let old =
                    TupleRow::old(&del.old, &entry.key_columns).rendered(entry, &mut scratch.old);
                self.tx.evaluate(entry, Op::Delete, Some(&old), None)?;
            }
            M::Truncate(tr) => {
                for id in &tr.relation_ids {
                    let entry = self.relations.get(*id)?;
                    self.tx.evaluate(entry, Op::Truncate, None, None)?;
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
#[derive(Clone, Copy, Default)]
struct Marks {
    keys: usize,
    tags: usize,
    patterns: usize,
    schedule: usize,
    refresh: usize,
}

impl Marks {
    fn of(inv: &Invalidations) -> Marks {
        Marks {
            keys: inv.keys.len(),
            tags: inv.tags.len(),
            patterns: inv.patterns.len(),
            schedule: inv.schedule.len(),
            refresh: inv.refresh.len(),
        }
    }

    /// Bytes of the entries `inv` gained since these marks, scheduled ones included.
    fn bytes_since(&self, inv: &Invalidations) -> usize {
        fn from<T>(list: &[T], at: usize) -> &[T] {
            list.get(at..).unwrap_or_default()
        }
        walbust_rules::bytes_of(from(&inv.keys, self.keys))
            + walbust_rules::bytes_of(from(&inv.tags, self.tags))
            + walbust_rules::bytes_of(from(&inv.patterns, self.patterns))
            + walbust_rules::bytes_of(from(&inv.refresh, self.refresh))
            + from(&inv.schedule, self.schedule)
                .iter()
                .map(Scheduled::bytes)
                .sum::<usize>()
    }
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
    if outcome.refused > 0 {
        metrics::counter!(m::LONG_KEYS_REFUSED).increment(u64::from(outcome.refused));
    }
    if outcome.unreadable_at > 0 {
        metrics::counter!(m::SCHEDULE_UNREADABLE).increment(u64::from(outcome.unreadable_at));
    }
    if outcome.hashed > 0 {
        metrics::counter!(m::LONG_KEYS_HASHED).increment(u64::from(outcome.hashed));
    }
    if outcome.oversize > 0 {
        metrics::counter!(m::OVERSIZE_PATTERNS).increment(u64::from(outcome.oversize));
    }
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
    fn chunks_are_bounded_in_bytes_too() {
        let mut a = assembler();
        a.begin(1, 10, 0);
        a.data(0, &relation()).unwrap();
        // Keys of ~1000 bytes: 200 of them are far fewer than CHUNK_ENTRIES
        // but three times CHUNK_BYTES.
        for i in 0..200 {
            let id = format!("{i:0>1000}");
            let insert = encode(&Message::Insert(Insert {
                relation_id: 7,
                new: row(&id, "1"),
            }))
            .unwrap();
            a.data(0, &insert).unwrap();
        }
        a.commit(20);
        let chunks: Vec<usize> = drain(&mut a)
            .iter()
            .filter_map(|i| match i {
                Item::Changes(inv) => Some(
                    inv.keys
                        .iter()
                        .chain(&inv.tags)
                        .chain(&inv.patterns)
                        .map(String::len)
                        .sum(),
                ),
                _ => None,
            })
            .collect();
        assert!(chunks.len() >= 3, "{chunks:?}");
        assert!(
            chunks.iter().all(|&bytes| bytes < CHUNK_BYTES + 1024 + 16),
            "{chunks:?}"
        );
    }

    /// Scheduled invalidations and refresh keys count towards the chunk's bytes too.
    #[test]
    fn scheduled_entries_count_towards_the_chunk_bytes() {
        let mut inv = Invalidations::new();
        inv.keys.push("k".repeat(10));
        let marks = Marks::of(&inv);
        inv.keys.push("k".repeat(100));
        inv.refresh.push("r".repeat(100));
        inv.schedule.push(Scheduled {
            due_unix_micros: 0,
            keys: vec!["s".repeat(1000)],
            tags: vec!["t".repeat(10)],
            patterns: Vec::new(),
            refresh: vec!["s".repeat(1000)],
        });
        assert_eq!(marks.bytes_since(&inv), 100 + 100 + 1000 + 10 + 1000);
        assert_eq!(Marks::default().bytes_since(&inv), 10 + 2210);
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
        a.message(11, EXPLICIT_PREFIX, br#"{"keys":["cart:1"]}"#)
            .unwrap();
        a.message(11, "other", br#"{"keys":["nope"]}"#).unwrap();
        a.message(11, EXPLICIT_PREFIX, b"not json").unwrap();
        a.commit(12);
        let items = drain(&mut a);
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[1], Item::Changes(inv) if inv.keys == ["cart:1"]));
        a.message(30, EXPLICIT_PREFIX, br#"{"tags":["t"]}"#)
            .unwrap();
        let items = drain(&mut a);
        assert!(matches!(items[0], Item::Begin { commit_lsn: 30, .. }));
        assert!(matches!(items[2], Item::Commit { end_lsn: 30 }));
        assert_eq!(a.last_sent_end(), 30);
    }

    /// Every item sequence must read `(Begin Changes* Commit)*`.
    fn assert_well_formed(items: &[Item]) {
        let mut open = false;
        for item in items {
            match item {
                Item::Begin { .. } => open = true,
                Item::Changes(_) => assert!(open, "changes outside a transaction: {items:?}"),
                Item::Commit { .. } => {
                    assert!(open, "commit outside a transaction: {items:?}");
                    open = false;
                }
            }
        }
    }

    fn insert(id: &str) -> Bytes {
        encode(&Message::Insert(Insert {
            relation_id: 7,
            new: row(id, "1"),
        }))
        .unwrap()
    }

    #[test]
    fn a_row_change_outside_a_transaction_is_an_error_and_emits_nothing() {
        let mut a = assembler();
        // The relation arrives inside a transaction, the change after it.
        a.begin(1, 10, 0);
        a.data(0, &relation()).unwrap();
        a.commit(12);
        let before = drain(&mut a);
        for _ in 0..(CHUNK_ENTRIES + 1) {
            assert!(matches!(
                a.data(0, &insert("1")),
                Err(StreamError::OutsideTransaction { ref table }) if table == "public.products"
            ));
        }
        assert!(drain(&mut a).is_empty());
        assert_well_formed(&before);
    }

    fn guard_state(published: bool) -> Vec<u8> {
        let tables: &[[&str; 2]] = if published {
            &[["public", "products"]]
        } else {
            &[]
        };
        serde_json::json!({
            "v": 1,
            "command": "ALTER PUBLICATION",
            "publications": [{"name": "p", "tables": tables,
                "insert": true, "update": true, "delete": true, "truncate": true}]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_withheld_window_holds_acknowledgements_and_its_close_carries_the_purge() {
        let mut a = assembler().with_guard(WindowGuard::new("p".into(), "s".into(), true));
        a.begin(1, 100, 0);
        a.message(100, DDL_PREFIX, &guard_state(false)).unwrap();
        a.commit(110);
        // Changes of other transactions go on, but are not acknowledged.
        a.begin(2, 150, 0);
        a.data(0, &relation()).unwrap();
        a.data(0, &insert("1")).unwrap();
        a.commit(160);
        assert_eq!(a.ack_limit(160), 100);
        a.begin(3, 200, 0);
        a.message(200, DDL_PREFIX, &guard_state(true)).unwrap();
        a.commit(220);
        let items = drain(&mut a);
        assert_well_formed(&items);
        let purge = items
            .iter()
            .rev()
            .find_map(|i| match i {
                Item::Changes(inv) => Some(inv),
                _ => None,
            })
            .expect("the closing transaction carries the purge");
        assert!(
            purge.patterns.contains(&"product:*".to_string()),
            "{purge:?}"
        );
        assert!(matches!(items.last(), Some(Item::Commit { end_lsn: 220 })));
        assert_eq!(a.ack_limit(219), 100);
        assert_eq!(a.ack_limit(220), 220);
    }

    #[test]
    fn without_a_guard_ddl_messages_are_ignored() {
        let mut a = assembler();
        a.begin(1, 100, 0);
        a.message(100, DDL_PREFIX, &guard_state(false)).unwrap();
        a.commit(110);
        assert_eq!(a.ack_limit(110), 110);
    }

    #[test]
    fn a_non_transactional_message_inside_a_transaction_joins_it() {
        let mut a = assembler();
        a.begin(1, 10, 0);
        a.data(0, &relation()).unwrap();
        a.data(0, &insert("1")).unwrap();
        a.message(11, EXPLICIT_PREFIX, br#"{"keys":["cart:1"]}"#)
            .unwrap();
        assert!(a.in_transaction(), "the transaction stays open");
        a.data(0, &insert("2")).unwrap();
        a.commit(20);
        let items = drain(&mut a);
        assert_well_formed(&items);
        assert_eq!(items.len(), 3, "{items:?}");
        let Item::Changes(inv) = &items[1] else {
            panic!("{items:?}")
        };
        let mut keys = inv.keys.clone();
        keys.sort();
        assert_eq!(keys, ["cart:1", "product:1", "product:2"]);
        assert_eq!(a.last_sent_end(), 20);
    }

    #[test]
    fn a_commit_without_begin_emits_nothing() {
        let mut a = assembler();
        a.commit(5);
        assert!(a.next_item().is_none());
    }
}
