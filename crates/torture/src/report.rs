//! The run's results: a Markdown section for people (printed and appended
//! to docs/reliability.md) and JSON for machines (the test reads it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::ledger::{Ledger, Tally};
use crate::plan::{Fault, Mode};
use crate::run::{secs, Options};

/// The large UPDATE committed and Postgres said so before the crash.
pub const LARGE_ACKNOWLEDGED: &str = "acknowledged";
/// The crash swallowed the answer; the rows show it committed.
pub const LARGE_ACK_LOST: &str = "committed, acknowledgement lost";
/// The crash aborted it.
pub const LARGE_ABORTED: &str = "aborted";

/// One cycle, as it went.
#[derive(Debug, Clone, Serialize)]
pub struct CycleRecord {
    pub number: usize,
    pub fault: Fault,
    pub outage_ms: u64,
    /// Changes attempted in the cycle (committed or not).
    pub changes: u64,
    pub resolved_committed: u64,
    pub resolved_not_committed: u64,
    pub max_lag_redis_ms: u32,
    pub max_lag_kafka_ms: u32,
    /// How long the check waited for the sinks.
    pub settle_ms: u64,
    pub took_ms: u64,
    /// Every committed change showed in both sinks in time.
    pub ok: bool,
    /// With a walsender terminated during the large UPDATE: how many of
    /// its changes had shown in Redis at that moment.
    pub large_delivered_at_cut: Option<u64>,
    /// With a Postgres crash during the large UPDATE: what became of it.
    pub large_outcome: Option<&'static str>,
    /// With a failover or a standby takeover: how long after the
    /// primary's stop or the active walbust's kill walbust streamed again.
    pub resumed_ms: Option<u64>,
    pub note: String,
}

impl CycleRecord {
    /// The progress line.
    pub fn line(&self, of: usize) -> String {
        format!(
            "[{:>3}/{of}] {:<24} {:>6} changes, {} in {:.1} s; max lag {:.1} s / {:.1} s; {}{}",
            self.number,
            self.fault.name(),
            self.changes,
            if self.ok {
                "all delivered"
            } else {
                "NOT ALL DELIVERED"
            },
            self.settle_ms as f64 / 1000.0,
            f64::from(self.max_lag_redis_ms) / 1000.0,
            f64::from(self.max_lag_kafka_ms) / 1000.0,
            self.note,
            self.large_outcome
                .map(|o| format!("; the UPDATE: {o}"))
                .unwrap_or_default()
        )
    }
}

