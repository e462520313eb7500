//! Loading and validation: what loads, what does not, and the exact text
//! users see.

use super::*;

fn load(src: &str) -> Result<RuleSet, RulesError> {
    RuleSet::from_yaml(src, "rules.yaml")
}

fn ok(src: &str) -> RuleSet {
    load(src).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn err(src: &str) -> String {
    match load(src) {
        Ok(_) => panic!("loaded:\n{src}"),
        Err(e) => e.to_string(),
    }
}

/// A one-rule file; `body` is the rule's fields, indented by 4.
fn rule(body: &str) -> String {
    format!("version: 1\nrules:\n  - table: public.orders\n{body}")
}

#[test]
fn minimal_rule_defaults() {
    let set = ok("version: 1\nrules:\n  - table: products\n    keys: [\"product:{id}\"]\n");
    assert_eq!(set.tables(), vec![TableName::new("public", "products")]);
    assert!(set.table_patterns().is_empty());
    assert_eq!(set.prefix(), "");
    assert_eq!(
        set.key_limit(),
        (DEFAULT_MAX_KEY_BYTES, LongKeyPolicy::Hash)
    );
    assert_eq!(set.origin(), "rules.yaml");
    let info = &set.rules()[0];
    assert_eq!(info.index, 0);
    assert_eq!(info.table, "products");
    assert_eq!((info.line, info.column), (3, 5));
    assert_eq!(info.on, Op::ALL.to_vec());
    assert!(!info.has_fallback);
}

#[test]
fn empty_rule_list_is_allowed_for_explicit_messages_only() {
    assert!(ok("version: 1\n").rules().is_empty());
    assert!(ok("version: 1\nrules: []\n").tables().is_empty());
}

#[test]
fn tables_and_globs_are_listed_once_in_order() {
    let set = ok(r#"version: 1
rules:
  - table: b.two
    tags: ["x"]
  - table: public.orders_*
    tags: ["x"]
  - table: one
    tags: ["x"]
  - table: b.two
    tags: ["y"]
"#);
    assert_eq!(
        set.tables(),
        vec![TableName::new("b", "two"), TableName::new("public", "one")]
    );
    assert_eq!(
        set.table_patterns(),
        vec![TableName::new("public", "orders_*")]
    );
    assert_eq!(set.rules().len(), 4);
    assert_eq!(set.rules()[3].line, 9);
}

#[test]
fn global_settings() {
    let set = ok("version: 1\nprefix: \"app:\"\nmax_key_bytes: 64\non_long_key: refuse\nmax_keys_per_tx: 5\n");
    assert_eq!(set.prefix(), "app:");
    assert_eq!(set.key_limit(), (64, LongKeyPolicy::Refuse));
}

#[test]
fn yaml_errors_carry_parser_positions() {
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    bogus: 1\n")),
        "rules.yaml:5:5: unknown field `bogus`, expected one of table, on, prefix, when, keys, tags, patterns, max_keys_per_tx, on_oversize, at, refresh"
    );
    assert_eq!(
        err(&rule("    on: [insert, upsert]\n    keys: [\"k\"]\n")),
        "rules.yaml:4:18: unknown variant `upsert`, expected one of insert, update, delete, truncate"
    );
    assert_eq!(
        err(&rule("    keys: [\"k\"\n")),
        "rules.yaml:4:11: unclosed bracket '['"
    );
    assert_eq!(
        err("rules: []\n"),
        "rules.yaml:1:1: missing field `version`"
    );
    assert_eq!(err(""), "rules.yaml:1:1: unexpected end of file");
    assert_eq!(err("version: 1\nsurprise: true\n").lines().count(), 1);
    assert!(
        err("version: 1\nsurprise: true\n").starts_with("rules.yaml:2:1: unknown field `surprise`")
    );
    let e = load("version: [\n").expect_err("bad");
    assert!(matches!(e, RulesError::Yaml { .. }));
    assert_eq!(
        e.position(),
        Some(Position {
            line: 1,
            column: 10
        })
    );
}

#[test]
fn condition_shape_errors() {
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: { nwe: { a: null } }\n")),
        "rules.yaml:5:13: unknown field `nwe`, expected one of changed, all, any, not, old, new"
    );
    assert_eq!(
        err(&rule(
            "    keys: [\"k\"]\n    when: { new: { a: { eqq: 1 } } }\n"
        )),
        "rules.yaml:5:25: unknown field `eqq`, expected one of eq, ne, in, not_in"
    );
    assert!(err(&rule(
        "    keys: [\"k\"]\n    when: { new: { a: { eq: 1, ne: 2 } } }\n"
    ))
    .ends_with(
        "a test is a mapping with exactly one of eq, ne, in, not_in (combine tests with all:)"
    ));
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: { new: { a: maybe } }\n")),
        "rules.yaml:5:20: invalid value: string \"maybe\", expected null, not_null, or a mapping with one of eq, ne, in, not_in"
    );
    assert!(err(&rule(
        "    keys: [\"k\"]\n    when: { changed: [a], changed: [b] }\n"
    ))
    .starts_with("rules.yaml:5:27: duplicate mapping key"));
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: {}\n")),
        "rules.yaml:5:11: rule 1 (public.orders): empty condition (expected changed, all, any, not, old or new)"
    );
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: { all: [] }\n")),
        "rules.yaml:5:13: rule 1 (public.orders): `all` lists no condition"
    );
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: { changed: [] }\n")),
        "rules.yaml:5:13: rule 1 (public.orders): `changed` lists no column"
    );
    assert_eq!(
        err(&rule(
            "    keys: [\"k\"]\n    when: { new: { s: { in: [] } } }\n"
        )),
        "rules.yaml:5:20: rule 1 (public.orders): empty list in the test of column \"s\""
    );
    assert_eq!(
        err(&rule("    keys: [\"k\"]\n    when: { not: { old: {} } }\n")),
        "rules.yaml:5:20: rule 1 (public.orders): comparison names no column"
    );
}

