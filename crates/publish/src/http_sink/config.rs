//! Configuration of the HTTP purge sink.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::Deserialize;

use crate::config::{ConfigError, Errors};

/// Configuration path prefix used in [`HttpSinkConfig::validate`] errors.
pub const CONFIG_PATH: &str = "sinks.http";
/// Default for [`HttpSinkConfig::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default for [`HttpSinkConfig::max_keys_per_request`]: Fastly's limit of surrogate keys per
/// batch purge.
pub const DEFAULT_MAX_KEYS_PER_REQUEST: usize = 256;
/// Default for [`HttpSinkConfig::max_header_bytes`]: well under the 8 KiB header line that
/// Varnish (`http_req_hdr_len`) and most proxies accept.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 4096;
/// Smallest accepted [`HttpSinkConfig::max_header_bytes`].
pub const MIN_MAX_HEADER_BYTES: usize = 64;
/// Default for [`HttpSinkConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Name of the header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "x-walbust-signature";

/// Headers walbust sets itself; `headers` may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "xkey",
    "surrogate-key",
    SIGNATURE_HEADER,
];

/// How a batch is put into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// `PURGE <url>` with the surrogate keys, space-separated, in an `xkey` header: Varnish
    /// with varnish-modules' vmod xkey (`xkey.purge(req.http.xkey)` in `vcl_recv`).
    VarnishXkey,
    /// `POST <url>` with the surrogate keys, space-separated, in a `Surrogate-Key` header:
    /// Fastly's batch purge by surrogate key (`headers` carries `Fastly-Key`).
    SurrogateKey,
    /// `POST <url>` with the batch's JSON record (the Kafka record, version 1) as body, signed
    /// with HMAC-SHA256 in `X-Walbust-Signature: sha256=<hex>`.
    Webhook,
}

impl HttpFormat {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VarnishXkey => "varnish_xkey",
            Self::SurrogateKey => "surrogate_key",
            Self::Webhook => "webhook",
        }
    }
}

/// Which entries of a batch become surrogate keys (`varnish_xkey`, `surrogate_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendEntries {
    /// The batch's tags (the usual surrogate keys).
    #[default]
    Tags,
    /// The batch's cache keys, for responses tagged with them.
    Keys,
    /// Tags and keys.
    Both,
}

/// Configuration of the HTTP purge sink (`sinks.http` in walbust's configuration file).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// `http://` or `https://` URL every request goes to. No user information: credentials go
    /// into [`Self::headers`].
    pub url: String,
    /// How a batch is put into requests.
    pub format: HttpFormat,
    /// Which entries become surrogate keys; default tags. Not for `webhook`, whose record
    /// carries keys, tags and patterns.
    #[serde(default)]
    pub send: Option<SendEntries>,
    /// Extra request headers (`Fastly-Key`, `Authorization`...). Values may hold credentials:
    /// they are never logged. Headers walbust sets itself cannot be replaced.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for one request, connecting included, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Surrogate keys per request (`webhook`: keys, tags and patterns per record); a larger
    /// batch becomes several requests, and it is confirmed only when every one got a 2xx.
    #[serde(default = "default_max_keys_per_request")]
    pub max_keys_per_request: usize,
    /// Longest surrogate key header, in bytes; a longer list is split over several requests.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests of one batch in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Surrogate key purged instead of what a surrogate key cannot express: every pattern
    /// (`*` included) and any entry that cannot be a header token. Tag every cached response
    /// with it. Without it, such entries are skipped, logged and counted in
    /// `walbust_http_entries_skipped_total`. Not for `webhook` (the record carries patterns).
    #[serde(default)]
    pub flush_all_key: Option<String>,
    /// HMAC-SHA256 key of the webhook signature; required for `webhook`, refused otherwise.
    #[serde(default)]
    pub secret: Option<String>,
    /// Certificates of an `https://` URL.
    #[serde(default)]
    pub tls: Option<HttpTlsConfig>,
}

/// TLS settings of an `https://` URL (`sinks.http.tls`). Without them, the server's
/// certificate must chain to a public web PKI root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM file of the CA certificates trusted for the server, instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_keys_per_request() -> usize {
    DEFAULT_MAX_KEYS_PER_REQUEST
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

