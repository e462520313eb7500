//! Periodic health of the slot and the publication while streaming.
//!
//! Three things can go wrong under a running walbust without the stream
//! saying so: the server can stop reserving WAL for the slot (`wal_status`
//! turning `unreserved`, then `lost`), a table the rules name can leave
//! the publication, after which pgoutput simply stops sending its changes,
//! and the publication can be altered to withhold what the rules need (an
//! operation it stops publishing, a row filter, a column list; see
//! [`source::withheld`]).
//! The monitor looks every [`INTERVAL`] over its own SQL connection,
//! exports the slot's state as metrics, warns on `unreserved`, and reports
//! `lost` and publication drift as definite errors to the reader, which
//! stops (after acknowledging only what was delivered). Publication drift
//! must be found at two checks in a row: DDL undone within a moment is the
//! DDL guard's business (see [`crate::window`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use walbust_flow::Chain;
use walbust_rules::RuleSet;

use crate::error::SourceError;
use crate::metrics as m;
use crate::source::{self, SourceSpec};

/// How often the slot and the publication are checked.
pub const INTERVAL: Duration = Duration::from_secs(10);

const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Prefix of the heartbeat messages walbust writes into the WAL.
pub const HEARTBEAT_PREFIX: &str = "walbust.heartbeat";

/// Spawns the monitor; definite problems arrive on the returned receiver.
/// It stops when the receiver is dropped.
///
/// With a `heartbeat` interval it also writes a tiny non-transactional
/// logical message into the WAL that often. On a server whose published
/// tables are quiet and that writes little WAL of its own, this gives the
/// walsender something to send, so walbust can acknowledge and the slot
/// keeps moving instead of pinning old WAL.
pub fn spawn(
    spec: SourceSpec,
    rules: watch::Receiver<Arc<RuleSet>>,
    heartbeat: Option<Duration>,
) -> mpsc::Receiver<SourceError> {
    let (tx, rx) = mpsc::channel(1);
    if let Some(every) = heartbeat {
        let spec = spec.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = ticker.tick() => {}
                }
                if let Err(e) = heartbeat_once(&spec).await {
                    tracing::debug!(error = %Chain(&e), "heartbeat skipped");
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A publication problem found at the previous check.
        let mut suspected = false;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            let wanted = rules.borrow().clone();
            let outcome = check(&spec, &wanted).await;
            let publication_problem =
                matches!(&outcome, Err(e) if e.is_definite() && is_publication_drift(e));
            match outcome {
                Ok(()) => {}
                // Publication DDL undone within a moment (the DDL guard
                // handles such a window in WAL order, and acknowledgements
                // wait at its start meanwhile) is not worth stopping for;
                // drift still there at the next check is.
                Err(e) if publication_problem && !suspected => {
                    tracing::warn!(error = %Chain(&e), "the publication withholds what the rules need; checking again before stopping");
                }
                Err(e) if e.is_definite() => {
                    let _ = tx.send(e).await;
                    return;
                }
                // The database being away is the reader's business (it
                // reconnects); the monitor tries again next tick.
                Err(e) => tracing::debug!(error = %Chain(&e), "slot check skipped"),
            }
            suspected = publication_problem;
        }
    });
    rx
}

/// Problems of the publication's current definition, which DDL may undo
/// a moment later (unlike a lost or missing slot).
fn is_publication_drift(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::TablesNotPublished { .. }
            | SourceError::OperationsNotPublished { .. }
            | SourceError::RowFilter { .. }
            | SourceError::ColumnList { .. }
    )
}

async fn heartbeat_once(spec: &SourceSpec) -> Result<(), SourceError> {
    let client = source::connect(&spec.url).await?;
    client
        .execute(
            "SELECT pg_logical_emit_message(false, $1, '')",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .map_err(|e| SourceError::query("write a heartbeat", e))?;
    metrics::counter!(m::HEARTBEATS).increment(1);
    Ok(())
}

async fn check(spec: &SourceSpec, rules: &RuleSet) -> Result<(), SourceError> {
    let client = source::connect(&spec.url).await?;
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, ''), \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::float8, \
                    coalesce(safe_wal_size, -1)::float8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| SourceError::query("check the replication slot", e))?;
    let Some(row) = row else {
        return Err(SourceError::SlotMissing {
            slot: spec.slot.clone(),
            create: spec.create,
        });
    };
    let status: String = row.get(0);
    let retained: f64 = row.get(1);
    let safe: f64 = row.get(2);
    metrics::gauge!(m::SLOT_RETAINED_WAL_BYTES).set(retained);
    if safe >= 0.0 {
        metrics::gauge!(m::SLOT_SAFE_WAL_BYTES).set(safe);
    }
    for s in WAL_STATUSES {
        metrics::gauge!(m::SLOT_WAL_STATUS, "status" => s).set(if s == status { 1.0 } else { 0.0 });
    }
    match status.as_str() {
        "lost" => {
            return Err(SourceError::SlotLost {
                slot: spec.slot.clone(),
            })
        }
        "unreserved" => tracing::warn!(
            slot = %spec.slot,
            retained_bytes = retained,
            "slot wal_status is 'unreserved': the server will remove WAL walbust still needs at the next checkpoint (max_slot_wal_keep_size)"
        ),
        _ => {}
    }
    let published = source::published_tables(&client, &spec.publication).await?;
    let missing: Vec<String> = rules
        .tables()
        .iter()
        .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(SourceError::TablesNotPublished {
            publication: spec.publication.clone(),
            tables: missing,
        });
    }
    source::check_sends(&client, &spec.publication, rules).await
}
