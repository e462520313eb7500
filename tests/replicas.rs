//! Replica-aware invalidation (`source.replicas`) against a real primary,
//! a real streaming replica of it and real Redis: a key is invalidated only
//! once the replica serves the new row; a stopped replica delays
//! invalidation by `source.replica_wait_max_ms` and no longer, counted and
//! warned once; `check` refuses bad entries and `check --db` a URL that is
//! not a standby.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;
use walbust_testkit::Postgres;

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
"#;

const SCHEMA: &str = "
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO products VALUES (1, 'v0'), (2, 'v0'), (3, 'v0'), (4, 'v0');
";

/// The `replica` label of the replica in these tests.
const NAME: &str = "east";

/// Writes a configuration (Redis sink, metrics on a port of its own, which
/// it returns) whose `source` lists `replicas` (YAML flow sequence) and
/// `replica_wait_max_ms: wait_ms`.
fn config(svc: &Services, replicas: &str, wait_ms: u64) -> (PathBuf, u16) {
    let (path, port) = config_with_metrics(svc, RULES);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  status_interval_ms: 200\n",
        &format!(
            "  status_interval_ms: 200\n  replicas: {replicas}\n  replica_wait_max_ms: {wait_ms}\n"
        ),
    );
    std::fs::write(&path, text).unwrap();
    (path, port)
}

fn named(replica: &Postgres) -> String {
    format!("[{{url: \"{}\", name: {NAME}}}]", replica.url())
}

/// `products.name` of row `id` on `db`; `None` while the table is not there
/// (a replica that has not replayed its creation yet).
async fn name_of(db: &tokio_postgres::Client, id: i32) -> Option<String> {
    db.query_opt("SELECT name FROM products WHERE id = $1", &[&id])
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// Primary with the schema, a replica of it (delayed by `delay`), Redis.
async fn services(delay: Option<Duration>) -> (Services, tokio_postgres::Client, Postgres) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    let replica = Postgres::start_replica(&svc.pg, delay).expect("start replica");
    (svc, db, replica)
}

/// Commits an update of row `id` and returns when it committed.
async fn update(db: &mut tokio_postgres::Client, id: i32, name: &str) -> Instant {
    let at = Instant::now();
    commit(
        db,
        &format!("UPDATE products SET name = '{name}' WHERE id = {id}"),
    )
    .await;
    at
}

