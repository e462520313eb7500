//! The rules language end to end: real Postgres, real Redis, the real
//! binary. Partitioned tables, category moves, row values holding glob
//! characters, settings that change how values print, unchanged TOAST,
//! explicit invalidation messages, `explain`, `tail`, and hot reload of the
//! rules file.

mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

/// Generous: other engineers build and test on the same two cores.
const PATIENCE: Duration = Duration::from_secs(60);

async fn redis_keys(redis: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(redis)
        .await
        .unwrap();
    keys.sort();
    keys
}

// ---------------------------------------------------------------------------
// Partitions and category moves

const PARTITION_RULES: &str = r#"
version: 1
rules:
  - table: public.items
    keys: ["item:{id}", "category:{category_id}:list"]
    tags: ["category:{category_id}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_changes_match_the_parent_rule_and_moves_hit_both_categories() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id int, category_id int, name text, PRIMARY KEY (id, category_id)) \
             PARTITION BY LIST (category_id);
         CREATE TABLE items_3 PARTITION OF items FOR VALUES IN (3);
         CREATE TABLE items_4 PARTITION OF items FOR VALUES IN (4);
         CREATE TABLE items_rest PARTITION OF items DEFAULT;",
    )
    .await
    .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config(PARTITION_RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // walbust created the publication, via the partition root.
    let via_root = publishes_via_root(&db).await;
    assert!(via_root);

    // Rows land in different partitions; the rule on the parent sees each.
    set_keys(
        &mut redis,
        &[
            "item:1",
            "item:2",
            "item:3",
            "category:3:list",
            "category:4:list",
            "category:9:list",
            "other",
        ],
    )
    .await;
    let (_, inserted, _) = commit(
        &mut db,
        "INSERT INTO items VALUES (1, 3, 'a'), (2, 4, 'b'), (3, 9, 'c')",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &[
            "item:1",
            "item:2",
            "item:3",
            "category:3:list",
            "category:4:list",
            "category:9:list",
        ],
        &["other"],
        "inserts into three partitions",
    )
    .await;
    // The keys go before the batch's tag purges finish: wait for the whole
    // batch, or its late purge of tag category:9 would take the member the
    // next step adds.
    wait_confirmed_past(&db, inserted).await;

    // Moving item 1 from category 3 to 4 moves its row to another partition
    // (a delete and an insert under the root): both categories go.
    set_keys(
        &mut redis,
        &[
            "item:1",
            "item:2",
            "category:3:list",
            "category:4:list",
            "category:9:list",
        ],
    )
    .await;
    for (tag, member) in [
        ("tag:category:3", "page:c3"),
        ("tag:category:4", "page:c4"),
        ("tag:category:9", "page:c9"),
    ] {
        set_keys(&mut redis, &[member]).await;
        let _: () = redis::cmd("SADD")
            .arg(tag)
            .arg(member)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let (_, before, _) = commit(
        &mut db,
        "UPDATE items SET category_id = 4 WHERE id = 1 AND category_id = 3",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &[
            "item:1",
            "category:3:list",
            "category:4:list",
            "page:c3",
            "page:c4",
        ],
        &["item:2", "category:9:list", "page:c9"],
        "a move between categories",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM items_4 WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the row moved to partition items_4");
}

// ---------------------------------------------------------------------------
// Glob characters in row values

const GLOB_RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    patterns: ["list:{name}:*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_in_a_row_value_invalidates_only_its_own_keys() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config(GLOB_RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let own = ["list:*:page1", "list:*:page2"];
    let others = [
        "list:shoes:page1",
        "list:hats:page1",
        "list:a*b:page1",
        "list:?:page1",
        "list:[x]:page1",
    ];
    set_keys(&mut redis, &own).await;
    set_keys(&mut redis, &others).await;
    set_keys(&mut redis, &["product:1"]).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO products VALUES (1, '*')").await;
    assert_invalidated(&mut redis, &own, &others, "a product named *").await;
    wait_confirmed_past(&db, before).await;
    assert!(!exists(&mut redis, "product:1").await);
    for k in others {
        assert!(exists(&mut redis, k).await, "{k} was removed");
    }

    // Brackets and question marks are escaped as well.
    set_keys(&mut redis, &["list:[x]:page1", "list:x:page1"]).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO products VALUES (2, '[x]')").await;
    assert_invalidated(
        &mut redis,
        &["list:[x]:page1"],
        &["list:x:page1", "list:?:page1", "list:shoes:page1"],
        "a product named [x]",
    )
    .await;
    wait_confirmed_past(&db, before).await;
}

// ---------------------------------------------------------------------------
// Settings that change how values print

const RENDERING_RULES: &str = r#"
version: 1
rules:
  - table: public.vals
    keys: ["iv:{iv}", "by:{by}", "fl:{fl}"]
"#;

/// A database whose settings print intervals, bytea and floats otherwise
/// still gives the keys of Postgres's default rendering: walbust pins the
/// settings on its connection, so keys never follow an `ALTER DATABASE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_the_default_rendering_whatever_the_database_sets() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE vals (id int PRIMARY KEY, iv interval, by bytea, fl float8);
         ALTER DATABASE postgres SET IntervalStyle = 'iso_8601';
         ALTER DATABASE postgres SET bytea_output = 'escape';
         ALTER DATABASE postgres SET extra_float_digits = 0;",
    )
    .await
    .unwrap();
    // The settings are in force for new sessions (so for walbust's too).
    let fresh = svc.pg.connect().await.unwrap();
    let row = fresh
        .query_one(
            "SELECT (interval '1 day 02:03:04')::text, ('\\x41'::bytea)::text, (1::float8 / 3)::text",
            &[],
        )
        .await
        .unwrap();
    let printed: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        printed,
        ("P1DT2H3M4S".into(), "A".into(), "0.333333333333333".into())
    );

    let mut redis = svc.redis.connection().await.unwrap();
    let mut walbust = Walbust::start(&svc.write_config(RENDERING_RULES, false));
    wait_streaming(&db, &mut walbust).await;
    let defaults = ["iv:1 day 02:03:04", "by:\\x41", "fl:0.3333333333333333"];
    let database_renderings = ["iv:P1DT2H3M4S", "by:A", "fl:0.333333333333333"];
    set_keys(&mut redis, &defaults).await;
    set_keys(&mut redis, &database_renderings).await;
    let (_, before, _) = commit(
        &mut db,
        "INSERT INTO vals VALUES (1, interval '1 day 02:03:04', '\\x41', 1::float8 / 3)",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &defaults,
        &database_renderings,
        "a row printed under the database's settings",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    assert!(walbust.is_running(), "{}", walbust.log());
}

