//! One torture run: services up, walbust started, the workload writing,
//! then the plan's cycles. Each cycle writes for a random while, injects
//! its fault, recovers, writes a little more, pauses the workload and
//! checks that every change committed so far reached Redis and Kafka.
//!
//! ```text
//! cycle:  [ writes ... fault ... recovery ... writes ] [ pause: resolve uncertain commits,
//!                                                        wait until Redis and Kafka show
//!                                                        every committed change ]
//! ```
//!
//! A cycle whose changes do not all show within the settle time is a hang
//! (walbust stuck, or an invalidation lost): it is reported with walbust's
//! log, and the run stops there unless told to keep going. At the end,
//! walbust is stopped with SIGTERM and every Redis counter is read once
//! more: lost, duplicated and phantom invalidations are counted from that
//! final state.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::{watch, OwnedMutexGuard};
use tokio_postgres::Client;

use crate::ledger::{ChangeId, ChangeIx, Ledger, Status};
use crate::observe::{self, lock, KafkaWatch};
use crate::plan::{Cycle, Fault, Mode, Rng, Span, Timing};
use crate::report::{
    CycleRecord, Finding, Report, LARGE_ABORTED, LARGE_ACKNOWLEDGED, LARGE_ACK_LOST,
};
use crate::services::{self, Services, SLOT, TOPIC};
use crate::walbust::{log_tail, Terminated, Walbust};
use crate::workload::{self, Connect, LargeTx, Model, Workload};

/// Time allowed for walbust to start streaming.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Time allowed for walbust to exit after SIGTERM.
const TERM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the walsender-in-a-large-transaction fault waits for walbust to
/// start delivering the transaction before it strikes anyway.
const LARGE_DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// How long a failover waits for the standby to keep a synchronized copy
/// of the slot before it strikes anyway (a failover without the slot: a
/// gap walbust must tell from its database marker and purge).
const SYNC_WAIT: Duration = Duration::from_secs(120);
/// How long failure detection takes before the standby is promoted.
const FAILOVER_DETECT: Span = Span::millis(0, 2_000);
/// What a standby walbust logs while another one streams the slot.
const STANDBY_LINE: &str = "waiting as a standby";

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub seed: u64,
    /// The walbust binary.
    pub walbust: PathBuf,
    /// Where logs, configuration and results go.
    pub scratch: PathBuf,
    /// Workload transactions per second.
    pub rate: u32,
    /// Rows of the large UPDATE.
    pub large_rows: i64,
    pub outage: Span,
    pub timing: Timing,
    /// Go on after a cycle failed its check.
    pub keep_going: bool,
    /// walbust's log filter.
    pub log_filter: String,
    /// With `--cycles`: only these fault kinds.
    pub only: Vec<Fault>,
    /// Extra librdkafka properties for walbust's Kafka sink.
    pub kafka_properties: Vec<(String, String)>,
    /// How to repeat this run, for the report.
    pub command: String,
}

/// The mutable state of a run.
/// Field order is drop order: walbust and the observers go before the
/// services they talk to.
struct Run<'a> {
    opts: &'a Options,
    walbust: Walbust,
    kafka_watch: KafkaWatch,
    svc: Services,
    ledger: Arc<Mutex<Ledger>>,
    work: Arc<Workload>,
    rng: Rng,
    findings: Vec<Finding>,
    cycles: Vec<CycleRecord>,
    unexpected_exits: u32,
    /// The fault of the cycle being run, for findings.
    current: Option<(usize, Fault)>,
    /// How long the last acknowledged large UPDATE took: crashes aim at
    /// its whole life, commit included.
    large_took: Duration,
    /// Changes of the large UPDATE in Redis when its stream was cut, for
    /// the cycle being run.
    cut_at: Option<u64>,
    /// The large UPDATE a crash struck in the cycle being run.
    crashed_large: Option<LargeTx>,
    /// For a failover or a takeover in the cycle being run: how long after
    /// the primary's stop or the active walbust's kill walbust streamed
    /// the slot again.
    resumed: Option<Duration>,
    /// Held by the writer for each transaction: a fault that writes
    /// around DDL itself holds it to pause the writer.
    gate: Arc<tokio::sync::Mutex<()>>,
}

