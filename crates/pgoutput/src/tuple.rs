//! TupleData: the column values of one row.
//!
//! A [`Tuple`] keeps the row's wire bytes as a [`Bytes`] slice of the message
//! (no copy) plus the offset of every column, found once while the message is
//! validated. Rules look up a handful of columns per row, by index, so
//! [`Tuple::get`] is two array reads and a slice, with no re-parsing and no
//! walk over the preceding columns.
//!
//! The offsets live in an inline `u16` array for rows of up to
//! [`INLINE_COLUMNS`] columns in messages under 64 KiB, which covers ordinary
//! tables without a heap allocation per row; wider rows and larger messages
//! take one allocation for all their offsets (`u32`), never one per column.

use std::fmt;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::reader::Reader;
use crate::tag;

/// Rows with at most this many columns keep their offsets inline.
pub const INLINE_COLUMNS: usize = 32;
/// Kind byte plus Int32 length in front of a text or binary value.
const VALUE_HEADER: usize = 5;

/// One column value of a [`Tuple`], borrowed from the message bytes.
///
/// `Debug` shows the kind and the length only, never the bytes: row values
/// can hold personal data and must stay out of logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change; the server did not send it.
    UnchangedToast,
    /// The value as Postgres prints it (text output function, server encoding).
    Text(&'a [u8]),
    /// The value in the type's binary send format.
    Binary(&'a [u8]),
}

impl<'a> Value<'a> {
    /// True for SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True for an unchanged TOASTed value, whose content is not known.
    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, Value::UnchangedToast)
    }

    /// The bytes of a text or binary value.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Text(bytes) | Value::Binary(bytes) => Some(bytes),
            Value::Null | Value::UnchangedToast => None,
        }
    }

    /// The bytes of a text-format value.
    pub fn as_text(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Text(bytes) => Some(bytes),
            _ => None,
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::UnchangedToast => f.write_str("UnchangedToast"),
            Value::Text(bytes) => write!(f, "Text({} bytes)", bytes.len()),
            Value::Binary(bytes) => write!(f, "Binary({} bytes)", bytes.len()),
        }
    }
}

/// The column values of one row, in the column order of its Relation message.
///
/// Zero-copy: holds a [`Bytes`] slice of the decoded message, validated once
/// at decode time. Cloning is cheap (a reference count and the offsets).
/// Two tuples are equal when their wire bytes are equal.
#[derive(Clone)]
pub struct Tuple {
    /// The whole TupleData part, column count included.
    data: Bytes,
    starts: Starts,
}

/// Where each column starts, relative to the start of the TupleData; a
/// column ends where the next one starts, the last one at the end of the
/// data. Offsets are `u16` inline (the common case: a row of at most
/// [`INLINE_COLUMNS`] columns in a message under 64 KiB) to keep a `Tuple`,
/// which is moved several times on its way out of the decoder, small.
#[derive(Clone)]
enum Starts {
    Inline {
        columns: u8,
        offsets: [u16; INLINE_COLUMNS],
    },
    Heap(Box<[u32]>),
}

impl Tuple {
    /// Number of columns.
    pub fn len(&self) -> usize {
        match &self.starts {
            Starts::Inline { columns, .. } => usize::from(*columns),
            Starts::Heap(offsets) => offsets.len(),
        }
    }

    /// True for a tuple without columns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of column `index` (0-based, Relation column order), or
    /// `None` past the last column.
    #[inline]
    pub fn get(&self, index: usize) -> Option<Value<'_>> {
        let (start, end) = match &self.starts {
            Starts::Inline { columns, offsets } => {
                let offsets = offsets.get(..usize::from(*columns))?;
                let start = usize::from(*offsets.get(index)?);
                let end = offsets
                    .get(index + 1)
                    .map_or(self.data.len(), |&end| usize::from(end));
                (start, end)
            }
            Starts::Heap(offsets) => {
                let start = usize::try_from(*offsets.get(index)?).ok()?;
                let end = match offsets.get(index + 1) {
                    Some(&end) => usize::try_from(end).ok()?,
                    None => self.data.len(),
                };
                (start, end)
            }
        };
        value_at(&self.data, start, end)
    }

    /// The values of all columns, in order.
    pub fn iter(&self) -> Values<'_> {
        Values {
            tuple: self,
            next: 0,
            len: self.len(),
        }
    }

    /// The TupleData wire bytes, column count included.
    #[cfg(any(test, feature = "encode"))]
    pub(crate) fn wire_bytes(&self) -> &[u8] {
        &self.data
    }
}

