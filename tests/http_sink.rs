//! The HTTP purge sink (`sinks.http`) end to end with the real `walbust` binary and a real
//! Postgres: purges by `xkey` in a real Varnish (varnish-modules' vmod xkey), a signed webhook
//! that refuses and then accepts (the slot waits for the 2xx), Fastly-style `Surrogate-Key`
//! purges split over several requests, and the purge of a gap reaching the cache.
//!
//! The HTTP servers the sink talks to (Varnish's backend, the webhook receiver, the purge API)
//! run inside the test and record every request (testkit's `HttpRecorder`).

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::*;
use walbust_testkit::{HttpAnswer, HttpRecorder, HttpRequest};

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["product:{id}", "category:{category_id}"]
"#;

/// Waits until `recorder` received at least `n` requests; returns them all.
async fn wait_requests(recorder: &HttpRecorder, n: usize, what: &str) -> Vec<HttpRequest> {
    eventually(Duration::from_secs(30), what, || async {
        let all = recorder.received();
        (all.len() >= n).then_some(all)
    })
    .await
}

/// Postgres with the `products` table, a scratch folder, and the port walbust serves metrics
/// on.
struct Shop {
    pg: walbust_testkit::Postgres,
    dir: tempfile::TempDir,
    metrics_port: u16,
}

impl Shop {
    async fn start() -> (Shop, tokio_postgres::Client) {
        let pg =
            tokio::task::block_in_place(walbust_testkit::Postgres::start).expect("start Postgres");
        let db = pg.connect().await.unwrap();
        db.batch_execute(
            "CREATE TABLE products (id int PRIMARY KEY, category_id int, name text);
             -- Old values of every column, so that a product moving to another category
             -- invalidates both.
             ALTER TABLE products REPLICA IDENTITY FULL;
             INSERT INTO products VALUES (1, 3, 'tea'), (2, 4, 'mug');",
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let metrics_port = walbust_testkit::free_port();
        (
            Shop {
                pg,
                dir,
                metrics_port,
            },
            db,
        )
    }

    /// Writes the rules and a configuration whose only sink is `sinks.http` with `http` (lines
    /// indented by four spaces).
    fn config(&self, rules: &str, http: &str) -> PathBuf {
        std::fs::write(self.dir.path().join("rules.yaml"), rules).unwrap();
        let mut cfg = source_yaml(&self.pg.url(), "walbust", "", "rules.yaml");
        cfg.push_str("sinks:\n  http:\n");
        cfg.push_str(http);
        cfg.push_str("publish:\n  retry_min_ms: 50\n  retry_max_ms: 300\n");
        cfg.push_str(&format!(
            "metrics:\n  listen: 127.0.0.1:{}\n",
            self.metrics_port
        ));
        let path = self.dir.path().join("walbust.yaml");
        std::fs::write(&path, cfg).unwrap();
        path
    }
}

/// `GET path` through the cache at `port`; the status.
fn get(port: u16, path: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {reply:?}"))
}

/// A product page of the backend: cacheable for an hour, tagged with the product's and its
/// category's surrogate keys (what the rules call its tags).
fn product_page(request: &HttpRequest) -> HttpAnswer {
    let xkey = match request.path.as_str() {
        "/product/1" => "product:1 category:3",
        "/product/2" => "product:2 category:4",
        _ => return HttpAnswer::status(404),
    };
    HttpAnswer::status(200)
        .header("xkey", xkey)
        .header("cache-control", "public, max-age=3600")
        .body(format!("page {}", request.path))
}

/// A row update purges, in a real Varnish, exactly the objects tagged with the row's tags: its
/// page is fetched from the backend again, the other product's page stays cached. `walbust
/// check --db` finds the sink healthy first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varnish_purges_the_objects_tagged_with_the_rows_tags() {
    let backend = HttpRecorder::start(product_page).await.unwrap();
    let varnish =
        tokio::task::block_in_place(|| walbust_testkit::Varnish::start(backend.addr().port()))
            .expect("start Varnish");
    let port = varnish.port();
    let fetch = |path: &'static str| tokio::task::block_in_place(|| get(port, path));
    for path in ["/product/1", "/product/2"] {
        assert_eq!(fetch(path), 200);
        assert_eq!(fetch(path), 200);
        assert_eq!(backend.count(path), 1, "{path} is cached after one fetch");
    }

