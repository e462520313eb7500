//! The hot path: one row change of a bound table → keys, tags, patterns.
//!
//! Everything that can be decided before data arrives was decided at load
//! and bind: templates are segment lists with column indexes, constant
//! outputs are final strings, prefixes are pre-escaped. Per change this
//! module only evaluates conditions, renders templates into exactly-sized
//! strings (the output itself), and keeps per-transaction counts in the
//! caller's [`TxBudget`].

use std::ops::AddAssign;

use crate::condition::{Cond, Truth};
use crate::hash::{push_hash, HASH_LEN};
use crate::row::{Change, Op, OpSet, RowValues};
use crate::ruleset::{Degraded, LongKeyPolicy, TableName};
use crate::schedule::{read_due, Due, Scheduled};
use crate::template::{Overlong, Side, Skip, Template};

/// Longest `at:` value read as a timestamp; anything longer is unreadable.
const MAX_TIMESTAMP_LEN: usize = 64;

/// What a transaction (or a change) invalidates. Order-preserving; lists may
/// hold duplicates across changes (coalescing is the publisher's job), but
/// one change never adds the same string twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invalidations {
    /// Cache keys to delete.
    pub keys: Vec<String>,
    /// Tags to purge.
    pub tags: Vec<String>,
    /// Redis glob patterns whose matching keys to delete.
    pub patterns: Vec<String>,
    /// Invalidations to apply again later (rules with `at:`), one entry per
    /// rule, row and due time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<Scheduled>,
    /// Keys of rules with `refresh: true`, for the refresh stream. Each is
    /// in `keys` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refresh: Vec<String>,
}

impl Invalidations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing to invalidate now or later.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.tags.is_empty()
            && self.patterns.is_empty()
            && self.schedule.is_empty()
    }

    /// Keys + tags + patterns.
    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }

    /// Appends `other`'s entries after this one's.
    pub fn extend(&mut self, other: Invalidations) {
        self.keys.extend(other.keys);
        self.tags.extend(other.tags);
        self.patterns.extend(other.patterns);
        self.schedule.extend(other.schedule);
        self.refresh.extend(other.refresh);
    }

    /// Empties the lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.tags.clear();
        self.patterns.clear();
        self.schedule.clear();
        self.refresh.clear();
    }
}

/// Counts from evaluating changes, for metrics. Add outcomes with `+=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rules that fired (operation and `when` matched).
    pub matched_rules: u32,
    /// Templates (or `when` conditions) that needed a value that did not
    /// arrive: unchanged TOAST without an old value, an old value the replica
    /// identity did not send. Also TRUNCATEs of a rule that has templates but
    /// no placeholder-free tag or pattern. Each is a possibly stale cache.
    pub missing: u32,
    /// Templates skipped because a value they need is NULL.
    pub null: u32,
    /// Rules that ran out of their per-transaction key budget on this change
    /// and fell back to their placeholder-free tags and patterns.
    pub escalated: u32,
    /// Keys and tags dropped because they were longer than `max_key_bytes`
    /// with `on_long_key: refuse`.
    pub refused: u32,
    /// Patterns longer than `max_key_bytes`, replaced by what their rule's
    /// `on_oversize` names.
    pub oversize: u32,
    /// Keys and tags longer than `max_key_bytes`, hashed under
    /// `on_long_key: hash`.
    pub hashed: u32,
    /// `at:` values that are not a timestamp walbust can read (see
    /// [`crate::parse_timestamp`]); nothing was scheduled for them.
    pub unreadable_at: u32,
}

impl AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.matched_rules += o.matched_rules;
        self.missing += o.missing;
        self.null += o.null;
        self.escalated += o.escalated;
        self.refused += o.refused;
        self.oversize += o.oversize;
        self.hashed += o.hashed;
        self.unreadable_at += o.unreadable_at;
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct RuleState {
    /// Strings rendered from templates in this transaction.
    emitted: u32,
    /// The placeholder-free outputs went out already in this transaction.
    constants_sent: bool,
    /// The budget ran out: no more templated output in this transaction.
    escalated: bool,
    /// The degraded rule's fallback went out already in this transaction.
    fallback_sent: bool,
}

