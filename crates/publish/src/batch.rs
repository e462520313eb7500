//! What flows into the pipeline ([`Item`]), what flows out to sinks ([`Batch`]), and the
//! accumulator that turns one into the other.
//!
//! The accumulator merges consecutive transactions into one batch and coalesces duplicate keys,
//! tags and patterns. It tracks the open transaction across batches, because a large transaction
//! is cut into several partial batches (bounded memory) and only the batch holding its `Commit`
//! may carry its end LSN, the position that gets acknowledged to Postgres.

use std::collections::BTreeSet;

use tokio::time::Instant;
pub use walbust_flow::Item;

/// A coalesced batch of invalidations, as handed to every [`Sink`](crate::Sink).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Commit LSN of the last transaction that contributed to this batch (brought entries or
    /// completed in it).
    pub lsn: u64,
    /// End LSN of the last transaction *completed* in this batch: what gets acknowledged once the
    /// batch (and every batch before it) is confirmed. `None` for a partial batch of a large
    /// transaction that continues in the next batch.
    pub end_lsn: Option<u64>,
    /// Commit time (µs since the Postgres epoch, 2000-01-01 UTC) of the last contributing
    /// transaction.
    pub commit_time_micros: i64,
    /// Commit time of the first contributing transaction (the oldest in the batch).
    pub first_commit_time_micros: i64,
    /// Ids of the transactions that brought entries to this batch, in commit order. A large
    /// transaction appears in every batch that holds part of it; a transaction without
    /// invalidations appears in none.
    pub xids: Vec<u32>,
    /// Cache keys to delete, deduplicated, in ascending byte order.
    pub keys: Vec<String>,
    /// Tags to purge, deduplicated, in ascending byte order.
    pub tags: Vec<String>,
    /// Key patterns (Redis glob syntax) to purge, deduplicated, in ascending byte order.
    pub patterns: Vec<String>,
    /// Invalidations to apply again later (rules with `at:`), kept by the sink that stores the
    /// schedule (Redis) before it confirms the batch.
    pub schedule: Vec<ScheduledEntry>,
    /// Keys of rules with `refresh: true`, for the refresh stream; deduplicated, ascending.
    pub refresh: Vec<String>,
    /// Set on a batch that applies a scheduled entry: when it was due (µs since the Unix
    /// epoch). `lsn` and `commit_time_micros` are then those of the transaction that
    /// scheduled it, and `end_lsn` is `None` (nothing to acknowledge).
    pub due_unix_micros: Option<i64>,
}

/// One scheduled invalidation and the transaction that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEntry {
    /// Commit LSN of the transaction.
    pub lsn: u64,
    /// Its commit time (µs since the Postgres epoch).
    pub commit_time_micros: i64,
    /// When and what.
    pub due: walbust_rules::Scheduled,
}

/// The pattern that matches every key: a purge of everything.
pub const FLUSH_ALL: &str = "*";

impl Batch {
    /// Adds [`FLUSH_ALL`] to the patterns, once, keeping them in ascending order.
    pub fn add_flush_all(&mut self) {
        if let Err(at) = self
            .patterns
            .binary_search_by(|p| p.as_str().cmp(FLUSH_ALL))
        {
            self.patterns.insert(at, FLUSH_ALL.to_owned());
        }
    }

    /// Number of keys, tags and patterns together.
    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }

    /// True when the batch invalidates nothing (it may still complete transactions).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.tags.is_empty()
            && self.patterns.is_empty()
            && self.schedule.is_empty()
    }

    /// The first WAL position at which every transaction of the batch is committed: one past the
    /// start of its last commit record ([`lsn`](Self::lsn)). A standby whose replay position
    /// (`pg_last_wal_replay_lsn()`, always the end of a replayed record) reached it has replayed
    /// that commit record, so the batch's changes are visible there. It is at most the end of
    /// that record, so it equals `end_lsn` in effect when the last transaction completed in the
    /// batch, and it also covers a partial batch of a transaction whose end is not known yet.
    pub fn visible_from(&self) -> u64 {
        self.lsn.saturating_add(1).max(self.end_lsn.unwrap_or(0))
    }
}

