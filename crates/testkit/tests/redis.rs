//! Round trips against a real throwaway Redis.

use std::time::Instant;

use redis::AsyncCommands;
use walbust_testkit::Redis;

#[tokio::test]
async fn set_get_stop_restart() {
    let started = Instant::now();
    let server = Redis::start().expect("start redis");
    eprintln!("redis started in {:?}", started.elapsed());
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.cli_command(), format!("redis-cli -p {port}"));
    assert!(server.is_running());

    let mut conn = server.connection().await.expect("connect");
    let () = conn.set("walbust:k", "v1").await.expect("set");
    let got: Option<String> = conn.get("walbust:k").await.expect("get");
    assert_eq!(got.as_deref(), Some("v1"));

    server.stop().expect("stop");
    assert!(!server.is_running());
    assert!(
        server.connection().await.is_err(),
        "connect must fail while stopped"
    );
    server.stop().expect("stopping a stopped server is fine");

    let started = Instant::now();
    server.restart().expect("restart");
    eprintln!("redis restarted in {:?}", started.elapsed());
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    let mut conn = server.connection().await.expect("connect after restart");
    let got: Option<String> = conn.get("walbust:k").await.expect("get");
    assert_eq!(got, None, "a restarted server starts empty");
    let () = conn.set("walbust:k", "v2").await.expect("set");
    let got: Option<String> = conn.get("walbust:k").await.expect("get");
    assert_eq!(got.as_deref(), Some("v2"));

    // restart() of a running server also works.
    server.restart().expect("restart while running");
    assert!(server.is_running());
}

#[test]
fn cli_command_works() {
    let server = Redis::start().expect("start redis");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} PING", server.cli_command()))
        .output()
        .expect("run redis-cli");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
}

#[test]
fn drop_kills_and_deletes() {
    let server = Redis::start().expect("start redis");
    let dir = server.log_file().parent().expect("dir").to_owned();
    let port = server.port();
    assert!(dir.exists());
    drop(server);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn drop_cleans_up_after_a_panic() {
    let (dir_tx, dir_rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = Redis::start().expect("start redis");
        dir_tx
            .send((
                server.log_file().parent().expect("dir").to_owned(),
                server.port(),
            ))
            .expect("send");
        panic!("a failing test");
    })
    .join();
    assert!(result.is_err());
    let (dir, port) = dir_rx.recv().expect("dir");
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn acknowledged_writes_survive_a_kill_with_an_append_only_file() {
    let server = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("start redis with an append-only file");
    let mut conn = server.connection().await.expect("connect");
    let n: i64 = conn.incr("walbust:counter", 1).await.expect("incr");
    assert_eq!(n, 1);
    let n: i64 = conn.incr("walbust:counter", 1).await.expect("incr");
    assert_eq!(n, 2);

    // stop() is SIGKILL: only what reached the append-only file survives.
    server.stop().expect("stop");
    server.restart().expect("restart");
    let mut conn = server.connection().await.expect("connect after restart");
    let got: Option<i64> = conn.get("walbust:counter").await.expect("get");
    assert_eq!(got, Some(2), "acknowledged increments survive a kill");
    let appendonly: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .expect("config get");
    assert_eq!(
        appendonly,
        ["appendonly", "yes"],
        "restart keeps the arguments"
    );
}
