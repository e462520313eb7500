//! What `/healthz` and `/readyz` report: the process-wide health of the
//! reader, the pipeline and the sinks.
//!
//! Like the `metrics` facade, one registry per process ([`health`]): the
//! reader, the pipeline and the binary's start-up steps write to it where
//! they already are, and the HTTP endpoint reads a [`Report`] from it.
//! Writes are a short lock or an atomic store, per loop turn, publish
//! attempt or transaction, never per change.
//!
//! - **Live** (`/healthz`): every running loop (the reader, the pipeline)
//!   came back to its wait within the stall timeout. A loop stuck in an
//!   await that never ends fails it; a sink that is down does not
//!   (retrying is progress), nor a quiet database, nor a long publish
//!   attempt (a pattern walk over a large keyspace is work, and every
//!   command a sink sends has a timeout of its own).
//! - **Ready** (`/readyz`): streaming from the slot, and every sink healthy:
//!   its last health probe answered, and it has not been failing to publish
//!   for longer than its retry budget. A standby (another walbust holds the
//!   slot) is live and not ready, with the role `standby`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The process's health registry.
pub fn health() -> &'static Health {
    static HEALTH: OnceLock<Health> = OnceLock::new();
    HEALTH.get_or_init(Health::new)
}

/// Where the replication stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    /// Start-up: waiting for `what`, or preparing the source.
    Starting { waiting_for: Option<String> },
    /// Streaming from `slot`.
    Streaming { slot: String },
    /// Interrupted; reconnecting after `error`.
    Reconnecting { error: String },
    /// Another consumer holds the slot: this instance waits to take over.
    Standby { slot: String },
    /// Shutting down.
    Stopping,
}

impl Stream {
    /// The role `/readyz` reports.
    pub fn role(&self) -> &'static str {
        match self {
            Stream::Starting { .. } => "starting",
            Stream::Streaming { .. } | Stream::Reconnecting { .. } => "active",
            Stream::Standby { .. } => "standby",
            Stream::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct SinkState {
    /// Since when publishing has failed, and the last error.
    failing: Option<(Instant, String)>,
    /// A publish attempt running since.
    attempts_running: usize,
    attempt_since: Option<Instant>,
    /// The last health probe's answer: `None` before the first.
    probe: Option<Result<(), String>>,
}

#[derive(Debug)]
struct State {
    stream: Stream,
    stream_since: SystemTime,
    loops: BTreeMap<&'static str, Instant>,
    sinks: BTreeMap<&'static str, SinkState>,
}

/// The registry; see the module docs.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// Commit time (µs since the Unix epoch) of the oldest transaction
    /// received and not yet confirmed by every sink; 0 when none.
    oldest_unconfirmed_micros: AtomicI64,
}

/// How long things may take before they count against health.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A loop that has not come back to its wait for this long is stuck.
    pub stall: Duration,
    /// A sink failing to publish for this long is not ready.
    pub sink_budget: Duration,
}

/// One problem, as `/healthz` and `/readyz` list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// What it concerns: `stream`, `sink:redis`, `loop:reader`.
    pub component: String,
    pub message: String,
}

/// A sink as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkReport {
    pub name: &'static str,
    pub healthy: bool,
    /// Seconds publishing has been failing, when it is.
    pub failing_for: Option<f64>,
    /// Seconds the publish attempt in progress has been running.
    pub publishing_for: Option<f64>,
    pub error: Option<String>,
}

/// A snapshot for the endpoints.
#[derive(Debug, Clone)]
pub struct Report {
    pub live: bool,
    pub ready: bool,
    pub role: &'static str,
    pub stream: Stream,
    pub sinks: Vec<SinkReport>,
    /// Why not live (empty when live).
    pub liveness: Vec<Reason>,
    /// Why not ready (empty when ready).
    pub readiness: Vec<Reason>,
}

/// A running publish attempt, from [`Health::attempt`].
#[must_use = "tell the attempt how it ended"]
pub struct Attempt<'a> {
    health: &'a Health,
    sink: &'static str,
}

