//! Kafka for tests: librdkafka's mock cluster, or a real broker named by
//! `WALBUST_TEST_KAFKA`.
//!
//! The mock cluster speaks the real Kafka protocol over TCP on loopback
//! (produce with idempotence, fetch, consumer groups, metadata), so the code
//! under test uses its ordinary producer and consumer configuration.
//!
//! `rdkafka::mocking::MockCluster` holds a raw pointer and is neither `Send`
//! nor `Sync`. It therefore lives on a dedicated thread that owns it for its
//! whole life; [`Kafka`] talks to that thread over a channel and is itself
//! `Send + Sync`, usable from async tests and from `walbust demo`.

use std::collections::HashSet;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::Error;

/// Names a real broker (`host:port[,host:port...]`) to use instead of the
/// mock cluster.
pub const EXTERNAL_ENV: &str = "WALBUST_TEST_KAFKA";

/// Brokers in the mock cluster started by [`Kafka::start`].
const MOCK_BROKERS: i32 = 1;

/// One record read back by [`Kafka::consume_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The record's key, if it has one.
    pub key: Option<Vec<u8>>,
    /// The record's value (empty for a null value).
    pub payload: Vec<u8>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// A Kafka to produce to and consume from.
///
/// # Drop order
///
/// Drop producers and consumers before the `Kafka`. Dropping the `Kafka`
/// destroys the mock cluster: clients still pointed at it are not harmed in
/// memory (they are separate librdkafka instances talking TCP), but they see
/// every broker vanish, so pending deliveries fail and `flush` times out.
/// In a test, declare the `Kafka` first: locals drop in reverse order.
pub struct Kafka {
    mode: Mode,
}

enum Mode {
    Mock(MockHandle),
    External { bootstrap: String },
}

struct MockHandle {
    bootstrap: String,
    brokers: i32,
    // `Option` so Drop can hang up before joining the owner thread.
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

type Reply = mpsc::Sender<Result<(), KafkaError>>;

enum Command {
    CreateTopic {
        topic: String,
        partitions: i32,
        reply: Reply,
    },
    BrokersDown {
        reply: Reply,
    },
    BrokersUp {
        reply: Reply,
    },
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Mock(m) => f
                .debug_struct("Kafka")
                .field("mock_brokers", &m.brokers)
                .field("bootstrap", &m.bootstrap)
                .finish(),
            Mode::External { bootstrap } => f
                .debug_struct("Kafka")
                .field("external", bootstrap)
                .finish(),
        }
    }
}

impl Kafka {
    /// A one-broker mock cluster, or the broker named by `WALBUST_TEST_KAFKA`
    /// if that is set (and not empty).
    pub fn start() -> Result<Kafka, Error> {
        match std::env::var(EXTERNAL_ENV) {
            Ok(bootstrap) if !bootstrap.trim().is_empty() => Ok(Kafka {
                mode: Mode::External {
                    bootstrap: bootstrap.trim().to_owned(),
                },
            }),
            _ => Self::start_mock(MOCK_BROKERS),
        }
    }

