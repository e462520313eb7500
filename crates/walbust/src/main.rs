//! walbust: committed PostgreSQL changes in, cache invalidations out.
//!
//! The binary is thin: it parses the command line, loads and validates the
//! configuration, installs logging, metrics and signal handling, and hands
//! over to [`run`] (the product) or [`demo`] (the product on throwaway local
//! services).

mod acl;
mod check;
mod config;
mod db_marker;
mod demo;
mod explain;
mod gap;
mod metrics;
mod redis_functions;
mod reload;
mod run;
mod setup;
mod tail;
mod telemetry;
mod time_rules;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use walbust_flow::Chain;

use crate::config::Config;

/// Exit status for a problem in the configuration or the rules.
const EXIT_CONFIG: u8 = 2;
/// Exit status for any other failure.
const EXIT_FAILURE: u8 = 1;
/// Exit status for a definite source error: the slot is lost or gone, the
/// publication or a table is missing, the publication withholds what the
/// rules need or was dropped while the slot needed it, the slot was dropped
/// and made again under the same name (a gap), wal_level changed,
/// authentication refused (by Postgres or a sink), a role without
/// REPLICATION, a Redis ACL that denies a command walbust needs, WAL could
/// not be decoded. Restarting will not help; a human must.
const EXIT_DEFINITE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "walbust",
    version,
    about = "Turns committed PostgreSQL changes into cache invalidations for Redis and Kafka",
    long_about = "walbust reads the write-ahead log through logical replication (pgoutput), maps every \
committed row change to cache keys, tags and key patterns with the rules in a YAML file, and \
publishes them in batches to Redis (unlink keys, purge tags and patterns) and to a Kafka topic. \
It acknowledges WAL to Postgres only after every sink confirmed, so after a crash nothing is lost.\n\n\
Start with `walbust demo` to see it work on throwaway local services."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `debug`.
    /// Default: `info`, and `warn` for the demo, whose live view is on stdout.
    #[arg(long, global = true, env = "WALBUST_LOG")]
    log: Option<String>,
    /// Log lines as text (colour on a terminal only) or one JSON object per
    /// line, for log pipelines.
    #[arg(
        long,
        global = true,
        env = "WALBUST_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: telemetry::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes from Postgres and publish invalidations until SIGINT or SIGTERM.
    ///
    /// On a signal, walbust finishes the batch in flight, acknowledges it to
    /// Postgres and exits 0. A second signal exits at once (nothing
    /// unconfirmed is ever acknowledged, so the next start re-sends it).
    Run {
        /// The configuration file (see README.md, "Configuration").
        #[arg(long, short, env = "WALBUST_CONFIG", default_value = "walbust.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration and the rules; with --db also check the
    /// database (wal_level, slot, publication) and the sinks.
    ///
    /// With --db every problem is reported on its own line: tables missing or
    /// not in the publication (partitions included), a publication that
    /// withholds what the rules need (an operation they react to, rows
    /// behind a row filter, columns outside its column list), columns the
    /// rules read that the tables lack, old values the replica identity
    /// does not send,
    /// and TOAST-able columns used in templates without REPLICA IDENTITY
    /// FULL (a warning). Exits 1 if there is any error.
    ///
    /// Without --db an unset ${VAR} is only a note (the file is checked with
    /// a placeholder, so CI needs no secrets); with --db it is an error, as
    /// for run.
    Check {
        #[arg(long, short, env = "WALBUST_CONFIG", default_value = "walbust.yaml")]
        config: PathBuf,
        /// Also connect to the database and the sinks and check them.
        #[arg(long)]
        db: bool,
    },
    /// After a gap (a lost or dropped slot, a publication dropped under it):
    /// purge everything the rules cover and remove the gap marker, so that
    /// the next run starts afresh.
    ///
    /// Does once what `source.on_gap: purge` does: makes sure the slot
    /// exists (creating it with `source.create: true`), then purges every
    /// key and pattern template as a glob, every constant tag and
    /// `source.gap_purge` in Redis, sends a flush-all record (pattern `*`)
    /// to Kafka, and deletes the marker. Drop a lost slot first.
    ResetGap {
        #[arg(long, short, env = "WALBUST_CONFIG", default_value = "walbust.yaml")]
        config: PathBuf,
    },
    /// Run walbust end to end on throwaway Postgres, Redis and Kafka, with a
    /// small shop schema and a write generator, and show what it invalidates.
    ///
    /// Prints how to connect (psql, redis-cli, Kafka bootstrap) so you can make
    /// writes of your own. Everything is removed on Ctrl-C.
    Demo(demo::DemoArgs),
    /// Show what one row change would invalidate, and which rule produces
    /// each key, tag and pattern. Reads only the rules file.
    ///
    /// Example: walbust explain --rules rules.yaml --table products --op update
    ///   --old '{"id":"42","category_id":"3"}' --new '{"id":"42","category_id":"4"}'
    Explain(explain::ExplainArgs),
    /// Print the SQL that prepares Postgres for this configuration; with
    /// --apply, run it.
    ///
    /// The role (source.url's user, LOGIN REPLICATION, no password: set one
    /// with psql's \password), the publication with the tables the rules
    /// name, REPLICA IDENTITY FULL where the rules need old values the
    /// identity does not send, the DDL guard, and the slot (unless
    /// source.create is true), with the pg_hba.conf line in a comment.
    /// Every statement is safe to run again. Printing needs no database and
    /// no secrets (an unset ${VAR} reads as its name); only the SQL goes to
    /// stdout, so `walbust setup > setup.sql` works.
    ///
    /// --apply connects with --admin-url (a superuser; default source.url),
    /// runs it in one transaction and the slot after COMMIT, and prints what
    /// it did. Afterwards `walbust check --db` should pass.
    Setup(setup::SetupArgs),
    /// Stream live changes through a temporary slot and print each committed
    /// transaction with the invalidations the rules would publish. Publishes
    /// nothing and creates nothing durable (the publication must exist).
    ///
    /// Rules are reloaded when the file changes, as in `run`. Stop with Ctrl-C.
    Tail(tail::TailArgs),
    /// Print the Redis Functions library walbust loads with sinks.redis.leases
    /// (fenced fills: walbust_get, walbust_fill; read-your-writes:
    /// walbust_caught_up), for operators who load it themselves.
    ///
    /// Load it with: walbust redis-functions --config walbust.yaml |
    /// redis-cli -x FUNCTION LOAD REPLACE (on every primary of a cluster).
    RedisFunctions(redis_functions::RedisFunctionsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    telemetry::init_logging(cli.log.as_deref().unwrap_or(default_log), cli.log_format);
    // One thread runs every task. The work is a chain of hand-offs
    // (replication socket, reader, pipeline, sinks), each cheap: on a
    // multi-threaded runtime every hand-off woke another thread, which cost
    // more than the work itself (context switches per change fell from 0.6
    // to under 0.1 and CPU per change by half, docs/benchmarks.md). The
    // walsender feeding walbust is single-threaded too, and walbust needs
    // well under one core to keep up with it; librdkafka keeps its own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walbust: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => cmd_run(&config).await,
            Command::Check { config, db } => check::check(&config, db).await,
            Command::ResetGap { config } => gap::reset_gap(&config).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Explain(args) => explain::explain(args),
            Command::Tail(args) => tail::tail(args).await,
            Command::Setup(args) => setup::setup(args).await,
            Command::RedisFunctions(args) => redis_functions::redis_functions(args),
        }
    })
}

