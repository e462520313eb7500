//! Binary mode (`source.binary: true`) end to end: the same changes give
//! the same keys, tags and condition results as text mode, and rules over a
//! type walbust cannot render are refused at start-up.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE things (
    id int PRIMARY KEY, big bigint, label varchar(40), uid uuid, flag bool,
    amount numeric, at timestamptz, day date, feeling mood, spot point
);
ALTER TABLE things REPLICA IDENTITY FULL;
CREATE PUBLICATION walbust FOR TABLE things;
-- Server defaults that keys must not follow: walbust pins UTC and ISO.
ALTER DATABASE postgres SET TimeZone = 'Asia/Kolkata';
ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
";

/// Every column type a key commonly uses, in a key, a tag and a condition.
/// `spot` (a point) is published but read by no rule.
const RULES: &str = r#"
version: 1
rules:
  - table: public.things
    keys: ["t:{id}|{big}|{label}|{uid}|{flag}|{amount}|{at}|{day}|{feeling}"]
    tags: ["day:{day}"]
  - table: public.things
    on: [insert, update]
    when: { new: { flag: { eq: t }, feeling: { in: [happy, ok] } } }
    keys: ["flagged:{new.id}"]
"#;

/// One transaction per statement.
const WRITES: &[&str] = &[
    "INSERT INTO things VALUES (1, 9223372036854775807, 'héllo wörld',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 1.50,
        '2024-01-02 03:04:05.123456+02', '2024-02-29', 'happy', point(1, 2))",
    "INSERT INTO things VALUES (-2, -9223372036854775808, '',
        '00000000-0000-0000-0000-000000000000', false, -0.001,
        '0044-03-15 12:00:00+00 BC', '0001-12-31 BC', 'sad', NULL)",
    "INSERT INTO things VALUES (3, 0, 'three', '123e4567-e89b-12d3-a456-426614174000', true,
        123456789012345678901234567890.000100, 'infinity', 'infinity', 'ok', point(0, 0))",
    "INSERT INTO things VALUES (4, 42, 'four', 'ffffffff-ffff-ffff-ffff-ffffffffffff', NULL,
        'NaN', '-infinity', '5874897-12-31', 'ok', NULL)",
    "INSERT INTO things
     SELECT i, (random() * 1e18)::int8 - 5e17::int8, md5(i::text), gen_random_uuid(),
            i % 3 = 0, round(((random() - 0.5) * 10 ^ (i % 30 - 15))::numeric, i % 12),
            now() - random() * interval '300 years', current_date - (random() * 100000)::int,
            (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood, point(i, i)
     FROM generate_series(5, 200) i",
    "UPDATE things SET amount = amount * 2, at = at + interval '1 microsecond' WHERE id = 1",
    "UPDATE things SET flag = NOT flag, day = day + 1 WHERE id BETWEEN 5 AND 50",
    "DELETE FROM things WHERE id = 2",
    "DELETE FROM things WHERE id BETWEEN 100 AND 120",
];

