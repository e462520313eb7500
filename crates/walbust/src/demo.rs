//! `walbust demo`: the product end to end on throwaway local services.
//!
//! Starts Postgres (wal_level=logical), Redis and an embedded Kafka broker
//! (librdkafka's mock cluster) through `testkit`, creates a small shop
//! schema and rules, runs the same code path as `walbust run`, generates
//! writes and prints every invalidation as it happens. Everything it started
//! is removed when it ends (also on Ctrl-C).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use std::process::ExitCode;
use tokio::sync::watch;

use crate::config::{self, Config};
use crate::{fail, run, shutdown_signal};

const TOPIC: &str = "walbust.invalidations";
const SLOT: &str = "walbust_demo";
const PUBLICATION: &str = "walbust_demo";

const SCHEMA: &str = r#"
CREATE TABLE categories (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (
    id serial PRIMARY KEY,
    category_id int NOT NULL REFERENCES categories,
    name text NOT NULL,
    price numeric(10,2) NOT NULL
);
-- FULL sends the old row on update, so a product moved to another category
-- invalidates both categories.
ALTER TABLE products REPLICA IDENTITY FULL;
CREATE TABLE orders (
    id serial PRIMARY KEY,
    user_id int NOT NULL,
    product_id int NOT NULL REFERENCES products,
    status text NOT NULL DEFAULT 'new',
    total numeric(10,2) NOT NULL
);
INSERT INTO categories SELECT g, 'category ' || g FROM generate_series(1, 5) g;
INSERT INTO products (category_id, name, price)
    SELECT 1 + g % 5, 'product ' || g, 10 + g FROM generate_series(1, 20) g;
INSERT INTO orders (user_id, product_id, total) VALUES (1, 1, 11);
"#;

const RULES: &str = r#"# walbust demo rules: a small shop.
version: 1
rules:
  # A product's own entries, its category listing, and every cached product list page.
  - table: public.products
    keys: ["product:{id}", "product:{id}:detail"]
    tags: ["category:{category_id}"]
    patterns: ["product-list:*"]
  - table: public.categories
    keys: ["category:{id}"]
    tags: ["category:{id}"]
  # Orders: the order itself and the user's order list.
  - table: public.orders
    on: [insert, update, delete]
    keys: ["order:{id}", "user:{user_id}:orders"]
"#;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many generated writes (0: no limit).
    #[arg(long, default_value_t = 0)]
    writes: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Generated writes per second (0: no generator, make your own writes).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
}

