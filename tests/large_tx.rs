//! Transactions of any size stream through: a 1M-row UPDATE is invalidated
//! completely after its commit within bounded memory, and a rolled-back
//! one invalidates nothing.

mod support;

use std::time::Duration;

use support::*;

const ROWS: i32 = 1_000_000;

const RULES: &str = r#"
version: 1
rules:
  # Past 10 000 keys in one transaction the rule escalates to its constant
  # tag: one purge of "big" stands for the rest of the million keys.
  - table: public.big
    keys: ["big:{id}"]
    tags: ["big"]
    max_keys_per_tx: 10000
  - table: public.marker
    keys: ["marker:{id}"]
"#;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_update_streams_through_and_a_rollback_invalidates_nothing() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    // Filled before walbust's slot exists, so the fill itself is not streamed.
    db.batch_execute(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL);
         CREATE TABLE marker (id int PRIMARY KEY);
         INSERT INTO big SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    let config = svc.write_config(RULES, true);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();

    // Rolled back: nothing may be invalidated, and the stream moves on.
    set_keys(&mut redis, &["big:1", "big:500000", "page:big"]).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:big")
        .arg("page:big")
        .query_async(&mut redis)
        .await
        .unwrap();
    db.batch_execute("BEGIN; UPDATE big SET v = v + 1; ROLLBACK;")
        .await
        .unwrap();
    set_keys(&mut redis, &["marker:1"]).await;
    db.execute("INSERT INTO marker VALUES (1)", &[])
        .await
        .unwrap();
    assert_invalidated(
        &mut redis,
        &["marker:1"],
        &["big:1", "big:500000", "page:big"],
        "after a rolled-back large transaction",
    )
    .await;

    // Committed: every row is covered, by its key or by the escalated tag.
    db.batch_execute("UPDATE big SET v = v + 1").await.unwrap();
    // A later transaction's invalidation is applied after all of the big
    // one's (the pipeline keeps commit order). The slot's position alone
    // would not tell: while the server decodes the big transaction, idle
    // keepalives may acknowledge positions inside it, which is safe (it
    // commits later) but says nothing about its delivery.
    set_keys(&mut redis, &["marker:2"]).await;
    db.execute("INSERT INTO marker VALUES (2)", &[])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while exists(&mut redis, "marker:2").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the 1M-row update was not delivered in time; log:\n{}",
            walbust.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Which rows get their own key depends on the scan order (Postgres may
    // start a large sequential scan mid-table); the escalated tag covers
    // every row either way.
    assert!(
        !exists(&mut redis, "page:big").await,
        "the escalated tag was not purged; log:\n{}",
        walbust.log()
    );
    // Kafka confirmed the same batches before the marker's was sent.
    let records = kafka_records(&svc.kafka, 3);
    let tagged = records.iter().any(|r| {
        r["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|v| v == "big"))
    });
    assert!(tagged, "no Kafka record carries the escalated tag");
    let keys: usize = records
        .iter()
        .map(|r| r["keys"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        (10_000..=10_100).contains(&keys),
        "the key budget should bound keys near 10 000, got {keys}"
    );

    let rss_mib = peak_rss_kib(walbust_pid(&walbust)) / 1024;
    println!("walbust peak RSS through a {ROWS}-row transaction: {rss_mib} MiB");
    assert!(
        rss_mib < 256,
        "peak RSS {rss_mib} MiB over the 256 MiB bound"
    );
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(60)).success());
}

fn walbust_pid(w: &Walbust) -> u32 {
    w.pid()
}
