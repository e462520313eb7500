//! The race harness's short run, as part of the test suite: readers fill
//! through walbust's fenced fills while writers update the rows and
//! walbust invalidates once the replica replayed each commit; no entry may
//! stay stale, reading the primary or a replica that applies commits
//! 30 ms late. Plain fills on that replica must leave stale entries, or
//! the harness would not see the race it claims walbust closes.
//!
//! The walbust binary is the one of the same build (`target/<profile>/walbust`),
//! as for the torture crate's quick run: `cargo nextest run --workspace`
//! builds it.

use std::process::Command;

#[test]
fn fenced_replica_aware_fills_leave_nothing_stale_and_plain_replica_fills_do() {
    let walbust = walbust_testkit::sibling_binary(env!("CARGO_BIN_EXE_walbust-race"), "walbust")
        .unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(env!("CARGO_BIN_EXE_walbust-race"))
        .arg("--walbust")
        .arg(&walbust)
        .args(["--rounds", "3", "--round-ms", "800", "--check"])
        .args([
            "--only",
            "plain/replica/at-commit,fenced/primary/replica-aware,fenced/replica/replica-aware",
        ])
        .output()
        .expect("run walbust-race");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walbust-race --check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Three modes in the table, each with cached entries.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| plain") || l.starts_with("| fenced"))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    println!("{stdout}");
}
