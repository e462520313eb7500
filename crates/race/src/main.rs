//! walbust-race: readers fill a cache through Redis while writers update
//! the rows and walbust invalidates them; once the writers stopped and
//! walbust confirmed everything, it counts the cached entries that still
//! hold an old value. Those stay stale until the row changes again.
//!
//! Each mode combines how readers fill (plain `SET`, or fenced through
//! walbust's Redis functions), where they read on a miss (the primary, or
//! a streaming replica that applies commits late), and when walbust
//! invalidates (at commit, or once the replica replayed the commit:
//! `source.replicas`). See docs/consistency.md for what each mode shows.
//!
//! Exit status: 0 done (with `--check`: the results hold what walbust
//! promises), 1 `--check` failed, 2 the run itself failed.

mod round;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::round::{Fill, Invalidate, Mode, Read, Tally};

#[derive(Parser)]
#[command(
    name = "walbust-race",
    about = "Counts cache entries left stale by the fill race and replica lag, per fill protocol and invalidation mode"
)]
struct Args {
    /// The walbust binary to run.
    #[arg(long)]
    walbust: PathBuf,
    /// Rounds per mode.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Concurrent readers (read-through clients).
    #[arg(long, default_value_t = 12)]
    readers: usize,
    /// Concurrent writers (single-row updates, autocommit).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Hot rows the readers and writers pick from at random.
    #[arg(long, default_value_t = 50)]
    rows: i32,
    /// A reader's work between reading the row and filling the cache, ms.
    #[arg(long, default_value_t = 2)]
    work_ms: u64,
    /// How long writers write in each round, ms.
    #[arg(long, default_value_t = 1000)]
    round_ms: u64,
    /// The replica's `recovery_min_apply_delay`, ms.
    #[arg(long, default_value_t = 30)]
    apply_delay_ms: u64,
    /// Only these modes (names as in the table, e.g. `fenced/replica/replica-aware`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Exit 1 unless fenced fills with replica-aware invalidation left no
    /// stale entry and plain fills on the replica left some (the harness
    /// sees what it claims walbust prevents).
    #[arg(long)]
    check: bool,
    /// Replace the results table in this Markdown file (between
    /// `<!-- race:begin -->` and `<!-- race:end -->`).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Seed of the readers' and writers' row choices.
    #[arg(long)]
    seed: Option<u64>,
    /// Where walbust's logs and configurations go (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("walbust-race: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Every mode, in table order.
fn modes() -> Vec<Mode> {
    let mut modes = Vec::new();
    for invalidate in [Invalidate::AtCommit, Invalidate::ReplicaAware] {
        for read in [Read::Primary, Read::Replica] {
            for fill in [Fill::Plain, Fill::Fenced] {
                modes.push(Mode {
                    fill,
                    read,
                    invalidate,
                });
            }
        }
    }
    modes
}

async fn run(args: Args) -> Result<bool> {
    let modes: Vec<Mode> = modes()
        .into_iter()
        .filter(|m| args.only.is_empty() || args.only.contains(&m.name()))
        .collect();
    if modes.is_empty() {
        let names: Vec<String> = self::modes().iter().map(Mode::name).collect();
        bail!("--only names no mode; modes: {}", names.join(", "));
    }
    if !args.walbust.is_file() {
        bail!(
            "no walbust binary at {} (cargo build -p walbust)",
            args.walbust.display()
        );
    }
    let scratch = tempfile_dir(args.logs.as_deref())?;
    let services = round::Services::start(args.rows, Duration::from_millis(args.apply_delay_ms))
        .await
        .context("starting Postgres, its replica and Redis")?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "walbust-race: {} mode(s) x {} round(s), {} readers, {} writers, {} rows, {} ms reader work, replica {} ms behind, seed {seed}",
        modes.len(),
        args.rounds,
        args.readers,
        args.writers,
        args.rows,
        args.work_ms,
        args.apply_delay_ms
    );
    let shape = round::Shape {
        readers: args.readers,
        writers: args.writers,
        rows: args.rows,
        work: Duration::from_millis(args.work_ms),
        writing: Duration::from_millis(args.round_ms),
    };
    let mut results = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let started = Instant::now();
        let config = services.write_config(&scratch.path, *mode, i)?;
        let mut walbust = round::Walbust::start(&args.walbust, &config)?;
        services.wait_streaming(&mut walbust).await?;
        let mut tally = Tally::default();
        for r in 0..args.rounds {
            let round_seed = seed ^ ((i as u64) << 32) ^ u64::from(r);
            let got = round::round(&services, &shape, *mode, round_seed, &mut walbust)
                .await
                .with_context(|| format!("{} round {}", mode.name(), r + 1))?;
            tally.add(got);
        }
        walbust.stop()?;
        eprintln!(
            "walbust-race: {}: {} stale of {} cached ({:.1} s)",
            mode.name(),
            tally.stale,
            tally.cached,
            started.elapsed().as_secs_f64()
        );
        results.push((*mode, tally));
    }
    let table = round::table(&results);
    println!("{table}");
    if let Some(docs) = &args.docs {
        let shape_line = format!(
            "{} rounds per mode, {} readers, {} writers, {} hot rows, {} ms of reader work, writers write {} ms per round, replica applies commits {} ms late.",
            args.rounds, args.readers, args.writers, args.rows, args.work_ms, args.round_ms, args.apply_delay_ms
        );
        write_docs(docs, &format!("{shape_line}\n\n{table}"))?;
    }
    if !args.check {
        return Ok(true);
    }
    let mut ok = true;
    for (mode, tally) in &results {
        if mode.fill == Fill::Fenced && mode.invalidate == Invalidate::ReplicaAware {
            if tally.stale > 0 {
                eprintln!(
                    "walbust-race: check failed: {} left {} stale entries",
                    mode.name(),
                    tally.stale
                );
                ok = false;
            }
            if tally.cached == 0 {
                eprintln!("walbust-race: check failed: {} cached nothing", mode.name());
                ok = false;
            }
        }
        if mode.fill == Fill::Plain
            && mode.read == Read::Replica
            && mode.invalidate == Invalidate::AtCommit
            && tally.stale == 0
        {
            eprintln!(
                "walbust-race: check failed: {} left no stale entry: the harness does not see the race it measures",
                mode.name()
            );
            ok = false;
        }
    }
    Ok(ok)
}

/// A directory for configurations and logs: `logs` (kept) or a temporary
/// one (removed on drop).
struct Scratch {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

fn tempfile_dir(logs: Option<&Path>) -> Result<Scratch> {
    match logs {
        Some(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(Scratch {
                path: path.to_owned(),
                _temp: None,
            })
        }
        None => {
            let temp = tempfile::tempdir().context("a scratch directory")?;
            Ok(Scratch {
                path: temp.path().to_owned(),
                _temp: Some(temp),
            })
        }
    }
}

const BEGIN: &str = "<!-- race:begin -->";
const END: &str = "<!-- race:end -->";

/// Replaces the text between the markers in `path` (appending both, under a
/// heading, when the file has none).
fn write_docs(path: &Path, text: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{text}\n{END}");
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &doc[..b], &doc[e + END.len()..])
        }
        _ => format!("{}\n## Race harness results\n\n{block}\n", doc.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