/// Per-transaction state of every rule: how many strings it rendered, and
/// whether it escalated. Create one per reader, [`reset`](TxBudget::reset)
/// it at every transaction start, and pass it to every evaluation of that
/// transaction. It belongs to one [`crate::RuleSet`] (rules are numbered
/// within their set): reset it when the rule set is replaced.
///
/// Also the reason a rule's placeholder-free keys, tags and patterns are
/// output once per transaction, not once per row: a 1M-row UPDATE yields one
/// `products` tag, not a million.
#[derive(Clone, Debug, Default)]
pub struct TxBudget {
    rules: Vec<RuleState>,
}

impl TxBudget {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new transaction (keeps the allocation).
    pub fn reset(&mut self) {
        self.rules.clear();
    }

    /// Whether rule `index` (see [`crate::RuleInfo::index`]) escalated in
    /// this transaction.
    pub fn is_escalated(&self, index: usize) -> bool {
        self.rules.get(index).is_some_and(|s| s.escalated)
    }

    fn state(&mut self, id: usize) -> &mut RuleState {
        if self.rules.len() <= id {
            self.rules.resize(id + 1, RuleState::default());
        }
        // Just resized to hold `id`.
        &mut self.rules[id]
    }
}

/// `max_key_bytes` and `on_long_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyLimit {
    pub max_key_bytes: usize,
    pub policy: LongKeyPolicy,
}

/// Applies the long-key policy to `key`, whose first `prefix_len` bytes are
/// the prefix. `None`: refused.
pub(crate) fn fit_long_key(key: String, prefix_len: usize, limit: KeyLimit) -> Option<String> {
    if key.len() <= limit.max_key_bytes {
        return Some(key);
    }
    match limit.policy {
        LongKeyPolicy::Refuse => None,
        LongKeyPolicy::Hash => {
            let (prefix, rest) = match (key.get(..prefix_len), key.get(prefix_len..)) {
                (Some(p), Some(r)) => (p, r),
                _ => ("", key.as_str()),
            };
            let mut out = String::with_capacity(prefix.len() + 1 + HASH_LEN);
            out.push_str(prefix);
            out.push('#');
            push_hash(&mut out, rest);
            Some(out)
        }
    }
}

/// One rule compiled against one table's columns.
#[derive(Clone, Debug)]
pub(crate) struct BoundRule {
    /// Index in the rule set (numbers the budget).
    pub id: usize,
    pub ops: OpSet,
    pub when: Option<Cond<usize>>,
    pub key_prefix: Box<str>,
    pub pattern_prefix: Box<str>,
    pub const_keys: Vec<String>,
    pub const_tags: Vec<String>,
    pub const_patterns: Vec<String>,
    pub keys: Vec<Template<usize>>,
    pub tags: Vec<Template<usize>>,
    pub patterns: Vec<Template<usize>>,
    pub max_keys_per_tx: u32,
    pub has_fallback: bool,
    /// Globs over the templates that may lack a value in this binding (a
    /// column the relation description lacks, an old value its replica
    /// identity does not send), output once per transaction when one did.
    /// Empty when the rule is not degraded, or when its placeholder-free
    /// tags and patterns (out with its first change) already stand for the
    /// whole table.
    pub fallback: Vec<String>,
    /// For each pattern template (in the order of `patterns`), what stands
    /// in for it when it renders longer than `max_key_bytes`.
    pub pattern_covers: Vec<Cover>,
    /// `at:` templates (one placeholder each): when to invalidate the
    /// rule's output for the row again.
    pub at: Vec<Template<usize>>,
    /// `refresh: true`: the rule's keys also go to the refresh stream.
    pub refresh: bool,
}

/// Constant invalidations that stand in for a pattern too long to send.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cover {
    pub keys: Vec<String>,
    pub tags: Vec<String>,
    pub patterns: Vec<String>,
}

impl BoundRule {
    fn has_templates(&self) -> bool {
        !(self.keys.is_empty() && self.tags.is_empty() && self.patterns.is_empty())
    }
}

/// The rules of one table, bound to its columns. Immutable, `Send + Sync`;
/// keep one per relation and rebuild it when the relation's columns change.
#[derive(Clone, Debug)]
pub struct BoundTable {
    table: TableName,
    columns: Vec<String>,
    rules: Vec<BoundRule>,
    limit: KeyLimit,
    /// Per column: the replica identity does not send its old value and a
    /// rule reads it. Empty when nothing is unsent.
    old_unsent: Vec<bool>,
    /// Rules bound in degraded form, for the caller to count and report.
    degraded: Vec<Degraded>,
}

