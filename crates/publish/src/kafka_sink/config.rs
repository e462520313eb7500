//! Configuration of the Kafka sink.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::config::{ConfigError, Errors};

/// Configuration path prefix used in [`KafkaSinkConfig::validate`] errors.
pub const CONFIG_PATH: &str = "sinks.kafka";
/// Default for [`KafkaSinkConfig::max_record_bytes`]: under librdkafka's and the broker's
/// default 1 MB message limit, with room for the key and the record framing.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 900_000;
/// Smallest accepted [`KafkaSinkConfig::max_record_bytes`].
pub const MIN_MAX_RECORD_BYTES: usize = 1024;
/// Default for [`KafkaSinkConfig::metadata_timeout_ms`].
pub const DEFAULT_METADATA_TIMEOUT_MS: u64 = 5_000;
/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room kept between a record's value and `message.max.bytes` for the key and framing.
const RECORD_FRAMING_BYTES: usize = 512;

/// Properties walbust sets itself and that the user may not weaken: the delivery guarantee
/// rests on them. Values listed are the only ones accepted.
const ENFORCED: &[(&str, &[&str])] = &[
    ("enable.idempotence", &["true"]),
    ("acks", &["all", "-1"]),
    ("request.required.acks", &["all", "-1"]),
];

/// Properties that must not be set through `properties`, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers` instead"),
    ("metadata.broker.list", "set `brokers` instead"),
    (
        "transactional.id",
        "walbust uses an idempotent producer, not transactions",
    ),
];

/// Configuration of the Kafka sink (`sinks.kafka` in walbust's configuration file).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic the records go to. It must exist: walbust does not create it.
    pub topic: String,
    /// librdkafka properties passed through (`security.protocol`, `sasl.*`, `linger.ms`...).
    /// `enable.idempotence` and `acks` are enforced (`true`, `all`); setting them to anything
    /// weaker is an error.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Largest record value, in bytes; bigger batches are split into several records.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Record key. Default: the replication slot's name (given to
    /// [`KafkaSink::new`](super::KafkaSink::new)), so all records of one slot land in one
    /// partition, in order.
    #[serde(default)]
    pub key: Option<String>,
    /// Time allowed for the health check's metadata request, in milliseconds.
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
}

fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}
fn default_metadata_timeout_ms() -> u64 {
    DEFAULT_METADATA_TIMEOUT_MS
}

// By hand: property values can be passwords (`sasl.password`), so only names are printed.
impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("max_record_bytes", &self.max_record_bytes)
            .field("key", &self.key)
            .field("metadata_timeout_ms", &self.metadata_timeout_ms)
            .finish()
    }
}

impl KafkaSinkConfig {
    /// A configuration with every default.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            properties: BTreeMap::new(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            key: None,
            metadata_timeout_ms: DEFAULT_METADATA_TIMEOUT_MS,
        }
    }

    /// [`Self::metadata_timeout_ms`] as a duration.
    pub fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.metadata_timeout_ms)
    }

    /// Checks the values without I/O; errors name fields under `sinks.kafka.`.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Errors::new(CONFIG_PATH);
        let brokers_ok = !self.brokers.trim().is_empty()
            && self
                .brokers
                .split(',')
                .all(|broker| !broker.trim().is_empty());
        errors.check(
            brokers_ok,
            "brokers",
            "must list one or more host:port, separated by commas",
        );
        if let Err(problem) = check_topic_name(&self.topic) {
            errors.push("topic", problem);
        }

        for (name, allowed) in ENFORCED {
            if let Some(value) = self.properties.get(*name) {
                if !allowed.contains(&value.trim()) {
                    errors.push(
                        &format!("properties.{name}"),
                        format_args!(
                            "must be {} (walbust enforces it for at-least-once delivery)",
                            allowed[0]
                        ),
                    );
                }
            }
        }
        for (name, why) in FORBIDDEN {
            if self.properties.contains_key(*name) {
                errors.push(
                    &format!("properties.{name}"),
                    format_args!("not allowed: {why}"),
                );
            }
        }
        if self.properties.keys().any(|k| k.trim().is_empty()) {
            errors.push("properties", "property names must not be empty");
        }

        let message_max = match self.properties.get("message.max.bytes") {
            None => Some(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            Some(value) => match value.trim().parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push("properties.message.max.bytes", "must be a number of bytes");
                    None
                }
            },
        };
        let key_len = self.key.as_ref().map_or(0, String::len);
        if self.max_record_bytes < MIN_MAX_RECORD_BYTES {
            errors.push(
                "max_record_bytes",
                format_args!("must be at least {MIN_MAX_RECORD_BYTES}"),
            );
        } else if let Some(message_max) = message_max {
            let limit = message_max.saturating_sub(RECORD_FRAMING_BYTES + key_len);
            errors.check(
                self.max_record_bytes <= limit,
                "max_record_bytes",
                format_args!(
                    "must be at most {limit}: message.max.bytes ({message_max}) minus room for the key and framing"
                ),
            );
        }
        errors.check(
            self.key.as_ref().is_none_or(|k| !k.is_empty()),
            "key",
            "must not be empty (leave it out to use the slot name)",
        );
        errors.check(
            self.metadata_timeout_ms > 0,
            "metadata_timeout_ms",
            "must be at least 1",
        );
        errors.finish()
    }
}

