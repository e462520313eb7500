//! The pipeline task: batch, coalesce, publish to every sink, retry, acknowledge in LSN order.
//!
//! ```text
//! mpsc<Item> ──> Accumulator ──seal──> Batch ──> every sink in parallel (each retried alone)
//!   (bounded)       (one batch          │              │
//!                    being built)        └── pending (dispatch order) ──> watch<u64> confirmed end LSN
//! ```
//!
//! One task owns all the state, so there are no locks. Its loop:
//!
//! 1. take every item already waiting in the channel, until the batch being built is full;
//! 2. dispatch that batch if an in-flight slot is free and it is due: it is full, or the input is
//!    idle and `max_delay` has passed since its first transaction (at once when `max_delay` is 0,
//!    or when the batch only completes transactions and invalidates nothing), or the input is
//!    closed;
//! 3. otherwise wait for a confirmation, a new item (only while the batch is not full) or the
//!    `max_delay` deadline.
//!
//! So a lone transaction at low load is published at once; under load, items pile into the next
//! batch while the previous one is in flight; and when the batch is full and every in-flight slot
//! is taken, the task stops reading, the bounded channel fills and the reader slows down
//! (backpressure, bounded memory).
//!
//! With a [`Gate`] (`source.replicas`), a dispatched batch that invalidates something first waits
//! for it ([`Gate::wait`] with [`Batch::visible_from`]), then goes to every sink: Kafka records
//! are held like Redis commands. The wait happens inside the batch's delivery, in its in-flight
//! slot, so the loop keeps reading and the next batch grows meanwhile; ordering and
//! acknowledgement are unchanged.
//!
//! Sinks confirm in any order, but acknowledgement follows dispatch order: the watch only ever
//! carries the end LSN of a transaction whose every part, and everything before it, is confirmed
//! by every sink.
//!
//! A sink can confirm in two stages ([`Sink::publish_staged`]): the Redis sink applies keys and
//! tags at once and leaves its pattern walk running. The batch then leaves its in-flight slot
//! (the next batch goes out, its keys do not wait for the walk) and *settles* beside the loop:
//! it is confirmed, and acknowledged in its turn, only when the walk finished. A settling batch
//! whose walk failed is published again, whole, with the same backoff, until it settles; nothing
//! after it is acknowledged meanwhile. At most [`MAX_SETTLING`] batches settle at once; beyond,
//! nothing new is dispatched (bounded memory, backpressure as for in-flight batches).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::Retryable;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge, histogram};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use walbust_flow::{health, Backoff, Chain, Feed, Gate, Item};

use crate::batch::{Accumulator, Batch, SequenceError};
use crate::config::{ConfigError, Errors};
use crate::metrics as m;
use crate::sink::{Settling, Sink, SinkError};
use walbust_pgoutput::format_lsn;
use walbust_pgoutput::time::to_system_time;

/// Default for [`PipelineConfig::max_keys`].
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// Default for [`PipelineConfig::max_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// Default for [`PipelineConfig::max_delay`]: no wait, lowest latency.
pub const DEFAULT_MAX_DELAY: Duration = Duration::ZERO;
/// Default for [`PipelineConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
/// Default for [`PipelineConfig::channel_capacity`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// Default for [`PipelineConfig::retry_min`].
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
/// Default for [`PipelineConfig::retry_max`]: short, because every second a sink is back but
/// not yet retried is a second of stale caches, and a retry costs the sink one request.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);

/// The pipeline's name in the health registry's loops.
const BEAT: &str = "pipeline";
/// How often the waiting pipeline tells the health registry it is not stuck.
const BEAT_EVERY: Duration = Duration::from_secs(5);

/// Batches applied by every sink and still settling (pattern walks running) at most; beyond, the
/// pipeline dispatches nothing new until one settles, and keys wait. Enough for about two
/// minutes of single-transaction batches at 500 tx/s behind walks, so that keys never wait for
/// the walks of millions of keys (4096 was not: at 4M keys, walks of 4 to 6 s held keys for
/// seconds once it was reached); a settling batch of a few entries weighs a few hundred bytes,
/// so the bound keeps memory within tens of MiB.
pub const MAX_SETTLING: usize = 65_536;

