//! Evaluation through the public API: rules text in, strings out.

use crate::{BoundTable, Datum, Invalidations, Op, Outcome, RowValues, RuleSet, TxBudget};

const COLS: &[&str] = &["id", "category_id", "status", "name", "body"];

/// Binds a rules file (without its `version:` line) to `public.t` with
/// [`COLS`].
fn table(yaml: &str) -> BoundTable {
    let src = format!("version: 1\n{yaml}");
    let set = RuleSet::from_yaml(&src, "rules.yaml").unwrap_or_else(|e| panic!("{e}\n{src}"));
    set.bind("public", "t", COLS)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a rule matches public.t")
}

fn row<'a>(values: &[Option<&'a str>]) -> Vec<Datum<'a>> {
    values
        .iter()
        .map(|v| v.map_or(Datum::Null, Datum::Text))
        .collect()
}

fn eval(
    t: &BoundTable,
    op: Op,
    old: Option<&Vec<Datum<'_>>>,
    new: Option<&Vec<Datum<'_>>>,
) -> (Invalidations, Outcome) {
    let mut budget = TxBudget::default();
    eval_with(t, op, old, new, &mut budget)
}

fn eval_with(
    t: &BoundTable,
    op: Op,
    old: Option<&Vec<Datum<'_>>>,
    new: Option<&Vec<Datum<'_>>>,
    budget: &mut TxBudget,
) -> (Invalidations, Outcome) {
    let mut out = Invalidations::default();
    let outcome = t.evaluate(
        op,
        old.map(|r| r as &dyn RowValues),
        new.map(|r| r as &dyn RowValues),
        budget,
        &mut out,
    );
    (out, outcome)
}

const PRODUCTS: &str = r#"rules:
  - table: t
    on: [insert, update, delete]
    keys: ["product:{id}", "product:{id}:detail"]
    tags: ["category:{category_id}", "products"]
    patterns: ["product-list:*"]
"#;

#[test]
fn insert_update_delete() {
    let t = table(PRODUCTS);
    let a = row(&[Some("42"), Some("3"), Some("new"), Some("mug"), None]);
    let mut b = a.clone();
    b[1] = Datum::Text("4");

    let (out, o) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(out.keys, ["product:42", "product:42:detail"]);
    assert_eq!(out.tags, ["products", "category:3"]);
    assert_eq!(out.patterns, ["product-list:*"]);
    assert_eq!(
        o,
        Outcome {
            matched_rules: 1,
            ..Outcome::default()
        }
    );

    // A product moved to another category invalidates both.
    let (out, _) = eval(&t, Op::Update, Some(&a), Some(&b));
    assert_eq!(
        out.keys,
        ["product:42", "product:42:detail"],
        "same id: once"
    );
    assert_eq!(out.tags, ["products", "category:3", "category:4"]);

    let (out, _) = eval(&t, Op::Delete, Some(&b), None);
    assert_eq!(out.keys, ["product:42", "product:42:detail"]);
    assert_eq!(out.tags, ["products", "category:4"]);
    assert_eq!(out.len(), 5);
}

#[test]
fn update_without_old_tuple_uses_new_values() {
    let t = table(PRODUCTS);
    let b = row(&[Some("42"), Some("4"), Some("new"), Some("mug"), None]);
    let (out, o) = eval(&t, Op::Update, None, Some(&b));
    assert_eq!(out.tags, ["products", "category:4"]);
    assert_eq!(o.missing, 0, "a missing old tuple is normal for `{{col}}`");
}

#[test]
fn key_only_old_tuple() {
    // Replica identity default, key changed: the old tuple holds the key only.
    let t = table("rules:\n  - table: t\n    keys: [\"p:{id}:c:{category_id}\"]\n    tags: [\"was:{old.category_id}\"]\n");
    let old = vec![
        Datum::Text("1"),
        Datum::Absent,
        Datum::Absent,
        Datum::Absent,
        Datum::Absent,
    ];
    let new = row(&[Some("2"), Some("7"), None, None, None]);
    let (out, o) = eval(&t, Op::Update, Some(&old), Some(&new));
    // The old row's key uses the old id and, lacking it, the new category.
    assert_eq!(out.keys, ["p:1:c:7", "p:2:c:7"]);
    assert!(out.tags.is_empty());
    assert_eq!(o.missing, 1, "{{old.category_id}} did not arrive");
}

