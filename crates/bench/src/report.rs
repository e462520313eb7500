//! The figures of one benchmark run: what is written as JSON, the Markdown tables printed and
//! added to docs/benchmarks.md, and the verdict on each performance target.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Version of the JSON layout below.
pub const FORMAT_VERSION: u32 = 1;

/// The heading of this harness's section in docs/benchmarks.md.
pub const DOCS_HEADING: &str = "## End to end (scripts/bench.sh)";

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format_version: u32,
    /// `quick` (smoke-test sizes) or `full` (the sizes the targets are about).
    pub mode: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub machine: Machine,
    pub setup: Setup,
    /// 1, 5 and 15 minute load averages when the run started and when it ended.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub drains: Vec<Drain>,
    pub latency: Vec<Latency>,
    /// W4, one run per Redis size.
    #[serde(default)]
    pub pattern_walks: Vec<crate::harness::PatternWalks>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    pub postgres: String,
    pub redis: String,
    /// `git rev-parse --short HEAD` of the working directory, when it is a checkout.
    pub walbust_commit: Option<String>,
    /// `release` or `debug`, from the walbust binary's path.
    pub walbust_build: String,
}

/// How the servers and walbust were set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// Settings given to Postgres on top of testkit's (`fsync = off`, `wal_level = logical`).
    pub postgres_settings: Vec<(String, String)>,
    /// What played Kafka.
    pub kafka: String,
    /// `source.status_interval_ms` of the walbust runs.
    pub status_interval_ms: u64,
    /// The rules file walbust ran with.
    pub rules: String,
    /// Rows in the table every workload updates.
    pub table_rows: u64,
}

/// One backlog drained by every consumer, each from its own slot created at the same LSN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drain {
    /// `W1`, `W2`.
    pub workload: String,
    pub description: String,
    pub transactions: u64,
    /// Row changes in the backlog.
    pub changes: u64,
    /// WAL between the slots' position and the end of the backlog.
    pub wal_bytes: u64,
    /// How long generating the backlog took (not a figure of walbust).
    pub generate_seconds: f64,
    pub load_before: [f64; 3],
    /// pg_recvlogical first, then walbust with each sink set, then pg_recvlogical again.
    pub runs: Vec<DrainRun>,
}

/// One consumer draining a backlog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainRun {
    /// `pg_recvlogical` or `walbust redis+kafka`, `walbust discard`, ...
    pub consumer: String,
    /// Start of the process to the end: pg_recvlogical's exit at `--endpos`; walbust's slot
    /// `confirmed_flush_lsn` reaching the end of the backlog.
    pub seconds: f64,
    /// The faster pg_recvlogical run's seconds divided by these (1.0 = as fast; higher is
    /// better).
    pub ratio: f64,
    pub transactions_per_second: f64,
    pub changes_per_second: f64,
    /// Start of the process to its slot becoming active.
    pub startup_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_100k_changes: Option<f64>,
    /// CPU seconds of the walsender serving this consumer.
    pub walsender_cpu_seconds: Option<f64>,
    /// CPU seconds of redis-server during the run.
    pub redis_cpu_seconds: Option<f64>,
    /// CPU seconds of the harness process during the run: mostly the in-process Kafka mock
    /// cluster.
    pub harness_cpu_seconds: Option<f64>,
    /// `walbust_changes_total` at the end (walbust runs only).
    pub changes_seen: Option<u64>,
    /// Batches confirmed by every sink (`walbust_pipeline_batches_total`; walbust runs only).
    pub batches: Option<u64>,
    /// Context switches of the consumer's threads per change: thread hand-offs and waits.
    pub context_switches_per_change: Option<f64>,
}

