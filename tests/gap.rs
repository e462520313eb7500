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
    first_run_on(Services::start()).await
}

/// [`first_run`] on the given services.
async fn first_run_on(svc: Services) -> (Services, tokio_postgres::Client, PathBuf) {
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

/// Checks that walbust logged `logged` about the gap and, past its purge,
/// invalidates a new change (leaving `other:1` alone), then stops it.
async fn streams_on(
    db: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    mut walbust: Walbust,
    logged: &str,
) {
    assert!(walbust.log().contains(logged), "{}", walbust.log());
    set_keys(redis, &["item:3"]).await;
    db.execute("INSERT INTO items VALUES (3)", &[])
        .await
        .unwrap();
    assert_invalidated(redis, &["item:3"], &["other:1"], "after the purge").await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
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
    let before = cache(&svc, &mut redis, &["item:1", "item:2", "page:home"]).await;
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    assert_purged(
        &svc,
        &mut redis,
        &["item:1", "item:2", "page:home", "list:items"],
        before,
    )
    .await;
    assert!(walbust.log().contains("gap in the change stream"));

    // And streaming resumes on the new slot.
    streams_on(&db, &mut redis, walbust, "gap in the change stream").await;
}

/// Caches `keys`, `other:1` (which no rule covers) and `list:items` under
/// tag `items`; returns how many records Kafka holds so far.
async fn cache(
    svc: &Services,
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
) -> usize {
    set_keys(redis, keys).await;
    set_keys(redis, &["other:1", "list:items"]).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:items")
        .arg("list:items")
        .query_async(redis)
        .await
        .unwrap();
    kafka_records(&svc.kafka, 0).len()
}

/// Checks a gap purge: every key of `gone` removed, `other:1` kept, and a
/// flush-all record on Kafka after the first `before` records.
async fn assert_purged(
    svc: &Services,
    redis: &mut redis::aio::MultiplexedConnection,
    gone: &[&str],
    before: usize,
) {
    for k in gone {
        assert!(!exists(redis, k).await, "{k} survived the gap purge");
    }
    assert!(exists(redis, "other:1").await);
    let records = kafka_records(&svc.kafka, before + 1);
    assert!(
        records[before..]
            .iter()
            .any(|r| r["patterns"] == serde_json::json!(["*"])),
        "no flush-all record on Kafka: {records:?}"
    );
}

/// The lost-slot procedure the error message gives, followed to the letter:
/// drop the slot, `walbust reset-gap`, start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_recovered_with_reset_gap() {
    let svc = Services::start_with(
        walbust_testkit::Postgres::start_with(&LOSABLE_SLOTS).expect("start Postgres"),
        walbust_testkit::Kafka::start().expect("start Kafka"),
    );
    let (svc, db, config) = first_run_on(svc).await;
    let mut redis = svc.redis.connection().await.unwrap();
    lose_slot(&db, "walbust").await;

    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("is lost"), "{err}");
    let drop = "SELECT pg_drop_replication_slot('walbust')";
    assert!(err.contains(drop), "{err}");
    assert!(err.contains("run `walbust reset-gap`"), "{err}");

    // Dropping the slot alone is not enough: the marker refuses the start.
    db.batch_execute(drop).await.unwrap();
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the slot no longer exists"), "{err}");
    assert!(err.contains("Run `walbust reset-gap`"), "{err}");

    let before = cache(&svc, &mut redis, &["item:1"]).await;
    let out = command_to_exit("reset-gap", &config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed the gap marker walbust:marker:walbust"),
        "{stdout}"
    );
    assert!(stdout.contains("slot walbust created at "), "{stdout}");
    // What the rules cover is gone, the rest stays.
    assert_purged(
        &svc,
        &mut redis,
        &["item:1", "list:items", "walbust:marker:walbust"],
        before,
    )
    .await;
    assert!(slot_exists(&db, "walbust").await);

    // And walbust starts again, on the new slot.
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    streams_on(&db, &mut redis, walbust, "slot ready").await;
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
    purge_on_gap(&config);
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1", "item:2", "other:1"]).await;
    let mut walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["item:1", "item:2"], &["other:1"], "the purge").await;
    wait_streaming(&db, &mut walbust).await;
    streams_on(&db, &mut redis, walbust, "replacing the slot").await;
}