/// Items taken from the channel in one go before the loop considers dispatching.
const ITEMS_PER_ROUND: usize = 1024;

/// Configuration path prefix used in [`PipelineConfig::validate`] errors.
pub const CONFIG_PATH: &str = "publish";

/// How the pipeline batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// A batch is full at this many distinct entries (keys + tags + patterns). A single `Changes`
    /// item is never cut, so a batch can exceed this by one item's worth.
    pub max_keys: usize,
    /// A batch is full at this many bytes of distinct entries.
    pub max_bytes: usize,
    /// How long a batch may wait for more transactions while the input is idle. Zero: publish as
    /// soon as the input is idle.
    pub max_delay: Duration,
    /// Batches published and not yet applied by every sink at the same time (at least 1). A
    /// batch whose sinks left work running (pattern walks, [`Sink::publish_staged`]) leaves its
    /// slot once applied and settles beside, up to [`MAX_SETTLING`] of them; it is still
    /// acknowledged only in its turn, after it settled.
    pub max_in_flight: usize,
    /// Capacity of the item channel from the reader.
    pub channel_capacity: usize,
    /// First retry delay after a failed publish.
    pub retry_min: Duration,
    /// Longest retry delay (delays double from `retry_min`, with jitter, up to this).
    pub retry_max: Duration,
    /// The replication slot this pipeline publishes for, carried as the `slot` field of its log
    /// lines (with the batch's `lsn` and the `sink`), so that logs of several walbusts can be told
    /// apart. Empty: no slot.
    pub slot: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_delay: DEFAULT_MAX_DELAY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            slot: String::new(),
        }
    }
}

impl PipelineConfig {
    /// Checks the values without I/O; errors name fields under `publish.`.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Errors::new(CONFIG_PATH);
        errors.check(self.max_keys > 0, "max_keys", "must be at least 1");
        errors.check(self.max_bytes > 0, "max_bytes", "must be at least 1");
        errors.check(
            self.max_in_flight > 0,
            "max_in_flight",
            "must be at least 1",
        );
        errors.check(
            self.channel_capacity > 0,
            "channel_capacity",
            "must be at least 1",
        );
        errors.check(
            !self.retry_min.is_zero(),
            "retry_min",
            "must be longer than zero",
        );
        errors.check(
            self.retry_min <= self.retry_max,
            "retry_max",
            "must not be shorter than retry_min",
        );
        errors.finish()
    }
}

/// Why the pipeline task stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A sink failed in a way retrying cannot fix. Nothing from the failed batch on was
    /// acknowledged; the slot will replay it after the fix.
    #[error("{sink} sink failed and retrying cannot help; nothing after the last confirmed LSN was acknowledged")]
    Sink {
        /// The sink's name.
        sink: &'static str,
        /// What went wrong.
        #[source]
        source: SinkError,
    },
    /// The reader sent items out of order (a bug in the reader).
    #[error("invalid item sequence from the reader")]
    Sequence(#[source] SequenceError),
    /// The configuration is invalid (see [`PipelineConfig::validate`]).
    #[error("invalid pipeline configuration: {}", ConfigError::join(.0))]
    Config(Vec<ConfigError>),
}

/// How one sink handled a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReport {
    /// The sink's [`Sink::name`].
    pub sink: &'static str,
    /// From the first attempt to the confirmation, retries included.
    pub elapsed: Duration,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
}

/// What happened to a confirmed batch, for [`BatchObserver`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// When the last sink confirmed the batch.
    pub published_at: SystemTime,
    /// One report per sink, in the order the sinks were given.
    pub sinks: Vec<SinkReport>,
}

