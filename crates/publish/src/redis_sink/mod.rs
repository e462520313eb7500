//! The Redis sink: deletes keys, purges tags and patterns, optionally announces each batch.
//!
//! - `config`: [`RedisSinkConfig`] (serde, defaults, pure `validate()`).
//! - `request`: the commands and the tag-purge script, built without I/O.
//! - `sink`: [`RedisSink`], which connects (through a reconnecting
//!   [`ConnectionManager`](redis::aio::ConnectionManager)) and runs them.
//!
//! What a batch does, all pipelined or concurrent on one multiplexed connection:
//!
//! - keys: `UNLINK` in chunks of `unlink_chunk` keys;
//! - tags, `set` strategy: a Lua script removes each tag set's members and the set, atomically;
//! - tags, `version` strategy: `INCR <tag_prefix><tag>`;
//! - patterns: `SCAN <cursor> MATCH <pattern> COUNT <scan_count>`, `UNLINK` what it finds;
//! - `publish_channel`: `PUBLISH` of the batch's JSON record, once the rest is done.
//!
//! Redis Cluster: keys go through [`request::key_chunks`], the one place that decides which keys
//! share a command, and [`request::hash_slot`] gives the slot to group them by.

mod config;
pub mod request;
mod sink;

pub use config::{
    RedisSinkConfig, TagStrategy, CONFIG_PATH, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_RESPONSE_TIMEOUT_MS, DEFAULT_SCAN_COUNT, DEFAULT_SET_TAG_PREFIX, DEFAULT_UNLINK_CHUNK,
    DEFAULT_VERSION_TAG_PREFIX,
};
pub use sink::RedisSink;
