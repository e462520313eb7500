//! The benchmark harness in quick mode, against real throwaway servers: every workload runs,
//! every figure is printed, written as JSON and added to a docs file. It checks that the
//! harness works and that walbust saw every change; it never judges the speed.
//!
//! The walbust binary it drives is the one of the same build (`target/<profile>/walbust`):
//! `cargo nextest run --workspace` and `cargo test --workspace` build it, because the walbust
//! package has integration tests of its own. Run alone (`cargo test -p walbust-bench`), build it first
//! with `cargo build -p walbust`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const OTHER_SECTION: &str = "## Decoder (criterion)\n\nfigures of another harness\n";

fn walbust_binary() -> PathBuf {
    walbust_testkit::sibling_binary(env!("CARGO_BIN_EXE_walbust-bench"), "walbust")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn number(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {v}"))
}

#[test]
fn quick_mode_measures_every_workload_and_reports_every_figure() {
    let walbust = walbust_binary();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let docs = dir.path().join("benchmarks.md");
    std::fs::write(&docs, format!("# Benchmarks\n\n{OTHER_SECTION}")).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_walbust-bench"))
        .arg("--quick")
        .arg("--walbust")
        .arg(&walbust)
        .arg("--json")
        .arg(&json)
        .arg("--docs")
        .arg(&docs)
        .output()
        .expect("run walbust-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walbust-bench failed ({}):\n{stderr}\n{stdout}",
        output.status
    );

    // The tables are printed.
    for heading in [
        "| consumer | drain s |",
        "| sink | achieved tx/s | pgbench lag ms | p50 ms |",
        "| target | figure | met |",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    assert!(stdout.contains("Quick mode"), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["mode"], "quick");
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["postgres"].as_str().unwrap().is_empty());

    // Drains: both workloads, pg_recvlogical first and last, every walbust sink set between,
    // each of which saw every change of the backlog.
    let drains = report["drains"].as_array().unwrap();
    let names: Vec<&str> = drains
        .iter()
        .map(|d| d["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["W1", "W2"]);
    for d in drains {
        let changes = d["changes"].as_u64().unwrap();
        assert!(changes > 0 && d["wal_bytes"].as_u64().unwrap() > 0, "{d}");
        let consumers: Vec<&str> = d["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["consumer"].as_str().unwrap())
            .collect();
        assert_eq!(
            consumers,
            [
                "pg_recvlogical",
                "walbust redis+kafka",
                "walbust discard",
                "walbust redis",
                "walbust kafka",
                "pg_recvlogical (again)"
            ]
        );
        // The reference is the faster pg_recvlogical run.
        let recv_seconds = number(&d["runs"][0], "seconds").min(number(&d["runs"][5], "seconds"));
        for r in d["runs"].as_array().unwrap() {
            let seconds = number(r, "seconds");
            assert!(seconds > 0.0, "{r}");
            let expected_ratio = recv_seconds / seconds;
            assert!((number(r, "ratio") - expected_ratio).abs() < 1e-9, "{r}");
            assert!(number(r, "changes_per_second") > 0.0, "{r}");
            if r["consumer"].as_str().unwrap().starts_with("walbust") {
                assert!(number(r, "peak_rss_mib") > 1.0, "{r}");
                assert!(number(r, "cpu_seconds") > 0.0, "{r}");
                number(r, "cpu_seconds_per_100k_changes");
                number(r, "walsender_cpu_seconds");
                assert!(
                    r["changes_seen"].as_u64().unwrap() >= changes,
                    "walbust missed changes: {r}"
                );
            }
        }
    }

    // Latency: one W3 run per sink, with percentiles in order.
    let latency = report["latency"].as_array().unwrap();
    let sinks: Vec<&str> = latency
        .iter()
        .map(|l| l["sinks"].as_str().unwrap())
        .collect();
    assert_eq!(sinks, ["redis", "kafka"]);
    for l in latency {
        assert!(l["batches"].as_u64().unwrap() > 0, "{l}");
        let (p50, p95, p99, max) = (
            number(l, "p50_ms"),
            number(l, "p95_ms"),
            number(l, "p99_ms"),
            number(l, "max_ms"),
        );
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{l}");
        assert!(number(l, "achieved_tps") > 0.0, "{l}");
        assert!(number(l, "peak_rss_mib") > 1.0, "{l}");
        assert!(number(l, "walsender_cpu_seconds") >= 0.0, "{l}");
        let transactions = l["transactions"].as_u64().unwrap();
        assert!(transactions > 1, "{l}");
        assert!(l["changes_seen"].as_u64().unwrap() >= transactions, "{l}");
    }

    // W4: pattern walks at each quick size; every key and every pattern's key was seen removed.
    let walks = report["pattern_walks"].as_array().unwrap();
    let sizes: Vec<u64> = walks
        .iter()
        .map(|w| w["unrelated_keys"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [0, 10_000]);
    for w in walks {
        assert_eq!(w["keys_missed"], 0, "{w}");
        assert_eq!(w["patterns_missed"], 0, "{w}");
        assert!(w["walks"].as_u64().unwrap() > 0, "{w}");
        assert!(number(w, "key_p99_ms") <= number(w, "key_max_ms"), "{w}");
    }
    assert!(
        stdout.contains("| N | strategy | achieved tx/s |"),
        "{stdout}"
    );

    // Every target has a verdict (met or not: speed is not this test's business).
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 7);
    assert!(targets.iter().all(|t| t["met"].is_boolean()), "{targets:?}");

    // The docs file got our section, and kept the other one.
    let text = std::fs::read_to_string(&docs).unwrap();
    assert!(text.contains(OTHER_SECTION), "{text}");
    assert_eq!(
        text.matches("## End to end (scripts/bench.sh)").count(),
        1,
        "{text}"
    );
    assert!(text.contains("| target | figure | met |"), "{text}");
}
