//! An HTTP/1.1 server inside the test, on a free loopback port, over TCP or TLS: it records
//! every request and answers what the test says. It plays the endpoints of walbust's HTTP sink
//! (a webhook receiver, a purge API, Varnish's backend), whose behaviour the test decides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Error;

/// One request the recorder received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpRequest {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the recorder answers to a request.
#[derive(Debug, Clone, Default)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> HttpAnswer {
        HttpAnswer {
            status,
            ..HttpAnswer::default()
        }
    }

    /// The answer with a header added.
    pub fn header(mut self, name: &str, value: &str) -> HttpAnswer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The answer with `body`.
    pub fn body(mut self, body: impl Into<String>) -> HttpAnswer {
        self.body = body.into();
        self
    }
}

type Answerer = Arc<dyn Fn(&HttpRequest) -> HttpAnswer + Send + Sync>;

/// The recording server. Stops accepting when dropped (needs a Tokio runtime).
pub struct HttpRecorder {
    addr: SocketAddr,
    tls: bool,
    received: Arc<Mutex<Vec<HttpRequest>>>,
    task: JoinHandle<()>,
}

impl HttpRecorder {
    /// A plain HTTP server answering each request with `answer`.
    pub async fn start(
        answer: impl Fn(&HttpRequest) -> HttpAnswer + Send + Sync + 'static,
    ) -> Result<HttpRecorder, Error> {
        Self::listen(None, Arc::new(answer)).await
    }

    /// An HTTPS server with the certificate chain `cert` and key `key` (PEM files).
    pub async fn start_tls(
        cert: &Path,
        key: &Path,
        answer: impl Fn(&HttpRequest) -> HttpAnswer + Send + Sync + 'static,
    ) -> Result<HttpRecorder, Error> {
        let bad = |what: &str, path: &Path, e: rustls::pki_types::pem::Error| {
            Error::io(
                format!("could not read the {what} {}", path.display()),
                std::io::Error::other(e.to_string()),
            )
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad("certificate", cert, e))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
            .map_err(|e| Error::io("could not set up TLS", std::io::Error::other(e)))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::listen(Some(acceptor), Arc::new(answer)).await
    }

    async fn listen(
        tls: Option<tokio_rustls::TlsAcceptor>,
        answer: Answerer,
    ) -> Result<HttpRecorder, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("could not listen on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("could not read the listening address", e))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, log, tls) = (answer.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(TokioIo::new(stream), answer, log).await,
                        Some(acceptor) => {
                            // A refused handshake is what some tests are after.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(TokioIo::new(stream), answer, log).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(HttpRecorder {
            addr,
            tls: is_tls,
            received,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT<path>` (`https://localhost:PORT<path>` for TLS, the name test
    /// certificates are made for).
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<HttpRequest> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests for `path` arrived.
    pub fn count(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<T>(io: T, answer: Answerer, log: Arc<Mutex<Vec<HttpRequest>>>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (answer, log) = (answer.clone(), log.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let got = HttpRequest {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                headers: parts.headers,
                body,
            };
            let HttpAnswer {
                status,
                headers,
                body,
            } = answer(&got);
            log.lock().unwrap_or_else(PoisonError::into_inner).push(got);
            let mut response = hyper::Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            let response = response
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| {
                    let mut broken = hyper::Response::new(Full::new(Bytes::new()));
                    *broken.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    broken
                });
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}
