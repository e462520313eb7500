//! [`HttpSink`]: sends a batch's requests and waits for a 2xx to every one of them.
//!
//! The client is hyper's HTTP/1.1 connection, one request at a time per connection, over TCP
//! or rustls. Idle connections are kept and reused (purges come in bursts); one that the
//! server closed meanwhile costs a fresh connection, not a failed batch.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::counter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::config::{HttpFormat, HttpSinkConfig, Target, SIGNATURE_HEADER};
use super::request;
use crate::batch::Batch;
use crate::metrics as m;
use crate::sink::{Sink, SinkError, SinkErrorKind};

/// The sink's name ([`Sink::name`](crate::Sink::name)), its `sink` metric label.
pub const NAME: &str = "http";

/// Most response body bytes read (and dropped) before a connection is given back for reuse.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;
/// `User-Agent` of every request unless `headers` sets one: endpoint logs tell walbust apart.
const AGENT: &str = concat!("walbust/", env!("CARGO_PKG_VERSION"));

/// The HTTP purge sink. A batch is confirmed when every one of its requests got a 2xx answer.
pub struct HttpSink {
    cfg: HttpSinkConfig,
    target: Target,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// One request of a batch, before it is sent.
struct Prepared {
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl HttpSink {
    /// Validates `cfg` and reads its certificates (no connection: use [`Sink::health`]).
    pub fn new(cfg: HttpSinkConfig) -> Result<Self, SinkError> {
        let config_error = |message: String| SinkError::new(SinkErrorKind::Config, message);
        cfg.validate()
            .map_err(|errors| config_error(crate::ConfigError::join(&errors)))?;
        let target = cfg
            .target()
            .map_err(|problem| config_error(format!("sinks.http.url: {problem}")))?;
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            // validate() checked both.
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(config_error(format!("sinks.http.headers.{name}: invalid")));
            };
            value.set_sensitive(true);
            headers.push((name, value));
        }
        if !headers.iter().any(|(name, _)| name == USER_AGENT) {
            headers.push((USER_AGENT, HeaderValue::from_static(AGENT)));
        }
        let tls = if target.https {
            Some(tls_connector(&cfg, &target)?)
        } else {
            None
        };
        debug!(
            format = cfg.format.as_str(),
            https = target.https,
            "http sink configured"
        );
        if cfg.format != HttpFormat::Webhook && cfg.flush_all_key.is_none() {
            warn!(
                "sinks.http has no flush_all_key: batches' patterns (and the flush-all `*`) cannot be \
                 purged by surrogate key and are skipped, counted in walbust_http_entries_skipped_total"
            );
        }
        Ok(Self {
            cfg,
            target,
            headers,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &HttpSinkConfig {
        &self.cfg
    }

    /// The requests of `batch`, with what was skipped logged and counted.
    fn prepare(&self, batch: &Batch) -> Vec<Prepared> {
        match self.cfg.format {
            HttpFormat::Webhook => {
                let secret = self.cfg.secret.as_deref().unwrap_or_default().as_bytes();
                request::webhook_bodies(batch, self.cfg.max_keys_per_request)
                    .into_iter()
                    .map(|body| {
                        let signature = request::signature(secret, &body);
                        Prepared {
                            method: Method::POST,
                            headers: vec![
                                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                                (
                                    HeaderName::from_static(SIGNATURE_HEADER),
                                    header_value(signature),
                                ),
                            ],
                            body: Bytes::from(body),
                        }
                    })
                    .collect()
            }
            HttpFormat::VarnishXkey | HttpFormat::SurrogateKey => {
                let purges = request::surrogate_purges(
                    batch,
                    self.cfg.send(),
                    self.cfg.flush_all_key.as_deref(),
                    self.cfg.max_keys_per_request,
                    self.cfg.max_header_bytes,
                );
                self.report_skipped(batch, &purges);
                let (method, header) = if self.cfg.format == HttpFormat::VarnishXkey {
                    (
                        Method::from_bytes(b"PURGE").unwrap_or(Method::DELETE),
                        HeaderName::from_static("xkey"),
                    )
                } else {
                    (Method::POST, HeaderName::from_static("surrogate-key"))
                };
                purges
                    .headers
                    .into_iter()
                    .map(|keys| Prepared {
                        method: method.clone(),
                        headers: vec![(header.clone(), header_value(keys))],
                        body: Bytes::new(),
                    })
                    .collect()
            }
        }
    }

    fn report_skipped(&self, batch: &Batch, purges: &request::SurrogatePurges) {
        let lsn = walbust_pgoutput::format_lsn(batch.lsn);
        if purges.flush_all {
            counter!(m::HTTP_FLUSH_ALL).increment(1);
            debug!(%lsn, "http: patterns or unsendable entries purge the flush_all_key");
        }
        for (reason, count) in [
            ("pattern", purges.skipped_patterns),
            ("unsendable", purges.skipped_unsendable),
        ] {
            if count > 0 {
                counter!(m::HTTP_ENTRIES_SKIPPED, m::LABEL_REASON => reason)
                    .increment(count as u64);
                // Entries are built from row data: the count only.
                warn!(
                    %lsn,
                    reason,
                    entries = count,
                    "http: entries no surrogate key can express were not purged (set sinks.http.flush_all_key)"
                );
            }
        }
    }

    async fn publish_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let requests = self.prepare(batch);
        if requests.is_empty() {
            return Ok(());
        }
        let total = requests.len();
        let results: Vec<Result<(), SinkError>> = futures::stream::iter(requests)
            .map(|prepared| self.send(prepared))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(first)) = results.into_iter().find(Result::is_err) {
            if total > 1 {
                return Err(SinkError::with_source(
                    first.kind(),
                    format!("http: {failed} of {total} requests of the batch failed"),
                    first,
                ));
            }
            return Err(first);
        }
        debug!(requests = total, "http batch confirmed");
        Ok(())
    }

