//! The Node subscriber package (clients/node) against a real walbust: a
//! Node process keeps a local cache in step through the Redis publish
//! channel and through the Kafka topic, loses and declares a gap when Redis
//! restarts under it, resumes without loss when its Kafka consumer is
//! replaced mid-stream, and clears its cache when its group's offsets are
//! moved past what it applied.
//!
//! Each test runs walbust with both sinks and a rule with a key, a tag and
//! a pattern (holding a value with glob characters, escaped by the rule),
//! then one of the scripts of clients/node/test/e2e/, which fills a cache,
//! prints `ready` once subscribed and checks that an update of product 1
//! removes its entries and only those. The scripts need the package
//! installed and built: scripts/test.sh does it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

const CHANNEL: &str = "walbust-node";

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category}"]
    patterns: ["search:{name}:*"]
"#;

/// How long a script may take for one step.
const STEP: Duration = Duration::from_secs(60);

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/node")
}

/// A running e2e script, its stdout read line by line.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Script {
    fn start(script: &str, mode: &str, env: &[(&str, String)]) -> Script {
        let dir = package_dir();
        for (path, what) in [("node_modules", "installed"), ("dist/index.js", "built")] {
            assert!(
                dir.join(path).exists(),
                "clients/node is not {what}: run npm ci in clients/node (scripts/test.sh does), \
                 then npm run build"
            );
        }
        let mut child = Command::new("node")
            .arg(dir.join("test/e2e").join(script))
            .arg(mode)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not run node ({e}): install Node.js (scripts/test.sh does)")
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script {
            child,
            stdin,
            lines,
            name: format!("{script} {mode}"),
        }
    }

    /// Waits for the next line, which must start with `expected`; returns it.
    fn expect(&mut self, expected: &str) -> String {
        let line = tokio::task::block_in_place(|| self.lines.recv_timeout(STEP));
        match line {
            Ok(line) if line.starts_with(expected) => line,
            Ok(line) => panic!("{}: expected {expected:?}, got {line:?}", self.name),
            Err(_) => {
                let status = self.child.try_wait().unwrap();
                panic!(
                    "{}: no {expected:?} line (exit status {status:?}; its errors are above)",
                    self.name
                )
            }
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for `done <json>` and a zero exit; returns the JSON.
    fn finish(mut self) -> serde_json::Value {
        let line = self.expect("done ");
        let status = tokio::task::block_in_place(|| self.child.wait()).unwrap();
        assert!(status.success(), "{}: exit status {status}", self.name);
        serde_json::from_str(&line["done ".len()..]).unwrap()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Services, the products table (product 1 in category 3 named `a*b?`,
/// product 2 in category 4), and walbust streaming with the Redis sink
/// publishing on [`CHANNEL`] and the Kafka sink.
async fn start() -> (Services, tokio_postgres::Client, Walbust) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, category int, name text, price int);
         ALTER TABLE products REPLICA IDENTITY FULL;
         INSERT INTO products VALUES (1, 3, 'a*b?', 10), (2, 4, 'plain', 20);",
    )
    .await
    .unwrap();
    let config = svc.write_config_sinks(
        RULES,
        Some(&format!("    publish_channel: {CHANNEL}\n")),
        Some(""),
        "",
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    (svc, db, walbust)
}

async fn update(db: &tokio_postgres::Client, id: i32) -> u64 {
    let before = current_wal_lsn(db).await;
    db.execute(
        "UPDATE products SET price = price + 1 WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    before
}

fn redis_env(svc: &Services) -> Vec<(&'static str, String)> {
    vec![
        ("WALBUST_REDIS_URL", svc.redis.url()),
        ("WALBUST_CHANNEL", CHANNEL.to_owned()),
    ]
}

fn kafka_env(svc: &Services) -> Vec<(&'static str, String)> {
    vec![
        ("WALBUST_KAFKA_BOOTSTRAP", svc.kafka.bootstrap_servers()),
        ("WALBUST_TOPIC", TOPIC.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_keeps_a_node_cache_in_step() {
    let (svc, db, _walbust) = start().await;
    let mut node = Script::start("redis.mjs", "basic", &redis_env(&svc));
    node.expect("ready");
    update(&db, 1).await;
    let result = node.finish();
    assert_eq!(result["stats"]["refused"], 0, "{result}");
    assert_eq!(result["stats"]["gaps"], 0, "{result}");
    assert!(result["lsn"].is_string(), "watermark set: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_a_node_cache_in_step() {
    let (svc, db, _walbust) = start().await;
    let mut node = Script::start("kafka.mjs", "basic", &kafka_env(&svc));
    node.expect("ready");
    update(&db, 1).await;
    let result = node.finish();
    assert_eq!(result["first"]["stats"]["gaps"], 0, "{result}");
    assert!(
        result["first"]["lsn"].is_string(),
        "watermark set: {result}"
    );
}

/// Redis restarts under the subscriber: PUBLISH messages sent meanwhile
/// are lost, so the Node side clears its cache and counts the gap, then
/// follows the channel again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_a_gap_for_the_node_cache() {
    let (svc, db, _walbust) = start().await;
    let mut node = Script::start("redis.mjs", "gap", &redis_env(&svc));
    node.expect("ready");
    update(&db, 1).await;
    node.expect("restart-redis");
    svc.redis.restart().unwrap();
    node.expect("ready");
    update(&db, 1).await;
    let result = node.finish();
    assert_eq!(result["stats"]["gaps"], 1, "{result}");
    assert_eq!(result["gaps"].as_array().unwrap().len(), 1, "{result}");
}

/// Updates product 1 once the Kafka script is ready, and product 2 once its
/// consumer stopped; tells it to go on once walbust confirmed product 2's
/// record (it is in the topic before the script starts consuming again).
async fn update_while_stopped(node: &mut Script, db: &tokio_postgres::Client) {
    node.expect("ready");
    update(db, 1).await;
    node.expect("stopped");
    let before = update(db, 2).await;
    wait_confirmed_past(db, before).await;
    node.send("continue");
}

/// The Kafka consumer stops after applying product 1's record; product 2
/// changes while no consumer runs; a new consumer in the same group picks
/// up exactly from what was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kafka_consumer_resumes_after_what_it_applied() {
    let (svc, db, _walbust) = start().await;
    let mut node = Script::start("kafka.mjs", "restart", &kafka_env(&svc));
    update_while_stopped(&mut node, &db).await;
    let result = node.finish();
    assert_eq!(result["second"]["stats"]["gaps"], 0, "{result}");
    assert!(
        result["second"]["stats"]["applied"].as_u64().unwrap() >= 1,
        "{result}"
    );
}

/// The group's offsets are moved to the end of the topic while the
/// subscriber is stopped (as an operator's reset or the topic's retention
/// would), skipping product 2's record: when it starts again, the next
/// batch begins past what it applied, so it clears its cache (product 2's
/// stale entry included) and counts the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_offset_reset_clears_the_node_cache() {
    let (svc, db, _walbust) = start().await;
    let mut node = Script::start("kafka.mjs", "reset", &kafka_env(&svc));
    update_while_stopped(&mut node, &db).await;
    node.expect("ready");
    update(&db, 1).await;
    let result = node.finish();
    assert_eq!(result["after"]["stats"]["gaps"], 1, "{result}");
}
