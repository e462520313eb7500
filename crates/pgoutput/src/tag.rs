//! Byte values that identify messages and message parts on the wire.
//!
//! Top-level message tags come first, then the markers used inside
//! Update/Delete/Insert (which tuple follows), then the per-column kinds of
//! TupleData. Some letters are reused across these groups (`'K'` is both
//! Commit Prepared and the key-tuple marker, `'O'` both Origin and the
//! old-tuple marker): which group applies depends only on the position in the
//! message, so each group has its own constants.

// Protocol 1 message tags.

/// Begin of a transaction.
pub const BEGIN: u8 = b'B';
/// Logical decoding message (`pg_logical_emit_message`).
pub const MESSAGE: u8 = b'M';
/// Commit of a transaction.
pub const COMMIT: u8 = b'C';
/// Replication origin of the current transaction.
pub const ORIGIN: u8 = b'O';
/// Relation (table schema) description.
pub const RELATION: u8 = b'R';
/// Data type description.
pub const TYPE: u8 = b'Y';
/// Row insert.
pub const INSERT: u8 = b'I';
/// Row update.
pub const UPDATE: u8 = b'U';
/// Row delete.
pub const DELETE: u8 = b'D';
/// Table truncate.
pub const TRUNCATE: u8 = b'T';

// Tags of later protocol versions (streaming: 2, two-phase commit: 3,
// streamed two-phase: 3). walbust speaks protocol 1; these are recognised only
// so that they are refused by name instead of being misread.

/// Stream Start (protocol 2).
pub const STREAM_START: u8 = b'S';
/// Stream Stop (protocol 2).
pub const STREAM_STOP: u8 = b'E';
/// Stream Commit (protocol 2).
pub const STREAM_COMMIT: u8 = b'c';
/// Stream Abort (protocol 2).
pub const STREAM_ABORT: u8 = b'A';
/// Begin Prepare (protocol 3).
pub const BEGIN_PREPARE: u8 = b'b';
/// Prepare (protocol 3).
pub const PREPARE: u8 = b'P';
/// Commit Prepared (protocol 3).
pub const COMMIT_PREPARED: u8 = b'K';
/// Rollback Prepared (protocol 3).
pub const ROLLBACK_PREPARED: u8 = b'r';
/// Stream Prepare (protocol 3).
pub const STREAM_PREPARE: u8 = b'p';

// Markers that say which tuple follows inside Insert, Update and Delete.

/// The new row follows.
pub const NEW_TUPLE: u8 = b'N';
/// The old row's replica identity key columns follow.
pub const KEY_TUPLE: u8 = b'K';
/// The whole old row follows (replica identity FULL).
pub const OLD_TUPLE: u8 = b'O';

// Column kinds inside TupleData.

/// SQL NULL.
pub const VALUE_NULL: u8 = b'n';
/// Unchanged TOASTed value; the server did not send it.
pub const VALUE_UNCHANGED_TOAST: u8 = b'u';
/// Value in text format: Int32 length, then the bytes.
pub const VALUE_TEXT: u8 = b't';
/// Value in binary format: Int32 length, then the bytes.
pub const VALUE_BINARY: u8 = b'b';

/// Name of a top-level message tag, for errors and logs.
///
/// Returns `None` for bytes that are no pgoutput message tag at all.
pub fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        BEGIN => "Begin",
        MESSAGE => "Message",
        COMMIT => "Commit",
        ORIGIN => "Origin",
        RELATION => "Relation",
        TYPE => "Type",
        INSERT => "Insert",
        UPDATE => "Update",
        DELETE => "Delete",
        TRUNCATE => "Truncate",
        _ => return later_protocol_name(tag),
    })
}

/// Name of a tag that exists only in protocol versions after 1, or `None`.
pub fn later_protocol_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        STREAM_START => "Stream Start",
        STREAM_STOP => "Stream Stop",
        STREAM_COMMIT => "Stream Commit",
        STREAM_ABORT => "Stream Abort",
        BEGIN_PREPARE => "Begin Prepare",
        PREPARE => "Prepare",
        COMMIT_PREPARED => "Commit Prepared",
        ROLLBACK_PREPARED => "Rollback Prepared",
        STREAM_PREPARE => "Stream Prepare",
        _ => return None,
    })
}
