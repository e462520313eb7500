//! The Redis sink against a real, throwaway `redis-server` (testkit).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use walbust_publish::redis_sink::{RedisSink, RedisSinkConfig, TagStrategy};
use walbust_publish::{PipelineConfig, Sink, SinkErrorKind};

mod support;
use support::{batch, strings, Run, Watched};

async fn setup() -> (walbust_testkit::Redis, MultiplexedConnection) {
    let redis = walbust_testkit::Redis::start().expect("redis-server starts");
    let conn = redis.connection().await.expect("connect");
    (redis, conn)
}

async fn config_set_maxmemory(conn: &mut MultiplexedConnection, limit: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async(conn)
        .await
        .unwrap();
}

/// A pipeline over `sink` that retries quickly, fed one transaction (commit 1000, end 1008)
/// that invalidates tag `category:3`.
async fn retrying_run_of_one_tag(sink: Arc<Watched>) -> Run {
    let pipeline_cfg = PipelineConfig {
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        ..PipelineConfig::default()
    };
    let run = Run::spawn(pipeline_cfg, sink);
    run.send(
        7,
        1_000,
        walbust_rules::Invalidations {
            keys: vec![],
            tags: vec!["category:3".into()],
            patterns: vec![],
            ..Default::default()
        },
    )
    .await;
    run
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    conn.exists(key).await.unwrap()
}

#[tokio::test]
async fn keys_are_unlinked_in_chunks_and_other_keys_stay() {
    let (redis, mut conn) = setup().await;
    for key in ["product:1", "product:2", "product:3", "other:1"] {
        let _: () = conn.set(key, "cached").await.unwrap();
    }
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.unlink_chunk = 2;
    let sink = RedisSink::connect(cfg).await.unwrap();
    sink.health().await.unwrap();

    sink.publish(&batch(
        strings(["product:1", "product:2", "product:3", "never:cached"]),
        vec![],
        vec![],
    ))
    .await
    .unwrap();
    for key in ["product:1", "product:2", "product:3"] {
        assert!(!exists(&mut conn, key).await, "{key} deleted");
    }
    assert!(
        exists(&mut conn, "other:1").await,
        "unrelated key untouched"
    );

    // At-least-once: the same batch again is harmless.
    sink.publish(&batch(strings(["product:1", "product:2"]), vec![], vec![]))
        .await
        .unwrap();
    assert!(exists(&mut conn, "other:1").await);
}

#[tokio::test]
async fn set_tags_purge_members_and_the_set() {
    let (redis, mut conn) = setup().await;
    for key in ["product:1", "product:2", "product:9"] {
        let _: () = conn.set(key, "cached").await.unwrap();
    }
    let _: () = conn
        .sadd("tag:category:3", &["product:1", "product:2"])
        .await
        .unwrap();
    let _: () = conn.sadd("tag:category:4", "product:9").await.unwrap();

    let sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();
    sink.publish(&batch(
        vec![],
        strings(["category:3", "category:never-used"]),
        vec![],
    ))
    .await
    .unwrap();
    assert!(!exists(&mut conn, "product:1").await);
    assert!(!exists(&mut conn, "product:2").await);
    assert!(
        !exists(&mut conn, "tag:category:3").await,
        "the set goes too"
    );
    assert!(exists(&mut conn, "product:9").await, "other tag untouched");
    assert!(exists(&mut conn, "tag:category:4").await);
}

#[tokio::test]
async fn set_tags_survive_a_flushed_script_cache() {
    let (redis, mut conn) = setup().await;
    let sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    let _: () = conn.sadd("tag:t", "k").await.unwrap();
    sink.publish(&batch(vec![], strings(["t"]), vec![]))
        .await
        .unwrap();
    // Redis forgets scripts on restart or SCRIPT FLUSH; the sink must load it again.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    let _: () = conn.sadd("tag:t", "k").await.unwrap();
    sink.publish(&batch(vec![], strings(["t"]), vec![]))
        .await
        .unwrap();
    assert!(!exists(&mut conn, "k").await);
}

