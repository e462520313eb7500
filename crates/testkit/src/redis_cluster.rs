//! A throwaway Redis Cluster: cluster-enabled [`Redis`] servers (each with
//! testkit's port choice, directory and clean-up), their hash slots spread
//! by `redis-cli --cluster create`, primaries only.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::process;
use crate::{Error, Redis};

const CLI: &str = "redis-cli";
const CLI_HINT: &str = "install it with 'apt-get install -y redis-server' (it brings redis-tools)";
/// How long every node may take to agree on the slot map.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway Redis Cluster of primaries. Dropping it stops every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3, Redis Cluster's minimum), assigns
    /// the slots, and waits until every node reports `cluster_state:ok`, so
    /// clients can rely on the slot map at once.
    pub fn start(primaries: usize) -> Result<RedisCluster, Error> {
        Self::start_nodes(primaries, Redis::start_with)
    }

    /// Like [`RedisCluster::start`], every node also listening for TLS (see
    /// [`Redis::start_tls`]) and the nodes talking TLS among themselves, so a
    /// TLS client is told the nodes' TLS ports. The certificate must name
    /// `127.0.0.1`, the address the nodes announce.
    pub fn start_tls(
        primaries: usize,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<RedisCluster, Error> {
        Self::start_nodes(primaries, |args| {
            let args = [args, &["--tls-cluster", "yes"]].concat();
            Redis::start_tls(cert, key, ca, &args)
        })
    }

    /// `rediss://localhost:PORT` of the first node, with [`RedisCluster::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.nodes[0].tls_url()
    }

    fn start_nodes(
        primaries: usize,
        start: impl Fn(&[&str]) -> Result<Redis, Error>,
    ) -> Result<RedisCluster, Error> {
        let cli = process::find_on_path(CLI).ok_or_else(|| Error::MissingBinary {
            name: CLI.to_owned(),
            searched: "on PATH".to_owned(),
            hint: CLI_HINT.to_owned(),
        })?;
        let nodes = (0..primaries)
            .map(|_| {
                start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut create = Command::new(cli);
        create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .arg("--cluster-yes");
        process::run(&mut create)?;
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            cluster.wait_agreed(node)?;
        }
        Ok(cluster)
    }

    /// The first node's URL; cluster clients discover the others from it.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// An async cluster connection through the plain ports, routing each
    /// command to its key's node (needs a Tokio runtime).
    pub async fn connection(&self) -> Result<redis::cluster_async::ClusterConnection, Error> {
        let context = || format!("could not connect to the Redis Cluster at {}", self.url());
        let client = redis::cluster::ClusterClient::new(vec![self.url()]).map_err(|source| {
            Error::Redis {
                context: context(),
                source,
            }
        })?;
        client
            .get_async_connection()
            .await
            .map_err(|source| Error::Redis {
                context: context(),
                source,
            })
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// Every key of every node, sorted.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        for node in &self.nodes {
            let found: Vec<String> = query(node, redis::cmd("KEYS").arg("*"), "KEYS *")?;
            keys.extend(found);
        }
        keys.sort();
        Ok(keys)
    }

    /// How many keys each node holds, in node order.
    pub fn sizes(&self) -> Result<Vec<i64>, Error> {
        self.nodes
            .iter()
            .map(|node| query(node, &redis::cmd("DBSIZE"), "DBSIZE"))
            .collect()
    }

    fn wait_agreed(&self, node: &Redis) -> Result<(), Error> {
        let deadline = Instant::now() + AGREE_TIMEOUT;
        loop {
            let info: String =
                query(node, redis::cmd("CLUSTER").arg("INFO"), "CLUSTER INFO").unwrap_or_default();
            if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::StartFailed {
                    server: "Redis",
                    port: node.port(),
                    reason: format!(
                        "the cluster node did not report cluster_state:ok within {} s; CLUSTER INFO: {}",
                        AGREE_TIMEOUT.as_secs(),
                        info.trim()
                    ),
                    log: node.log_file().to_owned(),
                    log_tail: process::log_tail(node.log_file()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One command on a fresh blocking connection to `node`.
fn query<T: redis::FromRedisValue>(node: &Redis, cmd: &redis::Cmd, what: &str) -> Result<T, Error> {
    let context = || format!("{what} on Redis at {}", node.url());
    let mut conn = redis::Client::open(node.url())
        .and_then(|c| c.get_connection())
        .map_err(|source| Error::Redis {
            context: context(),
            source,
        })?;
    cmd.query(&mut conn).map_err(|source| Error::Redis {
        context: context(),
        source,
    })
}
