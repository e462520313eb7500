//! Errors of the replication source. Each variant's message is one sentence
//! that names the object and, where there is one, the fix; a cause is
//! chained with `#[source]` and not repeated in the message, so printing the
//! chain (`{:#}` of anyhow, [`walbust_flow::Chain`] in logs) shows each
//! cause once.

use thiserror::Error;
use tokio_postgres::error::SqlState;

/// Failures of the control plane (checks, creation) before streaming.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("source.url: {reason}")]
    Url { reason: String },
    #[error("TLS to Postgres at {host} failed (sslmode={sslmode}): {reason}")]
    Tls {
        /// `host:port`.
        host: String,
        sslmode: crate::tls::SslMode,
        reason: String,
    },
    #[error("source.failover needs Postgres 17 or later (failover slots); this server is {major}: leave source.failover out, and plan for a gap on failover (see README, HA and failover)")]
    FailoverUnsupported { major: u32 },
    #[error("none of the {hosts} hosts of source.url is a primary now ({standbys} answered as standbys): waiting for a promotion")]
    NoPrimary { hosts: usize, standbys: usize },
    #[error("cannot connect to Postgres")]
    Connect {
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("could not {what}")]
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
    #[error(
        "publication \"{publication}\" does not publish {} (publish = '{published}'), but rules react to them on {}, whose changes would be dropped unseen: ALTER PUBLICATION {publication} SET (publish = '{fix}')",
        missing.join(", "),
        tables.join(", ")
    )]
    OperationsNotPublished {
        publication: String,
        /// Operations the rules react to that are not published.
        missing: Vec<&'static str>,
        /// The publication's `publish` setting as it is.
        published: String,
        /// The setting that publishes what the rules need.
        fix: String,
        tables: Vec<String>,
    },
    #[error(
        "publication \"{publication}\" publishes table {table} with a row filter (WHERE {filter}), which hides changes from the rules: rows outside it are not sent, an UPDATE that moves a row out of it arrives as a DELETE of the old row (its new values unseen) and one that moves a row into it as an INSERT of the new row (its old values unseen); publish the table without a filter: BEGIN; ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table}; COMMIT"
    )]
    RowFilter {
        publication: String,
        table: String,
        filter: String,
    },
    #[error(
        "publication \"{publication}\" sends only columns {} of table {table}, but the rules read {}: add them to its column list (BEGIN; ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table} ({}); COMMIT) or publish the table without one",
        list.join(", "),
        missing.join(", "),
        list.iter().chain(missing).cloned().collect::<Vec<_>>().join(", ")
    )]
    ColumnList {
        publication: String,
        table: String,
        /// The column list as it is.
        list: Vec<String>,
        /// Columns the rules read that it leaves out.
        missing: Vec<String>,
    },
    #[error(
        "publication \"{publication}\" was dropped while replication slot \"{slot}\" still needed it: Postgres decodes each change with the catalog as of that change, so this slot can never read past the changes made while the publication was missing; drop the slot (SELECT pg_drop_replication_slot('{slot}')), run `walbust reset-gap` with this configuration (it purges what the rules cover and clears the gap marker) and start again, or set source.on_gap: purge with source.create: true"
    )]
    PublicationDropped {
        publication: String,
        slot: String,
        /// The walsender's refusal.
        #[source]
        source: pgwire_replication::PgWireError,
    },
    #[error(
        "replication slot \"{slot}\" resumes at {confirmed}, past {acknowledged}, the last position walbust acknowledged on it: the slot was dropped and created again (or advanced) while walbust was disconnected, so the changes in between were never seen and caches may be stale; run `walbust reset-gap` with this configuration (it purges what the rules cover and clears the gap marker) and start again, or set source.on_gap: purge"
    )]
    SlotAhead {
        slot: String,
        /// The slot's `confirmed_flush_lsn` as found.
        confirmed: String,
        /// The highest position walbust knows to be its own on this slot.
        acknowledged: String,
    },
    #[error("{0}")]
    UnseenWindow(Box<UnseenWindow>),
    #[error("table {table} named by the rules does not exist")]
    TableMissing { table: String },
    #[error(
        "walbust's role may not {what} publication \"{publication}\" (source.create: true needs CREATE on the database and ownership of every table it adds): have a table owner run {sql}, then start walbust again"
    )]
    PublicationNotPermitted {
        /// `create` or `alter`.
        what: &'static str,
        publication: String,
        /// The statement to run instead.
        sql: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "table {table} is partitioned and publication {publication} publishes its partitions under their own names (publish_via_partition_root is off), which rules naming {table} do not match: ALTER PUBLICATION {publication} SET (publish_via_partition_root = true)"
    )]
    PartitionsUnderOwnNames { publication: String, table: String },
    #[error(
        "table {table} is a partition: publication {publication} publishes via the partition root, so its changes arrive as {root}; name {root} in the rules"
    )]
    PartitionUnderRoot {
        publication: String,
        table: String,
        root: String,
    },
    #[error("the rules do not fit table {table} as the publication sends it now")]
    RulesDoNotFit {
        table: String,
        #[source]
        source: walbust_rules::BindError,
    },
    #[error("replication slot \"{slot}\" does not exist: {}", slot_missing_hint(slot, *create))]
    SlotMissing {
        slot: String,
        /// `source.create` is set: walbust would have created it at start.
        create: bool,
    },
    #[error("replication slot \"{slot}\" cannot be used: {detail}")]
    SlotWrongKind { slot: String, detail: String },
    #[error(
        "replication slot \"{slot}\" is lost (wal_status = lost): the server removed WAL it needed, so changes were missed; drop the slot (SELECT pg_drop_replication_slot('{slot}')), run `walbust reset-gap` with this configuration (it purges what the rules cover, clears the gap marker and, with source.create: true, creates the slot again) and start again"
    )]
    SlotLost { slot: String },
}