/// The application caches a key and registers it in the tag set (atomically, MULTI/EXEC) while
/// the purge runs. Whatever the interleaving, no cached key may end up outside the set: it is
/// either purged, or registered after the purge and so purged by the next invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_purge_never_loses_a_key_registered_concurrently() {
    let (redis, mut conn) = setup().await;
    let initial: Vec<String> = (0..50_000).map(|i| format!("old:{i}")).collect();
    for chunk in initial.chunks(5_000) {
        let pairs: Vec<(&str, &str)> = chunk.iter().map(|k| (k.as_str(), "v")).collect();
        let _: () = conn.mset(&pairs).await.unwrap();
        let _: () = conn.sadd("tag:hot", chunk).await.unwrap();
    }

    let sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();
    let mut writer = redis.connection().await.unwrap();
    let app = tokio::spawn(async move {
        for i in 0..2_000 {
            let key = format!("new:{i}");
            let _: () = redis::pipe()
                .atomic()
                .set(&key, "v")
                .ignore()
                .sadd("tag:hot", &key)
                .ignore()
                .query_async(&mut writer)
                .await
                .unwrap();
        }
    });
    // Let some registrations land before the purge, so both sides of it are exercised.
    loop {
        let members: usize = conn.scard("tag:hot").await.unwrap();
        if members >= initial.len() + 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sink.publish(&batch(vec![], strings(["hot"]), vec![]))
        .await
        .unwrap();
    app.await.unwrap();

    let remaining_old: usize = conn.exists::<_, usize>(&initial[..1000]).await.unwrap();
    assert_eq!(
        remaining_old, 0,
        "everything registered before the purge is gone"
    );
    let mut purged = 0;
    for i in 0..2_000 {
        let key = format!("new:{i}");
        if exists(&mut conn, &key).await {
            let member: bool = conn.sismember("tag:hot", &key).await.unwrap();
            assert!(
                member,
                "{key} is cached but not registered: it would never be purged"
            );
        } else {
            purged += 1;
        }
    }
    assert!(
        purged >= 10,
        "registrations made before the purge were purged ({purged})"
    );
    eprintln!("{purged} of 2000 concurrently registered keys were purged");
}

#[tokio::test]
async fn version_tags_are_incremented() {
    let (redis, mut conn) = setup().await;
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.tag_strategy = TagStrategy::Version;
    let sink = RedisSink::connect(cfg).await.unwrap();
    sink.publish(&batch(vec![], strings(["category:3", "products"]), vec![]))
        .await
        .unwrap();
    sink.publish(&batch(vec![], strings(["category:3"]), vec![]))
        .await
        .unwrap();
    let v3: i64 = conn.get("tagver:category:3").await.unwrap();
    let vp: i64 = conn.get("tagver:products").await.unwrap();
    assert_eq!((v3, vp), (2, 1));
}

#[tokio::test]
async fn patterns_purge_by_scan_and_respect_escaping() {
    let (redis, mut conn) = setup().await;
    let pages: Vec<String> = (0..2_500).map(|i| format!("page:{i}")).collect();
    for chunk in pages.chunks(500) {
        let pairs: Vec<(&str, &str)> = chunk.iter().map(|k| (k.as_str(), "v")).collect();
        let _: () = conn.mset(&pairs).await.unwrap();
    }
    for key in ["list:a*b", "list:aXb", "list:a*bc", "pagex", "unrelated"] {
        let _: () = conn.set(key, "v").await.unwrap();
    }
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.scan_count = 100;
    cfg.unlink_chunk = 64;
    let sink = RedisSink::connect(cfg).await.unwrap();

    // `list:a\*b` is how rules write a pattern holding a literal `*` from row data.
    sink.publish(&batch(vec![], vec![], strings(["page:*", r"list:a\*b"])))
        .await
        .unwrap();
    let left: Vec<String> = conn.keys("page:*").await.unwrap();
    assert!(left.is_empty(), "{} page keys left", left.len());
    assert!(
        !exists(&mut conn, "list:a*b").await,
        "the literal key is purged"
    );
    for key in ["list:aXb", "list:a*bc", "pagex", "unrelated"] {
        assert!(exists(&mut conn, key).await, "{key} must not match");
    }
}

#[tokio::test]
async fn batches_are_announced_on_the_publish_channel() {
    let (redis, mut conn) = setup().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("walbust:invalidations").await.unwrap();

    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.publish_channel = Some("walbust:invalidations".into());
    let sink = RedisSink::connect(cfg).await.unwrap();
    let _: () = conn.set("product:42", "v").await.unwrap();
    sink.publish(&batch(
        strings(["product:42"]),
        strings(["category:3"]),
        vec![],
    ))
    .await
    .unwrap();

    let message = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("message within 10s")
        .expect("stream open");
    let value: serde_json::Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
    assert_eq!(value["v"], 1);
    assert_eq!(value["lsn"], "0/16B3748");
    assert_eq!(value["keys"], serde_json::json!(["product:42"]));
    assert_eq!(value["tags"], serde_json::json!(["category:3"]));
    assert_eq!(value["xids"], serde_json::json!([1234]));
    assert!(
        !exists(&mut conn, "product:42").await,
        "purged before announcing"
    );
}