pub async fn run(opts: &Options) -> Result<Report> {
    let started_at = SystemTime::now();
    let epoch = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let plan = opts.mode.plan(opts.outage, &opts.only, &mut rng);
    eprintln!(
        "walbust-torture: {} cycles, seed {}, scratch {}",
        plan.len(),
        opts.seed,
        opts.scratch.display()
    );

    let svc = tokio::task::spawn_blocking(Services::start)
        .await
        .context("service start-up panicked")??;
    svc.prepare(opts.large_rows).await?;
    let config = svc.write_config(&opts.scratch, &opts.kafka_properties)?;
    let ledger = Arc::new(Mutex::new(Ledger::new(epoch)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let redis_watch = tokio::spawn(observe::watch_redis(
        svc.redis.url(),
        Arc::clone(&ledger),
        stop_rx.clone(),
    ));
    let kafka_watch =
        KafkaWatch::start(&svc.kafka.bootstrap_servers(), TOPIC, Arc::clone(&ledger))?;
    let work = Arc::new(Workload {
        ledger: Arc::clone(&ledger),
        model: Mutex::new(Model::new(opts.large_rows)),
        cycle: Default::default(),
        transactions: Default::default(),
    });
    let walbust = Walbust::new(&opts.walbust, &config, &opts.scratch, &opts.log_filter);
    // The writer starts paused: each cycle opens the gate.
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let mut run = Run {
        opts,
        svc,
        ledger,
        kafka_watch,
        work,
        walbust,
        rng: Rng::new(rng.next_u64()),
        findings: Vec::new(),
        cycles: Vec::new(),
        unexpected_exits: 0,
        current: None,
        large_took: Duration::from_secs(2),
        cut_at: None,
        crashed_large: None,
        resumed: None,
        gate: Arc::clone(&gate),
    };
    run.walbust.start()?;
    run.wait_streaming().await?;

    let mut paused: Option<OwnedMutexGuard<()>> = Some(Arc::clone(&gate).lock_owned().await);
    let connect: Connect = {
        let pg = Arc::clone(&run.svc.pg);
        Arc::new(move || {
            let pg = Arc::clone(&pg);
            Box::pin(async move { pg.connect().await })
        })
    };
    let writer = tokio::spawn(workload::write(
        Arc::clone(&run.work),
        connect,
        Arc::clone(&gate),
        opts.rate,
        rng.next_u64(),
        stop_rx.clone(),
    ));

    for (i, cycle) in plan.iter().enumerate() {
        run.current = Some((i, cycle.fault));
        run.work.cycle.store(i as u32, Ordering::Release);
        lock(&run.ledger).set_cycle(i as u32);
        let first = lock(&run.ledger).changes().len();
        let began = Instant::now();
        drop(paused.take());
        sleep(opts.timing.lead_in.pick(&mut run.rng)).await;
        let note = run.inject(*cycle).await?;
        sleep(opts.timing.tail.pick(&mut run.rng)).await;
        paused = Some(Arc::clone(&gate).lock_owned().await);
        let settled = run.settle().await?;
        let record = run.record(i, *cycle, first, began, &settled, note);
        run.cut_at = None;
        run.crashed_large = None;
        run.resumed = None;
        eprintln!("{}", record.line(plan.len()));
        run.cycles.push(record);
        // A writer that died (a bug in the workload) would leave the
        // remaining cycles without changes to check: stop at once.
        if writer.is_finished() {
            break;
        }
        if settled.overdue && !opts.keep_going {
            eprintln!(
                "walbust-torture: stopping after cycle {}: see the findings",
                i + 1
            );
            break;
        }
    }
    run.current = None;

    // The end: the writer stops, walbust is stopped gracefully, and the
    // sinks are read one last time.
    let _ = stop_tx.send(true);
    drop(paused.take());
    writer.await.context("the writer panicked")?;
    run.final_stop()?;
    let drained = tokio::task::block_in_place(|| run.kafka_watch.drain(Duration::from_secs(60)));
    if let Err(e) = drained {
        run.finding(
            None,
            format!("Kafka could not be read to its end: {e:#}"),
            None,
        );
    }
    redis_watch.await.context("the Redis observer panicked")?;
    run.final_count().await?;

    let faults: Vec<Fault> = run.cycles.iter().map(|c| c.fault).collect();
    let tally = lock(&run.ledger).tally(&faults);
    let ledger = lock(&run.ledger);
    Ok(Report::new(
        opts,
        started_at,
        epoch.elapsed(),
        plan.len(),
        tally,
        &ledger,
        std::mem::take(&mut run.cycles),
        std::mem::take(&mut run.findings),
        run.walbust.starts(),
        run.unexpected_exits,
        run.work.transactions.load(Ordering::Relaxed),
    ))
}

/// What a cycle's check found.
struct Settled {
    took: Duration,
    resolved: workload::Resolved,
    overdue: bool,
}

impl Run<'_> {
    async fn wait_streaming(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let db = self.svc.db(Duration::from_secs(30)).await?;
        loop {
            if let Some(status) = self.walbust.exited()? {
                anyhow::bail!(
                    "walbust exited ({status}) before streaming; {}:\n{}",
                    self.walbust.last_log().display(),
                    log_tail(&self.walbust.last_log())
                );
            }
            if services::walsender_pid(&db).await?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "walbust did not start streaming in {START_TIMEOUT:?}; {}:\n{}",
                    self.walbust.last_log().display(),
                    log_tail(&self.walbust.last_log())
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    fn finding(&mut self, log: Option<PathBuf>, what: String, tail: Option<String>) {
        let (cycle, fault) = match self.current {
            Some((i, f)) => (Some(i + 1), Some(f)),
            None => (None, None),
        };
        eprintln!(
            "walbust-torture: FINDING{}: {what}",
            cycle.map(|c| format!(" in cycle {c}")).unwrap_or_default()
        );
        self.findings.push(Finding {
            cycle,
            fault: fault.map(Fault::name),
            what,
            log,
            log_tail: tail,
        });
    }

    /// walbust must never exit on its own: if it did, that is a finding,
    /// and it is started again so the run can go on.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.walbust.exited()? {
            self.unexpected_exits += 1;
            let log = self.walbust.last_log();
            let tail = log_tail(&log);
            self.finding(
                Some(log),
                format!("walbust exited on its own ({status})"),
                Some(tail),
            );
            self.walbust.start()?;
        }
        Ok(())
    }

    async fn inject(&mut self, cycle: Cycle) -> Result<String> {
        self.check_alive()?;
        let t = self.opts.timing;
        Ok(match cycle.fault {
            Fault::WalbustKill => {
                self.walbust.kill()?;
                let down = t.walbust_down.pick(&mut self.rng);
                sleep(down).await;
                self.walbust.start()?;
                format!("down {}", secs(down))
            }
            Fault::WalbustTerm => {
                let outcome = tokio::task::block_in_place(|| self.walbust.terminate(TERM_TIMEOUT))?;
                let note = match outcome {
                    Terminated::Exited(status, took) if status.success() => {
                        format!("exited 0 in {}", secs(took))
                    }
                    Terminated::Exited(status, took) => {
                        let log = self.walbust.last_log();
                        let tail = log_tail(&log);
                        self.finding(
                            Some(log),
                            format!(
                                "walbust exited with {status} on SIGTERM (expected 0) after {}",
                                secs(took)
                            ),
                            Some(tail),
                        );
                        format!("exited {status}")
                    }
                    Terminated::Hung(after) => {
                        let log = self.walbust.last_log();
                        let tail = log_tail(&log);
                        self.finding(
                            Some(log),
                            format!(
                                "walbust did not exit within {} of SIGTERM; killed",
                                secs(after)
                            ),
                            Some(tail),
                        );
                        "hung on SIGTERM".to_owned()
                    }
                };
                let down = t.walbust_down.pick(&mut self.rng);
                sleep(down).await;
                self.walbust.start()?;
                format!("{note}, down {}", secs(down))
            }
            Fault::PostgresCrash => {
                self.crash_postgres().await?;
                let down = t.postgres_down.pick(&mut self.rng);
                sleep(down).await;
                self.start_postgres().await?;
                format!("down {}", secs(down))
            }
            Fault::PostgresCrashLargeTx => {
                let db = self.svc.db(Duration::from_secs(30)).await?;
                let work = Arc::clone(&self.work);
                let large = tokio::spawn(async move { workload::large_update(&work, &db).await });
                // Anywhere from early in the UPDATE to after its commit,
                // so that some crashes swallow the acknowledgement.
                let percent = Span::millis(30, 200).pick(&mut self.rng);
                let after = self.large_took.mul_f64(percent.as_millis() as f64 / 100.0);
                sleep(after).await;
                self.crash_postgres().await?;
                let large = large.await.context("the large UPDATE panicked")?;
                if large.acknowledged {
                    self.large_took = large.took;
                }
                let rows = large.changes.len();
                self.crashed_large = Some(large);
                let down = t.postgres_down.pick(&mut self.rng);
                sleep(down).await;
                self.start_postgres().await?;
                format!(
                    "crash {} into a {rows}-row UPDATE, down {}",
                    secs(after),
                    secs(down)
                )
            }
            Fault::WalsenderKill => {
                let db = self.svc.db(Duration::from_secs(30)).await?;
                match self.terminate_walsender(&db).await? {
                    Some(pid) => format!("walsender {pid} terminated"),
                    None => "no walsender to terminate".to_owned(),
                }
            }
            Fault::WalsenderKillLargeTx => {
                let db = self.svc.db(Duration::from_secs(30)).await?;
                let large = workload::large_update(&self.work, &db).await;
                if large.acknowledged {
                    self.large_took = large.took;
                }
                let first_seen = self.wait_first_delivery(&large).await;
                let after = Span::millis(0, 150).pick(&mut self.rng);
                sleep(after).await;
                let pid = self.terminate_walsender(&db).await?;
                let at = Instant::now();
                let delivered = self.delivered_before(&large, at);
                self.cut_at = Some(delivered as u64);
                format!(
                    "{} with {} of {} changes of the large UPDATE in Redis{}",
                    match pid {
                        Some(pid) => format!("walsender {pid} terminated"),
                        None => "no walsender to terminate".to_owned(),
                    },
                    delivered,
                    large.changes.len(),
                    if first_seen {
                        ""
                    } else {
                        " (none delivered yet)"
                    }
                )
            }
            Fault::RedisOutage => {
                let redis = Arc::clone(&self.svc.redis);
                blocking(move || redis.stop()).await?;
                sleep(cycle.outage).await;
                let redis = Arc::clone(&self.svc.redis);
                blocking(move || redis.restart()).await?;
                format!("outage {}", secs(cycle.outage))
            }
            Fault::PublicationBlink => {
                let out = format!("ALTER PUBLICATION {SLOT} DROP TABLE seq");
                let back = format!("ALTER PUBLICATION {SLOT} ADD TABLE seq");
                self.write_in_window(&out, "seq", &back).await?
            }
            Fault::TableRename => {
                self.write_in_window(
                    "ALTER TABLE seq RENAME TO seq_tmp",
                    "seq_tmp",
                    "ALTER TABLE seq_tmp RENAME TO seq",
                )
                .await?
            }
            Fault::SlotReplace => {
                let db = self.svc.db(Duration::from_secs(30)).await?;
                let note = self.replace_slot(&db).await?;
                lock(&self.ledger).hidden_until(Instant::now());
                note
            }
            Fault::ColumnRenameMidTx => {
                let db = self.svc.db(Duration::from_secs(30)).await?;
                let _paused = self.gate.lock().await;
                let ids = workload::fresh_ids(&self.work, 2);
                let sql = format!(
                    "BEGIN; INSERT INTO seq (id, n) VALUES ({a}, 0); \
                     ALTER TABLE seq RENAME COLUMN n TO n_tmp; \
                     INSERT INTO seq (id, n_tmp) VALUES ({b}, 0); \
                     ALTER TABLE seq RENAME COLUMN n_tmp TO n; COMMIT;",
                    a = ids[0],
                    b = ids[1]
                );
                let answered = workload::scripted(&self.work, &db, &ids, &sql).await?;
                lock(&self.ledger).hidden_until(Instant::now());
                format!(
                    "rows {} and {} written around the rename{}",
                    ids[0],
                    ids[1],
                    if answered { "" } else { " (answer lost)" }
                )
            }
            Fault::PostgresFailover => self.fail_over().await?,
            Fault::StandbyTakeover => self.take_over().await?,
            Fault::KafkaOutage => {
                let kafka = Arc::clone(&self.svc.kafka);
                blocking(move || kafka.broker_down()).await?;
                sleep(cycle.outage).await;
                let kafka = Arc::clone(&self.svc.kafka);
                blocking(move || kafka.broker_up()).await?;
                self.kafka_watch.reconnect();
                format!("outage {}", secs(cycle.outage))
            }
        })
    }

    /// With the writer paused: `open` (DDL that hides table `seq` from the
    /// stream), a few single-row inserts into `table` (its name meanwhile),
    /// a pause of up to a second, and `close` (DDL that shows it again).
    async fn write_in_window(&mut self, open: &str, table: &str, close: &str) -> Result<String> {
        let db = self.svc.db(Duration::from_secs(30)).await?;
        let _paused = Arc::clone(&self.gate).lock_owned().await;
        db.batch_execute(open)
            .await
            .with_context(|| format!("cannot run {open}"))?;
        let rows = 1 + self.rng.index(3);
        for _ in 0..rows {
            let ids = workload::fresh_ids(&self.work, 1);
            let sql = format!("INSERT INTO {table} (id, n) VALUES ({}, 0)", ids[0]);
            workload::scripted(&self.work, &db, &ids, &sql).await?;
        }
        let open_for = Span::millis(0, 1_000).pick(&mut self.rng);
        sleep(open_for).await;
        // Marked before `close` is sent: walbust's purge follows the close
        // and may be consumed before this call returns, and every hidden
        // insert committed before.
        lock(&self.ledger).hidden_until(Instant::now());
        db.batch_execute(close)
            .await
            .with_context(|| format!("cannot run {close}"))?;
        Ok(format!(
            "{rows} rows written in a window of {}",
            secs(open_for)
        ))
    }

    /// Terminates walbust's walsender and, before walbust reconnects,
    /// drops the slot and creates it again under the same name, while the
    /// writer goes on: the new slot starts past whatever walbust had not
    /// acknowledged.
    async fn replace_slot(&mut self, db: &Client) -> Result<String> {
        let terminate = format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = '{SLOT}' AND active_pid IS NOT NULL"
        );
        let replace = format!(
            "SELECT pg_drop_replication_slot('{SLOT}'); {}",
            services::create_slot_sql()
        );
        let deadline = Instant::now() + START_TIMEOUT;
        let mut attempts = 0;
        loop {
            attempts += 1;
            db.batch_execute(&terminate)
                .await
                .context("cannot terminate the walsender")?;
            // Fails while the walsender is still exiting, or once walbust
            // got back in first: try again.
            match db.batch_execute(&replace).await {
                Ok(()) => return Ok(format!("slot replaced (attempt {attempts})")),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("cannot replace the slot");
                }
                Err(_) => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn crash_postgres(&self) -> Result<()> {
        let pg = self.svc.pg.primary();
        blocking(move || pg.stop()).await
    }

    async fn start_postgres(&self) -> Result<()> {
        let pg = self.svc.pg.primary();
        blocking(move || pg.restart()).await
    }

    /// Waits until the standby keeps a synchronized copy of the slot
    /// (false if it does not within [`SYNC_WAIT`]), then fails over while
    /// the writer goes on, and waits for walbust to stream from the new
    /// primary.
    async fn fail_over(&mut self) -> Result<String> {
        let synced = self.wait_slot_synced().await?;
        let detect = FAILOVER_DETECT.pick(&mut self.rng);
        let new_primary = self.svc.pg.standby();
        let pair = Arc::clone(&self.svc.pg);
        let stopped = Instant::now();
        let failover = tokio::task::spawn_blocking(move || pair.fail_over(detect));
        // The new primary was a standby until now: connect to it directly
        // and watch for walbust's walsender there.
        let db = loop {
            match new_primary.connect().await {
                Ok(db) => break db,
                Err(e) if stopped.elapsed() > START_TIMEOUT => {
                    return Err(e).context("cannot connect to the new primary")
                }
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        };
        let resumed = self
            .wait_walsender(&db, None)
            .await?
            .map(|_| stopped.elapsed());
        let (promoted, rebuilt) = failover.await.context("the failover panicked")??;
        if !synced {
            // The promoted server has no slot: walbust purges (on_gap).
            lock(&self.ledger).hidden_until(Instant::now());
        }
        self.resumed = resumed;
        Ok(format!(
            "{}; promoted {} after the stop (in {}); walbust streaming {}; the former primary \
             rebuilt as standby in {}",
            if synced {
                "slot synced to the standby"
            } else {
                "slot NOT synced to the standby (a gap)"
            },
            secs(detect),
            secs(promoted),
            resumed.map_or_else(
                || "never".to_owned(),
                |d| format!("{} after the stop", secs(d))
            ),
            secs(rebuilt),
        ))
    }

    /// Whether the standby keeps a synchronized copy of the slot, waiting
    /// up to [`SYNC_WAIT`]. The standby keeps a synced slot once the
    /// primary's has moved past what it replayed; a running-transactions
    /// record now and then helps (the writer goes on meanwhile).
    async fn wait_slot_synced(&mut self) -> Result<bool> {
        let deadline = Instant::now() + SYNC_WAIT;
        let standby = self.svc.pg.standby();
        let standby = standby
            .connect()
            .await
            .context("cannot connect to the standby")?;
        let primary = self.svc.db(Duration::from_secs(30)).await?;
        loop {
            if services::slot_synced(&standby).await? {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            let _ = primary
                .batch_execute("SELECT pg_log_standby_snapshot()")
                .await;
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// A second walbust waits as a standby while the first streams; the
    /// first is killed and the standby must take the slot over.
    async fn take_over(&mut self) -> Result<String> {
        let db = self.svc.db(Duration::from_secs(30)).await?;
        let Some((active, _)) = self.wait_walsender(&db, None).await? else {
            return Ok("walbust was not streaming: no takeover".to_owned());
        };
        let began = Instant::now();
        self.walbust.start_standby()?;
        let standby_log = self.walbust.last_log();
        let deadline = began + START_TIMEOUT;
        let waiting = loop {
            if let Some(status) = self.walbust.standby_exited()? {
                let tail = log_tail(&standby_log);
                self.finding(
                    Some(standby_log.clone()),
                    format!("the standby walbust exited on its own ({status})"),
                    Some(tail),
                );
                return Ok("the standby exited".to_owned());
            }
            if std::fs::read_to_string(&standby_log).is_ok_and(|t| t.contains(STANDBY_LINE)) {
                break began.elapsed();
            }
            if Instant::now() > deadline {
                let tail = log_tail(&standby_log);
                self.finding(
                    Some(standby_log.clone()),
                    format!("the second walbust did not report waiting as a standby in {START_TIMEOUT:?}"),
                    Some(tail),
                );
                break began.elapsed();
            }
            sleep(Duration::from_millis(20)).await;
        };
        // Postgres lets one session stream a slot: still the first one's.
        let holder = services::walsender_pid(&db).await?;
        if holder != Some(active) {
            self.finding(
                Some(standby_log.clone()),
                format!(
                    "the slot changed hands while both walbusts ran (walsender {active} -> {holder:?})"
                ),
                Some(log_tail(&standby_log)),
            );
        }
        let killed = Instant::now();
        self.walbust.kill_for_takeover()?;
        let resumed = self.wait_walsender(&db, Some(active)).await?;
        self.resumed = resumed.map(|_| killed.elapsed());
        Ok(format!(
            "standby waiting {} after its start; streaming {} after the kill",
            secs(waiting),
            self.resumed.map_or_else(|| "never".to_owned(), secs)
        ))
    }

    /// Waits for walbust's walsender on `db`, one other than `not` (a
    /// finding if none comes within [`START_TIMEOUT`]). Returns its pid and
    /// how long that took.
    async fn wait_walsender(
        &mut self,
        db: &Client,
        not: Option<i32>,
    ) -> Result<Option<(i32, Duration)>> {
        let began = Instant::now();
        loop {
            self.check_alive()?;
            match services::walsender_pid(db).await? {
                Some(pid) if Some(pid) != not => return Ok(Some((pid, began.elapsed()))),
                _ => {}
            }
            if began.elapsed() > START_TIMEOUT {
                let log = self.walbust.last_log();
                let tail = log_tail(&log);
                self.finding(
                    Some(log),
                    format!("walbust was not streaming (no active slot) for {START_TIMEOUT:?}"),
                    Some(tail),
                );
                return Ok(None);
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Terminates walbust's walsender, waiting for one to exist. None (and a
    /// finding) if walbust is not streaming.
    async fn terminate_walsender(&mut self, db: &Client) -> Result<Option<i32>> {
        let Some((pid, _)) = self.wait_walsender(db, None).await? else {
            return Ok(None);
        };
        db.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .context("pg_terminate_backend")?;
        Ok(Some(pid))
    }

    /// Waits until some change of the large transaction shows in Redis;
    /// false if none did in time.
    async fn wait_first_delivery(&self, large: &LargeTx) -> bool {
        let deadline = Instant::now() + LARGE_DELIVERY_WAIT;
        while Instant::now() < deadline {
            let seen = {
                let l = lock(&self.ledger);
                large
                    .changes
                    .iter()
                    .any(|&ix| l.change(ix).is_some_and(|c| c.redis_ms.is_some()))
            };
            if seen {
                return true;
            }
            sleep(Duration::from_millis(5)).await;
        }
        false
    }

    fn delivered_before(&self, large: &LargeTx, at: Instant) -> usize {
        let l = lock(&self.ledger);
        let limit = l.ms(at);
        large
            .changes
            .iter()
            .filter(|&&ix| {
                l.change(ix)
                    .and_then(|c| c.redis_ms)
                    .is_some_and(|ms| ms <= limit)
            })
            .count()
    }

    /// Settles uncertain commits, then waits until both sinks showed every
    /// committed change.
    async fn settle(&mut self) -> Result<Settled> {
        let begin = Instant::now();
        let deadline = begin + self.opts.timing.settle;
        let db = self.svc.db(self.opts.timing.settle).await?;
        let resolved = workload::resolve(&self.work, &db).await?;
        loop {
            self.check_alive()?;
            let awaited = lock(&self.ledger).awaited();
            if awaited.nothing() {
                return Ok(Settled {
                    took: begin.elapsed(),
                    resolved,
                    overdue: false,
                });
            }
            if Instant::now() > deadline {
                let (redis, kafka) = lock(&self.ledger).awaited_sample(10);
                let log = self.walbust.last_log();
                let tail = log_tail(&log);
                self.finding(
                    Some(log),
                    format!(
                        "committed changes not invalidated {} after the fault: {} missing in Redis \
                         (first: {}), {} missing in Kafka (first: {})",
                        secs(self.opts.timing.settle),
                        awaited.redis,
                        redis.join(" "),
                        awaited.kafka,
                        kafka.join(" ")
                    ),
                    Some(tail),
                );
                return Ok(Settled {
                    took: begin.elapsed(),
                    resolved,
                    overdue: true,
                });
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn record(
        &self,
        i: usize,
        cycle: Cycle,
        first: usize,
        began: Instant,
        settled: &Settled,
        note: String,
    ) -> CycleRecord {
        let l = lock(&self.ledger);
        let changes = l.changes().get(first..).unwrap_or_default();
        let mut record = CycleRecord {
            number: i + 1,
            fault: cycle.fault,
            outage_ms: u64::try_from(cycle.outage.as_millis()).unwrap_or(u64::MAX),
            changes: changes.len() as u64,
            resolved_committed: settled.resolved.committed,
            resolved_not_committed: settled.resolved.not_committed,
            max_lag_redis_ms: 0,
            max_lag_kafka_ms: 0,
            settle_ms: u64::try_from(settled.took.as_millis()).unwrap_or(u64::MAX),
            took_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            ok: !settled.overdue,
            large_delivered_at_cut: self.cut_at,
            resumed_ms: self
                .resumed
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            large_outcome: self.crashed_large.as_ref().map(|large| {
                let committed = large
                    .changes
                    .first()
                    .and_then(|&ix| l.change(ix))
                    .map(|c| c.status)
                    == Some(Status::Committed);
                match (large.acknowledged, committed) {
                    (true, _) => LARGE_ACKNOWLEDGED,
                    (false, true) => LARGE_ACK_LOST,
                    (false, false) => LARGE_ABORTED,
                }
            }),
            note,
        };
        for c in changes {
            if let Some(committed) = c.committed_ms {
                if let Some(seen) = c.redis_ms {
                    record.max_lag_redis_ms =
                        record.max_lag_redis_ms.max(seen.saturating_sub(committed));
                }
                if let Some(seen) = c.kafka_ms {
                    record.max_lag_kafka_ms =
                        record.max_lag_kafka_ms.max(seen.saturating_sub(committed));
                }
            }
        }
        record
    }

    /// Stops walbust with SIGTERM, which must end in exit 0.
    fn final_stop(&mut self) -> Result<()> {
        self.check_alive()?;
        match tokio::task::block_in_place(|| self.walbust.terminate(TERM_TIMEOUT))? {
            Terminated::Exited(status, _) if status.success() => {}
            Terminated::Exited(status, _) => {
                let log = self.walbust.last_log();
                let tail = log_tail(&log);
                self.finding(
                    Some(log),
                    format!("walbust exited with {status} on the final SIGTERM (expected 0)"),
                    Some(tail),
                );
            }
            Terminated::Hung(after) => {
                let log = self.walbust.last_log();
                let tail = log_tail(&log);
                self.finding(
                    Some(log),
                    format!(
                        "walbust did not exit within {} of the final SIGTERM",
                        secs(after)
                    ),
                    Some(tail),
                );
            }
        }
        Ok(())
    }

    /// Reads every change's Redis counter, and looks for counters of tags
    /// that belong to no change.
    async fn final_count(&mut self) -> Result<()> {
        let mut conn = observe::redis_connect(&self.svc.redis.url()).await?;
        let all: Vec<(ChangeIx, ChangeId)> = {
            let l = lock(&self.ledger);
            l.changes()
                .iter()
                .enumerate()
                .map(|(ix, c)| (ix as ChangeIx, c.id))
                .collect()
        };
        for chunk in all.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|(_, id)| id.redis_key()).collect();
            let counts = observe::mget(&mut conn, &keys).await?;
            let mut l = lock(&self.ledger);
            for ((ix, _), count) in chunk.iter().zip(counts) {
                l.set_redis_count(*ix, count.unwrap_or(0));
            }
        }
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", crate::ledger::REDIS_TAG_PREFIX))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await
                .context("SCAN")?;
            let mut l = lock(&self.ledger);
            for key in keys {
                let tag = key
                    .strip_prefix(crate::ledger::REDIS_TAG_PREFIX)
                    .unwrap_or(&key);
                if !ChangeId::parse_tag(tag).is_some_and(|id| l.knows(id)) {
                    l.unexpected(tag);
                }
            }
            drop(l);
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Runs a blocking testkit call (pg_ctl, redis-server, the mock cluster's
/// thread) off the async workers.
async fn blocking<E>(f: impl FnOnce() -> Result<(), E> + Send + 'static) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking call panicked")?
        .map_err(anyhow::Error::from)
}

/// `1.2 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
