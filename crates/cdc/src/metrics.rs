//! Metric names of the replication side, described once.
//!
//! Labels are low-cardinality by design: operations, never table names or
//! values (a table label is tempting, but a schema with thousands of
//! partitions would explode the series count).

use metrics::{describe_counter, describe_gauge, Counter, Gauge, Unit};
use walbust_rules::Op;

/// Row changes received, label `op` (insert, update, delete, truncate).
pub const CHANGES: &str = "walbust_changes_total";
/// Committed transactions received.
pub const TRANSACTIONS: &str = "walbust_transactions_total";
/// Bytes of pgoutput received.
pub const WAL_BYTES: &str = "walbust_wal_bytes_total";
/// The LSN acknowledged to Postgres as flushed (every sink confirmed up to it).
pub const CONFIRMED_LSN: &str = "walbust_confirmed_lsn";
/// The server's WAL end as last reported by the walsender.
pub const SERVER_WAL_END: &str = "walbust_server_wal_end_lsn";
/// Server WAL end minus the confirmed LSN: how far invalidation lags the primary.
pub const LAG_BYTES: &str = "walbust_replication_lag_bytes";
/// How stale caches may be: now minus the commit time of the oldest
/// transaction received and not yet confirmed by every sink, 0 when caught
/// up (see `walbust_flow::health::Health::lag_seconds`). Set when scraped.
pub const LAG_SECONDS: &str = "walbust_replication_lag_seconds";
/// Templates that could not be rendered because a value did not arrive
/// (unchanged TOAST, or an old value the replica identity does not send).
pub const MISSING_VALUES: &str = "walbust_rule_missing_values_total";
/// Keys and tags longer than `max_key_bytes` dropped under `on_long_key: refuse`.
pub const LONG_KEYS_REFUSED: &str = "walbust_rule_long_keys_refused_total";
/// Keys and tags rendered longer than `max_key_bytes`, hashed under
/// `on_long_key: hash`.
pub const LONG_KEYS_HASHED: &str = "walbust_rule_long_keys_hashed_total";
/// Patterns rendered longer than `max_key_bytes`, replaced by their rule's
/// `on_oversize` cover.
pub const OVERSIZE_PATTERNS: &str = "walbust_rule_oversize_patterns_total";
/// `at:` values that are not a timestamp walbust can read; nothing was
/// scheduled for them.
pub const SCHEDULE_UNREADABLE: &str = "walbust_scheduled_unreadable_total";
/// Rules bound in degraded form to a table's description, label `reason`
/// ([`DEGRADED_MISSING_COLUMN`], [`DEGRADED_OLD_NOT_SENT`]): they fall back
/// to wider invalidations instead of stopping the stream.
pub const DEGRADED_BINDINGS: &str = "walbust_rule_degraded_bindings_total";
/// `reason` of [`DEGRADED_BINDINGS`]: the description lacks a column a rule reads.
pub const DEGRADED_MISSING_COLUMN: &str = "missing_column";
/// `reason` of [`DEGRADED_BINDINGS`]: the replica identity does not send an
/// old value a rule reads.
pub const DEGRADED_OLD_NOT_SENT: &str = "old_value_not_sent";
/// Templates skipped because the value was NULL.
pub const NULL_VALUES: &str = "walbust_rule_null_values_total";
/// Rules that exceeded their per-transaction key budget and escalated to tags and patterns.
pub const ESCALATIONS: &str = "walbust_rule_escalations_total";
/// Explicit invalidation messages (prefix `walbust`), label `result`: ok,
/// malformed, or the reason the `explicit:` policy refused it (disabled,
/// too_large, too_many_entries, flush_all).
pub const EXPLICIT_MESSAGES: &str = "walbust_explicit_messages_total";
/// DDL guard messages (prefix `walbust.ddl`), label `result` (ok,
/// malformed, unknown_version).
pub const DDL_MESSAGES: &str = "walbust_ddl_messages_total";
/// Windows in which the publication withheld rule tables, label `result`
/// (purged, refused).
pub const DDL_WINDOWS: &str = "walbust_ddl_windows_total";
/// 1 while such a window is open or its purge unconfirmed: acknowledgements
/// wait at its start.
pub const DDL_WINDOW_OPEN: &str = "walbust_ddl_window_open";
/// 1 when the DDL guard's event trigger is installed and enabled (checked
/// at start).
pub const DDL_GUARD_INSTALLED: &str = "walbust_ddl_guard_installed";

