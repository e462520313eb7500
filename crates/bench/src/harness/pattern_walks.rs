//! W4: pattern walks under load. Redis holds N unrelated keys; single-row UPDATEs arrive at a
//! fixed rate, each invalidating one key and one pattern of its own (`w4:list:<aid>:*`), with
//! the Redis sink only and the default `pattern_strategy: walk`.
//!
//! Each transaction's key and one key under its pattern are cached before the load starts.
//! Redis announces each removal (keyspace notifications, `notify-keyspace-events Kg`), so the
//! time from a transaction's commit (when the client saw its COMMIT acknowledged) to its key's
//! removal is measured outside walbust, per transaction; likewise for its pattern's key. The
//! walks (count, patterns per walk, duration) and commit-to-confirm come from walbust's
//! metrics; the slot kept up when it confirmed the end mark soon after the load ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{load_average, Bench, Sinks, POLL, TABLE};

/// The rules of W4: one key and one pattern per account.
const RULES: &str = r#"version: 1
rules:
  - table: public.bench_accounts
    on: [update]
    keys: ["w4:key:{aid}"]
    patterns: ["w4:list:{aid}:*"]
"#;

/// Keys written per `EVAL` while filling Redis: short scripts, within the connection's reply
/// timeout.
const FILL_CHUNK: u64 = 20_000;
/// Concurrent connections writing the load (each transaction waits for its commit).
const WRITERS: u64 = 8;

/// One W4 run: N unrelated keys in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatternWalks {
    pub unrelated_keys: u64,
    /// `sinks.redis.pattern_strategy`.
    #[serde(default)]
    pub pattern_strategy: String,
    pub rate_target: u32,
    pub seconds_target: u64,
    pub load_before: [f64; 3],
    pub transactions: u64,
    pub achieved_tps: f64,
    /// Commit (acknowledged to the client) to the key's removal from Redis.
    pub key_p50_ms: Option<f64>,
    pub key_p99_ms: Option<f64>,
    pub key_max_ms: Option<f64>,
    /// Commit to the removal of the key under the transaction's pattern.
    pub pattern_p50_ms: Option<f64>,
    pub pattern_p99_ms: Option<f64>,
    pub pattern_max_ms: Option<f64>,
    /// Keys and pattern keys never seen removed (should be 0).
    pub keys_missed: u64,
    pub patterns_missed: u64,
    /// walbust's commit-to-confirm summary at the end.
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    pub walks: u64,
    pub patterns_per_walk: Option<f64>,
    pub walk_p50_ms: Option<f64>,
    pub walk_max_ms: Option<f64>,
    /// From the end of the load to the slot confirming the end mark.
    pub catch_up_seconds: f64,
}

impl PatternWalks {
    /// The slot kept up: it confirmed everything within two walk durations (plus a second)
    /// of the load's end, and the load ran at its rate.
    pub fn kept_up(&self) -> bool {
        let walk = self.walk_max_ms.unwrap_or(0.0) / 1000.0;
        self.catch_up_seconds <= 2.0 * walk + 1.0
            && self.achieved_tps >= 0.95 * f64::from(self.rate_target)
    }

    /// Every pattern purged within two walk durations of its commit (with the version strategy:
    /// nothing to walk, the counter moved with the key).
    pub fn patterns_within_two_walks(&self) -> bool {
        if self.pattern_strategy == "version" {
            return self.patterns_missed == 0;
        }
        match (self.pattern_max_ms, self.walk_max_ms) {
            (Some(p), Some(w)) => self.patterns_missed == 0 && p <= 2.0 * w,
            (Some(p), None) => self.patterns_missed == 0 && p < 15.0,
            _ => false,
        }
    }
}

