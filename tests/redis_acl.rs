//! Redis ACL users: the README's ACL is enough for every feature, `walbust
//! check --db` finds a command the user may not run (with `ACL DRYRUN` or,
//! without it, by probes that change nothing), and `run` stops with exit
//! status 3 naming the rule to add when Redis refuses a command.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["shop:product:{id}"]
    tags: ["shop:products"]
    patterns: ["shop:list:*"]
"#;

const CHANNEL: &str = "invalidations";

/// The arguments of the README's `ACL SETUSER walbust ...` example after
/// the user name, with the password put in.
fn readme_acl(password: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find("redis-cli ACL SETUSER walbust")
        .expect("the README shows the ACL");
    let block = &readme[start..];
    let block = &block[..block.find("\n```").expect("the example ends")];
    let words: Vec<String> = block
        .replace("\\\n", " ")
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    assert_eq!(words[..3], ["redis-cli", "ACL", "SETUSER"]);
    words[4..]
        .iter()
        .filter(|w| *w != "on")
        .map(|w| w.replace(">PASSWORD", &format!(">{password}")))
        .collect()
}

async fn acl_user(redis: &walbust_testkit::Redis, name: &str, rules: &[String]) -> String {
    let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
    redis.acl_user(name, "cachepw", &rules).await.unwrap()
}

/// Writes the rules and a configuration with Redis at `redis_url` as the
/// only sink, `redis_extra` lines in its section.
fn write_config(svc: &Services, name: &str, redis_url: &str, redis_extra: &str) -> PathBuf {
    std::fs::write(svc.dir.path().join("rules.yaml"), RULES).unwrap();
    let mut text = source_yaml(&svc.pg.url(), "walbust", "  on_gap: purge\n", "rules.yaml");
    text.push_str(&format!(
        "sinks:\n  redis:\n    url: \"{redis_url}\"\n{redis_extra}"
    ));
    let path = svc.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn start() -> Services {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    svc
}

/// `check --db` exits 1 with an error line naming `command` and the rule
/// that allows it to `user`.
async fn check_refuses(config: &Path, user: &str, command: &str) -> String {
    let out = check_db(config).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let rule = format!("ACL SETUSER {user} +{}", command.to_ascii_lowercase());
    assert!(
        stdout.lines().any(|l| l.starts_with("error:")
            && l.contains(&format!("may not run {command} "))
            && l.contains(&rule)),
        "{stdout}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_serves_every_feature_and_check_probes_it() {
    let svc = start().await;
    let extra = format!("    publish_channel: {CHANNEL}\n");

    // Without DRYRUN (the README's user cannot run it) check probes: one
    // command short of the README is found.
    let lacking: Vec<String> = readme_acl("cachepw")
        .into_iter()
        .filter(|w| w != "+unlink")
        .collect();
    let url = acl_user(&svc.redis, "lacking", &lacking).await;
    let stdout = check_refuses(
        &write_config(&svc, "lacking", &url, &extra),
        "lacking",
        "UNLINK",
    )
    .await;
    assert!(!stdout.contains("tested with ACL DRYRUN"), "{stdout}");

    let url = acl_user(&svc.redis, "walbust", &readme_acl("cachepw")).await;
    let config = write_config(&svc, "walbust", &url, &extra);
    let out = check_db(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok: sink redis: ACL user walbust may run the commands walbust needs (probed without changing anything"),
        "{stdout}"
    );
    // PUBLISH cannot be probed without publishing.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("+publish")),
        "{stdout}"
    );

    // Keys, a set tag, a pattern and the channel, all under the README's ACL.
    let mut redis = svc.redis.connection().await.unwrap();
    let mut walbust = Walbust::start(&config);
    let db = svc.pg.connect().await.unwrap();
    wait_streaming(&db, &mut walbust).await;
    set_keys(&mut redis, &["shop:product:1", "shop:list:1", "shop:a"]).await;
    let _: () = redis::cmd("SADD")
        .arg("tag:shop:products")
        .arg("shop:a")
        .query_async(&mut redis)
        .await
        .unwrap();
    let lsn = current_wal_lsn(&db).await;
    db.execute("INSERT INTO products VALUES (1)", &[])
        .await
        .unwrap();
    assert_invalidated(
        &mut redis,
        &[
            "shop:product:1",
            "shop:list:1",
            "shop:a",
            "tag:shop:products",
        ],
        &[],
        "under the README's ACL",
    )
    .await;
    // Confirmed means PUBLISH went through too.
    wait_confirmed_past(&db, lsn).await;
    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());

    // A gap purged with on_gap: purge removes the old marker (DEL).
    db.batch_execute("SELECT pg_drop_replication_slot('walbust')")
        .await
        .unwrap();
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.wait_log("gap purge confirmed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_acl_denies_is_found_by_check_and_stops_run_with_exit_3() {
    let svc = start().await;
    let all = ["~*", "&*", "+@all"].map(String::from);

    // GET, which the gap marker needs at start.
    let rules = [&all[..], &["-get".to_owned()]].concat();
    let url = acl_user(&svc.redis, "noget", &rules).await;
    let config = write_config(&svc, "noget", &url, "");
    check_refuses(&config, "noget", "GET").await;
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ACL SETUSER <user> +get"), "{err}");

    // UNLINK, which only the first change needs: run stops while streaming.
    let rules = [&all[..], &["-unlink".to_owned()]].concat();
    let url = acl_user(&svc.redis, "nounlink", &rules).await;
    let config = write_config(&svc, "nounlink", &url, "");
    check_refuses(&config, "nounlink", "UNLINK").await;
    let mut walbust = Walbust::start(&config);
    let db = svc.pg.connect().await.unwrap();
    wait_streaming(&db, &mut walbust).await;
    db.execute("INSERT INTO products VALUES (1)", &[])
        .await
        .unwrap();
    let status = walbust.wait(Duration::from_secs(60));
    let log = walbust.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("kind=denied"), "{log}");
    assert!(log.contains("ACL SETUSER <user> +unlink"), "{log}");
}
