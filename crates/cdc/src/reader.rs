//! The replication session: pgoutput stream in, [`Item`]s out,
//! acknowledgements back.
//!
//! ```text
//!  walsender ──events──> Reader ──Item (bounded)──> pipeline (through a Feed)
//!      ^                   │  ^                            │
//!      └── standby status ─┘  └──── confirmed end LSN ─────┘  (watch)
//! ```
//!
//! The reader never holds a transaction: under protocol 1 the server sends a
//! transaction only once it committed, so its changes are evaluated and
//! passed on as they arrive, in chunks, and the pipeline flushes them in
//! bounded batches. The only thing the reader keeps per transaction is its
//! identity and its rule budget. The acknowledged position comes solely
//! from the pipeline's confirmed LSN, which it reports only after every sink
//! confirmed; a keepalive position is acknowledged only when nothing sent is
//! still unconfirmed, so an idle slot advances without ever skipping work.
//!
//! While the pipeline applies backpressure (a sink is down), the reader waits
//! on the bounded channel and stops taking events; the transport keeps
//! answering the server's keepalives meanwhile, so the connection survives
//! `wal_sender_timeout`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{FeedbackObserver, Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use walbust_flow::health::Stream as StreamHealth;
use walbust_flow::{health, Backoff, Chain, Feed, Item, TrySend};
use walbust_rules::RuleSet;

use crate::assemble::Assembler;
use crate::error::StreamError;
use crate::metrics as m;
use crate::source::{self, ConnParams, SourceSpec};

pub use crate::assemble::{ChangeEvent, ChangeTap, EXPLICIT_PREFIX};

/// How long shutdown waits for the final acknowledgement to reach the server.
const FINAL_FEEDBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What to stream and how.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub conn: ConnParams,
    pub slot: String,
    pub publication: String,
    /// How often a raised acknowledgement is reported to the server at most.
    pub status_interval: Duration,
    /// Shown in `pg_stat_replication.application_name`.
    pub application_name: String,
    /// Create `slot` as a temporary slot on the replication session itself
    /// (it disappears with the session): for looking, not for delivering.
    pub temporary_slot: bool,
    /// Ask pgoutput for values in binary format (`source.binary`, Postgres
    /// 14 or later). The rules still see text: [`crate::binary`] renders the
    /// values they read, and a rule reading a type without a rendering is
    /// refused.
    pub binary: bool,
}

/// Awaited each time the reader starts streaming the slot, before it
/// acknowledges anything on the new session (the gap marker is written
/// there). An error ends that session like a lost connection, so the reader
/// retries with backoff and acknowledges nothing meanwhile.
pub type OnStream = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<(), Box<dyn std::error::Error + Send + Sync>>,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Why the reader returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown signal was received; everything confirmed was acknowledged.
    Shutdown { confirmed_lsn: u64 },
}

/// A replication session bound to a rule set.
pub struct Reader {
    spec: StreamSpec,
    rules: watch::Receiver<Arc<RuleSet>>,
    tap: Option<ChangeTap>,
    checks: Option<SourceSpec>,
    /// `source.url`, for catalog look-ups without the slot checks.
    catalog: Option<String>,
    heartbeat: Option<Duration>,
    /// Follows the DDL guard's messages (see [`crate::window`]).
    window_guard: Option<crate::window::WindowGuard>,
    in_effect: Option<watch::Sender<Arc<RuleSet>>>,
    on_stream: Option<OnStream>,
    on_ack: Option<crate::fence::OnAck>,
    explicit: walbust_rules::ExplicitPolicy,
}

impl Reader {
    /// `rules` may change while streaming (hot reload): a new rule set
    /// takes effect at the next transaction boundary, for every table.
    pub fn new(spec: StreamSpec, rules: watch::Receiver<Arc<RuleSet>>) -> Self {
        Reader {
            spec,
            rules,
            tap: None,
            checks: None,
            catalog: None,
            heartbeat: None,
            window_guard: None,
            in_effect: None,
            on_stream: None,
            on_ack: None,
            explicit: walbust_rules::ExplicitPolicy::default(),
        }
    }

    /// Accepts explicit messages as `policy` says (the `explicit:` section).
    pub fn with_explicit_policy(mut self, policy: walbust_rules::ExplicitPolicy) -> Self {
        self.explicit = policy;
        self
    }

