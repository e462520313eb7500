//! Configuration of the Redis sink.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;

use crate::config::{ConfigError, Errors};

/// Configuration path prefix used in [`RedisSinkConfig::validate`] errors.
pub const CONFIG_PATH: &str = "sinks.redis";
/// Default for [`RedisSinkConfig::unlink_chunk`].
pub const DEFAULT_UNLINK_CHUNK: usize = 500;
/// Default for [`RedisSinkConfig::scan_count`].
pub const DEFAULT_SCAN_COUNT: usize = 1000;
/// Default tag prefix for [`TagStrategy::Set`].
pub const DEFAULT_SET_TAG_PREFIX: &str = "tag:";
/// Default tag prefix for [`TagStrategy::Version`]. Different from the `set` one, so switching
/// strategies never meets a key of the other type.
pub const DEFAULT_VERSION_TAG_PREFIX: &str = "tagver:";
/// Default prefix of the counters of [`PatternStrategy::Version`].
pub const DEFAULT_PATTERN_PREFIX: &str = "patver:";
/// Default for [`RedisSinkConfig::connect_timeout_ms`].
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default for [`RedisSinkConfig::response_timeout_ms`].
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 10_000;
/// Default [`RedisSinkConfig::wait_timeout_ms`].
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1_000;
/// Default for [`RedisSinkConfig::lease_ttl_ms`].
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;
/// Default [`RedisSinkConfig::schedule_horizon_days`]: a little over a year.
pub const DEFAULT_SCHEDULE_HORIZON_DAYS: u32 = 400;
/// Default [`RedisSinkConfig::refresh_stream_maxlen`].
pub const DEFAULT_REFRESH_STREAM_MAXLEN: u64 = 100_000;

/// How tags are purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagStrategy {
    /// The application adds each cached key to the Redis set `<tag_prefix><tag>` (`SADD`);
    /// purging deletes the members and the set in one atomic script.
    ///
    /// In Redis Cluster the script runs on the node of the set, so every member must hash to
    /// the set's slot: put a hash tag in the tag and in its members' keys. With the tag
    /// `{user:7}` (rule template `"{{user:{id}}}"`), the set is `tag:{user:7}` and members
    /// such as `{user:7}:profile` live in the same slot. A member in another slot makes the
    /// purge fail with a non-retriable error (walbust stops rather than skip it).
    #[default]
    Set,
    /// The application puts the counter `<tag_prefix><tag>` into its cache keys; purging
    /// increments it (`INCR`), so old keys are never read again and expire on their own. O(1).
    Version,
}

/// How patterns are purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternStrategy {
    /// Walk the keyspace (`SCAN MATCH`) and unlink what matches. Costs the whole keyspace per
    /// walk, whatever the pattern; walks run beside the key path and one walk serves every
    /// pattern pending when it starts, so keys and tags never wait for them, but a pattern is
    /// purged (and its batch confirmed) only after a walk, seconds on millions of keys.
    #[default]
    Walk,
    /// For a pattern that is a literal prefix then one `*` (`plist:42:*`): increment the counter
    /// `<pattern_prefix><literal prefix>` (`patver:plist:42:`) that the application puts into
    /// the keys under that prefix, as for versioned tags. O(1): no walk; old keys are never read
    /// again and expire on their own. `walbust check` refuses rules whose patterns do not have
    /// that shape; a pattern without it arriving anyway is walked.
    Version,
}

