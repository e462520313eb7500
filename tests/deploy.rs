//! The deploy folder as a DBA uses it: deploy/shop-schema.sql and
//! deploy/postgres-setup.sql applied to a fresh database, pg_hba.conf with
//! the one line the setup script asks for, and walbust run with
//! deploy/walbust.yaml and the rules deploy/compose.yaml mounts, as the
//! script's least-privileged role.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// The password deploy/postgres-setup.sql gives the role.
const PASSWORD: &str = "change-me";
/// The role and database the setup script and walbust.yaml name.
const ROLE: &str = "walbust";
const DATABASE: &str = "shop";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_script_fits_the_shipped_rules_and_configuration() {
    let (svc, mut shop) = fresh_shop().await;
    let admin = svc.pg.connect().await.unwrap();
    psql(&svc.pg, DATABASE, &deploy_file("postgres-setup.sql")).await;
    let setup = read_text(&deploy_file("postgres-setup.sql"));
    // The same walbust_refresh as `walbust setup` installs, and it works: a
    // view of the shop refreshed with its invalidation.
    let refresh = read_text(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/walbust_refresh.sql"),
    );
    assert!(
        setup.contains(&refresh),
        "deploy/postgres-setup.sql lacks walbust_refresh as `walbust setup` prints it"
    );
    // In a transaction rolled back: nothing of it reaches the slot.
    let tx = shop.transaction().await.unwrap();
    tx.batch_execute(
        "CREATE MATERIALIZED VIEW walbust_deploy_probe AS SELECT 1 AS one; \
         CREATE UNIQUE INDEX ON walbust_deploy_probe (one)",
    )
    .await
    .unwrap();
    let concurrently: bool = tx
        .query_one(
            "SELECT walbust_refresh('walbust_deploy_probe', '{\"keys\":[\"probe\"]}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        concurrently,
        "a populated view with a unique index refreshes concurrently"
    );
    let refused = tx
        .query_one(
            "SELECT walbust_refresh('walbust_deploy_probe', '{\"key\":[\"probe\"]}')",
            &[],
        )
        .await
        .expect_err("an unknown field is refused");
    assert!(
        format!("{refused:?}").contains("unknown field"),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();

    // pg_hba.conf: the superuser's lines and the script's, nothing else (no
    // `replication` line for walbust).
    only_documented_hba(&svc.pg, &admin, &setup, DATABASE, ROLE).await;
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
    let unit = read_text(&deploy_file("walbust.service"));
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
    let err = validate(
        "systemd-analyze",
        "systemd",
        &["verify".as_ref(), path.as_ref()],
    );
    assert!(err.trim().is_empty(), "systemd-analyze warned:\n{err}");
}

/// The image's runtime stage installs every package that owns a library
/// the binary links (beyond those of every Debian image), builds with the
/// lock file, runs as a numeric user, and the build context leaves out
/// `target/` and `.git/`.
#[test]
fn the_dockerfile_installs_what_the_binary_links() {
    let dockerfile = read_text(&deploy_file("Dockerfile"));
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

    let ignore = read_text(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.dockerignore"));
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
    let manifest = read_text(&deploy_file("kubernetes.yaml"));
    let dockerfile = read_text(&deploy_file("Dockerfile"));
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

/// Runs a validator from the system on `args` in deploy/ and returns what
/// it wrote to stderr; fails if it fails, and a missing binary fails with
/// the package to install (scripts/test.sh installs it).
fn validate(program: &str, package: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(deploy_file(""))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program}: {e}: install it with apt-get install {package} (scripts/test.sh does)"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stderr.into_owned()
}

/// deploy/prometheus-alerts.yaml loads into Prometheus (`promtool check
/// rules`), and its lag alerts fire when and only when the unit tests of
/// deploy/prometheus-alerts.test.yaml say (`promtool test rules`).
#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    for (command, file) in [
        ("check", "prometheus-alerts.yaml"),
        ("test", "prometheus-alerts.test.yaml"),
    ] {
        validate(
            "promtool",
            "prometheus",
            &[command.as_ref(), "rules".as_ref(), file.as_ref()],
        );
    }
}

/// Every YAML file of deploy/ passes yamllint with deploy/yamllint.yaml
/// (yamllint's defaults, without `document-start`), warnings included.
#[test]
fn the_deploy_yaml_passes_yamllint() {
    let mut files: Vec<std::ffi::OsString> = std::fs::read_dir(deploy_file(""))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".yaml"))
        .collect();
    files.sort();
    for expected in [
        "compose.yaml",
        "kubernetes.yaml",
        "prometheus-alerts.yaml",
        "walbust.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} in {files:?}"
        );
    }
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["--strict".as_ref(), "-c".as_ref(), "yamllint.yaml".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    validate("yamllint", "yamllint", &args);
}