/// Waits (polling every 2 ms) until `key` is gone from Redis; returns when
/// it was seen gone.
async fn vanished(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists(redis, key).await {
        assert!(Instant::now() < deadline, "{key} never invalidated");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

fn timeouts(port: u16) -> f64 {
    metric(
        port,
        &format!("walbust_replica_wait_timeouts_total{{replica=\"{NAME}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_invalidated_only_once_a_lagging_replica_has_the_new_row() {
    let delay = Duration::from_millis(1500);
    let (svc, mut db, replica) = services(Some(delay)).await;
    let standby = replica.connect().await.unwrap();
    let (config, port) = config(&svc, &named(&replica), 30_000);
    let mut w = Walbust::start(&config);
    wait_streaming(&db, &mut w).await;
    eventually(Duration::from_secs(30), "the replica has the table", || {
        name_of(&standby, 1)
    })
    .await;
    let mut redis = svc.redis.connection().await.unwrap();

    for (round, id) in [1, 2].into_iter().enumerate() {
        let key = format!("product:{id}");
        set_keys(&mut redis, &[&key]).await;
        let new = format!("v{}", round + 1);
        let committed = update(&mut db, id, &new).await;
        // The delay is real: without the gate walbust would delete the key
        // within milliseconds, while the replica still serves the old row.
        assert_eq!(
            name_of(&standby, id).await.as_deref(),
            Some("v0"),
            "round {round}: the replica shows the old row right after the commit"
        );
        let gone = vanished(&mut redis, &key).await;
        // A reader that misses the cache now reads the new row.
        assert_eq!(
            name_of(&standby, id).await.as_deref(),
            Some(new.as_str()),
            "round {round}: {key} was invalidated before the replica replayed the update"
        );
        // recovery_min_apply_delay counts from the commit time on the
        // primary, a little before `committed`.
        assert!(
            gone - committed >= delay - Duration::from_millis(100),
            "round {round}: invalidated after {:?}",
            gone - committed
        );
    }
    assert_eq!(timeouts(port), 0.0, "the replica was always in time");
    let page = scrape_metrics(port);
    assert!(
        metric_value(&page, "walbust_replica_wait_seconds_count").unwrap_or(0.0) >= 2.0,
        "{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            &format!("walbust_replica_reachable{{replica=\"{NAME}\"}}")
        ),
        Some(1.0)
    );
    assert!(
        metric_value(
            &page,
            &format!("walbust_replica_replay_lag_bytes{{replica=\"{NAME}\"}}")
        )
        .is_some(),
        "{page}"
    );
    assert!(!w.log().contains("did not replay"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_delays_invalidation_by_the_bound_only() {
    let wait = Duration::from_millis(1500);
    let (svc, mut db, replica) = services(None).await;
    let (config, port) = config(&svc, &named(&replica), wait.as_millis() as u64);
    let mut w = Walbust::start(&config);
    wait_streaming(&db, &mut w).await;
    let mut redis = svc.redis.connection().await.unwrap();

    // A replica in time: no timeout.
    set_keys(&mut redis, &["product:1"]).await;
    update(&mut db, 1, "v1").await;
    vanished(&mut redis, "product:1").await;
    assert_eq!(timeouts(port), 0.0);

    // Stopped: each batch waits the bound, then goes; one warning.
    replica.stop().unwrap();
    for (round, id) in [2, 3].into_iter().enumerate() {
        let key = format!("product:{id}");
        set_keys(&mut redis, &[&key]).await;
        let committed = update(&mut db, id, "v1").await;
        let gone = vanished(&mut redis, &key).await;
        assert!(
            gone - committed >= wait,
            "round {round}: invalidated after {:?}, before the bound",
            gone - committed
        );
        assert!(
            gone - committed < wait + Duration::from_secs(10),
            "round {round}: invalidated after {:?}",
            gone - committed
        );
        eventually(Duration::from_secs(10), "the timeout counted", || async {
            (timeouts(port) >= round as f64 + 1.0).then_some(())
        })
        .await;
    }
    let log = w.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("replica did not replay the batch in time"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for the episode:\n{log}");
    assert!(warnings[0].contains(&format!("replica={NAME}")), "{log}");
    assert!(!log.contains(replica.password()), "{log}");

    // Back: the episode ends, batches wait for it again and are in time.
    replica.restart().unwrap();
    eventually(Duration::from_secs(30), "the replica reachable", || async {
        (metric(
            port,
            &format!("walbust_replica_reachable{{replica=\"{NAME}\"}}"),
        ) == 1.0)
            .then_some(())
    })
    .await;
    let before = timeouts(port);
    set_keys(&mut redis, &["product:4"]).await;
    update(&mut db, 4, "v1").await;
    vanished(&mut redis, "product:4").await;
    w.wait_log("replica replays in time again").await;
    assert_eq!(timeouts(port), before, "in time again: no timeout");
}

#[tokio::test]
async fn bad_replica_entries_are_refused_by_field() {
    let svc = Services::start();
    for (replicas, wait_ms, expected) in [
        (
            "[{url: \"mysql://r/shop\"}]",
            100,
            "source.replicas[0].url: not a postgres:// or postgresql:// URL",
        ),
        (
            "[{url: \"postgres://r:5432/a\"}, {url: \"postgres://u@r:5432/b\"}]",
            100,
            "source.replicas[1].name: \"r:5432\" names another replica too",
        ),
        ("[]", 0, "source.replica_wait_max_ms: must be at least 1"),
    ] {
        let (path, _) = config(&svc, replicas, wait_ms);
        let out = command_to_exit("check", &path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{replicas}: {stderr}");
        assert!(stderr.contains(expected), "{replicas}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_db_reports_a_standby_and_refuses_what_is_not_one() {
    let (svc, _db, replica) = services(None).await;
    let (path, _) = config(&svc, &named(&replica), 1000);
    let out = check_db(&path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok: replica {NAME} is a reachable standby, replayed up to "
        )),
        "{stdout}"
    );
    assert!(stdout.contains("byte(s) behind the primary"), "{stdout}");

    // The primary listed as a replica, and a replica that is not there.
    let nowhere = format!(
        "postgres://walbust:{}@127.0.0.1:{}/postgres",
        svc.pg.password(),
        walbust_testkit::free_port()
    );
    let (path, _) = config(
        &svc,
        &format!(
            "[{{url: \"{}\"}}, {{url: \"{nowhere}\", name: gone}}]",
            svc.pg.url()
        ),
        1000,
    );
    let out = check_db(&path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let primary = format!("127.0.0.1:{}", svc.pg.port());
    assert!(
        stdout.contains(&format!(
            "error: replica {primary} (source.replicas[0]) is not a standby (pg_is_in_recovery() is false)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: replica gone (source.replicas[1]): cannot connect to the replica"),
        "{stdout}"
    );
    assert!(!stdout.contains(svc.pg.password()), "{stdout}");
}