/// The item sequence broke the `Begin`, `Changes`*, `Commit` grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// `Changes` arrived outside a transaction.
    #[error("changes received outside a transaction (no Begin before them)")]
    ChangesWithoutBegin,
    /// `Commit` arrived outside a transaction.
    #[error("commit (end LSN {end_lsn}) received outside a transaction (no Begin before it)")]
    CommitWithoutBegin {
        /// The orphan commit's end LSN.
        end_lsn: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct OpenTx {
    xid: u32,
    commit_lsn: u64,
    commit_time_micros: i64,
}

/// Builds batches from items; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Accumulator {
    keys: BTreeSet<String>,
    tags: BTreeSet<String>,
    patterns: BTreeSet<String>,
    refresh: BTreeSet<String>,
    schedule: Vec<ScheduledEntry>,
    /// Bytes of the distinct entries held, the measure `max_bytes` bounds.
    bytes: usize,
    xids: Vec<u32>,
    lsn: u64,
    end_lsn: Option<u64>,
    commit_time_micros: i64,
    first_commit_time_micros: Option<i64>,
    /// The transaction between its `Begin` and `Commit`; survives `seal` (a large transaction
    /// spans batches).
    open: Option<OpenTx>,
    /// Whether `open` already contributed to the batch being built.
    open_in_batch: bool,
    /// Whether `open` is listed in `xids` of the batch being built.
    open_listed: bool,
    /// When the batch being built got its first contribution (for `max_delay`).
    started: Option<Instant>,
}

impl Accumulator {
    /// Adds one item. Returns the xid of a transaction abandoned by a second `Begin` (the reader
    /// lost the stream mid-transaction and the server is sending it again from its start).
    pub(crate) fn push(&mut self, item: Item, now: Instant) -> Result<Option<u32>, SequenceError> {
        match item {
            Item::Begin {
                xid,
                commit_lsn,
                commit_time_micros,
            } => {
                // What the abandoned transaction already put into batches stays there: publishing
                // it is harmless (at-least-once), and it is never acknowledged, because its
                // Commit never came. The replay that follows delivers all of it again.
                let abandoned = self.open.take().map(|tx| tx.xid);
                self.open = Some(OpenTx {
                    xid,
                    commit_lsn,
                    commit_time_micros,
                });
                self.open_in_batch = false;
                Ok(abandoned)
            }
            Item::Changes(inv) => {
                if self.open.is_none() {
                    return Err(SequenceError::ChangesWithoutBegin);
                }
                if inv.is_empty() {
                    return Ok(None);
                }
                self.contribute(now, true);
                self.bytes += insert_all(&mut self.keys, inv.keys);
                self.bytes += insert_all(&mut self.tags, inv.tags);
                self.bytes += insert_all(&mut self.patterns, inv.patterns);
                self.bytes += insert_all(&mut self.refresh, inv.refresh);
                if let Some(tx) = self.open {
                    for due in inv.schedule {
                        self.bytes += due.bytes();
                        self.schedule.push(ScheduledEntry {
                            lsn: tx.commit_lsn,
                            commit_time_micros: tx.commit_time_micros,
                            due,
                        });
                    }
                }
                Ok(None)
            }
            Item::Commit { end_lsn } => {
                if self.open.is_none() {
                    return Err(SequenceError::CommitWithoutBegin { end_lsn });
                }
                self.contribute(now, false);
                self.end_lsn = Some(end_lsn);
                self.open = None;
                self.open_in_batch = false;
                Ok(None)
            }
        }
    }

