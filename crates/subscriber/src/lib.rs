//! Keeps an in-process cache fresh with walbust's invalidation records.
//!
//! walbust reads committed changes from Postgres's write-ahead log and publishes, per batch,
//! one JSON record of the keys, tags and patterns to invalidate, on a Kafka topic and
//! optionally on a Redis `PUBLISH` channel. This crate consumes either and applies each record
//! to a local cache through the [`LocalCache`] trait; [`MokaCache`] is a ready adapter for
//! [moka](https://docs.rs/moka).
//!
//! Map:
//!
//! - [`record`]: the record schema (version 1), [`Lsn`];
//! - [`glob`]: Redis glob matching, so patterns drop locally what they drop in Redis;
//! - [`LocalCache`]: the trait a cache implements; [`MokaCache`] (feature `moka`) with its
//!   local tag index;
//! - [`Applier`]: decodes, applies, counts, raises the [`Watermark`]; clears on a gap;
//! - [`KafkaSubscriber`] (feature `kafka`) and [`RedisSubscriber`] (feature `redis`);
//! - [`metrics`]: metric names (`walbust_subscriber_*`).
//!
//! # Consistency
//!
//! - **Duplicates and order**: delivery is at-least-once and a batch may be split across
//!   records; applying a record is idempotent and records commute, so neither matters.
//! - **Flush-all**: a record with the pattern `*` clears the whole cache.
//! - **Unknown versions**: a record whose `v` is not 1 is refused and counted
//!   (`walbust_subscriber_records_refused_total{reason="version"}`), never half-applied.
//! - **Gaps**: when records may have been lost (a Redis reconnection; a Kafka offset reset),
//!   the cache is cleared and the gap counted (`walbust_subscriber_gaps_total`).
//! - **Read-your-writes**: the [`Watermark`] is the highest record LSN applied. A service that
//!   wrote takes `pg_current_wal_insert_lsn()` as the last statement of its transaction and,
//!   after the commit, waits with [`Watermark::wait_for`] before reading its cache.
//! - **The fill race** is not solved here: a value read from the database before a change
//!   commits and inserted after its record was applied stays until its next invalidation or
//!   eviction. Keep a time to live on entries.
//!
//! # Kafka
//!
//! ```no_run
//! # #[cfg(all(feature = "kafka", feature = "moka"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use walbust_subscriber::{KafkaSubscriber, Lsn, MokaCache};
//!
//! let cache: MokaCache<String> = MokaCache::new(100_000);
//! let mut config = rdkafka::ClientConfig::new();
//! config
//!     .set("bootstrap.servers", "kafka:9092")
//!     // One group per process: every cache needs every record.
//!     .set("group.id", "catalog-api-pod-7");
//! let subscriber = KafkaSubscriber::new(&config, "invalidations", cache.clone())?;
//! let watermark = subscriber.applier().watermark();
//! tokio::spawn(subscriber.run());
//!
//! cache.insert_tagged("product:42", "boots".to_owned(), ["category:3"]);
//! // ... after writing a row, with the LSN the transaction returned:
//! let lsn: Lsn = "0/16B3748".parse()?;
//! watermark.wait_for(lsn, Duration::from_secs(1)).await?;
//! let fresh = cache.get("product:42"); // None if the write invalidated it
//! # Ok(())
//! # }
//! ```
//!
//! # Redis `PUBLISH`
//!
//! walbust publishes on `sinks.redis.publish_channel`. Pub/Sub keeps nothing for a
//! disconnected subscriber, so every reconnection clears the cache.
//!
//! ```no_run
//! # #[cfg(all(feature = "redis", feature = "moka"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use walbust_subscriber::{MokaCache, RedisSubscriber};
//!
//! let cache: MokaCache<Vec<u8>> = MokaCache::new(100_000);
//! let subscriber =
//!     RedisSubscriber::connect("redis://redis:6379", "invalidations", cache.clone()).await?;
//! let stats = subscriber.applier().stats();
//! tokio::spawn(subscriber.run());
//! cache.insert("product:42", b"...".to_vec());
//! println!("gaps so far: {}", stats.gaps());
//! # Ok(())
//! # }
//! ```
//!
//! # Another cache, another transport
//!
//! Implement [`LocalCache`] for any cache; feed payloads from anywhere to an [`Applier`]:
//!
//! ```
//! use walbust_subscriber::{Applier, LocalCache, Transport, glob::Glob};
//! use std::{collections::HashMap, sync::Mutex};
//!
//! #[derive(Default)]
//! struct Plain(Mutex<HashMap<String, String>>);
//!
//! impl LocalCache for Plain {
//!     fn invalidate_keys(&self, keys: &[String]) {
//!         let mut map = self.0.lock().unwrap();
//!         keys.iter().for_each(|k| { map.remove(k); });
//!     }
//!     fn invalidate_tags(&self, _tags: &[String]) {} // this cache has no tags
//!     fn invalidate_patterns(&self, patterns: &[Glob]) {
//!         self.0.lock().unwrap().retain(|k, _| !patterns.iter().any(|p| p.matches(k)));
//!     }
//!     fn clear(&self) {
//!         self.0.lock().unwrap().clear();
//!     }
//! }
//!
//! let applier = Applier::new(Plain::default(), Transport::Custom);
//! applier.cache().0.lock().unwrap().insert("list:3:p1".into(), "...".into());
//! applier.apply_payload(br#"{"v":1,"lsn":"0/16B3748","patterns":["list:3:*"]}"#).unwrap();
//! assert!(applier.cache().0.lock().unwrap().is_empty());
//! assert_eq!(applier.watermark().current().to_string(), "0/16B3748");
//! ```

mod apply;
mod cache;
pub use walbust_glob as glob;
#[cfg(feature = "kafka")]
mod kafka;
mod lsn;
pub mod metrics;
#[cfg(feature = "moka")]
mod moka_cache;
#[cfg(feature = "redis")]
mod pubsub;
pub mod record;
mod watermark;

pub use apply::{Applier, Stats, Transport};
pub use cache::LocalCache;
pub use glob::Glob;
#[cfg(feature = "kafka")]
pub use kafka::KafkaSubscriber;
pub use lsn::{Lsn, LsnParseError};
#[cfg(feature = "moka")]
pub use moka_cache::{MokaBuilder, MokaCache, Tagged};
#[cfg(feature = "redis")]
pub use pubsub::{RedisSubscribeError, RedisSubscriber, DEFAULT_PING_INTERVAL};
pub use record::{Record, RecordError, RECORD_VERSION};
pub use watermark::{Watermark, WatermarkTimeout};
