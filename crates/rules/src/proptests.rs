//! Property tests: the loader never panics and speaks in one line; valid
//! rule sets always load; evaluation never panics, is deterministic, and
//! keeps its promises (prefixes, key lengths, no repeats within a change,
//! row data never widening a pattern) on arbitrary rows.
//!
//! Case counts follow `PROPTEST_CASES`; failures are persisted by proptest
//! under `proptest-regressions/` and replay first on the next run.

use proptest::prelude::*;

use crate::{Datum, Invalidations, LongKeyPolicy, Op, RowValues, RuleSet, TxBudget};

const COLUMNS: &[&str] = &["c0", "c1", "c2", "c3", "c4"];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- loader

/// Pieces of YAML that come near the rules grammar, so that random text
/// reaches the validation code and not only the YAML parser.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("version: 1\n".to_owned()),
        Just("version: ".to_owned()),
        Just("rules:\n".to_owned()),
        Just("  - table: ".to_owned()),
        Just("    on: [insert, update, delete, truncate]\n".to_owned()),
        Just("    keys: [".to_owned()),
        Just("    tags: ".to_owned()),
        Just("    patterns: ".to_owned()),
        Just("    when: ".to_owned()),
        Just("prefix: ".to_owned()),
        Just("max_key_bytes: ".to_owned()),
        Just("max_keys_per_tx: ".to_owned()),
        Just("on_long_key: ".to_owned()),
        Just("{ changed: [a] }".to_owned()),
        Just("{ new: { a: { eq: x } } }".to_owned()),
        Just("{ not: ".to_owned()),
        Just("all: [".to_owned()),
        Just("null".to_owned()),
        Just("not_null".to_owned()),
        Just("\"p:{id}\"".to_owned()),
        Just("\"{old.x:hash}\"".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("---\n".to_owned()),
        Just("]".to_owned()),
        Just("}".to_owned()),
        Just(", ".to_owned()),
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        "[a-z0-9{}.:*?\\[\\]\"' -]{0,8}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn assert_loader_total(src: &str) {
    match RuleSet::from_yaml(src, "rules.yaml") {
        Ok(set) => {
            // Whatever loads can be bound to any table without panicking.
            let _ = set.bind("public", "t", COLUMNS);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "multi-line error: {text}");
            assert!(text.starts_with("rules.yaml"), "{text}");
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn loader_never_panics_on_any_text(src in any::<String>()) {
        assert_loader_total(&src);
    }

    #[test]
    fn loader_never_panics_on_yamlish_text(src in yamlish()) {
        assert_loader_total(&src);
    }

    #[test]
    fn loader_never_panics_on_a_damaged_example(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, "[ -~\n]{0,3}"), 1..6)
    ) {
        let mut src = include_str!("../../../rules.yaml").to_owned();
        for (at, kind, text) in edits {
            let mut i = at.index(src.len() + 1);
            while !src.is_char_boundary(i) {
                i -= 1;
            }
            match kind {
                0 => src.insert_str(i, &text),
                1 => {
                    let mut end = (i + text.len().max(1)).min(src.len());
                    while !src.is_char_boundary(end) {
                        end += 1;
                    }
                    src.replace_range(i..end, "");
                }
                _ => src.replace_range(i..i, &text.to_uppercase()),
            }
        }
        assert_loader_total(&src);
    }
}

// ---------------------------------------------------------------- rule sets

#[derive(Clone, Debug)]
enum Seg {
    Lit(String),
    Hole { side: u8, col: usize, hash: bool },
}

#[derive(Clone, Debug)]
struct GenRule {
    table: &'static str,
    ops: Option<Vec<&'static str>>,
    prefix: Option<String>,
    when: Option<String>,
    keys: Vec<Vec<Seg>>,
    tags: Vec<Vec<Seg>>,
    patterns: Vec<Vec<Seg>>,
    budget: Option<u32>,
}

#[derive(Clone, Debug)]
struct GenSet {
    prefix: Option<String>,
    max_key_bytes: Option<usize>,
    refuse: bool,
    budget: Option<u32>,
    rules: Vec<GenRule>,
}

