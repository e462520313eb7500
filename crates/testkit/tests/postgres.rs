//! Round trips against a real throwaway PostgreSQL.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use walbust_testkit::Postgres;

fn euid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric uid")
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("pid on the first line")
}

/// pg_ctl returns once postmaster.pid is gone, a moment before the process
/// itself has exited; a zombie waiting for its reaper counts as gone.
fn exits_soon(pid: u32) -> bool {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

#[tokio::test]
async fn logical_replication_is_ready() {
    let started = Instant::now();
    let pg = Postgres::start_with(&[("wal_sender_timeout", "5s")]).expect("start postgres");
    eprintln!("postgres started in {:?}", started.elapsed());

    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.user(), "walbust");
    assert_eq!(
        pg.url(),
        format!(
            "postgres://walbust:{}@127.0.0.1:{}/{}",
            pg.password(),
            pg.port(),
            pg.database()
        )
    );
    assert!(pg.bindir().join("initdb").exists());
    assert!(pg.data_dir().join("PG_VERSION").exists());

    let client = pg.connect().await.expect("connect");
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .expect("show wal_level")
        .get(0);
    assert_eq!(wal_level, "logical");
    let timeout: String = client
        .query_one("SHOW wal_sender_timeout", &[])
        .await
        .expect("show wal_sender_timeout")
        .get(0);
    assert_eq!(timeout, "5s", "start_with settings override the defaults");
    let sync: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .expect("show synchronous_commit")
        .get(0);
    assert_eq!(sync, "on");

    let row = client
        .query_one(
            "SELECT slot_name::text FROM pg_create_logical_replication_slot('testkit_slot', 'pgoutput')",
            &[],
        )
        .await
        .expect("create a logical slot");
    assert_eq!(row.get::<_, String>(0), "testkit_slot");
    let plugin: String = client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = 'testkit_slot'",
            &[],
        )
        .await
        .expect("read the slot back")
        .get(0);
    assert_eq!(plugin, "pgoutput");

    // The URL works with a plain driver connect (password over SCRAM).
    let (other, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect by url");
    tokio::spawn(conn);
    let one: i32 = other
        .query_one("SELECT 1", &[])
        .await
        .expect("select")
        .get(0);
    assert_eq!(one, 1);

    // When we are root, the server runs as the postgres user.
    let owner = std::fs::metadata(pg.data_dir())
        .expect("stat data dir")
        .uid();
    if euid() == 0 {
        assert_ne!(
            owner, 0,
            "data dir must belong to the postgres user, not root"
        );
    } else {
        assert_eq!(owner, euid());
    }
}

#[test]
fn psql_command_and_replication_connections_work() {
    let pg = Postgres::start().expect("start postgres");
    let psql = pg.psql_command();
    assert!(psql.contains(&format!("-p {}", pg.port())), "{psql}");
    assert!(
        psql.contains(&format!("PGPASSWORD={}", pg.password())),
        "{psql}"
    );

    // The command line a person would paste, as is.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{psql} -XAtc 'SELECT current_user'"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "walbust");

    // A walsender connection over TCP with SCRAM: pg_hba allows replication.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=walbust dbname=postgres replication=database",
        pg.port()
    );
    let out = Command::new(pg.bindir().join("psql"))
        .env("PGPASSWORD", pg.password())
        .args(["-XAt", "-c", "IDENTIFY_SYSTEM", &conninfo])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("|"));

    // And a wrong password is refused: the auth really is SCRAM, not trust.
    let out = Command::new(pg.bindir().join("psql"))
        .env("PGPASSWORD", "wrong")
        .args([
            "-XAt",
            "-c",
            "SELECT 1",
            &conninfo.replace(" replication=database", ""),
        ])
        .output()
        .expect("run psql");
    assert!(!out.status.success());
}

