//! The properties walbust's fuzz targets check, one function per target.
//!
//! Each function takes any bytes and panics when a property breaks. The
//! libFuzzer targets in `fuzz/` are one-line wrappers around them (cargo-fuzz
//! needs a nightly toolchain), and the test suite replays the committed
//! corpus through them and a few thousand seeded mutations of it on stable
//! Rust (`tests/smoke.rs`), so every run of the suite exercises them.
//!
//! - [`decode`]: one pgoutput message; `decode` never panics and is the exact
//!   inverse of `encode`.
//! - [`decode_stream`]: length-prefixed messages decoded in order with a
//!   relation cache; a message decodes the same alone as inside the stream.
//! - [`assemble`]: events fed to cdc's transaction assembler; its items
//!   always form `Begin, Changes*, Commit` and its acknowledgement position
//!   never goes backwards.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use walbust_cdc::assemble::{Assembler, EXPLICIT_PREFIX};
use walbust_cdc::window::{WindowGuard, DDL_PREFIX};
use walbust_flow::Item;
use walbust_pgoutput::{encode::encode, Message, OldTuple, Tuple};

/// A fuzz target's property: panics when it breaks.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/corpus/<name>` holds their seeds.
pub const TARGETS: [(&str, Check); 3] = [
    ("decode", decode),
    ("decode_stream", decode_stream),
    ("assemble", assemble),
];

/// One pgoutput message, any bytes.
///
/// Checks that `decode` never panics and that it is exact: whatever it
/// accepts, the encoder writes back byte for byte (no field skipped, no
/// leftover ignored, no value normalised). Reading every column also checks
/// that `Tuple::get` and `Tuple::iter` agree on what decode validated.
pub fn decode(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    let Ok(message) = walbust_pgoutput::decode(&input) else {
        return;
    };
    let again = encode(&message).expect("a decoded message encodes");
    assert_eq!(again, input, "decode is not the inverse of encode");
    match &message {
        Message::Insert(m) => read_all(&m.new),
        Message::Update(m) => {
            if let Some(old) = &m.old {
                read_all(old.tuple());
            }
            read_all(&m.new);
        }
        Message::Delete(m) => read_all(match &m.old {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }),
        _ => {}
    }
}

fn read_all(tuple: &Tuple) {
    let mut count = 0;
    for (index, value) in tuple.iter().enumerate() {
        assert_eq!(tuple.get(index), Some(value));
        count += 1;
    }
    assert_eq!(count, tuple.len());
    assert_eq!(tuple.get(tuple.len()), None);
}

/// A sequence of pgoutput messages, each preceded by its length as a
/// big-endian u32, the way they arrive one after another in CopyData frames.
///
/// Decodes them in order, keeping a relation cache as the replication reader
/// does, and reads the row values of every change through it. Stops at the
/// first framing or decode error, as the reader would. Checks that nothing
/// panics and that decoding one message does not depend on its neighbours.
pub fn decode_stream(data: &[u8]) {
    let stream = Bytes::copy_from_slice(data);
    let mut relations: HashMap<u32, usize> = HashMap::new();
    let mut rest = stream.clone();
    while let Some(len) = rest.get(..4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > rest.len() - 4 {
            break;
        }
        let frame = rest.slice(4..4 + len);
        rest = rest.slice(4 + len..);

        let Ok(message) = walbust_pgoutput::decode(&frame) else {
            break;
        };
        // The same bytes alone, copied out of the stream, decode the same.
        assert_eq!(
            walbust_pgoutput::decode(&Bytes::copy_from_slice(&frame)),
            Ok(message.clone())
        );
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
}

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

const RULES: &str = r#"
version: 1
rules:
  - table: public.products
    keys: ["product:{id}", "name:{name:hash}"]
    tags: ["category:{category_id}", "products"]
    patterns: ["list:{category_id}:*"]
    max_keys_per_tx: 50
  - table: public.orders
    when: { changed: [status] }
    keys: ["order:{id}", "user:{old.user_id}"]
"#;

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Some(head)
}

/// The transaction assembler over arbitrary event sequences.
///
/// Input: a list of events, each a tag byte then its fields:
/// `B` xid:u32 commit_lsn:u64 | `C` end_lsn:u64 | `D` len:u16 bytes (one
/// pgoutput message) | `M` transactional:u8 len:u16 bytes (explicit content;
/// the flag is kept in the format for the committed corpus, the assembler
/// treats both kinds alike).
///
/// It never panics; whatever it accepts comes out as well-formed item
/// sequences (Begin, Changes*, Commit) whose acknowledgement positions never
/// go backwards, and an error leaves no half-emitted output behind.
pub fn assemble(input: &[u8]) {
    let rules =
        Arc::new(walbust_rules::RuleSet::from_yaml(RULES, "rules.yaml").expect("rules load"));
    let mut asm =
        Assembler::new(rules, false).with_guard(WindowGuard::new("p".into(), "s".into(), true));
    let mut data = input;
    let mut open = false;
    let mut last_end = 0u64;
    while let Some(tag) = take(&mut data, 1) {
        match tag[0] {
            b'B' => {
                let Some(f) = take(&mut data, 12) else { break };
                let xid = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
                let mut lsn = [0u8; 8];
                lsn.copy_from_slice(&f[4..]);
                asm.begin(xid, u64::from_be_bytes(lsn), 0);
            }
            b'C' => {
                let Some(f) = take(&mut data, 8) else { break };
                let mut lsn = [0u8; 8];
                lsn.copy_from_slice(f);
                asm.commit(u64::from_be_bytes(lsn));
            }
            b'D' => {
                let Some(l) = take(&mut data, 2) else { break };
                let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
                let Some(msg) = take(&mut data, n) else { break };
                // A decoding or sequence error ends the session in walbust;
                // keep going here to exercise the state after it anyway.
                let _ = asm.data(0, &Bytes::copy_from_slice(msg));
            }
            b'M' => {
                let Some(f) = take(&mut data, 3) else { break };
                let n = usize::from(u16::from_be_bytes([f[1], f[2]]));
                let Some(content) = take(&mut data, n) else {
                    break;
                };
                // The low bit of the first byte picks the DDL guard's prefix;
                // with `on_gap: purge` neither may fail.
                let prefix = if f[0] & 1 == 1 {
                    DDL_PREFIX
                } else {
                    EXPLICIT_PREFIX
                };
                asm.message(1, prefix, content)
                    .expect("a message never fails with on_gap: purge");
            }
            _ => break,
        }
        // Items must form Begin, Changes*, Commit; a new Begin may cut off an
        // unfinished transaction (as after a reconnect).
        while let Some(item) = asm.next_item() {
            match item {
                Item::Begin { .. } => open = true,
                Item::Changes(_) => assert!(open, "changes outside a transaction"),
                Item::Commit { end_lsn } => {
                    assert!(open, "commit outside a transaction");
                    open = false;
                    last_end = last_end.max(end_lsn);
                }
            }
        }
        assert_eq!(asm.in_transaction(), open);
        assert!(asm.last_sent_end() >= last_end);
    }
}