/// W3 with one sink set: a steady write rate and walbust's commit-to-confirm latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// `redis` or `kafka`: the sinks walbust ran with, so the latency is to that sink.
    pub sinks: String,
    pub rate_target: u32,
    pub seconds_target: u64,
    pub load_before: [f64; 3],
    /// pgbench's `tps` (without connection time).
    pub achieved_tps: Option<f64>,
    /// Transactions committed (pgbench's plus the final marker).
    pub transactions: u64,
    /// pgbench's average transaction latency and schedule lag (how late it started them).
    pub pgbench_latency_avg_ms: Option<f64>,
    pub pgbench_lag_avg_ms: Option<f64>,
    /// Commit timestamp (Begin message) to confirmation by the sink, per batch, from walbust's
    /// summary; it covers the last 40 to 60 s of the run.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Batches observed (the summary's `_count`).
    pub batches: u64,
    /// From the end of the load to the last commit confirmed.
    pub catch_up_seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_100k_changes: Option<f64>,
    pub changes_seen: Option<u64>,
    /// CPU seconds, from the start of the load to the end of the catch-up, of the walsender
    /// serving walbust, of redis-server, and of the harness process (the Kafka mock cluster;
    /// pgbench is a process of its own and not counted).
    pub walsender_cpu_seconds: Option<f64>,
    pub redis_cpu_seconds: Option<f64>,
    pub harness_cpu_seconds: Option<f64>,
    /// With a replica in `source.replicas`: how long batches waited for it to replay them
    /// (`walbust_replica_wait_seconds`), and how many gave up waiting.
    #[serde(default)]
    pub replica_wait_p50_ms: Option<f64>,
    #[serde(default)]
    pub replica_wait_p99_ms: Option<f64>,
    #[serde(default)]
    pub replica_wait_timeouts: Option<u64>,
}

/// A performance target and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub target: String,
    pub figure: String,
    /// `None` when the run has no figure for it (workload not run).
    pub met: Option<bool>,
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

/// Checks the design's targets against the figures.
pub fn targets(drains: &[Drain], latency: &[Latency]) -> Vec<Target> {
    let mut out = Vec::new();
    let run = |w: &str, consumer: &str| {
        drains
            .iter()
            .find(|d| d.workload == w)
            .and_then(|d| d.runs.iter().find(|r| r.consumer == consumer))
    };
    for w in ["W1", "W2"] {
        let r = run(w, "walbust redis+kafka");
        out.push(Target {
            target: format!("{w}: throughput ratio with Redis and Kafka ≥ 0.9"),
            figure: r.map_or("not run".into(), |r| format!("{:.2}", r.ratio)),
            met: r.map(|r| r.ratio >= 0.9),
        });
    }
    let redis = latency.iter().find(|l| l.sinks == "redis");
    for (name, pick, limit) in [
        ("p50", redis.and_then(|l| l.p50_ms), 3.0),
        ("p99", redis.and_then(|l| l.p99_ms), 15.0),
    ] {
        out.push(Target {
            target: format!("W3: commit to Redis {name} < {limit} ms"),
            figure: pick.map_or("not measured".into(), |v| format!("{v:.2} ms")),
            met: pick.map(|v| v < limit),
        });
    }
    let walbust_rss = |w: &str| {
        drains.iter().find(|d| d.workload == w).and_then(|d| {
            d.runs
                .iter()
                .filter(|r| r.consumer.starts_with("walbust"))
                .filter_map(|r| r.peak_rss_mib)
                .reduce(f64::max)
        })
    };
    let w3_rss = latency
        .iter()
        .filter_map(|l| l.peak_rss_mib)
        .reduce(f64::max);
    for (w, rss, limit) in [
        ("W1", walbust_rss("W1"), 64.0),
        ("W2", walbust_rss("W2"), 256.0),
        ("W3", w3_rss, 64.0),
    ] {
        out.push(Target {
            target: format!("{w}: walbust peak RSS < {limit} MiB"),
            figure: rss.map_or("not run".into(), |v| format!("{v:.1} MiB")),
            met: rss.map(|v| v < limit),
        });
    }
    out
}

