//! walbust's configuration file (`walbust.yaml`).
//!
//! Loading is three pure steps, all before any connection: `${VAR}`
//! interpolation of the raw text, YAML parsing into typed structs (unknown
//! fields refused, line and column in errors), and [`Config::validate`],
//! which names every bad field by its path. I/O happens later, when the
//! sinks and the source are built.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use walbust_publish::discard_sink::DiscardSinkConfig;
use walbust_publish::kafka_sink::KafkaSinkConfig;
use walbust_publish::redis_sink::RedisSinkConfig;
use walbust_publish::PipelineConfig;

/// Default for `source.status_interval_ms`: how often a raised
/// acknowledgement is reported to Postgres at most.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 1_000;
/// Default for `source.application_name`.
pub const DEFAULT_APPLICATION_NAME: &str = "walbust";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    /// Path of the rules file; relative paths are relative to the
    /// configuration file's folder.
    pub rules: PathBuf,
    pub sinks: SinksConfig,
    #[serde(default)]
    pub publish: PublishConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `source`: the database and the replication slot.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Publication to stream.
    pub publication: String,
    /// Logical replication slot (pgoutput).
    pub slot: String,
    /// Create the publication (for the tables the rules name) and the slot
    /// when missing. Off by default: in production a DBA usually creates
    /// them (see deploy/postgres-setup.sql).
    #[serde(default)]
    pub create: bool,
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Write a heartbeat message into the WAL this often, so that the slot
    /// advances even when the server writes almost no WAL of its own. 0
    /// (the default) turns it off; keepalives already advance an idle slot
    /// on a server that writes WAL elsewhere.
    #[serde(default)]
    pub heartbeat_interval_ms: u64,
    /// Ask Postgres (14 or later) for column values in binary format
    /// instead of text. Keys come out the same: walbust renders the values
    /// the rules read as Postgres's text output would, and refuses to start
    /// when a rule reads a column whose type it cannot render. Off by
    /// default.
    #[serde(default)]
    pub binary: bool,
    /// What to do when walbust finds it ran before but the slot is gone or
    /// the server is another one (a gap in the change stream): `refuse`
    /// (default) or `purge` everything the rules cover, then start over.
    #[serde(default)]
    pub on_gap: OnGap,
    /// Extra keys, tags and patterns purged on a gap with `on_gap: purge`.
    #[serde(default)]
    pub gap_purge: GapPurge,
    /// Read replicas applications read from: a batch is published only
    /// once each has replayed its commits (see `walbust_cdc::replicas`).
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Longest a batch waits for the replicas; past it, it is published
    /// anyway (counted in `walbust_replica_wait_timeouts_total`).
    #[serde(default = "default_replica_wait_max_ms")]
    pub replica_wait_max_ms: u64,
}

/// One entry of `source.replicas`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// `postgres://user:password@host:port/database` of the replica.
    pub url: String,
    /// The `replica` metric label and the name in logs; default
    /// `host:port` of the URL.
    #[serde(default)]
    pub name: Option<String>,
}

// By hand: the URL may hold a password.
impl fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ReplicaConfig {
    /// Its name: `name`, else `host:port` of the URL (never the password).
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            walbust_cdc::replicas::default_name(&self.url)
                .unwrap_or_else(|| walbust_cdc::source::redact_url(&self.url))
        })
    }
}

/// `source.on_gap`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGap {
    #[default]
    Refuse,
    Purge,
}

/// `source.gap_purge`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapPurge {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
}

impl GapPurge {
    /// The extra entries as invalidations, purged with every gap.
    pub fn invalidations(&self) -> walbust_rules::Invalidations {
        walbust_rules::Invalidations {
            keys: self.keys.clone(),
            tags: self.tags.clone(),
            patterns: self.patterns.clone(),
        }
    }
}

