//! The servers, the walbust process, and one round: readers and writers
//! race, then everything settles and the cache is compared with the rows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The slot and publication walbust streams.
const SLOT: &str = "race";
/// How long settling may take before the round fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a reader fills the cache after a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `GET`; on a miss read the row, work, `SET`.
    Plain,
    /// `FCALL walbust_get`; on a miss read the row, work, `FCALL walbust_fill`
    /// with the token, which stores nothing if the key was invalidated since.
    Fenced,
}

/// Where a reader reads the row on a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Primary,
    /// A streaming replica applying commits late.
    Replica,
}

/// When walbust invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidate {
    /// As soon as the primary committed.
    AtCommit,
    /// Once the replica replayed the commit (`source.replicas`).
    ReplicaAware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub fill: Fill,
    pub read: Read,
    pub invalidate: Invalidate,
}

impl Mode {
    pub fn name(&self) -> String {
        format!(
            "{}/{}/{}",
            match self.fill {
                Fill::Plain => "plain",
                Fill::Fenced => "fenced",
            },
            match self.read {
                Read::Primary => "primary",
                Read::Replica => "replica",
            },
            match self.invalidate {
                Invalidate::AtCommit => "at-commit",
                Invalidate::ReplicaAware => "replica-aware",
            }
        )
    }
}

/// What the readers and writers do.
pub struct Shape {
    pub readers: usize,
    pub writers: usize,
    pub rows: i32,
    pub work: Duration,
    pub writing: Duration,
}

/// Cached entries and how many of them were stale, summed over rounds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub rounds: u32,
    pub cached: u64,
    pub stale: u64,
    pub updates: u64,
    pub fills: u64,
    pub refused: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.rounds += other.rounds;
        self.cached += other.cached;
        self.stale += other.stale;
        self.updates += other.updates;
        self.fills += other.fills;
        self.refused += other.refused;
    }
}

/// The throwaway servers: a primary, a streaming replica of it, Redis.
/// Field order is drop order: the replica stops before its primary.
pub struct Services {
    pub replica: walbust_testkit::Postgres,
    pub primary: walbust_testkit::Postgres,
    pub redis: walbust_testkit::Redis,
    rows: i32,
}