/// Called on the pipeline task after every sink confirmed a batch that invalidates something
/// (batches that only complete empty transactions are not reported). Batches are reported in
/// the order they are confirmed, which with `max_in_flight > 1` may differ from LSN order. Keep
/// it quick: the pipeline waits for it.
pub type BatchObserver = Arc<dyn Fn(&Batch, &BatchReport) + Send + Sync>;

/// The publishing pipeline; see the module docs.
#[derive(Debug)]
pub struct Pipeline;

/// A running pipeline, as [`Pipeline::spawn`] returns it.
#[derive(Debug)]
pub struct PipelineHandle {
    /// The reader's end: items in, confirmed end LSN out, close.
    pub feed: Feed,
    /// The pipeline task; it ends after the feed was closed and everything it held was
    /// confirmed, or with the error that stopped it.
    pub task: JoinHandle<Result<(), PipelineError>>,
}

impl Pipeline {
    /// Starts the pipeline task on the current Tokio runtime.
    ///
    /// - Send [`Item`]s through the returned [`Feed`]; its channel is bounded
    ///   (`channel_capacity`) and fills when the sinks fall behind.
    /// - The feed's confirmed watch carries the end LSN of the last transaction confirmed by every
    ///   sink, together with everything before it: the flush LSN to report to Postgres. It starts
    ///   at 0 (nothing confirmed yet) and never goes backwards.
    /// - Shutdown: [`Feed::close`]. The task publishes everything it holds, waits for the
    ///   confirmations, sends the final LSN on the watch and returns `Ok`. A sink that keeps
    ///   failing with retriable errors is retried until it recovers; abort the task to give up.
    /// - The task returns `Err` on an error retrying cannot fix, on an invalid item sequence, or
    ///   at once on an invalid configuration.
    pub fn spawn(cfg: PipelineConfig, sinks: Vec<Arc<dyn Sink>>) -> PipelineHandle {
        Self::spawn_with_observer(cfg, sinks, None)
    }

    /// [`Pipeline::spawn`] with an observer called for every confirmed batch (for the demo's live
    /// view and latency measurements).
    pub fn spawn_with_observer(
        cfg: PipelineConfig,
        sinks: Vec<Arc<dyn Sink>>,
        observer: Option<BatchObserver>,
    ) -> PipelineHandle {
        Self::spawn_gated(cfg, sinks, observer, None)
    }

    /// [`Pipeline::spawn_with_observer`] with a [`Gate`] every batch that invalidates something
    /// waits for before it goes to the sinks (see the module docs).
    pub fn spawn_gated(
        cfg: PipelineConfig,
        sinks: Vec<Arc<dyn Sink>>,
        observer: Option<BatchObserver>,
        gate: Option<Arc<dyn Gate>>,
    ) -> PipelineHandle {
        let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let (watch_tx, watch_rx) = watch::channel(0);
        let task = tokio::spawn(async move {
            cfg.validate().map_err(PipelineError::Config)?;
            Runner::new(cfg, sinks, observer, gate, rx, watch_tx)
                .run()
                .await
        });
        PipelineHandle {
            feed: Feed::new(tx, watch_rx),
            task,
        }
    }
}

/// A dispatched batch waiting for its turn to be acknowledged.
struct Pending {
    seq: u64,
    end_lsn: Option<u64>,
    confirmed: bool,
}

/// A batch's first stage: every sink applied it, some may have left work running.
struct Applied {
    seq: u64,
    batch: Arc<Batch>,
    result: Result<Vec<(SinkReport, Option<Settling>)>, PipelineError>,
}

/// A batch's outcome, returned by its delivery future.
struct Delivered {
    seq: u64,
    batch: Arc<Batch>,
    result: Result<Vec<SinkReport>, PipelineError>,
}

enum Event {
    Applied(Applied),
    Delivered(Delivered),
    Item(Option<Item>),
    Deadline,
    Beat,
}

