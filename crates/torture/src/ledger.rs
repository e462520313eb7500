//! The ledger: every change the workload attempted, whether Postgres
//! committed it, and when each sink was seen carrying its invalidation.
//!
//! Each change has a tag of its own (`seq:<id>:<n>` for an insert or update
//! that left column `n` at that value, `del:<id>` for a delete), so one
//! observation proves one change was delivered:
//!
//! - Redis: walbust runs the `version` tag strategy, so delivering the change
//!   increments `tagver:<tag>`. Redis keeps an fsynced append-only file, so a
//!   counter survives Redis being killed. Counter ≥ 1: delivered; > 1: a
//!   duplicate. Nothing but walbust writes these counters.
//! - Kafka: the tag appears in the `tags` of some record of the topic.
//!
//! A change is *committed* when Postgres acknowledged its COMMIT, or, when
//! the acknowledgement was lost to a crash, when the row shows the change
//! after the restart. Rolled-back changes and commits that did not happen
//! must never be invalidated (that would be an invalidation before commit).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use serde::Serialize;

use crate::plan::Fault;

/// The Redis sink's prefix of per-tag version counters (walbust's default
/// for the `version` strategy).
pub const REDIS_TAG_PREFIX: &str = "tagver:";

/// What one change did to the `seq` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeId {
    /// Row `id` inserted or updated, leaving `n` at this value.
    Upsert { id: i64, n: i32 },
    /// Row `id` deleted.
    Delete { id: i64 },
}

impl ChangeId {
    /// The tag walbust's rules render for this change.
    pub fn tag(self) -> String {
        match self {
            ChangeId::Upsert { id, n } => format!("seq:{id}:{n}"),
            ChangeId::Delete { id } => format!("del:{id}"),
        }
    }

    /// The Redis counter the tag's purge increments.
    pub fn redis_key(self) -> String {
        format!("{REDIS_TAG_PREFIX}{}", self.tag())
    }

    /// The change a tag names, if it is one of ours.
    pub fn parse_tag(tag: &str) -> Option<ChangeId> {
        if let Some(rest) = tag.strip_prefix("seq:") {
            let (id, n) = rest.split_once(':')?;
            return Some(ChangeId::Upsert {
                id: parse_number(id)?,
                n: parse_number(n)?,
            });
        }
        let id = tag.strip_prefix("del:")?;
        Some(ChangeId::Delete {
            id: parse_number(id)?,
        })
    }

    /// The row it touched.
    pub fn row(self) -> i64 {
        match self {
            ChangeId::Upsert { id, .. } | ChangeId::Delete { id } => id,
        }
    }

    /// Whether the change shows in the row's current state: `n` is the
    /// row's column `n` after the crash, `None` when the row is absent.
    /// Only sound while nothing else changed the row since, which the
    /// workload guarantees by leaving a row alone until this is known.
    pub fn visible_in(self, n: Option<i32>) -> bool {
        match self {
            ChangeId::Upsert { n: wanted, .. } => n.is_some_and(|now| now >= wanted),
            ChangeId::Delete { .. } => n.is_none(),
        }
    }
}

/// Digits only, so that `seq:1:2:3` or `seq:+1:2` are not ours.
fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What Postgres made of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Sent, no answer yet.
    InFlight,
    /// COMMIT acknowledged, or the row shows it after a crash.
    Committed,
    /// The connection died before the answer: resolved after recovery.
    Uncertain,
    /// Rolled back, or the row shows it never happened.
    NotCommitted,
}

/// Index of a change in the ledger.
pub type ChangeIx = u32;

