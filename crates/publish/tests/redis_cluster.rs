//! The Redis sink against a throwaway three-primary Redis Cluster (`redis-server
//! --cluster-enabled yes`, slots assigned by `redis-cli --cluster create`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use publish::redis_sink::{request, RedisConnection, RedisSink, RedisSinkConfig, TagStrategy};
use publish::{Batch, Sink, SinkErrorKind};
use redis::cluster_async::ClusterConnection;

/// `primaries` cluster-enabled `redis-server`s on free loopback ports, killed on drop.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(primaries: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("walbust-redis-cluster-")
            .tempdir()
            .unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..primaries {
            let port = testkit::free_port();
            let node_dir = cluster.dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (apt-get install -y redis-server)");
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node(port)
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_err()
            {
                assert!(Instant::now() < deadline, "node {port} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info: String = node(port)
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "node {port}: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    async fn connection(&self) -> ClusterConnection {
        redis::cluster::ClusterClient::new(vec![self.url()])
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// Every key of every node, sorted.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .ports
            .iter()
            .flat_map(|&port| {
                let mut c = node(port).unwrap();
                redis::cmd("KEYS")
                    .arg("*")
                    .query::<Vec<String>>(&mut c)
                    .unwrap()
            })
            .collect();
        keys.sort();
        keys
    }

    /// Keys per node.
    fn sizes(&self) -> Vec<i64> {
        self.ports
            .iter()
            .map(|&port| {
                redis::cmd("DBSIZE")
                    .query(&mut node(port).unwrap())
                    .unwrap()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn node(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()
}

fn strings<S: AsRef<str>>(v: impl IntoIterator<Item = S>) -> Vec<String> {
    v.into_iter().map(|s| s.as_ref().to_string()).collect()
}

fn batch(keys: Vec<String>, tags: Vec<String>, patterns: Vec<String>) -> Batch {
    let mut keys = keys;
    keys.sort();
    Batch {
        lsn: 0x16B3748,
        end_lsn: Some(0x16B3800),
        commit_time_micros: 1_000_000,
        first_commit_time_micros: 1_000_000,
        xids: vec![42],
        keys,
        tags,
        patterns,
    }
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

fn cluster_config(cluster: &Cluster, strategy: TagStrategy) -> RedisSinkConfig {
    let mut cfg = RedisSinkConfig::new(cluster.url());
    cfg.cluster = true;
    cfg.tag_strategy = strategy;
    cfg.unlink_chunk = 7;
    cfg.scan_count = 50;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_version_tags_and_patterns_across_every_primary() {
    let cluster = Cluster::start(3);
    let mut conn = cluster.connection().await;
    let keys: Vec<String> = (0..300).map(|i| format!("product:{i}")).collect();
    // Many keys in one slot: cut into chunks of `unlink_chunk` within the slot.
    let tagged: Vec<String> = (0..20).map(|i| format!("{{user:7}}:item:{i}")).collect();
    let listed: Vec<String> = (0..200).map(|i| format!("list:3:{i}")).collect();
    let kept = strings(["list:4:1", "other:1", "product:x"]);
    for key in keys.iter().chain(&tagged).chain(&listed).chain(&kept) {
        set(&mut conn, key).await;
    }
    let sizes = cluster.sizes();
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
    assert_eq!(cluster.keys(), expected);
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
    let cluster = Cluster::start(3);
    let mut conn = cluster.connection().await;
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
        cluster.keys(),
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
    let cluster = Cluster::start(3);
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
