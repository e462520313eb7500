//! The one error type of testkit.
//!
//! Messages are written for a person reading a failed test or a failed
//! `walbust demo`: they say what was being done, and for server start-up
//! failures they carry the tail of the server's log, because that is where
//! the real reason is.

use std::path::PathBuf;

/// Everything that can go wrong while starting, driving or stopping a
/// throwaway server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server binary is not installed (or not where we looked).
    #[error("{name} not found {searched}: {hint}")]
    MissingBinary {
        /// The program we looked for, e.g. `redis-server` or `initdb`.
        name: String,
        /// Where we looked, e.g. `on PATH` or `in /usr/lib/postgresql/15/bin`.
        searched: String,
        /// How to get it, e.g. `install it with 'apt-get install -y redis-server'`.
        hint: String,
    },

    /// We run as root, PostgreSQL refuses root, and the system user it should
    /// run as does not exist.
    #[error("system user '{user}' not found (PostgreSQL refuses to run as root, so testkit runs it as '{user}'): {hint}")]
    MissingUser {
        /// The user looked up.
        user: String,
        /// How to get it.
        hint: String,
    },

    /// The directory a server would live in cannot be entered by the user the
    /// server runs as.
    #[error("{path} is not accessible to the '{user}' user, which runs PostgreSQL when testkit runs as root: {hint}")]
    DirNotAccessible {
        /// The directory that blocks access.
        path: PathBuf,
        /// The user that must get in.
        user: String,
        /// What to do about it.
        hint: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A helper program (initdb, pg_ctl, id, ...) ran and reported failure.
    #[error("{command} failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, for a person to re-run.
        command: String,
        /// The exit status.
        status: String,
        /// What it printed (stdout then stderr), trimmed.
        output: String,
    },

    /// A server did not come up, or died while coming up.
    #[error("{server} failed to start on 127.0.0.1:{port}: {reason}\n--- last lines of {} ---\n{log_tail}", log.display())]
    StartFailed {
        /// `PostgreSQL`, `Redis` or `Varnish`.
        server: &'static str,
        /// The port it was meant to listen on.
        port: u16,
        /// Why we gave up.
        reason: String,
        /// The server's log file (deleted with the server's directory).
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A `postgresql.conf` setting given to [`crate::Postgres::start_with`] cannot
    /// be written safely.
    #[error("invalid postgresql.conf setting '{name}': {reason}")]
    InvalidSetting {
        /// The setting's name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Talking to the throwaway PostgreSQL failed.
    #[error("{context}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Talking to the throwaway Redis failed.
    #[cfg(feature = "redis")]
    #[error("{context}")]
    Redis {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },

    /// Talking to Kafka (mock cluster or external broker) failed.
    #[cfg(feature = "kafka")]
    #[error("{context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The thread that owns the mock Kafka cluster is gone (it panicked).
    #[cfg(feature = "kafka")]
    #[error("the thread owning the mock Kafka cluster has stopped")]
    KafkaThreadGone,

    /// The operation cannot be done in this mode, e.g. taking down the brokers
    /// of an external Kafka named by `WALBUST_TEST_KAFKA`.
    #[error("{operation} is not supported: {reason}")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
        /// Why it cannot be done.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