/// Writes of the acknowledgement ceiling (the gap marker) that failed and
/// are retried: acknowledgements wait meanwhile (see [`crate::fence`]).
pub const ACK_CEILING_FAILURES: &str = "walbust_ack_ceiling_failures_total";

/// Rule sets handed to the reader, label `result` (applied, refused).
pub const RULE_RELOADS: &str = "walbust_rule_reloads_total";

/// Batches published without waiting any longer for a read replica that had not replayed them
/// within `source.replica_wait_max_ms` (lagging or unreachable), label `replica`.
pub const REPLICA_WAIT_TIMEOUTS: &str = "walbust_replica_wait_timeouts_total";
/// Per replica (label `replica`): WAL bytes between its replay position and the newest commit a
/// batch waited for (the highest `visible_from` given to the gate); 0 once it replayed past it.
pub const REPLICA_REPLAY_LAG_BYTES: &str = "walbust_replica_replay_lag_bytes";
/// 1 while walbust reads the replica's replay position, 0 while it cannot (unreachable, or not
/// in recovery), label `replica`.
pub const REPLICA_REACHABLE: &str = "walbust_replica_reachable";
/// How long each batch waited for the replicas before going to the sinks.
pub const REPLICA_WAIT_SECONDS: &str = "walbust_replica_wait_seconds";
/// Label naming a replica (`source.replicas[].name`, default `host:port`).
pub const LABEL_REPLICA: &str = "replica";

/// Label of counters that count outcomes.
pub const LABEL_RESULT: &str = "result";
/// Label of [`DEGRADED_BINDINGS`].
pub const LABEL_REASON: &str = "reason";
/// `result` values: [`EXPLICIT_MESSAGES`] and [`DDL_MESSAGES`].
pub const RESULT_OK: &str = "ok";
/// `result` values: [`EXPLICIT_MESSAGES`] and [`DDL_MESSAGES`].
pub const RESULT_MALFORMED: &str = "malformed";
/// `result` value of [`DDL_MESSAGES`].
pub const RESULT_UNKNOWN_VERSION: &str = "unknown_version";
/// `result` value of [`DDL_WINDOWS`].
pub const RESULT_PURGED: &str = "purged";
/// `result` values: [`DDL_WINDOWS`] and [`RULE_RELOADS`].
pub const RESULT_REFUSED: &str = "refused";
/// `result` value of [`RULE_RELOADS`].
pub const RESULT_APPLIED: &str = "applied";

/// Every counter with a label, and each value the label takes.
const LABELLED_COUNTERS: [(&str, &str, &[&str]); 5] = [
    (
        DEGRADED_BINDINGS,
        LABEL_REASON,
        &[DEGRADED_MISSING_COLUMN, DEGRADED_OLD_NOT_SENT],
    ),
    (
        EXPLICIT_MESSAGES,
        LABEL_RESULT,
        &[
            RESULT_OK,
            RESULT_MALFORMED,
            "disabled",
            "too_large",
            "too_many_entries",
            "flush_all",
        ],
    ),
    (
        DDL_MESSAGES,
        LABEL_RESULT,
        &[RESULT_OK, RESULT_MALFORMED, RESULT_UNKNOWN_VERSION],
    ),
    (DDL_WINDOWS, LABEL_RESULT, &[RESULT_PURGED, RESULT_REFUSED]),
    (
        RULE_RELOADS,
        LABEL_RESULT,
        &[RESULT_APPLIED, RESULT_REFUSED],
    ),
];

/// Every counter without a label.
const PLAIN_COUNTERS: [&str; 13] = [
    TRANSACTIONS,
    WAL_BYTES,
    MISSING_VALUES,
    LONG_KEYS_REFUSED,
    LONG_KEYS_HASHED,
    OVERSIZE_PATTERNS,
    SCHEDULE_UNREADABLE,
    NULL_VALUES,
    ESCALATIONS,
    ACK_CEILING_FAILURES,
    RECONNECTS,
    TAKEOVERS,
    HEARTBEATS,
];

