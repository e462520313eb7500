//! What a run does: the fault kinds, the order of the cycles, their timing,
//! and the seeded random source behind every choice.
//!
//! A run is a list of cycles, each injecting one fault. The list is fixed up
//! front from the seed, so a failing run can be repeated with the same
//! faults in the same order (the exact moments still depend on the machine).

use std::time::Duration;

use serde::Serialize;

/// One kind of fault, injected once per cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` of walbust, restarted after a random pause.
    WalbustKill,
    /// SIGTERM of walbust, which must exit 0; restarted after a random pause.
    WalbustTerm,
    /// `pg_ctl stop -m immediate` (a crash) and a restart of Postgres.
    PostgresCrash,
    /// The same crash while a large UPDATE is running or committing.
    PostgresCrashLargeTx,
    /// `pg_terminate_backend` of walbust's walsender.
    WalsenderKill,
    /// The same while a large transaction is being streamed to walbust.
    WalsenderKillLargeTx,
    /// redis-server killed (SIGKILL) and restarted after an outage.
    RedisOutage,
    /// Every Kafka broker down, then up again after an outage.
    KafkaOutage,
    /// The table taken out of the publication, written to, and put back
    /// within a second: a window walbust must purge (DDL guard).
    PublicationBlink,
    /// The table renamed, written to under its new name, and renamed back.
    TableRename,
    /// walbust's walsender terminated and the slot dropped and created
    /// again under the same name while the writer goes on: a gap.
    SlotReplace,
    /// A rule column renamed and renamed back inside a transaction that
    /// writes in between: the change in between is decoded without the
    /// column.
    ColumnRenameMidTx,
    /// The primary stopped at once (`-m immediate`) once the standby keeps
    /// a synchronized copy of the slot, the standby promoted after a
    /// pause, the former primary rebuilt as its standby: walbust follows
    /// the two-host `source.url` to the new primary and its synced slot.
    PostgresFailover,
    /// A second walbust started beside the running one waits as a
    /// standby; the running one is killed (`kill -9`) and the standby
    /// takes the slot over.
    StandbyTakeover,
}

impl Fault {
    /// Every kind, in the order of the report's rows.
    pub const ALL: [Fault; 14] = [
        Fault::WalbustKill,
        Fault::WalbustTerm,
        Fault::PostgresCrash,
        Fault::PostgresCrashLargeTx,
        Fault::WalsenderKill,
        Fault::WalsenderKillLargeTx,
        Fault::RedisOutage,
        Fault::KafkaOutage,
        Fault::PublicationBlink,
        Fault::TableRename,
        Fault::SlotReplace,
        Fault::ColumnRenameMidTx,
        Fault::PostgresFailover,
        Fault::StandbyTakeover,
    ];

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Fault::WalbustKill => "walbust `kill -9`",
            Fault::WalbustTerm => "walbust SIGTERM",
            Fault::PostgresCrash => "Postgres immediate stop",
            Fault::PostgresCrashLargeTx => "Postgres immediate stop during a large UPDATE",
            Fault::WalsenderKill => "walsender terminated",
            Fault::WalsenderKillLargeTx => "walsender terminated while streaming a large UPDATE",
            Fault::RedisOutage => "Redis outage (SIGKILL, restart)",
            Fault::KafkaOutage => "Kafka broker outage",
            Fault::PublicationBlink => "table out of the publication and back within a second",
            Fault::TableRename => "table renamed and renamed back",
            Fault::SlotReplace => "slot dropped and created again while streaming",
            Fault::ColumnRenameMidTx => "rule column renamed and back inside a transaction",
            Fault::PostgresFailover => "Postgres failover (primary stopped, standby promoted)",
            Fault::StandbyTakeover => "standby walbust takes over from a killed one",
        }
    }

    /// The kind a short name names.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Short name for progress lines, JSON and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::WalbustKill => "walbust-kill",
            Fault::WalbustTerm => "walbust-term",
            Fault::PostgresCrash => "postgres-crash",
            Fault::PostgresCrashLargeTx => "postgres-crash-large-tx",
            Fault::WalsenderKill => "walsender-kill",
            Fault::WalsenderKillLargeTx => "walsender-kill-large-tx",
            Fault::RedisOutage => "redis-outage",
            Fault::KafkaOutage => "kafka-outage",
            Fault::PublicationBlink => "publication-blink",
            Fault::TableRename => "table-rename",
            Fault::SlotReplace => "slot-replace",
            Fault::ColumnRenameMidTx => "column-rename-mid-tx",
            Fault::PostgresFailover => "postgres-failover",
            Fault::StandbyTakeover => "standby-takeover",
        }
    }

    /// Whether the fault takes a sink away for an outage.
    pub fn is_sink_outage(self) -> bool {
        matches!(self, Fault::RedisOutage | Fault::KafkaOutage)
    }
}

