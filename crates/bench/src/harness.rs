//! The workloads: throwaway servers, the table every workload updates, slots, backlogs, and the
//! consumers that drain them.
//!
//! Drains (W1, W2): one slot is created, then copied (`pg_copy_logical_replication_slot`) once
//! per further consumer, so that every consumer starts at the same LSN. The backlog is written
//! after that, ending with a transaction that records `pg_current_wal_insert_lsn()` after its
//! last change: the *end mark*. Its commit lies past the mark, so
//!
//! - `pg_recvlogical --endpos <mark>` exits when it receives that commit, and
//! - walbust's slot has `confirmed_flush_lsn >= mark` only once that commit was confirmed by
//!   every sink and reported to Postgres (nothing else can move the slot past the mark: walbust
//!   acknowledges a keepalive position only when everything it received is confirmed).
//!
//! Consumers run one after the other, never together, pg_recvlogical first.
//!
//! Latency (W3): walbust streams while pgbench writes at a fixed rate; the percentiles come from
//! walbust's own commit-to-confirm summary, one run per sink so each figure is to that sink.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::process::Command;

pub use pattern_walks::PatternWalks;

use crate::procs::{self, Proc};
use crate::prom;
use crate::report::{mib, Drain, DrainRun, Latency, Machine, Setup};

mod pattern_walks;

/// The table every workload updates, shaped like pgbench's `pgbench_accounts`.
const TABLE: &str = "bench_accounts";
const PUBLICATION: &str = "walbust_bench";
const TOPIC: &str = "walbust-bench";
/// pgbench's scale: 100,000 accounts per branch.
const ACCOUNTS_PER_BRANCH: u64 = 100_000;
/// How often walbust reports its confirmed position (the default is 1000 ms): it bounds how
/// late Postgres learns that the backlog was drained.
pub const STATUS_INTERVAL_MS: u64 = 20;
/// How often the slot's position is polled while a consumer drains.
const POLL: Duration = Duration::from_millis(10);
/// pgbench clients and threads for W3.
const PGBENCH_CLIENTS: u32 = 4;
const PGBENCH_THREADS: u32 = 2;

/// The rules walbust runs with: one key per account, one tag per branch. No placeholder-free
/// tag, so no escalation: a 1M-row UPDATE sends 1M keys to the sinks (the hardest case).
pub const RULES: &str = r#"version: 1
rules:
  - table: public.bench_accounts
    on: [insert, update, delete]
    keys: ["account:{aid}"]
    tags: ["branch:{bid}"]
"#;

/// Postgres settings on top of testkit's defaults.
pub const PG_SETTINGS: &[(&str, &str)] = &[
    ("synchronous_commit", "on"),
    // Nothing but the workloads writes WAL, and dead rows are no concern here.
    ("autovacuum", "off"),
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "1h"),
];

/// Which sinks a walbust run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sinks {
    RedisKafka,
    Redis,
    Kafka,
    Discard,
}

impl Sinks {
    pub fn label(self) -> &'static str {
        match self {
            Sinks::RedisKafka => "redis+kafka",
            Sinks::Redis => "redis",
            Sinks::Kafka => "kafka",
            Sinks::Discard => "discard",
        }
    }

    pub fn parse(text: &str) -> Option<Sinks> {
        [
            Sinks::RedisKafka,
            Sinks::Redis,
            Sinks::Kafka,
            Sinks::Discard,
        ]
        .into_iter()
        .find(|s| s.label() == text)
    }
}

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// The walbust binary.
    pub walbust: PathBuf,
    pub w1_transactions: u64,
    pub w2_rows: u64,
    pub w3_rate: u32,
    pub w3_seconds: u64,
    pub run_single_row_backlog: bool,
    pub run_one_big_transaction: bool,
    pub run_latency_under_load: bool,
    /// W4: Redis sizes (unrelated keys), one run each.
    pub w4_sizes: Vec<u64>,
    pub w4_rate: u32,
    pub w4_seconds: u64,
    /// W4: `sinks.redis.pattern_strategy` (`walk` or `version`).
    pub w4_pattern_strategy: String,
    pub run_pattern_walks: bool,
    /// walbust runs of each drain (after pg_recvlogical).
    pub drain_sinks: Vec<Sinks>,
    /// W3 runs, one per entry.
    pub latency_sinks: Vec<Sinks>,
    /// One more W3 run with the first of `latency_sinks` and a streaming replica of the database
    /// listed in `source.replicas`: what replica-aware invalidation adds to the latency.
    pub w3_replica: bool,
    /// Where configurations and logs go; `None`: a temporary folder.
    pub work_dir: Option<PathBuf>,
}

