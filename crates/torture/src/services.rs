//! The throwaway services of a run and walbust's configuration for them.
//!
//! Postgres is a pair of Postgres 18 servers, a primary and a failover
//! standby, so that a run can fail over: the standby replicates
//! synchronously (an acknowledged commit survives the primary's loss) and
//! keeps a synchronized copy of walbust's failover slot. After a failover
//! the former primary comes back as the new primary's standby on its old
//! port, so the two-host `source.url` stays valid for the whole run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::Client;
use walbust_testkit::{Kafka, Postgres, Redis};

/// The topic walbust publishes to.
pub const TOPIC: &str = "invalidations";
/// Publication and slot.
pub const SLOT: &str = "walbust";

/// The standby's physical slot on the primary, and its name as a
/// synchronous standby (its `cluster_name`, which the standby's WAL
/// receiver gives as its application name).
pub const STANDBY: &str = "walbust_standby";

/// Postgres settings on top of testkit's, the same on both servers (either
/// may be the primary). A short `wal_sender_timeout` makes every sink
/// outage longer than it prove that walbust keeps answering keepalives
/// while blocked. The primary waits for the standby to have each commit
/// (`synchronous_standby_names`) and sends walbust no change the standby
/// has not received (`synchronized_standby_slots`): a failover loses no
/// acknowledged commit, and walbust never sees one the new primary lacks.
pub const PG_SETTINGS: &[(&str, &str)] = &[
    ("wal_sender_timeout", "10s"),
    ("cluster_name", STANDBY),
    ("synchronous_standby_names", STANDBY),
    ("synchronized_standby_slots", STANDBY),
];

/// Redis keeps an append-only file fsynced before every reply, so every
/// counter walbust saw acknowledged survives Redis being killed: the check
/// reads the counters after Redis outages too.
pub const REDIS_ARGS: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// Every change gets a key and a tag of its own; the tag (a version counter
/// in Redis) is the durable proof of delivery.
pub const RULES: &str = r#"version: 1
rules:
  - table: public.seq
    on: [insert, update]
    keys: ["seq:{id}"]
    tags: ["seq:{id}:{new.n}"]
  - table: public.seq
    on: [delete]
    keys: ["seq:{id}"]
    tags: ["del:{id}"]
"#;

/// walbust's DDL guard (event trigger), as the setup script installs it.
const DDL_GUARD: &str = include_str!("../../cdc/src/ddl_guard.sql");

/// The two Postgres servers and which one is the primary.
pub struct Pair {
    servers: [Arc<Postgres>; 2],
    primary: AtomicUsize,
}

impl Pair {
    /// Starts a primary and its failover standby (Postgres 18).
    fn start() -> Result<Pair> {
        let bindir =
            walbust_testkit::pg18_bindir().context("failover slots need Postgres 17 or later")?;
        let primary =
            Postgres::start_with_bindir(bindir, PG_SETTINGS).context("cannot start the primary")?;
        let standby = Postgres::start_failover_standby_with(&primary, STANDBY, PG_SETTINGS)
            .context("cannot start the standby")?;
        Ok(Pair {
            servers: [Arc::new(primary), Arc::new(standby)],
            primary: AtomicUsize::new(0),
        })
    }

    /// The server that is the primary now.
    pub fn primary(&self) -> Arc<Postgres> {
        Arc::clone(&self.servers[self.primary.load(Ordering::Acquire) % 2])
    }

    /// The server that is the standby now.
    pub fn standby(&self) -> Arc<Postgres> {
        Arc::clone(&self.servers[(self.primary.load(Ordering::Acquire) + 1) % 2])
    }

    /// Both hosts, the way walbust's `source.url` names them: whichever
    /// accepts writes is the primary.
    pub fn url(&self) -> String {
        let [a, b] = &self.servers;
        format!(
            "postgres://{user}:{password}@127.0.0.1:{pa},127.0.0.1:{pb}/{db}?target_session_attrs=read-write",
            user = a.user(),
            password = a.password(),
            pa = a.port(),
            pb = b.port(),
            db = a.database(),
        )
    }

