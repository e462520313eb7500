//! walbust's publishing side: batch committed invalidations, coalesce duplicates, send each
//! batch to every sink, retry, and report what may be acknowledged to Postgres.
//!
//! # Map
//!
//! - [`batch`]: [`Item`] (what the reader sends), [`Batch`] (what sinks receive), and the
//!   accumulator that merges transactions and coalesces duplicates.
//! - [`pipeline`]: the task that drives it all: [`Pipeline::spawn`] returns the item sender, a
//!   `watch` of the confirmed end LSN, and the task handle.
//! - [`sink`]: the [`Sink`] trait (its rustdoc is the delivery contract) and [`SinkError`].
//! - [`redis_sink`], [`kafka_sink`], [`http_sink`]: the sinks, each a folder with the same
//!   files: `config` (serde + pure `validate()`), `sink` (I/O), `request` (building commands,
//!   records or requests, pure).
//! - [`discard_sink`]: a sink that confirms without sending, for benchmarks only.
//! - [`record`]: the versioned JSON record of a batch (Kafka value, Redis `PUBLISH` message,
//!   webhook body).
//! - [`format`](mod@format): LSN and timestamp formatting.
//! - [`metrics`]: metric names and [`metrics::describe`].
//!
//! # Guarantees
//!
//! Delivery is at-least-once: a batch may reach a sink more than once, and sinks tolerate it,
//! because invalidation is idempotent and order-free. Nothing is reported as confirmed before
//! every sink confirmed it, and confirmations are reported in LSN order. A slow or failing sink
//! slows the reader through the bounded channel; it never grows a queue.

pub mod batch;
pub mod config;
pub mod discard_sink;
pub mod http_sink;
pub mod kafka_sink;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod redis_sink;
pub mod schedule;
pub mod sink;

pub use batch::{Batch, Item, ScheduledEntry, SequenceError};
pub use config::ConfigError;
pub use pipeline::{
    publish_everywhere, BatchObserver, BatchReport, Pipeline, PipelineConfig, PipelineError,
    PipelineHandle, SinkReport,
};
pub use sink::{settled, Settling, Sink, SinkError, SinkErrorKind};
