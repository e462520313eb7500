//! The command line as a user meets it: help, configuration errors, start-up
//! refusals, and the demo.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn walbust(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(args)
        .env("WALBUST_LOG", "warn")
        .output()
        .expect("run walbust")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_explains_every_command() {
    let top = walbust(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(text.contains("invalidations"), "{text}");
    for sub in ["run", "check", "reset-gap", "demo"] {
        assert!(text.contains(sub), "--help does not list {sub}");
        let o = walbust(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help failed");
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.lines().count() > 5,
            "{sub} --help is too thin:\n{help}"
        );
    }
    let demo = String::from_utf8_lossy(&walbust(&["demo", "--help"]).stdout).into_owned();
    for flag in ["--writes", "--seconds", "--rate"] {
        assert!(demo.contains(flag), "demo --help lacks {flag}");
    }
}

const GOOD_RULES: &str = "version: 1\nrules:\n  - table: public.t\n    keys: [\"t:{id}\"]\n";

fn config_error(dir: &Path, config: &str) -> String {
    std::fs::write(dir.join("rules.yaml"), GOOD_RULES).unwrap();
    let path = dir.join("walbust.yaml");
    std::fs::write(&path, config).unwrap();
    let out = walbust(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    lines[0].to_string()
}

const VALID: &str = "source:\n  url: postgres://u:p@127.0.0.1:1/db\n  publication: p\n  slot: s\nrules: rules.yaml\nsinks:\n  redis:\n    url: redis://127.0.0.1:1\n";

#[test]
fn bad_configuration_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();

    let line = config_error(dir.path(), &VALID.replace("  slot: s\n", ""));
    assert!(
        line.contains("walbust.yaml") && line.contains("slot"),
        "{line}"
    );

    let line = config_error(dir.path(), &VALID.replace("redis://", "http://"));
    assert!(line.contains("sinks.redis.url"), "{line}");

    let line = config_error(dir.path(), &VALID.replace("postgres://", "mysql://"));
    assert!(line.contains("source.url"), "{line}");

    let line = config_error(
        dir.path(),
        &VALID.replace("rules.yaml", "missing-rules.yaml"),
    );
    assert!(line.contains("missing-rules.yaml"), "{line}");

    // A YAML syntax error: the file, line and column, without the parser's
    // snippet (it would quote the password).
    let line = config_error(
        dir.path(),
        &VALID.replace("  publication: p\n", "  publication: [p\n"),
    );
    let path = dir.path().join("walbust.yaml");
    assert!(
        line.starts_with(&format!("walbust: {}:3:", path.display())),
        "{line}"
    );
    assert!(
        !line.contains("<input>") && !line.contains("u:p@"),
        "{line}"
    );

    let missing = dir.path().join("nope.yaml");
    let out = walbust(&["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("nope.yaml") && err.contains("No such file or directory"),
        "{err}"
    );
}

/// Secrets from the environment or from files never reach stderr, however
/// the file around them is broken; `check` and `run` alike.
#[test]
fn no_error_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), GOOD_RULES).unwrap();
    let secret = "Pa:ss #w'rd\"4x";
    std::fs::write(dir.path().join("pg-password"), format!("{secret}\n")).unwrap();
    let path = dir.path().join("walbust.yaml");
    let broken = [
        // A syntax error on the line after the password.
        VALID
            .replace("u:p@", "u:${file:pg-password}@")
            .replace("  publication: p\n", "  publication: [p\n"),
        // The password where a number belongs.
        VALID.replace(
            "  slot: s\n",
            "  slot: s\n  status_interval_ms: ${SECRET}\n",
        ),
        // A URL the password makes unparsable.
        VALID.replace("u:p@127.0.0.1:1", "u:${SECRET}@[127.0.0.1"),
    ];
    for config in broken {
        std::fs::write(&path, &config).unwrap();
        for command in ["run", "check"] {
            let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
                .args([command, "--config", path.to_str().unwrap()])
                .env("SECRET", secret)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{command}: {err}");
            for part in [secret, "Pa:ss", "w'rd"] {
                assert!(!err.contains(part), "{command} showed the secret:\n{err}");
            }
        }
    }
    // Unbroken, the same secret file is read and fits the URL as it is.
    std::fs::write(&path, VALID.replace("u:p@", "u:${file:pg-password}@")).unwrap();
    let out = walbust(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn broken_rules_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "version: 1\nrules:\n  - table: public.t\n    keys: [\"t:{id\"]\n",
    )
    .unwrap();
    let path = dir.path().join("walbust.yaml");
    std::fs::write(&path, VALID).unwrap();
    let out = walbust(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("rules.yaml:4:"), "{err}");
}

