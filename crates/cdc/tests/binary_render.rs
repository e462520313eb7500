//! Binary rendering against a real server: the same rows decoded from a
//! text-mode and a binary-mode pgoutput stream must give the same text for
//! every type `walbust_cdc::binary` renders, edge values and random ones alike.

use bytes::Bytes;
use walbust_cdc::binary::Rendering;
use walbust_pgoutput::{Message, Value};

const SCHEMA: &str = "
CREATE TABLE vals (
    i2 int2, i4 int4, i8 int8, o oid,
    t text, vc varchar(10), bc char(5), nm name,
    u uuid, b bool, n numeric, d date, ts timestamp, tz timestamptz
);
CREATE PUBLICATION pub FOR TABLE vals;
";

/// Edge values, one row each; NULL where a type has nothing to add.
const EDGES: &str = "
INSERT INTO vals VALUES
 (-32768, -2147483648, -9223372036854775808, 0, '', 'x', 'ab', 'nm',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 0, '2000-01-01', '2000-01-01 00:00:00', '2000-01-01 00:00:00+00'),
 (32767, 2147483647, 9223372036854775807, 4294967295, 'grüße  ', 'ünï', 'abcde', 'x y',
  '00000000-0000-0000-0000-000000000000', false, 0.00, '1999-12-31', '1999-12-31 23:59:59.999999', '1999-12-31 23:59:59.999999+00'),
 (0, 0, 0, 1, 'a''b\\c', '', '', '',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', NULL, -0.001, '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  'NaN', '0001-12-31 BC', '0044-03-15 12:00:00.5 BC', '0044-03-15 12:00:00.5+00 BC'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  'Infinity', '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '-Infinity', '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  1.50, 'infinity', 'infinity', 'infinity'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  -1.50, '-infinity', '-infinity', '-infinity'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  10000, '2024-02-29', '2024-02-29 12:34:56.7', '2024-06-01 12:00:00.000010+02'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  0.0001, NULL, NULL, '2024-06-01 12:00:00-09:30'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  9999.9999, NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  123456789012345678901234567890.123456789012345678901234567890, NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  0.00000000000000000001, NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  1e100, NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  1.5::numeric(30, 20), NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  -100000000, NULL, NULL, NULL);
";

/// Random rows: numerics of every magnitude and scale, dates and
/// timestamps across the millennia, both signs of everything.
const RANDOM: &str = "
INSERT INTO vals
SELECT (random() * 65535 - 32768)::int2,
       (random() * 4294967295 - 2147483648)::int4,
       ((random() - 0.5) * 9.2e18)::int8,
       (random() * 4294967295)::bigint::oid,
       md5(i::text), left(md5(i::text), i % 11), left(md5(i::text), i % 6), md5(i::text)::name,
       gen_random_uuid(), random() < 0.5,
       round(((random() - 0.5) * 10 ^ (i % 40 - 20))::numeric, i % 30),
       '2000-01-01'::date + ((random() - 0.5) * 4e6)::int,
       '2000-01-01'::timestamp + (random() - 0.5) * interval '6000 years'
           + (random() * 1e6)::int * interval '1 microsecond',
       '2000-01-01'::timestamptz + (random() - 0.5) * interval '6000 years'
           + (random() * 1e6)::int * interval '1 microsecond'
FROM generate_series(1, 2000) i;
";

async fn changes(db: &tokio_postgres::Client, binary: bool) -> Vec<Message> {
    let sql = format!(
        "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'pub'{})",
        if binary { ", 'binary', 'true'" } else { "" }
    );
    db.query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| walbust_pgoutput::decode(&Bytes::from(r.get::<_, Vec<u8>>(0))).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_render_as_text_mode_prints_them() {
    let pg = walbust_testkit::Postgres::start().unwrap();
    let db = pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .unwrap();
    db.batch_execute(EDGES).await.unwrap();
    db.batch_execute(RANDOM).await.unwrap();
    // Output functions run in the decoding session: pin it as walbust pins
    // its replication connection (walbust_cdc::binary::SESSION_SETTINGS).
    for (name, value) in walbust_cdc::binary::SESSION_SETTINGS {
        db.batch_execute(&format!("SET {name} = '{value}'"))
            .await
            .unwrap();
    }

    let text = changes(&db, false).await;
    let binary = changes(&db, true).await;
    assert_eq!(text.len(), binary.len());

    let mut types = Vec::new();
    let mut compared = 0;
    let mut rendered = String::new();
    for (t, b) in text.iter().zip(&binary) {
        match (t, b) {
            (Message::Relation(t), Message::Relation(b)) => {
                assert_eq!(t, b);
                types = t
                    .columns
                    .iter()
                    .map(|c| {
                        Rendering::for_type(c.type_oid)
                            .unwrap_or_else(|| panic!("no rendering for {}", c.name))
                    })
                    .collect();
            }
            (Message::Insert(t), Message::Insert(b)) => {
                for (column, (tv, bv)) in t.new.iter().zip(b.new.iter()).enumerate() {
                    match (tv, bv) {
                        (Value::Null, Value::Null) => {}
                        (Value::Text(text), Value::Binary(bytes)) => {
                            rendered.clear();
                            types[column]
                                .render(bytes, &mut rendered)
                                .unwrap_or_else(|e| panic!("column {column}: {e}"));
                            assert_eq!(
                                rendered,
                                std::str::from_utf8(text).unwrap(),
                                "column {column} ({:?})",
                                types[column]
                            );
                            compared += 1;
                        }
                        other => panic!("column {column}: {other:?}"),
                    }
                }
            }
            (Message::Begin(_), Message::Begin(_)) | (Message::Commit(_), Message::Commit(_)) => {}
            other => panic!("streams differ: {other:?}"),
        }
    }
    // 16 edge rows and 2000 random rows of 14 columns, minus the NULLs.
    assert!(compared > 2000 * 14, "only {compared} values compared");
}