fn default_replica_wait_max_ms() -> u64 {
    millis(walbust_cdc::replicas::DEFAULT_WAIT_MAX)
}
fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}
fn default_application_name() -> String {
    DEFAULT_APPLICATION_NAME.to_string()
}

// By hand: the URL may hold a password.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("create", &self.create)
            .field("binary", &self.binary)
            .field("replicas", &self.replicas)
            .field("replica_wait_max_ms", &self.replica_wait_max_ms)
            .finish_non_exhaustive()
    }
}

/// `sinks`: a sink whose section is absent is off; at least one is required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    pub redis: Option<RedisSinkConfig>,
    pub kafka: Option<KafkaSinkConfig>,
    /// `sinks.discard: {}`: confirms every batch without sending it anywhere. For
    /// `walbust-bench` only (it measures walbust without sink costs), hence absent from the
    /// README: it acknowledges WAL while invalidating nothing.
    pub discard: Option<DiscardSinkConfig>,
}

/// `publish`: batching and retries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    pub max_keys: usize,
    pub max_bytes: usize,
    pub max_delay_ms: u64,
    pub max_in_flight: usize,
    pub channel_capacity: usize,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        let d = PipelineConfig::default();
        PublishConfig {
            max_keys: d.max_keys,
            max_bytes: d.max_bytes,
            max_delay_ms: millis(d.max_delay),
            max_in_flight: d.max_in_flight,
            channel_capacity: d.channel_capacity,
            retry_min_ms: millis(d.retry_min),
            retry_max_ms: millis(d.retry_max),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PublishConfig {
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            max_keys: self.max_keys,
            max_bytes: self.max_bytes,
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_in_flight: self.max_in_flight,
            channel_capacity: self.channel_capacity,
            retry_min: Duration::from_millis(self.retry_min_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            slot: String::new(),
        }
    }
}

/// `metrics`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on; absent: no endpoint.
    pub listen: Option<String>,
}

/// A configuration problem, one line each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: ${{{var}}} is not set in the environment")]
    MissingEnv {
        path: String,
        line: usize,
        var: String,
    },
    #[error("{path}:{line}: unterminated ${{...}}")]
    BadInterpolation { path: String, line: usize },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

/// A `${VAR}` that was not set, read as a placeholder by
/// [`Config::load_offline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    pub path: String,
    /// The first line naming it.
    pub line: usize,
    pub var: String,
}

impl fmt::Display for Unset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: ${{{}}} is not set; checked with a placeholder (`walbust run` and `check --db` need it set)",
            self.path, self.line, self.var
        )
    }
}

