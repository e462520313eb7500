//! Every metric the publishing side emits: names as constants, described once by [`describe`].
//!
//! Telemetry is per batch, never per key. Labels are low-cardinality: `sink` (`redis`, `kafka`,
//! `http`), `kind` (a [`SinkErrorKind`](crate::SinkErrorKind) name), and the HTTP sink's `class`
//! and `reason`. Keys, tags and patterns never appear in labels.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Label naming the sink.
pub const LABEL_SINK: &str = "sink";
/// Label naming an error kind.
pub const LABEL_KIND: &str = "kind";
/// Label naming the class of an HTTP answer (`2xx`, `3xx`, `4xx`, `5xx`, `other`, or `failed`
/// when none came).
pub const LABEL_CLASS: &str = "class";
/// Label naming why entries were skipped.
pub const LABEL_REASON: &str = "reason";

/// Batches confirmed by a sink.
pub const SINK_BATCHES: &str = "walbust_sink_batches_total";
/// Keys in batches confirmed by a sink.
pub const SINK_KEYS: &str = "walbust_sink_keys_total";
/// Tags in batches confirmed by a sink.
pub const SINK_TAGS: &str = "walbust_sink_tags_total";
/// Patterns in batches confirmed by a sink.
pub const SINK_PATTERNS: &str = "walbust_sink_patterns_total";
/// Publish attempts that failed and were scheduled again.
pub const SINK_RETRIES: &str = "walbust_sink_retries_total";
/// Failed publish attempts, by `kind`.
pub const SINK_ERRORS: &str = "walbust_sink_errors_total";
/// Duration of one publish attempt.
pub const SINK_PUBLISH_SECONDS: &str = "walbust_sink_publish_seconds";

/// Batches confirmed by every sink (including batches that only complete transactions).
pub const PIPELINE_BATCHES: &str = "walbust_pipeline_batches_total";
/// Entries (keys + tags + patterns) per dispatched batch.
pub const PIPELINE_BATCH_ENTRIES: &str = "walbust_pipeline_batch_entries";
/// Batches dispatched but not yet confirmed.
pub const PIPELINE_IN_FLIGHT: &str = "walbust_pipeline_in_flight";
/// The last end LSN reported as confirmed.
pub const PIPELINE_CONFIRMED_LSN: &str = "walbust_pipeline_confirmed_lsn";
/// Time from a batch's oldest commit to its confirmation by every sink.
pub const COMMIT_TO_CONFIRM_SECONDS: &str = "walbust_commit_to_confirm_seconds";

/// Keys removed by `UNLINK` of batch keys (keys that existed).
pub const REDIS_KEYS_REMOVED: &str = "walbust_redis_keys_removed_total";
/// Members removed by tag purges (`set` strategy).
pub const REDIS_TAG_MEMBERS_REMOVED: &str = "walbust_redis_tag_members_removed_total";
/// Tag keys (`set` strategy) found holding something other than a set, and removed.
pub const REDIS_WRONGTYPE_KEYS: &str = "walbust_redis_wrongtype_keys_total";
/// `SCAN` calls made for pattern purges: each walks about `scan_count` keys.
pub const REDIS_SCAN_CALLS: &str = "walbust_redis_pattern_scan_calls_total";
/// Keys matched by pattern scans.
pub const REDIS_PATTERN_KEYS_MATCHED: &str = "walbust_redis_pattern_keys_matched_total";
/// Keys removed by pattern purges.
pub const REDIS_PATTERN_KEYS_REMOVED: &str = "walbust_redis_pattern_keys_removed_total";
/// Duration of one pattern walk (every primary of a cluster, in parallel).
pub const REDIS_PATTERN_WALK_SECONDS: &str = "walbust_redis_pattern_walk_seconds";
/// Keys a pattern walk went over, about: `scan_count` per `SCAN` call, every node together.
pub const REDIS_PATTERN_WALK_KEYS_SCANNED: &str = "walbust_redis_pattern_walk_keys_scanned";
/// Pattern walks running now (0 or 1: one walk at a time, merged).
pub const REDIS_PATTERN_WALKS_IN_PROGRESS: &str = "walbust_redis_pattern_walks_in_progress";
/// Distinct patterns served by one walk.
pub const REDIS_PATTERNS_PER_WALK: &str = "walbust_redis_patterns_per_walk";
/// Age of the oldest pattern submitted and not yet purged by a finished walk (0 when none).
pub const REDIS_PATTERN_OLDEST_PENDING_SECONDS: &str =
    "walbust_redis_pattern_oldest_pending_seconds";

/// Kafka records acknowledged by the broker.
pub const KAFKA_RECORDS: &str = "walbust_kafka_records_total";
/// Payload bytes of Kafka records acknowledged by the broker.
pub const KAFKA_RECORD_BYTES: &str = "walbust_kafka_record_bytes_total";
/// Entries too large for any Kafka record, replaced by a flush of everything (pattern `*`).
pub const KAFKA_OVERSIZE_ENTRIES: &str = "walbust_kafka_oversize_entries_total";