impl KafkaSinkConfig {
    /// The librdkafka configuration of the producer: walbust's defaults, then the user's
    /// `properties`, then the enforced delivery settings (which [`Self::validate`] already
    /// checked the user does not weaken).
    pub(crate) fn client_config(&self, compression: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("compression.type", compression)
            // A missing topic must be an error the health check reports, not a topic silently
            // created with broker defaults.
            .set("allow.auto.create.topics", "false")
            // walbust already batches: librdkafka's own 5 ms linger would
            // only add latency to every batch.
            .set("linger.ms", "0")
            // The default backoff grows to 10 s, which delays recovery
            // after a broker outage long after the broker is back.
            .set("reconnect.backoff.max.ms", "1000")
            // A request sent as a broker fails may never be answered; the
            // default 60 s wait holds every sink that long. walbust retries
            // the batch itself, so a shorter wait only speeds recovery.
            .set("socket.timeout.ms", "10000");
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config.set("enable.idempotence", "true").set("acks", "all");
        config
    }
}

/// Kafka's topic name rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("must not be empty");
    }
    if topic.len() > 249 {
        return Err("must be at most 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("must not be \".\" or \"..\"");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(cfg: &KafkaSinkConfig) -> Vec<String> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_from_a_minimal_document() {
        let cfg: KafkaSinkConfig =
            serde_json::from_str(r#"{"brokers":"k1:9092,k2:9092","topic":"cache-invalidations"}"#)
                .unwrap();
        assert_eq!(
            cfg,
            KafkaSinkConfig::new("k1:9092,k2:9092", "cache-invalidations")
        );
        assert_eq!(cfg.max_record_bytes, 900_000);
        assert_eq!(cfg.key, None);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<KafkaSinkConfig>(
            r#"{"brokers":"k:9092","topic":"t","acks":"1"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `acks`"), "{err}");
    }

    #[test]
    fn weakening_the_guarantees_is_refused() {
        let mut cfg = KafkaSinkConfig::new("k:9092", "t");
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("bootstrap.servers", "other:9092"),
            ("linger.ms", "5"),
        ] {
            cfg.properties.insert(k.into(), v.into());
        }
        assert_eq!(
            messages(&cfg),
            [
                "sinks.kafka.properties.enable.idempotence: must be true (walbust enforces it for at-least-once delivery)",
                "sinks.kafka.properties.acks: must be all (walbust enforces it for at-least-once delivery)",
                "sinks.kafka.properties.bootstrap.servers: not allowed: set `brokers` instead",
            ]
        );
        let mut ok = KafkaSinkConfig::new("k:9092", "t");
        ok.properties.insert("acks".into(), "-1".into());
        ok.properties
            .insert("enable.idempotence".into(), "true".into());
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut cfg = KafkaSinkConfig::new(" , ", "bad topic!");
        cfg.max_record_bytes = 10;
        cfg.key = Some(String::new());
        cfg.metadata_timeout_ms = 0;
        assert_eq!(
            messages(&cfg),
            [
                "sinks.kafka.brokers: must list one or more host:port, separated by commas",
                "sinks.kafka.topic: may only contain letters, digits, '.', '_' and '-'",
                "sinks.kafka.max_record_bytes: must be at least 1024",
                "sinks.kafka.key: must not be empty (leave it out to use the slot name)",
                "sinks.kafka.metadata_timeout_ms: must be at least 1",
            ]
        );
    }

    #[test]
    fn record_limit_must_fit_the_message_limit() {
        let mut cfg = KafkaSinkConfig::new("k:9092", "t");
        cfg.max_record_bytes = 2_000_000;
        assert_eq!(
            messages(&cfg),
            ["sinks.kafka.max_record_bytes: must be at most 999488: message.max.bytes (1000000) minus room for the key and framing"]
        );
        cfg.properties
            .insert("message.max.bytes".into(), "4000000".into());
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn client_config_layers_defaults_user_properties_and_enforced_settings() {
        let mut cfg = KafkaSinkConfig::new("k1:9092", "t");
        cfg.properties
            .insert("compression.type".into(), "gzip".into());
        cfg.properties.insert("linger.ms".into(), "5".into());
        cfg.properties.insert("acks".into(), "-1".into());
        let config = cfg.client_config("lz4");
        assert_eq!(config.get("bootstrap.servers"), Some("k1:9092"));
        assert_eq!(config.get("compression.type"), Some("gzip"), "user wins");
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));

        let plain = KafkaSinkConfig::new("k1:9092", "t").client_config("zstd");
        assert_eq!(plain.get("compression.type"), Some("zstd"));
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("walbust.invalidations_v1-x").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn debug_hides_property_values() {
        let mut cfg = KafkaSinkConfig::new("k:9092", "t");
        cfg.properties
            .insert("sasl.password".into(), "hunter2".into());
        let text = format!("{cfg:?}");
        assert!(text.contains("sasl.password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
