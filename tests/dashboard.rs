//! deploy/grafana-dashboard.json and deploy/prometheus-alerts.yaml against
//! a live walbust: every metric a panel, a dashboard variable or an alert
//! queries is on the `/metrics` page of a walbust that streams to Redis and
//! Kafka and has invalidated a few changes, so no panel shows "No data"
//! for a metric that was renamed or never existed, and no alert waits on a
//! series that will never come. The dashboard is also checked as Grafana
//! imports it: valid JSON, every panel titled, described and bound to the
//! data source variable, every variable it uses defined.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::*;

/// A key, a tag and a pattern, so that both sinks and the pattern walk
/// record something.
const RULES: &str = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}"]
    patterns: ["product-list:{category_id}:*"]
"#;

/// Metrics Prometheus itself records for each scrape target.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// Variables Grafana defines for every dashboard.
const GRAFANA_BUILTINS: [&str; 3] = ["__rate_interval", "__interval", "__range"];

/// What a PromQL expression refers to: metric names (`walbust_*` and
/// [`PROMETHEUS_OWN`]) and Grafana variables (`$job`, `${datasource}`).
#[derive(Debug, Default, PartialEq)]
struct Refs {
    metrics: BTreeSet<String>,
    variables: BTreeSet<String>,
}

/// The metrics and variables `expr` names. Quoted strings (label values)
/// are skipped, so `{kind="walbust_x"}` names no metric; a PromQL function,
/// keyword or label name never starts with `walbust_`.
fn refs(expr: &str) -> Refs {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Refs::default();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' && c != '`' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
            }
            // A Grafana variable: its name is no metric.
            '$' => while chars.next_if(|&(_, d)| ident(d) || d == '{').is_some() {},
            c if ident(c) => {
                let mut end = start + c.len_utf8();
                while let Some((i, d)) = chars.next_if(|&(_, d)| ident(d)) {
                    end = i + d.len_utf8();
                }
                let word = &expr[start..end];
                // Numbers and durations (`5m`, `1e3`) start with a digit.
                if !c.is_ascii_digit()
                    && (word.starts_with("walbust_") || PROMETHEUS_OWN.contains(&word))
                {
                    out.metrics.insert(word.to_string());
                }
            }
            _ => {}
        }
    }
    out.variables = variables(expr);
    out
}

/// The Grafana variables `text` uses (`$var`, `${var}`, `${var:format}`),
/// in label values too: Grafana interpolates before Prometheus parses.
fn variables(text: &str) -> BTreeSet<String> {
    text.split('$')
        .skip(1)
        .filter_map(|after| {
            let name = after.strip_prefix('{').unwrap_or(after);
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            // A `$` anchoring a regular expression is followed by no name.
            (end > 0).then(|| name[..end].to_string())
        })
        .collect()
}

/// The metric names of a scrape with their `# TYPE`.
fn types(scrape: &str) -> BTreeMap<&str, &str> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

/// Whether `scrape` exports `name`: a `# TYPE` line or a sample of it, or
/// it is the `_sum` or `_count` of a summary or histogram, or the
/// `_bucket` of a histogram (a summary has no buckets).
fn exported(scrape: &str, name: &str) -> bool {
    let types = types(scrape);
    if types.contains_key(name) || metric_value(scrape, name).is_some() {
        return true;
    }
    [
        ("_sum", &["summary", "histogram"][..]),
        ("_count", &["summary", "histogram"]),
        ("_bucket", &["histogram"]),
    ]
    .iter()
    .any(|(suffix, kinds)| {
        name.strip_suffix(suffix)
            .and_then(|base| types.get(base))
            .is_some_and(|t| kinds.contains(t))
    })
}

/// The `walbust_*` names among `queried` that `scrape` does not export,
/// each with where it is queried.
fn missing(scrape: &str, queried: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    queried
        .iter()
        .filter(|(name, _)| !PROMETHEUS_OWN.contains(&name.as_str()))
        .filter(|(name, _)| !exported(scrape, name))
        .map(|(name, places)| format!("{name} (in {})", join(places)))
        .collect()
}

fn join(places: &BTreeSet<String>) -> String {
    places.iter().cloned().collect::<Vec<_>>().join("; ")
}

/// The dashboard's panels, rows' nested panels included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut todo: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("a panels list")
        .iter()
        .collect();
    while let Some(panel) = todo.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            todo.extend(nested);
        }
        out.push(panel);
    }
    out
}

