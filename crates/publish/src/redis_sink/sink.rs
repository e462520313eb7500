//! [`RedisSink`]: runs a batch's commands on a reconnecting connection, to one Redis or to a
//! Redis Cluster.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use metrics::counter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    ClientTlsConfig, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Script, ServerErrorKind,
    TlsCertificates, Value,
};
use tracing::{debug, warn};

use walbust_glob::Glob;
use walbust_pgoutput::time::{pg_to_unix_micros, MICROS_PER_DAY};

use super::config::{PatternStrategy, RedisSinkConfig, TagStrategy};
use super::walk::{self, ScanTarget, Walker};
use super::{functions, request, schedule};
use crate::batch::Batch;
use crate::metrics as m;
use crate::record;
use crate::sink::{Settling, Sink, SinkError, SinkErrorKind};

/// The sink's name ([`Sink::name`](crate::Sink::name)), its `sink` metric label.
pub const NAME: &str = "redis";

/// Requests in flight at once against a cluster (one per slot group). The connection multiplexes
/// them, so they travel pipelined to each node.
const CLUSTER_CONCURRENCY: usize = 64;

/// Attempts the cluster client makes by itself for one request: enough to follow `MOVED` and
/// `ASK` redirections while slots move. A node that stays away is the pipeline's backoff's
/// business, as for a single Redis.
const CLUSTER_RETRIES: u32 = 3;

/// One Redis, or a Redis Cluster. Both reconnect by themselves and are cheap to clone.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Connection {
    /// Connects to what `cfg` names (already validated).
    async fn open(cfg: &RedisSinkConfig) -> Result<Self, SinkError> {
        let (url, certs) = tls_settings(cfg)?;
        if cfg.cluster {
            let mut builder = ClusterClient::builder([url.as_str()])
                .connection_timeout(cfg.connect_timeout())
                .response_timeout(cfg.response_timeout())
                .retries(CLUSTER_RETRIES);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|err| {
                SinkError::with_source(SinkErrorKind::Config, "redis: invalid cluster URL", err)
            })?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|err| redis_error("redis: cannot connect to the cluster", err))?;
            Ok(Connection::Cluster(conn))
        } else {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
                None => redis::Client::open(url.as_str()),
            }
            .map_err(|err| {
                SinkError::with_source(SinkErrorKind::Config, "redis: invalid URL", err)
            })?;
            // One connection attempt per request: when Redis is down, a publish fails fast and
            // the pipeline's backoff (counted in metrics, logged) decides when to try again,
            // instead of a second retry loop hidden inside the client.
            let manager_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout()))
                .set_response_timeout(Some(cfg.response_timeout()))
                .set_number_of_retries(0);
            let conn = ConnectionManager::new_with_config(client, manager_cfg)
                .await
                .map_err(|err| redis_error("redis: cannot connect", err))?;
            Ok(Connection::Single(conn))
        }
    }
}

/// The URL to connect to and the certificates of `sinks.redis.tls`, read from their files.
/// `insecure_skip_verify` becomes the client's `#insecure` URL fragment.
fn tls_settings(cfg: &RedisSinkConfig) -> Result<(String, Option<TlsCertificates>), SinkError> {
    let Some(tls) = &cfg.tls else {
        return Ok((cfg.url.clone(), None));
    };
    // The client builds its rustls configuration with the process's default provider; ring is
    // the one the Postgres connections use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            SinkError::with_source(
                SinkErrorKind::Config,
                format!("sinks.redis.tls.{field}: cannot read {}", path.display()),
                err,
            )
        })
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("cert_file", cert)?,
            client_key: read("key_file", key)?,
        }),
        _ => None,
    };
    let mut url = cfg.url.clone();
    if tls.insecure_skip_verify {
        warn!(
            "sinks.redis.tls.insecure_skip_verify is on: the Redis server's certificate is not \
             checked, so anyone between walbust and Redis can read and change invalidations"
        );
        if !url.contains('#') {
            url.push_str("#insecure");
        }
    }
    Ok((
        url,
        Some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    ))
}

