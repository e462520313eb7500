//! The discard sink, for benchmarks only: it confirms every batch at once and sends it nowhere.
//!
//! `walbust-bench` runs walbust with only this sink to separate the cost of reading, decoding
//! and evaluating the WAL from the cost of the real sinks. It is deliberately left out of the
//! README: a deployment that uses it acknowledges WAL without invalidating anything.
//! Configuration: `sinks.discard: {}`.

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;

use crate::batch::Batch;
use crate::sink::{Sink, SinkError};

const NAME: &str = "discard";

/// `sinks.discard`: no settings (an empty mapping turns the sink on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardSinkConfig {}

/// A [`Sink`] that confirms every batch without doing anything: "confirmed" means nothing here,
/// which is why it exists only for benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, _batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_at_once_and_is_always_healthy() {
        let sink = DiscardSink;
        assert_eq!(sink.name(), "discard");
        assert!(sink.health().now_or_never().expect("ready").is_ok());
        let batch = Batch {
            keys: vec!["k".into()],
            ..Batch::default()
        };
        assert!(sink.publish(&batch).now_or_never().expect("ready").is_ok());
    }
}