/// `walbust run --config config` with one more environment variable, to
/// its exit.
async fn run_with_env(
    config: std::path::PathBuf,
    (name, value): (&'static str, &'static str),
) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env(name, value)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Starts walbust against a database and expects a refusal naming `needle`.
async fn refused(svc: &Services, needle: &str) -> Option<i32> {
    let config = svc.write_config(GOOD_RULES, false);
    let out = run_with_env(config, ("WALBUST_LOG", "warn")).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    out.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_server_without_logical_wal() {
    let pg = walbust_testkit::Postgres::start_with(&[("wal_level", "replica")]).unwrap();
    let redis = walbust_testkit::Redis::start().unwrap();
    let kafka = walbust_testkit::Kafka::start().unwrap();
    let svc = Services {
        pg,
        redis,
        dir: tempfile::tempdir().unwrap(),
        kafka,
    };
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let code = refused(&svc, "wal_level is 'replica'").await;
    assert_eq!(code, Some(3), "wal_level is a definite error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_slot_of_another_plugin() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    // A slot cannot be created in a transaction that wrote.
    db.batch_execute("SELECT pg_create_logical_replication_slot('walbust', 'test_decoding')")
        .await
        .unwrap();
    let code = refused(&svc, "output plugin \"test_decoding\"").await;
    assert_eq!(code, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_missing_slot_without_create() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walbust FOR TABLE t;",
    )
    .await
    .unwrap();
    let config = svc.write_config(GOOD_RULES, false);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("create: true", "create: false");
    std::fs::write(&config, text).unwrap();
    let out = walbust(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("replication slot \"walbust\" does not exist"),
        "{}",
        stderr(&out)
    );
}

/// Runs `walbust run` with `config`, expects exit status 3 and returns
/// its stderr.
async fn run_refused(config: std::path::PathBuf) -> String {
    let out = tokio::task::spawn_blocking(move || {
        walbust(&["run", "--config", config.to_str().unwrap()])
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    err
}

/// Table `t` and a configuration whose rule reads `{idd}`, which `t` lacks.
async fn unknown_column() -> (Services, tokio_postgres::Client, std::path::PathBuf) {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = svc.write_config(
        "version: 1\nrules:\n  - table: public.t\n    keys: [\"t:{id}:{idd}\"]\n",
        false,
    );
    (svc, db, config)
}

/// A rule reading a column the table does not have stops start-up, as a
/// reload naming it is refused, before the slot is created (nothing left
/// behind holding WAL), with the rule's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_rule_column_the_table_does_not_have_before_creating_anything() {
    let (_svc, db, config) = unknown_column().await;
    let err = run_refused(config).await;
    assert!(
        err.contains("table public.t") && err.contains("\"idd\"") && err.contains("rules.yaml:4:"),
        "{err}"
    );
    assert!(!slot_exists(&db, "walbust").await);
}

/// A rule naming a partition whose changes arrive under its root's name,
/// and a publication that publishes a partitioned table's changes under
/// its partitions' names: each refused with the cause, with and without
/// `create`, before a slot (or a publication) is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_partition_mismatches_before_creating_anything() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE parts (id int, region int, PRIMARY KEY (id, region)) PARTITION BY LIST (region); \
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1);",
    )
    .await
    .unwrap();
    let refused = |rules: &'static str, create: bool, needles: &'static [&'static str]| {
        let config = svc.write_config(rules, false);
        if !create {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("create: true", "create: false");
            std::fs::write(&config, text).unwrap();
        }
        async move {
            let err = run_refused(config).await;
            for needle in needles {
                assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
            }
        }
    };
    const BOTH: &str = "version: 1\nrules:\n  - table: public.parts\n    keys: [\"p:{id}\"]\n  - table: public.parts_1\n    keys: [\"p1:{id}\"]\n";
    const PARTITION: &str =
        "version: 1\nrules:\n  - table: public.parts_1\n    keys: [\"p1:{id}\"]\n";
    const ROOT: &str = "version: 1\nrules:\n  - table: public.parts\n    keys: [\"p:{id}\"]\n";
    let arrives_as_root = &[
        "table public.parts_1 is a partition",
        "arrive as public.parts",
    ][..];

    // No publication yet: walbust would create it via the root.
    refused(BOTH, true, arrives_as_root).await;
    assert!(
        db.query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = 'walbust'",
            &[]
        )
        .await
        .unwrap()
        .is_none(),
        "a refused start created the publication"
    );

    // Published via the root: the partition is not added.
    db.batch_execute(
        "CREATE PUBLICATION walbust FOR TABLE parts WITH (publish_via_partition_root = true)",
    )
    .await
    .unwrap();
    refused(PARTITION, true, arrives_as_root).await;
    refused(PARTITION, false, arrives_as_root).await;

    // Published through the partitions: a rule on the root never matches.
    db.batch_execute("ALTER PUBLICATION walbust SET (publish_via_partition_root = false)")
        .await
        .unwrap();
    let own_names = &[
        "table public.parts is partitioned",
        "ALTER PUBLICATION walbust SET (publish_via_partition_root = true)",
    ][..];
    refused(ROOT, true, own_names).await;
    refused(ROOT, false, own_names).await;
    assert!(!slot_exists(&db, "walbust").await);
}

