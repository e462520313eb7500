//! A gap in the change stream is never crossed silently: a dropped slot
//! with walbust's marker present is refused by default, and with
//! `on_gap: purge` everything the rules cover is purged before streaming.
//! A publication dropped under the slot is such a gap too.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
    tags: ["items"]
"#;

/// Services with table `items` and a configuration for `RULES` (slot and
/// publication created by walbust), after a first run that streamed and
/// left the marker.
async fn first_run() -> (Services, tokio_postgres::Client, PathBuf) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(RULES, true);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    (svc, db, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_refused_then_purged_on_request() {
    let (svc, db, config) = first_run().await;
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
    let out = run_to_exit(&config).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_dropped_under_the_slot_is_refused_then_purged_on_request() {
    let (svc, db, config) = first_run().await;

    // Dropped and made again, with a change in between: the slot still
    // has to decode that change, under a catalog without the publication.
    db.batch_execute("DROP PUBLICATION walbust").await.unwrap();
    db.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    // walbust (source.create: true) makes the publication again; the slot
    // fails on the insert all the same, on every start.
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "publication \"walbust\" was dropped while replication slot \"walbust\" still needed it"
        ),
        "{err}"
    );
    assert!(err.contains("source.on_gap: purge"), "{err}");

    // With on_gap: purge walbust replaces the slot, purges and goes on.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("  create: true\n", "  create: true\n  on_gap: purge\n");
    std::fs::write(&config, text).unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1", "item:2", "other:1"]).await;
    let mut walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["item:1", "item:2"], &["other:1"], "the purge").await;
    wait_streaming(&db, &mut walbust).await;
    assert!(
        walbust.log().contains("replacing the slot"),
        "{}",
        walbust.log()
    );
    set_keys(&mut redis, &["item:3"]).await;
    db.execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:3"], &["other:1"], "on the new slot").await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
