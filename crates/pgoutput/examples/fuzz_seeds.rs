//! Writes the seed corpora of the fuzz targets under `fuzz/corpus/`:
//! `decode/` gets a few valid messages of every kind, one file each;
//! `decode_stream/` gets whole transactions, each message preceded by its
//! length as a big-endian u32.
//!
//! ```text
//! cargo run -p walbust-pgoutput --features encode --example fuzz_seeds -- fuzz/corpus
//! ```

use std::path::PathBuf;

use bytes::Bytes;
use walbust_pgoutput::encode::encode;
use walbust_pgoutput::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin, Relation,
    ReplicaIdentity, Truncate, Tuple, TypeMsg, Update, Value,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: fuzz_seeds <corpus directory>")?,
    );
    let seeds = seeds()?;

    let dir = corpus.join("decode");
    std::fs::create_dir_all(&dir)?;
    for (name, message) in &seeds {
        std::fs::write(dir.join(name), encode(message)?)?;
    }

    let dir = corpus.join("decode_stream");
    std::fs::create_dir_all(&dir)?;
    let find = |name: &str| {
        seeds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| format!("no seed named {name}"))
    };
    let streams: [(&str, &[&str]); 3] = [
        (
            "transaction",
            &[
                "begin",
                "relation",
                "insert",
                "update_key",
                "delete_key",
                "commit",
            ],
        ),
        (
            "replicated_transaction",
            &[
                "begin",
                "origin",
                "type",
                "relation_full",
                "update_full",
                "delete_full",
                "message",
                "truncate",
                "commit",
            ],
        ),
        ("non_transactional_message", &["message_nontx"]),
    ];
    for (name, parts) in streams {
        let mut out = Vec::new();
        for part in parts {
            let message = encode(find(part)?)?;
            out.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
            out.extend_from_slice(&message);
        }
        std::fs::write(dir.join(name), out)?;
    }
    Ok(())
}

fn seeds() -> Result<Vec<(&'static str, Message)>, walbust_pgoutput::encode::EncodeError> {
    let row = Tuple::from_values([
        Value::Text(b"42"),
        Value::Text(b"widget"),
        Value::Null,
        Value::Text(b"19.99"),
        Value::UnchangedToast,
        Value::Binary(&[0, 0, 0, 7]),
    ])?;
    let key = Tuple::from_values([
        Value::Text(b"42"),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ])?;
    let wide = Tuple::from_values((0..40).map(|i| {
        if i % 3 == 0 {
            Value::Null
        } else {
            Value::Text(b"x")
        }
    }))?;
    let empty = Tuple::from_values([])?;
    let column = |name: &str, flags, type_oid| Column {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    Ok(vec![
        (
            "begin",
            Message::Begin(Begin {
                final_lsn: 0x16_B374_D848,
                commit_time: 817_000_000_000_000,
                xid: 1234,
            }),
        ),
        (
            "commit",
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: 0x16_B374_D848,
                end_lsn: 0x16_B374_D878,
                commit_time: 817_000_000_000_000,
            }),
        ),
        (
            "origin",
            Message::Origin(Origin {
                commit_lsn: 0x1_0000_0000,
                name: Bytes::from_static(b"pg_16385"),
            }),
        ),
        (
            "relation",
            Message::Relation(Relation {
                id: 16_385,
                namespace: "public".into(),
                name: "products".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    column("id", 1, 20),
                    column("name", 0, 25),
                    column("category_id", 0, 23),
                    column("price", 0, 1700),
                    column("description", 0, 25),
                    column("stock", 0, 23),
                ],
            }),
        ),
        (
            "relation_full",
            Message::Relation(Relation {
                id: 16_390,
                namespace: String::new(),
                name: "événements".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![column("a", 0, 25)],
            }),
        ),
        (
            "type",
            Message::Type(TypeMsg {
                id: 16_400,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        (
            "insert",
            Message::Insert(Insert {
                relation_id: 16_385,
                new: row.clone(),
            }),
        ),
        (
            "insert_wide",
            Message::Insert(Insert {
                relation_id: 16_385,
                new: wide,
            }),
        ),
        (
            "insert_empty",
            Message::Insert(Insert {
                relation_id: 16_385,
                new: empty,
            }),
        ),
        (
            "update",
            Message::Update(Update {
                relation_id: 16_385,
                old: None,
                new: row.clone(),
            }),
        ),
        (
            "update_key",
            Message::Update(Update {
                relation_id: 16_385,
                old: Some(OldTuple::Key(key.clone())),
                new: row.clone(),
            }),
        ),
        (
            "update_full",
            Message::Update(Update {
                relation_id: 16_390,
                old: Some(OldTuple::Full(row.clone())),
                new: row.clone(),
            }),
        ),
        (
            "delete_key",
            Message::Delete(Delete {
                relation_id: 16_385,
                old: OldTuple::Key(key),
            }),
        ),
        (
            "delete_full",
            Message::Delete(Delete {
                relation_id: 16_390,
                old: OldTuple::Full(row),
            }),
        ),
        (
            "truncate",
            Message::Truncate(Truncate {
                options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
                relation_ids: vec![16_385, 16_390],
            }),
        ),
        (
            "message",
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: 0x16_B374_D800,
                prefix: Bytes::from_static(b"walbust"),
                content: Bytes::from_static(b"{\"hello\":1}"),
            }),
        ),
        (
            "message_nontx",
            Message::Message(LogicalMessage {
                transactional: false,
                lsn: 1,
                prefix: Bytes::new(),
                content: Bytes::new(),
            }),
        ),
    ])
}