/// `source.create: true` with a role that may not create the publication
/// (no CREATE on the database, not the tables' owner): refused with the
/// statement for an owner to run, before a slot is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_create_the_publication_is_told_what_to_run() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); \
         CREATE ROLE limited LOGIN REPLICATION PASSWORD 'limited-pw';",
    )
    .await
    .unwrap();
    let config = svc.write_config(GOOD_RULES, false);
    let url = svc.pg.url();
    let limited = format!(
        "postgres://limited:limited-pw@{}",
        url.split_once('@').unwrap().1
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&url, &limited);
    std::fs::write(&config, text).unwrap();
    let err = run_refused(config).await;
    assert!(
        err.contains("may not create publication \"walbust\"")
            && err.contains(
                "run CREATE PUBLICATION \"walbust\" FOR TABLE \"public\".\"t\" WITH (publish_via_partition_root = true), then"
            ),
        "{err}"
    );
    assert!(!err.contains("limited-pw"), "{err}");
    // A warning was logged (the DDL guard), without colour codes in a pipe.
    assert!(err.contains("WARN"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe:\n{err}");
    assert!(!slot_exists(&db, "walbust").await);
}

/// `WALBUST_LOG_FORMAT=json` (or `--log-format json`): every line on
/// stderr is one JSON object with the event's fields at the top level, the
/// error walbust exits with included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_up_to_the_exit() {
    let (_svc, _db, config) = unknown_column().await;
    let out = run_with_env(config, ("WALBUST_LOG_FORMAT", "json")).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let loaded = lines
        .iter()
        .find(|l| l["message"] == "rules loaded")
        .unwrap_or_else(|| panic!("no rules loaded line in:\n{err}"));
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["rules"], 1, "{loaded}");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["exit_status"], 3, "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("\"idd\""),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_lost_slot() {
    // A tiny WAL retention limit and a few WAL segments of writes make the
    // server drop WAL the slot still needs.
    let pg = walbust_testkit::Postgres::start_with(&LOSABLE_SLOTS).unwrap();
    let svc = Services {
        pg,
        redis: walbust_testkit::Redis::start().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        kafka: walbust_testkit::Kafka::start().unwrap(),
    };
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walbust FOR TABLE t;",
    )
    .await
    .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')")
        .await
        .unwrap();
    lose_slot(&db, "walbust").await;
    let code = refused(&svc, "is lost").await;
    assert_eq!(code, Some(3), "a lost slot is a definite error");
}

#[test]
fn demo_runs_a_bounded_number_of_writes() {
    let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["demo", "--writes", "12", "--rate", "40"])
        .env("WALBUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        stderr(&out)
    );
    assert!(stdout.contains("psql"), "no psql hint:\n{stdout}");
    assert!(
        stdout.contains("redis-cli -p"),
        "no redis-cli hint:\n{stdout}"
    );
    assert!(
        stdout.contains("bootstrap 127.0.0.1:"),
        "no kafka hint:\n{stdout}"
    );
    let change_lines = stdout
        .lines()
        .filter(|l| l.contains("public.products") || l.contains("public.orders"))
        .count();
    assert!(
        change_lines >= 12,
        "expected a line per write, got {change_lines}:\n{stdout}"
    );
    assert!(stdout.contains("confirmed by redis+kafka"), "{stdout}");
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done: "))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let changes: u64 = done["done: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(changes >= 12, "{done}");
}

/// `walbust ARGS` with `vars` removed from the environment.
fn walbust_without(vars: &[&str], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walbust"));
    for var in vars {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env("WALBUST_LOG", "warn")
        .output()
        .expect("run walbust")
}

#[test]
fn offline_checks_read_unset_variables_as_placeholders() {
    const SECRETS: [&str; 2] = ["WALBUST_TEST_UNSET_PG", "WALBUST_TEST_UNSET_REDIS"];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), GOOD_RULES).unwrap();
    let path = dir.path().join("walbust.yaml");
    let config = VALID
        .replace("u:p@", "u:${WALBUST_TEST_UNSET_PG}@")
        .replace("redis://", "redis://:${WALBUST_TEST_UNSET_REDIS}@");
    std::fs::write(&path, config).unwrap();
    let config = path.to_str().unwrap();

    // Offline: the structure is checked, each unset variable is a note.
    let out = walbust_without(&SECRETS, &["check", "--config", config]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    for (line, var) in [(2, SECRETS[0]), (8, SECRETS[1])] {
        let note =
            format!("note: {config}:{line}: ${{{var}}} is not set; checked with a placeholder");
        assert!(stdout.contains(&note), "no {note:?} in:\n{stdout}");
    }
    let out = walbust_without(
        &SECRETS,
        &[
            "explain",
            "--config",
            config,
            "--table",
            "t",
            "--op",
            "insert",
            "--new",
            r#"{"id":"7"}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("t:7"));

    // Still a structural error with a placeholder in place.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("redis://", "http://"),
    )
    .unwrap();
    let out = walbust_without(&SECRETS, &["check", "--config", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sinks.redis.url"), "{}", stderr(&out));

    // With the database, and for run, an unset variable is an error.
    for args in [
        &["check", "--db", "--config", config][..],
        &["run", "--config", config][..],
    ] {
        let out = walbust_without(&SECRETS, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "{config}:2: ${{{}}} is not set in the environment",
                SECRETS[0]
            )),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