/// Configuration of the Redis sink (`sinks.redis` in walbust's configuration file).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS. With
    /// [`Self::cluster`], any one node of the cluster (the others are discovered).
    pub url: String,
    /// The URL names a node of a Redis Cluster: keys are grouped by hash slot (a multi-key
    /// command stays within one slot), patterns are scanned on every primary, and the `set` tag
    /// strategy needs hash tags (see [`TagStrategy::Set`]).
    #[serde(default)]
    pub cluster: bool,
    /// How tags are purged.
    #[serde(default)]
    pub tag_strategy: TagStrategy,
    /// Prefix of the per-tag Redis key. Default: [`DEFAULT_SET_TAG_PREFIX`] for the `set`
    /// strategy, [`DEFAULT_VERSION_TAG_PREFIX`] for `version` (see [`Self::tag_prefix`]).
    #[serde(default)]
    pub tag_prefix: Option<String>,
    /// How patterns are purged: `walk` (default) or `version`.
    #[serde(default)]
    pub pattern_strategy: PatternStrategy,
    /// Prefix of the per-pattern counters of the `version` pattern strategy. Default:
    /// [`DEFAULT_PATTERN_PREFIX`].
    #[serde(default)]
    pub pattern_prefix: Option<String>,
    /// Keys per `UNLINK` command.
    #[serde(default = "default_unlink_chunk")]
    pub unlink_chunk: usize,
    /// `COUNT` hint of each `SCAN` call in pattern purges.
    #[serde(default = "default_scan_count")]
    pub scan_count: usize,
    /// When set, each batch's JSON record is `PUBLISH`ed on this channel after the purge, for
    /// client-side caches.
    #[serde(default)]
    pub publish_channel: Option<String>,
    /// Time allowed to open a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for each reply, in milliseconds.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Fenced fills: load the Redis Functions library `walbust` (`walbust_get`, `walbust_fill`,
    /// `walbust_caught_up`; see [`super::functions`]) at start, on every primary of a cluster.
    /// Needs Redis 7 or later (or Valkey) and the ACL commands `function|load` and `fcall`.
    #[serde(default)]
    pub leases: bool,
    /// How long a lease lives, in milliseconds: a caller that took one and never filled blocks
    /// other fills of the key this long at most.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// After each confirmed batch, store its end LSN in `walbust:lsn:<slot>` (never backwards),
    /// for read-your-writes (`walbust_caught_up`). Loads the library as [`Self::leases`] does.
    #[serde(default)]
    pub watermark: bool,
    /// Certificates of a `rediss://` connection: a private CA, a client certificate.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
    /// Scheduled invalidations (`at:` in rules) due later than this many days after their
    /// commit are refused (counted in `walbust_scheduled_refused_total`, never stored), so that
    /// a far-future or mistyped timestamp cannot sit in the schedule forever.
    #[serde(default = "default_schedule_horizon_days")]
    pub schedule_horizon_days: u32,
    /// Name of a Redis Stream that receives, after each batch's invalidation, the keys of rules
    /// with `refresh: true` (one entry per batch: fields `lsn` and `keys`, a JSON array), for
    /// cache warmers. Off when unset; rules with `refresh: true` then refuse to start.
    #[serde(default)]
    pub refresh_stream: Option<String>,
    /// The stream is capped near this many entries (`XADD ... MAXLEN ~`).
    #[serde(default = "default_refresh_stream_maxlen")]
    pub refresh_stream_maxlen: u64,
    /// After each batch, `WAIT` until this many replicas (of every primary, on a cluster)
    /// acknowledged its writes, so that an invalidation acknowledged to Postgres survives a
    /// Redis failover. A `WAIT` that reaches fewer within [`Self::wait_timeout_ms`] fails the
    /// batch, which is retried like any failed batch (nothing is acknowledged meanwhile). 0
    /// (the default): no `WAIT`.
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long one `WAIT` may take, in milliseconds (below `response_timeout_ms`).
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
}

/// TLS settings of a `rediss://` URL (`sinks.redis.tls`), for one Redis and every node of a
/// cluster alike. Without them, the server's certificate must chain to a public web PKI root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM file of the CA certificates trusted for the server, instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), for `tls-auth-clients yes`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accepts any server certificate: encrypted, but open to anyone in the middle. For tests
    /// only; walbust warns each time it connects so.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_unlink_chunk() -> usize {
    DEFAULT_UNLINK_CHUNK
}
fn default_scan_count() -> usize {
    DEFAULT_SCAN_COUNT
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_response_timeout_ms() -> u64 {
    DEFAULT_RESPONSE_TIMEOUT_MS
}
fn default_lease_ttl_ms() -> u64 {
    DEFAULT_LEASE_TTL_MS
}
fn default_schedule_horizon_days() -> u32 {
    DEFAULT_SCHEDULE_HORIZON_DAYS
}
fn default_refresh_stream_maxlen() -> u64 {
    DEFAULT_REFRESH_STREAM_MAXLEN
}
fn default_wait_timeout_ms() -> u64 {
    DEFAULT_WAIT_TIMEOUT_MS
}

// By hand, so the URL (which may hold a password) is never printed.
impl fmt::Debug for RedisSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSinkConfig")
            .field("url", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("tag_strategy", &self.tag_strategy)
            .field("tag_prefix", &self.tag_prefix)
            .field("pattern_strategy", &self.pattern_strategy)
            .field("pattern_prefix", &self.pattern_prefix)
            .field("unlink_chunk", &self.unlink_chunk)
            .field("scan_count", &self.scan_count)
            .field("publish_channel", &self.publish_channel)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("leases", &self.leases)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("watermark", &self.watermark)
            .field("tls", &self.tls)
            .field("schedule_horizon_days", &self.schedule_horizon_days)
            .field("refresh_stream", &self.refresh_stream)
            .field("refresh_stream_maxlen", &self.refresh_stream_maxlen)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .finish()
    }
}