    let (shop, mut db) = Shop::start().await;
    let config = shop.config(
        RULES,
        &format!(
            "    url: \"{}/\"\n    format: varnish_xkey\n",
            varnish.url()
        ),
    );
    let check = check_db(&config).await;
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("ok: sink http is healthy"),
        "walbust check --db: {report}"
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let (_, before, _) = commit(
        &mut db,
        "UPDATE products SET name = 'green tea' WHERE id = 1",
    )
    .await;
    // Confirmed means Varnish answered the purge: the objects are gone by now.
    wait_confirmed_past(&db, before).await;

    assert_eq!(fetch("/product/1"), 200);
    assert_eq!(
        backend.count("/product/1"),
        2,
        "the purged page is fetched again"
    );
    assert_eq!(fetch("/product/2"), 200);
    assert_eq!(
        backend.count("/product/2"),
        1,
        "the unrelated page stays cached"
    );
    assert!(walbust.is_running(), "{}", walbust.log());
}

/// The webhook receives the batch's record, signed with the secret read from a file; while it
/// answers 500 walbust retries and the slot does not move past the change; its first 200
/// confirms the batch. The secret never shows in walbust's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_is_retried_and_acknowledged_only_after_a_2xx() {
    const SECRET: &str = "webhook-s3cret-value";
    let status = Arc::new(AtomicU16::new(500));
    let answer = status.clone();
    let receiver = HttpRecorder::start(move |_| HttpAnswer::status(answer.load(Ordering::SeqCst)))
        .await
        .unwrap();

    let (shop, mut db) = Shop::start().await;
    std::fs::write(shop.dir.path().join("hook.secret"), format!("{SECRET}\n")).unwrap();
    let config = shop.config(
        RULES,
        &format!(
            "    url: \"{}\"\n    format: webhook\n    secret: \"${{file:hook.secret}}\"\n",
            receiver.url("/hooks/walbust")
        ),
    );
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;

    let (xid, _, after) = commit(&mut db, "UPDATE products SET category_id = 5 WHERE id = 1").await;
    let refused = wait_requests(&receiver, 2, "two attempts answered 500").await;
    // Whatever walbust had confirmed after two refusals has reached the server: not this change.
    wait_status_update(&db).await;
    let confirmed = confirmed_flush_lsn(&db, "walbust").await.unwrap();
    assert!(
        confirmed < after,
        "the slot moved past a change the webhook refused ({confirmed:X} >= {after:X})"
    );
    assert!(walbust.log().contains(RETRYING), "{}", walbust.log());

    status.store(200, Ordering::SeqCst);
    wait_confirmed_at_least(&db, after, Duration::from_secs(30)).await;
    let all = receiver.received();
    let accepted = all.last().unwrap();
    assert!(all.len() > refused.len());

    for request in &all {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/walbust");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&request.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            request.header("x-walbust-signature"),
            Some(format!("sha256={expected}").as_str()),
            "the signature is HMAC-SHA256 of the exact body"
        );
    }
    let record: serde_json::Value = serde_json::from_slice(&accepted.body).unwrap();
    assert_eq!(record["v"], 1);
    assert!(carries(&record, xid), "{record}");
    assert_eq!(strings(&record["keys"]), ["product:1"]);
    let tags: BTreeSet<String> = strings(&record["tags"]).into_iter().collect();
    assert_eq!(
        tags,
        ["category:3", "category:5", "product:1"]
            .map(String::from)
            .into(),
        "both the old and the new category"
    );
    let scrape = tokio::task::block_in_place(|| scrape_metrics(shop.metrics_port));
    let count = |series: &str| metric_value(&scrape, series).unwrap_or(0.0);
    assert!(count("walbust_http_requests_total{class=\"5xx\"}") >= 2.0);
    assert!(count("walbust_http_requests_total{class=\"2xx\"}") >= 1.0);
    assert!(count("walbust_sink_retries_total{sink=\"http\"}") >= 2.0);
    assert!(!walbust.log().contains(SECRET), "the secret was logged");
}

