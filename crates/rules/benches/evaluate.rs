//! Rules evaluation throughput: a realistic shop rule set (10 rules over
//! four tables) against a mixed stream of inserts, updates and deletes.
//!
//! The stream is cut into transactions of `TX_CHANGES` changes, handled like
//! the reader does: the budget is reset and the output handed on (cleared)
//! per transaction, so no rule escalates and every change is rendered in
//! full. Reported as changes per second (`Throughput::Elements`).
//! Target: at least 2M changes/s per core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walbust_rules::{BoundTable, Datum, Invalidations, Op, Outcome, RowValues, RuleSet, TxBudget};

const TX_CHANGES: usize = 20;

const RULES: &str = r#"
version: 1
prefix: "shop:"
rules:
  - table: public.products
    on: [insert, update, delete, truncate]
    keys: ["product:{id}", "product-by-slug:{slug}"]
    tags: ["category:{category_id}", "products"]
    patterns: ["product-list:*"]
  - table: public.products
    on: [update]
    when: { changed: [price, stock] }
    keys: ["product:{id}:availability"]
    tags: ["pricing"]
  - table: public.categories
    keys: ["category:{id}", "category-by-slug:{slug}"]
    tags: ["category:{id}", "category-tree"]
    patterns: ["category-page:{id}:*"]
  - table: public.orders
    on: [insert, update, delete]
    when: { changed: [status, total] }
    keys: ["order:{id}", "user:{user_id}:orders"]
    tags: ["user:{user_id}"]
  - table: public.orders
    on: [update]
    when:
      all:
        - new: { status: { in: [paid, refunded] } }
        - not: { old: { status: { in: [paid, refunded] } } }
    tags: ["sales-dashboard"]
  - table: public.orders
    on: [insert]
    tags: ["orders:recent"]
  - table: public.users
    on: [update, delete]
    keys: ["user:{id}", "user-by-email:{email:hash}"]
    tags: ["user:{id}"]
  - table: public.users
    on: [update]
    when:
      new: { deleted_at: not_null }
      old: { deleted_at: null }
    patterns: ["session:{new.id}:*"]
  - table: public.users
    on: [insert]
    keys: ["users:count"]
  - table: public.order_items
    keys: ["order:{order_id}", "order:{order_id}:items"]
    tags: ["product:{product_id}:sales"]
"#;

/// A row of owned text values, borrowed as `Datum`s at evaluation, the way
/// the cdc crate holds decoded tuples.
struct Row(Vec<Option<String>>);

impl RowValues for Row {
    fn get(&self, column: usize) -> Datum<'_> {
        match self.0.get(column) {
            Some(Some(s)) => Datum::Text(s),
            Some(None) => Datum::Null,
            None => Datum::Absent,
        }
    }
}

fn row(values: &[Option<&str>]) -> Row {
    Row(values.iter().map(|v| v.map(str::to_owned)).collect())
}

struct Change {
    table: usize,
    op: Op,
    old: Option<Row>,
    new: Option<Row>,
}