/// Counters the live view keeps.
#[derive(Default)]
struct Tally {
    changes: AtomicU64,
    invalidations: AtomicU64,
    batches: AtomicU64,
    /// Commit LSN of the newest change seen by the reader.
    seen_commit_lsn: AtomicU64,
    /// Commit LSN of the newest transaction confirmed by every sink.
    confirmed_commit_lsn: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

pub async fn demo(args: DemoArgs) -> ExitCode {
    match demo_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn demo_inner(args: DemoArgs) -> Result<()> {
    println!("walbust demo: starting throwaway Postgres, Redis and Kafka ...");
    let (pg, redis, kafka) = tokio::task::spawn_blocking(|| -> Result<_> {
        let pg = walbust_testkit::Postgres::start().context("starting Postgres")?;
        let redis = walbust_testkit::Redis::start().context("starting Redis")?;
        let kafka = walbust_testkit::Kafka::start().context("starting the Kafka mock cluster")?;
        kafka
            .create_topic(TOPIC, 1)
            .context("creating the Kafka topic")?;
        Ok((pg, redis, kafka))
    })
    .await??;

    let db = pg.connect().await?;
    db.batch_execute(SCHEMA)
        .await
        .context("creating the demo schema")?;
    let mut cache = redis.connection().await?;
    for id in 1..=20 {
        let _: () = redis::cmd("SET")
            .arg(format!("product:{id}"))
            .arg("cached")
            .query_async(&mut cache)
            .await?;
    }

    let dir = tempfile::tempdir()?;
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, RULES)?;
    let cfg_text = config::render(
        &pg.url(),
        PUBLICATION,
        SLOT,
        &rules_path,
        Some(&redis.url()),
        Some((&kafka.bootstrap_servers(), TOPIC)),
        &Default::default(),
    );
    let cfg_path = dir.path().join("walbust.yaml");
    std::fs::write(&cfg_path, &cfg_text)?;
    let cfg = Config::load(&cfg_path)?;

    println!();
    println!("  postgres  {}", pg.psql_command());
    println!("  redis     {}", redis.cli_command());
    println!(
        "  kafka     bootstrap {} topic {TOPIC}",
        kafka.bootstrap_servers()
    );
    println!("  config    {}", cfg_path.display());
    println!();
    println!("  try:  UPDATE products SET category_id = 2 WHERE id = 1;");
    println!("        then in redis-cli: EXISTS product:1   (the demo cached product:1..20)");
    println!();
    println!(
        "{:<12} {:<20} {:<8} invalidations",
        "commit LSN", "table", "op"
    );

    let tally = Arc::new(Tally::default());
    let mut hooks = live_view(tally.clone());
    let started_streaming = Arc::new(tokio::sync::Notify::new());
    hooks.started = Some(started_streaming.clone());
    let signal = shutdown_signal();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut walbust = tokio::spawn(run::run(cfg, stop_rx, hooks));
    // Writes before the slot exists would never be streamed.
    tokio::select! {
        _ = started_streaming.notified() => {}
        r = &mut walbust => {
            r.context("walbust task")??;
            anyhow::bail!("walbust stopped before streaming");
        }
    }

    let started = Instant::now();
    let outcome = generate(&db, &args, signal.clone(), started).await;

    // Let walbust catch up with the last write before stopping it: every
    // generated write changes exactly one row.
    if let Ok(writes) = &outcome {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !*signal.borrow() && Instant::now() < deadline && !walbust.is_finished() {
            let seen = tally.seen_commit_lsn.load(Ordering::Relaxed);
            if tally.changes.load(Ordering::Relaxed) >= *writes
                && tally.confirmed_commit_lsn.load(Ordering::Relaxed) >= seen
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = stop_tx.send(true);
    let result = walbust.await.context("walbust task")?;
    outcome?;
    result?;

    let lat = tally
        .latencies_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    println!();
    println!(
        "done: {} changes, {} invalidations in {} batches, commit-to-confirm p50 {} p99 {} ({:.1}s)",
        tally.changes.load(Ordering::Relaxed),
        tally.invalidations.load(Ordering::Relaxed),
        tally.batches.load(Ordering::Relaxed),
        fmt_us(percentile(&lat, 50)),
        fmt_us(percentile(&lat, 99)),
        started.elapsed().as_secs_f64()
    );
    println!("cleaning up Postgres, Redis and Kafka");
    drop(cache);
    drop(db);
    tokio::task::spawn_blocking(move || {
        drop(pg);
        drop(redis);
        drop(kafka);
    })
    .await?;
    Ok(())
}

/// The live view: one line per row change, one per confirmed batch.
fn live_view(tally: Arc<Tally>) -> run::Hooks {
    let t = tally.clone();
    let tap: walbust_cdc::ChangeTap = Arc::new(move |ev: &walbust_cdc::ChangeEvent<'_>| {
        t.changes.fetch_add(1, Ordering::Relaxed);
        t.seen_commit_lsn
            .fetch_max(ev.commit_lsn, Ordering::Relaxed);
        let mut parts = Vec::new();
        if !ev.keys.is_empty() {
            parts.push(format!("keys {}", ev.keys.join(" ")));
        }
        if !ev.tags.is_empty() {
            parts.push(format!("tags {}", ev.tags.join(" ")));
        }
        if !ev.patterns.is_empty() {
            parts.push(format!("patterns {}", ev.patterns.join(" ")));
        }
        println!(
            "{:<12} {:<20} {:<8} {}",
            walbust_pgoutput::format_lsn(ev.commit_lsn),
            ev.table,
            format!("{:?}", ev.op).to_lowercase(),
            parts.join("  ")
        );
    });
    let t = tally;
    let observer: walbust_publish::BatchObserver = Arc::new(
        move |batch: &walbust_publish::Batch, report: &walbust_publish::BatchReport| {
            let commit = walbust_pgoutput::time::to_system_time(batch.commit_time_micros);
            let latency = report
                .published_at
                .duration_since(commit)
                .unwrap_or_default();
            let total = t
                .invalidations
                .fetch_add(batch.len() as u64, Ordering::Relaxed)
                + batch.len() as u64;
            t.batches.fetch_add(1, Ordering::Relaxed);
            if batch.end_lsn.is_some() {
                t.confirmed_commit_lsn
                    .fetch_max(batch.lsn, Ordering::Relaxed);
            }
            if let Ok(mut v) = t.latencies_us.lock() {
                v.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            if batch.is_empty() {
                return;
            }
            let sinks: Vec<&str> = report.sinks.iter().map(|s| s.sink).collect();
            println!(
                "{:<12} confirmed by {}: {} keys, {} tags, {} patterns; commit-to-confirm {}; {} invalidations so far",
                "",
                sinks.join("+"),
                batch.keys.len(),
                batch.tags.len(),
                batch.patterns.len(),
                fmt_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
                total
            );
        },
    );
    run::Hooks {
        tap: Some(tap),
        observer: Some(observer),
        started: None,
    }
}

/// Writes random shop traffic until the limits or a signal.
async fn generate(
    db: &tokio_postgres::Client,
    args: &DemoArgs,
    signal: watch::Receiver<bool>,
    started: Instant,
) -> Result<u64> {
    let limit_reached = |writes: u64| {
        (args.writes > 0 && writes >= args.writes)
            || (args.seconds > 0 && started.elapsed() >= Duration::from_secs(args.seconds))
    };
    let mut signal = signal;
    if args.rate <= 0.0 {
        // No generator: wait for the time limit or a signal.
        loop {
            if limit_reached(0) && args.seconds > 0 {
                return Ok(0);
            }
            tokio::select! {
                _ = signal.wait_for(|v| *v) => return Ok(0),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
    let period = Duration::from_secs_f64(1.0 / args.rate.min(10_000.0));
    let mut ticker = tokio::time::interval(period);
    let mut rng = seed();
    let mut writes = 0u64;
    loop {
        if limit_reached(writes) {
            return Ok(writes);
        }
        tokio::select! {
            _ = signal.wait_for(|v| *v) => return Ok(writes),
            _ = ticker.tick() => {}
        }
        let product = 1 + next(&mut rng) % 20;
        let sql = match next(&mut rng) % 5 {
            0 => format!("UPDATE products SET price = price + 1 WHERE id = {product}"),
            1 => format!(
                "UPDATE products SET category_id = {} WHERE id = {product}",
                1 + next(&mut rng) % 5
            ),
            2 | 3 => format!(
                "INSERT INTO orders (user_id, product_id, total) VALUES ({}, {product}, 10)",
                1 + next(&mut rng) % 50
            ),
            _ => "UPDATE orders SET status = 'paid' WHERE id = (SELECT max(id) FROM orders)"
                .to_string(),
        };
        db.batch_execute(&sql).await.context("demo write")?;
        writes += 1;
    }
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1
}

/// xorshift64: the demo's traffic only needs to look varied.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn percentile(values: &[u64], p: usize) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let idx = (v.len() * p / 100).min(v.len() - 1);
    v.get(idx).copied()
}

fn fmt_us(us: impl Into<Option<u64>>) -> String {
    match us.into() {
        None => "-".to_string(),
        Some(us) if us < 10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{} ms", us / 1000),
    }
}