/// Pushes `s` unless the current change (entries from `from` on) has it.
fn push_unique(list: &mut Vec<String>, from: usize, s: &str) -> bool {
    if list.get(from..).is_some_and(|l| l.iter().any(|x| x == s)) {
        return false;
    }
    list.push(s.to_owned());
    true
}

#[derive(Clone, Copy)]
enum Target {
    Keys,
    Tags,
    Patterns,
}

impl BoundTable {
    pub(crate) fn new(
        table: TableName,
        columns: Vec<String>,
        rules: Vec<BoundRule>,
        limit: KeyLimit,
    ) -> Self {
        BoundTable {
            table,
            columns,
            rules,
            limit,
            old_unsent: Vec::new(),
            degraded: Vec::new(),
        }
    }

    /// Sets what [`RuleSet::bind_lenient`](crate::RuleSet::bind_lenient)
    /// found degraded.
    pub(crate) fn with_degraded(mut self, old_unsent: Vec<bool>, degraded: Vec<Degraded>) -> Self {
        self.old_unsent = if old_unsent.contains(&true) {
            old_unsent
        } else {
            Vec::new()
        };
        self.degraded = degraded;
        self
    }

    /// The rules bound in degraded form (see
    /// [`RuleSet::bind_lenient`](crate::RuleSet::bind_lenient)); empty
    /// after [`RuleSet::bind`](crate::RuleSet::bind).
    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// The table bound.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The columns bound, in index order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The indexes ([`crate::RuleInfo::index`]) of the rules that apply.
    pub fn rule_indexes(&self) -> Vec<usize> {
        self.rules.iter().map(|r| r.id).collect()
    }

    /// Columns whose OLD value the rules read on update or delete: `{col}`
    /// and `{old.col}` placeholders, `old:` comparisons, `changed:` columns.
    /// Key columns are included; the caller subtracts what the table's
    /// replica identity sends and fails (or warns) on the rest. In column
    /// order, each once.
    pub fn needs_old_values(&self) -> Vec<&str> {
        let mut idx: Vec<usize> = Vec::new();
        for r in &self.rules {
            let update = r.ops.contains(Op::Update);
            if !update && !r.ops.contains(Op::Delete) {
                continue;
            }
            for t in r.keys.iter().chain(&r.tags).chain(&r.patterns).chain(&r.at) {
                idx.extend(t.holes().filter(|h| h.side != Side::New).map(|h| h.column));
            }
            if let Some(when) = &r.when {
                when.old_columns(update, &mut |c| idx.push(*c));
            }
        }
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .filter_map(|i| self.columns.get(i).map(String::as_str))
            .collect()
    }

