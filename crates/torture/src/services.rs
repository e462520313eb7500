//! The throwaway services of a run and walbust's configuration for them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use walbust_testkit::{Kafka, Postgres, Redis};

/// The topic walbust publishes to.
pub const TOPIC: &str = "invalidations";
/// Publication and slot.
pub const SLOT: &str = "walbust";

/// Postgres settings on top of testkit's. A short `wal_sender_timeout`
/// makes every sink outage longer than it prove that walbust keeps
/// answering keepalives while blocked.
pub const PG_SETTINGS: &[(&str, &str)] = &[("wal_sender_timeout", "10s")];

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

/// Field order is drop order: Kafka (the mock cluster) goes last, after
/// anything that might still talk to it.
pub struct Services {
    pub pg: Arc<Postgres>,
    pub redis: Arc<Redis>,
    pub kafka: Arc<Kafka>,
}

impl Services {
    /// Starts Postgres, Redis (persistent) and a one-broker mock Kafka
    /// cluster with the topic. The mock cluster, not `WALBUST_TEST_KAFKA`:
    /// broker outages must be injectable.
    pub fn start() -> Result<Services> {
        let pg = Postgres::start_with(PG_SETTINGS).context("cannot start Postgres")?;
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
        db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&SLOT],
        )
        .await
        .context("cannot create the slot")?;
        Ok(())
    }

    /// Writes the rules and walbust's configuration into `dir`. Everything
    /// not needed to reach the services is left at walbust's defaults (the
    /// run tests walbust as users run it), but for `source.on_gap: purge`:
    /// the slot and publication faults are gaps, which walbust otherwise
    /// refuses (exit 3) by design.
    /// `kafka_properties` go to `sinks.kafka.properties`.
    pub fn write_config(
        &self,
        dir: &Path,
        kafka_properties: &[(String, String)],
    ) -> Result<PathBuf> {
        std::fs::write(dir.join("rules.yaml"), RULES).context("cannot write rules.yaml")?;
        let mut config = format!(
            "source:\n  url: \"{pg}\"\n  publication: {SLOT}\n  slot: {SLOT}\n  on_gap: purge\n\
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

/// The pid of walbust's walsender, if it is streaming.
pub async fn walsender_pid(db: &Client) -> Result<Option<i32>> {
    Ok(walbust_testkit::walsender_pid(db, SLOT).await?)
}