impl Options {
    pub fn full(walbust: PathBuf) -> Options {
        Options {
            quick: false,
            walbust,
            w1_transactions: 200_000,
            w2_rows: 1_000_000,
            w3_rate: 5_000,
            w3_seconds: 60,
            run_single_row_backlog: true,
            run_one_big_transaction: true,
            run_latency_under_load: true,
            w4_sizes: vec![0, 100_000, 1_000_000, 4_000_000],
            w4_rate: 500,
            w4_seconds: 30,
            w4_pattern_strategy: "walk".into(),
            run_pattern_walks: false,
            drain_sinks: vec![
                Sinks::RedisKafka,
                Sinks::Discard,
                Sinks::Redis,
                Sinks::Kafka,
            ],
            latency_sinks: vec![Sinks::Redis, Sinks::Kafka],
            w3_replica: true,
            work_dir: None,
        }
    }

    pub fn quick(walbust: PathBuf) -> Options {
        Options {
            quick: true,
            w1_transactions: 2_000,
            w2_rows: 20_000,
            w3_rate: 500,
            w3_seconds: 5,
            w3_replica: false,
            w4_sizes: vec![0, 10_000],
            w4_seconds: 3,
            ..Options::full(walbust)
        }
    }

    /// Rows in the table: enough for W2, and at least one branch's worth for W1 and W3 unless
    /// in quick mode.
    fn table_rows(&self) -> u64 {
        if self.quick {
            self.w2_rows.max(1_000)
        } else {
            self.w2_rows.max(ACCOUNTS_PER_BRANCH)
        }
    }
}

/// The servers and the scratch folder. Field order is drop order: Kafka (held by this
/// process) goes last, after every client of it is gone.
pub struct Bench {
    opts: Options,
    db: tokio_postgres::Client,
    pg: walbust_testkit::Postgres,
    redis: walbust_testkit::Redis,
    redis_conn: redis::aio::MultiplexedConnection,
    work: Work,
    rows: u64,
    /// A streaming replica of `pg`, started for the first W3 run that lists one; dropped
    /// before `pg`.
    replica: Option<walbust_testkit::Postgres>,
    kafka: walbust_testkit::Kafka,
}