impl Services {
    pub async fn start(rows: i32, apply_delay: Duration) -> Result<Services> {
        let primary = walbust_testkit::Postgres::start()?;
        let db = primary.connect().await?;
        db.batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL);
             INSERT INTO items SELECT g, 0 FROM generate_series(1, {rows}) g;"
        ))
        .await?;
        let replica = walbust_testkit::Postgres::start_replica(&primary, Some(apply_delay))?;
        let redis = walbust_testkit::Redis::start()?;
        let services = Services {
            primary,
            replica,
            redis,
            rows,
        };
        let lsn = services.primary_lsn().await?;
        services.wait_replayed(lsn).await?;
        Ok(services)
    }

    /// Writes walbust's configuration for `mode` (the `index`th).
    pub fn write_config(&self, dir: &Path, mode: Mode, index: usize) -> Result<PathBuf> {
        let rules = dir.join("rules.yaml");
        std::fs::write(
            &rules,
            "version: 1\nrules:\n  - table: public.items\n    keys: [\"item:{id}\"]\n",
        )?;
        let replicas = match mode.invalidate {
            Invalidate::AtCommit => String::new(),
            Invalidate::ReplicaAware => format!(
                "  replicas:\n    - url: \"{}\"\n  replica_wait_max_ms: 30000\n",
                self.replica.url()
            ),
        };
        let leases = match mode.fill {
            Fill::Plain => "",
            Fill::Fenced => "    leases: true\n",
        };
        let config = format!(
            "source:\n  url: \"{}\"\n  publication: {SLOT}\n  slot: {SLOT}\n  create: true\n  status_interval_ms: 200\n{replicas}rules: {}\nsinks:\n  redis:\n    url: \"{}\"\n{leases}",
            self.primary.url(),
            rules.display(),
            self.redis.url(),
        );
        let path = dir.join(format!("walbust-{index}.yaml"));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// Waits until walbust's walsender holds the slot.
    pub async fn wait_streaming(&self, walbust: &mut Walbust) -> Result<()> {
        let db = self.primary.connect().await?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if walbust_testkit::walsender_pid(&db, SLOT).await?.is_some() {
                return Ok(());
            }
            walbust.check_running()?;
            if Instant::now() > deadline {
                bail!("walbust did not start streaming; log:\n{}", walbust.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn primary_lsn(&self) -> Result<i64> {
        let db = self.primary.connect().await?;
        let row = db
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Waits until the replica replayed `lsn`.
    async fn wait_replayed(&self, lsn: i64) -> Result<()> {
        let db = self.replica.connect().await?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let row = db
                .query_one(
                    "SELECT coalesce((pg_last_wal_replay_lsn() - '0/0')::bigint, 0)",
                    &[],
                )
                .await?;
            if row.get::<_, i64>(0) >= lsn {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replica did not replay {lsn} in {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until walbust confirmed everything committed up to `lsn`.
    async fn wait_confirmed(&self, lsn: i64, walbust: &mut Walbust) -> Result<()> {
        let db = self.primary.connect().await?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let row = db
                .query_opt(
                    "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[&SLOT],
                )
                .await?;
            if row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) >= lsn {
                return Ok(());
            }
            walbust.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "walbust did not confirm {lsn} in {SETTLE_TIMEOUT:?}; log:\n{}",
                    walbust.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A seeded xorshift: the rows readers and writers pick.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn row(&mut self, rows: i32) -> i32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % rows as u64) as i32 + 1
    }
}

fn key(id: i32) -> String {
    format!("item:{id}")
}

/// One round: clear the cache, race readers and writers, let everything
/// settle (walbust confirmed every write, the replica replayed it, every
/// reader finished its fill), then compare the cache with the rows.
pub async fn round(
    services: &Services,
    shape: &Shape,
    mode: Mode,
    seed: u64,
    walbust: &mut Walbust,
) -> Result<Tally> {
    let mut redis = services.redis.connection().await?;
    let keys: Vec<String> = (1..=services.rows).map(key).collect();
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut redis)
        .await?;

    let writing = Arc::new(AtomicBool::new(true));
    let reading = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..shape.writers {
        let db = services.primary.connect().await?;
        let writing = writing.clone();
        let rows = shape.rows;
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(w as u64 + 1));
        writers.push(tokio::spawn(async move {
            let update = db
                .prepare("UPDATE items SET v = v + 1 WHERE id = $1")
                .await?;
            let mut updates = 0u64;
            while writing.load(Ordering::Relaxed) {
                db.execute(&update, &[&rng.row(rows)]).await?;
                updates += 1;
            }
            anyhow::Ok(updates)
        }));
    }
    let mut readers = Vec::new();
    for r in 0..shape.readers {
        let db = match mode.read {
            Read::Primary => services.primary.connect().await?,
            Read::Replica => services.replica.connect().await?,
        };
        let mut redis = services.redis.connection().await?;
        let reading = reading.clone();
        let rows = shape.rows;
        let work = shape.work;
        let mut rng = Rng::new(seed.wrapping_mul(17).wrapping_add(1000 + r as u64));
        readers.push(tokio::spawn(async move {
            let select = db.prepare("SELECT v FROM items WHERE id = $1").await?;
            let (mut fills, mut refused) = (0u64, 0u64);
            while reading.load(Ordering::Relaxed) {
                let id = rng.row(rows);
                let key = key(id);
                match mode.fill {
                    Fill::Plain => {
                        let cached: Option<String> =
                            redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
                        if cached.is_none() {
                            let v: i64 = db.query_one(&select, &[&id]).await?.get(0);
                            tokio::time::sleep(work).await;
                            redis::cmd("SET")
                                .arg(&key)
                                .arg(v.to_string())
                                .query_async::<()>(&mut redis)
                                .await?;
                            fills += 1;
                        }
                    }
                    Fill::Fenced => {
                        let (code, payload): (i64, String) = redis::cmd("FCALL")
                            .arg("walbust_get")
                            .arg(1)
                            .arg(&key)
                            .query_async(&mut redis)
                            .await?;
                        match code {
                            0 => {
                                let v: i64 = db.query_one(&select, &[&id]).await?.get(0);
                                tokio::time::sleep(work).await;
                                let stored: i64 = redis::cmd("FCALL")
                                    .arg("walbust_fill")
                                    .arg(1)
                                    .arg(&key)
                                    .arg(&payload)
                                    .arg(v.to_string())
                                    .arg(0)
                                    .query_async(&mut redis)
                                    .await?;
                                if stored == 1 {
                                    fills += 1;
                                } else {
                                    refused += 1;
                                }
                            }
                            // Someone else fills: come back later.
                            2 => tokio::time::sleep(Duration::from_millis(1)).await,
                            _ => {}
                        }
                    }
                }
            }
            anyhow::Ok((fills, refused))
        }));
    }

    tokio::time::sleep(shape.writing).await;
    writing.store(false, Ordering::Relaxed);
    let mut updates = 0;
    for w in writers {
        updates += w.await??;
    }
    // Settle: every write invalidated and replayed; readers go on reading
    // meanwhile, and each finishes the fill it started.
    let lsn = services.primary_lsn().await?;
    services.wait_confirmed(lsn, walbust).await?;
    services.wait_replayed(lsn).await?;
    reading.store(false, Ordering::Relaxed);
    let (mut fills, mut refused) = (0, 0);
    for r in readers {
        let (f, x) = r.await??;
        fills += f;
        refused += x;
    }

    let db = services.primary.connect().await?;
    let mut tally = Tally {
        rounds: 1,
        updates,
        fills,
        refused,
        ..Tally::default()
    };
    for row in db.query("SELECT id, v FROM items ORDER BY id", &[]).await? {
        let (id, v): (i32, i64) = (row.get(0), row.get(1));
        let cached = cached_value(&mut redis, mode.fill, &key(id)).await?;
        if let Some(cached) = cached {
            tally.cached += 1;
            if cached != v.to_string() {
                tally.stale += 1;
            }
        }
    }
    Ok(tally)
}

/// What a reader would be served from the cache for `key`.
async fn cached_value(
    redis: &mut redis::aio::MultiplexedConnection,
    fill: Fill,
    key: &str,
) -> Result<Option<String>> {
    Ok(match fill {
        Fill::Plain => redis::cmd("GET").arg(key).query_async(redis).await?,
        Fill::Fenced => {
            let (code, value): (i64, String) = redis::cmd("FCALL")
                .arg("walbust_get")
                .arg(1)
                .arg(key)
                .query_async(redis)
                .await?;
            (code == 1).then_some(value)
        }
    })
}

/// The results as a Markdown table.
pub fn table(results: &[(Mode, Tally)]) -> String {
    let mut out = String::from(
        "| fills | reads from | invalidation | rounds | updates | fills stored | fills refused | cached entries | stale | stale % |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (mode, t) in results {
        let name = mode.name();
        let parts: Vec<&str> = name.split('/').collect();
        let pct = if t.cached == 0 {
            0.0
        } else {
            100.0 * t.stale as f64 / t.cached as f64
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {pct:.1} |\n",
            parts[0],
            parts[1],
            parts[2],
            t.rounds,
            t.updates,
            t.fills,
            t.refused,
            t.cached,
            t.stale
        ));
    }
    out
}

/// The walbust process of a mode.
pub struct Walbust {
    child: Child,
    log: PathBuf,
}

impl Walbust {
    pub fn start(binary: &Path, config: &Path) -> Result<Walbust> {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .env("WALBUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Walbust { child, log })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("walbust exited ({status}); log:\n{}", self.log());
        }
        Ok(())
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("walbust exited with {status}; log:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("walbust did not stop in 30 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Walbust {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
