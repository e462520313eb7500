//! Metric names of the binary itself, described once.
//!
//! The replication side and the publishing side keep theirs in
//! `walbust_cdc::metrics` and `walbust_publish::metrics`; what is here belongs to neither:
//! watching the rules file, and waiting at start-up.

use metrics::{describe_counter, describe_gauge};

/// New rules files (or SIGHUPs) whose rules could not be used: invalid
/// YAML or rules, an unreadable file, or tables the publication lacks. The
/// previous rules keep running.
pub const RULES_RELOAD_ERRORS: &str = "walbust_rules_reload_errors_total";

/// Start-up attempts that found a service not ready yet and will be made
/// again, label `what` (`postgres`, `redis`, `kafka`).
pub const STARTUP_WAITS: &str = "walbust_startup_waits_total";

/// 1 when `/readyz` would answer 200 (streaming, every sink healthy), else
/// 0. Set when scraped.
pub const READY: &str = "walbust_ready";
/// 1 for the role this instance has now (label `role`: `starting`,
/// `active`, `standby`, `stopping`), 0 for the others. Set when scraped.
pub const ROLE: &str = "walbust_role";
/// The roles of [`ROLE`].
pub const ROLES: [&str; 4] = ["starting", "active", "standby", "stopping"];

/// Registers descriptions with the installed recorder.
pub fn describe() {
    describe_gauge!(
        READY,
        "1 when streaming from the slot with every sink healthy (what /readyz reports), else 0"
    );
    describe_gauge!(
        ROLE,
        "1 for this instance's role (starting, active, standby, stopping), 0 for the others"
    );
    describe_counter!(
        STARTUP_WAITS,
        "Start-up attempts that found Postgres or a sink not ready yet, by what is awaited; walbust waits with backoff"
    );
    describe_counter!(
        RULES_RELOAD_ERRORS,
        "Rules reloads refused (invalid file or tables not published); the previous rules keep running"
    );
}

/// Registers every counter of the binary and of the replication side at 0
/// (see [`walbust_cdc::metrics::register_counters`]); the publishing side's
/// are registered once the sinks are known.
pub fn register_counters() {
    walbust_cdc::metrics::register_counters();
    metrics::counter!(RULES_RELOAD_ERRORS).increment(0);
    for what in ["postgres", "redis", "kafka"] {
        metrics::counter!(STARTUP_WAITS, "what" => what).increment(0);
    }
}
