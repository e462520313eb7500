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
//! - patterns, `walk` strategy: `SCAN <cursor> MATCH <pattern> COUNT <scan_count>`, `UNLINK`
//!   what matches, in merged walks beside the key path (`walk`: one walk serves every pending
//!   pattern; keys and tags never wait for it);
//! - patterns, `version` strategy: `INCR <pattern_prefix><literal prefix>` for `prefix*`
//!   patterns, O(1);
//! - `publish_channel`: `PUBLISH` of the batch's JSON record, once the rest is done;
//! - scheduled invalidations (`at:`): `ZADD walbust:schedule:<slot>` in the same last round
//!   trip, before the batch counts as confirmed ([`schedule`]);
//! - `refresh_stream`: `XADD <stream> MAXLEN ~ <n> * lsn <lsn> keys <json>` after the
//!   invalidation, for warmers.
//!
//! With `leases` (or `watermark`) the sink loads the Redis Functions library `walbust`
//! ([`functions`]: fenced fills, read-your-writes) before publishing; with `watermark`, each
//! batch that completes transactions ends by raising `walbust:lsn:<slot>` to its end LSN, in the
//! round trip of its last command.
//!
//! Redis Cluster (`cluster: true`, the URL names any node): keys, tag counters and tag sets are
//! grouped by hash slot ([`request::slot_chunks`], [`request::hash_slot`]), one command or
//! pipeline per slot group, sent concurrently and routed to the slot's primary; patterns are
//! `SCAN`ned on every primary listed by `CLUSTER SLOTS`; `PING` reaches every primary and the
//! health check also requires `cluster_state:ok`. The `set` tag strategy needs each set's
//! members in the set's slot: use a hash tag in the tag and in the member keys (see
//! [`TagStrategy::Set`]).

mod config;
pub mod functions;
pub mod request;
pub mod schedule;
mod sink;
mod walk;

pub use config::{
    PatternStrategy, RedisSinkConfig, TagStrategy, CONFIG_PATH, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_LEASE_TTL_MS, DEFAULT_PATTERN_PREFIX, DEFAULT_REFRESH_STREAM_MAXLEN,
    DEFAULT_RESPONSE_TIMEOUT_MS, DEFAULT_SCAN_COUNT, DEFAULT_SCHEDULE_HORIZON_DAYS,
    DEFAULT_SET_TAG_PREFIX, DEFAULT_UNLINK_CHUNK, DEFAULT_VERSION_TAG_PREFIX,
};
pub use sink::{pattern_counter_key, redis_error, RedisConnection, RedisSink, NAME};