/// One attempted change.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: ChangeId,
    /// The cycle (index into the plan) it was written in.
    pub cycle: u32,
    pub status: Status,
    /// When the COMMIT was acknowledged (milliseconds since the ledger's
    /// epoch); `None` when it was not, e.g. resolved after a crash.
    pub committed_ms: Option<u32>,
    /// When its Redis counter was first seen at 1 or more.
    pub redis_ms: Option<u32>,
    /// When a Kafka record carrying its tag was first consumed.
    pub kafka_ms: Option<u32>,
    /// How many Kafka records carried its tag.
    pub kafka_records: u32,
    /// Its Redis counter at the final count.
    pub redis_count: i64,
    /// When a purge (or, for a change decoded without a rule column, its
    /// key) covering it was consumed from Kafka: a change the fault of its
    /// cycle hid from the stream (see [`Ledger::hidden_until`]).
    pub covered_ms: Option<u32>,
}

impl Change {
    fn delivered_redis(&self) -> bool {
        self.redis_ms.is_some() || self.redis_count > 0
    }
}

/// The key walbust's rules give row `id` (`seq:{id}`).
fn row_of_key(key: &str) -> Option<i64> {
    parse_number(key.strip_prefix("seq:")?)
}

/// Whether a pattern purges every key of the rules (`seq:*`, or a
/// flush-all `*`).
fn purges_every_row(pattern: &str) -> bool {
    pattern == "*" || pattern == "seq:*"
}

/// Every change of a run, and what is still awaited.
#[derive(Debug)]
pub struct Ledger {
    epoch: Instant,
    changes: Vec<Change>,
    by_id: HashMap<ChangeId, ChangeIx>,
    /// Not yet seen in Redis (and not known to be uncommitted).
    redis_missing: BTreeSet<ChangeIx>,
    /// Not yet seen in Kafka (and not known to be uncommitted).
    kafka_missing: BTreeSet<ChangeIx>,
    /// In flight or uncertain.
    unresolved: BTreeSet<ChangeIx>,
    /// Where the Redis observer's next round starts.
    redis_cursor: ChangeIx,
    /// Tags in Kafka records or Redis counters that no change of ours has
    /// (a sample), and how many there were.
    pub unexpected_tags: Vec<String>,
    pub unexpected_count: u64,
    /// Kafka records that are not walbust's JSON, version 1.
    pub malformed_records: u64,
    pub kafka_records: u64,
    /// The cycle running now, to which redeliveries are attributed.
    current_cycle: u32,
    /// Per cycle: Kafka records that carried a change again.
    redelivered: Vec<u64>,
    /// Per cycle whose fault hides changes from the stream: when the fault
    /// was over (milliseconds since the epoch). Changes of that cycle
    /// committed by then may be covered by a purge instead of their tags.
    hidden_until: HashMap<u32, u32>,
}

impl Ledger {
    pub fn new(epoch: Instant) -> Ledger {
        Ledger {
            epoch,
            changes: Vec::new(),
            by_id: HashMap::new(),
            redis_missing: BTreeSet::new(),
            kafka_missing: BTreeSet::new(),
            unresolved: BTreeSet::new(),
            redis_cursor: 0,
            unexpected_tags: Vec::new(),
            unexpected_count: 0,
            malformed_records: 0,
            kafka_records: 0,
            current_cycle: 0,
            redelivered: Vec::new(),
            hidden_until: HashMap::new(),
        }
    }

    /// The fault of the current cycle, over at `at`, hid changes from the
    /// stream: walbust covers them with a purge of the rules' keys (a
    /// record with pattern `seq:*` or `*`) or, for a change decoded
    /// without a rule column, with its key. Only changes of this cycle
    /// committed by `at`, and only records consumed after `at`, count.
    pub fn hidden_until(&mut self, at: Instant) {
        let ms = self.ms(at);
        self.hidden_until.insert(self.current_cycle, ms);
    }

    /// Redeliveries seen from now on happened in cycle `cycle`.
    pub fn set_cycle(&mut self, cycle: u32) {
        self.current_cycle = cycle;
    }

