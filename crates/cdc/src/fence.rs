//! Acknowledgements behind a durable ceiling.
//!
//! A slot only moves past what its consumer acknowledged if someone else
//! moved it (dropped and created it again, advanced it). To tell that after
//! a crash, when walbust could not record where it stopped, the reader
//! never acknowledges past a ceiling it first wrote somewhere durable (the
//! gap marker, through an [`OnAck`] hook): a slot found past the ceiling at
//! the next start was moved by someone else. Each raise sets the ceiling to
//! the server's WAL end as last reported, so that one write serves many
//! acknowledgements; raises are at least [`MIN_INTERVAL`] apart, which only
//! delays acknowledgements (the slot's position), never invalidations. A
//! raise that fails (the marker's Redis is down) is retried with backoff up
//! to [`MAX_RETRY`] apart while the session goes on: acknowledgements wait
//! for it, invalidations do not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An error of a hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a new ceiling: nothing past the given LSN is acknowledged before
/// this resolved `Ok`. An error is retried with backoff.
pub type OnAck =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// Raises of the ceiling are at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Retries of a failed raise back off from [`MIN_INTERVAL`] up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// The ceiling and the raise in flight.
pub(crate) struct AckFence {
    hook: OnAck,
    /// Acknowledgements up to here are covered by a written ceiling.
    allowed: u64,
    /// The raise in flight: its target and its task.
    raising: Option<(u64, JoinHandle<Result<(), BoxError>>)>,
    /// When the last raise started (or will start).
    last: Option<Instant>,
    /// Raises failed in a row.
    failures: u32,
}

impl AckFence {
    pub(crate) fn new(hook: OnAck) -> Self {
        AckFence {
            hook,
            allowed: 0,
            raising: None,
            last: None,
            failures: 0,
        }
    }

    /// How far an acknowledgement of `lsn` may go now. Past the ceiling,
    /// starts raising it to `server_end` (at least `lsn`) unless a raise is
    /// in flight.
    pub(crate) fn admit(&mut self, lsn: u64, server_end: u64) -> u64 {
        if lsn <= self.allowed {
            return lsn;
        }
        if self.raising.is_none() {
            let now = Instant::now();
            let at = self.last.map_or(now, |last| (last + MIN_INTERVAL).max(now));
            self.last = Some(at);
            self.spawn(server_end.max(lsn), at);
        }
        self.allowed
    }

    fn spawn(&mut self, target: u64, at: Instant) {
        let hook = Arc::clone(&self.hook);
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            hook(target).await
        });
        self.raising = Some((target, task));
    }

    /// Whether a raise is in flight.
    pub(crate) fn raising(&self) -> bool {
        self.raising.is_some()
    }

    /// Resolves when the raise in flight finished (never without one). On
    /// an error the same raise is already scheduled again, after a backoff.
    /// Cancel-safe: dropped early, the raise stays in flight.
    pub(crate) async fn raised(&mut self) -> Result<(), BoxError> {
        let Some((target, task)) = &mut self.raising else {
            return std::future::pending().await;
        };
        let target = *target;
        let outcome = task.await;
        self.raising = None;
        let error: BoxError = match outcome {
            Ok(Ok(())) => {
                self.failures = 0;
                self.allowed = self.allowed.max(target);
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(join) => Box::new(join),
        };
        self.failures = self.failures.saturating_add(1);
        let backoff = MIN_INTERVAL
            .saturating_mul(1 << self.failures.min(8))
            .min(MAX_RETRY);
        let at = Instant::now() + backoff;
        self.last = Some(at);
        self.spawn(target, at);
        Err(error)
    }

    /// Stops the raise in flight, if any; a write it already started may
    /// still land, which only makes the ceiling higher than needed.
    pub(crate) fn abandon(&mut self) {
        if let Some((_, task)) = self.raising.take() {
            task.abort();
        }
    }

    /// A new session renewed the marker without a ceiling: the next
    /// acknowledgement writes one first, and a raise of the previous session
    /// admits nothing in this one.
    pub(crate) fn reset(&mut self) {
        self.abandon();
        self.failures = 0;
        self.allowed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn recording() -> (OnAck, Arc<Mutex<Vec<u64>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::clone(&written);
        let hook: OnAck = Arc::new(move |lsn| {
            let w = Arc::clone(&w);
            Box::pin(async move {
                w.lock().unwrap().push(lsn);
                Ok(())
            })
        });
        (hook, written)
    }

    // Paused time: the interval between raises is measured on tokio's
    // clock, which a loaded machine cannot stretch under the assertions.
    #[tokio::test(start_paused = true)]
    async fn nothing_is_admitted_past_a_ceiling_not_yet_written() {
        let (hook, written) = recording();
        let mut f = AckFence::new(hook);
        assert_eq!(f.admit(100, 500), 0);
        // A second acknowledgement does not start a second write.
        assert_eq!(f.admit(150, 600), 0);
        f.raised().await.unwrap();
        assert_eq!(*written.lock().unwrap(), [500]);
        assert_eq!(f.admit(150, 600), 150);
        assert_eq!(f.admit(500, 600), 500);
        // Past it: the next write waits for the interval.
        let before = Instant::now();
        assert_eq!(f.admit(700, 800), 500);
        f.raised().await.unwrap();
        assert!(before.elapsed() >= MIN_INTERVAL - Duration::from_millis(1));
        assert_eq!(*written.lock().unwrap(), [500, 800]);
        assert_eq!(f.admit(700, 800), 700);
        f.reset();
        assert_eq!(f.admit(700, 800), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_admits_nothing_and_is_retried_with_backoff() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = Arc::clone(&calls);
        let hook: OnAck = Arc::new(move |lsn| {
            let c = Arc::clone(&c);
            Box::pin(async move {
                let mut calls = c.lock().unwrap();
                calls.push((lsn, Instant::now()));
                if calls.len() <= 2 {
                    Err("redis down".into())
                } else {
                    Ok(())
                }
            })
        });
        let mut f = AckFence::new(hook);
        assert_eq!(f.admit(100, 300), 0);
        assert!(f.raised().await.is_err());
        // Retried without another acknowledgement, to the same ceiling.
        assert!(f.raising());
        assert_eq!(f.admit(200, 900), 0);
        assert!(f.raised().await.is_err());
        f.raised().await.unwrap();
        assert!(!f.raising());
        assert_eq!(f.admit(200, 900), 200);
        let calls = calls.lock().unwrap();
        assert_eq!(
            calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            [300, 300, 300]
        );
        // Backing off: 400 ms, then 800 ms.
        assert!(calls[1].1 - calls[0].1 >= MIN_INTERVAL * 2 - Duration::from_millis(1));
        assert!(calls[2].1 - calls[1].1 >= MIN_INTERVAL * 4 - Duration::from_millis(1));
    }

    #[tokio::test]
    async fn a_raise_of_a_previous_session_admits_nothing_in_the_next() {
        let (hook, written) = recording();
        let mut f = AckFence::new(hook);
        assert_eq!(f.admit(100, 500), 0);
        f.reset();
        assert!(!f.raising());
        assert_eq!(f.admit(100, 500), 0);
        f.raised().await.unwrap();
        assert_eq!(f.admit(100, 500), 100);
        // The abandoned raise never ran: it was still waiting to start.
        assert_eq!(*written.lock().unwrap(), [500]);
    }
}