impl Report {
    /// The tables, in Markdown (printed as they are, and added to docs/benchmarks.md).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "### {} · {} · {} cores ({}), {:.1} GiB, PostgreSQL {}, Redis {}\n",
            self.started_at,
            self.mode,
            m.cores,
            m.cpu_model,
            m.memory_mib as f64 / 1024.0,
            m.postgres,
            m.redis
        );
        let _ = writeln!(
            s,
            "walbust {} ({} build); Kafka: {}; load average (1/5/15 min) {} before, {} after; \
             Linux {}.\n",
            m.walbust_commit.as_deref().unwrap_or("(unknown commit)"),
            m.walbust_build,
            self.setup.kafka,
            load(self.load_before),
            load(self.load_after),
            m.kernel
        );
        if self.mode == "quick" {
            s.push_str(
                "Quick mode: sizes too small for the figures or the targets to mean anything.\n\n",
            );
        }
        for d in &self.drains {
            let _ = writeln!(
                s,
                "**{}**: {} ({} transactions, {} changes, {:.1} MiB of WAL; load {:.2} at the start)\n",
                d.workload,
                d.description,
                d.transactions,
                d.changes,
                mib(d.wal_bytes),
                d.load_before[0]
            );
            s.push_str(
                "| consumer | drain s | start s | tx/s | changes/s | ratio | batches | ctx switches / change | peak RSS MiB | CPU s | CPU s / 100k changes | walsender CPU s | redis CPU s | harness (Kafka mock) CPU s |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for r in &d.runs {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.consumer,
                    r.seconds,
                    opt(r.startup_seconds, 2),
                    r.transactions_per_second,
                    r.changes_per_second,
                    r.ratio,
                    r.batches.map_or_else(|| "–".to_string(), |b| b.to_string()),
                    opt(r.context_switches_per_change, 2),
                    opt(r.peak_rss_mib, 1),
                    opt(r.cpu_seconds, 2),
                    opt(r.cpu_seconds_per_100k_changes, 2),
                    opt(r.walsender_cpu_seconds, 2),
                    opt(r.redis_cpu_seconds, 2),
                    opt(r.harness_cpu_seconds, 2),
                );
            }
            s.push('\n');
        }
        if let Some(first) = self.latency.first() {
            let _ = writeln!(
                s,
                "**W3**: {} single-row UPDATE transactions per second for {} s, synchronous_commit=on; \
                 commit timestamp to the sink's confirmation, per batch\n",
                first.rate_target, first.seconds_target
            );
            s.push_str(
                "| sink | achieved tx/s | pgbench lag ms | p50 ms | p95 ms | p99 ms | max ms | batches | catch-up s | peak RSS MiB | CPU s | CPU s / 100k changes | walsender CPU s | redis CPU s | harness (Kafka mock) CPU s | load | replica wait p50 / p99 ms |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for l in &self.latency {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                    l.sinks,
                    opt(l.achieved_tps, 0),
                    opt(l.pgbench_lag_avg_ms, 2),
                    opt(l.p50_ms, 2),
                    opt(l.p95_ms, 2),
                    opt(l.p99_ms, 2),
                    opt(l.max_ms, 2),
                    l.batches,
                    l.catch_up_seconds,
                    opt(l.peak_rss_mib, 1),
                    opt(l.cpu_seconds, 2),
                    opt(l.cpu_seconds_per_100k_changes, 2),
                    opt(l.walsender_cpu_seconds, 2),
                    opt(l.redis_cpu_seconds, 2),
                    opt(l.harness_cpu_seconds, 2),
                    l.load_before[0],
                    match (l.replica_wait_p50_ms, l.replica_wait_p99_ms) {
                        (None, None) => "–".to_owned(),
                        (p50, p99) => format!("{} / {}", opt(p50, 2), opt(p99, 2)),
                    },
                );
            }
            s.push('\n');
        }
        if let Some(first) = self.pattern_walks.first() {
            let _ = writeln!(
                s,
                "**W4**: Redis holds N unrelated keys; {} single-row UPDATE transactions per second \
                 for {} s, each invalidating one key and one pattern of its own (Redis sink). Keys and patterns: from the client seeing its COMMIT \
                 acknowledged to Redis announcing the removal (keyspace notifications); confirm: \
                 walbust's commit-to-confirm summary; kept up: the slot confirmed everything within \
                 two walk durations (+1 s) of the load's end\n",
                first.rate_target, first.seconds_target
            );
            s.push_str(
                "| N | strategy | achieved tx/s | key p50 / p99 / max ms | pattern p50 / p99 / max ms | missed keys / patterns | confirm p50 / p99 ms | walks | patterns per walk | walk p50 / max ms | catch-up s | kept up | patterns within 2 walks | load |\n\
                 |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n",
            );
            for w in &self.pattern_walks {
                let yes = |b: bool| if b { "yes" } else { "**no**" };
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {} / {} / {} | {} / {} / {} | {} / {} | {} / {} | {} | {} | {} / {} | {:.2} | {} | {} | {:.2} |",
                    w.unrelated_keys,
                    w.pattern_strategy,
                    w.achieved_tps,
                    opt(w.key_p50_ms, 2),
                    opt(w.key_p99_ms, 2),
                    opt(w.key_max_ms, 2),
                    opt(w.pattern_p50_ms, 1),
                    opt(w.pattern_p99_ms, 1),
                    opt(w.pattern_max_ms, 1),
                    w.keys_missed,
                    w.patterns_missed,
                    opt(w.confirm_p50_ms, 1),
                    opt(w.confirm_p99_ms, 1),
                    w.walks,
                    opt(w.patterns_per_walk, 1),
                    opt(w.walk_p50_ms, 1),
                    opt(w.walk_max_ms, 1),
                    w.catch_up_seconds,
                    yes(w.kept_up()),
                    yes(w.patterns_within_two_walks()),
                    w.load_before[0],
                );
            }
            s.push('\n');
        }
        s.push_str("| target | figure | met |\n|---|---:|---|\n");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(s, "| {} | {} | {} |", t.target, t.figure, met);
        }
        s
    }
}

