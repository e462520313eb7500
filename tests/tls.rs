//! TLS on both Postgres connections, configured the libpq way in
//! `source.url`: a server with `ssl = on` and a private CA, reached with
//! verify-full (streaming and SQL), require without a CA, and a client
//! certificate; a wrong host name, an unknown CA and `sslmode=disable`
//! against a TLS-only server are refused with exit status 3 and a message
//! that names the host, the sslmode and the reason.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
"#;

/// A CA and certificates it signed, made with the `openssl` command.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The CA `ca`, a server certificate `server` for the names in `san`
    /// (`DNS:localhost`), and a client certificate `client` for role
    /// `certuser`; plus a second CA, `other-ca`, that signed nothing here.
    fn new(san: &str) -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.signed("server", "localhost", Some(san));
        pki.signed("client", "certuser", None);
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=walbust test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn signed(&self, name: &str, cn: &str, san: Option<&str>) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let ext = format!("{name}.ext");
        let mut text = "basicConstraints=CA:FALSE\n".to_owned();
        if let Some(san) = san {
            text.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.path(&ext), text).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.crt"),
        ]);
    }
}

/// Services whose Postgres speaks TLS with `pki`'s server certificate and
/// lets roles `app` (SCRAM), `md5user` (md5) and `certuser` (client
/// certificate) in over TLS only; the superuser keeps its plaintext line for the test.
async fn tls_services(pki: &Pki) -> (Services, tokio_postgres::Client) {
    let svc = Services::start();
    svc.pg
        .configure(
            &[
                ("server.crt", &pki.read("server.crt")),
                ("server.key", &pki.read("server.key")),
                ("root.crt", &pki.read("ca.crt")),
            ],
            &[
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
                ("ssl_ca_file", "root.crt"),
            ],
        )
        .unwrap();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY);
         CREATE ROLE app LOGIN SUPERUSER REPLICATION PASSWORD 'apppw';
         CREATE ROLE certuser LOGIN SUPERUSER REPLICATION;
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN SUPERUSER REPLICATION PASSWORD 'md5pw';",
    )
    .await
    .unwrap();
    let superuser = svc.pg.user();
    svc.pg
        .set_hba(&format!(
            "local   all         all                 trust\n\
             local   replication all                 trust\n\
             host    all         {superuser} 127.0.0.1/32 scram-sha-256\n\
             hostssl all         app      127.0.0.1/32 scram-sha-256\n\
             hostssl replication app      127.0.0.1/32 scram-sha-256\n\
             hostssl all         certuser 127.0.0.1/32 cert\n\
             hostssl replication certuser 127.0.0.1/32 cert\n\
             hostssl all         md5user  127.0.0.1/32 md5\n\
             hostssl replication md5user  127.0.0.1/32 md5\n"
        ))
        .unwrap();
    let db = svc.pg.connect().await.unwrap();
    (svc, db)
}

fn write_config(svc: &Services, name: &str, url: &str) -> PathBuf {
    std::fs::write(svc.dir.path().join("rules.yaml"), RULES).unwrap();
    let mut text = source_yaml(url, "walbust", "", "rules.yaml");
    text.push_str(&format!(
        "sinks:\n  redis:\n    url: \"{}\"\n",
        svc.redis.url()
    ));
    let path = svc.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn url(svc: &Services, user: &str, host: &str, params: &str) -> String {
    format!(
        "postgres://{user}@{host}:{}/postgres?{params}",
        svc.pg.port()
    )
}

/// walbust streams with `config` and invalidates a key for a new row
/// `id`; every connection of `role` the server sees is encrypted, the
/// walsender among them.
async fn streams_over_tls(
    svc: &Services,
    db: &tokio_postgres::Client,
    config: &Path,
    role: &str,
    id: i32,
) {
    let mut walbust = Walbust::start(config);
    wait_streaming(db, &mut walbust).await;
    let mut redis = svc.redis.connection().await.unwrap();
    let key = format!("product:{id}");
    set_keys(&mut redis, &[&key]).await;
    db.execute("INSERT INTO products VALUES ($1)", &[&id])
        .await
        .unwrap();
    assert_invalidated(&mut redis, &[&key], &[], role).await;
    let rows = db
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = $1",
            &[&role],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        seen.iter().any(|(kind, ssl)| kind == "walsender" && *ssl),
        "{seen:?}"
    );
    assert!(seen.iter().all(|(_, ssl)| *ssl), "{seen:?}");
    walbust.signal("TERM");
    assert!(
        walbust.wait(Duration::from_secs(30)).success(),
        "{}",
        walbust.log()
    );
}

