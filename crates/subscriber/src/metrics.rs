//! Every metric the subscriber emits (through the `metrics` facade: install any recorder, for
//! example `metrics-exporter-prometheus`). Names as constants, described once by [`describe`].
//!
//! Labels are low-cardinality: `transport` (`kafka`, `redis`), `reason`. Keys never appear.

use metrics::{describe_counter, describe_gauge, Unit};

/// Label naming the transport.
pub const LABEL_TRANSPORT: &str = "transport";
/// Label giving why a record was refused or a gap declared.
pub const LABEL_REASON: &str = "reason";

/// Records applied to the cache.
pub const RECORDS_APPLIED: &str = "walbust_subscriber_records_applied_total";
/// Keys, tags and patterns in applied records.
pub const ENTRIES_APPLIED: &str = "walbust_subscriber_entries_applied_total";
/// Keys in applied records.
pub const KEYS_APPLIED: &str = "walbust_subscriber_keys_applied_total";
/// Records not applied, by `reason` (`version`: a schema version this subscriber does not
/// know; `malformed`: not a record).
pub const RECORDS_REFUSED: &str = "walbust_subscriber_records_refused_total";
/// Transport gaps (records may have been lost), each followed by a clear of the cache, by
/// `transport` and `reason`.
pub const GAPS: &str = "walbust_subscriber_gaps_total";
/// Flush-all records (pattern `*`) applied.
pub const FLUSHES: &str = "walbust_subscriber_flushes_total";
/// The highest record LSN applied, as a number.
pub const APPLIED_LSN: &str = "walbust_subscriber_applied_lsn";

/// Describes every metric to the installed recorder.
pub fn describe() {
    describe_counter!(RECORDS_APPLIED, "Records applied to the local cache");
    describe_counter!(
        ENTRIES_APPLIED,
        "Keys, tags and patterns in records applied to the local cache"
    );
    describe_counter!(KEYS_APPLIED, "Keys in records applied to the local cache");
    describe_counter!(
        RECORDS_REFUSED,
        "Records not applied: unknown schema version or not a record"
    );
    describe_counter!(
        GAPS,
        "Transport gaps after which the local cache was cleared"
    );
    describe_counter!(FLUSHES, "Flush-all records applied");
    describe_gauge!(
        APPLIED_LSN,
        Unit::Count,
        "Highest record LSN applied (the read-your-writes watermark)"
    );
}
