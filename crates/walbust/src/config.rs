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
use walbust_publish::http_sink::HttpSinkConfig;
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
    #[serde(default)]
    pub explicit: ExplicitConfig,
}

/// `explicit`: which explicit invalidation messages
/// (`pg_logical_emit_message(true, 'walbust', ...)`) walbust accepts. Any
/// role that can connect may send one, so by default a message cannot
/// empty the whole cache and its size is bounded; a refused message is
/// logged and counted (`walbust_explicit_messages_total{result}`), never
/// fatal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplicitConfig {
    pub enabled: bool,
    pub max_bytes: usize,
    pub max_entries: usize,
    pub allow_flush_all: bool,
}

impl Default for ExplicitConfig {
    fn default() -> Self {
        let policy = walbust_rules::ExplicitPolicy::default();
        Self {
            enabled: policy.enabled,
            max_bytes: policy.max_bytes,
            max_entries: policy.max_entries,
            allow_flush_all: policy.allow_flush_all,
        }
    }
}

impl ExplicitConfig {
    pub fn policy(&self) -> walbust_rules::ExplicitPolicy {
        walbust_rules::ExplicitPolicy {
            enabled: self.enabled,
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            allow_flush_all: self.allow_flush_all,
        }
    }
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
    /// Create the slot as a failover slot (`failover => true`, Postgres 17
    /// and later), and make an existing one so: a standby with
    /// `sync_replication_slots = on` keeps a copy, so that a promotion
    /// keeps walbust's position. Refused on older servers.
    #[serde(default)]
    pub failover: bool,
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
            ..Default::default()
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
    /// `sinks.http`: purges by surrogate key (Varnish xkey, Fastly) or a signed webhook.
    pub http: Option<HttpSinkConfig>,
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
    #[error("{path}:{line}: ${{file:{file}}}: cannot read the secret file: {reason}")]
    SecretFile {
        path: String,
        line: usize,
        file: String,
        reason: String,
    },
    #[error("{path}:{line}: the value of ${{{name}}} {problem}; put the placeholder inside a double-quoted string")]
    Unquotable {
        path: String,
        line: usize,
        name: String,
        problem: &'static str,
    },
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
        Config::from_file_text(path, &raw, |name| lookup(path, name))
    }

    /// Like [`load`](Self::load) for checks that connect to nothing (`walbust
    /// check` without `--db`, `walbust explain --config`), so that CI can
    /// validate a file without production secrets: an unset `${VAR}` reads
    /// as its own name and is returned instead of refused.
    pub fn load_offline(path: &Path) -> Result<(Config, Vec<Unset>), ConfigError> {
        let raw = read(path)?;
        let unset = std::cell::RefCell::new(Vec::<String>::new());
        let cfg = Config::from_file_text(path, &raw, |name| {
            Ok(lookup(path, name).ok().flatten().or_else(|| {
                let mut unset = unset.borrow_mut();
                if !unset.iter().any(|u| u == name) {
                    unset.push(name.to_owned());
                }
                Some(name.trim_start_matches("file:").to_owned())
            }))
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
        lookup: impl Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::parse_with(raw, &path.display().to_string(), lookup)?;
        if cfg.rules.is_relative() {
            if let Some(dir) = path.parent() {
                cfg.rules = dir.join(&cfg.rules);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates configuration text; `env` resolves `${VAR}`.
    #[cfg(test)]
    pub fn parse(
        raw: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(raw, origin, |name| Ok(env(name)))
    }

    /// [`parse`](Self::parse) with `lookup` resolving what is inside each
    /// `${...}` (`VAR` or `file:PATH`): `Ok(None)` when unset, `Err` with
    /// the reason a secret file cannot be read. No error this returns
    /// holds an interpolated value: they are replaced by `***`.
    pub fn parse_with(
        raw: &str,
        origin: &str,
        lookup: impl Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<Config, ConfigError> {
        let Interpolated { text, values } = interpolate(raw, origin, lookup)?;
        Config::parse_interpolated(&text, origin).map_err(|e| redact_values(e, &values))
    }

    fn parse_interpolated(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = serde_saphyr::from_str(text).map_err(|e| {
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
        if self.sinks.redis.is_none()
            && self.sinks.kafka.is_none()
            && self.sinks.http.is_none()
            && self.sinks.discard.is_none()
        {
            return Err(invalid(
                "sinks",
                "no sink configured: add sinks.redis, sinks.kafka, sinks.http or several".into(),
            ));
        }
        let mut errors = Vec::new();
        if let Some(redis) = &self.sinks.redis {
            errors.extend(redis.validate().err().unwrap_or_default());
        }
        if let Some(kafka) = &self.sinks.kafka {
            errors.extend(kafka.validate().err().unwrap_or_default());
        }
        if let Some(http) = &self.sinks.http {
            errors.extend(http.validate().err().unwrap_or_default());
        }
        errors.extend(self.publish.pipeline().validate().err().unwrap_or_default());
        if let Some(first) = errors.into_iter().next() {
            return Err(invalid(&first.path, first.message));
        }
        if self.explicit.max_bytes == 0 {
            return Err(invalid("explicit.max_bytes", "must be at least 1".into()));
        }
        if self.explicit.max_entries == 0 {
            return Err(invalid("explicit.max_entries", "must be at least 1".into()));
        }
        if self.sinks.redis.as_ref().is_some_and(|r| r.watermark) && self.publish.max_in_flight > 1
        {
            // Batches confirmed out of order would raise the watermark past one still in flight.
            return Err(invalid(
                "sinks.redis.watermark",
                "needs publish.max_in_flight: 1 (batches applied in order)".into(),
            ));
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

/// Resolves what is inside a `${...}` of the file at `config`: `VAR` from
/// the environment, `file:PATH` from a file (relative paths from the
/// configuration's folder; one trailing newline removed), as Kubernetes and
/// Docker mount secrets.
fn lookup(config: &Path, name: &str) -> Result<Option<String>, String> {
    let Some(file) = name.strip_prefix("file:") else {
        return Ok(std::env::var(name).ok());
    };
    let file = Path::new(file);
    let file = match config.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_owned(),
    };
    let mut value = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(Some(value))
}

/// The text after interpolation, and every value put in.
pub struct Interpolated {
    pub text: String,
    pub values: Vec<String>,
}

/// Replaces each `${...}` with what `lookup` finds for it (`$${` stays a
/// literal `${`; comments are left alone). A value cannot change the
/// YAML: inside a double-quoted string it is escaped, inside a
/// single-quoted one its quotes are doubled, and in a plain scalar a value
/// YAML would read as syntax (`: `, ` #`, quotes, brackets, a leading `*`
/// or `&`, a line break, nothing at all) turns the whole scalar into a
/// double-quoted string. Works line by line on the raw text so that line
/// numbers in later errors still match the file.
pub fn interpolate(
    raw: &str,
    origin: &str,
    lookup: impl Fn(&str) -> Result<Option<String>, String>,
) -> Result<Interpolated, ConfigError> {
    let mut text = String::with_capacity(raw.len());
    let mut values = Vec::new();
    for (index, line) in raw.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let resolve = |name: &str| -> Result<String, ConfigError> {
            match lookup(name) {
                Ok(Some(value)) => Ok(value),
                Ok(None) => Err(ConfigError::MissingEnv {
                    path: origin.to_string(),
                    line: line_no,
                    var: name.to_string(),
                }),
                Err(reason) => Err(ConfigError::SecretFile {
                    path: origin.to_string(),
                    line: line_no,
                    file: name.trim_start_matches("file:").to_string(),
                    reason,
                }),
            }
        };
        text.push_str(&interpolate_line(
            body,
            origin,
            line_no,
            resolve,
            &mut values,
        )?);
        text.push_str(newline);
    }
    Ok(Interpolated { text, values })
}

/// Where a `${...}` stands in a line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Plain,
    Single,
    Double,
}

fn interpolate_line(
    line: &str,
    origin: &str,
    line_no: usize,
    resolve: impl Fn(&str) -> Result<String, ConfigError>,
    values: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(line.len());
    // Start (in `out`) of the plain scalar being written, once known to
    // need quoting: the whole scalar is re-quoted at the end.
    let mut requote: Option<usize> = None;
    let mut plain_start: Option<usize> = None;
    let mut quoting = Quoting::Plain;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let c = rest.chars().next().unwrap_or_default();
        match quoting {
            Quoting::Plain => {
                if c == '#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
                    // A comment: the rest of the line, untouched.
                    break;
                }
                if rest.starts_with("$${") {
                    out.push_str("${");
                    i += 3;
                    continue;
                }
                if c == '"' && plain_start.is_none() {
                    quoting = Quoting::Double;
                } else if c == '\'' && plain_start.is_none() {
                    quoting = Quoting::Single;
                } else if rest.starts_with("${") {
                    let (name, len) = placeholder(rest, origin, line_no)?;
                    let value = resolve(name)?;
                    let start = plain_start.unwrap_or(out.len());
                    plain_start = Some(start);
                    if let Some(problem) = plain_problem(&value) {
                        if !scalar_is_requotable(&out[..start]) {
                            return Err(ConfigError::Unquotable {
                                path: origin.to_string(),
                                line: line_no,
                                name: name.to_string(),
                                problem,
                            });
                        }
                        requote.get_or_insert(start);
                    }
                    out.push_str(&value);
                    values.push(value);
                    i += len;
                    continue;
                } else if c == ' ' || c == '\t' {
                    // A plain scalar ends where a mapping value starts.
                    if out.ends_with(':') || out.trim_end().ends_with(['-', ':']) {
                        plain_start = None;
                    }
                } else if plain_start.is_none() && !matches!(c, '[' | ']' | '{' | '}' | ',') {
                    plain_start = Some(out.len());
                } else if matches!(c, ',' | '[' | ']' | '{' | '}') {
                    plain_start = None;
                }
                out.push(c);
                i += c.len_utf8();
                if c == ':' && (i == line.len() || line[i..].starts_with([' ', '\t'])) {
                    plain_start = None;
                }
            }
            Quoting::Double => {
                if c == '\\' {
                    let next = line[i + 1..].chars().next().map_or(0, char::len_utf8);
                    out.push_str(&line[i..i + 1 + next]);
                    i += 1 + next;
                    continue;
                }
                let escape = |_: &str, value: &str| Ok(escape_double(value));
                if let Some((text, len)) =
                    quoted_dollar(rest, origin, line_no, &resolve, values, escape)?
                {
                    out.push_str(&text);
                    i += len;
                    continue;
                }
                if c == '"' {
                    quoting = Quoting::Plain;
                }
                out.push(c);
                i += c.len_utf8();
            }
            Quoting::Single => {
                if c == '\'' {
                    if line[i + 1..].starts_with('\'') {
                        out.push_str("\'\'");
                        i += 2;
                        continue;
                    }
                    quoting = Quoting::Plain;
                } else {
                    let escape = |name: &str, value: &str| {
                        if value.contains(['\n', '\r']) {
                            return Err(ConfigError::Unquotable {
                                path: origin.to_string(),
                                line: line_no,
                                name: name.to_string(),
                                problem: "holds a line break, which a single-quoted string folds",
                            });
                        }
                        Ok(value.replace('\'', "\'\'"))
                    };
                    if let Some((text, len)) =
                        quoted_dollar(rest, origin, line_no, &resolve, values, escape)?
                    {
                        out.push_str(&text);
                        i += len;
                        continue;
                    }
                }
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    let comment = &line[i..];
    let Some(start) = requote else {
        out.push_str(comment);
        return Ok(out);
    };
    let scalar = out[start..].trim_end().to_string();
    let trailing = out[start + scalar.len()..].to_string();
    out.truncate(start);
    out.push('"');
    out.push_str(&escape_double(&scalar));
    out.push('"');
    out.push_str(&trailing);
    out.push_str(comment);
    Ok(out)
}

/// A `$${` (a literal `${`) or a `${...}` at the start of `rest` inside a
/// quoted string: the text to write, the value escaped by `escape` for that
/// quoting, and the bytes it takes; `None` when `rest` starts with neither.
fn quoted_dollar(
    rest: &str,
    origin: &str,
    line_no: usize,
    resolve: &impl Fn(&str) -> Result<String, ConfigError>,
    values: &mut Vec<String>,
    escape: impl Fn(&str, &str) -> Result<String, ConfigError>,
) -> Result<Option<(String, usize)>, ConfigError> {
    if rest.starts_with("$${") {
        return Ok(Some(("${".to_string(), 3)));
    }
    if !rest.starts_with("${") {
        return Ok(None);
    }
    let (name, len) = placeholder(rest, origin, line_no)?;
    let value = resolve(name)?;
    let text = escape(name, &value)?;
    values.push(value);
    Ok(Some((text, len)))
}

/// The name inside a `${...}` at the start of `rest`, and the length of the
/// whole placeholder.
fn placeholder<'a>(
    rest: &'a str,
    origin: &str,
    line: usize,
) -> Result<(&'a str, usize), ConfigError> {
    let after = &rest[2..];
    let end = after.find('}').ok_or(ConfigError::BadInterpolation {
        path: origin.to_string(),
        line,
    })?;
    Ok((&after[..end], end + 3))
}

/// Why `value` cannot stand in a plain scalar as it is, if it cannot.
fn plain_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("is empty, which YAML would read as null");
    }
    if value.contains(['\n', '\r']) {
        return Some("holds a line break");
    }
    let first = value.chars().next().unwrap_or_default();
    let risky = matches!(
        first,
        '-' | '?'
            | ':'
            | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '#'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) || value.contains([' ', '\t', '#', ',', '[', ']', '{', '}', '"', '\''])
        || value.ends_with(':');
    risky.then_some("holds characters YAML reads as syntax in a plain scalar")
}

/// Whether the plain scalar that starts after `before` can be turned into a
/// double-quoted string: it is the value of a block mapping entry or a
/// block sequence item, not inside a flow collection.
fn scalar_is_requotable(before: &str) -> bool {
    let trimmed = before.trim_end();
    let block = trimmed.is_empty() || trimmed.ends_with(':') || trimmed.ends_with('-');
    block && !trimmed.contains(['[', '{'])
}

/// `value` escaped for a YAML double-quoted string (JSON's escapes are a
/// subset of YAML's).
fn escape_double(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// `error` with every interpolated value of three characters or more
/// replaced by `***`: an error about the file must not carry a secret.
fn redact_values(error: ConfigError, values: &[String]) -> ConfigError {
    let redact = |text: String| {
        values
            .iter()
            .filter(|v| v.len() >= 3)
            .fold(text, |text, v| text.replace(v.as_str(), "***"))
    };
    match error {
        ConfigError::Parse { path, message } => ConfigError::Parse {
            path,
            message: redact(message),
        },
        ConfigError::Invalid {
            path,
            field,
            message,
        } => ConfigError::Invalid {
            path,
            field,
            message: redact(message),
        },
        other => other,
    }
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
        let out = interpolate("a: $${HOME}\n", "f", |_| Ok(None)).unwrap();
        assert_eq!(out.text, "a: ${HOME}\n");
    }

    fn interpolated(text: &str, value: &str) -> String {
        interpolate(text, "f", |_| Ok(Some(value.to_string())))
            .unwrap()
            .text
    }

    #[test]
    fn interpolated_values_cannot_change_the_yaml() {
        #[derive(Deserialize)]
        struct Doc {
            a: String,
            b: Vec<String>,
        }
        let text = "a: postgres://u:${PW}@h/db  # the URL\nb:\n  - ${PW}\n  - \"x${PW}y\"\n  - 'x${PW}y'\n";
        for value in [
            "plain",
            "p#ss word",
            "a: b",
            "*anchor",
            "q\"uo'te\\",
            "",
            "[1, 2]",
            "ends:",
            "x\ny",
        ] {
            if value.contains('\n') {
                // A single-quoted string cannot hold it: refused, never folded.
                let e = interpolate(text, "f", |_| Ok(Some(value.into()))).err();
                assert!(
                    matches!(e, Some(ConfigError::Unquotable { .. })),
                    "{value:?}"
                );
                continue;
            }
            let out = interpolated(text, value);
            let doc: Doc =
                serde_saphyr::from_str(&out).unwrap_or_else(|e| panic!("{value:?}: {e}\n{out}"));
            assert_eq!(doc.a, format!("postgres://u:{value}@h/db"), "{out}");
            assert_eq!(
                doc.b,
                [
                    value.to_string(),
                    format!("x{value}y"),
                    format!("x{value}y")
                ],
                "{out}"
            );
            assert!(out.contains("# the URL"), "comment kept: {out}");
        }
        // Numbers stay numbers where nothing needs quoting.
        assert_eq!(interpolated("n: ${N}\n", "42"), "n: 42\n");
        // Comments are not interpolated: an unset variable there is fine.
        let out = interpolate("a: 1 # ${UNSET}\n# ${UNSET}\n", "f", |_| Ok(None)).unwrap();
        assert_eq!(out.text, "a: 1 # ${UNSET}\n# ${UNSET}\n");
        // In a flow collection a value that needs quoting is refused.
        let e = interpolate("b: [${PW}]\n", "f", |_| Ok(Some("a, b".into()))).err();
        assert!(matches!(e, Some(ConfigError::Unquotable { .. })));
    }

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg"), "s3:#cret\n").unwrap();
        let config = dir.path().join("walbust.yaml");
        let text = GOOD.replace("${PGPASS}", "${file:pg}");
        std::fs::write(&config, &text).unwrap();
        let cfg = Config::load(&config).unwrap();
        assert!(cfg.source.url.contains(":s3:#cret@"), "{:?}", cfg.source);
        let missing = text.replace("${file:pg}", "${file:/nonexistent/pg}");
        std::fs::write(&config, missing).unwrap();
        let e = Config::load(&config).unwrap_err().to_string();
        assert!(
            e.contains(":3: ${file:/nonexistent/pg}: cannot read the secret file"),
            "{e}"
        );
    }

    #[test]
    fn errors_never_carry_an_interpolated_value() {
        let secret = "hunter2-very-secret";
        let env = |_: &str| Some(secret.to_string());
        // A syntax error next to the password, a wrong type holding it, a
        // bad URL around it.
        for text in [
            GOOD.replace("  publication: walbust\n", "  publication: walbust: x\n"),
            GOOD.replace(
                "  slot: walbust\n",
                "  slot: walbust\n  status_interval_ms: ${PGPASS}\n",
            ),
            GOOD.replace(
                "postgres://walbust:${PGPASS}@",
                "postgres://walbust:${PGPASS}@[::1",
            ),
        ] {
            let e = Config::parse(&text, "walbust.yaml", env)
                .unwrap_err()
                .to_string();
            assert!(!e.contains(secret), "{e}");
        }
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
    fn the_watermark_needs_batches_in_order() {
        let text = r#"
source: { url: "postgres://a@b/c", publication: p, slot: s }
rules: r.yaml
sinks: { redis: { url: "redis://h", watermark: true } }
publish: { max_in_flight: 2 }
"#;
        assert_eq!(
            error_of(text),
            "walbust.yaml: sinks.redis.watermark: needs publish.max_in_flight: 1 (batches applied in order)"
        );
        let text = text.replace("max_in_flight: 2", "max_in_flight: 1");
        let cfg = Config::parse(&text, "walbust.yaml", env).unwrap();
        assert!(cfg.sinks.redis.unwrap().watermark);
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
            "walbust.yaml: sinks: no sink configured: add sinks.redis, sinks.kafka, sinks.http or several"
        );
    }

    #[test]
    fn the_http_sink_alone_is_enough_and_its_secret_is_interpolated_and_hidden() {
        let text = r#"
source: { url: "postgres://a@b/c", publication: p, slot: s }
rules: r.yaml
sinks:
  http:
    url: https://hooks.example/walbust
    format: webhook
    secret: ${HOOK_SECRET}
    headers: { X-Team: cache }
"#;
        let cfg = Config::parse(text, "walbust.yaml", |v| {
            (v == "HOOK_SECRET").then(|| "hunter2".into())
        })
        .unwrap();
        let http = cfg.sinks.http.as_ref().unwrap();
        assert_eq!(http.secret.as_deref(), Some("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));

        let unsigned = text.replace("    secret: ${HOOK_SECRET}\n", "");
        assert_eq!(
            error_of(&unsigned),
            "walbust.yaml: sinks.http.secret: required for webhook: receivers verify the signature with it"
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
        assert_eq!(
            redis.pattern_prefix(),
            default.pattern_prefix(),
            "pattern_prefix"
        );
        let without_prefix = RedisSinkConfig {
            tag_prefix: None,
            pattern_prefix: None,
            ..redis.clone()
        };
        assert_eq!(without_prefix, default, "sinks.redis defaults");

        let kafka = readme.sinks.kafka.as_ref().unwrap();
        let default = minimal.sinks.kafka.as_ref().unwrap();
        assert_eq!(kafka.max_record_bytes, default.max_record_bytes);
        assert_eq!(kafka.key, default.key);

        let http = readme.sinks.http.as_ref().unwrap();
        let default = HttpSinkConfig::new(http.url.clone(), http.format);
        assert_eq!(http.send(), default.send(), "sinks.http.send");
        let without_send = HttpSinkConfig {
            send: None,
            ..http.clone()
        };
        assert_eq!(without_send, default, "sinks.http defaults");

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
