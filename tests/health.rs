//! `/healthz` and `/readyz` as a load balancer or Kubernetes sees them,
//! and `walbust_replication_lag_seconds`, against real Postgres and Redis:
//! readiness follows the sinks and the stream, liveness does not restart
//! a walbust that merely waits for a sink, a standby is live and not
//! ready, and the lag in seconds grows while a change waits for a sink and
//! returns to 0 once it is delivered.

mod support;

use std::time::Duration;

use support::*;

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
"#;

/// GET `path` from walbust's endpoint on `port`: the status code and the
/// body, `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The JSON body of a health endpoint.
fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Waits until GET `path` answers `status`; returns the body as JSON.
async fn wait_status(w: &mut Walbust, port: u16, path: &str, status: u16) -> serde_json::Value {
    let mut last = None;
    for _ in 0..600 {
        assert!(w.is_running(), "walbust exited; log:\n{}", w.log());
        if let Some((got, body)) = get(port, path) {
            if got == status {
                return json(&body);
            }
            last = Some((got, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} never answered {status}; last answer {last:?}; log:\n{}",
        w.log()
    );
}

async fn products(svc: &Services) -> tokio_postgres::Client {
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_healthz_stays_up() {
    let svc = Services::start();
    let db = products(&svc).await;
    let (config, port) = config_with_metrics(&svc, RULES);
    let mut walbust = Walbust::start(&config);

    let ready = wait_status(&mut walbust, port, "/readyz", 200).await;
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["role"], "active");
    assert_eq!(ready["stream"]["state"], "streaming");
    assert_eq!(ready["stream"]["slot"], "walbust");
    assert_eq!(ready["sinks"][0]["name"], "redis");
    assert_eq!(ready["sinks"][0]["healthy"], true);
    assert_eq!(ready["reasons"], serde_json::json!([]));
    // The README shows this very answer.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let shown = readme
        .lines()
        .skip_while(|l| !l.contains("curl -s localhost:9187/readyz"))
        .nth(1)
        .expect("the /readyz example in the README");
    assert_eq!(json(shown), ready, "README's /readyz example");
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["live"], true);
    assert_eq!(metric(port, "walbust_ready"), 1.0);
    assert_eq!(metric(port, r#"walbust_role{role="active"}"#), 1.0);

    // Redis goes away: not ready, naming the sink; still live (restarting
    // walbust would not bring Redis back).
    svc.redis.stop().unwrap();
    let down = wait_status(&mut walbust, port, "/readyz", 503).await;
    assert_eq!(down["status"], "fail");
    assert_eq!(down["ready"], false);
    let reasons = down["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r["component"] == "sink:redis"),
        "{down}"
    );
    assert_eq!(down["sinks"][0]["healthy"], false);
    let (status, body) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "live while Redis is down: {body}");
    assert_eq!(metric(port, "walbust_ready"), 0.0);

    // A change made meanwhile waits for Redis: the lag in seconds grows.
    db.execute("INSERT INTO products VALUES (1, 'a')", &[])
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "lag in seconds to pass 1 s",
        || async { (metric(port, "walbust_replication_lag_seconds") >= 1.0).then_some(()) },
    )
    .await;

    svc.redis.restart().unwrap();
    let back = wait_status(&mut walbust, port, "/readyz", 200).await;
    assert_eq!(back["sinks"][0]["healthy"], true, "{back}");
    // Delivered: caught up again.
    eventually(
        Duration::from_secs(60),
        "lag in seconds back to 0",
        || async { (metric(port, "walbust_replication_lag_seconds") == 0.0).then_some(()) },
    )
    .await;

    assert_eq!(get(port, "/nowhere").unwrap().0, 404);
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_walbust_on_the_slot_is_a_live_standby_that_is_not_ready() {
    let svc = Services::start();
    let db = products(&svc).await;
    let (config, port) = config_with_metrics(&svc, RULES);
    let mut active = Walbust::start(&config);
    wait_status(&mut active, port, "/readyz", 200).await;
    wait_slot_active(&db, &mut active, "walbust").await;

    let (standby_config, standby_port) = second_instance_config(&config, port);
    let mut standby = Walbust::start(&standby_config);
    let body = wait_status(&mut standby, standby_port, "/readyz", 503).await;
    let body = if body["role"] == "standby" {
        body
    } else {
        eventually(Duration::from_secs(60), "the standby role", || async {
            get(standby_port, "/readyz")
                .map(|(_, b)| json(&b))
                .filter(|b| b["role"] == "standby")
        })
        .await
    };
    assert_eq!(body["stream"]["state"], "standby");
    let reasons = body["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r["component"] == "stream"), "{body}");
    let (status, live) = get(standby_port, "/healthz").unwrap();
    assert_eq!(status, 200, "a standby is live: {live}");
    assert_eq!(json(&live)["role"], "standby");
    // The standby reports no lag of its own: the active instance does.
    assert_eq!(metric(standby_port, "walbust_replication_lag_seconds"), 0.0);
    assert_eq!(metric(standby_port, r#"walbust_role{role="standby"}"#), 1.0);
    assert_eq!(metric(standby_port, r#"walbust_role{role="active"}"#), 0.0);

    // The active one stops: the standby takes the slot and is ready.
    active.signal("TERM");
    assert!(active.wait(Duration::from_secs(30)).success());
    let ready = wait_status(&mut standby, standby_port, "/readyz", 200).await;
    assert_eq!(ready["role"], "active");
    standby.signal("TERM");
    assert!(standby.wait(Duration::from_secs(30)).success());
}

/// The JSON log lines whose message is `message`.
fn json_lines(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Asserts that a JSON log line names slot `walbust` and an LSN as Postgres
/// writes them.
fn assert_slot_and_lsn(line: &serde_json::Value) {
    assert_eq!(line["slot"], "walbust", "{line}");
    let lsn = line["lsn"]
        .as_str()
        .unwrap_or_else(|| panic!("no lsn: {line}"));
    let (hi, lo) = lsn.split_once('/').unwrap_or_else(|| panic!("{line}"));
    assert!(
        u32::from_str_radix(hi, 16).is_ok() && u32::from_str_radix(lo, 16).is_ok(),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_about_batches_and_reconnects_carry_slot_lsn_and_sink() {
    let svc = Services::start();
    let db = products(&svc).await;
    let (config, port) = config_with_metrics(&svc, RULES);
    let mut walbust = Walbust::start_with_env(&config, &[("WALBUST_LOG_FORMAT", "json")]);
    wait_status(&mut walbust, port, "/readyz", 200).await;

    // A batch that fails, is retried and is confirmed.
    svc.redis.stop().unwrap();
    db.execute("INSERT INTO products VALUES (1, 'a')", &[])
        .await
        .unwrap();
    walbust.wait_log(RETRYING).await;
    svc.redis.restart().unwrap();
    let log = walbust.wait_log("batch confirmed after retries").await;
    for message in [RETRYING, "batch confirmed after retries"] {
        let lines = json_lines(&log, message);
        assert!(!lines.is_empty(), "no {message:?} line in:\n{log}");
        for line in lines {
            assert_slot_and_lsn(&line);
            assert_eq!(line["sink"], "redis", "{line}");
        }
    }

    // A reconnection.
    let reconnecting = "replication interrupted; reconnecting from the slot's confirmed position";
    db.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'walbust'",
        &[],
    )
    .await
    .unwrap();
    let log = walbust.wait_log(reconnecting).await;
    let line = &json_lines(&log, reconnecting)[0];
    assert_slot_and_lsn(line);
    assert_ne!(line["lsn"], "0/0", "acknowledged the insert before: {line}");

    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    let stopped = json_lines(&walbust.log(), "stopped");
    assert_slot_and_lsn(&stopped[0]);
}