    /// Sends one request and classifies its answer: only a 2xx is `Ok`.
    async fn send(&self, prepared: Prepared) -> Result<(), SinkError> {
        let timeout = self.cfg.timeout();
        let outcome = tokio::time::timeout(timeout, self.exchange(&prepared)).await;
        let status = match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(err)) => {
                counter!(m::HTTP_REQUESTS, m::LABEL_CLASS => "failed").increment(1);
                return Err(err);
            }
            Err(_) => {
                counter!(m::HTTP_REQUESTS, m::LABEL_CLASS => "failed").increment(1);
                return Err(SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "http: no answer from {} within {} ms",
                        self.target.authority, self.cfg.timeout_ms
                    ),
                ));
            }
        };
        counter!(m::HTTP_REQUESTS, m::LABEL_CLASS => status_class(status)).increment(1);
        match classify_status(status) {
            None => Ok(()),
            Some(kind) => Err(SinkError::new(
                kind,
                format!(
                    "http: {} {} answered {status}",
                    prepared.method, self.target.authority
                ),
            )),
        }
    }

    /// One request on a kept connection, or on a new one when the kept one fails: a server may
    /// close an idle connection just as it is reused, and purges are safe to repeat. Sent twice
    /// at most; anything beyond is the pipeline's retry, with its backoff and its counts.
    async fn exchange(&self, prepared: &Prepared) -> Result<StatusCode, SinkError> {
        if let Some(sender) = self.take_idle() {
            if let Ok(status) = self.round_trip(sender, prepared).await {
                return Ok(status);
            }
        }
        let sender = self.connect().await?;
        self.round_trip(sender, prepared).await
    }

    /// Keeps a connection for the next request, if there is room.
    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn round_trip(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        prepared: &Prepared,
    ) -> Result<StatusCode, SinkError> {
        let mut builder = Request::builder()
            .method(prepared.method.clone())
            .uri(self.target.path.as_str())
            .header(HOST, self.target.authority.as_str());
        for (name, value) in self.headers.iter().chain(&prepared.headers) {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(prepared.body.clone()))
            .map_err(|err| {
                SinkError::with_source(SinkErrorKind::Config, "http: cannot build the request", err)
            })?;
        sender.ready().await.map_err(|err| self.io_error(err))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.io_error(err))?;
        let status = response.status();
        // Read the answer to its end so that the connection can carry the next request.
        let drained = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .is_ok();
        if drained && !sender.is_closed() {
            self.put_idle(sender);
        }
        Ok(status)
    }

    /// A new connection to the target: TCP, then TLS for `https://`, then the HTTP/1.1
    /// handshake (the connection is driven by a task of its own).
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|err| {
                SinkError::with_source(
                    SinkErrorKind::Connect,
                    format!("http: cannot connect to {}", self.target.authority),
                    err,
                )
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| self.tls_error(err))?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Full<Bytes>>, SinkError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| self.io_error(err))?;
        tokio::spawn(async move {
            // Its end (closed by either side, or an I/O error) shows in the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn io_error(&self, err: hyper::Error) -> SinkError {
        let kind = if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
            SinkErrorKind::Protocol
        } else if err.is_timeout() {
            SinkErrorKind::Timeout
        } else {
            SinkErrorKind::Connect
        };
        SinkError::with_source(
            kind,
            format!("http: request to {} failed", self.target.authority),
            err,
        )
    }

    /// A refused certificate is a [`SinkErrorKind::Denied`] (retrying cannot fix it); any other
    /// handshake failure may pass.
    fn tls_error(&self, err: std::io::Error) -> SinkError {
        let refused = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                use rustls::AlertDescription as A;
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::AlertReceived(
                            A::BadCertificate
                                | A::UnsupportedCertificate
                                | A::CertificateRevoked
                                | A::CertificateExpired
                                | A::CertificateUnknown
                                | A::UnknownCA
                                | A::AccessDenied
                                | A::CertificateRequired
                        )
                )
            });
        SinkError::with_source(
            if refused {
                SinkErrorKind::Denied
            } else {
                SinkErrorKind::Connect
            },
            format!("http: TLS handshake with {} failed", self.target.authority),
            err,
        )
    }

    /// Opens a connection (TCP, and TLS for `https://`) and keeps it for the next request.
    /// Nothing is sent: a purge endpoint has no request that changes nothing.
    async fn check(&self) -> Result<(), SinkError> {
        let timeout = self.cfg.timeout();
        let sender = tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| {
                SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "http: cannot connect to {} within {} ms",
                        self.target.authority, self.cfg.timeout_ms
                    ),
                )
            })??;
        self.put_idle(sender);
        Ok(())
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The coverage and the flush-all pattern: a cache purges the constant tags and its
    /// `flush_all_key`, a webhook receiver empties its cache.
    fn gap_purge(&self, coverage: &Batch) -> Batch {
        let mut batch = coverage.clone();
        batch.add_flush_all();
        batch
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_batch(batch).boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        self.check().boxed()
    }
}

