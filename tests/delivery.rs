//! The acknowledgement contract: the slot's confirmed_flush_lsn moves only
//! after every sink confirmed, and nothing committed is lost while a sink is
//! down or walbust is killed.

mod support;

use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_lsn_waits_for_redis_and_nothing_is_lost() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    // Redis only: this test is about one sink stalling the acknowledgement.
    let config = svc.write_config_with(RULES, false, "publish:\n  retry_max_ms: 500\n");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // Warm up: one delivered change.
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:0"]).await;
    let before = current_wal_lsn(&db).await;
    db.batch_execute("INSERT INTO items VALUES (0, 0)")
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:0"], &[], "warm-up").await;
    wait_confirmed_past(&db, before).await;

    // Redis down: committed changes must not move the slot.
    drop(redis);
    svc.redis.stop().unwrap();
    let outage_start = current_wal_lsn(&db).await;
    let held = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(held <= outage_start);
    for id in 1..=5 {
        db.execute("INSERT INTO items VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
    }
    // walbust received the outage's commits and Redis refused them: the
    // batch failed and was retried, twice. Then walbust reported its
    // position to the server again, after those failures.
    walbust.wait_retries("redis", 2).await;
    wait_status_update(&db).await;
    let during = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(
        during <= outage_start,
        "confirmed_flush_lsn moved to {} during the Redis outage (outage began at {})",
        walbust_pgoutput::format_lsn(during),
        walbust_pgoutput::format_lsn(outage_start)
    );
    assert!(
        walbust.is_running(),
        "walbust exited during the outage:\n{}",
        walbust.log()
    );

    // Redis back (empty, as after a crash): walbust retries, Redis confirms,
    // and the slot moves past the outage's commits.
    svc.redis.restart().unwrap();
    wait_confirmed_past(&db, outage_start).await;

    // Crash: walbust killed while changes commit. After a restart against
    // Redis every key of those changes is invalidated.
    walbust.kill();
    let crash_start = current_wal_lsn(&db).await;
    for id in 6..=10 {
        db.execute("INSERT INTO items VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
    }
    let mut redis = svc.redis.connection().await.unwrap();
    let keys: Vec<String> = (6..=10).map(|i| format!("item:{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    set_keys(&mut redis, &keys).await;
    set_keys(&mut redis, &["item:99"]).await;
    assert!(confirmed_flush_lsn(&db, "walbust").await.unwrap() <= crash_start);

    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    assert_invalidated(&mut redis, &keys, &["item:99"], "after restart").await;
    wait_confirmed_past(&db, crash_start).await;
    walbust.signal("INT");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}

/// Services with table `items`, and walbust streaming it with both sinks
/// and its metrics endpoint on the returned port (`extra` appended to its
/// configuration).
async fn streaming_with_metrics(extra: &str) -> (Services, tokio_postgres::Client, u16, Walbust) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(
        RULES,
        true,
        &format!("{extra}metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    (svc, db, port, walbust)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_reports_the_pipeline() {
    let (svc, db, port, mut walbust) =
        streaming_with_metrics("publish:\n  retry_max_ms: 300\n").await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1"]).await;
    db.batch_execute("INSERT INTO items VALUES (1, 0)")
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:1"], &[], "metrics run").await;
    // One failed publish, so the error counter exists.
    drop(redis);
    svc.redis.stop().unwrap();
    db.batch_execute("INSERT INTO items VALUES (2, 0)")
        .await
        .unwrap();
    let text = eventually(Duration::from_secs(30), "a counted sink error", || async {
        let t = scrape_metrics(port);
        let errors = metric_value(&t, "walbust_sink_errors_total{sink=\"redis\"");
        (errors > Some(0.0)).then_some(t)
    })
    .await;
    svc.redis.restart().unwrap();
    for name in [
        "walbust_changes_total{op=\"insert\"}",
        "walbust_transactions_total",
        "walbust_sink_keys_total{sink=\"redis\"}",
        "walbust_sink_keys_total{sink=\"kafka\"}",
        "walbust_sink_batches_total",
        "walbust_sink_errors_total{sink=\"redis\"",
        "walbust_confirmed_lsn",
        "walbust_replication_lag_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let before = current_wal_lsn(&db).await;
    wait_confirmed_past(&db, before - 1).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

/// Every counter is exported from the start, at 0 and with each label
/// value it can take: Prometheus's `increase()` and `rate()` (and the alerts
/// in deploy/prometheus-alerts.yaml) miss the first event of a series that
/// first appears at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_is_exported_at_zero_from_the_start() {
    use walbust_cdc::metrics as cdc;
    use walbust_publish::metrics as publish;
    let (_svc, _db, port, mut walbust) = streaming_with_metrics("").await;
    let text = scrape_metrics(port);

    let mut series: Vec<String> = [
        cdc::RECONNECTS,
        cdc::MISSING_VALUES,
        cdc::NULL_VALUES,
        cdc::ESCALATIONS,
        cdc::ACK_CEILING_FAILURES,
        cdc::HEARTBEATS,
        "walbust_rules_reload_errors_total",
        publish::REDIS_WRONGTYPE_KEYS,
        publish::REDIS_PATTERN_KEYS_REMOVED,
        publish::KAFKA_RECORDS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (name, label, values) in [
        (cdc::RULE_RELOADS, "result", &["applied", "refused"][..]),
        (cdc::EXPLICIT_MESSAGES, "result", &["ok", "malformed"][..]),
        (cdc::DDL_WINDOWS, "result", &["purged", "refused"][..]),
        (
            cdc::DEGRADED_BINDINGS,
            "reason",
            &["missing_column", "old_value_not_sent"][..],
        ),
        (
            "walbust_startup_waits_total",
            "what",
            &["postgres", "redis", "kafka"][..],
        ),
    ] {
        for value in values {
            series.push(format!("{name}{{{label}=\"{value}\"}}"));
        }
    }
    for sink in ["redis", "kafka"] {
        for name in [publish::SINK_RETRIES, publish::SINK_BATCHES] {
            series.push(format!("{name}{{sink=\"{sink}\"}}"));
        }
        for kind in walbust_publish::SinkErrorKind::ALL {
            series.push(format!(
                "{}{{sink=\"{sink}\",kind=\"{}\"}}",
                publish::SINK_ERRORS,
                kind.as_str()
            ));
        }
    }
    let missing: Vec<&String> = series
        .iter()
        .filter(|s| metric_value(&text, s) != Some(0.0))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported at 0 after start: {missing:?}\n{text}"
    );
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
