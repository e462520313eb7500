//! walbust-torture: runs walbust on throwaway Postgres, Redis and Kafka
//! while injecting faults at random moments (kill -9, SIGTERM, Postgres
//! crashes, walsender terminations, sink outages), and checks after every
//! cycle that each committed change was invalidated in Redis and appeared
//! in Kafka. See docs/reliability.md for the method and the results.
//!
//! Map:
//!
//! | module | role |
//! |---|---|
//! | `plan` | fault kinds, the cycles of a mode, timing, the seeded RNG |
//! | `services` | the throwaway servers, schema, rules and walbust's configuration |
//! | `workload` | the sequenced writes, and resolving commits a crash left unknown |
//! | `ledger` | every change, its fate in Postgres, when each sink showed it; the tally |
//! | `observe` | the Redis and Kafka observers |
//! | `walbust` | the walbust process: start, kill, SIGTERM, logs |
//! | `run` | the cycles: inject, recover, check |
//! | `report` | Markdown and JSON results |
//!
//! Exit status: 0 when nothing was found, 1 on a finding (a lost or
//! phantom invalidation, a hang, an unexpected exit), 2 when the run itself
//! could not be carried out.

mod ledger;
mod observe;
mod plan;
mod report;
mod run;
mod services;
mod walbust;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::plan::{Fault, Mode, Span};
use crate::run::Options;

const EXIT_FINDING: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// Set by scripts/torture.sh: the command line to print as "how to repeat".
const COMMAND_ENV: &str = "WALBUST_TORTURE_COMMAND";

