//! Never continue silently across a gap in the change stream.
//!
//! The slot is walbust's only checkpoint. If it disappears (dropped, lost,
//! or a failover to a server that never had it), the changes committed
//! between walbust's last acknowledgement and a new slot are unknowable, and
//! the caches may hold any of them stale. So walbust leaves a small marker
//! next to the cache it protects (a Redis key holding the server's system
//! identifier and the slot name) and checks it at every start:
//!
//! | marker | slot on the server | verdict |
//! |---|---|---|
//! | absent | any | first run: write the marker |
//! | same system, slot present | present | carry on |
//! | present | missing | gap: the slot was dropped or lost |
//! | other system identifier | any | gap: a different server (failover, restore) |
//! | stopped at an LSN | ahead of that LSN | gap: the slot was dropped and made again (or advanced) |
//! | a ceiling, no stop (a crash) | ahead of the ceiling | the same |
//!
//! The last rows need to know how far walbust moved the slot; a slot can
//! only be past that if someone else moved it. A clean stop records its
//! final position (see [`MarkerHandle::record_stop`]). While running,
//! walbust acknowledges nothing past a ceiling it wrote into the marker
//! first ([`MarkerHandle::raise`], the reader's [`walbust_cdc::fence`]): the
//! server's WAL end as last reported, raised at most every 200 ms, so one
//! write serves many acknowledgements and only the slot's position waits,
//! never an invalidation. After a crash the ceiling is what is left.
//!
//! On a gap walbust refuses to start (`source.on_gap: refuse`, the default)
//! or, with `source.on_gap: purge`, purges everything the rules cover plus
//! `source.gap_purge`, sends a flush-all record (pattern `*`) to Kafka, and
//! only then creates the new slot. Over-invalidation is always safe; a
//! silent gap never is.

use std::sync::Arc;

use anyhow::{Context, Result};
use pgwire_replication::{ReplicationClient, ReplicationConfig};
use serde::{Deserialize, Serialize};
use walbust_publish::{Batch, Sink};
use walbust_rules::RuleSet;

use crate::config::{Config, OnGap};
use crate::run::{until_ready, Attempt};
use tokio::sync::watch;
use walbust_cdc::StreamError;
use walbust_publish::redis_sink::redis_error;

/// Prefix of the marker key in Redis; the slot name follows.
pub const MARKER_PREFIX: &str = "walbust:marker:";
const MARKER_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Marker {
    v: u32,
    system_identifier: String,
    slot: String,
    database: String,
    /// Which walbust wrote the marker last, renewed each time a walbust
    /// starts streaming the slot: a walbust records its stop only over
    /// its own marker, so it never overrules one that took the slot over
    /// since (a standby, which may acknowledge beyond that stop). Absent in
    /// markers of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    /// The slot position walbust acknowledged last before a clean stop
    /// (`X/Y`); absent while walbust runs, after a crash, and in markers
    /// of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stopped_at: Option<String>,
    /// While walbust runs: it acknowledges nothing past this position
    /// (`X/Y`) before writing a higher one here (see
    /// [`walbust_cdc::fence`]), so a slot past it after a crash was moved by
    /// someone else. Absent until a run's first acknowledgement, and in
    /// markers of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acked_up_to: Option<String>,
}

/// A gap was found and the configuration says to refuse.
#[derive(Debug, thiserror::Error)]
#[error(
    "walbust ran before on slot \"{slot}\" ({why}; marker: {key}): changes since then are unknowable and caches may be stale. Run `walbust reset-gap` with this configuration (it purges what the rules cover and removes the marker) and start again, or set source.on_gap: purge"
)]
pub struct GapError {
    pub slot: String,
    pub key: String,
    pub why: String,
}

/// What the check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No marker yet, or everything matches.
    Continuous,
    /// The stream has a gap; the reason in words.
    Gap(String),
}

