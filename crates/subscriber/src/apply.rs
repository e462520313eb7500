//! [`Applier`]: what both transports share. It decodes a payload, applies the record to the
//! cache, raises the watermark and counts; and on a transport gap it clears the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{counter, gauge};

use crate::cache::LocalCache;
use crate::glob::Glob;
use crate::lsn::Lsn;
use crate::metrics as m;
use crate::record::{Record, RecordError};
use crate::watermark::Watermark;

/// Where records come from: the `transport` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// walbust's Kafka topic.
    Kafka,
    /// walbust's Redis `PUBLISH` channel.
    Redis,
    /// Records handed to [`Applier::apply_payload`] by the service itself.
    Custom,
}

impl Transport {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Kafka => "kafka",
            Transport::Redis => "redis",
            Transport::Custom => "custom",
        }
    }
}

/// Applies records to a [`LocalCache`]. The transports wrap one; a service with a transport of
/// its own can use it directly.
pub struct Applier<C> {
    cache: C,
    transport: Transport,
    watermark: Watermark,
    stats: Stats,
}

/// Counts kept in the process (also exported as metrics, see [`crate::metrics`]). Cheap to
/// clone; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    records_applied: AtomicU64,
    keys_applied: AtomicU64,
    records_refused: AtomicU64,
    gaps: AtomicU64,
}

impl Stats {
    /// Records applied.
    pub fn records_applied(&self) -> u64 {
        self.0.records_applied.load(Ordering::Relaxed)
    }
    /// Keys in the records applied.
    pub fn keys_applied(&self) -> u64 {
        self.0.keys_applied.load(Ordering::Relaxed)
    }
    /// Payloads refused (unknown version, not a record).
    pub fn records_refused(&self) -> u64 {
        self.0.records_refused.load(Ordering::Relaxed)
    }
    /// Transport gaps, each of which cleared the cache.
    pub fn gaps(&self) -> u64 {
        self.0.gaps.load(Ordering::Relaxed)
    }
}

impl<C: LocalCache> Applier<C> {
    /// An applier of records arriving through `transport` to `cache`.
    pub fn new(cache: C, transport: Transport) -> Self {
        Applier {
            cache,
            transport,
            watermark: Watermark::default(),
            stats: Stats::default(),
        }
    }

    /// The cache it applies to.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    /// The applied watermark (a handle: it follows later records).
    pub fn watermark(&self) -> Watermark {
        self.watermark.clone()
    }

    /// The counts (a handle: it follows later records).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Decodes and applies one payload; returns the record's LSN. A payload that is not a
    /// version-1 record is counted in `walbust_subscriber_records_refused_total{reason}` and
    /// returned as an error, the cache untouched.
    pub fn apply_payload(&self, payload: &[u8]) -> Result<Lsn, RecordError> {
        match Record::parse(payload) {
            Ok(record) => {
                self.apply(&record);
                Ok(record.lsn)
            }
            Err(err) => {
                self.stats.0.records_refused.fetch_add(1, Ordering::Relaxed);
                counter!(m::RECORDS_REFUSED, m::LABEL_TRANSPORT => self.transport.as_str(),
                    m::LABEL_REASON => err.reason())
                .increment(1);
                Err(err)
            }
        }
    }

    /// Applies a decoded record: keys, tags, patterns (a match-all pattern clears the cache
    /// instead), counts it, then raises the watermark.
    pub fn apply(&self, record: &Record) {
        let globs: Vec<Glob> = record.patterns.iter().map(|p| Glob::new(p)).collect();
        if globs.iter().any(Glob::is_match_all) {
            self.cache.clear();
            counter!(m::FLUSHES, m::LABEL_TRANSPORT => self.transport.as_str()).increment(1);
        } else {
            if !record.keys.is_empty() {
                self.cache.invalidate_keys(&record.keys);
            }
            if !record.tags.is_empty() {
                self.cache.invalidate_tags(&record.tags);
            }
            if !globs.is_empty() {
                self.cache.invalidate_patterns(&globs);
            }
        }
        let keys = record.keys.len() as u64;
        self.stats.0.records_applied.fetch_add(1, Ordering::Relaxed);
        self.stats.0.keys_applied.fetch_add(keys, Ordering::Relaxed);
        let transport = self.transport.as_str();
        counter!(m::RECORDS_APPLIED, m::LABEL_TRANSPORT => transport).increment(1);
        counter!(m::KEYS_APPLIED, m::LABEL_TRANSPORT => transport).increment(keys);
        counter!(m::ENTRIES_APPLIED, m::LABEL_TRANSPORT => transport)
            .increment(record.entries() as u64);
        // A gauge holds an f64: exact up to 2^53 bytes of WAL, far beyond any real server.
        gauge!(m::APPLIED_LSN, m::LABEL_TRANSPORT => transport).set(record.lsn.0 as f64);
        // Last: a waiter woken by the watermark finds the record applied and counted.
        self.watermark.advance(record.lsn);
    }