/// A tag key the application wrote as a string cannot name any cached key: the purge removes
/// it, counts it and applies the rest of the batch, instead of failing it with `WRONGTYPE` on
/// every retry.
#[tokio::test]
async fn a_wrong_type_tag_key_is_removed_and_counted() {
    let (redis, mut conn) = setup().await;
    let _: () = conn.set("tag:broken", "not a set").await.unwrap();
    for key in ["product:1", "product:2", "product:3"] {
        let _: () = conn.set(key, "cached").await.unwrap();
    }
    let _: () = conn.sadd("tag:category:3", "product:2").await.unwrap();
    let sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // The test's runtime polls the publish on this thread, so the sink's counters land here.
    let _recording = metrics::set_default_local_recorder(&recorder);
    sink.publish(&batch(
        strings(["product:1"]),
        strings(["broken", "category:3"]),
        vec![],
    ))
    .await
    .expect("the batch is confirmed despite the wrong-typed tag key");

    assert!(
        !exists(&mut conn, "tag:broken").await,
        "wrong-typed key removed"
    );
    for key in ["product:1", "product:2", "tag:category:3"] {
        assert!(!exists(&mut conn, key).await, "{key} purged");
    }
    assert!(
        exists(&mut conn, "product:3").await,
        "unrelated key untouched"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("walbust_redis_wrongtype_keys_total 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("walbust_redis_tag_members_removed_total 1"),
        "{rendered}"
    );
}

/// The version strategy still refuses a counter that is not a counter (`INCR` of a set):
/// replacing it would restart the version at 1, which may bring back keys cached under it.
#[tokio::test]
async fn a_wrong_type_version_counter_is_a_non_retriable_error() {
    let (redis, mut conn) = setup().await;
    let _: () = conn.sadd("tagver:broken", "member").await.unwrap();
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.tag_strategy = TagStrategy::Version;
    let sink = RedisSink::connect(cfg).await.unwrap();
    let err = sink
        .publish(&batch(vec![], strings(["broken"]), vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Rejected, "{err:?}");
    assert!(!err.retriable());
}

/// Redis is full (`maxmemory`, `noeviction`): `INCR` of a tag version is refused with `OOM`.
/// That passes when memory frees up, so the pipeline retries like an outage, acknowledges
/// nothing meanwhile, and applies the batch once the limit is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retries_while_redis_is_out_of_memory() {
    let redis = walbust_testkit::Redis::start_with(&["--maxmemory-policy", "noeviction"])
        .expect("redis-server starts");
    let mut conn = redis.connection().await.unwrap();
    let filler = "x".repeat(64 * 1024);
    for i in 0..32 {
        let _: () = conn.set(format!("fill:{i}"), &filler).await.unwrap();
    }
    // A limit below what the 2 MiB of data already use: Redis is full, whatever the size of
    // the next request (filling up to a limit leaves the last few bytes racing with buffers).
    config_set_maxmemory(&mut conn, "1mb").await;
    let refused = conn.incr::<_, _, i64>("probe", 1).await.unwrap_err();
    assert_eq!(refused.code(), Some("OOM"), "{refused}");

    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.tag_strategy = TagStrategy::Version;
    let redis_sink = RedisSink::connect(cfg).await.unwrap();
    let err = redis_sink
        .publish(&batch(vec![], strings(["category:3"]), vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Unavailable, "{err:?}");

    let sink = Watched::new(Arc::new(redis_sink));
    let mut run = retrying_run_of_one_tag(sink.clone()).await;
    sink.wait_failures(2, Duration::from_secs(30)).await;
    assert!(!run.task.is_finished(), "the pipeline keeps retrying");
    assert_eq!(
        *run.confirmed.borrow(),
        0,
        "nothing acknowledged while Redis is full"
    );

    config_set_maxmemory(&mut conn, "0").await;
    run.wait_confirmed(1_008, Duration::from_secs(30)).await;
    let version: i64 = conn.get("tagver:category:3").await.unwrap();
    assert_eq!(version, 1, "applied once memory was available");
    let attempts = run.finish().await;
    assert!(attempts[0] >= 3, "the batch was retried: {attempts:?}");
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_retriably() {
    let port = walbust_testkit::free_port();
    let mut cfg = RedisSinkConfig::new(format!("redis://127.0.0.1:{port}"));
    cfg.connect_timeout_ms = 500;
    let err = RedisSink::connect(cfg).await.unwrap_err();
    assert!(err.retriable(), "{err:?}");
    assert_eq!(err.to_string(), "redis: cannot connect");
}

/// Redis goes away under a running pipeline: the batch is retried (not skipped, not
/// acknowledged) until Redis is back, then applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retries_while_redis_is_down_and_succeeds_after_restart() {
    let (redis, _conn) = setup().await;
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.tag_strategy = TagStrategy::Version;
    cfg.connect_timeout_ms = 500;
    cfg.response_timeout_ms = 1_000;
    let redis_sink = RedisSink::connect(cfg).await.unwrap();
    redis_sink.health().await.unwrap();
    let sink = Watched::new(Arc::new(redis_sink));

    redis.stop().unwrap();
    let health = sink.health().await.unwrap_err();
    assert!(health.retriable(), "{health:?}");

    let mut run = retrying_run_of_one_tag(sink.clone()).await;

    // The batch reached the sink, failed, was retried and failed again.
    sink.wait_failures(2, Duration::from_secs(30)).await;
    assert_eq!(
        *run.confirmed.borrow(),
        0,
        "nothing acknowledged while Redis is down"
    );

    redis.restart().unwrap();
    run.wait_confirmed(1_008, Duration::from_secs(30)).await;
    // The restarted Redis starts empty, so the counter proves the batch was applied after it.
    let mut conn = redis.connection().await.unwrap();
    let version: i64 = conn.get("tagver:category:3").await.unwrap();
    assert!(version >= 1);
    let attempts = run.finish().await;
    assert_eq!(attempts.len(), 1, "one batch");
    assert!(attempts[0] >= 3, "the batch was retried: {attempts:?}");
}