#[test]
fn conditions_compile() {
    let set = ok(&rule(
        r#"    keys: ["k:{id}"]
    when:
      changed: [status]
      new: { status: { in: [paid, "shipped"] }, total: not_null, note: null }
      any:
        - { old: { status: { ne: paid } } }
        - not: { new: { total: { eq: 0 } } }
        - all: [ { new: { x: { not_in: [1, 2.50, true] } } } ]
"#,
    ));
    let when = set.rules[0].when.as_ref().expect("when");
    let Cond::All(terms) = when else {
        panic!("implicit all: {when:?}")
    };
    // changed, three column tests, any.
    assert_eq!(terms.len(), 5);
    let Cond::Any(any) = &terms[4] else {
        panic!("any: {:?}", terms[4])
    };
    let Cond::All(all) = &any[2] else {
        panic!("all: {:?}", any[2])
    };
    let Cond::Compare { test, .. } = &all[0] else {
        panic!("compare")
    };
    // Plain scalars keep their text: numbers are not reformatted.
    assert_eq!(
        test,
        &Test::NotIn(vec!["1".into(), "2.50".into(), "true".into()])
    );
}

#[test]
fn validation_errors_point_at_the_rule() {
    assert_eq!(
        err("version: 2\n"),
        "rules.yaml:1:10: unsupported version 2 (this walbust reads version 1)"
    );
    assert_eq!(
        err(&rule("    on: [insert]\n")),
        "rules.yaml:3:5: rule 1 (public.orders): the rule has no keys, tags or patterns: it would invalidate nothing"
    );
    assert_eq!(
        err(&rule("    on: []\n    keys: [\"k\"]\n")),
        "rules.yaml:4:9: rule 1 (public.orders): `on` is empty (leave it out to react to every operation)"
    );
    assert_eq!(
        err(&rule(
            "    on: [insert, update, insert]\n    keys: [\"k\"]\n"
        )),
        "rules.yaml:4:26: rule 1 (public.orders): operation insert is listed twice in `on`"
    );
    assert_eq!(
        err(&rule("    keys: [\"order:{id}\", \"order:{id}\"]\n")),
        "rules.yaml:4:26: rule 1 (public.orders): duplicate key template \"order:{id}\""
    );
    assert_eq!(
        err("version: 1\nrules:\n  - table: a.b.c\n    tags: [x]\n"),
        "rules.yaml:3:12: rule 1 (a.b.c): table \"a.b.c\" is not `schema.table` or `table` (globs `*` and `?` allowed)"
    );
}

