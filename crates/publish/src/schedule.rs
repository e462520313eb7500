//! The schedule applier: invalidates again, when they are due, what rules with `at:` scheduled.
//!
//! ```text
//! walbust:schedule:<slot> (Redis sorted set, score = due ms)
//!    │  ZRANGE -inf <now> BYSCORE LIMIT 0 <n>       every poll, or at once when an entry is due
//!    v
//! Batch { due_unix_micros, lsn/commit of the scheduling transaction }
//!    │  every sink, each retried with backoff (the pipeline's `publish_everywhere`)
//!    v
//! ZREM <entry>   only after every sink confirmed it
//! ```
//!
//! Delivery is at least once: an entry is removed after its invalidation was confirmed, so a
//! crash or an outage in between applies it again (harmless). Entries past due when walbust
//! starts (it was down at their time) are applied at once. The applier runs beside the WAL
//! pipeline and never touches acknowledgement: a scheduled batch has no end LSN.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use walbust_flow::{Backoff, Chain};

use crate::metrics as m;
use crate::pipeline::publish_everywhere;
use crate::redis_sink::{schedule, RedisSink};
use crate::sink::Sink;

/// How often the applier looks for due entries when it knows of none sooner: scheduled
/// invalidations happen within this of their due time.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);
/// Entries applied per round (one batch each).
const PER_ROUND: usize = 100;

/// Applies due schedule entries through every sink; see the module docs.
pub struct Applier {
    /// Whether the rules in effect schedule anything: the schedule is not read otherwise
    /// (a Redis user without the sorted-set commands is fine without `at:` rules).
    active: Box<dyn Fn() -> bool + Send + Sync>,
    store: Arc<RedisSink>,
    sinks: Arc<[Arc<dyn Sink>]>,
    retry: Backoff,
    poll: Duration,
    slot: String,
}

impl Applier {
    /// `store` holds the schedule (its own connection); `sinks` are every sink of the run, the
    /// Redis sink included.
    pub fn new(
        store: Arc<RedisSink>,
        sinks: Vec<Arc<dyn Sink>>,
        retry: Backoff,
        slot: impl Into<String>,
    ) -> Self {
        Self {
            active: Box::new(|| true),
            store,
            sinks: sinks.into(),
            retry,
            poll: DEFAULT_POLL,
            slot: slot.into(),
        }
    }

    /// Reads the schedule only while `active` says the rules in effect have `at:`. Entries
    /// left by rules since removed wait until a rule with `at:` is back.
    pub fn with_active(mut self, active: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.active = Box::new(active);
        self
    }

    /// Runs until `shutdown` turns true. Errors reading the schedule are logged and retried at
    /// the next poll; a sink that refuses a scheduled batch for good is logged and the entry is
    /// kept and tried again after `retry.max`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        gauge!(m::SCHEDULED_PENDING).set(0.0);
        loop {
            let pause = match if (self.active)() {
                self.round().await
            } else {
                Ok(false)
            } {
                Ok(more) if more => Duration::ZERO,
                Ok(_) => self.poll,
                Err(err) => {
                    warn!(error = %Chain(&err), "schedule: reading or applying due entries failed; trying again");
                    self.retry.max.max(self.poll)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }

    /// Applies what is due now; `Ok(true)` when a full round was taken (more may be due).
    async fn round(&self) -> Result<bool, crate::SinkError> {
        let now_ms =
            walbust_pgoutput::time::pg_to_unix_micros(walbust_pgoutput::time::now_micros())
                .div_euclid(1000);
        let due = self.store.schedule_due(now_ms, PER_ROUND).await?;
        let full = due.len() == PER_ROUND;
        for member in due {
            let Some(batch) = schedule::decode(&member) else {
                counter!(m::SCHEDULED_REFUSED, m::LABEL_REASON => "invalid").increment(1);
                warn!("schedule: removed an entry walbust cannot read");
                self.store.schedule_remove(&[member]).await?;
                continue;
            };
            match publish_everywhere(&batch, &self.sinks, self.retry, &self.slot).await {
                Ok(()) => {
                    self.store.schedule_remove(&[member]).await?;
                    counter!(m::SCHEDULED_APPLIED).increment(1);
                    debug!(
                        lsn = %walbust_pgoutput::format_lsn(batch.lsn),
                        keys = batch.keys.len(),
                        tags = batch.tags.len(),
                        patterns = batch.patterns.len(),
                        "scheduled invalidation applied"
                    );
                }
                Err(err) => {
                    error!(error = %Chain(&err), "schedule: a sink refused a scheduled invalidation; it stays scheduled");
                    return Err(crate::SinkError::new(
                        crate::SinkErrorKind::Rejected,
                        "a sink refused a scheduled invalidation",
                    ));
                }
            }
        }
        let pending = self.store.schedule_len().await?;
        gauge!(m::SCHEDULED_PENDING).set(pending as f64);
        Ok(full)
    }
}