    /// Milliseconds since the epoch.
    pub fn ms(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX)
    }

    /// Records a change about to be sent. The workload never makes the same
    /// change twice (ids are fresh, `n` only grows); a repeat is a bug in
    /// the workload, which would make the proof unsound, hence the panic.
    pub fn register(&mut self, id: ChangeId, cycle: u32) -> ChangeIx {
        let ix = ChangeIx::try_from(self.changes.len()).expect("fewer than 2^32 changes");
        let previous = self.by_id.insert(id, ix);
        assert!(previous.is_none(), "change {id:?} registered twice");
        self.changes.push(Change {
            id,
            cycle,
            status: Status::InFlight,
            committed_ms: None,
            redis_ms: None,
            kafka_ms: None,
            kafka_records: 0,
            redis_count: 0,
            covered_ms: None,
        });
        self.redis_missing.insert(ix);
        self.kafka_missing.insert(ix);
        self.unresolved.insert(ix);
        ix
    }

    pub fn committed(&mut self, ix: ChangeIx, acknowledged: Option<Instant>) {
        let ms = acknowledged.map(|at| self.ms(at));
        if let Some(c) = self.changes.get_mut(ix as usize) {
            c.status = Status::Committed;
            c.committed_ms = ms;
        }
        self.unresolved.remove(&ix);
    }

    pub fn uncertain(&mut self, ix: ChangeIx) {
        if let Some(c) = self.changes.get_mut(ix as usize) {
            c.status = Status::Uncertain;
        }
    }

    pub fn not_committed(&mut self, ix: ChangeIx) {
        if let Some(c) = self.changes.get_mut(ix as usize) {
            c.status = Status::NotCommitted;
        }
        self.unresolved.remove(&ix);
        self.redis_missing.remove(&ix);
        self.kafka_missing.remove(&ix);
    }

    pub fn change(&self, ix: ChangeIx) -> Option<&Change> {
        self.changes.get(ix as usize)
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Changes in flight or uncertain.
    pub fn unresolved(&self) -> Vec<(ChangeIx, ChangeId)> {
        self.unresolved
            .iter()
            .filter_map(|&ix| Some((ix, self.changes.get(ix as usize)?.id)))
            .collect()
    }

    /// Up to `max` changes not yet seen in Redis, continuing round-robin
    /// from the previous call so that a change that never arrives does not
    /// starve the rest.
    pub fn redis_round(&mut self, max: usize) -> Vec<(ChangeIx, ChangeId)> {
        let mut out: Vec<ChangeIx> = self
            .redis_missing
            .range(self.redis_cursor..)
            .take(max)
            .copied()
            .collect();
        if out.len() < max {
            let more = max - out.len();
            let start = out.first().copied().unwrap_or(ChangeIx::MAX);
            out.extend(
                self.redis_missing
                    .range(..self.redis_cursor.min(start))
                    .take(more)
                    .copied(),
            );
        }
        self.redis_cursor = out.last().map_or(0, |&ix| ix.saturating_add(1));
        out.into_iter()
            .filter_map(|ix| Some((ix, self.changes.get(ix as usize)?.id)))
            .collect()
    }

    /// Records that these changes' Redis counters were seen at 1 or more.
    pub fn seen_in_redis(&mut self, seen: &[ChangeIx], at: Instant) {
        let ms = self.ms(at);
        for &ix in seen {
            if let Some(c) = self.changes.get_mut(ix as usize) {
                c.redis_ms.get_or_insert(ms);
            }
            self.redis_missing.remove(&ix);
        }
    }

    /// Records one Kafka record carrying `tags`, `keys` and `patterns`.
    pub fn seen_in_kafka<'a>(
        &mut self,
        tags: impl IntoIterator<Item = &'a str>,
        keys: &[String],
        patterns: &[String],
        at: Instant,
    ) {
        let ms = self.ms(at);
        self.kafka_records += 1;
        for tag in tags {
            let ix = ChangeId::parse_tag(tag).and_then(|id| self.by_id.get(&id).copied());
            match ix.and_then(|ix| Some((ix, self.changes.get_mut(ix as usize)?))) {
                Some((ix, c)) => {
                    c.kafka_ms.get_or_insert(ms);
                    if c.kafka_records > 0 {
                        let cycle = self.current_cycle as usize;
                        if self.redelivered.len() <= cycle {
                            self.redelivered.resize(cycle + 1, 0);
                        }
                        self.redelivered[cycle] += 1;
                    }
                    c.kafka_records += 1;
                    self.kafka_missing.remove(&ix);
                }
                None => self.unexpected(tag),
            }
        }
        // After the tags: a change this record delivers is not covered.
        self.cover(keys, patterns, ms);
    }

    /// Covers the current cycle's hidden changes that a record consumed at
    /// `ms` invalidates by key or pattern (see [`Ledger::hidden_until`]):
    /// changes committed before the fault was over and not delivered to
    /// either sink. A change of such a cycle that walbust did send but had
    /// not delivered yet when the purge arrived is covered too: the purge
    /// did invalidate its key after its commit, but its own tag then goes
    /// unchecked. Other fault kinds are checked by tag only.
    fn cover(&mut self, keys: &[String], patterns: &[String], ms: u32) {
        let Some(&until) = self.hidden_until.get(&self.current_cycle) else {
            return;
        };
        if ms < until {
            return;
        }
        let every_row = patterns.iter().any(|p| purges_every_row(p));
        let rows: Vec<i64> = keys.iter().filter_map(|k| row_of_key(k)).collect();
        if !every_row && rows.is_empty() {
            return;
        }
        // Missing from both sinks: a change one sink showed was delivered,
        // and the other must show it too.
        let missing: Vec<ChangeIx> = self
            .redis_missing
            .intersection(&self.kafka_missing)
            .copied()
            .collect();
        for ix in missing {
            let Some(c) = self.changes.get_mut(ix as usize) else {
                continue;
            };
            let hidden = c.cycle == self.current_cycle
                && c.status == Status::Committed
                && c.committed_ms.is_some_and(|t| t <= until);
            if hidden && (every_row || rows.contains(&c.id.row())) {
                c.covered_ms.get_or_insert(ms);
                self.redis_missing.remove(&ix);
                self.kafka_missing.remove(&ix);
            }
        }
    }

    /// Records a tag that belongs to no change of ours.
    pub fn unexpected(&mut self, tag: &str) {
        self.unexpected_count += 1;
        // A sample is enough to investigate; the count is what is reported.
        if self.unexpected_tags.len() < 1000 {
            self.unexpected_tags.push(tag.to_owned());
        }
    }

    /// Sets a change's final Redis counter.
    pub fn set_redis_count(&mut self, ix: ChangeIx, count: i64) {
        if let Some(c) = self.changes.get_mut(ix as usize) {
            c.redis_count = count;
        }
    }

    /// Whether a tag is one of ours.
    pub fn knows(&self, id: ChangeId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Changes not known to be uncommitted that a sink has not shown yet.
    pub fn awaited(&self) -> Awaited {
        Awaited {
            redis: self.redis_missing.len(),
            kafka: self.kafka_missing.len(),
            unresolved: self.unresolved.len(),
        }
    }

    /// Up to `max` tags still awaited from each sink, oldest first.
    pub fn awaited_sample(&self, max: usize) -> (Vec<String>, Vec<String>) {
        let tags = |set: &BTreeSet<ChangeIx>| {
            set.iter()
                .take(max)
                .filter_map(|&ix| Some(self.changes.get(ix as usize)?.id.tag()))
                .collect()
        };
        (tags(&self.redis_missing), tags(&self.kafka_missing))
    }

    /// The figures per fault kind, and for all of them, from the final
    /// state of every change. `faults[c]` is the fault of cycle `c`.
    pub fn tally(&self, faults: &[Fault]) -> (Vec<(Fault, Tally)>, Tally) {
        let mut rows: Vec<(Fault, Tally, Vec<u32>, Vec<u32>)> = Fault::ALL
            .iter()
            .map(|&f| (f, Tally::default(), Vec::new(), Vec::new()))
            .collect();
        for (i, fault) in faults.iter().enumerate() {
            if let Some(row) = rows.iter_mut().find(|r| r.0 == *fault) {
                row.1.cycles += 1;
                row.1.cycle_numbers.push(i + 1);
                row.1.redelivered_kafka += self.redelivered.get(i).copied().unwrap_or(0);
            }
        }
        for c in &self.changes {
            let Some(fault) = faults.get(c.cycle as usize) else {
                continue;
            };
            let Some((_, t, redis_lags, kafka_lags)) = rows.iter_mut().find(|r| r.0 == *fault)
            else {
                continue;
            };
            match c.status {
                Status::Committed => {
                    t.committed += 1;
                    let covered = c.covered_ms.is_some();
                    if covered {
                        t.covered += 1;
                    }
                    if !c.delivered_redis() && !covered {
                        t.lost_redis += 1;
                    }
                    if c.kafka_records == 0 && !covered {
                        t.lost_kafka += 1;
                    }
                    if c.redis_count > 1 {
                        t.duplicated_redis += 1;
                    }
                    if c.kafka_records > 1 {
                        t.duplicated_kafka += 1;
                    }
                    if let Some(committed) = c.committed_ms {
                        if let Some(seen) = c.redis_ms {
                            redis_lags.push(seen.saturating_sub(committed));
                        }
                        if let Some(seen) = c.kafka_ms {
                            kafka_lags.push(seen.saturating_sub(committed));
                        }
                    } else {
                        t.resolved_committed += 1;
                    }
                }
                Status::NotCommitted => {
                    t.not_committed += 1;
                    if c.delivered_redis() {
                        t.phantom_redis += 1;
                    }
                    if c.kafka_records > 0 {
                        t.phantom_kafka += 1;
                    }
                }
                Status::InFlight | Status::Uncertain => t.unresolved += 1,
            }
        }
        let mut total = Tally::default();
        let (mut all_redis, mut all_kafka) = (Vec::new(), Vec::new());
        let rows = rows
            .into_iter()
            .map(|(fault, mut t, mut redis_lags, mut kafka_lags)| {
                total.add(&t);
                all_redis.extend_from_slice(&redis_lags);
                all_kafka.extend_from_slice(&kafka_lags);
                t.lag_redis = LagStats::of(&mut redis_lags);
                t.lag_kafka = LagStats::of(&mut kafka_lags);
                (fault, t)
            })
            .collect();
        total.lag_redis = LagStats::of(&mut all_redis);
        total.lag_kafka = LagStats::of(&mut all_kafka);
        (rows, total)
    }
}