#[test]
fn pinned_sides() {
    let t = table(
        "rules:\n  - table: t\n    tags: [\"c:{old.category_id}\", \"c:{new.category_id}\", \"move:{old.category_id}>{new.category_id}\"]\n",
    );
    let a = row(&[Some("1"), Some("3"), None, None, None]);
    let b = row(&[Some("1"), Some("4"), None, None, None]);
    let (out, o) = eval(&t, Op::Update, Some(&a), Some(&b));
    assert_eq!(out.tags, ["c:3", "c:4", "move:3>4"]);
    assert_eq!(o.missing, 0);
    // Sides the operation lacks are skipped without counting.
    let (out, o) = eval(&t, Op::Insert, None, Some(&b));
    assert_eq!(out.tags, ["c:4"]);
    assert_eq!((o.missing, o.null), (0, 0));
    let (out, o) = eval(&t, Op::Delete, Some(&a), None);
    assert_eq!(out.tags, ["c:3"]);
    assert_eq!((o.missing, o.null), (0, 0));
}

#[test]
fn several_placeholders_render_old_row_and_new_row() {
    let t = table("rules:\n  - table: t\n    keys: [\"u:{category_id}:s:{status}\"]\n");
    let a = row(&[Some("1"), Some("3"), Some("pending"), None, None]);
    let b = row(&[Some("1"), Some("4"), Some("paid"), None, None]);
    let (out, _) = eval(&t, Op::Update, Some(&a), Some(&b));
    assert_eq!(out.keys, ["u:3:s:pending", "u:4:s:paid"]);
}

#[test]
fn prefixes_apply_to_keys_and_patterns_not_tags() {
    let t = table(
        "prefix: \"app:\"\nrules:\n  - table: t\n    prefix: \"shop:\"\n    keys: [\"p:{id}\"]\n    tags: [\"c:{category_id}\"]\n    patterns: [\"l:{id}:*\"]\n",
    );
    let a = row(&[Some("1"), Some("3"), None, None, None]);
    let (out, _) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(out.keys, ["app:shop:p:1"]);
    assert_eq!(out.tags, ["c:3"]);
    assert_eq!(out.patterns, ["app:shop:l:1:*"]);
}

