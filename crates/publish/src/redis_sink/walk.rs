//! Pattern walks: one `SCAN` of the keyspace serves every pattern waiting for it, beside the
//! key path.
//!
//! ```text
//! publish(batch) ──submit(patterns)──> pending ──(no walk running: start one)──> walk task
//!        │                                ^                                        │
//!        │ keys, tags: at once            └──── patterns arriving mid-walk wait ───┘
//!        v                                      for the next walk (merged)
//!   Settling future: resolves when the walk that took the batch's patterns ended
//! ```
//!
//! A walk costs the whole keyspace whatever it looks for, so the [`Walker`] runs one walk at a
//! time (against a cluster: one per primary, in parallel) and merges: every pattern submitted
//! while a walk runs joins the next one. The number of walks depends on time (walk duration),
//! not on how many transactions or patterns there are. Each scanned key is matched client-side
//! against every pattern of the walk ([`Glob`], Redis's own glob semantics); the `SCAN MATCH`
//! sent is the pattern itself when the walk has one, else the patterns' longest common literal
//! prefix followed by `*`, so Redis still filters what it can.
//!
//! Why merging keeps `SCAN`'s guarantee: `SCAN` promises to return every key present on the node
//! for the whole walk, from its first call to its last. A pattern only ever joins a walk that
//! *starts after* it was submitted, never one already running. So every key present when the
//! pattern was submitted and still present when that walk ends was present for the whole walk
//! and is seen: the same guarantee a walk of its own, started at that moment, would give. (A key
//! written after the submission is a fill after the invalidation, which no walk could promise to
//! see.) A pattern is never added to a walk mid-way, because the keys the walk already passed
//! would be missed.
//!
//! A failed walk fails every batch waiting on it (each publish fails and the pipeline retries
//! the batch, which submits its patterns again). A batch waiting on a walk is not confirmed, so
//! a walbust stopped mid-walk sends the patterns again after its restart.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use metrics::{counter, gauge, histogram};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisResult, Value};
use tokio::sync::oneshot;
use tracing::debug;
use walbust_glob::{common_prefix, escape, Glob};

use super::request;
use super::sink::{redis_error, unlink_on, Connection};
use crate::metrics as m;
use crate::sink::{SinkError, SinkErrorKind};

/// Where one `SCAN` walk runs: the single Redis, or one primary of the cluster.
#[derive(Debug, Clone)]
pub(super) enum ScanTarget {
    Single,
    Primary(request::Primary),
}

/// Runs merged pattern walks for one sink. Dropping it (the sink goes, walbust stops) stops the
/// walk: the batches waiting on it were not confirmed, and are published again after a restart.
pub(super) struct Walker {
    shared: Arc<Shared>,
}

impl Drop for Walker {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.shared.state).task.take() {
            task.abort();
        }
    }
}

struct Shared {
    conn: Connection,
    scan_count: usize,
    unlink_chunk: usize,
    state: Mutex<State>,
}

/// A failed walk, told to each batch that waited on it.
type Outcome = Result<(), (SinkErrorKind, String)>;

#[derive(Default)]
struct State {
    /// Patterns submitted since the running walk started: the next walk's.
    pending: Vec<Glob>,
    /// The batches waiting for the next walk.
    waiters: Vec<oneshot::Sender<Outcome>>,
    /// When the oldest pending pattern was submitted.
    pending_since: Option<Instant>,
    /// When the oldest pattern of the running walk was submitted.
    walking_since: Option<Instant>,
    /// Whether the walk task runs.
    walking: bool,
    /// The walk task, stopped with the [`Walker`].
    task: Option<tokio::task::AbortHandle>,
}

impl State {
    fn oldest(&self) -> Option<Instant> {
        match (self.walking_since, self.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Walker {
    pub(super) fn new(conn: Connection, scan_count: usize, unlink_chunk: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
                scan_count,
                unlink_chunk,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Hands `patterns` to the next walk (starting one if none runs) and returns a future that
    /// resolves when that walk ended: `Ok` once it purged every key it matched.
    pub(super) fn submit(&self, patterns: &[String]) -> BoxFuture<'static, Result<(), SinkError>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.shared.state);
            state.pending.extend(patterns.iter().map(|p| Glob::new(p)));
            state.waiters.push(tx);
            state.pending_since.get_or_insert_with(Instant::now);
            if !state.walking {
                state.walking = true;
                // Spawned under the lock, so the task sees its own handle stored.
                state.task = Some(tokio::spawn(run(self.shared.clone())).abort_handle());
            }
        }
        async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err((kind, message))) => Err(SinkError::new(kind, message)),
                // The walk task ended without answering: only when the runtime shuts down.
                Err(_) => Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    "redis: the pattern walk was stopped before it finished",
                )),
            }
        }
        .boxed()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind, still consistent.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The walk task: walks while patterns are pending, then ends.
