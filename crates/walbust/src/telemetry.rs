//! Logging and the Prometheus endpoint.
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

/// Serves `/metrics` on `listen` (host:port). Must run inside the runtime.
pub fn serve_metrics(listen: &str) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("metrics.listen: not a socket address: {listen}"))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    walbust_cdc::metrics::describe();
    walbust_publish::metrics::describe();
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(())
}
