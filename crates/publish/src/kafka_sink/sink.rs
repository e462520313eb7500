//! [`KafkaSink`]: produces a batch's records and waits for the broker's acknowledgements.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use metrics::counter;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tracing::{debug, error, info};

use super::config::KafkaSinkConfig;
use super::request;
use crate::batch::Batch;
use crate::metrics as m;
use crate::sink::{Sink, SinkError, SinkErrorKind};

/// The sink's name ([`Sink::name`](crate::Sink::name)), its `sink` metric label.
pub const NAME: &str = "kafka";

/// How long a send waits for room in librdkafka's local queue before giving up (retriably).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kafka sink. A record counts as confirmed when its delivery future returns `Ok`, which with
/// `acks=all` means every in-sync replica has it.
pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    key: String,
    compression: &'static str,
    /// Replaced after a fatal producer error (an idempotent producer that lost its sequence
    /// state cannot go on); cloning a `FutureProducer` is cheap.
    producer: Mutex<FutureProducer>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("cfg", &self.cfg)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Validates `cfg` and creates the producer (no network round trip: use
    /// [`Sink::health`] to check the brokers and the topic). `slot_name` is the record key unless
    /// `cfg.key` is set.
    pub fn new(cfg: KafkaSinkConfig, slot_name: &str) -> Result<Self, SinkError> {
        cfg.validate().map_err(|errors| {
            SinkError::new(SinkErrorKind::Config, crate::ConfigError::join(&errors))
        })?;
        let key = cfg.key.clone().unwrap_or_else(|| slot_name.to_string());
        if key.is_empty() {
            return Err(SinkError::new(
                SinkErrorKind::Config,
                "kafka: the record key (slot name) must not be empty",
            ));
        }
        let compression = best_compression();
        let producer = create_producer(&cfg.client_config(compression))?;
        info!(
            topic = %cfg.topic,
            compression,
            max_record_bytes = cfg.max_record_bytes,
            "kafka producer created (idempotent, acks=all)"
        );
        Ok(Self {
            cfg,
            key,
            compression,
            producer: Mutex::new(producer),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaSinkConfig {
        &self.cfg
    }

    /// The compression codec in use unless `properties` chose another: `zstd` when the bundled
    /// librdkafka was built with it, `lz4` otherwise.
    pub fn compression(&self) -> &'static str {
        self.compression
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn publish_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let payloads = request::records(batch, self.cfg.max_record_bytes)?;
        let producer = self.producer();
        // All records are queued at once (in order: parts of one batch share a partition, and
        // the idempotent producer keeps their order) and confirmed together.
        let sends = payloads.iter().map(|payload| {
            producer.send(
                FutureRecord::to(&self.cfg.topic)
                    .key(self.key.as_str())
                    .payload(payload.as_slice()),
                Timeout::After(QUEUE_TIMEOUT),
            )
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = None;
        let mut delivered = 0u64;
        for result in results {
            match result {
                Ok(_) => delivered += 1,
                Err((err, _record)) => {
                    failed.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failed {
            return Err(self.delivery_error(&producer, err, delivered, payloads.len()));
        }
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        counter!(m::KAFKA_RECORDS).increment(delivered);
        counter!(m::KAFKA_RECORD_BYTES).increment(bytes as u64);
        debug!(records = delivered, bytes, "kafka batch acknowledged");
        Ok(())
    }

    fn delivery_error(
        &self,
        producer: &FutureProducer,
        err: KafkaError,
        delivered: u64,
        total: usize,
    ) -> SinkError {
        if let Some((code, reason)) = producer.client().fatal_error() {
            // The producer cannot be used again; a new one starts a new idempotence session.
            // The batch is sent again in full, which at-least-once allows.
            error!(code = ?code, reason = %reason, "kafka producer hit a fatal error; recreating it");
            match create_producer(&self.cfg.client_config(self.compression)) {
                Ok(fresh) => {
                    *self.producer.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                }
                Err(create_err) => return create_err,
            }
            return SinkError::with_source(
                SinkErrorKind::Unavailable,
                "kafka: the producer hit a fatal error and was recreated",
                err,
            );
        }
        let kind = err
            .rdkafka_error_code()
            .map_or(SinkErrorKind::Unavailable, classify);
        SinkError::with_source(
            kind,
            format!(
                "kafka: {} of {total} records to topic {:?} not acknowledged",
                total as u64 - delivered,
                self.cfg.topic
            ),
            err,
        )
    }

    async fn check_topic(&self) -> Result<(), SinkError> {
        let producer = self.producer();
        let topic = self.cfg.topic.clone();
        let timeout = self.cfg.metadata_timeout();
        // librdkafka's metadata call blocks its thread.
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
        })
        .await
        .map_err(|err| {
            SinkError::with_source(
                SinkErrorKind::Unavailable,
                "kafka: metadata request was cancelled",
                err,
            )
        })?
        .map_err(|err| {
            let kind = err
                .rdkafka_error_code()
                .map_or(SinkErrorKind::Connect, classify);
            SinkError::with_source(
                kind,
                format!(
                    "kafka: cannot fetch metadata for topic {:?} from brokers {}",
                    self.cfg.topic, self.cfg.brokers
                ),
                err,
            )
        })?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.cfg.topic);
        let missing = || {
            SinkError::new(
                SinkErrorKind::Config,
                format!(
                    "kafka topic {:?} does not exist on brokers {}",
                    self.cfg.topic, self.cfg.brokers
                ),
            )
        };
        let Some(topic) = found else {
            return Err(missing());
        };
        match topic.error() {
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => Err(missing()),
            Some(code) => {
                let code = RDKafkaErrorCode::from(code);
                Err(SinkError::with_source(
                    classify(code),
                    format!(
                        "kafka topic {:?} on brokers {} is not usable",
                        self.cfg.topic, self.cfg.brokers
                    ),
                    KafkaError::MetadataFetch(code),
                ))
            }
            None if topic.partitions().is_empty() => Err(missing()),
            None => Ok(()),
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Consumers cannot know which of their entries a gap hid: they drop everything.
    fn gap_purge(&self, coverage: &Batch) -> Batch {
        Batch {
            commit_time_micros: coverage.commit_time_micros,
            first_commit_time_micros: coverage.first_commit_time_micros,
            patterns: vec![crate::batch::FLUSH_ALL.to_owned()],
            ..Batch::default()
        }
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_batch(batch).boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        self.check_topic().boxed()
    }
}

fn create_producer(config: &ClientConfig) -> Result<FutureProducer, SinkError> {
    config.create().map_err(|err| {
        SinkError::with_source(
            SinkErrorKind::Config,
            "kafka: cannot create the producer (check sinks.kafka.properties)",
            err,
        )
    })
}

/// `zstd` when the bundled librdkafka was built with it, else `lz4` (always built in).
fn best_compression() -> &'static str {
    static BEST: OnceLock<&'static str> = OnceLock::new();
    BEST.get_or_init(|| {
        let features = ClientConfig::new()
            .create_native_config()
            .and_then(|native| native.get("builtin.features"))
            .unwrap_or_default();
        if features.split(',').any(|f| f.trim() == "zstd") {
            "zstd"
        } else {
            "lz4"
        }
    })
}

/// Whether a librdkafka error can pass with time; the permanent ones are listed, anything else
/// is retried (a wrong guess then shows as retries in metrics, never as a lost batch).
fn classify(code: RDKafkaErrorCode) -> SinkErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            SinkErrorKind::Timeout
        }
        C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve | C::NetworkException => {
            SinkErrorKind::Connect
        }
        C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::InvalidConfig
        | C::InvalidRequiredAcks
        | C::InvalidArgument => SinkErrorKind::Config,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::PolicyViolation => SinkErrorKind::Rejected,
        _ => SinkErrorKind::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_a_builtin_codec() {
        assert!(["zstd", "lz4"].contains(&best_compression()));
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(RDKafkaErrorCode::MessageTimedOut),
            SinkErrorKind::Timeout
        );
        assert_eq!(
            classify(RDKafkaErrorCode::AllBrokersDown),
            SinkErrorKind::Connect
        );
        assert_eq!(
            classify(RDKafkaErrorCode::NotEnoughReplicas),
            SinkErrorKind::Unavailable
        );
        assert_eq!(
            classify(RDKafkaErrorCode::TopicAuthorizationFailed),
            SinkErrorKind::Config
        );
        assert_eq!(
            classify(RDKafkaErrorCode::MessageSizeTooLarge),
            SinkErrorKind::Rejected
        );
    }

    #[test]
    fn invalid_configuration_is_refused_before_any_io() {
        let mut cfg = KafkaSinkConfig::new("127.0.0.1:1", "t");
        cfg.properties
            .insert("enable.idempotence".into(), "false".into());
        let err = KafkaSink::new(cfg, "slot").unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Config);
        assert!(err.to_string().contains("enable.idempotence"), "{err}");

        let mut cfg = KafkaSinkConfig::new("127.0.0.1:1", "t");
        cfg.properties.insert("no.such.property".into(), "1".into());
        let err = KafkaSink::new(cfg, "slot").unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Config);
    }

    #[test]
    fn key_defaults_to_the_slot_name() {
        let sink =
            KafkaSink::new(KafkaSinkConfig::new("127.0.0.1:1", "t"), "walbust_slot").unwrap();
        assert_eq!(sink.key, "walbust_slot");
        let mut cfg = KafkaSinkConfig::new("127.0.0.1:1", "t");
        cfg.key = Some("fixed".into());
        assert_eq!(KafkaSink::new(cfg, "walbust_slot").unwrap().key, "fixed");
    }
}
