//! Reading walbust's `/metrics`: a plain HTTP GET over TCP and a parser for the Prometheus text
//! format, enough for counters, gauges and the commit-to-confirm summary.
//!
//! walbust's exporter renders histograms as summaries (quantiles over a rolling window of about
//! a minute) unless buckets are configured; both shapes are read, so the harness keeps working
//! if that changes.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

/// The latency figures of one summary (or histogram), in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// Observations since the process started (`_count`).
    pub count: u64,
}

/// GETs `http://{addr}/metrics` and parses it.
pub async fn scrape(addr: &str) -> Result<Metrics> {
    let body = tokio::time::timeout(Duration::from_secs(10), get(addr, "/metrics"))
        .await
        .with_context(|| format!("GET http://{addr}/metrics timed out"))??;
    Ok(parse(&body))
}

async fn get(addr: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {addr}");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("GET http://{addr}{path}: {status}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    })
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size_line, rest)) = body.split_once("\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
}

/// Parses the Prometheus text format; lines it does not understand are skipped.
pub fn parse(text: &str) -> Metrics {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let series = series.trim();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Metrics { samples }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut end = after.len();
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            if escaped {
                value.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = i;
                break;
            } else {
                value.push(c);
            }
        }
        labels.push((key.trim().trim_start_matches(',').trim().to_string(), value));
        rest = after.get(end + 1..).unwrap_or_default();
    }
    labels
}

impl Metrics {
    /// The sum of every series of `name` (e.g. a counter over its `op` labels); `None` if absent.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for s in self.samples.iter().filter(|s| s.name == name) {
            found = true;
            total += s.value;
        }
        found.then_some(total)
    }

    /// p50, p95, p99 and max of a summary, or estimated from a histogram's buckets (each
    /// quantile is then its bucket's upper bound: an overestimate, never an underestimate).
    pub fn quantiles(&self, name: &str) -> Option<Quantiles> {
        let count = self.sum(&format!("{name}_count"))?;
        let count = count.max(0.0) as u64;
        let quantile = |q: f64| {
            self.samples
                .iter()
                .filter(|s| s.name == name)
                .find(|s| label(s, "quantile").and_then(|v| v.parse::<f64>().ok()) == Some(q))
                .map(|s| s.value)
        };
        if let (Some(p50), Some(p95), Some(p99), Some(max)) =
            (quantile(0.5), quantile(0.95), quantile(0.99), quantile(1.0))
        {
            return Some(Quantiles {
                p50,
                p95,
                p99,
                max,
                count,
            });
        }
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .filter_map(|s| {
                let le = label(s, "le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, s.value))
            })
            .collect();
        if buckets.is_empty() || count == 0 {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |q: f64| {
            let rank = (q * count as f64).ceil().max(1.0);
            buckets
                .iter()
                .find(|(_, cumulative)| *cumulative >= rank)
                .map_or(f64::INFINITY, |(bound, _)| *bound)
        };
        Some(Quantiles {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
            count,
        })
    }
}

fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
    sample
        .labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"
# TYPE walbust_changes_total counter
walbust_changes_total{op="update"} 1200
walbust_changes_total{op="insert"} 34
# TYPE walbust_commit_to_confirm_seconds summary
walbust_commit_to_confirm_seconds{quantile="0"} 0.0004
walbust_commit_to_confirm_seconds{quantile="0.5"} 0.0011
walbust_commit_to_confirm_seconds{quantile="0.9"} 0.002
walbust_commit_to_confirm_seconds{quantile="0.95"} 0.003
walbust_commit_to_confirm_seconds{quantile="0.99"} 0.0071
walbust_commit_to_confirm_seconds{quantile="0.999"} 0.01
walbust_commit_to_confirm_seconds{quantile="1"} 0.02
walbust_commit_to_confirm_seconds_sum 1.5
walbust_commit_to_confirm_seconds_count 900
walbust_confirmed_lsn 23456789
"#;

    #[test]
    fn counters_sum_over_labels() {
        let m = parse(SUMMARY);
        assert_eq!(m.sum("walbust_changes_total"), Some(1234.0));
        assert_eq!(m.sum("walbust_confirmed_lsn"), Some(23456789.0));
        assert_eq!(m.sum("walbust_nope"), None);
    }

    #[test]
    fn summary_quantiles_are_read() {
        let q = parse(SUMMARY)
            .quantiles("walbust_commit_to_confirm_seconds")
            .unwrap();
        assert_eq!(
            q,
            Quantiles {
                p50: 0.0011,
                p95: 0.003,
                p99: 0.0071,
                max: 0.02,
                count: 900
            }
        );
    }

    #[test]
    fn histogram_quantiles_are_bucket_upper_bounds() {
        let text = r#"
lat_bucket{le="0.001"} 40
lat_bucket{le="0.005"} 95
lat_bucket{le="0.01"} 99
lat_bucket{le="+Inf"} 100
lat_sum 0.3
lat_count 100
"#;
        let q = parse(text).quantiles("lat").unwrap();
        assert_eq!((q.p50, q.p95, q.p99), (0.005, 0.005, 0.01));
        assert!(q.max.is_infinite());
        assert_eq!(q.count, 100);
    }

    #[test]
    fn labels_with_escapes_and_commas() {
        let m = parse("x{a=\"1,2\",b=\"q\\\"t\"} 3\n");
        assert_eq!(
            m.samples[0].labels,
            vec![("a".into(), "1,2".into()), ("b".into(), "q\"t".into())]
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
        assert!(dechunk("5\r\nhel").is_err());
    }
}
