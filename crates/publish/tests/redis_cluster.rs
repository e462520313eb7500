//! The Redis sink against a throwaway three-primary Redis Cluster (`redis-server
//! --cluster-enabled yes`, slots assigned by `redis-cli --cluster create`).

use redis::cluster_async::ClusterConnection;
use walbust_publish::redis_sink::{
    request, RedisConnection, RedisSink, RedisSinkConfig, TagStrategy,
};
use walbust_publish::{Sink, SinkErrorKind};
use walbust_testkit::RedisCluster;

mod support;
use support::{batch, strings};

/// A cluster-aware async connection to `cluster`.
async fn connection(cluster: &RedisCluster) -> ClusterConnection {
    redis::cluster::ClusterClient::new(vec![cluster.url()])
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

async fn set(conn: &mut ClusterConnection, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("cached")
        .query_async(conn)
        .await
        .unwrap();
}

async fn sadd(conn: &mut ClusterConnection, set: &str, member: &str) {
    let _: () = redis::cmd("SADD")
        .arg(set)
        .arg(member)
        .query_async(conn)
        .await
        .unwrap();
}

fn cluster_config(cluster: &RedisCluster, strategy: TagStrategy) -> RedisSinkConfig {
    let mut cfg = RedisSinkConfig::new(cluster.url());
    cfg.cluster = true;
    cfg.tag_strategy = strategy;
    cfg.unlink_chunk = 7;
    cfg.scan_count = 50;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_version_tags_and_patterns_across_every_primary() {
    let cluster = RedisCluster::start(3).expect("start a Redis Cluster");
    let mut conn = connection(&cluster).await;
    let keys: Vec<String> = (0..300).map(|i| format!("product:{i}")).collect();
    // Many keys in one slot: cut into chunks of `unlink_chunk` within the slot.
    let tagged: Vec<String> = (0..20).map(|i| format!("{{user:7}}:item:{i}")).collect();
    let listed: Vec<String> = (0..200).map(|i| format!("list:3:{i}")).collect();
    let kept = strings(["list:4:1", "other:1", "product:x"]);
    for key in keys.iter().chain(&tagged).chain(&listed).chain(&kept) {
        set(&mut conn, key).await;
    }
    let sizes = cluster.sizes().unwrap();
    assert!(sizes.iter().all(|n| *n > 0), "spread: {sizes:?}");

    let sink = RedisSink::connect(cluster_config(&cluster, TagStrategy::Version))
        .await
        .unwrap();
    sink.health().await.unwrap();
    let tags: Vec<String> = (0..30).map(|i| format!("category:{i}")).collect();
    let all_keys: Vec<String> = keys.iter().chain(&tagged).cloned().collect();
    let b = batch(all_keys, tags.clone(), strings(["list:3:*"]));
    sink.publish(&b).await.unwrap();
    // At least once: a second delivery is harmless and increments again.
    sink.publish(&b).await.unwrap();

    let mut expected: Vec<String> = kept.clone();
    expected.extend(tags.iter().map(|t| format!("tagver:{t}")));
    expected.sort();
    assert_eq!(cluster.keys().unwrap(), expected);
    for tag in &tags {
        let v: i64 = redis::cmd("GET")
            .arg(format!("tagver:{tag}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, 2, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tags_with_hash_tags_are_purged_and_a_foreign_member_is_refused() {
    let cluster = RedisCluster::start(3).expect("start a Redis Cluster");
    let mut conn = connection(&cluster).await;
    // Tags in different slots, each set with members sharing its hash tag.
    let mut members = Vec::new();
    for user in 0..10 {
        let set_key = format!("tag:{{user:{user}}}");
        for page in ["profile", "feed"] {
            let member = format!("{{user:{user}}}:{page}");
            set(&mut conn, &member).await;
            sadd(&mut conn, &set_key, &member).await;
            members.push(member);
        }
    }
    set(&mut conn, "{user:99}:profile").await;
    sadd(&mut conn, "tag:{user:99}", "{user:99}:profile").await;

    let sink = RedisSink::connect(cluster_config(&cluster, TagStrategy::Set))
        .await
        .unwrap();
    let tags: Vec<String> = (0..10).map(|u| format!("{{user:{u}}}")).collect();
    sink.publish(&batch(vec![], tags, vec![])).await.unwrap();
    assert_eq!(
        cluster.keys().unwrap(),
        strings(["tag:{user:99}", "{user:99}:profile"])
    );

    // A member on another node than its set cannot be reached by the script: a loud,
    // non-retriable error, never a silent skip.
    let set_key = "tag:{user:1}";
    let foreign = (0..100)
        .map(|i| format!("page:{i}"))
        .find(|k| {
            // `--cluster create` gives three primaries these slot ranges.
            let node = |key: &str| match request::hash_slot(key.as_bytes()) {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            };
            node(k) != node(set_key)
        })
        .unwrap();
    set(&mut conn, &foreign).await;
    sadd(&mut conn, set_key, &foreign).await;
    let err = sink
        .publish(&batch(vec![], strings(["{user:1}"]), vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Rejected, "{err:?}");
    assert!(!err.retriable());
}

/// walbust's own keys (its gap marker) reach the right node through [`RedisConnection`], where
/// a plain connection to the configured node gets `MOVED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_routes_by_slot() {
    let cluster = RedisCluster::start(3).expect("start a Redis Cluster");
    // A key served by another node than the one in the URL.
    let key = (0..100)
        .map(|i| format!("walbust:marker:slot{i}"))
        .find(|k| request::hash_slot(k.as_bytes()) > 5460)
        .unwrap();
    let mut plain = redis::Client::open(cluster.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let moved = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .exec_async(&mut plain)
        .await
        .unwrap_err();
    assert!(moved.to_string().contains("Moved"), "{moved}");

    let mut cfg = RedisSinkConfig::new(cluster.url());
    cfg.cluster = true;
    let mut conn = RedisConnection::connect(&cfg).await.unwrap();
    assert!(conn.is_cluster());
    redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .exec_async(&mut conn)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_urls_are_refused_for_a_cluster() {
    let mut cfg = RedisSinkConfig::new("unix:///tmp/redis.sock");
    cfg.cluster = true;
    let err = RedisSink::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Config);
}
