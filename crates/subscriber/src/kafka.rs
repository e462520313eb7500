//! [`KafkaSubscriber`]: records from walbust's Kafka topic (`sinks.kafka.topic`).
//!
//! Every process that keeps a local cache needs every record, so each one consumes with a
//! consumer group of its own (`group.id`, stable per instance, such as the pod name, so that a
//! restarted subscriber resumes where it stopped). Sharing a group between processes would
//! split the records between their caches.
//!
//! At-least-once: a record's offset is stored for commit only after the record was applied
//! (`enable.auto.offset.store=false`; librdkafka's auto-commit sends what is stored, and a
//! graceful close commits the rest). A subscriber that stops mid-stream resumes after the last
//! record it applied; one that crashes may apply again the records of the last commit interval
//! (duplicates are harmless).
//!
//! Gaps: when the subscriber cannot prove that it applied every record of a partition, it clears
//! the cache and counts `walbust_subscriber_gaps_total{transport="kafka",reason}`:
//!
//! - `offset_reset`: a (re)assigned partition does not start at the group's committed offset
//!   (the committed offset had left the log, or the topic was recreated, and
//!   `auto.offset.reset` moved elsewhere);
//! - `offset_jump`: a partition's next record is not the one after the last applied (a reset
//!   while assigned). Going back would only repeat records, but the reset that did it may
//!   have skipped others before, so it counts too;
//! - `no_position`: a partition this subscriber held before comes back without a committed
//!   offset, or the committed offset could not be read.
//!
//! A partition first assigned without a committed offset (a new group) is not a gap: the cache
//! is expected to be filled after the subscriber started (`auto.offset.reset` decides where a
//! new group begins; librdkafka's default is the end of the topic).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::apply::{Applier, Transport};
use crate::cache::LocalCache;
use crate::lsn::Lsn;

/// How long reading a partition's committed offset may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

type Partition = (String, i32);

/// What the subscriber knows of its partitions' positions.
#[derive(Default)]
struct Positions {
    /// Offset after the last record applied, per partition held.
    next: HashMap<Partition, i64>,
    /// Assigned, no record received since.
    fresh: HashSet<Partition>,
    /// Held at some point by this subscriber.
    held: HashSet<Partition>,
}

/// Keeps [`Positions`] up to date through rebalances.
pub(crate) struct PositionContext {
    positions: Arc<Mutex<Positions>>,
}

impl ClientContext for PositionContext {}

impl ConsumerContext for PositionContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(list) => {
                for element in list.elements() {
                    let partition = (element.topic().to_owned(), element.partition());
                    positions.next.remove(&partition);
                    positions.fresh.insert(partition);
                }
            }
            Rebalance::Revoke(list) => {
                for element in list.elements() {
                    let partition = (element.topic().to_owned(), element.partition());
                    positions.next.remove(&partition);
                    positions.fresh.remove(&partition);
                }
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// Applies the records of a Kafka topic to a [`LocalCache`].
pub struct KafkaSubscriber<C> {
    consumer: Arc<StreamConsumer<PositionContext>>,
    positions: Arc<Mutex<Positions>>,
    applier: Applier<C>,
}

impl<C: LocalCache> KafkaSubscriber<C> {
    /// A consumer of `topic` with `config` (`bootstrap.servers`, `group.id`, security,
    /// `auto.offset.reset`...). The subscriber sets `enable.auto.commit=true` and
    /// `enable.auto.offset.store=false`: offsets are stored after apply, committed by librdkafka.
    pub fn new(config: &ClientConfig, topic: &str, cache: C) -> Result<Self, KafkaError> {
        let positions = Arc::new(Mutex::new(Positions::default()));
        let consumer: StreamConsumer<PositionContext> = config
            .clone()
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .create_with_context(PositionContext {
                positions: Arc::clone(&positions),
            })?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSubscriber {
            consumer: Arc::new(consumer),
            positions,
            applier: Applier::new(cache, Transport::Kafka),
        })
    }

    /// What applies the records: take its [`watermark`](Applier::watermark) and
    /// [`stats`](Applier::stats) handles before [`run`](Self::run) consumes the subscriber.
    pub fn applier(&self) -> &Applier<C> {
        &self.applier
    }

    /// Applies records until the task is dropped (abort it to stop; dropping the subscriber
    /// commits what it applied). Consumer errors are logged; librdkafka recovers from them.
    ///
    /// Dropping closes the consumer and blocks until librdkafka says it is closed (offsets
    /// committed, group left): stop the subscriber while its brokers are reachable, and await
    /// the aborted task before shutting down what it talks to.
    pub async fn run(mut self) {
        loop {
            if let Err(err) = self.next().await {
                tracing::warn!(error = %err, "kafka: consuming invalidation records failed");
            }
        }
    }

    /// Receives one record, applies it and stores its offset for commit. Returns the record's
    /// LSN, or `None` when the payload was refused (counted, skipped: a record this version
    /// cannot read will not become readable by waiting).
    pub async fn next(&mut self) -> Result<Option<Lsn>, KafkaError> {
        let message = self.consumer.recv().await?;
        let partition = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        if let Some(reason) = self.check_position(&partition, offset).await {
            self.applier.gap(reason);
        }
        let applied = match self
            .applier
            .apply_payload(message.payload().unwrap_or_default())
        {
            Ok(lsn) => Some(lsn),
            Err(err) => {
                tracing::warn!(error = %err, partition = partition.1, offset,
                    "kafka: refused an invalidation record");
                None
            }
        };
        self.consumer.store_offset_from_message(&message)?;
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next
            .insert(partition, offset + 1);
        Ok(applied)
    }

    /// Whether the record at `offset` follows the last one applied; the gap reason if not.
    async fn check_position(&self, partition: &Partition, offset: i64) -> Option<&'static str> {
        let (fresh, held_before) = {
            let mut positions = self
                .positions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(&next) = positions.next.get(partition) {
                return (offset != next).then_some("offset_jump");
            }
            let fresh = positions.fresh.remove(partition);
            let held_before = !positions.held.insert(partition.clone());
            (fresh, held_before)
        };
        if !fresh && held_before {
            // Held, yet no position known: it was revoked and came back unnoticed.
            return Some("no_position");
        }
        match self.committed(partition).await {
            Some(Offset::Offset(committed)) => (offset != committed).then_some("offset_reset"),
            Some(_) if !held_before => None,
            _ => Some("no_position"),
        }
    }

    /// The group's committed offset of `partition` (a blocking call, run aside).
    async fn committed(&self, partition: &Partition) -> Option<Offset> {
        let consumer = Arc::clone(&self.consumer);
        let (topic, number) = partition.clone();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, number);
            let committed = consumer.committed_offsets(list, COMMITTED_TIMEOUT).ok()?;
            let element = committed.find_partition(&topic, number)?;
            Some(element.offset())
        })
        .await
        .ok()
        .flatten()
    }
}
