//! Fenced fills (leases) and the read-your-writes watermark against a real, throwaway
//! `redis-server`: every invalidation the sink publishes voids the leases on what it removes.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use walbust_publish::redis_sink::{functions, RedisSink, RedisSinkConfig, TagStrategy};
use walbust_publish::{Batch, Sink, SinkErrorKind};

mod support;
use support::{batch, strings};

const SLOT: &str = "walbust";

/// A reply of `walbust_get`: `(status, value or token)`.
type Got = (i64, String);

async fn sink_with(
    redis: &walbust_testkit::Redis,
    edit: impl FnOnce(&mut RedisSinkConfig),
) -> RedisSink {
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.leases = true;
    edit(&mut cfg);
    let sink = RedisSink::connect(cfg).await.unwrap().with_slot(SLOT);
    sink.prepare().await.expect("the functions library loads");
    sink
}

async fn setup(
    edit: impl FnOnce(&mut RedisSinkConfig),
) -> (walbust_testkit::Redis, MultiplexedConnection, RedisSink) {
    let redis = walbust_testkit::Redis::start().expect("redis-server starts");
    let conn = redis.connection().await.expect("connect");
    let sink = sink_with(&redis, edit).await;
    (redis, conn, sink)
}

/// `FCALL function 1+len(tags) key tags... args...`.
async fn fcall<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    function: &str,
    key: &str,
    tags: &[&str],
    args: &[&str],
) -> T {
    redis::cmd("FCALL")
        .arg(function)
        .arg(1 + tags.len())
        .arg(key)
        .arg(tags)
        .arg(args)
        .query_async(conn)
        .await
        .unwrap()
}

async fn get(conn: &mut MultiplexedConnection, key: &str, tags: &[&str]) -> Got {
    fcall(conn, functions::GET, key, tags, &[]).await
}

async fn fill(
    conn: &mut MultiplexedConnection,
    key: &str,
    tags: &[&str],
    token: &str,
    value: &str,
    ttl_ms: u64,
) -> i64 {
    let ttl_ms = ttl_ms.to_string();
    fcall(conn, functions::FILL, key, tags, &[token, value, &ttl_ms]).await
}

/// Takes a lease on `key` (a miss), returning its token.
async fn lease(conn: &mut MultiplexedConnection, key: &str, tags: &[&str]) -> String {
    let (status, token) = get(conn, key, tags).await;
    assert_eq!(status, 0, "a miss on {key} gives a lease");
    assert!(!token.is_empty());
    token
}

async fn caught_up(conn: &mut MultiplexedConnection, lsn: &str) -> i64 {
    let key = functions::watermark_key(SLOT);
    fcall(conn, functions::CAUGHT_UP, &key, &[], &[lsn]).await
}