struct Runner {
    cfg: PipelineConfig,
    sinks: Arc<[Arc<dyn Sink>]>,
    observer: Option<BatchObserver>,
    gate: Option<Arc<dyn Gate>>,
    rx: mpsc::Receiver<Item>,
    watch: watch::Sender<u64>,
    acc: Accumulator,
    running: FuturesUnordered<BoxFuture<'static, Applied>>,
    /// Batches applied whose sinks still work on them (see the module docs).
    settling: FuturesUnordered<BoxFuture<'static, Delivered>>,
    pending: VecDeque<Pending>,
    next_seq: u64,
    confirmed: u64,
    closed: bool,
}

impl Runner {
    fn new(
        cfg: PipelineConfig,
        sinks: Vec<Arc<dyn Sink>>,
        observer: Option<BatchObserver>,
        gate: Option<Arc<dyn Gate>>,
        rx: mpsc::Receiver<Item>,
        watch: watch::Sender<u64>,
    ) -> Self {
        Self {
            cfg,
            sinks: sinks.into(),
            observer,
            gate,
            rx,
            watch,
            acc: Accumulator::default(),
            running: FuturesUnordered::new(),
            settling: FuturesUnordered::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            confirmed: 0,
            closed: false,
        }
    }

    async fn run(self) -> Result<(), PipelineError> {
        for sink in self.sinks.iter() {
            health().register_sink(sink.name());
        }
        let result = self.run_loop().await;
        health().retire(BEAT);
        result
    }

