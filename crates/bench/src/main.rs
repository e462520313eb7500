//! `walbust-bench`: walbust end to end against `pg_recvlogical`, Postgres's own logical
//! replication client, on throwaway Postgres, Redis and Kafka.
//!
//! - W1: a backlog of single-row UPDATE transactions, W2: one transaction updating every row;
//!   each drained by pg_recvlogical and by walbust with several sink sets, every consumer from
//!   its own slot created at the same LSN ([`harness`] explains how the end is detected).
//! - W3: a steady rate of single-row UPDATEs (pgbench, `synchronous_commit=on`) while walbust
//!   streams; commit-to-confirm percentiles from walbust's own metric, per sink, and once more
//!   with a streaming replica in `source.replicas` (what waiting for the replica adds).
//! - W4: pattern walks under load: Redis pre-filled with N unrelated keys, a steady rate of
//!   transactions each invalidating one key and one distinct pattern; commit-to-removal of the
//!   keys and of the patterns' keys measured from Redis's keyspace notifications, walks and
//!   commit-to-confirm from walbust's metrics ([`harness::PatternWalks`]).
//!
//! It prints Markdown tables, writes every figure as JSON and, with `--docs`, adds the tables to
//! docs/benchmarks.md. `--quick` uses small sizes: the smoke test runs it to check the harness,
//! never the speed.
//!
//! Modules: [`harness`] (servers, workloads, consumers), [`procs`] (child processes and
//! `/proc`), [`prom`] (reading `/metrics`), [`report`] (figures, tables, targets, docs).

mod harness;
mod procs;
mod prom;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use harness::{Bench, Options, Sinks};
use report::Report;
use walbust_pgoutput::time;

#[derive(Parser)]
#[command(
    name = "walbust-bench",
    about = "Benchmark walbust end to end against pg_recvlogical (drain time, latency, memory, CPU)"
)]
struct Args {
    /// Small sizes (2k transactions, 20k rows, 5 s at 500 tx/s): checks the harness, not speed.
    #[arg(long)]
    quick: bool,
    /// The walbust binary. Default: `walbust` next to this executable.
    #[arg(long, env = "WALBUST_BIN")]
    walbust: Option<PathBuf>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Add the tables to this Markdown file, in the section "End to end (scripts/bench.sh)".
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Keep configurations and logs (walbust, pg_recvlogical) in this folder; default: a
    /// temporary folder, removed at the end.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Workloads to run, comma-separated: w1, w2, w3, w4.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
    only: Vec<String>,
    /// W1: transactions in the backlog.
    #[arg(long)]
    w1_transactions: Option<u64>,
    /// W2: rows updated by the one transaction (also the table's size).
    #[arg(long)]
    w2_rows: Option<u64>,
    /// W3: transactions per second.
    #[arg(long)]
    w3_rate: Option<u32>,
    /// W3: seconds of load.
    #[arg(long)]
    w3_seconds: Option<u64>,
    /// W4: unrelated keys in Redis, one run each (default 0,100000,1000000,4000000).
    #[arg(long, value_delimiter = ',')]
    w4_sizes: Option<Vec<u64>>,
    /// W4: transactions per second.
    #[arg(long)]
    w4_rate: Option<u32>,
    /// W4: seconds of load per run.
    #[arg(long)]
    w4_seconds: Option<u64>,
    /// W4: `sinks.redis.pattern_strategy`, walk or version.
    #[arg(long)]
    w4_pattern_strategy: Option<String>,
    /// walbust sink sets for the drains: redis+kafka, discard, redis, kafka.
    #[arg(long, value_delimiter = ',')]
    drain_sinks: Option<Vec<String>>,
    /// walbust sink sets for W3, one run each.
    #[arg(long, value_delimiter = ',')]
    latency_sinks: Option<Vec<String>>,
    /// W3 once more with the first latency sink set and a streaming replica listed in
    /// `source.replicas`, to measure what replica-aware invalidation adds. Default: true, false
    /// with --quick.
    #[arg(long)]
    w3_replica: Option<bool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walbust-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = main_async(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walbust-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(args: Args) -> Result<()> {
    let opts = options(&args)?;
    let report = run(opts).await?;
    let tables = report.markdown();
    println!("{tables}");
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.json.display()))?;
    eprintln!("walbust-bench: figures written to {}", args.json.display());
    if let Some(docs) = &args.docs {
        report::append_to_docs(docs, &tables)?;
        eprintln!("walbust-bench: tables added to {}", docs.display());
    }
    Ok(())
}