/// Every PromQL expression of the dashboard (panel targets and query
/// variables), each with the place it comes from.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let title = panel["title"].as_str().unwrap_or_default();
            out.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = &var["query"];
            let expr = query["query"]
                .as_str()
                .or(query.as_str())
                .unwrap_or_default();
            let name = var["name"].as_str().unwrap_or_default();
            out.push((format!("variable {name:?}"), expr.to_string()));
        }
    }
    out
}

/// Every alert's expression, with its name.
fn alert_queries(alerts: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in alerts["groups"].as_array().expect("alert groups") {
        for rule in group["rules"].as_array().expect("rules of a group") {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let expr = rule["expr"].as_str().expect("an expr");
            out.push((format!("alert {name:?}"), expr.to_string()));
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    let text = read_text(&deploy_file("grafana-dashboard.json"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/grafana-dashboard.json is not valid JSON: {e}"))
}

fn alerts() -> serde_json::Value {
    let text = read_text(&deploy_file("prometheus-alerts.yaml"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("deploy/prometheus-alerts.yaml: {e}"))
}

/// Each metric the deploy files query, with the places that query it;
/// fails on an expression that queries no metric at all (a typo in a
/// prefix would otherwise pass unseen).
fn queried_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut queried: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (place, expr) in dashboard_queries(&dashboard())
        .into_iter()
        .chain(alert_queries(&alerts()))
    {
        let found = refs(&expr).metrics;
        assert!(!found.is_empty(), "{place} queries no metric: {expr:?}");
        for name in found {
            queried.entry(name).or_default().insert(place.clone());
        }
    }
    queried
}

#[test]
fn the_extractor_finds_metric_names_and_variables() {
    let expr = r#"sum by (sink) (rate(walbust_bogus_total{job=~"$job", kind="walbust_label_value", status=~"lost$"}[${__rate_interval}])) / on (instance) up > 5m"#;
    let found = refs(expr);
    assert_eq!(
        found.metrics,
        BTreeSet::from(["walbust_bogus_total".to_string(), "up".to_string()])
    );
    assert_eq!(
        found.variables,
        BTreeSet::from(["job".to_string(), "__rate_interval".to_string()])
    );
}

#[test]
fn a_name_the_scrape_lacks_is_reported() {
    let scrape = "# TYPE walbust_x_seconds summary\n\
                  walbust_x_seconds{quantile=\"0.5\"} 0.1\n\
                  walbust_x_seconds_sum 1\n\
                  walbust_x_seconds_count 10\n\
                  # TYPE walbust_y_total counter\n\
                  walbust_y_total{sink=\"redis\"} 0\n";
    let queried: BTreeMap<String, BTreeSet<String>> = [
        "walbust_x_seconds",
        "walbust_x_seconds_sum",
        "walbust_x_seconds_count",
        "walbust_x_seconds_bucket",
        "walbust_y_total",
        "walbust_bogus_total",
        "up",
    ]
    .into_iter()
    .map(|n| (n.to_string(), BTreeSet::from(["a panel".to_string()])))
    .collect();
    assert_eq!(
        missing(scrape, &queried),
        [
            "walbust_bogus_total (in a panel)",
            "walbust_x_seconds_bucket (in a panel)"
        ]
    );
}

/// As Grafana imports it: every panel has a title; every panel but a row
/// has a description, the data source variable and at least one query;
/// panel ids are unique; every variable a query uses is defined.
#[test]
fn the_dashboard_is_importable_and_every_panel_is_described() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "walbust");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let defined: BTreeSet<&str> = variables
        .iter()
        .map(|v| v["name"].as_str().expect("a variable name"))
        .chain(GRAFANA_BUILTINS)
        .collect();
    let source = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(source["query"], "prometheus");
    let uid = format!("${{{}}}", source["name"].as_str().unwrap());

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        if title.trim().is_empty() {
            problems.push(format!("panel {} has no title", panel["id"]));
        }
        if !ids.insert(panel["id"].as_u64().expect("a panel id")) {
            problems.push(format!("{title}: id {} used twice", panel["id"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["description"].as_str().unwrap_or_default().len() < 20 {
            problems.push(format!("{title}: no description of what to look for"));
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice);
        if targets.unwrap_or_default().is_empty() {
            problems.push(format!("{title}: no query"));
        }
        let sources = std::iter::once(&panel["datasource"])
            .chain(targets.unwrap_or_default().iter().map(|t| &t["datasource"]));
        for ds in sources {
            if ds["type"] != "prometheus" || ds["uid"] != uid.as_str() {
                problems.push(format!("{title}: data source {ds}, not {uid}"));
            }
        }
    }
    for (place, expr) in dashboard_queries(&dashboard) {
        for var in refs(&expr).variables {
            if !defined.contains(var.as_str()) {
                problems.push(format!("{place}: undefined variable ${var}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The live check. Waits (never longer than a minute) until the scrape
/// lists every queried metric, so that series which appear a moment after
/// the start (the slot's, once the monitor looked) are not reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let queried = queried_metrics();
    // max_slot_wal_keep_size set: walbust exports the slot's safe WAL bytes.
    let pg = walbust_testkit::Postgres::start_with(&[("max_slot_wal_keep_size", "1GB")])
        .expect("start Postgres");
    let svc = Services::start_with(pg, walbust_testkit::Kafka::start().expect("start Kafka"));
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute("CREATE TABLE products (id int PRIMARY KEY, category_id int)")
        .await
        .unwrap();
    let (config, port) = config_with_metrics_sinks(&svc, RULES, true);
    // A read replica, so that the replica series (and their alert) exist.
    let replica = walbust_testkit::Postgres::start_replica(&svc.pg, None).expect("start a replica");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "rules: ",
        &format!("  replicas:\n    - url: \"{}\"\nrules: ", replica.url()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut walbust = Walbust::start(&config);
    wait_slot_active(&db, &mut walbust, "walbust").await;

    // A few transactions, so the histograms have samples and the pattern
    // walk finds something.
    let mut redis = svc.redis.connection().await.unwrap();
    let cached = [
        "product:1",
        "product:2",
        "product:3",
        "product-list:7:page-1",
    ];
    set_keys(&mut redis, &cached).await;
    for id in 1..=3 {
        db.execute("INSERT INTO products VALUES ($1, 7)", &[&id])
            .await
            .unwrap();
    }
    assert_invalidated(&mut redis, &cached, &[], "three inserts").await;
    kafka_records(&svc.kafka, 1);

    let deadline = Instant::now() + Duration::from_secs(60);
    let (scrape, absent) = loop {
        let scrape = scrape_metrics(port);
        let absent = missing(&scrape, &queried);
        if absent.is_empty() || Instant::now() > deadline {
            break (scrape, absent);
        }
        assert!(
            walbust.is_running(),
            "walbust exited; log:\n{}",
            walbust.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        absent.is_empty(),
        "queried by deploy/grafana-dashboard.json or deploy/prometheus-alerts.yaml, \
         not exported by walbust:\n  {}\n\nscrape:\n{scrape}",
        absent.join("\n  ")
    );
    // Histograms are exported as summaries (quantiles, no buckets): the
    // dashboard's latency panels read quantiles.
    assert_eq!(
        types(&scrape).get("walbust_commit_to_confirm_seconds"),
        Some(&"summary")
    );
    assert!(metric_value(&scrape, "walbust_commit_to_confirm_seconds_count").unwrap() >= 1.0);
    assert!(metric_value(&scrape, "walbust_redis_pattern_keys_removed_total").unwrap() >= 1.0);

    walbust.signal("TERM");
    assert!(walbust.wait(Duration::from_secs(30)).success());
}