/// Checks for a gap and acts on it. Runs before the slot is created,
/// waiting for Redis and Postgres while they come up; `None` when shutdown
/// was requested meanwhile.
pub async fn guard(
    cfg: &Config,
    rules: &RuleSet,
    sinks: &[Arc<dyn Sink>],
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<()>> {
    let Some(found) = find_gap(cfg, Some(shutdown)).await? else {
        return Ok(None);
    };
    let Some(GapFound { marker, why }) = found else {
        return Ok(Some(()));
    };
    match cfg.source.on_gap {
        OnGap::Refuse => Err(GapError {
            slot: cfg.source.slot.clone(),
            key: marker,
            why,
        }
        .into()),
        OnGap::Purge => {
            tracing::warn!(slot = %cfg.source.slot, reason = %why, "gap in the change stream: purging everything the rules cover before streaming");
            purge(cfg, rules, sinks).await?;
            remove_marker(cfg).await?;
            Ok(Some(()))
        }
    }
}

/// A gap one of the markers tells.
pub struct GapFound {
    /// Which marker: `table walbust_marker.slots` or `Redis key ...`.
    pub marker: String,
    /// Why it is a gap, in words.
    pub why: String,
}

/// Asks the database's marker ([`crate::db_marker`]), then the Redis one,
/// whether the stream has a gap; waits for Postgres and Redis while they
/// come up (`None` when shutdown was requested meanwhile; without
/// `shutdown`, as `walbust check --db` asks, it does not wait). Changes
/// nothing.
pub async fn find_gap(
    cfg: &Config,
    shutdown: Option<&watch::Receiver<bool>>,
) -> Result<Option<Option<GapFound>>> {
    // The Redis marker first: it knows positions, so it tells more cases,
    // and more precisely.
    if let Some(redis_cfg) = &cfg.sinks.redis {
        let Some(found) = find(cfg, redis_cfg, shutdown).await? else {
            return Ok(None);
        };
        if let Verdict::Gap(why) = found.verdict {
            return Ok(Some(Some(GapFound {
                marker: format!("Redis key {}", found.key),
                why,
            })));
        }
    }
    let in_db = until_ready(shutdown, "postgres", || async {
        let read = async {
            let control = walbust_cdc::source::connect(&cfg.source.url).await?;
            let marker = crate::db_marker::read(&control, &cfg.source.slot)
                .await
                .map_err(|source| walbust_cdc::SourceError::Query {
                    what: "read the gap marker table",
                    source,
                })?;
            let slot = walbust_cdc::source::slot_position(&control, &cfg.source.slot).await?;
            Ok((marker, slot.is_some()))
        };
        read.await
            .map_err(|e| Attempt::stream(StreamError::Source(e)))
    })
    .await?;
    let Some((db_marker, slot_exists)) = in_db else {
        return Ok(None);
    };
    if cfg.sinks.redis.is_none() && db_marker == crate::db_marker::DbMarker::NoTable {
        tracing::warn!("no gap marker: without the Redis sink, gap detection needs the table walbust_marker.slots in the database (walbust setup creates it, as does source.create: true); a dropped or lost slot cannot be told from a first start");
    }
    Ok(Some(
        match crate::db_marker::judge(&db_marker, slot_exists) {
            Verdict::Gap(why) => Some(GapFound {
                marker: format!("table {}", crate::db_marker::TABLE),
                why,
            }),
            Verdict::Continuous => None,
        },
    ))
}

/// Records in the database that walbust streams the slot (see
/// [`crate::db_marker`]), creating the table with `source.create: true`.
/// A failure is a warning: the Redis marker still stands, and `walbust
/// check --db` reports a missing table.
pub async fn mark_db(cfg: &Config, system: &str) {
    let marked = async {
        let control = walbust_cdc::source::connect(&cfg.source.url).await?;
        if crate::db_marker::ensure(&control, cfg.source.create).await? {
            crate::db_marker::write(&control, &cfg.source.slot, system).await?;
            return Ok(true);
        }
        anyhow::Ok(false)
    };
    match marked.await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the gap marker table walbust_marker.slots does not exist: run `walbust setup` (or set source.create: true) so that a gap is detected without Redis, after a failover too"
        ),
        Err(e) => tracing::warn!(error = %walbust_flow::Chain(e.as_ref()), "could not write the gap marker into the database"),
    }
}

/// Removes the gap marker (after a purge stood in for the changes it
/// guarded): the next start is a first start on whatever slot it finds.
async fn remove_marker(cfg: &Config) -> Result<()> {
    let control = walbust_cdc::source::connect(&cfg.source.url).await?;
    crate::db_marker::remove(&control, &cfg.source.slot).await?;
    let Some(redis_cfg) = &cfg.sinks.redis else {
        return Ok(());
    };
    let mut redis = redis_connection(redis_cfg).await?;
    let _: () = redis::cmd("DEL")
        .arg(marker_key(&cfg.source.slot))
        .query_async(&mut redis)
        .await
        .map_err(|e| redis_error("redis: removing the old gap marker", e))?;
    Ok(())
}

