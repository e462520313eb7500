//! The decoder against streams captured from a real Postgres.
//!
//! Each test starts a throwaway server (testkit), writes through a pgoutput
//! slot and reads the raw messages back with
//! `pg_logical_slot_get_binary_changes` (protocol 1, logical messages on),
//! one row per pgoutput message. Every message kind protocol 1 produces is
//! decoded and checked field by field against what the test wrote and what
//! the catalog says: Begin, Commit, Origin, Relation, Type, Insert, Update
//! (no old tuple, 'K' and 'O'), Delete, Truncate, Message, and tuple values
//! null, unchanged TOAST, text and binary.

use bytes::Bytes;
use tokio_postgres::Client;
use walbust_pgoutput::{
    Begin, Commit, Message, OldTuple, Relation, ReplicaIdentity, Truncate, Tuple, TypeMsg, Value,
};

/// A server with a schema, a publication `pub` and a pgoutput slot `s`.
struct Server {
    _pg: walbust_testkit::Postgres,
    db: Client,
}

impl Server {
    /// `schema` must create the publication `pub`.
    async fn start(schema: &str) -> Server {
        let pg = walbust_testkit::Postgres::start().expect("start Postgres");
        let db = pg.connect().await.expect("connect");
        db.batch_execute(schema).await.expect("schema");
        // A slot cannot be created in a transaction that has written.
        db.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
            .await
            .expect("create slot");
        // Text output of timestamps follows the decoding session's settings.
        db.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
            .await
            .unwrap();
        Server { _pg: pg, db }
    }

    /// Consumes and decodes everything the slot has for `pub`, with each
    /// message's LSN as the server reports it.
    async fn take(&self, binary: bool) -> Vec<(u64, Message)> {
        let sql = format!(
            "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'pub', 'messages', 'true'{})",
            if binary { ", 'binary', 'true'" } else { "" }
        );
        self.db
            .query(&sql, &[])
            .await
            .expect("read the slot")
            .iter()
            .map(|row| {
                let lsn = walbust_pgoutput::parse_lsn(row.get(0)).expect("an LSN");
                let data = Bytes::from(row.get::<_, Vec<u8>>(1));
                let msg = walbust_pgoutput::decode(&data)
                    .unwrap_or_else(|e| panic!("decode {data:?}: {e}"));
                (lsn, msg)
            })
            .collect()
    }

