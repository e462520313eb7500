//! The record walbust publishes for each batch (Kafka record value, Redis `PUBLISH` message).
//!
//! ```json
//! {"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z",
//!  "xids":[1234],"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}
//! ```
//!
//! A scheduled invalidation (a rule with `at:`, applied when a row's timestamp came) is a normal
//! record with `due_ts`, when it was due; its `lsn` is that of the commit that scheduled it, so
//! it can be older than records already applied (the watermark never moves back).
//!
//! Fields may be added within a version: unknown ones are ignored. A record of another `v` is
//! refused ([`RecordError::UnknownVersion`]), because its fields may mean something else.

use serde::Deserialize;

use crate::lsn::Lsn;

/// The schema version this crate understands.
pub const RECORD_VERSION: u64 = 1;

/// A decoded record of version [`RECORD_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    /// Commit LSN of the last transaction the record covers.
    #[serde(deserialize_with = "lsn_text")]
    pub lsn: Lsn,
    /// That transaction's commit time, RFC 3339 UTC (kept as text).
    #[serde(default)]
    pub commit_ts: String,
    /// Ids of the transactions whose invalidations the record carries.
    #[serde(default)]
    pub xids: Vec<u64>,
    /// Cache keys to drop.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tags whose entries to drop.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Redis glob patterns of keys to drop; `*` drops everything.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Only on scheduled invalidations: when they were due, RFC 3339 UTC (kept as text).
    #[serde(default)]
    pub due_ts: Option<String>,
}

/// Why a payload was not applied. [`RecordError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The payload is not a record (not JSON, a field of the wrong type, no `v`). Only where
    /// decoding stopped is kept: serde's messages quote values, and cache keys can hold personal
    /// data.
    #[error("not a walbust record (invalid JSON or field at line {line}, column {column})")]
    Malformed {
        /// Line of the payload where decoding stopped.
        line: usize,
        /// Column of that line.
        column: usize,
    },
    /// A schema version this crate does not know.
    #[error("record version {0} is not known to this subscriber (it knows {RECORD_VERSION})")]
    UnknownVersion(u64),
}

impl RecordError {
    /// The `reason` label of the refusal counter: `malformed` or `version`.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Malformed { .. } => "malformed",
            RecordError::UnknownVersion(_) => "version",
        }
    }
}

/// The version alone; serde skips the other fields without building them.
#[derive(Deserialize)]
struct Version {
    v: u64,
}

fn malformed(err: serde_json::Error) -> RecordError {
    RecordError::Malformed {
        line: err.line(),
        column: err.column(),
    }
}

impl Record {
    /// Decodes a payload. The version is read first, so that a record of an unknown version is
    /// refused as such even when its other fields changed shape.
    pub fn parse(payload: &[u8]) -> Result<Record, RecordError> {
        let version: Version = serde_json::from_slice(payload).map_err(malformed)?;
        if version.v != RECORD_VERSION {
            return Err(RecordError::UnknownVersion(version.v));
        }
        serde_json::from_slice(payload).map_err(malformed)
    }

    /// Keys, tags and patterns in the record.
    pub fn entries(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }
}

fn lsn_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Lsn, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENTED: &str = r#"{"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z","xids":[1234,1235],"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}"#;

    #[test]
    fn reads_the_documented_record() {
        let record = Record::parse(DOCUMENTED.as_bytes()).unwrap();
        assert_eq!(record.lsn, Lsn(0x16B_3748));
        assert_eq!(record.commit_ts, "2026-11-22T10:00:00.123456Z");
        assert_eq!(record.xids, [1234, 1235]);
        assert_eq!(record.keys, ["product:42"]);
        assert_eq!(record.tags, ["category:3"]);
        assert_eq!(record.patterns, ["product-list:*"]);
        assert_eq!(record.entries(), 3);
    }

    #[test]
    fn reads_scheduled_records() {
        let text = DOCUMENTED.replace(
            "\"xids\"",
            "\"due_ts\":\"2026-11-22T11:00:00.000000Z\",\"xids\"",
        );
        let record = Record::parse(text.as_bytes()).unwrap();
        assert_eq!(
            record.due_ts.as_deref(),
            Some("2026-11-22T11:00:00.000000Z")
        );
        assert_eq!(record.keys, ["product:42"]);
        assert_eq!(Record::parse(DOCUMENTED.as_bytes()).unwrap().due_ts, None);
    }

    #[test]
    fn ignores_unknown_fields() {
        let text = DOCUMENTED.replace("\"v\":1,", "\"v\":1,\"origin\":{\"slot\":\"walbust\"},");
        assert_eq!(
            Record::parse(text.as_bytes()).unwrap(),
            Record::parse(DOCUMENTED.as_bytes()).unwrap()
        );
    }

    #[test]
    fn refuses_other_versions_even_with_other_shapes() {
        let v2 = r#"{"v":2,"lsn":7,"keys":[{"k":"x"}]}"#;
        let err = Record::parse(v2.as_bytes()).unwrap_err();
        assert!(matches!(err, RecordError::UnknownVersion(2)), "{err}");
        assert_eq!(err.reason(), "version");
    }

    #[test]
    fn refuses_malformed_payloads_without_quoting_them() {
        for payload in [
            &b""[..],
            b"not json",
            br#"{"lsn":"0/1"}"#,
            br#"{"v":1,"lsn":"zz"}"#,
            br#"{"v":1,"lsn":"0/1","keys":"secret-key"}"#,
            br#"{"v":"1","lsn":"0/1"}"#,
        ] {
            let err = Record::parse(payload).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{err}");
            assert!(!err.to_string().contains("secret-key"), "{err}");
        }
    }
}