/// HTTP sink requests, by the `class` of their answer.
pub const HTTP_REQUESTS: &str = "walbust_http_requests_total";
/// Entries the HTTP sink could not express as surrogate keys and skipped (no `flush_all_key`),
/// by `reason`: `pattern` or `unsendable`.
pub const HTTP_ENTRIES_SKIPPED: &str = "walbust_http_entries_skipped_total";
/// Batches whose patterns or unsendable entries the HTTP sink purged as its `flush_all_key`.
pub const HTTP_FLUSH_ALL: &str = "walbust_http_flush_all_total";
/// Scheduled invalidations (`at:`) waiting in the schedule (its size, read by the applier).
pub const SCHEDULED_PENDING: &str = "walbust_scheduled_pending";
/// Scheduled invalidations stored with their batch.
pub const SCHEDULED_ADDED: &str = "walbust_scheduled_added_total";
/// Scheduled invalidations applied by every sink and removed from the schedule.
pub const SCHEDULED_APPLIED: &str = "walbust_scheduled_applied_total";
/// Scheduled invalidations not stored, by `reason`: `horizon` (due later than
/// `schedule_horizon_days`), `invalid` (a stored entry walbust cannot read, removed).
pub const SCHEDULED_REFUSED: &str = "walbust_scheduled_refused_total";
/// Batches whose `WAIT` reached fewer replicas than `sinks.redis.wait_replicas` (then retried).
pub const REDIS_WAIT_SHORTFALLS: &str = "walbust_redis_wait_shortfalls_total";
/// Keys appended to the refresh stream.
pub const REFRESH_KEYS: &str = "walbust_refresh_keys_total";

