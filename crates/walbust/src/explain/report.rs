//! The report of `walbust explain`: one change evaluated against the rules,
//! and printed.
//!
//! The change is evaluated twice over:
//!
//! 1. against the whole rule set bound to the table, exactly as the reader
//!    does: this is the answer (deduplicated like one change is);
//! 2. against each matching rule alone, to attribute every key, tag and
//!    pattern to the rules that produce it, and to say why a rule did not
//!    fire. A rule alone is that rule of the loaded set bound by itself
//!    ([`RuleSet::bind_only`]); if that ever fails, the answer is still
//!    printed, without attribution.
//!
//! A column that no row names but a rule reads is bound anyway and has no
//! value on either side (noted in the output).

use std::fmt::Write as _;

use serde_json::{json, Value};
use walbust_rules::{
    BoundTable, Datum, Invalidations, Op, Outcome, RuleInfo, RuleSet, TableName, TxBudget,
};

use super::args::{Change, Given};

/// What one rule alone made of the change.
#[derive(Debug)]
struct RuleResult {
    info: RuleInfo,
    outcome: Outcome,
    out: Invalidations,
}

#[derive(Debug)]
pub(super) struct Report {
    origin: String,
    table: TableName,
    op: Op,
    /// No rule names the table.
    unmatched: bool,
    out: Invalidations,
    outcome: Outcome,
    /// Per matching rule, when attribution worked.
    rules: Option<Vec<RuleResult>>,
    notes: Vec<String>,
}

/// A due time (µs since the Unix epoch) as RFC 3339 UTC.
fn due_text(unix_micros: i64) -> String {
    walbust_pgoutput::time::format_rfc3339(walbust_pgoutput::time::unix_to_pg_micros(unix_micros))
}

/// The most columns a rule set can name that the JSON objects do not.
const MAX_UNNAMED_COLUMNS: usize = 4096;