/// A range of durations, chosen from uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: Duration,
    pub max: Duration,
}

impl Span {
    pub const fn millis(min: u64, max: u64) -> Span {
        Span {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }

    pub fn pick(self, rng: &mut Rng) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        let span = u64::try_from((self.max - self.min).as_millis()).unwrap_or(u64::MAX);
        self.min + Duration::from_millis(rng.below(span.saturating_add(1)))
    }
}

/// How long the phases of a cycle last.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Writing before the fault: the fault lands at a random moment.
    pub lead_in: Span,
    /// How long walbust stays down after a kill or SIGTERM.
    pub walbust_down: Span,
    /// How long Postgres stays down after a crash.
    pub postgres_down: Span,
    /// Writing after recovery, before the cycle is checked.
    pub tail: Span,
    /// How long every committed change may take to be observed once the
    /// fault is over, before the cycle counts it as overdue (a hang).
    pub settle: Duration,
}

/// One cycle of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub fault: Fault,
    /// The outage's length, for sink outages; zero otherwise.
    pub outage: Duration,
}

/// Modes of a run, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The test suite's short run: every fault kind, short outages.
    Quick,
    /// `--cycles N`: N cycles mixing every fault kind.
    Cycles(usize),
    /// The acceptance run: at least 200 kills, 50 Postgres crashes, 20
    /// walsender terminations, 10 failovers, 20 standby takeovers and sink
    /// outages of 15 s to 5 min.
    Full,
}

/// Cycles per fault kind in the full run.
pub const FULL_COUNTS: [(Fault, usize); 14] = [
    (Fault::WalbustKill, 200),
    (Fault::WalbustTerm, 20),
    (Fault::PostgresCrash, 35),
    (Fault::PostgresCrashLargeTx, 15),
    (Fault::WalsenderKill, 10),
    (Fault::WalsenderKillLargeTx, 10),
    (Fault::RedisOutage, 10),
    (Fault::KafkaOutage, 10),
    (Fault::PublicationBlink, 10),
    (Fault::TableRename, 10),
    (Fault::SlotReplace, 10),
    (Fault::ColumnRenameMidTx, 10),
    (Fault::PostgresFailover, 10),
    (Fault::StandbyTakeover, 20),
];

/// Sink outages of the full run are spread evenly over this range.
pub const FULL_OUTAGE: Span = Span::millis(15_000, 300_000);

/// The quick run: each kind once, the cheap ones twice, 18 cycles.
const QUICK_EXTRA: [Fault; 4] = [
    Fault::WalbustKill,
    Fault::PostgresCrash,
    Fault::WalsenderKill,
    Fault::RedisOutage,
];

impl Mode {
    /// The default timing of the mode.
    pub fn timing(self) -> Timing {
        match self {
            Mode::Quick => Timing {
                lead_in: Span::millis(200, 800),
                walbust_down: Span::millis(0, 800),
                postgres_down: Span::millis(200, 1_200),
                tail: Span::millis(300, 600),
                settle: Duration::from_secs(60),
            },
            Mode::Cycles(_) | Mode::Full => Timing {
                lead_in: Span::millis(300, 2_500),
                walbust_down: Span::millis(0, 2_000),
                postgres_down: Span::millis(300, 4_000),
                tail: Span::millis(500, 1_500),
                // Above walbust's longest retry delays (sinks 5 s by default, source
                // 10 s), so a slow but live recovery is never called a hang.
                settle: Duration::from_secs(120),
            },
        }
    }

