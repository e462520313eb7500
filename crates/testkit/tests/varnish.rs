//! A real throwaway Varnish: it answers purges as soon as `start` returns, and dropping it
//! stops it and deletes its directory.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use walbust_testkit::Varnish;

#[test]
fn answers_purges_and_drop_stops_and_deletes() {
    // A backend address nothing answers on: a purge never reaches the backend.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let varnish = Varnish::start(backend.local_addr().unwrap().port()).expect("start Varnish");
    let port = varnish.port();
    assert_eq!(varnish.url(), format!("http://127.0.0.1:{port}"));
    let dir = varnish.log_file().parent().unwrap().to_owned();
    assert!(dir.join("walbust.vcl").is_file());

    drop(varnish);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    // The cache process stops once it sees its manager gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "Varnish still answers on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