/// A connection to the Redis that a [`RedisSinkConfig`] names, one server or a cluster, made the
/// way [`RedisSink`] makes its own: against a cluster every command is routed to the primary of
/// its key's slot (a plain connection to one node would get `MOVED`). For data walbust keeps
/// next to the caches it protects. Reconnects by itself; cheap to clone; use it like any
/// asynchronous `redis` connection (`query_async`).
#[derive(Clone)]
pub struct RedisConnection(Connection);

impl RedisConnection {
    /// Validates `cfg` and connects.
    pub async fn connect(cfg: &RedisSinkConfig) -> Result<Self, SinkError> {
        validate(cfg)?;
        Ok(Self(Connection::open(cfg).await?))
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Connection::Cluster(_))
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

fn validate(cfg: &RedisSinkConfig) -> Result<(), SinkError> {
    cfg.validate()
        .map_err(|errors| SinkError::new(SinkErrorKind::Config, crate::ConfigError::join(&errors)))
}

/// What the tag purges of a batch removed, for metrics.
#[derive(Debug, Default, Clone, Copy)]
struct TagsPurged {
    /// Cached keys that were members of purged tag sets (`set` strategy).
    members: u64,
    /// Tag keys that held something other than a set, removed ([`request::TAG_SET_PURGE_SCRIPT`]).
    wrong_type: u64,
}

impl TagsPurged {
    /// Adds one purge script's reply, `(members, wrong_type)`.
    fn add(&mut self, (members, wrong_type): (u64, u64)) {
        self.members += members;
        self.wrong_type += wrong_type;
    }
}

/// The Redis sink. Cheap to share: the connection is multiplexed and reconnects by itself after
/// a failure (the failing publish returns a retriable error and the pipeline tries again).
///
/// With [`RedisSinkConfig::cluster`], commands are grouped by hash slot
/// ([`request::slot_chunks`]) and sent concurrently, each routed to its slot's primary; pattern
/// `SCAN`s walk every primary, in parallel. A `SCAN` walk guarantees to see the keys that stay on
/// its node for the whole walk: a key migrating between nodes during a resharding can be missed
/// by a pattern purge.
///
/// Pattern walks run beside the key path (module `walk`): a batch's keys and tags are applied
/// without waiting for them, several pending patterns share one walk, and
/// [`Sink::publish_staged`] hands the pipeline the walk still running, so later batches' keys do
/// not wait for it either.
pub struct RedisSink {
    cfg: RedisSinkConfig,
    conn: Connection,
    purge_script: Script,
    /// The replication slot, which names the watermark key ([`Self::with_slot`]).
    slot: Option<String>,
    /// Runs the pattern walks, merged, beside the key path.
    walker: Walker,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// `WAIT replicas timeout` on `conn`: every write this connection sent so far (the batch's
/// included) reached `replicas` replicas, on every primary of a cluster (the client sends it to
/// each and keeps the smallest answer); fewer is a retriable failure of the batch.
async fn wait_for_replicas(
    conn: &Connection,
    replicas: u32,
    timeout_ms: u64,
) -> Result<(), SinkError> {
    let reached: i64 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(timeout_ms)
        .query_async(&mut conn.clone())
        .await
        .map_err(|err| redis_error("redis: WAIT for replicas failed", err))?;
    if reached < i64::from(replicas) {
        counter!(m::REDIS_WAIT_SHORTFALLS).increment(1);
        return Err(SinkError::new(
            SinkErrorKind::Unavailable,
            format!(
                "redis: WAIT reached {reached} of {replicas} replicas within {timeout_ms} ms (sinks.redis.wait_replicas); the batch is retried"
            ),
        ));
    }
    Ok(())
}

impl RedisSink {
    /// Validates `cfg` and connects. Fails if Redis cannot be reached now; once connected, the
    /// connection is re-established on its own after failures.
    pub async fn connect(cfg: RedisSinkConfig) -> Result<Self, SinkError> {
        validate(&cfg)?;
        let conn = Connection::open(&cfg).await?;
        Ok(Self {
            walker: Walker::new(conn.clone(), cfg.scan_count, cfg.unlink_chunk),
            cfg,
            conn,
            purge_script: request::tag_set_purge_script(),
            slot: None,
        })
    }

