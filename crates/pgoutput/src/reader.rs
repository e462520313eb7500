//! A bounds-checked cursor over one message.
//!
//! All reads go through [`Reader`], which never indexes past the buffer and
//! turns every short read into [`DecodeError::Truncated`] carrying the message
//! name, field and offset. Decoders above it therefore cannot panic on any
//! input as long as they only read through it.

use std::ops::Range;

use crate::error::DecodeError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader positioned after the tag byte (offset 1), so that offsets in
    /// errors count from the start of the whole message.
    pub(crate) fn after_tag(buf: &'a [u8], message: &'static str) -> Self {
        Reader {
            buf,
            pos: 1,
            message,
        }
    }

    /// A reader positioned at `pos` (used for a standalone TupleData).
    #[cfg(any(test, feature = "encode"))]
    pub(crate) fn at(buf: &'a [u8], pos: usize, message: &'static str) -> Self {
        Reader { buf, pos, message }
    }

    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// Moves the cursor to a position the caller has already validated
    /// (the fast path of `tuple::scan`).
    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.pos = pos;
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            field,
            offset: self.pos,
            needed,
            available: self.remaining(),
        }
    }

    /// The next `n` bytes, as a range into the message.
    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<Range<usize>, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.truncated(field, n))?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes: [u8; N] = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.truncated(field, N))?;
        self.pos += N;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.truncated(field, 1))?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// A signed 32-bit length followed by that many bytes. Negative lengths
    /// and lengths beyond the end of the message are errors.
    pub(crate) fn length_prefixed(
        &mut self,
        field: &'static str,
    ) -> Result<Range<usize>, DecodeError> {
        let offset = self.pos;
        let len = self.i32(field)?;
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or(DecodeError::LengthOutOfRange {
                message: self.message,
                field,
                offset,
                value: i64::from(len),
                available: self.remaining(),
            })?;
        self.take(n, field)
    }

    /// A NUL-terminated string; the range excludes the terminator.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<Range<usize>, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = memchr::memchr(0, rest).ok_or(DecodeError::UnterminatedString {
            message: self.message,
            field,
            offset: self.pos,
        })?;
        let range = self.pos..self.pos + len;
        self.pos = range.end + 1;
        Ok(range)
    }

    /// A NUL-terminated string that must be UTF-8 (schema, table, column and
    /// type names). Allocates: only Relation and Type messages use it.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let range = self.cstr(field)?;
        let offset = range.start;
        let bytes = self.buf.get(range).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|source| DecodeError::InvalidUtf8 {
                message: self.message,
                field,
                offset,
                source,
            })
    }

    /// Errors unless every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                count,
            }),
        }
    }
}
