//! `walbust check --db` against a live database: every problem on its own
//! line, and a non-zero exit status when there is an error.

mod support;

use std::path::PathBuf;
use std::process::Output;

use support::*;

const SCHEMA: &str = "
CREATE TABLE products (id int PRIMARY KEY, category_id int NOT NULL, name text);
CREATE TABLE orders (id int PRIMARY KEY, user_id int);
CREATE TABLE docs (id int PRIMARY KEY, body text);
CREATE TABLE accounts (id int PRIMARY KEY, email text);
ALTER TABLE accounts REPLICA IDENTITY FULL;
CREATE TABLE events (id int, kind int, note text, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2);
ALTER TABLE events_1 REPLICA IDENTITY FULL;
CREATE PUBLICATION walbust FOR TABLE products, docs, accounts, events
    WITH (publish_via_partition_root = true);
CREATE PUBLICATION flat FOR TABLE events;
";

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}"]
  - table: products
    on: [insert]
    keys: ["product:{id}:{colour}"]
  - table: public.orders
    keys: ["order:{id}"]
  - table: public.missing
    keys: ["missing:{id}"]
  - table: public.docs
    on: [insert, update]
    keys: ["doc:{id}:{new.body:hash}"]
  - table: public.events_1
    keys: ["event:{id}"]
  - table: public.accounts
    keys: ["account:{id}", "email:{email:hash}"]
  - table: public.events
    keys: ["event:{id}:{note}"]
"#;

fn write(svc: &Services, name: &str, publication: &str, rules: &str) -> PathBuf {
    let rules_path = svc.dir.path().join(format!("{name}.rules.yaml"));
    std::fs::write(&rules_path, rules).unwrap();
    let config = svc.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "source:\n  url: \"{}\"\n  publication: {publication}\n  slot: walbust\nrules: {}\nsinks:\n  redis:\n    url: \"{}\"\n",
            svc.pg.url(),
            rules_path.file_name().unwrap().to_str().unwrap(),
            svc.redis.url()
        ),
    )
    .unwrap();
    config
}

fn lines(out: &Output, prefix: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The one line of `list` holding every needle.
fn find<'a>(list: &'a [String], needles: &[&str]) -> &'a str {
    let found: Vec<&String> = list
        .iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one line with {needles:?} in:\n{}",
        list.join("\n")
    );
    found[0]
}

