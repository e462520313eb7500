//! The records of a batch, built without I/O.

use crate::batch::Batch;
use crate::metrics as m;
use crate::record::{self, RecordTooLarge};
use crate::sink::{SinkError, SinkErrorKind};

use crate::batch::FLUSH_ALL;

/// The record values for `batch`, each at most `max_record_bytes` long (see [`crate::record`]).
///
/// An entry too large for any record (a tag rendered from a long text column) cannot be sent,
/// and failing the batch would stop walbust on it at every start: it is replaced by a flush of
/// everything (pattern `*`) in the batch's records, which covers it, and counted in
/// `walbust_kafka_oversize_entries_total`. Transaction ids that alone overflow a record are left
/// out of it (they are informative). Redis still gets the exact entries.
pub fn records(batch: &Batch, max_record_bytes: usize) -> Result<Vec<Vec<u8>>, SinkError> {
    let first = match record::encode_split(batch, max_record_bytes) {
        Ok(records) => return Ok(records),
        Err(e) => e,
    };
    let mut fitted = batch.clone();
    let mut problem = first;
    // Each round removes a cause: the xids, then every entry that cannot fit.
    for _ in 0..3 {
        if problem.field == "xids" {
            tracing::warn!(
                lsn = %walbust_pgoutput::format_lsn(batch.lsn),
                xids = fitted.xids.len(),
                max_record_bytes,
                "kafka: the batch's transaction ids alone exceed max_record_bytes; its records leave them out"
            );
            fitted.xids.clear();
        } else {
            escalate_oversize(&mut fitted, &problem);
        }
        match record::encode_split(&fitted, max_record_bytes) {
            Ok(records) => return Ok(records),
            Err(e) => problem = e,
        }
    }
    Err(SinkError::with_source(
        SinkErrorKind::TooLarge,
        format!(
            "kafka: batch at LSN {} cannot be sent within max_record_bytes",
            walbust_pgoutput::format_lsn(batch.lsn)
        ),
        problem,
    ))
}

/// Replaces every entry of `batch` that cannot fit a record (by `problem`'s overhead and limit)
/// with one flush-all pattern.
fn escalate_oversize(batch: &mut Batch, problem: &RecordTooLarge) {
    let room = problem.max_bytes.saturating_sub(problem.overhead_bytes);
    let fits = |entry: &String| record::escaped_len(entry) <= room;
    let mut removed = 0usize;
    for list in [&mut batch.keys, &mut batch.tags, &mut batch.patterns] {
        let before = list.len();
        list.retain(fits);
        removed += before - list.len();
    }
    if !batch.patterns.iter().any(|p| p == FLUSH_ALL) {
        batch.patterns.push(FLUSH_ALL.to_string());
    }
    metrics::counter!(m::KAFKA_OVERSIZE_ENTRIES).increment(removed as u64);
    // Entries are built from row data: the count only.
    tracing::warn!(
        lsn = %walbust_pgoutput::format_lsn(batch.lsn),
        entries = removed,
        max_record_bytes = problem.max_bytes,
        "kafka: entries too large for any record; the batch's records flush everything instead"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_no_record_can_hold_becomes_a_flush_of_everything() {
        let batch = Batch {
            lsn: 0x1_0000_00A0,
            keys: vec!["k".repeat(5000), "small".into()],
            tags: vec!["t".repeat(2000)],
            patterns: vec!["p:*".into()],
            ..Batch::default()
        };
        let parts = records(&batch, 1024).unwrap();
        let records: Vec<serde_json::Value> = parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        let all = |field: &str| -> Vec<String> {
            records
                .iter()
                .flat_map(|r| r[field].as_array().unwrap().clone())
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("keys"), ["small"]);
        assert!(all("tags").is_empty());
        assert_eq!(all("patterns"), ["p:*", "*"]);
        assert!(parts.iter().all(|p| p.len() <= 1024));
    }

    #[test]
    fn transaction_ids_that_alone_overflow_are_left_out() {
        let batch = Batch {
            xids: (0..500).collect(),
            keys: vec!["k".into()],
            ..Batch::default()
        };
        let parts = records(&batch, 1024).unwrap();
        let record: serde_json::Value = serde_json::from_slice(&parts[0]).unwrap();
        assert_eq!(record["keys"][0], "k");
        assert_eq!(record["xids"], serde_json::json!([]));
    }

    #[test]
    fn batch_is_split() {
        let batch = Batch {
            keys: (0..200).map(|i| format!("key:{i:04}")).collect(),
            ..Batch::default()
        };
        let parts = records(&batch, 1024).unwrap();
        assert!(parts.len() >= 2);
        assert!(parts.iter().all(|p| p.len() <= 1024));
    }
}