async fn cmd_run(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return fail_config(e),
    };
    if let Err(e) = walbust_rules::RuleSet::load(&cfg.rules) {
        return fail_config(e);
    }
    if let Some(listen) = &cfg.metrics.listen {
        // A sink may fail this long (two of its longest retry delays)
        // before walbust reports not ready.
        let sink_budget = cfg.publish.pipeline().retry_max * 2;
        if let Err(e) = telemetry::serve_http(listen, sink_budget).await {
            return fail(e);
        }
        metrics::describe();
        metrics::register_counters();
    }
    let shutdown = shutdown_signal();
    match run::run(cfg, shutdown, run::Hooks::default()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// A watch that turns true on the first SIGINT or SIGTERM; a second signal
/// exits the process at once.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!(
                    "shutting down: finishing the batch in flight (signal again to exit now)"
                );
                let _ = tx.send(true);
            } else {
                tracing::warn!("second signal: exiting without waiting; unconfirmed work is re-sent on the next start");
                std::process::exit(130);
            }
        }
    });
    rx
}

/// Exits with the configuration error code, printing the error and each of
/// its causes once.
pub fn fail_config(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ExitCode {
    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
    telemetry::print_fatal(&Chain(&*e), EXIT_CONFIG);
    ExitCode::from(EXIT_CONFIG)
}

pub fn fail(e: impl Into<anyhow::Error>) -> ExitCode {
    let e = e.into();
    // One line: the whole cause chain joined with ": ", each cause once.
    let reason = definite_reason(&e);
    let status = if reason.is_some() {
        EXIT_DEFINITE
    } else {
        EXIT_FAILURE
    };
    telemetry::print_fatal(&Chain(e.as_ref()), status);
    if let Some(reason) = reason {
        ::metrics::gauge!(walbust_cdc::metrics::DEFINITE_ERROR, "reason" => reason).set(1.0);
    }
    ExitCode::from(status)
}

/// The metric label of a definite source error anywhere in the chain.
fn definite_reason(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| {
        if cause.downcast_ref::<gap::GapError>().is_some() {
            return Some("gap");
        }
        if let Some(s) = cause.downcast_ref::<walbust_cdc::StreamError>() {
            return (!s.is_transient()).then(|| s.reason());
        }
        if let Some(s) = cause.downcast_ref::<walbust_cdc::SourceError>() {
            return s.is_definite().then(|| s.reason());
        }
        if let Some(s) = cause.downcast_ref::<walbust_publish::SinkError>() {
            return (s.kind() == walbust_publish::SinkErrorKind::Denied).then_some("sink_denied");
        }
        None
    })
}
