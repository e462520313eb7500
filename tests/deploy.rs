//! The deploy folder as a DBA uses it: deploy/shop-schema.sql and
//! deploy/postgres-setup.sql applied to a fresh database, pg_hba.conf with
//! the one line the setup script asks for, and walbust run with
//! deploy/walbust.yaml and the rules deploy/compose.yaml mounts, as the
//! script's least-privileged role.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// The password deploy/postgres-setup.sql gives the role.
const PASSWORD: &str = "change-me";
/// The role and database the setup script and walbust.yaml name.
const ROLE: &str = "walbust";
const DATABASE: &str = "shop";
/// The Kafka topic deploy/walbust.yaml names.
const DEPLOY_TOPIC: &str = "cache-invalidations";
/// The superuser of the test server: the script creates `walbust` itself.
const SUPERUSER: &str = "postgres";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `host ...` lines the setup script's comment asks for, on loopback.
fn documented_hba_lines(setup: &str) -> Vec<String> {
    let lines: Vec<String> = setup
        .lines()
        .filter_map(|l| l.strip_prefix("--"))
        .map(str::trim)
        .filter(|l| l.starts_with("host "))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(fields.len(), 5, "pg_hba line {l:?}");
            format!(
                "{} {} {} 127.0.0.1/32 {}",
                fields[0], fields[1], fields[2], fields[4]
            )
        })
        .collect();
    assert!(!lines.is_empty(), "the setup script names no pg_hba line");
    lines
}

/// deploy/walbust.yaml pointed at the test's services: the files mounted
/// by deploy/compose.yaml replaced by the files it mounts, the hosts by the
/// test's.
fn deploy_config(svc: &Services) -> PathBuf {
    let mut config = read(&deploy_file("walbust.yaml"));
    let compose = read(&deploy_file("compose.yaml"));
    let mut mounted = 0;
    for line in compose.lines().map(str::trim) {
        let Some(volume) = line.strip_prefix("- ") else {
            continue;
        };
        let parts: Vec<&str> = volume.split(':').collect();
        if parts.len() < 2 || !parts[1].starts_with("/etc/walbust/") {
            continue;
        }
        let source = deploy_file(parts[0]);
        assert!(source.exists(), "compose mounts {} (missing)", parts[0]);
        config = config.replace(parts[1], source.to_str().unwrap());
        mounted += 1;
    }
    assert!(
        mounted >= 2,
        "compose.yaml mounts no configuration and rules"
    );
    for (from, to) in [
        ("db.internal:5432", format!("127.0.0.1:{}", svc.pg.port())),
        ("redis://cache.internal:6379/0", svc.redis.url()),
        ("kafka-1.internal:9092", svc.kafka.bootstrap_servers()),
        ("0.0.0.0:9187", "127.0.0.1:0".to_owned()),
    ] {
        assert!(config.contains(from), "deploy/walbust.yaml has no {from}");
        config = config.replace(from, &to);
    }
    let path = svc.dir.path().join("walbust.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn connect(svc: &Services, database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host(svc.pg.host())
        .port(svc.pg.port())
        .user(svc.pg.user())
        .password(svc.pg.password())
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect as the superuser");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_script_fits_the_shipped_rules_and_configuration() {
    let pg = walbust_testkit::Postgres::start_as(SUPERUSER, &[]).expect("start Postgres");
    let svc = Services::start_with(pg, walbust_testkit::Kafka::start().expect("start Kafka"));
    svc.kafka.create_topic(DEPLOY_TOPIC, 1).unwrap();
    let admin = svc.pg.connect().await.unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .unwrap();
    psql(&svc.pg, DATABASE, &deploy_file("shop-schema.sql")).await;
    psql(&svc.pg, DATABASE, &deploy_file("postgres-setup.sql")).await;
    let setup = read(&deploy_file("postgres-setup.sql"));
    let shop = connect(&svc, DATABASE).await;

    // pg_hba.conf: the superuser's lines and the script's, nothing else (no
    // `replication` line for walbust).
    let mut hba = format!("local all all trust\nhost all {SUPERUSER} 127.0.0.1/32 scram-sha-256\n");
    for line in documented_hba_lines(&setup) {
        assert!(line.contains(&format!(" {DATABASE} {ROLE} ")), "{line}");
        hba.push_str(&line);
        hba.push('\n');
    }
    std::fs::write(svc.pg.data_dir().join("pg_hba.conf"), hba).unwrap();
    let reloaded: bool = admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reloaded);
    let config = deploy_config(&svc);

    let out = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_walbust"))
                .args(["check", "--db", "--config"])
                .arg(&config)
                .env("WALBUST_PG_PASSWORD", PASSWORD)
                .env("WALBUST_LOG", "warn")
                .output()
                .expect("run walbust check")
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check --db failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l == "0 error(s), 0 warning(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: sink redis is healthy"), "{stdout}");
    assert!(stdout.contains("ok: sink kafka is healthy"), "{stdout}");

    // And walbust runs on it: streams as the role, invalidates a change.
    let mut walbust = Walbust::start_with_env(&config, &[("WALBUST_PG_PASSWORD", PASSWORD)]);
    wait_slot_active(&admin, &mut walbust, "walbust").await;
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &["shop:product:1", "shop:product:2"]).await;
    shop.batch_execute(
        "INSERT INTO categories VALUES (1, NULL, 'tools', 'Tools');
         INSERT INTO products (id, category_id, slug, name, price) VALUES (1, 1, 'saw', 'Saw', 12);",
    )
    .await
    .unwrap();
    assert_invalidated(
        &mut redis,
        &["shop:product:1"],
        &["shop:product:2"],
        "an insert into products",
    )
    .await;
    let streaming_as: String = admin
        .query_one(
            "SELECT usename::text FROM pg_stat_replication WHERE application_name = 'walbust'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(streaming_as, ROLE);
    walbust.signal("TERM");
    assert!(walbust.wait(std::time::Duration::from_secs(30)).success());
}

