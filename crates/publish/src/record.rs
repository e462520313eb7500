//! The JSON record describing a batch: the Kafka record value and the Redis `PUBLISH` message.
//!
//! ```json
//! {"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z",
//!  "xids":[1234],"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}
//! ```
//!
//! - `v`: schema version, [`RECORD_VERSION`]. Fields may be added; consumers ignore unknown ones.
//! - `lsn`: commit LSN of the batch's last transaction, printed as Postgres prints LSNs.
//! - `commit_ts`: that transaction's commit time, RFC 3339 UTC with microseconds.
//! - `xids`: ids of the transactions whose invalidations the record carries.
//! - `keys`, `tags`, `patterns`: what to invalidate. Invalidation is idempotent and order-free;
//!   a record can arrive more than once.
//! - `due_ts` (optional, only on scheduled invalidations of rules with `at:`): when the entry
//!   was due, RFC 3339 UTC. `lsn`, `commit_ts` and `xids` are then those of the transaction
//!   that scheduled it (`xids` may be empty), so the record's `lsn` can be older than records
//!   already received: it is no new position in the WAL. Version 1 readers that ignore the
//!   field simply invalidate.
//!
//! A batch too large for one record is split ([`encode_split`]): every part repeats `v`, `lsn`,
//! `commit_ts` and `xids` and carries a disjoint share of the entries. The record is written by
//! hand (strings escaped by `serde_json`) so that its exact size is known while splitting.

use crate::batch::Batch;
use walbust_pgoutput::format_lsn;
use walbust_pgoutput::time::format_rfc3339;

/// Version of the record schema, the `v` field.
pub const RECORD_VERSION: u32 = 1;

/// One entry cannot fit a record of the allowed size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a {field} entry of {entry_bytes} bytes cannot fit a record of at most {max_bytes} bytes \
     ({overhead_bytes} bytes are taken by the record's other fields)"
)]
pub struct RecordTooLarge {
    /// `keys`, `tags`, `patterns`, or `xids` when the fixed part alone is too large.
    pub field: &'static str,
    /// Encoded size of the entry.
    pub entry_bytes: usize,
    /// Bytes taken by the fields every part repeats.
    pub overhead_bytes: usize,
    /// The limit.
    pub max_bytes: usize,
}

const FIELDS: [&str; 3] = ["keys", "tags", "patterns"];

/// The bytes `entry` takes in a record (quotes and escapes included, no comma).
pub fn escaped_len(entry: &str) -> usize {
    escape(entry).len()
}

/// Encodes the whole batch as one record.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let head = head(batch);
    let entries = [&batch.keys, &batch.tags, &batch.patterns]
        .map(|list| list.iter().map(|s| escape(s)).collect::<Vec<_>>());
    assemble(&head, &entries.each_ref().map(|v| v.as_slice()))
}

/// Encodes the batch as records of at most `max_bytes` bytes each, in as few records as a greedy
/// fill allows (keys first, then tags, then patterns).
pub fn encode_split(batch: &Batch, max_bytes: usize) -> Result<Vec<Vec<u8>>, RecordTooLarge> {
    encode_split_by(batch, max_bytes, usize::MAX)
}

/// [`encode_split`], each record also carrying at most `max_entries` keys, tags and patterns
/// together (at least one).
pub fn encode_split_by(
    batch: &Batch,
    max_bytes: usize,
    max_entries: usize,
) -> Result<Vec<Vec<u8>>, RecordTooLarge> {
    let max_entries = max_entries.max(1);
    let head = head(batch);
    let overhead = assemble(&head, &[&[], &[], &[]]).len();
    if overhead > max_bytes {
        return Err(RecordTooLarge {
            field: "xids",
            entry_bytes: overhead,
            overhead_bytes: overhead,
            max_bytes,
        });
    }

    let mut records = Vec::new();
    let mut part: [Vec<String>; 3] = Default::default();
    let mut size = overhead;
    let mut count = 0;
    let lists = [&batch.keys, &batch.tags, &batch.patterns];
    for (field_index, list) in lists.into_iter().enumerate() {
        for entry in list {
            let escaped = escape(entry);
            // A comma precedes every entry but the first of its array.
            let cost = |part: &[Vec<String>; 3]| {
                escaped.len() + usize::from(!part[field_index].is_empty())
            };
            if (size + cost(&part) > max_bytes || count == max_entries) && count > 0 {
                records.push(assemble(&head, &part.each_ref().map(|v| v.as_slice())));
                part = Default::default();
                size = overhead;
                count = 0;
            }
            if size + cost(&part) > max_bytes {
                return Err(RecordTooLarge {
                    field: FIELDS[field_index],
                    entry_bytes: escaped.len(),
                    overhead_bytes: overhead,
                    max_bytes,
                });
            }
            size += cost(&part);
            count += 1;
            part[field_index].push(escaped);
        }
    }
    if records.is_empty() || count > 0 {
        records.push(assemble(&head, &part.each_ref().map(|v| v.as_slice())));
    }
    Ok(records)
}

/// The fields every part repeats, up to and including `"xids":[...]`.
fn head(batch: &Batch) -> String {
    let mut head = format!(
        "{{\"v\":{RECORD_VERSION},\"lsn\":\"{}\",\"commit_ts\":\"{}\",",
        format_lsn(batch.lsn),
        format_rfc3339(batch.commit_time_micros)
    );
    if let Some(due) = batch.due_unix_micros {
        let due = walbust_pgoutput::time::unix_to_pg_micros(due);
        head.push_str(&format!("\"due_ts\":\"{}\",", format_rfc3339(due)));
    }
    head.push_str("\"xids\":[");
    for (i, xid) in batch.xids.iter().enumerate() {
        if i > 0 {
            head.push(',');
        }
        head.push_str(&xid.to_string());
    }
    head.push(']');
    head
}

