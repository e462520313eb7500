//! Decoder for PostgreSQL's `pgoutput` logical replication messages,
//! protocol version 1.
//!
//! Map of the crate:
//!
//! - [`decode`] turns one whole message (tag byte first) into a [`Message`].
//! - [`message`](Message) types mirror the Postgres documentation chapter
//!   "Logical Replication Message Formats", one struct per message kind.
//! - [`Tuple`] holds a row's values without copying them: it is a slice of
//!   the input buffer plus the offset of every column, so looking up a column
//!   is cheap and decoding allocates nothing per column.
//! - [`tag`] names every byte that identifies a message or message part.
//! - [`format_lsn`] and [`parse_lsn`] read and write LSNs as Postgres does.
//! - [`time`]: Postgres timestamps (µs since 2000-01-01) to dates, RFC 3339
//!   and `SystemTime`.
//! - `encode` (feature `encode`) writes messages back, for tests, fuzzing and
//!   benchmarks.
//!
//! The crate does no I/O and never panics on any input: every length from the
//! wire is checked against the bytes present before it is used, and every
//! malformed message is a [`DecodeError`] that names the message, the field
//! and the byte offset. Messages of later protocol versions (streaming,
//! two-phase commit) are recognised and refused by name rather than misread.

mod error;
mod lsn;
mod message;
mod reader;
pub mod tag;
pub mod time;
mod tuple;

#[cfg(any(test, feature = "encode"))]
pub mod encode;

pub use error::DecodeError;
pub use lsn::{format_lsn, parse_lsn};
pub use message::{
    decode, Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin,
    Relation, ReplicaIdentity, Truncate, TypeMsg, Update,
};
pub use tuple::{Tuple, Value, Values, INLINE_COLUMNS};

#[cfg(test)]
mod tests;
