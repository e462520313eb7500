//! Decode errors.
//!
//! Every variant names the message (by its tag name, e.g. `"Update"`), the
//! field being read and the byte offset from the start of the message where
//! reading failed, so that a bad message from the server can be located in a
//! hex dump. Errors never carry row data: values can hold personal data and
//! errors end up in logs.

use std::str::Utf8Error;

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer holds no byte at all, not even a tag.
    #[error("empty pgoutput message")]
    Empty,

    /// The first byte is not a pgoutput message tag of any protocol version.
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownTag(u8),

    /// A valid tag of a later protocol version (streaming, two-phase commit).
    /// walbust speaks protocol 1, where the server never sends these.
    #[error(
        "{name} message (tag {:?}) belongs to a pgoutput protocol version after 1, which walbust does not speak",
        char::from(*tag)
    )]
    UnsupportedProtocolMessage {
        /// The tag byte.
        tag: u8,
        /// The message's name in the Postgres documentation.
        name: &'static str,
    },

    /// The message ends before the field does.
    #[error("{message} message truncated in {field} at byte {offset}: {needed} bytes needed, {available} left")]
    Truncated {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the field within the message.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        available: usize,
    },

    /// A C string runs to the end of the message without its NUL terminator.
    #[error("{message} message: {field} at byte {offset} has no NUL terminator")]
    UnterminatedString {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the string within the message.
        offset: usize,
    },

    /// A TupleData column kind other than `n`, `u`, `t` or `b`.
    #[error("{message} message: column {column} of {field} at byte {offset} has invalid kind {kind:#04x}")]
    InvalidValueKind {
        /// Message name.
        message: &'static str,
        /// Which tuple (new, key, old).
        field: &'static str,
        /// Column index within the tuple.
        column: usize,
        /// The byte found.
        kind: u8,
        /// Offset of the kind byte within the message.
        offset: usize,
    },

    /// A tuple marker (`N`, `K`, `O`) other than the ones allowed here.
    #[error("{message} message: expected {expected} at byte {offset}, found {found:#04x}")]
    InvalidTupleMarker {
        /// Message name.
        message: &'static str,
        /// What the position allows, e.g. `"'K', 'O' or 'N'"`.
        expected: &'static str,
        /// The byte found.
        found: u8,
        /// Offset of the marker within the message.
        offset: usize,
    },

    /// A replica identity byte other than `d`, `n`, `f`, `i`.
    #[error("{message} message: invalid replica identity {value:#04x} at byte {offset}")]
    InvalidReplicaIdentity {
        /// Message name.
        message: &'static str,
        /// The byte found.
        value: u8,
        /// Offset of the byte within the message.
        offset: usize,
    },

    /// A flags field with bits the protocol does not define.
    #[error("{message} message: {field} at byte {offset} has undefined bits set ({value:#04x})")]
    InvalidFlags {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// The byte found.
        value: u8,
        /// Offset of the byte within the message.
        offset: usize,
    },

    /// A length or count that is negative or larger than the bytes left.
    #[error("{message} message: {field} at byte {offset} is {value}, out of range ({available} bytes left)")]
    LengthOutOfRange {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the length within the message.
        offset: usize,
        /// The length or count as sent.
        value: i64,
        /// Bytes left in the message after the length field.
        available: usize,
    },

    /// A schema, table, column or type name that is not valid UTF-8.
    #[error("{message} message: {field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the string within the message.
        offset: usize,
        /// Where the string stops being UTF-8.
        #[source]
        source: Utf8Error,
    },

    /// Bytes left over after a complete message.
    #[error("{message} message: {count} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Message name.
        message: &'static str,
        /// Offset of the first leftover byte.
        offset: usize,
        /// Number of leftover bytes.
        count: usize,
    },
}

impl DecodeError {
    /// Name of the message that failed to decode, if the tag was known.
    pub fn message_name(&self) -> Option<&'static str> {
        match self {
            DecodeError::Empty | DecodeError::UnknownTag(_) => None,
            DecodeError::UnsupportedProtocolMessage { name, .. } => Some(name),
            DecodeError::Truncated { message, .. }
            | DecodeError::UnterminatedString { message, .. }
            | DecodeError::InvalidValueKind { message, .. }
            | DecodeError::InvalidTupleMarker { message, .. }
            | DecodeError::InvalidReplicaIdentity { message, .. }
            | DecodeError::InvalidFlags { message, .. }
            | DecodeError::LengthOutOfRange { message, .. }
            | DecodeError::InvalidUtf8 { message, .. }
            | DecodeError::TrailingBytes { message, .. } => Some(message),
        }
    }
}