/// `walbust reset-gap`: what `source.on_gap: purge` does, once, by hand.
/// Makes sure the slot exists (creating it with `source.create: true`, with
/// the checks of `run`), then purges everything the rules cover and removes
/// the marker, so that the next `run` starts on the slot. The purge comes
/// after the slot exists: a change the slot does not hold was committed
/// before the purge, so no cache can keep a value from before it.
pub async fn reset_gap(path: &std::path::Path) -> std::process::ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return crate::fail_config(e),
    };
    let rules = match RuleSet::load(&cfg.rules) {
        Ok(rules) => rules,
        Err(e) => return crate::fail_config(e),
    };
    match reset(&cfg, &rules).await {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => crate::fail(e),
    }
}

async fn reset(cfg: &Config, rules: &RuleSet) -> Result<Vec<String>> {
    let sinks = crate::run::build_sinks(cfg).await?;
    for sink in &sinks {
        sink.health()
            .await
            .with_context(|| format!("sink {} is not healthy", sink.name()))?;
    }
    let spec = walbust_cdc::SourceSpec {
        url: cfg.source.url.clone(),
        publication: cfg.source.publication.clone(),
        slot: cfg.source.slot.clone(),
        create: cfg.source.create,
        failover: cfg.source.failover,
    };
    // Nothing signals a shutdown: the command ends when its work does.
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let (slot, _) = crate::run::prepare_source(cfg, &spec, rules, &shutdown)
        .await?
        .context("stopped before the slot was ready")?;
    purge(cfg, rules, &sinks).await?;
    remove_marker(cfg).await?;
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    Ok(vec![
        format!(
            "purged what the rules cover on {} (Kafka: a flush-all record)",
            names.join(", ")
        ),
        if cfg.sinks.redis.is_some() {
            format!("removed the gap marker {}", marker_key(&cfg.source.slot))
        } else {
            "no gap marker (it lives in Redis, which is not configured)".to_owned()
        },
        format!(
            "slot {} {} at {}: `walbust run` starts there",
            cfg.source.slot,
            if slot.created { "created" } else { "found" },
            walbust_pgoutput::format_lsn(slot.confirmed_flush_lsn)
        ),
    ])
}

/// What [`find`] found: the marker's key and the verdict on it.
pub struct Found {
    pub key: String,
    pub verdict: Verdict,
}

/// Reads the marker and, if there is one, judges the server and the slot
/// against it, waiting for Redis and Postgres while they come up (`None`
/// when shutdown was requested meanwhile). Changes nothing: `walbust check
/// --db` asks it too, without `shutdown`, so without waiting.
pub async fn find(
    cfg: &Config,
    redis_cfg: &walbust_publish::redis_sink::RedisSinkConfig,
    shutdown: Option<&watch::Receiver<bool>>,
) -> Result<Option<Found>> {
    let key = marker_key(&cfg.source.slot);
    let marker = until_ready(shutdown, "redis", || async {
        let mut redis = redis_connection(redis_cfg).await.map_err(Attempt::sink)?;
        redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<String>>(&mut redis)
            .await
            .map_err(|e| Attempt::sink(redis_error("redis: reading the gap marker", e)))
    })
    .await?;
    let Some(marker) = marker else {
        return Ok(None);
    };
    let Some(marker) = marker else {
        return Ok(Some(Found {
            key,
            verdict: Verdict::Continuous,
        }));
    };
    let marker: Marker = serde_json::from_str(&marker)
        .with_context(|| format!("the gap marker in Redis key {key} is not walbust's"))?;
    let server = until_ready(shutdown, "postgres", || async {
        let read = async {
            let system = system_identifier(cfg).await?;
            let control = walbust_cdc::source::connect(&cfg.source.url)
                .await
                .map_err(StreamError::Source)?;
            let slot = walbust_cdc::source::slot_position(&control, &cfg.source.slot)
                .await
                .map_err(StreamError::Source)?;
            Ok((system, slot))
        };
        read.await.map_err(Attempt::stream)
    })
    .await?;
    let Some((system, slot)) = server else {
        return Ok(None);
    };
    Ok(Some(Found {
        verdict: judge(&marker, &system, slot),
        key,
    }))
}

