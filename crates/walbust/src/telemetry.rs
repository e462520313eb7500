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

pub fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour for a terminal only: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
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
