//! End to end: a committed row change in Postgres becomes deleted Redis keys
//! and a Kafka record, for insert, update, delete and truncate.

mod support;

use std::time::Duration;

use support::*;

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}", "products"]
    patterns: ["product-list:{category_id}:*", "search:*"]
"#;

const SCHEMA: &str = "
CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL, name text NOT NULL);
ALTER TABLE products REPLICA IDENTITY FULL;
CREATE TABLE unrelated (id int PRIMARY KEY);
";

/// Keys present before every step: some each step must remove, some it must not.
const SEEDED: &[&str] = &[
    "product:1",
    "product:2",
    "page:cat3:a",
    "page:cat3:b",
    "page:cat4:a",
    "page:cat5:a",
    "page:all",
    "product-list:3:p1",
    "product-list:4:p1",
    "product-list:5:p1",
    "search:shoes",
    "other:1",
];

async fn seed(redis: &mut redis::aio::MultiplexedConnection) {
    set_keys(redis, SEEDED).await;
    // Tag `set` strategy: the application registers cache keys under each tag.
    for (tag, members) in [
        ("tag:category:3", &["page:cat3:a", "page:cat3:b"][..]),
        ("tag:category:4", &["page:cat4:a"][..]),
        ("tag:category:5", &["page:cat5:a"][..]),
        ("tag:products", &["page:all"][..]),
    ] {
        for m in members {
            let _: () = redis::cmd("SADD")
                .arg(tag)
                .arg(*m)
                .query_async(redis)
                .await
                .unwrap();
        }
    }
}

fn record_for(records: &[serde_json::Value], xid: u32) -> serde_json::Value {
    records
        .iter()
        .find(|r| carries(r, xid))
        .cloned()
        .unwrap_or_else(|| panic!("no Kafka record carries xid {xid}: {records:?}"))
}

fn check_record(rec: &serde_json::Value, before: u64, after: u64) {
    assert_eq!(rec["v"], 1, "{rec}");
    let lsn = walbust_pgoutput::parse_lsn(rec["lsn"].as_str().expect("lsn is a string")).unwrap();
    assert!(
        lsn > before && lsn <= after,
        "record lsn {} is not the commit's ({} .. {})",
        rec["lsn"],
        walbust_pgoutput::format_lsn(before),
        walbust_pgoutput::format_lsn(after)
    );
    let ts = rec["commit_ts"].as_str().expect("commit_ts");
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-11-22T10:00:00.123456Z".len(),
        "{ts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_changes_invalidate_redis_and_reach_kafka() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config(RULES, true);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // Insert: the new row's key, its category's tag, the list pages of its category.
    seed(&mut redis).await;
    let (xid_ins, b, a) = commit(&mut db, "INSERT INTO products VALUES (1, 3, 'boots')").await;
    assert_invalidated(
        &mut redis,
        &[
            "product:1",
            "page:cat3:a",
            "page:cat3:b",
            "tag:category:3",
            "page:all",
            "product-list:3:p1",
            "search:shoes",
        ],
        &["product:2", "page:cat4:a", "product-list:4:p1", "other:1"],
        "insert",
    )
    .await;
    wait_confirmed_past(&db, b).await;
    let rec = record_for(&kafka_records(&svc.kafka, 1), xid_ins);
    check_record(&rec, b, a);
    assert_eq!(strings(&rec["keys"]), ["product:1"]);
    assert_eq!(strings(&rec["tags"]), ["category:3", "products"]);
    assert_eq!(strings(&rec["patterns"]), ["product-list:3:*", "search:*"]);

    // Update moving the product to another category: both categories.
    seed(&mut redis).await;
    let (xid_upd, b, a) = commit(&mut db, "UPDATE products SET category_id = 4 WHERE id = 1").await;
    assert_invalidated(
        &mut redis,
        &[
            "product:1",
            "page:cat3:a",
            "page:cat4:a",
            "product-list:3:p1",
            "product-list:4:p1",
        ],
        &["product:2", "page:cat5:a", "product-list:5:p1", "other:1"],
        "update",
    )
    .await;
    wait_confirmed_past(&db, b).await;
    let rec = record_for(&kafka_records(&svc.kafka, 2), xid_upd);
    check_record(&rec, b, a);
    assert_eq!(
        strings(&rec["tags"]),
        ["category:3", "category:4", "products"]
    );

    // Delete: the old row's values.
    seed(&mut redis).await;
    let (xid_del, b, a) = commit(&mut db, "DELETE FROM products WHERE id = 1").await;
    assert_invalidated(
        &mut redis,
        &["product:1", "page:cat4:a", "product-list:4:p1"],
        &["product:2", "page:cat3:a", "product-list:3:p1", "other:1"],
        "delete",
    )
    .await;
    wait_confirmed_past(&db, b).await;
    let rec = record_for(&kafka_records(&svc.kafka, 3), xid_del);
    check_record(&rec, b, a);
    assert_eq!(strings(&rec["keys"]), ["product:1"]);

    // Truncate: rows are unknown, so the rule's constant tags and patterns.
    let (_, b, _) = commit(&mut db, "INSERT INTO products VALUES (2, 5, 'hat')").await;
    wait_confirmed_past(&db, b).await;
    seed(&mut redis).await;
    let (xid_tr, b, a) = commit(&mut db, "TRUNCATE products").await;
    assert_invalidated(
        &mut redis,
        &["page:all", "search:shoes", "tag:products"],
        &["product:2", "page:cat5:a", "product-list:5:p1", "other:1"],
        "truncate",
    )
    .await;
    wait_confirmed_past(&db, b).await;
    let rec = record_for(&kafka_records(&svc.kafka, 5), xid_tr);
    check_record(&rec, b, a);
    assert!(strings(&rec["keys"]).is_empty());
    assert_eq!(strings(&rec["tags"]), ["products"]);
    assert_eq!(strings(&rec["patterns"]), ["search:*"]);

    // A change to a table no rule names invalidates nothing and is not published.
    let records_before = kafka_records(&svc.kafka, 5).len();
    seed(&mut redis).await;
    let (xid_other, b_other, _) = commit(&mut db, "INSERT INTO unrelated VALUES (1)").await;
    wait_confirmed_past(&db, b_other).await;
    for k in SEEDED {
        assert!(
            exists(&mut redis, k).await,
            "{k} removed by an unrelated change"
        );
    }
    let records = kafka_records(&svc.kafka, records_before);
    assert!(records.iter().all(|r| !r["xids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v.as_u64() == Some(u64::from(xid_other)))));

    // SIGTERM: finishes, acknowledges, exits 0, and the slot is past the
    // last commit.
    walbust.signal("TERM");
    let status = walbust.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        walbust.log()
    );
    let confirmed = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(
        confirmed > b_other,
        "confirmed_flush_lsn {} does not cover the last commit (after {})",
        walbust_pgoutput::format_lsn(confirmed),
        walbust_pgoutput::format_lsn(b_other),
    );
}