/// Records that walbust streams this slot of the server whose system
/// identifier is `system`. Runs once the slot exists; `None` without the
/// Redis sink.
pub async fn mark(cfg: &Config, system: String) -> Result<Option<MarkerHandle>> {
    let Some(redis_cfg) = &cfg.sinks.redis else {
        return Ok(None);
    };
    let conn = walbust_cdc::ConnParams::from_url(&cfg.source.url)?;
    let marker = Marker {
        v: MARKER_VERSION,
        system_identifier: system,
        slot: cfg.source.slot.clone(),
        database: conn.database,
        run: None,
        stopped_at: None,
        acked_up_to: None,
    };
    let handle = MarkerHandle(Arc::new(tokio::sync::Mutex::new(Marked {
        key: marker_key(&cfg.source.slot),
        redis: redis_cfg.clone(),
        marker,
        written: String::new(),
    })));
    handle.renew().await?;
    Ok(Some(handle))
}

/// This walbust's marker, as last written to Redis.
#[derive(Clone)]
pub struct MarkerHandle(Arc<tokio::sync::Mutex<Marked>>);

struct Marked {
    key: String,
    redis: walbust_publish::redis_sink::RedisSinkConfig,
    marker: Marker,
    /// The exact text last written, which [`MarkerHandle::record_stop`]
    /// expects to find.
    written: String,
}

/// How long a marker write may take before walbust goes on without it.
const MARKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Replaces the marker if it still holds what this walbust wrote (1), or
/// writes it again if it is gone (2: Redis restarted without persistence,
/// evicted or flushed it); leaves a marker another walbust renewed (0).
/// `KEYS[1]`, expected text, new text. Atomic in Redis, so a walbust that
/// took the slot over in the meantime is never overwritten.
const REPLACE_IF_UNCHANGED: &str = "local cur = redis.call('GET', KEYS[1]) \
if cur == ARGV[1] then \
  if ARGV[1] ~= ARGV[2] then redis.call('SET', KEYS[1], ARGV[2]) end return 1 end \
if cur == false then redis.call('SET', KEYS[1], ARGV[2]) return 2 end \
return 0";

/// Writes `text` over the marker this walbust wrote last (see
/// [`REPLACE_IF_UNCHANGED`]); false if another walbust renewed it.
async fn replace(marked: &Marked, text: &str, what: &str) -> Result<bool> {
    let mut redis = redis_connection(&marked.redis).await?;
    let outcome: i64 = redis::cmd("EVAL")
        .arg(REPLACE_IF_UNCHANGED)
        .arg(1)
        .arg(&marked.key)
        .arg(&marked.written)
        .arg(text)
        .query_async(&mut redis)
        .await
        .map_err(|e| redis_error(&format!("redis: {what} in the gap marker"), e))?;
    if outcome == 2 {
        tracing::warn!(
            key = %marked.key,
            "the gap marker was gone from Redis (restarted without persistence, evicted or flushed); written again"
        );
    }
    Ok(outcome != 0)
}

/// How often a running walbust makes sure its marker is still in Redis.
const KEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Stops [`MarkerHandle::keep_present`]'s task when dropped.
pub struct KeepGuard(tokio::task::JoinHandle<()>);