    /// Records may have been lost (`reason` says how, as a metric label): clears the cache, so
    /// nothing stale stays, and counts the gap.
    pub fn gap(&self, reason: &'static str) {
        self.cache.clear();
        self.stats.0.gaps.fetch_add(1, Ordering::Relaxed);
        counter!(m::GAPS, m::LABEL_TRANSPORT => self.transport.as_str(), m::LABEL_REASON => reason)
            .increment(1);
        tracing::warn!(
            transport = self.transport.as_str(),
            reason,
            "walbust subscriber: invalidation records may have been lost; local cache cleared"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Remembers every call, to check what the applier asks of a cache.
    #[derive(Default)]
    struct Journal(Mutex<Vec<String>>);

    impl LocalCache for Journal {
        fn invalidate_keys(&self, keys: &[String]) {
            self.0.lock().unwrap().push(format!("keys {keys:?}"));
        }
        fn invalidate_tags(&self, tags: &[String]) {
            self.0.lock().unwrap().push(format!("tags {tags:?}"));
        }
        fn invalidate_patterns(&self, patterns: &[Glob]) {
            let texts: Vec<&str> = patterns.iter().map(Glob::as_str).collect();
            self.0.lock().unwrap().push(format!("patterns {texts:?}"));
        }
        fn clear(&self) {
            self.0.lock().unwrap().push("clear".to_owned());
        }
    }

    fn calls(applier: &Applier<Journal>) -> Vec<String> {
        std::mem::take(&mut *applier.cache().0.lock().unwrap())
    }

    #[test]
    fn applies_keys_tags_patterns_and_raises_the_watermark() {
        let applier = Applier::new(Journal::default(), Transport::Custom);
        let lsn = applier
            .apply_payload(
                br#"{"v":1,"lsn":"0/20","keys":["a","b"],"tags":["t"],"patterns":["p:*"]}"#,
            )
            .unwrap();
        assert_eq!(lsn, Lsn(0x20));
        assert_eq!(
            calls(&applier),
            [r#"keys ["a", "b"]"#, r#"tags ["t"]"#, r#"patterns ["p:*"]"#]
        );
        assert_eq!(applier.watermark().current(), Lsn(0x20));
        // An older duplicate is applied again (harmless) but does not lower the watermark.
        applier
            .apply_payload(br#"{"v":1,"lsn":"0/10","keys":["a"]}"#)
            .unwrap();
        assert_eq!(calls(&applier), [r#"keys ["a"]"#]);
        assert_eq!(applier.watermark().current(), Lsn(0x20));
        assert_eq!(applier.stats().records_applied(), 2);
        assert_eq!(applier.stats().keys_applied(), 3);
    }

    #[test]
    fn a_match_all_pattern_clears_instead() {
        let applier = Applier::new(Journal::default(), Transport::Custom);
        applier
            .apply_payload(br#"{"v":1,"lsn":"0/1","keys":["a"],"patterns":["x:*","*"]}"#)
            .unwrap();
        assert_eq!(calls(&applier), ["clear"]);
    }

    #[test]
    fn refused_records_leave_the_cache_and_the_watermark_alone() {
        let applier = Applier::new(Journal::default(), Transport::Custom);
        for payload in [&br#"{"v":2,"lsn":"0/30","keys":["a"]}"#[..], b"garbage"] {
            applier.apply_payload(payload).unwrap_err();
        }
        assert!(calls(&applier).is_empty());
        assert_eq!(applier.watermark().current(), Lsn(0));
        assert_eq!(applier.stats().records_refused(), 2);
        assert_eq!(applier.stats().records_applied(), 0);
    }

    #[test]
    fn a_gap_clears_and_counts() {
        let applier = Applier::new(Journal::default(), Transport::Redis);
        applier.gap("reconnect");
        assert_eq!(calls(&applier), ["clear"]);
        assert_eq!(applier.stats().gaps(), 1);
    }
}
