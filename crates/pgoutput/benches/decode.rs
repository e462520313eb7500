//! Decoder throughput on a synthetic stream shaped like an OLTP workload: one
//! Relation, then Inserts and Updates of an 8-column `orders` row (integers,
//! numeric, timestamp, short and medium text, a nullable column), some
//! Updates carrying the old key. Reported as bytes of pgoutput per second.
//!
//! ```text
//! cargo bench -p walbust-pgoutput --features encode --bench decode
//! ```

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walbust_pgoutput::encode::encode_into;
use walbust_pgoutput::{
    decode, Column, Insert, Message, OldTuple, Relation, ReplicaIdentity, Tuple, Update, Value,
};

const ROWS: usize = 20_000;
const RELATION_ID: u32 = 16_385;

/// The stream as the transport hands it over: one `Bytes` per message, all
/// slices of one receive buffer.
fn stream() -> (Vec<Bytes>, u64) {
    let column = |name: &str, flags, type_oid| Column {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    let mut messages = vec![Message::Relation(Relation {
        id: RELATION_ID,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            column("id", 1, 20),
            column("user_id", 0, 20),
            column("status", 0, 25),
            column("total", 0, 1700),
            column("created_at", 0, 1184),
            column("email", 0, 25),
            column("note", 0, 25),
            column("paid", 0, 16),
        ],
    })];
    let statuses = ["new", "paid", "shipped", "delivered", "cancelled"];
    for i in 0..ROWS {
        let id = (1_000_000 + i).to_string();
        let user = (i * 7919 % 100_000).to_string();
        let total = format!("{}.{:02}", i % 5000, i % 100);
        let created = format!("2026-11-22 10:{:02}:{:02}.{:06}+00", i % 60, i % 59, i);
        let email = format!("user{}@example.com", i % 100_000);
        let note = "please leave the parcel at the back door";
        let row = Tuple::from_values([
            Value::Text(id.as_bytes()),
            Value::Text(user.as_bytes()),
            Value::Text(statuses[i % statuses.len()].as_bytes()),
            Value::Text(total.as_bytes()),
            Value::Text(created.as_bytes()),
            Value::Text(email.as_bytes()),
            if i % 3 == 0 {
                Value::Text(note.as_bytes())
            } else {
                Value::Null
            },
            Value::Text(if i % 2 == 0 { b"t" } else { b"f" }),
        ])
        .expect("row encodes");
        let message = match i % 4 {
            0 | 1 => Message::Insert(Insert {
                relation_id: RELATION_ID,
                new: row,
            }),
            2 => Message::Update(Update {
                relation_id: RELATION_ID,
                old: None,
                new: row,
            }),
            _ => {
                let key = Tuple::from_values(
                    std::iter::once(Value::Text(id.as_bytes()))
                        .chain(std::iter::repeat_n(Value::Null, 7)),
                )
                .expect("key encodes");
                Message::Update(Update {
                    relation_id: RELATION_ID,
                    old: Some(OldTuple::Key(key)),
                    new: row,
                })
            }
        };
        messages.push(message);
    }

    let mut buffer = Vec::new();
    let mut bounds = Vec::with_capacity(messages.len());
    for message in &messages {
        let start = buffer.len();
        encode_into(message, &mut buffer).expect("message encodes");
        bounds.push(start..buffer.len());
    }
    let total = buffer.len() as u64;
    let buffer = Bytes::from(buffer);
    let slices = bounds.into_iter().map(|r| buffer.slice(r)).collect();
    (slices, total)
}

fn bench_decode(c: &mut Criterion) {
    let (messages, total) = stream();
    let mut group = c.benchmark_group("pgoutput");
    group.throughput(Throughput::Bytes(total));

    group.bench_function("decode", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(decode(black_box(message)).expect("valid"));
            }
        })
    });

    // What the rules engine does per row: decode, then read the key and two
    // more columns.
    group.bench_function("decode_and_get_3_columns", |b| {
        b.iter(|| {
            let mut touched = 0usize;
            for message in &messages {
                let row = match decode(black_box(message)).expect("valid") {
                    Message::Insert(m) => m.new,
                    Message::Update(m) => m.new,
                    _ => continue,
                };
                for index in [0, 1, 5] {
                    if let Some(Value::Text(text)) = row.get(index) {
                        touched += text.len();
                    }
                }
            }
            black_box(touched)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