    async fn run_loop(mut self) -> Result<(), PipelineError> {
        let mut beat = tokio::time::interval(BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let names: Vec<_> = self.sinks.iter().map(|s| s.name()).collect();
        info!(slot = %self.cfg.slot, sinks = ?names, max_keys = self.cfg.max_keys, max_in_flight = self.cfg.max_in_flight, "publish pipeline started");
        loop {
            // 1. Take what is already waiting, without blocking (a bounded number, so a reader
            //    that keeps the channel busy cannot starve dispatching).
            let mut taken = 0;
            while !self.closed && !self.full() && taken < ITEMS_PER_ROUND {
                taken += 1;
                match self.rx.try_recv() {
                    Ok(item) => self.push(item)?,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => self.closed = true,
                }
            }

            // 2. Dispatch if allowed and due.
            let slot_free =
                self.running.len() < self.cfg.max_in_flight && self.settling.len() < MAX_SETTLING;
            if slot_free && self.acc.has_work() && self.due(Instant::now()) {
                self.dispatch();
                continue;
            }
            if self.closed
                && !self.acc.has_work()
                && self.running.is_empty()
                && self.settling.is_empty()
            {
                break;
            }

            // 3. Wait for a confirmation, an item, or the batch's deadline.
            let deadline = match self.acc.started() {
                Some(started) if slot_free && !self.cfg.max_delay.is_zero() => {
                    Some(started + self.cfg.max_delay)
                }
                _ => None,
            };
            let reading = !self.closed && !self.full();
            let event = tokio::select! {
                biased;
                Some(done) = self.running.next(), if !self.running.is_empty() => Event::Applied(done),
                Some(done) = self.settling.next(), if !self.settling.is_empty() => Event::Delivered(done),
                item = self.rx.recv(), if reading => Event::Item(item),
                () = sleep_until(deadline), if deadline.is_some() => Event::Deadline,
                _ = beat.tick() => Event::Beat,
            };
            match event {
                Event::Applied(done) => self.applied(done)?,
                Event::Delivered(done) => self.delivered(done)?,
                Event::Item(Some(item)) => self.push(item)?,
                Event::Item(None) => self.closed = true,
                Event::Deadline => {}
                Event::Beat => health().beat(BEAT),
            }
        }
        info!(
            slot = %self.cfg.slot,
            lsn = %format_lsn(self.confirmed),
            "publish pipeline finished: input closed and everything confirmed"
        );
        Ok(())
    }

    fn full(&self) -> bool {
        self.acc.entries() >= self.cfg.max_keys || self.acc.bytes() >= self.cfg.max_bytes
    }

    /// Whether the batch being built should go now (given a free slot and an idle input).
    fn due(&self, now: Instant) -> bool {
        self.closed
            || self.full()
            // Only acknowledgements, which cost the sinks nothing: no reason to wait.
            || self.acc.entries() == 0
            || self.cfg.max_delay.is_zero()
            || self
                .acc
                .started()
                .is_some_and(|started| now >= started + self.cfg.max_delay)
    }

    fn push(&mut self, item: Item) -> Result<(), PipelineError> {
        match self.acc.push(item, Instant::now()) {
            Ok(None) => Ok(()),
            Ok(Some(xid)) => {
                warn!(
                    slot = %self.cfg.slot,
                    xid,
                    "transaction started again before its commit (the reader reconnected); \
                     its earlier part is published again"
                );
                Ok(())
            }
            Err(err) => {
                error!(slot = %self.cfg.slot, error = %err, "invalid item sequence from the reader");
                Err(PipelineError::Sequence(err))
            }
        }
    }

    fn dispatch(&mut self) {
        let batch = Arc::new(self.acc.seal());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq,
            end_lsn: batch.end_lsn,
            confirmed: false,
        });
        let delivery = if batch.is_empty() || self.sinks.is_empty() {
            // Nothing to invalidate: the batch only completes transactions, and is confirmed in
            // its turn without bothering the sinks.
            futures::future::ready(Applied {
                seq,
                batch,
                result: Ok(Vec::new()),
            })
            .boxed()
        } else {
            histogram!(m::PIPELINE_BATCH_ENTRIES).record(batch.len() as f64);
            debug!(
                slot = %self.cfg.slot,
                lsn = %format_lsn(batch.lsn),
                seq,
                keys = batch.keys.len(),
                tags = batch.tags.len(),
                patterns = batch.patterns.len(),
                xids = batch.xids.len(),
                partial = batch.end_lsn.is_none(),
                "publishing batch"
            );
            deliver(
                seq,
                batch,
                self.sinks.clone(),
                self.gate.clone(),
                self.retry_policy(),
                self.cfg.slot.clone().into(),
            )
            .boxed()
        };
        self.running.push(delivery);
        self.report_in_flight();
    }

    fn report_in_flight(&self) {
        gauge!(m::PIPELINE_IN_FLIGHT).set((self.running.len() + self.settling.len()) as f64);
    }

    /// A batch's first stage ended: confirmed at once when no sink left work running, else it
    /// settles beside the loop and frees its in-flight slot.
    fn applied(&mut self, done: Applied) -> Result<(), PipelineError> {
        let staged = done.result?;
        if staged.iter().all(|(_, rest)| rest.is_none()) {
            let reports = staged.into_iter().map(|(report, _)| report).collect();
            return self.delivered(Delivered {
                seq: done.seq,
                batch: done.batch,
                result: Ok(reports),
            });
        }
        let (seq, batch) = (done.seq, done.batch);
        let settles = staged
            .into_iter()
            .zip(self.sinks.iter())
            .map(|((report, rest), sink)| {
                settle(
                    sink.clone(),
                    batch.clone(),
                    report,
                    rest,
                    self.retry_policy(),
                    self.cfg.slot.clone().into(),
                )
            });
        let settles: Vec<_> = settles.collect();
        self.settling.push(
            async move {
                let result = futures::future::try_join_all(settles).await;
                Delivered { seq, batch, result }
            }
            .boxed(),
        );
        self.report_in_flight();
        Ok(())
    }

    fn retry_policy(&self) -> Backoff {
        Backoff {
            min: self.cfg.retry_min,
            max: self.cfg.retry_max,
        }
    }

    fn delivered(&mut self, done: Delivered) -> Result<(), PipelineError> {
        self.report_in_flight();
        let reports = done.result?;
        counter!(m::PIPELINE_BATCHES).increment(1);
        if !done.batch.is_empty() {
            let published_at = SystemTime::now();
            let oldest_commit = to_system_time(done.batch.first_commit_time_micros);
            // A clock behind the database's yields no sample rather than a wrong one.
            if let Ok(latency) = published_at.duration_since(oldest_commit) {
                histogram!(m::COMMIT_TO_CONFIRM_SECONDS).record(latency.as_secs_f64());
            }
            if let Some(observer) = &self.observer {
                observer(
                    &done.batch,
                    &BatchReport {
                        published_at,
                        sinks: reports,
                    },
                );
            }
        }
        if let Some(pending) = self.pending.iter_mut().find(|p| p.seq == done.seq) {
            pending.confirmed = true;
        }
        self.advance();
        Ok(())
    }

    /// Acknowledges confirmed batches at the head of the dispatch order.
    fn advance(&mut self) {
        let before = self.confirmed;
        while self.pending.front().is_some_and(|p| p.confirmed) {
            if let Some(Pending {
                end_lsn: Some(end_lsn),
                ..
            }) = self.pending.pop_front()
            {
                // Never backwards: a replay after a reconnect re-sends older transactions.
                self.confirmed = self.confirmed.max(end_lsn);
            }
        }
        if self.confirmed != before {
            self.watch.send_replace(self.confirmed);
            gauge!(m::PIPELINE_CONFIRMED_LSN).set(self.confirmed as f64);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => futures::future::pending().await,
    }
}

