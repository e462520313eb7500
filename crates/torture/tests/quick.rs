//! The short torture run, as part of the test suite: at least 10 cycles
//! mixing every fault kind (kill -9, SIGTERM, Postgres crashes, walsender
//! terminations, Redis and Kafka outages, schema and slot changes, a
//! Postgres failover, a standby walbust's takeover) against real throwaway
//! servers (Postgres 18, a primary and a failover standby).
//! It fails if a single committed change was not invalidated in Redis or in
//! Kafka, if an uncommitted one was, if walbust hung or exited on its own.
//!
//! The walbust binary it drives is the one of the same build
//! (`target/<profile>/walbust`): `cargo nextest run --workspace` and `cargo
//! test --workspace` build it, because the walbust package has integration
//! tests of its own. Run alone (`cargo test -p walbust-torture`), build it first with
//! `cargo build -p walbust`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;

fn walbust_binary() -> PathBuf {
    let walbust = walbust_testkit::sibling_binary(env!("CARGO_BIN_EXE_walbust-torture"), "walbust")
        .unwrap_or_else(|e| panic!("{e}"));
    warn_if_stale(&walbust);
    walbust
}

/// A walbust binary older than walbust's sources tests old code. That is
/// worth a loud warning, not a failure: someone may be editing while the
/// suite runs.
fn warn_if_stale(walbust: &Path) {
    let Ok(built) = std::fs::metadata(walbust).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let newest = ["walbust", "cdc", "flow", "publish", "rules", "pgoutput"]
        .iter()
        .filter_map(|c| newest_file(&root.join("crates").join(c).join("src")))
        .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "WARNING: {} is older than walbust's sources: this run tests the old build \
             (cargo build -p walbust)",
            walbust.display()
        );
    }
}

fn newest_file(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                newest_file(&e.path())
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

fn number(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {v}"))
}

#[test]
fn quick_torture_run_loses_no_invalidation() {
    let walbust = walbust_binary();
    // Kept when the test fails (walbust's logs are the evidence), removed
    // when it passes.
    let scratch = tempfile::Builder::new()
        .prefix("walbust-torture-")
        .tempdir()
        .expect("scratch dir")
        .keep();
    let json = scratch.join("results.json");
    let docs = scratch.join("reliability.md");
    std::fs::write(&docs, "# Reliability\n").expect("docs");

    let output = Command::new(env!("CARGO_BIN_EXE_walbust-torture"))
        .arg("--quick")
        .arg("--walbust")
        .arg(&walbust)
        .arg("--scratch")
        .arg(&scratch)
        .arg("--json")
        .arg(&json)
        .arg("--append")
        .arg(&docs)
        .output()
        .expect("run walbust-torture");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let keep = |why: &str| -> String {
        format!(
            "{why} ({}); walbust's logs are kept in {}:\n{stderr}\n{stdout}",
            output.status,
            scratch.display()
        )
    };
    if !output.status.success() {
        panic!("{}", keep("walbust-torture failed"));
    }

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("results.json")).expect("JSON");
    let total = &report["total"];
    let check = |ok: bool, what: &str| {
        if !ok {
            let message = keep(what);
            panic!("{message}\nreport: {report:#}");
        }
    };
    check(
        report["ok"] == Value::Bool(true),
        "the run reported findings",
    );
    check(
        number(total, "lost_redis") == 0,
        "invalidations lost in Redis",
    );
    check(
        number(total, "lost_kafka") == 0,
        "invalidations lost in Kafka",
    );
    check(
        number(total, "phantom_redis") == 0 && number(total, "phantom_kafka") == 0,
        "uncommitted changes were invalidated",
    );
    check(
        number(total, "unresolved") == 0,
        "changes with an unknown outcome",
    );
    check(
        number(&report, "unexpected_exits") == 0,
        "walbust exited on its own",
    );
    check(
        number(&report, "unexpected_tags") == 0,
        "tags of changes never made",
    );
    check(
        number(&report, "malformed_records") == 0,
        "malformed Kafka records",
    );
    check(
        report["findings"].as_array().is_some_and(Vec::is_empty),
        "findings",
    );

    // The run is what the issue asks for: 10+ cycles mixing every kind,
    // with real work and real redeliveries in them.
    let cycles = report["cycles"].as_array().expect("cycles");
    check(cycles.len() >= 10, "fewer than 10 cycles");
    check(
        cycles.iter().all(|c| c["ok"] == Value::Bool(true)),
        "a cycle failed its check",
    );
    let rows = report["rows"].as_array().expect("rows");
    check(rows.len() == 14, "not every fault kind has a row");
    // After a failover walbust streamed from the promoted standby, after a
    // takeover the standby walbust streamed the slot.
    for fault in ["postgres-failover", "standby-takeover"] {
        check(
            cycles
                .iter()
                .filter(|c| c["fault"] == fault)
                .all(|c| c["resumed_ms"].is_u64()),
            &format!("walbust did not stream again after {fault}"),
        );
    }
    for row in rows {
        check(
            number(row, "cycles") >= 1,
            &format!("fault {} never injected", row["fault"]),
        );
        check(
            number(row, "committed") >= 1,
            &format!("no committed change in the cycles of {}", row["fault"]),
        );
    }
    // The faults that hide changes from the stream wrote some, and the
    // purge (or the key) covered them.
    for fault in ["publication-blink", "table-rename", "column-rename-mid-tx"] {
        let row = rows
            .iter()
            .find(|r| r["fault"] == fault)
            .expect("a row per kind");
        check(
            number(row, "covered") >= 1,
            &format!("no hidden change covered in the cycles of {fault}"),
        );
    }
    check(
        number(total, "committed") + number(total, "not_committed")
            >= 2 * number(&report, "large_rows"),
        "the large transactions are missing (committed, or aborted by the crash)",
    );
    check(
        number(total, "not_committed") >= 1,
        "no rolled-back change was checked",
    );
    check(
        number(total, "redelivered_kafka") >= 1,
        "no redelivery at all: the faults did not bite",
    );
    check(
        number(&report, "walbust_starts") >= 3,
        "walbust was never restarted",
    );

    // The table is printed and appended.
    let appended = std::fs::read_to_string(&docs).expect("docs");
    check(
        appended.starts_with("# Reliability\n")
            && appended.contains("| fault | cycles | committed changes |")
            && appended.contains("| **all** | ")
            && stdout.contains("| **all** | "),
        "the table was not printed and appended",
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
