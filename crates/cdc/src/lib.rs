//! The replication side of walbust.
//!
//! - [`source`]: the control plane. Checks `wal_level`, the slot and the
//!   publication over an ordinary SQL connection, creating them when asked,
//!   and refuses to start where streaming would lose invalidations.
//! - [`reader`]: the replication session (I/O). Feeds transport events to
//!   the assembler and its items to the publishing pipeline through a
//!   [`walbust_flow::Feed`]; it acknowledges only what the pipeline
//!   confirmed, and reconnects on transient failures.
//! - [`assemble`]: the reader's pure core. Decodes pgoutput, keeps the
//!   relation cache and the open transaction, evaluates the rules and emits
//!   `Begin, Changes*, Commit` items; fuzzed and unit-tested without a
//!   server.
//! - [`monitor`]: while streaming, re-checks the slot and the publication
//!   every few seconds and writes the optional WAL heartbeat.
//! - [`replicas`]: `source.replicas`: the gate that holds each batch until
//!   every read replica replayed its commits (bounded), and the replica
//!   probe of `walbust check --db`.
//! - [`relations`]: the relation cache and the view of tuples the rules read.
//! - [`binary`]: binary-mode values rendered as Postgres's text output.
//! - [`catalog`]: read-only catalog queries (tables, columns, replica
//!   identities, partitions, the publication) for `walbust check --db`.
//! - [`window`]: the DDL guard's messages; windows in which the
//!   publication withheld rule tables, held back from acknowledgement
//!   until purged.
//! - [`fence`]: acknowledgements behind a ceiling written to the gap
//!   marker first, so that a slot moved by someone else is told after a
//!   crash too.
//! - [`metrics`]: metric names of this side.
//! - [`error`]: [`SourceError`] (checks before streaming) and
//!   [`StreamError`] (while streaming), each knowing whether it is transient.

pub mod assemble;
pub mod binary;
pub mod catalog;
pub mod error;
pub mod fence;
pub mod metrics;
pub mod monitor;
pub mod reader;
pub mod relations;
pub mod replicas;
pub mod source;
pub mod tls;
pub mod window;

pub use assemble::{ChangeEvent, ChangeTap};
pub use error::{SourceError, StreamError};
pub use fence::OnAck;
pub use reader::{OnStream, Reader, Stopped, StreamSpec};
pub use replicas::{ReplicaGate, ReplicaSpec};
pub use source::{ConnParams, SlotState, SourceSpec};
pub use tls::{SslMode, TlsSettings};