    /// Names the replication slot whose confirmed position the watermark
    /// (`walbust:lsn:<slot>`, [`RedisSinkConfig::watermark`]) records. Without it no watermark
    /// is written.
    pub fn with_slot(mut self, slot: impl Into<String>) -> Self {
        self.slot = Some(slot.into());
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisSinkConfig {
        &self.cfg
    }

    /// Loads the functions library `walbust` (`FUNCTION LOAD REPLACE`, on every primary of a
    /// cluster) and calls it once, when [`RedisSinkConfig::functions`] asks for it; does
    /// nothing otherwise. A Redis without Functions (before 7) is a configuration error, a
    /// refused permission a [`SinkErrorKind::Denied`] naming the ACL rule; both say that
    /// leases (or the watermark) need them.
    pub async fn load_functions(&self) -> Result<(), SinkError> {
        if !self.cfg.functions() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let loaded: RedisResult<Value> = functions::load(&self.cfg.library())
            .query_async(&mut conn)
            .await;
        loaded.map_err(|err| functions_error("FUNCTION LOAD", err))?;
        self.test_functions().await
    }

    /// Calls `walbust_caught_up` (changes nothing): the library is loaded and the user may
    /// call it; against a cluster, on every primary (a primary restarted without persistence
    /// comes back without it).
    async fn test_functions(&self) -> Result<(), SinkError> {
        let slot = self.slot.as_deref().unwrap_or("check");
        let called: RedisResult<Value> = functions::self_test(slot)
            .query_async(&mut self.conn.clone())
            .await;
        called.map_err(|err| functions_error("FCALL", err))?;
        let Connection::Cluster(conn) = &self.conn else {
            return Ok(());
        };
        for target in walk::scan_targets(&self.conn).await? {
            let ScanTarget::Primary(primary) = target else {
                continue;
            };
            let route = Route::new(primary.slot, SlotAddr::Master);
            // A routed command answers a server error as a value.
            conn.clone()
                .route_command(
                    functions::node_test(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
                .and_then(Value::extract_error)
                .map_err(|err| functions_error("FCALL", err))?;
        }
        Ok(())
    }

    /// The command that raises the watermark to `batch`'s end LSN, when the watermark is on
    /// and the batch completes transactions (a partial batch of a large one does not).
    fn watermark(&self, batch: &Batch) -> Option<Cmd> {
        let (true, Some(slot), Some(end_lsn)) = (self.cfg.watermark, &self.slot, batch.end_lsn)
        else {
            return None;
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(functions::WATERMARK_SCRIPT)
            .arg(1)
            .arg(functions::watermark_key(slot))
            .arg(walbust_pgoutput::format_lsn(end_lsn));
        Some(cmd)
    }

    /// The sorted set of this sink's schedule.
    pub fn schedule_key(&self) -> String {
        schedule::schedule_key(self.slot.as_deref())
    }

    /// Adds `ZADD`s of the batch's scheduled entries to `pipe`; returns how many. An entry due
    /// no later than its commit is left out (the commit's own invalidation came after it), one
    /// due beyond `schedule_horizon_days` from now is refused and counted.
    fn schedule_adds(&self, batch: &Batch, pipe: &mut redis::Pipeline) -> u64 {
        if batch.schedule.is_empty() {
            return 0;
        }
        let now = walbust_pgoutput::time::now_micros();
        let horizon = i64::from(self.cfg.schedule_horizon_days) * MICROS_PER_DAY;
        let key = self.schedule_key();
        let (mut added, mut refused) = (0, 0);
        for entry in &batch.schedule {
            let due = entry.due.due_unix_micros;
            if due <= pg_to_unix_micros(entry.commit_time_micros) {
                continue;
            }
            if due > pg_to_unix_micros(now).saturating_add(horizon) {
                refused += 1;
                continue;
            }
            let (member, score) = schedule::encode(entry);
            pipe.cmd("ZADD").arg(&key).arg(score).arg(member).ignore();
            added += 1;
        }
        if refused > 0 {
            counter!(m::SCHEDULED_REFUSED, m::LABEL_REASON => "horizon").increment(refused);
            warn!(
                refused,
                horizon_days = self.cfg.schedule_horizon_days,
                "redis: scheduled invalidations due beyond the horizon were not stored"
            );
        }
        added
    }

    /// Up to `limit` schedule entries due at `now_ms` (ms since the Unix epoch) or earlier,
    /// as stored (members), oldest first.
    pub async fn schedule_due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, SinkError> {
        redis::cmd("ZRANGE")
            .arg(self.schedule_key())
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|err| redis_error("redis: reading the schedule failed", err))
    }

    /// The number of entries in the schedule.
    pub async fn schedule_len(&self) -> Result<u64, SinkError> {
        redis::cmd("ZCARD")
            .arg(self.schedule_key())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|err| redis_error("redis: reading the schedule failed", err))
    }

    /// Removes applied (or unreadable) entries from the schedule.
    pub async fn schedule_remove(&self, members: &[String]) -> Result<(), SinkError> {
        if members.is_empty() {
            return Ok(());
        }
        redis::cmd("ZREM")
            .arg(self.schedule_key())
            .arg(members)
            .query_async::<u64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(|err| redis_error("redis: removing applied schedule entries failed", err))
    }

    /// Applies `batch`: keys, tags and versioned patterns at once; walked patterns go to the
    /// [`Walker`]. Returns what is left running (the walk, then the batch's last command) when
    /// the walk may finish after this returns: see [`RedisSinkConfig::pattern_strategy`] and
    /// the watermark below.
    async fn apply(&self, batch: &Batch) -> Result<Option<Settling>, SinkError> {
        let (versioned, walked) = self.split_patterns(&batch.patterns);
        // Started first, so the walk runs while keys and tags are applied; they never wait
        // for it.
        let walk = (!walked.is_empty()).then(|| self.walker.submit(&walked));
        // The watermark goes out with the batch's last command, after every invalidation: at
        // the end of the UNLINK pipeline when that is all the batch sends (one connection
        // keeps the order), else with the PUBLISH or alone once the rest is confirmed.
        let mut watermark = self.watermark(batch);
        let only_keys = batch.tags.is_empty()
            && batch.patterns.is_empty()
            && !batch.keys.is_empty()
            && self.cfg.publish_channel.is_none()
            && matches!(self.conn, Connection::Single(_));
        let with_keys = if only_keys { watermark.take() } else { None };
        let (keys_removed, tags_purged, ()) = futures::try_join!(
            self.unlink_keys(&batch.keys, with_keys),
            self.purge_tags(&batch.tags),
            self.bump_pattern_versions(&versioned),
        )?;
        counter!(m::REDIS_KEYS_REMOVED).increment(keys_removed);
        counter!(m::REDIS_TAG_MEMBERS_REMOVED).increment(tags_purged.members);
        if tags_purged.wrong_type > 0 {
            counter!(m::REDIS_WRONGTYPE_KEYS).increment(tags_purged.wrong_type);
            // A count only: tag keys are built from row values.
            warn!(
                wrong_type_tag_keys = tags_purged.wrong_type,
                "redis: removed tag keys that did not hold a set (written by something other \
                 than the tag registration?)"
            );
        }
        debug!(
            keys = batch.keys.len(),
            keys_removed,
            tags = batch.tags.len(),
            tag_members_removed = tags_purged.members,
            patterns = batch.patterns.len(),
            walked_patterns = walked.len(),
            "redis batch applied (keys and tags)"
        );
        // The batch's last round trip, after every invalidation, walks included: its
        // scheduled invalidations (stored before the batch counts as confirmed), the refresh
        // stream entry, the PUBLISH and the watermark.
        let mut last = redis::pipe();
        let scheduled = self.schedule_adds(batch, &mut last);
        let refreshed = match (&self.cfg.refresh_stream, batch.refresh.is_empty()) {
            (Some(stream), false) => {
                // After the invalidation: a warmer that reads the entry finds the keys gone.
                last.cmd("XADD")
                    .arg(stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.cfg.refresh_stream_maxlen)
                    .arg("*")
                    .arg("lsn")
                    .arg(walbust_pgoutput::format_lsn(batch.lsn))
                    .arg("keys")
                    .arg(serde_json::to_string(&batch.refresh).unwrap_or_default())
                    .ignore();
                batch.refresh.len() as u64
            }
            _ => 0,
        };
        if let Some(channel) = &self.cfg.publish_channel {
            // After the purge, walks included, so a subscriber that reacts by reading Redis
            // finds the keys gone.
            last.cmd("PUBLISH")
                .arg(channel)
                .arg(record::encode(batch))
                .ignore();
        }
        if let Some(cmd) = watermark {
            last.add_command(cmd).ignore();
        }
        let context = match &self.cfg.publish_channel {
            Some(_) => "redis: PUBLISH failed",
            None => "redis: storing the schedule, the refresh stream or the watermark failed",
        };
        let conn = self.conn.clone();
        let (replicas, wait_ms) = (self.cfg.wait_replicas, self.cfg.wait_timeout_ms);
        let rest = async move {
            if let Some(walk) = walk {
                walk.await?;
            }
            if !last.is_empty() {
                last.exec_async(&mut conn.clone())
                    .await
                    .map_err(|err| redis_error(context, err))?;
            }
            if replicas > 0 {
                wait_for_replicas(&conn, replicas, wait_ms).await?;
            }
            counter!(m::SCHEDULED_ADDED).increment(scheduled);
            counter!(m::REFRESH_KEYS).increment(refreshed);
            Ok(())
        };
        // With the watermark on, a later batch must not raise it while this batch's walk
        // runs: the batch settles here, in its publish, and batches stay in order
        // (`publish.max_in_flight: 1`). Keys and tags above still did not wait for the walk.
        if walked.is_empty() || self.cfg.watermark {
            rest.await?;
            return Ok(None);
        }
        Ok(Some(rest.boxed()))
    }

    /// The batch's patterns bumped as counters ([`PatternStrategy::Version`], a literal prefix
    /// then one `*`), as counter keys, and those that need a walk.
    fn split_patterns(&self, patterns: &[String]) -> (Vec<String>, Vec<String>) {
        if self.cfg.pattern_strategy == PatternStrategy::Walk {
            return (Vec::new(), patterns.to_vec());
        }
        let prefix = self.cfg.pattern_prefix();
        let mut versioned = Vec::new();
        let mut walked = Vec::new();
        for pattern in patterns {
            match Glob::new(pattern).prefix_star() {
                Some(literal) => versioned.push(pattern_counter_key(prefix, &literal)),
                // `walbust check` refuses rules whose patterns lack a literal prefix under this
                // strategy; one that arrives anyway (a TRUNCATE's pattern, an older rule) is
                // still purged, by a walk, rather than lost.
                None => walked.push(pattern.clone()),
            }
        }
        (versioned, walked)
    }

    /// `INCR`s the counters of versioned patterns.
    async fn bump_pattern_versions(&self, counters: &[String]) -> Result<(), SinkError> {
        self.incr_all(counters)
            .await
            .map_err(|err| redis_error("redis: INCR of pattern versions failed", err))
    }

    /// `INCR`s every key: one pipeline, or against a cluster one per slot group.
    async fn incr_all(&self, keys: &[String]) -> RedisResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Connection::Single(_) = self.conn {
            return request::incr_pipeline(keys)
                .exec_async(&mut self.conn.clone())
                .await;
        }
        let requests = request::slot_chunks(keys, self.cfg.unlink_chunk)
            .into_iter()
            .map(|group| {
                let pipe = request::incr_pipeline(group);
                let mut conn = self.conn.clone();
                async move { pipe.exec_async(&mut conn).await }
            })
            .collect();
        concurrently(requests).await.map(|_: Vec<()>| ())
    }

    /// `UNLINK`s the keys; returns how many existed. `tail` (single Redis only) rides at the
    /// end of the same pipeline.
    async fn unlink_keys(&self, keys: &[String], tail: Option<Cmd>) -> Result<u64, SinkError> {
        unlink_on(&self.conn, self.cfg.unlink_chunk, keys, tail).await
    }

    /// Purges tags by the configured strategy.
    async fn purge_tags(&self, tags: &[String]) -> Result<TagsPurged, SinkError> {
        if tags.is_empty() {
            return Ok(TagsPurged::default());
        }
        let prefix = self.cfg.tag_prefix();
        let keys: Vec<String> = tags.iter().map(|t| request::tag_key(prefix, t)).collect();
        if self.cfg.tag_strategy == TagStrategy::Version {
            self.incr_all(&keys)
                .await
                .map_err(|err| redis_error("redis: INCR of tag versions failed", err))?;
            return Ok(TagsPurged::default());
        }
        // Groups of sets per script call: against a cluster each within one slot (a script's
        // keys must share a slot), sent concurrently to the slots' primaries.
        let groups: Vec<Vec<&String>> = match self.conn {
            Connection::Single(_) => request::key_chunks(&keys, self.cfg.unlink_chunk)
                .map(|group| group.iter().collect())
                .collect(),
            Connection::Cluster(_) => request::slot_chunks(&keys, self.cfg.unlink_chunk),
        };
        let requests = groups
            .into_iter()
            .map(|group| {
                let mut invocation = self.purge_script.prepare_invoke();
                for key in group {
                    invocation.key(key.as_str());
                }
                let mut conn = self.conn.clone();
                // Loads the script again by itself if Redis (a node) lost it (restart,
                // SCRIPT FLUSH).
                async move { invocation.invoke_async::<(u64, u64)>(&mut conn).await }
            })
            .collect();
        let replies = concurrently(requests)
            .await
            .map_err(|err| redis_error("redis: tag purge script failed", err))?;
        let mut purged = TagsPurged::default();
        replies.into_iter().for_each(|reply| purged.add(reply));
        Ok(purged)
    }
}

/// `UNLINK`s the keys on `conn`, `chunk` keys a command; returns how many existed. `tail`
/// (single Redis only) rides at the end of the same pipeline. Against a cluster, one command per
/// slot group, routed to its primary.
pub(super) async fn unlink_on(
    conn: &Connection,
    chunk: usize,
    keys: &[String],
    tail: Option<Cmd>,
) -> Result<u64, SinkError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let context = "redis: UNLINK of keys failed";
    let removed: Vec<u64> = match conn {
        Connection::Single(_) => {
            let mut pipe = request::unlink_pipeline(keys, chunk);
            if let Some(tail) = tail {
                pipe.add_command(tail).ignore();
            }
            pipe.query_async(&mut conn.clone())
                .await
                .map_err(|err| redis_error(context, err))?
        }
        Connection::Cluster(_) => {
            let requests = request::slot_chunks(keys, chunk)
                .into_iter()
                .map(|group| {
                    let (cmd, mut conn) = (request::unlink(&group), conn.clone());
                    async move { cmd.query_async(&mut conn).await }
                })
                .collect();
            concurrently(requests)
                .await
                .map_err(|err| redis_error(context, err))?
        }
    };
    Ok(removed.iter().sum())
}

/// The counter of a versioned pattern's literal prefix: `<pattern_prefix><literal prefix>`
/// (`patver:plist:42:` for `plist:42:*`), which applications put into the keys the pattern
/// covers.
pub fn pattern_counter_key(prefix: &str, literal: &[u8]) -> String {
    format!("{prefix}{}", String::from_utf8_lossy(literal))
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<(), SinkError>> {
        crate::sink::settled(self.publish_staged(batch))
    }

    fn publish_staged<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Option<Settling>, SinkError>> {
        async move {
            match self.apply(batch).await {
                // After a failure the connection manager starts reconnecting,
                // and the next request first gets the outcome of that
                // attempt, which may have been made while Redis was still
                // down. One immediate second try waits on a fresh
                // connection instead, so recovery does not lose a whole
                // backoff interval. Invalidation is idempotent, so repeating
                // the batch is harmless.
                Err(e) if e.kind() == SinkErrorKind::Connect => self.apply(batch).await,
                other => other,
            }
        }
        .boxed()
    }

    fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        self.load_functions().boxed()
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<(), SinkError>> {
        async move {
            let mut conn = self.conn.clone();
            if let Connection::Cluster(_) = conn {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .map_err(|err| redis_error("redis: CLUSTER INFO failed", err))?;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Err(SinkError::new(
                        SinkErrorKind::Unavailable,
                        "redis: the cluster's state is not ok (slots unassigned or a node down)",
                    ));
                }
            }
            // Against a cluster the client sends PING to every primary.
            let reply: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|err| redis_error("redis: PING failed", err))?;
            if reply != "PONG" {
                return Err(SinkError::new(
                    SinkErrorKind::Protocol,
                    "redis: PING did not answer PONG",
                ));
            }
            if self.cfg.functions() && self.test_functions().await.is_err() {
                // Lost (a restart without persistence, FUNCTION FLUSH, a new primary):
                // applications' FCALLs fail until it is back.
                warn!("redis: the functions library walbust is missing; loading it again");
                self.load_functions().await?;
            }
            Ok(())
        }
        .boxed()
    }
}