fn lit() -> impl Strategy<Value = String> {
    "[ab:*?\\[\\]\\\\{}é-]{1,6}"
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        lit().prop_map(Seg::Lit),
        (0u8..3, 0..COLUMNS.len(), any::<bool>()).prop_map(|(side, col, hash)| Seg::Hole {
            side,
            col,
            hash
        }),
    ]
}

fn template() -> impl Strategy<Value = Vec<Seg>> {
    prop::collection::vec(seg(), 1..5)
}

fn test_yaml() -> impl Strategy<Value = String> {
    let value = prop_oneof![Just("a"), Just("b*"), Just("1"), Just("")];
    prop_oneof![
        Just("null".to_owned()),
        Just("not_null".to_owned()),
        value
            .clone()
            .prop_map(|v| format!("{{ eq: {} }}", quote(v))),
        value
            .clone()
            .prop_map(|v| format!("{{ ne: {} }}", quote(v))),
        prop::collection::vec(value.clone(), 1..3).prop_map(|vs| format!(
            "{{ in: [{}] }}",
            vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
        )),
        prop::collection::vec(value, 1..3).prop_map(|vs| format!(
            "{{ not_in: [{}] }}",
            vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
        )),
    ]
}

/// A `when` condition in YAML flow style.
fn cond_yaml() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::collection::vec(0..COLUMNS.len(), 1..3).prop_map(|cs| format!(
            "{{ changed: [{}] }}",
            cs.iter()
                .map(|c| COLUMNS[*c])
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (
            prop_oneof![Just("old"), Just("new")],
            0..COLUMNS.len(),
            test_yaml()
        )
            .prop_map(|(side, c, t)| format!("{{ {side}: {{ {}: {t} }} }}", COLUMNS[c])),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3)
                .prop_map(|cs| format!("{{ all: [{}] }}", cs.join(", "))),
            prop::collection::vec(inner.clone(), 1..3)
                .prop_map(|cs| format!("{{ any: [{}] }}", cs.join(", "))),
            inner.prop_map(|c| format!("{{ not: {c} }}")),
        ]
    })
}

fn quote(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_default()
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let ops = prop::option::of(prop::sample::subsequence(
        vec!["insert", "update", "delete", "truncate"],
        1..=4,
    ));
    (
        prop::sample::select(vec!["t", "public.t", "public.*", "*.t", "public.?"]),
        ops,
        prop::option::of("[a:*?]{0,3}"),
        prop::option::of(cond_yaml()),
        prop::collection::vec(template(), 0..3),
        prop::collection::vec(template(), 0..3),
        prop::collection::vec(template(), 0..3),
        prop::option::of(0u32..4),
    )
        .prop_map(|(table, ops, prefix, when, keys, tags, patterns, budget)| {
            let mut rule = GenRule {
                table,
                ops,
                prefix,
                when,
                keys,
                tags,
                patterns,
                budget,
            };
            make_valid(&mut rule);
            rule
        })
}

fn gen_set() -> impl Strategy<Value = GenSet> {
    (
        prop::option::of("[a:*]{0,3}"),
        prop::option::of(prop::sample::select(vec![24usize, 40, 64, 1024])),
        any::<bool>(),
        prop::option::of(0u32..6),
        prop::collection::vec(gen_rule(), 1..5),
    )
        .prop_map(|(prefix, max_key_bytes, refuse, budget, rules)| {
            let mut set = GenSet {
                prefix,
                max_key_bytes,
                refuse,
                budget,
                rules,
            };
            drop_refused_constant_keys(&mut set);
            drop_uncoverable_patterns(&mut set);
            set
        })
}