    /// The decoded messages alone.
    async fn messages(&self, binary: bool) -> Vec<Message> {
        self.take(binary)
            .await
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    async fn oid(&self, regclass_or_type: &str) -> u32 {
        self.db
            .query_one(&format!("SELECT {regclass_or_type}::oid"), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn lsn(&self) -> u64 {
        walbust_testkit::current_wal_lsn(&self.db).await.unwrap()
    }

    /// Now, in microseconds since 2000-01-01 UTC (the protocol's clock).
    async fn now_micros(&self) -> i64 {
        self.db
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 - 946684800000000",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Runs `sql` in one transaction and records what its Begin and Commit
    /// must say.
    async fn commit(&mut self, sql: &str) -> Written {
        let before = self.lsn().await;
        let start = self.now_micros().await;
        let xid = walbust_testkit::commit_transaction(&mut self.db, sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        Written {
            xid,
            before,
            after: self.lsn().await,
            start,
            end: self.now_micros().await,
        }
    }
}

/// What one committed transaction must look like in the stream.
struct Written {
    xid: u32,
    /// WAL position before and after it.
    before: u64,
    after: u64,
    /// Clock before it began and after it committed.
    start: i64,
    end: i64,
}

impl Written {
    /// Checks Begin and Commit field by field.
    fn check(&self, begin: &Begin, commit: &Commit) {
        assert_eq!(begin.xid, self.xid, "Begin.xid");
        assert_eq!(begin.final_lsn, commit.commit_lsn, "Begin.final_lsn");
        assert!(
            self.before < commit.commit_lsn
                && commit.commit_lsn < commit.end_lsn
                && commit.end_lsn <= self.after,
            "commit LSN {:X} / end {:X} outside {:X}..{:X}",
            commit.commit_lsn,
            commit.end_lsn,
            self.before,
            self.after
        );
        assert_eq!(begin.commit_time, commit.commit_time, "commit times");
        assert!(
            (self.start..=self.end).contains(&commit.commit_time),
            "commit time {} outside {}..{}",
            commit.commit_time,
            self.start,
            self.end
        );
        assert_eq!(commit.flags, 0, "Commit.flags");
    }
}

/// Splits one transaction's messages into Begin, the messages inside, and
/// Commit; `msgs` must hold exactly one transaction.
fn one_tx(msgs: &[Message]) -> (&Begin, &[Message], &Commit) {
    match msgs {
        [Message::Begin(b), inner @ .., Message::Commit(c)] => (b, inner, c),
        other => panic!("not one transaction: {:?}", names(other)),
    }
}

fn names(msgs: &[Message]) -> Vec<&'static str> {
    msgs.iter().map(Message::name).collect()
}

/// A tuple in readable form: `NULL`, `TOAST` (unchanged), `t:<text>`,
/// `b:<hex>`.
fn show(tuple: &Tuple) -> Vec<String> {
    tuple
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".to_string(),
            Value::UnchangedToast => "TOAST".to_string(),
            Value::Text(t) => format!("t:{}", String::from_utf8_lossy(t)),
            Value::Binary(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("b:{hex}")
            }
        })
        .collect()
}

/// Columns of a Relation as (flags, name, type OID, type modifier).
fn columns(rel: &Relation) -> Vec<(u8, &str, u32, i32)> {
    rel.columns
        .iter()
        .map(|c| (c.flags, c.name.as_str(), c.type_oid, c.type_modifier))
        .collect()
}

const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;
const NUMERIC: u32 = 1700;
const TIMESTAMPTZ: u32 = 1184;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_under_each_replica_identity() {
    let mut s = Server::start(
        "CREATE TABLE items (id int PRIMARY KEY, name varchar(20) NOT NULL, price numeric(10,2), note text);
         CREATE TABLE audit (id bigint PRIMARY KEY, who text, at timestamptz);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE TABLE codes (id int PRIMARY KEY, code text NOT NULL);
         CREATE UNIQUE INDEX codes_code ON codes (code);
         ALTER TABLE codes REPLICA IDENTITY USING INDEX codes_code;
         CREATE TABLE events (id int, what text);
         ALTER TABLE events REPLICA IDENTITY NOTHING;
         CREATE PUBLICATION pub FOR TABLE items, audit, codes, events;",
    )
    .await;
    let items = s.oid("'items'::regclass").await;
    let audit = s.oid("'audit'::regclass").await;
    let codes = s.oid("'codes'::regclass").await;
    let events = s.oid("'events'::regclass").await;

    // Inserts, and the Relation messages that precede each table's first change.
    let w = s
        .commit(
            "INSERT INTO items VALUES (1, 'apple', 1.5, NULL);
             INSERT INTO audit VALUES (10, 'ann', '2024-01-02 03:04:05.25+02');
             INSERT INTO codes VALUES (5, 'c5');
             INSERT INTO events VALUES (NULL, 'boot');",
        )
        .await;
    let msgs = s.messages(false).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    assert_eq!(
        names(inner),
        ["Relation", "Insert", "Relation", "Insert", "Relation", "Insert", "Relation", "Insert"]
    );
    let Message::Relation(rel) = &inner[0] else {
        unreachable!()
    };
    assert_eq!(rel.id, items);
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "items")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        columns(rel),
        [
            (1, "id", INT4, -1),
            // varchar(20): typmod is the length plus the 4-byte header.
            (0, "name", VARCHAR, 24),
            // numeric(10,2): (precision << 16 | scale) + 4.
            (0, "price", NUMERIC, (10 << 16 | 2) + 4),
            (0, "note", TEXT, -1),
        ]
    );
    let Message::Insert(ins) = &inner[1] else {
        unreachable!()
    };
    assert_eq!(ins.relation_id, items);
    assert_eq!(show(&ins.new), ["t:1", "t:apple", "t:1.50", "NULL"]);