/// Runs cluster requests (one per slot group), at most [`CLUSTER_CONCURRENCY`] at a time; the
/// replies in completion order, or the first error.
async fn concurrently<T, F>(requests: Vec<F>) -> RedisResult<Vec<T>>
where
    F: std::future::Future<Output = RedisResult<T>>,
{
    futures::stream::iter(requests)
        .buffer_unordered(CLUSTER_CONCURRENCY)
        .try_collect()
        .await
}

/// An error of loading or calling the functions library, saying what needs it.
fn functions_error(command: &str, err: RedisError) -> SinkError {
    let context = format!(
        "redis: {command} of the functions library walbust failed (sinks.redis.leases or \
         sinks.redis.watermark needs Redis Functions: Redis 7 or later, or Valkey)"
    );
    // `ERR unknown command 'FUNCTION'`: a Redis before 7; waiting will not help.
    if err.code() == Some("ERR") && err.to_string().contains("unknown command") {
        return SinkError::with_source(SinkErrorKind::Config, context, err);
    }
    redis_error(&context, err)
}

/// Classifies a client error; the message says what was being done, the source says why. A
/// permission refused by the server's ACL also says which rule would allow it.
pub fn redis_error(context: &str, err: RedisError) -> SinkError {
    let kind = classify(&err);
    match acl_rule(&err) {
        Some(rule) => SinkError::with_source(
            kind,
            format!(
                "{context}: the Redis user lacks a permission walbust needs; allow it with \
                 ACL SETUSER <user> {rule} (README, \"Redis ACL\")"
            ),
            err,
        ),
        None => SinkError::with_source(kind, context, err),
    }
}