#[inline]
fn value_at(data: &[u8], start: usize, end: usize) -> Option<Value<'_>> {
    match *data.get(start)? {
        tag::VALUE_NULL => Some(Value::Null),
        tag::VALUE_UNCHANGED_TOAST => Some(Value::UnchangedToast),
        tag::VALUE_TEXT => data.get(start + VALUE_HEADER..end).map(Value::Text),
        tag::VALUE_BINARY => data.get(start + VALUE_HEADER..end).map(Value::Binary),
        _ => None,
    }
}

impl PartialEq for Tuple {
    fn eq(&self, other: &Self) -> bool {
        // The offsets are a function of the bytes.
        self.data == other.data
    }
}

impl Eq for Tuple {}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Tuple {
    type Item = Value<'a>;
    type IntoIter = Values<'a>;

    fn into_iter(self) -> Values<'a> {
        self.iter()
    }
}

/// Iterator over the values of a [`Tuple`], from [`Tuple::iter`].
#[derive(Clone)]
pub struct Values<'a> {
    tuple: &'a Tuple,
    next: usize,
    len: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = Value<'a>;

    #[inline]
    fn next(&mut self) -> Option<Value<'a>> {
        if self.next >= self.len {
            return None;
        }
        let value = self.tuple.get(self.next);
        self.next += 1;
        value
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Values<'_> {}

impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values")
            .field("remaining", &self.len())
            .finish()
    }
}

/// Reads one TupleData part at the reader's position. `message` is the whole
/// message the reader walks, so that the tuple can share its bytes.
pub(crate) fn decode(
    r: &mut Reader<'_>,
    message: &Bytes,
    field: &'static str,
) -> Result<Tuple, DecodeError> {
    let start = r.pos();
    let columns = usize::from(r.u16(field)?);
    // Every column takes at least its kind byte: a count the message cannot
    // hold is refused before anything is sized by it.
    if columns > r.remaining() {
        return Err(DecodeError::LengthOutOfRange {
            message: r.message(),
            field,
            offset: start,
            value: i64::try_from(columns).unwrap_or(i64::MAX),
            available: r.remaining(),
        });
    }
    // Offsets stay below the rest of the message, so u16 holds them whenever
    // the message ends within 64 KiB of the tuple's start, u32 within 4 GiB.
    let span = r.pos() - start + r.remaining();
    let fits_u16 = span <= usize::from(u16::MAX);
    if u32::try_from(span).is_err() {
        return Err(DecodeError::LengthOutOfRange {
            message: r.message(),
            field,
            offset: start,
            value: i64::try_from(span).unwrap_or(i64::MAX),
            available: r.remaining(),
        });
    }
    let starts = match u8::try_from(columns) {
        Ok(small) if fits_u16 && columns <= INLINE_COLUMNS => {
            let mut offsets = [0u16; INLINE_COLUMNS];
            scan(
                r,
                start,
                field,
                offsets.get_mut(..columns).unwrap_or_default(),
            )?;
            Starts::Inline {
                columns: small,
                offsets,
            }
        }
        _ => {
            let mut offsets = vec![0u32; columns].into_boxed_slice();
            scan(r, start, field, &mut offsets)?;
            Starts::Heap(offsets)
        }
    };
    let data = message.slice(start..r.pos());
    Ok(Tuple { data, starts })
}