impl Bench {
    /// W4 with `unrelated` keys in Redis.
    pub async fn pattern_walks(&mut self, unrelated: u64) -> Result<PatternWalks> {
        let (rate, secs) = (self.opts.w4_rate, self.opts.w4_seconds);
        let total = u64::from(rate) * secs;
        ensure!(
            total + 1 < self.rows,
            "W4 needs {total} accounts, the table has {}",
            self.rows
        );
        eprintln!(
            "walbust-bench: W4: {unrelated} unrelated keys, {rate} tx/s for {secs} s, one key and one pattern each"
        );
        let mut conn = self.redis_conn.clone();
        let _: () = redis::cmd("FLUSHALL")
            .arg("ASYNC")
            .query_async(&mut conn)
            .await?;
        let t = Instant::now();
        let mut from = 1;
        while from <= unrelated {
            let to = (from + FILL_CHUNK - 1).min(unrelated);
            let _: () = redis::cmd("EVAL")
                .arg("for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'fill:' .. i, 'v') end")
                .arg(0)
                .arg(from)
                .arg(to)
                .query_async(&mut conn)
                .await
                .context("filling Redis")?;
            from = to + 1;
        }
        // The accounts the load updates: 2..=total+1 (1 is the end mark's), cached.
        let mut from = 2;
        while from <= total + 1 {
            let to = (from + FILL_CHUNK / 2 - 1).min(total + 1);
            let _: () = redis::cmd("EVAL")
                .arg(
                    "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do \
                     redis.call('SET', 'w4:key:' .. i, 'v'); \
                     redis.call('SET', 'w4:list:' .. i .. ':page1', 'v') end",
                )
                .arg(0)
                .arg(from)
                .arg(to)
                .query_async(&mut conn)
                .await
                .context("caching the load's keys")?;
            from = to + 1;
        }
        eprintln!(
            "walbust-bench: W4: Redis filled in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Kg")
            .query_async(&mut conn)
            .await?;
        let removed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let client = redis::Client::open(self.redis.url())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe("__keyspace@0__:w4:*").await?;
        let seen = removed.clone();
        let listener = tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let now = Instant::now();
                if let Some(key) = msg.get_channel_name().strip_prefix("__keyspace@0__:") {
                    seen.lock().unwrap().entry(key.to_owned()).or_insert(now);
                }
            }
        });

        std::fs::write(self.work.path().join("w4-rules.yaml"), RULES)?;
        self.db.batch_execute("CHECKPOINT").await?;
        let load_before = load_average();
        let slot = format!("bench_w4_{unrelated}");
        self.db
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
        let (config, metrics) = self.walbust_config(&slot, Sinks::Redis, None)?;
        let strategy = self.opts.w4_pattern_strategy.clone();
        let redis_url = format!("    url: \"{}\"\n", self.redis.url());
        let yaml = std::fs::read_to_string(&config)?
            .replace(
                &self.work.path().join("rules.yaml").display().to_string(),
                &self.work.path().join("w4-rules.yaml").display().to_string(),
            )
            .replace(
                &redis_url,
                &format!("{redis_url}    pattern_strategy: {strategy}\n"),
            );
        std::fs::write(&config, yaml)?;
        let mut proc = self.spawn_walbust(&config, &slot)?;
        let t = Instant::now();
        while self.slot_state(&slot).await?.1.is_none() {
            proc.ensure_running()?;
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "walbust did not start streaming within 60 s"
            );
            tokio::time::sleep(POLL).await;
        }

        // The load: transaction i (account i + 2) at start + i / rate, from WRITERS connections.
        let committed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let db = self.pg.connect().await?;
            let committed = committed.clone();
            writers.push(tokio::spawn(async move {
                let update = db
                    .prepare(&format!(
                        "UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid = $1"
                    ))
                    .await?;
                let mut i = w;
                while i < total {
                    let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                    tokio::time::sleep_until(at).await;
                    let aid = i32::try_from(i + 2)?;
                    db.execute(&update, &[&aid]).await?;
                    committed.lock().unwrap().push((i + 2, Instant::now()));
                    i += WRITERS;
                }
                anyhow::Ok(())
            }));
        }
        let load_started = Instant::now();
        for writer in writers {
            writer.await??;
        }
        let load_seconds = load_started.elapsed().as_secs_f64() - 0.1;
        let catch_up_seconds = self.mark_and_catch_up(&slot, &mut proc, 600).await?;
        // The notifications of the last removals may still be on their way.
        let committed = committed.lock().unwrap().clone();
        let wanted = committed.len() * if strategy == "version" { 1 } else { 2 };
        let t = Instant::now();
        while removed.lock().unwrap().len() < wanted && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(POLL).await;
        }
        listener.abort();
        let scraped = self.scrape_and_stop(&metrics, &mut proc, &slot).await?;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("")
            .query_async(&mut conn)
            .await?;
        if strategy == "version" {
            let last = committed.last().map_or(2, |(aid, _)| *aid);
            let bumped: Option<u64> = redis::cmd("GET")
                .arg(format!("patver:w4:list:{last}:"))
                .query_async(&mut conn)
                .await?;
            ensure!(
                bumped == Some(1),
                "the version strategy did not bump w4:list:{last}:"
            );
        }

        let removed = removed.lock().unwrap().clone();
        let (mut keys, mut patterns) = (Vec::new(), Vec::new());
        let (mut keys_missed, mut patterns_missed) = (0, 0);
        for (aid, at) in &committed {
            match removed.get(&format!("w4:key:{aid}")) {
                Some(gone) => keys.push(ms_since(*at, *gone)),
                None => keys_missed += 1,
            }
            if strategy == "version" {
                // No removal: the counter moved (checked below), and the key is never read again.
                continue;
            }
            match removed.get(&format!("w4:list:{aid}:page1")) {
                Some(gone) => patterns.push(ms_since(*at, *gone)),
                None => patterns_missed += 1,
            }
        }
        let confirm = scraped.quantiles(walbust_publish::metrics::COMMIT_TO_CONFIRM_SECONDS);
        let walk = scraped.quantiles(walbust_publish::metrics::REDIS_PATTERN_WALK_SECONDS);
        let per_walk = scraped.quantiles(walbust_publish::metrics::REDIS_PATTERNS_PER_WALK);
        let result = PatternWalks {
            unrelated_keys: unrelated,
            pattern_strategy: strategy,
            rate_target: rate,
            seconds_target: secs,
            load_before,
            transactions: committed.len() as u64,
            achieved_tps: committed.len() as f64 / load_seconds,
            key_p50_ms: percentile(&mut keys, 0.5),
            key_p99_ms: percentile(&mut keys, 0.99),
            key_max_ms: percentile(&mut keys, 1.0),
            pattern_p50_ms: percentile(&mut patterns, 0.5),
            pattern_p99_ms: percentile(&mut patterns, 0.99),
            pattern_max_ms: percentile(&mut patterns, 1.0),
            keys_missed,
            patterns_missed,
            confirm_p50_ms: confirm.as_ref().map(|q| q.p50 * 1000.0),
            confirm_p99_ms: confirm.as_ref().map(|q| q.p99 * 1000.0),
            walks: per_walk.as_ref().map_or(0, |q| q.count),
            patterns_per_walk: per_walk.as_ref().filter(|q| q.count > 0).and_then(|q| {
                let sum = format!("{}_sum", walbust_publish::metrics::REDIS_PATTERNS_PER_WALK);
                scraped.sum(&sum).map(|s| s / q.count as f64)
            }),
            walk_p50_ms: walk.as_ref().map(|q| q.p50 * 1000.0),
            walk_max_ms: walk.as_ref().map(|q| q.max * 1000.0),
            catch_up_seconds,
        };
        eprintln!(
            "walbust-bench: W4 {unrelated}: keys p99 {:?} ms, patterns max {:?} ms, {} walks, walk max {:?} ms, catch-up {:.2} s",
            result.key_p99_ms, result.pattern_max_ms, result.walks, result.walk_max_ms, catch_up_seconds
        );
        Ok(result)
    }
}

fn ms_since(from: Instant, to: Instant) -> f64 {
    // A removal seen before the client saw its COMMIT acknowledged counts as 0.
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The `q` quantile (nearest rank) of `values`, sorted in place.
fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut v, 1.0), Some(100.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn the_rules_are_valid() {
        walbust_rules::RuleSet::from_yaml(RULES, "w4-rules.yaml").unwrap();
    }
}