fn load(l: [f64; 3]) -> String {
    format!("{:.2}/{:.2}/{:.2}", l[0], l[1], l[2])
}

/// Adds `block` at the end of this harness's section of `path` (created, with the section, when
/// missing). Other sections of the file are left as they are.
pub fn append_to_docs(path: &Path, block: &str) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let updated = insert_block(&text, block);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

fn insert_block(text: &str, block: &str) -> String {
    let block = format!("{}\n", block.trim_end());
    let Some(start) = find_heading(text, DOCS_HEADING) else {
        let mut out = text.trim_end().to_string();
        if out.is_empty() {
            out.push_str("# Benchmarks");
        }
        let _ = write!(
            out,
            "\n\n{DOCS_HEADING}\n\nResults of `scripts/bench.sh`, newest last.\n\n{block}"
        );
        return out;
    };
    let after = start + DOCS_HEADING.len();
    let end = text[after..]
        .match_indices("\n## ")
        .next()
        .map_or(text.len(), |(i, _)| after + i + 1);
    let (head, tail) = text.split_at(end);
    let mut out = head.trim_end().to_string();
    out.push_str("\n\n");
    out.push_str(&block);
    if !tail.is_empty() {
        out.push('\n');
        out.push_str(tail);
    }
    out
}

/// Byte offset of a line that is exactly `heading`.
fn find_heading(text: &str, heading: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == heading {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_section_is_added_after_the_others() {
        let text = "# Benchmarks\n\n## Decoder\n\nfast\n";
        let out = insert_block(text, "### run 1\n| a |");
        assert!(out.starts_with("# Benchmarks\n\n## Decoder\n\nfast\n\n## End to end"));
        assert!(out.ends_with("### run 1\n| a |\n"));
    }

    #[test]
    fn results_go_to_the_end_of_our_section_only() {
        let text = format!(
            "# Benchmarks\n\n{DOCS_HEADING}\n\nHow to run.\n\n### run 1\n\n## Rules\n\nrules text\n"
        );
        let out = insert_block(&text, "### run 2\n");
        let ours = out.find("### run 2").unwrap();
        assert!(out.find("### run 1").unwrap() < ours);
        assert!(ours < out.find("## Rules").unwrap());
        assert!(out.ends_with("## Rules\n\nrules text\n"));
        assert_eq!(out.matches(DOCS_HEADING).count(), 1);
    }

    #[test]
    fn an_empty_file_gets_a_title() {
        let out = insert_block("", "### run\n");
        assert!(out.starts_with("# Benchmarks\n\n## End to end"));
    }

    fn run(consumer: &str, ratio: f64, rss: f64) -> DrainRun {
        DrainRun {
            consumer: consumer.into(),
            seconds: 1.0,
            ratio,
            transactions_per_second: 1.0,
            changes_per_second: 1.0,
            startup_seconds: None,
            peak_rss_mib: Some(rss),
            cpu_seconds: None,
            cpu_seconds_per_100k_changes: None,
            walsender_cpu_seconds: None,
            redis_cpu_seconds: None,
            harness_cpu_seconds: None,
            changes_seen: None,
            batches: None,
            context_switches_per_change: None,
        }
    }

    #[test]
    fn targets_follow_the_figures() {
        let drain = |w: &str, ratio, rss| Drain {
            workload: w.into(),
            description: String::new(),
            transactions: 1,
            changes: 1,
            wal_bytes: 1,
            generate_seconds: 1.0,
            load_before: [0.0; 3],
            runs: vec![
                run("pg_recvlogical", 1.0, 1.0),
                run("walbust redis+kafka", ratio, rss),
                run("walbust discard", 1.0, 10.0),
            ],
        };
        let drains = vec![drain("W1", 0.95, 70.0), drain("W2", 0.5, 100.0)];
        let t = targets(&drains, &[]);
        let met: Vec<Option<bool>> = t.iter().map(|t| t.met).collect();
        assert_eq!(
            met,
            vec![
                Some(true),
                Some(false),
                None,
                None,
                Some(false),
                Some(true),
                None
            ]
        );
    }
}
