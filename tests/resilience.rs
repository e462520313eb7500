//! Faults walbust must ride out without losing an invalidation: a
//! terminated walsender, a Postgres crash and restart, an idle publication
//! on a busy server.

mod support;

use std::time::Duration;

use support::*;

/// Logged each time the replication connection is lost and walbust is
/// about to reconnect.
const INTERRUPTED: &str = "replication interrupted; reconnecting";

const RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
"#;

async fn insert_and_expect(
    db: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    ids: std::ops::RangeInclusive<i32>,
    what: &str,
) {
    let keys: Vec<String> = ids.clone().map(|i| format!("item:{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    set_keys(redis, &keys).await;
    for id in ids {
        db.execute("INSERT INTO items VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    assert_invalidated(redis, &keys, &["item:unrelated"], what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_walsender_termination_and_postgres_crash() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:unrelated"]).await;
    insert_and_expect(&db, &mut redis, 1..=3, "before faults").await;

    // The walsender is terminated (pg_terminate_backend): walbust reconnects.
    let first = walsender_pid(&db).await.expect("walsender");
    db.execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    insert_and_expect(&db, &mut redis, 4..=8, "after walsender termination").await;
    let second = eventually(Duration::from_secs(30), "a new walsender", || async {
        walsender_pid(&db).await.filter(|p| *p != first)
    })
    .await;
    assert_ne!(first, second);

    // Postgres crashes (immediate stop) and comes back: walbust reconnects
    // and nothing committed before or after is lost. While the server is
    // down, walbust must notice the lost connection and fail to reconnect
    // at least once more without giving up.
    let interruptions = |log: &str| log.matches(INTERRUPTED).count();
    let before_crash = interruptions(&walbust.log());
    drop(db);
    svc.pg.stop().unwrap();
    walbust
        .wait_log_lines(
            before_crash + 2,
            "interruptions (the crash, then a failed reconnect)",
            |l| l.contains(INTERRUPTED),
        )
        .await;
    assert!(
        walbust.is_running(),
        "walbust exited on a transient fault:\n{}",
        walbust.log()
    );
    svc.pg.restart().unwrap();
    let db = svc.pg.connect().await.unwrap();
    insert_and_expect(&db, &mut redis, 9..=15, "after a Postgres crash").await;
    assert!(walbust.is_running());
    assert!(
        walbust.log().contains("reconnecting"),
        "no reconnect logged:\n{}",
        walbust.log()
    );

    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_publication_still_advances_the_slot() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE busy (x int);")
        .await
        .unwrap();
    let config = svc.write_config(RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // WAL written elsewhere: a table outside the publication.
    let start = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    db.batch_execute("INSERT INTO busy SELECT g FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    let written = current_wal_lsn(&db).await;
    assert!(written > start);
    // Nothing published changed, yet the slot must not pin that WAL.
    wait_confirmed_past(&db, written - 1).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_leaving_the_publication_stops_walbust() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // pgoutput would just stop sending the table's changes: silent staleness.
    db.batch_execute("ALTER PUBLICATION walbust DROP TABLE items")
        .await
        .unwrap();
    let status = walbust.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "log:\n{}", walbust.log());
    let log = walbust.log();
    assert!(
        log.contains("does not include tables the rules name: public.items"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_the_slot_of_a_silent_server() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config_with(RULES, false, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "  status_interval_ms: 200\n",
        "  status_interval_ms: 200\n  heartbeat_interval_ms: 300\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // Nobody writes: only walbust's heartbeats put WAL behind the slot's
    // position, and acknowledging them moves it.
    let start = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    let moved = eventually(
        Duration::from_secs(30),
        "the slot to advance on heartbeats",
        || async {
            confirmed_flush_lsn(&db, "walbust")
                .await
                .filter(|c| *c > start)
        },
    )
    .await;
    assert!(moved > start);
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
