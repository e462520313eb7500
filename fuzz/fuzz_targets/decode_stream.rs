//! A sequence of pgoutput messages, each preceded by its length as a
//! big-endian u32, the way they arrive one after another in CopyData frames.
//!
//! Decodes them in order, keeping a relation cache as the replication reader
//! does, and reads the row values of every change through it. Stops at the
//! first framing or decode error, as the reader would. Checks that nothing
//! panics and that decoding one message does not depend on its neighbours.

#![no_main]

use std::collections::HashMap;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walbust_pgoutput::{decode, Message, Tuple};

fuzz_target!(|data: &[u8]| {
    let stream = Bytes::copy_from_slice(data);
    let mut relations: HashMap<u32, usize> = HashMap::new();
    let mut rest = stream.clone();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > rest.len() - 4 {
            break;
        }
        let frame = rest.slice(4..4 + len);
        rest = rest.slice(4 + len..);

        let Ok(message) = decode(&frame) else {
            break;
        };
        // The same bytes alone, copied out of the stream, decode the same.
        assert_eq!(decode(&Bytes::copy_from_slice(&frame)), Ok(message.clone()));
        match &message {
            Message::Relation(r) => {
                relations.insert(r.id, r.columns.len());
            }
            Message::Insert(m) => touch(&relations, m.relation_id, &m.new),
            Message::Update(m) => {
                if let Some(old) = &m.old {
                    touch(&relations, m.relation_id, old.tuple());
                }
                touch(&relations, m.relation_id, &m.new);
            }
            Message::Delete(m) => touch(&relations, m.relation_id, m.old.tuple()),
            _ => {}
        }
    }
});

/// Reads the columns the relation says the row has; a row may disagree with
/// its relation (the server's business), which must only yield `None`.
fn touch(relations: &HashMap<u32, usize>, relation_id: u32, tuple: &Tuple) {
    let Some(&columns) = relations.get(&relation_id) else {
        return;
    };
    for index in 0..columns {
        if let Some(value) = tuple.get(index) {
            std::hint::black_box(value.as_bytes());
        }
    }
}
