//! The sinks under failure and load, end to end with the real `walbust`
//! binary: a Redis or Kafka outage under a steady write load (nothing lost,
//! nothing acknowledged early, the replication connection kept), coalescing
//! of a hot row, Kafka records that respect the size limit, a tag key of the
//! wrong type, and a Redis Cluster of three primaries.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Every write of the outage tests lands in one row with its own id, so each
/// invalidation can be told apart: key `item:<id>`, and with the `version`
/// tag strategy a counter `tagver:item:<id>` that only walbust increments.
const ITEM_RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
    tags: ["item:{id}"]
"#;

/// Services with the server's `wal_sender_timeout` shortened to 5 s, so an
/// outage of 15 s would kill a replication connection that stopped
/// answering. The Kafka is always the mock cluster (brokers can go down).
fn start_services() -> Services {
    Services::start_with(
        walbust_testkit::Postgres::start_with(&[("wal_sender_timeout", "5s")])
            .expect("start Postgres"),
        walbust_testkit::Kafka::start_mock(1).expect("start the mock Kafka"),
    )
}

/// `calls` of one command in `INFO commandstats` (0 if never called).
async fn command_calls(redis: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',')
                .next()
                .unwrap()
                .parse()
                .expect("calls is a number")
        })
}

/// Keys of every record of the topic, read back by a consumer, and the
/// records themselves.
fn kafka_keys(svc: &Services) -> (BTreeSet<String>, Vec<serde_json::Value>) {
    let records = tokio::task::block_in_place(|| kafka_records(&svc.kafka, 1));
    let keys = records
        .iter()
        .flat_map(|r| r["keys"].as_array().cloned().unwrap_or_default())
        .map(|k| k.as_str().expect("keys are strings").to_string())
        .collect();
    (keys, records)
}

// ---------------------------------------------------------------------------
// Outages under a steady write load.
// ---------------------------------------------------------------------------

/// A line in which walbust's Kafka producer (librdkafka) reports that it
/// lost a broker or all of them.
fn is_kafka_failure(line: &str) -> bool {
    line.contains("librdkafka")
        && (line.contains("BrokerTransportFailure") || line.contains("AllBrokersDown"))
}

/// Where the outage stands, as seen by the writer when it starts a row.
const BEFORE: u8 = 0;
const GOING_DOWN: u8 = 1;
const DOWN: u8 = 2;
const COMING_UP: u8 = 3;
const UP_AGAIN: u8 = 4;

/// One row the writer inserted.
#[derive(Debug, Clone)]
struct Written {
    id: i32,
    /// Outage phase when the row was started (before its key was seeded).
    phase: u8,
    /// Whether `item:<id>` was set in Redis before the insert.
    seeded: bool,
    /// The server's WAL position just before the insert: its commit ends
    /// after it.
    lsn_before: u64,
}