/// Registers every counter of the replication side at 0, with each value
/// of its label, with the installed recorder. A series that first appears
/// at 1 has no earlier sample, so Prometheus's `increase()` and `rate()`
/// (and the alerts built on them) miss its first event. Also sets
/// [`DDL_WINDOW_OPEN`] to 0: no window is open before the stream starts,
/// and a dashboard shows 0 rather than no data.
pub fn register_counters() {
    metrics::gauge!(DDL_WINDOW_OPEN).set(0.0);
    for name in PLAIN_COUNTERS {
        metrics::counter!(name).increment(0);
    }
    for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
        metrics::counter!(CHANGES, "op" => op_label(op)).increment(0);
    }
    for (name, label, values) in LABELLED_COUNTERS {
        for &value in values {
            metrics::counter!(name, label => value).increment(0);
        }
    }
}

/// Handles of the metrics recorded for every event, looked up once. Looking
/// a metric up by name on each event (the `counter!` macro) cost about 5% of
/// walbust's CPU in a backlog drain, more than decoding. Register after the
/// recorder is installed: handles taken before it record nothing.
#[derive(Clone)]
pub(crate) struct EventMetrics {
    /// [`CHANGES`] by operation, indexed by [`EventMetrics::changes`].
    changes: [Counter; 4],
    pub transactions: Counter,
    pub wal_bytes: Counter,
    pub confirmed_lsn: Gauge,
    pub server_wal_end: Gauge,
    pub lag_bytes: Gauge,
}

impl EventMetrics {
    pub fn register() -> Self {
        let changes = |op: Op| metrics::counter!(CHANGES, "op" => op_label(op));
        EventMetrics {
            changes: [
                changes(Op::Insert),
                changes(Op::Update),
                changes(Op::Delete),
                changes(Op::Truncate),
            ],
            transactions: metrics::counter!(TRANSACTIONS),
            wal_bytes: metrics::counter!(WAL_BYTES),
            confirmed_lsn: metrics::gauge!(CONFIRMED_LSN),
            server_wal_end: metrics::gauge!(SERVER_WAL_END),
            lag_bytes: metrics::gauge!(LAG_BYTES),
        }
    }

    /// The [`CHANGES`] counter of `op`.
    pub fn changes(&self, op: Op) -> &Counter {
        let index = match op {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Truncate => 3,
        };
        &self.changes[index]
    }
}

/// The `op` label of [`CHANGES`].
fn op_label(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
    }
}

