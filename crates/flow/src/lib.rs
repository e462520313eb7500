//! The seam between walbust's two halves: the replication reader
//! (`walbust-cdc`) and the publishing pipeline (`walbust-publish`).
//!
//! ```text
//!  reader ──Item (bounded)──> pipeline
//!    ^                           │
//!    └── confirmed end LSN ──────┘ (watch)
//! ```
//!
//! - [`Item`]: one step of the committed-transaction stream.
//! - [`Feed`]: the reader's end of a running pipeline: where items go, what
//!   came back confirmed, and how to close it.
//! - [`Gate`]: a hold the pipeline awaits before publishing a batch,
//!   implemented by the reader's side (replicas replayed past it).
//! - [`Backoff`]: exponential backoff with jitter, the one retry pacing used
//!   for reconnecting, waiting for services at start-up and re-publishing.
//! - [`Chain`]: an error with its causes on one line, how both sides log
//!   the failures they retry.
//! - [`health()`]: the process's health registry, which both sides and the
//!   binary write and `/healthz` and `/readyz` read.
//!
//! Both sides depend on this crate and not on each other, so the reader
//! links neither Redis nor Kafka and the pipeline knows nothing of Postgres.

mod backoff;
mod chain;
mod feed;
mod gate;
pub mod health;
mod item;

pub use backoff::Backoff;
pub use chain::Chain;
pub use feed::{Closed, Feed, TrySend};
pub use gate::Gate;
pub use health::health;
pub use item::Item;
