//! The requests of a batch, built without I/O: surrogate key lists for the purge formats, JSON
//! records for the webhook, and the webhook's signature.

use std::collections::HashSet;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::SendEntries;
use crate::batch::Batch;
use crate::record;

/// What a batch becomes for `varnish_xkey` and `surrogate_key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurrogatePurges {
    /// One space-separated surrogate key list per request.
    pub headers: Vec<String>,
    /// Patterns that no surrogate key expresses, skipped (no `flush_all_key`).
    pub skipped_patterns: usize,
    /// Entries that cannot be a header token (whitespace, control characters, longer than the
    /// header limit), skipped (no `flush_all_key`).
    pub skipped_unsendable: usize,
    /// Whether `flush_all_key` stands in for patterns or unsendable entries.
    pub flush_all: bool,
}

/// Whether `entry` can be one surrogate key of a space-separated header list.
pub fn is_header_token(entry: &str) -> bool {
    !entry.is_empty() && entry.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// The surrogate key lists of `batch`: the entries `send` names, deduplicated, each request
/// holding at most `max_keys` keys in at most `max_header_bytes` bytes.
///
/// A surrogate key cannot say "every key matching this glob", and an HTTP cache has no other
/// way to find them: patterns (the flush-all `*` included) become `flush_all_key` when it is
/// set, and are skipped otherwise (counted in [`SurrogatePurges::skipped_patterns`]). Entries
/// that cannot go into the header are handled the same way.
pub fn surrogate_purges(
    batch: &Batch,
    send: SendEntries,
    flush_all_key: Option<&str>,
    max_keys: usize,
    max_header_bytes: usize,
) -> SurrogatePurges {
    let lists: &[&Vec<String>] = match send {
        SendEntries::Tags => &[&batch.tags],
        SendEntries::Keys => &[&batch.keys],
        SendEntries::Both => &[&batch.tags, &batch.keys],
    };
    let mut out = SurrogatePurges::default();
    let mut seen = HashSet::new();
    let mut entries: Vec<&str> = Vec::new();
    for entry in lists.iter().flat_map(|list| list.iter()) {
        if !is_header_token(entry) || entry.len() > max_header_bytes {
            out.skipped_unsendable += 1;
        } else if seen.insert(entry.as_str()) {
            entries.push(entry);
        }
    }
    out.skipped_patterns = batch.patterns.len();
    if let Some(key) = flush_all_key {
        if out.skipped_patterns + out.skipped_unsendable > 0 {
            out.flush_all = true;
            out.skipped_patterns = 0;
            out.skipped_unsendable = 0;
            if seen.insert(key) {
                entries.push(key);
            }
        }
    }

    let mut current = String::new();
    let mut count = 0;
    for entry in entries {
        let full = count == max_keys || current.len() + 1 + entry.len() > max_header_bytes;
        if count > 0 && full {
            out.headers.push(std::mem::take(&mut current));
            count = 0;
        }
        if count > 0 {
            current.push(' ');
        }
        current.push_str(entry);
        count += 1;
    }
    if count > 0 {
        out.headers.push(current);
    }
    out
}

/// The webhook bodies of `batch`: its JSON record (see [`crate::record`]), split so that each
/// carries at most `max_entries` keys, tags and patterns together. Every part repeats the
/// batch's `lsn`, `commit_ts` and `xids`.
pub fn webhook_bodies(batch: &Batch, max_entries: usize) -> Vec<Vec<u8>> {
    // Without a byte limit no entry can be too large.
    record::encode_split_by(batch, usize::MAX, max_entries).unwrap_or_default()
}

/// The `X-Walbust-Signature` value of `body`: `sha256=` and the lowercase hex HMAC-SHA256 of
/// the exact body bytes under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: &[&str], tags: &[&str], patterns: &[&str]) -> Batch {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Batch {
            lsn: 0x16B3748,
            xids: vec![7],
            keys: own(keys),
            tags: own(tags),
            patterns: own(patterns),
            ..Batch::default()
        }
    }

    #[test]
    fn tags_by_default_keys_or_both_when_asked() {
        let b = batch(&["product:1"], &["category:3", "products"], &[]);
        let tags = surrogate_purges(&b, SendEntries::Tags, None, 256, 4096);
        assert_eq!(tags.headers, ["category:3 products"]);
        let keys = surrogate_purges(&b, SendEntries::Keys, None, 256, 4096);
        assert_eq!(keys.headers, ["product:1"]);
        let both = surrogate_purges(&b, SendEntries::Both, None, 256, 4096);
        assert_eq!(both.headers, ["category:3 products product:1"]);
        let same = batch(&["x"], &["x"], &[]);
        let both = surrogate_purges(&same, SendEntries::Both, None, 256, 4096);
        assert_eq!(
            both.headers,
            ["x"],
            "an entry both tag and key is sent once"
        );
    }

    #[test]
    fn split_by_count_and_by_header_bytes() {
        let tags: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let b = batch(&[], &refs, &[]);
        let by_count = surrogate_purges(&b, SendEntries::Tags, None, 4, 4096);
        assert_eq!(by_count.headers, ["t0 t1 t2 t3", "t4 t5 t6 t7", "t8 t9"]);
        // "t0 t1 t2" is 8 bytes: three fit in 8, not in 7.
        let by_bytes = surrogate_purges(&b, SendEntries::Tags, None, 256, 8);
        assert_eq!(by_bytes.headers[0], "t0 t1 t2");
        assert!(by_bytes.headers.iter().all(|h| h.len() <= 8));
        let by_bytes = surrogate_purges(&b, SendEntries::Tags, None, 256, 7);
        assert_eq!(by_bytes.headers[0], "t0 t1");
        let rejoined: Vec<&str> = by_bytes.headers.iter().flat_map(|h| h.split(' ')).collect();
        assert_eq!(rejoined, refs, "nothing lost or repeated");
    }

    #[test]
    fn patterns_are_skipped_and_counted_without_a_flush_all_key() {
        let b = batch(&[], &["a"], &["product-list:*", "*"]);
        let plan = surrogate_purges(&b, SendEntries::Tags, None, 256, 4096);
        assert_eq!(plan.headers, ["a"]);
        assert_eq!(plan.skipped_patterns, 2);
        assert!(!plan.flush_all);
    }

    #[test]
    fn patterns_and_unsendable_entries_become_the_flush_all_key() {
        let b = batch(&[], &["a", "has space", "ctl\u{1}"], &["*"]);
        let plan = surrogate_purges(&b, SendEntries::Tags, Some("all"), 256, 4096);
        assert_eq!(plan.headers, ["a all"]);
        assert!(plan.flush_all);
        assert_eq!((plan.skipped_patterns, plan.skipped_unsendable), (0, 0));
        let plain = surrogate_purges(&b, SendEntries::Tags, None, 256, 4096);
        assert_eq!((plain.skipped_patterns, plain.skipped_unsendable), (1, 2));
        let no_patterns = batch(&[], &["a"], &[]);
        let plan = surrogate_purges(&no_patterns, SendEntries::Tags, Some("all"), 256, 4096);
        assert_eq!(plan.headers, ["a"], "the flush key only when needed");
    }

    #[test]
    fn an_empty_selection_sends_nothing() {
        let b = batch(&["k"], &[], &[]);
        assert!(surrogate_purges(&b, SendEntries::Tags, None, 256, 4096)
            .headers
            .is_empty());
    }

    #[test]
    fn webhook_records_are_the_kafka_records_split_by_entries() {
        let b = batch(&["k1", "k2"], &["t1"], &["p*"]);
        assert_eq!(webhook_bodies(&b, 10), vec![record::encode(&b)]);
        let parts = webhook_bodies(&b, 3);
        assert_eq!(parts.len(), 2);
        let values: Vec<serde_json::Value> = parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        assert_eq!(values[0]["keys"], serde_json::json!(["k1", "k2"]));
        assert_eq!(values[0]["tags"], serde_json::json!(["t1"]));
        assert_eq!(values[1]["keys"], serde_json::json!([]));
        assert_eq!(values[1]["patterns"], serde_json::json!(["p*"]));
        for value in values {
            assert_eq!(value["v"], 1);
            assert_eq!(value["lsn"], "0/16B3748");
            assert_eq!(value["xids"], serde_json::json!([7]));
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
