//! Read replicas that must have replayed a batch's commits before walbust publishes it
//! (`source.replicas`): the [`ReplicaGate`] the pipeline awaits through [`walbust_flow::Gate`].
//!
//! Why: walbust reads the primary's WAL, so it invalidates as soon as the primary commits. A
//! reader that misses the cache right then and reads a streaming replica that has not replayed
//! the commit yet caches the old row again, for good. Holding the batch until every listed
//! replica's `pg_last_wal_replay_lsn()` passed the batch's last commit closes that window.
//!
//! ```text
//!                  one poller task per replica (one connection, reconnects)
//! replica A  <──SELECT pg_last_wal_replay_lsn()── poller A ──watch<replayed>──┐
//! replica B  <──────────────────────────────────── poller B ──watch<replayed>──┤
//!                 ^ polls fast while a batch waits: "wanted" watch <────────────┤
//!                                                                              v
//!                          every waiting batch: ReplicaGate::wait(visible_from)
//! ```
//!
//! One poller per replica shares the replica's latest replay position on a watch channel, so
//! any number of waiting batches (`publish.max_in_flight`) cost one query stream per replica,
//! not one each, and every waiter sees a position the moment it is read. A waiting batch raises
//! the poller's "wanted" position; while the replica is short of it the poller reads every
//! [`POLL_MIN`] (doubling up to [`POLL_MAX`] while the replica makes no progress, back to
//! [`POLL_MIN`] when it does), so a replica that keeps up adds a few milliseconds at most;
//! otherwise it reads every [`POLL_IDLE`], for the lag gauge.
//!
//! The wait is bounded (`source.replica_wait_max_ms`): past it the batch is published anyway
//! and the replica's `walbust_replica_wait_timeouts_total` counts it, with one warning per
//! episode (from the first timeout until the replica is again in time for a batch), not one per
//! batch. An unreachable replica counts the same way: its poller keeps reconnecting, and
//! batches wait the bound for it, never longer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;
use walbust_flow::{Backoff, Chain};

use crate::metrics as m;

/// Default for `source.replica_wait_max_ms`.
pub const DEFAULT_WAIT_MAX: Duration = Duration::from_secs(30);
/// Poll interval while a batch waits and the replica just made progress.
pub const POLL_MIN: Duration = Duration::from_millis(2);
/// Longest poll interval while a batch waits.
pub const POLL_MAX: Duration = Duration::from_millis(50);
/// Poll interval while no batch waits (keeps the lag gauge current).
pub const POLL_IDLE: Duration = Duration::from_secs(1);
/// Reconnection pacing: a replica that comes back is used again within a second.
const RECONNECT: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(1),
};
/// Longest a connection attempt or a poll may take before the connection is dropped and made
/// again (a replica that hangs must not freeze the poller).
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The replay position as a number, NULL on a server that is not in recovery.
const REPLAY_SQL: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0')::int8";

/// One entry of `source.replicas`.
#[derive(Clone)]
pub struct ReplicaSpec {
    /// The `replica` label and the name in logs: the entry's `name`, else `host:port` of the URL
    /// (never the password).
    pub name: String,
    /// libpq-style URL of the replica (a database and a role that may connect; no privilege
    /// needed).
    pub url: String,
}

// By hand: the URL may hold a password.
impl fmt::Debug for ReplicaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The default name of a replica: `host:port` of its URL, `None` if the URL does not parse.
pub fn default_name(url: &str) -> Option<String> {
    let params = crate::ConnParams::from_url(url).ok()?;
    Some(format!("{}:{}", params.host, params.port))
}

/// What a replica says about itself, for `walbust check --db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `pg_is_in_recovery()`: false on a primary (or a promoted replica).
    pub in_recovery: bool,
    /// `pg_last_wal_replay_lsn()`, `None` when not in recovery.
    pub replay_lsn: Option<u64>,
}