/// Registers every counter of the publishing side at 0 with the installed
/// recorder, for each of the sinks named (their [`Sink::name`](crate::Sink::name)) and each
/// error kind. A series that first appears at 1 has no earlier sample, so
/// Prometheus's `increase()` and `rate()` (and the alerts built on them)
/// miss its first event.
pub fn register_counters(sinks: &[&'static str]) {
    metrics::counter!(PIPELINE_BATCHES).increment(0);
    for &sink in sinks {
        for name in [
            SINK_BATCHES,
            SINK_KEYS,
            SINK_TAGS,
            SINK_PATTERNS,
            SINK_RETRIES,
        ] {
            metrics::counter!(name, LABEL_SINK => sink).increment(0);
        }
        for kind in crate::SinkErrorKind::ALL {
            metrics::counter!(SINK_ERRORS, LABEL_SINK => sink, LABEL_KIND => kind.as_str())
                .increment(0);
        }
    }
    let redis = [
        REDIS_KEYS_REMOVED,
        REDIS_TAG_MEMBERS_REMOVED,
        REDIS_WRONGTYPE_KEYS,
        REDIS_SCAN_CALLS,
        REDIS_PATTERN_KEYS_MATCHED,
        REDIS_PATTERN_KEYS_REMOVED,
        SCHEDULED_ADDED,
        SCHEDULED_APPLIED,
        REFRESH_KEYS,
        REDIS_WAIT_SHORTFALLS,
    ];
    if sinks.contains(&crate::redis_sink::NAME) {
        for reason in ["horizon", "invalid"] {
            metrics::counter!(SCHEDULED_REFUSED, LABEL_REASON => reason).increment(0);
        }
    }
    let kafka = [KAFKA_RECORDS, KAFKA_RECORD_BYTES, KAFKA_OVERSIZE_ENTRIES];
    if sinks.contains(&crate::http_sink::NAME) {
        for class in ["2xx", "3xx", "4xx", "5xx", "other", "failed"] {
            metrics::counter!(HTTP_REQUESTS, LABEL_CLASS => class).increment(0);
        }
        for reason in ["pattern", "unsendable"] {
            metrics::counter!(HTTP_ENTRIES_SKIPPED, LABEL_REASON => reason).increment(0);
        }
        metrics::counter!(HTTP_FLUSH_ALL).increment(0);
    }
    for (sink, names) in [
        (crate::redis_sink::NAME, &redis[..]),
        (crate::kafka_sink::NAME, &kafka[..]),
    ] {
        if sinks.contains(&sink) {
            for &name in names {
                metrics::counter!(name).increment(0);
            }
        }
    }
    if sinks.contains(&crate::redis_sink::NAME) {
        // Gauges the alerts read, present from the start.
        metrics::gauge!(REDIS_PATTERN_WALKS_IN_PROGRESS).set(0.0);
        metrics::gauge!(REDIS_PATTERN_OLDEST_PENDING_SECONDS).set(0.0);
    }
}

/// Registers descriptions and units with the installed recorder. Call once after installing it.
pub fn describe() {
    describe_counter!(SINK_BATCHES, Unit::Count, "Batches confirmed by a sink.");
    describe_counter!(
        SINK_KEYS,
        Unit::Count,
        "Keys in batches confirmed by a sink."
    );
    describe_counter!(
        SINK_TAGS,
        Unit::Count,
        "Tags in batches confirmed by a sink."
    );
    describe_counter!(
        SINK_PATTERNS,
        Unit::Count,
        "Patterns in batches confirmed by a sink."
    );
    describe_counter!(
        SINK_RETRIES,
        Unit::Count,
        "Failed publish attempts that were scheduled again."
    );
    describe_counter!(SINK_ERRORS, Unit::Count, "Failed publish attempts by kind.");
    describe_histogram!(
        SINK_PUBLISH_SECONDS,
        Unit::Seconds,
        "Duration of one publish attempt to a sink."
    );
    describe_counter!(
        PIPELINE_BATCHES,
        Unit::Count,
        "Batches confirmed by every sink."
    );
    describe_histogram!(
        PIPELINE_BATCH_ENTRIES,
        Unit::Count,
        "Keys, tags and patterns per dispatched batch."
    );
    describe_gauge!(
        PIPELINE_IN_FLIGHT,
        Unit::Count,
        "Batches dispatched and not yet confirmed."
    );
    describe_gauge!(
        PIPELINE_CONFIRMED_LSN,
        "Last end LSN confirmed by every sink (what Postgres may be told is flushed)."
    );
    describe_histogram!(
        COMMIT_TO_CONFIRM_SECONDS,
        Unit::Seconds,
        "Time from the oldest commit in a batch to its confirmation by every sink."
    );
    describe_counter!(
        REDIS_KEYS_REMOVED,
        Unit::Count,
        "Keys that existed and were removed by UNLINK."
    );
    describe_counter!(
        REDIS_TAG_MEMBERS_REMOVED,
        Unit::Count,
        "Cache keys removed by tag purges (set strategy)."
    );
    describe_counter!(
        REDIS_WRONGTYPE_KEYS,
        Unit::Count,
        "Tag keys (set strategy) that held something other than a set and were removed."
    );
    describe_counter!(
        REDIS_SCAN_CALLS,
        Unit::Count,
        "SCAN calls made by pattern purges; each walks about scan_count keys."
    );
    describe_counter!(
        REDIS_PATTERN_KEYS_MATCHED,
        Unit::Count,
        "Keys matched by pattern purges."
    );
    describe_counter!(
        REDIS_PATTERN_KEYS_REMOVED,
        Unit::Count,
        "Keys removed by pattern purges."
    );
    describe_counter!(
        REDIS_WAIT_SHORTFALLS,
        Unit::Count,
        "Batches whose WAIT reached fewer replicas than sinks.redis.wait_replicas (retried)."
    );
    describe_gauge!(
        SCHEDULED_PENDING,
        Unit::Count,
        "Scheduled invalidations (at:) waiting in the schedule."
    );
    describe_counter!(
        SCHEDULED_ADDED,
        Unit::Count,
        "Scheduled invalidations (at:) stored with their batch."
    );
    describe_counter!(
        SCHEDULED_APPLIED,
        Unit::Count,
        "Scheduled invalidations applied by every sink and removed from the schedule."
    );
    describe_counter!(
        SCHEDULED_REFUSED,
        Unit::Count,
        "Scheduled invalidations not stored or dropped, by reason (horizon, invalid)."
    );
    describe_counter!(
        REFRESH_KEYS,
        Unit::Count,
        "Keys appended to the refresh stream for warmers."
    );
    describe_histogram!(
        REDIS_PATTERN_WALK_SECONDS,
        Unit::Seconds,
        "Duration of one pattern walk (every primary of a cluster, in parallel)."
    );
    describe_histogram!(
        REDIS_PATTERN_WALK_KEYS_SCANNED,
        Unit::Count,
        "Keys a pattern walk went over, about (scan_count per SCAN call, every node together)."
    );
    describe_gauge!(
        REDIS_PATTERN_WALKS_IN_PROGRESS,
        Unit::Count,
        "Pattern walks running now."
    );
    describe_histogram!(
        REDIS_PATTERNS_PER_WALK,
        Unit::Count,
        "Distinct patterns served by one walk (merged while the previous walk ran)."
    );
    describe_gauge!(
        REDIS_PATTERN_OLDEST_PENDING_SECONDS,
        Unit::Seconds,
        "Age of the oldest pattern not yet purged by a finished walk; 0 when none waits."
    );
    describe_counter!(
        KAFKA_RECORDS,
        Unit::Count,
        "Kafka records acknowledged by the broker."
    );
    describe_counter!(
        KAFKA_OVERSIZE_ENTRIES,
        Unit::Count,
        "Entries too large for any Kafka record, replaced by a flush of everything (pattern *)."
    );
    describe_counter!(
        KAFKA_RECORD_BYTES,
        Unit::Bytes,
        "Payload bytes of Kafka records acknowledged by the broker."
    );
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP sink requests by the class of their answer (failed: no answer)."
    );
    describe_counter!(
        HTTP_ENTRIES_SKIPPED,
        Unit::Count,
        "Entries no surrogate key can express (patterns, unsendable), skipped for lack of flush_all_key."
    );
    describe_counter!(
        HTTP_FLUSH_ALL,
        Unit::Count,
        "Batches whose patterns or unsendable entries were purged as the flush_all_key."
    );
}