#[test]
fn row_values_cannot_widen_patterns() {
    let t = table("prefix: \"a?\"\nrules:\n  - table: t\n    patterns: [\"by-name:{name}:*\", \"exact:{name}\"]\n");
    let a = row(&[Some("1"), None, None, Some(r"*[x]?\"), None]);
    let (out, _) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(
        out.patterns,
        [r"a\?by-name:\*\[x\]\?\\:*", r"a\?exact:\*\[x\]\?\\"]
    );
}

#[test]
fn hash_modifier() {
    let t =
        table("rules:\n  - table: t\n    keys: [\"doc:{body:hash}\", \"doc:{new.body:hash}:v\"]\n");
    let body = "a long document ".repeat(100);
    let a = row(&[Some("1"), None, None, None, Some(&body)]);
    let (out, _) = eval(&t, Op::Insert, None, Some(&a));
    let h = crate::hash_value(&body);
    assert_eq!(out.keys, [format!("doc:{h}"), format!("doc:{h}:v")]);
}

#[test]
fn long_keys_hash_or_refuse() {
    let rules =
        "max_key_bytes: 32\nrules:\n  - table: t\n    prefix: \"p:\"\n    keys: [\"n:{name}\"]\n";
    let long = "n".repeat(40);
    let a = row(&[Some("1"), None, None, Some(&long), None]);
    let short = row(&[Some("1"), None, None, Some("ok"), None]);

    let t = table(rules);
    let (out, o) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(
        out.keys,
        [format!("p:#{}", crate::hash_value(&format!("n:{long}")))]
    );
    assert!(out.keys[0].len() <= 32);
    assert_eq!((o.refused, o.hashed), (0, 1));

    let t = table(&format!("on_long_key: refuse\n{rules}"));
    let (out, o) = eval(&t, Op::Insert, None, Some(&a));
    assert!(out.keys.is_empty());
    assert_eq!(o.refused, 1);
    let (out, _) = eval(&t, Op::Insert, None, Some(&short));
    assert_eq!(out.keys, ["p:n:ok"]);
}

#[test]
fn long_tags_follow_the_long_key_policy() {
    let rules =
        "max_key_bytes: 32\nrules:\n  - table: t\n    tags: [\"n:{name}\", \"c:{category_id}\"]\n";
    let long = "n".repeat(40);
    let a = row(&[Some("1"), Some("3"), None, Some(&long), None]);

    let (out, o) = eval(&table(rules), Op::Insert, None, Some(&a));
    assert_eq!(
        out.tags,
        [
            format!("#{}", crate::hash_value(&format!("n:{long}"))),
            "c:3".to_owned()
        ]
    );
    assert_eq!((o.refused, o.hashed), (0, 1));

    let (out, o) = eval(
        &table(&format!("on_long_key: refuse\n{rules}")),
        Op::Insert,
        None,
        Some(&a),
    );
    assert_eq!(out.tags, ["c:3"]);
    assert_eq!(o.refused, 1);
}

#[test]
fn a_pattern_too_long_is_replaced_by_its_on_oversize_cover() {
    let rule = |on_oversize: &str| {
        format!(
            "max_key_bytes: 48\nprefix: \"app:\"\n{on_oversize}rules:\n  - table: t\n    keys: [\"p:{{id}}\"]\n    tags: [\"products\"]\n    patterns: [\"list:{{name}}:*\", \"c:{{category_id}}:*\"]\n  - table: t\n    on: [delete]\n    keys: [\"gone:{{id}}\"]\n"
        )
    };
    let long = "[*]".repeat(100);
    let a = row(&[Some("1"), Some("3"), None, Some(&long), None]);

    // The default: the template's glob, which matches whatever the long value would have.
    let (out, o) = eval(&table(&rule("")), Op::Insert, None, Some(&a));
    assert_eq!(out.patterns, ["app:list:*:*", "app:c:3:*"]);
    assert_eq!(out.keys, ["app:p:1"]);
    assert_eq!((o.oversize, o.refused), (1, 0));

    let (out, o) = eval(
        &table(&rule("on_oversize: fallback\n")),
        Op::Insert,
        None,
        Some(&a),
    );
    assert_eq!(out.patterns, ["app:c:3:*"]);
    assert_eq!(out.tags, ["products"], "the constant tag, once");
    assert_eq!(o.oversize, 1);

    // The table: every rule naming it, including the delete rule's keys.
    let (out, _) = eval(
        &table(&rule("on_oversize: table\n")),
        Op::Insert,
        None,
        Some(&a),
    );
    assert_eq!(out.keys, ["app:p:1"]);
    assert_eq!(out.tags, ["products"]);
    assert_eq!(
        out.patterns,
        [
            "app:p:*",
            "app:list:*:*",
            "app:c:*:*",
            "app:#*",
            "app:gone:*",
            "app:c:3:*"
        ]
    );

    // A short value renders as always, escaped.
    let b = row(&[Some("1"), Some("3"), None, Some("a*"), None]);
    let (out, o) = eval(&table(&rule("")), Op::Insert, None, Some(&b));
    assert_eq!(out.patterns, ["app:list:a\\*:*", "app:c:3:*"]);
    assert_eq!(o.oversize, 0);
}

#[test]
fn on_oversize_that_cannot_cover_is_a_load_error() {
    let load = |yaml: &str| RuleSet::from_yaml(&format!("version: 1\n{yaml}"), "rules.yaml");
    let err =
        load("rules:\n  - table: t\n    on_oversize: fallback\n    patterns: [\"l:{name}:*\"]\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("no tag or pattern without placeholders"),
        "{err}"
    );
    let err = load(
        "max_key_bytes: 18\nrules:\n  - table: t\n    patterns: [\"a-long-list-name:{name}:*\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("its glob"), "{err}");
    load("rules:\n  - table: t\n    on_oversize: fallback\n    tags: [all]\n    patterns: [\"l:{name}:*\"]\n")
        .unwrap();
}

#[test]
fn nulls_skip_templates_and_count() {
    let t = table(PRODUCTS);
    let a = row(&[Some("42"), None, None, None, None]);
    let (out, o) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(out.tags, ["products"], "no `category:` tag");
    assert_eq!(o.null, 1);
    // NULL to a value: the old rendering is skipped, the new one goes out.
    let b = row(&[Some("42"), Some("5"), None, None, None]);
    let (out, o) = eval(&t, Op::Update, Some(&a), Some(&b));
    assert_eq!(out.tags, ["products", "category:5"]);
    assert_eq!((o.null, o.missing), (1, 0));
}

#[test]
fn missing_values_skip_templates_and_keep_constants() {
    let t = table(
        "rules:\n  - table: t\n    keys: [\"doc:{body:hash}\", \"p:{id}\"]\n    tags: [\"docs\"]\n",
    );
    // Unchanged TOAST without an old tuple: the body is unknown.
    let new = vec![
        Datum::Text("1"),
        Datum::Null,
        Datum::Null,
        Datum::Null,
        Datum::Unchanged,
    ];
    let (out, o) = eval(&t, Op::Update, None, Some(&new));
    assert_eq!(out.keys, ["p:1"]);
    assert_eq!(out.tags, ["docs"]);
    assert_eq!(o.missing, 1);
    // With the old tuple (replica identity full), unchanged means equal to old.
    let old = vec![
        Datum::Text("1"),
        Datum::Null,
        Datum::Null,
        Datum::Null,
        Datum::Text("text"),
    ];
    let (out, o) = eval(&t, Op::Update, Some(&old), Some(&new));
    assert_eq!(
        out.keys,
        [
            format!("doc:{}", crate::hash_value("text")),
            "p:1".to_owned()
        ]
    );
    assert_eq!(o.missing, 0);
}

#[test]
fn operations_filter_rules() {
    let t = table(
        "rules:\n  - table: t\n    on: [insert]\n    tags: [\"ins\"]\n  - table: t\n    on: [delete]\n    tags: [\"del\"]\n",
    );
    let a = row(&[Some("1"), None, None, None, None]);
    let (out, o) = eval(&t, Op::Insert, None, Some(&a));
    assert_eq!(
        (out.tags.as_slice(), o.matched_rules),
        (&["ins".to_owned()][..], 1)
    );
    let (out, o) = eval(&t, Op::Update, Some(&a), Some(&a));
    assert!(out.is_empty());
    assert_eq!(o.matched_rules, 0);
}

#[test]
fn one_change_never_repeats_a_string() {
    let t = table(
        "rules:\n  - table: t\n    keys: [\"p:{id}\", \"p:{new.id}\"]\n    tags: [\"all\"]\n  - table: t\n    keys: [\"p:{id}\"]\n    tags: [\"all\"]\n",
    );
    let a = row(&[Some("1"), None, None, None, None]);
    let mut out = Invalidations::default();
    out.keys.push("p:1".to_owned()); // from an earlier change: may repeat
    let mut budget = TxBudget::default();
    let o = t.evaluate(Op::Update, Some(&a), Some(&a), &mut budget, &mut out);
    assert_eq!(o.matched_rules, 2);
    assert_eq!(out.keys, ["p:1", "p:1"]);
    assert_eq!(out.tags, ["all"]);
}

#[test]
fn constants_go_out_once_per_transaction() {
    let t = table(PRODUCTS);
    let a = row(&[Some("1"), Some("3"), None, None, None]);
    let b = row(&[Some("2"), Some("3"), None, None, None]);
    let mut budget = TxBudget::default();
    let (first, _) = eval_with(&t, Op::Insert, None, Some(&a), &mut budget);
    let (second, o) = eval_with(&t, Op::Insert, None, Some(&b), &mut budget);
    assert_eq!(first.tags, ["products", "category:3"]);
    assert_eq!(second.tags, ["category:3"]);
    assert!(second.patterns.is_empty());
    assert_eq!(o.matched_rules, 1);
    budget.reset();
    let (third, _) = eval_with(&t, Op::Insert, None, Some(&b), &mut budget);
    assert_eq!(third.patterns, ["product-list:*"]);
}

#[test]
fn budget_escalates_to_constants() {
    let t = table(
        "max_keys_per_tx: 3\nrules:\n  - table: t\n    keys: [\"p:{id}\"]\n    tags: [\"c:{category_id}\", \"products\"]\n",
    );
    let mut budget = TxBudget::default();
    let mut out = Invalidations::default();
    let mut total = Outcome::default();
    for id in 0..10 {
        let id = id.to_string();
        let r = row(&[Some(&id), Some("7"), None, None, None]);
        total += t.evaluate(Op::Insert, None, Some(&r), &mut budget, &mut out);
    }
    // p:0, c:7, p:1 fit; the second change's c:7 is the fourth string:
    // escalation. The constant `products` went out with the first change.
    assert_eq!(out.keys, ["p:0", "p:1"]);
    assert_eq!(out.tags, ["products", "c:7"]);
    assert_eq!(total.escalated, 1);
    assert_eq!(total.matched_rules, 10);
    assert!(budget.is_escalated(0));
    assert!(!budget.is_escalated(1));

    budget.reset();
    out.clear();
    let r = row(&[Some("99"), Some("7"), None, None, None]);
    let o = t.evaluate(Op::Insert, None, Some(&r), &mut budget, &mut out);
    assert_eq!(o.escalated, 0);
    assert_eq!(out.keys, ["p:99"]);
}

#[test]
fn per_rule_budget_overrides_and_no_fallback_means_no_limit() {
    let t = table(
        "max_keys_per_tx: 1\nrules:\n  - table: t\n    keys: [\"a:{id}\"]\n  - table: t\n    max_keys_per_tx: 2\n    keys: [\"b:{id}\"]\n    tags: [\"bs\"]\n",
    );
    let mut budget = TxBudget::default();
    let mut out = Invalidations::default();
    let mut total = Outcome::default();
    for id in 0..5 {
        let id = id.to_string();
        let r = row(&[Some(&id), None, None, None, None]);
        total += t.evaluate(Op::Insert, None, Some(&r), &mut budget, &mut out);
    }
    let a = out.keys.iter().filter(|k| k.starts_with("a:")).count();
    let b = out.keys.iter().filter(|k| k.starts_with("b:")).count();
    assert_eq!((a, b), (5, 2), "rule 1 has no fallback, rule 2 stops at 2");
    assert_eq!(out.tags, ["bs"]);
    assert_eq!(total.escalated, 1);
}

#[test]
fn truncate_yields_constants_only() {
    let t = table(
        "rules:\n  - table: t\n    on: [insert, truncate]\n    keys: [\"p:{id}\", \"count\"]\n    tags: [\"c:{category_id}\", \"products\"]\n    patterns: [\"l:{id}:*\", \"list:*\"]\n    when: { new: { status: { eq: never } } }\n  - table: t\n    keys: [\"q:{id}\"]\n  - table: t\n    on: [insert]\n    tags: [\"not-on-truncate\"]\n",
    );
    let mut out = Invalidations::default();
    let o = t.truncate(&mut out);
    assert_eq!(out.keys, ["count"]);
    assert_eq!(out.tags, ["products"]);
    assert_eq!(out.patterns, ["list:*"]);
    // Rule 2 (default `on`) has only a template: it cannot cover a TRUNCATE.
    assert_eq!(
        o,
        Outcome {
            matched_rules: 2,
            missing: 1,
            ..Outcome::default()
        }
    );
    let mut again = Invalidations::default();
    let o2 = t.evaluate(
        Op::Truncate,
        None,
        None,
        &mut TxBudget::default(),
        &mut again,
    );
    assert_eq!((again, o2), (out, o));
}

#[test]
fn when_changed() {
    let t = table(
        "rules:\n  - table: t\n    when: { changed: [status, name] }\n    keys: [\"p:{id}\"]\n",
    );
    let a = row(&[Some("1"), Some("3"), Some("new"), Some("mug"), None]);
    let mut b = a.clone();
    b[1] = Datum::Text("9");
    let (out, o) = eval(&t, Op::Update, Some(&a), Some(&b));
    assert!(out.is_empty(), "only category changed");
    assert_eq!(o.matched_rules, 0);
    b[2] = Datum::Text("paid");
    assert_eq!(eval(&t, Op::Update, Some(&a), Some(&b)).0.keys, ["p:1"]);
    assert_eq!(eval(&t, Op::Insert, None, Some(&a)).0.keys, ["p:1"]);
    assert_eq!(eval(&t, Op::Delete, Some(&a), None).0.keys, ["p:1"]);
    // Without old values the change cannot be ruled out: fire, count missing.
    let (out, o) = eval(&t, Op::Update, None, Some(&a));
    assert_eq!(out.keys, ["p:1"]);
    assert_eq!((o.matched_rules, o.missing), (1, 1));
}

#[test]
fn when_comparisons() {
    let t = |when: &str| {
        table(&format!(
            "rules:\n  - table: t\n    when: {when}\n    tags: [\"hit\"]\n"
        ))
    };
    let paid = row(&[Some("1"), Some("3"), Some("paid"), None, None]);
    let draft = row(&[Some("1"), Some("3"), Some("draft"), Some("x"), None]);
    let fires = |when: &str, op: Op, old: Option<&Vec<Datum<'_>>>, new: Option<&Vec<Datum<'_>>>| {
        let (out, o) = eval(&t(when), op, old, new);
        assert_eq!(out.is_empty(), o.matched_rules == 0);
        o.matched_rules == 1
    };
    let up = Op::Update;
    assert!(fires(
        "{ new: { status: { eq: paid } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ new: { status: { eq: paid } } }",
        up,
        Some(&paid),
        Some(&draft)
    ));
    assert!(fires(
        "{ old: { status: { ne: paid } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ old: { status: { ne: draft } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(fires(
        "{ new: { status: { in: [paid, shipped] } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ new: { status: { not_in: [paid] } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(fires(
        "{ new: { name: null } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ new: { name: not_null } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(fires(
        "{ old: { name: not_null } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    // NULL equals nothing.
    assert!(fires(
        "{ new: { name: { ne: x } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ new: { name: { eq: x } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    // Combinators, and several keys meaning all.
    let soft_delete = "{ new: { name: null }, old: { name: not_null } }";
    assert!(fires(soft_delete, up, Some(&draft), Some(&paid)));
    assert!(!fires(soft_delete, up, Some(&paid), Some(&draft)));
    assert!(fires(
        "{ any: [ { new: { status: { eq: x } } }, { new: { status: { eq: paid } } } ] }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ all: [ { new: { status: { eq: paid } } }, { old: { status: { eq: paid } } } ] }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(fires(
        "{ not: { new: { status: { eq: draft } } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
    assert!(!fires(
        "{ not: { new: { status: { eq: paid } } } }",
        up,
        Some(&draft),
        Some(&paid)
    ));
}

#[test]
fn undecidable_conditions_fire() {
    let t = table("rules:\n  - table: t\n    when: { new: { status: { eq: paid } } }\n    keys: [\"o:{id}\"]\n");
    let draft = row(&[Some("1"), Some("3"), Some("draft"), None, None]);
    // A delete has no new row: unknown, fires, not a missing value.
    let (out, o) = eval(&t, Op::Delete, Some(&draft), None);
    assert_eq!(out.keys, ["o:1"]);
    assert_eq!((o.matched_rules, o.missing), (1, 0));
    // A value that did not arrive: unknown, fires, counted.
    let toast = vec![
        Datum::Text("1"),
        Datum::Null,
        Datum::Unchanged,
        Datum::Null,
        Datum::Null,
    ];
    let (out, o) = eval(&t, Op::Update, None, Some(&toast));
    assert_eq!(out.keys, ["o:1"]);
    assert_eq!((o.matched_rules, o.missing), (1, 1));
}

#[test]
fn needs_old_values_lists_old_reads() {
    let t = table(
        r#"rules:
  - table: t
    on: [insert]
    keys: ["i:{name}"]
  - table: t
    on: [update]
    when: { changed: [body], new: { status: { eq: paid } } }
    keys: ["u:{new.id}", "c:{category_id}"]
  - table: t
    on: [delete]
    when: { changed: [name], old: { status: not_null } }
    keys: ["d:{id}"]
"#,
    );
    assert_eq!(
        t.needs_old_values(),
        ["id", "category_id", "status", "body"]
    );
}

#[test]
fn used_columns_lists_every_read() {
    let t = table(
        r#"rules:
  - table: t
    on: [insert]
    keys: ["i:{new.name}", "const"]
  - table: t
    on: [update]
    when: { any: [ { changed: [body] }, { not: { old: { status: { eq: paid } } } } ] }
    tags: ["c:{old.category_id:hash}"]
"#,
    );
    // id (index 0) is read by no rule.
    assert_eq!(t.used_columns(), [1, 2, 3, 4]);
    let constant = table(
        r#"rules:
  - table: t
    tags: ["all"]
"#,
    );
    assert!(constant.used_columns().is_empty());
}

#[test]
fn outcome_adds_up() {
    let mut a = Outcome {
        matched_rules: 1,
        missing: 2,
        null: 3,
        escalated: 4,
        refused: 5,
        oversize: 6,
        unreadable_at: 7,
        hashed: 8,
    };
    a += a;
    assert_eq!(
        a,
        Outcome {
            matched_rules: 2,
            missing: 4,
            null: 6,
            escalated: 8,
            refused: 10,
            oversize: 12,
            unreadable_at: 14,
            hashed: 16,
        }
    );
}

#[test]
fn invalidations_helpers() {
    let mut a = Invalidations::new();
    assert!(a.is_empty());
    a.keys.push("k".into());
    let b = Invalidations {
        keys: vec!["k2".into()],
        tags: vec!["t".into()],
        patterns: vec!["p*".into()],
        ..Invalidations::default()
    };
    a.extend(b);
    assert_eq!(a.keys, ["k", "k2"]);
    assert_eq!(a.len(), 4);
    a.clear();
    assert!(a.is_empty());
}

/// Binds to `public.t` as the replication stream describes it: `columns`,
/// with the old values of those flagged in `old_sent` sent.
fn lenient(yaml: &str, columns: &[&str], old_sent: &[bool]) -> BoundTable {
    let set = RuleSet::from_yaml(&format!("version: 1\n{yaml}"), "rules.yaml").unwrap();
    set.bind_lenient("public", "t", columns, old_sent)
        .expect("a rule matches public.t")
}

#[test]
fn a_column_the_description_lacks_falls_back_to_globs() {
    let yaml = "on_long_key: refuse\nrules:\n  - table: t\n    keys: [\"p:{id}\", \"p:{id}:{aa}\"]\n    patterns: [\"list:{aa}:*\"]\n";
    // Strict binding refuses; that is what `walbust check` and reloads say.
    let set = RuleSet::from_yaml(&format!("version: 1\n{yaml}"), "rules.yaml").unwrap();
    assert!(set.bind("public", "t", &["id", "a3"]).is_err());
    let t = lenient(yaml, &["id", "a3"], &[true, true]);
    let d = t.degraded();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].missing_columns.as_slice(), d[0].escalates),
        (&["aa".to_owned()][..], false)
    );
    assert_eq!(d[0].fallback, ["p:*:*", "list:*:*"]);
    assert!(d[0].old_not_sent.is_empty() && d[0].uncovered.is_empty());

    let a = vec![Datum::Text("1"), Datum::Text("x")];
    let b = vec![Datum::Text("2"), Datum::Text("y")];
    let mut budget = TxBudget::default();
    let (out, o) = eval_with(&t, Op::Update, Some(&a), Some(&a), &mut budget);
    assert_eq!(out.keys, ["p:1"], "what needs no missing column renders");
    assert_eq!(out.patterns, ["p:*:*", "list:*:*"]);
    assert_eq!(o.missing, 2);
    // Once per transaction: the globs cover every row.
    let (out, o) = eval_with(&t, Op::Insert, None, Some(&b), &mut budget);
    assert_eq!(
        (out.keys.as_slice(), out.patterns.len()),
        (&["p:2".to_owned()][..], 0)
    );
    assert_eq!(o.missing, 2);
}

#[test]
fn a_rule_with_constants_escalates_and_a_tag_template_stays_uncovered() {
    let t = lenient(
        "rules:\n  - table: t\n    keys: [\"p:{aa}\"]\n    tags: [\"products\"]\n  - table: t\n    tags: [\"c:{aa}\"]\n    when: { changed: [aa] }\n",
        &["id"],
        &[true],
    );
    let d = t.degraded();
    assert_eq!(d.len(), 2);
    assert!(d[0].escalates && d[0].fallback.is_empty());
    assert!(!d[1].escalates);
    assert_eq!(d[1].uncovered, ["c:{aa}"]);
    let a = vec![Datum::Text("1")];
    let (out, o) = eval(&t, Op::Update, Some(&a), Some(&a));
    assert_eq!(out.tags, ["products"]);
    assert!(out.keys.is_empty());
    // The condition on the lacking column is unknown, so the rule fires.
    assert_eq!((o.matched_rules, o.missing), (2, 3));
}

#[test]
fn an_old_value_the_replica_identity_does_not_send_falls_back() {
    let yaml = "rules:\n  - table: t\n    keys: [\"fc:{cat}\", \"f:{id}\"]\n";
    let t = lenient(yaml, &["id", "cat"], &[true, false]);
    let d = t.degraded();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].old_not_sent, ["cat"]);
    assert_eq!(d[0].fallback, ["fc:*", "#*"], "hashed long keys too");
    // REPLICA IDENTITY DEFAULT: an update that keeps the key sends no old
    // tuple, and `cat` may have moved from 2 to 3.
    let new = vec![Datum::Text("1"), Datum::Text("3")];
    let (out, o) = eval(&t, Op::Update, None, Some(&new));
    assert_eq!(out.keys, ["fc:3", "f:1"]);
    assert_eq!(out.patterns, ["fc:*", "#*"]);
    assert_eq!(o.missing, 1);
    // Inserts read no old value: no fallback.
    let (out, o) = eval(&t, Op::Insert, None, Some(&new));
    assert!(out.patterns.is_empty());
    assert_eq!(o.missing, 0);
    // With every old value sent nothing is degraded.
    let full = lenient(yaml, &["id", "cat"], &[true, true]);
    assert!(full.degraded().is_empty());
    let (out, o) = eval(&full, Op::Update, None, Some(&new));
    assert_eq!((out.keys.len(), out.patterns.len(), o.missing), (2, 0, 0));
}

/// `at:` schedules the rule's whole output for the row (constants too) at
/// each timestamp; NULL and `infinity` schedule nothing, text that is no
/// timestamp is counted.
#[test]
fn at_schedules_the_rows_output_at_each_timestamp() {
    let t = table(
        r#"
prefix: "app:"
rules:
  - table: t
    keys: ["promotions:active", "item:{id}"]
    tags: ["category:{category_id}"]
    at: ["{status}", "{name}"]
"#,
    );
    let new = row(&[
        Some("1"),
        Some("3"),
        Some("1970-01-01 00:00:10"),
        Some("1970-01-01 00:00:20+00"),
        None,
    ]);
    let (out, outcome) = eval(&t, Op::Insert, None, Some(&new));
    assert_eq!(out.keys, ["app:promotions:active", "app:item:1"]);
    let dues: Vec<i64> = out.schedule.iter().map(|s| s.due_unix_micros).collect();
    assert_eq!(dues, [10_000_000, 20_000_000]);
    for s in &out.schedule {
        assert_eq!(s.keys, ["app:promotions:active", "app:item:1"]);
        assert_eq!(s.tags, ["category:3"]);
        assert!(s.refresh.is_empty());
    }
    assert_eq!(outcome.unreadable_at, 0);

    // The second row of the transaction still schedules the constant key.
    let mut budget = TxBudget::default();
    let _ = eval_with(&t, Op::Insert, None, Some(&new), &mut budget);
    let other = row(&[Some("2"), Some("3"), None, Some("soon"), None]);
    let (out, outcome) = eval_with(&t, Op::Insert, None, Some(&other), &mut budget);
    assert!(
        out.schedule.is_empty(),
        "NULL schedules nothing, junk is counted"
    );
    assert_eq!(outcome.unreadable_at, 1);
    let never = row(&[
        Some("2"),
        Some("3"),
        Some("infinity"),
        Some("1970-01-01 00:00:30"),
        None,
    ]);
    let (out, outcome) = eval_with(&t, Op::Insert, None, Some(&never), &mut budget);
    assert_eq!(outcome.unreadable_at, 0);
    assert_eq!(
        out.keys,
        ["app:item:2"],
        "constants went out with the first row"
    );
    assert_eq!(out.schedule.len(), 1);
    assert_eq!(
        out.schedule[0].keys,
        ["app:promotions:active", "app:item:2"]
    );
}

#[test]
fn at_on_update_reads_both_rows() {
    let t = table(
        r#"
rules:
  - table: t
    keys: ["item:{id}"]
    at: ["{status}"]
"#,
    );
    let old = row(&[Some("1"), None, Some("1970-01-01 00:00:10"), None, None]);
    let new = row(&[Some("1"), None, Some("1970-01-01 00:00:20"), None, None]);
    let (out, _) = eval(&t, Op::Update, Some(&old), Some(&new));
    let dues: Vec<i64> = out.schedule.iter().map(|s| s.due_unix_micros).collect();
    assert_eq!(dues, [10_000_000, 20_000_000]);
}

#[test]
fn refresh_lists_the_rules_keys() {
    let t = table(
        r#"
rules:
  - table: t
    keys: ["item:{id}", "home"]
    refresh: true
  - table: t
    keys: ["cold:{id}"]
"#,
    );
    let new = row(&[Some("7"), None, None, None, None]);
    let (out, _) = eval(&t, Op::Insert, None, Some(&new));
    assert_eq!(out.keys, ["home", "item:7", "cold:7"]);
    assert_eq!(out.refresh, ["home", "item:7"]);
    assert!(out.schedule.is_empty());
}

#[test]
fn at_and_refresh_are_checked_on_load() {
    for (yaml, want) in [
        (
            "keys: [\"k:{id}\"]\n    at: [\"due:{status}\"]",
            "must be one placeholder",
        ),
        (
            "keys: [\"k:{id}\"]\n    at: [\"{status:hash}\"]",
            "must be one placeholder",
        ),
        (
            "keys: [\"k:{id}\"]\n    at: [\"{status}\", \"{status}\"]",
            "duplicate at template",
        ),
        (
            "tags: [\"t\"]\n    refresh: true",
            "refresh: true needs keys",
        ),
        (
            "keys: [\"k\"]\n    on: [insert]\n    at: [\"{old.status}\"]",
            "at template",
        ),
    ] {
        let src = format!("version: 1\nrules:\n  - table: t\n    {yaml}\n");
        let err = RuleSet::from_yaml(&src, "rules.yaml")
            .expect_err(&src)
            .to_string();
        assert!(err.contains(want), "{err}\n{src}");
    }
    let src = "version: 1\nrules:\n  - table: t\n    keys: [\"k\"]\n    at: [\"{due}\"]\n";
    let set = RuleSet::from_yaml(src, "rules.yaml").unwrap();
    let err = set
        .bind("public", "t", COLS)
        .expect_err("no column due")
        .to_string();
    assert!(err.contains("in at template"), "{err}");
    assert_eq!(set.rules()[0].at, ["{due}"]);
    assert_eq!(set.columns_read("public", "t"), ["due"]);
}