/// Why a replica could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("cannot connect to the replica")]
    Connect(#[source] crate::SourceError),
    #[error("could not read the replica's replay position")]
    Query(#[source] tokio_postgres::Error),
    #[error("the replica did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Connects to a replica and asks whether it is a standby and where its replay is.
pub async fn probe(url: &str) -> Result<ReplicaStatus, ReplicaError> {
    let client = connect(url).await?;
    let sql = "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0')::int8";
    let row = tokio::time::timeout(IO_TIMEOUT, client.query_one(sql, &[]))
        .await
        .map_err(|_| ReplicaError::Timeout(IO_TIMEOUT))?
        .map_err(ReplicaError::Query)?;
    Ok(ReplicaStatus {
        in_recovery: row.get(0),
        replay_lsn: row.get::<_, Option<i64>>(1).map(|lsn| lsn as u64),
    })
}

/// Connects as every SQL connection does, with the TLS settings of the URL.
async fn connect(url: &str) -> Result<Client, ReplicaError> {
    tokio::time::timeout(IO_TIMEOUT, crate::source::connect(url))
        .await
        .map_err(|_| ReplicaError::Timeout(IO_TIMEOUT))?
        .map_err(ReplicaError::Connect)
}

/// Holds batches until every replica replayed them, within a bound; see the module docs.
///
/// Dropping it stops the pollers.
pub struct ReplicaGate {
    replicas: Vec<Replica>,
    max_wait: Duration,
}

struct Replica {
    name: Arc<str>,
    /// The latest replay position read; `None` until the first read.
    replayed: watch::Receiver<Option<u64>>,
    /// The highest position a batch waited for.
    wanted: watch::Sender<u64>,
    /// In a timeout episode: warned once, quiet until the replica is in time again.
    behind: AtomicBool,
    poller: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl fmt::Debug for ReplicaGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.replicas.iter().map(|r| &*r.name).collect();
        f.debug_struct("ReplicaGate")
            .field("replicas", &names)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

impl ReplicaGate {
    /// Starts one poller per replica on the current Tokio runtime; batches wait at most
    /// `max_wait` for them.
    pub fn start(specs: &[ReplicaSpec], max_wait: Duration) -> ReplicaGate {
        let replicas = specs
            .iter()
            .map(|spec| {
                let name: Arc<str> = spec.name.as_str().into();
                counter!(m::REPLICA_WAIT_TIMEOUTS, m::LABEL_REPLICA => name.to_string())
                    .increment(0);
                let (replayed_tx, replayed) = watch::channel(None);
                let (wanted, wanted_rx) = watch::channel(0);
                let poller =
                    tokio::spawn(poll(name.clone(), spec.url.clone(), replayed_tx, wanted_rx));
                Replica {
                    name,
                    replayed,
                    wanted,
                    behind: AtomicBool::new(false),
                    poller,
                }
            })
            .collect();
        ReplicaGate { replicas, max_wait }
    }

    /// Waits until every replica replayed up to `visible_from`, or `max_wait` passed.
    async fn wait_all(&self, visible_from: u64) {
        let started = Instant::now();
        let deadline = started + self.max_wait;
        let waits = self
            .replicas
            .iter()
            .map(|replica| self.wait_one(replica, visible_from, deadline));
        futures::future::join_all(waits).await;
        histogram!(m::REPLICA_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
    }

    async fn wait_one(&self, replica: &Replica, visible_from: u64, deadline: Instant) {
        replica.wanted.send_if_modified(|wanted| {
            let raise = *wanted < visible_from;
            *wanted = (*wanted).max(visible_from);
            raise
        });
        let mut replayed = replica.replayed.clone();
        let reached = async move {
            replayed
                .wait_for(|at| at.is_some_and(|at| at >= visible_from))
                .await
                .is_ok()
        };
        match tokio::time::timeout_at(deadline, reached).await {
            Ok(true) => {
                if replica.behind.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        replica = %replica.name,
                        lsn = %walbust_pgoutput::format_lsn(visible_from),
                        "replica replays in time again: the episode of batches published without it is over"
                    );
                }
            }
            // Timed out, or the poller is gone (only while shutting down).
            Ok(false) | Err(_) => {
                counter!(m::REPLICA_WAIT_TIMEOUTS, m::LABEL_REPLICA => replica.name.to_string())
                    .increment(1);
                if !replica.behind.swap(true, Ordering::Relaxed) {
                    let at = *replica.replayed.borrow();
                    tracing::warn!(
                        replica = %replica.name,
                        lsn = %walbust_pgoutput::format_lsn(visible_from),
                        replayed = %at.map_or_else(|| "unknown".to_owned(), walbust_pgoutput::format_lsn),
                        max_wait_ms = self.max_wait.as_millis() as u64,
                        "replica did not replay the batch in time (lagging or unreachable); publishing anyway: \
                         readers of this replica may cache old rows again. Further batches are counted in \
                         walbust_replica_wait_timeouts_total, without a warning, until it is in time again"
                    );
                }
            }
        }
    }
}

impl walbust_flow::Gate for ReplicaGate {
    fn wait(&self, visible_from: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.wait_all(visible_from))
    }
}

/// One replica's poller: keeps a connection, reads the replay position, shares it.
async fn poll(
    name: Arc<str>,
    url: String,
    replayed: watch::Sender<Option<u64>>,
    mut wanted: watch::Receiver<u64>,
) {
    let label = name.to_string();
    let reachable = gauge!(m::REPLICA_REACHABLE, m::LABEL_REPLICA => label.clone());
    let lag = gauge!(m::REPLICA_REPLAY_LAG_BYTES, m::LABEL_REPLICA => label);
    let mut client: Option<Client> = None;
    let mut reconnects = RECONNECT.delays();
    // Say why a replica is unusable once per cause, not once per attempt.
    let mut complained = false;
    let mut pace = POLL_MIN;
    loop {
        if client.is_none() {
            match connect(&url).await {
                Ok(c) => {
                    tracing::info!(replica = %name, "connected to replica");
                    client = Some(c);
                    complained = false;
                    reconnects = RECONNECT.delays();
                }
                Err(e) => {
                    reachable.set(0.0);
                    if !complained {
                        tracing::warn!(replica = %name, error = %Chain(&e), "cannot reach replica; retrying");
                        complained = true;
                    }
                    tokio::time::sleep(reconnects.next().unwrap_or(RECONNECT.max)).await;
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        let read = match tokio::time::timeout(IO_TIMEOUT, c.query_one(REPLAY_SQL, &[])).await {
            Ok(Ok(row)) => row.get::<_, Option<i64>>(0).map(|lsn| lsn as u64),
            Ok(Err(e)) => {
                tracing::warn!(replica = %name, error = %Chain(&e), "lost replica connection; reconnecting");
                client = None;
                reachable.set(0.0);
                continue;
            }
            Err(_) => {
                tracing::warn!(replica = %name, timeout_ms = IO_TIMEOUT.as_millis() as u64, "replica did not answer; reconnecting");
                client = None;
                reachable.set(0.0);
                continue;
            }
        };
        let Some(at) = read else {
            // Promoted, or never a replica: it replays nothing of the primary any more.
            reachable.set(0.0);
            if !complained {
                tracing::warn!(replica = %name, "replica is not in recovery (promoted, or not a standby): it replays nothing, so batches wait replica_wait_max_ms for it");
                complained = true;
            }
            tokio::time::sleep(POLL_IDLE).await;
            continue;
        };
        reachable.set(1.0);
        let progressed = replayed.send_if_modified(|old| {
            let newer = old.is_none_or(|old| at > old);
            if newer {
                *old = Some(at);
            }
            newer
        });
        let target = *wanted.borrow_and_update();
        lag.set(target.saturating_sub(at) as f64);
        if target > at {
            // A batch waits for more: poll fast, slower while nothing moves.
            pace = if progressed {
                POLL_MIN
            } else {
                (pace * 2).min(POLL_MAX)
            };
            tokio::time::sleep(pace).await;
        } else {
            pace = POLL_MIN;
            tokio::select! {
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return; // the gate is gone
                    }
                }
                () = tokio::time::sleep(POLL_IDLE) => {}
            }
        }
    }
}
