//! Start-up as a deployment sees it: services that come up after walbust
//! are waited for, refusals that need a human stop walbust with exit
//! status 3, and `walbust check --db` reports each refusal `run` would
//! meet.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
"#;

/// Waits until `series` on walbust's metrics endpoint reaches `min`; fails
/// if walbust exits first.
async fn wait_metric(w: &mut Walbust, port: u16, series: &str, min: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, series) < min {
        assert!(w.is_running(), "walbust exited; log:\n{}", w.log());
        assert!(
            Instant::now() < deadline,
            "{series} stayed under {min}; log:\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes one product and waits until its cached key is gone: walbust
/// streams and invalidates.
async fn invalidates(svc: &Services, id: i32) {
    let mut redis = svc.redis.connection().await.unwrap();
    let key = format!("product:{id}");
    set_keys(&mut redis, &[&key]).await;
    let db = svc.pg.connect().await.unwrap();
    db.execute("INSERT INTO products VALUES ($1)", &[&id])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &[&key], &[], "after start-up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_postgres_still_coming_up() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    drop(db);
    let (config, port) = config_with_metrics(&svc, RULES);
    // Once on a server that is up, so that a gap marker exists: the next
    // start reads the server's identity for it first.
    let mut first = Walbust::start(&config);
    first.wait_log("slot ready").await;
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());

    svc.pg.stop().unwrap();
    let mut walbust = Walbust::start(&config);
    let waits = r#"walbust_startup_waits_total{what="postgres"}"#;
    wait_metric(&mut walbust, port, waits, 2.0).await;
    let log = walbust.log();
    assert!(
        log.contains("waiting for postgres, which is not ready yet"),
        "{log}"
    );
    svc.pg.restart().unwrap();
    let db = svc.pg.connect().await.unwrap();
    wait_streaming(&db, &mut walbust).await;
    invalidates(&svc, 1).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_redis_still_coming_up() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (config, port) = config_with_metrics(&svc, RULES);
    svc.redis.stop().unwrap();
    let mut walbust = Walbust::start(&config);
    let waits = r#"walbust_startup_waits_total{what="redis"}"#;
    wait_metric(&mut walbust, port, waits, 2.0).await;
    assert!(walbust
        .log()
        .contains("waiting for redis, which is not ready yet"));
    svc.redis.restart().unwrap();
    wait_streaming(&db, &mut walbust).await;
    invalidates(&svc, 1).await;
}

/// A configuration for the server [`dba_postgres`] set up: its
/// publication and slot, nothing created by walbust.
fn dba_config(dir: &Path, name: &str, pg_url: &str, redis_url: &str) -> PathBuf {
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "source:\n  url: \"{pg_url}\"\n  publication: walbust\n  slot: walbust\n\
             rules: rules.yaml\nsinks:\n  redis:\n    url: \"{redis_url}\"\n"
        ),
    )
    .unwrap();
    path
}

/// `run` stops with exit status 3 and `needle` in its one line, and
/// `check --db` reports an error line holding `needle`.
async fn refused_by_run_and_check(config: &Path, needle: &str) {
    let out = run_to_exit(config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "run, {needle}: {err}");
    assert!(err.contains(needle), "run, {needle}: {err}");
    let out = check_db(config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check, {needle}: {stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("error:") && l.contains(needle)),
        "check, {needle}: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_privileges_exit_3_and_check_reports_them() {
    let (pg, password) = dba_postgres().await;
    let redis = walbust_testkit::Redis::start().unwrap();
    let redis_url = redis
        .acl_user("walbust", "cachepw", &["~*", "&*", "+@all"])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dba_url(&pg, &password);

    // The role as the setup script makes it passes: what follows fails
    // for the one reason each case changes.
    let config = dba_config(dir.path(), "good", &good, &redis_url);
    let out = check_db(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok: the role may open a replication connection"),
        "{stdout}"
    );

    let wrong_pg = dba_config(dir.path(), "wrong-pg", &dba_url(&pg, "wrong"), &redis_url);
    refused_by_run_and_check(&wrong_pg, "password authentication failed").await;

    let wrong_redis = dba_config(
        dir.path(),
        "wrong-redis",
        &good,
        &redis.url_as("walbust", "wrong"),
    );
    refused_by_run_and_check(&wrong_redis, "Password authentication failed").await;

    let db = pg.connect().await.unwrap();
    db.batch_execute("ALTER ROLE walbust NOREPLICATION")
        .await
        .unwrap();
    refused_by_run_and_check(&config, "must be superuser or replication role").await;
    db.batch_execute("ALTER ROLE walbust REPLICATION")
        .await
        .unwrap();
    drop(db);

    // Only the superuser may connect over TCP.
    pg.set_hba(
        "local all all trust\n\
         local replication all trust\n\
         host all postgres 127.0.0.1/32 scram-sha-256\n\
         host replication postgres 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    refused_by_run_and_check(&config, "no pg_hba.conf entry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_gap_that_run_refuses() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    db.batch_execute("SELECT pg_drop_replication_slot('walbust')")
        .await
        .unwrap();

    let needle = "the slot no longer exists";
    refused_by_run_and_check(&config, needle).await;
    let out = check_db(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains(needle)).unwrap();
    assert!(
        line.contains("Run `walbust reset-gap` with this configuration")
            && line.contains("or set source.on_gap: purge"),
        "{line}"
    );
    // Nor does check promise a slot that run will not create.
    assert!(!stdout.contains("will create what is missing"), "{stdout}");

    // With on_gap: purge, run purges and streams: check says so, no error.
    purge_on_gap(&config);
    let out = check_db(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("note:")
            && l.contains(needle)
            && l.contains("will purge everything the rules cover")),
        "{stdout}"
    );
}
