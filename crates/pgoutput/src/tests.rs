//! Decoder tests.
//!
//! Wire bytes for the known-good cases are written field by field with
//! [`Wire`], following the Postgres documentation, and not with the crate's
//! own encoder: the encoder round-trip (property tests at the end) only shows
//! that encoder and decoder agree with each other.

use bytes::Bytes;
use proptest::prelude::*;

use crate::encode::{encode, EncodeError};
use crate::*;

/// Builds a message field by field, as the documentation lists them.
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    fn tag(t: u8) -> Self {
        Wire(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(s);
        self.0.push(0);
        self
    }
    fn raw(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(s);
        self
    }
    fn text(self, s: &[u8]) -> Self {
        let len = i32::try_from(s.len()).expect("test value fits");
        self.u8(b't').i32(len).raw(s)
    }
    fn binary(self, s: &[u8]) -> Self {
        let len = i32::try_from(s.len()).expect("test value fits");
        self.u8(b'b').i32(len).raw(s)
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn decoded(wire: Wire) -> Message {
    let bytes = wire.bytes();
    match decode(&bytes) {
        Ok(message) => message,
        Err(e) => panic!("valid message refused: {e}"),
    }
}

fn err(wire: Wire) -> DecodeError {
    match decode(&wire.bytes()) {
        Ok(message) => panic!("invalid message accepted: {message:?}"),
        Err(e) => e,
    }
}

fn values(tuple: &Tuple) -> Vec<Value<'_>> {
    tuple.iter().collect()
}

/// The tuple of the sample row: id, name, a NULL, unchanged TOAST, binary.
fn sample_tuple(w: Wire) -> Wire {
    w.i16(5)
        .text(b"42")
        .text(b"widget")
        .u8(b'n')
        .u8(b'u')
        .binary(&[0, 0, 0, 7])
}

fn sample_values() -> Vec<Value<'static>> {
    vec![
        Value::Text(b"42"),
        Value::Text(b"widget"),
        Value::Null,
        Value::UnchangedToast,
        Value::Binary(&[0, 0, 0, 7]),
    ]
}

/// A valid message of every kind and shape, written by hand.
fn samples() -> Vec<(&'static str, Wire)> {
    vec![
        (
            "begin",
            Wire::tag(b'B')
                .u64(0x16_B374_D848)
                .i64(817_000_000_123_456)
                .u32(1234),
        ),
        (
            "commit",
            Wire::tag(b'C')
                .u8(0)
                .u64(0x16_B374_D848)
                .u64(0x16_B374_D878)
                .i64(817_000_000_123_456),
        ),
        ("origin", Wire::tag(b'O').u64(7).cstr(b"pg_16385")),
        (
            "relation",
            Wire::tag(b'R')
                .u32(16_385)
                .cstr(b"public")
                .cstr(b"products")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .cstr(b"id")
                .u32(20)
                .i32(-1)
                .u8(0)
                .cstr(b"name")
                .u32(1043)
                .i32(68),
        ),
        (
            "type",
            Wire::tag(b'Y').u32(16_400).cstr(b"public").cstr(b"mood"),
        ),
        ("insert", sample_tuple(Wire::tag(b'I').u32(16_385).u8(b'N'))),
        ("update", sample_tuple(Wire::tag(b'U').u32(16_385).u8(b'N'))),
        (
            "update_key",
            sample_tuple(
                Wire::tag(b'U')
                    .u32(16_385)
                    .u8(b'K')
                    .i16(2)
                    .text(b"41")
                    .u8(b'n')
                    .u8(b'N'),
            ),
        ),
        (
            "update_full",
            sample_tuple(sample_tuple(Wire::tag(b'U').u32(16_385).u8(b'O')).u8(b'N')),
        ),
        (
            "delete_key",
            Wire::tag(b'D').u32(16_385).u8(b'K').i16(1).text(b"42"),
        ),
        (
            "delete_full",
            sample_tuple(Wire::tag(b'D').u32(16_385).u8(b'O')),
        ),
        (
            "truncate",
            Wire::tag(b'T').i32(2).u8(3).u32(16_385).u32(16_390),
        ),
        (
            "message",
            Wire::tag(b'M')
                .u8(1)
                .u64(99)
                .cstr(b"walbust")
                .i32(5)
                .raw(b"hello"),
        ),
    ]
}

// ---- each message kind ------------------------------------------------------