/// A pattern template whose glob cover (`on_oversize: glob`, the default:
/// each placeholder a `*`) is itself longer than `max_key_bytes` is a load
/// error: leave such patterns out. Counted generously (prefixes as if every
/// byte were escaped).
fn drop_uncoverable_patterns(set: &mut GenSet) {
    let max = set.max_key_bytes.unwrap_or(crate::DEFAULT_MAX_KEY_BYTES);
    let global = set.prefix.as_ref().map_or(0, String::len);
    for rule in &mut set.rules {
        let prefix = 2 * (global + rule.prefix.as_ref().map_or(0, String::len));
        rule.patterns.retain(|t| {
            let glob: usize = t
                .iter()
                .map(|s| if let Seg::Lit(l) = s { l.len() } else { 1 })
                .sum();
            prefix + glob <= max
        });
        make_valid(rule);
    }
}

/// With `on_long_key: refuse`, a constant key that is too long is a load
/// error: leave such keys out.
fn drop_refused_constant_keys(set: &mut GenSet) {
    if !set.refuse {
        return;
    }
    let max = set.max_key_bytes.unwrap_or(crate::DEFAULT_MAX_KEY_BYTES);
    let global = set.prefix.as_ref().map_or(0, String::len);
    for rule in &mut set.rules {
        let prefix = global + rule.prefix.as_ref().map_or(0, String::len);
        rule.keys.retain(|t| {
            let literal: usize = t
                .iter()
                .map(|s| if let Seg::Lit(l) = s { l.len() } else { 0 })
                .sum();
            !is_constant(t) || prefix + literal <= max
        });
        make_valid(rule);
    }
}

fn is_constant(t: &[Seg]) -> bool {
    t.iter().all(|s| matches!(s, Seg::Lit(_)))
}

/// Adjusts a generated rule to what the language accepts, so that the
/// property "valid rules load" has valid input.
fn make_valid(rule: &mut GenRule) {
    if let Some(ops) = &mut rule.ops {
        // Templates need a row: keep at least one row operation.
        if !ops.iter().any(|o| *o != "truncate") {
            ops.insert(0, "update");
        }
    }
    let has = |op: &str| rule.ops.as_ref().is_none_or(|ops| ops.contains(&op));
    let (ins, upd, del) = (has("insert"), has("update"), has("delete"));
    for t in rule
        .keys
        .iter_mut()
        .chain(&mut rule.tags)
        .chain(&mut rule.patterns)
    {
        let old = t.iter().any(|s| matches!(s, Seg::Hole { side: 1, .. }));
        let new = t.iter().any(|s| matches!(s, Seg::Hole { side: 2, .. }));
        let never = !upd && ((old && (new || !del)) || (new && !ins));
        if never {
            for s in t.iter_mut() {
                if let Seg::Hole { side, .. } = s {
                    *side = 0;
                }
            }
        }
    }
    for list in [&mut rule.keys, &mut rule.tags, &mut rule.patterns] {
        let mut seen = Vec::new();
        list.retain(|t| {
            let text = template_text(t);
            let fresh = !seen.contains(&text);
            seen.push(text);
            fresh
        });
    }
    let templated = rule
        .keys
        .iter()
        .chain(&rule.tags)
        .chain(&rule.patterns)
        .any(|t| !is_constant(t));
    let fallback = rule
        .tags
        .iter()
        .chain(&rule.patterns)
        .any(|t| is_constant(t));
    let explicit_truncate = rule
        .ops
        .as_ref()
        .is_some_and(|ops| ops.contains(&"truncate"));
    let empty = rule.keys.is_empty() && rule.tags.is_empty() && rule.patterns.is_empty();
    let needs_constant = (explicit_truncate && templated && !fallback) || empty;
    if needs_constant && !rule.tags.iter().any(|t| template_text(t) == "all") {
        rule.tags.push(vec![Seg::Lit("all".to_owned())]);
    }
}

fn template_text(t: &[Seg]) -> String {
    let mut out = String::new();
    for s in t {
        match s {
            Seg::Lit(l) => out.push_str(&l.replace('{', "{{").replace('}', "}}")),
            Seg::Hole { side, col, hash } => {
                out.push('{');
                out.push_str(["", "old.", "new."][usize::from(*side)]);
                out.push_str(COLUMNS[*col]);
                if *hash {
                    out.push_str(":hash");
                }
                out.push('}');
            }
        }
    }
    out
}