impl Attempt<'_> {
    /// The attempt ended with `result` (the error's text on failure).
    pub fn ended(self, result: Result<(), String>) {
        self.health.attempt_ended(self.sink, Some(result));
        std::mem::forget(self);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.health.attempt_ended(self.sink, None);
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                stream: Stream::Starting { waiting_for: None },
                stream_since: SystemTime::now(),
                loops: BTreeMap::new(),
                sinks: BTreeMap::new(),
            }),
            oldest_unconfirmed_micros: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds
        // consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where the stream stands (a change of state only: the time it
    /// started is kept while the state stays the same).
    pub fn set_stream(&self, stream: Stream) {
        let mut state = self.lock();
        if state.stream != stream {
            state.stream = stream;
            state.stream_since = SystemTime::now();
        }
    }

    /// The loop `name` is at its wait (or made a step): it is not stuck.
    pub fn beat(&self, name: &'static str) {
        self.lock().loops.insert(name, Instant::now());
    }

    /// The loop `name` ended: it is no longer expected to beat.
    pub fn retire(&self, name: &'static str) {
        self.lock().loops.remove(name);
    }

    /// Makes `sink` known, healthy until told otherwise.
    pub fn register_sink(&self, sink: &'static str) {
        self.lock().sinks.entry(sink).or_default();
    }

    /// A publish attempt to `sink` starts; tell the guard how it ended. A
    /// guard dropped untold (the attempt was cancelled) leaves the sink's
    /// standing as it was.
    pub fn attempt(&self, sink: &'static str) -> Attempt<'_> {
        let mut state = self.lock();
        let s = state.sinks.entry(sink).or_default();
        if s.attempts_running == 0 {
            s.attempt_since = Some(Instant::now());
        }
        s.attempts_running += 1;
        Attempt { health: self, sink }
    }

    fn attempt_ended(&self, sink: &'static str, result: Option<Result<(), String>>) {
        let mut state = self.lock();
        let s = state.sinks.entry(sink).or_default();
        s.attempts_running = s.attempts_running.saturating_sub(1);
        if s.attempts_running == 0 {
            s.attempt_since = None;
        }
        match result {
            None => {}
            Some(Ok(())) => s.failing = None,
            Some(Err(e)) => {
                let since = s.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                s.failing = Some((since, e));
            }
        }
    }

    /// The answer of `sink`'s health check (PING, metadata).
    pub fn probed(&self, sink: &'static str, result: Result<(), String>) {
        self.lock().sinks.entry(sink).or_default().probe = Some(result);
    }

    /// Commit time of the oldest transaction received and not yet
    /// confirmed by every sink (µs since the Unix epoch), `None` when
    /// everything received is confirmed.
    pub fn set_oldest_unconfirmed(&self, commit_micros: Option<i64>) {
        self.oldest_unconfirmed_micros
            .store(commit_micros.unwrap_or(0), Ordering::Relaxed);
    }

    /// How stale the caches may be, in seconds: now minus the commit time
    /// of the oldest transaction received and not yet confirmed by every
    /// sink; while not streaming (start-up, reconnecting), the time since
    /// streaming stopped, since whatever committed meanwhile is not seen;
    /// 0 when streaming and everything received is confirmed, and on a
    /// standby (the instance holding the slot reports the lag).
    pub fn lag_seconds(&self, now: SystemTime) -> f64 {
        let oldest = self.oldest_unconfirmed_micros.load(Ordering::Relaxed);
        let state = self.lock();
        let since = match (&state.stream, oldest) {
            (Stream::Standby { .. }, _) => return 0.0,
            (_, micros) if micros != 0 => {
                UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
            }
            (Stream::Streaming { .. }, _) => return 0.0,
            _ => state.stream_since,
        };
        now.duration_since(since).unwrap_or_default().as_secs_f64()
    }

    /// A snapshot of liveness and readiness.
    pub fn report(&self, limits: Limits) -> Report {
        let now = Instant::now();
        let state = self.lock();
        let mut liveness = Vec::new();
        for (name, at) in &state.loops {
            let quiet = now.saturating_duration_since(*at);
            if quiet > limits.stall {
                liveness.push(Reason {
                    component: format!("loop:{name}"),
                    message: format!(
                        "the {name} loop has not come back to its wait for {:.0} s",
                        quiet.as_secs_f64()
                    ),
                });
            }
        }
        let mut readiness = Vec::new();
        match &state.stream {
            Stream::Streaming { .. } => {}
            Stream::Starting { waiting_for } => readiness.push(Reason {
                component: "stream".into(),
                message: match waiting_for {
                    Some(what) => format!("starting: waiting for {what}"),
                    None => "starting: not streaming yet".into(),
                },
            }),
            Stream::Reconnecting { error } => readiness.push(Reason {
                component: "stream".into(),
                message: format!("replication interrupted, reconnecting: {error}"),
            }),
            Stream::Standby { slot } => readiness.push(Reason {
                component: "stream".into(),
                message: format!(
                    "standby: another consumer holds slot {slot}; this instance takes over when it is released"
                ),
            }),
            Stream::Stopping => readiness.push(Reason {
                component: "stream".into(),
                message: "shutting down".into(),
            }),
        }
        let mut sinks = Vec::new();
        for (&name, s) in &state.sinks {
            let failing_for = s
                .failing
                .as_ref()
                .map(|(since, _)| now.saturating_duration_since(*since));
            let mut error = None;
            if let Some(Err(e)) = &s.probe {
                error = Some(format!("health check failed: {e}"));
            } else if let (Some(failing), Some((_, e))) = (failing_for, &s.failing) {
                if failing > limits.sink_budget {
                    error = Some(format!(
                        "publishing has failed for {:.0} s: {e}",
                        failing.as_secs_f64()
                    ));
                }
            }
            if let Some(message) = &error {
                readiness.push(Reason {
                    component: format!("sink:{name}"),
                    message: message.clone(),
                });
            }
            sinks.push(SinkReport {
                name,
                publishing_for: s
                    .attempt_since
                    .map(|since| now.saturating_duration_since(since).as_secs_f64()),
                healthy: error.is_none(),
                failing_for: failing_for.map(|d| d.as_secs_f64()),
                error: error.or_else(|| s.failing.as_ref().map(|(_, e)| e.clone())),
            });
        }
        Report {
            live: liveness.is_empty(),
            ready: liveness.is_empty() && readiness.is_empty(),
            role: state.stream.role(),
            stream: state.stream.clone(),
            sinks,
            liveness,
            readiness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        stall: Duration::from_millis(50),
        sink_budget: Duration::from_millis(50),
    };

    #[test]
    fn ready_only_when_streaming_with_every_sink_healthy() {
        let h = Health::new();
        h.register_sink("redis");
        let r = h.report(LIMITS);
        assert!(r.live && !r.ready);
        assert_eq!(r.role, "starting");
        h.set_stream(Stream::Streaming { slot: "s".into() });
        let r = h.report(LIMITS);
        assert!(r.ready, "{:?}", r.readiness);
        assert_eq!(r.role, "active");
        h.probed("redis", Err("connection refused".into()));
        let r = h.report(LIMITS);
        assert!(r.live && !r.ready);
        assert_eq!(r.readiness[0].component, "sink:redis");
        assert!(!r.sinks[0].healthy);
        h.probed("redis", Ok(()));
        assert!(h.report(LIMITS).ready);
    }

    #[test]
    fn a_failing_sink_is_ready_within_its_budget_only() {
        let h = Health::new();
        h.set_stream(Stream::Streaming { slot: "s".into() });
        h.attempt("kafka").ended(Err("timed out".into()));
        assert!(h.report(LIMITS).ready);
        std::thread::sleep(Duration::from_millis(80));
        let r = h.report(LIMITS);
        assert!(!r.ready && r.live);
        assert!(r.readiness[0].message.contains("timed out"));
        h.attempt("kafka").ended(Ok(()));
        assert!(h.report(LIMITS).ready);
    }

    #[test]
    fn a_loop_that_stops_beating_is_not_live() {
        let h = Health::new();
        h.set_stream(Stream::Streaming { slot: "s".into() });
        h.beat("reader");
        assert!(h.report(LIMITS).live);
        std::thread::sleep(Duration::from_millis(80));
        let r = h.report(LIMITS);
        assert!(!r.live && !r.ready);
        assert_eq!(r.liveness[0].component, "loop:reader");
        h.retire("reader");
        assert!(h.report(LIMITS).live);
        // A long attempt is work, not a stall.
        let attempt = h.attempt("redis");
        std::thread::sleep(Duration::from_millis(80));
        let r = h.report(LIMITS);
        assert!(r.live);
        assert!(r.sinks[0].publishing_for.unwrap() >= 0.08);
        attempt.ended(Ok(()));
        assert_eq!(h.report(LIMITS).sinks[0].publishing_for, None);
        // A cancelled attempt counts neither way.
        h.attempt("redis").ended(Err("refused".into()));
        drop(h.attempt("redis"));
        let r = h.report(LIMITS);
        assert!(r.live);
        assert_eq!(r.sinks[0].error.as_deref(), Some("refused"));
    }

    #[test]
    fn a_standby_is_live_not_ready_and_reports_no_lag() {
        let h = Health::new();
        h.set_stream(Stream::Standby { slot: "s".into() });
        let r = h.report(LIMITS);
        assert!(r.live && !r.ready);
        assert_eq!(r.role, "standby");
        assert_eq!(h.lag_seconds(SystemTime::now()), 0.0);
    }

    #[test]
    fn lag_counts_from_the_oldest_unconfirmed_commit_and_is_zero_when_caught_up() {
        let h = Health::new();
        h.set_stream(Stream::Streaming { slot: "s".into() });
        let now = SystemTime::now();
        assert_eq!(h.lag_seconds(now), 0.0);
        let three_s_ago = now - Duration::from_secs(3);
        let micros = three_s_ago.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
        h.set_oldest_unconfirmed(Some(micros));
        assert!((h.lag_seconds(now) - 3.0).abs() < 0.001);
        h.set_oldest_unconfirmed(None);
        assert_eq!(h.lag_seconds(now), 0.0);
        // Not streaming: whatever commits meanwhile is unseen.
        h.set_stream(Stream::Reconnecting {
            error: "reset".into(),
        });
        assert!(h.lag_seconds(now + Duration::from_secs(2)) >= 1.9);
    }
}
