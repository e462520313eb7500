//! What a row change looks like to the rules: the operation, and old and new
//! values read by column index.
//!
//! The caller (the cdc crate) owns the decoded tuples; rules only borrow them
//! through [`RowValues`], so evaluation copies no value it does not put into
//! an output string.

use std::fmt;

/// The operation a row change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// INSERT: a new row, no old row.
    Insert,
    /// UPDATE: a new row, and an old row when the replica identity sent one.
    Update,
    /// DELETE: an old row (key columns, or all with `REPLICA IDENTITY FULL`).
    Delete,
    /// TRUNCATE: no row at all.
    Truncate,
}

impl Op {
    /// Every operation, in the order used in messages.
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// The lowercase name used in rules.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A small set of operations (a rule's `on`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpSet(u8);

impl OpSet {
    pub(crate) const ALL: OpSet = OpSet(0b1111);

    pub(crate) fn insert(&mut self, op: Op) -> bool {
        let fresh = !self.contains(op);
        self.0 |= op.bit();
        fresh
    }

    pub(crate) fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    pub(crate) fn to_vec(self) -> Vec<Op> {
        Op::ALL
            .into_iter()
            .filter(|op| self.contains(*op))
            .collect()
    }
}

/// One column value of a row, as Postgres sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// The value in Postgres's text output format.
    Text(&'a str),
    /// An unchanged TOASTed value: Postgres did not resend it because the
    /// UPDATE did not touch it. Equal to the old value, which may or may not
    /// be known.
    Unchanged,
    /// Not sent at all: a non-key column of a key-only old tuple, or a column
    /// index the row does not have.
    Absent,
}

/// Read access to one row's values, by the column index the table was bound
/// with ([`crate::RuleSet::bind`]'s `columns`).
///
/// Contract: `get` is cheap and pure (the same index gives the same value for
/// the whole evaluation), never panics, and returns [`Datum::Absent`] for an
/// index the row does not have.
pub trait RowValues {
    /// The value of column `column`.
    fn get(&self, column: usize) -> Datum<'_>;
}

impl<const N: usize> RowValues for [Datum<'_>; N] {
    fn get(&self, column: usize) -> Datum<'_> {
        self.as_slice()
            .get(column)
            .copied()
            .unwrap_or(Datum::Absent)
    }
}

impl RowValues for Vec<Datum<'_>> {
    fn get(&self, column: usize) -> Datum<'_> {
        self.as_slice()
            .get(column)
            .copied()
            .unwrap_or(Datum::Absent)
    }
}

/// A value as a template or condition sees it once the operation and the
/// unchanged-TOAST rules have been applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Text(&'a str),
    Null,
    /// The value exists but did not arrive (unchanged TOAST without an old
    /// value, or an old value the replica identity did not send).
    Missing,
    /// The side does not exist for this operation (`new` on a delete, `old`
    /// on an insert): not an error, the reference just does not apply.
    NotApplicable,
}

impl<'a> From<Datum<'a>> for Val<'a> {
    fn from(d: Datum<'a>) -> Self {
        match d {
            Datum::Text(s) => Val::Text(s),
            Datum::Null => Val::Null,
            Datum::Unchanged | Datum::Absent => Val::Missing,
        }
    }
}

/// Which row a template rendering stands for. On an update a template with
/// `{col}` placeholders is rendered once for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    Old,
    New,
}

/// One row change, borrowed for the time of an evaluation.
#[derive(Clone, Copy)]
pub(crate) struct Change<'a> {
    pub op: Op,
    pub old: Option<&'a dyn RowValues>,
    pub new: Option<&'a dyn RowValues>,
    /// Per column: the relation's replica identity does not send its old
    /// value, so an old value that did not arrive is unknown rather than
    /// equal to the new one. Empty when every old value the rules read is
    /// sent (see `BoundTable::degraded`).
    pub old_unsent: &'a [bool],
}

