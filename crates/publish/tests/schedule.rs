//! The schedule of `at:` invalidations against a real `redis-server`: what the Redis sink
//! stores with a batch, and the applier that applies due entries through every sink and
//! removes them only once applied, through an outage of Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use walbust_flow::Backoff;
use walbust_publish::redis_sink::{RedisSink, RedisSinkConfig};
use walbust_publish::schedule::Applier;
use walbust_publish::{Batch, ScheduledEntry, Sink};

mod support;
use support::batch;

const KEY: &str = "walbust:schedule:s1";
const DAY_US: i64 = 86_400_000_000;

fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A batch committed now that schedules `promo:1` at each of `dues` (µs since the Unix epoch).
fn scheduling(dues: &[i64]) -> Batch {
    let commit = now_unix_us() - 946_684_800_000_000;
    let mut b = batch(vec!["promo:1".into()], vec![], vec![]);
    b.commit_time_micros = commit;
    b.schedule = dues
        .iter()
        .map(|&due| ScheduledEntry {
            lsn: b.lsn,
            commit_time_micros: commit,
            due: walbust_rules::Scheduled {
                due_unix_micros: due,
                keys: vec!["promo:1".into(), "promos:active".into()],
                ..Default::default()
            },
        })
        .collect();
    b
}

async fn sink(redis: &walbust_testkit::Redis) -> Arc<RedisSink> {
    let cfg = RedisSinkConfig {
        schedule_horizon_days: 30,
        ..RedisSinkConfig::new(redis.url())
    };
    Arc::new(RedisSink::connect(cfg).await.unwrap().with_slot("s1"))
}

async fn entries(conn: &mut MultiplexedConnection) -> Vec<(String, f64)> {
    redis::cmd("ZRANGE")
        .arg(KEY)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .unwrap()
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn the_batch_stores_what_is_to_come_within_the_horizon() {
    let redis = walbust_testkit::Redis::start().unwrap();
    let mut conn = redis.connection().await.unwrap();
    let sink = sink(&redis).await;
    let now = now_unix_us();
    let soon = now + 3_600_000_000;
    // Past (covered by the commit itself), soon, and beyond the 30-day horizon.
    let b = scheduling(&[now - DAY_US, soon, now + 40 * DAY_US]);
    sink.publish(&b).await.unwrap();
    let stored = entries(&mut conn).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1 as i64, soon / 1000);
    // A retry of the same batch adds nothing: the entry is the same member.
    sink.publish(&b).await.unwrap();
    assert_eq!(entries(&mut conn).await, stored);
}

#[tokio::test]
async fn due_entries_are_applied_and_removed_after_an_outage() {
    // Acknowledged writes survive a kill, as a production Redis holding a schedule must.
    let redis =
        walbust_testkit::Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
            .unwrap();
    let mut conn = redis.connection().await.unwrap();
    let sink = sink(&redis).await;
    let due = now_unix_us() + 1_500_000;
    sink.publish(&scheduling(&[due])).await.unwrap();
    assert_eq!(entries(&mut conn).await.len(), 1);

    // Redis goes away before the entry is due and comes back after.
    redis.stop().unwrap();
    let applier = Applier::new(
        sink.clone(),
        vec![sink.clone() as Arc<dyn Sink>],
        Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        "s1",
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(applier.run(stopped));
    while now_unix_us() < due + 500_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart().unwrap();
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("promo:1")
        .arg("cached")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The schedule survived the kill (append-only file).
    let deadline = Instant::now() + Duration::from_secs(20);
    while exists(&mut conn, "promo:1").await || !entries(&mut conn).await.is_empty() {
        assert!(Instant::now() < deadline, "the due entry was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}
