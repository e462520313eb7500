//! A gap in the change stream is never crossed silently: a dropped slot
//! with walbust's marker present is refused by default, and with
//! `on_gap: purge` everything the rules cover is purged before streaming.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
    tags: ["items"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_refused_then_purged_on_request() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(RULES, true);

    // A first run leaves the marker.
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    let mut redis = svc.redis.connection().await.unwrap();
    let marker: Option<String> = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    let marker = marker.expect("marker written");
    assert!(marker.contains("system_identifier"), "{marker}");

    // The slot disappears (dropped by someone, or lost).
    db.batch_execute("SELECT pg_drop_replication_slot('walbust')")
        .await
        .unwrap();
    let cfg_path = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["run", "--config", cfg_path.to_str().unwrap()])
            .env("WALBUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the slot no longer exists"), "{err}");
    assert!(
        !slot_exists(&db, "walbust").await,
        "a refused start must not create a new slot"
    );

    // With on_gap: purge, everything the rules cover goes before streaming.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "  create: true\n",
        "  create: true\n  on_gap: purge\n  gap_purge:\n    patterns: [\"page:*\"]\n",
    );
    std::fs::write(&config, text).unwrap();
    set_keys(&mut redis, &["item:1", "item:2", "page:home", "other:1"]).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:items")
        .arg("list:items")
        .query_async(&mut redis)
        .await
        .unwrap();
    set_keys(&mut redis, &["list:items"]).await;
    let before = kafka_records(&svc.kafka, 0).len();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    for k in ["item:1", "item:2", "page:home", "list:items"] {
        assert!(!exists(&mut redis, k).await, "{k} survived the gap purge");
    }
    assert!(exists(&mut redis, "other:1").await);
    let records = kafka_records(&svc.kafka, before + 1);
    assert!(
        records[before..]
            .iter()
            .any(|r| r["patterns"] == serde_json::json!(["*"])),
        "no flush-all record on Kafka: {records:?}"
    );
    assert!(walbust.log().contains("gap in the change stream"));

    // And streaming resumes on the new slot.
    set_keys(&mut redis, &["item:3"]).await;
    db.execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:3"], &["other:1"], "after the purge").await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
