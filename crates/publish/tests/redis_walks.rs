//! Pattern walks of the Redis sink against a real `redis-server`: keys never wait for a walk,
//! the batch is confirmed only once its walk finished, walks are merged, a stopped walk is sent
//! again, and the `version` pattern strategy bumps a counter instead of walking.
//!
//! Walks are made slow on purpose: thousands of unrelated keys walked with `scan_count: 1`, one
//! key per round trip. No test sleeps for a fixed time: each waits for the event that proves
//! its point, with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use walbust_publish::redis_sink::{PatternStrategy, RedisSink, RedisSinkConfig};
use walbust_publish::{PipelineConfig, Sink};

mod support;
use support::{batch, strings, Run};

const DEADLINE: Duration = Duration::from_secs(60);

async fn setup() -> (walbust_testkit::Redis, MultiplexedConnection) {
    let redis = walbust_testkit::Redis::start().expect("redis-server starts");
    let conn = redis.connection().await.expect("connect");
    (redis, conn)
}

/// Writes `count` unrelated keys `fill:<i>` in one server-side loop.
async fn fill(conn: &mut MultiplexedConnection, count: u64) {
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'fill:' .. i, 'v') end")
        .arg(0)
        .arg(count)
        .query_async(conn)
        .await
        .unwrap();
}

async fn set_all(conn: &mut MultiplexedConnection, keys: &[String]) {
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "cached")).collect();
    let _: () = conn.mset(&pairs).await.unwrap();
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    conn.exists(key).await.unwrap()
}

async fn count_keys(conn: &mut MultiplexedConnection, pattern: &str) -> usize {
    let keys: Vec<String> = conn.keys(pattern).await.unwrap();
    keys.len()
}

