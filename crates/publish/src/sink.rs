//! The [`Sink`] trait every destination implements, and the error it returns.
//!
//! Retry decisions live in one place: a [`SinkError`] knows its [`SinkErrorKind`], and the kind
//! alone says whether trying again can help ([`SinkError::retriable`]). The pipeline retries
//! retriable errors forever (with backoff) and stops on the others, because skipping a batch
//! would silently lose invalidations.

use std::error::Error as StdError;
use std::fmt;

use futures::future::BoxFuture;

use crate::batch::Batch;

/// What a staged publish leaves running ([`Sink::publish_staged`]): resolves `Ok` once the rest
/// of the batch is applied, with the same meaning as [`Sink::publish`]'s `Ok`.
pub type Settling = BoxFuture<'static, Result<(), SinkError>>;

/// The whole of a staged publish: waits for what [`Sink::publish_staged`] left running. A sink
/// that overrides `publish_staged` implements [`Sink::publish`] with it.
pub fn settled<'a>(
    staged: BoxFuture<'a, Result<Option<Settling>, SinkError>>,
) -> BoxFuture<'a, Result<(), SinkError>> {
    Box::pin(async move {
        if let Some(rest) = staged.await? {
            rest.await?;
        }
        Ok(())
    })
}

/// A destination for invalidation batches (Redis, Kafka, HTTP caches).
///
/// # Contract
///
/// - **At-least-once.** A batch can be delivered more than once: after a retry, a restart, or a
///   replay of WAL that was not yet acknowledged. Sinks must tolerate duplicates. Invalidation is
///   idempotent and order-free (deleting a key twice, or in another order, is the same as once),
///   and consumers downstream are told so.
/// - **Confirmed means durable.** `publish` returns `Ok` only once the downstream system has
///   applied or acknowledged the whole batch: for Redis, every command got its reply; for Kafka,
///   every record was acknowledged by the broker with `acks=all`; for HTTP, every request got a
///   2xx answer. Only then may the WAL behind the batch be acknowledged to Postgres.
/// - **All or retry.** On `Err`, any part of the batch may or may not have been applied; the
///   pipeline publishes the same batch again (if [`SinkError::retriable`]), so `publish` must be
///   safe to call again with the same batch.
/// - Batches may be published concurrently (`max_in_flight > 1`) and in any order.
/// - Implementations never log keys, tags or patterns (they can carry personal data); counts only.
pub trait Sink: Send + Sync + 'static {
    /// Short, constant name used in logs and as the `sink` metric label (`"redis"`, `"kafka"`,
    /// `"http"`).
    fn name(&self) -> &'static str;

    /// Applies `batch` downstream; `Ok` means durably confirmed (see the trait docs).
    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Applies `batch` in two stages: the returned future resolves once the quick part is
    /// applied (for Redis: keys, tags, versioned patterns), with what is left running (pattern
    /// walks), if anything. The batch counts as confirmed only when that [`Settling`] resolved
    /// `Ok`; an `Err` from it fails the publish like an `Err` from [`Sink::publish`] (the
    /// pipeline publishes the whole batch again). Meanwhile the pipeline goes on with later
    /// batches, whose quick parts do not wait, but acknowledges nothing past this batch.
    ///
    /// By default: [`Sink::publish`], with nothing left running.
    fn publish_staged<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Option<Settling>, SinkError>> {
        Box::pin(async move { self.publish(batch).await.map(|()| None) })
    }

    /// Checks that the destination is reachable and usable: Redis `PING`, Kafka metadata for the
    /// topic (a missing topic is an error), a connection to the HTTP endpoint. Used at start-up
    /// and by `walbust check`.
    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Makes the destination ready before the first batch, once, at `walbust run`'s start
    /// (never by `walbust check`, which changes nothing): the Redis sink loads its functions
    /// library. Nothing by default.
    fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    /// What this sink is sent when walbust purges after a gap, given `coverage`: every entry the
    /// rules name without a row (constant keys, tags and patterns) and `source.gap_purge`'s. By
    /// default the coverage itself; a sink whose downstream cannot tell which of its entries the
    /// gap hid adds the flush-all pattern ([`crate::batch::FLUSH_ALL`]) or sends it alone.
    fn gap_purge(&self, coverage: &Batch) -> Batch {
        coverage.clone()
    }
}

/// What went wrong, coarsely; decides retriability and is the `kind` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// Could not connect, or the connection dropped. Retriable.
    Connect,
    /// No reply in time. Retriable.
    Timeout,
    /// The server is up but temporarily refuses work (Redis `LOADING`/`BUSY`/`READONLY`, a Kafka
    /// broker without a leader, a full producer queue). Retriable.
    Unavailable,
    /// The server replied something the client did not understand. Not retriable.
    Protocol,
    /// The server refused the request for a reason retrying cannot fix (wrong type, record too
    /// large for the broker). Not retriable.
    Rejected,
    /// The sink is configured wrongly (bad URL, missing topic, invalid property). Not retriable.
    Config,
    /// The server refused walbust's credentials (a wrong password) or its permissions (a Redis
    /// ACL that does not allow a command, key or channel walbust needs). Not retriable: someone
    /// must change the credentials or the ACL, so walbust stops as for any definite error. A
    /// certificate refused in the TLS handshake (the server's is not trusted, or the server
    /// refused walbust's) is one too.
    Denied,
    /// A single entry cannot fit the sink's size limit. Not retriable.
    TooLarge,
}

impl SinkErrorKind {
    /// Every kind, for metrics registered before their first error.
    pub const ALL: [SinkErrorKind; 8] = [
        Self::Connect,
        Self::Timeout,
        Self::Unavailable,
        Self::Protocol,
        Self::Rejected,
        Self::Config,
        Self::Denied,
        Self::TooLarge,
    ];

    /// Whether an error of this kind may succeed if the same request is sent again later.
    pub fn retriable(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout | Self::Unavailable)
    }

    /// Stable, low-cardinality name, used as the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Protocol => "protocol",
            Self::Rejected => "rejected",
            Self::Config => "config",
            Self::Denied => "denied",
            Self::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for SinkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error from a sink: a [`SinkErrorKind`], a message that never contains keys or credentials,
/// and the underlying client error as [`source`](StdError::source).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl SinkError {
    /// An error without an underlying cause.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by `source` (kept in the chain, not flattened into the message).
    pub fn with_source(
        kind: SinkErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The coarse kind of failure.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }

    /// Whether publishing the same batch again may succeed (see [`SinkErrorKind::retriable`]).
    pub fn retriable(&self) -> bool {
        self.kind.retriable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriability_follows_kind() {
        let retriable = [
            SinkErrorKind::Connect,
            SinkErrorKind::Timeout,
            SinkErrorKind::Unavailable,
        ];
        let fatal = [
            SinkErrorKind::Protocol,
            SinkErrorKind::Rejected,
            SinkErrorKind::Config,
            SinkErrorKind::Denied,
            SinkErrorKind::TooLarge,
        ];
        for kind in retriable {
            assert!(SinkError::new(kind, "x").retriable(), "{kind}");
        }
        for kind in fatal {
            assert!(!SinkError::new(kind, "x").retriable(), "{kind}");
        }
    }

    #[test]
    fn source_is_chained_not_flattened() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = SinkError::with_source(SinkErrorKind::Connect, "redis: cannot connect", io);
        assert_eq!(err.to_string(), "redis: cannot connect");
        let source = StdError::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "refused");
    }
}