async fn watermark(conn: &mut MultiplexedConnection) -> Option<String> {
    redis::cmd("GET")
        .arg(functions::watermark_key(SLOT))
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fill_under_a_lease_stores_and_is_a_hit() {
    let (_redis, mut conn, _sink) = setup(|_| {}).await;
    let token = lease(&mut conn, "product:1", &[]).await;
    assert_eq!(
        fill(&mut conn, "product:1", &[], &token, "v1", 60_000).await,
        1
    );
    assert_eq!(get(&mut conn, "product:1", &[]).await, (1, "v1".into()));
    let ttl: i64 = redis::cmd("PTTL")
        .arg("product:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    // The same token again: the lease is spent.
    assert_eq!(fill(&mut conn, "product:1", &[], &token, "v2", 0).await, 0);
    assert_eq!(get(&mut conn, "product:1", &[]).await, (1, "v1".into()));
    // TTL_MS 0: no expiry.
    let token = lease(&mut conn, "product:2", &[]).await;
    assert_eq!(fill(&mut conn, "product:2", &[], &token, "v", 0).await, 1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("product:2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test]
async fn a_key_unlink_voids_the_lease() {
    let (_redis, mut conn, sink) = setup(|_| {}).await;
    let token = lease(&mut conn, "product:1", &[]).await;
    sink.publish(&batch(strings(["product:1"]), vec![], vec![]))
        .await
        .unwrap();
    assert_eq!(
        fill(&mut conn, "product:1", &[], &token, "stale", 0).await,
        0
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("product:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "the refused fill stored nothing");
    // A new lease after the invalidation fills.
    let token = lease(&mut conn, "product:1", &[]).await;
    assert_eq!(
        fill(&mut conn, "product:1", &[], &token, "fresh", 0).await,
        1
    );
}

#[tokio::test]
async fn a_set_tag_purge_voids_the_lease_registered_with_it() {
    let (_redis, mut conn, sink) = setup(|_| {}).await;
    // The lease registers the key in the tag set before the caller reads the database.
    let token = lease(&mut conn, "product:1", &["tag:category:3"]).await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("tag:category:3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["product:1"]);
    sink.publish(&batch(vec![], strings(["category:3"]), vec![]))
        .await
        .unwrap();
    assert_eq!(
        fill(
            &mut conn,
            "product:1",
            &["tag:category:3"],
            &token,
            "stale",
            0
        )
        .await,
        0
    );
    // A key registered by hand (SADD after a plain lease) is purged the same way.
    let token = lease(&mut conn, "product:2", &[]).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:category:4")
        .arg("product:2")
        .query_async(&mut conn)
        .await
        .unwrap();
    sink.publish(&batch(vec![], strings(["category:4"]), vec![]))
        .await
        .unwrap();
    assert_eq!(
        fill(&mut conn, "product:2", &[], &token, "stale", 0).await,
        0
    );
}

#[tokio::test]
async fn a_version_tag_purge_voids_the_lease() {
    let (_redis, mut conn, sink) = setup(|cfg| cfg.tag_strategy = TagStrategy::Version).await;
    let tags = ["tagver:category:3"];
    let token = lease(&mut conn, "product:1:v0", &tags).await;
    sink.publish(&batch(vec![], strings(["category:3"]), vec![]))
        .await
        .unwrap();
    assert_eq!(
        fill(&mut conn, "product:1:v0", &tags, &token, "stale", 0).await,
        0
    );
    // Untouched tags: the fill goes through; the tag keys must be the ones given to the lease.
    let token = lease(&mut conn, "product:1:v1", &tags).await;
    let refused = redis::cmd("FCALL")
        .arg(functions::FILL)
        .arg(1)
        .arg("product:1:v1")
        .arg(&token)
        .arg("v")
        .arg(0)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("pass the tag keys"),
        "{refused}"
    );
    assert_eq!(
        fill(&mut conn, "product:1:v1", &tags, &token, "fresh", 0).await,
        1
    );
}

#[tokio::test]
async fn a_pattern_walk_voids_the_lease() {
    let (_redis, mut conn, sink) = setup(|cfg| cfg.scan_count = 10).await;
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(lease(&mut conn, &format!("product-list:{i}"), &[]).await);
    }
    let kept = lease(&mut conn, "other:1", &[]).await;
    sink.publish(&batch(vec![], vec![], strings(["product-list:*"])))
        .await
        .unwrap();
    for (i, token) in tokens.iter().enumerate() {
        let key = format!("product-list:{i}");
        assert_eq!(
            fill(&mut conn, &key, &[], token, "stale", 0).await,
            0,
            "{key}"
        );
    }
    assert_eq!(fill(&mut conn, "other:1", &[], &kept, "v", 0).await, 1);
}

#[tokio::test]
async fn a_fill_after_the_lease_expired_is_refused() {
    let (_redis, mut conn, _sink) = setup(|cfg| cfg.lease_ttl_ms = 50).await;
    let token = lease(&mut conn, "product:1", &[]).await;
    // Wait for the expiry itself, not for a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg("product:1")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        fill(&mut conn, "product:1", &[], &token, "late", 0).await,
        0
    );
    // Nor does an old token fill over the next caller's lease.
    let next = lease(&mut conn, "product:1", &[]).await;
    assert_ne!(next, token);
    assert_eq!(
        fill(&mut conn, "product:1", &[], &token, "late", 0).await,
        0
    );
    assert_eq!(fill(&mut conn, "product:1", &[], &next, "v", 0).await, 1);
}

#[tokio::test]
async fn concurrent_misses_get_one_lease_and_the_rest_wait() {
    let (redis, _conn, _sink) = setup(|_| {}).await;
    let mut callers = Vec::new();
    for _ in 0..20 {
        let mut conn = redis.connection().await.unwrap();
        callers.push(tokio::spawn(
            async move { get(&mut conn, "hot", &[]).await },
        ));
    }
    let mut replies = Vec::new();
    for caller in callers {
        replies.push(caller.await.unwrap());
    }
    let leases: Vec<&Got> = replies.iter().filter(|(s, _)| *s == 0).collect();
    assert_eq!(leases.len(), 1, "{replies:?}");
    let waiting = replies.iter().filter(|r| **r == (2, String::new())).count();
    assert_eq!(waiting, 19, "{replies:?}");
}

#[tokio::test]
async fn plain_values_are_hits_and_plain_readers_never_read_a_marker() {
    let (_redis, mut conn, _sink) = setup(|_| {}).await;
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("cached")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(get(&mut conn, "plain", &[]).await, (1, "cached".into()));
    // A leased key: a plain GET fails, MGET sees a miss; neither returns the marker.
    let token = lease(&mut conn, "leased", &[]).await;
    let err = redis::cmd("GET")
        .arg("leased")
        .query_async::<Option<String>>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("leased")
        .arg("plain")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, [None, Some("cached".to_string())]);
    // A plain SET over the lease wins; the lease's fill is then refused.
    let _: () = redis::cmd("SET")
        .arg("leased")
        .arg("other")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fill(&mut conn, "leased", &[], &token, "mine", 0).await, 0);
    assert_eq!(get(&mut conn, "leased", &[]).await, (1, "other".into()));
    // A hash the application keeps is not a lease.
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = redis::cmd("FCALL")
        .arg(functions::GET)
        .arg(1)
        .arg("h")
        .query_async::<Value>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
}

fn ending_at(end_lsn: Option<u64>, keys: &[&str], tags: &[&str]) -> Batch {
    Batch {
        end_lsn,
        ..batch(strings(keys), strings(tags), vec![])
    }
}

#[tokio::test]
async fn the_watermark_advances_never_backwards_and_answers() {
    let (_redis, mut conn, sink) = setup(|cfg| cfg.watermark = true).await;
    assert_eq!(watermark(&mut conn).await, None);
    assert_eq!(caught_up(&mut conn, "0/0").await, 0, "no watermark yet");
    // Keys only: the watermark rides at the end of the UNLINK pipeline.
    sink.publish(&ending_at(Some(0x9_0000_0010), &["k"], &[]))
        .await
        .unwrap();
    assert_eq!(watermark(&mut conn).await.as_deref(), Some("9/10"));
    assert_eq!(caught_up(&mut conn, "9/10").await, 1);
    assert_eq!(caught_up(&mut conn, "9/F").await, 1);
    assert_eq!(caught_up(&mut conn, "9/11").await, 0);
    assert_eq!(caught_up(&mut conn, "A/0").await, 0);
    // "10/0" sorts before "9/10" as text; as an LSN it is later. Tags: sent after the purge.
    sink.publish(&ending_at(Some(0x10_0000_0000), &[], &["t"]))
        .await
        .unwrap();
    assert_eq!(watermark(&mut conn).await.as_deref(), Some("10/0"));
    assert_eq!(caught_up(&mut conn, "F/FFFFFFFF").await, 1);
    // A batch published again after a restart never moves it back.
    sink.publish(&ending_at(Some(0x9_0000_0010), &["k"], &[]))
        .await
        .unwrap();
    assert_eq!(watermark(&mut conn).await.as_deref(), Some("10/0"));
    // A partial batch of a large transaction completes nothing.
    sink.publish(&ending_at(None, &["k"], &[])).await.unwrap();
    assert_eq!(watermark(&mut conn).await.as_deref(), Some("10/0"));
    // 64-bit LSNs, beyond what a Lua number holds exactly.
    sink.publish(&ending_at(Some(0xFFFF_FFFF_FFFF_FFF0), &["k"], &[]))
        .await
        .unwrap();
    assert_eq!(
        watermark(&mut conn).await.as_deref(),
        Some("FFFFFFFF/FFFFFFF0")
    );
    assert_eq!(caught_up(&mut conn, "FFFFFFFF/FFFFFFEF").await, 1);
    assert_eq!(caught_up(&mut conn, "FFFFFFFF/FFFFFFF1").await, 0);
    let err = redis::cmd("FCALL")
        .arg(functions::CAUGHT_UP)
        .arg(1)
        .arg(functions::watermark_key(SLOT))
        .arg("not-an-lsn")
        .query_async::<i64>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an LSN"), "{err}");
}

#[tokio::test]
async fn the_watermark_rides_with_the_publish() {
    let (_redis, mut conn, sink) = setup(|cfg| {
        cfg.watermark = true;
        cfg.publish_channel = Some("invalidations".into());
    })
    .await;
    sink.publish(&ending_at(Some(0x16B3800), &["k"], &[]))
        .await
        .unwrap();
    assert_eq!(watermark(&mut conn).await.as_deref(), Some("0/16B3800"));
}

#[tokio::test]
async fn without_the_watermark_nothing_is_written() {
    let (_redis, mut conn, sink) = setup(|_| {}).await;
    sink.publish(&ending_at(Some(0x16B3800), &["k"], &[]))
        .await
        .unwrap();
    assert_eq!(watermark(&mut conn).await, None);
}

#[tokio::test]
async fn a_redis_without_functions_is_refused_with_the_reason() {
    // Renaming FUNCTION and FCALL away makes the server answer as a Redis before 7 does.
    let redis = walbust_testkit::Redis::start_without_functions().expect("redis-server starts");
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.leases = true;
    let sink = RedisSink::connect(cfg).await.unwrap();
    let err = sink.prepare().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Config, "{err}");
    assert!(!err.retriable());
    let text = err.to_string();
    assert!(text.contains("sinks.redis.leases"), "{text}");
    assert!(text.contains("Redis 7 or later"), "{text}");
    // Leases off: nothing to load.
    let sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();
    sink.prepare().await.unwrap();
}

#[tokio::test]
async fn a_user_without_function_load_is_refused_with_the_rule() {
    let redis = walbust_testkit::Redis::start().expect("redis-server starts");
    for (rules, rule) in [
        (&["~*", "+@all", "-function|load"][..], "+function|load"),
        (&["~*", "+@all", "-fcall"][..], "+fcall"),
    ] {
        let url = redis.acl_user("walbust", "secret", rules).await.unwrap();
        let mut cfg = RedisSinkConfig::new(url);
        cfg.leases = true;
        let sink = RedisSink::connect(cfg).await.unwrap();
        let err = sink.prepare().await.unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::Denied, "{err}");
        let text = walbust_flow::Chain(&err).to_string();
        assert!(
            text.contains(&format!("ACL SETUSER <user> {rule}")),
            "{text}"
        );
        assert!(text.contains("sinks.redis.leases"), "{text}");
    }
}

#[tokio::test]
async fn a_lost_library_is_loaded_again_by_the_health_check() {
    let (_redis, mut conn, sink) = setup(|_| {}).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    sink.health().await.unwrap();
    let token = lease(&mut conn, "k", &[]).await;
    assert_eq!(fill(&mut conn, "k", &[], &token, "v", 0).await, 1);
}

/// `FCALL` through a cluster connection (routed by the key's slot).
async fn cluster_fcall<T: redis::FromRedisValue>(
    conn: &mut redis::cluster_async::ClusterConnection,
    function: &str,
    key: &str,
    args: &[&str],
) -> T {
    redis::cmd("FCALL")
        .arg(function)
        .arg(1)
        .arg(key)
        .arg(args)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loads_the_library_on_every_primary() {
    let cluster = walbust_testkit::RedisCluster::start(3).expect("start a Redis Cluster");
    let mut cfg = RedisSinkConfig::new(cluster.url());
    cfg.cluster = true;
    cfg.leases = true;
    cfg.watermark = true;
    let sink = RedisSink::connect(cfg).await.unwrap().with_slot(SLOT);
    sink.prepare()
        .await
        .expect("the library loads on the cluster");
    for node in cluster.nodes() {
        let mut conn = node.connection().await.unwrap();
        let listed: Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg(functions::LIBRARY)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            matches!(&listed, Value::Array(libs) if libs.len() == 1),
            "node {}: {listed:?}",
            node.port()
        );
    }
    let mut conn = redis::cluster::ClusterClient::new(vec![cluster.url()])
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    // A primary that lost the library (restarted without persistence) gets it back from the
    // health check.
    let mut last = cluster.nodes()[2].connection().await.unwrap();
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut last)
        .await
        .unwrap();
    sink.health().await.unwrap();
    let listed: Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut last)
        .await
        .unwrap();
    assert!(
        matches!(&listed, Value::Array(libs) if libs.len() == 1),
        "{listed:?}"
    );
    // Keys spread over every primary: each lease lives and dies in its own slot.
    let keys: Vec<String> = (0..30).map(|i| format!("product:{i}")).collect();
    let mut tokens = Vec::new();
    for key in &keys {
        let (status, token): Got = cluster_fcall(&mut conn, functions::GET, key, &[]).await;
        assert_eq!(status, 0, "{key}");
        tokens.push(token);
    }
    assert!(
        cluster.sizes().unwrap().iter().all(|n| *n > 0),
        "every primary holds leases"
    );
    let (invalidated, kept) = keys.split_at(15);
    sink.publish(&batch(invalidated.to_vec(), vec![], vec![]))
        .await
        .unwrap();
    for (key, token) in keys.iter().zip(&tokens) {
        let filled: i64 = cluster_fcall(&mut conn, functions::FILL, key, &[token, "v", "0"]).await;
        assert_eq!(filled, i64::from(kept.contains(key)), "{key}");
    }
    // The watermark key lives in one slot; walbust_caught_up reaches it.
    let wm = functions::watermark_key(SLOT);
    let caught: i64 = cluster_fcall(&mut conn, functions::CAUGHT_UP, &wm, &["0/16B3800"]).await;
    assert_eq!(caught, 1);
}