/// Something that must not happen, with the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// 1-based; `None` outside the cycles.
    pub cycle: Option<usize>,
    pub fault: Option<&'static str>,
    pub what: String,
    /// walbust's log of the process involved.
    pub log: Option<PathBuf>,
    pub log_tail: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub fault: Fault,
    pub label: &'static str,
    #[serde(flatten)]
    pub tally: Tally,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub command: String,
    pub seed: u64,
    pub started_utc: String,
    pub duration_ms: u64,
    pub planned_cycles: usize,
    pub rate: u32,
    pub large_rows: i64,
    pub outage_min_ms: u64,
    pub outage_max_ms: u64,
    /// Kafka sink properties set on top of walbust's defaults, `KEY=VALUE`.
    pub kafka_properties: Vec<String>,
    pub rows: Vec<Row>,
    pub total: Tally,
    pub transactions: u64,
    pub walbust_starts: u32,
    pub unexpected_exits: u32,
    pub kafka_records: u64,
    pub malformed_records: u64,
    pub unexpected_tags: u64,
    pub unexpected_tag_sample: Vec<String>,
    pub cycles: Vec<CycleRecord>,
    pub findings: Vec<Finding>,
    pub scratch: PathBuf,
    /// No finding: nothing lost, no phantom, no hang, no unexpected exit.
    pub ok: bool,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &Options,
        started: SystemTime,
        took: Duration,
        planned_cycles: usize,
        (tally, total): (Vec<(Fault, Tally)>, Tally),
        ledger: &Ledger,
        cycles: Vec<CycleRecord>,
        mut findings: Vec<Finding>,
        walbust_starts: u32,
        unexpected_exits: u32,
        transactions: u64,
    ) -> Report {
        let rows: Vec<Row> = tally
            .into_iter()
            .map(|(fault, t)| Row {
                fault,
                label: fault.label(),
                tally: t,
            })
            .collect();
        for row in &rows {
            let t = &row.tally;
            let mut problem = |what: String| {
                findings.push(Finding {
                    cycle: None,
                    fault: Some(row.fault.name()),
                    what,
                    log: None,
                    log_tail: None,
                })
            };
            if t.lost() > 0 {
                problem(format!(
                    "{} committed changes never invalidated in Redis, {} never in Kafka (cycles {:?})",
                    t.lost_redis, t.lost_kafka, t.cycle_numbers
                ));
            }
            if t.phantoms() > 0 {
                problem(format!(
                    "{} uncommitted changes invalidated in Redis, {} in Kafka (cycles {:?})",
                    t.phantom_redis, t.phantom_kafka, t.cycle_numbers
                ));
            }
            if t.unresolved > 0 {
                problem(format!("{} changes with an unknown outcome", t.unresolved));
            }
        }
        let mut global = |what: String| {
            findings.push(Finding {
                cycle: None,
                fault: None,
                what,
                log: None,
                log_tail: None,
            })
        };
        if ledger.unexpected_count > 0 {
            global(format!(
                "{} invalidated tags belong to no change that was made (first: {})",
                ledger.unexpected_count,
                ledger
                    .unexpected_tags
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if ledger.malformed_records > 0 {
            global(format!(
                "{} Kafka records are not walbust's JSON, version 1",
                ledger.malformed_records
            ));
        }
        Report {
            mode: match opts.mode {
                Mode::Quick => "quick".to_owned(),
                Mode::Cycles(n) => format!("{n} cycles"),
                Mode::Full => "full".to_owned(),
            },
            command: opts.command.clone(),
            seed: opts.seed,
            started_utc: utc(started),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            planned_cycles,
            rate: opts.rate,
            large_rows: opts.large_rows,
            outage_min_ms: millis(opts.outage.min),
            outage_max_ms: millis(opts.outage.max),
            kafka_properties: opts
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            ok: findings.is_empty(),
            rows,
            total,
            transactions,
            walbust_starts,
            unexpected_exits,
            kafka_records: ledger.kafka_records,
            malformed_records: ledger.malformed_records,
            unexpected_tags: ledger.unexpected_count,
            unexpected_tag_sample: ledger.unexpected_tags.iter().take(100).cloned().collect(),
            cycles,
            findings,
            scratch: opts.scratch.clone(),
        }
    }

    /// The Markdown section: a heading, how it ran, the table, the rest.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let kind = match self.mode.as_str() {
            "full" => "full run".to_owned(),
            "quick" => "quick run (the test suite's)".to_owned(),
            other => format!("{other}, not the full run"),
        };
        s.push_str(&format!("### {} · {kind}\n\n", self.started_utc));
        s.push_str(&format!(
            "Command: `{}` (seed {})\n\n",
            self.command, self.seed
        ));
        let outages: Vec<u64> = self
            .cycles
            .iter()
            .filter(|c| c.fault.is_sink_outage())
            .map(|c| c.outage_ms)
            .collect();
        s.push_str(&format!(
            "{} of {} planned cycles in {}; {} workload transactions (about {}/s), a {}-row UPDATE in \
             the large-transaction faults; walbust started {} time{}{}.\n\n",
            self.cycles.len(),
            self.planned_cycles,
            human_duration(Duration::from_millis(self.duration_ms)),
            thousands(self.transactions),
            self.rate,
            thousands(self.large_rows.max(0) as u64),
            self.walbust_starts,
            if self.walbust_starts == 1 { "" } else { "s" },
            match (outages.iter().min(), outages.iter().max()) {
                (Some(min), Some(max)) => format!(
                    "; sink outages of {} to {}",
                    secs(Duration::from_millis(*min)),
                    secs(Duration::from_millis(*max))
                ),
                _ => String::new(),
            }
        ));
        s.push_str(&format!(
            "walbust at its default settings but `source.on_gap: purge` and `source.failover: true` with \
             both Postgres hosts in `source.url`{}; Postgres 18, a primary and a failover standby \
             (synchronous, slot synchronization), `wal_sender_timeout = 10s`; Redis with an \
             append-only file fsynced on every write.\n\n",
            if self.kafka_properties.is_empty() {
                String::new()
            } else {
                format!(
                    " except Kafka properties `{}`",
                    self.kafka_properties.join("`, `")
                )
            }
        ));
        s.push_str(
            "| fault | cycles | committed changes | covered by a purge | lost (Redis / Kafka) | duplicates | max lag (Redis / Kafka) |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        let line = |label: &str, t: &Tally| {
            format!(
                "| {label} | {} | {} | {} | {} / {} | {} | {} / {} |\n",
                t.cycles,
                thousands(t.committed),
                thousands(t.covered),
                t.lost_redis,
                t.lost_kafka,
                thousands(t.redelivered_kafka),
                secs(Duration::from_millis(u64::from(t.lag_redis.max_ms))),
                secs(Duration::from_millis(u64::from(t.lag_kafka.max_ms))),
            )
        };
        // Kinds left out (`--only`) have no row.
        for row in self.rows.iter().filter(|r| r.tally.cycles > 0) {
            s.push_str(&line(row.label, &row.tally));
        }
        s.push_str(&line("**all**", &self.total));
        s.push('\n');
        let t = &self.total;
        s.push_str(&format!(
            "- Lag: commit acknowledged to the client → counter seen in Redis / record consumed from \
             Kafka; median {} / {}, p99 {} / {} over all changes. It includes the outage or downtime \
             of the cycle's fault.\n",
            secs(Duration::from_millis(u64::from(t.lag_redis.p50_ms))),
            secs(Duration::from_millis(u64::from(t.lag_kafka.p50_ms))),
            secs(Duration::from_millis(u64::from(t.lag_redis.p99_ms))),
            secs(Duration::from_millis(u64::from(t.lag_kafka.p99_ms))),
        ));
        s.push_str(&format!(
            "- Duplicates: invalidations delivered again during these cycles (Kafka records \
             repeating a change: the redeliveries the fault caused; allowed, at-least-once). Over \
             the whole run, {} committed changes were invalidated more than once in Redis (version \
             counter above 1) and {} appeared in more than one Kafka record.\n\
             - Changes whose commit a Postgres crash left unknown, settled by reading the rows \
             after the restart: {} were committed (counted above: their invalidations are \
             required), {} were not.\n\
             - Changes never committed (rolled back, or lost to a crash): {}; invalidated anyway: \
             {} in Redis, {} in Kafka (must be 0).\n\
             - Tags invalidated that belong to no change made: {}. Kafka records read: {}, \
             malformed: {}.\n\
             - walbust exits on its own (it must never exit on these faults): {}.\n",
            thousands(t.duplicated_redis),
            thousands(t.duplicated_kafka),
            thousands(t.resolved_committed),
            thousands(self.cycles.iter().map(|c| c.resolved_not_committed).sum()),
            thousands(t.not_committed),
            t.phantom_redis,
            t.phantom_kafka,
            self.unexpected_tags,
            thousands(self.kafka_records),
            self.malformed_records,
            self.unexpected_exits,
        ));
        let cuts: Vec<String> = self
            .cycles
            .iter()
            .filter_map(|c| Some(thousands(c.large_delivered_at_cut?)))
            .collect();
        if !cuts.is_empty() {
            s.push_str(&format!(
                "- Walsender terminated while the large UPDATE streamed: {} of its {} changes \
                 had reached Redis at the cut.\n",
                cuts.join(", "),
                thousands(self.large_rows.max(0) as u64)
            ));
        }
        let outcomes: Vec<&str> = self.cycles.iter().filter_map(|c| c.large_outcome).collect();
        if !outcomes.is_empty() {
            let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
            s.push_str(&format!(
                "- Postgres crashes during the large UPDATE: {}; it committed before the crash \
                 in {}, committed with its acknowledgement lost in {}, was aborted in {}.\n",
                outcomes.len(),
                count(LARGE_ACKNOWLEDGED),
                count(LARGE_ACK_LOST),
                count(LARGE_ABORTED),
            ));
        }
        for (fault, what) in [
            (
                Fault::StandbyTakeover,
                "- Standby takeovers: the standby walbust streamed the slot",
            ),
            (
                Fault::PostgresFailover,
                "- Postgres failovers: walbust streamed from the promoted standby",
            ),
        ] {
            let mut took: Vec<u64> = self
                .cycles
                .iter()
                .filter(|c| c.fault == fault)
                .filter_map(|c| c.resumed_ms)
                .collect();
            let of = self.cycles.iter().filter(|c| c.fault == fault).count();
            if of == 0 {
                continue;
            }
            took.sort_unstable();
            let at = |q: usize| secs(Duration::from_millis(took[(took.len() - 1) * q / 100]));
            let after = match fault {
                Fault::StandbyTakeover => "after the active one's `kill -9`",
                _ => "after the primary's immediate stop (promotion 0 to 2 s after it)",
            };
            if took.is_empty() {
                s.push_str(&format!("{what} in none of {of} cycles.\n"));
            } else {
                s.push_str(&format!(
                    "{what} {after} in {} (min) / {} (median) / {} (max), {} of {of} cycles.\n",
                    at(0),
                    at(50),
                    at(100),
                    took.len()
                ));
            }
        }
        if self.ok {
            s.push_str("- Result: **no lost invalidation, no finding.**\n");
        } else {
            s.push_str(&format!(
                "- Result: **FAILED**, {} finding(s):\n",
                self.findings.len()
            ));
            for f in &self.findings {
                s.push_str(&format!(
                    "  - {}{}{}\n",
                    f.cycle.map(|c| format!("cycle {c}: ")).unwrap_or_default(),
                    f.fault.map(|x| format!("[{x}] ")).unwrap_or_default(),
                    f.what
                ));
            }
        }
        s
    }

    /// Appends the Markdown section to `path` (created if missing).
    pub fn append_to(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let sep = if existing > 0 { "\n" } else { "" };
        write!(file, "{sep}{}", self.markdown())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 h 02 min`, `12 min 05 s`, `45 s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec} s"),
        (0, min, sec) => format!("{min} min {sec:02} s"),
        (h, min, _) => format!("{h} h {min:02} min"),
    }
}

/// `2026-11-22 10:05 UTC`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to a Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(utc(t), "2000-02-29 12:34 UTC");
        // 2026-11-22 00:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_305_600);
        assert_eq!(utc(t), "2026-11-22 00:00 UTC");
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(human_duration(Duration::from_secs(725)), "12 min 05 s");
        assert_eq!(human_duration(Duration::from_secs(3_720)), "1 h 02 min");
    }
}
