//! The Kafka sink against librdkafka's mock cluster (testkit), which speaks the Kafka protocol
//! over TCP; or against a real broker when `WALBUST_TEST_KAFKA` names one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use walbust_publish::kafka_sink::{KafkaSink, KafkaSinkConfig};
use walbust_publish::{PipelineConfig, Sink, SinkErrorKind};

mod support;
use support::{batch, Run, Watched};

const SLOT: &str = "walbust_test_slot";

/// A topic name of its own per test, so a real shared broker works too.
fn topic(name: &str) -> String {
    format!("walbust-test-{name}-{}", std::process::id())
}

fn start_with_topic(name: &str) -> (walbust_testkit::Kafka, String) {
    let kafka = walbust_testkit::Kafka::start().expect("kafka starts");
    let topic = topic(name);
    kafka.create_topic(&topic, 1).expect("topic created");
    (kafka, topic)
}

fn consume(
    kafka: &walbust_testkit::Kafka,
    topic: &str,
    min: usize,
) -> Vec<walbust_testkit::KafkaRecord> {
    tokio::task::block_in_place(|| {
        kafka
            .consume_all(topic, min, Duration::from_secs(30))
            .expect("consume")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_the_documented_fields() {
    let (kafka, topic) = start_with_topic("fields");
    let sink = KafkaSink::new(
        KafkaSinkConfig::new(kafka.bootstrap_servers(), &topic),
        SLOT,
    )
    .unwrap();
    sink.health().await.unwrap();
    sink.publish(&batch(
        vec!["product:42".into()],
        vec!["category:3".into()],
        vec!["product-list:*".into()],
    ))
    .await
    .unwrap();

    let records = consume(&kafka, &topic, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(SLOT.as_bytes()));
    let value: Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "v": 1,
            "lsn": "0/16B3748",
            "commit_ts": "2026-11-22T10:00:00.123456Z",
            "xids": [1234],
            "keys": ["product:42"],
            "tags": ["category:3"],
            "patterns": ["product-list:*"],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_under_the_record_limit() {
    let (kafka, topic) = start_with_topic("split");
    let mut cfg = KafkaSinkConfig::new(kafka.bootstrap_servers(), &topic);
    cfg.max_record_bytes = 2048;
    cfg.key = Some("custom-key".into());
    let sink = KafkaSink::new(cfg, SLOT).unwrap();
    let keys: Vec<String> = (0..400).map(|i| format!("order:{i:05}")).collect();
    let tags: Vec<String> = (0..20).map(|i| format!("user:{i}:orders")).collect();
    sink.publish(&batch(keys.clone(), tags.clone(), vec![]))
        .await
        .unwrap();

    let records = consume(&kafka, &topic, 3);
    assert!(records.len() >= 3, "{} records", records.len());
    let (mut got_keys, mut got_tags) = (Vec::new(), Vec::new());
    for record in &records {
        assert!(
            record.payload.len() <= 2048,
            "{} bytes",
            record.payload.len()
        );
        assert_eq!(record.key.as_deref(), Some(&b"custom-key"[..]));
        let value: Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(value["lsn"], "0/16B3748");
        assert_eq!(value["xids"], serde_json::json!([1234]));
        for k in value["keys"].as_array().unwrap() {
            got_keys.push(k.as_str().unwrap().to_string());
        }
        for t in value["tags"].as_array().unwrap() {
            got_tags.push(t.as_str().unwrap().to_string());
        }
    }
    assert_eq!(got_keys, keys, "every key once, in order, across the parts");
    assert_eq!(got_tags, tags);
}

/// A key no record can hold would stop walbust at every start: the record
/// carries a flush of everything in its place instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_larger_than_the_limit_is_sent_as_a_flush_of_everything() {
    let (kafka, topic) = start_with_topic("too-large");
    let mut cfg = KafkaSinkConfig::new(kafka.bootstrap_servers(), &topic);
    cfg.max_record_bytes = 1024;
    let sink = KafkaSink::new(cfg, SLOT).unwrap();
    sink.publish(&batch(
        vec!["x".repeat(4096), "small".into()],
        vec![],
        vec![],
    ))
    .await
    .unwrap();
    let records = kafka
        .consume_all(&topic, 1, Duration::from_secs(20))
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(record["keys"], serde_json::json!(["small"]));
    assert_eq!(record["patterns"], serde_json::json!(["*"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_missing_topic_clearly() {
    let (kafka, _topic) = start_with_topic("exists");
    let missing = topic("missing");
    let sink = KafkaSink::new(
        KafkaSinkConfig::new(kafka.bootstrap_servers(), &missing),
        SLOT,
    )
    .unwrap();
    let err = sink.health().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Config, "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "kafka topic \"{missing}\" does not exist on brokers {}",
            kafka.bootstrap_servers()
        )
    );
}

/// Brokers go down under a running pipeline: librdkafka gives up on the record after
/// `message.timeout.ms`, the pipeline retries the batch, and once the broker is back the record
/// is delivered and the LSN acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_is_retried_and_delivered() {
    let (kafka, topic) = start_with_topic("outage");
    if !kafka.is_mock() {
        // A real broker cannot be taken down from here; the mock cluster covers this case.
        eprintln!("WALBUST_TEST_KAFKA is set: the outage is simulated only with the mock cluster");
    }
    let mut cfg = KafkaSinkConfig::new(kafka.bootstrap_servers(), &topic);
    cfg.properties
        .insert("message.timeout.ms".into(), "1500".into());
    let kafka_sink = KafkaSink::new(cfg, SLOT).unwrap();
    kafka_sink.health().await.unwrap();
    let sink = Watched::new(Arc::new(kafka_sink));

    if kafka.is_mock() {
        kafka.broker_down().unwrap();
    }
    let pipeline_cfg = PipelineConfig {
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        ..PipelineConfig::default()
    };
    let mut run = Run::spawn(pipeline_cfg, sink.clone());
    run.send(
        9,
        2_000,
        walbust_rules::Invalidations {
            keys: vec!["product:7".into()],
            tags: vec![],
            patterns: vec![],
            ..Default::default()
        },
    )
    .await;

    if kafka.is_mock() {
        // librdkafka gave up on the record after message.timeout.ms, and again
        // on the pipeline's retry.
        sink.wait_failures(2, Duration::from_secs(60)).await;
        assert_eq!(
            *run.confirmed.borrow(),
            0,
            "nothing acknowledged while brokers are down"
        );
        kafka.broker_up().unwrap();
    }
    run.wait_confirmed(2_008, Duration::from_secs(60)).await;
    let attempts = run.finish().await;
    assert_eq!(attempts.len(), 1, "one batch");
    if kafka.is_mock() {
        assert!(attempts[0] >= 3, "the batch was retried: {attempts:?}");
    }

    let records = consume(&kafka, &topic, 1);
    assert!(!records.is_empty());
    for record in &records {
        let value: Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(value["keys"], serde_json::json!(["product:7"]));
        assert_eq!(value["lsn"], "0/7D0");
    }
    drop(sink);
}