#[tokio::test]
async fn stop_and_restart_keep_port_and_data() {
    let pg = Postgres::start().expect("start postgres");
    let port = pg.port();
    {
        let client = pg.connect().await.expect("connect");
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
            .await
            .expect("write");
        client
            .batch_execute("SELECT pg_create_logical_replication_slot('kept', 'pgoutput')")
            .await
            .expect("create slot");
    }

    pg.stop().expect("stop");
    assert!(!pg.is_running());
    assert!(
        pg.connect().await.is_err(),
        "connect must fail while stopped"
    );
    pg.stop().expect("stopping a stopped server is fine");

    let started = Instant::now();
    pg.restart().expect("restart");
    eprintln!(
        "postgres restarted (crash recovery) in {:?}",
        started.elapsed()
    );
    assert_eq!(pg.port(), port);
    assert!(pg.is_running());
    let client = pg.connect().await.expect("connect after restart");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "committed rows survive an immediate stop");
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'kept'",
            &[],
        )
        .await
        .expect("slots")
        .get(0);
    assert_eq!(slots, 1);
}

#[test]
fn drop_stops_the_server_and_deletes_its_directory() {
    let pg = Postgres::start().expect("start postgres");
    let data_dir = pg.data_dir().to_owned();
    let pid = postmaster_pid(&data_dir);
    let port = pg.port();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(pg);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(!data_dir.parent().expect("instance dir").exists());
    assert!(exits_soon(pid), "postmaster {pid} still running");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn bad_settings_are_rejected_before_anything_starts() {
    let err = Postgres::start_with(&[("port", "1\nfsync = on")]).expect_err("must be refused");
    assert!(
        err.to_string().contains("invalid postgresql.conf setting"),
        "{err}"
    );
}

#[test]
fn a_setting_the_server_rejects_fails_with_the_log_tail() {
    let err = Postgres::start_with(&[("shared_buffers", "not-a-size")]).expect_err("must fail");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("PostgreSQL failed to start"), "{text}");
    assert!(
        text.contains("shared_buffers"),
        "log tail names the setting: {text}"
    );
}

#[test]
fn instances_are_independent() {
    let a = Postgres::start().expect("start a");
    let b = Postgres::start().expect("start b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.password(), b.password());
}

/// Polls `probe` every 10 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: std::time::Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Row 1 of table `t`, once the table exists (on a replica, once it was
/// replayed).
async fn value_on(db: &tokio_postgres::Client) -> Option<String> {
    db.query_opt("SELECT v FROM t WHERE id = 1", &[])
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// A primary with table `t` holding row 1 = 'old', and a connection to it.
async fn primary_with_row() -> (Postgres, tokio_postgres::Client) {
    let primary = Postgres::start().expect("start primary");
    let db = primary.connect().await.expect("connect primary");
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')",
    )
    .await
    .expect("create t");
    (primary, db)
}

#[tokio::test]
async fn a_replica_replays_the_primarys_writes() {
    let (primary, mut db) = primary_with_row().await;

    let replica = Postgres::start_replica(&primary, None).expect("start replica");
    assert_ne!(replica.port(), primary.port());
    assert_eq!(replica.user(), primary.user());
    let standby = replica.connect().await.expect("connect replica");
    let in_recovery: bool = standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0);
    assert!(in_recovery, "the replica is a standby");
    assert_eq!(value_on(&standby).await.as_deref(), Some("old"));

    walbust_testkit::commit_transaction(&mut db, "UPDATE t SET v = 'new' WHERE id = 1")
        .await
        .expect("update");
    let committed = walbust_testkit::current_wal_lsn(&db).await.expect("lsn");
    let replayed = eventually(std::time::Duration::from_secs(10), || async {
        let lsn = walbust_testkit::replay_lsn(&standby)
            .await
            .expect("replay lsn")?;
        (lsn >= committed).then_some(lsn)
    })
    .await
    .expect("the replica replays the update");
    assert!(replayed >= committed);
    assert_eq!(value_on(&standby).await.as_deref(), Some("new"));
    assert_eq!(
        walbust_testkit::replay_lsn(&db).await.expect("primary"),
        None,
        "a primary has no replay position"
    );

    // Stopped, it answers nothing; restarted, it catches up.
    replica.stop().expect("stop replica");
    assert!(!replica.is_running());
    walbust_testkit::commit_transaction(&mut db, "UPDATE t SET v = 'newer' WHERE id = 1")
        .await
        .expect("update");
    replica.restart().expect("restart replica");
    let standby = replica.connect().await.expect("reconnect replica");
    let seen = eventually(std::time::Duration::from_secs(10), || async {
        value_on(&standby).await.filter(|v| v == "newer")
    })
    .await;
    assert_eq!(seen.as_deref(), Some("newer"));
}