// By hand: header values and the secret are credentials, so only names are printed.
impl fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("send", &self.send)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_keys_per_request", &self.max_keys_per_request)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("concurrency", &self.concurrency)
            .field("flush_all_key", &self.flush_all_key)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where requests go: the parts of [`HttpSinkConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) https: bool,
    /// Host name or IP address, without the brackets of an IPv6 address.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Host` header: the URL's authority.
    pub(crate) authority: String,
    /// Path and query, `/` at least.
    pub(crate) path: String,
}

impl HttpSinkConfig {
    /// A configuration with every default.
    pub fn new(url: impl Into<String>, format: HttpFormat) -> Self {
        Self {
            url: url.into(),
            format,
            send: None,
            headers: BTreeMap::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_keys_per_request: DEFAULT_MAX_KEYS_PER_REQUEST,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            flush_all_key: None,
            secret: None,
            tls: None,
        }
    }

    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The entries sent as surrogate keys: [`Self::send`] or its default.
    pub fn send(&self) -> SendEntries {
        self.send.unwrap_or_default()
    }

    /// Checks the values without I/O; errors name fields under `sinks.http.`.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Errors::new(CONFIG_PATH);
        match self.target() {
            Ok(target) => errors.check(
                self.tls.is_none() || target.https,
                "tls",
                "applies to TLS connections: use an https:// URL",
            ),
            Err(problem) => errors.push("url", problem),
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => errors.push(&field, "not a valid header name"),
                Ok(header) if RESERVED_HEADERS.contains(&header.as_str()) => {
                    errors.push(&field, "set by walbust itself; it cannot be replaced")
                }
                Ok(_) => {}
            }
            // The value is never repeated: it may be a credential.
            errors.check(
                HeaderValue::from_str(value).is_ok(),
                &field,
                "not a valid header value (control characters or line breaks)",
            );
        }
        errors.check(self.timeout_ms > 0, "timeout_ms", "must be at least 1");
        errors.check(
            self.max_keys_per_request > 0,
            "max_keys_per_request",
            "must be at least 1",
        );
        errors.check(
            self.max_header_bytes >= MIN_MAX_HEADER_BYTES,
            "max_header_bytes",
            format_args!("must be at least {MIN_MAX_HEADER_BYTES}"),
        );
        errors.check(self.concurrency > 0, "concurrency", "must be at least 1");
        let webhook = self.format == HttpFormat::Webhook;
        if webhook {
            errors.check(
                self.send.is_none(),
                "send",
                "not for webhook: its record carries keys, tags and patterns",
            );
            errors.check(
                self.flush_all_key.is_none(),
                "flush_all_key",
                "not for webhook: its record carries the patterns themselves",
            );
            errors.check(
                self.secret.as_ref().is_some_and(|s| !s.is_empty()),
                "secret",
                "required for webhook: receivers verify the signature with it",
            );
        } else {
            errors.check(
                self.secret.is_none(),
                "secret",
                "only webhook requests are signed",
            );
            if let Some(key) = &self.flush_all_key {
                errors.check(
                    super::request::is_header_token(key) && key.len() <= self.max_header_bytes,
                    "flush_all_key",
                    "must be a non-empty surrogate key without spaces or control characters",
                );
            }
        }
        errors.finish()
    }

    /// The parts of the URL, or what is wrong with it (never the URL itself).
    pub(crate) fn target(&self) -> Result<Target, &'static str> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|_| "not an http:// or https:// URL")?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("not an http:// or https:// URL"),
        };
        let authority = uri.authority().ok_or("not an http:// or https:// URL")?;
        if authority.as_str().contains('@') {
            return Err("must not hold user information: put credentials into headers");
        }
        let host = authority.host();
        if host.is_empty() {
            return Err("names no host");
        }
        Ok(Target {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(cfg: &HttpSinkConfig) -> Vec<String> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_from_a_minimal_document() {
        let cfg: HttpSinkConfig =
            serde_json::from_str(r#"{"url":"http://varnish:6081/","format":"varnish_xkey"}"#)
                .unwrap();
        assert_eq!(
            cfg,
            HttpSinkConfig::new("http://varnish:6081/", HttpFormat::VarnishXkey)
        );
        assert_eq!(cfg.send(), SendEntries::Tags);
        assert_eq!(cfg.timeout(), Duration::from_secs(10));
        assert_eq!(cfg.max_keys_per_request, 256);
        assert_eq!(cfg.concurrency, 4);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_formats_are_refused() {
        let err = serde_json::from_str::<HttpSinkConfig>(
            r#"{"url":"http://h/","format":"varnish_xkey","method":"BAN"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `method`"), "{err}");
        let err = serde_json::from_str::<HttpSinkConfig>(r#"{"url":"http://h/","format":"ban"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown variant `ban`"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let mut cfg = HttpSinkConfig::new("ftp://h/", HttpFormat::SurrogateKey);
        cfg.headers.insert("Surrogate-Key".into(), "x".into());
        cfg.headers.insert("Fastly-Key".into(), "tok\nen".into());
        cfg.headers.insert("bad name".into(), "v".into());
        cfg.timeout_ms = 0;
        cfg.max_keys_per_request = 0;
        cfg.max_header_bytes = 10;
        cfg.concurrency = 0;
        cfg.secret = Some("s".into());
        cfg.flush_all_key = Some("has space".into());
        assert_eq!(
            messages(&cfg),
            [
                "sinks.http.url: not an http:// or https:// URL",
                "sinks.http.headers.Fastly-Key: not a valid header value (control characters or line breaks)",
                "sinks.http.headers.Surrogate-Key: set by walbust itself; it cannot be replaced",
                "sinks.http.headers.bad name: not a valid header name",
                "sinks.http.timeout_ms: must be at least 1",
                "sinks.http.max_keys_per_request: must be at least 1",
                "sinks.http.max_header_bytes: must be at least 64",
                "sinks.http.concurrency: must be at least 1",
                "sinks.http.secret: only webhook requests are signed",
                "sinks.http.flush_all_key: must be a non-empty surrogate key without spaces or control characters",
            ]
        );
        assert!(
            !messages(&cfg).concat().contains("tok"),
            "values never shown"
        );
    }

    #[test]
    fn webhook_needs_a_secret_and_takes_no_surrogate_settings() {
        let mut cfg: HttpSinkConfig = serde_json::from_str(
            r#"{"url":"https://hooks.example/walbust","format":"webhook","send":"keys","flush_all_key":"all"}"#,
        )
        .unwrap();
        assert_eq!(
            messages(&cfg),
            [
                "sinks.http.send: not for webhook: its record carries keys, tags and patterns",
                "sinks.http.flush_all_key: not for webhook: its record carries the patterns themselves",
                "sinks.http.secret: required for webhook: receivers verify the signature with it",
            ]
        );
        cfg.send = None;
        cfg.flush_all_key = None;
        cfg.secret = Some("s3cret".into());
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn url_parts() {
        let cfg = HttpSinkConfig::new(
            "https://[::1]:8443/service/x/purge?a=1",
            HttpFormat::SurrogateKey,
        );
        let target = cfg.target().unwrap();
        assert!(target.https);
        assert_eq!(target.host, "::1");
        assert_eq!(target.port, 8443);
        assert_eq!(target.authority, "[::1]:8443");
        assert_eq!(target.path, "/service/x/purge?a=1");
        let plain = HttpSinkConfig::new("http://varnish", HttpFormat::VarnishXkey)
            .target()
            .unwrap();
        assert_eq!((plain.port, plain.path.as_str()), (80, "/"));
    }

    #[test]
    fn user_information_is_refused_without_being_repeated() {
        let cfg = HttpSinkConfig::new("http://u:hunter2@h/", HttpFormat::VarnishXkey);
        let found = messages(&cfg);
        assert_eq!(
            found,
            ["sinks.http.url: must not hold user information: put credentials into headers"]
        );
    }

    #[test]
    fn tls_needs_an_https_url() {
        let mut cfg: HttpSinkConfig = serde_json::from_str(
            r#"{"url":"http://h/","format":"varnish_xkey","tls":{"ca_file":"/ca.pem"}}"#,
        )
        .unwrap();
        assert_eq!(
            messages(&cfg),
            ["sinks.http.tls: applies to TLS connections: use an https:// URL"]
        );
        cfg.url = "https://h/".into();
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn debug_hides_the_secret_and_header_values() {
        let mut cfg = HttpSinkConfig::new("https://h/", HttpFormat::Webhook);
        cfg.secret = Some("hunter2".into());
        cfg.headers
            .insert("Authorization".into(), "Bearer tok3n".into());
        let text = format!("{cfg:?}");
        assert!(text.contains("Authorization"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("tok3n"),
            "{text}"
        );
    }
}