/// Polls until `key` is gone; panics after [`DEADLINE`].
async fn wait_gone(conn: &mut MultiplexedConnection, key: &str) {
    let start = Instant::now();
    while exists(conn, key).await {
        assert!(
            start.elapsed() < DEADLINE,
            "{key} still there after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A sink whose walks take a while: `scan_count: 1` over the keys already in Redis.
async fn slow_sink(redis: &walbust_testkit::Redis) -> RedisSink {
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.scan_count = 1;
    RedisSink::connect(cfg).await.unwrap()
}

fn pages(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn a_key_beside_a_slow_walk_is_gone_before_the_walk_ends() {
    let (redis, mut conn) = setup().await;
    fill(&mut conn, 20_000).await;
    set_all(&mut conn, &pages("plist:1:", 50)).await;
    let _: () = conn.set("product:1", "cached").await.unwrap();
    let sink = slow_sink(&redis).await;

    let rest = sink
        .publish_staged(&batch(
            strings(["product:1"]),
            vec![],
            strings(["plist:1:*"]),
        ))
        .await
        .unwrap()
        .expect("the walk is left running");
    assert!(
        !exists(&mut conn, "product:1").await,
        "the key is gone as soon as the batch's first stage returns"
    );
    let mut rest = std::pin::pin!(rest);
    assert!(
        futures::poll!(rest.as_mut()).is_pending(),
        "the walk (20k round trips) is still running"
    );
    tokio::time::timeout(DEADLINE, rest)
        .await
        .expect("the walk ends")
        .unwrap();
    assert_eq!(count_keys(&mut conn, "plist:1:*").await, 0);
    assert_eq!(count_keys(&mut conn, "fill:*").await, 20_000);
}

/// Through the pipeline with `max_in_flight: 1`: a later batch's key is removed while the
/// earlier batch's walk still runs, and nothing is acknowledged before that walk ended.
#[tokio::test]
async fn later_keys_do_not_wait_and_the_ack_waits_for_the_walk() {
    let (redis, mut conn) = setup().await;
    fill(&mut conn, 30_000).await;
    set_all(&mut conn, &pages("plist:1:", 50)).await;
    for key in ["product:1", "product:2"] {
        let _: () = conn.set(key, "cached").await.unwrap();
    }
    let sink = Arc::new(slow_sink(&redis).await);
    let mut run = Run::spawn(PipelineConfig::default(), sink);
    let change = |keys: &[&str], patterns: &[&str]| walbust_rules::Invalidations {
        keys: strings(keys),
        tags: vec![],
        patterns: strings(patterns),
        ..Default::default()
    };
    run.send(1, 1_000, change(&["product:1"], &["plist:1:*"]))
        .await;
    wait_gone(&mut conn, "product:1").await;
    run.send(2, 2_000, change(&["product:2"], &[])).await;
    wait_gone(&mut conn, "product:2").await;
    assert_eq!(
        *run.confirmed.borrow(),
        0,
        "neither transaction is acknowledged while the first one's walk runs"
    );
    run.wait_confirmed(2_008, DEADLINE).await;
    assert_eq!(
        count_keys(&mut conn, "plist:1:*").await,
        0,
        "acknowledged only after the walk purged every match"
    );
    assert_eq!(run.finish().await.len(), 2);
}

#[tokio::test]
async fn patterns_pending_during_a_walk_share_the_next_one() {
    let (redis, mut conn) = setup().await;
    fill(&mut conn, 10_000).await;
    for prefix in ["plist:1:", "plist:2:", "plist:3:", "other:4:"] {
        set_all(&mut conn, &pages(prefix, 30)).await;
    }
    // Escaping must hold in a merged walk: `list:a\*b:*` is the literal `list:a*b:` prefix.
    let near_misses = strings([
        "list:aXb:1",
        "list:a*bc:1",
        "plist:10:1",
        "plist:",
        "other:44",
    ]);
    set_all(&mut conn, &near_misses).await;
    set_all(&mut conn, &strings(["list:a*b:1", "list:a*b:2"])).await;
    let sink = slow_sink(&redis).await;

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // The test's runtime (one thread) polls the walk task too, so its metrics land here.
    let _recording = metrics::set_default_local_recorder(&recorder);

    // The first batch starts a walk; the next ones arrive while it runs and wait together.
    let first = sink
        .publish_staged(&batch(vec![], vec![], strings(["plist:1:*"])))
        .await
        .unwrap()
        .expect("walk running");
    // Wait until the walk task took that pattern and runs.
    let start = Instant::now();
    while !metrics
        .render()
        .contains("walbust_redis_pattern_walks_in_progress 1")
    {
        assert!(start.elapsed() < DEADLINE, "the first walk never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut rests = vec![first];
    for patterns in [
        vec!["plist:2:*"],
        vec!["plist:3:*", r"list:a\*b:*"],
        vec!["other:4:*"],
    ] {
        let rest = sink
            .publish_staged(&batch(vec![], vec![], strings(patterns)))
            .await
            .unwrap()
            .expect("walk pending");
        rests.push(rest);
    }
    tokio::time::timeout(DEADLINE, futures::future::try_join_all(rests))
        .await
        .expect("the walks end")
        .unwrap();

    for pattern in [
        "plist:1:*",
        "plist:2:*",
        "plist:3:*",
        "other:4:*",
        r"list:a\*b:*",
    ] {
        assert_eq!(count_keys(&mut conn, pattern).await, 0, "{pattern} purged");
    }
    for key in &near_misses {
        assert!(exists(&mut conn, key).await, "{key} must not match");
    }
    assert_eq!(count_keys(&mut conn, "fill:*").await, 10_000);
    let rendered = metrics.render();
    assert!(
        rendered.contains("walbust_redis_patterns_per_walk_count 2"),
        "two walks for four batches: {rendered}"
    );
    assert!(
        rendered.contains("walbust_redis_patterns_per_walk_sum 5"),
        "1 pattern, then 4 merged: {rendered}"
    );
    assert!(rendered.contains("walbust_redis_pattern_walks_in_progress 0"));
    assert!(rendered.contains("walbust_redis_pattern_oldest_pending_seconds 0"));
}

/// walbust stopped mid-walk: the batch was not confirmed, so the slot sends it again after the
/// restart, and the new walk purges what the stopped one did not reach.
#[tokio::test]
async fn a_walk_stopped_midway_is_sent_again_and_nothing_is_lost() {
    let (redis, mut conn) = setup().await;
    fill(&mut conn, 30_000).await;
    set_all(&mut conn, &pages("plist:7:", 200)).await;
    let _: () = conn.set("product:7", "cached").await.unwrap();
    let change = || walbust_rules::Invalidations {
        keys: strings(["product:7"]),
        tags: vec![],
        patterns: strings(["plist:7:*"]),
        ..Default::default()
    };

    let run = Run::spawn(PipelineConfig::default(), Arc::new(slow_sink(&redis).await));
    run.send(7, 7_000, change()).await;
    wait_gone(&mut conn, "product:7").await;
    // Stop it the way a kill does: the pipeline and its sink (and so the walk) are gone.
    run.task.abort();
    assert!(run.task.await.unwrap_err().is_cancelled());
    assert_eq!(*run.confirmed.borrow(), 0, "nothing acknowledged mid-walk");
    let left = count_keys(&mut conn, "plist:7:*").await;
    assert!(
        left > 0,
        "the walk was stopped before it reached every match"
    );

    // The restart: Postgres re-sends the unacknowledged transaction.
    let mut run = Run::spawn(PipelineConfig::default(), Arc::new(slow_sink(&redis).await));
    run.send(7, 7_000, change()).await;
    run.wait_confirmed(7_008, DEADLINE).await;
    assert_eq!(count_keys(&mut conn, "plist:7:*").await, 0);
    assert_eq!(count_keys(&mut conn, "fill:*").await, 30_000);
}

#[tokio::test]
async fn version_strategy_bumps_the_prefix_counter_without_a_walk() {
    let (redis, mut conn) = setup().await;
    set_all(&mut conn, &strings(["plist:42:p1", "x:1:detail"])).await;
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.pattern_strategy = PatternStrategy::Version;
    let sink = RedisSink::connect(cfg).await.unwrap();

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let rest = sink
        .publish_staged(&batch(
            vec![],
            vec![],
            strings(["plist:42:*", r"plist:a\*b:*"]),
        ))
        .await
        .unwrap();
    assert!(rest.is_none(), "nothing left running: no walk");
    let v: Option<u64> = conn.get("patver:plist:42:").await.unwrap();
    assert_eq!(v, Some(1));
    let v: Option<u64> = conn.get("patver:plist:a*b:").await.unwrap();
    assert_eq!(v, Some(1), "escapes resolved in the counter's name");
    assert!(
        exists(&mut conn, "plist:42:p1").await,
        "the key stays, unread under the new version, and expires on its own"
    );
    assert!(!metrics
        .render()
        .contains("walbust_redis_patterns_per_walk_count"));

    sink.publish(&batch(vec![], vec![], strings(["plist:42:*"])))
        .await
        .unwrap();
    let v: Option<u64> = conn.get("patver:plist:42:").await.unwrap();
    assert_eq!(v, Some(2));

    // A pattern without a literal prefix then `*` cannot be a counter: walked, never lost.
    sink.publish(&batch(vec![], vec![], strings(["*:detail"])))
        .await
        .unwrap();
    assert!(!exists(&mut conn, "x:1:detail").await);
}

/// With the watermark on, a later batch must not raise it past a pending walk: the walk stays
/// inside its batch, and the watermark moves once it ended.
#[tokio::test]
async fn with_the_watermark_the_walk_stays_inside_its_batch() {
    let (redis, mut conn) = setup().await;
    fill(&mut conn, 5_000).await;
    set_all(&mut conn, &pages("plist:3:", 20)).await;
    let mut cfg = RedisSinkConfig::new(redis.url());
    cfg.scan_count = 10;
    cfg.watermark = true;
    let sink = RedisSink::connect(cfg).await.unwrap().with_slot("s");
    let rest = sink
        .publish_staged(&batch(
            strings(["product:3"]),
            vec![],
            strings(["plist:3:*"]),
        ))
        .await
        .unwrap();
    assert!(rest.is_none(), "settled inside the publish");
    assert_eq!(count_keys(&mut conn, "plist:3:*").await, 0);
    let watermark: Option<String> = conn.get("walbust:lsn:s").await.unwrap();
    assert_eq!(watermark.as_deref(), Some("0/16B3800"));
}
