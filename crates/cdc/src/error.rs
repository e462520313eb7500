//! Errors of the replication source. Each variant's message is one sentence
//! that names the object and, where there is one, the fix.

use thiserror::Error;

/// Failures of the control plane (checks, creation) before streaming.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("source.url: {reason}")]
    Url { reason: String },
    #[error("cannot connect to Postgres: {source}")]
    Connect {
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("could not {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "wal_level is '{actual}', walbust needs 'logical': run ALTER SYSTEM SET wal_level = logical and restart Postgres"
    )]
    WalLevel { actual: String },
    #[error(
        "publication \"{publication}\" does not exist: create it (CREATE PUBLICATION ... FOR TABLE ...) or set source.create: true"
    )]
    PublicationMissing { publication: String },
    #[error("publication \"{publication}\" does not include tables the rules name: {}", tables.join(", "))]
    TablesNotPublished {
        publication: String,
        tables: Vec<String>,
    },
    #[error("table {table} named by the rules does not exist")]
    TableMissing { table: String },
    #[error(
        "replication slot \"{slot}\" does not exist: create it with SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput') or set source.create: true"
    )]
    SlotMissing { slot: String },
    #[error("replication slot \"{slot}\" cannot be used: {detail}")]
    SlotWrongKind { slot: String, detail: String },
    #[error(
        "replication slot \"{slot}\" is lost (wal_status = lost): the server removed WAL it needed, so changes were missed; drop the slot and purge the caches it protects before starting again"
    )]
    SlotLost { slot: String },
}

impl SourceError {
    pub(crate) fn query(what: &'static str, source: tokio_postgres::Error) -> Self {
        SourceError::Query { what, source }
    }

    /// A definite error needs a human; anything else may pass on retry.
    pub fn is_definite(&self) -> bool {
        !matches!(
            self,
            SourceError::Connect { .. } | SourceError::Query { .. }
        )
    }
}

/// Failures while streaming.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("replication connection: {source}")]
    Replication {
        #[source]
        source: pgwire_replication::PgWireError,
    },
    #[error("malformed pgoutput message at WAL {lsn}: {source}")]
    Decode {
        lsn: String,
        #[source]
        source: pgoutput::DecodeError,
    },
    #[error("pgoutput sent a change for relation {relation_id} without describing it first")]
    UnknownRelation { relation_id: u32 },
    #[error("table {table}: {source}")]
    Bind {
        table: String,
        #[source]
        source: rules::BindError,
    },
    #[error(
        "table {table} sends binary values and the rules read column {column} from it; binary rendering is not supported for its type"
    )]
    BinaryValue { table: String, column: String },
    #[error("the publishing pipeline stopped")]
    PipelineClosed,
    #[error("replication stream ended unexpectedly")]
    Ended,
}
