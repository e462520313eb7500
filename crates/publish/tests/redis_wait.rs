//! `sinks.redis.wait_replicas` against a real redis-server and its replica:
//! a batch is confirmed only once the replica acknowledged its writes; with
//! the replica gone, the batch fails (retriable) instead of being confirmed
//! on the primary alone, and succeeds again once the replica is back.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use walbust_publish::redis_sink::{RedisSink, RedisSinkConfig};
use walbust_publish::{Sink, SinkErrorKind};

mod support;
use support::{batch, strings};

/// Waits until the primary sees `count` replicas online (synced, so that
/// they acknowledge offsets; one still loading the first sync does not).
async fn replicas_connected(conn: &mut redis::aio::MultiplexedConnection, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(conn)
            .await
            .unwrap();
        if info.matches("state=online").count() == count
            && info.contains(&format!("connected_slaves:{count}"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never connected: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_only_once_a_replica_has_it() {
    let primary = walbust_testkit::Redis::start().expect("primary");
    let port = primary.port().to_string();
    let replica =
        walbust_testkit::Redis::start_with(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    let mut conn = primary.connection().await.unwrap();
    replicas_connected(&mut conn, 1).await;
    let mut replica_conn = replica.connection().await.unwrap();

    let mut cfg = RedisSinkConfig::new(primary.url());
    cfg.wait_replicas = 1;
    cfg.wait_timeout_ms = 300;
    let sink = RedisSink::connect(cfg).await.expect("sink");

    let _: () = conn.set("product:1", "cached").await.unwrap();
    sink.publish(&batch(strings(["product:1"]), vec![], vec![]))
        .await
        .expect("confirmed with the replica up");
    // Confirmed means the replica has it too.
    let on_replica: Option<String> = replica_conn.get("product:1").await.unwrap();
    assert_eq!(on_replica, None);

    replica.stop().expect("stop the replica");
    replicas_connected(&mut conn, 0).await;
    let _: () = conn.set("product:2", "cached").await.unwrap();
    let err = sink
        .publish(&batch(strings(["product:2"]), vec![], vec![]))
        .await
        .expect_err("no replica to acknowledge");
    assert_eq!(err.kind(), SinkErrorKind::Unavailable, "{err}");
    assert!(err.retriable(), "{err}");
    assert!(err.to_string().contains("WAIT reached 0 of 1"), "{err}");

    replica.restart().expect("restart the replica");
    replicas_connected(&mut conn, 1).await;
    sink.publish(&batch(strings(["product:2"]), vec![], vec![]))
        .await
        .expect("confirmed once the replica is back");
}

#[test]
fn a_wait_as_long_as_the_reply_timeout_is_refused() {
    let mut cfg = RedisSinkConfig::new("redis://127.0.0.1:6379");
    cfg.wait_replicas = 1;
    cfg.wait_timeout_ms = cfg.response_timeout_ms;
    let errors = cfg.validate().unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.path == "sinks.redis.wait_timeout_ms"),
        "{errors:?}"
    );
}