#[test]
fn begin() {
    let Message::Begin(m) = decoded(samples().remove(0).1) else {
        panic!("not a Begin")
    };
    assert_eq!(
        m,
        Begin {
            final_lsn: 0x16_B374_D848,
            commit_time: 817_000_000_123_456,
            xid: 1234
        }
    );
}

#[test]
fn commit() {
    let Message::Commit(m) = decoded(samples().remove(1).1) else {
        panic!("not a Commit")
    };
    assert_eq!(
        m,
        Commit {
            flags: 0,
            commit_lsn: 0x16_B374_D848,
            end_lsn: 0x16_B374_D878,
            commit_time: 817_000_000_123_456
        }
    );
}

#[test]
fn origin() {
    let Message::Origin(m) = decoded(Wire::tag(b'O').u64(7).cstr(b"pg_16385")) else {
        panic!("not an Origin")
    };
    assert_eq!(m.commit_lsn, 7);
    assert_eq!(&m.name[..], b"pg_16385");
}

#[test]
fn relation() {
    let Message::Relation(m) = decoded(samples().remove(3).1) else {
        panic!("not a Relation")
    };
    assert_eq!(m.id, 16_385);
    assert_eq!(m.namespace, "public");
    assert_eq!(m.name, "products");
    assert_eq!(m.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        m.columns,
        vec![
            Column {
                flags: 1,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1
            },
            Column {
                flags: 0,
                name: "name".into(),
                type_oid: 1043,
                type_modifier: 68
            },
        ]
    );
    assert!(m.columns[0].is_key());
    assert!(!m.columns[1].is_key());
}

#[test]
fn relation_replica_identities_and_empty_namespace() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let wire = Wire::tag(b'R').u32(1).cstr(b"").cstr(b"t").u8(byte).i16(0);
        let Message::Relation(m) = decoded(wire) else {
            panic!("not a Relation")
        };
        assert_eq!(m.replica_identity, identity);
        assert_eq!(identity.as_byte(), byte);
        assert_eq!(m.namespace, "");
        assert!(m.columns.is_empty());
    }
}

#[test]
fn type_message() {
    let Message::Type(m) = decoded(samples().remove(4).1) else {
        panic!("not a Type")
    };
    assert_eq!(
        m,
        TypeMsg {
            id: 16_400,
            namespace: "public".into(),
            name: "mood".into()
        }
    );
}

#[test]
fn insert() {
    let Message::Insert(m) = decoded(samples().remove(5).1) else {
        panic!("not an Insert")
    };
    assert_eq!(m.relation_id, 16_385);
    assert_eq!(values(&m.new), sample_values());
    assert_eq!(m.new.len(), 5);
    assert!(!m.new.is_empty());
}

#[test]
fn update_without_old() {
    let Message::Update(m) = decoded(samples().remove(6).1) else {
        panic!("not an Update")
    };
    assert_eq!(m.relation_id, 16_385);
    assert_eq!(m.old, None);
    assert_eq!(values(&m.new), sample_values());
}

#[test]
fn update_with_key() {
    let Message::Update(m) = decoded(samples().remove(7).1) else {
        panic!("not an Update")
    };
    let Some(OldTuple::Key(key)) = &m.old else {
        panic!("no key tuple: {:?}", m.old)
    };
    assert_eq!(values(key), vec![Value::Text(b"41"), Value::Null]);
    assert!(!m.old.as_ref().is_some_and(OldTuple::is_full));
    assert_eq!(values(&m.new), sample_values());
}

#[test]
fn update_with_full_old_row() {
    let Message::Update(m) = decoded(samples().remove(8).1) else {
        panic!("not an Update")
    };
    let old = m.old.as_ref().expect("old row");
    assert!(old.is_full());
    assert_eq!(values(old.tuple()), sample_values());
    assert_eq!(values(&m.new), sample_values());
}

#[test]
fn delete_key_and_full() {
    let Message::Delete(m) = decoded(samples().remove(9).1) else {
        panic!("not a Delete")
    };
    assert_eq!(m.relation_id, 16_385);
    assert!(matches!(m.old, OldTuple::Key(_)));
    assert_eq!(values(m.old.tuple()), vec![Value::Text(b"42")]);

    let Message::Delete(m) = decoded(samples().remove(10).1) else {
        panic!("not a Delete")
    };
    assert!(m.old.is_full());
    assert_eq!(values(m.old.tuple()), sample_values());
}

