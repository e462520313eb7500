//! The pipeline with both real sinks: Redis (testkit) and Kafka (mock cluster, or
//! `WALBUST_TEST_KAFKA`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use walbust_publish::kafka_sink::{KafkaSink, KafkaSinkConfig};
use walbust_publish::redis_sink::{RedisSink, RedisSinkConfig};
use walbust_publish::{Item, Pipeline, PipelineConfig, Sink};

fn changes(keys: &[String]) -> Item {
    Item::Changes(walbust_rules::Invalidations {
        keys: keys.to_vec(),
        tags: vec![],
        patterns: vec![],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_reach_both_sinks_and_are_acknowledged_in_order() {
    let kafka = walbust_testkit::Kafka::start().expect("kafka starts");
    let topic = format!("walbust-test-pipeline-{}", std::process::id());
    kafka.create_topic(&topic, 1).unwrap();
    let redis = walbust_testkit::Redis::start().expect("redis-server starts");
    let mut conn = redis.connection().await.unwrap();

    // 10 small transactions and one of 250 keys, which the pipeline cuts into parts of 100.
    let small: Vec<Vec<String>> = (0..10)
        .map(|t| (0..3).map(|k| format!("small:{t}:{k}")).collect())
        .collect();
    let large: Vec<String> = (0..250).map(|k| format!("large:{k:03}")).collect();
    let all: Vec<&String> = small.iter().flatten().chain(&large).collect();
    for key in &all {
        let _: () = conn.set(key.as_str(), "cached").await.unwrap();
    }
    let _: () = conn.set("bystander", "cached").await.unwrap();

    let redis_sink = RedisSink::connect(RedisSinkConfig::new(redis.url()))
        .await
        .unwrap();
    let kafka_sink = KafkaSink::new(
        KafkaSinkConfig::new(kafka.bootstrap_servers(), &topic),
        "walbust_slot",
    )
    .unwrap();
    redis_sink.health().await.unwrap();
    kafka_sink.health().await.unwrap();
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(redis_sink), Arc::new(kafka_sink)];
    let cfg = PipelineConfig {
        max_keys: 100,
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::spawn(cfg, sinks);
    let task = pipeline.task;
    let (tx, confirmed) = pipeline.feed.into_parts().unwrap();

    let mut lsn = 1_000u64;
    for (xid, keys) in small.iter().enumerate() {
        tx.send(Item::Begin {
            xid: xid as u32,
            commit_lsn: lsn,
            commit_time_micros: 0,
        })
        .await
        .unwrap();
        tx.send(changes(keys)).await.unwrap();
        tx.send(Item::Commit { end_lsn: lsn + 8 }).await.unwrap();
        lsn += 100;
    }
    tx.send(Item::Begin {
        xid: 99,
        commit_lsn: lsn,
        commit_time_micros: 0,
    })
    .await
    .unwrap();
    for chunk in large.chunks(10) {
        tx.send(changes(chunk)).await.unwrap();
    }
    let final_lsn = lsn + 8;
    tx.send(Item::Commit { end_lsn: final_lsn }).await.unwrap();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("finished within 60s")
        .unwrap()
        .unwrap();
    assert_eq!(*confirmed.borrow(), final_lsn);

    let left: usize = conn
        .exists::<_, usize>(all.iter().map(|k| k.as_str()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(left, 0, "every key deleted from Redis");
    let bystander: bool = conn.exists("bystander").await.unwrap();
    assert!(bystander);

    let records = tokio::task::block_in_place(|| {
        kafka
            .consume_all(&topic, 3, Duration::from_secs(30))
            .unwrap()
    });
    assert!(
        records.len() >= 3,
        "the large transaction alone makes three batches"
    );
    let mut seen = BTreeSet::new();
    for record in &records {
        let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        for key in value["keys"].as_array().unwrap() {
            seen.insert(key.as_str().unwrap().to_string());
        }
    }
    let expected: BTreeSet<String> = all.into_iter().cloned().collect();
    assert_eq!(seen, expected, "every key reached Kafka");
}