impl Drop for KeepGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MarkerHandle {
    /// Every [`KEEP_INTERVAL`], writes the marker again if Redis lost it
    /// (restarted without persistence, evicted, flushed): without it, a
    /// slot dropped later would look like a first run. Acknowledgements
    /// restore it too ([`raise`](Self::raise)); this covers a quiet
    /// stream. A failed check is retried at the next interval.
    pub fn keep_present(&self) -> KeepGuard {
        let handle = self.clone();
        KeepGuard(tokio::spawn(async move {
            let mut every = tokio::time::interval(KEEP_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let kept = async {
                    let marked = handle.0.lock().await;
                    replace(&marked, &marked.written, "checking the marker").await
                };
                match tokio::time::timeout(MARKER_TIMEOUT, kept).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %walbust_flow::Chain(e.as_ref()), "could not check the gap marker; retrying")
                    }
                    Err(_) => tracing::debug!("checking the gap marker timed out; retrying"),
                }
            }
        }))
    }

    /// Writes the marker under this run's id and without a stop position.
    /// Runs before walbust acknowledges anything on a new replication
    /// session, so that a stop position recorded by another walbust (which
    /// streamed the slot before this one took it over) is gone before this
    /// one moves the slot past it.
    pub async fn renew(&self) -> Result<()> {
        let mut marked = self.0.lock().await;
        // One run id per start: the sessions of one walbust are one run.
        if marked.marker.run.is_none() {
            marked.marker.run = Some(run_id());
        }
        marked.marker.stopped_at = None;
        marked.marker.acked_up_to = None;
        let text = serde_json::to_string(&marked.marker)?;
        let mut redis = redis_connection(&marked.redis).await?;
        let _: () = redis::cmd("SET")
            .arg(&marked.key)
            .arg(&text)
            .query_async(&mut redis)
            .await
            .map_err(|e| redis_error("redis: writing the gap marker", e))?;
        marked.written = text;
        Ok(())
    }

    /// Records `confirmed_lsn`, the last position acknowledged before a
    /// clean stop, unless another walbust renewed the marker since (it may
    /// move the slot further). True when recorded. Nothing is recorded for
    /// a run that acknowledged nothing: the slot then stands where it was
    /// found, which this run never learnt.
    pub async fn record_stop(&self, confirmed_lsn: u64) -> Result<bool> {
        if confirmed_lsn == 0 {
            return Ok(false);
        }
        let marked = self.0.lock().await;
        let mut stopped = marked.marker.clone();
        stopped.stopped_at = Some(walbust_pgoutput::format_lsn(confirmed_lsn));
        replace(
            &marked,
            &serde_json::to_string(&stopped)?,
            "recording the stop position",
        )
        .await
    }

    /// Raises the acknowledgement ceiling to `lsn`, unless another walbust
    /// renewed the marker since (an error: this one no longer streams the
    /// slot it thought it did).
    pub async fn raise(&self, lsn: u64) -> Result<()> {
        let mut marked = self.0.lock().await;
        let mut raised = marked.marker.clone();
        raised.acked_up_to = Some(walbust_pgoutput::format_lsn(lsn));
        let text = serde_json::to_string(&raised)?;
        anyhow::ensure!(
            replace(&marked, &text, "raising the acknowledgement ceiling").await?,
            "the gap marker {} was renewed by another walbust",
            marked.key
        );
        marked.marker = raised;
        marked.written = text;
        Ok(())
    }

    /// [`raise`](Self::raise) as the reader's acknowledgement fence.
    pub fn on_ack(&self) -> walbust_cdc::OnAck {
        let handle = self.clone();
        Arc::new(move |lsn| {
            let handle = handle.clone();
            Box::pin(async move {
                match tokio::time::timeout(MARKER_TIMEOUT, handle.raise(lsn)).await {
                    Ok(raised) => raised.map_err(Into::into),
                    Err(elapsed) => Err(elapsed.into()),
                }
            })
        })
    }

    /// [`renew`](Self::renew) as the reader's hook for each new replication
    /// session. A write that fails or hangs fails the session like a lost
    /// connection: the reader retries with backoff and acknowledges
    /// nothing meanwhile.
    pub fn on_stream(&self) -> walbust_cdc::OnStream {
        let handle = self.clone();
        Arc::new(move || {
            let handle = handle.clone();
            Box::pin(async move {
                match tokio::time::timeout(MARKER_TIMEOUT, handle.renew()).await {
                    Ok(renewed) => renewed.map_err(Into::into),
                    Err(elapsed) => Err(elapsed.into()),
                }
            })
        })
    }
}

/// Records the stop position after a clean stop, if there is a marker. A
/// failure only costs the check at the next start (the marker then has no
/// position, as after a crash), so it is logged, not fatal.
pub async fn record_stop(marker: Option<&MarkerHandle>, confirmed_lsn: u64) {
    let Some(marker) = marker else {
        return;
    };
    let error = match tokio::time::timeout(MARKER_TIMEOUT, marker.record_stop(confirmed_lsn)).await
    {
        Ok(Ok(recorded)) => {
            tracing::debug!(recorded, "stop position in the gap marker");
            return;
        }
        Ok(Err(e)) => e,
        Err(elapsed) => anyhow::Error::new(elapsed).context("recording the stop position"),
    };
    tracing::warn!(error = %walbust_flow::Chain(error.as_ref()), "the gap marker holds no stop position: a slot dropped and made again before the next start will not be noticed");
}