    /// Connects to whichever server accepts writes.
    pub async fn connect(&self) -> Result<Client> {
        let [a, b] = &self.servers;
        let (client, connection) = tokio_postgres::Config::new()
            .host(a.host())
            .port(a.port())
            .host(b.host())
            .port(b.port())
            .user(a.user())
            .password(a.password())
            .dbname(a.database())
            .target_session_attrs(TargetSessionAttrs::ReadWrite)
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await
            .context("cannot connect to the primary")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A failover, as an operator's tooling does it: the primary stopped
    /// at once (`-m immediate`), the standby promoted after `detect` (the
    /// time failure detection takes), then the former primary rebuilt as
    /// the new primary's standby. Blocking. Returns how long the promotion
    /// and the rebuild took.
    pub fn fail_over(&self, detect: Duration) -> Result<(Duration, Duration)> {
        let old = self.primary();
        let new = self.standby();
        old.stop().context("cannot stop the primary")?;
        std::thread::sleep(detect);
        let began = Instant::now();
        new.promote().context("cannot promote the standby")?;
        let promoted = began.elapsed();
        self.primary.fetch_add(1, Ordering::AcqRel);
        let began = Instant::now();
        old.rejoin_as_failover_standby(&new, STANDBY, PG_SETTINGS)
            .context("cannot rebuild the former primary as a standby")?;
        Ok((promoted, began.elapsed()))
    }
}

/// Field order is drop order: Kafka (the mock cluster) goes last, after
/// anything that might still talk to it.
pub struct Services {
    pub pg: Arc<Pair>,
    pub redis: Arc<Redis>,
    pub kafka: Arc<Kafka>,
}

impl Services {
    /// Starts the Postgres pair, Redis (persistent) and a one-broker mock
    /// Kafka cluster with the topic. The mock cluster, not
    /// `WALBUST_TEST_KAFKA`: broker outages must be injectable.
    pub fn start() -> Result<Services> {
        let pg = Pair::start()?;
        let redis = Redis::start_with(REDIS_ARGS).context("cannot start Redis")?;
        let kafka = Kafka::start_mock(1).context("cannot start the mock Kafka cluster")?;
        kafka
            .create_topic(TOPIC, 1)
            .context("cannot create the topic")?;
        Ok(Services {
            pg: Arc::new(pg),
            redis: Arc::new(redis),
            kafka: Arc::new(kafka),
        })
    }

    /// Creates the table with the large UPDATE's rows, the publication and
    /// the slot. The rows are inserted before the slot exists: they are not
    /// changes walbust must see.
    pub async fn prepare(&self, large_rows: i64) -> Result<()> {
        let db = self.pg.connect().await?;
        db.batch_execute("CREATE TABLE seq (id bigint PRIMARY KEY, n int NOT NULL)")
            .await
            .context("cannot create table seq")?;
        db.execute(
            "INSERT INTO seq (id, n) SELECT g, 0 FROM generate_series(1, $1::bigint) g",
            &[&large_rows],
        )
        .await
        .context("cannot insert the large UPDATE's rows")?;
        db.batch_execute(&format!("CREATE PUBLICATION {SLOT} FOR TABLE seq"))
            .await
            .context("cannot create the publication")?;
        // As deploy/postgres-setup.sql installs it: the publication and
        // table faults need it.
        db.batch_execute(DDL_GUARD)
            .await
            .context("cannot install the DDL guard")?;
        // A statement of its own: a slot cannot be created in a transaction
        // that wrote.
        db.batch_execute(&create_slot_sql())
            .await
            .context("cannot create the slot")?;
        Ok(())
    }

    /// Writes the rules and walbust's configuration into `dir`. Everything
    /// not needed to reach the services is left at walbust's defaults (the
    /// run tests walbust as users run it), but for `source.on_gap: purge`
    /// (the slot and publication faults are gaps, which walbust otherwise
    /// refuses, exit 3, by design) and `source.failover: true` with both
    /// Postgres hosts in `source.url`, as the README's HA section says.
    /// `kafka_properties` go to `sinks.kafka.properties`.
    pub fn write_config(
        &self,
        dir: &Path,
        kafka_properties: &[(String, String)],
    ) -> Result<PathBuf> {
        std::fs::write(dir.join("rules.yaml"), RULES).context("cannot write rules.yaml")?;
        let mut config = format!(
            "source:\n  url: \"{pg}\"\n  publication: {SLOT}\n  slot: {SLOT}\n  on_gap: purge\n\
             \x20 failover: true\n\
             rules: rules.yaml\n\
             sinks:\n  redis:\n    url: \"{redis}\"\n    tag_strategy: version\n\
             \x20 kafka:\n    brokers: \"{kafka}\"\n    topic: {TOPIC}\n",
            pg = self.pg.url(),
            redis = self.redis.url(),
            kafka = self.kafka.bootstrap_servers(),
        );
        if !kafka_properties.is_empty() {
            config.push_str("    properties:\n");
            for (key, value) in kafka_properties {
                // JSON strings are valid YAML scalars: no quoting surprises.
                config.push_str(&format!(
                    "      {}: {}\n",
                    serde_json::Value::from(key.as_str()),
                    serde_json::Value::from(value.as_str())
                ));
            }
        }
        let path = dir.join("walbust.yaml");
        std::fs::write(&path, config).context("cannot write walbust.yaml")?;
        Ok(path)
    }

    /// A new connection, retried until `timeout` (Postgres may be starting).
    pub async fn db(&self, timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.pg.connect().await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("cannot connect to Postgres")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Creates walbust's slot as a failover slot: the standby keeps a copy.
pub fn create_slot_sql() -> String {
    format!("SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput', failover => true)")
}

/// Whether the standby keeps a synchronized copy of walbust's slot that
/// would survive its promotion (synced and no longer temporary).
pub async fn slot_synced(standby: &Client) -> Result<bool> {
    let row = standby
        .query_opt(
            "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .context("cannot read the standby's slots")?;
    Ok(row.is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true)))
}

/// The pid of walbust's walsender, if it is streaming.
pub async fn walsender_pid(db: &Client) -> Result<Option<i32>> {
    Ok(walbust_testkit::walsender_pid(db, SLOT).await?)
}