/// What to do about a missing slot, depending on `source.create`.
fn slot_missing_hint(slot: &str, create: bool) -> String {
    if create {
        "it was dropped while walbust used it, so the changes since were never seen; start walbust again: it creates the slot and handles the gap as source.on_gap says".to_string()
    } else {
        format!(
            "create it with SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput') or set source.create: true"
        )
    }
}

impl SourceError {
    pub(crate) fn query(what: &'static str, source: tokio_postgres::Error) -> Self {
        SourceError::Query { what, source }
    }

    /// A definite error needs a human; anything else may pass on retry
    /// (the server restarting, a connection cut, too many connections).
    pub fn is_definite(&self) -> bool {
        match self {
            SourceError::Connect { source } | SourceError::Query { source, .. } => {
                !postgres_error_is_transient(source)
            }
            SourceError::NoPrimary { .. } => false,
            _ => true,
        }
    }

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Url { .. } => "config",
            SourceError::Tls { .. } => "tls",
            SourceError::Connect { .. }
            | SourceError::Query { .. }
            | SourceError::NoPrimary { .. } => "database",
            SourceError::WalLevel { .. } => "wal_level",
            SourceError::PublicationMissing { .. }
            | SourceError::TablesNotPublished { .. }
            | SourceError::TableMissing { .. }
            | SourceError::PublicationNotPermitted { .. }
            | SourceError::PartitionsUnderOwnNames { .. }
            | SourceError::PartitionUnderRoot { .. } => "publication",
            SourceError::OperationsNotPublished { .. }
            | SourceError::RowFilter { .. }
            | SourceError::ColumnList { .. } => "publication_filter",
            SourceError::PublicationDropped { .. } => "publication_dropped",
            SourceError::SlotMissing { .. } => "slot_missing",
            SourceError::FailoverUnsupported { .. } => "config",
            SourceError::SlotWrongKind { .. } => "slot_wrong_kind",
            SourceError::SlotLost { .. } => "slot_lost",
            SourceError::SlotAhead { .. } => "slot_ahead",
            SourceError::RulesDoNotFit { .. } => "rules",
            SourceError::UnseenWindow(_) => "unseen_window",
        }
    }
}

fn postgres_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => sqlstate_is_transient(code),
        // No SQLSTATE: an I/O or protocol failure on the way, not a refusal.
        None => true,
    }
}

