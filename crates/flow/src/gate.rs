//! [`Gate`]: a hold between a sealed batch and the sinks.

use std::future::Future;
use std::pin::Pin;

/// What the pipeline awaits before it hands a batch that invalidates
/// something to the sinks (Redis and Kafka alike, so the whole batch is
/// held): the replica gate of `source.replicas`, which lets a batch go once
/// every read replica has replayed its commits.
///
/// # Contract
///
/// - [`wait`](Gate::wait) resolves once the invalidations of every
///   transaction committed before WAL position `visible_from` may be
///   published. It is infallible and must bound itself: a gate that cannot
///   tell (a replica unreachable) resolves anyway after its own limit and
///   says so in its metrics and logs, because holding invalidations
///   forever would leave caches stale forever.
/// - Batches wait concurrently (up to `publish.max_in_flight`) and are
///   still acknowledged in order; a waiting batch holds its in-flight slot,
///   so later transactions pile into the next batch meanwhile.
/// - The pipeline never calls it for batches that invalidate nothing.
pub trait Gate: Send + Sync + 'static {
    /// Resolves when a batch whose transactions all committed before
    /// `visible_from` may go to the sinks (see the trait docs).
    fn wait(&self, visible_from: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
