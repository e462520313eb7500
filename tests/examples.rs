//! The applications under examples/, end to end: each example's schema.sql
//! is applied to a real Postgres, its rules.yaml runs in the real `walbust`
//! binary, and every write the example's README describes is checked
//! against the exact set of Redis keys it removes and the exact Kafka
//! record it produces.
//!
//! Each step starts from the same Redis contents (the example's cached
//! keys and tag sets, plus keys of other applications that must survive),
//! commits one transaction, waits until walbust acknowledged that
//! transaction to Postgres (which it does only after Redis and Kafka
//! confirmed it), and then compares the whole keyspace with its state
//! before the commit.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::Value;
use support::*;

/// Prefix of the keys walbust keeps for itself in Redis.
const WALBUST_OWN: &str = "walbust:";

/// The Redis sink settings of the examples: the refresh stream for rules
/// with `refresh: true` (under `walbust:`, so not a cache entry here) and
/// fenced fills for the warmer.
const EXAMPLE_REDIS: &str = "    refresh_stream: \"walbust:refresh\"\n    leases: true\n";

/// What an example caches before every step.
struct Fixture {
    /// Cache keys (and unrelated keys that must survive).
    keys: &'static [&'static str],
    /// Tag sets (`tag:<tag>`, set strategy) and the cache keys registered in them.
    tags: &'static [(&'static str, &'static [&'static str])],
}

/// One transaction and everything it must invalidate.
#[derive(Default)]
struct Step {
    what: &'static str,
    /// Run as one transaction.
    sql: &'static str,
    /// Exactly the Redis keys (cache keys and tag sets) the commit removes.
    removed: &'static [&'static str],
    /// Exactly the record's `keys`, `tags` and `patterns` (in any order).
    /// All empty: the commit must publish nothing.
    keys: &'static [&'static str],
    tags: &'static [&'static str],
    patterns: &'static [&'static str],
}

/// An example running: its services, its walbust, and what was consumed.
struct Example {
    name: &'static str,
    fixture: Fixture,
    svc: Services,
    db: tokio_postgres::Client,
    redis: MultiplexedConnection,
    walbust: Walbust,
    metrics: u16,
    /// Kafka records seen so far (each step adds at least one).
    records: usize,
    fences: u32,
}

fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `walbust check --db`, which must pass.
fn check_db(config: &Path, what: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--db", "--config"])
        .arg(config)
        .env("WALBUST_LOG", "warn")
        .output()
        .expect("run walbust check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: walbust check --db failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with the test's output when it fails.
    eprintln!("{what}: walbust check --db:\n{stdout}");
}

impl Example {
    /// Applies the schema, loads `seed` (before walbust starts, so it is not
    /// streamed), checks the configuration against the database, starts
    /// walbust and checks again once it created the publication and slot.
    async fn start(name: &'static str, fixture: Fixture, seed: &str) -> Example {
        let dir = example_dir(name);
        let svc = Services::start();
        let db = svc.pg.connect().await.expect("connect to Postgres");
        db.batch_execute(&read(&dir.join("schema.sql")))
            .await
            .unwrap_or_else(|e| panic!("{name}: schema.sql: {e:?}"));
        Self::install_setup_functions(&db).await;
        db.batch_execute(seed)
            .await
            .unwrap_or_else(|e| panic!("{name}: seed: {e:?}"));
        let redis = svc.redis.connection().await.expect("connect to Redis");
        let metrics = walbust_testkit::free_port();
        let config = svc.write_config_sinks(
            &read(&dir.join("rules.yaml")),
            Some(EXAMPLE_REDIS),
            Some(""),
            &format!("metrics:\n  listen: \"127.0.0.1:{metrics}\"\n"),
        );
        // Nothing exists yet: with `source.create: true` check says what
        // `run` will create, after checking everything else.
        check_db(&config, &format!("{name} before run"));
        let mut walbust = Walbust::start(&config);
        wait_streaming(&db, &mut walbust).await;
        // Now against the publication and slot walbust created.
        check_db(&config, &format!("{name} while running"));
        Example {
            name,
            fixture,
            svc,
            db,
            redis,
            walbust,
            metrics,
            records: 0,
            fences: 0,
        }
    }

    /// Installs what `walbust setup` adds for applications: walbust_refresh.
    async fn install_setup_functions(db: &tokio_postgres::Client) {
        db.batch_execute(&read(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/walbust_refresh.sql"),
        ))
        .await
        .expect("walbust_refresh.sql");
    }

    async fn reset_cache(&mut self) {
        let stale: Vec<String> = self.keyspace().await.into_iter().collect();
        let r = &mut self.redis;
        if !stale.is_empty() {
            let _: () = redis::cmd("DEL").arg(stale).query_async(r).await.unwrap();
        }
        set_keys(r, self.fixture.keys).await;
        for (set, members) in self.fixture.tags {
            let _: () = redis::cmd("SADD")
                .arg(*set)
                .arg(*members)
                .query_async(r)
                .await
                .unwrap();
        }
    }

    /// Every key in Redis except walbust's own (its replication-gap
    /// marker lives under `walbust:`): those are not cache entries, and
    /// deleting them would make the next start see a gap.
    async fn keyspace(&mut self) -> BTreeSet<String> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        keys.into_iter()
            .filter(|k| !k.starts_with(WALBUST_OWN))
            .collect()
    }

    /// Commits `sql` as one transaction and returns its xid.
    async fn commit(&mut self, sql: &str) -> u32 {
        commit(&mut self.db, sql).await.0
    }

    /// Waits for the Kafka record carrying `xid`, then until walbust
    /// acknowledged its commit: every sink confirmed it, so Redis is done.
    async fn record_for(&mut self, what: &str, xid: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        let record = loop {
            let records = kafka_records(&self.svc.kafka, self.records + 1);
            self.records = self.records.max(records.len());
            if let Some(r) = records.iter().find(|r| carries(r, xid)) {
                break r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what}: no Kafka record carries xid {xid}: {records:?}\nwalbust log:\n{}",
                self.name,
                self.walbust.log()
            );
        };
        let lsn = walbust_pgoutput::parse_lsn(record["lsn"].as_str().expect("lsn is a string"))
            .expect("lsn parses");
        eventually(
            Duration::from_secs(30),
            "walbust to acknowledge the commit",
            || async {
                confirmed_flush_lsn(&self.db, "walbust")
                    .await
                    .filter(|c| *c > lsn)
            },
        )
        .await;
        record
    }

    /// Runs one step and checks the keyspace and the Kafka record exactly.
    async fn step(&mut self, s: Step) {
        let what = format!("{}: {}", self.name, s.what);
        self.reset_cache().await;
        let before = self.keyspace().await;
        let xid = self.commit(s.sql).await;

        if s.keys.is_empty() && s.tags.is_empty() && s.patterns.is_empty() {
            // Nothing to wait for: send a fence through the same path and
            // wait until it is acknowledged, which walbust does in WAL
            // order, so only after it processed the commit.
            self.fences += 1;
            let fence = format!(
                "SELECT pg_logical_emit_message(true, 'walbust', '{{\"keys\":[\"examples-test-fence:{}\"]}}')",
                self.fences
            );
            let fence_xid = self.commit(&fence).await;
            self.record_for(&what, fence_xid).await;
            let records = kafka_records(&self.svc.kafka, self.records);
            assert!(
                records.iter().all(|r| !carries(r, xid)),
                "{what}: the commit was published although nothing should be: {records:?}"
            );
        } else {
            let rec = self.record_for(&what, xid).await;
            assert_eq!(rec["v"], 1, "{what}: {rec}");
            assert_eq!(rec["xids"], serde_json::json!([xid]), "{what}: {rec}");
            for (field, expected) in [("keys", s.keys), ("tags", s.tags), ("patterns", s.patterns)]
            {
                let mut expected: Vec<&str> = expected.to_vec();
                expected.sort_unstable();
                assert_eq!(
                    strings(&rec[field]),
                    expected,
                    "{what}: Kafka record {field} (record {rec})"
                );
            }
        }

        let after = self.keyspace().await;
        let added: Vec<&String> = after.difference(&before).collect();
        assert!(added.is_empty(), "{what}: keys appeared: {added:?}");
        let removed: BTreeSet<&str> = before
            .iter()
            .filter(|k| !after.contains(*k))
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = s.removed.iter().copied().collect();
        for k in &expected {
            assert!(
                before.contains(*k),
                "{what}: the test expects {k} removed but the fixture does not cache it"
            );
        }
        assert_eq!(
            removed,
            expected,
            "{what}: removed keys (left: actual, right: expected); extra: {:?}, missing: {:?}",
            removed.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&removed).collect::<Vec<_>>()
        );
    }

    /// Sum of every series of a Prometheus counter or gauge; `None` when
    /// the endpoint does not list it.
    fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&scrape_metrics(self.metrics), name)
    }

    /// Every template found the values it needed: no replica identity or
    /// unchanged TOAST value left a cache stale. Then a clean shutdown.
    fn finish(mut self) {
        let changes = self
            .metric(walbust_cdc::metrics::CHANGES)
            .unwrap_or_else(|| {
                panic!("{}: no {} metric", self.name, walbust_cdc::metrics::CHANGES)
            });
        assert!(changes > 0.0, "{}: no change counted", self.name);
        let missing = self
            .metric(walbust_cdc::metrics::MISSING_VALUES)
            .unwrap_or(0.0);
        assert_eq!(
            missing,
            0.0,
            "{}: templates skipped for want of a value; log:\n{}",
            self.name,
            self.walbust.log()
        );
        self.walbust.signal("TERM");
        let status = self.walbust.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "{}: exit status {status:?}; log:\n{}",
            self.name,
            self.walbust.log()
        );
    }
}