#[test]
fn truncate() {
    let Message::Truncate(m) = decoded(samples().remove(11).1) else {
        panic!("not a Truncate")
    };
    assert_eq!(m.relation_ids, vec![16_385, 16_390]);
    assert!(m.cascade());
    assert!(m.restart_identity());
    for (options, cascade, restart) in [(0, false, false), (1, true, false), (2, false, true)] {
        let Message::Truncate(m) = decoded(Wire::tag(b'T').i32(1).u8(options).u32(5)) else {
            panic!("not a Truncate")
        };
        assert_eq!((m.cascade(), m.restart_identity()), (cascade, restart));
    }
    let Message::Truncate(m) = decoded(Wire::tag(b'T').i32(0).u8(0)) else {
        panic!("not a Truncate")
    };
    assert!(m.relation_ids.is_empty());
}

#[test]
fn logical_message() {
    let Message::Message(m) = decoded(samples().remove(12).1) else {
        panic!("not a Message")
    };
    assert!(m.transactional);
    assert_eq!(m.lsn, 99);
    assert_eq!(&m.prefix[..], b"walbust");
    assert_eq!(&m.content[..], b"hello");

    let Message::Message(m) = decoded(Wire::tag(b'M').u8(0).u64(1).cstr(b"").i32(0)) else {
        panic!("not a Message")
    };
    assert!(!m.transactional);
    assert!(m.prefix.is_empty() && m.content.is_empty());
}

#[test]
fn message_names() {
    let names: Vec<_> = samples()
        .into_iter()
        .map(|(_, w)| decoded(w).name())
        .collect();
    assert_eq!(
        names,
        [
            "Begin", "Commit", "Origin", "Relation", "Type", "Insert", "Update", "Update",
            "Update", "Delete", "Delete", "Truncate", "Message"
        ]
    );
}

// ---- tuples -----------------------------------------------------------------

#[test]
fn tuple_get_and_iter_agree() {
    let Message::Insert(m) = decoded(samples().remove(5).1) else {
        panic!("not an Insert")
    };
    let by_index: Vec<_> = (0..m.new.len())
        .map(|i| m.new.get(i).expect("column"))
        .collect();
    assert_eq!(by_index, values(&m.new));
    assert_eq!(m.new.get(5), None);
    assert_eq!(m.new.get(usize::MAX), None);
    assert_eq!(m.new.iter().len(), 5);
    assert_eq!(m.new.get(1).and_then(|v| v.as_text()), Some(&b"widget"[..]));
    assert_eq!(m.new.get(4).and_then(|v| v.as_text()), None);
    assert_eq!(
        m.new.get(4).and_then(|v| v.as_bytes()),
        Some(&[0, 0, 0, 7][..])
    );
    assert!(m.new.get(2).is_some_and(|v| v.is_null()));
    assert!(m.new.get(3).is_some_and(|v| v.is_unchanged_toast()));
}

#[test]
fn tuple_shares_the_message_buffer() {
    let bytes = samples().remove(5).1.bytes();
    let Ok(Message::Insert(m)) = decode(&bytes) else {
        panic!("not an Insert")
    };
    let Some(Value::Text(name)) = m.new.get(1) else {
        panic!("column 1 is not text")
    };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&name.as_ptr()), "value was copied");
}

#[test]
fn empty_tuple() {
    let Message::Insert(m) = decoded(Wire::tag(b'I').u32(1).u8(b'N').i16(0)) else {
        panic!("not an Insert")
    };
    assert!(m.new.is_empty());
    assert_eq!(m.new.len(), 0);
    assert_eq!(m.new.get(0), None);
    assert_eq!(m.new.iter().next(), None);
}

#[test]
fn tuples_at_and_beyond_the_inline_width() {
    for width in [
        INLINE_COLUMNS - 1,
        INLINE_COLUMNS,
        INLINE_COLUMNS + 1,
        300,
        1000,
    ] {
        let texts: Vec<String> = (0..width).map(|i| i.to_string()).collect();
        let count = i16::try_from(width).expect("width fits");
        let mut wire = Wire::tag(b'I').u32(1).u8(b'N').i16(count);
        for (i, text) in texts.iter().enumerate() {
            wire = if i % 4 == 3 {
                wire.u8(b'n')
            } else {
                wire.text(text.as_bytes())
            };
        }
        let Message::Insert(m) = decoded(wire) else {
            panic!("not an Insert")
        };
        assert_eq!(m.new.len(), width);
        for (i, text) in texts.iter().enumerate() {
            let expected = if i % 4 == 3 {
                Value::Null
            } else {
                Value::Text(text.as_bytes())
            };
            assert_eq!(m.new.get(i), Some(expected), "width {width}, column {i}");
        }
        assert_eq!(m.new.get(width), None);
        assert_eq!(m.new.iter().count(), width);
    }
}