/// SQLSTATE classes that pass with time: connection exceptions (08),
/// operator intervention such as a shutdown or a terminated backend (57P),
/// insufficient resources (53), an object in use (55006: the slot is
/// streamed by another walbust, which is how a standby instance waits),
/// and serialization/deadlock (40).
pub fn sqlstate_is_transient(code: &SqlState) -> bool {
    let class = code.code();
    class.starts_with("08")
        || class.starts_with("57P")
        || class.starts_with("53")
        || class.starts_with("40")
        || *code == SqlState::OBJECT_IN_USE
}

/// The SQLSTATE of an error the server sent on the replication connection.
///
/// The transport hands server errors over as text only, rendered from the
/// ErrorResponse's fields as "message (SQLSTATE xxxxx)"; this is the one
/// place that reads the code back, so everything else classifies by
/// [`SqlState`].
pub fn replication_sqlstate(e: &pgwire_replication::PgWireError) -> Option<SqlState> {
    let pgwire_replication::PgWireError::Server(text) = e else {
        return None;
    };
    let (_, rest) = text.rsplit_once("(SQLSTATE ")?;
    let code = rest.strip_suffix(')')?;
    (code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| SqlState::from_code(code))
}

/// Classifies a replication transport error.
fn pgwire_is_transient(e: &pgwire_replication::PgWireError) -> bool {
    use pgwire_replication::PgWireError as E;
    match e {
        E::Io(_) | E::Task(_) => true,
        E::Server(_) => match replication_sqlstate(e) {
            Some(code) => sqlstate_is_transient(&code),
            // A server error without a code is no refusal walbust knows.
            None => true,
        },
        _ => false,
    }
}

/// Failures while streaming.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("replication connection")]
    Replication {
        #[source]
        source: pgwire_replication::PgWireError,
    },
    #[error("malformed pgoutput message at WAL {lsn}")]
    Decode {
        lsn: String,
        #[source]
        source: walbust_pgoutput::DecodeError,
    },
    #[error("pgoutput sent a change for relation {relation_id} without describing it first")]
    UnknownRelation { relation_id: u32 },
    #[error("pgoutput sent a change of table {table} outside a transaction (no Begin before it)")]
    OutsideTransaction { table: String },
    #[error("table {table}")]
    Bind {
        table: String,
        #[source]
        source: walbust_rules::BindError,
    },
    /// Binary mode: the rules read a column whose type walbust cannot
    /// render as Postgres's text output (see [`crate::binary`]).
    #[error(
        "table {table}: the rules read column {column} of type {type_name}, which binary mode (source.binary: true) cannot render as text; use a column of another type in the rules, or turn binary mode off"
    )]
    BinaryValue {
        table: String,
        column: String,
        type_name: String,
    },
    #[error("the publishing pipeline stopped")]
    PipelineClosed,
    /// The [`OnStream`](crate::reader::OnStream) hook failed; the session is
    /// retried like a lost connection.
    #[error("could not record the start of streaming")]
    OnStream {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Source(SourceError),
    #[error("replication stream ended unexpectedly")]
    Ended,
}