/// A header value walbust built (surrogate keys checked by
/// [`request::is_header_token`], a hex signature).
fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The rustls connector of `sinks.http.tls`: `ca_file`'s certificates, or the public roots.
fn tls_connector(
    cfg: &HttpSinkConfig,
    target: &Target,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), SinkError> {
    let config_error = |message: String| SinkError::new(SinkErrorKind::Config, message);
    let mut roots = rustls::RootCertStore::empty();
    match cfg.tls.as_ref().and_then(|tls| tls.ca_file.as_ref()) {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|err| {
                    config_error(format!(
                        "sinks.http.tls.ca_file: cannot read {}: {err}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "sinks.http.tls.ca_file: no CA certificate in {}",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| config_error(format!("sinks.http.tls: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| config_error("sinks.http.url: the host is not a valid TLS name".into()))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// `None` for a 2xx; otherwise the kind of error the answer is.
///
/// 408, 429 and 5xx pass with time ([`SinkErrorKind::Unavailable`]); 401 and 403 refuse
/// walbust's credentials ([`SinkErrorKind::Denied`]); a redirect means the URL is wrong
/// ([`SinkErrorKind::Config`]); any other answer refuses the request for good
/// ([`SinkErrorKind::Rejected`]).
pub(crate) fn classify_status(status: StatusCode) -> Option<SinkErrorKind> {
    match status.as_u16() {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(SinkErrorKind::Unavailable),
        401 | 403 => Some(SinkErrorKind::Denied),
        300..=399 => Some(SinkErrorKind::Config),
        _ => Some(SinkErrorKind::Rejected),
    }
}

/// The `class` label of an answer.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        let kind = |code: u16| classify_status(StatusCode::from_u16(code).unwrap());
        assert_eq!(kind(200), None);
        assert_eq!(kind(204), None);
        for retriable in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                kind(retriable),
                Some(SinkErrorKind::Unavailable),
                "{retriable}"
            );
        }
        assert_eq!(kind(401), Some(SinkErrorKind::Denied));
        assert_eq!(kind(403), Some(SinkErrorKind::Denied));
        assert_eq!(kind(301), Some(SinkErrorKind::Config));
        for fatal in [400, 404, 405, 413] {
            assert_eq!(kind(fatal), Some(SinkErrorKind::Rejected), "{fatal}");
        }
    }

    #[test]
    fn a_refused_configuration_is_a_config_error() {
        let cfg = HttpSinkConfig::new("http://h/", HttpFormat::Webhook);
        let err = HttpSink::new(cfg).unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Config);
        assert!(err.to_string().contains("sinks.http.secret"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let mut cfg = HttpSinkConfig::new("https://h/", HttpFormat::VarnishXkey);
        cfg.tls = Some(super::super::config::HttpTlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
        });
        let err = HttpSink::new(cfg).unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Config);
        assert!(
            err.to_string().starts_with("sinks.http.tls.ca_file"),
            "{err}"
        );
    }
}