/// The ACL rule that would have allowed what `err` (a `NOPERM` reply) refused: `+get` for a
/// command (`+script|load` for a subcommand), `~<pattern>` for a key and `&<channel>` for a
/// channel, which the server does not name, so the placeholder stays for the operator to fill in.
fn acl_rule(err: &RedisError) -> Option<String> {
    if err.kind() != ErrorKind::Server(ServerErrorKind::NoPerm) {
        return None;
    }
    // A failed pipeline carries the refusal among its commands' errors.
    let in_pipeline = err.clone().into_server_errors().and_then(|errors| {
        errors
            .iter()
            .find(|(_, e)| e.kind() == Some(ServerErrorKind::NoPerm))
            .and_then(|(_, e)| e.details().map(str::to_owned))
    });
    let detail = match &in_pipeline {
        Some(detail) => detail.as_str(),
        None => err.detail().unwrap_or_default(),
    };
    // "User walbust has no permissions to run the 'get' command" (Redis 7.2), "this user has
    // no permissions to run the 'get' command" (7.0); likewise for keys and channels.
    if let Some((_, rest)) = detail.split_once("to run the '") {
        if let Some((command, _)) = rest.split_once('\'') {
            return Some(format!("+{}", command.to_ascii_lowercase()));
        }
    }
    if detail.contains(" key") {
        return Some("~<key pattern>".to_owned());
    }
    if detail.contains(" channel") {
        return Some("&<channel>".to_owned());
    }
    Some("(see the server's ACL LOG)".to_owned())
}