#[test]
fn template_errors_name_rule_and_position() {
    let src = r#"version: 1
rules:
  - table: public.products
    keys: ["product:{id}"]
  - table: public.users
    keys: ["user:{id}"]
  - table: public.orders
    on: [insert, update]
    keys: ["order:{id}",
           "order:{nwe.total}"]
"#;
    assert_eq!(
        err(src),
        "rules.yaml:10:12: rule 3 (public.orders): unknown placeholder {nwe.total}: a qualified column is written `old.col` or `new.col`"
    );
    assert_eq!(
        err(&rule("    tags: [\"a:{id\"]\n")),
        "rules.yaml:4:12: rule 1 (public.orders): unclosed placeholder in template \"a:{id\" (write `{{` for a literal brace)"
    );
    assert_eq!(
        err(&rule("    patterns: [\"\"]\n")),
        "rules.yaml:4:16: rule 1 (public.orders): empty template"
    );
}

#[test]
fn templates_that_can_never_render_are_errors() {
    assert_eq!(
        err(&rule("    on: [insert]\n    keys: [\"k:{old.id}\"]\n")),
        "rules.yaml:5:12: rule 1 (public.orders): key template \"k:{old.id}\" reads old values, but the rule reacts to neither update nor delete"
    );
    assert_eq!(
        err(&rule("    on: [delete]\n    tags: [\"k:{new.id}\"]\n")),
        "rules.yaml:5:12: rule 1 (public.orders): tag template \"k:{new.id}\" reads new values, but the rule reacts to neither insert nor update"
    );
    assert_eq!(
        err(&rule("    on: [insert, delete]\n    keys: [\"{old.a}>{new.a}\"]\n")),
        "rules.yaml:5:12: rule 1 (public.orders): key template \"{old.a}>{new.a}\" reads both old and new values, which only an update has, but the rule does not react to update"
    );
    assert_eq!(
        err(&rule("    on: [truncate]\n    tags: [\"orders\", \"o:{id}\"]\n")),
        "rules.yaml:5:22: rule 1 (public.orders): tag template \"o:{id}\" has placeholders, but the rule only reacts to truncate, which has no row"
    );
    // Mixed sides are fine wherever they can render.
    ok(&rule(
        "    on: [insert, delete]\n    tags: [\"c:{old.a}\", \"c:{new.a}\"]\n",
    ));
}

#[test]
fn truncate_needs_something_constant() {
    assert_eq!(
        err(&rule("    on: [insert, truncate]\n    keys: [\"order:{id}\"]\n")),
        "rules.yaml:4:9: rule 1 (public.orders): the rule reacts to truncate but has no tag or pattern without placeholders: TRUNCATE has no row values, so it would invalidate none of the rule's templates"
    );
    ok(&rule(
        "    on: [insert, truncate]\n    keys: [\"order:{id}\"]\n    tags: [\"orders\"]\n",
    ));
    ok(&rule("    on: [truncate]\n    keys: [\"orders:count\"]\n"));
    // Under the default `on`, it loads (and counts TRUNCATE as missing).
    ok(&rule("    keys: [\"order:{id}\"]\n"));
}

#[test]
fn prefixes_must_leave_room_for_keys() {
    assert_eq!(
        err("version: 1\nprefix: \"0123456789\"\nmax_key_bytes: 20\n"),
        "rules.yaml:3:16: key prefix \"0123456789\" leaves no room for keys within max_key_bytes 20 (needs at least 27)"
    );
    ok("version: 1\nprefix: \"0123456789\"\nmax_key_bytes: 20\non_long_key: refuse\n");
    assert_eq!(
        err("version: 1\nmax_key_bytes: 20\nrules:\n  - table: t\n    prefix: \"0123456789\"\n    keys: [\"{id}\"]\n"),
        "rules.yaml:5:13: rule 1 (t): key prefix \"0123456789\" leaves no room for keys within max_key_bytes 20 (needs at least 27)"
    );
    assert_eq!(
        err("version: 1\nmax_key_bytes: 0\n"),
        "rules.yaml:2:16: max_key_bytes must be between 1 and 65536"
    );
    assert_eq!(
        err("version: 1\nmax_key_bytes: 65537\n"),
        "rules.yaml:2:16: max_key_bytes must be between 1 and 65536"
    );
    ok("version: 1\nmax_key_bytes: 65536\n");
}

