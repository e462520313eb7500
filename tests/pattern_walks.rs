//! Pattern walks end to end: the walbust binary, Postgres and Redis. A key
//! is removed while its transaction's pattern walk still runs, the slot is
//! not acknowledged past that transaction until the walk ended, and a
//! walbust killed mid-walk sends the pattern again after its restart.
//!
//! The walk is slow on purpose: 100k unrelated keys walked with
//! `scan_count: 1`, one key per round trip.

mod support;

use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    patterns: ["plist:{category_id}:*"]
"#;

const UNRELATED: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walbust_killed_mid_walk_sends_the_pattern_again() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, category_id int)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    // In chunks: one long script would outlast the connection's reply timeout.
    for from in (1..=UNRELATED).step_by(10_000) {
        let _: () = redis::cmd("EVAL")
            .arg("for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'fill:' .. i, 'v') end")
            .arg(0)
            .arg(from)
            .arg(from + 9_999)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let pages: Vec<String> = (0..200).map(|i| format!("plist:7:p{i}")).collect();
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    set_keys(&mut redis, &pages).await;
    set_keys(&mut redis, &["product:1", "plist:8:p0"]).await;

    let port = walbust_testkit::free_port();
    let slow = svc.write_config_sinks(
        RULES,
        Some("    scan_count: 1\n"),
        None,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let mut walbust = Walbust::start(&slow);
    wait_streaming(&db, &mut walbust).await;

    let before = current_wal_lsn(&db).await;
    db.batch_execute("INSERT INTO products VALUES (1, 7)")
        .await
        .unwrap();
    // The key goes at once, while the walk for plist:7:* runs.
    assert_invalidated(&mut redis, &["product:1"], &[], "the key").await;
    assert_eq!(
        metric(port, "walbust_redis_pattern_walks_in_progress"),
        1.0,
        "the walk still runs when the key is gone"
    );
    // Nothing past the transaction is acknowledged while its walk runs.
    wait_status_update(&db).await;
    let held = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(
        held <= before,
        "confirmed_flush_lsn moved to {} before the walk ended",
        walbust_pgoutput::format_lsn(held)
    );

    walbust.kill();
    let left = {
        let mut n = 0;
        for page in &pages {
            n += usize::from(exists(&mut redis, page).await);
        }
        n
    };
    assert!(left > 0, "the walk was killed before it reached every page");
    assert!(confirmed_flush_lsn(&db, "walbust").await.unwrap() <= before);

    // The restart (with quick walks): Postgres sends the transaction again.
    let quick = svc.write_config_sinks(RULES, Some(""), None, "");
    let mut walbust = Walbust::start(&quick);
    wait_streaming(&db, &mut walbust).await;
    let kept = ["plist:8:p0", "fill:1", "fill:50000", "fill:100000"];
    assert_invalidated(&mut redis, &pages, &kept, "after restart").await;
    wait_confirmed_past(&db, before).await;
    walbust.signal("INT");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}