#[test]
fn tuple_equality_follows_bytes() {
    let a = Tuple::from_values(sample_values()).expect("encodes");
    let b = Tuple::from_values(sample_values()).expect("encodes");
    let c = Tuple::from_values([Value::Text(b"42")]).expect("encodes");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(values(&a), sample_values());
}

#[test]
fn debug_output_holds_no_row_values() {
    let secret = b"alice@example.com";
    let insert = decoded(
        Wire::tag(b'I')
            .u32(1)
            .u8(b'N')
            .i16(2)
            .text(secret)
            .binary(secret),
    );
    let message = decoded(
        Wire::tag(b'M')
            .u8(1)
            .u64(1)
            .cstr(b"app")
            .i32(17)
            .raw(secret),
    );
    for shown in [
        format!("{insert:?}"),
        format!("{message:?}"),
        format!("{insert:#?}"),
    ] {
        assert!(
            !shown.contains("alice"),
            "row value in Debug output: {shown}"
        );
        assert!(
            shown.contains("17"),
            "length missing from Debug output: {shown}"
        );
    }
}

// ---- errors -----------------------------------------------------------------

#[test]
fn empty_buffer() {
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
}

#[test]
fn unknown_tags() {
    for tag in [0u8, b'x', b'Z', b'N', 0xff] {
        assert_eq!(err(Wire::tag(tag).u64(0)), DecodeError::UnknownTag(tag));
    }
}

#[test]
fn later_protocol_messages_are_refused_by_name() {
    let cases = [
        (b'S', "Stream Start"),
        (b'E', "Stream Stop"),
        (b'c', "Stream Commit"),
        (b'A', "Stream Abort"),
        (b'b', "Begin Prepare"),
        (b'P', "Prepare"),
        (b'K', "Commit Prepared"),
        (b'r', "Rollback Prepared"),
        (b'p', "Stream Prepare"),
    ];
    for (tag, name) in cases {
        // A plausible body: these must never be read as anything else.
        let e = err(Wire::tag(tag).u32(1234).u8(1).u64(5).u64(6).i64(7));
        assert_eq!(e, DecodeError::UnsupportedProtocolMessage { tag, name });
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(e.message_name(), Some(name));
    }
}