/// The materialized view `view` holds, row for row, what `query` computes
/// now over the view's columns `cols`: walbust_refresh refreshed it in the
/// transaction that invalidated.
async fn assert_view_fresh(db: &tokio_postgres::Client, view: &str, cols: &str, query: &str) {
    let count = |sql: String| async move {
        let row = db
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        row.get::<_, i64>(0)
    };
    let fresh = count(format!("SELECT count(*) FROM ({query}) q")).await;
    let seen = count(format!("SELECT count(*) FROM {view}")).await;
    let same = count(format!(
        "SELECT count(*) FROM (SELECT * FROM ({query}) q EXCEPT SELECT {cols} FROM {view}) d"
    ))
    .await;
    assert_eq!(
        (seen, same),
        (fresh, 0),
        "{view} is not what its query gives now"
    );
}

// ---------------------------------------------------------------------------
// restaurant

const RESTAURANT: Fixture = Fixture {
    keys: &[
        "restaurant:1",
        "restaurant:1:menu",
        "restaurant:1:analytics",
        "restaurant:2",
        "restaurant:2:menu",
        "restaurant:2:analytics",
        "menu_item:10",
        "menu_item:11",
        "menu_item:12",
        "menu_item:20",
        // Another part of the application.
        "session:9f2c",
        "cart:42",
    ],
    tags: &[
        // Restaurant 1 shows menus 1 (mains) and 2 (drinks), restaurant 2 menu 3.
        ("tag:menu:1", &["restaurant:1:menu"]),
        ("tag:menu:2", &["restaurant:1:menu"]),
        ("tag:menu:3", &["restaurant:2:menu"]),
        ("tag:menu_item:10", &["restaurant:1:menu", "menu_item:10"]),
        ("tag:menu_item:11", &["restaurant:1:menu", "menu_item:11"]),
        ("tag:menu_item:12", &["restaurant:1:menu", "menu_item:12"]),
        ("tag:menu_item:20", &["restaurant:2:menu", "menu_item:20"]),
        (
            "tag:restaurant-analytics",
            &["restaurant:1:analytics", "restaurant:2:analytics"],
        ),
    ],
};

/// What a purge of tag `restaurant-analytics` removes from the fixture.
const ANALYTICS_PURGED: &[&str] = &[
    "restaurant:1:analytics",
    "restaurant:2:analytics",
    "tag:restaurant-analytics",
];

const RESTAURANT_SEED: &str = "
INSERT INTO restaurants (id, name, cuisine) VALUES (1, 'Trattoria Uno', 'italian'), (2, 'Pho 2', 'vietnamese');
INSERT INTO menus (id, restaurant_id, name, position) VALUES (1, 1, 'Mains', 1), (2, 1, 'Drinks', 2), (3, 2, 'All day', 1);
INSERT INTO menu_items (id, menu_id, name, price_cents) VALUES
    (10, 1, 'Margherita', 1200), (11, 1, 'Lasagne', 1400), (12, 2, 'Chinotto', 350), (20, 3, 'Pho bo', 1300);