fn classify(err: &RedisError) -> SinkErrorKind {
    if err.is_timeout() {
        return SinkErrorKind::Timeout;
    }
    // A certificate refused on either side stays refused until someone changes it. The client
    // hands the TLS failure over as I/O text only.
    let text = walbust_flow::Chain(err).to_string();
    if ["invalid peer certificate", "received fatal alert"]
        .iter()
        .any(|t| text.contains(t))
    {
        return SinkErrorKind::Denied;
    }
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        return SinkErrorKind::Connect;
    }
    match err.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            SinkErrorKind::Denied
        }
        ErrorKind::InvalidClientConfig => SinkErrorKind::Config,
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
        // A script running too long (`BUSY`) passes. So does `OOM` (used memory above
        // `maxmemory` under a `noeviction` policy): memory frees up as keys expire or are
        // deleted, or when an operator raises the limit, so it is an outage to wait out, not a
        // reason to stop invalidating. Other unknown codes (`WRONGTYPE`...) do not pass.
        ErrorKind::Extension if passing_codes(err) => SinkErrorKind::Unavailable,
        ErrorKind::Extension => SinkErrorKind::Rejected,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => SinkErrorKind::Protocol,
        // Anything else the client itself would retry is a connection problem.
        _ => match err.retry_method() {
            redis::RetryMethod::NoRetry => SinkErrorKind::Protocol,
            _ => SinkErrorKind::Connect,
        },
    }
}

