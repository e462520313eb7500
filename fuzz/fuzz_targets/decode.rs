//! One pgoutput message, any bytes.
//!
//! Checks that `decode` never panics and that it is exact: whatever it
//! accepts, the encoder writes back byte for byte (no field skipped, no
//! leftover ignored, no value normalised). Reading every column also checks
//! that `Tuple::get` and `Tuple::iter` agree on what decode validated.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walbust_pgoutput::{decode, encode::encode, Message, OldTuple, Tuple};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let Ok(message) = decode(&input) else {
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
});

fn read_all(tuple: &Tuple) {
    let mut count = 0;
    for (index, value) in tuple.iter().enumerate() {
        assert_eq!(tuple.get(index), Some(value));
        count += 1;
    }
    assert_eq!(count, tuple.len());
    assert_eq!(tuple.get(tuple.len()), None);
}