// ---------------------------------------------------------------------------
// Unchanged TOAST

const TOAST_RULES: &str = r#"
version: 1
rules:
  - table: public.docs
    keys: ["doc:{id}", "docbody:{body:hash}", "doctitle:{title}:{body:hash}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toasted_value_never_makes_a_wrong_key() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    // EXTERNAL: stored out of line without compression, so a 6 kB value is
    // certainly TOASTed. The default replica identity sends no old row.
    db.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(
        TOAST_RULES,
        false,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let big = "abcdefghij".repeat(600);
    let big2 = "klmnopqrst".repeat(600);
    let body_key = |v: &str| format!("docbody:{}", walbust_rules::hash_value(v));
    let title_key = |t: &str, v: &str| format!("doctitle:{t}:{}", walbust_rules::hash_value(v));

    set_keys(&mut redis, &["doc:1", &body_key(&big)]).await;
    let (_, before, _) = commit(
        &mut db,
        &format!("INSERT INTO docs VALUES (1, 't1', '{big}')"),
    )
    .await;
    assert_invalidated(&mut redis, &["doc:1", &body_key(&big)], &[], "insert").await;
    wait_confirmed_past(&db, before).await;
    let toasted: i32 = db
        .query_one("SELECT pg_column_size(body) FROM docs WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        toasted > 2048,
        "body is stored out of line ({toasted} bytes)"
    );

    // An UPDATE of the title: Postgres sends the body as "unchanged TOAST"
    // and no old row. The templates that need the body are skipped (no key
    // is made of an empty, missing or stale body) and, since the default
    // replica identity does not send the old body either, their globs
    // (`docbody:*`, `doctitle:*`) stand in for them: the old title's key is
    // stale and goes too.
    let wrong = [
        "docbody:".to_owned(),
        body_key(""),
        body_key(&big),
        title_key("t2", ""),
        title_key("t2", &big),
        title_key("t1", &big),
    ];
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    set_keys(&mut redis, &wrong).await;
    set_keys(&mut redis, &["doc:1"]).await;
    let missing_before = metric(port, "walbust_rule_missing_values_total");
    let (_, before, _) = commit(&mut db, "UPDATE docs SET title = 't2' WHERE id = 1").await;
    assert_invalidated(&mut redis, &["doc:1"], &[], "update of the title").await;
    assert_invalidated(
        &mut redis,
        &wrong,
        &[],
        "the globs of the skipped templates",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    eventually(PATIENCE, "the missing-values metric to count", || async {
        (metric(port, "walbust_rule_missing_values_total") >= missing_before + 2.0).then_some(())
    })
    .await;

    // Changing the body itself sends it, and the keys are made of it.
    set_keys(
        &mut redis,
        &["doc:1", &body_key(&big2), &title_key("t2", &big2)],
    )
    .await;
    let (_, before, _) = commit(
        &mut db,
        &format!("UPDATE docs SET body = '{big2}' WHERE id = 1"),
    )
    .await;
    assert_invalidated(
        &mut redis,
        &["doc:1", &body_key(&big2), &title_key("t2", &big2)],
        &[],
        "update of the body",
    )
    .await;
    wait_confirmed_past(&db, before).await;
}

// ---------------------------------------------------------------------------
// Explicit invalidation messages

const EXPLICIT_RULES: &str = r#"
version: 1
rules:
  - table: public.carts
    keys: ["cart-row:{id}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_message_arrives_only_if_its_transaction_commits() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE carts (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config(EXPLICIT_RULES, false);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    set_keys(
        &mut redis,
        &[
            "cart:1", "cart:2", "cart:3", "feed:7:a", "feed:8:a", "page:u7",
        ],
    )
    .await;
    let _: () = redis::cmd("SADD")
        .arg("tag:user:7")
        .arg("page:u7")
        .query_async(&mut redis)
        .await
        .unwrap();

    // Rolled back: the message is written to the WAL but never delivered.
    {
        let tx = db.transaction().await.unwrap();
        tx.batch_execute(
            "INSERT INTO carts VALUES (100);
             SELECT pg_logical_emit_message(true, 'walbust', '{\"keys\":[\"cart:1\"]}');",
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    // Malformed content is counted and logged, never fatal.
    commit(
        &mut db,
        "SELECT pg_logical_emit_message(true, 'walbust', '{\"key\":[\"cart:3\"]}')",
    )
    .await;
    // Committed: its keys, tags and patterns go with the transaction.
    let (_, before, _) = commit(
        &mut db,
        "INSERT INTO carts VALUES (1);
         SELECT pg_logical_emit_message(true, 'walbust', \
           '{\"keys\":[\"cart:2\"],\"tags\":[\"user:7\"],\"patterns\":[\"feed:7:*\"]}');",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &["cart:2", "feed:7:a", "page:u7"],
        &["cart:1", "cart:3", "feed:8:a"],
        "a committed explicit message",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    // Everything before the committed transaction was processed by now.
    assert!(
        exists(&mut redis, "cart:1").await,
        "rolled-back message delivered"
    );
    assert!(walbust.is_running());
    let log = walbust.log();
    assert!(
        log.contains("ignored a malformed explicit invalidation message"),
        "{log}"
    );
    assert!(
        !log.contains("cart:3"),
        "message content in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_messages_that_would_empty_the_cache_or_are_too_large_are_refused() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE carts (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(
        EXPLICIT_RULES,
        false,
        &format!(
            "metrics:\n  listen: 127.0.0.1:{port}\nexplicit:\n  max_bytes: 200\n  max_entries: 3\n"
        ),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    set_keys(&mut redis, &["cart:1", "cart:2", "cart:3", "other"]).await;

    let refused = |reason: &str| format!("walbust_explicit_messages_total{{result=\"{reason}\"}}");
    // Any role may send these; none of them may purge anything.
    for message in [
        r#"{"patterns":["*"]}"#.to_string(),
        r#"{"keys":["cart:1"],"patterns":["?*"]}"#.to_string(),
        format!(r#"{{"keys":["cart:1","{}"]}}"#, "x".repeat(300)),
        r#"{"keys":["cart:1","cart:2","cart:3","cart:4"]}"#.to_string(),
    ] {
        commit(
            &mut db,
            &format!("SELECT pg_logical_emit_message(true, 'walbust', '{message}')"),
        )
        .await;
    }
    let (_, last, _) = commit(
        &mut db,
        "SELECT pg_logical_emit_message(true, 'walbust', '{\"keys\":[\"cart:3\"]}')",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &["cart:3"],
        &["cart:1", "cart:2", "other"],
        "after refusals",
    )
    .await;
    wait_confirmed_past(&db, last).await;
    assert_eq!(metric(port, &refused("flush_all")), 2.0);
    assert_eq!(metric(port, &refused("too_large")), 1.0);
    assert_eq!(metric(port, &refused("too_many_entries")), 1.0);
    assert!(walbust.is_running());
    let log = walbust.log();
    assert!(log.contains("would purge every key"), "{log}");
    assert!(
        !log.contains(&"x".repeat(300)),
        "message content in the log"
    );
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());

    // Allowed by the configuration: a flush of every key goes through.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("explicit:\n", "explicit:\n  allow_flush_all: true\n");
    std::fs::write(&config, text).unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    commit(
        &mut db,
        "SELECT pg_logical_emit_message(true, 'walbust', '{\"patterns\":[\"*\"]}')",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &["cart:1", "cart:2", "other"],
        &[],
        "flush allowed",
    )
    .await;
}

// ---------------------------------------------------------------------------
// explain

const SHOP_RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}", "products"]
  - table: products
    on: [update]
    when: { changed: [price] }
    patterns: ["price-list:*"]
  - table: public.orders
    keys: ["order:{id}"]
"#;

fn walbust_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(args)
        .env("WALBUST_LOG", "warn")
        .output()
        .expect("run walbust")
}

#[test]
fn explain_attributes_a_category_move_to_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, SHOP_RULES).unwrap();
    let rules_arg = rules.to_str().unwrap();
    let args = [
        "explain",
        "--rules",
        rules_arg,
        "--table",
        "products",
        "--op",
        "update",
        "--old",
        r#"{"id":"42","category_id":"3","price":"10"}"#,
        "--new",
        r#"{"id":"42","category_id":"4","price":"10"}"#,
    ];
    let out = walbust_cmd(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    assert!(line("product:42").contains("<- rule 1 (line 4)"), "{text}");
    assert!(line("category:3").contains("<- rule 1"), "{text}");
    assert!(line("category:4").contains("<- rule 1"), "{text}");
    assert!(line("products  ").contains("<- rule 1"), "{text}");
    assert!(
        line("rule 2 (").contains("did not fire: its when condition is false"),
        "{text}"
    );
    assert!(text.contains("patterns: none"), "{text}");
    assert!(!text.contains("order:"), "{text}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = walbust_cmd(&json_args);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["table"], "public.products");
    assert_eq!(v["op"], "update");
    assert_eq!(
        v["keys"],
        serde_json::json!([{"value": "product:42", "rules": [1]}])
    );
    assert_eq!(
        v["tags"],
        serde_json::json!([
            {"value": "products", "rules": [1]},
            {"value": "category:3", "rules": [1]},
            {"value": "category:4", "rules": [1]},
        ])
    );
    assert_eq!(v["patterns"], serde_json::json!([]));
    assert_eq!(v["attributed"], true);
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{v}");
    assert_eq!(rules[0]["rule"], 1);
    assert_eq!(rules[0]["fired"], true);
    assert_eq!(rules[0]["line"], 4);
    assert_eq!(rules[1]["rule"], 2);
    assert_eq!(rules[1]["fired"], false);
    assert_eq!(rules[1]["why_not"], "its when condition is false");

    // A price change fires rule 2 too; --config works like --rules.
    let config = dir.path().join("walbust.yaml");
    std::fs::write(
        &config,
        "source:\n  url: postgres://u:p@127.0.0.1:1/db\n  publication: p\n  slot: s\nrules: rules.yaml\nsinks:\n  redis:\n    url: redis://127.0.0.1:1\n",
    )
    .unwrap();
    let out = walbust_cmd(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "public.products",
        "--op",
        "update",
        "--old",
        r#"{"id":"42","category_id":"3","price":"10"}"#,
        "--new",
        r#"{"id":"42","category_id":"3","price":"12"}"#,
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["patterns"],
        serde_json::json!([{"value": "price-list:*", "rules": [2]}])
    );

    // Bad input is one clear line and exit status 2.
    let out = walbust_cmd(&[
        "explain", "--rules", rules_arg, "--table", "products", "--op", "update", "--new", "[1]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--new") && err.lines().count() == 1, "{err}");
}

// ---------------------------------------------------------------------------
// tail

/// A `walbust tail` process writing its stdout to a file.
struct Tail {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Tail {
    fn start(config: &Path) -> Tail {
        let out = config.with_extension("tail.out");
        let err = config.with_extension("tail.err");
        let child = Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["tail", "--json", "--config"])
            .arg(config)
            .env("WALBUST_LOG", "info")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn walbust tail");
        Tail { child, out, err }
    }

    fn output(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default(),
        )
    }

    /// The printed transactions, one JSON object a line.
    fn transactions(&self) -> Vec<serde_json::Value> {
        self.output()
            .0
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn temporary_slots(db: &tokio_postgres::Client) -> Vec<(String, bool, bool)> {
    db.query(
        "SELECT slot_name::text, temporary, active FROM pg_replication_slots ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_committed_transactions_and_publishes_nothing() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL, price int);
         ALTER TABLE products REPLICA IDENTITY FULL;
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE PUBLICATION walbust FOR TABLE products, orders WITH (publish_via_partition_root = true);",
    )
    .await
    .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config(SHOP_RULES, true);

    // No publication, no tail: it creates nothing durable.
    db.batch_execute("ALTER PUBLICATION walbust RENAME TO elsewhere")
        .await
        .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let refused =
        tokio::task::spawn_blocking(move || walbust_cmd(&["tail", "--config", &config_arg]))
            .await
            .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("publication \"walbust\" does not exist"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    db.batch_execute("ALTER PUBLICATION elsewhere RENAME TO walbust")
        .await
        .unwrap();

    let seeded = ["product:1", "product:2", "order:7", "price-list:a"];
    set_keys(&mut redis, &seeded).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:products")
        .arg("product:1")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut tail = Tail::start(&config);
    let slot = eventually(PATIENCE, "tail's temporary slot", || async {
        temporary_slots(&db)
            .await
            .into_iter()
            .find(|(name, temporary, active)| {
                name.starts_with("walbust_tail_") && *temporary && *active
            })
            .map(|(name, _, _)| name)
    })
    .await;
    assert_eq!(
        slot,
        format!("walbust_tail_{}", tail.child.id()),
        "{:?}",
        tail.output()
    );

    let (xid, before, _) = commit(
        &mut db,
        "INSERT INTO products VALUES (1, 3, 10), (2, 3, 20);
         UPDATE products SET category_id = 4, price = 11 WHERE id = 1;
         INSERT INTO orders VALUES (7);",
    )
    .await;
    let (rolled_back_xid, _) = {
        let tx = db.transaction().await.unwrap();
        tx.batch_execute("INSERT INTO orders VALUES (8)")
            .await
            .unwrap();
        let xid: i64 = tx
            .query_one("SELECT txid_current()", &[])
            .await
            .unwrap()
            .get(0);
        tx.rollback().await.unwrap();
        (xid as u32, ())
    };
    let (xid2, _, _) = commit(&mut db, "DELETE FROM orders WHERE id = 7").await;

    let printed = eventually(PATIENCE, "tail to print both transactions", || async {
        let txs = tail.transactions();
        let has = |x: u32| txs.iter().any(|t| t["xid"] == x);
        (has(xid) && has(xid2)).then_some(txs)
    })
    .await;
    let first = printed.iter().find(|t| t["xid"] == xid).unwrap();
    let list = |v: &serde_json::Value| -> Vec<String> {
        let mut l: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        l.sort();
        l
    };
    assert_eq!(list(&first["keys"]), ["order:7", "product:1", "product:2"]);
    assert_eq!(
        list(&first["tags"]),
        ["category:3", "category:4", "products"]
    );
    assert_eq!(list(&first["patterns"]), ["price-list:*"]);
    assert_eq!(
        first["changes"],
        serde_json::json!([
            {"table": "public.products", "op": "insert", "count": 2},
            {"table": "public.products", "op": "update", "count": 1},
            {"table": "public.orders", "op": "insert", "count": 1},
        ])
    );
    let lsn = walbust_pgoutput::parse_lsn(first["commit_lsn"].as_str().unwrap()).unwrap();
    assert!(lsn > before, "{first}");
    assert!(
        printed.iter().all(|t| t["xid"] != rolled_back_xid),
        "a rolled-back transaction was printed: {printed:?}"
    );

    // The pipeline without sinks confirms: the temporary slot moves on.
    eventually(
        PATIENCE,
        "the temporary slot to confirm past the commit",
        || async { confirmed_flush_lsn(&db, &slot).await.filter(|c| *c > lsn) },
    )
    .await;
    // Nothing was published: every cached key is still there.
    for k in seeded.iter().chain(&["tag:products"]) {
        assert!(exists(&mut redis, k).await, "tail removed {k}");
    }
    assert!(
        svc.kafka
            .consume_all(TOPIC, 0, Duration::from_secs(2))
            .map(|r| r.is_empty())
            .unwrap_or(true),
        "tail produced Kafka records"
    );

    // Ctrl-C: exits 0 and leaves no slot behind.
    let status = Command::new("kill")
        .args(["-INT", &tail.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + PATIENCE;
    let exit = loop {
        if let Some(s) = tail.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tail did not stop: {:?}",
            tail.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}: {:?}", tail.output());
    eventually(PATIENCE, "the temporary slot to go", || async {
        temporary_slots(&db).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(redis_keys(&mut redis).await.len(), seeded.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_in_binary_mode_renders_enum_and_domain_columns() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN quantity AS int CHECK (VALUE > 0);
         CREATE TABLE stock (id int PRIMARY KEY, feeling mood, amount quantity);
         CREATE PUBLICATION walbust FOR TABLE stock;",
    )
    .await
    .unwrap();
    let rules = r#"
version: 1
rules:
  - table: public.stock
    keys: ["stock:{id}:{feeling}:{amount}"]
"#;
    let config = write_named_config(&svc, "binary_tail", rules, "  binary: true\n");
    let tail = Tail::start(&config);
    eventually(PATIENCE, "tail's temporary slot", || async {
        temporary_slots(&db)
            .await
            .into_iter()
            .any(|(name, temporary, active)| {
                name.starts_with("walbust_tail_") && temporary && active
            })
            .then_some(())
    })
    .await;
    let (xid, _, _) = commit(&mut db, "INSERT INTO stock VALUES (1, 'happy', 5)").await;
    let printed = eventually(PATIENCE, "tail to print the insert", || async {
        tail.transactions().into_iter().find(|t| t["xid"] == xid)
    })
    .await;
    assert_eq!(printed["keys"], serde_json::json!(["stock:1:happy:5"]));
}

// ---------------------------------------------------------------------------
// Hot reload

const RELOAD_V1: &str =
    "version: 1\nrules:\n  - table: public.products\n    keys: [\"product:{id}\"]\n";
const RELOAD_V2: &str =
    "version: 1\nrules:\n  - table: public.products\n    keys: [\"item:{id}\"]\n";
const RELOAD_UNKNOWN_COLUMN: &str =
    "version: 1\nrules:\n  - table: public.products\n    keys: [\"item:{idd}\"]\n";
const RELOAD_BROKEN: &str =
    "version: 1\nrules:\n  - table: public.products\n    keys: [\"item:{idd}\"]\n    kyes: []\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_without_dropping_the_replication_connection() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(
        RELOAD_V1,
        false,
        &format!("metrics:\n  listen: 127.0.0.1:{port}\n"),
    );
    let rules_file = config.with_file_name("rules.yaml");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let pid = eventually(PATIENCE, "the walsender", || walsender_pid(&db)).await;

    // The first rules.
    set_keys(&mut redis, &["product:1", "item:1"]).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO products VALUES (1, 'a')").await;
    assert_invalidated(&mut redis, &["product:1"], &[], "rules v1").await;
    wait_confirmed_past(&db, before).await;
    assert!(exists(&mut redis, "item:1").await);

    // A valid edit: in effect for the next transaction, same connection.
    std::fs::write(&rules_file, RELOAD_V2).unwrap();
    walbust.wait_log("rules reloaded").await;
    set_keys(&mut redis, &["product:1", "item:1"]).await;
    let (_, before, _) = commit(&mut db, "UPDATE products SET name = 'b' WHERE id = 1").await;
    assert_invalidated(&mut redis, &["item:1"], &[], "rules v2").await;
    wait_confirmed_past(&db, before).await;
    assert!(
        exists(&mut redis, "product:1").await,
        "the old rule still fired after the reload"
    );
    assert_eq!(
        walsender_pid(&db).await,
        Some(pid),
        "the replication connection was replaced"
    );

    // An invalid edit: one log line with the rules error, a metric, and the
    // previous rules keep running.
    let errors_before = metric(port, "walbust_rules_reload_errors_total");
    std::fs::write(&rules_file, RELOAD_BROKEN).unwrap();
    // The watcher may also catch the file half written (truncated, then
    // written): that refusal is not the one under test.
    let log = walbust.wait_log("kyes").await;
    let line = log
        .lines()
        .find(|l| l.contains("rules reload refused") && l.contains("kyes"))
        .unwrap();
    assert!(line.contains("rules.yaml:5:"), "{line}");
    assert!(line.contains("kyes"), "{line}");
    eventually(PATIENCE, "the reload error metric", || async {
        (metric(port, "walbust_rules_reload_errors_total") >= errors_before + 1.0).then_some(())
    })
    .await;
    set_keys(&mut redis, &["product:1", "item:1"]).await;
    let (_, before, _) = commit(&mut db, "UPDATE products SET name = 'c' WHERE id = 1").await;
    assert_invalidated(&mut redis, &["item:1"], &["product:1"], "kept rules v2").await;
    wait_confirmed_past(&db, before).await;

    // SIGHUP loads the file again (still broken: reported again) and does
    // not stop walbust.
    walbust.signal("HUP");
    eventually(
        PATIENCE,
        "SIGHUP to report the broken file again",
        || async {
            (metric(port, "walbust_rules_reload_errors_total") >= errors_before + 2.0).then_some(())
        },
    )
    .await;
    assert!(
        walbust.is_running(),
        "SIGHUP stopped walbust:\n{}",
        walbust.log()
    );

    // Valid YAML naming a column the table does not have: refused before
    // it reaches the reader, with the rule's position.
    std::fs::write(&rules_file, RELOAD_UNKNOWN_COLUMN).unwrap();
    let log = walbust.wait_log("column \"idd\" does not exist").await;
    let line = log.lines().find(|l| l.contains("column \"idd\"")).unwrap();
    assert!(
        line.contains("rules reload refused") && line.contains("rules.yaml:4:"),
        "{line}"
    );
    eventually(PATIENCE, "the reload error metric", || async {
        (metric(port, "walbust_rules_reload_errors_total") >= errors_before + 3.0).then_some(())
    })
    .await;

    // Fixed: v1 again.
    std::fs::write(&rules_file, RELOAD_V1).unwrap();
    eventually(PATIENCE, "the second reload", || async {
        (walbust.log().matches("rules reloaded").count() >= 2).then_some(())
    })
    .await;
    set_keys(&mut redis, &["product:1", "item:1"]).await;
    let (_, before, _) = commit(&mut db, "UPDATE products SET name = 'd' WHERE id = 1").await;
    assert_invalidated(&mut redis, &["product:1"], &["item:1"], "rules v1 again").await;
    wait_confirmed_past(&db, before).await;
    assert_eq!(
        walsender_pid(&db).await,
        Some(pid),
        "the replication connection was replaced"
    );
    assert_eq!(
        metric(port, "walbust_rule_reloads_total{result=\"applied\"}"),
        2.0
    );
}

const RELOAD_SKU: &str =
    "version: 1\nrules:\n  - table: public.products\n    on: [insert]\n    keys: [\"sku:{sku}\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_for_a_new_column_applies_once_the_table_is_described_again() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(RELOAD_V1, false, &metrics_on(port));
    let rules_file = config.with_file_name("rules.yaml");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // walbust caches the table as it is now.
    set_keys(&mut redis, &["product:1"]).await;
    commit(&mut db, "INSERT INTO products VALUES (1, 'a')").await;
    assert_invalidated(&mut redis, &["product:1"], &[], "rules v1").await;

    // The catalog has the column, walbust's description of the table not
    // yet: the reader refuses the rules at the next transaction, which
    // itself describes the table anew.
    db.batch_execute("ALTER TABLE products ADD COLUMN sku text")
        .await
        .unwrap();
    std::fs::write(&rules_file, RELOAD_SKU).unwrap();
    walbust.wait_log("rules reloaded").await;
    set_keys(&mut redis, &["product:2", "sku:s2"]).await;
    commit(&mut db, "INSERT INTO products VALUES (2, 'b', 's2')").await;
    walbust.wait_log("new rules do not fit").await;
    assert_invalidated(&mut redis, &["product:2"], &["sku:s2"], "still rules v1").await;

    // That change described the table with the column: the rules are
    // tried again at the next transaction, without any signal or edit.
    set_keys(&mut redis, &["product:3", "sku:s3"]).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO products VALUES (3, 'c', 's3')").await;
    assert_invalidated(&mut redis, &["sku:s3"], &[], "rules with sku").await;
    wait_confirmed_past(&db, before).await;
    assert!(
        exists(&mut redis, "product:3").await,
        "rules v1 still fired"
    );
    assert!(walbust.log().contains("new rules in effect"));
    assert_eq!(
        metric(port, "walbust_rule_reloads_total{result=\"applied\"}"),
        1.0
    );
    assert!(metric(port, "walbust_rule_reloads_total{result=\"refused\"}") >= 1.0);
}

// ---------------------------------------------------------------------------
// Relation descriptions a rule cannot be rendered against

const DEGRADED: &str = "walbust_rule_degraded_bindings_total";

/// The metrics section of a configuration, on a fresh port.
fn metrics_on(port: u16) -> String {
    format!("metrics:\n  listen: 127.0.0.1:{port}\n")
}

/// A key dropped as too long under `on_long_key: refuse` is counted, and
/// walbust goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_refused_are_counted() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, slug text)")
        .await
        .unwrap();
    let rules = "version: 1\nmax_key_bytes: 40\non_long_key: refuse\nrules:\n  - table: public.notes\n    keys: [\"note:{id}\", \"slug:{slug}\"]\n";
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(rules, false, &metrics_on(port));
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["note:1"]).await;
    let series = "walbust_rule_long_keys_refused_total";
    assert_eq!(metric(port, series), 0.0, "exported from the start");
    db.execute("INSERT INTO notes VALUES (1, $1)", &[&"s".repeat(100)])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &["note:1"], &[], "the short key").await;
    eventually(PATIENCE, "the refusal counted", || async {
        (metric(port, series) == 1.0).then_some(())
    })
    .await;
    assert!(walbust.is_running());
}

/// walbust's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

const HUGE_VALUE: &str = r#"
version: 1
rules:
  - table: public.docs
    prefix: "doc:"
    keys: ["{id}:{body}"]
    tags: ["body:{body}"]
    patterns: ["search:{body}:*"]
"#;

/// A 32 MB text value in a row: the key and the tag rendered from it are
/// hashed, the pattern is replaced by its glob (counted), Redis and Kafka
/// get only short entries, walbust goes on, and the long strings are never
/// built (peak memory stays within a few copies of the row as the server
/// sent it, not one per template and sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_value_is_hashed_or_covered_and_never_held_per_template() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(HUGE_VALUE, true, &metrics_on(port));
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let before = peak_rss(walbust.pid());

    const BODY_BYTES: usize = 32 << 20;
    let body = "x".repeat(BODY_BYTES);
    let key = format!("doc:#{}", walbust_rules::hash_value(&format!("1:{body}")));
    let tag = format!("#{}", walbust_rules::hash_value(&format!("body:{body}")));
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &[&key, "doc:search:x:1", "doc:list:1"]).await;
    db.execute("INSERT INTO docs VALUES (1, $1)", &[&body])
        .await
        .unwrap();
    drop(body);

    assert_invalidated(
        &mut redis,
        &[&key, "doc:search:x:1"],
        &["doc:list:1"],
        "the hashed key and the pattern's glob",
    )
    .await;
    let records = kafka_records(&svc.kafka, 1);
    let record = records
        .iter()
        .find(|r| strings(&r["keys"]).contains(&key))
        .unwrap_or_else(|| panic!("no record with the hashed key: {records:?}"));
    assert_eq!(strings(&record["tags"]), [tag]);
    assert_eq!(strings(&record["patterns"]), ["doc:search:*:*"]);
    eventually(PATIENCE, "the oversize pattern counted", || async {
        (metric(port, "walbust_rule_oversize_patterns_total") == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(port, "walbust_rule_long_keys_hashed_total"),
        2.0,
        "the key and the tag"
    );
    assert_eq!(metric(port, "walbust_kafka_oversize_entries_total"), 0.0);
    assert!(walbust.is_running());

    let peak = peak_rss(walbust.pid());
    eprintln!(
        "walbust peak RSS: {} MiB before the row, {} MiB after (the row: {} MiB)",
        before >> 20,
        peak >> 20,
        BODY_BYTES >> 20
    );
    // The transport holds the server's message whole (measured: the whole
    // increase); a template or sink holding its own copy would add 32 MiB each.
    assert!(
        peak < before + 2 * BODY_BYTES as u64,
        "peak RSS {} MiB, {} MiB before a {} MiB row",
        peak >> 20,
        before >> 20,
        BODY_BYTES >> 20
    );
}

const RENAME_V1: &str = r#"
version: 1
on_long_key: refuse
rules:
  - table: public.t
    keys: ["t:{id}:{aa}"]
  - table: public.u
    keys: ["u:{id}"]
"#;

const RENAME_V2: &str = r#"
version: 1
on_long_key: refuse
rules:
  - table: public.t
    keys: ["t:{id}:{a3}"]
  - table: public.u
    keys: ["u:{id}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_renamed_mid_transaction_falls_back_instead_of_stopping() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, aa int) ;
         ALTER TABLE t REPLICA IDENTITY FULL;
         CREATE TABLE u (id int PRIMARY KEY);
         INSERT INTO t VALUES (1, 10);",
    )
    .await
    .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(RENAME_V1, false, &metrics_on(port));
    let rules_file = config.with_file_name("rules.yaml");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // The second UPDATE is decoded with the renamed column, which the
    // rules (`{aa}`) do not know: that rule falls back to `t:*`, and the
    // other table is invalidated all the same.
    set_keys(&mut redis, &["t:1:10", "t:1:11", "t:1:12", "u:5", "v:1"]).await;
    let (_, before, _) = commit(
        &mut db,
        "UPDATE t SET aa = 11 WHERE id = 1;
         ALTER TABLE t RENAME COLUMN aa TO a3;
         UPDATE t SET a3 = 12 WHERE id = 1;
         INSERT INTO u VALUES (5);",
    )
    .await;
    assert_invalidated(
        &mut redis,
        &["t:1:10", "t:1:11", "t:1:12", "u:5"],
        &["v:1"],
        "the transaction with the rename",
    )
    .await;
    wait_confirmed_past(&db, before).await;
    assert!(walbust.is_running(), "walbust stopped:\n{}", walbust.log());
    assert!(metric(port, &format!("{DEGRADED}{{reason=\"missing_column\"}}")) >= 1.0);
    let log = walbust.log();
    assert!(log.contains("lacks columns a rule reads"), "{log}");

    // Rules that fit the renamed table: normal keys again, no fallback.
    std::fs::write(&rules_file, RENAME_V2).unwrap();
    walbust.wait_log("rules reloaded").await;
    set_keys(&mut redis, &["t:1:12", "t:1:13", "t:9:0"]).await;
    let (_, before, _) = commit(&mut db, "UPDATE t SET a3 = 13 WHERE id = 1").await;
    assert_invalidated(&mut redis, &["t:1:12", "t:1:13"], &["t:9:0"], "after").await;
    wait_confirmed_past(&db, before).await;
    assert!(
        exists(&mut redis, "t:9:0").await,
        "the fallback fired again"
    );
}

const ADDED_V1: &str = r#"
version: 1
on_long_key: refuse
rules:
  - table: public.p
    keys: ["p:{id}"]
"#;

const ADDED_V2: &str = r#"
version: 1
on_long_key: refuse
rules:
  - table: public.p
    keys: ["p:{id}:{c}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_and_rule_added_while_down_start_on_the_older_changes() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE p (id int PRIMARY KEY); ALTER TABLE p REPLICA IDENTITY FULL;")
        .await
        .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(ADDED_V1, false, &metrics_on(port));
    let rules_file = config.with_file_name("rules.yaml");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.signal("TERM");
    assert!(walbust.wait(PATIENCE).success(), "{}", walbust.log());

    // Written while walbust is down, before the column existed.
    commit(&mut db, "INSERT INTO p VALUES (1)").await;
    db.batch_execute("ALTER TABLE p ADD COLUMN c int")
        .await
        .unwrap();
    std::fs::write(&rules_file, ADDED_V2).unwrap();
    set_keys(&mut redis, &["p:1:7", "p:1:8", "q:1"]).await;

    let mut walbust = Walbust::start(&config);
    assert_invalidated(&mut redis, &["p:1:7", "p:1:8"], &["q:1"], "older insert").await;
    assert!(walbust.is_running(), "walbust stopped:\n{}", walbust.log());
    eventually(PATIENCE, "the degraded binding to be counted", || async {
        (metric(port, &format!("{DEGRADED}{{reason=\"missing_column\"}}")) >= 1.0).then_some(())
    })
    .await;

    // Changes written with the column are invalidated normally.
    set_keys(&mut redis, &["p:2:8", "p:3:0"]).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO p VALUES (2, 8)").await;
    assert_invalidated(&mut redis, &["p:2:8"], &["p:3:0"], "newer insert").await;
    wait_confirmed_past(&db, before).await;
}

const IDENTITY_RULES: &str = r#"
version: 1
on_long_key: refuse
rules:
  - table: public.fc
    keys: ["fc:{cat}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_identity_downgraded_at_runtime_still_covers_the_old_key() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE fc (id int PRIMARY KEY, cat int);
         ALTER TABLE fc REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let port = walbust_testkit::free_port();
    let config = svc.write_config_with(IDENTITY_RULES, false, &metrics_on(port));
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    let (_, before, _) = commit(&mut db, "INSERT INTO fc VALUES (1, 2)").await;
    wait_confirmed_past(&db, before).await;

    // DEFAULT sends no old row for an update that keeps the key: `cat` 2
    // is unknown to walbust, so `fc:*` stands in for `fc:2`.
    db.batch_execute("ALTER TABLE fc REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let missing_before = metric(port, "walbust_rule_missing_values_total");
    set_keys(&mut redis, &["fc:2", "fc:3", "other:2"]).await;
    let (_, before, _) = commit(&mut db, "UPDATE fc SET cat = 3 WHERE id = 1").await;
    assert_invalidated(&mut redis, &["fc:2", "fc:3"], &["other:2"], "the move").await;
    wait_confirmed_past(&db, before).await;
    eventually(PATIENCE, "the missing old value to be counted", || async {
        (metric(port, "walbust_rule_missing_values_total") > missing_before).then_some(())
    })
    .await;
    assert!(
        metric(
            port,
            &format!("{DEGRADED}{{reason=\"old_value_not_sent\"}}")
        ) >= 1.0
    );
    let log = walbust.log();
    assert!(
        log.contains("replica identity does not send old values"),
        "{log}"
    );
}
