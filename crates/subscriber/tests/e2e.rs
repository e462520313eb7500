//! End to end: walbust, run as an operator runs it against real Postgres, Redis and Kafka
//! (librdkafka's mock cluster), invalidates a Rust service's moka caches through both
//! transports; and the transports' failure modes: a Redis restart under a subscriber, a Kafka
//! subscriber restarted mid-stream, a Kafka offset reset.
//!
//! The walbust binary is the one of the same build (`target/<profile>/walbust`):
//! `cargo nextest run --workspace` builds it. Run alone (`cargo nextest run -p
//! walbust-subscriber`), build it first with `cargo build -p walbust`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use walbust_subscriber::{
    Applier, Glob, KafkaSubscriber, LocalCache, Lsn, MokaCache, RedisSubscriber, Stats, Watermark,
};

const TOPIC: &str = "invalidations";
const CHANNEL: &str = "invalidations";
const WAIT: Duration = Duration::from_secs(30);

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}"]
    patterns: ["product-list:{category_id}:*", "search:{name}:*"]
"#;

const SCHEMA: &str = "
CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL, name text NOT NULL);
ALTER TABLE products REPLICA IDENTITY FULL;
";

fn walbust_binary() -> PathBuf {
    // Integration tests run from target/<profile>/deps; cargo puts binaries one folder up.
    let exe = std::env::current_exe().expect("test binary path");
    let walbust = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(format!("walbust{}", std::env::consts::EXE_SUFFIX)))
        .expect("target/<profile>");
    assert!(
        walbust.is_file(),
        "{} is missing: build it with `cargo build -p walbust` (cargo nextest run --workspace does)",
        walbust.display()
    );
    walbust
}

/// `walbust run` on a configuration of both sinks, Redis publishing on [`CHANNEL`]. Killed on
/// drop.
struct Walbust(Child);

impl Walbust {
    fn start(dir: &std::path::Path, pg_url: &str, redis_url: &str, kafka: &str) -> Walbust {
        std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
        let config = format!(
            "source:\n  url: \"{pg_url}\"\n  publication: walbust\n  slot: walbust\n  create: true\n  status_interval_ms: 200\nrules: rules.yaml\nsinks:\n  redis:\n    url: \"{redis_url}\"\n    publish_channel: {CHANNEL}\n  kafka:\n    brokers: \"{kafka}\"\n    topic: {TOPIC}\n"
        );
        let path = dir.join("walbust.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("walbust.log")).unwrap();
        let child = Command::new(walbust_binary())
            .args(["run", "--config"])
            .arg(&path)
            .env("WALBUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn walbust");
        Walbust(child)
    }
}

impl Drop for Walbust {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A subscriber running in a task of its own (stopped on drop), and the handles to watch it.
struct Running {
    cache: MokaCache<String>,
    watermark: Watermark,
    stats: Stats,
    task: JoinHandle<()>,
}

impl Running {
    async fn redis(redis: &walbust_testkit::Redis) -> Running {
        let subscriber = RedisSubscriber::connect(&redis.url(), CHANNEL, MokaCache::new(1_000))
            .await
            .expect("subscribe");
        Running::watch(subscriber.applier())(tokio::spawn(subscriber.run()))
    }

    fn kafka(subscriber: KafkaSubscriber<MokaCache<String>>) -> Running {
        Running::watch(subscriber.applier())(tokio::spawn(subscriber.run()))
    }

    /// Takes the handles now; the task comes once the subscriber is moved into it.
    fn watch(applier: &Applier<MokaCache<String>>) -> impl FnOnce(JoinHandle<()>) -> Running {
        let (cache, watermark, stats) = (
            applier.cache().clone(),
            applier.watermark(),
            applier.stats(),
        );
        move |task| Running {
            cache,
            watermark,
            stats,
            task,
        }
    }
}

/// Stops the subscriber and waits until it is gone. A Kafka subscriber's consumer closes
/// (commits, leaves its group) as it is dropped, and must be gone before the Kafka it talks to,
/// or closing waits forever for brokers that no longer exist: aborting alone only asks for the
/// drop, which would then race with the rest of the test's teardown. (Hence multi-threaded
/// runtimes for every test that runs one.)
impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        let task = &mut self.task;
        tokio::task::block_in_place(|| {
            let _ = tokio::runtime::Handle::current().block_on(task);
        });
    }
}

/// A cache whose service fails (panics) when asked to drop a given key.
struct CrashesOn(&'static str, MokaCache<String>);

impl LocalCache for CrashesOn {
    fn invalidate_keys(&self, keys: &[String]) {
        assert!(!keys.iter().any(|k| k == self.0), "crash while applying");
        self.1.invalidate_keys(keys);
    }
    fn invalidate_tags(&self, tags: &[String]) {
        self.1.invalidate_tags(tags);
    }
    fn invalidate_patterns(&self, patterns: &[Glob]) {
        self.1.invalidate_patterns(patterns);
    }
    fn clear(&self) {
        self.1.clear();
    }
}

/// Polls `ready` until it holds, or fails naming `what`.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kafka_config(kafka: &walbust_testkit::Kafka, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        // A restarted member rejoins sooner should its predecessor's leave go unheard.
        .set("session.timeout.ms", "6000");
    config
}

