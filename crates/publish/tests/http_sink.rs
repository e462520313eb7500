//! The HTTP sink against real HTTP servers inside the test (testkit's `HttpRecorder`, over TCP
//! and TLS): a batch split over several requests is confirmed only when every one got a 2xx,
//! each kind of answer is the error kind its retriability needs, kept connections that the
//! server closed cost nothing, and `https://` trusts the CA of `tls.ca_file`.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use support::{batch, strings};
use walbust_publish::http_sink::{HttpFormat, HttpSink, HttpSinkConfig, HttpTlsConfig};
use walbust_publish::{Sink, SinkErrorKind};
use walbust_testkit::{HttpAnswer, HttpRecorder};

fn tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

/// Ten tags in requests of two: five requests. One of them answered 503 fails the batch
/// (retriably) although the other four were applied; once all answer 200, it is confirmed.
#[tokio::test]
async fn a_split_batch_is_confirmed_only_when_every_request_got_a_2xx() {
    let healthy = Arc::new(AtomicU16::new(0));
    let flag = healthy.clone();
    let cache = HttpRecorder::start(move |request| {
        let failing = flag.load(Ordering::SeqCst) == 0;
        if failing && request.header("xkey").is_some_and(|k| k.contains("t4")) {
            HttpAnswer::status(503)
        } else {
            HttpAnswer::status(200)
        }
    })
    .await
    .unwrap();
    let mut cfg = HttpSinkConfig::new(cache.url("/"), HttpFormat::VarnishXkey);
    cfg.max_keys_per_request = 2;
    let sink = HttpSink::new(cfg).unwrap();
    let b = batch(vec![], tags(10), vec![]);

    let err = sink.publish(&b).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Unavailable);
    assert!(err.retriable());
    assert_eq!(err.to_string(), "http: 1 of 5 requests of the batch failed");
    assert_eq!(cache.received().len(), 5, "every request was sent");

    healthy.store(1, Ordering::SeqCst);
    sink.publish(&b)
        .await
        .expect("confirmed once every request answers 2xx");
    let second: Vec<String> = cache.received()[5..]
        .iter()
        .map(|r| {
            assert_eq!(r.method, "PURGE");
            r.header("xkey").unwrap().to_owned()
        })
        .collect();
    let mut keys: Vec<&str> = second.iter().flat_map(|k| k.split(' ')).collect();
    keys.sort();
    assert_eq!(
        keys,
        tags(10).iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// What each answer means: 5xx, 408 and 429 pass with time; 401 and 403 are refused
/// credentials; a redirect is a wrong URL; any other 4xx refuses the batch for good.
#[tokio::test]
async fn answers_become_the_error_kinds_their_retriability_needs() {
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let api = HttpRecorder::start(move |_| {
        HttpAnswer::status(answer.load(Ordering::SeqCst)).header("location", "/elsewhere")
    })
    .await
    .unwrap();
    let mut cfg = HttpSinkConfig::new(api.url("/purge"), HttpFormat::SurrogateKey);
    cfg.headers.insert("Fastly-Key".into(), "token".into());
    let sink = HttpSink::new(cfg).unwrap();
    let b = batch(vec![], strings(["category:3"]), vec![]);
    for (code, kind) in [
        (200, None),
        (204, None),
        (500, Some(SinkErrorKind::Unavailable)),
        (503, Some(SinkErrorKind::Unavailable)),
        (408, Some(SinkErrorKind::Unavailable)),
        (429, Some(SinkErrorKind::Unavailable)),
        (401, Some(SinkErrorKind::Denied)),
        (403, Some(SinkErrorKind::Denied)),
        (301, Some(SinkErrorKind::Config)),
        (400, Some(SinkErrorKind::Rejected)),
        (404, Some(SinkErrorKind::Rejected)),
    ] {
        status.store(code, Ordering::SeqCst);
        let got = sink.publish(&b).await.err().map(|e| e.kind());
        assert_eq!(got, kind, "answer {code}");
    }
    let last = api.received().pop().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/purge");
    assert_eq!(last.header("surrogate-key"), Some("category:3"));
    assert_eq!(last.header("fastly-key"), Some("token"));
    assert!(last
        .header("user-agent")
        .is_some_and(|a| a.starts_with("walbust/")));
}

/// No server, or one that never answers: retriable, as an outage is.
#[tokio::test]
async fn refused_connections_and_silence_are_retriable() {
    let port = walbust_testkit::free_port();
    let sink = HttpSink::new(HttpSinkConfig::new(
        format!("http://127.0.0.1:{port}/"),
        HttpFormat::VarnishXkey,
    ))
    .unwrap();
    let b = batch(vec![], strings(["t"]), vec![]);
    assert_eq!(
        sink.publish(&b).await.unwrap_err().kind(),
        SinkErrorKind::Connect
    );
    assert_eq!(
        sink.health().await.unwrap_err().kind(),
        SinkErrorKind::Connect
    );

    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = HttpSinkConfig::new(
        format!("http://{}/", silent.local_addr().unwrap()),
        HttpFormat::VarnishXkey,
    );
    cfg.timeout_ms = 200;
    let sink = HttpSink::new(cfg).unwrap();
    let err = sink.publish(&b).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Timeout);
    assert!(err.retriable());
}

