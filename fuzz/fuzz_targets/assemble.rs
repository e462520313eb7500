//! The cdc transaction assembler over arbitrary event sequences: it never
//! panics, and whatever it accepts comes out as well-formed item sequences
//! (Begin, Changes*, Commit), with acknowledgement positions that never go
//! backwards.
//!
//! Input: a list of events, each a tag byte then its fields:
//! `B` xid:u32 commit_lsn:u64 | `C` end_lsn:u64 | `D` len:u16 bytes (one
//! pgoutput message) | `M` transactional:u8 len:u16 bytes (explicit content).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use walbust_cdc::assemble::{Assembler, EXPLICIT_PREFIX};
use libfuzzer_sys::fuzz_target;
use walbust_publish::Item;

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

fuzz_target!(|input: &[u8]| {
    let rules = Arc::new(walbust_rules::RuleSet::from_yaml(RULES, "rules.yaml").expect("rules load"));
    let mut asm = Assembler::new(rules, false);
    let mut data = input;
    let mut open = false;
    let mut last_end = 0u64;
    while let Some(tag) = take(&mut data, 1) {
        let ok = match tag[0] {
            b'B' => {
                let Some(f) = take(&mut data, 12) else { break };
                let xid = u32::from_be_bytes(f[..4].try_into().unwrap());
                let lsn = u64::from_be_bytes(f[4..].try_into().unwrap());
                asm.begin(xid, lsn, 0);
                true
            }
            b'C' => {
                let Some(f) = take(&mut data, 8) else { break };
                asm.commit(u64::from_be_bytes(f.try_into().unwrap()));
                true
            }
            b'D' => {
                let Some(l) = take(&mut data, 2) else { break };
                let n = usize::from(u16::from_be_bytes(l.try_into().unwrap()));
                let Some(msg) = take(&mut data, n) else { break };
                asm.data(0, &Bytes::copy_from_slice(msg)).is_ok()
            }
            b'M' => {
                let Some(f) = take(&mut data, 3) else { break };
                let n = usize::from(u16::from_be_bytes([f[1], f[2]]));
                let Some(content) = take(&mut data, n) else { break };
                asm.message(f[0] & 1 == 1, 1, EXPLICIT_PREFIX, content);
                true
            }
            _ => break,
        };
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
        if !ok {
            // A decoding error ends the session in walbust; keep going here
            // to exercise the state after it anyway.
            continue;
        }
    }
});