fn set_yaml(set: &GenSet) -> String {
    let mut y = String::from("version: 1\n");
    if let Some(p) = &set.prefix {
        y += &format!("prefix: {}\n", quote(p));
    }
    if let Some(m) = set.max_key_bytes {
        y += &format!("max_key_bytes: {m}\n");
    }
    if set.refuse {
        y += "on_long_key: refuse\n";
    }
    if let Some(b) = set.budget {
        y += &format!("max_keys_per_tx: {b}\n");
    }
    y += "rules:\n";
    for r in &set.rules {
        y += &format!("  - table: {}\n", quote(r.table));
        if let Some(ops) = &r.ops {
            y += &format!("    on: [{}]\n", ops.join(", "));
        }
        if let Some(p) = &r.prefix {
            y += &format!("    prefix: {}\n", quote(p));
        }
        if let Some(w) = &r.when {
            y += &format!("    when: {w}\n");
        }
        for (name, list) in [
            ("keys", &r.keys),
            ("tags", &r.tags),
            ("patterns", &r.patterns),
        ] {
            if !list.is_empty() {
                let items: Vec<String> = list.iter().map(|t| quote(&template_text(t))).collect();
                y += &format!("    {name}: [{}]\n", items.join(", "));
            }
        }
        if let Some(b) = r.budget {
            y += &format!("    max_keys_per_tx: {b}\n");
        }
    }
    y
}

// ---------------------------------------------------------------- rows

#[derive(Clone, Debug)]
enum D {
    Null,
    Text(String),
    Unchanged,
    Absent,
}

fn datum() -> impl Strategy<Value = D> {
    prop_oneof![
        1 => Just(D::Null),
        6 => "[a-z0-9*?\\[\\]\\\\ é:]{0,12}".prop_map(D::Text),
        1 => "[a-z]{40,80}".prop_map(D::Text),
        1 => Just(D::Unchanged),
        1 => Just(D::Absent),
    ]
}

fn row() -> impl Strategy<Value = Vec<D>> {
    // Sometimes shorter than the table: `get` past the end is Absent.
    prop::collection::vec(datum(), 3..=COLUMNS.len())
}

fn view(r: &[D]) -> Vec<Datum<'_>> {
    r.iter()
        .map(|d| match d {
            D::Null => Datum::Null,
            D::Text(s) => Datum::Text(s),
            D::Unchanged => Datum::Unchanged,
            D::Absent => Datum::Absent,
        })
        .collect()
}

#[derive(Clone, Debug)]
struct GenChange {
    op: Op,
    old: Option<Vec<D>>,
    new: Option<Vec<D>>,
}

fn change() -> impl Strategy<Value = GenChange> {
    (
        prop::sample::select(Op::ALL.to_vec()),
        prop::option::of(row()),
        prop::option::of(row()),
    )
        .prop_map(|(op, old, new)| GenChange { op, old, new })
}

fn run(
    table: &crate::BoundTable,
    changes: &[GenChange],
    budget: &mut TxBudget,
) -> Vec<(Invalidations, crate::Outcome)> {
    changes
        .iter()
        .map(|c| {
            let old = c.old.as_deref().map(view);
            let new = c.new.as_deref().map(view);
            let mut out = Invalidations::default();
            let o = table.evaluate(
                c.op,
                old.as_ref().map(|r| r as &dyn RowValues),
                new.as_ref().map(|r| r as &dyn RowValues),
                budget,
                &mut out,
            );
            (out, o)
        })
        .collect()
}

fn has_no_repeats(list: &[String]) -> bool {
    list.iter().enumerate().all(|(i, s)| !list[..i].contains(s))
}