fn options(args: &Args) -> Result<Options> {
    let walbust = match &args.walbust {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .with_file_name("walbust"),
    };
    let mut opts = if args.quick {
        Options::quick(walbust)
    } else {
        Options::full(walbust)
    };
    if let Some(n) = args.w1_transactions {
        opts.w1_transactions = n;
    }
    if let Some(n) = args.w2_rows {
        opts.w2_rows = n;
    }
    if let Some(n) = args.w3_rate {
        opts.w3_rate = n;
    }
    if let Some(n) = args.w3_seconds {
        opts.w3_seconds = n;
    }
    if let Some(sizes) = &args.w4_sizes {
        opts.w4_sizes = sizes.clone();
    }
    if let Some(n) = args.w4_rate {
        opts.w4_rate = n;
    }
    if let Some(n) = args.w4_seconds {
        opts.w4_seconds = n;
    }
    if let Some(strategy) = &args.w4_pattern_strategy {
        if !matches!(strategy.as_str(), "walk" | "version") {
            bail!("--w4-pattern-strategy: walk or version, not {strategy:?}");
        }
        opts.w4_pattern_strategy = strategy.clone();
    }
    let only: Vec<String> = args.only.iter().map(|w| w.to_ascii_lowercase()).collect();
    for w in &only {
        if !matches!(w.as_str(), "w1" | "w2" | "w3" | "w4") {
            bail!("--only: unknown workload {w:?} (w1, w2, w3, w4)");
        }
    }
    opts.run_single_row_backlog = only.iter().any(|w| w == "w1");
    opts.run_one_big_transaction = only.iter().any(|w| w == "w2");
    opts.run_latency_under_load = only.iter().any(|w| w == "w3");
    opts.run_pattern_walks = only.iter().any(|w| w == "w4");
    opts.work_dir = args.work_dir.clone();
    if let Some(on) = args.w3_replica {
        opts.w3_replica = on;
    }
    if let Some(list) = &args.drain_sinks {
        opts.drain_sinks = sinks(list, "--drain-sinks")?;
    }
    if let Some(list) = &args.latency_sinks {
        opts.latency_sinks = sinks(list, "--latency-sinks")?;
    }
    Ok(opts)
}

fn sinks(list: &[String], flag: &str) -> Result<Vec<Sinks>> {
    list.iter()
        .map(|s| {
            Sinks::parse(s).with_context(|| {
                format!("{flag}: unknown sink set {s:?} (redis+kafka, discard, redis, kafka)")
            })
        })
        .collect()
}

async fn run(opts: Options) -> Result<Report> {
    let load_before = harness::load_average();
    let started_at = now_utc();
    let quick = opts.quick;
    let (run_single_row_backlog, run_one_big_transaction, run_latency_under_load) = (
        opts.run_single_row_backlog,
        opts.run_one_big_transaction,
        opts.run_latency_under_load,
    );
    let latency_sinks = opts.latency_sinks.clone();
    let w3_replica = opts.w3_replica;
    let (run_pattern_walks, w4_sizes) = (opts.run_pattern_walks, opts.w4_sizes.clone());
    let mut bench = Bench::start(opts).await?;
    let machine = bench.machine().await;
    let setup = bench.setup();
    let mut drains = Vec::new();
    if run_single_row_backlog {
        drains.push(bench.single_row_backlog().await?);
    }
    if run_one_big_transaction {
        drains.push(bench.one_big_transaction().await?);
    }
    let mut latency = Vec::new();
    if run_latency_under_load {
        for &sinks in &latency_sinks {
            latency.push(bench.latency_under_load(sinks, false).await?);
        }
        if let Some(&sinks) = latency_sinks.first().filter(|_| w3_replica) {
            latency.push(bench.latency_under_load(sinks, true).await?);
        }
    }
    let mut pattern_walks = Vec::new();
    if run_pattern_walks {
        for &size in &w4_sizes {
            pattern_walks.push(bench.pattern_walks(size).await?);
        }
    }
    drop(bench);
    let targets = report::targets(&drains, &latency);
    Ok(Report {
        format_version: report::FORMAT_VERSION,
        mode: if quick { "quick" } else { "full" }.into(),
        started_at,
        machine,
        setup,
        load_before,
        load_after: harness::load_average(),
        drains,
        latency,
        pattern_walks,
        targets,
    })
}

/// `2026-01-31 10:00 UTC`.
fn now_utc() -> String {
    let rfc3339 = time::format_rfc3339(time::now_micros());
    // 2026-01-31T10:00:00.123456Z
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => rfc3339,
    }
}