/// Publishes one batch to every sink in parallel, after the gate if there is one; each sink is
/// retried on its own, so a sink that already confirmed is not asked again because another one
/// failed.
async fn deliver(
    seq: u64,
    batch: Arc<Batch>,
    sinks: Arc<[Arc<dyn Sink>]>,
    gate: Option<Arc<dyn Gate>>,
    retry: Backoff,
    slot: Arc<str>,
) -> Applied {
    if let Some(gate) = gate {
        gate.wait(batch.visible_from()).await;
    }
    let result = futures::future::try_join_all(
        sinks
            .iter()
            .map(|sink| publish_with_retry(sink.as_ref(), &batch, retry, &slot, Stage::First)),
    )
    .await;
    Applied { seq, batch, result }
}

/// Waits for what a sink left running on a batch; when that fails and retrying can help,
/// publishes the whole batch to that sink again, with backoff, until it is confirmed.
async fn settle(
    sink: Arc<dyn Sink>,
    batch: Arc<Batch>,
    report: SinkReport,
    rest: Option<Settling>,
    retry: Backoff,
    slot: Arc<str>,
) -> Result<SinkReport, PipelineError> {
    let Some(rest) = rest else {
        return Ok(report);
    };
    let since = Instant::now();
    let err = match rest.await {
        Ok(()) => {
            count_confirmed(sink.name(), &batch);
            return Ok(SinkReport {
                elapsed: report.elapsed + since.elapsed(),
                ..report
            });
        }
        Err(err) => err,
    };
    // The failed rest counts as the first attempt of publishing the whole batch again.
    let (again, _) = publish_with_retry(
        sink.as_ref(),
        &batch,
        retry,
        &slot,
        Stage::After(Mutex::new(Some(err))),
    )
    .await?;
    Ok(SinkReport {
        attempts: report.attempts + again.attempts,
        elapsed: report.elapsed + since.elapsed(),
        ..again
    })
}

/// What [`publish_with_retry`] asks of a sink.
enum Stage {
    /// [`Sink::publish_staged`]: may leave work running.
    First,
    /// [`Sink::publish`]: the whole batch.
    Whole,
    /// [`Sink::publish`] after the work a first stage left running failed with this error: it
    /// is handled as the outcome of the first attempt (counted, retried or fatal).
    After(Mutex<Option<SinkError>>),
}

/// Counts a batch the sink confirmed, once whatever stages it took.
fn count_confirmed(name: &'static str, batch: &Batch) {
    counter!(m::SINK_BATCHES, m::LABEL_SINK => name).increment(1);
    counter!(m::SINK_KEYS, m::LABEL_SINK => name).increment(batch.keys.len() as u64);
    counter!(m::SINK_TAGS, m::LABEL_SINK => name).increment(batch.tags.len() as u64);
    counter!(m::SINK_PATTERNS, m::LABEL_SINK => name).increment(batch.patterns.len() as u64);
}