/// Tells this walbust's marker writes from another's (a standby's).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

pub fn marker_key(slot: &str) -> String {
    format!("{MARKER_PREFIX}{slot}")
}

/// `slot`: the slot's `confirmed_flush_lsn`, `None` when it is missing.
fn judge(marker: &Marker, system: &str, slot: Option<u64>) -> Verdict {
    if marker.system_identifier != system {
        return Verdict::Gap(format!(
            "the server's system identifier is now {system}, it was {}",
            marker.system_identifier
        ));
    }
    let Some(confirmed) = slot else {
        return Verdict::Gap("the slot no longer exists".to_string());
    };
    let lsn = |text: &Option<String>| text.as_deref().and_then(walbust_pgoutput::parse_lsn);
    let ceiling = match (lsn(&marker.stopped_at), lsn(&marker.acked_up_to)) {
        (Some(stopped), _) => Some((stopped, "where walbust stopped")),
        (None, Some(ceiling)) => Some((
            ceiling,
            "the furthest walbust could have acknowledged before it ended",
        )),
        (None, None) => None,
    };
    if let Some((ceiling, what)) = ceiling.filter(|&(c, _)| c < confirmed) {
        return Verdict::Gap(format!(
            "the slot resumes at {}, past {} {what}: it was dropped and created again, or advanced, meanwhile",
            walbust_pgoutput::format_lsn(confirmed),
            walbust_pgoutput::format_lsn(ceiling)
        ));
    }
    Verdict::Continuous
}