/// Registers descriptions with the installed recorder.
pub fn describe() {
    describe_counter!(
        REPLICA_WAIT_TIMEOUTS,
        "Batches published after source.replica_wait_max_ms without the replica having replayed them (lagging or unreachable)"
    );
    describe_gauge!(
        REPLICA_REPLAY_LAG_BYTES,
        Unit::Bytes,
        "WAL bytes between the replica's replay position and the newest commit a batch waited for; 0 when replayed past it"
    );
    describe_gauge!(
        REPLICA_REACHABLE,
        "1 while the replica's replay position can be read, 0 while unreachable or not in recovery"
    );
    metrics::describe_histogram!(
        REPLICA_WAIT_SECONDS,
        Unit::Seconds,
        "Time each batch waited for the read replicas to replay it before publishing"
    );
    describe_counter!(CHANGES, "Row changes received from the replication stream");
    describe_counter!(TRANSACTIONS, "Committed transactions received");
    describe_counter!(WAL_BYTES, Unit::Bytes, "Bytes of pgoutput received");
    describe_gauge!(
        CONFIRMED_LSN,
        "LSN acknowledged to Postgres as flushed after every sink confirmed"
    );
    describe_gauge!(SERVER_WAL_END, "Server WAL end reported by the walsender");
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Server WAL end minus the confirmed LSN"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the oldest transaction not yet confirmed by every sink; 0 when caught up"
    );
    describe_counter!(
        MISSING_VALUES,
        "Templates skipped because a value did not arrive (unchanged TOAST or replica identity)"
    );
    describe_counter!(NULL_VALUES, "Templates skipped because a value was NULL");
    describe_counter!(
        LONG_KEYS_REFUSED,
        "Keys and tags longer than max_key_bytes dropped under on_long_key: refuse"
    );
    describe_counter!(
        SCHEDULE_UNREADABLE,
        "at: values that are not a timestamp walbust can read; nothing was scheduled for them"
    );
    describe_counter!(
        LONG_KEYS_HASHED,
        "Keys and tags longer than max_key_bytes, hashed under on_long_key: hash"
    );
    describe_counter!(
        OVERSIZE_PATTERNS,
        "Patterns longer than max_key_bytes, replaced by their rule's on_oversize cover"
    );
    describe_counter!(
        DEGRADED_BINDINGS,
        "Rules bound in degraded form to a table description (a column it lacks, an old value not sent), by reason"
    );
    describe_counter!(
        ESCALATIONS,
        "Rules that exceeded the per-transaction key budget and escalated to tags and patterns"
    );
    describe_counter!(
        EXPLICIT_MESSAGES,
        "Explicit invalidation messages received, by result"
    );
    describe_counter!(DDL_MESSAGES, "DDL guard messages received, by result");
    describe_counter!(
        DDL_WINDOWS,
        "Windows in which the publication withheld rule tables, by how they were closed"
    );
    describe_counter!(
        ACK_CEILING_FAILURES,
        "Failed writes of the acknowledgement ceiling to the gap marker (retried; acknowledgements wait)"
    );
    describe_gauge!(
        DDL_WINDOW_OPEN,
        "1 while a window the publication withheld rule tables in is open or its purge unconfirmed"
    );
    describe_gauge!(
        DDL_GUARD_INSTALLED,
        "1 when the DDL guard event trigger is installed and enabled"
    );
    describe_counter!(
        RULE_RELOADS,
        "New rule sets handed to the reader, by result (applied, refused)"
    );
    describe_counter!(
        RECONNECTS,
        "Replication connections re-established after a transient failure (a standby's waits for the slot are not counted)"
    );
    describe_counter!(
        TAKEOVERS,
        "Times this instance, waiting as a standby, took the slot over"
    );
    describe_gauge!(
        DEFINITE_ERROR,
        "1 when walbust stopped on an error that needs a human, by reason"
    );
    describe_gauge!(
        SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "WAL the server keeps for walbust's slot"
    );
    describe_gauge!(
        SLOT_SAFE_WAL_BYTES,
        Unit::Bytes,
        "WAL that can be written before the slot risks being lost (max_slot_wal_keep_size)"
    );
    describe_gauge!(SLOT_WAL_STATUS, "1 for the slot's current wal_status");
    describe_counter!(HEARTBEATS, "Heartbeat messages written into the WAL");
    describe_feedback();
}

/// How long an acknowledged position waited before a standby status update
/// told the server about it.
pub const ACK_FEEDBACK_DELAY: &str = "walbust_ack_feedback_delay_seconds";

fn describe_feedback() {
    metrics::describe_histogram!(
        ACK_FEEDBACK_DELAY,
        Unit::Seconds,
        "Delay between confirming a position and reporting it to Postgres"
    );
}

/// Replication connections re-established after a transient failure.
pub const RECONNECTS: &str = "walbust_reconnects_total";
/// A standby instance took the slot over (the active one stopped or died).
pub const TAKEOVERS: &str = "walbust_takeovers_total";
/// Set to 1, label `reason`, when walbust stops on a definite error.
pub const DEFINITE_ERROR: &str = "walbust_definite_error";

/// WAL the server keeps for the slot (current WAL position minus restart_lsn).
pub const SLOT_RETAINED_WAL_BYTES: &str = "walbust_slot_retained_wal_bytes";
/// WAL that can still be written before the slot is in danger of being lost.
pub const SLOT_SAFE_WAL_BYTES: &str = "walbust_slot_safe_wal_bytes";
/// 1 for the slot's current `wal_status`, label `status`.
pub const SLOT_WAL_STATUS: &str = "walbust_slot_wal_status";

/// Heartbeat messages written into the WAL (`source.heartbeat_interval_ms`).
pub const HEARTBEATS: &str = "walbust_heartbeats_total";