    /// Records the open transaction as part of the batch being built: its commit LSN and time
    /// become the batch's, and, when it brings entries (`listed`), its xid is listed. A
    /// transaction without invalidations is not listed, so `xids` stays bounded by the entries.
    fn contribute(&mut self, now: Instant, listed: bool) {
        let Some(tx) = self.open else { return };
        if !self.open_in_batch {
            self.open_in_batch = true;
            self.open_listed = false;
            self.lsn = tx.commit_lsn;
            self.commit_time_micros = tx.commit_time_micros;
            self.first_commit_time_micros
                .get_or_insert(tx.commit_time_micros);
            self.started.get_or_insert(now);
        }
        // A transaction replayed after an abandoned start is listed once.
        if listed && !self.open_listed && self.xids.last() != Some(&tx.xid) {
            self.xids.push(tx.xid);
        }
        self.open_listed |= listed;
    }

    /// Distinct keys, tags and patterns held.
    pub(crate) fn entries(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len() + self.schedule.len()
    }

    /// Bytes of the distinct entries held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether there is anything to publish or acknowledge.
    pub(crate) fn has_work(&self) -> bool {
        self.entries() > 0 || self.end_lsn.is_some()
    }

    /// When the batch being built got its first contribution.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Whether a transaction is open (its `Commit` has not arrived yet).
    #[cfg(test)]
    pub(crate) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Takes the batch built so far and starts an empty one. The open transaction, if any,
    /// continues into the next batch.
    pub(crate) fn seal(&mut self) -> Batch {
        let batch = Batch {
            lsn: self.lsn,
            end_lsn: self.end_lsn.take(),
            commit_time_micros: self.commit_time_micros,
            first_commit_time_micros: self
                .first_commit_time_micros
                .take()
                .unwrap_or(self.commit_time_micros),
            xids: std::mem::take(&mut self.xids),
            keys: std::mem::take(&mut self.keys).into_iter().collect(),
            tags: std::mem::take(&mut self.tags).into_iter().collect(),
            patterns: std::mem::take(&mut self.patterns).into_iter().collect(),
            schedule: std::mem::take(&mut self.schedule),
            refresh: std::mem::take(&mut self.refresh).into_iter().collect(),
            due_unix_micros: None,
        };
        self.bytes = 0;
        self.open_in_batch = false;
        self.open_listed = false;
        self.started = None;
        batch
    }
}