impl Config {
    /// Reads, interpolates, parses and validates a configuration file.
    /// Every `${VAR}` must be set.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let raw = read(path)?;
        Config::from_file_text(path, &raw, |v| std::env::var(v).ok())
    }

    /// Like [`load`](Self::load) for checks that connect to nothing (`walbust
    /// check` without `--db`, `walbust explain --config`), so that CI can
    /// validate a file without production secrets: an unset `${VAR}` reads
    /// as its own name and is returned instead of refused.
    pub fn load_offline(path: &Path) -> Result<(Config, Vec<Unset>), ConfigError> {
        let raw = read(path)?;
        let unset = std::cell::RefCell::new(Vec::<String>::new());
        let cfg = Config::from_file_text(path, &raw, |v| {
            std::env::var(v).ok().or_else(|| {
                let mut unset = unset.borrow_mut();
                if !unset.iter().any(|u| u == v) {
                    unset.push(v.to_owned());
                }
                Some(v.to_owned())
            })
        })?;
        let unset = unset
            .into_inner()
            .into_iter()
            .map(|var| Unset {
                path: path.display().to_string(),
                line: raw
                    .lines()
                    .position(|l| l.contains(&format!("${{{var}}}")))
                    .map_or(0, |i| i + 1),
                var,
            })
            .collect();
        Ok((cfg, unset))
    }

    /// The file's text parsed and validated; relative rules paths resolved
    /// against the file's folder.
    fn from_file_text(
        path: &Path,
        raw: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::parse(raw, &path.display().to_string(), env)?;
        if cfg.rules.is_relative() {
            if let Some(dir) = path.parent() {
                cfg.rules = dir.join(&cfg.rules);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates configuration text; `env` resolves `${VAR}`.
    pub fn parse(
        raw: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = interpolate(raw, origin, env)?;
        let cfg: Config = serde_saphyr::from_str(&text).map_err(|e| {
            let (at, message) = walbust_rules::yaml_error_line(&e);
            ConfigError::Parse {
                path: if at.line > 0 {
                    format!("{origin}:{}:{}", at.line, at.column)
                } else {
                    origin.to_string()
                },
                message,
            }
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks every value without I/O; the first problem is returned,
    /// named by its field path.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            message,
        };
        let url = self.source.url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "source.url",
                "not a postgres:// or postgresql:// URL".into(),
            ));
        }
        walbust_cdc::ConnParams::from_url(url)
            .map_err(|e| invalid("source.url", strip_field(&e.to_string())))?;
        check_name(&self.source.publication).map_err(|m| invalid("source.publication", m))?;
        check_slot_name(&self.source.slot).map_err(|m| invalid("source.slot", m))?;
        if self.source.status_interval_ms == 0 {
            return Err(invalid(
                "source.status_interval_ms",
                "must be at least 1".into(),
            ));
        }
        self.validate_replicas(&invalid)?;
        if self.rules.as_os_str().is_empty() {
            return Err(invalid("rules", "must name the rules file".into()));
        }
        if self.sinks.redis.is_none() && self.sinks.kafka.is_none() && self.sinks.discard.is_none()
        {
            return Err(invalid(
                "sinks",
                "no sink configured: add sinks.redis, sinks.kafka or both".into(),
            ));
        }
        let mut errors = Vec::new();
        if let Some(redis) = &self.sinks.redis {
            errors.extend(redis.validate().err().unwrap_or_default());
        }
        if let Some(kafka) = &self.sinks.kafka {
            errors.extend(kafka.validate().err().unwrap_or_default());
        }
        errors.extend(self.publish.pipeline().validate().err().unwrap_or_default());
        if let Some(first) = errors.into_iter().next() {
            return Err(invalid(&first.path, first.message));
        }
        if let Some(listen) = &self.metrics.listen {
            listen.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    "not a host:port socket address (for example 127.0.0.1:9187)".into(),
                )
            })?;
        }
        Ok(())
    }

    /// `source.replicas` and `source.replica_wait_max_ms`.
    fn validate_replicas(
        &self,
        invalid: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let mut names: Vec<String> = Vec::new();
        for (i, replica) in self.source.replicas.iter().enumerate() {
            let field = |f: &str| format!("source.replicas[{i}].{f}");
            let url = replica.url.trim();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    &field("url"),
                    "not a postgres:// or postgresql:// URL".into(),
                ));
            }
            walbust_cdc::ConnParams::from_url(url)
                .map_err(|e| invalid(&field("url"), strip_field(&e.to_string())))?;
            let name = replica.name();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(invalid(
                    &field("name"),
                    "must be 1 to 128 printable characters".into(),
                ));
            }
            if names.contains(&name) {
                return Err(invalid(
                    &field("name"),
                    format!("{name:?} names another replica too: give each a distinct name"),
                ));
            }
            names.push(name);
        }
        if self.source.replica_wait_max_ms == 0 {
            return Err(invalid(
                "source.replica_wait_max_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The replicas as the gate takes them.
    pub fn replica_specs(&self) -> Vec<walbust_cdc::ReplicaSpec> {
        self.source
            .replicas
            .iter()
            .map(|r| walbust_cdc::ReplicaSpec {
                name: r.name(),
                url: r.url.clone(),
            })
            .collect()
    }

    pub fn replica_wait_max(&self) -> Duration {
        Duration::from_millis(self.source.replica_wait_max_ms)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.source.status_interval_ms)
    }
}

/// Replaces `${VAR}` with the variable's value; `$${` stays a literal `${`.
/// Works on the raw text so that line numbers in later errors still match
/// the file.
pub fn interpolate(
    raw: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(raw.len());
    for (index, line) in raw.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes().get(pos - 1) == Some(&b'$') {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after.find('}').ok_or(ConfigError::BadInterpolation {
                path: origin.to_string(),
                line: line_no,
            })?;
            let var = &after[..end];
            let value = env(var).ok_or_else(|| ConfigError::MissingEnv {
                path: origin.to_string(),
                line: line_no,
                var: var.to_string(),
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn strip_field(s: &str) -> String {
    s.strip_prefix("source.url: ").unwrap_or(s).to_string()
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err("longer than 63 bytes, Postgres's limit for names".into());
    }
    Ok(())
}

fn check_slot_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(
            "slot names may contain only lower case letters, digits and underscores".into(),
        );
    }
    Ok(())
}

/// Writes a configuration file for local services (used by `walbust demo`
/// and the tests).
pub fn render(
    source_url: &str,
    publication: &str,
    slot: &str,
    rules: &Path,
    redis_url: Option<&str>,
    kafka: Option<(&str, &str)>,
    extra_kafka_properties: &BTreeMap<String, String>,
) -> String {
    let mut s = format!(
        "source:\n  url: \"{source_url}\"\n  publication: {publication}\n  slot: {slot}\n  create: true\nrules: \"{}\"\nsinks:\n",
        rules.display()
    );
    if let Some(url) = redis_url {
        s.push_str(&format!("  redis:\n    url: \"{url}\"\n"));
    }
    if let Some((brokers, topic)) = kafka {
        s.push_str(&format!(
            "  kafka:\n    brokers: \"{brokers}\"\n    topic: {topic}\n"
        ));
        if !extra_kafka_properties.is_empty() {
            s.push_str("    properties:\n");
            for (k, v) in extra_kafka_properties {
                s.push_str(&format!("      {k}: \"{v}\"\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
source:
  url: postgres://walbust:${PGPASS}@127.0.0.1:5432/shop
  publication: walbust
  slot: walbust
rules: rules.yaml
sinks:
  redis:
    url: redis://127.0.0.1:6379
  kafka:
    brokers: 127.0.0.1:9092
    topic: cache-invalidations
    properties:
      linger.ms: "5"
metrics:
  listen: 127.0.0.1:9187
"#;

    fn env(v: &str) -> Option<String> {
        (v == "PGPASS").then(|| "s3cret".to_string())
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "walbust.yaml", env)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_complete_file_loads_with_interpolation() {
        let cfg = Config::parse(GOOD, "walbust.yaml", env).unwrap();
        assert!(cfg.source.url.contains("s3cret"));
        assert!(!cfg.source.create);
        assert!(!cfg.source.binary, "binary mode is off by default");
        assert_eq!(
            cfg.sinks.kafka.as_ref().unwrap().topic,
            "cache-invalidations"
        );
        assert_eq!(
            cfg.sinks
                .kafka
                .as_ref()
                .unwrap()
                .properties
                .get("linger.ms")
                .map(String::as_str),
            Some("5")
        );
        assert_eq!(cfg.metrics.listen.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(cfg.status_interval(), Duration::from_secs(1));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn binary_mode_is_read() {
        let text = GOOD.replace("  slot: walbust\n", "  slot: walbust\n  binary: true\n");
        let cfg = Config::parse(&text, "walbust.yaml", env).unwrap();
        assert!(cfg.source.binary);
    }

    #[test]
    fn a_missing_variable_names_it_and_the_line() {
        let text = GOOD.replace("${PGPASS}", "${NOPE}");
        assert_eq!(
            error_of(&text),
            "walbust.yaml:3: ${NOPE} is not set in the environment"
        );
    }

    #[test]
    fn double_dollar_escapes_interpolation() {
        let out = interpolate("a: $${HOME}\n", "f", |_| None).unwrap();
        assert_eq!(out, "a: ${HOME}\n");
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = GOOD.replace("  slot: walbust\n", "");
        let msg = error_of(&text);
        assert!(msg.starts_with("walbust.yaml:"), "{msg}");
        assert!(msg.contains("missing field `slot`"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_position() {
        let text = GOOD.replace("  slot: walbust\n", "  slot: walbust\n  slott: x\n");
        let msg = error_of(&text);
        assert!(msg.contains("slott"), "{msg}");
    }

    #[test]
    fn wrong_url_schemes_are_named() {
        let text = GOOD.replace("postgres://walbust", "mysql://walbust");
        assert_eq!(
            error_of(&text),
            "walbust.yaml: source.url: not a postgres:// or postgresql:// URL"
        );
        let text = GOOD.replace("redis://127.0.0.1:6379", "http://127.0.0.1:6379");
        let msg = error_of(&text);
        assert!(msg.starts_with("walbust.yaml: sinks.redis.url: "), "{msg}");
    }

    #[test]
    fn at_least_one_sink_is_required() {
        let text = r#"
source: { url: "postgres://a@b/c", publication: p, slot: s }
rules: r.yaml
sinks: {}
"#;
        assert_eq!(
            error_of(text),
            "walbust.yaml: sinks: no sink configured: add sinks.redis, sinks.kafka or both"
        );
    }

    #[test]
    fn the_benchmark_discard_sink_counts_as_a_sink() {
        let text = r#"
source: { url: "postgres://a@b/c", publication: p, slot: s }
rules: r.yaml
sinks: { discard: {} }
"#;
        let cfg = Config::parse(text, "walbust.yaml", |_| None).unwrap();
        assert!(cfg.sinks.discard.is_some());
        let text = text.replace("discard: {}", "discard: { x: 1 }");
        assert!(error_of(&text).contains('x'));
    }

    #[test]
    fn replicas_are_read_named_and_validated() {
        let with = |replicas: &str| {
            GOOD.replace("  slot: walbust\n", &format!("  slot: walbust\n{replicas}"))
        };
        let cfg = Config::parse(GOOD, "walbust.yaml", env).unwrap();
        assert!(cfg.source.replicas.is_empty());
        assert_eq!(cfg.replica_wait_max(), Duration::from_secs(30));

        let text = with(
            "  replicas:\n    - url: postgres://app:${PGPASS}@replica-1:5433/shop\n    - {url: \"postgres://app@10.0.0.2/shop\", name: east}\n  replica_wait_max_ms: 1500\n",
        );
        let cfg = Config::parse(&text, "walbust.yaml", env).unwrap();
        let specs = cfg.replica_specs();
        assert_eq!(
            specs[0].name, "replica-1:5433",
            "host:port, never the password"
        );
        assert_eq!(specs[1].name, "east");
        assert_eq!(cfg.replica_wait_max(), Duration::from_millis(1500));
        assert!(!format!("{cfg:?}").contains("s3cret"));

        assert_eq!(
            error_of(&with("  replicas: [{url: \"mysql://r/shop\"}]\n")),
            "walbust.yaml: source.replicas[0].url: not a postgres:// or postgresql:// URL"
        );
        assert!(error_of(&with(
            "  replicas: [{url: \"postgres://r/shop?sslmode=nope\"}]\n"
        ))
        .starts_with("walbust.yaml: source.replicas[0].url: "));
        assert_eq!(
            error_of(&with(
                "  replicas: [{url: \"postgres://r:5432/a\"}, {url: \"postgres://u@r:5432/b\"}]\n"
            )),
            "walbust.yaml: source.replicas[1].name: \"r:5432\" names another replica too: give each a distinct name"
        );
        assert_eq!(
            error_of(&with(
                "  replicas: [{url: \"postgres://r/a\", name: \"\"}]\n"
            )),
            "walbust.yaml: source.replicas[0].name: must be 1 to 128 printable characters"
        );
        assert_eq!(
            error_of(&with("  replica_wait_max_ms: 0\n")),
            "walbust.yaml: source.replica_wait_max_ms: must be at least 1"
        );
        let msg = error_of(&with("  replicas: [{url: \"postgres://r/a\", nam: x}]\n"));
        assert!(msg.contains("nam"), "{msg}");
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        let text = GOOD.replace("slot: walbust", "slot: Wal-Bust");
        assert!(error_of(&text).starts_with("walbust.yaml: source.slot: "));
    }

    #[test]
    fn metrics_listen_must_be_an_address() {
        let text = GOOD.replace("127.0.0.1:9187", "localhost");
        assert!(error_of(&text).starts_with("walbust.yaml: metrics.listen: "));
    }

    /// The YAML block of the README's "Configuration" section.
    fn readme_configuration() -> String {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split_once("\n## Configuration\n")
            .expect("a Configuration section")
            .1;
        let block = section.split_once("```yaml\n").expect("a yaml block").1;
        block
            .split_once("```")
            .expect("the block's end")
            .0
            .to_owned()
    }

    #[test]
    fn the_readme_configuration_states_the_defaults() {
        let readme = Config::parse(&readme_configuration(), "README.md", |v| Some(v.into()))
            .expect("the README's configuration loads");
        // The same file with nothing but what is required: every default.
        let minimal = Config::parse(
            "source: {url: \"postgres://walbust@db/shop\", publication: walbust, slot: walbust}\n\
             rules: rules.yaml\n\
             sinks: {redis: {url: \"redis://cache\"}, kafka: {brokers: k, topic: t}}\n",
            "minimal.yaml",
            |_| None,
        )
        .unwrap();

        let (s, d) = (&readme.source, &minimal.source);
        assert_eq!(s.create, d.create, "source.create");
        assert_eq!(s.status_interval_ms, d.status_interval_ms);
        assert_eq!(s.application_name, d.application_name);
        assert_eq!(s.binary, d.binary, "source.binary");
        assert_eq!(s.heartbeat_interval_ms, d.heartbeat_interval_ms);
        assert_eq!(s.on_gap, d.on_gap, "source.on_gap");
        assert_eq!(s.replica_wait_max_ms, d.replica_wait_max_ms);

        let redis = readme.sinks.redis.as_ref().unwrap();
        let default = RedisSinkConfig::new(redis.url.clone());
        assert_eq!(redis.tag_prefix(), default.tag_prefix(), "tag_prefix");
        let without_prefix = RedisSinkConfig {
            tag_prefix: None,
            ..redis.clone()
        };
        assert_eq!(without_prefix, default, "sinks.redis defaults");

        let kafka = readme.sinks.kafka.as_ref().unwrap();
        let default = minimal.sinks.kafka.as_ref().unwrap();
        assert_eq!(kafka.max_record_bytes, default.max_record_bytes);
        assert_eq!(kafka.key, default.key);

        assert_eq!(readme.publish, minimal.publish, "publish defaults");
    }

    #[test]
    fn rendered_configs_load() {
        let text = render(
            "postgres://walbust:pw@127.0.0.1:5432/postgres",
            "walbust",
            "walbust",
            Path::new("/tmp/rules.yaml"),
            Some("redis://127.0.0.1:6379"),
            Some(("127.0.0.1:9092", "inv")),
            &BTreeMap::new(),
        );
        let cfg = Config::parse(&text, "demo.yaml", |_| None).unwrap();
        assert!(cfg.source.create);
        assert!(cfg.sinks.redis.is_some() && cfg.sinks.kafka.is_some());
    }
}
