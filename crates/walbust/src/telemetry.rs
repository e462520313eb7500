//! Logging, and the HTTP endpoint: Prometheus metrics and health probes.
//!
//! Logs go to stderr (stdout belongs to the demo's live view). Metric names
//! live next to the code that records them (`walbust_cdc::metrics`,
//! `walbust_publish::metrics`); this module only installs the exporter and asks
//! both to describe their metrics.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; colour on a terminal only.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message` and the
    /// event's fields at the top level), for log pipelines.
    Json,
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            // Colour for a terminal only: log files and pipes get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => {
            JSON.store(true, std::sync::atomic::Ordering::Relaxed);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .try_init()
        }
    };
}

/// Prints the error walbust exits with: `walbust: <error>` on stderr, or
/// with `--log-format json` one more JSON line (level ERROR, the error as
/// `message`, the exit status as `exit_status`), so that a log pipeline
/// reads every line of stderr.
pub fn print_fatal(error: &dyn std::fmt::Display, exit_status: u8) {
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(exit_status, "{error}");
    } else {
        eprintln!("walbust: {error}");
    }
}

/// How often a health probe asks each sink whether it answers.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A loop that has not come back to its wait for this long makes
/// `/healthz` fail: walbust is stuck and a restart is the cure.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` (host:port).
/// Binds before returning, so an address in use fails start-up; serves
/// from a task of the current runtime. `sink_budget`: how long a sink may
/// fail to publish before walbust is not ready.
pub async fn serve_http(listen: &str, sink_budget: std::time::Duration) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics.listen: not a socket address: {listen}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    walbust_cdc::metrics::describe();
    walbust_publish::metrics::describe();
    // Histograms are summarised over a window that needs turning over.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let limits = walbust_flow::health::Limits {
        stall: STALL_TIMEOUT,
        sink_budget,
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "metrics endpoint: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = respond(&req, &handle, limits);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%addr, "serving Prometheus metrics on /metrics, health on /healthz and /readyz");
    Ok(())
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond(
    req: &hyper::Request<hyper::body::Incoming>,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    limits: walbust_flow::health::Limits,
) -> hyper::Response<Body> {
    use hyper::{Method, StatusCode};
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    let health = walbust_flow::health();
    match req.uri().path() {
        "/metrics" => {
            metrics::gauge!(walbust_cdc::metrics::LAG_SECONDS)
                .set(health.lag_seconds(std::time::SystemTime::now()));
            let report = health.report(limits);
            metrics::gauge!(crate::metrics::READY).set(f64::from(u8::from(report.ready)));
            for role in crate::metrics::ROLES {
                metrics::gauge!(crate::metrics::ROLE, "role" => role)
                    .set(f64::from(u8::from(role == report.role)));
            }
            let mut response = text(StatusCode::OK, handle.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => health_response(&health.report(limits), false),
        "/readyz" => health_response(&health.report(limits), true),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: walbust serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

fn text(status: hyper::StatusCode, body: String) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}

/// The JSON body of `/healthz` (`ready`: false) and `/readyz` (true): 200
/// when live (ready), 503 otherwise, with the reasons.
fn health_response(report: &walbust_flow::health::Report, ready: bool) -> hyper::Response<Body> {
    use walbust_flow::health::Stream;
    let ok = if ready { report.ready } else { report.live };
    let reasons: Vec<_> = report
        .liveness
        .iter()
        .chain(report.readiness.iter().filter(|_| ready))
        .map(|r| serde_json::json!({ "component": r.component, "message": r.message }))
        .collect();
    let (state, slot) = match &report.stream {
        Stream::Starting { .. } => ("starting", None),
        Stream::Streaming { slot } => ("streaming", Some(slot)),
        Stream::Reconnecting { .. } => ("reconnecting", None),
        Stream::Standby { slot } => ("standby", Some(slot)),
        Stream::Stopping => ("stopping", None),
    };
    let sinks: Vec<_> = report
        .sinks
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "healthy": s.healthy,
                "failing_for_seconds": s.failing_for,
                "publishing_for_seconds": s.publishing_for,
                "error": s.error,
            })
        })
        .collect();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "fail" },
        "live": report.live,
        "ready": report.ready,
        "role": report.role,
        "stream": { "state": state, "slot": slot },
        "sinks": sinks,
        "reasons": reasons,
    });
    let status = if ok {
        hyper::StatusCode::OK
    } else {
        hyper::StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = text(status, format!("{body}\n"));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
