//! The schedule of `at:` invalidations, kept in Redis.
//!
//! One sorted set per replication slot, `walbust:schedule:<slot>`: each member is a JSON entry
//! (what to invalidate, when, and the transaction that asked), its score the due time in
//! milliseconds since the Unix epoch. The Redis sink adds a batch's entries in the round trip
//! that confirms the batch, before the batch counts as confirmed; the WAL behind it is only
//! acknowledged after that, so a schedule entry of an acknowledged transaction cannot be lost
//! (at worst a replay adds it again: identical entries are one member).
//!
//! The applier ([`crate::schedule`]) reads what is due, sends it through every sink, and only
//! then removes it (`ZREM`): a crash in between applies it again, which is harmless.

use serde::{Deserialize, Serialize};
use walbust_pgoutput::{format_lsn, parse_lsn};

use crate::batch::{Batch, ScheduledEntry};

/// The sorted set holding the schedule of `slot`.
pub fn schedule_key(slot: Option<&str>) -> String {
    match slot {
        Some(slot) => format!("walbust:schedule:{slot}"),
        None => "walbust:schedule".to_owned(),
    }
}

/// A schedule entry as stored (the sorted set's member).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stored {
    /// Due time, µs since the Unix epoch.
    due: i64,
    /// Commit LSN of the transaction that scheduled it, as Postgres prints it.
    lsn: String,
    /// Its commit time, µs since the Postgres epoch.
    commit: i64,
    keys: Vec<String>,
    tags: Vec<String>,
    patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refresh: Vec<String>,
}

/// The member and score (ms) of `entry`.
pub fn encode(entry: &ScheduledEntry) -> (String, i64) {
    let due = &entry.due;
    let stored = Stored {
        due: due.due_unix_micros,
        lsn: format_lsn(entry.lsn),
        commit: entry.commit_time_micros,
        keys: due.keys.clone(),
        tags: due.tags.clone(),
        patterns: due.patterns.clone(),
        refresh: due.refresh.clone(),
    };
    // Serializing strings and numbers cannot fail.
    let member = serde_json::to_string(&stored).unwrap_or_default();
    (member, due.due_unix_micros.div_euclid(1000))
}

/// The batch that applies a stored entry; `None` when the member is not one walbust wrote.
pub fn decode(member: &str) -> Option<Batch> {
    let s: Stored = serde_json::from_str(member).ok()?;
    let lsn = parse_lsn(&s.lsn)?;
    let mut refresh = s.refresh;
    refresh.sort();
    refresh.dedup();
    Some(Batch {
        lsn,
        end_lsn: None,
        commit_time_micros: s.commit,
        first_commit_time_micros: s.commit,
        xids: Vec::new(),
        keys: sorted(s.keys),
        tags: sorted(s.tags),
        patterns: sorted(s.patterns),
        schedule: Vec::new(),
        refresh,
        due_unix_micros: Some(s.due),
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = ScheduledEntry {
            lsn: 0x16B3748,
            commit_time_micros: 42,
            due: walbust_rules::Scheduled {
                due_unix_micros: 1_796_413_200_123_456,
                keys: vec!["b".into(), "a".into()],
                tags: vec!["t".into()],
                patterns: vec!["p:*".into()],
                refresh: vec!["a".into()],
            },
        };
        let (member, score) = encode(&entry);
        assert_eq!(score, 1_796_413_200_123);
        let batch = decode(&member).expect("walbust's own entry");
        assert_eq!(batch.lsn, 0x16B3748);
        assert_eq!(batch.keys, ["a", "b"]);
        assert_eq!(batch.refresh, ["a"]);
        assert_eq!(batch.due_unix_micros, Some(1_796_413_200_123_456));
        assert_eq!(batch.end_lsn, None);
        assert!(decode("not json").is_none());
    }
}