    /// Calls `tap` for every evaluated row change.
    pub fn with_tap(mut self, tap: ChangeTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Before each (re)connection, check the slot and the publication the
    /// way start-up does (without creating anything), so that a slot lost
    /// or dropped while walbust was away is noticed instead of silently
    /// streaming from wherever the server can.
    pub fn with_checks(mut self, spec: SourceSpec) -> Self {
        self.checks = Some(SourceSpec {
            create: false,
            ..spec
        });
        self
    }

    /// Binary mode without [`with_checks`](Self::with_checks): look up the
    /// renderings of enums and domains in the catalog at `url` (`source.url`)
    /// the way checked sessions do, before streaming and whenever a table
    /// is described with a type not seen before.
    pub fn with_catalog(mut self, url: String) -> Self {
        self.catalog = Some(url);
        self
    }

    /// Reports on `in_effect` the rules the reader evaluates with: the
    /// first ones, then each new set once it was bound to the streamed
    /// tables. A set offered on the rules watch may be refused (or wait for
    /// a table's new description), so the watch's value is not necessarily
    /// in effect; this is.
    pub fn with_in_effect(mut self, in_effect: watch::Sender<Arc<RuleSet>>) -> Self {
        self.in_effect = Some(in_effect);
        self
    }

    /// Awaits `hook` each time streaming starts, before acknowledging
    /// anything on that session.
    pub fn with_on_stream(mut self, hook: OnStream) -> Self {
        self.on_stream = Some(hook);
        self
    }

    /// Acknowledges nothing past a ceiling `hook` has not written first
    /// (see [`crate::fence`]); a new session starts without one.
    pub fn with_ack_fence(mut self, hook: crate::fence::OnAck) -> Self {
        self.on_ack = Some(hook);
        self
    }

    /// Follows the DDL guard's messages: nothing is acknowledged past a
    /// window in which the publication withheld rule tables until it was
    /// closed and (`purge`) what their rules cover purged with `extra`, or
    /// (`!purge`) the stream stops with [`crate::SourceError::UnseenWindow`].
    pub fn with_window_guard(mut self, purge: bool, extra: walbust_rules::Invalidations) -> Self {
        self.window_guard = Some(
            crate::window::WindowGuard::new(
                self.spec.publication.clone(),
                self.spec.slot.clone(),
                purge,
            )
            .with_extra(extra),
        );
        self
    }

    /// Writes a heartbeat into the WAL this often (needs [`with_checks`](Self::with_checks)).
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// Streams until `shutdown` turns true or a definite error occurs.
    ///
    /// `feed` is the pipeline's input and its confirmed end LSN.
    /// Transient failures (connection reset, server restart, walsender
    /// terminated) reconnect with exponential backoff and jitter and resume
    /// from the slot's confirmed position; the pipeline keeps running across
    /// them. On shutdown the reader stops taking events, closes the feed so
    /// the pipeline publishes what it holds, waits for the pipeline's last
    /// confirmation, reports it to the server and closes the session.
    pub async fn run(
        self,
        feed: Feed,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Stopped, StreamError> {
        let mut rules_rx = self.rules;
        let rules = rules_rx.borrow_and_update().clone();
        let in_effect = match self.in_effect {
            Some(tx) => {
                tx.send_replace(rules.clone());
                tx
            }
            None => watch::channel(rules.clone()).0,
        };
        let mut asm = Assembler::new(rules, self.spec.binary)
            .with_tap(self.tap)
            .with_explicit_policy(self.explicit);
        if let Some(guard) = self.window_guard {
            asm = asm.with_guard(guard);
        }
        let catalog = self.checks.as_ref().map(|c| c.url.clone()).or(self.catalog);
        let mut session = Session {
            spec: self.spec,
            checks: self.checks,
            catalog,
            on_stream: self.on_stream,
            fence: self.on_ack.map(crate::fence::AckFence::new),
            client: None,
            rules_rx,
            asm,
            feed,
            shutdown,
            acked: 0,
            streamed_from: None,
            server_wal_end: 0,
            monitor: None,
            in_effect,
            refused: None,
            described: false,
            metrics: m::EventMetrics::register(),
            unconfirmed: VecDeque::new(),
            open_commit_micros: 0,
            beat: beat_interval(),
        };
        if let Some(checks) = session.checks.clone() {
            session.monitor = Some(crate::monitor::spawn(
                checks,
                session.in_effect.subscribe(),
                self.heartbeat,
            ));
        }
        let stopped = session.run().await;
        health().retire(BEAT);
        stopped
    }
}

/// The reader's name in the health registry's loops.
const BEAT: &str = "reader";

/// How often a waiting reader tells the health registry it is not stuck.
fn beat_interval() -> tokio::time::Interval {
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}

/// Microseconds since the Unix epoch of a commit time as pgoutput sends it.
fn unix_micros(pg_micros: i64) -> i64 {
    walbust_pgoutput::time::to_system_time(pg_micros)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A session that streamed this long resets the backoff.
const RECONNECT_RESET_AFTER: Duration = Duration::from_secs(30);

/// How often a standby (another walbust streams the slot) asks for the slot.
/// Postgres releases a slot as soon as its walsender sees the connection
/// gone, so this is most of the takeover time after the active instance
/// dies; one attempt per second costs the server one short-lived
/// connection.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The reader's state. It outlives replication connections: what was handed
/// to the pipeline and acknowledged carries over a reconnection.
struct Session {
    spec: StreamSpec,
    checks: Option<SourceSpec>,
    /// Where the catalog is read (the checks' URL, or [`Reader::with_catalog`]).
    catalog: Option<String>,
    on_stream: Option<OnStream>,
    /// The acknowledgement ceiling, with [`Reader::with_ack_fence`].
    fence: Option<crate::fence::AckFence>,
    /// The current replication connection, if any.
    client: Option<ReplicationClient>,
    rules_rx: watch::Receiver<Arc<RuleSet>>,
    /// Events in, pipeline items out: the pure part of the reader.
    asm: Assembler,
    /// The pipeline's input and confirmed end LSN.
    feed: Feed,
    shutdown: watch::Receiver<bool>,
    /// Highest LSN reported to the transport as flushed.
    acked: u64,
    /// Where the slot stood when streaming last started on it with no other
    /// consumer in between (see [`slot_moved_behind_our_back`]); `None`
    /// before the first stream and after another consumer held the slot.
    streamed_from: Option<u64>,
    server_wal_end: u64,
    /// Definite problems found by the slot and publication monitor.
    monitor: Option<mpsc::Receiver<crate::SourceError>>,
    /// The rules in effect, for the monitor and the rules file watcher.
    in_effect: watch::Sender<Arc<RuleSet>>,
    /// The last rule set offered and refused because it does not fit a
    /// table's description as streamed so far (a column added since): it
    /// is tried again once a table was described anew.
    refused: Option<Arc<RuleSet>>,
    /// A table was described (Relation message, or a new session) since
    /// `refused` was last tried.
    described: bool,
    metrics: m::EventMetrics,
    /// End LSN and commit time (µs since the Unix epoch) of the
    /// transactions handed to the pipeline and not yet confirmed, in LSN
    /// order: the lag in seconds counts from the first.
    unconfirmed: VecDeque<(u64, i64)>,
    /// Commit time of the transaction being received.
    open_commit_micros: i64,
    /// Ticks while waiting, so that health knows the reader is not stuck.
    beat: tokio::time::Interval,
}

enum Next {
    Event(Option<ReplicationEvent>),
    Confirmed,
    Shutdown,
}

impl Session {
    async fn run(&mut self) -> Result<Stopped, StreamError> {
        let mut backoff = Backoff::RECONNECT.delays();
        // Since when this instance waits as a standby, if it does.
        let mut standby_since: Option<Instant> = None;
        loop {
            let began = Instant::now();
            health().beat(BEAT);
            let outcome = match self.connect().await {
                Ok(()) => {
                    health().set_stream(StreamHealth::Streaming {
                        slot: self.spec.slot.clone(),
                    });
                    if let Some(since) = standby_since.take() {
                        metrics::counter!(m::TAKEOVERS).increment(1);
                        tracing::warn!(
                            slot = %self.spec.slot,
                            standby_for_s = since.elapsed().as_secs(),
                            "took over the slot: this walbust streams it now"
                        );
                    }
                    self.stream().await
                }
                Err(e) => Err(e),
            };
            let error = match outcome {
                Ok(stopped) => return Ok(stopped),
                Err(e) if e.is_transient() && !*self.shutdown.borrow() => e,
                Err(e) => {
                    self.disconnect();
                    return Err(self.explain(e).await);
                }
            };
            self.disconnect();
            if error.slot_in_use() {
                // Another walbust streams the slot: not a failure but the
                // standby's normal state. Neither counted as a reconnection
                // nor logged as a warning each time, so alerts stay quiet,
                // and asked for often so that a takeover is quick.
                health().set_stream(StreamHealth::Standby {
                    slot: self.spec.slot.clone(),
                });
                health().beat(BEAT);
                if standby_since.is_none() {
                    standby_since = Some(Instant::now());
                    tracing::info!(
                        slot = %self.spec.slot,
                        poll_ms = STANDBY_POLL.as_millis() as u64,
                        "another walbust streams the slot; waiting as a standby to take over"
                    );
                }
                backoff = Backoff::RECONNECT.delays();
                tokio::select! {
                    _ = wait_true(&mut self.shutdown) => return self.finish().await,
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                }
                continue;
            }
            health().set_stream(StreamHealth::Reconnecting {
                error: Chain(&error).to_string(),
            });
            health().beat(BEAT);
            if began.elapsed() >= RECONNECT_RESET_AFTER {
                backoff = Backoff::RECONNECT.delays();
            }
            let delay = backoff.next().unwrap_or(Backoff::RECONNECT.max);
            metrics::counter!(m::RECONNECTS).increment(1);
            tracing::warn!(
                slot = %self.spec.slot,
                lsn = %walbust_pgoutput::format_lsn(self.acked),
                error = %Chain(&error),
                retry_in_ms = delay.as_millis() as u64,
                "replication interrupted; reconnecting from the slot's confirmed position"
            );
            tokio::select! {
                _ = wait_true(&mut self.shutdown) => return self.finish().await,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Names a definite error better where the catalog can tell what it
    /// means. The walsender reports a publication missing from the catalog
    /// as of a change with the same SQLSTATE as a missing slot; the slot
    /// still being there says it was the publication.
    async fn explain(&self, error: StreamError) -> StreamError {
        let (StreamError::Replication { source }, Some(checks)) = (&error, &self.checks) else {
            return error;
        };
        if crate::error::replication_sqlstate(source)
            != Some(tokio_postgres::error::SqlState::UNDEFINED_OBJECT)
        {
            return error;
        }
        let exists = async {
            let control = source::connect(&checks.url).await?;
            source::slot_exists(&control, &checks.slot).await
        };
        match exists.await {
            Ok(true) => {}
            Ok(false) => return error,
            Err(e) => {
                tracing::debug!(error = %Chain(&e), "could not look up the slot to explain a replication error");
                return error;
            }
        }
        let StreamError::Replication { source } = error else {
            return error;
        };
        StreamError::Source(crate::SourceError::PublicationDropped {
            publication: checks.publication.clone(),
            slot: checks.slot.clone(),
            source,
        })
    }

    /// Checks the source (when configured) and opens a replication
    /// connection that resumes at the slot's confirmed position.
    async fn connect(&mut self) -> Result<(), StreamError> {
        let (control_host, control) = match &self.catalog {
            Some(url) if self.checks.is_some() || self.spec.binary => {
                let (host, client) = source::connect_indexed(url)
                    .await
                    .map_err(StreamError::Source)?;
                (
                    Some(host).filter(|_| url == self.spec.conn.url()),
                    Some(client),
                )
            }
            _ => (None, None),
        };
        let mut resumes_at = None;
        let mut make_failover = false;
        if let (Some(checks), Some(control)) = (&self.checks, &control) {
            let tables = self.asm.rules().tables();
            let slot = source::prepare(control, checks, &tables)
                .await
                .map_err(StreamError::Source)?;
            if let Some(streamed_from) = self.streamed_from {
                let ours = streamed_from.max(self.acked);
                if slot_moved_behind_our_back(ours, slot.confirmed_flush_lsn) {
                    return Err(StreamError::Source(crate::SourceError::SlotAhead {
                        slot: checks.slot.clone(),
                        confirmed: walbust_pgoutput::format_lsn(slot.confirmed_flush_lsn),
                        acknowledged: walbust_pgoutput::format_lsn(ours),
                    }));
                }
            }
            resumes_at = Some(slot.confirmed_flush_lsn);
            make_failover = slot.make_failover;
            source::check_sends(control, &checks.publication, self.asm.rules())
                .await
                .map_err(StreamError::Source)?;
        }
        if let (true, Some(control)) = (self.spec.binary, &control) {
            let types =
                crate::relations::check_binary(control, &self.spec.publication, self.asm.rules())
                    .await?;
            self.asm.relations_mut().set_type_renderings(types);
        }
        // With several hosts, the one that is the primary now: after a
        // promotion, the next session streams from the new primary. The
        // control connection found it already when it came from the same
        // URL: the slot checked is the slot streamed.
        let conn = match control_host {
            Some(host) => self.spec.conn.at_host(host),
            None => self
                .spec
                .conn
                .primary()
                .await
                .map_err(StreamError::Source)?,
        };
        let cfg = conn
            .replication_config(&self.spec.slot, &self.spec.publication)
            .with_status_interval(self.spec.status_interval)
            .with_wakeup_interval(Duration::from_secs(10))
            .with_application_name(self.spec.application_name.clone())
            .with_binary(self.spec.binary)
            // Pins how values print, in both modes: keys do not depend on the
            // server's or the database's TimeZone, DateStyle, IntervalStyle,
            // bytea_output..., and binary rendering can match text output
            // exactly.
            .with_options(crate::binary::session_options())
            // Keeps `feedback_pending_since` tracked, which shutdown uses to
            // know that the last acknowledgement reached the server.
            .with_feedback_observer(FeedbackObserver::new(|sent| {
                metrics::histogram!(m::ACK_FEEDBACK_DELAY).record(sent.pending_for.as_secs_f64());
            }));
        let replication = |source| conn.replication_error(source);
        // A command the session runs before it streams, on the slot.
        let before_start = if self.spec.temporary_slot {
            Some(format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput",
                source::quote_ident(&self.spec.slot)
            ))
        } else if make_failover {
            // Only a replication session can change a slot's failover flag.
            tracing::info!(slot = %self.spec.slot, "making the slot a failover slot (source.failover)");
            Some(format!(
                "ALTER_REPLICATION_SLOT {} ( FAILOVER true )",
                source::quote_ident(&self.spec.slot)
            ))
        } else {
            None
        };
        let mut client = if let Some(sql) = before_start {
            let mut client = ReplicationClient::connect_gated(cfg)
                .await
                .map_err(replication)?;
            client.simple_query(&sql).await.map_err(replication)?;
            client.start().await.map_err(replication)?;
            client
        } else {
            ReplicationClient::connect(cfg).await.map_err(replication)?
        };
        // From here on the slot is this session's: nobody else can move it.
        if let Err(source) = client.wait_started().await {
            // Another consumer holds the slot (a standby walbust took
            // over): its acknowledgements move the slot legitimately, so
            // where it stands next time says nothing about a gap.
            if crate::error::replication_sqlstate(&source)
                == Some(tokio_postgres::error::SqlState::OBJECT_IN_USE)
            {
                self.streamed_from = None;
            }
            return Err(replication(source));
        }
        if let Some(hook) = &self.on_stream {
            if let Err(source) = hook().await {
                client.abort();
                return Err(StreamError::OnStream { source });
            }
        }
        if let Some(fence) = &mut self.fence {
            fence.reset();
        }
        if self.streamed_from.is_none() {
            self.streamed_from = resumes_at;
        }
        // A new session reports nothing until told: carry over what the
        // previous one acknowledged.
        if self.acked > 0 {
            client.update_applied_lsn(Lsn::from_u64(self.acked));
        }
        self.client = Some(client);
        Ok(())
    }

    /// Drops the connection and whatever belonged to it: the server sends
    /// Relation messages and the unfinished transaction again on the next
    /// session (the pipeline drops a transaction whose Commit never came).
    fn disconnect(&mut self) {
        if let Some(mut client) = self.client.take() {
            client.abort();
        }
        self.asm.reset();
        self.described = true;
    }

    async fn stream(&mut self) -> Result<Stopped, StreamError> {
        loop {
            let next = tokio::select! {
                biased;
                _ = wait_true(&mut self.shutdown) => Next::Shutdown,
                r = self.feed.confirmed().changed() => {
                    r.map_err(|_| StreamError::PipelineClosed)?;
                    Next::Confirmed
                }
                ev = recv(&mut self.client) => Next::Event(ev.map_err(|source| StreamError::Replication { source })?),
                Some(problem) = recv_problem(&mut self.monitor) => return Err(StreamError::Source(problem)),
                raised = raised(&mut self.fence) => match raised {
                    Ok(()) => Next::Confirmed,
                    Err(e) => {
                        metrics::counter!(m::ACK_CEILING_FAILURES).increment(1);
                        tracing::warn!(slot = %self.spec.slot, lsn = %walbust_pgoutput::format_lsn(self.acked), error = %Chain(e.as_ref()), "could not record the acknowledgement ceiling in the gap marker; acknowledgements wait until it is written (retrying)");
                        continue;
                    }
                },
                _ = self.beat.tick() => {
                    health().beat(BEAT);
                    continue;
                }
            };
            match next {
                Next::Shutdown => return self.finish().await,
                Next::Confirmed => self.apply_confirmed(),
                Next::Event(None) => return Err(StreamError::Ended),
                Next::Event(Some(ev)) => {
                    if !self.handle(ev).await? {
                        return self.finish().await;
                    }
                }
            }
        }
    }

    /// Handles one event; `false` means shutdown was requested meanwhile.
    async fn handle(&mut self, ev: ReplicationEvent) -> Result<bool, StreamError> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.reload_rules();
                self.open_commit_micros = commit_time_micros;
                self.asm.begin(xid, final_lsn.as_u64(), commit_time_micros);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.metrics.transactions.increment(1);
                self.asm.commit(end_lsn.as_u64());
                self.note_unconfirmed(end_lsn.as_u64());
            }
            ReplicationEvent::XLogData { wal_end, data, .. } => {
                self.note_server_end(wal_end.as_u64());
                self.metrics.wal_bytes.increment(data.len() as u64);
                if data.first() == Some(&walbust_pgoutput::tag::RELATION) {
                    self.described = true;
                }
                match self.asm.data(wal_end.as_u64(), &data) {
                    Err(StreamError::BinaryValue { .. }) if self.learn_types(&data).await? => {
                        self.asm.data(wal_end.as_u64(), &data)?;
                    }
                    other => other?,
                }
            }
            ReplicationEvent::Message {
                lsn,
                prefix,
                content,
                ..
            } => self.asm.message(lsn.as_u64(), &prefix, &content)?,
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let end = wal_end.as_u64();
                self.note_server_end(end);
                // Idle slot: nothing open and everything handed over is
                // confirmed, so every transaction committed before `end` was
                // delivered and the position can move (otherwise WAL piles up
                // on a primary whose published tables are quiet).
                if !self.asm.in_transaction()
                    && self.feed.confirmed_lsn() >= self.asm.last_sent_end()
                {
                    self.ack(end);
                }
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(false),
            // The transport's event enum may grow; an unknown event carries
            // nothing walbust acts on.
            #[allow(unreachable_patterns)]
            _ => {}
        }
        while let Some(item) = self.asm.next_item() {
            if !self.send(item).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Binary mode: a Relation message named a type whose rendering is
    /// unknown, such as an enum created after the session read the
    /// catalog. Reads the renderings of its unknown types again; `true`
    /// when some were found, so that the message is worth another try
    /// (nothing was bound: a refused description leaves the cache as it
    /// was). Only a type that truly has no rendering is refused then.
    async fn learn_types(&mut self, data: &bytes::Bytes) -> Result<bool, StreamError> {
        let Some(url) = &self.catalog else {
            return Ok(false);
        };
        let Ok(walbust_pgoutput::Message::Relation(rel)) = walbust_pgoutput::decode(data) else {
            return Ok(false);
        };
        let unknown = self.asm.relations_mut().unrendered_types(&rel);
        if unknown.is_empty() {
            return Ok(false);
        }
        let control = source::connect(url).await.map_err(StreamError::Source)?;
        let types = crate::relations::resolve_types(&control, &unknown).await?;
        if types.is_empty() {
            return Ok(false);
        }
        tracing::info!(
            table = %format_args!("{}.{}", rel.namespace, rel.name),
            types = types.len(),
            "read the renderings of types the session did not know yet"
        );
        self.asm.relations_mut().add_type_renderings(types);
        Ok(true)
    }

    /// Hands an item to the pipeline, waiting while it applies backpressure.
    /// Acknowledgements keep flowing meanwhile; `false` means shutdown was
    /// requested while waiting (the item is dropped: it was not acknowledged,
    /// so the server sends it again next time).
    async fn send(&mut self, item: Item) -> Result<bool, StreamError> {
        let item = match self.feed.try_send(item) {
            Ok(()) => return Ok(true),
            Err(TrySend::Closed) => return Err(StreamError::PipelineClosed),
            Err(TrySend::Full(item)) => item,
        };
        // Slow path, the pipeline is applying backpressure. A clone of the
        // sender keeps `self` free for acknowledgements while waiting.
        let items = self
            .feed
            .sender()
            .map_err(|_| StreamError::PipelineClosed)?;
        loop {
            tokio::select! {
                biased;
                _ = wait_true(&mut self.shutdown) => return Ok(false),
                r = self.feed.confirmed().changed() => {
                    r.map_err(|_| StreamError::PipelineClosed)?;
                    self.apply_confirmed();
                }
                p = items.reserve() => {
                    p.map_err(|_| StreamError::PipelineClosed)?.send(item);
                    return Ok(true);
                }
                _ = self.beat.tick() => health().beat(BEAT),
            }
        }
    }

    /// Takes a new rule set if one was published, between transactions so
    /// that a transaction is evaluated under one rule set. A rule set that
    /// does not fit the tables seen so far is refused and the rules in
    /// effect kept; it is tried again at the first transaction after a
    /// table was described anew, since the description it did not fit may
    /// have been an old one (a column added after the table was cached).
    fn reload_rules(&mut self) {
        if self.rules_rx.has_changed().unwrap_or(false) {
            let new = self.rules_rx.borrow_and_update().clone();
            // Whatever was waiting is superseded by the file as it is now.
            self.refused = None;
            if Arc::ptr_eq(&new, self.asm.rules()) {
                // The rules in effect offered again (the file went back to
                // them): nothing to bind.
                return;
            }
            self.try_rules(new, false);
        } else if self.described {
            if let Some(waiting) = self.refused.take() {
                self.try_rules(waiting, true);
            }
        }
    }

    /// Binds `new` to every streamed table and puts it in effect, or keeps
    /// the rules in effect; `retry` for a set refused before, which is
    /// counted and reported once, when refused first.
    fn try_rules(&mut self, new: Arc<RuleSet>, retry: bool) {
        self.described = false;
        match self.asm.set_rules(new.clone()) {
            Ok(()) => {
                self.in_effect.send_replace(new);
                metrics::counter!(m::RULE_RELOADS, m::LABEL_RESULT => m::RESULT_APPLIED)
                    .increment(1);
                tracing::info!(
                    rules = self.asm.rules().rules().len(),
                    retried = retry,
                    "new rules in effect"
                );
            }
            Err(e) => {
                if !retry {
                    metrics::counter!(m::RULE_RELOADS, m::LABEL_RESULT => m::RESULT_REFUSED)
                        .increment(1);
                    tracing::error!(error = %Chain(&e), "new rules do not fit the streamed tables; the rules in effect stay, and the new ones are tried again when a table is described anew");
                }
                self.refused = Some(new);
            }
        }
    }

    fn apply_confirmed(&mut self) {
        let lsn = self.feed.take_confirmed();
        let before = self.unconfirmed.len();
        while self.unconfirmed.front().is_some_and(|&(end, _)| end <= lsn) {
            self.unconfirmed.pop_front();
        }
        if self.unconfirmed.len() != before {
            self.publish_oldest_unconfirmed();
        }
        self.ack(lsn);
    }

    /// A transaction ending at `end` was handed to the pipeline. One sent
    /// again after a reconnection is already counted (or confirmed).
    fn note_unconfirmed(&mut self, end: u64) {
        let newer = self.unconfirmed.back().is_none_or(|&(last, _)| end > last);
        if newer && end > self.feed.confirmed_lsn() {
            self.unconfirmed
                .push_back((end, unix_micros(self.open_commit_micros)));
            if self.unconfirmed.len() == 1 {
                self.publish_oldest_unconfirmed();
            }
        }
    }

    fn publish_oldest_unconfirmed(&self) {
        health().set_oldest_unconfirmed(self.unconfirmed.front().map(|&(_, at)| at));
    }

    fn ack(&mut self, lsn: u64) {
        let mut lsn = self.asm.ack_limit(lsn);
        if let Some(fence) = &mut self.fence {
            lsn = fence.admit(lsn, self.server_wal_end);
        }
        if lsn <= self.acked {
            return;
        }
        self.acked = lsn;
        if let Some(client) = &self.client {
            client.update_applied_lsn(Lsn::from_u64(lsn));
        }
        self.metrics.confirmed_lsn.set(lsn as f64);
        self.publish_lag();
    }

    fn note_server_end(&mut self, end: u64) {
        if end > self.server_wal_end {
            self.server_wal_end = end;
            self.metrics.server_wal_end.set(end as f64);
            self.publish_lag();
        }
    }

    fn publish_lag(&self) {
        let lag = self.server_wal_end.saturating_sub(self.acked);
        self.metrics.lag_bytes.set(lag as f64);
    }

    /// Graceful end: close the pipeline's input, acknowledge what it
    /// confirms, make sure the server heard it, and close the session.
    async fn finish(&mut self) -> Result<Stopped, StreamError> {
        health().set_stream(StreamHealth::Stopping);
        // Closing the feed tells the pipeline to publish what it holds.
        self.feed.close();
        // The watch sender lives in the pipeline task: it is dropped when the
        // pipeline finished, after its last confirmation.
        loop {
            self.apply_confirmed();
            if self.feed.confirmed().changed().await.is_err() {
                break;
            }
        }
        self.apply_confirmed();
        // The last acknowledgement may wait for its ceiling.
        while let Some(fence) = self.fence.as_mut().filter(|f| f.raising()) {
            if let Err(e) = fence.raised().await {
                fence.abandon();
                tracing::warn!(slot = %self.spec.slot, lsn = %walbust_pgoutput::format_lsn(self.acked), error = %Chain(e.as_ref()), "could not record the acknowledgement ceiling; the last confirmed changes are sent again at the next start");
                break;
            }
            self.apply_confirmed();
        }
        if let Some(mut client) = self.client.take() {
            let deadline = Instant::now() + FINAL_FEEDBACK_TIMEOUT;
            while client.feedback_pending_since().is_some() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if client.feedback_pending_since().is_some() {
                tracing::warn!(slot = %self.spec.slot, lsn = %walbust_pgoutput::format_lsn(self.acked), "the final acknowledgement may not have reached the server; the next start re-sends from the slot's position");
            }
            if let Err(e) = client.shutdown().await {
                tracing::debug!(error = %Chain(&e), "replication session closed with an error");
            }
        }
        Ok(Stopped::Shutdown {
            confirmed_lsn: self.acked,
        })
    }
}

/// Whether a slot found at `confirmed` on reconnection was moved by someone
/// else. While walbust streams a slot, only its acknowledgements move
/// `confirmed_flush_lsn`, and never beyond `ours` (the slot's position when
/// streaming started, or the highest LSN walbust acknowledged since). A
/// slot past that was advanced by hand or, typically, dropped and created
/// again under the same name while the walsender was gone: a new slot
/// starts at the server's current position, so whatever was committed in
/// between was never decoded.
fn slot_moved_behind_our_back(ours: u64, confirmed: u64) -> bool {
    confirmed > ours
}

/// The monitor's next finding; pends forever without a monitor.
async fn recv_problem(
    monitor: &mut Option<mpsc::Receiver<crate::SourceError>>,
) -> Option<crate::SourceError> {
    match monitor {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next event of the connection; pends forever without one.
async fn recv(
    client: &mut Option<ReplicationClient>,
) -> pgwire_replication::Result<Option<ReplicationEvent>> {
    match client {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the acknowledgement ceiling's raise in flight finished
/// (never without a fence or a raise).
async fn raised(fence: &mut Option<crate::fence::AckFence>) -> Result<(), crate::fence::BoxError> {
    match fence {
        Some(fence) => fence.raised().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the watch holds `true` (immediately if it already does);
/// pends forever if the sender is gone.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_slot_past_what_walbust_acknowledged_was_moved_by_someone_else() {
        // The server may lag behind the acknowledgement (it was not heard
        // yet) or hold it exactly; both are walbust's own doing.
        assert!(!slot_moved_behind_our_back(0x3000, 0x2000));
        assert!(!slot_moved_behind_our_back(0x3000, 0x3000));
        assert!(slot_moved_behind_our_back(0x3000, 0x3001));
    }
}