/// The schema, a slot and the DDL guard (as deploy/postgres-setup.sql
/// installs it).
async fn setup() -> Services {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    db.batch_execute(walbust_cdc::window::GUARD_SQL)
        .await
        .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')")
        .await
        .unwrap();
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_db_reports_every_problem_on_its_own_line() {
    let svc = setup().await;
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("DROP EVENT TRIGGER walbust_ddl_guard")
        .await
        .unwrap();
    let out = check_db(write(&svc, "all", "walbust", RULES)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let errors = lines(&out, "error: ");
    let warnings = lines(&out, "warning: ");

    // The read-only checks of the server, the slot and the sink still run.
    assert!(stdout.contains("ok: sink redis is healthy"), "{stdout}");
    assert!(stdout.contains("ok: database ready"), "{stdout}");

    // Missing table.
    find(
        &errors,
        &["table public.missing", "rule 4 (", "does not exist"],
    );
    // Not in the publication, with the fix.
    find(
        &errors,
        &[
            "table public.orders",
            "rule 3 (",
            "not in publication walbust",
            "ALTER PUBLICATION walbust ADD TABLE public.orders",
        ],
    );
    // A partition named while the publication publishes via the root.
    find(
        &errors,
        &[
            "table public.events_1",
            "rule 6 (",
            "is a partition",
            "arrive as public.events",
        ],
    );
    // Unknown column, with the rule's position.
    find(
        &errors,
        &[
            "all.rules.yaml:8:",
            "rule 2 (products)",
            "column \"colour\" does not exist in table public.products",
        ],
    );
    // Insufficient replica identity: a plain table...
    find(
        &errors,
        &[
            "table public.products: replica identity DEFAULT sends old values of id only",
            "rule 1 (",
            "category_id",
            "ALTER TABLE public.products REPLICA IDENTITY FULL",
        ],
    );
    // ...and a partition of a partitioned table (the leaf decides).
    find(
        &errors,
        &[
            "partition public.events_2 of table public.events",
            "replica identity DEFAULT",
            "rule 8 (",
            "note",
        ],
    );
    assert_eq!(errors.len(), 6, "{stdout}");

    // TOAST-able columns in templates without REPLICA IDENTITY FULL.
    find(
        &warnings,
        &[
            "table public.docs: column body (text) can be TOASTed",
            "rule 5 (",
        ],
    );
    find(
        &warnings,
        &[
            "table public.events: column note (text)",
            "rule 8 (",
            "ALTER TABLE public.events_2 REPLICA IDENTITY FULL",
        ],
    );
    // Without the DDL guard a brief window goes unseen.
    find(
        &warnings,
        &[
            "DDL guard not installed (event trigger walbust_ddl_guard)",
            "deploy/postgres-setup.sql",
        ],
    );
    assert_eq!(warnings.len(), 3, "{stdout}");
    assert!(stdout.contains("6 error(s), 3 warning(s)"), "{stdout}");
    // Clean tables are not mentioned.
    assert!(
        !errors
            .iter()
            .chain(&warnings)
            .any(|l| l.contains("accounts")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_db_sees_partitioned_tables_published_leaf_by_leaf_and_passes_clean_rules() {
    let svc = setup().await;

    // `flat` publishes the partitions under their own names: a rule on the
    // parent would never fire.
    let out = check_db(write(
        &svc,
        "flat",
        "flat",
        "version: 1\nrules:\n  - table: public.events\n    on: [insert]\n    keys: [\"event:{id}\"]\n",
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let errors = lines(&out, "error: ");
    find(
        &errors,
        &[
            "table public.events",
            "is partitioned",
            "publish_via_partition_root is off",
            "ALTER PUBLICATION flat SET (publish_via_partition_root = true)",
        ],
    );
    assert_eq!(errors.len(), 1, "{errors:?}");

    // A glob over the partitions is what `flat` is for.
    let out = check_db(write(
        &svc,
        "glob",
        "flat",
        "version: 1\nrules:\n  - table: public.events_*\n    on: [insert]\n    keys: [\"event:{id}\"]\n  - table: public.nothing_*\n    keys: [\"n:{id}\"]\n",
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    find(
        &lines(&out, "warning: "),
        &["table glob public.nothing_*", "matches no table"],
    );

    // Clean rules: exit 0, no error, no warning.
    let out = check_db(write(
        &svc,
        "clean",
        "walbust",
        "version: 1\nrules:\n  - table: public.accounts\n    keys: [\"account:{id}\", \"email:{email:hash}\"]\n  - table: public.products\n    on: [insert]\n    tags: [\"category:{category_id}\"]\n",
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 error(s), 0 warning(s)"), "{stdout}");
}

/// Items with the category in a tag; `{new.category}` so that the default
/// replica identity is enough and only the publication is in question.
const ITEM_RULES: &str = "version: 1\nrules:\n  - table: public.items\n    on: [insert, update]\n    keys: [\"item:{id}\"]\n    tags: [\"category:{new.category}\"]\n";
const ITEM_INSERT_RULES: &str =
    "version: 1\nrules:\n  - table: public.items\n    on: [insert]\n    keys: [\"item:{id}\", \"category:{category}\"]\n";

/// [`setup`], then table `items` and `publications` (SQL), with slot
/// `walbust` made again after them: a slot older than a publication cannot
/// decode with it.
async fn setup_items(publications: &str) -> (Services, tokio_postgres::Client) {
    let svc = setup().await;
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, category int, secret text)")
        .await
        .unwrap();
    db.batch_execute(publications).await.unwrap();
    db.batch_execute("SELECT pg_drop_replication_slot('walbust')")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')")
        .await
        .unwrap();
    (svc, db)
}

/// `check --db` and `run` on the same configuration: both refuse with
/// `needles`, `run` with exit status 3.
async fn refused_by_check_and_run(
    svc: &Services,
    name: &str,
    publication: &str,
    rules: &str,
    needles: &[&str],
) {
    let config = write(svc, name, publication, rules);
    let out = check_db(config.clone()).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let errors = lines(&out, "error: ");
    find(&errors, needles);
    assert_eq!(errors.len(), 1, "{errors:?}");

    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        needles.iter().all(|n| err.contains(n)),
        "{needles:?} in:\n{err}"
    );
}

/// `check --db` passes and `run` streams (then stops cleanly).
async fn accepted_by_check_and_run(svc: &Services, name: &str, publication: &str, rules: &str) {
    let config = write(svc, name, publication, rules);
    let out = check_db(config.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 error(s), 0 warning(s)"), "{stdout}");
    assert!(stdout.contains("ok: DDL guard installed"), "{stdout}");

    let db = svc.pg.connect().await.unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.signal("TERM");
    assert!(
        walbust.wait(std::time::Duration::from_secs(30)).success(),
        "{}",
        walbust.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_that_withhold_changes_the_rules_need_are_refused() {
    let (svc, _db) = setup_items(
        "CREATE PUBLICATION inserts FOR TABLE items WITH (publish = 'insert');
         CREATE PUBLICATION filtered FOR TABLE items WHERE (id > 10);
         CREATE PUBLICATION narrow FOR TABLE items (id, secret);
         CREATE PUBLICATION wide FOR TABLE items (id, category);",
    )
    .await;

    refused_by_check_and_run(
        &svc,
        "inserts",
        "inserts",
        ITEM_RULES,
        &[
            "publication \"inserts\" does not publish update (publish = 'insert')",
            "table public.items",
            "ALTER PUBLICATION inserts SET (publish = 'insert, update')",
        ],
    )
    .await;
    // Rules that only react to inserts need nothing more.
    accepted_by_check_and_run(&svc, "inserts-only", "inserts", ITEM_INSERT_RULES).await;

    refused_by_check_and_run(
        &svc,
        "filtered",
        "filtered",
        ITEM_INSERT_RULES,
        &[
            "publication \"filtered\" publishes table public.items with a row filter (WHERE (id > 10))",
            "arrives as a DELETE of the old row",
            "ALTER PUBLICATION filtered ADD TABLE public.items; COMMIT",
        ],
    )
    .await;

    refused_by_check_and_run(
        &svc,
        "narrow",
        "narrow",
        ITEM_RULES,
        &[
            "publication \"narrow\" sends only columns id, secret of table public.items, but the rules read category",
            "ADD TABLE public.items (id, secret, category)",
        ],
    )
    .await;
    // A column list holding every column the rules read is fine.
    accepted_by_check_and_run(&svc, "wide", "wide", ITEM_RULES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_altered_to_withhold_updates_stops_walbust() {
    let (svc, db) = setup_items("CREATE PUBLICATION live FOR TABLE items;").await;
    let mut walbust = Walbust::start(&write(&svc, "live", "live", ITEM_RULES));
    wait_streaming(&db, &mut walbust).await;

    db.batch_execute("ALTER PUBLICATION live SET (publish = 'insert')")
        .await
        .unwrap();
    // The periodic check runs every 10 s.
    let status = walbust.wait(std::time::Duration::from_secs(40));
    assert_eq!(status.code(), Some(3), "{}", walbust.log());
    assert!(
        walbust
            .log()
            .contains("publication \"live\" does not publish update (publish = 'insert')"),
        "{}",
        walbust.log()
    );
}
