use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff with full jitter and no limit on attempts: delays
/// start at `min`, double, and never exceed `max` (jitter included).
///
/// walbust retries until the thing it waits for comes back (a database, a
/// sink), because giving up would either lose invalidations or stop the
/// service; the caller decides when an error is definite instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Reconnecting to Postgres and waiting for services at start-up.
    pub const RECONNECT: Backoff = Backoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };

    /// The builder, for `backon`'s `Retryable` (pair it with
    /// [`clamp`](Self::clamp) in `.adjust`: jitter alone can add up to a
    /// whole delay on top).
    pub fn builder(self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
    }

    /// A delay kept within `max`.
    pub fn clamp(self, delay: Duration) -> Duration {
        delay.min(self.max)
    }

    /// The delays between attempts, endless.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        let mut inner = self.builder().build();
        std::iter::from_fn(move || Some(self.clamp(inner.next().unwrap_or(self.max))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_within_max_and_never_end() {
        let b = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(80),
        };
        let delays: Vec<_> = b.delays().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(
            delays.iter().all(|d| *d >= b.min && *d <= b.max),
            "{delays:?}"
        );
        assert_eq!(*delays.last().unwrap(), b.max, "{delays:?}");
    }
}