/// What text mode must print, whatever the server's TimeZone and DateStyle.
const EXPECTED: &[&str] = &[
    "key:t:1|9223372036854775807|héllo wörld|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|t|1.50|2024-01-02 01:04:05.123456+00|2024-02-29|happy",
    "key:t:1|9223372036854775807|héllo wörld|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|t|3.00|2024-01-02 01:04:05.123457+00|2024-02-29|happy",
    "key:t:-2|-9223372036854775808||00000000-0000-0000-0000-000000000000|f|-0.001|0044-03-15 12:00:00+00 BC|0001-12-31 BC|sad",
    "key:t:3|0|three|123e4567-e89b-12d3-a456-426614174000|t|123456789012345678901234567890.000100|infinity|infinity|ok",
    "key:flagged:1",
    "key:flagged:3",
    "tag:day:2024-02-29",
    "tag:day:0001-12-31 BC",
    "tag:day:infinity",
    "tag:day:5874897-12-31",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_gives_the_keys_of_text_mode() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();

    // Two walbust processes on their own slots read the same changes, one
    // in each mode.
    let text_cfg = write_named_config(&svc, "text_mode", RULES, "");
    let binary_cfg = write_named_config(&svc, "binary_mode", RULES, "  binary: true\n");
    let mut text = Walbust::start(&text_cfg);
    wait_slot_active(&db, &mut text, "text_mode").await;
    let mut binary = Walbust::start(&binary_cfg);
    wait_slot_active(&db, &mut binary, "binary_mode").await;

    for sql in WRITES {
        let tx = db.transaction().await.unwrap();
        tx.batch_execute(sql).await.unwrap();
        tx.commit().await.unwrap();
    }
    let end = current_wal_lsn(&db).await;
    for slot in ["text_mode", "binary_mode"] {
        eventually(
            Duration::from_secs(60),
            "both modes to confirm every write",
            || async { confirmed_flush_lsn(&db, slot).await.filter(|c| *c >= end) },
        )
        .await;
    }
    assert!(text.is_running(), "{}", text.log());
    assert!(binary.is_running(), "{}", binary.log());

    let from_text = kafka_invalidations(&svc.kafka, "text_mode");
    let from_binary = kafka_invalidations(&svc.kafka, "binary_mode");
    for expected in EXPECTED {
        assert!(
            from_text.contains(*expected),
            "text mode lacks {expected}: {from_text:#?}"
        );
    }
    for absent in ["key:flagged:2", "key:flagged:4"] {
        assert!(!from_text.contains(absent), "{absent} fired");
    }
    // 4 + 196 inserted rows, the updated and deleted ones again: far more
    // than the edge rows alone.
    assert!(from_text.len() > 300, "{} invalidations", from_text.len());
    let only_text: Vec<_> = from_text.difference(&from_binary).collect();
    let only_binary: Vec<_> = from_binary.difference(&from_text).collect();
    assert!(
        only_text.is_empty() && only_binary.is_empty(),
        "modes differ:\nonly in text mode: {only_text:#?}\nonly in binary mode: {only_binary:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_over_a_type_without_rendering_is_refused_at_start_up() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE places (id int PRIMARY KEY, spot point, label text);
         CREATE PUBLICATION walbust FOR TABLE places;",
    )
    .await
    .unwrap();
    let rules = r#"
version: 1
rules:
  - table: public.places
    keys: ["place:{id}:{spot}"]
"#;

    const REFUSAL: &str = "table public.places: the rules read column spot of type point, \
        which binary mode (source.binary: true) cannot render as text";
    let binary_config = write_named_config(&svc, "binary_mode", rules, "  binary: true\n");

    // `check --db` finds it without starting anything.
    let check = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--db", "--config"])
        .arg(&binary_config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "check --db passed:\n{printed}");
    assert!(printed.contains(REFUSAL), "{printed}");

    let mut binary = Walbust::start(&binary_config);
    let status = binary.wait(Duration::from_secs(60));
    let log = binary.log();
    assert_eq!(
        status.code(),
        Some(3),
        "not the definite-error exit; log:\n{log}"
    );
    assert!(log.contains(REFUSAL), "{log}");
    // Refused before the slot was created (`create: true`): nothing is left
    // on the server holding WAL.
    assert!(
        !slot_exists(&db, "binary_mode").await,
        "the refused start left its slot behind"
    );

    // The same rules run in text mode, where the value arrives as text.
    let mut text = Walbust::start(&write_named_config(&svc, "text_mode", rules, ""));
    wait_slot_active(&db, &mut text, "text_mode").await;
    db.batch_execute("INSERT INTO places VALUES (1, point(1.5, -2), 'a')")
        .await
        .unwrap();
    confirmed(&db, "text_mode").await;
    let seen = kafka_invalidations(&svc.kafka, "text_mode");
    assert!(seen.contains("key:place:1:(1.5,-2)"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_column_changed_to_a_new_enum_renders_without_a_restart() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE moods (id int PRIMARY KEY, feeling text);
         CREATE PUBLICATION walbust FOR TABLE moods;",
    )
    .await
    .unwrap();
    let rules = r#"
version: 1
rules:
  - table: public.moods
    keys: ["m:{id}:{feeling}"]
"#;
    let config = write_named_config(&svc, "binary_mode", rules, "  binary: true\n");
    let mut binary = Walbust::start(&config);
    wait_slot_active(&db, &mut binary, "binary_mode").await;
    commit(&mut db, "INSERT INTO moods VALUES (1, 'ok')").await;

    // The type did not exist when walbust read the catalog.
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         ALTER TABLE moods ALTER COLUMN feeling TYPE mood USING feeling::mood;",
    )
    .await
    .unwrap();
    commit(&mut db, "INSERT INTO moods VALUES (2, 'happy')").await;
    commit(&mut db, "UPDATE moods SET feeling = 'sad' WHERE id = 1").await;
    confirmed(&db, "binary_mode").await;
    assert!(binary.is_running(), "{}", binary.log());
    let seen = kafka_invalidations(&svc.kafka, "binary_mode");
    for key in ["key:m:1:ok", "key:m:2:happy", "key:m:1:sad"] {
        assert!(seen.contains(key), "{key} missing: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refused_by_the_reader_keeps_the_last_rules_in_effect() {
    let svc = Services::start();
    let mut db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE places (id int PRIMARY KEY, spot point);
         CREATE PUBLICATION walbust FOR TABLE places;",
    )
    .await
    .unwrap();
    let version = |key: &str| {
        format!("version: 1\nrules:\n  - table: public.places\n    keys: [\"{key}\"]\n")
    };
    let config = write_named_config(&svc, "binary_mode", &version("v1:{id}"), "  binary: true\n");
    let rules_file = config.with_file_name("binary_mode.rules.yaml");
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&db, &mut walbust, "binary_mode").await;
    commit(&mut db, "INSERT INTO places VALUES (1, point(0, 0))").await;
    confirmed(&db, "binary_mode").await;

    std::fs::write(&rules_file, version("v2:{id}")).unwrap();
    walbust.wait_log("rules reloaded").await;
    commit(&mut db, "INSERT INTO places VALUES (2, point(0, 0))").await;
    walbust.wait_log("new rules in effect").await;
    confirmed(&db, "binary_mode").await;

    // Valid against the catalog, refused by the reader: binary mode cannot
    // render a point.
    std::fs::write(&rules_file, version("v3:{id}:{spot}")).unwrap();
    walbust
        .wait_log_lines(2, "the second reload", |l| l.contains("rules reloaded"))
        .await;
    commit(&mut db, "INSERT INTO places VALUES (3, point(0, 0))").await;
    walbust.wait_log("new rules do not fit").await;
    // SIGHUP offers the file again: it is not the rules in effect.
    walbust.signal("HUP");
    walbust
        .wait_log_lines(3, "SIGHUP to offer the file again", |l| {
            l.contains("rules reloaded")
        })
        .await;
    commit(&mut db, "INSERT INTO places VALUES (4, point(0, 0))").await;
    confirmed(&db, "binary_mode").await;

    // Back to the rules in effect: withdrawn at the reader, v2 goes on.
    std::fs::write(&rules_file, version("v2:{id}")).unwrap();
    commit(&mut db, "INSERT INTO places VALUES (5, point(0, 0))").await;
    confirmed(&db, "binary_mode").await;
    assert!(walbust.is_running(), "{}", walbust.log());
    assert!(
        !walbust.log().contains("rules file unchanged"),
        "{}",
        walbust.log()
    );
    let seen = kafka_invalidations(&svc.kafka, "binary_mode");
    for key in ["key:v1:1", "key:v2:2", "key:v2:3", "key:v2:4", "key:v2:5"] {
        assert!(seen.contains(key), "{key} missing: {seen:?}");
    }
    assert!(
        !seen.iter().any(|k| k.starts_with("key:v3:")),
        "the refused rules fired: {seen:?}"
    );
}

/// Waits until `slot` confirmed everything written so far.
async fn confirmed(db: &tokio_postgres::Client, slot: &str) {
    let end = current_wal_lsn(db).await;
    eventually(
        Duration::from_secs(60),
        "every write to be confirmed",
        || async { confirmed_flush_lsn(db, slot).await.filter(|c| *c >= end) },
    )
    .await;
}
