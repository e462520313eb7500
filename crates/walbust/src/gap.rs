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
//!
//! On a gap walbust refuses to start (`source.on_gap: refuse`, the default)
//! or, with `source.on_gap: purge`, purges everything the rules cover plus
//! `source.gap_purge`, sends a flush-all record (pattern `*`) to Kafka, and
//! only then creates the new slot. Over-invalidation is always safe; a
//! silent gap never is.

use std::sync::Arc;

use anyhow::{Context, Result};
use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use serde::{Deserialize, Serialize};
use walbust_publish::{Batch, Sink};
use walbust_rules::RuleSet;

use crate::config::{Config, OnGap};

/// Prefix of the marker key in Redis; the slot name follows.
pub const MARKER_PREFIX: &str = "walbust:marker:";
const MARKER_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Marker {
    v: u32,
    system_identifier: String,
    slot: String,
    database: String,
}

/// A gap was found and the configuration says to refuse.
#[derive(Debug, thiserror::Error)]
#[error(
    "walbust ran before on slot \"{slot}\" ({why}; marker in Redis key {key}): changes since then are unknowable and caches may be stale. Purge the caches and delete the marker, or set source.on_gap: purge"
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

/// Checks for a gap and acts on it. Runs before the slot is created.
pub async fn guard(cfg: &Config, rules: &RuleSet, sinks: &[Arc<dyn Sink>]) -> Result<()> {
    let Some(redis_cfg) = &cfg.sinks.redis else {
        tracing::warn!("gap detection needs the Redis sink for its marker; without it a dropped or lost slot cannot be told from a first start");
        return Ok(());
    };
    let key = marker_key(&cfg.source.slot);
    let mut redis = redis_connection(redis_cfg).await?;
    let marker: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .context("reading the gap marker from Redis")?;
    let Some(marker) = marker else {
        return Ok(());
    };
    let marker: Marker = serde_json::from_str(&marker)
        .with_context(|| format!("the gap marker in Redis key {key} is not walbust's"))?;
    let system = system_identifier(cfg).await?;
    let control = walbust_cdc::source::connect(&cfg.source.url).await?;
    let slot_exists = walbust_cdc::source::slot_exists(&control, &cfg.source.slot).await?;
    let verdict = judge(&marker, &system, slot_exists);
    let Verdict::Gap(why) = verdict else {
        return Ok(());
    };
    match cfg.source.on_gap {
        OnGap::Refuse => Err(GapError {
            slot: cfg.source.slot.clone(),
            key,
            why,
        }
        .into()),
        OnGap::Purge => {
            tracing::warn!(slot = %cfg.source.slot, reason = %why, "gap in the change stream: purging everything the rules cover before streaming");
            purge(cfg, rules, sinks).await?;
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .context("removing the old gap marker")?;
            Ok(())
        }
    }
}

/// Records that walbust streams this slot of this server. Runs once the
/// slot exists.
pub async fn mark(cfg: &Config) -> Result<()> {
    let Some(redis_cfg) = &cfg.sinks.redis else {
        return Ok(());
    };
    let conn = walbust_cdc::ConnParams::from_url(&cfg.source.url)?;
    let marker = Marker {
        v: MARKER_VERSION,
        system_identifier: system_identifier(cfg).await?,
        slot: cfg.source.slot.clone(),
        database: conn.database,
    };
    let mut redis = redis_connection(redis_cfg).await?;
    let _: () = redis::cmd("SET")
        .arg(marker_key(&cfg.source.slot))
        .arg(serde_json::to_string(&marker)?)
        .query_async(&mut redis)
        .await
        .context("writing the gap marker to Redis")?;
    Ok(())
}

pub fn marker_key(slot: &str) -> String {
    format!("{MARKER_PREFIX}{slot}")
}