/// Validates `out.len()` columns and records where each starts, relative to
/// `start`.
///
/// Each column goes through [`fast_column`], which only says "valid, the
/// rest starts here" or "not sure". Anything it is not sure about is read
/// again by [`checked_column`] through the [`Reader`], which decides and
/// builds the precise error; the fast path never decides that a message is
/// invalid.
#[inline]
fn scan<T: Offset>(
    r: &mut Reader<'_>,
    start: usize,
    field: &'static str,
    out: &mut [T],
) -> Result<(), DecodeError> {
    let buf = r.buf();
    let mut rest = buf.get(r.pos()..).unwrap_or_default();
    for (column, offset) in out.iter_mut().enumerate() {
        let pos = buf.len() - rest.len();
        *offset = T::from_offset(pos - start);
        rest = match fast_column(rest) {
            Some(rest) => rest,
            None => {
                r.set_pos(pos);
                checked_column(r, field, column)?;
                buf.get(r.pos()..).unwrap_or_default()
            }
        };
    }
    r.set_pos(buf.len() - rest.len());
    Ok(())
}

/// Column offset storage: `u16` inline, `u32` on the heap.
trait Offset: Copy {
    /// Converts an offset that decode() has proven to fit.
    fn from_offset(offset: usize) -> Self;
}

impl Offset for u16 {
    #[inline(always)]
    fn from_offset(offset: usize) -> Self {
        // decode() chose u16 only when the whole rest of the message is
        // shorter than 64 KiB, so the cast cannot truncate; checking it per
        // column would cost a branch on the hottest path.
        debug_assert!(offset <= usize::from(u16::MAX));
        offset as u16
    }
}

impl Offset for u32 {
    #[inline(always)]
    fn from_offset(offset: usize) -> Self {
        // decode() chose u32 only for messages under 4 GiB (Postgres caps
        // them at 1 GiB).
        debug_assert!(u32::try_from(offset).is_ok());
        offset as u32
    }
}

/// What a kind byte is followed by: nothing ([`BARE`]), an Int32 length and
/// that many bytes ([`SIZED`]), or it is no kind at all ([`INVALID`]). A table
/// lookup instead of a `match` keeps the hot loop free of the indirect jump
/// a match compiles to, which mispredicts on mixed rows.
const KIND_CLASS: [u8; 256] = {
    let mut table = [INVALID; 256];
    table[tag::VALUE_NULL as usize] = BARE;
    table[tag::VALUE_UNCHANGED_TOAST as usize] = BARE;
    table[tag::VALUE_TEXT as usize] = SIZED;
    table[tag::VALUE_BINARY as usize] = SIZED;
    table
};
const INVALID: u8 = 0;
const BARE: u8 = 1;
const SIZED: u8 = 2;

/// The bytes after the column at the start of `rest`, if it is plainly valid.
#[inline(always)]
fn fast_column(rest: &[u8]) -> Option<&[u8]> {
    let (&kind, tail) = rest.split_first()?;
    match KIND_CLASS[usize::from(kind)] {
        SIZED => {
            let (header, tail) = tail.split_first_chunk::<4>()?;
            let len = usize::try_from(i32::from_be_bytes(*header)).ok()?;
            tail.get(len..)
        }
        BARE => Some(tail),
        _ => None,
    }
}

/// Reads one column through the reader, with full error reporting.
#[cold]
#[inline(never)]
fn checked_column(
    r: &mut Reader<'_>,
    field: &'static str,
    column: usize,
) -> Result<(), DecodeError> {
    let kind_offset = r.pos();
    match r.u8(field)? {
        tag::VALUE_NULL | tag::VALUE_UNCHANGED_TOAST => Ok(()),
        tag::VALUE_TEXT | tag::VALUE_BINARY => r.length_prefixed(field).map(drop),
        kind => Err(DecodeError::InvalidValueKind {
            message: r.message(),
            field,
            column,
            kind,
            offset: kind_offset,
        }),
    }
}