    let Message::Relation(rel) = &inner[2] else {
        unreachable!()
    };
    assert_eq!((rel.id, rel.name.as_str()), (audit, "audit"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    // Under FULL every column is part of the identity.
    assert_eq!(
        columns(rel),
        [
            (1, "id", INT8, -1),
            (1, "who", TEXT, -1),
            (1, "at", TIMESTAMPTZ, -1)
        ]
    );
    let Message::Insert(ins) = &inner[3] else {
        unreachable!()
    };
    assert_eq!(ins.relation_id, audit);
    assert_eq!(
        show(&ins.new),
        ["t:10", "t:ann", "t:2024-01-02 01:04:05.25+00"]
    );

    let Message::Relation(rel) = &inner[4] else {
        unreachable!()
    };
    assert_eq!((rel.id, rel.name.as_str()), (codes, "codes"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Index);
    // The identity is the index's column, not the primary key.
    assert_eq!(columns(rel), [(0, "id", INT4, -1), (1, "code", TEXT, -1)]);
    assert!(rel.columns[1].is_key() && !rel.columns[0].is_key());
    let Message::Insert(ins) = &inner[5] else {
        unreachable!()
    };
    assert_eq!(show(&ins.new), ["t:5", "t:c5"]);

    let Message::Relation(rel) = &inner[6] else {
        unreachable!()
    };
    assert_eq!((rel.id, rel.name.as_str()), (events, "events"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Nothing);
    assert_eq!(columns(rel), [(0, "id", INT4, -1), (0, "what", TEXT, -1)]);
    let Message::Insert(ins) = &inner[7] else {
        unreachable!()
    };
    assert_eq!(show(&ins.new), ["NULL", "t:boot"]);

    // Updates and deletes: no old tuple when the key did not change, a key
    // tuple ('K') when it did, the whole old row ('O') under FULL.
    let w = s
        .commit(
            "UPDATE items SET name = 'pear' WHERE id = 1;
             UPDATE items SET id = 2 WHERE id = 1;
             UPDATE audit SET who = 'bob';
             UPDATE codes SET id = 6;
             UPDATE codes SET code = 'c6';
             DELETE FROM items WHERE id = 2;
             DELETE FROM audit;
             DELETE FROM codes;",
        )
        .await;
    let msgs = s.messages(false).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    assert_eq!(
        names(inner),
        [
            "Relation", "Update", "Update", "Relation", "Update", "Relation", "Update", "Update",
            "Delete", "Delete", "Delete"
        ]
    );
    let updates: Vec<_> = inner
        .iter()
        .filter_map(|m| match m {
            Message::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    let old = |u: &walbust_pgoutput::Update| {
        u.old.as_ref().map(|o| match o {
            OldTuple::Key(t) => ("K", show(t)),
            OldTuple::Full(t) => ("O", show(t)),
        })
    };
    assert_eq!(updates[0].relation_id, items);
    assert_eq!(old(updates[0]), None);
    assert_eq!(show(&updates[0].new), ["t:1", "t:pear", "t:1.50", "NULL"]);
    assert_eq!(updates[1].relation_id, items);
    // The key tuple carries the key columns; the others are sent as nulls.
    assert_eq!(
        old(updates[1]),
        Some((
            "K",
            vec!["t:1".into(), "NULL".into(), "NULL".into(), "NULL".into()]
        ))
    );
    assert_eq!(show(&updates[1].new), ["t:2", "t:pear", "t:1.50", "NULL"]);
    assert_eq!(updates[2].relation_id, audit);
    assert_eq!(
        old(updates[2]),
        Some((
            "O",
            vec![
                "t:10".into(),
                "t:ann".into(),
                "t:2024-01-02 01:04:05.25+00".into()
            ]
        ))
    );
    assert_eq!(
        show(&updates[2].new),
        ["t:10", "t:bob", "t:2024-01-02 01:04:05.25+00"]
    );
    // Under USING INDEX, a changed primary key is not a changed identity...
    assert_eq!(updates[3].relation_id, codes);
    assert_eq!(old(updates[3]), None);
    assert_eq!(show(&updates[3].new), ["t:6", "t:c5"]);
    // ...a changed indexed column is.
    assert_eq!(
        old(updates[4]),
        Some(("K", vec!["NULL".into(), "t:c5".into()]))
    );
    assert_eq!(show(&updates[4].new), ["t:6", "t:c6"]);

    let deletes: Vec<_> = inner
        .iter()
        .filter_map(|m| match m {
            Message::Delete(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(deletes[0].relation_id, items);
    assert!(!deletes[0].old.is_full());
    assert_eq!(
        show(deletes[0].old.tuple()),
        ["t:2", "NULL", "NULL", "NULL"]
    );
    assert_eq!(deletes[1].relation_id, audit);
    assert!(deletes[1].old.is_full());
    assert_eq!(
        show(deletes[1].old.tuple()),
        ["t:10", "t:bob", "t:2024-01-02 01:04:05.25+00"]
    );
    assert_eq!(deletes[2].relation_id, codes);
    assert!(!deletes[2].old.is_full());
    assert_eq!(show(deletes[2].old.tuple()), ["NULL", "t:c6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_several_tables_with_options() {
    let mut s = Server::start(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
         CREATE TABLE counter (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         CREATE TABLE lone (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE parent, child, counter, lone;
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         INSERT INTO counter (v) VALUES ('a'); INSERT INTO lone VALUES (1);",
    )
    .await;
    let parent = s.oid("'parent'::regclass").await;
    let child = s.oid("'child'::regclass").await;
    let counter = s.oid("'counter'::regclass").await;
    let lone = s.oid("'lone'::regclass").await;

    let w = s
        .commit(
            "TRUNCATE parent, counter RESTART IDENTITY CASCADE;
             TRUNCATE lone;
             TRUNCATE lone RESTART IDENTITY;
             TRUNCATE lone CASCADE;",
        )
        .await;
    let msgs = s.messages(false).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    // Each table is described before the first Truncate that names it.
    let mut described = Vec::new();
    let mut truncates: Vec<&Truncate> = Vec::new();
    for m in inner {
        match m {
            Message::Relation(r) => described.push(r.id),
            Message::Truncate(t) => {
                for id in &t.relation_ids {
                    assert!(described.contains(id), "relation {id} not described first");
                }
                truncates.push(t);
            }
            other => panic!("unexpected {}", other.name()),
        }
    }
    assert_eq!(truncates.len(), 4, "{:?}", names(inner));
    let first = truncates[0];
    assert_eq!(
        first.options,
        Truncate::CASCADE | Truncate::RESTART_IDENTITY
    );
    assert!(first.cascade() && first.restart_identity());
    // The named tables, then the one CASCADE reached.
    assert_eq!(first.relation_ids, [parent, counter, child]);
    assert_eq!(
        truncates[1..]
            .iter()
            .map(|t| (t.options, t.relation_ids.clone()))
            .collect::<Vec<_>>(),
        [
            (0, vec![lone]),
            (Truncate::RESTART_IDENTITY, vec![lone]),
            (Truncate::CASCADE, vec![lone]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values() {
    let mut s = Server::start(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         -- Out of line and uncompressed: any value over ~2 kB is TOASTed.
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE PUBLICATION pub FOR TABLE docs, docs_full;",
    )
    .await;
    let docs = s.oid("'docs'::regclass").await;
    let docs_full = s.oid("'docs_full'::regclass").await;
    let big = "x".repeat(5000);

    s.commit(&format!(
        "INSERT INTO docs VALUES (1, 'a', '{big}');
         INSERT INTO docs_full VALUES (1, 'a', '{big}');"
    ))
    .await;
    let msgs = s.messages(false).await;
    let inserts: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Insert(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(inserts.len(), 2);
    for ins in inserts {
        // A new value is always sent in full.
        assert_eq!(show(&ins.new), ["t:1", "t:a", &format!("t:{big}")]);
    }

    let w = s
        .commit(
            "UPDATE docs SET title = 'b';
             UPDATE docs_full SET title = 'b';
             UPDATE docs SET body = 'short';",
        )
        .await;
    let msgs = s.messages(false).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    assert_eq!(
        names(inner),
        ["Relation", "Update", "Relation", "Update", "Update"]
    );
    let Message::Update(u) = &inner[1] else {
        unreachable!()
    };
    assert_eq!(u.relation_id, docs);
    assert!(u.old.is_none());
    let unchanged = show(&u.new);
    assert_eq!(unchanged, ["t:1", "t:b", "TOAST"]);
    assert!(u.new.get(2).unwrap().is_unchanged_toast());
    let Message::Update(u) = &inner[3] else {
        unreachable!()
    };
    assert_eq!(u.relation_id, docs_full);
    // The new row does not resend the value; the FULL old row has it.
    assert_eq!(show(&u.new), ["t:1", "t:b", "TOAST"]);
    let old = u.old.as_ref().expect("old row under FULL");
    assert!(old.is_full());
    assert_eq!(show(old.tuple()), ["t:1", "t:a", &format!("t:{big}")]);
    let Message::Update(u) = &inner[4] else {
        unreachable!()
    };
    assert_eq!(show(&u.new), ["t:1", "t:b", "t:short"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_transactional_and_not() {
    let mut s = Server::start(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE t;",
    )
    .await;

    // Inside a transaction: delivered with it, at its position.
    let before = s.lsn().await;
    let tx = s.db.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let tx_lsn: String = tx
        .query_one(
            "SELECT pg_logical_emit_message(true, 'walbust', '{\"keys\":[\"cart:42\"]}')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let bin_lsn: String = tx
        .query_one(
            "SELECT pg_logical_emit_message(true, 'bin', '\\x00ff01'::bytea)::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    // Outside a transaction, and inside one that rolls back: a
    // non-transactional message is sent at once and survives the rollback;
    // the transactional one vanishes with it.
    let alone_lsn: String =
        s.db.query_one(
            "SELECT pg_logical_emit_message(false, 'other', 'now')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tx = s.db.transaction().await.unwrap();
    let kept_lsn: String = tx
        .query_one(
            "SELECT pg_logical_emit_message(false, 'nt', 'kept')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.batch_execute(
        "SELECT pg_logical_emit_message(true, 'tx', 'dropped'); INSERT INTO t VALUES (2)",
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Non-transactional messages are not flushed on their own, and the
    // slot is read up to the flushed position: a WAL switch flushes them
    // (and decodes to nothing).
    s.db.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    let after = s.lsn().await;

    let captured = s.take(false).await;
    let msgs: Vec<Message> = captured.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(
        names(&msgs),
        ["Begin", "Relation", "Insert", "Message", "Message", "Commit", "Message", "Message"]
    );
    let lsn = |text: &str| walbust_pgoutput::parse_lsn(text).unwrap();
    let message = |i: usize| match &msgs[i] {
        Message::Message(m) => m,
        _ => unreachable!(),
    };
    let m = message(3);
    assert!(m.transactional);
    assert_eq!(&m.prefix[..], b"walbust");
    assert_eq!(&m.content[..], br#"{"keys":["cart:42"]}"#);
    assert_eq!(m.lsn, lsn(&tx_lsn));
    let m = message(4);
    assert!(m.transactional);
    assert_eq!(
        (&m.prefix[..], &m.content[..]),
        (&b"bin"[..], &[0u8, 0xff, 1][..])
    );
    assert_eq!(m.lsn, lsn(&bin_lsn));
    let Message::Commit(commit) = &msgs[5] else {
        unreachable!()
    };
    // Messages are reported at the end of their record; the commit record
    // follows.
    assert!(before < m.lsn && m.lsn <= commit.commit_lsn);
    let m = message(6);
    assert!(!m.transactional);
    assert_eq!(
        (&m.prefix[..], &m.content[..]),
        (&b"other"[..], &b"now"[..])
    );
    assert_eq!(m.lsn, lsn(&alone_lsn));
    let m = message(7);
    assert!(!m.transactional);
    assert_eq!((&m.prefix[..], &m.content[..]), (&b"nt"[..], &b"kept"[..]));
    assert_eq!(m.lsn, lsn(&kept_lsn));
    assert!(m.lsn <= after);
    // A non-transactional message is reported at its own position.
    assert_eq!(captured[7].0, m.lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_changed_and_dropped_mid_stream() {
    let mut s = Server::start(
        "CREATE TABLE t (id int PRIMARY KEY, name text);
         CREATE PUBLICATION pub FOR TABLE t;",
    )
    .await;
    let t = s.oid("'t'::regclass").await;
    s.commit("INSERT INTO t VALUES (1, 'a')").await;
    s.commit("ALTER TABLE t ADD COLUMN extra int DEFAULT 7")
        .await;
    s.commit("INSERT INTO t VALUES (2, 'b', 8); INSERT INTO t (id, name) VALUES (3, 'c')")
        .await;
    s.commit("ALTER TABLE t ALTER COLUMN name TYPE varchar(10)")
        .await;
    s.commit("INSERT INTO t VALUES (4, 'd', 9)").await;
    s.commit("ALTER TABLE t DROP COLUMN extra").await;
    s.commit("INSERT INTO t VALUES (5, 'e')").await;

    // One decoding session: each schema change makes the server describe
    // the table again before its next change.
    let msgs = s.messages(false).await;
    let inner: Vec<&Message> = msgs
        .iter()
        .filter(|m| !matches!(m, Message::Begin(_) | Message::Commit(_)))
        .collect();
    let begins = msgs
        .iter()
        .filter(|m| matches!(m, Message::Begin(_)))
        .count();
    let commits = msgs
        .iter()
        .filter(|m| matches!(m, Message::Commit(_)))
        .count();
    assert_eq!(begins, commits);
    assert!(begins >= 4, "{:?}", names(&msgs));
    let mut seen = Vec::new();
    for m in inner {
        match m {
            Message::Relation(r) => {
                assert_eq!(r.id, t, "the table keeps its OID");
                seen.push(format!(
                    "R {}",
                    r.columns
                        .iter()
                        .map(|c| format!("{}:{}:{}", c.name, c.type_oid, c.type_modifier))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            Message::Insert(i) => {
                assert_eq!(i.relation_id, t);
                seen.push(format!("I {}", show(&i.new).join(",")));
            }
            other => panic!("unexpected {}", other.name()),
        }
    }
    assert_eq!(
        seen,
        [
            "R id:23:-1,name:25:-1",
            "I t:1,t:a",
            "R id:23:-1,name:25:-1,extra:23:-1",
            "I t:2,t:b,t:8",
            "I t:3,t:c,t:7",
            "R id:23:-1,name:1043:14,extra:23:-1",
            "I t:4,t:d,t:9",
            "R id:23:-1,name:1043:14",
            "I t:5,t:e",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_defined_types_are_described_before_their_relation() {
    let mut s = Server::start(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TABLE people (id int PRIMARY KEY, m mood, p positive, ms mood[]);
         CREATE PUBLICATION pub FOR TABLE people;",
    )
    .await;
    let people = s.oid("'people'::regclass").await;
    let mood = s.oid("'mood'::regtype").await;
    let mood_array = s.oid("'mood[]'::regtype").await;
    let positive = s.oid("'positive'::regtype").await;

    let w = s
        .commit("INSERT INTO people VALUES (1, 'happy', 5, '{sad,ok}')")
        .await;
    let msgs = s.messages(false).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    assert_eq!(names(inner), ["Type", "Type", "Type", "Relation", "Insert"]);
    let types: Vec<&TypeMsg> = inner
        .iter()
        .filter_map(|m| match m {
            Message::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    let described: Vec<(u32, &str, &str)> = types
        .iter()
        .map(|t| (t.id, t.namespace.as_str(), t.name.as_str()))
        .collect();
    assert_eq!(
        described,
        [
            (mood, "public", "mood"),
            // A domain is described by the type underneath it (pg_catalog
            // is sent as an empty namespace).
            (positive, "", "int4"),
            (mood_array, "public", "_mood"),
        ]
    );
    let Message::Relation(rel) = &inner[3] else {
        unreachable!()
    };
    assert_eq!(rel.id, people);
    assert_eq!(
        columns(rel),
        [
            (1, "id", INT4, -1),
            (0, "m", mood, -1),
            (0, "p", positive, -1),
            (0, "ms", mood_array, -1)
        ]
    );
    let Message::Insert(ins) = &inner[4] else {
        unreachable!()
    };
    assert_eq!(show(&ins.new), ["t:1", "t:happy", "t:5", "t:{sad,ok}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_sends_send_format_values() {
    let mut s = Server::start(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE bin (
             i2 int2, i4 int4 PRIMARY KEY, i8 int8, t text, b bool, u uuid, n numeric,
             ts timestamptz, d date, f8 float8, by bytea, m mood, nul int, arr int[], body text
         );
         ALTER TABLE bin REPLICA IDENTITY FULL;
         ALTER TABLE bin ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE PUBLICATION pub FOR TABLE bin;",
    )
    .await;
    let mood = s.oid("'mood'::regtype").await;
    let big = "z".repeat(4000);
    let w = s
        .commit(&format!(
            "INSERT INTO bin VALUES (-2, 42, 1099511627776, 'hé', true,
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.50, '2000-01-01 00:00:01+00',
                 '2000-01-02', 1.5, '\\x0001ff', 'ok', NULL, '{{7,8}}', '{big}');
             UPDATE bin SET b = false;"
        ))
        .await;
    let msgs = s.messages(true).await;
    let (begin, inner, commit) = one_tx(&msgs);
    w.check(begin, commit);
    assert_eq!(names(inner), ["Type", "Relation", "Insert", "Update"]);
    let Message::Type(ty) = &inner[0] else {
        unreachable!()
    };
    assert_eq!((ty.id, ty.name.as_str()), (mood, "mood"));

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let expected = |flag: u8| {
        vec![
            "b:fffe".to_string(),
            "b:0000002a".into(),
            "b:0000010000000000".into(),
            format!("b:{}", hex("hé".as_bytes())),
            format!("b:0{flag}"),
            "b:a0eebc999c0b4ef8bb6d6bb9bd380a11".into(),
            // numeric: 2 digits, weight 0, positive, scale 2, [1, 5000].
            "b:000200000000000200011388".into(),
            // timestamptz: microseconds since 2000-01-01 UTC.
            "b:00000000000f4240".into(),
            // date: days since 2000-01-01.
            "b:00000001".into(),
            format!("b:{}", hex(&1.5f64.to_be_bytes())),
            "b:0001ff".into(),
            // An enum sends its label.
            "b:6f6b".into(),
            "NULL".into(),
            // int4[]: 1 dimension, no nulls, element type int4, 2 elements
            // from index 1, each with its length.
            concat!(
                "b:", "00000001", "00000000", "00000017", "00000002", "00000001", "00000004",
                "00000007", "00000004", "00000008"
            )
            .into(),
            format!("b:{}", hex(big.as_bytes())),
        ]
    };
    let Message::Insert(ins) = &inner[2] else {
        unreachable!()
    };
    assert_eq!(show(&ins.new), expected(1));
    let Message::Update(upd) = &inner[3] else {
        unreachable!()
    };
    let old = upd.old.as_ref().expect("FULL sends the old row");
    assert!(old.is_full());
    assert_eq!(show(old.tuple()), expected(1));
    // The untouched TOASTed column is not resent, in binary mode either.
    let mut new = expected(0);
    *new.last_mut().unwrap() = "TOAST".into();
    assert_eq!(show(&upd.new), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_of_a_replayed_transaction() {
    let mut s = Server::start(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE t;",
    )
    .await;
    s.db.batch_execute(
        "SELECT pg_replication_origin_create('upstream');
         SELECT pg_replication_origin_session_setup('upstream');",
    )
    .await
    .unwrap();
    // What a subscription's apply worker does: mark the transaction as
    // replayed from `upstream`, where it committed at 0/ABCDEF.
    let w = s
        .commit(
            "SELECT pg_replication_origin_xact_setup('0/ABCDEF', now());
             INSERT INTO t VALUES (1);",
        )
        .await;
    s.db.batch_execute("SELECT pg_replication_origin_session_reset()")
        .await
        .unwrap();
    s.commit("INSERT INTO t VALUES (2)").await;

    let msgs = s.messages(false).await;
    assert_eq!(
        names(&msgs),
        ["Begin", "Origin", "Relation", "Insert", "Commit", "Begin", "Insert", "Commit"]
    );
    let (begin, inner, commit) = one_tx(&msgs[..5]);
    w.check(begin, commit);
    let Message::Origin(origin) = &inner[0] else {
        unreachable!()
    };
    assert_eq!(origin.commit_lsn, 0xAB_CDEF);
    assert_eq!(&origin.name[..], b"upstream");
}