/// Inserts the values not present yet; returns the bytes added.
fn insert_all(set: &mut BTreeSet<String>, values: Vec<String>) -> usize {
    let mut added = 0;
    for value in values {
        let len = value.len();
        if set.insert(value) {
            added += len;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_all_is_added_once_in_order() {
        let mut b = Batch {
            patterns: vec!["!x".to_owned(), "a:*".to_owned()],
            ..Batch::default()
        };
        b.add_flush_all();
        b.add_flush_all();
        assert_eq!(b.patterns, ["!x", "*", "a:*"]);
    }

    fn inv(keys: &[&str], tags: &[&str], patterns: &[&str]) -> walbust_rules::Invalidations {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        walbust_rules::Invalidations {
            keys: own(keys),
            tags: own(tags),
            patterns: own(patterns),
            ..Default::default()
        }
    }

    fn begin(xid: u32, lsn: u64) -> Item {
        Item::Begin {
            xid,
            commit_lsn: lsn,
            commit_time_micros: i64::from(xid) * 1000,
        }
    }

    #[test]
    fn coalesces_across_transactions_in_sorted_order() {
        let now = Instant::now();
        let mut acc = Accumulator::default();
        acc.push(begin(1, 100), now).unwrap();
        acc.push(Item::Changes(inv(&["b", "a"], &["t"], &["p:*"])), now)
            .unwrap();
        acc.push(Item::Commit { end_lsn: 110 }, now).unwrap();
        acc.push(begin(2, 200), now).unwrap();
        acc.push(Item::Changes(inv(&["a", "c"], &["t"], &[])), now)
            .unwrap();
        acc.push(Item::Commit { end_lsn: 210 }, now).unwrap();
        assert_eq!(acc.entries(), 5);
        assert_eq!(acc.bytes(), 1 + 1 + 1 + 1 + 3);

        let batch = acc.seal();
        assert_eq!(batch.keys, ["a", "b", "c"]);
        assert_eq!(batch.tags, ["t"]);
        assert_eq!(batch.patterns, ["p:*"]);
        assert_eq!(batch.xids, [1, 2]);
        assert_eq!(batch.lsn, 200);
        assert_eq!(batch.end_lsn, Some(210));
        assert_eq!(batch.first_commit_time_micros, 1000);
        assert_eq!(batch.commit_time_micros, 2000);
        assert!(!acc.has_work());
        assert_eq!(acc.bytes(), 0);
    }

    #[test]
    fn large_transaction_spans_batches_and_only_the_last_completes_it() {
        let now = Instant::now();
        let mut acc = Accumulator::default();
        acc.push(begin(7, 700), now).unwrap();
        acc.push(Item::Changes(inv(&["k1"], &[], &[])), now)
            .unwrap();
        assert!(acc.in_transaction());
        let first = acc.seal();
        assert_eq!(first.end_lsn, None);
        assert_eq!(first.xids, [7]);
        assert_eq!(first.lsn, 700);

        acc.push(Item::Changes(inv(&["k2"], &[], &[])), now)
            .unwrap();
        acc.push(Item::Commit { end_lsn: 750 }, now).unwrap();
        assert!(!acc.in_transaction());
        let second = acc.seal();
        assert_eq!(second.end_lsn, Some(750));
        assert_eq!(second.xids, [7]);
        assert_eq!(second.keys, ["k2"]);

        // A replica has committed transaction 7 once it replayed past its commit record's start,
        // whether or not the batch knows where the record ends.
        assert_eq!(first.visible_from(), 701);
        assert_eq!(second.visible_from(), 750);
    }

    #[test]
    fn a_begun_transaction_without_changes_is_not_work_yet() {
        let now = Instant::now();
        let mut acc = Accumulator::default();
        acc.push(begin(1, 100), now).unwrap();
        acc.push(Item::Changes(inv(&[], &[], &[])), now).unwrap();
        assert!(!acc.has_work());
        assert_eq!(acc.started(), None);
        acc.push(Item::Commit { end_lsn: 120 }, now).unwrap();
        assert!(acc.has_work(), "an empty transaction still needs its ack");
        let batch = acc.seal();
        assert!(batch.is_empty());
        assert_eq!(batch.end_lsn, Some(120));
        assert_eq!(batch.lsn, 100);
        assert!(batch.xids.is_empty(), "nothing invalidated, nothing listed");
    }

    #[test]
    fn sequence_errors() {
        let now = Instant::now();
        let mut acc = Accumulator::default();
        assert_eq!(
            acc.push(Item::Changes(inv(&["k"], &[], &[])), now),
            Err(SequenceError::ChangesWithoutBegin)
        );
        assert_eq!(
            acc.push(Item::Commit { end_lsn: 5 }, now),
            Err(SequenceError::CommitWithoutBegin { end_lsn: 5 })
        );
    }

    #[test]
    fn second_begin_abandons_the_open_transaction() {
        let now = Instant::now();
        let mut acc = Accumulator::default();
        acc.push(begin(1, 100), now).unwrap();
        acc.push(Item::Changes(inv(&["k"], &[], &[])), now).unwrap();
        assert_eq!(acc.push(begin(1, 100), now), Ok(Some(1)));
        acc.push(Item::Changes(inv(&["k"], &[], &[])), now).unwrap();
        acc.push(Item::Commit { end_lsn: 130 }, now).unwrap();
        let batch = acc.seal();
        assert_eq!(batch.keys, ["k"]);
        assert_eq!(batch.end_lsn, Some(130));
        assert_eq!(batch.xids, [1]);
    }
}