fn assemble(head: &str, lists: &[&[String]; 3]) -> Vec<u8> {
    let len = head.len()
        + lists
            .iter()
            .map(|l| l.iter().map(|s| s.len() + 1).sum::<usize>() + 16)
            .sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(head);
    for (field, list) in FIELDS.iter().zip(lists) {
        out.push_str(",\"");
        out.push_str(field);
        out.push_str("\":[");
        for (i, entry) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(entry);
        }
        out.push(']');
    }
    out.push('}');
    out.into_bytes()
}

/// A JSON string literal, quotes included.
fn escape(s: &str) -> String {
    // Serializing a &str to a String cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn batch(keys: Vec<String>, tags: Vec<String>, patterns: Vec<String>) -> Batch {
        Batch {
            lsn: 0x16B3748,
            end_lsn: Some(0x16B3800),
            commit_time_micros: (1_795_341_600 - 946_684_800) * 1_000_000 + 123_456,
            first_commit_time_micros: 0,
            xids: vec![1234, 1235],
            keys,
            tags,
            patterns,
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scheduled_records_say_when_they_were_due() {
        let mut b = batch(strings(&["promotions:active"]), vec![], vec![]);
        b.due_unix_micros = Some(1_795_345_200_000_000);
        b.xids.clear();
        let text = String::from_utf8(encode(&b)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z","due_ts":"2026-11-22T11:00:00.000000Z","xids":[],"keys":["promotions:active"],"tags":[],"patterns":[]}"#
        );
        let parts = encode_split(&b, 200).unwrap();
        assert!(parts
            .iter()
            .all(|p| String::from_utf8_lossy(p).contains("\"due_ts\"")));
    }

    #[test]
    fn documented_format() {
        let b = batch(
            strings(&["product:42"]),
            strings(&["category:3"]),
            strings(&["product-list:*"]),
        );
        let text = String::from_utf8(encode(&b)).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z","xids":[1234,1235],"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let b = batch(strings(&["a\"b\\c\n\u{1}é"]), vec![], vec![]);
        let value: Value = serde_json::from_slice(&encode(&b)).unwrap();
        assert_eq!(value["keys"][0], "a\"b\\c\n\u{1}é");
        assert_eq!(value["tags"], Value::Array(vec![]));
    }

    fn parse_all(records: &[Vec<u8>]) -> (Vec<Value>, [Vec<String>; 3]) {
        let mut values = Vec::new();
        let mut seen: [Vec<String>; 3] = Default::default();
        for record in records {
            let value: Value = serde_json::from_slice(record).unwrap();
            for (i, field) in FIELDS.iter().enumerate() {
                for entry in value[field].as_array().unwrap() {
                    seen[i].push(entry.as_str().unwrap().to_string());
                }
            }
            values.push(value);
        }
        (values, seen)
    }

    #[test]
    fn split_respects_the_limit_and_keeps_everything() {
        let keys: Vec<String> = (0..500).map(|i| format!("product:{i}:detail")).collect();
        let tags: Vec<String> = (0..50).map(|i| format!("category:{i}")).collect();
        let patterns = strings(&["product-list:*", "search:\\*lit"]);
        let b = batch(keys.clone(), tags.clone(), patterns.clone());
        let max = 1000;
        let records = encode_split(&b, max).unwrap();
        assert!(records.len() > 10, "{} records", records.len());
        for record in &records {
            assert!(record.len() <= max, "record of {} bytes", record.len());
        }
        let (values, seen) = parse_all(&records);
        assert_eq!(seen, [keys, tags, patterns]);
        for value in values {
            assert_eq!(value["v"], 1);
            assert_eq!(value["lsn"], "0/16B3748");
            assert_eq!(value["commit_ts"], "2026-11-22T10:00:00.123456Z");
            assert_eq!(value["xids"], serde_json::json!([1234, 1235]));
        }
    }

    #[test]
    fn split_fills_records_tightly() {
        // Find the exact size of a record holding 3 keys; with that limit, 9 keys give 3 records.
        let keys: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
        let three = encode(&batch(keys[..3].to_vec(), vec![], vec![])).len();
        let records = encode_split(&batch(keys.clone(), vec![], vec![]), three).unwrap();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.len() == three));
        let records = encode_split(&batch(keys, vec![], vec![]), three - 1).unwrap();
        assert_eq!(records.len(), 5);
    }

    #[test]
    fn small_batch_is_one_record_identical_to_encode() {
        let b = batch(strings(&["a", "b"]), strings(&["t"]), vec![]);
        assert_eq!(encode_split(&b, 10_000).unwrap(), vec![encode(&b)]);
        let empty = batch(vec![], vec![], vec![]);
        assert_eq!(encode_split(&empty, 10_000).unwrap(), vec![encode(&empty)]);
    }

    #[test]
    fn an_entry_larger_than_the_limit_is_an_error() {
        let big = "x".repeat(2000);
        let b = batch(strings(&["small"]), vec![big], vec![]);
        let err = encode_split(&b, 1000).unwrap_err();
        assert_eq!(err.field, "tags");
        assert_eq!(err.entry_bytes, 2002);
        assert_eq!(err.max_bytes, 1000);
        let message = err.to_string();
        assert!(message.contains("2002 bytes"), "{message}");
        assert!(
            !message.contains("xxxx"),
            "the entry itself is never in messages"
        );

        let err = encode_split(&b, 50).unwrap_err();
        assert_eq!(err.field, "xids", "the fixed part alone exceeds 50 bytes");
    }
}