/// Terminates walbust's walsender and, before walbust reconnects, drops the
/// slot and creates it again under the same name, after a change committed
/// while nothing streamed: the new slot starts past that change.
async fn replace_slot_under_walbust(db: &tokio_postgres::Client, lost_insert: &str) {
    db.batch_execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'walbust'")
        .await
        .unwrap();
    db.execute(lost_insert, &[]).await.unwrap();
    // One statement, so that walbust never finds the slot missing; retried
    // while the walsender is still exiting or walbust got back in first.
    eventually(Duration::from_secs(30), "the slot replaced", || async {
        db.batch_execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active_pid IS NOT NULL",
        )
        .await
        .unwrap();
        db.batch_execute(
            "SELECT pg_drop_replication_slot('walbust'), pg_create_logical_replication_slot('walbust', 'pgoutput')",
        )
        .await
        .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_replaced_while_streaming_is_refused_then_purged_on_request() {
    let (svc, db, config) = first_run().await;

    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    replace_slot_under_walbust(&db, "INSERT INTO items VALUES (1)").await;
    let status = walbust.wait(Duration::from_secs(60));
    let log = walbust.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(
        log.contains("replication slot \"walbust\" resumes at")
            && log.contains("the last position walbust acknowledged on it"),
        "{log}"
    );
    assert!(log.contains("source.on_gap: purge"), "{log}");

    // With on_gap: purge walbust purges what the rules cover and resumes
    // on the new slot.
    purge_on_gap(&config);
    let mut redis = svc.redis.connection().await.unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    set_keys(&mut redis, &["item:2", "item:9", "other:1"]).await;
    replace_slot_under_walbust(&db, "INSERT INTO items VALUES (2)").await;
    assert_invalidated(&mut redis, &["item:2", "item:9"], &["other:1"], "the purge").await;
    wait_streaming(&db, &mut walbust).await;
    streams_on(&db, &mut redis, walbust, "then resuming on the slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_replaced_while_walbust_was_stopped_is_a_gap() {
    let (svc, db, config) = first_run().await;
    let mut redis = svc.redis.connection().await.unwrap();

    // A clean restart finds the slot where walbust stopped: no gap.
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    set_keys(&mut redis, &["item:1"]).await;
    db.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:1"], &[], "the restart").await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    let marker: String = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(marker.contains("stopped_at"), "{marker}");

    // Made again under the same name after a change: the new slot starts
    // past it.
    db.execute("INSERT INTO items VALUES (2)", &[])
        .await
        .unwrap();
    db.batch_execute(
        "SELECT pg_drop_replication_slot('walbust'), pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )
    .await
    .unwrap();
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("where walbust stopped"), "{err}");

    purge_on_gap(&config);
    set_keys(&mut redis, &["item:2", "other:1"]).await;
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    assert_invalidated(&mut redis, &["item:2"], &["other:1"], "the purge").await;
    assert!(walbust.log().contains("gap in the change stream"));
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_replaced_after_a_crash_is_a_gap() {
    let (svc, db, config) = first_run().await;
    let mut redis = svc.redis.connection().await.unwrap();

    // walbust streams, acknowledges a change, and is killed: it records no
    // stop position, only the ceiling it wrote before acknowledging.
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let (_, before, _) = {
        let mut db = svc.pg.connect().await.unwrap();
        commit(&mut db, "INSERT INTO items VALUES (1)").await
    };
    wait_confirmed_past(&db, before).await;
    walbust.kill();
    let marker: String = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        marker.contains("acked_up_to") && !marker.contains("stopped_at"),
        "{marker}"
    );

    // A crashed walbust restarted on the same slot carries on.
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    set_keys(&mut redis, &["item:2"]).await;
    db.execute("INSERT INTO items VALUES (2)", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:2"], &[], "the restart").await;
    walbust.kill();

    // Made again under the same name after a change: the new slot starts
    // past the ceiling.
    db.execute("INSERT INTO items VALUES (4)", &[])
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the slot replaced", || async {
        db.batch_execute(
            "SELECT pg_drop_replication_slot('walbust'), pg_create_logical_replication_slot('walbust', 'pgoutput')",
        )
        .await
        .ok()
    })
    .await;
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("the furthest walbust could have acknowledged"),
        "{err}"
    );

    purge_on_gap(&config);
    set_keys(&mut redis, &["item:4", "other:1"]).await;
    let walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["item:4"], &["other:1"], "the purge").await;
    streams_on(&db, &mut redis, walbust, "gap in the change stream").await;
}