/// Sends each sink its gap purge ([`Sink::gap_purge`] of the rules'
/// coverage: the coverage itself for Redis, a flush-all record for Kafka,
/// both for HTTP), retrying each sink until it confirms.
pub(crate) async fn purge(cfg: &Config, rules: &RuleSet, sinks: &[Arc<dyn Sink>]) -> Result<()> {
    let coverage = rules.coverage();
    let extra = &cfg.source.gap_purge;
    let now = walbust_pgoutput::time::now_micros();
    let covered = Batch {
        commit_time_micros: now,
        first_commit_time_micros: now,
        keys: merged(&coverage.keys, &extra.keys),
        tags: merged(&coverage.tags, &extra.tags),
        patterns: merged(&coverage.patterns, &extra.patterns),
        ..Batch::default()
    };
    if !coverage.tag_globs.is_empty() {
        tracing::warn!(tags = ?coverage.tag_globs, "tags with placeholders cannot be enumerated; list their cached keys' patterns in source.gap_purge.patterns");
    }
    for sink in sinks {
        let batch = sink.gap_purge(&covered);
        let mut attempt = 0u32;
        loop {
            match sink.publish(&batch).await {
                Ok(()) => break,
                Err(e) if e.retriable() && attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(sink = sink.name(), error = %walbust_flow::Chain(&e), "gap purge failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context(format!("gap purge on sink {}", sink.name())),
            }
        }
        tracing::info!(sink = sink.name(), "gap purge confirmed");
    }
    Ok(())
}

fn merged(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = a.iter().chain(b).cloned().collect();
    out.sort();
    out.dedup();
    out
}

/// The sink's own connection kind, so that the marker lands on the right
/// node of a Redis Cluster.
async fn redis_connection(
    cfg: &walbust_publish::redis_sink::RedisSinkConfig,
) -> Result<walbust_publish::redis_sink::RedisConnection, walbust_publish::SinkError> {
    walbust_publish::redis_sink::RedisConnection::connect(cfg).await
}

/// The server's system identifier, from IDENTIFY_SYSTEM on a replication
/// connection (allowed to a REPLICATION role, unlike pg_control_system()).
/// Opening it proves the role may replicate, so its failures are
/// classified like the stream's own ([`StreamError::is_transient`]).
pub async fn system_identifier(cfg: &Config) -> Result<String, StreamError> {
    let conn = walbust_cdc::ConnParams::from_url(&cfg.source.url)
        .map_err(StreamError::Source)?
        .primary()
        .await
        .map_err(StreamError::Source)?;
    let replication = |source| conn.replication_error(source);
    let mut client = ReplicationClient::connect_gated(identify_config(cfg, &conn))
        .await
        .map_err(replication)?;
    let system = client.identify_system().await.map_err(replication)?;
    drop(client);
    Ok(system.system_id.to_string())
}

/// The replication connection of [`system_identifier`], named like the
/// stream's in `pg_stat_replication`.
fn identify_config(cfg: &Config, conn: &walbust_cdc::ConnParams) -> ReplicationConfig {
    conn.replication_config(&cfg.source.slot, &cfg.source.publication)
        .with_application_name(cfg.source.application_name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identify_connection_carries_the_configured_application_name() {
        let cfg = Config::parse(
            "source:\n  url: postgres://u:p@127.0.0.1:5432/db\n  publication: p\n  slot: s\n  application_name: shop-walbust\nrules: rules.yaml\nsinks:\n  redis:\n    url: redis://127.0.0.1:6379\n",
            "walbust.yaml",
            |_| None,
        )
        .unwrap();
        let conn = walbust_cdc::ConnParams::from_url(&cfg.source.url).unwrap();
        let rc = identify_config(&cfg, &conn);
        assert_eq!(rc.application_name.as_deref(), Some("shop-walbust"));
    }

    fn marker() -> Marker {
        Marker {
            v: 1,
            system_identifier: "7300000000000000001".into(),
            slot: "walbust".into(),
            database: "shop".into(),
            run: None,
            stopped_at: None,
            acked_up_to: None,
        }
    }

    #[test]
    fn same_server_with_its_slot_is_continuous() {
        assert_eq!(
            judge(&marker(), "7300000000000000001", Some(0x3000)),
            Verdict::Continuous
        );
    }

    #[test]
    fn a_missing_slot_is_a_gap() {
        assert!(matches!(
            judge(&marker(), "7300000000000000001", None),
            Verdict::Gap(why) if why.contains("no longer exists")
        ));
    }

    #[test]
    fn another_server_is_a_gap_even_with_a_slot_of_that_name() {
        assert!(matches!(
            judge(&marker(), "7300000000000000002", Some(0x3000)),
            Verdict::Gap(why) if why.contains("system identifier")
        ));
    }

    #[test]
    fn a_slot_past_where_walbust_stopped_is_a_gap_and_at_or_behind_it_is_not() {
        let stopped = Marker {
            stopped_at: Some("0/3000".into()),
            ..marker()
        };
        let system = "7300000000000000001";
        assert_eq!(judge(&stopped, system, Some(0x3000)), Verdict::Continuous);
        // The last acknowledgement may not have reached the server.
        assert_eq!(judge(&stopped, system, Some(0x2000)), Verdict::Continuous);
        assert!(matches!(
            judge(&stopped, system, Some(0x3001)),
            Verdict::Gap(why) if why.contains("resumes at 0/3001, past 0/3000")
        ));
    }

    #[test]
    fn a_slot_past_the_ceiling_of_a_crashed_run_is_a_gap() {
        let crashed = Marker {
            acked_up_to: Some("0/5000".into()),
            ..marker()
        };
        let system = "7300000000000000001";
        assert_eq!(judge(&crashed, system, Some(0x5000)), Verdict::Continuous);
        assert_eq!(judge(&crashed, system, Some(0x4000)), Verdict::Continuous);
        assert!(matches!(
            judge(&crashed, system, Some(0x5001)),
            Verdict::Gap(why) if why.contains("past 0/5000 the furthest walbust could have acknowledged")
        ));
        // A clean stop's exact position wins over the ceiling.
        let stopped = Marker {
            stopped_at: Some("0/3000".into()),
            ..crashed
        };
        assert!(matches!(
            judge(&stopped, system, Some(0x4000)),
            Verdict::Gap(why) if why.contains("past 0/3000 where walbust stopped")
        ));
    }

    #[test]
    fn markers_of_older_versions_are_read_as_before() {
        let old = r#"{"v":1,"system_identifier":"7300000000000000001","slot":"walbust","database":"shop"}"#;
        assert_eq!(serde_json::from_str::<Marker>(old).unwrap(), marker());
        assert_eq!(serde_json::to_string(&marker()).unwrap(), old);
    }

    #[test]
    fn markers_round_trip_as_json() {
        let text = serde_json::to_string(&marker()).unwrap();
        assert_eq!(serde_json::from_str::<Marker>(&text).unwrap(), marker());
    }
}
