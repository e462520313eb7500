//! Shared by the workspace's end-to-end tests: throwaway services, a
//! walbust process under test, and polling helpers.
//!
//! Every test runs the real `walbust` binary against real servers started
//! by `testkit`, the way an operator would run it.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TOPIC: &str = "invalidations";

/// Logged by the pipeline each time a sink fails a batch it will retry.
pub const RETRYING: &str = "publish failed; retrying the batch";

/// Postgres, Redis and Kafka for one test, plus a scratch folder.
/// Field order is drop order: the Kafka mock cluster goes last.
pub struct Services {
    pub pg: walbust_testkit::Postgres,
    pub redis: walbust_testkit::Redis,
    pub dir: tempfile::TempDir,
    pub kafka: walbust_testkit::Kafka,
}

impl Services {
    pub fn start() -> Services {
        Services::start_with(
            walbust_testkit::Postgres::start().expect("start Postgres"),
            walbust_testkit::Kafka::start().expect("start Kafka"),
        )
    }

    /// Services around a Postgres and a Kafka the test started its own way;
    /// starts Redis and creates the topic.
    pub fn start_with(pg: walbust_testkit::Postgres, kafka: walbust_testkit::Kafka) -> Services {
        let redis = walbust_testkit::Redis::start().expect("start Redis");
        kafka.create_topic(TOPIC, 1).expect("create topic");
        Services {
            pg,
            redis,
            kafka,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes the rules file and a configuration naming every service.
    pub fn write_config(&self, rules: &str, kafka: bool) -> PathBuf {
        self.write_config_with(rules, kafka, "")
    }

    /// Like [`write_config`](Self::write_config) with extra top-level YAML
    /// appended (for example a `publish:` section).
    pub fn write_config_with(&self, rules: &str, kafka: bool, extra: &str) -> PathBuf {
        self.write_config_sinks(rules, Some(""), kafka.then_some(""), extra)
    }

    /// Writes the rules and a configuration. `redis` and `kafka` are extra
    /// lines of their sections (indented by four spaces), `None` leaves the
    /// sink out; `extra` is appended at the top level.
    pub fn write_config_sinks(
        &self,
        rules: &str,
        redis: Option<&str>,
        kafka: Option<&str>,
        extra: &str,
    ) -> PathBuf {
        std::fs::write(self.dir.path().join("rules.yaml"), rules).unwrap();
        let mut cfg = source_yaml(&self.pg.url(), "walbust", "", "rules.yaml");
        cfg.push_str("sinks:\n");
        if let Some(lines) = redis {
            cfg.push_str(&format!(
                "  redis:\n    url: \"{}\"\n{lines}",
                self.redis.url()
            ));
        }
        if let Some(lines) = kafka {
            cfg.push_str(&format!(
                "  kafka:\n    brokers: \"{}\"\n    topic: {TOPIC}\n    properties:\n      reconnect.backoff.max.ms: \"500\"\n{lines}",
                self.kafka.bootstrap_servers()
            ));
        }
        cfg.push_str(extra);
        let path = self.dir.path().join("walbust.yaml");
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

/// The `source:` section every test configuration starts with (slot `slot`,
/// created by walbust, status updates every 200 ms, `source_extra` lines
/// appended) and the `rules:` line.
pub fn source_yaml(url: &str, slot: &str, source_extra: &str, rules_file: &str) -> String {
    format!(
        "source:\n  url: \"{url}\"\n  publication: walbust\n  slot: {slot}\n  create: true\n  status_interval_ms: 200\n{source_extra}rules: {rules_file}\n"
    )
}

/// A `walbust run` process. Killed on drop if still running.
pub struct Walbust {
    child: Child,
    log: PathBuf,
}

impl Walbust {
    pub fn start(config: &Path) -> Walbust {
        Walbust::start_with_env(config, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables (the
    /// `${VAR}`s of a configuration).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Walbust {
        let log = config.with_extension(format!("{}.log", unique()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("WALBUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn walbust");
        Walbust { child, log }
    }

    /// Its log so far, without terminal colour codes, so fields can be
    /// searched (`sink="redis"`).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        plain(&s)
    }

    /// Waits until at least `count` lines of the log satisfy `matches`
    /// (`what` names them in the failure), and returns the log. Fails if
    /// walbust exits first.
    pub async fn wait_log_lines(
        &mut self,
        count: usize,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if log.lines().filter(|l| matches(l)).count() >= count {
                return log;
            }
            assert!(self.is_running(), "walbust exited; log:\n{log}");
            assert!(
                Instant::now() < deadline,
                "fewer than {count} {what} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the pipeline logged `count` failed publishes to `sink`
    /// (`redis`, `kafka`) that it will retry.
    pub async fn wait_retries(&mut self, sink: &str, count: usize) {
        let field = format!("sink=\"{sink}\"");
        self.wait_log_lines(count, &format!("{sink} retries"), |l| {
            l.contains(RETRYING) && l.contains(&field)
        })
        .await;
    }

    /// Waits until the log contains `needle`, and returns the log.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        self.wait_log_lines(1, &format!("{needle:?}"), |l| l.contains(needle))
            .await
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("walbust did not exit in {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Walbust {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `log` without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte(@..~)
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs `walbust run --config config` to its end, for starts that are
/// refused; stderr holds the reason.
pub async fn run_to_exit(config: &Path) -> std::process::Output {
    command_to_exit("run", config).await
}

/// Runs `walbust <command> --config config` to its end.
pub async fn command_to_exit(command: &'static str, config: &Path) -> std::process::Output {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args([command, "--config"])
            .arg(&config)
            .env("WALBUST_LOG", "warn")
            .output()
            .expect("run walbust")
    })
    .await
    .unwrap()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether slot `slot` exists on the server (active or not).
pub async fn slot_exists(db: &tokio_postgres::Client, slot: &str) -> bool {
    db.query_opt(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .is_some()
}

pub async fn confirmed_flush_lsn(db: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = db
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    let text: Option<String> = row.get(0);
    text.and_then(|t| walbust_pgoutput::parse_lsn(&t))
}

pub async fn current_wal_lsn(db: &tokio_postgres::Client) -> u64 {
    walbust_testkit::current_wal_lsn(db).await.unwrap()
}

/// Runs `sql` in one transaction; returns its xid and the WAL positions
/// before and after its commit.
pub async fn commit(db: &mut tokio_postgres::Client, sql: &str) -> (u32, u64, u64) {
    let before = current_wal_lsn(db).await;
    let xid = walbust_testkit::commit_transaction(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    (xid, before, current_wal_lsn(db).await)
}

/// The walsender serving walbust on the tests' slot, `walbust`.
pub async fn walsender_pid(db: &tokio_postgres::Client) -> Option<i32> {
    walbust_testkit::walsender_pid(db, "walbust")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Waits until the server receives a standby status update from walbust
/// sent after this call: whatever walbust had confirmed by now has been
/// reported to the server.
pub async fn wait_status_update(db: &tokio_postgres::Client) {
    let now: std::time::SystemTime = db
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        Duration::from_secs(30),
        "a standby status update from walbust",
        || async {
            let row = db
                .query_opt(
                    "SELECT reply_time FROM pg_stat_replication WHERE application_name = 'walbust'",
                    &[],
                )
                .await
                .unwrap()?;
            let reply: Option<std::time::SystemTime> = row.get(0);
            reply.filter(|r| *r > now)
        },
    )
    .await;
}

/// Waits until walbust holds the slot (streaming started).
pub async fn wait_streaming(db: &tokio_postgres::Client, w: &mut Walbust) {
    wait_slot_active(db, w, "walbust").await;
}

pub async fn set_keys(redis: &mut redis::aio::MultiplexedConnection, keys: &[&str]) {
    for k in keys {
        let _: () = redis::cmd("SET")
            .arg(*k)
            .arg("cached")
            .query_async(redis)
            .await
            .unwrap();
    }
}

pub async fn exists(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap();
    n == 1
}

/// Waits until none of `gone` exists, then checks every `kept` still does.
pub async fn assert_invalidated(
    redis: &mut redis::aio::MultiplexedConnection,
    gone: &[&str],
    kept: &[&str],
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut remaining = Vec::new();
        for k in gone {
            if exists(redis, k).await {
                remaining.push(*k);
            }
        }
        if remaining.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: keys not invalidated: {remaining:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in kept {
        assert!(
            exists(redis, k).await,
            "{what}: unrelated key {k} was removed"
        );
    }
}

/// Reads every record of the topic, as JSON.
pub fn kafka_records(kafka: &walbust_testkit::Kafka, min: usize) -> Vec<serde_json::Value> {
    kafka
        .consume_all(TOPIC, min, Duration::from_secs(20))
        .expect("consume")
        .into_iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("record is JSON"))
        .collect()
}

/// Whether walbust's publication publishes partition changes as their
/// root table (`publish_via_partition_root`).
pub async fn publishes_via_root(db: &tokio_postgres::Client) -> bool {
    db.query_one(
        "SELECT pubviaroot FROM pg_publication WHERE pubname = 'walbust'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether a Kafka record lists transaction `xid`.
pub fn carries(record: &serde_json::Value, xid: u32) -> bool {
    record["xids"]
        .as_array()
        .is_some_and(|x| x.iter().any(|v| v.as_u64() == Some(u64::from(xid))))
}

/// A JSON array of strings (a record's `keys`, `tags` or `patterns`).
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// Waits until the slot's confirmed position is past `lsn`: a transaction
/// that began after `lsn` was delivered and acknowledged.
pub async fn wait_confirmed_past(db: &tokio_postgres::Client, lsn: u64) {
    eventually(
        Duration::from_secs(30),
        "confirmed_flush_lsn to advance",
        || async {
            confirmed_flush_lsn(db, "walbust")
                .await
                .filter(|c| *c > lsn)
        },
    )
    .await;
}

/// Waits until the slot's confirmed position reaches `lsn` (`>=`), up to
/// `timeout`; returns how long it took.
pub async fn wait_confirmed_at_least(
    db: &tokio_postgres::Client,
    lsn: u64,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    eventually(
        timeout,
        "confirmed_flush_lsn to reach the last write",
        || async {
            confirmed_flush_lsn(db, "walbust")
                .await
                .filter(|c| *c >= lsn)
        },
    )
    .await;
    started.elapsed()
}

/// For tests that run several walbust processes on the same services: a
/// configuration of its own named `name` (slot, Kafka topic, files), Kafka
/// as the only sink, `source_extra` appended under `source:` (for example
/// `"  binary: true\n"`). Creates the topic.
pub fn write_named_config(svc: &Services, name: &str, rules: &str, source_extra: &str) -> PathBuf {
    svc.kafka.create_topic(name, 1).expect("create topic");
    let rules_file = format!("{name}.rules.yaml");
    std::fs::write(svc.dir.path().join(&rules_file), rules).unwrap();
    let source = source_yaml(&svc.pg.url(), name, source_extra, &rules_file);
    let cfg = format!(
        "{source}sinks:\n  kafka:\n    brokers: \"{}\"\n    topic: {name}\n",
        svc.kafka.bootstrap_servers()
    );
    let path = svc.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Waits until walbust's walsender holds slot `slot` (streaming started;
/// not merely the slot being created).
pub async fn wait_slot_active(db: &tokio_postgres::Client, w: &mut Walbust, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let streaming = walbust_testkit::walsender_pid(db, slot)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        if streaming.is_some() {
            return;
        }
        assert!(
            w.is_running(),
            "walbust exited before streaming; log:\n{}",
            w.log()
        );
        assert!(
            Instant::now() < deadline,
            "walbust did not start streaming; log:\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key, tag and pattern in the records of `topic`, as `key:...`,
/// `tag:...` and `pattern:...`.
pub fn kafka_invalidations(
    kafka: &walbust_testkit::Kafka,
    topic: &str,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for record in kafka
        .consume_all(topic, 1, Duration::from_secs(20))
        .expect("consume")
    {
        let json: serde_json::Value =
            serde_json::from_slice(&record.payload).expect("record is JSON");
        for (field, label) in [("keys", "key"), ("tags", "tag"), ("patterns", "pattern")] {
            for s in json[field].as_array().into_iter().flatten() {
                out.insert(format!("{label}:{}", s.as_str().expect("a string")));
            }
        }
    }
    out
}

/// The `/metrics` page of walbust's endpoint on `port`, or `None` while
/// nothing listens there yet (walbust still starting, or restarting).
pub fn try_scrape_metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "metrics: {response}"
    );
    Some(response)
}

/// The sum of the samples of `series` in a scrape; `None` when it lists
/// none. `series` is a metric name (every labelled sample counts), a sample
/// written out with its labels (`name{sink="redis"}`), or such a sample cut
/// short after a label (`name{sink="redis"`).
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(series) else {
            continue;
        };
        if !rest.starts_with([' ', '{', ',', '}']) {
            continue; // another metric whose name starts with `series`
        }
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unreadable metric line {line:?}"));
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// The sum of the samples of `series` (as [`metric_value`]) on walbust's
/// endpoint on `port`; 0 while it lists none or nothing listens yet.
pub fn metric(port: u16, series: &str) -> f64 {
    try_scrape_metrics(port)
        .and_then(|page| metric_value(&page, series))
        .unwrap_or(0.0)
}

/// GET /metrics of walbust's Prometheus endpoint over plain HTTP/1.0.
pub fn scrape_metrics(port: u16) -> String {
    try_scrape_metrics(port).unwrap_or_else(|| panic!("no metrics endpoint on port {port}"))
}

/// A configuration of every service of `svc` (Redis only as sink) with
/// `rules`, serving metrics and health on a port of its own, which it
/// returns.
pub fn config_with_metrics(svc: &Services, rules: &str) -> (PathBuf, u16) {
    config_with_metrics_sinks(svc, rules, false)
}

/// Like [`config_with_metrics`], with Kafka as a second sink when `kafka`.
pub fn config_with_metrics_sinks(svc: &Services, rules: &str, kafka: bool) -> (PathBuf, u16) {
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(
        rules,
        kafka,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    (config, port)
}

/// A second instance's configuration: `config` (written by
/// [`config_with_metrics`] with metrics on `port`) with metrics on a port
/// of its own, which it returns.
pub fn second_instance_config(config: &Path, port: u16) -> (PathBuf, u16) {
    let second_port = walbust_testkit::free_port();
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace(&format!(":{port}"), &format!(":{second_port}"));
    let second = config.with_file_name("standby.yaml");
    std::fs::write(&second, text).unwrap();
    (second, second_port)
}

/// Sets `source.on_gap: purge` in a configuration written with
/// `source.create: true`.
pub fn purge_on_gap(config: &Path) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("  create: true\n", "  create: true\n  on_gap: purge\n");
    std::fs::write(config, text).unwrap();
}

/// Settings under which [`lose_slot`] can make the server drop WAL a slot
/// still needs.
pub const LOSABLE_SLOTS: [(&str, &str); 3] = [
    ("max_slot_wal_keep_size", "1MB"),
    ("max_wal_size", "32MB"),
    ("min_wal_size", "32MB"),
];

/// Writes WAL segments and checkpoints until the server drops WAL that
/// slot `slot` (not streamed meanwhile) still needs: `wal_status = lost`.
/// Needs a server started with [`LOSABLE_SLOTS`].
pub async fn lose_slot(db: &tokio_postgres::Client, slot: &str) {
    let mut status = String::new();
    for _ in 0..10 {
        for sql in [
            "CREATE TABLE IF NOT EXISTS filler (x text)",
            "INSERT INTO filler SELECT md5(g::text) || repeat('x', 1000) FROM generate_series(1, 5000) g",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            db.batch_execute(sql).await.unwrap();
        }
        status = db
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_default();
        if status == "lost" {
            return;
        }
    }
    panic!("could not make slot {slot} lose WAL (wal_status {status:?})");
}

/// A file of deploy/.
pub fn deploy_file(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// A file's text; panics with its path.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `host ...` lines the setup script's comment asks for, on loopback.
pub fn documented_hba_lines(setup: &str) -> Vec<String> {
    let lines: Vec<String> = setup
        .lines()
        .filter_map(|l| l.strip_prefix("--"))
        .map(str::trim)
        .filter(|l| l.starts_with("host "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(fields.len(), 5, "pg_hba line {l:?}");
            format!(
                "{} {} {} 127.0.0.1/32 {}",
                fields[0], fields[1], fields[2], fields[4]
            )
        })
        .collect();
    assert!(!lines.is_empty(), "the setup script names no pg_hba line");
    lines
}

/// Replaces pg_hba.conf with the superuser's lines and the `host ...`
/// lines the setup script `setup` documents (each for `database` and
/// `role`), nothing else, and reloads it.
pub async fn only_documented_hba(
    pg: &walbust_testkit::Postgres,
    admin: &tokio_postgres::Client,
    setup: &str,
    database: &str,
    role: &str,
) {
    let mut hba = format!(
        "local all all trust\nhost all {} 127.0.0.1/32 scram-sha-256\n",
        pg.user()
    );
    for line in documented_hba_lines(setup) {
        assert!(line.contains(&format!(" {database} {role} ")), "{line}");
        hba.push_str(&line);
        hba.push('\n');
    }
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).unwrap();
    let reloaded: bool = admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reloaded);
}

/// deploy/walbust.yaml pointed at the test's services: the files mounted
/// by deploy/compose.yaml replaced by the files it mounts, the hosts by the
/// test's.
pub fn deploy_config(svc: &Services) -> PathBuf {
    let mut config = read_text(&deploy_file("walbust.yaml"));
    let compose = read_text(&deploy_file("compose.yaml"));
    let mut mounted = 0;
    for line in compose.lines().map(str::trim) {
        let Some(volume) = line.strip_prefix("- ") else {
            continue;
        };
        let parts: Vec<&str> = volume.split(':').collect();
        if parts.len() < 2 || !parts[1].starts_with("/etc/walbust/") {
            continue;
        }
        let source = deploy_file(parts[0]);
        assert!(source.exists(), "compose mounts {} (missing)", parts[0]);
        config = config.replace(parts[1], source.to_str().unwrap());
        mounted += 1;
    }
    assert!(
        mounted >= 2,
        "compose.yaml mounts no configuration and rules"
    );
    for (from, to) in [
        ("db.internal:5432", format!("127.0.0.1:{}", svc.pg.port())),
        ("redis://cache.internal:6379/0", svc.redis.url()),
        ("kafka-1.internal:9092", svc.kafka.bootstrap_servers()),
        ("0.0.0.0:9187", "127.0.0.1:0".to_owned()),
    ] {
        assert!(config.contains(from), "deploy/walbust.yaml has no {from}");
        config = config.replace(from, &to);
    }
    let path = svc.dir.path().join("walbust.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A connection as the superuser of `pg` to `database`.
pub async fn connect_db(pg: &walbust_testkit::Postgres, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host(pg.host())
        .port(pg.port())
        .user(pg.user())
        .password(pg.password())
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect as the superuser");
    tokio::spawn(connection);
    client
}

/// The database deploy/postgres-setup.sql is run in.
pub const DBA_DATABASE: &str = "shop";

/// Applies an SQL file to `database` as a DBA would: psql as the
/// superuser, statement by statement, stopping at the first error.
pub async fn psql(pg: &walbust_testkit::Postgres, database: &str, file: &Path) {
    let mut cmd = Command::new(pg.bindir().join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host()])
        .args(["-p", &pg.port().to_string(), "-U", pg.user()])
        .args(["-d", database, "-f"])
        .arg(file)
        .env("PGPASSWORD", pg.password());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run psql"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Postgres (superuser `postgres`), Redis and Kafka for deploy/walbust.yaml,
/// with database `shop` holding deploy/shop-schema.sql and nothing else:
/// no role, publication, guard or slot for walbust.
pub async fn fresh_shop() -> (Services, tokio_postgres::Client) {
    let pg = walbust_testkit::Postgres::start_as("postgres", &[]).expect("start Postgres");
    let svc = Services::start_with(pg, walbust_testkit::Kafka::start().expect("start Kafka"));
    svc.kafka.create_topic("cache-invalidations", 1).unwrap();
    let admin = svc.pg.connect().await.unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DBA_DATABASE}"))
        .await
        .unwrap();
    psql(&svc.pg, DBA_DATABASE, &deploy_file("shop-schema.sql")).await;
    let shop = connect_db(&svc.pg, DBA_DATABASE).await;
    (svc, shop)
}

/// A Postgres set up the way the README tells a DBA to: scram-sha-256
/// over TCP, the superuser `postgres`, and deploy/shop-schema.sql and
/// deploy/postgres-setup.sql run in [`DBA_DATABASE`] (the role `walbust`,
/// not a superuser, the publication, the DDL guard, the slot), the role's
/// password replaced by a fresh one, which is returned.
pub async fn dba_postgres() -> (walbust_testkit::Postgres, String) {
    let pg = walbust_testkit::Postgres::start_as("postgres", &[]).expect("start Postgres");
    let admin = pg.connect().await.expect("connect as the superuser");
    admin
        .batch_execute(&format!("CREATE DATABASE {DBA_DATABASE}"))
        .await
        .unwrap();
    psql(&pg, DBA_DATABASE, &deploy_file("shop-schema.sql")).await;
    let password = format!("pw{}", unique());
    let setup = std::fs::read_to_string(deploy_file("postgres-setup.sql"))
        .unwrap()
        .replace("'change-me'", &format!("'{password}'"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), setup).unwrap();
    psql(&pg, DBA_DATABASE, file.path()).await;
    (pg, password)
}

/// The URL of the role `walbust` in [`DBA_DATABASE`] with `password`.
pub fn dba_url(pg: &walbust_testkit::Postgres, password: &str) -> String {
    format!(
        "postgres://walbust:{password}@{}:{}/{DBA_DATABASE}",
        pg.host(),
        pg.port()
    )
}

/// Runs `walbust check --db --config config` to its end.
pub async fn check_db(config: impl AsRef<Path>) -> std::process::Output {
    let config = config.as_ref().to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["check", "--db", "--config"])
            .arg(&config)
            .env("WALBUST_LOG", "warn")
            .output()
            .expect("run walbust check")
    })
    .await
    .unwrap()
}