    /// The default range of sink outages.
    pub fn outage(self) -> Span {
        match self {
            Mode::Quick => Span::millis(1_000, 2_000),
            Mode::Cycles(_) => Span::millis(3_000, 20_000),
            Mode::Full => FULL_OUTAGE,
        }
    }

    /// The cycles of a run, in order. `only`, when not empty, restricts
    /// `--cycles` runs to these kinds (to reproduce a finding).
    pub fn plan(self, outage: Span, only: &[Fault], rng: &mut Rng) -> Vec<Cycle> {
        let kinds: Vec<Fault> = if only.is_empty() {
            Fault::ALL.to_vec()
        } else {
            Fault::ALL
                .into_iter()
                .filter(|f| only.contains(f))
                .collect()
        };
        let faults: Vec<Fault> = match self {
            Mode::Quick => {
                let mut f: Vec<Fault> = Fault::ALL.iter().chain(&QUICK_EXTRA).copied().collect();
                rng.shuffle(&mut f);
                f
            }
            Mode::Cycles(n) => {
                // Blocks of every kind in random order: every block of
                // `Fault::ALL.len()` cycles from the start mixes every kind.
                let mut f = Vec::with_capacity(n);
                while f.len() < n {
                    let mut block = kinds.clone();
                    rng.shuffle(&mut block);
                    f.extend(block.into_iter().take(n - f.len()));
                }
                f
            }
            Mode::Full => {
                let mut f: Vec<Fault> = FULL_COUNTS
                    .iter()
                    .flat_map(|&(fault, n)| std::iter::repeat_n(fault, n))
                    .collect();
                rng.shuffle(&mut f);
                f
            }
        };
        let mut outages = OutageDeck::new(self, outage, &faults, rng);
        faults
            .into_iter()
            .map(|fault| Cycle {
                fault,
                outage: if fault.is_sink_outage() {
                    outages.next(fault, rng)
                } else {
                    Duration::ZERO
                },
            })
            .collect()
    }
}

/// Outage lengths. The full run spreads each sink's outages evenly over the
/// range, shortest and longest included, so the extremes are always
/// exercised; other modes draw at random.
struct OutageDeck {
    spread: bool,
    span: Span,
    redis: Vec<Duration>,
    kafka: Vec<Duration>,
}

impl OutageDeck {
    fn new(mode: Mode, span: Span, faults: &[Fault], rng: &mut Rng) -> OutageDeck {
        let spread = mode == Mode::Full;
        let mut deck = |kind: Fault| -> Vec<Duration> {
            if !spread {
                return Vec::new();
            }
            let n = faults.iter().filter(|&&f| f == kind).count();
            let mut d = spread_evenly(span, n);
            rng.shuffle(&mut d);
            d
        };
        let redis = deck(Fault::RedisOutage);
        let kafka = deck(Fault::KafkaOutage);
        OutageDeck {
            spread,
            span,
            redis,
            kafka,
        }
    }

    fn next(&mut self, fault: Fault, rng: &mut Rng) -> Duration {
        let deck = match fault {
            Fault::RedisOutage => &mut self.redis,
            _ => &mut self.kafka,
        };
        match (self.spread, deck.pop()) {
            (true, Some(d)) => d,
            _ => self.span.pick(rng),
        }
    }
}

/// `n` durations from `span.min` to `span.max`, evenly spaced.
fn spread_evenly(span: Span, n: usize) -> Vec<Duration> {
    match n {
        0 => Vec::new(),
        1 => vec![span.max],
        _ => {
            let range = span.max.saturating_sub(span.min).as_millis();
            (0..n)
                .map(|i| {
                    let ms = range * i as u128 / (n as u128 - 1);
                    span.min + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
                })
                .collect()
        }
    }
}