#[tokio::test]
async fn a_delayed_replica_shows_the_old_row_first() {
    let (primary, mut db) = primary_with_row().await;
    let delay = std::time::Duration::from_millis(1500);
    let replica = Postgres::start_replica(&primary, Some(delay)).expect("start replica");
    let standby = replica.connect().await.expect("connect replica");
    // The table's creation waits out the delay too.
    eventually(std::time::Duration::from_secs(10), || value_on(&standby))
        .await
        .expect("the replica has the table");

    let committed_at = Instant::now();
    walbust_testkit::commit_transaction(&mut db, "UPDATE t SET v = 'new' WHERE id = 1")
        .await
        .expect("update");
    assert_eq!(
        value_on(&standby).await.as_deref(),
        Some("old"),
        "right after the commit the delayed replica still has the old row"
    );
    let seen = eventually(std::time::Duration::from_secs(10), || async {
        value_on(&standby).await.filter(|v| v == "new")
    })
    .await;
    assert_eq!(seen.as_deref(), Some("new"));
    // recovery_min_apply_delay counts from the commit's timestamp on the
    // primary, which is a little before `committed_at`.
    assert!(
        committed_at.elapsed() >= delay - std::time::Duration::from_millis(200),
        "the new row showed after {:?}, before the delay",
        committed_at.elapsed()
    );
}

/// A failover and back: the standby is promoted, the former primary is
/// rebuilt as its standby on its old port and follows it, and the same
/// can be done the other way round (Postgres 18: failover standbys).
#[tokio::test]
async fn a_former_primary_rejoins_as_the_standby_of_the_promoted_one() {
    const SLOT: &str = "standby_slot";
    let bindir = walbust_testkit::pg18_bindir().expect("Postgres 18 server programs");
    let a = Postgres::start_with_bindir(bindir, &[]).expect("start a");
    let db = a.connect().await.expect("connect a");
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')",
    )
    .await
    .expect("create t");
    let b = Postgres::start_failover_standby(&a, SLOT).expect("start b");
    drop(db);

    for (primary, standby, value) in [(&a, &b, "on b"), (&b, &a, "on a again")] {
        let port = primary.port();
        primary.stop().expect("stop the primary");
        standby.promote().expect("promote the standby");
        primary
            .rejoin_as_failover_standby(standby, SLOT, &[])
            .expect("rejoin as standby");
        assert_eq!(primary.port(), port, "the rejoined server keeps its port");
        let new_db = standby.connect().await.expect("connect the new primary");
        new_db
            .execute("UPDATE t SET v = $1 WHERE id = 1", &[&value])
            .await
            .expect("write on the new primary");
        let follower = primary
            .connect()
            .await
            .expect("connect the rejoined server");
        let recovering: bool = follower
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("pg_is_in_recovery")
            .get(0);
        assert!(recovering, "the rejoined server is a standby");
        let seen = eventually(std::time::Duration::from_secs(20), || async {
            value_on(&follower).await.filter(|v| v == value)
        })
        .await;
        assert_eq!(seen.as_deref(), Some(value), "the rejoined server follows");
    }
}