pub(super) fn evaluate(set: &RuleSet, change: &Change) -> Result<Report, String> {
    let mut columns = change.columns();
    let mut notes = Vec::new();
    let table = &change.table;
    // Bind, adding each column a rule reads that no object names: it is
    // bound with no value (as a column Postgres did not send).
    let bound = loop {
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        match set.bind(&table.schema, &table.name, &names) {
            Ok(b) => break b,
            Err(e) if columns.len() < change.columns().len() + MAX_UNNAMED_COLUMNS => {
                notes.push(format!(
                    "column {:?} (read by {}) has no value in --old or --new: read as not sent{}",
                    e.column_name(),
                    e.rule(),
                    match change.op {
                        Op::Update => " (in an update's new row: unchanged TOAST)",
                        _ => "",
                    }
                ));
                columns.push(e.column_name().to_owned());
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    if let (Op::Update, Some(old), Some(new)) = (change.op, &change.old, &change.new) {
        let unchanged: Vec<&str> = old
            .iter()
            .filter(|(c, _)| !new.iter().any(|(n, _)| n == c))
            .map(|(c, _)| c.as_str())
            .collect();
        if !unchanged.is_empty() {
            notes.push(format!(
                "--new leaves out {}: read as unchanged TOAST (the value an UPDATE did not touch, which Postgres does not resend)",
                unchanged.join(", ")
            ));
        }
    }
    let mut report = Report {
        origin: set.origin().to_owned(),
        table: table.clone(),
        op: change.op,
        unmatched: bound.is_none(),
        out: Invalidations::default(),
        outcome: Outcome::default(),
        rules: None,
        notes,
    };
    let Some(bound) = bound else {
        return Ok(report);
    };

    let old = change.old.as_ref().map(|row| datums(row, &columns, None));
    let unchanged = (change.op == Op::Update).then_some(Datum::Unchanged);
    let new = change
        .new
        .as_ref()
        .map(|row| datums(row, &columns, unchanged));
    let run = |b: &BoundTable| {
        let mut out = Invalidations::default();
        let outcome = b.evaluate(
            change.op,
            old.as_ref().map(|r| r as &dyn walbust_rules::RowValues),
            new.as_ref().map(|r| r as &dyn walbust_rules::RowValues),
            &mut TxBudget::default(),
            &mut out,
        );
        (outcome, out)
    };
    (report.outcome, report.out) = run(&bound);

    match attribute(set, &bound, &columns, &run) {
        Ok(results) => report.rules = Some(results),
        Err(why) => report
            .notes
            .push(format!("cannot attribute the output to rules: {why}")),
    }
    Ok(report)
}

/// Each matching rule evaluated alone.
fn attribute(
    set: &RuleSet,
    bound: &BoundTable,
    columns: &[String],
    run: &dyn Fn(&BoundTable) -> (Outcome, Invalidations),
) -> Result<Vec<RuleResult>, String> {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let table = bound.table();
    let mut results = Vec::new();
    for index in bound.rule_indexes() {
        let info = set
            .rules()
            .get(index)
            .cloned()
            .ok_or_else(|| format!("rule index {index} out of range"))?;
        let b = set
            .bind_only(index, &table.schema, &table.name, &names)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("rule {} alone does not match the table", index + 1))?;
        let (outcome, out) = run(&b);
        results.push(RuleResult { info, outcome, out });
    }
    Ok(results)
}

fn datums<'a>(
    row: &'a [(String, Given)],
    columns: &[String],
    absent: Option<Datum<'a>>,
) -> Vec<Datum<'a>> {
    columns
        .iter()
        .map(|c| match row.iter().find(|(name, _)| name == c) {
            Some((_, Given::Text(s))) => Datum::Text(s),
            Some((_, Given::Null)) => Datum::Null,
            None => absent.unwrap_or(Datum::Absent),
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Keys,
    Tags,
    Patterns,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Keys, Kind::Tags, Kind::Patterns];

    fn name(self) -> &'static str {
        match self {
            Kind::Keys => "keys",
            Kind::Tags => "tags",
            Kind::Patterns => "patterns",
        }
    }

    fn of(self, inv: &Invalidations) -> &[String] {
        match self {
            Kind::Keys => &inv.keys,
            Kind::Tags => &inv.tags,
            Kind::Patterns => &inv.patterns,
        }
    }
}

impl Report {
    /// The rules (1-based numbers) whose evaluation alone produced `value`.
    fn producers(&self, kind: Kind, value: &str) -> Vec<&RuleResult> {
        self.rules
            .iter()
            .flatten()
            .filter(|r| kind.of(&r.out).iter().any(|v| v == value))
            .collect()
    }

    fn why_not(&self, r: &RuleResult) -> Option<String> {
        if r.outcome.matched_rules > 0 {
            return None;
        }
        Some(if r.info.on.contains(&self.op) {
            "its when condition is false".to_owned()
        } else {
            format!("it does not react to {}", self.op)
        })
    }