impl RedisSinkConfig {
    /// A configuration with every default and the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            tag_strategy: TagStrategy::default(),
            tag_prefix: None,
            pattern_strategy: PatternStrategy::default(),
            pattern_prefix: None,
            unlink_chunk: DEFAULT_UNLINK_CHUNK,
            scan_count: DEFAULT_SCAN_COUNT,
            publish_channel: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            response_timeout_ms: DEFAULT_RESPONSE_TIMEOUT_MS,
            leases: false,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            watermark: false,
            tls: None,
            schedule_horizon_days: DEFAULT_SCHEDULE_HORIZON_DAYS,
            refresh_stream: None,
            refresh_stream_maxlen: DEFAULT_REFRESH_STREAM_MAXLEN,
            wait_replicas: 0,
            wait_timeout_ms: DEFAULT_WAIT_TIMEOUT_MS,
        }
    }

    /// Whether walbust loads the functions library (leases or the watermark are on).
    pub fn functions(&self) -> bool {
        self.leases || self.watermark
    }

    /// The functions library for this configuration (see [`super::functions::library`]).
    pub fn library(&self) -> String {
        super::functions::library(self.lease_ttl_ms, self.tag_strategy)
    }

    /// The tag prefix in effect: the configured one, or the strategy's default.
    pub fn tag_prefix(&self) -> &str {
        match (&self.tag_prefix, self.tag_strategy) {
            (Some(prefix), _) => prefix,
            (None, TagStrategy::Set) => DEFAULT_SET_TAG_PREFIX,
            (None, TagStrategy::Version) => DEFAULT_VERSION_TAG_PREFIX,
        }
    }

    /// The prefix of versioned patterns' counters in effect.
    pub fn pattern_prefix(&self) -> &str {
        self.pattern_prefix
            .as_deref()
            .unwrap_or(DEFAULT_PATTERN_PREFIX)
    }

    /// [`Self::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`Self::response_timeout_ms`] as a duration.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Checks the values without I/O; errors name fields under `sinks.redis.`.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Errors::new(CONFIG_PATH);
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme));
        if !scheme_ok {
            errors.push("url", "not a redis:// or rediss:// URL");
        } else if let Err(err) = self.url.as_str().into_connection_info() {
            // The parser's message, never the URL itself (it may hold a password).
            errors.push(
                "url",
                format_args!("invalid Redis URL ({})", err.category()),
            );
        }
        if self.cluster
            && !["redis://", "rediss://"]
                .iter()
                .any(|s| self.url.starts_with(s))
        {
            errors.push(
                "url",
                "a Redis Cluster is reached over TCP: use redis:// or rediss://",
            );
        }
        if let Some(tls) = &self.tls {
            errors.check(
                self.url.starts_with("rediss://"),
                "tls",
                "applies to TLS connections: use a rediss:// URL",
            );
            errors.check(
                tls.cert_file.is_some() == tls.key_file.is_some(),
                "tls",
                "cert_file and key_file go together: give both or neither",
            );
        }
        errors.check(
            self.pattern_prefix.as_ref().is_none_or(|p| !p.is_empty()),
            "pattern_prefix",
            "must not be empty (counters would mix with cache keys)",
        );
        errors.check(self.unlink_chunk > 0, "unlink_chunk", "must be at least 1");
        errors.check(
            self.wait_replicas == 0
                || (self.wait_timeout_ms > 0 && self.wait_timeout_ms < self.response_timeout_ms),
            "wait_timeout_ms",
            "must be above 0 and below response_timeout_ms (a WAIT longer than the reply timeout would be cut off)",
        );
        errors.check(
            self.schedule_horizon_days > 0,
            "schedule_horizon_days",
            "must be at least 1",
        );
        errors.check(
            self.refresh_stream.as_ref().is_none_or(|c| !c.is_empty()),
            "refresh_stream",
            "must not be empty (leave it out to turn the refresh stream off)",
        );
        errors.check(
            self.refresh_stream_maxlen > 0,
            "refresh_stream_maxlen",
            "must be at least 1",
        );
        errors.check(self.scan_count > 0, "scan_count", "must be at least 1");
        errors.check(
            self.publish_channel.as_ref().is_none_or(|c| !c.is_empty()),
            "publish_channel",
            "must not be empty (leave it out to disable publishing)",
        );
        errors.check(
            self.connect_timeout_ms > 0,
            "connect_timeout_ms",
            "must be at least 1",
        );
        errors.check(
            self.response_timeout_ms > 0,
            "response_timeout_ms",
            "must be at least 1",
        );
        errors.check(self.lease_ttl_ms > 0, "lease_ttl_ms", "must be at least 1");
        errors.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(cfg: &RedisSinkConfig) -> Vec<String> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_from_a_minimal_document() {
        let cfg: RedisSinkConfig =
            serde_json::from_str(r#"{"url":"redis://127.0.0.1:6379/0"}"#).unwrap();
        assert_eq!(cfg, RedisSinkConfig::new("redis://127.0.0.1:6379/0"));
        assert_eq!(cfg.tag_strategy, TagStrategy::Set);
        assert_eq!(cfg.tag_prefix(), "tag:");
        assert_eq!(cfg.unlink_chunk, 500);
        assert_eq!(cfg.scan_count, 1000);
        assert!(!cfg.leases && !cfg.watermark && !cfg.functions());
        assert_eq!(cfg.lease_ttl_ms, 10_000);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn version_strategy_has_its_own_prefix() {
        let cfg: RedisSinkConfig =
            serde_json::from_str(r#"{"url":"redis://h","tag_strategy":"version"}"#).unwrap();
        assert_eq!(cfg.tag_prefix(), "tagver:");
        let cfg: RedisSinkConfig = serde_json::from_str(
            r#"{"url":"redis://h","tag_strategy":"version","tag_prefix":"v:"}"#,
        )
        .unwrap();
        assert_eq!(cfg.tag_prefix(), "v:");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<RedisSinkConfig>(r#"{"url":"redis://h","unlnk":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `unlnk`"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let mut cfg = RedisSinkConfig::new("http://user:secret@h");
        cfg.unlink_chunk = 0;
        cfg.scan_count = 0;
        cfg.publish_channel = Some(String::new());
        cfg.response_timeout_ms = 0;
        cfg.lease_ttl_ms = 0;
        assert_eq!(
            messages(&cfg),
            [
                "sinks.redis.url: not a redis:// or rediss:// URL",
                "sinks.redis.unlink_chunk: must be at least 1",
                "sinks.redis.scan_count: must be at least 1",
                "sinks.redis.publish_channel: must not be empty (leave it out to disable publishing)",
                "sinks.redis.response_timeout_ms: must be at least 1",
                "sinks.redis.lease_ttl_ms: must be at least 1",
            ]
        );
    }

    #[test]
    fn a_malformed_url_is_reported_without_its_secret() {
        let cfg = RedisSinkConfig::new("redis://user:secret@host:notaport");
        let found = messages(&cfg);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("sinks.redis.url: invalid Redis URL"),
            "{found:?}"
        );
        assert!(!found[0].contains("secret"));
    }

    #[test]
    fn debug_hides_the_url() {
        let cfg = RedisSinkConfig::new("redis://user:secret@host");
        let text = format!("{cfg:?}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn cluster_needs_a_tcp_url() {
        let cfg: RedisSinkConfig =
            serde_json::from_str(r#"{"url":"redis://h:7000","cluster":true}"#).unwrap();
        assert!(cfg.cluster);
        assert_eq!(cfg.validate(), Ok(()));
        let mut cfg = RedisSinkConfig::new("unix:///tmp/r.sock");
        cfg.cluster = true;
        assert_eq!(
            messages(&cfg),
            ["sinks.redis.url: a Redis Cluster is reached over TCP: use redis:// or rediss://"]
        );
    }

    #[test]
    fn tls_settings_need_a_tls_url_and_a_whole_client_certificate() {
        let mut cfg: RedisSinkConfig = serde_json::from_str(
            r#"{"url":"redis://h","tls":{"ca_file":"/ca.pem","cert_file":"/c.pem"}}"#,
        )
        .unwrap();
        assert_eq!(
            messages(&cfg),
            [
                "sinks.redis.tls: applies to TLS connections: use a rediss:// URL",
                "sinks.redis.tls: cert_file and key_file go together: give both or neither",
            ]
        );
        cfg.url = "rediss://h".into();
        cfg.tls.as_mut().unwrap().key_file = Some("/k.pem".into());
        assert_eq!(cfg.validate(), Ok(()));
        let err =
            serde_json::from_str::<RedisSinkConfig>(r#"{"url":"rediss://h","tls":{"ca":"x"}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `ca`"), "{err}");
    }

    #[test]
    fn tls_and_unix_urls_are_accepted() {
        for url in [
            "rediss://h:6380",
            "redis+unix:///tmp/redis.sock",
            "unix:///tmp/r.sock",
        ] {
            assert_eq!(
                messages(&RedisSinkConfig::new(url)),
                Vec::<String>::new(),
                "{url}"
            );
        }
    }
}