impl Bench {
    /// Starts Postgres, Redis and Kafka, creates and fills the table and the publication.
    pub async fn start(opts: Options) -> Result<Bench> {
        ensure!(
            opts.walbust.is_file(),
            "walbust binary not found at {} (build it: cargo build --release -p walbust)",
            opts.walbust.display()
        );
        let pg = walbust_testkit::Postgres::start_with(PG_SETTINGS).context("starting Postgres")?;
        let redis = walbust_testkit::Redis::start().context("starting Redis")?;
        let kafka = walbust_testkit::Kafka::start().context("starting Kafka")?;
        kafka
            .create_topic(TOPIC, 1)
            .context("creating the Kafka topic")?;
        let db = pg.connect().await?;
        let redis_conn = redis.connection().await?;
        let work = match &opts.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Work::Kept(dir.clone())
            }
            None => Work::Temp(
                tempfile::Builder::new()
                    .prefix("walbust-bench-")
                    .tempdir()?,
            ),
        };
        std::fs::write(work.path().join("rules.yaml"), RULES)?;
        let rows = opts.table_rows();
        let bench = Bench {
            opts,
            db,
            pg,
            redis,
            redis_conn,
            work,
            rows,
            replica: None,
            kafka,
        };
        bench.create_table().await?;
        Ok(bench)
    }

    async fn create_table(&self) -> Result<()> {
        let t = Instant::now();
        self.db
            .batch_execute(&format!(
                "CREATE TABLE {TABLE} (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))
                   WITH (fillfactor = 100, autovacuum_enabled = off);
                 INSERT INTO {TABLE} SELECT g, (g - 1) / {ACCOUNTS_PER_BRANCH} + 1, 0, '' FROM generate_series(1, {rows}) g;
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE};",
                rows = self.rows
            ))
            .await
            .context("creating the table")?;
        self.db
            .batch_execute(&format!("VACUUM (FREEZE, ANALYZE) {TABLE}"))
            .await?;
        eprintln!(
            "walbust-bench: table of {} rows ready in {:.1} s",
            self.rows,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    pub fn setup(&self) -> Setup {
        Setup {
            postgres_settings: PG_SETTINGS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kafka: if self.kafka.is_mock() {
                "librdkafka mock cluster, 1 broker, in the harness process".into()
            } else {
                format!("external broker {}", self.kafka.bootstrap_servers())
            },
            status_interval_ms: STATUS_INTERVAL_MS,
            rules: RULES.to_string(),
            table_rows: self.rows,
        }
    }

    pub async fn machine(&self) -> Machine {
        let postgres = match self.db.query_one("SHOW server_version", &[]).await {
            Ok(row) => row.get::<_, String>(0),
            Err(_) => "unknown".into(),
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        let redis = command_output("redis-server", &["--version"])
            .and_then(|v| {
                v.split_whitespace()
                    .find_map(|w| w.strip_prefix("v=").map(str::to_string))
            })
            .unwrap_or_else(|| "unknown".into());
        let build = if self
            .opts
            .walbust
            .components()
            .any(|c| c.as_os_str() == "debug")
        {
            "debug"
        } else {
            "release"
        };
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_mib: procs::parse_status_kib(&meminfo, "MemTotal:").unwrap_or(0) / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            postgres,
            redis,
            walbust_commit: command_output("git", &["rev-parse", "--short", "HEAD"])
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            walbust_build: build.into(),
        }
    }

    /// W1: a backlog of single-row UPDATE transactions.
    pub async fn single_row_backlog(&mut self) -> Result<Drain> {
        let n = self.opts.w1_transactions.max(2);
        let description = format!("backlog of {n} single-row UPDATE transactions");
        self.drain("W1", description, Backlog::SingleRow(n)).await
    }

    /// W2: one transaction updating every row of the table.
    pub async fn one_big_transaction(&mut self) -> Result<Drain> {
        let description = format!("one transaction updating {} rows", self.rows);
        self.drain("W2", description, Backlog::OneTransaction).await
    }

    async fn drain(
        &mut self,
        workload: &str,
        description: String,
        backlog: Backlog,
    ) -> Result<Drain> {
        eprintln!("walbust-bench: {workload}: {description}");
        self.db.batch_execute("CHECKPOINT").await?;
        let load_before = load_average();
        let prefix = format!("bench_{}", workload.to_ascii_lowercase());
        // pg_recvlogical drains the backlog first and again last: the faster of the two is the
        // reference, so one unlucky run on a shared machine does not flatter walbust.
        let recv_slot = format!("{prefix}_recvlogical");
        let recv_again_slot = format!("{prefix}_recvlogical_again");
        let walbust_slots: Vec<(Sinks, String)> = self
            .opts
            .drain_sinks
            .iter()
            .map(|s| (*s, format!("{prefix}_{}", s.label().replace('+', "_"))))
            .collect();
        let all_slots: Vec<&String> = [&recv_slot, &recv_again_slot]
            .into_iter()
            .chain(walbust_slots.iter().map(|(_, s)| s))
            .collect();
        self.db
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&recv_slot],
            )
            .await
            .context("creating the slot")?;
        for slot in &all_slots[1..] {
            self.db
                .query_one(
                    "SELECT slot_name FROM pg_copy_logical_replication_slot($1, $2)",
                    &[&recv_slot, slot],
                )
                .await
                .context("copying the slot")?;
        }
        let mut start = None;
        for slot in &all_slots {
            let lsn = self
                .slot_state(slot)
                .await?
                .0
                .context("slot without confirmed_flush_lsn")?;
            ensure!(
                *start.get_or_insert(lsn) == lsn,
                "slots were not created at the same LSN"
            );
        }
        let start = start.context("no slot")?;

        let t = Instant::now();
        let (transactions, changes, end) = self.generate(backlog).await?;
        let generate_seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "walbust-bench: {workload}: backlog of {transactions} transactions, {:.1} MiB of WAL written in {generate_seconds:.1} s",
            mib(end.saturating_sub(start))
        );

        let mut runs = Vec::new();
        let recv = self
            .run_recvlogical(&recv_slot, end, changes, transactions)
            .await?;
        eprintln!(
            "walbust-bench: {workload}: pg_recvlogical drained it in {:.2} s",
            recv.seconds
        );
        let recv_seconds = recv.seconds;
        runs.push(recv);
        for (sinks, slot) in &walbust_slots {
            let run = self
                .run_walbust_drain(slot, *sinks, end, changes, transactions, recv_seconds)
                .await
                .with_context(|| format!("{workload}: walbust {}", sinks.label()))?;
            eprintln!(
                "walbust-bench: {workload}: walbust {} drained it in {:.2} s",
                sinks.label(),
                run.seconds,
            );
            runs.push(run);
        }
        let mut again = self
            .run_recvlogical(&recv_again_slot, end, changes, transactions)
            .await?;
        again.consumer = "pg_recvlogical (again)".into();
        eprintln!(
            "walbust-bench: {workload}: pg_recvlogical drained it again in {:.2} s",
            again.seconds
        );
        runs.push(again);
        let reference = runs
            .iter()
            .filter(|r| r.consumer.starts_with("pg_recvlogical"))
            .map(|r| r.seconds)
            .fold(f64::INFINITY, f64::min);
        for run in &mut runs {
            run.ratio = reference / run.seconds;
        }
        for slot in &all_slots {
            self.drop_slot(slot).await?;
        }
        Ok(Drain {
            workload: workload.into(),
            description,
            transactions,
            changes,
            wal_bytes: end.saturating_sub(start),
            generate_seconds,
            load_before,
            runs,
        })
    }

    /// Writes a backlog; returns (transactions, changes, end mark).
    async fn generate(&self, backlog: Backlog) -> Result<(u64, u64, u64)> {
        // Only the writing of the backlog is not timed; its commits need not wait.
        self.db
            .batch_execute("SET synchronous_commit = off")
            .await?;
        let result = match backlog {
            Backlog::SingleRow(n) => {
                // A DO block may COMMIT when it is a statement of its own: one transaction per
                // iteration, without a round trip each. 7919 is prime, so aids spread over the
                // table.
                self.db
                    .batch_execute(&format!(
                        "DO $$ BEGIN
                           FOR i IN 1..{loops} LOOP
                             UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid = 1 + (i::bigint * 7919) % {rows};
                             COMMIT;
                           END LOOP;
                         END $$",
                        loops = n - 1,
                        rows = self.rows
                    ))
                    .await
                    .context("writing the backlog")?;
                let end = self
                    .marked_transaction(&format!(
                        "UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid = 1"
                    ))
                    .await?;
                Ok((n, n, end))
            }
            Backlog::OneTransaction => {
                let end = self
                    .marked_transaction(&format!("UPDATE {TABLE} SET abalance = abalance + 1"))
                    .await?;
                Ok((1, self.rows, end))
            }
        };
        self.db.batch_execute("RESET synchronous_commit").await?;
        result
    }

    /// Runs `statement` in a transaction and returns the WAL insert position after it, before
    /// the commit: the end mark (see the module docs).
    async fn marked_transaction(&self, statement: &str) -> Result<u64> {
        self.db.batch_execute("BEGIN").await?;
        self.db.batch_execute(statement).await?;
        let row = self
            .db
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?;
        self.db.batch_execute("COMMIT").await?;
        walbust_pgoutput::parse_lsn(row.get::<_, &str>(0)).context("unparsable LSN")
    }

    /// Scrapes walbust's metrics, stops it (it must exit cleanly) and drops its slot.
    async fn scrape_and_stop(
        &self,
        metrics: &str,
        proc: &mut Proc,
        slot: &str,
    ) -> Result<prom::Metrics> {
        let scraped = prom::scrape(metrics).await;
        let status = proc.terminate(Duration::from_secs(30)).await?;
        ensure!(
            status.success(),
            "walbust exited with {status}; its log ends with:\n{}",
            proc.log_tail()
        );
        self.drop_slot(slot).await?;
        scraped
    }

    /// Writes the end mark after a load and waits (at most `limit_s`) until walbust's `slot`
    /// confirmed it; returns the seconds that took.
    async fn mark_and_catch_up(&self, slot: &str, proc: &mut Proc, limit_s: u64) -> Result<f64> {
        let end = self
            .marked_transaction(&format!(
                "UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid = 1"
            ))
            .await?;
        let load_end = Instant::now();
        loop {
            if self.slot_state(slot).await?.0.is_some_and(|c| c >= end) {
                return Ok(load_end.elapsed().as_secs_f64());
            }
            proc.ensure_running()?;
            ensure!(
                load_end.elapsed() < Duration::from_secs(limit_s),
                "walbust did not catch up within {limit_s} s after the load; its log ends with:\n{}",
                proc.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The slot's `confirmed_flush_lsn` and the pid of the walsender serving it.
    async fn slot_state(&self, slot: &str) -> Result<(Option<u64>, Option<i32>)> {
        let row = self
            .db
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .with_context(|| format!("slot {slot} is gone"))?;
        let lsn: Option<String> = row.get(0);
        Ok((
            lsn.and_then(|l| walbust_pgoutput::parse_lsn(&l)),
            row.get(1),
        ))
    }

    async fn drop_slot(&self, slot: &str) -> Result<()> {
        // A consumer that just exited may still hold the slot for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .db
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("dropping slot {slot}")),
            }
        }
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.pg.bindir().join(program));
        cmd.env("PGPASSWORD", self.pg.password())
            .env_remove("PGOPTIONS")
            .args(["-h", self.pg.host()])
            .args(["-p", &self.pg.port().to_string()])
            .args(["-U", self.pg.user()]);
        cmd
    }

    async fn run_recvlogical(
        &mut self,
        slot: &str,
        end: u64,
        changes: u64,
        transactions: u64,
    ) -> Result<DrainRun> {
        let mut cmd = self.pg_command("pg_recvlogical");
        cmd.args(["-d", self.pg.database()])
            .args([
                "--slot",
                slot,
                "--start",
                "--no-loop",
                "--verbose",
                "-f",
                "/dev/null",
            ])
            .arg(format!("--endpos={}", walbust_pgoutput::format_lsn(end)))
            .args(["-o", "proto_version=1"])
            .args(["-o", &format!("publication_names={PUBLICATION}")])
            .args(["-o", "messages=true"]);
        let before = self.side_cpu().await;
        let t = Instant::now();
        let mut proc = Proc::spawn("pg_recvlogical", cmd, &self.log_path(slot))?;
        let mut walsender: Option<WatchedProcess> = None;
        let mut startup = None;
        let mut ticker = tokio::time::interval(POLL);
        let status = loop {
            tokio::select! {
                status = proc.wait() => break status?,
                _ = ticker.tick() => {
                    proc.sample();
                    if walsender.is_none() {
                        if let (_, Some(pid)) = self.slot_state(slot).await? {
                            startup = Some(t.elapsed().as_secs_f64());
                            walsender = Some(WatchedProcess::new(pid));
                        }
                    }
                    if let Some(w) = walsender.as_mut() {
                        w.sample();
                    }
                    if t.elapsed() > Duration::from_secs(3600) {
                        bail!("pg_recvlogical did not finish within an hour");
                    }
                }
            }
        };
        let seconds = t.elapsed().as_secs_f64();
        ensure!(
            status.success(),
            "pg_recvlogical failed ({status}):\n{}",
            proc.log_tail()
        );
        let after = self.side_cpu().await;
        Ok(DrainRun {
            consumer: "pg_recvlogical".into(),
            seconds,
            ratio: 1.0,
            transactions_per_second: transactions as f64 / seconds,
            changes_per_second: changes as f64 / seconds,
            startup_seconds: startup,
            // Sampled every POLL while it ran: the last sample, slightly short of the total.
            peak_rss_mib: proc.last.map(|s| mib(s.peak_rss_bytes)),
            cpu_seconds: proc.last.map(|s| s.cpu_seconds),
            cpu_seconds_per_100k_changes: proc.last.map(|s| per_100k(s.cpu_seconds, changes)),
            walsender_cpu_seconds: walsender.and_then(|w| w.last),
            redis_cpu_seconds: delta(before.redis, after.redis),
            harness_cpu_seconds: delta(before.harness, after.harness),
            changes_seen: None,
            batches: None,
            context_switches_per_change: proc
                .last
                .map(|s| s.context_switches as f64 / changes.max(1) as f64),
        })
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.log"))
    }

    /// Writes a walbust configuration for `slot` with `sinks`, metrics on a free port.
    /// `replica`: the URL of a replica to list in `source.replicas`.
    fn walbust_config(
        &self,
        slot: &str,
        sinks: Sinks,
        replica: Option<&str>,
    ) -> Result<(PathBuf, String)> {
        let metrics = format!("127.0.0.1:{}", walbust_testkit::free_port());
        let replicas = replica.map_or_else(String::new, |url| {
            format!("  replicas: [{{url: \"{url}\", name: replica}}]\n")
        });
        let mut yaml = format!(
            "source:\n  url: \"{url}\"\n  publication: {PUBLICATION}\n  slot: {slot}\n  status_interval_ms: {STATUS_INTERVAL_MS}\n{replicas}\
             rules: \"{rules}\"\nsinks:\n",
            url = self.pg.url(),
            rules = self.work.path().join("rules.yaml").display(),
        );
        if matches!(sinks, Sinks::RedisKafka | Sinks::Redis) {
            yaml.push_str(&format!("  redis:\n    url: \"{}\"\n", self.redis.url()));
        }
        if matches!(sinks, Sinks::RedisKafka | Sinks::Kafka) {
            yaml.push_str(&format!(
                "  kafka:\n    brokers: \"{}\"\n    topic: {TOPIC}\n",
                self.kafka.bootstrap_servers()
            ));
        }
        if sinks == Sinks::Discard {
            yaml.push_str("  discard: {}\n");
        }
        yaml.push_str(&format!("metrics:\n  listen: \"{metrics}\"\n"));
        let path = self.work.path().join(format!("{slot}.yaml"));
        std::fs::write(&path, yaml)?;
        Ok((path, metrics))
    }

    fn spawn_walbust(&self, config: &Path, slot: &str) -> Result<Proc> {
        let mut cmd = Command::new(&self.opts.walbust);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("WALBUST_LOG", "info");
        Proc::spawn("walbust", cmd, &self.log_path(slot))
    }

    async fn run_walbust_drain(
        &mut self,
        slot: &str,
        sinks: Sinks,
        end: u64,
        changes: u64,
        transactions: u64,
        recv_seconds: f64,
    ) -> Result<DrainRun> {
        let (config, metrics) = self.walbust_config(slot, sinks, None)?;
        let timeout = Duration::from_secs_f64((recv_seconds * 30.0).max(120.0));
        let before = self.side_cpu().await;
        let t = Instant::now();
        let mut proc = self.spawn_walbust(&config, slot)?;
        let mut walsender = None;
        let mut startup = None;
        loop {
            let (confirmed, pid) = self.slot_state(slot).await?;
            if walsender.is_none() {
                if let Some(pid) = pid {
                    startup = Some(t.elapsed().as_secs_f64());
                    walsender = Some(WatchedProcess::new(pid));
                }
            }
            if confirmed.is_some_and(|c| c >= end) {
                break;
            }
            proc.ensure_running()?;
            if t.elapsed() > timeout {
                bail!(
                    "walbust did not drain the backlog within {timeout:?}; its log ends with:\n{}",
                    proc.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let seconds = t.elapsed().as_secs_f64();
        let stats = proc.sample();
        let walsender_cpu = walsender.as_mut().and_then(|w| {
            w.sample();
            w.last
        });
        let after = self.side_cpu().await;
        let scraped = prom::scrape(&metrics).await;
        let status = proc.terminate(Duration::from_secs(30)).await?;
        ensure!(
            status.success(),
            "walbust exited with {status}; its log ends with:\n{}",
            proc.log_tail()
        );
        let scraped = scraped?;
        let changes_seen = scraped.sum(walbust_cdc::metrics::CHANGES).map(|v| v as u64);
        let batches = scraped
            .sum(walbust_publish::metrics::PIPELINE_BATCHES)
            .map(|v| v as u64);
        Ok(DrainRun {
            consumer: format!("walbust {}", sinks.label()),
            seconds,
            ratio: 0.0,
            transactions_per_second: transactions as f64 / seconds,
            changes_per_second: changes as f64 / seconds,
            startup_seconds: startup,
            peak_rss_mib: stats.map(|s| mib(s.peak_rss_bytes)),
            cpu_seconds: stats.map(|s| s.cpu_seconds),
            cpu_seconds_per_100k_changes: stats.map(|s| per_100k(s.cpu_seconds, changes)),
            walsender_cpu_seconds: walsender_cpu,
            redis_cpu_seconds: delta(before.redis, after.redis),
            harness_cpu_seconds: delta(before.harness, after.harness),
            changes_seen,
            batches,
            context_switches_per_change: stats
                .map(|s| s.context_switches as f64 / changes.max(1) as f64),
        })
    }

    /// W3 with `sinks`: walbust streams while pgbench writes `w3_rate` single-row UPDATE
    /// transactions per second for `w3_seconds`.
    /// `with_replica`: a streaming replica of the database is listed in `source.replicas`, so
    /// each batch also waits for the replica to replay it.
    pub async fn latency_under_load(
        &mut self,
        sinks: Sinks,
        with_replica: bool,
    ) -> Result<Latency> {
        let (rate, secs) = (self.opts.w3_rate, self.opts.w3_seconds);
        let label = if with_replica {
            format!("{} + replica", sinks.label())
        } else {
            sinks.label().to_owned()
        };
        eprintln!("walbust-bench: W3: {rate} tx/s for {secs} s, walbust with {label}");
        let replica_url = if with_replica {
            if self.replica.is_none() {
                self.replica = Some(
                    walbust_testkit::Postgres::start_replica(&self.pg, None)
                        .context("starting a streaming replica")?,
                );
            }
            self.replica.as_ref().map(walbust_testkit::Postgres::url)
        } else {
            None
        };
        self.db.batch_execute("CHECKPOINT").await?;
        let load_before = load_average();
        let slot = format!(
            "bench_w3_{}{}",
            sinks.label().replace('+', "_"),
            if with_replica { "_replica" } else { "" }
        );
        self.db
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
        let (config, metrics) = self.walbust_config(&slot, sinks, replica_url.as_deref())?;
        let mut proc = self.spawn_walbust(&config, &slot)?;
        let t = Instant::now();
        let mut walsender = loop {
            if let (_, Some(pid)) = self.slot_state(&slot).await? {
                break WatchedProcess::new(pid);
            }
            proc.ensure_running()?;
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "walbust did not start streaming within 60 s"
            );
            tokio::time::sleep(POLL).await;
        };
        walsender.sample();
        let walsender_before = walsender.last;
        let side_before = self.side_cpu().await;

        let script = self.work.path().join("w3.sql");
        std::fs::write(
            &script,
            format!(
                "\\set aid random(1, {rows})\n\\set delta random(-5000, 5000)\n\
                 UPDATE {TABLE} SET abalance = abalance + :delta WHERE aid = :aid;\n",
                rows = self.rows
            ),
        )?;
        let mut cmd = self.pg_command("pgbench");
        cmd.args(["-n", "-f"])
            .arg(&script)
            .args(["-c", &PGBENCH_CLIENTS.to_string()])
            .args(["-j", &PGBENCH_THREADS.to_string()])
            .args(["-R", &rate.to_string()])
            .args(["-T", &secs.to_string()])
            .arg(self.pg.database())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(secs + 120), cmd.output())
            .await
            .context("pgbench did not finish")?
            .context("cannot run pgbench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let pgbench = PgbenchOutput::parse(&stdout);
        let catch_up_seconds = self.mark_and_catch_up(&slot, &mut proc, 300).await?;
        let stats = proc.sample();
        walsender.sample();
        let side_after = self.side_cpu().await;
        let scraped = self.scrape_and_stop(&metrics, &mut proc, &slot).await?;
        let quantiles = scraped.quantiles(walbust_publish::metrics::COMMIT_TO_CONFIRM_SECONDS);
        let replica_wait = with_replica
            .then(|| scraped.quantiles(walbust_cdc::metrics::REPLICA_WAIT_SECONDS))
            .flatten();
        let transactions = pgbench.processed.unwrap_or(0) + 1;
        let ms = |f: fn(&prom::Quantiles) -> f64| quantiles.as_ref().map(|q| f(q) * 1000.0);
        let result = Latency {
            sinks: label.clone(),
            rate_target: rate,
            seconds_target: secs,
            load_before,
            achieved_tps: pgbench.tps,
            transactions,
            pgbench_latency_avg_ms: pgbench.latency_avg_ms,
            pgbench_lag_avg_ms: pgbench.lag_avg_ms,
            p50_ms: ms(|q| q.p50),
            p95_ms: ms(|q| q.p95),
            p99_ms: ms(|q| q.p99),
            max_ms: ms(|q| q.max),
            batches: quantiles.map_or(0, |q| q.count),
            catch_up_seconds,
            peak_rss_mib: stats.map(|s| mib(s.peak_rss_bytes)),
            cpu_seconds: stats.map(|s| s.cpu_seconds),
            cpu_seconds_per_100k_changes: stats.map(|s| per_100k(s.cpu_seconds, transactions)),
            changes_seen: scraped.sum(walbust_cdc::metrics::CHANGES).map(|v| v as u64),
            walsender_cpu_seconds: delta(walsender_before, walsender.last),
            redis_cpu_seconds: delta(side_before.redis, side_after.redis),
            harness_cpu_seconds: delta(side_before.harness, side_after.harness),
            replica_wait_p50_ms: replica_wait.as_ref().map(|q| q.p50 * 1000.0),
            replica_wait_p99_ms: replica_wait.as_ref().map(|q| q.p99 * 1000.0),
            replica_wait_timeouts: with_replica
                .then(|| scraped.sum(walbust_cdc::metrics::REPLICA_WAIT_TIMEOUTS))
                .flatten()
                .map(|v| v as u64),
        };
        eprintln!(
            "walbust-bench: W3 {}: p50 {} ms, p99 {} ms over {} batches",
            label,
            result.p50_ms.map_or("–".into(), |v| format!("{v:.2}")),
            result.p99_ms.map_or("–".into(), |v| format!("{v:.2}")),
            result.batches
        );
        Ok(result)
    }

    /// CPU seconds so far of redis-server (`INFO cpu`) and of this process (the mock Kafka
    /// cluster's threads live here).
    async fn side_cpu(&mut self) -> SideCpu {
        let info: Option<String> = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.redis_conn)
            .await
            .ok();
        let redis = info.map(|info| {
            info.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    matches!(k, "used_cpu_sys" | "used_cpu_user")
                        .then(|| v.trim().parse::<f64>().ok())
                        .flatten()
                })
                .sum()
        });
        SideCpu {
            redis,
            harness: procs::stats(std::process::id()).map(|s| s.cpu_seconds),
        }
    }
}