    fn outcome_notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        let mut add = |who: String, o: &Outcome| {
            if o.missing > 0 {
                notes.push(format!(
                    "{who}: {} template(s) skipped: a value did not arrive ({}); counted in walbust_rule_missing_values_total",
                    o.missing,
                    match self.op {
                        Op::Insert => "not in --new",
                        Op::Update => "unchanged TOAST, or an old value the replica identity does not send",
                        _ => "an old value the replica identity does not send",
                    }
                ));
            }
            if o.null > 0 {
                notes.push(format!(
                    "{who}: {} template(s) skipped: a value is NULL",
                    o.null
                ));
            }
            if o.refused > 0 {
                notes.push(format!(
                    "{who}: {} key(s) refused: longer than max_key_bytes with on_long_key: refuse",
                    o.refused
                ));
            }
            if o.unreadable_at > 0 {
                notes.push(format!(
                    "{who}: {} at: value(s) are not a timestamp walbust can read: nothing scheduled for them; counted in walbust_scheduled_unreadable_total",
                    o.unreadable_at
                ));
            }
            if o.escalated > 0 {
                notes.push(format!(
                    "{who}: ran out of its max_keys_per_tx budget and fell back to its constant tags and patterns"
                ));
            }
        };
        match &self.rules {
            Some(rules) => {
                for r in rules {
                    add(format!("rule {}", r.info.index + 1), &r.outcome);
                }
            }
            None => add("the rules".to_owned(), &self.outcome),
        }
        notes
    }

    pub(super) fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} {} ({})", self.table, self.op, self.origin);
        if self.unmatched {
            let _ = writeln!(
                s,
                "no rule names {}: the change invalidates nothing",
                self.table
            );
            return s;
        }
        for r in self.rules.iter().flatten() {
            let at = format!(
                "rule {} ({}:{}:{}, table {})",
                r.info.index + 1,
                self.origin,
                r.info.line,
                r.info.column,
                r.info.table
            );
            match self.why_not(r) {
                None => {
                    let _ = writeln!(s, "{at}: fired");
                }
                Some(why) => {
                    let _ = writeln!(s, "{at}: did not fire: {why}");
                }
            }
        }
        for kind in Kind::ALL {
            let values = kind.of(&self.out);
            if values.is_empty() {
                let _ = writeln!(s, "{}: none", kind.name());
                continue;
            }
            let _ = writeln!(s, "{}:", kind.name());
            let width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0);
            for v in values {
                let by = self.producers(kind, v);
                if by.is_empty() {
                    let _ = writeln!(s, "  {v}");
                } else {
                    let list = by
                        .iter()
                        .map(|r| format!("{} (line {})", r.info.index + 1, r.info.line))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let word = if by.len() == 1 { "rule" } else { "rules" };
                    // Padded by hand: `{v:<width$}` panics on a width
                    // above 65,535, and a rendered value can be longer.
                    let pad = " ".repeat(width - v.chars().count());
                    let _ = writeln!(s, "  {v}{pad}  <- {word} {list}");
                }
            }
        }
        if !self.out.schedule.is_empty() {
            let _ = writeln!(
                s,
                "schedule (invalidated again then, by the Redis sink's schedule):"
            );
        }
        for (due, by) in self.scheduled() {
            let rules = by
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "  at {}  <- rule {rules}: keys [{}] tags [{}] patterns [{}]",
                due_text(due.due_unix_micros),
                due.keys.join(", "),
                due.tags.join(", "),
                due.patterns.join(", ")
            );
        }
        if !self.out.refresh.is_empty() {
            let _ = writeln!(s, "refresh stream: {}", self.out.refresh.join(", "));
        }
        for note in self.outcome_notes() {
            let _ = writeln!(s, "note: {note}");
        }
        s
    }

    /// Each scheduled entry with the rules (numbered from 1) that made it.
    fn scheduled(&self) -> Vec<(&walbust_rules::Scheduled, Vec<usize>)> {
        self.out
            .schedule
            .iter()
            .map(|due| {
                let by = self
                    .rules
                    .iter()
                    .flatten()
                    .filter(|r| r.out.schedule.contains(due))
                    .map(|r| r.info.index + 1)
                    .collect();
                (due, by)
            })
            .collect()
    }

    pub(super) fn to_json(&self) -> Value {
        let mut obj = json!({
            "table": self.table.to_string(),
            "op": self.op.as_str(),
            "rules_file": self.origin,
        });
        for kind in Kind::ALL {
            let items: Vec<Value> = kind
                .of(&self.out)
                .iter()
                .map(|v| {
                    let by: Vec<usize> = self
                        .producers(kind, v)
                        .iter()
                        .map(|r| r.info.index + 1)
                        .collect();
                    json!({ "value": v, "rules": by })
                })
                .collect();
            obj[kind.name()] = Value::Array(items);
        }
        let rules: Vec<Value> = self
            .rules
            .iter()
            .flatten()
            .map(|r| {
                json!({
                    "rule": r.info.index + 1,
                    "table": r.info.table,
                    "line": r.info.line,
                    "column": r.info.column,
                    "fired": r.outcome.matched_rules > 0,
                    "why_not": self.why_not(r),
                    "missing": r.outcome.missing,
                    "null": r.outcome.null,
                    "refused": r.outcome.refused,
                    "escalated": r.outcome.escalated,
                })
            })
            .collect();
        obj["rules"] = Value::Array(rules);
        obj["schedule"] = Value::Array(
            self.scheduled()
                .into_iter()
                .map(|(due, by)| {
                    json!({
                        "due": due_text(due.due_unix_micros),
                        "rules": by,
                        "keys": due.keys,
                        "tags": due.tags,
                        "patterns": due.patterns,
                    })
                })
                .collect(),
        );
        obj["refresh"] = json!(self.out.refresh);
        obj["attributed"] = Value::Bool(self.rules.is_some() || self.unmatched);
        obj["notes"] = json!(self.outcome_notes());
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::args::parse_row;

    const RULES: &str = r#"
version: 1
prefix: "app:"
rules:
  - table: public.products
    keys: ["product:{id}"]
    tags: ["category:{category_id}", "products"]
  - table: products
    on: [update]
    when: { new: { price: { eq: 1.50 } } }
    tags: ["cheap", "products"]
  - table: public.orders
    keys: ["order:{id}"]
"#;

    fn change(op: Op, old: Option<&str>, new: Option<&str>) -> Change {
        Change {
            table: TableName::new("public", "products"),
            op,
            old: old.map(|j| parse_row("--old", j).unwrap()),
            new: new.map(|j| parse_row("--new", j).unwrap()),
        }
    }

    fn report(c: &Change) -> Report {
        let set = RuleSet::from_yaml(RULES, "rules.yaml").unwrap();
        evaluate(&set, c).unwrap()
    }

    #[test]
    fn a_moved_product_is_attributed_rule_by_rule() {
        let r = report(&change(
            Op::Update,
            Some(r#"{"id":"42","category_id":"3","price":"2"}"#),
            Some(r#"{"id":"42","category_id":"4","price":"1.50"}"#),
        ));
        assert_eq!(r.out.keys, ["app:product:42"]);
        assert_eq!(
            r.out.tags,
            ["products", "category:3", "category:4", "cheap"]
        );
        let rules = r.rules.as_ref().expect("attributed");
        assert_eq!(rules.len(), 2);
        let by = |kind, v| -> Vec<usize> {
            r.producers(kind, v)
                .iter()
                .map(|x| x.info.index + 1)
                .collect()
        };
        assert_eq!(by(Kind::Tags, "products"), [1, 2]);
        assert_eq!(by(Kind::Tags, "category:4"), [1]);
        assert_eq!(by(Kind::Tags, "cheap"), [2]);
        let text = r.to_text();
        assert!(
            text.contains("rule 2 (rules.yaml:8:5, table products): fired"),
            "{text}"
        );
        let json = r.to_json();
        assert_eq!(
            json["tags"][0],
            json!({"value": "products", "rules": [1, 2]})
        );
        assert_eq!(json["attributed"], true);
    }

    #[test]
    fn the_when_value_keeps_its_text() {
        // `eq: 1.50` compares as text: 1.5 is another value.
        let r = report(&change(
            Op::Update,
            None,
            Some(r#"{"id":"1","category_id":"3","price":"1.5"}"#),
        ));
        let rules = r.rules.as_ref().unwrap();
        assert_eq!(
            r.why_not(&rules[1]).as_deref(),
            Some("its when condition is false")
        );
        assert!(!r.out.tags.contains(&"cheap".to_owned()));
    }

    #[test]
    fn rules_that_do_not_fire_say_why() {
        let r = report(&change(
            Op::Insert,
            None,
            Some(r#"{"id":"1","category_id":"3"}"#),
        ));
        let rules = r.rules.as_ref().unwrap();
        assert_eq!(
            r.why_not(&rules[1]).as_deref(),
            Some("it does not react to insert")
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("\"price\"") && n.contains("not sent")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn unchanged_toast_and_missing_old_values_are_reported() {
        // No old row, category_id left out of the new one: unchanged TOAST.
        let r = report(&change(Op::Update, None, Some(r#"{"id":"1","price":"9"}"#)));
        assert_eq!(r.out.keys, ["app:product:1"]);
        assert!(!r.out.tags.iter().any(|t| t.starts_with("category:")));
        assert!(r
            .outcome_notes()
            .iter()
            .any(|n| n.starts_with("rule 1: 1 template(s) skipped")));
    }

    #[test]
    fn an_insert_missing_a_value_does_not_speak_of_toast() {
        let r = report(&change(Op::Insert, None, Some(r#"{"id":"1","price":"9"}"#)));
        let notes = r.outcome_notes();
        assert!(notes.iter().any(|n| n.contains("not sent")), "{notes:?}");
        assert!(!notes.iter().any(|n| n.contains("TOAST")), "{notes:?}");
        let r = report(&change(Op::Update, None, Some(r#"{"id":"1","price":"9"}"#)));
        assert!(r
            .outcome_notes()
            .iter()
            .any(|n| n.contains("unchanged TOAST")));
    }

    #[test]
    fn values_longer_than_a_format_width_are_aligned() {
        // A tag of 65,536 characters, the longest max_key_bytes allows: more
        // than `{:<width$}` takes (65,535).
        let long = "x".repeat(65_536 - "category:".len());
        let rules = RULES.replace("prefix: \"app:\"", "prefix: \"app:\"\nmax_key_bytes: 65536");
        let set = RuleSet::from_yaml(&rules, "rules.yaml").unwrap();
        let r = evaluate(
            &set,
            &change(
                Op::Insert,
                None,
                Some(&format!(r#"{{"id":"1","category_id":"{long}"}}"#)),
            ),
        )
        .unwrap();
        let text = r.to_text();
        let tag = format!("category:{long}");
        assert!(
            text.contains(&format!("\n  {tag}  <- rule 1 (line 6)\n")),
            "the long tag is not listed"
        );
        // (One line further down: max_key_bytes went in above the rules.)
        // The other tags are padded to the long one's width.
        let pad = " ".repeat(tag.len() - "products".len());
        assert!(text.contains(&format!("\n  products{pad}  <- rule 1 (line 6)\n")));
    }

    #[test]
    fn the_schedule_a_change_creates_is_shown() {
        let rules = r#"
version: 1
rules:
  - table: promotions
    keys: ["promotion:{code}", "promotions:active"]
    at: ["{starts_at}", "{ends_at}"]
    refresh: true
"#;
        let set = RuleSet::from_yaml(rules, "rules.yaml").unwrap();
        let c = Change {
            table: TableName::new("public", "promotions"),
            op: Op::Insert,
            old: None,
            new: Some(
                parse_row(
                    "--new",
                    r#"{"code":"FLASH","starts_at":"2026-12-01 00:00:00+00","ends_at":"soon"}"#,
                )
                .unwrap(),
            ),
        };
        let r = evaluate(&set, &c).unwrap();
        let text = r.to_text();
        assert!(
            text.contains(
                "  at 2026-12-01T00:00:00.000000Z  <- rule 1: keys [promotions:active, promotion:FLASH] tags [] patterns []"
            ),
            "{text}"
        );
        assert!(
            text.contains("refresh stream: promotions:active, promotion:FLASH"),
            "{text}"
        );
        assert!(
            text.contains("1 at: value(s) are not a timestamp"),
            "{text}"
        );
        let json = r.to_json();
        assert_eq!(json["schedule"][0]["due"], "2026-12-01T00:00:00.000000Z");
        assert_eq!(json["schedule"][0]["rules"], json!([1]));
    }

    #[test]
    fn an_unnamed_table_invalidates_nothing() {
        let c = Change {
            table: TableName::new("public", "nothing"),
            op: Op::Truncate,
            old: None,
            new: None,
        };
        let r = report(&c);
        assert!(r.unmatched && r.out.is_empty());
        assert!(r.to_text().contains("no rule names public.nothing"));
    }
}
