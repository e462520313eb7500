use walbust_rules::Invalidations;

/// One step of the committed-transaction stream that the reader sends to the
/// pipeline.
///
/// A transaction is `Begin`, any number of `Changes`, then `Commit`; nothing
/// else is valid (the pipeline rejects `Changes` or `Commit` with no `Begin`
/// before them). Under pgoutput protocol 1 the server only sends
/// transactions after they committed, so `Begin` already knows its commit
/// LSN and time.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Opens a transaction.
    Begin {
        /// Transaction id.
        xid: u32,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// Commit time in microseconds since 2000-01-01 00:00:00 UTC (the Postgres epoch).
        commit_time_micros: i64,
    },
    /// Invalidations produced by part of the open transaction; may arrive many times per
    /// transaction.
    Changes(Invalidations),
    /// Closes the open transaction. `end_lsn` is the position acknowledged to Postgres once every
    /// batch holding part of this transaction (and everything before it) is confirmed.
    Commit {
        /// End LSN of the transaction (the `Commit` message's end LSN).
        end_lsn: u64,
    },
}