impl<'a> Change<'a> {
    /// `{new.col}`: the new row's value.
    pub fn new_val(&self, column: usize) -> Val<'a> {
        match self.new {
            None if self.op == Op::Delete => Val::NotApplicable,
            None => Val::Missing,
            Some(new) => match new.get(column) {
                // Unchanged TOAST equals the old value: use it when it came.
                Datum::Unchanged => self.old.map_or(Val::Missing, |o| o.get(column).into()),
                d => d.into(),
            },
        }
    }

    /// `{old.col}`: the old row's value.
    pub fn old_val(&self, column: usize) -> Val<'a> {
        match self.old {
            None if self.op == Op::Insert => Val::NotApplicable,
            None => Val::Missing,
            Some(old) => match old.get(column) {
                Datum::Unchanged => self.new.map_or(Val::Missing, |n| n.get(column).into()),
                d => d.into(),
            },
        }
    }

    /// Whether the replica identity does not send column `column`'s old value.
    pub fn old_unsent(&self, column: usize) -> bool {
        self.old_unsent.get(column).copied().unwrap_or(false)
    }

    /// `{col}` in the rendering for `view`: the new value on insert, the old
    /// one on delete; on update the side `view` names, where an old value
    /// that was not sent falls back to the new one (a missing old tuple
    /// means the replica identity judged nothing relevant changed; see
    /// `BoundTable::needs_old_values`). That holds only for the columns the
    /// replica identity sends: the old value of any other column is
    /// missing, since it may have changed unseen.
    pub fn row_val(&self, column: usize, view: View) -> Val<'a> {
        match self.op {
            Op::Insert | Op::Truncate => self.new_val(column),
            Op::Delete => self.old_val(column),
            Op::Update => match (view, self.old) {
                (View::New, _) => self.new_val(column),
                (View::Old, None) if self.old_unsent(column) => Val::Missing,
                (View::Old, None) => self.new_val(column),
                (View::Old, Some(old)) => match old.get(column) {
                    Datum::Text(s) => Val::Text(s),
                    Datum::Null => Val::Null,
                    Datum::Absent if self.old_unsent(column) => Val::Missing,
                    Datum::Unchanged | Datum::Absent => self.new_val(column),
                },
            },
        }
    }
}

/// A change over plain rows, for the tests of the modules that read one.
#[cfg(test)]
pub(crate) fn change<'a>(
    op: Op,
    old: Option<&'a Vec<Datum<'a>>>,
    new: Option<&'a Vec<Datum<'a>>>,
) -> Change<'a> {
    Change {
        op,
        old: old.map(|r| r as &dyn RowValues),
        new: new.map(|r| r as &dyn RowValues),
        old_unsent: &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_answer_absent_past_the_end() {
        let row = vec![Datum::Text("1")];
        assert_eq!(RowValues::get(&row, 0), Datum::Text("1"));
        assert_eq!(RowValues::get(&row, 7), Datum::Absent);
        let arr = [Datum::Null];
        assert_eq!(RowValues::get(&arr, 0), Datum::Null);
        assert_eq!(RowValues::get(&arr, 1), Datum::Absent);
    }

    #[test]
    fn unchanged_toast_resolves_through_the_other_side() {
        let old = vec![Datum::Text("big")];
        let new = vec![Datum::Unchanged];
        let c = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(c.new_val(0), Val::Text("big"));
        assert_eq!(c.row_val(0, View::New), Val::Text("big"));
        let c = change(Op::Update, None, Some(&new));
        assert_eq!(c.new_val(0), Val::Missing);
    }

    #[test]
    fn sides_that_do_not_exist_do_not_apply() {
        let row = vec![Datum::Text("1")];
        assert_eq!(
            change(Op::Insert, None, Some(&row)).old_val(0),
            Val::NotApplicable
        );
        assert_eq!(
            change(Op::Delete, Some(&row), None).new_val(0),
            Val::NotApplicable
        );
        // An update without an old tuple: the old value exists but was not sent.
        assert_eq!(
            change(Op::Update, None, Some(&row)).old_val(0),
            Val::Missing
        );
    }

    #[test]
    fn row_value_on_update_falls_back_to_new_when_old_not_sent() {
        let old = vec![Datum::Text("1"), Datum::Absent];
        let new = vec![Datum::Text("1"), Datum::Text("b")];
        let c = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(c.row_val(1, View::Old), Val::Text("b"));
        assert_eq!(c.row_val(0, View::Old), Val::Text("1"));
        let old = vec![Datum::Text("1"), Datum::Null];
        let c = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(c.row_val(1, View::Old), Val::Null);
        assert_eq!(c.row_val(1, View::New), Val::Text("b"));
    }

    #[test]
    fn an_old_value_the_identity_does_not_send_is_missing() {
        let new = vec![Datum::Text("1"), Datum::Text("b")];
        let unsent = [false, true];
        let mut c = change(Op::Update, None, Some(&new));
        c.old_unsent = &unsent;
        assert_eq!(c.row_val(0, View::Old), Val::Text("1"), "key: unchanged");
        assert_eq!(c.row_val(1, View::Old), Val::Missing);
        assert_eq!(c.row_val(1, View::New), Val::Text("b"));
        let key_only = vec![Datum::Text("0"), Datum::Absent];
        c.old = Some(&key_only);
        assert_eq!(c.row_val(0, View::Old), Val::Text("0"));
        assert_eq!(c.row_val(1, View::Old), Val::Missing);
    }

    #[test]
    fn op_set() {
        let mut s = OpSet::default();
        assert!(Op::ALL.iter().all(|op| !s.contains(*op)));
        assert!(s.insert(Op::Delete));
        assert!(!s.insert(Op::Delete));
        assert!(s.contains(Op::Delete));
        assert!(!s.contains(Op::Insert));
        assert_eq!(OpSet::ALL.to_vec(), Op::ALL.to_vec());
    }
}