/// Entries a service caches: (key, tags).
const FILLED: &[(&str, &[&str])] = &[
    ("product:1", &[]),
    ("product:2", &[]),
    ("page:cat3", &["category:3"]),
    ("page:cat3:featured", &["category:3", "featured"]),
    ("page:cat4", &["category:4"]),
    ("page:featured", &["featured"]),
    ("product-list:3:p1", &[]),
    ("product-list:4:p1", &[]),
    ("search:*:p1", &[]),
    ("search:boots:p1", &[]),
    ("search:shoes:p1", &[]),
    ("other:1", &[]),
];

fn fill(cache: &MokaCache<String>) {
    for (key, tags) in FILLED {
        cache.insert_tagged(*key, "cached".to_owned(), tags.iter().copied());
    }
}

fn present(cache: &MokaCache<String>) -> Vec<&'static str> {
    FILLED
        .iter()
        .map(|(key, _)| *key)
        .filter(|key| cache.get(key).is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_update_reaches_moka_caches_through_kafka_and_redis() {
    let pg = walbust_testkit::Postgres::start().expect("start Postgres");
    let redis = walbust_testkit::Redis::start().expect("start Redis");
    let kafka = walbust_testkit::Kafka::start().expect("start Kafka");
    kafka.create_topic(TOPIC, 1).expect("create topic");
    let dir = tempfile::tempdir().unwrap();
    let mut db = pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    db.batch_execute("INSERT INTO products VALUES (1, 3, 'boots'), (2, 4, 'shoes')")
        .await
        .unwrap();

    // Subscribed before walbust starts: nothing it publishes is missed.
    let through_redis = Running::redis(&redis).await;
    let through_kafka = Running::kafka(kafka_subscriber(
        &kafka,
        "catalog-1",
        &MokaCache::new(1_000),
    ));

    let mut walbust = Walbust::start(
        dir.path(),
        &pg.url(),
        &redis.url(),
        &kafka.bootstrap_servers(),
    );
    // The slot is created at start: a write before it would not be in the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while walbust_testkit::walsender_pid(&db, "walbust")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            walbust.0.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "walbust is not streaming; log:\n{}",
            std::fs::read_to_string(dir.path().join("walbust.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fill(&through_redis.cache);
    fill(&through_kafka.cache);

    // The product gets the name `*`: walbust escapes it in the pattern (`search:\*:*`), so
    // only the search page of the literal `*` goes, not every search page.
    let tx = db.transaction().await.unwrap();
    tx.execute("UPDATE products SET name = '*' WHERE id = 1", &[])
        .await
        .unwrap();
    let lsn: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let lsn: Lsn = lsn.parse().unwrap();

    for (running, transport) in [(&through_redis, "Redis PUBLISH"), (&through_kafka, "Kafka")] {
        running
            .watermark
            .wait_for(lsn, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("through {transport}: {e}"));
    }

    let kept = [
        "product:2",
        "page:cat4",
        "page:featured",
        "product-list:4:p1",
        "search:shoes:p1",
        "other:1",
    ];
    // Gone: product:1 (key), page:cat3 and page:cat3:featured (tag category:3),
    // product-list:3:p1, search:boots:p1 (old name) and search:*:p1 (new name) by pattern.
    for (running, transport) in [(&through_redis, "Redis PUBLISH"), (&through_kafka, "Kafka")] {
        assert_eq!(present(&running.cache), kept, "through {transport}");
        let stats = &running.stats;
        assert_eq!(stats.records_refused(), 0, "through {transport}");
        assert_eq!(stats.gaps(), 0, "through {transport}");
        assert!(stats.keys_applied() >= 1, "through {transport}: {stats:?}");
    }
}

/// Waits until `stats` counts `gaps` gaps.
async fn wait_gaps(stats: &Stats, gaps: u64) {
    eventually(&format!("{gaps} gap(s)"), || stats.gaps() >= gaps).await;
}

async fn publish(redis: &walbust_testkit::Redis, record: &str) {
    let mut conn = redis.connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(record)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_a_subscriber_clears_its_cache() {
    let redis = walbust_testkit::Redis::start().expect("start Redis");
    let Running {
        cache,
        watermark,
        stats,
        ..
    } = &Running::redis(&redis).await;
    fill(cache);

    publish(&redis, r#"{"v":1,"lsn":"0/10","keys":["product:1"]}"#).await;
    watermark.wait_for(Lsn(0x10), WAIT).await.unwrap();
    assert_eq!(present(cache).len(), FILLED.len() - 1);
    assert_eq!(stats.gaps(), 0);

    // Whatever was published while it was away is lost to the subscriber: it must not keep
    // anything it cached before.
    redis.restart().expect("restart Redis");
    wait_gaps(stats, 1).await;
    assert!(present(cache).is_empty(), "{:?}", present(cache));

    // Subscribed again: records apply as before.
    fill(cache);
    publish(&redis, r#"{"v":1,"lsn":"0/20","tags":["category:3"]}"#).await;
    watermark.wait_for(Lsn(0x20), WAIT).await.unwrap();
    assert!(cache.get("page:cat3").is_none());
    assert!(cache.get("product:1").is_some());
    assert_eq!(stats.gaps(), 1);

    // A record of a version it does not know is refused and counted, the cache untouched.
    publish(&redis, r#"{"v":2,"lsn":"0/30","keys":["product:2"]}"#).await;
    publish(&redis, r#"{"v":1,"lsn":"0/40","keys":["product:1"]}"#).await;
    watermark.wait_for(Lsn(0x40), WAIT).await.unwrap();
    assert_eq!(stats.records_refused(), 1);
    assert!(cache.get("product:2").is_some());
}

/// A connection that stops answering without closing (here: Redis pauses its clients) is as
/// lost as a closed one: the unanswered `PING` ends it, and the resubscription clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_that_stops_answering_counts_as_a_gap() {
    let redis = walbust_testkit::Redis::start().expect("start Redis");
    let cache = MokaCache::new(100);
    let subscriber = RedisSubscriber::connect(&redis.url(), CHANNEL, cache.clone())
        .await
        .expect("subscribe")
        .ping_interval(Duration::from_millis(200));
    let stats = subscriber.applier().stats();
    let _running = Running::watch(subscriber.applier())(tokio::spawn(subscriber.run()));
    fill(&cache);
    let mut admin = redis.connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    wait_gaps(&stats, 1).await;
    assert!(present(&cache).is_empty(), "{:?}", present(&cache));
}

async fn produce(kafka: &walbust_testkit::Kafka, records: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .create()
        .unwrap();
    for record in records {
        producer
            .send(
                FutureRecord::to(TOPIC).key("walbust").payload(record),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// A Kafka whose topic holds records 0/10, 0/20, 0/30, each invalidating `product:<n>`.
async fn kafka_with_three_records() -> walbust_testkit::Kafka {
    let kafka = walbust_testkit::Kafka::start().expect("start Kafka");
    kafka.create_topic(TOPIC, 1).expect("create topic");
    let records: Vec<String> = (1..=3)
        .map(|n| format!(r#"{{"v":1,"lsn":"0/{n}0","keys":["product:{n}"]}}"#))
        .collect();
    produce(&kafka, &records).await;
    kafka
}

fn kafka_subscriber(
    kafka: &walbust_testkit::Kafka,
    group: &str,
    cache: &MokaCache<String>,
) -> KafkaSubscriber<MokaCache<String>> {
    KafkaSubscriber::new(&kafka_config(kafka, group), TOPIC, cache.clone()).unwrap()
}

#[tokio::test]
async fn a_kafka_subscriber_restarted_mid_stream_resumes_after_what_it_applied() {
    let kafka = kafka_with_three_records().await;

    // The first subscriber fails while applying the third record (it had received it, and
    // librdkafka had fetched it: only applying did not happen). Its task dies with the panic,
    // dropping the consumer, which commits what was stored: the offsets of applied records.
    let crashing = CrashesOn("product:3", MokaCache::new(100));
    let subscriber = KafkaSubscriber::new(&kafka_config(&kafka, "catalog-1"), TOPIC, crashing)
        .expect("kafka subscriber");
    let applied = subscriber.applier().watermark();
    let died = tokio::spawn(subscriber.run()).await.unwrap_err();
    assert!(died.is_panic(), "{died}");
    assert_eq!(applied.current(), Lsn(0x20), "two records applied");

    // Its successor in the same group starts with the record after the last one applied.
    let second = MokaCache::<String>::new(100);
    fill(&second);
    let mut subscriber = kafka_subscriber(&kafka, "catalog-1", &second);
    assert_eq!(subscriber.next().await.unwrap(), Some(Lsn(0x30)));
    assert!(second.get("product:3").is_none());
    assert!(second.get("product:1").is_some() && second.get("product:2").is_some());
    assert_eq!(
        subscriber.applier().stats().gaps(),
        0,
        "it resumed where committed"
    );
}

#[tokio::test]
async fn a_kafka_offset_reset_clears_the_cache() {
    let kafka = kafka_with_three_records().await;

    // The group's committed offset lies beyond the log (as after the topic was recreated):
    // librdkafka resets to `auto.offset.reset`, and what the group missed is unknown.
    let committer: BaseConsumer = kafka_config(&kafka, "catalog-2").create().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(TOPIC, 0, Offset::Offset(100))
        .unwrap();
    committer.commit(&offsets, CommitMode::Sync).unwrap();
    drop(committer);

    let cache = MokaCache::<String>::new(100);
    fill(&cache);
    let mut subscriber = kafka_subscriber(&kafka, "catalog-2", &cache);
    assert_eq!(subscriber.next().await.unwrap(), Some(Lsn(0x10)));
    assert_eq!(subscriber.applier().stats().gaps(), 1);
    assert!(present(&cache).is_empty(), "{:?}", present(&cache));
}
