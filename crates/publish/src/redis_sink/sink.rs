//! [`RedisSink`]: runs a batch's commands on a reconnecting connection.

use futures::future::BoxFuture;
use futures::FutureExt;
use metrics::counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use tracing::debug;

use super::config::{RedisSinkConfig, TagStrategy};
use super::request;
use crate::batch::Batch;
use crate::metrics as m;
use crate::record;
use crate::sink::{Sink, SinkError, SinkErrorKind};

const NAME: &str = "redis";

/// Patterns purged at the same time within one batch; each is its own `SCAN` walk.
const PATTERN_CONCURRENCY: usize = 4;

/// The Redis sink. Cheap to share: the connection is multiplexed and reconnects by itself after
/// a failure (the failing publish returns a retriable error and the pipeline tries again).
pub struct RedisSink {
    cfg: RedisSinkConfig,
    conn: ConnectionManager,
    purge_script: Script,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Validates `cfg` and connects. Fails if Redis cannot be reached now; once connected, the
    /// connection is re-established on its own after failures.
    pub async fn connect(cfg: RedisSinkConfig) -> Result<Self, SinkError> {
        cfg.validate().map_err(|errors| {
            let text = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            SinkError::new(SinkErrorKind::Config, text)
        })?;
        let client = redis::Client::open(cfg.url.as_str()).map_err(|err| {
            SinkError::with_source(SinkErrorKind::Config, "redis: invalid URL", err)
        })?;
        // One connection attempt per request: when Redis is down, a publish fails fast and the
        // pipeline's backoff (counted in metrics, logged) decides when to try again, instead of
        // a second retry loop hidden inside the client.
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout()))
            .set_response_timeout(Some(cfg.response_timeout()))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_with_config(client, manager_cfg)
            .await
            .map_err(|err| redis_error("redis: cannot connect", err))?;
        Ok(Self {
            cfg,
            conn,
            purge_script: request::tag_set_purge_script(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisSinkConfig {
        &self.cfg
    }

    async fn publish_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        let (keys_removed, tag_members_removed, ()) = futures::try_join!(
            self.unlink_keys(&batch.keys),
            self.purge_tags(&batch.tags),
            self.purge_patterns(&batch.patterns),
        )?;
        if let Some(channel) = &self.cfg.publish_channel {
            // After the purge, so a subscriber that reacts by reading Redis finds the keys gone.
            let mut conn = self.conn.clone();
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(record::encode(batch))
                .exec_async(&mut conn)
                .await
                .map_err(|err| redis_error("redis: PUBLISH failed", err))?;
        }
        counter!(m::REDIS_KEYS_REMOVED).increment(keys_removed);
        counter!(m::REDIS_TAG_MEMBERS_REMOVED).increment(tag_members_removed);
        debug!(
            keys = batch.keys.len(),
            keys_removed,
            tags = batch.tags.len(),
            tag_members_removed,
            patterns = batch.patterns.len(),
            "redis batch applied"
        );
        Ok(())
    }

    /// `UNLINK`s the keys; returns how many existed.
    async fn unlink_keys(&self, keys: &[String]) -> Result<u64, SinkError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let removed: Vec<u64> = request::unlink_pipeline(keys, self.cfg.unlink_chunk)
            .query_async(&mut conn)
            .await
            .map_err(|err| redis_error("redis: UNLINK of keys failed", err))?;
        Ok(removed.iter().sum())
    }

    /// Purges tags by the configured strategy; returns the member keys removed (`set` only).
    async fn purge_tags(&self, tags: &[String]) -> Result<u64, SinkError> {
        if tags.is_empty() {
            return Ok(0);
        }
        let prefix = self.cfg.tag_prefix();
        let mut conn = self.conn.clone();
        match self.cfg.tag_strategy {
            TagStrategy::Version => {
                request::incr_pipeline(prefix, tags)
                    .exec_async(&mut conn)
                    .await
                    .map_err(|err| redis_error("redis: INCR of tag versions failed", err))?;
                Ok(0)
            }
            TagStrategy::Set => {
                let mut removed = 0;
                for group in request::key_chunks(tags, self.cfg.unlink_chunk) {
                    let mut invocation = self.purge_script.prepare_invoke();
                    for tag in group {
                        invocation.key(request::tag_key(prefix, tag));
                    }
                    // Loads the script again by itself if Redis lost it (restart, SCRIPT FLUSH).
                    let n: u64 = invocation
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|err| redis_error("redis: tag purge script failed", err))?;
                    removed += n;
                }
                Ok(removed)
            }
        }
    }

    async fn purge_patterns(&self, patterns: &[String]) -> Result<(), SinkError> {
        for group in patterns.chunks(PATTERN_CONCURRENCY) {
            futures::future::try_join_all(group.iter().map(|p| self.purge_pattern(p))).await?;
        }
        Ok(())
    }

    /// Walks the keyspace with `SCAN MATCH` and unlinks what matches. Keys present for the whole
    /// walk are guaranteed to be seen; deleting while scanning is allowed by `SCAN`.
    async fn purge_pattern(&self, pattern: &str) -> Result<(), SinkError> {
        let mut conn = self.conn.clone();
        let (mut calls, mut matched, mut removed) = (0u64, 0u64, 0u64);
        let mut cursor = 0u64;
        let result = loop {
            let step: Result<(u64, Vec<String>), _> =
                request::scan(cursor, pattern, self.cfg.scan_count)
                    .query_async(&mut conn)
                    .await;
            let (next, keys) = match step {
                Ok(step) => step,
                Err(err) => break Err(redis_error("redis: SCAN for a pattern failed", err)),
            };
            calls += 1;
            matched += keys.len() as u64;
            if !keys.is_empty() {
                let counts: Result<Vec<u64>, _> =
                    request::unlink_pipeline(&keys, self.cfg.unlink_chunk)
                        .query_async(&mut conn)
                        .await;
                match counts {
                    Ok(counts) => removed += counts.iter().sum::<u64>(),
                    Err(err) => {
                        break Err(redis_error("redis: UNLINK of pattern matches failed", err))
                    }
                }
            }
            if next == 0 {
                break Ok(());
            }
            cursor = next;
        };
        // Counted even when the walk failed half-way: the work was done.
        counter!(m::REDIS_SCAN_CALLS).increment(calls);
        counter!(m::REDIS_PATTERN_KEYS_MATCHED).increment(matched);
        counter!(m::REDIS_PATTERN_KEYS_REMOVED).increment(removed);
        result
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        self.publish_batch(batch).boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let mut conn = self.conn.clone();
            let reply: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|err| redis_error("redis: PING failed", err))?;
            if reply == "PONG" {
                Ok(())
            } else {
                Err(SinkError::new(
                    SinkErrorKind::Protocol,
                    "redis: PING did not answer PONG",
                ))
            }
        }
        .boxed()
    }
}