/// The folder of configurations and logs.
enum Work {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Work {
    fn path(&self) -> &Path {
        match self {
            Work::Temp(dir) => dir.path(),
            Work::Kept(dir) => dir,
        }
    }
}

enum Backlog {
    SingleRow(u64),
    OneTransaction,
}

struct SideCpu {
    redis: Option<f64>,
    harness: Option<f64>,
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

fn per_100k(cpu_seconds: f64, changes: u64) -> f64 {
    cpu_seconds * 100_000.0 / changes.max(1) as f64
}

/// A process that is not our child (a walsender), sampled for CPU time.
struct WatchedProcess {
    pid: u32,
    last: Option<f64>,
}

impl WatchedProcess {
    fn new(pid: i32) -> WatchedProcess {
        WatchedProcess {
            pid: u32::try_from(pid).unwrap_or(0),
            last: None,
        }
    }

    fn sample(&mut self) {
        if let Some(s) = procs::stats(self.pid) {
            self.last = Some(s.cpu_seconds);
        }
    }
}

/// What the harness reads from pgbench's report.
#[derive(Debug, Default, PartialEq)]
struct PgbenchOutput {
    processed: Option<u64>,
    tps: Option<f64>,
    latency_avg_ms: Option<f64>,
    lag_avg_ms: Option<f64>,
}

impl PgbenchOutput {
    fn parse(text: &str) -> PgbenchOutput {
        let mut out = PgbenchOutput::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
                out.processed = first_number(rest).map(|v| v as u64);
            } else if let Some(rest) = line.strip_prefix("tps =") {
                out.tps = out.tps.or(first_number(rest));
            } else if let Some(rest) = line.strip_prefix("latency average =") {
                out.latency_avg_ms = first_number(rest);
            } else if let Some(rest) = line.strip_prefix("rate limit schedule lag: avg") {
                out.lag_avg_ms = first_number(rest);
            }
        }
        out
    }
}

