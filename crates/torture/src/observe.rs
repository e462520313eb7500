//! The observers: they watch the sinks, never walbust, and write what they
//! see into the ledger.
//!
//! - Redis: a task polls the version counters of the changes not seen yet
//!   (`MGET` in chunks, round-robin over the ledger) and reconnects when
//!   Redis goes away. A counter at 1 or more is a delivered invalidation;
//!   the time of the reply bounds the commit-to-invalidation lag from above.
//! - Kafka: a thread consumes the topic from the beginning with its own
//!   consumer and records every tag of every record, so duplicates across
//!   records are counted too.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::watch;

use crate::ledger::{ChangeIx, Ledger};

/// Keys per MGET.
const MGET_CHUNK: usize = 1000;
/// Changes checked per Redis round.
const REDIS_ROUND: usize = 5000;
/// Pause between Redis rounds; bounds the lag's resolution with the round's
/// own duration.
const REDIS_PAUSE: Duration = Duration::from_millis(10);
/// Time allowed for a Redis connection or reply.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Locks the ledger; a panic elsewhere while holding it leaves it usable
/// for the report.
pub fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls Redis until `stop` turns true.
pub async fn watch_redis(url: String, ledger: Arc<Mutex<Ledger>>, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                match redis_connect(&url).await {
                    Ok(c) => conn = Some(c),
                    // Redis is down (an injected outage): try again shortly.
                    Err(_) => pause(&mut stop, Duration::from_millis(100)).await,
                }
                continue;
            }
        };
        let round = lock(&ledger).redis_round(REDIS_ROUND);
        if round.is_empty() {
            pause(&mut stop, REDIS_PAUSE).await;
            continue;
        }
        for chunk in round.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|(_, id)| id.redis_key()).collect();
            match mget(c, &keys).await {
                Ok(counts) => {
                    let at = Instant::now();
                    let seen: Vec<ChangeIx> = chunk
                        .iter()
                        .zip(counts)
                        .filter(|(_, n)| n.unwrap_or(0) > 0)
                        .map(|((ix, _), _)| *ix)
                        .collect();
                    lock(&ledger).seen_in_redis(&seen, at);
                }
                Err(_) => {
                    conn = None;
                    break;
                }
            }
        }
        pause(&mut stop, REDIS_PAUSE).await;
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = stop.changed() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

pub async fn redis_connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("Redis URL")?;
    tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .context("Redis connect timed out")?
        .context("Redis connect")
}

/// `MGET keys`, as counters (absent: `None`).
pub async fn mget(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<Vec<Option<i64>>> {
    let counts: Vec<Option<i64>> = tokio::time::timeout(
        REDIS_TIMEOUT,
        redis::cmd("MGET").arg(keys).query_async(conn),
    )
    .await
    .context("MGET timed out")?
    .context("MGET")?;
    anyhow::ensure!(
        counts.len() == keys.len(),
        "MGET of {} keys answered {} values",
        keys.len(),
        counts.len()
    );
    Ok(counts)
}

/// The fields of walbust's Kafka record (schema version 1) the check needs.
#[derive(Deserialize)]
struct Record {
    v: u32,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

/// A running Kafka observer.
pub struct KafkaWatch {
    stop: Arc<AtomicBool>,
    /// Set after a broker outage: the thread opens a fresh consumer.
    reconnect: Arc<AtomicBool>,
    /// Offset of the next record to read (partition 0).
    next_offset: Arc<AtomicI64>,
    thread: Option<JoinHandle<()>>,
    bootstrap: String,
    topic: String,
}

impl KafkaWatch {
    /// Starts consuming `topic` (one partition) from its beginning.
    pub fn start(bootstrap: &str, topic: &str, ledger: Arc<Mutex<Ledger>>) -> Result<KafkaWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let reconnect = Arc::new(AtomicBool::new(false));
        let next_offset = Arc::new(AtomicI64::new(0));
        let mut consumer = consumer(bootstrap, topic, 0)?;
        let thread = {
            let stop = Arc::clone(&stop);
            let reconnect = Arc::clone(&reconnect);
            let next_offset = Arc::clone(&next_offset);
            let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
            std::thread::Builder::new()
                .name("kafka-watch".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        consume(&consumer, &ledger, &stop, &reconnect, &next_offset);
                        if reconnect.swap(false, Ordering::AcqRel) {
                            let from = next_offset.load(Ordering::Acquire);
                            match self::consumer(&bootstrap, &topic, from) {
                                Ok(fresh) => consumer = fresh,
                                Err(e) => eprintln!("walbust-torture: Kafka observer: {e:#}"),
                            }
                        }
                    }
                })
                .context("cannot start the Kafka observer thread")?
        };
        Ok(KafkaWatch {
            stop,
            reconnect,
            next_offset,
            thread: Some(thread),
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// Tells the observer to open a fresh consumer where it stopped. Called
    /// after a broker outage: librdkafka's mock broker can leave a fetch
    /// request of the old connection unanswered until `socket.timeout.ms`
    /// (60 s), which would count as walbust's lag.
    pub fn reconnect(&self) {
        self.reconnect.store(true, Ordering::Release);
    }

    /// Waits until every record in the topic now has been consumed.
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .context("cannot create a Kafka client")?;
        let (_, high) = probe
            .fetch_watermarks(&self.topic, 0, timeout)
            .context("cannot read the topic's end offset")?;
        let deadline = Instant::now() + timeout;
        while self.next_offset.load(Ordering::Acquire) < high {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Kafka observer is at offset {} of {high} after {timeout:?}",
                self.next_offset.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A consumer of partition 0 of `topic`, from `offset`.
fn consumer(bootstrap: &str, topic: &str, offset: i64) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("walbust-torture-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Records are seen as soon as they are written: the lag measured
        // should be walbust's, not the consumer's.
        .set("fetch.wait.max.ms", "10")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .context("cannot create the Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(offset))
        .context("cannot assign partition 0")?;
    consumer
        .assign(&assignment)
        .context("cannot assign the Kafka partition")?;
    Ok(consumer)
}

impl Drop for KafkaWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Consumes until told to stop or to reconnect.
fn consume(
    consumer: &BaseConsumer,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
    reconnect: &AtomicBool,
    next_offset: &AtomicI64,
) {
    while !stop.load(Ordering::Acquire) && !reconnect.load(Ordering::Acquire) {
        // Errors are broker outages, injected on purpose: librdkafka
        // reconnects by itself.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let at = Instant::now();
            let payload = message.payload().unwrap_or_default();
            let mut l = lock(ledger);
            match serde_json::from_slice::<Record>(payload) {
                Ok(r) if r.v == 1 => {
                    l.seen_in_kafka(r.tags.iter().map(String::as_str), &r.keys, &r.patterns, at)
                }
                _ => l.malformed_records += 1,
            }
            drop(l);
            next_offset.store(message.offset() + 1, Ordering::Release);
        }
    }
}