INSERT INTO menu_item_options (id, menu_item_id, name, price_delta_cents) VALUES (100, 12, 'large', 100);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaurant() {
    let mut ex = Example::start("restaurant", RESTAURANT, RESTAURANT_SEED).await;
    let via_root = publishes_via_root(&ex.db).await;
    assert!(
        via_root,
        "the publication must publish partitions as the parent"
    );

    ex.step(Step {
        what: "a menu item's price changes",
        sql: "UPDATE menu_items SET price_cents = 1250 WHERE id = 10",
        removed: &["menu_item:10", "restaurant:1:menu", "tag:menu:1"],
        keys: &["menu_item:10"],
        tags: &["menu:1"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an item moves to another restaurant's menu",
        sql: "UPDATE menu_items SET menu_id = 3 WHERE id = 11",
        removed: &[
            "menu_item:11",
            "restaurant:1:menu",
            "restaurant:2:menu",
            "tag:menu:1",
            "tag:menu:3",
        ],
        keys: &["menu_item:11"],
        tags: &["menu:1", "menu:3"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an option is added to an item",
        sql: "INSERT INTO menu_item_options (id, menu_item_id, name, price_delta_cents) \
              VALUES (101, 10, 'extra mozzarella', 150)",
        removed: &["restaurant:1:menu", "menu_item:10", "tag:menu_item:10"],
        tags: &["menu_item:10"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an option is deleted (its item comes from the old row)",
        sql: "DELETE FROM menu_item_options WHERE id = 100",
        removed: &["restaurant:1:menu", "menu_item:12", "tag:menu_item:12"],
        tags: &["menu_item:12"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a menu is deleted and its items with it (ON DELETE CASCADE)",
        sql: "DELETE FROM menus WHERE id = 2",
        removed: &["restaurant:1:menu", "menu_item:12", "tag:menu:2"],
        keys: &["restaurant:1:menu", "menu_item:12"],
        tags: &["menu:2"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a restaurant is renamed",
        sql: "UPDATE restaurants SET name = 'Pho Hai', updated_at = now() WHERE id = 2",
        removed: &["restaurant:2", "restaurant:2:menu"],
        keys: &["restaurant:2", "restaurant:2:menu"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a new restaurant invalidates nothing",
        sql: "INSERT INTO restaurants (id, name) VALUES (3, 'Taqueria Tres')",
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an order lands in the January partition",
        sql: "INSERT INTO orders (id, restaurant_id, customer_id, total_cents, created_at) \
              VALUES (1, 1, 501, 2600, '2025-01-15 12:00+00')",
        removed: &["restaurant:1:analytics"],
        keys: &["restaurant:1:analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "orders in the February and March partitions, one transaction",
        sql: "INSERT INTO orders (id, restaurant_id, customer_id, total_cents, created_at) VALUES \
              (2, 2, 502, 1300, '2025-02-03 19:30+00'), (3, 1, 503, 1200, '2025-03-01 08:00+00')",
        removed: &["restaurant:1:analytics", "restaurant:2:analytics"],
        keys: &["restaurant:1:analytics", "restaurant:2:analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an order is delivered",
        sql: "UPDATE orders SET status = 'delivered' WHERE id = 2",
        removed: &["restaurant:2:analytics"],
        keys: &["restaurant:2:analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an order moves to another month's partition (a DELETE and an INSERT)",
        sql: "UPDATE orders SET created_at = '2025-02-01 00:30+00' WHERE id = 1",
        removed: &["restaurant:1:analytics"],
        keys: &["restaurant:1:analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a cancelled order is deleted (its restaurant comes from the partition's old row)",
        sql: "DELETE FROM orders WHERE id = 3",
        removed: &["restaurant:1:analytics"],
        keys: &["restaurant:1:analytics"],
        ..Step::default()
    })
    .await;
    // What the README warns about: Postgres does not publish a TRUNCATE of
    // one partition when the publication publishes via the root.
    ex.step(Step {
        what: "TRUNCATE of one partition alone is not published",
        sql: "TRUNCATE orders_2025_01",
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the retention job truncates a partition and says so",
        sql: "TRUNCATE orders_2025_02; \
              SELECT pg_logical_emit_message(true, 'walbust', '{\"tags\":[\"restaurant-analytics\"]}')",
        removed: ANALYTICS_PURGED,
        tags: &["restaurant-analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a holiday closure is planned: the page and menu now and at both ends",
        sql: "INSERT INTO opening_exceptions (restaurant_id, starts_at, ends_at, note) \
              VALUES (1, now() + interval '1 day', now() + interval '2 days', 'holiday')",
        removed: &["restaurant:1", "restaurant:1:menu"],
        keys: &["restaurant:1", "restaurant:1:menu"],
        ..Step::default()
    })
    .await;
    let times: Vec<i64> = ex
        .db
        .query_one(
            "SELECT ARRAY[floor(extract(epoch FROM starts_at) * 1000)::bigint, \
                          floor(extract(epoch FROM ends_at) * 1000)::bigint] \
             FROM opening_exceptions WHERE restaurant_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let scheduled: Vec<i64> = schedule(&mut ex.redis)
        .await
        .into_iter()
        .map(|(_, at)| at)
        .collect();
    assert_eq!(
        scheduled, times,
        "the closure's start and end are scheduled"
    );
    ex.step(Step {
        what: "the daily sales view is refreshed: the analytics with it",
        sql: "SELECT walbust_refresh('restaurant_daily_sales', '{\"tags\":[\"restaurant-analytics\"]}')",
        removed: ANALYTICS_PURGED,
        tags: &["restaurant-analytics"],
        ..Step::default()
    })
    .await;
    assert_view_fresh(
        &ex.db,
        "restaurant_daily_sales",
        "restaurant_id, day, orders",
        "SELECT restaurant_id, (created_at AT TIME ZONE 'UTC')::date, count(*) FROM orders \
         WHERE status <> 'cancelled' GROUP BY 1, 2",
    )
    .await;
    ex.step(Step {
        what: "TRUNCATE orders",
        sql: "TRUNCATE orders",
        removed: ANALYTICS_PURGED,
        tags: &["restaurant-analytics"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a restaurant is deleted with its menus, items and options (cascade)",
        sql: "DELETE FROM restaurants WHERE id = 2",
        removed: &[
            "restaurant:2",
            "restaurant:2:menu",
            "menu_item:11",
            "menu_item:20",
            "tag:menu:3",
        ],
        keys: &[
            "restaurant:2",
            "restaurant:2:menu",
            "menu_item:11",
            "menu_item:20",
        ],
        tags: &["menu:3"],
        ..Step::default()
    })
    .await;
    ex.finish();
}

// ---------------------------------------------------------------------------
// hero-tasks

const HERO_TASKS: Fixture = Fixture {
    keys: &[
        "hero_tasks:v1:task:1",
        "hero_tasks:v1:task:2",
        "hero_tasks:v1:task:3",
        "hero_tasks:v1:dependencies:1",
        "hero_tasks:v1:dependencies:2",
        "hero_tasks:v1:dependencies:3",
        "hero_tasks:v1:history:1",
        "hero_tasks:v1:history:2",
        "hero_tasks:v1:history:3",
        "hero_tasks:v1:user_tasks:7",
        "hero_tasks:v1:user_tasks:8",
        "hero_tasks:v1:user_tasks:9",
        "hero_tasks:v1:stats:global",
        "hero_tasks:v1:search:q=login",
        "hero_tasks:v1:search:q=bug&status=open",
        // The next cache version, being warmed up, and another application.
        "hero_tasks:v2:task:1",
        "sessions:abc",
    ],
    tags: &[
        // Task 1 depends on 2, task 3 on 1: each dependency view shows the
        // linked tasks, and is registered under their tags.
        (
            "tag:task:1",
            &[
                "hero_tasks:v1:dependencies:2",
                "hero_tasks:v1:dependencies:3",
            ],
        ),
        ("tag:task:2", &["hero_tasks:v1:dependencies:1"]),
        ("tag:task:3", &["hero_tasks:v1:dependencies:1"]),
    ],
};

const HERO_TASKS_SEED: &str = "
INSERT INTO hero_tasks (id, title, description, assignee_id, type, due_date) VALUES
    (1, 'Login page', 'Email and password form', 7, 'feature', '2025-03-31'),
    (2, 'Fix session bug', 'Sessions expire early', 8, 'bug', NULL),
    (3, 'Write docs', '', NULL, 'task', NULL);
INSERT INTO hero_task_dependencies (task_id, depends_on_id) VALUES (1, 2), (3, 1);
INSERT INTO hero_workflow_history (id, task_id, from_status, to_status, changed_by, changed_at) VALUES
    (1, 1, NULL, 'todo', 7, '2025-01-05 09:00+00'),
    (2, 2, NULL, 'todo', 8, '2025-02-01 09:00+00');
INSERT INTO hero_task_comments (id, task_id, author_id, body, created_at) VALUES
    (1, 1, 8, 'Use the design from the wiki', '2025-01-20 15:00+00'),
    (2, 2, 7, 'Seen in production', '2025-02-10 11:00+00');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hero_tasks() {
    let mut ex = Example::start("hero-tasks", HERO_TASKS, HERO_TASKS_SEED).await;

    ex.step(Step {
        what: "a status change and its history row, one transaction",
        sql: "UPDATE hero_tasks SET status = 'in_progress', updated_at = now() WHERE id = 1; \
              INSERT INTO hero_workflow_history (task_id, from_status, to_status, changed_by, changed_at) \
              VALUES (1, 'todo', 'in_progress', 7, '2025-02-10 09:00+00')",
        removed: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:7",
            "hero_tasks:v1:stats:global",
            "tag:task:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
        ],
        keys: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:7",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:1"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a task is reassigned: both assignees",
        sql: "UPDATE hero_tasks SET assignee_id = 8 WHERE id = 1",
        removed: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:7",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
            "tag:task:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
        ],
        keys: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:7",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:1"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a task is unassigned: the old assignee only (NULL makes no key)",
        sql: "UPDATE hero_tasks SET assignee_id = NULL WHERE id = 1",
        removed: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
            "tag:task:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
        ],
        keys: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:1"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a title change clears every search result",
        sql: "UPDATE hero_tasks SET title = 'Fix session expiry bug' WHERE id = 2",
        removed: &[
            "hero_tasks:v1:task:2",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:history:2",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
            "tag:task:2",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:search:q=login",
            "hero_tasks:v1:search:q=bug&status=open",
        ],
        keys: &[
            "hero_tasks:v1:task:2",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:history:2",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:2"],
        patterns: &["hero_tasks:v1:search:*"],
    })
    .await;
    // A description long enough to be stored out of line (TOAST).
    ex.step(Step {
        what: "a long description is written",
        sql: "UPDATE hero_tasks \
              SET description = (SELECT string_agg(md5(g::text), ' ') FROM generate_series(1, 300) g) \
              WHERE id = 3",
        removed: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
            "tag:task:3",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:search:q=login",
            "hero_tasks:v1:search:q=bug&status=open",
        ],
        keys: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:3"],
        patterns: &["hero_tasks:v1:search:*"],
    })
    .await;
    assert_toasted(&ex.db, "hero_tasks").await;
    ex.step(Step {
        what: "a priority change leaves the TOASTed description unchanged: search results stay",
        sql: "UPDATE hero_tasks SET priority = 'high' WHERE id = 3",
        removed: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
            "tag:task:3",
            "hero_tasks:v1:dependencies:1",
        ],
        keys: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:3"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a dependency is added",
        sql: "INSERT INTO hero_task_dependencies (task_id, depends_on_id) VALUES (2, 3)",
        removed: &[
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
        ],
        keys: &[
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a dependency is removed (its key columns arrive under the default identity)",
        sql: "DELETE FROM hero_task_dependencies WHERE task_id = 1 AND depends_on_id = 2",
        removed: &[
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:dependencies:2",
        ],
        keys: &[
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:dependencies:2",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a comment is posted into the March partition",
        sql: "INSERT INTO hero_task_comments (id, task_id, author_id, body, created_at) \
              VALUES (3, 2, 7, 'Reproduced on staging', '2025-03-05 10:00+00')",
        removed: &["hero_tasks:v1:task:2"],
        keys: &["hero_tasks:v1:task:2"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a comment is deleted from the January partition",
        sql: "DELETE FROM hero_task_comments WHERE id = 1",
        removed: &["hero_tasks:v1:task:1"],
        keys: &["hero_tasks:v1:task:1"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the application flushes the whole v1 cache",
        sql: "SELECT pg_logical_emit_message(true, 'walbust', '{\"patterns\":[\"*\"]}')",
        removed: &[
            "hero_tasks:v1:task:1",
            "hero_tasks:v1:task:2",
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:1",
            "hero_tasks:v1:history:2",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:user_tasks:7",
            "hero_tasks:v1:user_tasks:8",
            "hero_tasks:v1:user_tasks:9",
            "hero_tasks:v1:stats:global",
            "hero_tasks:v1:search:q=login",
            "hero_tasks:v1:search:q=bug&status=open",
        ],
        patterns: &["hero_tasks:v1:*"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a task is deleted with its dependencies (cascade)",
        sql: "DELETE FROM hero_tasks WHERE id = 3",
        removed: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
            "hero_tasks:v1:search:q=login",
            "hero_tasks:v1:search:q=bug&status=open",
            "tag:task:3",
        ],
        keys: &[
            "hero_tasks:v1:task:3",
            "hero_tasks:v1:dependencies:1",
            "hero_tasks:v1:dependencies:2",
            "hero_tasks:v1:dependencies:3",
            "hero_tasks:v1:history:3",
            "hero_tasks:v1:stats:global",
        ],
        tags: &["task:3"],
        patterns: &["hero_tasks:v1:search:*"],
    })
    .await;
    // A task falls overdue at its due date without any write: `at:`
    // scheduled its keys for midnight (UTC) of that date.
    let xid = ex
        .commit(
            "INSERT INTO hero_tasks (id, title, assignee_id, due_date) \
             VALUES (9050, 'Ship it', 7, current_date + 1)",
        )
        .await;
    ex.record_for("a task due tomorrow", xid).await;
    let due: i64 = ex
        .db
        .query_one(
            "SELECT floor(extract(epoch FROM due_date::timestamp AT TIME ZONE 'UTC') * 1000)::bigint \
             FROM hero_tasks WHERE id = 9050",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let entries = schedule(&mut ex.redis).await;
    let (entry, _) = entries
        .iter()
        .find(|(_, at)| *at == due)
        .unwrap_or_else(|| panic!("no entry at the due date {due}: {entries:?}"));
    let entry: Value = serde_json::from_str(entry).unwrap();
    let keys = strings(&entry["keys"]);
    for key in [
        "hero_tasks:v1:user_tasks:7",
        "hero_tasks:v1:task:9050",
        "hero_tasks:v1:stats:global",
    ] {
        assert!(
            keys.contains(&key.to_owned()),
            "{key} not scheduled: {entry}"
        );
    }
    ex.finish();
}

/// The table's TOAST relation holds data: a value is stored out of line,
/// so an UPDATE that does not touch it sends it as "unchanged".
async fn assert_toasted(db: &tokio_postgres::Client, table: &str) {
    let bytes: i64 = db
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class \
             WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(bytes > 0, "{table}: nothing was stored out of line");
}

// ---------------------------------------------------------------------------
// audiotailoc

const AUDIOTAILOC: Fixture = Fixture {
    keys: &[
        "product:p1",
        "product:p2",
        "product:p3",
        "products:list:page=1",
        "products:list:category=c1:page=1",
        "home:featured",
        "products:facets",
        "categories:tree",
        "categories:c1",
        "service:s1",
        "service:s2",
        "services:list",
        "home:services",
        "order:o1",
        "user:u1:orders",
        "user:u2:orders",
        "booking:b1",
        "booking:b2",
        "user:u1:bookings",
        "user:u2:bookings",
        "promotion:SUMMER10",
        "promotion:TET2025",
        "promotions:active",
        "banners:home",
        "banners:products",
        "site-config",
        // Not derived from these tables.
        "cart:u1",
        "session:xyz",
    ],
    tags: &[
        (
            "tag:product-list",
            &["products:list:page=1", "products:list:category=c1:page=1"],
        ),
        ("tag:products", &["home:featured", "products:facets"]),
        ("tag:categories", &["categories:tree", "categories:c1"]),
        ("tag:services", &["services:list", "home:services"]),
    ],
};

const AUDIOTAILOC_SEED: &str = "
INSERT INTO categories (id, name, slug) VALUES ('c1', 'Loa', 'loa'), ('c2', 'Tai nghe', 'tai-nghe');
INSERT INTO products (id, name, slug, category_id, price, stock, is_featured) VALUES
    ('p1', 'Loa bookshelf B1', 'loa-bookshelf-b1', 'c1', 2490000, 12, true),
    ('p2', 'Loa soundbar S2', 'loa-soundbar-s2', 'c1', 5990000, 4, false),
    ('p3', 'Tai nghe H3', 'tai-nghe-h3', 'c2', 1290000, 30, false);
INSERT INTO services (id, name, slug, base_price) VALUES
    ('s1', 'Lap dat am thanh', 'lap-dat', 500000), ('s2', 'Sua chua loa', 'sua-chua', 300000);
INSERT INTO orders (id, user_id, total) VALUES ('o1', 'u1', 2490000);
INSERT INTO bookings (id, user_id, service_id, scheduled_at) VALUES
    ('b1', 'u1', 's1', '2025-03-01 09:00+07'), ('b2', 'u2', 's2', '2025-03-02 14:00+07');
INSERT INTO promotions (id, code, discount_percent, starts_at, ends_at) VALUES
    ('pr1', 'SUMMER10', 10, '2025-06-01', '2025-08-31'), ('pr2', 'TET2025', 15, '2025-01-20', '2025-02-10');
INSERT INTO banners (id, title, image_url, position) VALUES
    ('bn1', 'New speakers', 'https://cdn.example/bn1.jpg', 'home'),
    ('bn2', 'Headphones sale', 'https://cdn.example/bn2.jpg', 'products');
INSERT INTO site_config (key, value) VALUES ('shipping', '{\"free_over\": 1000000}');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiotailoc() {
    let mut ex = Example::start("audiotailoc", AUDIOTAILOC, AUDIOTAILOC_SEED).await;
    const LISTS: [&str; 3] = [
        "products:list:page=1",
        "products:list:category=c1:page=1",
        "tag:product-list",
    ];

    ex.step(Step {
        what: "a product's price changes: its page, the lists, the aggregates",
        sql: "UPDATE products SET price = 2290000, updated_at = now() WHERE id = 'p1'",
        removed: &[
            "product:p1",
            LISTS[0],
            LISTS[1],
            LISTS[2],
            "home:featured",
            "products:facets",
            "tag:products",
        ],
        keys: &["product:p1"],
        tags: &["product-list", "products"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a product's description and stock change: its page and the lists only",
        sql: "UPDATE products SET description = 'Dolby Atmos', stock = 3 WHERE id = 'p2'",
        removed: &["product:p2", LISTS[0], LISTS[1], LISTS[2]],
        keys: &["product:p2"],
        tags: &["product-list"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a new product: the lists and the aggregates",
        sql: "INSERT INTO products (id, name, slug, category_id, price) \
              VALUES ('p4', 'Loa sub W4', 'loa-sub-w4', 'c1', 7490000)",
        removed: &[
            LISTS[0],
            LISTS[1],
            LISTS[2],
            "home:featured",
            "products:facets",
            "tag:products",
        ],
        tags: &["product-list", "products"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a product is deleted",
        sql: "DELETE FROM products WHERE id = 'p3'",
        removed: &[
            "product:p3",
            LISTS[0],
            LISTS[1],
            LISTS[2],
            "home:featured",
            "products:facets",
            "tag:products",
        ],
        keys: &["product:p3"],
        tags: &["product-list", "products"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a category is renamed",
        sql: "UPDATE categories SET name = 'Loa & Soundbar', updated_at = now() WHERE id = 'c1'",
        removed: &["categories:tree", "categories:c1", "tag:categories"],
        tags: &["categories"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a service's price changes",
        sql: "UPDATE services SET base_price = 550000 WHERE id = 's1'",
        removed: &[
            "service:s1",
            "services:list",
            "home:services",
            "tag:services",
        ],
        keys: &["service:s1"],
        tags: &["services"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a new order: its user's orders",
        sql: "INSERT INTO orders (id, user_id, total) VALUES ('o2', 'u2', 5990000)",
        removed: &["user:u2:orders"],
        keys: &["user:u2:orders"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "an order is paid",
        sql: "UPDATE orders SET status = 'PAID', updated_at = now() WHERE id = 'o1'",
        removed: &["order:o1", "user:u1:orders"],
        keys: &["order:o1", "user:u1:orders"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a booking is rescheduled",
        sql: "UPDATE bookings SET scheduled_at = '2025-03-03 09:00+07', status = 'CONFIRMED' WHERE id = 'b1'",
        removed: &["booking:b1", "user:u1:bookings"],
        keys: &["booking:b1", "user:u1:bookings"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a booking is deleted (its user comes from the old row)",
        sql: "DELETE FROM bookings WHERE id = 'b2'",
        removed: &["booking:b2", "user:u2:bookings"],
        keys: &["booking:b2", "user:u2:bookings"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a promotion code is renamed: old and new code",
        sql: "UPDATE promotions SET code = 'SUMMER15', discount_percent = 15 WHERE id = 'pr1'",
        removed: &["promotion:SUMMER10", "promotions:active"],
        keys: &[
            "promotion:SUMMER10",
            "promotion:SUMMER15",
            "promotions:active",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a banner moves from the home page to the products page",
        sql: "UPDATE banners SET position = 'products', sort_order = 2 WHERE id = 'bn1'",
        removed: &["banners:home", "banners:products"],
        keys: &["banners:home", "banners:products"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the site configuration changes",
        sql: "UPDATE site_config SET value = '{\"free_over\": 800000}', updated_at = now() WHERE key = 'shipping'",
        removed: &["site-config"],
        keys: &["site-config"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "TRUNCATE products: every product page by pattern, the lists, the aggregates",
        sql: "TRUNCATE products",
        removed: &[
            "product:p1",
            "product:p2",
            "product:p3",
            LISTS[0],
            LISTS[1],
            LISTS[2],
            "home:featured",
            "products:facets",
            "tag:products",
        ],
        tags: &["product-list", "products"],
        patterns: &["product:*"],
        ..Step::default()
    })
    .await;
    ex.finish();
}

// ---------------------------------------------------------------------------
// content-analysis

const CONTENT_ANALYSIS: Fixture = Fixture {
    keys: &[
        "dashboard:1",
        "dashboard:1:risk:low",
        "dashboard:1:risk:medium",
        "dashboard:1:risk:high",
        "dashboard:1:risk:critical",
        "dashboard:2",
        "dashboard:2:risk:high",
        "analytics:user:1",
        "analytics:user:2",
        "analysis:100",
        "analysis:100:excerpt",
        "analysis:101",
        "analysis:101:excerpt",
        "user:1",
        "user:2",
        "user:3",
        // The admin overview, from the materialized view risk_overview.
        "dashboard:overview",
        // Not derived from these tables.
        "model-cache:gpt-4o",
        "rate-limit:1",
    ],
    tags: &[
        ("tag:role:1", &["user:3"]),
        ("tag:role:2", &["user:1", "user:2"]),
    ],
};

const CONTENT_ANALYSIS_SEED: &str = "
INSERT INTO roles (id, name, permissions) VALUES
    (1, 'admin', '{read,write,review,admin}'), (2, 'analyst', '{read,write}');
INSERT INTO users (id, email, name, role_id) VALUES
    (1, 'an@example.com', 'An', 2), (2, 'binh@example.com', 'Binh', 2), (3, 'chi@example.com', 'Chi', 1);
INSERT INTO analysis_results (id, user_id, risk_level, model, score, content) VALUES
    (101, 2, 'high', 'gpt-4o', 0.7012, 'A short answer.');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_analysis() {
    let mut ex = Example::start("content-analysis", CONTENT_ANALYSIS, CONTENT_ANALYSIS_SEED).await;
    ex.step(Step {
        what: "a result with a long content is stored",
        // 8 kB of hex digits: too long to keep in the row, too random to
        // compress below the limit, so Postgres stores it out of line.
        sql: "INSERT INTO analysis_results (id, user_id, risk_level, model, score, content) \
              VALUES (100, 1, 'high', 'gpt-4o', 0.8123, \
                      (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 250) g))",
        removed: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        keys: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        ..Step::default()
    })
    .await;
    assert_toasted(&ex.db, "analysis_results").await;

    // The UPDATEs below do not touch `content`: Postgres sends it as
    // unchanged TOAST. The keys are exactly right, and `finish` checks that
    // no template went without a value.
    ex.step(Step {
        what: "hallucinations are recorded (content unchanged): the excerpt stays",
        sql: "UPDATE analysis_results \
              SET hallucinations = '[{\"claim\": \"The Eiffel Tower is in Rome\", \"confidence\": 0.91}]' \
              WHERE id = 100",
        removed: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "analytics:user:1",
            "analysis:100",
        ],
        keys: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "analytics:user:1",
            "analysis:100",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the risk level is raised on review (content unchanged): both slices",
        sql: "UPDATE analysis_results SET risk_level = 'critical', reviewed_at = now() WHERE id = 100",
        removed: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
        ],
        keys: &[
            "dashboard:1",
            "dashboard:1:risk:high",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the content is re-analysed: the excerpt too",
        sql: "UPDATE analysis_results \
              SET content = (SELECT string_agg(md5((g * 7)::text), '') FROM generate_series(1, 250) g), \
                  score = 0.5 \
              WHERE id = 100",
        removed: &[
            "dashboard:1",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        keys: &[
            "dashboard:1",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a result is deleted (owner and risk level from the old row)",
        sql: "DELETE FROM analysis_results WHERE id = 100",
        removed: &[
            "dashboard:1",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        keys: &[
            "dashboard:1",
            "dashboard:1:risk:critical",
            "analytics:user:1",
            "analysis:100",
            "analysis:100:excerpt",
        ],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a role's permissions change: the profiles of its users",
        sql: "UPDATE roles SET permissions = '{read,write,review}' WHERE id = 2",
        removed: &["user:1", "user:2", "tag:role:2"],
        tags: &["role:2"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a user changes role",
        sql: "UPDATE users SET role_id = 1 WHERE id = 2",
        removed: &["user:2"],
        keys: &["user:2"],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the risk overview is refreshed: its dashboard with it",
        sql: "SELECT walbust_refresh('risk_overview', '{\"keys\":[\"dashboard:overview\"]}')",
        removed: &["dashboard:overview"],
        keys: &["dashboard:overview"],
        ..Step::default()
    })
    .await;
    assert_view_fresh(
        &ex.db,
        "risk_overview",
        "risk_level, results",
        "SELECT risk_level, count(*) FROM analysis_results GROUP BY risk_level",
    )
    .await;
    ex.finish();
}

// ---------------------------------------------------------------------------
// such-market

/// Collection contracts and wallets (lower case, as stored).
macro_rules! milady {
    () => {
        "0x5af0d9827e0c53e4799bb226655a1de152a425a5"
    };
}
macro_rules! bayc {
    () => {
        "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"
    };
}
/// Custody address of fid 100.
macro_rules! w1 {
    () => {
        "0xa1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    };
}
/// Custody address of fid 200.
macro_rules! w2 {
    () => {
        "0x00000000219ab540356cbb839cbe05303d7705fa"
    };
}
/// Custody address of fid 300.
macro_rules! w3 {
    () => {
        "0xd8da6bf26964af9d7eed9e03e53415d37aa96045"
    };
}
/// A verified address of fid 100.
macro_rules! w4 {
    () => {
        "0x4e59b44847b379578588920ca78fbf26c0b4956c"
    };
}
/// A key under the such-market prefix.
macro_rules! sm {
    ($($part:expr),+) => {
        concat!("such-market:", $($part),+)
    };
}

const MILADY_PAGES: [&str; 3] = [
    sm!("collections:", milady!(), ":nfts:page:1:size:20"),
    sm!("collections:", milady!(), ":nfts:page:2:size:20"),
    sm!("collections:", milady!(), ":nfts:page:1:size:50"),
];

const SUCH_MARKET: Fixture = Fixture {
    keys: &[
        sm!("collections:", milady!(), ":metadata"),
        sm!("collections:", milady!(), ":traits"),
        MILADY_PAGES[0],
        MILADY_PAGES[1],
        MILADY_PAGES[2],
        sm!("collections:", bayc!(), ":metadata"),
        sm!("collections:", bayc!(), ":traits"),
        sm!("collections:", bayc!(), ":nfts:page:1:size:20"),
        sm!("users:100:collections"),
        sm!("users:200:collections"),
        sm!("users:300:collections"),
        sm!("ownership:", milady!(), ":1"),
        sm!("ownership:", milady!(), ":2"),
        sm!("ownership:", bayc!(), ":7"),
        // Not derived from these tables, and another application's key.
        sm!("eth-usd"),
        concat!("collections:", milady!(), ":metadata"),
    ],
    tags: &[
        (
            concat!("tag:wallet:", w1!()),
            &[sm!("users:100:collections")],
        ),
        (
            concat!("tag:wallet:", w4!()),
            &[sm!("users:100:collections")],
        ),
        (
            concat!("tag:wallet:", w2!()),
            &[sm!("users:200:collections")],
        ),
        (
            concat!("tag:wallet:", w3!()),
            &[sm!("users:300:collections")],
        ),
    ],
};

const SUCH_MARKET_SEED: &str = concat!(
    "INSERT INTO collections (contract_address, name, symbol, total_supply, floor_price_wei) VALUES ('",
    milady!(),
    "', 'Milady Maker', 'MIL', 10000, 2500000000000000000), ('",
    bayc!(),
    "', 'BoredApeYachtClub', 'BAYC', 10000, 11000000000000000000);
INSERT INTO nfts (contract_address, token_id, owner_address, name) VALUES ('",
    milady!(),
    "', 1, '",
    w1!(),
    "', 'Milady #1'), ('",
    milady!(),
    "', 2, '",
    w3!(),
    "', NULL), ('",
    bayc!(),
    "', 7, '",
    w2!(),
    "', 'Ape #7');
INSERT INTO collection_traits VALUES ('",
    milady!(),
    "', 'Background', 'Blue', 10), ('",
    bayc!(),
    "', 'Fur', 'Gold', 5);
INSERT INTO fc_users (fid, username, custody_address, verified_addresses) VALUES
    (100, 'alice', '",
    w1!(),
    "', '{",
    w4!(),
    "}'), (200, 'bob', '",
    w2!(),
    "', '{}'), (300, 'carol', '",
    w3!(),
    "', '{}');
INSERT INTO nft_ownership (fid, contract_address, token_id) VALUES (100, '",
    milady!(),
    "', 1), (300, '",
    milady!(),
    "', 2), (200, '",
    bayc!(),
    "', 7);
INSERT INTO user_collections VALUES (100, '",
    milady!(),
    "', 1), (300, '",
    milady!(),
    "', 1), (200, '",
    bayc!(),
    "', 1);
INSERT INTO wallet_collection_mapping VALUES ('",
    w1!(),
    "', '",
    milady!(),
    "', 1), ('",
    w3!(),
    "', '",
    milady!(),
    "', 1), ('",
    w2!(),
    "', '",
    bayc!(),
    "', 1);"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn such_market() {
    let mut ex = Example::start("such-market", SUCH_MARKET, SUCH_MARKET_SEED).await;
    const MILADY_PAGES_PATTERN: &str = sm!("collections:", milady!(), ":nfts:page:*");

    ex.step(Step {
        what: "a token is transferred: its ownership, the old and the new owner's summaries",
        sql: concat!(
            "UPDATE nfts SET owner_address = '",
            w2!(),
            "', updated_at = now() WHERE contract_address = '",
            milady!(),
            "' AND token_id = 1"
        ),
        removed: &[
            sm!("ownership:", milady!(), ":1"),
            sm!("users:100:collections"),
            sm!("users:200:collections"),
            concat!("tag:wallet:", w1!()),
            concat!("tag:wallet:", w2!()),
        ],
        keys: &[sm!("ownership:", milady!(), ":1")],
        tags: &[concat!("wallet:", w1!()), concat!("wallet:", w2!())],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the indexer moves the token between the users' holdings",
        sql: concat!(
            "DELETE FROM nft_ownership WHERE fid = 100 AND contract_address = '",
            milady!(),
            "' AND token_id = 1;
             INSERT INTO nft_ownership (fid, contract_address, token_id) VALUES (200, '",
            milady!(),
            "', 1);
             DELETE FROM user_collections WHERE fid = 100 AND contract_address = '",
            milady!(),
            "';
             INSERT INTO user_collections VALUES (200, '",
            milady!(),
            "', 1);
             DELETE FROM wallet_collection_mapping WHERE wallet_address = '",
            w1!(),
            "' AND contract_address = '",
            milady!(),
            "';
             INSERT INTO wallet_collection_mapping VALUES ('",
            w2!(),
            "', '",
            milady!(),
            "', 1);"
        ),
        removed: &[
            sm!("ownership:", milady!(), ":1"),
            sm!("users:100:collections"),
            sm!("users:200:collections"),
            concat!("tag:wallet:", w1!()),
            concat!("tag:wallet:", w2!()),
        ],
        keys: &[
            sm!("ownership:", milady!(), ":1"),
            sm!("users:100:collections"),
            sm!("users:200:collections"),
        ],
        tags: &[concat!("wallet:", w1!()), concat!("wallet:", w2!())],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a token is revealed: every page of its collection, nothing else",
        sql: concat!(
            "UPDATE nfts SET name = 'Milady #2', image_url = 'ipfs://bafy/2.png' \
             WHERE contract_address = '",
            milady!(),
            "' AND token_id = 2"
        ),
        removed: &MILADY_PAGES,
        patterns: &[MILADY_PAGES_PATTERN],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a collection's floor price changes: metadata, pages, traits",
        sql: concat!(
            "UPDATE collections SET floor_price_wei = 2400000000000000000, updated_at = now() \
             WHERE contract_address = '",
            milady!(),
            "'"
        ),
        removed: &[
            sm!("collections:", milady!(), ":metadata"),
            sm!("collections:", milady!(), ":traits"),
            MILADY_PAGES[0],
            MILADY_PAGES[1],
            MILADY_PAGES[2],
        ],
        keys: &[
            sm!("collections:", milady!(), ":metadata"),
            sm!("collections:", milady!(), ":traits"),
        ],
        patterns: &[MILADY_PAGES_PATTERN],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "trait counts change",
        sql: concat!(
            "UPDATE collection_traits SET token_count = 11 WHERE contract_address = '",
            milady!(),
            "'"
        ),
        removed: &[sm!("collections:", milady!(), ":traits")],
        keys: &[sm!("collections:", milady!(), ":traits")],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "a token is minted: its ownership, its owner, the pages",
        sql: concat!(
            "INSERT INTO nfts (contract_address, token_id, owner_address, name) VALUES ('",
            milady!(),
            "', 3, '",
            w3!(),
            "', 'Milady #3')"
        ),
        removed: &[
            sm!("users:300:collections"),
            concat!("tag:wallet:", w3!()),
            MILADY_PAGES[0],
            MILADY_PAGES[1],
            MILADY_PAGES[2],
        ],
        keys: &[sm!("ownership:", milady!(), ":3")],
        tags: &[concat!("wallet:", w3!())],
        patterns: &[MILADY_PAGES_PATTERN],
    })
    .await;
    ex.step(Step {
        what: "a token is burned: owner and collection from the old row",
        sql: concat!(
            "DELETE FROM nfts WHERE contract_address = '",
            milady!(),
            "' AND token_id = 2"
        ),
        removed: &[
            sm!("ownership:", milady!(), ":2"),
            sm!("users:300:collections"),
            concat!("tag:wallet:", w3!()),
            MILADY_PAGES[0],
            MILADY_PAGES[1],
            MILADY_PAGES[2],
        ],
        keys: &[sm!("ownership:", milady!(), ":2")],
        tags: &[concat!("wallet:", w3!())],
        patterns: &[MILADY_PAGES_PATTERN],
    })
    .await;
    ex.step(Step {
        what: "a Farcaster user verifies another address",
        sql: concat!(
            "UPDATE fc_users SET verified_addresses = '{",
            w4!(),
            "}', updated_at = now() WHERE fid = 300"
        ),
        removed: &[sm!("users:300:collections")],
        keys: &[sm!("users:300:collections")],
        ..Step::default()
    })
    .await;
    ex.step(Step {
        what: "the application refreshes a collection: everything under it",
        sql: concat!(
            "SELECT pg_logical_emit_message(true, 'walbust', \
             '{\"patterns\":[\"collections:",
            milady!(),
            ":*\",\"ownership:",
            milady!(),
            ":*\"]}')"
        ),
        removed: &[
            sm!("collections:", milady!(), ":metadata"),
            sm!("collections:", milady!(), ":traits"),
            MILADY_PAGES[0],
            MILADY_PAGES[1],
            MILADY_PAGES[2],
            sm!("ownership:", milady!(), ":1"),
            sm!("ownership:", milady!(), ":2"),
        ],
        patterns: &[
            sm!("collections:", milady!(), ":*"),
            sm!("ownership:", milady!(), ":*"),
        ],
        ..Step::default()
    })
    .await;
    ex.finish();
}

// ---------------------------------------------------------------------------
// time-driven invalidation (`at:`), across restarts

/// Milliseconds since the Unix epoch, by this machine's clock (the one
/// walbust's applier reads too).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The schedule walbust keeps for slot `walbust`: (member, due ms).
async fn schedule(redis: &mut MultiplexedConnection) -> Vec<(String, i64)> {
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("walbust:schedule:walbust")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(redis)
        .await
        .unwrap();
    entries.into_iter().map(|(m, s)| (m, s as i64)).collect()
}

/// Inserts a promotion that started yesterday and ends `ends_in` from now;
/// returns its end (ms since the Unix epoch) and the WAL position before
/// its commit (acknowledged once the slot's confirmed position passes it).
async fn promotion_ending(db: &mut tokio_postgres::Client, id: &str, ends_in: &str) -> (i64, u64) {
    let sql = format!(
        "INSERT INTO promotions (id, code, discount_percent, starts_at, ends_at) \
         VALUES ('{id}', '{id}', 10, now() - interval '1 day', clock_timestamp() + interval '{ends_in}')"
    );
    let (_, before, _) = commit(db, &sql).await;
    let row = db
        .query_one(
            "SELECT floor(extract(epoch FROM ends_at) * 1000)::bigint FROM promotions WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), before)
}

/// Waits until `key` is gone, checking on the way that it stays until
/// `due_ms`; returns when (ms) it was seen gone.
async fn gone_at_its_time(
    redis: &mut MultiplexedConnection,
    key: &str,
    due_ms: i64,
    what: &str,
    walbust: &Walbust,
) -> i64 {
    let deadline = due_ms + 10_000;
    loop {
        let before = now_ms();
        let present = exists(redis, key).await;
        if !present {
            assert!(
                before >= due_ms,
                "{what}: {key} removed {} ms before its time",
                due_ms - before
            );
            return now_ms();
        }
        assert!(
            before < deadline,
            "{what}: {key} still cached 10 s after its time; log:\n{}",
            walbust.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiotailoc_promotions_end_on_time_across_restarts() {
    let dir = example_dir("audiotailoc");
    let svc = Services::start();
    let mut db = svc.pg.connect().await.expect("connect to Postgres");
    db.batch_execute(&read(&dir.join("schema.sql")))
        .await
        .expect("schema.sql");
    let mut redis = svc.redis.connection().await.expect("connect to Redis");
    let metrics = walbust_testkit::free_port();
    let config = svc.write_config_with(
        &read(&dir.join("rules.yaml")),
        true,
        &format!("metrics:\n  listen: \"127.0.0.1:{metrics}\"\n"),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // 1. A promotion ends 2 s after its commit: its keys go at its end.
    let (due, lsn) = promotion_ending(&mut db, "FLASH1", "2 seconds").await;
    wait_confirmed_past(&db, lsn).await;
    // Cached again after the commit's invalidation, as a reader would.
    set_keys(
        &mut redis,
        &["promotions:active", "promotion:FLASH1", "promotion:OTHER"],
    )
    .await;
    let pending = schedule(&mut redis).await;
    assert_eq!(
        pending.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [due],
        "one entry, at the promotion's end (starts_at was before the commit)"
    );
    let removed = gone_at_its_time(&mut redis, "promotions:active", due, "running", &walbust).await;
    assert!(
        removed - due < 2_000,
        "removed {} ms after its time",
        removed - due
    );
    assert!(!exists(&mut redis, "promotion:FLASH1").await);
    assert!(
        exists(&mut redis, "promotion:OTHER").await,
        "other keys stay"
    );
    eventually(
        Duration::from_secs(5),
        "the applied entry to leave the schedule",
        || async {
            let mut r = svc.redis.connection().await.unwrap();
            schedule(&mut r).await.is_empty().then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "walbust_scheduled_applied_total 1",
        || async { (metric(metrics, "walbust_scheduled_applied_total") == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(metric(metrics, "walbust_scheduled_pending"), 0.0);
    // Kafka consumers got it as a normal record, with when it was due and
    // the LSN of the commit that scheduled it.
    let records = kafka_records(&svc.kafka, 2);
    let scheduled: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("due_ts").is_some())
        .collect();
    assert_eq!(scheduled.len(), 1, "{records:?}");
    assert_eq!(scheduled[0]["v"], 1);
    let mut keys = strings(&scheduled[0]["keys"]);
    keys.sort();
    assert_eq!(keys, ["promotion:FLASH1", "promotions:active"]);
    let original = records
        .iter()
        .find(|r| {
            r.get("due_ts").is_none()
                && strings(&r["keys"]).contains(&"promotion:FLASH1".to_owned())
        })
        .expect("the commit's own record");
    assert_eq!(scheduled[0]["lsn"], original["lsn"]);

    // 2. walbust restarts between the commit and the end: the schedule is
    //    in Redis, the new process applies it on time.
    let (due, lsn) = promotion_ending(&mut db, "FLASH2", "5 seconds").await;
    wait_confirmed_past(&db, lsn).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    set_keys(&mut redis, &["promotions:active", "promotion:FLASH2"]).await;
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    assert!(
        now_ms() < due,
        "the restart took longer than the promotion had left"
    );
    let removed =
        gone_at_its_time(&mut redis, "promotion:FLASH2", due, "restarted", &walbust).await;
    assert!(
        removed - due < 2_000,
        "removed {} ms after its time",
        removed - due
    );

    // 3. walbust is down when the promotion ends: applied as soon as it is
    //    back.
    let (due, lsn) = promotion_ending(&mut db, "FLASH3", "1 second").await;
    wait_confirmed_past(&db, lsn).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
    set_keys(&mut redis, &["promotions:active", "promotion:FLASH3"]).await;
    eventually(
        Duration::from_secs(10),
        "the promotion's end to pass",
        || async { (now_ms() > due + 200).then_some(()) },
    )
    .await;
    assert!(
        exists(&mut redis, "promotion:FLASH3").await,
        "nobody applied it while down"
    );
    assert_eq!(schedule(&mut redis).await.len(), 1);
    let mut walbust = Walbust::start(&config);
    assert_invalidated(
        &mut redis,
        &["promotion:FLASH3", "promotions:active"],
        &[],
        "past due at start",
    )
    .await;
    eventually(Duration::from_secs(5), "an empty schedule", || async {
        let mut r = svc.redis.connection().await.unwrap();
        schedule(&mut r).await.is_empty().then_some(())
    })
    .await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

// ---------------------------------------------------------------------------
// the example warmer (refresh: true)

/// `node examples/warmer/warmer.mjs` for the restaurant app, killed on drop.
struct Warmer(std::process::Child);

impl Warmer {
    fn start(svc: &Services) -> Warmer {
        let dir = example_dir("warmer");
        assert!(
            dir.join("node_modules").exists(),
            "examples/warmer is not installed: run npm ci in examples/warmer (scripts/test.sh does)"
        );
        let child = Command::new("node")
            .arg(dir.join("warmer.mjs"))
            .env("REDIS_URL", svc.redis.url())
            .env("DATABASE_URL", svc.pg.url())
            .env("WARMER_LOADERS", example_dir("restaurant").join("warm.mjs"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run node ({e}): install Node.js"));
        Warmer(child)
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `key` holds something other than "stale" (a warmer filled
/// it), and returns it as JSON.
async fn refilled(svc: &Services, key: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("{key} refilled"),
        || async {
            let mut r = svc.redis.connection().await.unwrap();
            let v: Option<String> = redis::cmd("GET").arg(key).query_async(&mut r).await.ok()?;
            v.filter(|v| v != "stale")
                .map(|v| serde_json::from_str(&v).expect("JSON"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaurant_warmer_refills_purged_hot_keys() {
    let mut ex = Example::start("restaurant", RESTAURANT, RESTAURANT_SEED).await;
    let _warmer = Warmer::start(&ex.svc);
    ex.reset_cache().await;
    let r = &mut ex.redis;
    for key in ["restaurant:1", "restaurant:1:menu"] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("stale")
            .query_async(r)
            .await
            .unwrap();
    }
    let xid = ex
        .commit("UPDATE restaurants SET name = 'Trattoria Due', is_open = false WHERE id = 1")
        .await;
    ex.record_for("warmer", xid).await;

    // walbust purged both; the warmer read the stream, recomputed them from
    // Postgres and filled them through the lease.
    let page = refilled(&ex.svc, "restaurant:1").await;
    assert_eq!(page["name"], "Trattoria Due");
    assert_eq!(page["is_open"], false);
    let menu = refilled(&ex.svc, "restaurant:1:menu").await;
    let names: Vec<&str> = menu
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Mains", "Drinks"]);
    // The stream holds one entry for the batch, with both keys.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("walbust:refresh")
        .arg("-")
        .arg("+")
        .query_async(&mut ex.redis)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let keys = &entries[0]
        .1
        .iter()
        .find(|(f, _)| f == "keys")
        .expect("keys field")
        .1;
    assert_eq!(keys, r#"["restaurant:1","restaurant:1:menu"]"#);
    assert_eq!(ex.metric("walbust_refresh_keys_total"), Some(2.0));
    ex.finish();
}
