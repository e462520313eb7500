//! The protocol 1 messages and their decoders.
//!
//! One struct per message kind, one `decode_*` function per struct. Each
//! decoder starts after the tag byte and reads exactly the fields the Postgres
//! documentation ("Logical Replication Message Formats") lists for protocol
//! version 1: the `Xid` field that protocol 2 adds to row messages inside
//! streamed transactions is absent here, and reading it would shift every
//! later field.

use std::fmt;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::reader::Reader;
use crate::tag;
use crate::tuple::{self, Tuple};

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Start of a committed transaction.
    Begin(Begin),
    /// End of a transaction.
    Commit(Commit),
    /// Replication origin of the transaction's changes.
    Origin(Origin),
    /// Schema of a table; sent before the first change to it in a session
    /// and again after its schema changed.
    Relation(Relation),
    /// Name of a non-built-in data type used by a following Relation.
    Type(TypeMsg),
    /// A row was inserted.
    Insert(Insert),
    /// A row was updated.
    Update(Update),
    /// A row was deleted.
    Delete(Delete),
    /// Tables were truncated.
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

impl Message {
    /// The message's name in the Postgres documentation, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
        }
    }
}

/// Begin: the server sends a transaction only after it committed (protocol 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Begin {
    /// LSN of the commit record; the transaction's Commit repeats it.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// Commit: the end of the transaction opened by the last Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commit {
    /// Unused by Postgres so far (sent as 0); kept as sent.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// End LSN of the transaction: what walbust acknowledges once it is done.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time: i64,
}

/// Origin: the transaction was replayed from another node by a replication
/// origin (e.g. a subscription).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: u64,
    /// Origin name, as sent (no terminator).
    pub name: Bytes,
}

/// Replica identity of a table: which old values Update and Delete carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns, if the table has a primary key.
    Default,
    /// `n`: no old values at all.
    Nothing,
    /// `f`: every column of the old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The byte Postgres uses (`relreplident` in `pg_class`).
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// Parses a `relreplident` byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// As written in `ALTER TABLE ... REPLICA IDENTITY`.
    pub fn as_sql(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "DEFAULT",
            ReplicaIdentity::Nothing => "NOTHING",
            ReplicaIdentity::Full => "FULL",
            ReplicaIdentity::Index => "USING INDEX",
        }
    }
}

/// Relation: a table's schema as published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    /// Relation OID; row messages refer to it.
    pub id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old values Update and Delete carry.
    pub replica_identity: ReplicaIdentity,
    /// Published columns in tuple order (generated columns are not sent).
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// Bit 0 set: the column is part of the replica identity key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), e.g. the length of a `varchar(n)`; -1 for none.
    pub type_modifier: i32,
}

impl Column {
    /// Flag bit marking a column of the replica identity key.
    pub const FLAG_KEY: u8 = 1;

    /// True if the column is part of the replica identity key, i.e. Update
    /// and Delete send its old value in a key tuple.
    pub fn is_key(&self) -> bool {
        self.flags & Self::FLAG_KEY != 0
    }
}

/// Type: the name of a data type that a following Relation uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeMsg {
    /// Type OID.
    pub id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// Insert: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// OID of the table, as in its Relation message.
    pub relation_id: u32,
    /// The inserted row.
    pub new: Tuple,
}

/// Update: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// OID of the table, as in its Relation message.
    pub relation_id: u32,
    /// Old values: the key columns when the key changed (replica identity
    /// default or index), the whole row under replica identity full, and
    /// absent otherwise.
    pub old: Option<OldTuple>,
    /// The new row. Unchanged TOASTed columns come as
    /// [`Value::UnchangedToast`](crate::Value::UnchangedToast).
    pub new: Tuple,
}

/// Delete: a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// OID of the table, as in its Relation message.
    pub relation_id: u32,
    /// The removed row's key columns, or the whole row under replica identity full.
    pub old: OldTuple,
}

/// Old values of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns. Other columns are null in it.
    Key(Tuple),
    /// `O`: the whole old row (replica identity full).
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }

    /// True for a whole old row, false for key columns only.
    pub fn is_full(&self) -> bool {
        matches!(self, OldTuple::Full(_))
    }
}