/// Publishes `batch` to every sink in parallel, each retried on its own with backoff until it
/// confirms (the pipeline's path, for batches that come from elsewhere than the WAL: scheduled
/// invalidations). `Err` on an error retrying cannot fix.
pub async fn publish_everywhere(
    batch: &Batch,
    sinks: &[Arc<dyn Sink>],
    retry: Backoff,
    slot: &str,
) -> Result<(), PipelineError> {
    futures::future::try_join_all(
        sinks
            .iter()
            .map(|sink| publish_with_retry(sink.as_ref(), batch, retry, slot, Stage::Whole)),
    )
    .await
    .map(drop)
}

/// Publishes until the sink confirms, backing off exponentially with jitter between attempts.
/// Retriable errors are retried forever (skipping would lose invalidations); any other error ends
/// the pipeline.
async fn publish_with_retry(
    sink: &dyn Sink,
    batch: &Batch,
    retry: Backoff,
    slot: &str,
    stage: Stage,
) -> Result<(SinkReport, Option<Settling>), PipelineError> {
    let name = sink.name();
    let lsn = format_lsn(batch.lsn);
    let started = Instant::now();
    let attempts = AtomicU32::new(0);
    let attempts_ref = &attempts;
    let stage = &stage;
    let attempt = move || async move {
        attempts_ref.fetch_add(1, Ordering::Relaxed);
        if let Stage::After(failed) = stage {
            if let Some(err) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
                counter!(m::SINK_ERRORS, m::LABEL_SINK => name, m::LABEL_KIND => err.kind().as_str())
                    .increment(1);
                return Err(err);
            }
        }
        let t = Instant::now();
        let watched = health().attempt(name);
        let result = match stage {
            Stage::First => sink.publish_staged(batch).await,
            Stage::Whole | Stage::After(_) => sink.publish(batch).await.map(|()| None),
        };
        watched.ended(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| Chain(e).to_string()),
        );
        histogram!(m::SINK_PUBLISH_SECONDS, m::LABEL_SINK => name)
            .record(t.elapsed().as_secs_f64());
        if let Err(err) = &result {
            counter!(m::SINK_ERRORS, m::LABEL_SINK => name, m::LABEL_KIND => err.kind().as_str())
                .increment(1);
        }
        result
    };
    let result = attempt
        .retry(retry.builder())
        .sleep(tokio::time::sleep)
        .when(SinkError::retriable)
        // Jitter adds up to 100% to a delay; keep every delay within retry_max.
        .adjust(|_, delay| Some(retry.clamp(delay.unwrap_or(retry.max))))
        .notify(|err, delay| {
            counter!(m::SINK_RETRIES, m::LABEL_SINK => name).increment(1);
            warn!(
                slot,
                lsn = %lsn,
                sink = name,
                kind = %err.kind(),
                error = %Chain(err),
                attempt = attempts.load(Ordering::Relaxed),
                retry_in_ms = delay.as_millis() as u64,
                "publish failed; retrying the batch"
            );
        })
        .await;
    let attempts = attempts.load(Ordering::Relaxed);
    match result {
        Ok(rest) => {
            // A batch with work left running counts once that work is done (in `settle`).
            if rest.is_none() {
                count_confirmed(name, batch);
            }
            if attempts > 1 {
                info!(slot, lsn = %lsn, sink = name, attempts, "batch confirmed after retries");
            }
            Ok((
                SinkReport {
                    sink: name,
                    elapsed: started.elapsed(),
                    attempts,
                },
                rest,
            ))
        }
        Err(source) => {
            error!(
                slot,
                lsn = %lsn,
                sink = name,
                kind = %source.kind(),
                error = %Chain(&source),
                attempts,
                "publish failed and retrying cannot help; stopping"
            );
            Err(PipelineError::Sink { sink: name, source })
        }
    }
}

#[cfg(test)]
mod tests;