    /// A mock cluster of `brokers` brokers (ids `1..=brokers`), ignoring
    /// `WALBUST_TEST_KAFKA`.
    pub fn start_mock(brokers: i32) -> Result<Kafka, Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, inbox) = mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("walbust-mock-kafka".to_owned())
            .spawn(move || own_cluster(brokers, &ready_tx, &inbox))
            .map_err(|e| Error::io("could not start the mock Kafka thread", e))?;
        let bootstrap = match ready_rx.recv() {
            Ok(Ok(bootstrap)) => bootstrap,
            Ok(Err(source)) => {
                let _ = thread.join();
                return Err(Error::Kafka {
                    context: format!(
                        "could not create a mock Kafka cluster of {brokers} broker(s)"
                    ),
                    source,
                });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::KafkaThreadGone);
            }
        };
        Ok(Kafka {
            mode: Mode::Mock(MockHandle {
                bootstrap,
                brokers,
                commands: Some(commands),
                thread: Some(thread),
            }),
        })
    }

    /// `host:port[,host:port...]` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        match &self.mode {
            Mode::Mock(m) => m.bootstrap.clone(),
            Mode::External { bootstrap } => bootstrap.clone(),
        }
    }

    /// Whether this is the mock cluster (so `broker_down`/`broker_up` work).
    pub fn is_mock(&self) -> bool {
        matches!(self.mode, Mode::Mock(_))
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1).
    /// Creating a topic that exists is an error on a real broker.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        let context = || format!("could not create topic {topic:?} with {partitions} partition(s)");
        match &self.mode {
            Mode::Mock(m) => m
                .call(|reply| Command::CreateTopic {
                    topic: topic.to_owned(),
                    partitions,
                    reply,
                })?
                .map_err(|source| Error::Kafka {
                    context: context(),
                    source,
                }),
            Mode::External { bootstrap } => create_topic_external(bootstrap, topic, partitions)
                .map_err(|source| Error::Kafka {
                    context: context(),
                    source,
                }),
        }
    }

    /// Takes every broker of the mock cluster down: connections are closed
    /// and new ones refused until [`Kafka::broker_up`].
    pub fn broker_down(&self) -> Result<(), Error> {
        let m = self.mock("broker_down")?;
        m.call(|reply| Command::BrokersDown { reply })?
            .map_err(|source| Error::Kafka {
                context: "could not take the mock brokers down".to_owned(),
                source,
            })
    }

    /// Brings every broker of the mock cluster back up.
    pub fn broker_up(&self) -> Result<(), Error> {
        let m = self.mock("broker_up")?;
        m.call(|reply| Command::BrokersUp { reply })?
            .map_err(|source| Error::Kafka {
                context: "could not bring the mock brokers up".to_owned(),
                source,
            })
    }

    /// Reads `topic` from the beginning of every partition with a fresh
    /// consumer (own group id, no commits) until it holds at least
    /// `min_records` records *and* has reached the end of every partition, or
    /// until `timeout`, when it returns what it has. Reading to the end means
    /// a test also sees duplicates beyond the records it expected.
    ///
    /// Records come in consumption order, which keeps each partition's order.
    /// This blocks the calling thread: in async code, produce (and await the
    /// deliveries) first, or call it through `spawn_blocking`.
    pub fn consume_all(
        &self,
        topic: &str,
        min_records: usize,
        timeout: Duration,
    ) -> Result<Vec<KafkaRecord>, Error> {
        let deadline = Instant::now() + timeout;
        let group = format!("walbust-testkit-{:016x}", crate::process::random_u64());
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|source| Error::Kafka {
                context: "could not create a Kafka consumer".to_owned(),
                source,
            })?;

        let partitions = match partitions_of(&consumer, topic, deadline)? {
            Some(p) => p,
            // The topic never showed up: at the timeout we return what we
            // have, which is nothing.
            None => return Ok(Vec::new()),
        };
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| Error::Kafka {
                    context: format!("could not assign partition {p} of {topic:?}"),
                    source,
                })?;
        }
        // Assigning rather than subscribing skips the group rebalance, which
        // is slow and nothing here needs.
        consumer
            .assign(&assignment)
            .map_err(|source| Error::Kafka {
                context: format!("could not assign the partitions of {topic:?}"),
                source,
            })?;

        let mut records = Vec::new();
        let mut at_end = HashSet::new();
        loop {
            if records.len() >= min_records && at_end.len() == partitions.len() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            match consumer.poll(wait) {
                Some(Ok(message)) => {
                    at_end.remove(&message.partition());
                    records.push(KafkaRecord {
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        partition: message.partition(),
                        offset: message.offset(),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                // Transport errors are retried by librdkafka itself; a broker
                // that stays away ends in the timeout, with what we have.
                Some(Err(_)) | None => {}
            }
        }
    }

    fn mock(&self, operation: &'static str) -> Result<&MockHandle, Error> {
        match &self.mode {
            Mode::Mock(m) => Ok(m),
            Mode::External { bootstrap } => Err(Error::Unsupported {
                operation,
                reason: format!(
                    "Kafka is the external broker {bootstrap} (from {EXTERNAL_ENV}), not the mock cluster"
                ),
            }),
        }
    }
}

impl MockHandle {
    /// Sends a command to the owner thread and waits for its answer.
    fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<Result<(), KafkaError>, Error> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or(Error::KafkaThreadGone)?
            .send(make(reply))
            .map_err(|_| Error::KafkaThreadGone)?;
        answer.recv().map_err(|_| Error::KafkaThreadGone)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Mode::Mock(m) = &mut self.mode {
            // Hanging up ends the owner thread's loop; it then destroys the
            // cluster on its own thread, where it was created.
            drop(m.commands.take());
            if let Some(thread) = m.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The owner thread: creates the cluster, reports its bootstrap servers,
/// serves commands until the `Kafka` hangs up, then destroys the cluster.
fn own_cluster(
    brokers: i32,
    ready: &mpsc::Sender<Result<String, KafkaError>>,
    inbox: &mpsc::Receiver<Command>,
) {
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    let all_brokers = |op: &dyn Fn(i32) -> Result<(), KafkaError>| -> Result<(), KafkaError> {
        (1..=brokers).try_for_each(op)
    };
    while let Ok(command) = inbox.recv() {
        // A caller that gave up waiting is not our problem: ignore send errors.
        match command {
            Command::CreateTopic {
                topic,
                partitions,
                reply,
            } => {
                let _ = reply.send(cluster.create_topic(&topic, partitions, 1));
            }
            Command::BrokersDown { reply } => {
                let _ = reply.send(all_brokers(&|id| cluster.broker_down(id)));
            }
            Command::BrokersUp { reply } => {
                let _ = reply.send(all_brokers(&|id| cluster.broker_up(id)));
            }
        }
    }
}

/// The partitions of `topic`, waiting for it to appear until `deadline`.
fn partitions_of(
    consumer: &BaseConsumer,
    topic: &str,
    deadline: Instant,
) -> Result<Option<Vec<i32>>, Error> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(None);
        }
        let wait = remaining.min(Duration::from_secs(2));
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), wait) {
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>());
            if let Some(partitions) = found.filter(|p| !p.is_empty()) {
                return Ok(Some(partitions));
            }
        }
        std::thread::sleep(Duration::from_millis(50).min(remaining));
    }
}

/// CreateTopics against a real broker. The admin API is async; it runs on a
/// private runtime on a private thread so this works inside and outside a
/// Tokio runtime alike.
fn create_topic_external(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    let worker = std::thread::spawn(move || -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KafkaError::AdminOpCreation(e.to_string()))?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new_topic = NewTopic::new(&topic, partitions, TopicReplication::Fixed(1));
        let results = runtime.block_on(admin.create_topics([&new_topic], &options))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(KafkaError::AdminOp(code));
            }
        }
        Ok(())
    });
    worker.join().unwrap_or_else(|_| {
        Err(KafkaError::AdminOpCreation(
            "admin thread panicked".to_owned(),
        ))
    })
}