#[derive(Parser, Debug)]
#[command(
    name = "walbust-torture",
    about = "Injects faults into walbust and its services and checks that no committed change goes uninvalidated",
    long_about = "Runs walbust on a throwaway Postgres 18 primary and failover standby, Redis (append-only file, fsync always) and a mock \
Kafka cluster. A workload writes sequenced rows, each change with a tag of its own, while each cycle \
injects one fault at a random moment: kill -9 or SIGTERM of walbust, an immediate Postgres stop (also \
during a large UPDATE), termination of the walsender (also while a large transaction streams), a Redis \
or Kafka outage, schema, publication and slot changes, a Postgres failover, a standby walbust taking \
over from a killed one. After each cycle every committed change must show in Redis (its version counter) and \
in a Kafka record. Prints a table of the results, optionally appends it to a Markdown file and writes \
JSON."
)]
struct Args {
    /// The test suite's short run: 18 cycles mixing every fault kind, short outages.
    #[arg(long, conflicts_with_all = ["full", "cycles"])]
    quick: bool,
    /// The acceptance run: 200 kill -9, 20 SIGTERM, 50 Postgres crashes, 20 walsender
    /// terminations, 10 Redis and 10 Kafka outages of 15 s to 5 min, 10 Postgres failovers,
    /// 20 standby takeovers and 40 schema, publication and slot changes. Takes about 1.5 hours.
    #[arg(long, conflicts_with = "cycles")]
    full: bool,
    /// Run this many cycles, mixing every fault kind.
    #[arg(long)]
    cycles: Option<usize>,
    /// Seed of the plan and of every random choice (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The walbust binary (default: `walbust` next to this program).
    #[arg(long)]
    walbust: Option<PathBuf>,
    /// Folder for walbust's logs (one per start), its configuration and
    /// results (default: a new folder under the system's temp dir).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Append the Markdown results to this file (e.g. docs/reliability.md).
    #[arg(long)]
    append: Option<PathBuf>,
    /// Write the results as JSON here (default: results.json in the scratch folder).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Workload transactions per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Rows changed by the large UPDATE.
    #[arg(long, default_value_t = 50_000)]
    large_rows: i64,
    /// Sink outage lengths in seconds, `MIN-MAX` (default: by mode).
    #[arg(long, value_parser = parse_span)]
    outage_secs: Option<Span>,
    /// Seconds every committed change may take to show once a fault is over (default: by mode).
    #[arg(long)]
    settle_secs: Option<u64>,
    /// With --cycles: inject only this fault kind (repeatable), to reproduce a finding. Kinds:
    /// walbust-kill, walbust-term, postgres-crash, postgres-crash-large-tx, walsender-kill,
    /// walsender-kill-large-tx, redis-outage, kafka-outage, publication-blink, table-rename,
    /// slot-replace, column-rename-mid-tx, postgres-failover, standby-takeover.
    #[arg(long, value_parser = parse_fault)]
    only: Vec<Fault>,
    /// Go on after a cycle whose changes did not all show in time.
    #[arg(long)]
    keep_going: bool,
    /// walbust's log filter.
    #[arg(long, default_value = "info")]
    walbust_log: String,
    /// A librdkafka property for walbust's Kafka sink, `KEY=VALUE` (repeatable). The quick run
    /// sets socket.timeout.ms=10000 unless given any: a request lost in a broker outage then
    /// holds the pipeline 10 s instead of librdkafka's default 60 s.
    #[arg(long = "kafka-property", value_parser = parse_property)]
    kafka_properties: Vec<(String, String)>,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    Fault::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
        format!("unknown fault {s:?}; one of: {}", names.join(", "))
    })
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_span(s: &str) -> Result<Span, String> {
    let (min, max) = s.split_once('-').unwrap_or((s, s));
    let parse = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{v:?} is not a number of seconds"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err(format!("{min} is more than {max}"));
    }
    Ok(Span::millis(min * 1000, max * 1000))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walbust-torture: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FINDING),
        Err(e) => {
            eprintln!("walbust-torture: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `Ok(true)` when the run found nothing.
async fn main_async(args: Args) -> Result<bool> {
    let opts = options(&args)?;
    std::fs::create_dir_all(&opts.scratch)
        .with_context(|| format!("cannot create {}", opts.scratch.display()))?;
    let report = run::run(&opts).await?;
    let markdown = report.markdown();
    println!("\n{markdown}");
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| opts.scratch.join("results.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    eprintln!("walbust-torture: results in {}", json.display());
    if let Some(path) = &args.append {
        report.append_to(path)?;
        eprintln!("walbust-torture: table appended to {}", path.display());
    }
    for f in &report.findings {
        if let (Some(log), Some(tail)) = (&f.log, &f.log_tail) {
            eprintln!(
                "--- finding: {}\n--- last lines of {}:\n{tail}",
                f.what,
                log.display()
            );
        }
    }
    eprintln!(
        "walbust-torture: walbust's logs are in {}",
        opts.scratch.display()
    );
    Ok(report.ok)
}

fn options(args: &Args) -> Result<Options> {
    let mode = match (args.quick, args.full, args.cycles) {
        (true, _, _) => Mode::Quick,
        (_, true, _) => Mode::Full,
        (_, _, Some(0)) => bail!("--cycles must be at least 1"),
        (_, _, Some(n)) => Mode::Cycles(n),
        _ => bail!("choose --quick, --cycles N or --full"),
    };
    if !args.only.is_empty() && !matches!(mode, Mode::Cycles(_)) {
        bail!("--only goes with --cycles N: --quick and --full inject every kind");
    }
    let walbust = match &args.walbust {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot locate this executable")?
            .with_file_name(format!("walbust{}", std::env::consts::EXE_SUFFIX)),
    };
    if !walbust.is_file() {
        bail!(
            "{} is missing: build it first: cargo build -p walbust (or pass --walbust PATH)",
            walbust.display()
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let scratch = match &args.scratch {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "walbust-torture-{}-{seed}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )),
    };
    if args.large_rows < 1 {
        bail!("--large-rows must be at least 1");
    }
    let mut timing = mode.timing();
    if let Some(s) = args.settle_secs {
        timing.settle = Duration::from_secs(s);
    }
    let command = std::env::var(COMMAND_ENV).unwrap_or_else(|_| {
        std::env::args()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    "walbust-torture".to_owned()
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    // The seed goes into the command so that it repeats this run's plan.
    let command = if args.seed.is_some() {
        command
    } else {
        format!("{command} --seed {seed}")
    };
    Ok(Options {
        mode,
        seed,
        walbust,
        scratch,
        rate: args.rate,
        large_rows: args.large_rows,
        outage: args.outage_secs.unwrap_or(mode.outage()),
        timing,
        keep_going: args.keep_going,
        log_filter: args.walbust_log.clone(),
        only: args.only.clone(),
        kafka_properties: match (mode, args.kafka_properties.is_empty()) {
            (Mode::Quick, true) => vec![("socket.timeout.ms".to_owned(), "10000".to_owned())],
            _ => args.kafka_properties.clone(),
        },
        command,
    })
}