impl StreamError {
    /// Transient errors reconnect; everything else stops walbust with a
    /// message, because going on could lose invalidations.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Replication { source } => pgwire_is_transient(source),
            StreamError::Source(e) => !e.is_definite(),
            StreamError::Ended | StreamError::OnStream { .. } => true,
            _ => false,
        }
    }

    /// Another consumer holds the slot (a walbust standby waits for it).
    pub fn slot_in_use(&self) -> bool {
        matches!(self, StreamError::Replication { source }
            if replication_sqlstate(source) == Some(SqlState::OBJECT_IN_USE))
    }

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StreamError::Replication { source } => {
                let code = replication_sqlstate(source);
                if source.is_auth() {
                    "auth"
                } else if code == Some(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) {
                    "slot_lost"
                } else if code == Some(SqlState::UNDEFINED_OBJECT) {
                    "slot_or_publication_missing"
                } else {
                    "replication"
                }
            }
            StreamError::Decode { .. } => "decode",
            StreamError::UnknownRelation { .. } | StreamError::OutsideTransaction { .. } => {
                "protocol"
            }
            StreamError::Bind { .. } | StreamError::BinaryValue { .. } => "rules",
            StreamError::PipelineClosed => "pipeline",
            StreamError::OnStream { .. } => "on_stream",
            StreamError::Source(e) => e.reason(),
            StreamError::Ended => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    #[test]
    fn server_errors_are_classified_by_sqlstate() {
        let terminated = PgWireError::Server(
            "terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        );
        assert!(StreamError::Replication { source: terminated }.is_transient());
        let in_use = PgWireError::Server(
            "replication slot \"walbust\" is active for PID 42 (SQLSTATE 55006)".into(),
        );
        assert!(StreamError::Replication { source: in_use }.is_transient());
        let missing = PgWireError::Server(
            "replication slot \"walbust\" does not exist (SQLSTATE 42704)".into(),
        );
        let e = StreamError::Replication { source: missing };
        assert!(!e.is_transient());
        assert_eq!(e.reason(), "slot_or_publication_missing");
        let lost = PgWireError::Server(
            "can no longer get changes from replication slot \"walbust\" (SQLSTATE 55000)".into(),
        );
        assert_eq!(
            StreamError::Replication { source: lost }.reason(),
            "slot_lost"
        );
        assert!(!StreamError::Replication {
            source: PgWireError::Auth("password authentication failed".into())
        }
        .is_transient());
        assert!(StreamError::Replication {
            source: PgWireError::Io(std::sync::Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            )))
        }
        .is_transient());
    }

    #[test]
    fn definite_source_errors_stay_definite() {
        let e = StreamError::Source(SourceError::SlotLost { slot: "s".into() });
        assert!(!e.is_transient());
        assert_eq!(e.reason(), "slot_lost");
        assert!(sqlstate_is_transient(&SqlState::CONNECTION_FAILURE));
        assert!(sqlstate_is_transient(&SqlState::ADMIN_SHUTDOWN));
        assert!(!sqlstate_is_transient(&SqlState::INVALID_PASSWORD));
        assert!(!sqlstate_is_transient(&SqlState::UNDEFINED_OBJECT));
    }

    #[test]
    fn the_replication_sqlstate_is_read_from_the_end_only() {
        let e = PgWireError::Server(
            "publication \"x (SQLSTATE 08006)\" does not exist (SQLSTATE 42704)".into(),
        );
        assert_eq!(replication_sqlstate(&e), Some(SqlState::UNDEFINED_OBJECT));
        assert_eq!(
            replication_sqlstate(&PgWireError::Server("no code".into())),
            None
        );
        assert_eq!(
            replication_sqlstate(&PgWireError::Server("odd (SQLSTATE 1)".into())),
            None
        );
        assert_eq!(
            replication_sqlstate(&PgWireError::Protocol("x (SQLSTATE 42704)".into())),
            None
        );
    }

    #[test]
    fn a_missing_slot_suggests_create_only_when_it_is_off() {
        let missing = |create| {
            SourceError::SlotMissing {
                slot: "s".into(),
                create,
            }
            .to_string()
        };
        assert!(missing(false).contains(
            "pg_create_logical_replication_slot('s', 'pgoutput') or set source.create: true"
        ));
        assert!(!missing(true).contains("set source.create"));
        assert!(missing(true).contains("dropped while walbust used it"));
    }
}

/// A window in which the publication withheld rule tables, refused
/// (`source.on_gap: refuse`); see [`crate::window`].
#[derive(Debug, thiserror::Error)]
#[error(
    "publication \"{publication}\" withheld {} from {from} to {to} (seen in WAL order through the DDL guard), so their changes in between were never sent and caches may be stale; source.on_gap: refuse keeps the slot before the window. Purge the caches the rules cover, then move the slot past it (SELECT pg_replication_slot_advance('{slot}', '{to}')), or set source.on_gap: purge to purge what those tables' rules cover and go on",
    tables.join(", ")
)]
pub struct UnseenWindow {
    pub publication: String,
    pub slot: String,
    pub tables: Vec<String>,
    /// Commit LSN of the transaction that opened the window.
    pub from: String,
    /// Commit LSN of the transaction that closed it.
    pub to: String,
}