#[test]
fn constant_keys_obey_the_long_key_policy() {
    let long = "k".repeat(40);
    assert_eq!(
        err(&format!("version: 1\nmax_key_bytes: 32\non_long_key: refuse\nrules:\n  - table: t\n    keys: [\"{long}\"]\n")),
        format!("rules.yaml:6:12: rule 1 (t): key {long:?} is longer than max_key_bytes (32) and on_long_key is refuse")
    );
    let set = ok(&format!(
        "version: 1\nprefix: \"app:\"\nmax_key_bytes: 32\nrules:\n  - table: t\n    keys: [\"{long}\"]\n"
    ));
    assert_eq!(
        set.rules[0].const_keys,
        vec![format!("app:#{}", crate::hash_value(&long))]
    );
}

#[test]
fn constants_are_prefixed_and_escaped_once_at_load() {
    let set = ok(r#"version: 1
prefix: "a*p:"
rules:
  - table: t
    prefix: "s:"
    keys: ["home{{page}}"]
    tags: ["all-t"]
    patterns: ["list:*"]
"#);
    let r = &set.rules[0];
    assert_eq!(r.const_keys, vec!["a*p:s:home{page}"]);
    assert_eq!(r.const_tags, vec!["all-t"]);
    // The prefix is literal text, so it is escaped; the rule's `*` is not.
    assert_eq!(r.const_patterns, vec![r"a\*p:s:list:*"]);
    assert!(set.rules()[0].has_fallback);
}

#[test]
fn bind_resolves_columns_and_reports_unknown_ones() {
    let set = ok(r#"version: 1
rules:
  - table: public.orders
    keys: ["order:{id}"]
  - table: public.orders
    when: { new: { status: { eq: paid } } }
    keys: ["order:{id}:{totl}"]
"#);
    assert!(set
        .bind("public", "users", &["id"])
        .expect("no rule")
        .is_none());
    let e = set
        .bind("public", "orders", &["id", "status", "total"])
        .expect_err("totl");
    assert_eq!(
        e.to_string(),
        "rules.yaml:7:12: rule 2 (public.orders): column \"totl\" does not exist in table public.orders (in key template \"order:{id}:{totl}\")"
    );
    assert_eq!(e.rule().index, 1);
    assert_eq!(
        e.position(),
        Position {
            line: 7,
            column: 12
        }
    );
    assert_eq!(e.table(), &TableName::new("public", "orders"));
    assert_eq!(e.column_name(), "totl");
    let e = set
        .bind("public", "orders", &["id", "totl"])
        .expect_err("status");
    assert_eq!(
        e.to_string(),
        "rules.yaml:6:20: rule 2 (public.orders): column \"status\" does not exist in table public.orders (in when)"
    );
    let t = set
        .bind("public", "orders", &["id", "status", "totl"])
        .expect("binds")
        .expect("matches");
    assert_eq!(t.rule_indexes(), vec![0, 1]);
    assert_eq!(t.table(), &TableName::new("public", "orders"));
    assert_eq!(t.columns(), ["id", "status", "totl"]);
}

#[test]
fn glob_tables_bind_to_every_match() {
    let set = ok("version: 1\nrules:\n  - table: \"public.orders_*\"\n    tags: [\"orders\"]\n");
    assert!(set
        .bind("public", "orders_2025", &[])
        .expect("ok")
        .is_some());
    assert!(set.bind("public", "orders", &[]).expect("ok").is_none());
    assert!(set.bind("audit", "orders_2025", &[]).expect("ok").is_none());
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("walbust-rules-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rules.yaml");
    std::fs::write(
        &path,
        "version: 1\nrules:\n  - table: t\n    keys: [\"{nope\"]\n",
    )
    .expect("write");
    let e = RuleSet::load(&path).expect_err("bad template");
    assert!(e.to_string().starts_with(&format!(
        "{}:4:12: rule 1 (t): unclosed placeholder",
        path.display()
    )));
    std::fs::write(&path, "version: 1\n").expect("write");
    assert!(RuleSet::load(&path).is_ok());
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let e = RuleSet::load(&dir.join("absent.yaml")).expect_err("absent");
    assert!(matches!(e, RulesError::Read { .. }));
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(e.position(), None);
}

#[test]
fn explicit_messages_get_the_global_prefix() {
    let set = ok("version: 1\nprefix: \"app*:\"\nmax_key_bytes: 32\nrules: []\n");
    let inv = set
        .explicit(br#"{"keys":["cart:1"],"tags":["user:7"],"patterns":["feed:*"]}"#)
        .expect("valid");
    assert_eq!(inv.keys, vec!["app*:cart:1"]);
    assert_eq!(inv.tags, vec!["user:7"]);
    assert_eq!(inv.patterns, vec![r"app\*:feed:*"]);
    let long = "x".repeat(40);
    let inv = set
        .explicit(format!("{{\"keys\":[\"{long}\"]}}").as_bytes())
        .expect("hashed");
    assert_eq!(
        inv.keys,
        vec![format!("app*:#{}", crate::hash_value(&long))]
    );

    let refuse = ok("version: 1\nmax_key_bytes: 32\non_long_key: refuse\n");
    let e = refuse
        .explicit(format!("{{\"keys\":[\"ok\",\"{long}\"]}}").as_bytes())
        .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "explicit invalidation message: `keys[1]` is longer than max_key_bytes (32)"
    );
    assert!(matches!(
        set.explicit(b"{\"key\":[]}"),
        Err(crate::ExplicitError::UnknownField(_))
    ));
}

/// The worked example at the repository root must load, bind to the shop
/// schema it describes, and do what its comments say.
#[test]
fn the_example_rules_file_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules.yaml");
    let set = RuleSet::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.rules().len() >= 4);
    let tables: Vec<String> = set.tables().iter().map(ToString::to_string).collect();
    for t in [
        "public.products",
        "public.categories",
        "public.orders",
        "public.users",
    ] {
        assert!(tables.contains(&t.to_owned()), "{t} in {tables:?}");
    }
    let products = set
        .bind(
            "public",
            "products",
            &[
                "id",
                "category_id",
                "slug",
                "name",
                "price",
                "stock",
                "updated_at",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("products rules");
    use crate::{Datum, Invalidations, TxBudget};
    let old = vec![
        Datum::Text("42"),
        Datum::Text("3"),
        Datum::Text("blue-mug"),
        Datum::Text("Blue mug"),
        Datum::Text("9.90"),
        Datum::Text("5"),
        Datum::Text("2026-01-01 00:00:00+00"),
    ];
    let mut new = old.clone();
    new[1] = Datum::Text("4");
    let (mut budget, mut out) = (TxBudget::default(), Invalidations::default());
    let outcome = products.evaluate(Op::Update, Some(&old), Some(&new), &mut budget, &mut out);
    assert!(outcome.matched_rules >= 1);
    assert!(
        out.keys.iter().any(|k| k.ends_with("product:42")),
        "{out:?}"
    );
    assert!(
        out.tags.contains(&"category:3".to_owned()) && out.tags.contains(&"category:4".to_owned()),
        "{out:?}"
    );
    for (table, cols) in [
        ("categories", &["id", "parent_id", "slug", "name"][..]),
        (
            "orders",
            &["id", "user_id", "status", "total", "created_at"][..],
        ),
        ("users", &["id", "email", "name", "deleted_at"][..]),
    ] {
        set.bind("public", table, cols)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("rules for {table}"));
    }
}

#[test]
fn messages_stay_on_one_line() {
    let e = err("version: 1\nrules:\n  - table: \"a\\nb\"\n    keys: [\"{i\\nd}\"]\n");
    assert_eq!(
        e,
        "rules.yaml:3:12: rule 1 (a\\nb): table \"a\\nb\": names cannot contain '\\n'"
    );
    let e = err("version: 1\nrules:\n  - table: t\n    keys: [\"{i\\nd}\"]\n");
    assert_eq!(
        e,
        "rules.yaml:4:12: rule 1 (t): placeholder {i\\nd}: column names cannot contain '\\n'"
    );
    let set = ok("version: 1\nrules:\n  - table: \"*.*\"\n    keys: [\"{x}\"]\n");
    let e = set.bind("s\nx", "t", &[]).expect_err("no x");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn operations_and_columns_a_table_needs_are_known_without_binding() {
    let set = ok("version: 1\nrules:\n  - table: public.orders\n    on: [insert]\n    keys: [\"order:{id}\"]\n  - table: public.order*\n    on: [delete, update]\n    when: { changed: [status] }\n    tags: [\"user:{old.user_id}\", \"order:{id}\"]\n  - table: public.users\n    keys: [\"user:{id}\"]\n");
    assert_eq!(
        set.ops_for("public", "orders"),
        vec![Op::Insert, Op::Update, Op::Delete]
    );
    assert_eq!(set.ops_for("public", "users"), Op::ALL.to_vec());
    assert!(set.ops_for("public", "other").is_empty());
    assert_eq!(
        set.columns_read("public", "orders"),
        vec!["id", "user_id", "status"]
    );
    assert!(set.columns_read("public", "other").is_empty());
}