/// SplitMix64: small, fast and good enough to choose moments and faults;
/// the seed is printed so a run's plan can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.next_u64() % n
    }

    /// A random index into a slice of length `len` (which must not be 0).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: &[Cycle], fault: Fault) -> usize {
        plan.iter().filter(|c| c.fault == fault).count()
    }

    #[test]
    fn quick_mixes_every_kind_in_at_least_ten_cycles() {
        let mut rng = Rng::new(7);
        let plan = Mode::Quick.plan(Mode::Quick.outage(), &[], &mut rng);
        assert!(plan.len() >= 10, "{}", plan.len());
        for fault in Fault::ALL {
            assert!(count(&plan, fault) >= 1, "{fault:?} missing");
        }
        for c in &plan {
            assert_eq!(c.fault.is_sink_outage(), !c.outage.is_zero(), "{c:?}");
        }
    }

    #[test]
    fn full_meets_the_acceptance_counts() {
        let mut rng = Rng::new(1);
        let plan = Mode::Full.plan(FULL_OUTAGE, &[], &mut rng);
        let kills = count(&plan, Fault::WalbustKill);
        let crashes =
            count(&plan, Fault::PostgresCrash) + count(&plan, Fault::PostgresCrashLargeTx);
        let walsenders =
            count(&plan, Fault::WalsenderKill) + count(&plan, Fault::WalsenderKillLargeTx);
        let outages: Vec<Duration> = plan
            .iter()
            .filter(|c| c.fault.is_sink_outage())
            .map(|c| c.outage)
            .collect();
        assert!(kills >= 200, "{kills}");
        assert!(crashes >= 50, "{crashes}");
        assert!(walsenders >= 20, "{walsenders}");
        assert!(count(&plan, Fault::PostgresFailover) >= 10);
        assert!(count(&plan, Fault::StandbyTakeover) >= 20);
        assert!(outages.len() >= 10, "{}", outages.len());
        assert_eq!(outages.iter().min(), Some(&Duration::from_secs(15)));
        assert_eq!(outages.iter().max(), Some(&Duration::from_secs(300)));
        assert!(outages
            .iter()
            .all(|d| *d >= Duration::from_secs(15) && *d <= Duration::from_secs(300)));
    }

    #[test]
    fn cycles_mode_mixes_every_kind_in_each_block() {
        let mut rng = Rng::new(3);
        let plan = Mode::Cycles(2 * Fault::ALL.len()).plan(Span::millis(1, 2), &[], &mut rng);
        assert_eq!(plan.len(), 2 * Fault::ALL.len());
        for block in plan.chunks(Fault::ALL.len()).take(2) {
            for fault in Fault::ALL {
                assert_eq!(block.iter().filter(|c| c.fault == fault).count(), 1);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let a = Mode::Cycles(30).plan(Span::millis(10, 5_000), &[], &mut Rng::new(42));
        let b = Mode::Cycles(30).plan(Span::millis(10, 5_000), &[], &mut Rng::new(42));
        let c = Mode::Cycles(30).plan(Span::millis(10, 5_000), &[], &mut Rng::new(43));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn only_restricts_the_kinds() {
        let only = [Fault::KafkaOutage, Fault::WalbustKill];
        let plan = Mode::Cycles(10).plan(Span::millis(1, 2), &only, &mut Rng::new(5));
        assert_eq!(plan.len(), 10);
        assert!(plan.iter().all(|c| only.contains(&c.fault)));
        assert_eq!(count(&plan, Fault::KafkaOutage), 5);
    }

    #[test]
    fn spans_stay_in_range() {
        let mut rng = Rng::new(9);
        let span = Span::millis(100, 200);
        for _ in 0..1000 {
            let d = span.pick(&mut rng);
            assert!(d >= span.min && d <= span.max, "{d:?}");
        }
        assert_eq!(Span::millis(5, 5).pick(&mut rng), Duration::from_millis(5));
    }
}