/// A server that closes every connection after its answer: each batch still goes through on a
/// fresh connection, never failing on the one the server closed.
#[tokio::test]
async fn connections_the_server_closed_are_replaced() {
    let cache = HttpRecorder::start(|_| HttpAnswer::status(200).header("connection", "close"))
        .await
        .unwrap();
    let sink = HttpSink::new(HttpSinkConfig::new(cache.url("/"), HttpFormat::VarnishXkey)).unwrap();
    sink.health().await.unwrap();
    for i in 0..5 {
        let b = batch(vec![], vec![format!("t{i}")], vec![]);
        sink.publish(&b)
            .await
            .unwrap_or_else(|e| panic!("batch {i}: {e:?}"));
    }
    assert_eq!(cache.received().len(), 5);
    // A batch that only completes transactions has nothing to send.
    sink.publish(&batch(vec![], vec![], vec![])).await.unwrap();
    assert_eq!(cache.received().len(), 5);
}

/// `https://` with `tls.ca_file`: the private CA is trusted, and the webhook body arrives
/// intact. Without it the public roots refuse the certificate: Denied, not retried.
#[tokio::test]
async fn https_trusts_the_ca_file_and_refuses_an_unknown_issuer() {
    let pki = tempfile::tempdir().unwrap();
    // A CA, and a certificate for localhost it signed (`signed` names the CA).
    let cert = |name: &str, subject: &str, signed: &[&str]| {
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", subject])
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ])
            .args(signed)
            .current_dir(pki.path())
            .output()
            .expect("the openssl command (apt-get install -y openssl)");
        assert!(out.status.success(), "openssl for {name}: {out:?}");
    };
    cert("ca", "/CN=walbust test ca", &[]);
    cert(
        "server",
        "/CN=localhost",
        &[
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
    );
    let hook = HttpRecorder::start_tls(
        &pki.path().join("server.crt"),
        &pki.path().join("server.key"),
        |_| HttpAnswer::status(202),
    )
    .await
    .unwrap();

    let mut cfg = HttpSinkConfig::new(hook.url("/hook"), HttpFormat::Webhook);
    cfg.secret = Some("s".into());
    let public_roots = HttpSink::new(cfg.clone()).unwrap();
    let err = public_roots.health().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Denied, "{err:?}");

    cfg.tls = Some(HttpTlsConfig {
        ca_file: Some(pki.path().join("ca.crt")),
    });
    let sink = HttpSink::new(cfg).unwrap();
    sink.health().await.unwrap();
    let b = batch(strings(["product:1"]), strings(["category:3"]), vec![]);
    sink.publish(&b).await.unwrap();
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, walbust_publish::record::encode(&b));
    assert!(got[0]
        .header("x-walbust-signature")
        .is_some_and(|s| s.starts_with("sha256=") && s.len() == 7 + 64));
}