/// Fastly-style purges: `POST` to the purge URL with the configured `Fastly-Key`, the keys in
/// `Surrogate-Key`, one per request here (`max_keys_per_request: 1`), tags and keys
/// (`send: both`); a pattern becomes the `flush_all_key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surrogate_key_purges_carry_the_keys_and_the_configured_headers() {
    let api = HttpRecorder::start(|_| HttpAnswer::status(200).body("{\"status\":\"ok\"}"))
        .await
        .unwrap();
    let (shop, mut db) = Shop::start().await;
    let rules = format!("{RULES}    patterns: [\"product-list:*\"]\n");
    let config = shop.config(
        &rules,
        &format!(
            "    url: \"{}\"\n    format: surrogate_key\n    send: both\n    max_keys_per_request: 1\n    flush_all_key: all\n    headers:\n      Fastly-Key: \"${{FASTLY_KEY}}\"\n",
            api.url("/service/svc1/purge")
        ),
    );
    let mut walbust = Walbust::start_with_env(&config, &[("FASTLY_KEY", "fastly-token")]);
    wait_streaming(&db, &mut walbust).await;

    let (_, before, _) = commit(&mut db, "UPDATE products SET name = 'big mug' WHERE id = 2").await;
    wait_confirmed_past(&db, before).await;
    let all = api.received();
    let mut keys = BTreeSet::new();
    for request in &all {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/service/svc1/purge");
        assert_eq!(request.header("fastly-key"), Some("fastly-token"));
        assert!(request.body.is_empty());
        let header = request
            .header("surrogate-key")
            .expect("a Surrogate-Key header");
        assert!(!header.contains(' '), "one key per request: {header:?}");
        keys.insert(header.to_owned());
    }
    assert_eq!(all.len(), keys.len(), "each key purged once");
    assert_eq!(
        keys,
        ["all", "category:4", "product:2"].map(String::from).into(),
        "tags, keys (product:2 is both) and the flush-all key for the pattern"
    );
    let scrape = tokio::task::block_in_place(|| scrape_metrics(shop.metrics_port));
    assert_eq!(
        metric_value(&scrape, "walbust_http_flush_all_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&scrape, "walbust_http_entries_skipped_total"),
        Some(0.0)
    );
}

/// After a gap (the slot dropped while walbust was stopped), `on_gap: purge` reaches the HTTP
/// cache too: the pattern every purge of a gap carries becomes the `flush_all_key`, before
/// streaming resumes. The gap marker lives in Redis, so Redis is the second sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_purges_the_flush_all_key() {
    let cache = HttpRecorder::start(|_| HttpAnswer::status(200))
        .await
        .unwrap();
    let redis = tokio::task::block_in_place(walbust_testkit::Redis::start).expect("start Redis");
    let (shop, db) = Shop::start().await;
    let config = shop.config(
        RULES,
        &format!(
            "    url: \"{}\"\n    format: varnish_xkey\n    flush_all_key: all\n  redis:\n    url: \"{}\"\n",
            cache.url("/"),
            redis.url()
        ),
    );
    purge_on_gap(&config);
    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    walbust.kill();
    eventually(
        Duration::from_secs(30),
        "the slot to be dropped",
        || async {
            db.batch_execute("SELECT pg_drop_replication_slot('walbust')")
                .await
                .ok()
        },
    )
    .await;
    assert!(
        cache.received().is_empty(),
        "nothing to purge before the gap"
    );

    let mut walbust = Walbust::start(&config);
    wait_streaming(&db, &mut walbust).await;
    // Confirmed before the new slot was created: it arrived before streaming began.
    let purges = cache.received();
    assert_eq!(purges.len(), 1, "{purges:?}");
    assert_eq!(purges[0].method, "PURGE");
    assert_eq!(purges[0].header("xkey"), Some("all"));
    assert!(
        walbust.log().contains("gap purge confirmed"),
        "{}",
        walbust.log()
    );
}
