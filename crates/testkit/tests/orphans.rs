//! When the process that started servers dies without running destructors
//! (SIGKILL from a test runner's timeout), the servers are still stopped and
//! their directories deleted, by the orphan guard.
//!
//! No libtest harness: this binary re-runs itself as the child that holds the
//! servers, selected by an environment variable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "WALBUST_TESTKIT_ORPHAN_CHILD";

const NAME: &str = "servers_of_a_killed_process_are_cleaned_up";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        hold_servers();
        return;
    }
    // Enough of libtest's command line for cargo test and nextest: nextest
    // lists tests with `--list --format terse` (and again with `--ignored`),
    // then runs each with `--exact NAME`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("running 0 tests");
        return;
    }
    servers_of_a_killed_process_are_cleaned_up();
    println!("test {NAME} ... ok");
}

/// Child: start servers, report where they live, wait to be killed.
fn hold_servers() {
    let pg = walbust_testkit::Postgres::start().expect("start postgres");
    let redis = walbust_testkit::Redis::start().expect("start redis");
    // Its backend is never asked: nothing is fetched through it.
    let varnish =
        walbust_testkit::Varnish::start(walbust_testkit::free_port()).expect("start varnish");
    let pg_pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .expect("pid line")
        .to_owned();
    println!("pg_dir={}", pg.data_dir().parent().expect("dir").display());
    println!("pg_pid={pg_pid}");
    println!("pg_port={}", pg.port());
    println!(
        "redis_dir={}",
        redis.log_file().parent().expect("dir").display()
    );
    println!("redis_port={}", redis.port());
    println!(
        "varnish_dir={}",
        varnish.log_file().parent().expect("dir").display()
    );
    println!("varnish_port={}", varnish.port());
    println!("ready");
    std::thread::sleep(Duration::from_secs(120));
}

fn servers_of_a_killed_process_are_cleaned_up() {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut facts = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if line == "ready" {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            facts.insert(k.to_owned(), v.to_owned());
        }
    }
    let get = |k: &str| {
        facts
            .get(k)
            .unwrap_or_else(|| panic!("child did not report {k}: {facts:?}"))
            .clone()
    };
    let pg_dir = PathBuf::from(get("pg_dir"));
    let redis_dir = PathBuf::from(get("redis_dir"));
    let pg_pid = get("pg_pid");
    let pg_port: u16 = get("pg_port").parse().expect("port");
    let redis_port: u16 = get("redis_port").parse().expect("port");
    let varnish_dir = PathBuf::from(get("varnish_dir"));
    let varnish_port: u16 = get("varnish_port").parse().expect("port");
    assert!(pg_dir.exists() && redis_dir.exists() && varnish_dir.exists());
    assert!(listening(pg_port) && listening(redis_port) && listening(varnish_port));

    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && (pg_dir.exists()
            || redis_dir.exists()
            || listening(pg_port)
            || listening(redis_port)
            || varnish_dir.exists()
            || listening(varnish_port)
            || alive(&pg_pid))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pg_dir.exists(), "{} left behind", pg_dir.display());
    assert!(!redis_dir.exists(), "{} left behind", redis_dir.display());
    assert!(!listening(pg_port), "postgres still listening on {pg_port}");
    assert!(
        !listening(redis_port),
        "redis still listening on {redis_port}"
    );
    assert!(
        !varnish_dir.exists(),
        "{} left behind",
        varnish_dir.display()
    );
    assert!(
        !listening(varnish_port),
        "varnish still listening on {varnish_port}"
    );
    assert!(!alive(&pg_pid), "postmaster {pg_pid} still running");
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Alive and not a zombie.
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