/// What a sink has yet to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Awaited {
    pub redis: usize,
    pub kafka: usize,
    pub unresolved: usize,
}

impl Awaited {
    pub fn nothing(self) -> bool {
        self.redis == 0 && self.kafka == 0 && self.unresolved == 0
    }
}

/// Commit-to-observation lag, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LagStats {
    pub p50_ms: u32,
    pub p99_ms: u32,
    pub max_ms: u32,
}

impl LagStats {
    fn of(lags: &mut [u32]) -> LagStats {
        if lags.is_empty() {
            return LagStats::default();
        }
        lags.sort_unstable();
        let at = |q: usize| lags[((lags.len() - 1) * q) / 100];
        LagStats {
            p50_ms: at(50),
            p99_ms: at(99),
            max_ms: at(100),
        }
    }
}

/// Figures for one fault kind (or all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub cycles: usize,
    /// 1-based numbers of the cycles of this kind.
    #[serde(skip)]
    pub cycle_numbers: Vec<usize>,
    /// Committed changes, each of which must be invalidated.
    pub committed: u64,
    /// Of those, commits whose acknowledgement a crash swallowed, found
    /// committed after the restart.
    pub resolved_committed: u64,
    /// Rolled back, or not committed because of a crash: must never be
    /// invalidated.
    pub not_committed: u64,
    /// Of those, changes the fault hid from the stream that a purge (or
    /// their key) covered instead of their own tags.
    pub covered: u64,
    pub lost_redis: u64,
    pub lost_kafka: u64,
    /// Kafka records, consumed during these cycles, that carried a change
    /// again: the redeliveries these faults caused.
    pub redelivered_kafka: u64,
    /// Changes committed in these cycles that were invalidated more than
    /// once, whenever that happened (a later crash can redeliver them).
    pub duplicated_redis: u64,
    pub duplicated_kafka: u64,
    pub phantom_redis: u64,
    pub phantom_kafka: u64,
    pub unresolved: u64,
    pub lag_redis: LagStats,
    pub lag_kafka: LagStats,
}

