//! The HTTP purge sink: a batch's surrogate keys purged from HTTP caches (Varnish with vmod
//! xkey, Fastly-style `Surrogate-Key` purges), or its JSON record posted to a signed webhook.
//!
//! - `config`: [`HttpSinkConfig`] (serde, defaults, pure `validate()`).
//! - `request`: the requests of a batch, built without I/O: surrogate key lists split by count
//!   and header size, webhook records (format in [`crate::record`]), the HMAC signature.
//! - `sink`: [`HttpSink`], which sends them and confirms a batch only when every request got a
//!   2xx answer.
//!
//! An HTTP cache cannot purge "every key matching a glob": patterns become the configured
//! `flush_all_key` (a surrogate key every cached response carries), or are skipped, logged and
//! counted. Purges are idempotent, so a batch sent again after a failed request is harmless.

mod config;
pub mod request;
mod sink;

pub use config::{
    HttpFormat, HttpSinkConfig, HttpTlsConfig, SendEntries, CONFIG_PATH, DEFAULT_CONCURRENCY,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_KEYS_PER_REQUEST, DEFAULT_TIMEOUT_MS,
    MIN_MAX_HEADER_BYTES, SIGNATURE_HEADER,
};
pub use sink::{HttpSink, NAME};