/// Inserts one row about every 50 ms until `stop`, each with a fresh id,
/// setting the row's key in Redis first when Redis answers.
async fn write_steadily(
    db: tokio_postgres::Client,
    redis_url: String,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    first_id: i32,
) -> Vec<Written> {
    let mut written = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id = first_id;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let at = phase.load(Ordering::SeqCst);
        let key = format!("item:{id}");
        let seeded = tokio::time::timeout(Duration::from_secs(1), async {
            let client = redis::Client::open(redis_url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("SET")
                .arg(&key)
                .arg("cached")
                .exec_async(&mut conn)
                .await
                .ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        let lsn_before = current_wal_lsn(&db).await;
        db.execute("INSERT INTO items VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
        written.push(Written {
            id,
            phase: at,
            seeded,
            lsn_before,
        });
        id += 1;
    }
    written
}

/// Redis stopped, the Kafka broker down, or both, for 15 s while a
/// background task inserts about 20 rows a second. Both sinks are on.
///
/// - The slot's confirmed_flush_lsn does not move while a sink is down, and
///   never covers a row written during the outage.
/// - The replication connection survives (`wal_sender_timeout` is 5 s): the
///   same walsender serves walbust before and after, the server never
///   timed it out, walbust never reconnected.
/// - Afterwards walbust catches up: the slot passes the last write, every
///   row's invalidation reached every sink (version counters in Redis for
///   rows written since the outage began, keys seeded after it, and every
///   key in some Kafka record).
async fn outage_under_load(redis_down: bool, kafka_down: bool) {
    const OUTAGE: Duration = Duration::from_secs(15);
    let what = match (redis_down, kafka_down) {
        (true, false) => "Redis outage",
        (false, true) => "Kafka outage",
        _ => "Redis and Kafka outage",
    };
    let svc = start_services();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    // Small batches and channel: during the outage the pipeline fills up and
    // the reader blocks on it, the path where keepalives must still flow.
    let config = svc.write_config_sinks(
        ITEM_RULES,
        Some("    tag_strategy: version\n"),
        Some(""),
        "publish:\n  max_keys: 20\n  channel_capacity: 16\n  retry_max_ms: 1000\n",
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // Warm-up: one row delivered and acknowledged.
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:0"]).await;
    let before = current_wal_lsn(&db).await;
    db.execute("INSERT INTO items VALUES (0, 0)", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:0"], &[], "warm-up").await;
    wait_confirmed_past(&db, before).await;
    drop(redis);
    let pid = eventually(Duration::from_secs(10), "walbust's walsender", || {
        walsender_pid(&db)
    })
    .await;

    // The steady load, on its own connection.
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_steadily(
        svc.pg.connect().await.unwrap(),
        svc.redis.url(),
        phase.clone(),
        stop.clone(),
        1,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Down.
    let kafka_failures = |log: &str| log.lines().filter(|l| is_kafka_failure(l)).count();
    let kafka_failures_before = kafka_failures(&walbust.log());
    phase.store(GOING_DOWN, Ordering::SeqCst);
    if redis_down {
        svc.redis.stop().unwrap();
    }
    if kafka_down {
        svc.kafka.broker_down().unwrap();
    }
    phase.store(DOWN, Ordering::SeqCst);
    let down_at = Instant::now();

    // Sample the slot through the outage, once walbust felt it: Redis
    // refused a batch (the pipeline retries it), or the producer lost the
    // brokers. Acknowledgements of batches the sinks confirmed just before
    // may still be reported in the next status updates; after two of them
    // nothing may move.
    if redis_down {
        walbust.wait_retries("redis", 1).await;
    }
    if kafka_down {
        walbust
            .wait_log_lines(
                kafka_failures_before + 1,
                "lost Kafka brokers",
                is_kafka_failure,
            )
            .await;
    }
    wait_status_update(&db).await;
    wait_status_update(&db).await;
    let mut samples = Vec::new();
    let mut pid_mid = None;
    while down_at.elapsed() < OUTAGE {
        samples.push(confirmed_flush_lsn(&db, "walbust").await.unwrap());
        if pid_mid.is_none() && down_at.elapsed() > Duration::from_secs(10) {
            pid_mid = walsender_pid(&db).await;
        }
        assert!(
            walbust.is_running(),
            "walbust exited during the {what}:\n{}",
            walbust.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pid_end = walsender_pid(&db).await;

    // Up again.
    phase.store(COMING_UP, Ordering::SeqCst);
    if redis_down {
        svc.redis.restart().unwrap();
    }
    if kafka_down {
        svc.kafka.broker_up().unwrap();
    }
    phase.store(UP_AGAIN, Ordering::SeqCst);
    let up_at = Instant::now();
    // Writes go on for a while; the slot's progress is sampled meanwhile to
    // time the catch-up.
    let mut progress = Vec::new();
    while up_at.elapsed() < Duration::from_secs(3) {
        let confirmed = confirmed_flush_lsn(&db, "walbust").await.unwrap();
        progress.push((up_at.elapsed(), confirmed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    let last = written.last().expect("the writer wrote rows").clone();
    let during: Vec<&Written> = written.iter().filter(|w| w.phase >= DOWN).collect();
    let first_during = during.first().expect("rows written during the outage");
    let outage_rows: Vec<&Written> = written
        .iter()
        .filter(|w| (GOING_DOWN..=COMING_UP).contains(&w.phase))
        .collect();
    let last_of_outage = outage_rows.last().expect("rows written during the outage");

    // Held during the outage.
    let held = samples[0];
    assert!(
        samples.iter().all(|s| *s == held),
        "{what}: confirmed_flush_lsn moved during the outage: {:?}",
        samples
            .iter()
            .map(|s| walbust_pgoutput::format_lsn(*s))
            .collect::<Vec<_>>()
    );
    assert!(
        held <= first_during.lsn_before,
        "{what}: confirmed_flush_lsn {} covers row {} written during the outage (begun after {})",
        walbust_pgoutput::format_lsn(held),
        first_during.id,
        walbust_pgoutput::format_lsn(first_during.lsn_before)
    );
    assert!(samples.len() >= 10, "{what}: {} samples", samples.len());

    // Caught up: the slot passes the last write. Its commit ends after
    // `lsn_before`, so `>` means the last transaction was acknowledged.
    wait_confirmed_at_least(&db, last.lsn_before + 1, Duration::from_secs(120)).await;
    // How long after the sink came back the outage's writes were all
    // acknowledged (an upper bound when it took longer than the sampling).
    let catch_up = progress
        .iter()
        .find(|(_, confirmed)| *confirmed > last_of_outage.lsn_before)
        .map_or_else(|| up_at.elapsed(), |(at, _)| *at);

    // The same connection throughout.
    assert_eq!(
        (pid_mid, pid_end, walsender_pid(&db).await),
        (Some(pid), Some(pid), Some(pid)),
        "{what}: the replication connection was replaced (walsender pids)\n{}",
        walbust.log()
    );
    assert!(walbust.is_running(), "walbust exited:\n{}", walbust.log());
    let pg_log = std::fs::read_to_string(svc.pg.log_file()).unwrap_or_default();
    assert!(
        !pg_log.contains("replication timeout"),
        "{what}: the server timed the walsender out:\n{pg_log}"
    );
    let log = walbust.log();
    assert!(
        !log.to_lowercase().contains("reconnect"),
        "{what}: walbust reconnected:\n{log}"
    );
    if redis_down {
        assert!(
            log.lines()
                .any(|l| l.contains(RETRYING) && l.contains("sink=\"redis\"")),
            "{what}: no Redis retry was logged:\n{log}"
        );
    }

    // Redis: every row whose invalidation could only be delivered after
    // Redis came back (all rows when Redis stayed up) incremented its tag
    // version, and every key seeded in the Redis that is there now is gone.
    let mut redis = svc.redis.connection().await.unwrap();
    let counted: Vec<&Written> = written
        .iter()
        .filter(|w| !redis_down || w.phase >= DOWN)
        .collect();
    let counters: Vec<Option<i64>> = {
        let mut pipe = redis::pipe();
        for w in &counted {
            pipe.cmd("GET").arg(format!("tagver:item:{}", w.id));
        }
        pipe.query_async(&mut redis).await.unwrap()
    };
    let missing: Vec<i32> = counted
        .iter()
        .zip(&counters)
        .filter(|(_, c)| c.unwrap_or(0) < 1)
        .map(|(w, _)| w.id)
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: rows whose tag version was never incremented: {missing:?}"
    );
    let seeded: Vec<String> = written
        .iter()
        .filter(|w| w.seeded && (!redis_down || w.phase == UP_AGAIN))
        .map(|w| format!("item:{}", w.id))
        .collect();
    assert!(
        !seeded.is_empty(),
        "{what}: no key was seeded after the outage"
    );
    let seeded_refs: Vec<&str> = seeded.iter().map(String::as_str).collect();
    assert_invalidated(&mut redis, &seeded_refs, &[], what).await;

    // Kafka: every row's key is in some record.
    let expected: BTreeSet<String> = std::iter::once(0)
        .chain(written.iter().map(|w| w.id))
        .map(|id| format!("item:{id}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (keys, records) = kafka_keys(&svc);
        let absent: Vec<&String> = expected.difference(&keys).collect();
        if absent.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} keys are in no Kafka record ({} records), e.g. {:?}",
            absent.len(),
            records.len(),
            &absent[..absent.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!(
        "{what}: {} rows written, {} during the outage; confirmed_flush_lsn held at {} for \
         {OUTAGE:?}; the outage's writes acknowledged {catch_up:?} after the sink came back",
        written.len(),
        outage_rows.len(),
        walbust_pgoutput::format_lsn(held),
    );

    walbust.signal("TERM");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_load_loses_nothing_and_keeps_the_connection() {
    outage_under_load(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_under_load_loses_nothing_and_keeps_the_connection() {
    outage_under_load(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_kafka_outage_under_load_loses_nothing_and_keeps_the_connection() {
    outage_under_load(true, true).await;
}

// ---------------------------------------------------------------------------
// Coalescing.
// ---------------------------------------------------------------------------

const HOT_RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
"#;

/// Collects the JSON messages walbust PUBLISHes on `channel` (each one a
/// batch Redis applied) on a thread of its own, until dropped.
struct Announcements {
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcements {
    fn subscribe(url: &str, channel: &str) -> Announcements {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection().expect("connect to Redis");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let channel = channel.to_string();
        let (stopping, sink) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(&channel).expect("SUBSCRIBE");
            pubsub
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            while !stopping.load(Ordering::SeqCst) {
                match pubsub.get_message() {
                    Ok(msg) => {
                        let payload: String = msg.get_payload().unwrap();
                        let value = serde_json::from_str(&payload).expect("announcement is JSON");
                        sink.lock().unwrap().push(value);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("reading announcements: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        Announcements {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Announcements {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const CHANNEL: &str = "walbust-batches";

/// What one round of hot-row transactions cost Redis.
#[derive(Debug)]
struct Round {
    transactions: usize,
    changes: usize,
    unlinks: u64,
    batches: u64,
    write_time: Duration,
}

/// What the hot-row rounds run against.
struct HotRow<'a> {
    svc: &'a Services,
    db: &'a tokio_postgres::Client,
    redis: &'a mut redis::aio::MultiplexedConnection,
    walbust: &'a mut Walbust,
    config: &'a std::path::Path,
    /// walbust's metrics endpoint.
    metrics_port: u16,
}

/// Commits `transactions` transactions of `updates` updates of row 1 and
/// checks that every one was invalidated after its commit (and the key
/// cached before the last commit is gone), with fewer than `max_unlinks`
/// UNLINK calls.
///
/// - `backlog: false`: live, one round trip per transaction, with the row's
///   key cached again before each.
/// - `backlog: true`: walbust is stopped while the 100 transactions commit,
///   then started again: they reach it as a backlog, the way they do after
///   an outage, and it may merge them into batches.
async fn hot_row_round(
    env: &mut HotRow<'_>,
    (transactions, updates): (usize, usize),
    backlog: bool,
    max_unlinks: u64,
) -> Round {
    let (svc, db, config, port) = (env.svc, env.db, env.config, env.metrics_port);
    let (redis, walbust) = (&mut *env.redis, &mut *env.walbust);
    let changes = transactions * updates;
    let announcements = Announcements::subscribe(&svc.redis.url(), CHANNEL);
    // The counter restarts with the process.
    let changes_before = if backlog {
        0.0
    } else {
        metric(port, "walbust_changes_total")
    };
    let unlinks_before = command_calls(redis, "unlink").await;
    let publishes_before = command_calls(redis, "publish").await;

    let mut tx = String::from("BEGIN;");
    for _ in 0..updates {
        tx.push_str("UPDATE items SET v = v + 1 WHERE id = 1;");
    }
    // Each transaction reports its xid and a WAL position inside it: a
    // confirmed_flush_lsn past that position covers its commit.
    tx.push_str("SELECT txid_current()::text, pg_current_wal_lsn()::text; COMMIT;");
    let ids_of = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<(u64, u64)> {
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0)?.parse().ok()?,
                    walbust_pgoutput::parse_lsn(row.get(1)?)?,
                )),
                _ => None,
            })
            .collect()
    };
    let mut ids = Vec::with_capacity(transactions);
    let started = Instant::now();
    if backlog {
        walbust.signal("TERM");
        let status = walbust.wait(Duration::from_secs(30));
        assert!(status.success(), "{status:?}\n{}", walbust.log());
        set_keys(redis, &["item:1"]).await;
        ids = ids_of(db.simple_query(&tx.repeat(transactions)).await.unwrap());
    } else {
        for _ in 0..transactions {
            set_keys(redis, &["item:1"]).await;
            ids.extend(ids_of(db.simple_query(&tx).await.unwrap()));
        }
    }
    let write_time = started.elapsed();
    if backlog {
        *walbust = Walbust::start(config);
        wait_streaming(db, walbust).await;
    }
    assert_eq!(ids.len(), transactions);
    let xids: Vec<u64> = ids.iter().map(|(xid, _)| *xid).collect();
    let last_before = ids[transactions - 1].1;

    // Acknowledged past the last commit; the key cached before it is gone.
    wait_confirmed_past(db, last_before).await;
    assert_invalidated(redis, &["item:1"], &[], "after the last commit").await;
    let unlinks = command_calls(redis, "unlink").await - unlinks_before;
    let batches = command_calls(redis, "publish").await - publishes_before;
    assert_eq!(
        metric(port, "walbust_changes_total") - changes_before,
        changes as f64,
        "walbust_changes_total did not count every update (backlog: {backlog})"
    );

    // Every transaction is in a batch Redis applied: walbust announces a
    // batch after its UNLINKs, and a batch only holds committed transactions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let announced = loop {
        let announced = announcements.snapshot();
        let seen: BTreeSet<u64> = announced
            .iter()
            .flat_map(|a| a["xids"].as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_u64())
            .collect();
        let missing: Vec<u64> = xids.iter().copied().filter(|x| !seen.contains(x)).collect();
        if missing.is_empty() {
            break announced;
        }
        assert!(
            Instant::now() < deadline,
            "transactions in no batch Redis applied: {missing:?} (announced: {announced:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        announced.len() as u64,
        batches,
        "one announcement per batch"
    );
    for a in &announced {
        assert_eq!(a["keys"], serde_json::json!(["item:1"]), "{a}");
    }
    assert!(
        (1..max_unlinks).contains(&unlinks),
        "{unlinks} UNLINKs for {changes} changes in {transactions} transactions (limit {max_unlinks})"
    );
    Round {
        transactions,
        changes,
        unlinks,
        batches,
        write_time,
    }
}

/// 10k updates of one row in 100 transactions: walbust sends far fewer
/// UNLINKs than it received changes, yet every transaction's invalidation
/// reached Redis after its commit. Live (one transaction per round trip,
/// the key cached again before each) and as a backlog after a restart.
/// Then 2,000 single-update transactions as a backlog: duplicates across
/// transactions are coalesced too, since what arrives while a batch is in
/// flight forms the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_row_is_coalesced_and_every_commit_still_invalidates() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let metrics_port = walbust_testkit::free_port();
    let config = svc.write_config_sinks(
        HOT_RULES,
        Some(&format!("    publish_channel: {CHANNEL}\n")),
        None,
        &format!("metrics:\n  listen: \"127.0.0.1:{metrics_port}\"\n"),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // Warm-up: the row exists and its first change was delivered.
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["item:1"]).await;
    let before = current_wal_lsn(&db).await;
    db.batch_execute("INSERT INTO items VALUES (1, 0)")
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["item:1"], &[], "warm-up").await;
    wait_confirmed_past(&db, before).await;

    // Acceptance: under a tenth of the changes. The single-update backlog
    // only shows that transactions merge (more than two per batch on
    // average); how many depends on how fast the server sends them.
    for (shape, backlog, max_unlinks, what) in [
        ((100, 100), false, 1000, "live"),
        ((100, 100), true, 1000, "backlog"),
        ((2000, 1), true, 1000, "backlog"),
    ] {
        let mut env = HotRow {
            svc: &svc,
            db: &db,
            redis: &mut redis,
            walbust: &mut walbust,
            config: &config,
            metrics_port,
        };
        let round = hot_row_round(&mut env, shape, backlog, max_unlinks).await;
        eprintln!(
            "coalescing, {what}: {} changes in {} transactions -> {} UNLINK calls, \
             {} batches (written in {:?})",
            round.changes, round.transactions, round.unlinks, round.batches, round.write_time
        );
    }

    walbust.signal("TERM");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}

// ---------------------------------------------------------------------------
// Kafka records.
// ---------------------------------------------------------------------------

const PRODUCT_RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}", "product:{id}:detail"]
    tags: ["category:{category_id}"]
    patterns: ["product-list:{category_id}:*"]
"#;

/// A transaction producing 1,200 keys, 40 tags and 40 patterns, with
/// `max_record_bytes: 2000`: it arrives as many records, none larger than
/// the limit, each with exactly the documented fields, and a consumer
/// reading them back finds every key, tag and pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_stay_under_the_limit_and_carry_the_documented_fields() {
    const MAX: usize = 2000;
    const ROWS: i32 = 600;
    const CATEGORIES: i32 = 40;
    let svc = start_services();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL)")
        .await
        .unwrap();
    let config = svc.write_config_sinks(
        PRODUCT_RULES,
        None,
        Some(&format!("    max_record_bytes: {MAX}\n")),
        "",
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let (xid, before, after) = commit(
        &mut db,
        &format!(
            "INSERT INTO products SELECT g, g % {CATEGORIES} FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    wait_confirmed_past(&db, before).await;

    let expected_keys: BTreeSet<String> = (1..=ROWS)
        .flat_map(|id| [format!("product:{id}"), format!("product:{id}:detail")])
        .collect();
    let expected_tags: BTreeSet<String> =
        (0..CATEGORIES).map(|c| format!("category:{c}")).collect();
    let expected_patterns: BTreeSet<String> = (0..CATEGORIES)
        .map(|c| format!("product-list:{c}:*"))
        .collect();

    // Acknowledged means the broker has every record: read them back.
    let raw = tokio::task::block_in_place(|| {
        svc.kafka
            .consume_all(TOPIC, 2, Duration::from_secs(30))
            .expect("consume")
    });
    let mut union: [BTreeSet<String>; 3] = Default::default();
    let mut carrying = 0;
    let mut largest = 0;
    for record in &raw {
        largest = largest.max(record.payload.len());
        assert!(
            record.payload.len() <= MAX,
            "a record of {} bytes exceeds max_record_bytes {MAX}",
            record.payload.len()
        );
        assert_eq!(
            record.key.as_deref(),
            Some(&b"walbust"[..]),
            "record key is the slot"
        );
        let value: serde_json::Value = serde_json::from_slice(&record.payload).expect("JSON");
        let fields: BTreeSet<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from(["v", "lsn", "commit_ts", "xids", "keys", "tags", "patterns"]),
            "{value}"
        );
        assert_eq!(value["v"], 1);
        if !carries(&value, xid) {
            continue;
        }
        carrying += 1;
        let lsn =
            walbust_pgoutput::parse_lsn(value["lsn"].as_str().expect("lsn")).expect("X/Y LSN");
        assert!(
            lsn > before && lsn <= after,
            "lsn {} is not the transaction's commit ({}..{})",
            value["lsn"],
            walbust_pgoutput::format_lsn(before),
            walbust_pgoutput::format_lsn(after)
        );
        let ts = value["commit_ts"].as_str().expect("commit_ts");
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-22T10:00:00.123456Z".len(),
            "{ts}"
        );
        let recent: bool = db
            .query_one(
                "SELECT abs(extract(epoch FROM now() - $1::text::timestamptz)) < 300",
                &[&ts],
            )
            .await
            .unwrap()
            .get(0);
        assert!(recent, "commit_ts {ts} is not the commit time");
        for (i, field) in ["keys", "tags", "patterns"].iter().enumerate() {
            let entries: Vec<String> = value[field]
                .as_array()
                .expect(field)
                .iter()
                .map(|e| e.as_str().expect("strings").to_string())
                .collect();
            assert!(
                entries.windows(2).all(|w| w[0] < w[1]),
                "{field} not sorted and distinct: {entries:?}"
            );
            union[i].extend(entries);
        }
    }
    let [keys, tags, patterns] = union;
    assert_eq!(keys, expected_keys);
    assert_eq!(tags, expected_tags);
    assert_eq!(patterns, expected_patterns);
    let bytes: usize = expected_keys.iter().map(|k| k.len() + 3).sum();
    assert!(
        carrying >= bytes / MAX,
        "{carrying} records for about {bytes} bytes of keys"
    );
    eprintln!(
        "kafka records: one transaction of {} entries -> {carrying} records, largest {largest} bytes (limit {MAX})",
        keys.len() + tags.len() + patterns.len()
    );

    walbust.signal("TERM");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}

// ---------------------------------------------------------------------------
// A tag key of the wrong type.
// ---------------------------------------------------------------------------

/// A string where a tag set belongs (`tag:item:1`) cannot stop
/// invalidation: the key is removed and counted, the rest of the batch is
/// applied, and walbust goes on with later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_tag_key_is_removed_and_invalidation_goes_on() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("tag:item:1")
        .arg("not a set")
        .query_async(&mut redis)
        .await
        .unwrap();
    set_keys(
        &mut redis,
        &["item:1", "item:2", "item:3", "page:2", "other"],
    )
    .await;
    let _: () = redis::cmd("SADD")
        .arg("tag:item:2")
        .arg("page:2")
        .query_async(&mut redis)
        .await
        .unwrap();
    let port = walbust_testkit::free_port();
    let metrics = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    let mut walbust = Walbust::start(&svc.write_config_with(ITEM_RULES, false, &metrics));
    wait_streaming(&db, &mut walbust).await;

    let (_, before, _) = commit(&mut db, "INSERT INTO items VALUES (1), (2)").await;
    assert_invalidated(
        &mut redis,
        &["item:1", "item:2", "page:2", "tag:item:1", "tag:item:2"],
        &["item:3", "other"],
        "a batch with a wrong-typed tag key",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    assert_eq!(metric(port, "walbust_redis_wrongtype_keys_total"), 1.0);

    let (_, before, _) = commit(&mut db, "INSERT INTO items VALUES (3)").await;
    assert_invalidated(&mut redis, &["item:3"], &["other"], "a later change").await;
    wait_confirmed_past(&db, before).await;
    assert!(walbust.is_running(), "{}", walbust.log());
}

// ---------------------------------------------------------------------------
// Redis Cluster.
// ---------------------------------------------------------------------------

const CLUSTER_RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}", "{{cat:{category_id}}}:product:{id}"]
    tags: ["{{cat:{category_id}}}"]
    patterns: ["product-list:{category_id}:*"]
"#;

async fn cluster_exists(conn: &mut redis::cluster_async::ClusterConnection, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    n == 1
}

/// Against a three-primary Redis Cluster: keys spread over every node are
/// removed (grouped by slot), a tag set and its hash-tagged members are
/// purged, and a pattern is purged on every primary; unrelated keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keys_tags_and_patterns_are_invalidated_on_every_primary() {
    const ROWS: i32 = 200;
    let cluster = walbust_testkit::RedisCluster::start(3).expect("start a Redis Cluster");
    let pg = walbust_testkit::Postgres::start().expect("start Postgres");
    let dir = tempfile::tempdir().unwrap();
    let db = pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL)")
        .await
        .unwrap();
    std::fs::write(dir.path().join("rules.yaml"), CLUSTER_RULES).unwrap();
    let config = dir.path().join("walbust.yaml");
    std::fs::write(
        &config,
        format!(
            "{}sinks:\n  redis:\n    url: \"{}\"\n    cluster: true\n    unlink_chunk: 50\n    scan_count: 100\n",
            source_yaml(&pg.url(), "walbust", "", "rules.yaml"),
            cluster.url()
        ),
    )
    .unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let mut redis = cluster.connection().await.unwrap();
    let mut gone: Vec<String> = Vec::new();
    for id in 1..=ROWS {
        gone.push(format!("product:{id}"));
        gone.push(format!("{{cat:3}}:product:{id}"));
        gone.push(format!("product-list:3:p{id}"));
    }
    let members = ["{cat:3}:page:a", "{cat:3}:page:b"];
    gone.extend(members.iter().map(|m| m.to_string()));
    gone.push("tag:{cat:3}".to_string());
    let kept = [
        "product:9999",
        "product-list:4:p1",
        "other:1",
        "{cat:4}:page:a",
        "tag:{cat:4}",
    ];
    for key in gone.iter().map(String::as_str).chain(kept) {
        if key.starts_with("tag:") {
            continue;
        }
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("cached")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    for (set, member) in [
        ("tag:{cat:3}", members[0]),
        ("tag:{cat:3}", members[1]),
        ("tag:{cat:4}", "{cat:4}:page:a"),
    ] {
        let _: () = redis::cmd("SADD")
            .arg(set)
            .arg(member)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let sizes = cluster.sizes().unwrap();
    assert!(
        sizes.iter().all(|n| *n > 0),
        "keys should be spread over every primary: {sizes:?}"
    );

    let before = current_wal_lsn(&db).await;
    db.execute(
        "INSERT INTO products SELECT g, 3 FROM generate_series(1, $1) g",
        &[&ROWS],
    )
    .await
    .unwrap();
    wait_confirmed_past(&db, before).await;

    let mut remaining: Vec<&str> = Vec::new();
    for key in &gone {
        if cluster_exists(&mut redis, key).await {
            remaining.push(key);
        }
    }
    assert!(
        remaining.is_empty(),
        "not invalidated in the cluster: {} keys, e.g. {:?}\n{}",
        remaining.len(),
        &remaining[..remaining.len().min(10)],
        walbust.log()
    );
    for key in kept {
        assert!(
            cluster_exists(&mut redis, key).await,
            "unrelated key {key} was removed"
        );
    }
    // walbust's own gap marker (`walbust:marker:<slot>`) stays, by design.
    let left: Vec<String> = cluster
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| !k.starts_with("walbust:marker:"))
        .collect();
    let mut expected: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "keys left in the cluster");

    walbust.signal("TERM");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", walbust.log());
}

/// A tag rendered from a long text value cannot fit any Kafka record: it
/// used to stop walbust at every start on the same transaction. Kafka
/// consumers now get a flush of everything instead, Redis the exact tag,
/// and walbust goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_too_large_for_kafka_becomes_a_flush_and_walbust_goes_on() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    // A tag within max_key_bytes, so the rules keep it, yet longer than a record.
    let rules = "version: 1\nmax_key_bytes: 4096\nrules:\n  - table: public.notes\n    keys: [\"note:{id}\"]\n    tags: [\"body:{body}\"]\n";
    let port = walbust_testkit::free_port();
    let config = svc.write_config_sinks(
        rules,
        Some(""),
        Some("    max_record_bytes: 2048\n"),
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();
    let long = "x".repeat(3000);
    let tag = format!("tag:body:{long}");
    let _: () = redis::cmd("SADD")
        .arg(&tag)
        .arg("page:1")
        .query_async(&mut redis)
        .await
        .unwrap();
    set_keys(&mut redis, &["note:1", "page:1", "other"]).await;
    db.execute("INSERT INTO notes VALUES (1, $1)", &[&long])
        .await
        .unwrap();
    // Redis: the exact key and the tag's members.
    assert_invalidated(&mut redis, &["note:1", "page:1"], &["other"], "long tag").await;
    // Kafka: the key, and a flush of everything in place of the tag.
    let records = kafka_records(&svc.kafka, 1);
    let patterns: Vec<&str> = records
        .iter()
        .flat_map(|r| r["patterns"].as_array().unwrap())
        .filter_map(|p| p.as_str())
        .collect();
    assert!(patterns.contains(&"*"), "{records:?}");
    assert!(
        records.iter().all(|r| r.to_string().len() <= 2048),
        "{records:?}"
    );
    assert_eq!(metric(port, "walbust_kafka_oversize_entries_total"), 1.0);
    // Still running, and still delivering.
    set_keys(&mut redis, &["note:2"]).await;
    db.execute("INSERT INTO notes VALUES (2, 'short')", &[])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["note:2"], &["other"], "after the long tag").await;
    assert!(walbust.is_running(), "{}", walbust.log());
    assert!(!walbust.log().contains(&long), "row data in the log");
}

/// Reads from `stream` into `heard` until it holds `needle`; returns it all.
fn read_until(
    stream: &mut std::net::TcpStream,
    heard: &mut Vec<u8>,
    needle: &str,
    what: &str,
) -> String {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(heard).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{what}: heard {:?}",
            String::from_utf8_lossy(heard)
        );
        if let Ok(n) = stream.read(&mut buf) {
            heard.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(heard).to_string()
}

/// A tracking client (RESP3 `CLIENT TRACKING ON`, as in-process caches use
/// for Redis's client-side caching) hears of every key walbust removes that
/// it read: the key of the changed row and the members of a purged tag,
/// and nothing of the keys left alone. No subscriber code needed for keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_caching_clients_are_told_of_what_walbust_removes() {
    use std::io::Write;
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, category_id int)")
        .await
        .unwrap();
    let rules = "version: 1\nrules:\n  - table: public.products\n    keys: [\"product:{id}\"]\n    tags: [\"category:{category_id}\"]\n";
    let config = svc.write_config(rules, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(
        &mut redis,
        &["product:1", "product:2", "list:cat3", "list:cat4"],
    )
    .await;
    let _: () = redis::cmd("SADD")
        .arg("tag:category:3")
        .arg("list:cat3")
        .query_async(&mut redis)
        .await
        .unwrap();

    // The in-process cache's connection: RESP3, tracking on, reads the keys
    // it caches.
    let mut tracking = std::net::TcpStream::connect(("127.0.0.1", svc.redis.port())).unwrap();
    tracking
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut heard = Vec::new();
    tracking
        .write_all(b"HELLO 3\r\nCLIENT TRACKING ON\r\nGET product:1\r\nGET product:2\r\nGET list:cat3\r\nGET list:cat4\r\nPING tracked\r\n")
        .unwrap();
    read_until(&mut tracking, &mut heard, "tracked", "the replies");
    heard.clear();

    db.execute("INSERT INTO products VALUES (1, 3)", &[])
        .await
        .unwrap();
    let pushes = read_until(
        &mut tracking,
        &mut heard,
        "list:cat3",
        "the tag member's invalidation",
    );
    let pushes = if pushes.contains("product:1") {
        pushes
    } else {
        read_until(
            &mut tracking,
            &mut heard,
            "product:1",
            "the key's invalidation",
        )
    };
    assert!(pushes.contains("invalidate"), "{pushes}");
    // Nothing else changed: after the row's invalidations are confirmed, a
    // marker key walbust did not touch arrives alone.
    assert_invalidated(
        &mut redis,
        &["product:1", "list:cat3"],
        &["product:2", "list:cat4"],
        "tracked",
    )
    .await;
    tracking.write_all(b"PING settled\r\n").unwrap();
    let pushes = read_until(&mut tracking, &mut heard, "settled", "the ping");
    for untouched in ["product:2", "list:cat4"] {
        assert!(
            !pushes.contains(untouched),
            "{untouched} was announced: {pushes}"
        );
    }
    assert!(walbust.is_running());
}