/// A marker Redis lost while walbust runs (restarted without persistence,
/// evicted, flushed) is written again before the next acknowledgement, so
/// a crash after it is still judged against a ceiling.
#[tokio::test]
async fn a_marker_lost_while_running_is_written_again() {
    let (svc, db, config) = first_run().await;
    let mut redis = svc.redis.connection().await.unwrap();
    let first: String = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // The slot is held a moment before the session renews the marker: lose
    // the renewed one, not the one before it.
    renewed_marker(&redis, &first).await;

    let _: () = redis::cmd("DEL")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    // The change commits past any ceiling written before the marker went:
    // acknowledging it needs a new one.
    let (_, before, _) = {
        let mut db = svc.pg.connect().await.unwrap();
        commit(&mut db, "INSERT INTO items VALUES (1)").await
    };
    wait_confirmed_past(&db, before).await;
    let marker: Option<String> = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    let marker = marker.expect("the marker written again before the acknowledgement");
    assert!(
        marker.contains("system_identifier") && marker.contains("acked_up_to"),
        "{marker}"
    );
    // Logged just after the write the test saw.
    walbust.wait_log("the gap marker was gone from Redis").await;
}

/// The gap marker as Redis holds it now.
async fn get_marker(mut redis: redis::aio::MultiplexedConnection) -> Option<String> {
    redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// Waits until the walbust that just started streaming renewed the marker
/// that `first` was (a new run: the slot is held a moment before), and
/// returns it: the marker a test may then lose.
async fn renewed_marker(redis: &redis::aio::MultiplexedConnection, first: &str) -> String {
    let run = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["run"].clone();
    eventually(Duration::from_secs(30), "the marker renewed", || {
        let marker = get_marker(redis.clone());
        let before = run(first);
        async move { marker.await.filter(|m| run(m) != before) }
    })
    .await
}

/// With nothing to acknowledge, a marker Redis lost is written again by
/// the periodic check (every 10 s).
#[tokio::test]
async fn a_marker_lost_while_quiet_is_written_again() {
    let (svc, db, config) = first_run().await;
    let mut redis = svc.redis.connection().await.unwrap();
    let field = |text: &str, name: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()[name].clone()
    };
    let first: String = redis::cmd("GET")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // The session renews the marker (a new run) once it streams: that is
    // the marker to lose.
    let written = renewed_marker(&redis, &first).await;
    let _: () = redis::cmd("DEL")
        .arg("walbust:marker:walbust")
        .query_async(&mut redis)
        .await
        .unwrap();
    let again = eventually(Duration::from_secs(30), "the marker written again", || {
        get_marker(redis.clone())
    })
    .await;
    // The same run's marker (a ceiling may have been raised meanwhile).
    for name in ["system_identifier", "slot", "run"] {
        assert_eq!(field(&again, name), field(&written, name), "{again}");
    }
    // Logged just after the write the test saw.
    walbust.wait_log("the gap marker was gone from Redis").await;
}