/// Truncate: one `TRUNCATE` statement, possibly of several tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Truncate {
    /// Option bits: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// OIDs of the truncated tables.
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    /// Option bit of `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Option bit of `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// True for `TRUNCATE ... CASCADE`.
    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    /// True for `TRUNCATE ... RESTART IDENTITY`.
    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// A logical decoding message, written by `pg_logical_emit_message`.
///
/// `Debug` shows the content's length only: applications put their own data
/// there, which must stay out of logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LogicalMessage {
    /// Sent inside its transaction (true) or immediately (false).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: u64,
    /// Prefix chosen by the writer, as sent (no terminator).
    pub prefix: Bytes,
    /// Content.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Flag bit of a transactional message.
    pub const FLAG_TRANSACTIONAL: u8 = 1;
}

impl fmt::Debug for LogicalMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogicalMessage")
            .field("transactional", &self.transactional)
            .field("lsn", &self.lsn)
            .field("prefix", &self.prefix)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// Decodes one whole pgoutput message (protocol version 1).
///
/// `buf` must hold exactly one message, starting with its tag byte: leftover
/// bytes are an error. Tuples in the result share `buf`'s memory.
///
/// Never panics, whatever the input. Messages of later protocol versions
/// (streaming, two-phase commit) are refused with
/// [`DecodeError::UnsupportedProtocolMessage`].
pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
    let bytes: &[u8] = buf;
    let &tag = bytes.first().ok_or(DecodeError::Empty)?;
    // One match on the tag, most frequent kinds first; the name each arm
    // passes is the one errors report.
    Ok(match tag {
        tag::INSERT => Message::Insert(body(bytes, "Insert", |r| decode_insert(r, buf))?),
        tag::UPDATE => Message::Update(body(bytes, "Update", |r| decode_update(r, buf))?),
        tag::DELETE => Message::Delete(body(bytes, "Delete", |r| decode_delete(r, buf))?),
        tag::BEGIN => Message::Begin(body(bytes, "Begin", decode_begin)?),
        tag::COMMIT => Message::Commit(body(bytes, "Commit", decode_commit)?),
        tag::RELATION => Message::Relation(body(bytes, "Relation", decode_relation)?),
        tag::TYPE => Message::Type(body(bytes, "Type", decode_type)?),
        tag::TRUNCATE => Message::Truncate(body(bytes, "Truncate", decode_truncate)?),
        tag::ORIGIN => Message::Origin(body(bytes, "Origin", |r| decode_origin(r, buf))?),
        tag::MESSAGE => {
            Message::Message(body(bytes, "Message", |r| decode_logical_message(r, buf))?)
        }
        _ => {
            return Err(match tag::later_protocol_name(tag) {
                Some(name) => DecodeError::UnsupportedProtocolMessage { tag, name },
                None => DecodeError::UnknownTag(tag),
            })
        }
    })
}

/// Runs a message decoder over the bytes after the tag and insists that it
/// consumed all of them.
#[inline(always)]
fn body<T>(
    bytes: &[u8],
    name: &'static str,
    decoder: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut r = Reader::after_tag(bytes, name);
    let value = decoder(&mut r)?;
    r.finish()?;
    Ok(value)
}

fn decode_begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.u64("final LSN")?,
        commit_time: r.i64("commit timestamp")?,
        xid: r.u32("xid")?,
    })
}

fn decode_commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.u64("commit LSN")?,
        end_lsn: r.u64("end LSN")?,
        commit_time: r.i64("commit timestamp")?,
    })
}

fn decode_origin(r: &mut Reader<'_>, buf: &Bytes) -> Result<Origin, DecodeError> {
    let commit_lsn = r.u64("commit LSN")?;
    let name = buf.slice(r.cstr("origin name")?);
    Ok(Origin { commit_lsn, name })
}