fn first_number(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
}

/// 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|w| w.parse::<f64>().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_report_is_read() {
        let text = "pgbench (15.18 (Debian 15.18-0+deb12u1))\n\
            transaction type: /tmp/w3.sql\n\
            number of clients: 4\n\
            duration: 60 s\n\
            number of transactions actually processed: 299812\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 0.412 ms\n\
            rate limit schedule lag: avg 0.087 (max 11.204) ms\n\
            initial connection time = 6.102 ms\n\
            tps = 4996.870117 (without initial connection time)\n";
        assert_eq!(
            PgbenchOutput::parse(text),
            PgbenchOutput {
                processed: Some(299812),
                tps: Some(4996.870117),
                latency_avg_ms: Some(0.412),
                lag_avg_ms: Some(0.087),
            }
        );
    }

    #[test]
    fn sink_labels_round_trip() {
        for s in [
            Sinks::RedisKafka,
            Sinks::Redis,
            Sinks::Kafka,
            Sinks::Discard,
        ] {
            assert_eq!(Sinks::parse(s.label()), Some(s));
        }
        assert_eq!(Sinks::parse("nope"), None);
    }

    #[test]
    fn the_rules_are_valid_and_name_the_table() {
        let rules = walbust_rules::RuleSet::from_yaml(RULES, "bench rules").expect("valid rules");
        let tables: Vec<String> = rules.tables().iter().map(ToString::to_string).collect();
        assert_eq!(tables, vec![format!("public.{TABLE}")]);
    }
}