/// deploy/walbust.service passes `systemd-analyze verify` without a single
/// warning, and does not restart walbust on the exit statuses that only
/// fail again (2: configuration, 3: needs a human).
#[test]
fn the_systemd_unit_verifies_and_does_not_restart_what_needs_a_human() {
    let unit = read(&deploy_file("walbust.service"));
    let prevent: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .collect();
    assert_eq!(prevent, ["2 3"], "{unit}");
    for hardening in [
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service\n",
        "NoNewPrivileges=yes\n",
        "ProtectKernelTunables=yes\n",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(hardening), "missing {hardening:?}");
    }
    // Verified as installed, with ExecStart pointing at the built binary
    // (systemd-analyze checks that the command exists).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walbust.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/walbust", env!("CARGO_BIN_EXE_walbust")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e}: install it with apt-get install systemd (scripts/test.sh does)")
        });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "systemd-analyze warned:\n{err}");
}

/// The image's runtime stage installs every package that owns a library
/// the binary links (beyond those of every Debian image), builds with the
/// lock file, runs as a numeric user, and the build context leaves out
/// `target/` and `.git/`.
#[test]
fn the_dockerfile_installs_what_the_binary_links() {
    let dockerfile = read(&deploy_file("Dockerfile"));
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "{dockerfile}"
    );
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a runtime stage")
        .1;
    let installed: Vec<&str> = runtime
        .split_once("apt-get install")
        .expect("the runtime stage installs packages")
        .1
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .collect();
    assert!(installed.contains(&"ca-certificates"), "{installed:?}");
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|n| n > 0)),
        "USER {user} is not numeric and non-root"
    );

    // Priority "required" in Debian: present in debian:bookworm-slim.
    const BASE: [&str; 3] = ["libc6", "libgcc-s1", "zlib1g"];
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_walbust"))
        .output()
        .expect("ldd (libc-bin)");
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let mut owners = Vec::new();
    for lib in ldd.lines().filter_map(|l| l.split(" => ").nth(1)) {
        let lib = lib.split_whitespace().next().unwrap();
        let canonical = std::fs::canonicalize(lib).unwrap();
        let owner = [Path::new(lib), canonical.as_path()]
            .iter()
            .find_map(|p| {
                let out = Command::new("dpkg").arg("-S").arg(p).output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                out.status
                    .success()
                    .then(|| text.split(':').next().unwrap().to_string())
            })
            .unwrap_or_else(|| panic!("no Debian package owns {lib}"));
        owners.push((lib.to_string(), owner));
    }
    assert!(
        owners.iter().any(|(_, o)| o == "libssl3"),
        "expected OpenSSL among {owners:?}"
    );
    for (lib, owner) in &owners {
        assert!(
            BASE.contains(&owner.as_str()) || installed.contains(&owner.as_str()),
            "{lib} belongs to {owner}, which the Dockerfile does not install ({installed:?})"
        );
    }

    let ignore = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dockerignore"));
    for entry in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            "{entry} in .dockerignore"
        );
    }
}

/// The Kubernetes manifest runs the image's numeric user, non-root, with a
/// read-only root filesystem, no privilege escalation and no capabilities,
/// from a pinned image tag.
#[test]
fn the_kubernetes_manifest_runs_locked_down_from_a_pinned_image() {
    let manifest = read(&deploy_file("kubernetes.yaml"));
    let dockerfile = read(&deploy_file("Dockerfile"));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .and_then(|u| u.split(':').next())
        .expect("the Dockerfile's USER");
    for line in [
        "runAsNonRoot: true".to_string(),
        format!("runAsUser: {user}"),
        "allowPrivilegeEscalation: false".to_string(),
        "readOnlyRootFilesystem: true".to_string(),
        "capabilities: {drop: [\"ALL\"]}".to_string(),
    ] {
        assert!(
            manifest.lines().any(|l| l.trim() == line),
            "{line:?} missing from deploy/kubernetes.yaml"
        );
    }
    let image = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("an image");
    let tag = image.rsplit_once(':').map(|(_, t)| t);
    assert!(
        tag.is_some_and(|t| t != "latest"),
        "image {image} is not pinned"
    );
}