fn judge(marker: &Marker, system: &str, slot_exists: bool) -> Verdict {
    if marker.system_identifier != system {
        return Verdict::Gap(format!(
            "the server's system identifier is now {system}, it was {}",
            marker.system_identifier
        ));
    }
    if !slot_exists {
        return Verdict::Gap("the slot no longer exists".to_string());
    }
    Verdict::Continuous
}

/// Purges the rules' coverage from Redis and sends a flush-all record to
/// Kafka, retrying each sink until it confirms.
pub(crate) async fn purge(cfg: &Config, rules: &RuleSet, sinks: &[Arc<dyn Sink>]) -> Result<()> {
    let coverage = rules.coverage();
    let extra = &cfg.source.gap_purge;
    let mut redis_batch = empty_batch();
    redis_batch.keys = merged(&coverage.keys, &extra.keys);
    redis_batch.tags = merged(&coverage.tags, &extra.tags);
    redis_batch.patterns = merged(&coverage.patterns, &extra.patterns);
    if !coverage.tag_globs.is_empty() {
        tracing::warn!(tags = ?coverage.tag_globs, "tags with placeholders cannot be enumerated; list their cached keys' patterns in source.gap_purge.patterns");
    }
    let mut flush_all = empty_batch();
    flush_all.patterns = vec!["*".to_string()];
    for sink in sinks {
        let batch = if sink.name() == "kafka" {
            &flush_all
        } else {
            &redis_batch
        };
        let mut attempt = 0u32;
        loop {
            match sink.publish(batch).await {
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

fn empty_batch() -> Batch {
    let now = walbust_pgoutput::time::now_micros();
    Batch {
        lsn: 0,
        end_lsn: None,
        commit_time_micros: now,
        first_commit_time_micros: now,
        xids: Vec::new(),
        keys: Vec::new(),
        tags: Vec::new(),
        patterns: Vec::new(),
    }
}

/// The sink's own connection kind, so that the marker lands on the right
/// node of a Redis Cluster.
async fn redis_connection(
    cfg: &walbust_publish::redis_sink::RedisSinkConfig,
) -> Result<walbust_publish::redis_sink::RedisConnection> {
    walbust_publish::redis_sink::RedisConnection::connect(cfg)
        .await
        .context("connecting to Redis for the gap marker")
}

/// The server's system identifier, from IDENTIFY_SYSTEM on a replication
/// connection (allowed to a REPLICATION role, unlike pg_control_system()).
async fn system_identifier(cfg: &Config) -> Result<String> {
    let conn = walbust_cdc::ConnParams::from_url(&cfg.source.url)?;
    let rc = ReplicationConfig::new(
        conn.host,
        conn.user,
        conn.password,
        conn.database,
        cfg.source.slot.clone(),
        cfg.source.publication.clone(),
    )
    .with_port(conn.port)
    .with_tls(TlsConfig::disabled());
    let mut client = ReplicationClient::connect_gated(rc)
        .await
        .context("connecting to read the server's system identifier")?;
    let system = client.identify_system().await.context("IDENTIFY_SYSTEM")?;
    drop(client);
    Ok(system.system_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            v: 1,
            system_identifier: "7300000000000000001".into(),
            slot: "walbust".into(),
            database: "shop".into(),
        }
    }

    #[test]
    fn same_server_with_its_slot_is_continuous() {
        assert_eq!(
            judge(&marker(), "7300000000000000001", true),
            Verdict::Continuous
        );
    }

    #[test]
    fn a_missing_slot_is_a_gap() {
        assert!(matches!(
            judge(&marker(), "7300000000000000001", false),
            Verdict::Gap(why) if why.contains("no longer exists")
        ));
    }

    #[test]
    fn another_server_is_a_gap_even_with_a_slot_of_that_name() {
        assert!(matches!(
            judge(&marker(), "7300000000000000002", true),
            Verdict::Gap(why) if why.contains("system identifier")
        ));
    }

    #[test]
    fn markers_round_trip_as_json() {
        let text = serde_json::to_string(&marker()).unwrap();
        assert_eq!(serde_json::from_str::<Marker>(&text).unwrap(), marker());
    }
}
