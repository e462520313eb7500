//! Throwaway PostgreSQL, Redis, Kafka and Varnish servers for walbust's tests and for
//! `walbust demo`.
//!
//! Map:
//!
//! - [`Postgres`]: `initdb` + `pg_ctl` from the system's PostgreSQL, on a free
//!   loopback port, `wal_level = logical`. Runs as the `postgres` user when
//!   we are root, because PostgreSQL refuses root; [`Postgres::start_replica`]
//!   adds a streaming replica (hot standby, optional apply delay).
//! - [`Redis`]: `redis-server` from PATH as a child process, no persistence
//!   unless asked for ([`Redis::start_with`]).
//! - [`RedisCluster`]: cluster-enabled [`Redis`] primaries with their slots
//!   assigned by `redis-cli --cluster create`.
//! - [`HttpRecorder`]: an HTTP server inside the test (TCP or TLS) that records every request
//!   and answers what the test says, for the endpoints of walbust's HTTP sink.
//! - [`Varnish`]: `varnishd` with vmod xkey in front of a backend the test runs, with the VCL
//!   walbust's README shows for HTTP purges.
//! - [`Kafka`]: librdkafka's mock cluster (real protocol over TCP), or the
//!   broker named by `WALBUST_TEST_KAFKA`.
//! - [`commit_transaction`], [`current_wal_lsn`], [`replay_lsn`],
//!   [`walsender_pid`]: what
//!   tests of the change stream ask the server about their own writes and
//!   the walsender serving them.
//! - [`free_port`]: the port chooser they share; [`sibling_binary`]: a
//!   binary of the same build as the one under test.
//!
//! Every server lives in its own directory under `std::env::temp_dir()` and
//! is stopped and deleted on drop, panics included. A missing binary is an
//! [`Error::MissingBinary`] with an install hint: tests fail, they never
//! skip. Servers are real processes rather than mocks because the code under
//! test must meet real protocol behaviour (replication, SCRAM, idempotent
//! produce).

mod error;
#[cfg(feature = "http")]
mod http_recorder;
#[cfg(feature = "kafka")]
mod kafka;
mod postgres;
mod process;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_server;
mod varnish;

pub use error::Error;
#[cfg(feature = "http")]
pub use http_recorder::{HttpAnswer, HttpRecorder, HttpRequest};
#[cfg(feature = "kafka")]
pub use kafka::{Kafka, KafkaRecord, EXTERNAL_ENV as KAFKA_ENV};
pub use postgres::{
    commit_transaction, current_wal_lsn, pg18_bindir, replay_lsn, walsender_pid, Postgres,
    BINDIR_ENV as PG_BINDIR_ENV,
};
pub use process::{free_port, sibling_binary};
#[cfg(feature = "redis")]
pub use redis_cluster::RedisCluster;
#[cfg(feature = "redis")]
pub use redis_server::Redis;
pub use varnish::{Varnish, XKEY_VCL as VARNISH_XKEY_VCL};
