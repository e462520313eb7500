//! A table the publication withholds for a moment (taken out and put back,
//! renamed and renamed back, published via its partitions instead of its
//! root) is a gap, seen in WAL order through the DDL guard: walbust never
//! acknowledges past it unhandled. With `source.on_gap: purge` the purge of
//! what the table's rules cover rides with the transaction that closed the
//! window; by default walbust refuses with exit status 3 and the slot stays
//! before the window.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
  - table: public.parts
    keys: ["part:{id}"]
"#;

/// Services with tables `items` and `parts` (partitioned), walbust
/// (`source.create: true`, which installs the DDL guard) streaming.
async fn streaming(on_gap_purge: bool) -> (Services, tokio_postgres::Client, PathBuf, Walbust) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE TABLE parts (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (1000);",
    )
    .await
    .unwrap();
    let config = svc.write_config(RULES, true);
    if on_gap_purge {
        purge_on_gap(&config);
    }
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let guards: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'walbust_ddl_guard'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(guards, 1, "walbust installs the DDL guard");
    (svc, db, config, walbust)
}

/// Runs each statement on its own (autocommit), as the issue's sequences do.
async fn each(db: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        db.batch_execute(sql).await.unwrap();
    }
}

/// With `on_gap: purge`: `statements` withhold a table the rules name and
/// write `item:1`/`part:1` meanwhile; the purge removes `stale` (and
/// `untouched`, an entry of the same rule no change named), leaves
/// `other:1`, and the slot moves past the window.
async fn purged_after(statements: &[&str], stale: &str, untouched: &str) {
    let (svc, db, _config, mut walbust) = streaming(true).await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &[stale, untouched, "other:1"]).await;
    each(&db, statements).await;
    let after = current_wal_lsn(&db).await;
    assert_invalidated(
        &mut redis,
        &[stale, untouched],
        &["other:1"],
        "the window's purge",
    )
    .await;
    assert!(walbust.is_running(), "{}", walbust.log());
    assert!(
        walbust.log().contains("purging what their rules cover"),
        "{}",
        walbust.log()
    );
    // Streaming goes on as before.
    set_keys(&mut redis, &["item:5"]).await;
    db.batch_execute("INSERT INTO items VALUES (5)")
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:5"], &["other:1"], "after the window").await;
    wait_confirmed_past(&db, after).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_taken_out_of_the_publication_and_put_back_is_purged() {
    purged_after(
        &[
            "ALTER PUBLICATION walbust DROP TABLE items",
            "INSERT INTO items VALUES (1)",
            "ALTER PUBLICATION walbust ADD TABLE items",
            "INSERT INTO items VALUES (2)",
        ],
        "item:1",
        "item:9",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_and_renamed_back_is_purged() {
    purged_after(
        &[
            "ALTER TABLE items RENAME TO items_tmp",
            "INSERT INTO items_tmp VALUES (1)",
            "ALTER TABLE items_tmp RENAME TO items",
        ],
        "item:1",
        "item:9",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_via_partitions_for_a_moment_is_purged() {
    purged_after(
        &[
            "ALTER PUBLICATION walbust SET (publish_via_partition_root = false)",
            "INSERT INTO parts VALUES (1)",
            "ALTER PUBLICATION walbust SET (publish_via_partition_root = true)",
        ],
        "part:1",
        "part:9",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_is_refused_by_default_and_never_acknowledged() {
    let (svc, db, config, mut walbust) = streaming(false).await;
    // Acknowledging up to the renaming transaction is fine; past it, the
    // insert would be lost.
    each(&db, &["ALTER TABLE items RENAME TO items_tmp"]).await;
    let before = current_wal_lsn(&db).await;
    each(
        &db,
        &[
            "INSERT INTO items_tmp VALUES (1)",
            "ALTER TABLE items_tmp RENAME TO items",
        ],
    )
    .await;
    let status = walbust.wait(Duration::from_secs(60));
    let log = walbust.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("publication \"walbust\" withheld public.items from"),
        "{log}"
    );
    assert!(log.contains("pg_replication_slot_advance"), "{log}");
    let confirmed = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(confirmed < before, "the slot moved past the window");

    // Every start refuses the same way; nothing moves the slot meanwhile.
    let out = run_to_exit(&config).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        confirmed_flush_lsn(&db, "walbust").await.unwrap(),
        confirmed
    );

    // With on_gap: purge the same window is purged and streaming goes on.
    purge_on_gap(&config);
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1", "other:1"]).await;
    let mut walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["item:1"], &["other:1"], "the purge").await;
    wait_confirmed_past(&db, before).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_left_out_of_the_publication_is_refused_before_its_changes() {
    let (svc, db, config, mut walbust) = streaming(false).await;
    each(&db, &["ALTER PUBLICATION walbust DROP TABLE items"]).await;
    let before = current_wal_lsn(&db).await;
    each(&db, &["INSERT INTO items VALUES (1)"]).await;
    // The publication check notices the table missing; the slot stays
    // before the insert it never sent.
    let status = walbust.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", walbust.log());
    assert!(confirmed_flush_lsn(&db, "walbust").await.unwrap() < before);

    // The next start puts the table back (source.create: true): that closes
    // the window, which is refused by default...
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("withheld public.items"), "{err}");
    assert!(confirmed_flush_lsn(&db, "walbust").await.unwrap() < before);

    // ... and purged on request.
    purge_on_gap(&config);
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1", "other:1"]).await;
    let mut walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["item:1"], &["other:1"], "the purge").await;
    let after = current_wal_lsn(&db).await;
    db.batch_execute("INSERT INTO items VALUES (5)")
        .await
        .unwrap();
    wait_confirmed_past(&db, after).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