/// Server error codes, not known to the client, that mean "not now" rather than "never".
const PASSING_CODES: [&str; 2] = ["BUSY", "OOM"];

/// Whether every server error in `err` has one of [`PASSING_CODES`]. A failed pipeline carries
/// one error per failed command (and no single code); it passes only if all of them do, since
/// retrying cannot fix the others.
fn passing_codes(err: &RedisError) -> bool {
    match err.clone().into_server_errors() {
        Some(errors) => {
            !errors.is_empty()
                && errors
                    .iter()
                    .all(|(_, error)| PASSING_CODES.contains(&error.code()))
        }
        None => err.code().is_some_and(|code| PASSING_CODES.contains(&code)),
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
        assert_eq!(classify(&auth), SinkErrorKind::Denied);
        let parse = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(classify(&parse), SinkErrorKind::Protocol);
        let oom = redis::make_extension_error("OOM".into(), Some("command not allowed".into()));
        assert_eq!(classify(&oom), SinkErrorKind::Unavailable);
        let wrong_type = redis::make_extension_error("WRONGTYPE".into(), None);
        assert_eq!(classify(&wrong_type), SinkErrorKind::Rejected);
    }

    #[test]
    fn a_refused_permission_names_the_rule_that_allows_it() {
        let noperm = |detail: &str| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::NoPerm),
                "",
                detail.to_owned(),
            ))
        };
        let command = noperm("User walbust has no permissions to run the 'unlink' command");
        assert_eq!(classify(&command), SinkErrorKind::Denied);
        assert_eq!(acl_rule(&command).as_deref(), Some("+unlink"));
        let sub = noperm("User walbust has no permissions to run the 'script|load' command");
        assert_eq!(acl_rule(&sub).as_deref(), Some("+script|load"));
        let key = noperm("No permissions to access a key");
        assert_eq!(acl_rule(&key).as_deref(), Some("~<key pattern>"));
        let keys =
            noperm("this user has no permissions to access one of the keys used as arguments");
        assert_eq!(acl_rule(&keys).as_deref(), Some("~<key pattern>"));
        let message = redis_error("redis: UNLINK of keys failed", command).to_string();
        assert!(message.contains("ACL SETUSER <user> +unlink"), "{message}");
        let other = RedisError::from((ErrorKind::Io, "reset"));
        assert_eq!(acl_rule(&other), None);
    }
}