fn decode_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let identity_offset = r.pos();
    let identity = r.u8("replica identity")?;
    let replica_identity =
        ReplicaIdentity::from_byte(identity).ok_or(DecodeError::InvalidReplicaIdentity {
            message: r.message(),
            value: identity,
            offset: identity_offset,
        })?;
    let count_offset = r.pos();
    let count = usize::from(r.u16("column count")?);
    // Flags, an empty name's terminator, type OID and modifier: a column
    // takes at least this much, which bounds the allocation below.
    const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;
    if count > r.remaining() / MIN_COLUMN_LEN {
        return Err(DecodeError::LengthOutOfRange {
            message: r.message(),
            field: "column count",
            offset: count_offset,
            value: i64::try_from(count).unwrap_or(i64::MAX),
            available: r.remaining(),
        });
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_type(r: &mut Reader<'_>) -> Result<TypeMsg, DecodeError> {
    Ok(TypeMsg {
        id: r.u32("type id")?,
        namespace: r.string("namespace")?,
        name: r.string("type name")?,
    })
}

/// Reads a tuple marker byte; `expected` describes the allowed ones for the
/// error.
#[inline(always)]
fn marker(
    r: &mut Reader<'_>,
    expected: &'static str,
    allowed: impl Fn(u8) -> bool,
) -> Result<u8, DecodeError> {
    let offset = r.pos();
    let found = r.u8(expected)?;
    if allowed(found) {
        Ok(found)
    } else {
        Err(DecodeError::InvalidTupleMarker {
            message: r.message(),
            expected,
            found,
            offset,
        })
    }
}

fn decode_insert(r: &mut Reader<'_>, buf: &Bytes) -> Result<Insert, DecodeError> {
    let relation_id = r.u32("relation id")?;
    marker(r, "'N'", |b| b == tag::NEW_TUPLE)?;
    let new = tuple::decode(r, buf, "new tuple")?;
    Ok(Insert { relation_id, new })
}

fn decode_update(r: &mut Reader<'_>, buf: &Bytes) -> Result<Update, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let first = marker(r, "'K', 'O' or 'N'", |b| {
        matches!(b, tag::KEY_TUPLE | tag::OLD_TUPLE | tag::NEW_TUPLE)
    })?;
    let old = match first {
        tag::KEY_TUPLE => Some(OldTuple::Key(tuple::decode(r, buf, "key tuple")?)),
        tag::OLD_TUPLE => Some(OldTuple::Full(tuple::decode(r, buf, "old tuple")?)),
        _ => None,
    };
    if old.is_some() {
        marker(r, "'N'", |b| b == tag::NEW_TUPLE)?;
    }
    let new = tuple::decode(r, buf, "new tuple")?;
    Ok(Update {
        relation_id,
        old,
        new,
    })
}

fn decode_delete(r: &mut Reader<'_>, buf: &Bytes) -> Result<Delete, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let old = match marker(r, "'K' or 'O'", |b| {
        matches!(b, tag::KEY_TUPLE | tag::OLD_TUPLE)
    })? {
        tag::KEY_TUPLE => OldTuple::Key(tuple::decode(r, buf, "key tuple")?),
        _ => OldTuple::Full(tuple::decode(r, buf, "old tuple")?),
    };
    Ok(Delete { relation_id, old })
}

fn decode_truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count_offset = r.pos();
    let count = r.i32("relation count")?;
    let options = r.u8("options")?;
    // Four bytes per OID: refuse counts the message cannot hold before
    // allocating for them.
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= r.remaining() / 4)
        .ok_or(DecodeError::LengthOutOfRange {
            message: r.message(),
            field: "relation count",
            offset: count_offset,
            value: i64::from(count),
            available: r.remaining(),
        })?;
    let mut relation_ids = Vec::with_capacity(count);
    for _ in 0..count {
        relation_ids.push(r.u32("relation id")?);
    }
    Ok(Truncate {
        options,
        relation_ids,
    })
}

fn decode_logical_message(r: &mut Reader<'_>, buf: &Bytes) -> Result<LogicalMessage, DecodeError> {
    let flags_offset = r.pos();
    let flags = r.u8("flags")?;
    if flags & !LogicalMessage::FLAG_TRANSACTIONAL != 0 {
        return Err(DecodeError::InvalidFlags {
            message: r.message(),
            field: "flags",
            value: flags,
            offset: flags_offset,
        });
    }
    let lsn = r.u64("LSN")?;
    let prefix = buf.slice(r.cstr("prefix")?);
    let content = buf.slice(r.length_prefixed("content")?);
    Ok(LogicalMessage {
        transactional: flags & LogicalMessage::FLAG_TRANSACTIONAL != 0,
        lsn,
        prefix,
        content,
    })
}
