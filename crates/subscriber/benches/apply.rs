//! Records applied per second to the moka adapter, one core: decoding included, transports
//! left out (they add a network read per record, not per key).
//!
//! The cache holds 100,000 entries, a tenth of them filed under one of 100 tags (100 each). Each record
//! names 10 keys that are present (re-filled, untimed, before each record), and in the
//! `keys_and_tag` case also one tag of 100 entries. Criterion's elements are keys; records per
//! second are a tenth of them. A third case applies one pattern that matches nothing: the cost
//! of walking 100,000 entries.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walbust_subscriber::{Applier, MokaCache, Record, Transport};

const ENTRIES: u64 = 100_000;
const KEYS_PER_RECORD: u64 = 10;
const TAGS: u64 = 100;
/// Entries `product:0` to `product:9999` are tagged, `category:<i % 100>`: 100 per tag.
const TAGGED: u64 = 10_000;

fn cache() -> MokaCache<u64> {
    let cache = MokaCache::new(2 * ENTRIES);
    for i in 0..ENTRIES {
        if i < TAGGED {
            cache.insert_tagged(
                format!("product:{i}"),
                i,
                [format!("category:{}", i % TAGS)],
            );
        } else {
            cache.insert(format!("product:{i}"), i);
        }
    }
    cache.run_pending_tasks();
    cache
}

/// Record `n`: 10 keys spread over the cache, and optionally one tag.
fn record(n: u64, with_tag: bool) -> (Vec<u8>, Vec<u64>) {
    let ids: Vec<u64> = (0..KEYS_PER_RECORD)
        .map(|k| (n * 7919 + k * 104_729) % ENTRIES)
        .collect();
    let keys: Vec<String> = ids.iter().map(|i| format!("\"product:{i}\"")).collect();
    let tags = if with_tag {
        format!("\"category:{}\"", n % TAGS)
    } else {
        String::new()
    };
    let payload = format!(
        r#"{{"v":1,"lsn":"0/{:X}","commit_ts":"2026-12-04T10:00:00.000000Z","xids":[{n}],"keys":[{}],"tags":[{tags}],"patterns":[]}}"#,
        n + 1,
        keys.join(",")
    );
    (payload.into_bytes(), ids)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscriber");
    group.throughput(Throughput::Elements(KEYS_PER_RECORD));
    // Decoding alone, to tell it from the cache's share.
    let (payload, _) = record(0, false);
    group.bench_function("decode_10_keys", |b| {
        b.iter(|| Record::parse(&payload).expect("a valid record"))
    });
    for (name, with_tag) in [("apply_10_keys", false), ("apply_10_keys_and_tag", true)] {
        let cache = cache();
        let applier = Applier::new(cache.clone(), Transport::Custom);
        let records: Vec<_> = (0..1_000).map(|n| record(n, with_tag)).collect();
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // Untimed: put back what the previous records removed.
                    let n = next % records.len();
                    next += 1;
                    let (payload, ids) = &records[n];
                    for &i in ids {
                        cache.insert(format!("product:{i}"), i);
                    }
                    if with_tag {
                        let tag = n as u64 % TAGS;
                        for i in (tag..TAGGED).step_by(TAGS as usize) {
                            cache.insert_tagged(
                                format!("product:{i}"),
                                i,
                                [format!("category:{tag}")],
                            );
                        }
                    }
                    payload
                },
                |payload| applier.apply_payload(payload).expect("a valid record"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // A pattern walks the whole cache, as SCAN walks Redis: one element is one record here.
    let mut group = c.benchmark_group("subscriber");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    let cache = cache();
    let applier = Applier::new(cache.clone(), Transport::Custom);
    group.bench_function("apply_pattern_100k_entries", |b| {
        b.iter(|| {
            applier
                .apply_payload(br#"{"v":1,"lsn":"0/1","patterns":["search:\\*:*"]}"#)
                .expect("a valid record")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