#[test]
fn protocol_2_row_message_with_xid_is_not_silently_accepted() {
    // An Insert as protocol 2 writes it inside a stream (xid before the
    // relation id). Read as protocol 1, the first four bytes are the relation
    // id and the next byte must be 'N', which the xid's bytes are not here.
    let e = err(Wire::tag(b'I').u32(1234).u32(16_385).u8(b'N').i16(0));
    assert!(
        matches!(
            e,
            DecodeError::InvalidTupleMarker {
                found: 0,
                offset: 5,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    for (name, wire) in samples() {
        let full = wire.bytes();
        for len in 0..full.len() {
            let cut = full.slice(..len);
            assert!(decode(&cut).is_err(), "{name} cut to {len} bytes decoded");
        }
    }
}

#[test]
fn truncated_error_names_message_field_and_offset() {
    let e = err(Wire::tag(b'B').u64(1).i64(2).u8(0).u8(0));
    assert_eq!(
        e,
        DecodeError::Truncated {
            message: "Begin",
            field: "xid",
            offset: 17,
            needed: 4,
            available: 2
        }
    );
    assert_eq!(
        e.to_string(),
        "Begin message truncated in xid at byte 17: 4 bytes needed, 2 left"
    );
}

#[test]
fn trailing_bytes() {
    for (name, wire) in samples() {
        let e = err(wire.raw(&[0]));
        assert!(
            matches!(e, DecodeError::TrailingBytes { count: 1, .. }),
            "{name}: {e:?}"
        );
    }
}

#[test]
fn invalid_value_kind() {
    let e = err(Wire::tag(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(b'x'));
    assert_eq!(
        e,
        DecodeError::InvalidValueKind {
            message: "Insert",
            field: "new tuple",
            column: 1,
            kind: b'x',
            offset: 9
        }
    );
}

#[test]
fn invalid_tuple_markers() {
    let e = err(Wire::tag(b'I').u32(1).u8(b'K').i16(0));
    assert!(
        matches!(e, DecodeError::InvalidTupleMarker { found: b'K', .. }),
        "{e:?}"
    );
    let e = err(Wire::tag(b'U').u32(1).u8(b'X').i16(0));
    assert!(
        matches!(e, DecodeError::InvalidTupleMarker { found: b'X', .. }),
        "{e:?}"
    );
    // Old tuple, then something other than 'N'.
    let e = err(Wire::tag(b'U').u32(1).u8(b'K').i16(0).u8(b'K').i16(0));
    assert!(
        matches!(
            e,
            DecodeError::InvalidTupleMarker {
                found: b'K',
                offset: 8,
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(Wire::tag(b'D').u32(1).u8(b'N').i16(0));
    assert!(
        matches!(e, DecodeError::InvalidTupleMarker { found: b'N', .. }),
        "{e:?}"
    );
}

#[test]
fn invalid_replica_identity() {
    let e = err(Wire::tag(b'R').u32(1).cstr(b"s").cstr(b"t").u8(b'x').i16(0));
    assert_eq!(
        e,
        DecodeError::InvalidReplicaIdentity {
            message: "Relation",
            value: b'x',
            offset: 9
        }
    );
}

#[test]
fn invalid_utf8_names() {
    let e = err(Wire::tag(b'R')
        .u32(1)
        .cstr(b"s")
        .cstr(b"\xff")
        .u8(b'd')
        .i16(0));
    assert!(
        matches!(
            e,
            DecodeError::InvalidUtf8 {
                message: "Relation",
                field: "relation name",
                offset: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "Utf8Error not chained"
    );
    let e = err(Wire::tag(b'Y').u32(1).cstr(b"\xc3").cstr(b"t"));
    assert!(
        matches!(
            e,
            DecodeError::InvalidUtf8 {
                field: "namespace",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn unterminated_strings() {
    let e = err(Wire::tag(b'O').u64(1).raw(b"no-nul"));
    assert_eq!(
        e,
        DecodeError::UnterminatedString {
            message: "Origin",
            field: "origin name",
            offset: 9
        }
    );
}

#[test]
fn invalid_message_flags() {
    let e = err(Wire::tag(b'M').u8(2).u64(1).cstr(b"").i32(0));
    assert!(
        matches!(
            e,
            DecodeError::InvalidFlags {
                value: 2,
                offset: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn lengths_out_of_range() {
    // Negative value length.
    let e = err(Wire::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1));
    assert!(
        matches!(e, DecodeError::LengthOutOfRange { value: -1, .. }),
        "{e:?}"
    );
    // Value length beyond the message.
    let e = err(Wire::tag(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(i32::MAX)
        .raw(b"ab"));
    assert!(
        matches!(
            e,
            DecodeError::LengthOutOfRange {
                value: 2_147_483_647,
                available: 2,
                ..
            }
        ),
        "{e:?}"
    );
    // Content length beyond the message.
    let e = err(Wire::tag(b'M').u8(0).u64(1).cstr(b"").i32(10).raw(b"abc"));
    assert!(
        matches!(
            e,
            DecodeError::LengthOutOfRange {
                field: "content",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // Each count would ask for a large allocation if trusted.
    let e = err(Wire::tag(b'T').i32(i32::MAX).u8(0).u32(1));
    assert!(
        matches!(
            e,
            DecodeError::LengthOutOfRange {
                field: "relation count",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(Wire::tag(b'T').i32(-5).u8(0));
    assert!(
        matches!(e, DecodeError::LengthOutOfRange { value: -5, .. }),
        "{e:?}"
    );
    let e = err(Wire::tag(b'I').u32(1).u8(b'N').raw(&[0xff, 0xff]).u8(b'n'));
    assert!(
        matches!(
            e,
            DecodeError::LengthOutOfRange {
                value: 65_535,
                field: "new tuple",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(Wire::tag(b'R')
        .u32(1)
        .cstr(b"")
        .cstr(b"t")
        .u8(b'd')
        .raw(&[0xff, 0xff]));
    assert!(
        matches!(
            e,
            DecodeError::LengthOutOfRange {
                field: "column count",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn counts_are_unsigned_16_bit() {
    // Postgres writes column counts with pq_sendint16 from an unsigned
    // count; 0x8000 columns must not be read as negative.
    let mut wire = Wire::tag(b'I').u32(1).u8(b'N').raw(&[0x80, 0x00]);
    for _ in 0..0x8000 {
        wire = wire.u8(b'n');
    }
    let Message::Insert(m) = decoded(wire) else {
        panic!("not an Insert")
    };
    assert_eq!(m.new.len(), 0x8000);
    assert_eq!(m.new.get(0x7fff), Some(Value::Null));
}

#[test]
fn error_messages_name_message_field_and_offset() {
    let e = err(Wire::tag(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(b'x'));
    assert_eq!(
        e.to_string(),
        "Insert message: column 1 of new tuple at byte 9 has invalid kind 0x78"
    );
    assert_eq!(e.message_name(), Some("Insert"));
}

// ---- encoder ----------------------------------------------------------------

#[test]
fn encoder_writes_the_hand_written_bytes() {
    for (name, wire) in samples() {
        let bytes = wire.bytes();
        let message = decode(&bytes).expect("sample decodes");
        assert_eq!(encode(&message).expect("encodes"), bytes, "{name}");
    }
}

#[test]
fn encoder_refuses_what_the_wire_cannot_carry() {
    let relation = Message::Relation(Relation {
        id: 1,
        namespace: "a\0b".into(),
        name: "t".into(),
        replica_identity: ReplicaIdentity::Full,
        columns: vec![],
    });
    assert_eq!(
        encode(&relation),
        Err(EncodeError::NulInString { field: "namespace" })
    );
    let wide = Tuple::from_values(std::iter::repeat_n(Value::Null, 70_000));
    assert_eq!(wide, Err(EncodeError::TooManyColumns { count: 70_000 }));
}

// ---- properties -------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn c_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8.., 0..12).prop_map(Bytes::from)
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

#[derive(Debug, Clone)]
enum OwnedValue {
    Null,
    UnchangedToast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

fn tuple() -> impl Strategy<Value = Tuple> {
    let value = prop_oneof![
        Just(OwnedValue::Null),
        Just(OwnedValue::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(OwnedValue::Text),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(OwnedValue::Binary),
    ];
    // Up to twice the inline width, so both offset layouts are covered.
    proptest::collection::vec(value, 0..2 * INLINE_COLUMNS).prop_map(|values| {
        Tuple::from_values(values.iter().map(|v| match v {
            OwnedValue::Null => Value::Null,
            OwnedValue::UnchangedToast => Value::UnchangedToast,
            OwnedValue::Text(b) => Value::Text(b),
            OwnedValue::Binary(b) => Value::Binary(b),
        }))
        .expect("small tuples encode")
    })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let column = (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| Column {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    );
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (any::<u64>(), c_bytes())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            name(),
            name(),
            replica_identity(),
            proptest::collection::vec(column, 0..8)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| Message::Type(TypeMsg {
            id,
            namespace,
            name
        })),
        (any::<u32>(), tuple())
            .prop_map(|(relation_id, new)| Message::Insert(Insert { relation_id, new })),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(
            |(relation_id, old, new)| Message::Update(Update {
                relation_id,
                old,
                new
            })
        ),
        (any::<u32>(), old_tuple())
            .prop_map(|(relation_id, old)| Message::Delete(Delete { relation_id, old })),
        (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..10)).prop_map(
            |(options, relation_ids)| Message::Truncate(Truncate {
                options,
                relation_ids
            })
        ),
        (any::<bool>(), any::<u64>(), c_bytes(), any_bytes()).prop_map(
            |(transactional, lsn, prefix, content)| Message::Message(LogicalMessage {
                transactional,
                lsn,
                prefix,
                content
            })
        ),
    ]
}

proptest! {
    // A CI-sized budget; failures are saved under proptest-regressions/ and
    // replayed first on the next run. PROPTEST_CASES raises it locally.
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity(message in message()) {
        let bytes = encode(&message).expect("generated messages encode");
        prop_assert_eq!(decode(&bytes), Ok(message));
    }

    #[test]
    fn decode_then_encode_gives_the_input_back(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let bytes = Bytes::from(bytes);
        if let Ok(message) = decode(&bytes) {
            prop_assert_eq!(encode(&message).expect("decoded messages encode"), bytes);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        message in message(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&message).expect("generated messages encode").to_vec();
        for (at, byte) in edits {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        let whole = Bytes::from(bytes);
        for candidate in [whole.clone(), whole.slice(..cut.index(whole.len() + 1))] {
            if let Ok(decoded) = decode(&candidate) {
                prop_assert_eq!(encode(&decoded).expect("decoded messages encode"), candidate);
            }
        }
    }
}