fn stream(n: usize) -> Vec<Change> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = (i * 7919 % 100_000).to_string();
        let cat = (i % 40).to_string();
        let c = match i % 10 {
            // products: insert, price update, category move, delete
            0 => Change {
                table: 0,
                op: Op::Insert,
                old: None,
                new: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("9.90"),
                    Some("12"),
                ])),
            },
            1 => Change {
                table: 0,
                op: Op::Update,
                old: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("9.90"),
                    Some("12"),
                ])),
                new: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("8.90"),
                    Some("12"),
                ])),
            },
            2 => Change {
                table: 0,
                op: Op::Update,
                old: Some(row(&[
                    Some(&id),
                    Some("3"),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("9.90"),
                    Some("12"),
                ])),
                new: Some(row(&[
                    Some(&id),
                    Some("4"),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("9.90"),
                    Some("12"),
                ])),
            },
            3 => Change {
                table: 0,
                op: Op::Delete,
                // REPLICA IDENTITY FULL: the whole old row.
                old: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("blue-mug"),
                    Some("Blue mug"),
                    Some("9.90"),
                    Some("0"),
                ])),
                new: None,
            },
            // orders: insert, status change to paid, touch without change
            4 => Change {
                table: 2,
                op: Op::Insert,
                old: None,
                new: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("pending"),
                    Some("42.00"),
                ])),
            },
            5 => Change {
                table: 2,
                op: Op::Update,
                old: Some(row(&[
                    Some(&id),
                    Some(&cat),
                    Some("pending"),
                    Some("42.00"),
                ])),
                new: Some(row(&[Some(&id), Some(&cat), Some("paid"), Some("42.00")])),
            },
            6 => Change {
                table: 2,
                op: Op::Update,
                old: Some(row(&[Some(&id), Some(&cat), Some("paid"), Some("42.00")])),
                new: Some(row(&[Some(&id), Some(&cat), Some("paid"), Some("42.00")])),
            },
            // users: profile update without an old tuple, soft delete
            7 => Change {
                table: 3,
                op: Op::Update,
                old: None,
                new: Some(row(&[
                    Some(&id),
                    Some("someone@example.com"),
                    Some("Some One"),
                    None,
                ])),
            },
            8 => Change {
                table: 3,
                op: Op::Update,
                old: Some(row(&[
                    Some(&id),
                    Some("someone@example.com"),
                    Some("Some One"),
                    None,
                ])),
                new: Some(row(&[
                    Some(&id),
                    Some("someone@example.com"),
                    Some("Some One"),
                    Some("2026-01-01"),
                ])),
            },
            // order items and categories
            _ if i % 20 == 9 => Change {
                table: 4,
                op: Op::Insert,
                old: None,
                new: Some(row(&[Some(&id), Some(&cat), Some("17"), Some("2")])),
            },
            _ => Change {
                table: 1,
                op: Op::Update,
                old: Some(row(&[Some(&cat), None, Some("mugs"), Some("Mugs")])),
                new: Some(row(&[Some(&cat), None, Some("mugs"), Some("Mugs & cups")])),
            },
        };
        out.push(c);
    }
    out
}

fn tables(set: &RuleSet) -> Vec<BoundTable> {
    let bind = |table: &str, cols: &[&str]| {
        set.bind("public", table, cols)
            .expect("binds")
            .expect("has rules")
    };
    vec![
        bind(
            "products",
            &["id", "category_id", "slug", "name", "price", "stock"],
        ),
        bind("categories", &["id", "parent_id", "slug", "name"]),
        bind("orders", &["id", "user_id", "status", "total"]),
        bind("users", &["id", "email", "name", "deleted_at"]),
        bind("order_items", &["id", "order_id", "product_id", "quantity"]),
    ]
}

fn evaluate(c: &mut Criterion) {
    let set = RuleSet::from_yaml(RULES, "bench.yaml").expect("bench rules load");
    assert_eq!(set.rules().len(), 10);
    let tables = tables(&set);
    let changes = stream(10_000);
    let mut budget = TxBudget::default();
    let mut out = Invalidations::default();

    let run = |budget: &mut TxBudget, out: &mut Invalidations| {
        let mut total = Outcome::default();
        let mut produced = 0;
        for tx in changes.chunks(TX_CHANGES) {
            budget.reset();
            out.clear();
            for ch in tx {
                total += tables[ch.table].evaluate(
                    ch.op,
                    ch.old.as_ref().map(|r| r as &dyn RowValues),
                    ch.new.as_ref().map(|r| r as &dyn RowValues),
                    budget,
                    out,
                );
            }
            produced += out.len();
        }
        (total, produced)
    };
    let (total, produced) = run(&mut budget, &mut out);
    assert_eq!(total.escalated, 0);
    assert!(total.matched_rules as usize > changes.len() / 2);
    eprintln!(
        "{} changes -> {} rules fired, {} strings out, {} skipped for NULL",
        changes.len(),
        total.matched_rules,
        produced,
        total.null
    );

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(changes.len() as u64));
    group.bench_function("evaluate_mixed_10_rules", |b| {
        b.iter(|| black_box(run(&mut budget, &mut out)))
    });
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