    /// Indexes of the columns whose values the rules read on any operation
    /// and side: placeholders in keys, tags and patterns, and every column a
    /// `when` condition compares or checks for change. Sorted, each once.
    /// A caller that must convert values before the rules see them (binary
    /// mode) checks at bind time that it can convert these.
    pub fn used_columns(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = Vec::new();
        for r in &self.rules {
            for t in r.keys.iter().chain(&r.tags).chain(&r.patterns).chain(&r.at) {
                idx.extend(t.holes().map(|h| h.column));
            }
            if let Some(when) = &r.when {
                when.columns(&mut |c| idx.push(*c));
            }
        }
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    /// Evaluates one row change against the table's rules and appends what
    /// it invalidates to `out`.
    ///
    /// `old` is the old tuple when Postgres sent one (updates under a
    /// replica identity that saw a change, deletes), `new` the new tuple
    /// (inserts, updates). `budget` carries the transaction's state (see
    /// [`TxBudget`]). `Op::Truncate` is the same as [`BoundTable::truncate`].
    pub fn evaluate(
        &self,
        op: Op,
        old: Option<&dyn RowValues>,
        new: Option<&dyn RowValues>,
        budget: &mut TxBudget,
        out: &mut Invalidations,
    ) -> Outcome {
        if op == Op::Truncate {
            return self.truncate(out);
        }
        let change = Change {
            op,
            old,
            new,
            old_unsent: &self.old_unsent,
        };
        let from = (out.keys.len(), out.tags.len(), out.patterns.len());
        let refresh_from = out.refresh.len();
        let mut outcome = Outcome::default();
        for rule in &self.rules {
            if !rule.ops.contains(op) {
                continue;
            }
            if let Some(when) = &rule.when {
                match when.eval(&change) {
                    Truth::False => continue,
                    Truth::True => {}
                    // Undecidable: fire anyway (see `condition`).
                    Truth::Unknown { missing } => outcome.missing += u32::from(missing),
                }
            }
            outcome.matched_rules += 1;
            let state = budget.state(rule.id);
            if !state.constants_sent {
                state.constants_sent = true;
                push_constants(rule, out, from);
            }
            if state.escalated {
                continue;
            }
            self.render_rule(rule, &change, state, out, from, &mut outcome);
            if (rule.refresh || !rule.at.is_empty()) && !state.escalated {
                // The row's own output is rendered again only when something
                // stands alone on it: a refresh, or a due time.
                let dues = due_times(rule, &change, &mut outcome);
                if rule.refresh || !dues.is_empty() {
                    let row = self.row_output(rule, &change);
                    if rule.refresh {
                        for k in &row.keys {
                            push_unique(&mut out.refresh, refresh_from, k);
                        }
                    }
                    if !dues.is_empty() && !row.is_empty() {
                        schedule_row(rule, &dues, row, state, out, &mut outcome);
                    }
                }
            }
        }
        outcome
    }

    /// Everything `rule` names for this row, its constants included,
    /// whatever the transaction already sent: a scheduled entry or a
    /// refresh stands alone.
    fn row_output(&self, rule: &BoundRule, change: &Change<'_>) -> Invalidations {
        let mut row = Invalidations::default();
        push_constants(rule, &mut row, (0, 0, 0));
        let (mut scratch, mut ignored) = (RuleState::default(), Outcome::default());
        self.render_rule(
            rule,
            change,
            &mut scratch,
            &mut row,
            (0, 0, 0),
            &mut ignored,
        );
        row
    }

    fn render_rule(
        &self,
        rule: &BoundRule,
        change: &Change<'_>,
        state: &mut RuleState,
        out: &mut Invalidations,
        from: (usize, usize, usize),
        outcome: &mut Outcome,
    ) {
        let lists = [
            (Target::Keys, &rule.keys, &*rule.key_prefix),
            (Target::Tags, &rule.tags, ""),
            (Target::Patterns, &rule.patterns, &*rule.pattern_prefix),
        ];
        let missing_before = outcome.missing;
        for (target, templates, prefix) in lists {
            for (index, template) in templates.iter().enumerate() {
                let (mut missing, mut null) = (false, false);
                let views = match template.views(change) {
                    [_, new] if template.same_in_both_views(change) => std::slice::from_ref(new),
                    views => views,
                };
                // Keys and tags are names the application computes the same
                // way, so a long one is hashed (or refused); a pattern is
                // replaced by its cover.
                let overlong = match (target, self.limit.policy) {
                    (Target::Patterns, _) | (_, LongKeyPolicy::Refuse) => Overlong::Refuse,
                    (_, LongKeyPolicy::Hash) => Overlong::Hash,
                };
                for &view in views {
                    let rendered = match template.render_noting(
                        change,
                        view,
                        prefix,
                        matches!(target, Target::Patterns),
                        self.limit.max_key_bytes,
                        overlong,
                    ) {
                        Ok((s, hashed)) => {
                            outcome.hashed += u32::from(hashed);
                            s
                        }
                        Err(Skip::Missing) => {
                            missing = true;
                            continue;
                        }
                        Err(Skip::Null) => {
                            null = true;
                            continue;
                        }
                        Err(Skip::NotApplicable) => continue,
                        Err(Skip::TooLong) if matches!(target, Target::Patterns) => {
                            outcome.oversize += 1;
                            if let Some(cover) = rule.pattern_covers.get(index) {
                                push_cover(cover, out, from);
                            }
                            continue;
                        }
                        Err(Skip::TooLong) => {
                            outcome.refused += 1;
                            continue;
                        }
                    };
                    let (list, start) = match target {
                        Target::Keys => (&mut out.keys, from.0),
                        Target::Tags => (&mut out.tags, from.1),
                        Target::Patterns => (&mut out.patterns, from.2),
                    };
                    if list.get(start..).is_some_and(|l| l.contains(&rendered)) {
                        continue;
                    }
                    if rule.has_fallback && state.emitted >= rule.max_keys_per_tx {
                        // The placeholder-free outputs went out with the
                        // transaction's first change of this rule.
                        state.escalated = true;
                        outcome.escalated += 1;
                        outcome.missing += u32::from(missing);
                        outcome.null += u32::from(null);
                        return;
                    }
                    state.emitted += 1;
                    list.push(rendered);
                }
                outcome.missing += u32::from(missing);
                outcome.null += u32::from(null);
            }
        }
        // (The early return above is an escalation, which only a rule with
        // placeholder-free tags or patterns has; such a rule has no
        // fallback globs.)
        if outcome.missing > missing_before && !state.fallback_sent && !rule.fallback.is_empty() {
            // A degraded rule could not render a template: its globs cover
            // whatever that template would have named, for every row of
            // the transaction.
            state.fallback_sent = true;
            for p in &rule.fallback {
                push_unique(&mut out.patterns, from.2, p);
            }
        }
    }

    /// What a TRUNCATE of the table invalidates: the placeholder-free keys,
    /// tags and patterns of every rule that reacts to truncate. A rule with
    /// templates but no placeholder-free tag or pattern counts as `missing`.
    pub fn truncate(&self, out: &mut Invalidations) -> Outcome {
        let from = (out.keys.len(), out.tags.len(), out.patterns.len());
        let mut outcome = Outcome::default();
        for rule in self.rules.iter().filter(|r| r.ops.contains(Op::Truncate)) {
            outcome.matched_rules += 1;
            push_constants(rule, out, from);
            if rule.has_templates() && !rule.has_fallback {
                outcome.missing += 1;
            }
        }
        outcome
    }
}

/// The distinct times the rule's `at:` templates read for this row. A NULL
/// or `infinity` names none; a value that is not a timestamp is counted.
fn due_times(rule: &BoundRule, change: &Change<'_>, outcome: &mut Outcome) -> Vec<i64> {
    let mut dues: Vec<i64> = Vec::new();
    for template in &rule.at {
        for &view in template.views(change) {
            match template.render(change, view, "", false, MAX_TIMESTAMP_LEN, Overlong::Refuse) {
                Ok(text) => match read_due(&text) {
                    Due::At(due) if !dues.contains(&due) => dues.push(due),
                    Due::At(_) | Due::Never => {}
                    Due::Unreadable => outcome.unreadable_at += 1,
                },
                Err(Skip::TooLong) => outcome.unreadable_at += 1,
                Err(Skip::Missing) => outcome.missing += 1,
                Err(Skip::Null | Skip::NotApplicable) => {}
            }
        }
    }
    dues
}

/// Schedules `row` (what `rule` names for this change) at each of `dues`.
/// Each entry counts against the rule's `max_keys_per_tx` like a rendered
/// key: an escalated rule schedules no more in the transaction.
fn schedule_row(
    rule: &BoundRule,
    dues: &[i64],
    row: Invalidations,
    state: &mut RuleState,
    out: &mut Invalidations,
    outcome: &mut Outcome,
) {
    for &due in dues {
        if rule.has_fallback && state.emitted >= rule.max_keys_per_tx {
            state.escalated = true;
            outcome.escalated += 1;
            return;
        }
        state.emitted += 1;
        out.schedule.push(Scheduled {
            due_unix_micros: due,
            keys: row.keys.clone(),
            tags: row.tags.clone(),
            patterns: row.patterns.clone(),
            refresh: if rule.refresh {
                row.keys.clone()
            } else {
                Vec::new()
            },
        });
    }
}

fn push_cover(cover: &Cover, out: &mut Invalidations, from: (usize, usize, usize)) {
    push_lists([&cover.keys, &cover.tags, &cover.patterns], out, from);
}

fn push_constants(rule: &BoundRule, out: &mut Invalidations, from: (usize, usize, usize)) {
    push_lists(
        [&rule.const_keys, &rule.const_tags, &rule.const_patterns],
        out,
        from,
    );
}

/// Appends keys, tags and patterns to `out`, each unless the change already
/// added it (`from`: where the change's entries start in each list).
fn push_lists(lists: [&[String]; 3], out: &mut Invalidations, from: (usize, usize, usize)) {
    let [keys, tags, patterns] = lists;
    for k in keys {
        push_unique(&mut out.keys, from.0, k);
    }
    for t in tags {
        push_unique(&mut out.tags, from.1, t);
    }
    for p in patterns {
        push_unique(&mut out.patterns, from.2, p);
    }
}

#[cfg(test)]
mod tests;