/// `walbust run` is refused with exit status 3 and a message holding
/// every one of `needles`.
async fn refused(config: &Path, needles: &[&str]) {
    let out = run_to_exit(config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(!err.contains("apppw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_streams_and_a_wrong_name_or_an_unknown_ca_is_refused() {
    let pki = Pki::new("DNS:localhost");
    let (svc, db) = tls_services(&pki).await;
    let ca = pki.path("ca.crt");
    let ca = ca.display();

    let config = write_config(
        &svc,
        "verify-full",
        &url(
            &svc,
            "app:apppw",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    );
    streams_over_tls(&svc, &db, &config, "app", 1).await;
    let out = check_db(&config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .contains("ok: the connection to Postgres is encrypted (TLSv1.3, sslmode=verify-full)"),
        "{stdout}"
    );

    // The certificate names localhost, not the address.
    let port = svc.pg.port();
    let config = write_config(
        &svc,
        "wrong-name",
        &url(
            &svc,
            "app:apppw",
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    );
    refused(
        &config,
        &[
            &format!("TLS to Postgres at 127.0.0.1:{port} failed (sslmode=verify-full)"),
            "certificate not valid for name \"127.0.0.1\"",
        ],
    )
    .await;

    // verify-ca checks the chain. (On the replication connection it checks
    // the name too: see the README.)
    let config = write_config(
        &svc,
        "verify-ca",
        &url(
            &svc,
            "app:apppw",
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
    );
    streams_over_tls(&svc, &db, &config, "app", 2).await;

    let other = pki.path("other-ca.crt");
    let config = write_config(
        &svc,
        "unknown-ca",
        &url(
            &svc,
            "app:apppw",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", other.display()),
        ),
    );
    refused(
        &config,
        &[
            &format!("TLS to Postgres at localhost:{port} failed (sslmode=verify-full)"),
            "UnknownIssuer",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_client_certificates_connect_and_disable_is_refused() {
    let pki = Pki::new("DNS:localhost,IP:127.0.0.1");
    let (svc, db) = tls_services(&pki).await;

    let config = write_config(
        &svc,
        "require",
        &url(&svc, "app:apppw", "127.0.0.1", "sslmode=require"),
    );
    streams_over_tls(&svc, &db, &config, "app", 1).await;

    // A role whose password is still stored as md5.
    let config = write_config(
        &svc,
        "md5",
        &url(&svc, "md5user:md5pw", "127.0.0.1", "sslmode=require"),
    );
    streams_over_tls(&svc, &db, &config, "md5user", 4).await;

    // The default (prefer) takes TLS when the server offers it.
    let config = write_config(&svc, "prefer", &url(&svc, "app:apppw", "127.0.0.1", ""));
    streams_over_tls(&svc, &db, &config, "app", 2).await;

    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    );
    let config = write_config(
        &svc,
        "client-cert",
        &url(&svc, "certuser", "127.0.0.1", &params),
    );
    streams_over_tls(&svc, &db, &config, "certuser", 3).await;

    let config = write_config(
        &svc,
        "disable",
        &url(&svc, "app:apppw", "127.0.0.1", "sslmode=disable"),
    );
    refused(&config, &["no pg_hba.conf entry", "no encryption"]).await;

    let config = write_config(
        &svc,
        "unknown",
        &url(
            &svc,
            "app:apppw",
            "127.0.0.1",
            "sslmode=require&sslcompression=1",
        ),
    );
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("unknown parameter \"sslcompression\""),
        "{err}"
    );
}

/// A configuration with a plaintext Postgres and Redis over TLS at `url`,
/// `tls` lines in `sinks.redis.tls`.
fn redis_tls_config(svc: &Services, name: &str, url: &str, tls: &str) -> PathBuf {
    std::fs::write(svc.dir.path().join("rules.yaml"), RULES).unwrap();
    let mut text = source_yaml(&svc.pg.url(), "walbust", "", "rules.yaml");
    text.push_str(&format!(
        "sinks:\n  redis:\n    url: \"{url}\"\n    tls:\n{tls}"
    ));
    let path = svc.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_client_certificates() {
    let pki = Pki::new("DNS:localhost");
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (cert, key, ca) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("ca.crt"),
    );
    let ca_line = format!("      ca_file: {}\n", ca.display());

    let redis = walbust_testkit::Redis::start_tls(&cert, &key, &ca, &[]).unwrap();
    let url = redis.tls_url().unwrap();
    let config = redis_tls_config(&svc, "redis-ca", &url, &ca_line);
    invalidates(&redis, &db, &config, 1).await;

    let other = format!("      ca_file: {}\n", pki.path("other-ca.crt").display());
    let config = redis_tls_config(&svc, "redis-unknown-ca", &url, &other);
    let out = run_to_exit(&config).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The server asks for a client certificate signed by the CA.
    let redis = walbust_testkit::Redis::start_tls(&cert, &key, &ca, &["--tls-auth-clients", "yes"])
        .unwrap();
    let url = redis.tls_url().unwrap();
    let client = format!(
        "{ca_line}      cert_file: {}\n      key_file: {}\n",
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    );
    let config = redis_tls_config(&svc, "redis-client-cert", &url, &client);
    invalidates(&redis, &db, &config, 2).await;

    // Without one the server refuses walbust, for good.
    let config = redis_tls_config(&svc, "redis-no-client-cert", &url, &ca_line);
    let mut walbust = Walbust::start(&config);
    let status = walbust.wait(Duration::from_secs(60));
    let log = walbust.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("CertificateRequired"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_with_a_private_ca() {
    let pki = Pki::new("DNS:localhost,IP:127.0.0.1");
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY)")
        .await
        .unwrap();
    let cluster = walbust_testkit::RedisCluster::start_tls(
        3,
        &pki.path("server.crt"),
        &pki.path("server.key"),
        &pki.path("ca.crt"),
    )
    .unwrap();
    let url = cluster.tls_url().unwrap();
    std::fs::write(svc.dir.path().join("rules.yaml"), RULES).unwrap();
    let mut text = source_yaml(&svc.pg.url(), "walbust", "", "rules.yaml");
    text.push_str(&format!(
        "sinks:\n  redis:\n    url: \"{url}\"\n    cluster: true\n    tls:\n      ca_file: {}\n",
        pki.path("ca.crt").display()
    ));
    let config = svc.dir.path().join("cluster.yaml");
    std::fs::write(&config, text).unwrap();

    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // Keys on every node, set through the plain ports.
    let mut redis = cluster.connection().await.unwrap();
    for id in 1..=20 {
        let _: () = redis::cmd("SET")
            .arg(format!("product:{id}"))
            .arg("cached")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let lsn = current_wal_lsn(&db).await;
    db.execute("INSERT INTO products SELECT generate_series(1, 20)", &[])
        .await
        .unwrap();
    wait_confirmed_past(&db, lsn).await;
    let left: Vec<String> = cluster
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.starts_with("product:"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    walbust.signal("TERM");
    assert!(
        walbust.wait(Duration::from_secs(30)).success(),
        "{}",
        walbust.log()
    );
}

/// walbust runs with `config` and removes the key of a new row `id` from
/// `redis`.
async fn invalidates(
    redis: &walbust_testkit::Redis,
    db: &tokio_postgres::Client,
    config: &Path,
    id: i32,
) {
    let mut conn = redis.connection().await.unwrap();
    let key = format!("product:{id}");
    set_keys(&mut conn, &[&key]).await;
    let mut walbust = Walbust::start(config);
    wait_streaming(db, &mut walbust).await;
    db.execute("INSERT INTO products VALUES ($1)", &[&id])
        .await
        .unwrap();
    assert_invalidated(&mut conn, &[&key], &[], "over TLS").await;
    walbust.signal("TERM");
    assert!(
        walbust.wait(Duration::from_secs(30)).success(),
        "{}",
        walbust.log()
    );
}