/// Classifies a client error; the message says what was being done, the source says why.
fn redis_error(context: &str, err: RedisError) -> SinkError {
    SinkError::with_source(classify(&err), context, err)
}

fn classify(err: &RedisError) -> SinkErrorKind {
    if err.is_timeout() {
        return SinkErrorKind::Timeout;
    }
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        return SinkErrorKind::Connect;
    }
    match err.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => SinkErrorKind::Config,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => SinkErrorKind::Unavailable,
        ErrorKind::Server(_) => SinkErrorKind::Rejected,
        // A script running too long (`BUSY`) passes; other unknown codes (`WRONGTYPE`...) do not.
        ErrorKind::Extension if err.code() == Some("BUSY") => SinkErrorKind::Unavailable,
        ErrorKind::Extension => SinkErrorKind::Rejected,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => SinkErrorKind::Protocol,
        // Anything else the client itself would retry is a connection problem.
        _ => match err.retry_method() {
            redis::RetryMethod::NoRetry => SinkErrorKind::Protocol,
            _ => SinkErrorKind::Connect,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(classify(&io), SinkErrorKind::Connect);
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(classify(&timeout), SinkErrorKind::Timeout);
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "bad password"));
        assert_eq!(classify(&auth), SinkErrorKind::Config);
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(classify(&parse), SinkErrorKind::Protocol);
    }
}
