//! Fenced fills end to end: `walbust run` with `sinks.redis.leases: true`
//! and `watermark: true` against real Postgres and Redis. A reader takes a
//! lease, a writer commits, walbust invalidates, and the reader's fill with
//! its old token is refused; the writer waits for the watermark as the
//! README's recipe does. Also `walbust redis-functions` and the start and
//! `check --db` refusals of a Redis without Functions.

mod support;

use std::process::Command;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use support::*;

const SCHEMA: &str = "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO products VALUES (1, 'old');";

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["products"]
"#;

const LEASES: &str = "    leases: true\n    watermark: true\n";

async fn fcall<T: redis::FromRedisValue>(
    redis: &mut MultiplexedConnection,
    function: &str,
    keys: &[&str],
    args: &[&str],
) -> T {
    redis::cmd("FCALL")
        .arg(function)
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .query_async(redis)
        .await
        .unwrap()
}

/// `walbust_fill` of `product:1`, without expiry.
async fn fill(redis: &mut MultiplexedConnection, token: &str, value: &str) -> i64 {
    fcall(redis, "walbust_fill", &["product:1"], &[token, value, "0"]).await
}

/// A reader's miss on `product:1`: takes the lease (registering the key in
/// its tag set), then reads the row; returns the token and the name read.
async fn miss(redis: &mut MultiplexedConnection, db: &tokio_postgres::Client) -> (String, String) {
    let (status, token): (i64, String) =
        fcall(redis, "walbust_get", &["product:1", "tag:products"], &[]).await;
    assert_eq!(status, 0, "a miss gives a lease");
    let name = db
        .query_one("SELECT name FROM products WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    (token, name)
}

#[tokio::test]
async fn a_fill_with_a_token_from_before_a_commit_is_refused() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    let mut redis = svc.redis.connection().await.unwrap();
    let config = svc.write_config_sinks(RULES, Some(LEASES), None, "");
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    // A reader misses, takes a lease (registering the key in its tag set)
    // and reads the row.
    let (token, stale) = miss(&mut redis, &db).await;
    assert_eq!(stale, "old");

    // A writer commits, takes the commit's LSN and waits (bounded) until
    // walbust confirmed it: the recipe of the README.
    db.batch_execute("UPDATE products SET name = 'new' WHERE id = 1")
        .await
        .unwrap();
    let lsn: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(30), "walbust to catch up", || {
        let (mut redis, lsn) = (redis.clone(), lsn.clone());
        async move {
            let caught: i64 = fcall(
                &mut redis,
                "walbust_caught_up",
                &["walbust:lsn:walbust"],
                &[&lsn],
            )
            .await;
            (caught == 1).then_some(())
        }
    })
    .await;

    // The slow reader's fill comes too late: refused, nothing stored.
    let filled = fill(&mut redis, &token, &stale).await;
    assert_eq!(filled, 0);
    assert!(!exists(&mut redis, "product:1").await);

    // A reader after the commit fills the new value.
    let (token, fresh) = miss(&mut redis, &db).await;
    let filled = fill(&mut redis, &token, &fresh).await;
    assert_eq!(filled, 1);
    let got: (i64, String) = fcall(&mut redis, "walbust_get", &["product:1"], &[]).await;
    assert_eq!(got, (1, "new".into()));

    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}

/// A configuration with leases and the watermark on, against the Redis at
/// `url` instead of the services' own.
fn config_with_redis(svc: &Services, url: &str) -> std::path::PathBuf {
    let config = svc.write_config_sinks(RULES, Some(LEASES), None, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&svc.redis.url(), url);
    std::fs::write(&config, text).unwrap();
    config
}

fn walbust(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(args)
        .output()
        .expect("run walbust")
}

#[tokio::test]
async fn redis_functions_prints_a_library_function_load_accepts() {
    let out = walbust(&["redis-functions"]);
    assert!(out.status.success(), "{out:?}");
    let library = String::from_utf8(out.stdout).unwrap();
    assert!(library.starts_with("#!lua name=walbust\n"), "{library}");
    assert!(library.contains("local LEASE_TTL_MS = 10000\n"));

    let redis = walbust_testkit::Redis::start().expect("start Redis");
    let mut conn = redis.connection().await.unwrap();
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&library)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "walbust");
    let (status, token): (i64, String) = fcall(&mut conn, "walbust_get", &["k"], &[]).await;
    assert_eq!(status, 0);
    let filled: i64 = fcall(&mut conn, "walbust_fill", &["k"], &[&token, "v", "0"]).await;
    assert_eq!(filled, 1);

    // With --config: that file's lease_ttl_ms and tag strategy.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    let config = dir.path().join("walbust.yaml");
    let mut text = source_yaml("postgres://walbust@db/shop", "walbust", "", "rules.yaml");
    text.push_str("sinks:\n  redis:\n    url: redis://cache\n    leases: true\n    lease_ttl_ms: 2500\n    tag_strategy: version\n");
    std::fs::write(&config, text).unwrap();
    let out = walbust(&["redis-functions", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let library = String::from_utf8(out.stdout).unwrap();
    assert!(library.contains("local LEASE_TTL_MS = 2500\n"), "{library}");
    assert!(
        library.contains("local TAG_STRATEGY = 'version'\n"),
        "{library}"
    );
}

#[tokio::test]
async fn a_redis_without_functions_is_refused_by_run_and_check() {
    let svc = Services::start();
    // Without FUNCTION and FCALL the server answers as a Redis before 7 does.
    let old = walbust_testkit::Redis::start_without_functions().expect("start Redis");
    let config = config_with_redis(&svc, &old.url());

    let out = run_to_exit(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("sinks.redis.leases"), "{stderr}");
    assert!(stderr.contains("Redis 7 or later"), "{stderr}");

    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--db", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("error: sink redis: sinks.redis.leases")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_and_run_refuse_a_user_that_may_not_call_the_library() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    for (user, command) in [("noload", "function|load"), ("nofcall", "fcall")] {
        let denied = format!("-{command}");
        let url = svc
            .redis
            .acl_user(user, "pw", &["~*", "&*", "+@all", &denied])
            .await
            .unwrap();
        let config = config_with_redis(&svc, &url);
        let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args(["check", "--db", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let rule = format!("ACL SETUSER {user} +{command}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("error:") && l.contains(&rule)),
            "{stdout}"
        );
        let out = run_to_exit(&config).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains(&format!("ACL SETUSER <user> +{command}")),
            "{stderr}"
        );
    }
}
