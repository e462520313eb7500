//! The records of a batch, built without I/O.

use crate::batch::Batch;
use crate::record;
use crate::sink::{SinkError, SinkErrorKind};

/// The record values for `batch`, each at most `max_record_bytes` long (see [`crate::record`]).
/// An entry too large for any record is a non-retriable [`SinkErrorKind::TooLarge`] error: no
/// later attempt could send it, and dropping it would lose an invalidation.
pub fn records(batch: &Batch, max_record_bytes: usize) -> Result<Vec<Vec<u8>>, SinkError> {
    record::encode_split(batch, max_record_bytes).map_err(|err| {
        SinkError::with_source(
            SinkErrorKind::TooLarge,
            format!(
                "kafka: batch at LSN {} cannot be sent within max_record_bytes",
                walbust_pgoutput::format_lsn(batch.lsn)
            ),
            err,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_entry_is_a_non_retriable_error() {
        let batch = Batch {
            lsn: 0x1_0000_00A0,
            keys: vec!["k".repeat(5000)],
            ..Batch::default()
        };
        let err = records(&batch, 1024).unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::TooLarge);
        assert!(!err.retriable());
        assert_eq!(
            err.to_string(),
            "kafka: batch at LSN 1/A0 cannot be sent within max_record_bytes"
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("a keys entry of 5002 bytes"), "{cause}");
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
