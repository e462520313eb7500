//! `walbust setup` as a DBA uses it: the SQL it prints run with psql on a
//! fresh database, or `--apply` with a superuser's URL, and then
//! `walbust check --db` passes as the least-privileged role the SQL made.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

/// The role deploy/walbust.yaml names.
const ROLE: &str = "walbust";
/// The password the tests give the role, as `\password` would.
const PASSWORD: &str = "set-by-the-dba";

/// Runs the walbust binary to its end, with `env` and no inherited
/// password or admin URL.
async fn walbust(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || walbust_now(&args, &env))
        .await
        .unwrap()
}

fn walbust_now(args: &[String], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(args)
        .env_remove("WALBUST_PG_PASSWORD")
        .env_remove("WALBUST_ADMIN_URL")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("WALBUST_LOG", "warn")
        .output()
        .expect("run walbust")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Gives the role its password (what `\password walbust` does), then runs
/// `check --db` as the role and asserts it passes without a warning.
async fn check_passes(shop: &tokio_postgres::Client, config: &Path, password: &str) {
    shop.batch_execute(&format!("ALTER ROLE {ROLE} PASSWORD '{password}'"))
        .await
        .unwrap();
    let out = walbust(
        &["check", "--db", "--config", config.to_str().unwrap()],
        &[("WALBUST_PG_PASSWORD", password)],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check --db failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == "0 error(s), 0 warning(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: the role may open a replication connection"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_sql_run_with_psql_on_a_fresh_database_lets_check_db_pass() {
    let (svc, shop) = fresh_shop().await;
    let config = deploy_config(&svc);

    // Printed without the role's password, which the SQL does not need.
    let out = walbust(&["setup", "--config", config.to_str().unwrap()], &[]).await;
    let sql = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("${WALBUST_PG_PASSWORD} is not set"),
        "{stderr}"
    );
    assert!(sql.starts_with("-- "), "{sql}");
    assert!(sql.contains("\\password walbust"), "{sql}");
    let file = svc.dir.path().join("setup.sql");
    std::fs::write(&file, &sql).unwrap();
    psql(&svc.pg, DBA_DATABASE, &file).await;
    // Every statement looks before it changes anything.
    psql(&svc.pg, DBA_DATABASE, &file).await;

    // pg_hba.conf: the superuser's lines and the one the SQL documents.
    only_documented_hba(&svc.pg, &shop, &sql, DBA_DATABASE, ROLE).await;
    check_passes(&shop, &config, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_twice_with_an_admin_url_then_check_db_passes() {
    let (svc, shop) = fresh_shop().await;
    let config = deploy_config(&svc);
    let config = config.to_str().unwrap();
    let admin_url = format!(
        "postgres://{}:{}@{}:{}/{DBA_DATABASE}",
        svc.pg.user(),
        svc.pg.password(),
        svc.pg.host(),
        svc.pg.port()
    );

    // The publication and the slot belong in source.url's database.
    let elsewhere = admin_url.replace(&format!("/{DBA_DATABASE}"), "/postgres");
    let out = walbust(
        &[
            "setup",
            "--apply",
            "--config",
            config,
            "--admin-url",
            &elsewhere,
        ],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("connects to database postgres, but source.url reads shop"),
        "{stderr}"
    );
    assert!(!stderr.contains(svc.pg.password()), "{stderr}");

    let first = walbust(
        &[
            "setup",
            "--apply",
            "--config",
            config,
            "--admin-url",
            &admin_url,
        ],
        &[],
    )
    .await;
    let stdout = text(&first.stdout);
    assert!(first.status.success(), "{stdout}\n{}", text(&first.stderr));
    for done in [
        "done: created role walbust",
        "done: created publication walbust",
        "done: added table products to publication walbust",
        "done: table orders now has REPLICA IDENTITY FULL",
        "done: DDL guard installed",
        "done: created slot walbust",
        "ok: setup applied",
    ] {
        assert!(stdout.contains(done), "no {done:?} in\n{stdout}");
    }
    assert!(!stdout.contains(svc.pg.password()), "{stdout}");

    // Again, the admin URL from the environment: nothing left to do.
    let second = walbust(
        &["setup", "--apply", "--config", config],
        &[("WALBUST_ADMIN_URL", &admin_url)],
    )
    .await;
    let stdout = text(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}\n{}",
        text(&second.stderr)
    );
    assert!(stdout.contains("done: role walbust exists"), "{stdout}");
    assert!(stdout.contains("done: slot walbust exists"), "{stdout}");
    assert!(
        stdout.contains("done: publication walbust has every table the rules name"),
        "{stdout}"
    );
    assert!(!stdout.contains("created"), "{stdout}");
    assert!(!stdout.contains("now has"), "{stdout}");

    check_passes(&shop, Path::new(config), PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_need_old_values_get_replica_identity_full_where_it_lacks_them() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, category int, name text);
         CREATE TABLE plain (id int PRIMARY KEY, n int);
         CREATE TABLE events (id int, region text, kind text, PRIMARY KEY (id, region))
             PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');",
    )
    .await
    .unwrap();
    // items: {category} on update and delete needs its old value, which
    // the primary key does not send. plain: only the key's. events: a
    // partitioned table, whose partitions write the old row.
    let config = svc.write_config(
        r#"version: 1
rules:
  - table: public.items
    on: [insert, update, delete]
    keys: ["item:{id}"]
    tags: ["category:{category}"]
  - table: public.plain
    on: [insert, update, delete]
    keys: ["plain:{id}"]
  - table: public.events
    on: [update, delete]
    tags: ["events:{kind}"]
"#,
        true,
    );
    // source.url is the superuser's: no admin URL needed.
    let out = walbust(
        &["setup", "--apply", "--config", config.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let identity = |table: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(identity("items").await, "f");
    assert_eq!(identity("plain").await, "d");
    assert_eq!(identity("events_eu").await, "f");
    assert_eq!(identity("events_us").await, "f");
    assert!(publishes_via_root(&db).await);

    let out = check_db(&config).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.lines().any(|l| l == "0 error(s), 0 warning(s)"),
        "{stdout}"
    );
}

#[test]
fn printing_needs_no_database_and_no_password_is_ever_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "version: 1\nrules:\n  - table: public.items\n    on: [update]\n    keys: [\"item:{id}\"]\n",
    )
    .unwrap();
    let write = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "source:\n  url: \"{url}\"\n  publication: pub\n  slot: slot\nrules: rules.yaml\nsinks:\n  redis:\n    url: redis://cache.invalid:6379/0\n"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        walbust_now(&args, &[])
    };

    // An unset ${VAR}, a host that does not resolve: printed all the same.
    let unset = write(
        "unset.yaml",
        "postgres://reader:${WALBUST_SETUP_TEST_UNSET}@db.invalid:5432/shop",
    );
    let out = run(&["setup", "--config", &unset]);
    let sql = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("${WALBUST_SETUP_TEST_UNSET} is not set"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        sql.contains("CREATE ROLE \"reader\" LOGIN REPLICATION;"),
        "{sql}"
    );
    assert!(sql.contains("host  shop  reader  "), "{sql}");
    assert!(
        sql.contains("pg_create_logical_replication_slot('slot', 'pgoutput')"),
        "{sql}"
    );
    assert!(!sql.contains("PASSWORD"), "{sql}");

    // A password written into the URL is never printed, not even when
    // the connection fails.
    let secret = "s3cret-in-the-url";
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let literal = write(
        "literal.yaml",
        &format!("postgres://reader:{secret}@127.0.0.1:{closed_port}/shop"),
    );
    let out = run(&["setup", "--config", &literal]);
    assert!(out.status.success());
    assert!(!text(&out.stdout).contains(secret));
    assert!(!text(&out.stderr).contains(secret));
    let out = run(&["setup", "--apply", "--config", &literal]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "postgres://reader:***@127.0.0.1:{closed_port}/shop"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(secret) && !text(&out.stdout).contains(secret));

    // Applying needs what names the role: a configuration error.
    let user = write(
        "user.yaml",
        "postgres://${WALBUST_SETUP_TEST_UNSET}@db.invalid/shop",
    );
    let out = run(&[
        "setup",
        "--apply",
        "--config",
        &user,
        "--admin-url",
        "postgres://admin@db.invalid/shop",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
