//! Produce and consume through the Kafka testkit provides.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use walbust_testkit::Kafka;

fn assert_send_sync<T: Send + Sync>() {}

fn idempotent_producer(kafka: &Kafka, message_timeout_ms: u32) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        // Reconnect quickly once a broker is back (the default backs off to
        // 10 s).
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("create producer")
}

#[tokio::test]
async fn idempotent_produce_and_consume_back() {
    assert_send_sync::<Kafka>();
    let started = Instant::now();
    // Declared first so it drops last, after the producer.
    let kafka = Kafka::start().expect("start kafka");
    eprintln!("kafka started in {:?}", started.elapsed());
    let topic = format!("walbust-roundtrip-{}", std::process::id());
    kafka.create_topic(&topic, 3).expect("create topic");

    let producer = idempotent_producer(&kafka, 10_000);
    for i in 0..90u32 {
        let key = format!("key-{}", i % 7);
        let payload = format!("value-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivery");
    }

    let records = kafka
        .consume_all(&topic, 90, Duration::from_secs(20))
        .expect("consume");
    assert_eq!(
        records.len(),
        90,
        "exactly the records produced, no duplicates"
    );
    let payloads: HashSet<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads.len(), 90);
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        assert!((0..3).contains(&r.partition));
        let key = String::from_utf8(r.key.clone().expect("key")).expect("utf8");
        let value = String::from_utf8(r.payload.clone()).expect("utf8");
        let i: u32 = value.trim_start_matches("value-").parse().expect("number");
        assert_eq!(key, format!("key-{}", i % 7));
        if let Some(prev) = last_offset.insert(r.partition, r.offset) {
            assert!(r.offset > prev, "offsets increase within a partition");
        }
    }
    // Keys are spread over more than one partition.
    assert!(last_offset.len() > 1);

    // The handle is usable from spawned tasks (Send + Sync).
    let kafka = std::sync::Arc::new(kafka);
    let shared = kafka.clone();
    let topic2 = topic.clone();
    let n = tokio::task::spawn_blocking(move || {
        shared
            .consume_all(&topic2, 0, Duration::from_secs(20))
            .expect("consume")
            .len()
    })
    .await
    .expect("join");
    assert_eq!(n, 90, "min_records 0 still reads to the end");
    drop(producer);
}

#[tokio::test]
async fn broker_down_fails_produce_and_broker_up_heals() {
    let kafka = Kafka::start_mock(1).expect("start mock kafka");
    assert!(kafka.is_mock());
    let topic = "walbust-outage";
    kafka.create_topic(topic, 1).expect("create topic");
    let producer = idempotent_producer(&kafka, 1_500);

    producer
        .send(
            FutureRecord::to(topic).key("k").payload("before"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivery before the outage");

    kafka.broker_down().expect("broker down");
    let result = producer
        .send(
            FutureRecord::to(topic).key("k").payload("during"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        result.is_err(),
        "produce must fail while the broker is down"
    );

    kafka.broker_up().expect("broker up");
    // The producer reconnects with backoff, so a send racing the reconnect
    // may still time out; a sink would retry the same way.
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = producer
            .send(
                FutureRecord::to(topic).key("k").payload("after"),
                Duration::from_secs(5),
            )
            .await;
        match result {
            Ok(_) => break,
            Err((e, _)) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("attempt {attempts} after broker_up failed: {e}");
            }
            Err((e, _)) => panic!("no delivery within 30 s of broker_up: {e}"),
        }
    }
    eprintln!(
        "delivered after broker_up in {:?} ({attempts} attempt(s))",
        started.elapsed()
    );
    producer.flush(Duration::from_secs(5)).expect("flush");

    let records = kafka
        .consume_all(topic, 2, Duration::from_secs(20))
        .expect("consume");
    let payloads: Vec<_> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert!(payloads.contains(&b"before".as_slice()), "{payloads:?}");
    assert!(payloads.contains(&b"after".as_slice()), "{payloads:?}");
    assert!(!payloads.contains(&b"during".as_slice()), "{payloads:?}");
}

#[test]
fn multi_broker_mock_and_missing_topic() {
    let kafka = Kafka::start_mock(3).expect("start 3 brokers");
    assert_eq!(kafka.bootstrap_servers().split(',').count(), 3);
    kafka.broker_down().expect("all down");
    kafka.broker_up().expect("all up");
    // Waiting on a topic nobody writes returns what there is at the timeout.
    let started = Instant::now();
    let records = kafka
        .consume_all("walbust-empty", 1, Duration::from_secs(2))
        .expect("consume");
    assert!(records.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(2));
}