/// The literal text a Redis glob matches, or `None` if it has a live
/// metacharacter.
fn glob_literal(pattern: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '*' | '?' | '[' | ']' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_rule_sets_load_and_evaluate_deterministically(
        set in gen_set(),
        changes in prop::collection::vec(change(), 1..8),
    ) {
        let yaml = set_yaml(&set);
        let rules = RuleSet::from_yaml(&yaml, "gen.yaml")
            .unwrap_or_else(|e| panic!("valid rules must load: {e}\n{yaml}"));
        let table = rules.bind("public", "t", COLUMNS)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .expect("every generated table matches public.t");
        let _ = table.needs_old_values();

        let first = run(&table, &changes, &mut TxBudget::default());
        let second = run(&table, &changes, &mut TxBudget::default());
        prop_assert_eq!(&first, &second);

        let (max_key_bytes, policy) = rules.key_limit();
        let prefix = rules.prefix().to_owned();
        let pattern_prefix = crate::template::glob_escape(&prefix);
        for (out, outcome) in &first {
            prop_assert!(has_no_repeats(&out.keys), "{:?}", out.keys);
            prop_assert!(has_no_repeats(&out.tags), "{:?}", out.tags);
            prop_assert!(has_no_repeats(&out.patterns), "{:?}", out.patterns);
            prop_assert!(outcome.matched_rules as usize <= set.rules.len());
            for k in &out.keys {
                prop_assert!(k.len() <= max_key_bytes, "{} > {}", k.len(), max_key_bytes);
                prop_assert!(k.starts_with(&prefix));
            }
            for p in &out.patterns {
                prop_assert!(p.starts_with(&pattern_prefix));
            }
            if policy == LongKeyPolicy::Hash {
                prop_assert_eq!(outcome.refused, 0);
            }
        }
    }

    #[test]
    fn row_data_never_widens_a_pattern(value in any::<String>(), prefix in "[a-z*?]{0,4}") {
        let yaml = format!(
            "version: 1\nprefix: {}\nrules:\n  - table: t\n    patterns: [\"x:{{c0}}\", \"y:{{c0}}:*\"]\n",
            quote(&prefix)
        );
        let rules = RuleSet::from_yaml(&yaml, "rules.yaml").unwrap_or_else(|e| panic!("{e}"));
        let table = rules.bind("public", "t", COLUMNS).expect("binds").expect("matches");
        let row = vec![Datum::Text(&value)];
        let mut out = Invalidations::default();
        table.evaluate(Op::Insert, None, Some(&row), &mut TxBudget::default(), &mut out);
        prop_assert_eq!(out.patterns.len(), 2);
        // The whole first pattern is literal: it matches exactly one key.
        prop_assert_eq!(glob_literal(&out.patterns[0]), Some(format!("{prefix}x:{value}")));
        // The second has exactly one live wildcard: the rule's trailing `*`.
        let live = out.patterns[1].strip_suffix('*').and_then(glob_literal);
        prop_assert_eq!(live, Some(format!("{prefix}y:{value}:")));
    }

    #[test]
    fn budgets_bound_templated_output(ids in prop::collection::vec("[0-9]{1,4}", 1..60), budget in 0u32..8) {
        let yaml = format!(
            "version: 1\nmax_keys_per_tx: {budget}\nrules:\n  - table: t\n    keys: [\"k:{{c0}}\"]\n    tags: [\"all\"]\n"
        );
        let rules = RuleSet::from_yaml(&yaml, "rules.yaml").unwrap_or_else(|e| panic!("{e}"));
        let table = rules.bind("public", "t", COLUMNS).expect("binds").expect("matches");
        let mut tx = TxBudget::default();
        let mut out = Invalidations::default();
        let mut escalated = 0;
        for id in &ids {
            let row = vec![Datum::Text(id)];
            escalated += table.evaluate(Op::Insert, None, Some(&row), &mut tx, &mut out).escalated;
        }
        prop_assert!(out.keys.len() <= budget as usize);
        prop_assert_eq!(out.tags.clone(), vec!["all".to_owned()]);
        prop_assert!(escalated <= 1);
        prop_assert_eq!(escalated == 1, ids.len() > budget as usize);
    }
}
