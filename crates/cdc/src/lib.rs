//! The replication side of walbust.
//!
//! - [`source`]: the control plane. Checks `wal_level`, the slot and the
//!   publication over an ordinary SQL connection, creating them when asked,
//!   and refuses to start where streaming would lose invalidations.
//! - [`reader`]: the replication session. Decodes pgoutput, keeps the
//!   relation cache, evaluates rules and feeds the publishing pipeline; it
//!   acknowledges only what the pipeline confirmed.
//! - [`relations`]: the relation cache and the view of tuples the rules read.
//! - [`binary`]: binary-mode values rendered as Postgres's text output.
//! - [`catalog`]: read-only catalog queries (tables, columns, replica
//!   identities, partitions, the publication) for `walbust check --db`.
//! - [`metrics`]: metric names of this side.

pub mod assemble;
pub mod binary;
pub mod catalog;
pub mod error;
pub mod metrics;
pub mod monitor;
pub mod reader;
pub mod relations;
pub mod source;

pub use assemble::{ChangeEvent, ChangeTap};
pub use error::{SourceError, StreamError};
pub use reader::{Reader, Stopped, StreamSpec};
pub use source::{ConnParams, SlotState, SourceSpec};