async fn run(shared: Arc<Shared>) {
    loop {
        let (globs, waiters) = {
            let mut state = lock(&shared.state);
            if state.waiters.is_empty() {
                state.walking = false;
                state.task = None;
                state.walking_since = None;
                state.pending_since = None;
                gauge!(m::REDIS_PATTERN_OLDEST_PENDING_SECONDS).set(0.0);
                return;
            }
            state.walking_since = state.pending_since.take();
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.waiters),
            )
        };
        let mut globs = globs;
        globs.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        globs.dedup();
        gauge!(m::REDIS_PATTERN_WALKS_IN_PROGRESS).increment(1.0);
        histogram!(m::REDIS_PATTERNS_PER_WALK).record(globs.len() as f64);
        let started = Instant::now();
        let result = walk(&shared, &globs).await;
        histogram!(m::REDIS_PATTERN_WALK_SECONDS).record(started.elapsed().as_secs_f64());
        gauge!(m::REDIS_PATTERN_WALKS_IN_PROGRESS).decrement(1.0);
        debug!(
            patterns = globs.len(),
            batches = waiters.len(),
            ok = result.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "redis pattern walk ended"
        );
        let outcome: Outcome =
            result.map_err(|err| (err.kind(), walbust_flow::Chain(&err).to_string()));
        for waiter in waiters {
            // A batch given up on (the pipeline stopped) no longer listens.
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// Sets the oldest-pending gauge from the state.
fn report_oldest(shared: &Shared) {
    let oldest = lock(&shared.state).oldest();
    let age = oldest.map_or(0.0, |t| t.elapsed().as_secs_f64());
    gauge!(m::REDIS_PATTERN_OLDEST_PENDING_SECONDS).set(age);
}

/// One walk over every target, in parallel, purging what matches any of `globs`.
async fn walk(shared: &Shared, globs: &[Glob]) -> Result<(), SinkError> {
    let targets = scan_targets(&shared.conn).await?;
    let matcher: Vec<u8> = match globs {
        [one] => one.as_str().as_bytes().to_vec(),
        _ => [escape(&common_prefix(globs)), b"*".to_vec()].concat(),
    };
    let walks = targets
        .iter()
        .map(|target| walk_target(shared, target, &matcher, globs));
    let scanned: Vec<u64> = futures::future::try_join_all(walks).await?;
    histogram!(m::REDIS_PATTERN_WALK_KEYS_SCANNED).record(scanned.iter().sum::<u64>() as f64);
    Ok(())
}

/// Walks one node's keyspace with `SCAN MATCH <matcher>`, unlinks the keys any glob matches, and
/// returns about how many keys it went over: `scan_count` per `SCAN` call (the server filters
/// with `MATCH` after visiting them, so the exact number is not told; no extra command, so no
/// extra ACL permission either).
async fn walk_target(
    shared: &Shared,
    target: &ScanTarget,
    matcher: &[u8],
    globs: &[Glob],
) -> Result<u64, SinkError> {
    let (mut calls, mut matched, mut removed) = (0u64, 0u64, 0u64);
    let mut cursor = 0u64;
    let result = loop {
        let cmd = request::scan(cursor, matcher, shared.scan_count);
        let (next, keys): (u64, Vec<String>) = match route(&shared.conn, target, cmd).await {
            Ok(step) => step,
            Err(err) => break Err(redis_error("redis: SCAN for a pattern failed", err)),
        };
        calls += 1;
        let keys: Vec<String> = if globs.len() == 1 {
            keys
        } else {
            keys.into_iter()
                .filter(|k| globs.iter().any(|g| g.matches(k)))
                .collect()
        };
        matched += keys.len() as u64;
        if !keys.is_empty() {
            match unlink_on(&shared.conn, shared.unlink_chunk, &keys, None).await {
                Ok(count) => removed += count,
                Err(err) => {
                    break Err(SinkError::with_source(
                        err.kind(),
                        "redis: UNLINK of pattern matches failed",
                        err,
                    ))
                }
            }
        }
        report_oldest(shared);
        if next == 0 {
            break Ok(calls * shared.scan_count as u64);
        }
        cursor = next;
    };
    // Counted even when the walk failed half-way: the work was done.
    counter!(m::REDIS_SCAN_CALLS).increment(calls);
    counter!(m::REDIS_PATTERN_KEYS_MATCHED).increment(matched);
    counter!(m::REDIS_PATTERN_KEYS_REMOVED).increment(removed);
    result
}

/// Where pattern walks run: the single Redis, or every primary of the cluster (read from
/// `CLUSTER SLOTS` for each walk, so a changed topology is followed).
pub(super) async fn scan_targets(conn: &Connection) -> Result<Vec<ScanTarget>, SinkError> {
    if let Connection::Single(_) = conn {
        return Ok(vec![ScanTarget::Single]);
    }
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn.clone())
        .await
        .map_err(|err| redis_error("redis: CLUSTER SLOTS failed", err))?;
    let primaries = request::cluster_primaries(&reply).map_err(|reason| {
        SinkError::new(
            SinkErrorKind::Protocol,
            format!("redis: cannot list the cluster's primaries: {reason}"),
        )
    })?;
    Ok(primaries.into_iter().map(ScanTarget::Primary).collect())
}

/// Runs `cmd` on `target`: the single Redis, or the primary itself (routed by a slot it serves,
/// so the client's slot map finds the node).
async fn route<T: redis::FromRedisValue>(
    conn: &Connection,
    target: &ScanTarget,
    cmd: redis::Cmd,
) -> RedisResult<T> {
    match (conn, target) {
        (Connection::Cluster(conn), ScanTarget::Primary(primary)) => {
            let route = Route::new(primary.slot, SlotAddr::Master);
            let reply = conn
                .clone()
                .route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?;
            Ok(redis::from_redis_value(reply)?)
        }
        _ => cmd.query_async(&mut conn.clone()).await,
    }
}
