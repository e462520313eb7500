//! Writes messages back to pgoutput wire bytes (feature `encode`).
//!
//! walbust never sends pgoutput; this exists so that tests, fuzzing seeds and
//! benchmarks in every crate can build messages without hand-written byte
//! strings. It is the exact inverse of [`decode`](crate::decode): for every
//! buffer that decodes, encoding the result gives the same bytes back, which
//! the fuzz target checks.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::message::{LogicalMessage, Message, OldTuple};
use crate::reader::Reader;
use crate::tag;
use crate::tuple::{self, Tuple, Value};

/// Why a message cannot be written in pgoutput form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A C string field holds a NUL byte, which would end it early.
    #[error("{field} contains a NUL byte")]
    NulInString {
        /// Field name.
        field: &'static str,
    },
    /// More columns than the Int16 count can say.
    #[error("{count} columns exceed the protocol's limit of 65535")]
    TooManyColumns {
        /// Columns given.
        count: usize,
    },
    /// More relations than the Int32 count can say.
    #[error("{count} truncated relations exceed the protocol's Int32 count")]
    TooManyRelations {
        /// Relations given.
        count: usize,
    },
    /// A value or message content longer than its Int32 length can say.
    #[error("{field} of {len} bytes exceeds the protocol's Int32 length")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Length given.
        len: usize,
    },
    /// The tuple written did not decode: a bug in this module.
    #[error("encoded tuple does not decode")]
    Invalid(#[source] DecodeError),
}

/// Encodes one message into a new buffer.
pub fn encode(message: &Message) -> Result<Bytes, EncodeError> {
    let mut out = Vec::new();
    encode_into(message, &mut out)?;
    Ok(Bytes::from(out))
}

/// Appends one encoded message to `out`. On error `out` may hold a partial
/// message.
pub fn encode_into(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match message {
        Message::Begin(m) => {
            out.push(tag::BEGIN);
            out.extend_from_slice(&m.final_lsn.to_be_bytes());
            out.extend_from_slice(&m.commit_time.to_be_bytes());
            out.extend_from_slice(&m.xid.to_be_bytes());
        }
        Message::Commit(m) => {
            out.push(tag::COMMIT);
            out.push(m.flags);
            out.extend_from_slice(&m.commit_lsn.to_be_bytes());
            out.extend_from_slice(&m.end_lsn.to_be_bytes());
            out.extend_from_slice(&m.commit_time.to_be_bytes());
        }
        Message::Origin(m) => {
            out.push(tag::ORIGIN);
            out.extend_from_slice(&m.commit_lsn.to_be_bytes());
            cstr(out, &m.name, "origin name")?;
        }
        Message::Relation(m) => {
            out.push(tag::RELATION);
            out.extend_from_slice(&m.id.to_be_bytes());
            cstr(out, m.namespace.as_bytes(), "namespace")?;
            cstr(out, m.name.as_bytes(), "relation name")?;
            out.push(m.replica_identity.as_byte());
            let count =
                u16::try_from(m.columns.len()).map_err(|_| EncodeError::TooManyColumns {
                    count: m.columns.len(),
                })?;
            out.extend_from_slice(&count.to_be_bytes());
            for column in &m.columns {
                out.push(column.flags);
                cstr(out, column.name.as_bytes(), "column name")?;
                out.extend_from_slice(&column.type_oid.to_be_bytes());
                out.extend_from_slice(&column.type_modifier.to_be_bytes());
            }
        }
        Message::Type(m) => {
            out.push(tag::TYPE);
            out.extend_from_slice(&m.id.to_be_bytes());
            cstr(out, m.namespace.as_bytes(), "namespace")?;
            cstr(out, m.name.as_bytes(), "type name")?;
        }
        Message::Insert(m) => {
            out.push(tag::INSERT);
            out.extend_from_slice(&m.relation_id.to_be_bytes());
            out.push(tag::NEW_TUPLE);
            out.extend_from_slice(m.new.wire_bytes());
        }
        Message::Update(m) => {
            out.push(tag::UPDATE);
            out.extend_from_slice(&m.relation_id.to_be_bytes());
            if let Some(old) = &m.old {
                old_tuple(out, old);
            }
            out.push(tag::NEW_TUPLE);
            out.extend_from_slice(m.new.wire_bytes());
        }
        Message::Delete(m) => {
            out.push(tag::DELETE);
            out.extend_from_slice(&m.relation_id.to_be_bytes());
            old_tuple(out, &m.old);
        }
        Message::Truncate(m) => {
            out.push(tag::TRUNCATE);
            let count =
                i32::try_from(m.relation_ids.len()).map_err(|_| EncodeError::TooManyRelations {
                    count: m.relation_ids.len(),
                })?;
            out.extend_from_slice(&count.to_be_bytes());
            out.push(m.options);
            for id in &m.relation_ids {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Message::Message(m) => {
            out.push(tag::MESSAGE);
            out.push(if m.transactional {
                LogicalMessage::FLAG_TRANSACTIONAL
            } else {
                0
            });
            out.extend_from_slice(&m.lsn.to_be_bytes());
            cstr(out, &m.prefix, "prefix")?;
            length_prefixed(out, &m.content, "content")?;
        }
    }
    Ok(())
}

impl Tuple {
    /// Builds a tuple from column values (feature `encode`).
    pub fn from_values<'a, I>(values: I) -> Result<Tuple, EncodeError>
    where
        I: IntoIterator<Item = Value<'a>>,
    {
        let mut out = vec![0, 0];
        let mut count = 0usize;
        for value in values {
            count += 1;
            match value {
                Value::Null => out.push(tag::VALUE_NULL),
                Value::UnchangedToast => out.push(tag::VALUE_UNCHANGED_TOAST),
                Value::Text(bytes) => {
                    out.push(tag::VALUE_TEXT);
                    length_prefixed(&mut out, bytes, "text value")?;
                }
                Value::Binary(bytes) => {
                    out.push(tag::VALUE_BINARY);
                    length_prefixed(&mut out, bytes, "binary value")?;
                }
            }
        }
        let count = u16::try_from(count).map_err(|_| EncodeError::TooManyColumns { count })?;
        out[..2].copy_from_slice(&count.to_be_bytes());
        let data = Bytes::from(out);
        let mut r = Reader::at(&data, 0, "TupleData");
        let tuple = tuple::decode(&mut r, &data, "tuple").map_err(EncodeError::Invalid)?;
        r.finish().map_err(EncodeError::Invalid)?;
        Ok(tuple)
    }
}

fn old_tuple(out: &mut Vec<u8>, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            out.push(tag::KEY_TUPLE);
            out.extend_from_slice(tuple.wire_bytes());
        }
        OldTuple::Full(tuple) => {
            out.push(tag::OLD_TUPLE);
            out.extend_from_slice(tuple.wire_bytes());
        }
    }
}

fn cstr(out: &mut Vec<u8>, bytes: &[u8], field: &'static str) -> Result<(), EncodeError> {
    if memchr::memchr(0, bytes).is_some() {
        return Err(EncodeError::NulInString { field });
    }
    out.extend_from_slice(bytes);
    out.push(0);
    Ok(())
}

fn length_prefixed(
    out: &mut Vec<u8>,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = i32::try_from(bytes.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: bytes.len(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}