impl Tally {
    /// Adds the counts of `o` (not its lags: percentiles do not add up).
    pub fn add(&mut self, o: &Tally) {
        self.cycles += o.cycles;
        self.cycle_numbers.extend(&o.cycle_numbers);
        self.committed += o.committed;
        self.resolved_committed += o.resolved_committed;
        self.not_committed += o.not_committed;
        self.covered += o.covered;
        self.lost_redis += o.lost_redis;
        self.lost_kafka += o.lost_kafka;
        self.redelivered_kafka += o.redelivered_kafka;
        self.duplicated_redis += o.duplicated_redis;
        self.duplicated_kafka += o.duplicated_kafka;
        self.phantom_redis += o.phantom_redis;
        self.phantom_kafka += o.phantom_kafka;
        self.unresolved += o.unresolved;
    }

    pub fn lost(&self) -> u64 {
        self.lost_redis + self.lost_kafka
    }

    pub fn phantoms(&self) -> u64 {
        self.phantom_redis + self.phantom_kafka
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(epoch: Instant, ms: u64) -> Instant {
        epoch + Duration::from_millis(ms)
    }

    #[test]
    fn tags_round_trip_and_foreign_tags_are_refused() {
        for id in [
            ChangeId::Upsert { id: 7, n: 0 },
            ChangeId::Upsert { id: 50_001, n: 12 },
            ChangeId::Delete { id: 3 },
        ] {
            assert_eq!(ChangeId::parse_tag(&id.tag()), Some(id));
            assert_eq!(id.redis_key(), format!("tagver:{}", id.tag()));
        }
        for foreign in [
            "seq:1",
            "seq:1:2:3",
            "seq:a:1",
            "del:",
            "del:+4",
            "other:1:2",
            "",
        ] {
            assert_eq!(ChangeId::parse_tag(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn visibility_after_a_crash() {
        let upsert = ChangeId::Upsert { id: 1, n: 3 };
        assert!(upsert.visible_in(Some(3)));
        assert!(upsert.visible_in(Some(4)));
        assert!(!upsert.visible_in(Some(2)));
        assert!(!upsert.visible_in(None));
        let delete = ChangeId::Delete { id: 1 };
        assert!(delete.visible_in(None));
        assert!(!delete.visible_in(Some(0)));
    }

    /// A purge covers only the hidden changes of its own cycle, committed
    /// before the fault was over, and only once consumed after it; a key
    /// covers only its row. Anything else stays lost.
    #[test]
    fn a_purge_covers_only_what_its_fault_hid() {
        let epoch = Instant::now();
        let mut l = Ledger::new(epoch);
        let earlier = l.register(ChangeId::Upsert { id: 1, n: 0 }, 0);
        l.committed(earlier, Some(at(epoch, 5)));
        l.set_cycle(1);
        let hidden = l.register(ChangeId::Upsert { id: 2, n: 0 }, 1);
        let by_key = l.register(ChangeId::Upsert { id: 3, n: 0 }, 1);
        let after = l.register(ChangeId::Upsert { id: 4, n: 0 }, 1);
        l.committed(hidden, Some(at(epoch, 10)));
        l.committed(by_key, Some(at(epoch, 10)));
        l.hidden_until(at(epoch, 20));
        l.committed(after, Some(at(epoch, 30)));
        let every = ["seq:*".to_owned()];
        // Consumed before the fault was over: proves nothing.
        l.seen_in_kafka([], &[], &every, at(epoch, 15));
        assert!(l.change(hidden).unwrap().covered_ms.is_none());
        l.seen_in_kafka([], &["seq:3".to_owned()], &[], at(epoch, 40));
        assert!(l.change(by_key).unwrap().covered_ms.is_some());
        assert!(l.change(hidden).unwrap().covered_ms.is_none());
        // A record that delivers a change's own tag does not cover it.
        let sent = l.register(ChangeId::Upsert { id: 5, n: 0 }, 1);
        l.committed(sent, Some(at(epoch, 10)));
        l.seen_in_kafka(["seq:5:0"], &["seq:5".to_owned()], &[], at(epoch, 45));
        l.seen_in_redis(&[sent], at(epoch, 46));
        assert!(l.change(sent).unwrap().covered_ms.is_none());
        l.seen_in_kafka([], &[], &every, at(epoch, 50));
        assert!(l.change(hidden).unwrap().covered_ms.is_some());
        assert!(l.change(after).unwrap().covered_ms.is_none());
        assert!(l.change(earlier).unwrap().covered_ms.is_none());

        let (rows, total) = l.tally(&[Fault::WalbustKill, Fault::PublicationBlink]);
        let (_, t) = rows
            .iter()
            .find(|r| r.0 == Fault::PublicationBlink)
            .unwrap();
        assert_eq!(t.committed, 4);
        assert_eq!(t.covered, 2);
        assert_eq!(
            (t.lost_redis, t.lost_kafka),
            (1, 1),
            "the change after the fault"
        );
        assert_eq!(total.lost(), 4, "and the earlier cycle's change");
    }

    /// The checker itself must catch a loss: a committed change that no
    /// sink ever showed is counted lost, per sink.
    #[test]
    fn a_committed_change_never_seen_is_lost() {
        let epoch = Instant::now();
        let mut l = Ledger::new(epoch);
        let a = l.register(ChangeId::Upsert { id: 1, n: 0 }, 0);
        let b = l.register(ChangeId::Upsert { id: 2, n: 0 }, 0);
        l.committed(a, Some(at(epoch, 10)));
        l.committed(b, Some(at(epoch, 10)));
        l.seen_in_redis(&[a], at(epoch, 30));
        l.seen_in_kafka(["seq:1:0"], &[], &[], at(epoch, 40));
        l.set_redis_count(a, 1);
        assert_eq!(
            l.awaited(),
            Awaited {
                redis: 1,
                kafka: 1,
                unresolved: 0
            }
        );
        assert_eq!(
            l.awaited_sample(10),
            (vec!["seq:2:0".to_owned()], vec!["seq:2:0".to_owned()])
        );

        let (rows, total) = l.tally(&[Fault::WalbustKill]);
        let (_, t) = rows.iter().find(|r| r.0 == Fault::WalbustKill).unwrap();
        assert_eq!(total.lost(), 2);
        assert_eq!(total.lag_redis, t.lag_redis);
        assert_eq!(t.cycles, 1);
        assert_eq!(t.committed, 2);
        assert_eq!(t.lost_redis, 1);
        assert_eq!(t.lost_kafka, 1);
        assert_eq!(t.lag_redis.max_ms, 20);
        assert_eq!(t.lag_kafka.max_ms, 30);
        let others: u64 = rows
            .iter()
            .filter(|r| r.0 != Fault::WalbustKill)
            .map(|r| r.1.committed + r.1.cycles as u64)
            .sum();
        assert_eq!(others, 0);
    }

    #[test]
    fn duplicates_and_phantoms_are_counted() {
        let epoch = Instant::now();
        let mut l = Ledger::new(epoch);
        let twice = l.register(ChangeId::Upsert { id: 1, n: 0 }, 0);
        let rolled_back = l.register(ChangeId::Upsert { id: 2, n: 0 }, 0);
        l.committed(twice, Some(epoch));
        l.not_committed(rolled_back);
        l.seen_in_kafka(["seq:1:0", "seq:2:0", "seq:99:0"], &[], &[], at(epoch, 5));
        l.set_cycle(1);
        l.seen_in_kafka(["seq:1:0"], &[], &[], at(epoch, 6));
        l.set_redis_count(twice, 2);
        l.set_redis_count(rolled_back, 1);
        assert_eq!(l.unexpected_tags, ["seq:99:0"]);
        assert_eq!(l.unexpected_count, 1);
        assert_eq!(l.kafka_records, 2);
        let (rows, total) = l.tally(&[Fault::RedisOutage, Fault::WalbustKill]);
        assert_eq!(total.phantoms(), 2);
        assert_eq!(total.redelivered_kafka, 1);
        let (_, kill) = rows.iter().find(|r| r.0 == Fault::WalbustKill).unwrap();
        assert_eq!(kill.redelivered_kafka, 1, "the repeat came during cycle 1");
        assert_eq!(kill.committed, 0);
        let (_, t) = rows.iter().find(|r| r.0 == Fault::RedisOutage).unwrap();
        assert_eq!(t.redelivered_kafka, 0);
        assert_eq!((t.committed, t.not_committed), (1, 1));
        assert_eq!((t.lost_redis, t.lost_kafka), (0, 0));
        assert_eq!((t.duplicated_redis, t.duplicated_kafka), (1, 1));
        assert_eq!((t.phantom_redis, t.phantom_kafka), (1, 1));
    }

    #[test]
    fn uncertain_changes_are_awaited_until_resolved() {
        let epoch = Instant::now();
        let mut l = Ledger::new(epoch);
        let a = l.register(ChangeId::Delete { id: 4 }, 0);
        let b = l.register(ChangeId::Upsert { id: 5, n: 1 }, 0);
        l.uncertain(a);
        l.uncertain(b);
        assert_eq!(l.unresolved().len(), 2);
        l.committed(a, None);
        l.not_committed(b);
        assert_eq!(l.unresolved(), []);
        assert_eq!(
            l.awaited(),
            Awaited {
                redis: 1,
                kafka: 1,
                unresolved: 0
            }
        );
        l.seen_in_redis(&[a], at(epoch, 1));
        l.seen_in_kafka(["del:4"], &[], &[], at(epoch, 1));
        assert!(l.awaited().nothing());
        let (rows, _) = l.tally(&[Fault::PostgresCrash]);
        let (_, t) = rows.iter().find(|r| r.0 == Fault::PostgresCrash).unwrap();
        assert_eq!(t.resolved_committed, 1);
        assert_eq!(
            t.lag_redis,
            LagStats::default(),
            "no acknowledgement, no lag"
        );
    }

    #[test]
    fn redis_rounds_go_round_robin() {
        let mut l = Ledger::new(Instant::now());
        for id in 0..10 {
            l.register(ChangeId::Upsert { id, n: 0 }, 0);
        }
        let first: Vec<ChangeIx> = l.redis_round(4).into_iter().map(|r| r.0).collect();
        assert_eq!(first, [0, 1, 2, 3]);
        let second: Vec<ChangeIx> = l.redis_round(4).into_iter().map(|r| r.0).collect();
        assert_eq!(second, [4, 5, 6, 7]);
        l.seen_in_redis(&[0, 1], Instant::now());
        let third: Vec<ChangeIx> = l.redis_round(4).into_iter().map(|r| r.0).collect();
        assert_eq!(third, [8, 9, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_change_cannot_be_registered_twice() {
        let mut l = Ledger::new(Instant::now());
        l.register(ChangeId::Delete { id: 1 }, 0);
        l.register(ChangeId::Delete { id: 1 }, 0);
    }

    #[test]
    fn lag_percentiles() {
        let mut lags: Vec<u32> = (1..=100).rev().collect();
        let s = LagStats::of(&mut lags);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50, 99, 100));
        assert_eq!(LagStats::of(&mut []), LagStats::default());
    }
}
