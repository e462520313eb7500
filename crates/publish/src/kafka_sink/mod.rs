//! The Kafka sink: one JSON record per batch (split to stay under the size limit), sent by an
//! idempotent producer with `acks=all`.
//!
//! - `config`: [`KafkaSinkConfig`] (serde, defaults, pure `validate()`), and the librdkafka
//!   configuration it becomes.
//! - `request`: the records of a batch, built without I/O (format in [`crate::record`]).
//! - `sink`: [`KafkaSink`], which produces them and waits for the broker's acknowledgements.
//!
//! Consumers get at-least-once delivery: a record can repeat after a retry or a restart, and the
//! parts of a split batch carry the same `lsn`. Applying a record twice is harmless.

mod config;
pub mod request;
mod sink;

pub use config::{
    KafkaSinkConfig, CONFIG_PATH, DEFAULT_MAX_RECORD_BYTES, DEFAULT_METADATA_TIMEOUT_MS,
    MIN_MAX_RECORD_BYTES,
};
pub use sink::{KafkaSink, NAME};
