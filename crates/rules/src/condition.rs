//! `when` conditions, compiled: a small tree evaluated with three-valued
//! logic.
//!
//! A comparison that cannot be decided (it reads a row the operation does
//! not have, or a value that did not arrive) is *unknown*. Unknown goes
//! through `all`/`any`/`not` like SQL's NULL, and a rule whose condition ends
//! unknown still fires: a needless invalidation costs a cache miss, a
//! skipped one serves stale data.

use crate::row::{Change, Datum, Op, Val};

/// The row a comparison reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpSide {
    Old,
    New,
}

/// A test on one value. Values compare as text, as Postgres prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Test {
    IsNull,
    NotNull,
    Eq(Box<str>),
    Ne(Box<str>),
    In(Vec<Box<str>>),
    NotIn(Vec<Box<str>>),
}

impl Test {
    /// NULL is a known value: it equals nothing, so `ne`/`not_in` hold.
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Test::IsNull, v) => v.is_none(),
            (Test::NotNull, v) => v.is_some(),
            (Test::Eq(e), v) => v == Some(&**e),
            (Test::Ne(e), v) => v != Some(&**e),
            (Test::In(set), Some(v)) => set.iter().any(|e| **e == *v),
            (Test::In(_), None) => false,
            (Test::NotIn(set), Some(v)) => !set.iter().any(|e| **e == *v),
            (Test::NotIn(_), None) => true,
        }
    }
}

/// A condition; `C` is a column name at load and an index once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cond<C> {
    All(Vec<Cond<C>>),
    Any(Vec<Cond<C>>),
    Not(Box<Cond<C>>),
    /// Update only: one of the columns differs between old and new.
    Changed(Vec<C>),
    Compare {
        side: CmpSide,
        column: C,
        test: Test,
    },
}

/// Three-valued truth. `missing` tells whether an unknown comes from a
/// value that did not arrive (worth a metric) rather than from a side the
/// operation does not have (normal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Truth {
    False,
    True,
    Unknown { missing: bool },
}

impl Truth {
    fn unknown_or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::Unknown { missing: a }, Truth::Unknown { missing: b }) => {
                Truth::Unknown { missing: a || b }
            }
            (u @ Truth::Unknown { .. }, _) | (_, u @ Truth::Unknown { .. }) => u,
            (t, _) => t,
        }
    }
}

impl<C> Cond<C> {
    /// The same condition with columns mapped by `f`.
    pub fn try_map<D, E>(&self, f: &mut impl FnMut(&C) -> Result<D, E>) -> Result<Cond<D>, E> {
        Ok(match self {
            Cond::All(cs) => Cond::All(cs.iter().map(|c| c.try_map(f)).collect::<Result<_, _>>()?),
            Cond::Any(cs) => Cond::Any(cs.iter().map(|c| c.try_map(f)).collect::<Result<_, _>>()?),
            Cond::Not(c) => Cond::Not(Box::new(c.try_map(f)?)),
            Cond::Changed(cols) => {
                Cond::Changed(cols.iter().map(&mut *f).collect::<Result<_, _>>()?)
            }
            Cond::Compare { side, column, test } => Cond::Compare {
                side: *side,
                column: f(column)?,
                test: test.clone(),
            },
        })
    }

    /// Calls `f` with every column the condition reads, on either side.
    pub fn columns<'s>(&'s self, f: &mut impl FnMut(&'s C)) {
        match self {
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| c.columns(f)),
            Cond::Not(c) => c.columns(f),
            Cond::Changed(cols) => cols.iter().for_each(f),
            Cond::Compare { column, .. } => f(column),
        }
    }

    /// Calls `f` with every column whose old value the condition reads:
    /// `old:` comparisons, and `changed:` columns when `with_changed` (they
    /// read old values on updates only).
    pub fn old_columns<'s>(&'s self, with_changed: bool, f: &mut impl FnMut(&'s C)) {
        match self {
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| c.old_columns(with_changed, f)),
            Cond::Not(c) => c.old_columns(with_changed, f),
            Cond::Changed(cols) if with_changed => cols.iter().for_each(f),
            Cond::Changed(_) => {}
            Cond::Compare {
                side: CmpSide::Old,
                column,
                ..
            } => f(column),
            Cond::Compare {
                side: CmpSide::New, ..
            } => {}
        }
    }
}

impl Cond<usize> {
    pub fn eval(&self, change: &Change<'_>) -> Truth {
        match self {
            Cond::All(cs) => {
                let mut acc = Truth::True;
                for c in cs {
                    match c.eval(change) {
                        Truth::False => return Truth::False,
                        t => acc = acc.unknown_or(t),
                    }
                }
                acc
            }
            Cond::Any(cs) => {
                let mut acc = Truth::False;
                for c in cs {
                    match c.eval(change) {
                        Truth::True => return Truth::True,
                        t => acc = acc.unknown_or(t),
                    }
                }
                acc
            }
            Cond::Not(c) => match c.eval(change) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                u => u,
            },
            Cond::Changed(cols) => {
                if change.op != Op::Update {
                    return Truth::True;
                }
                let mut acc = Truth::False;
                for &col in cols {
                    match changed(change, col) {
                        Truth::True => return Truth::True,
                        t => acc = acc.unknown_or(t),
                    }
                }
                acc
            }
            Cond::Compare { side, column, test } => {
                let value = match side {
                    CmpSide::Old => change.old_val(*column),
                    CmpSide::New => change.new_val(*column),
                };
                match value {
                    Val::Text(s) => truth(test.holds(Some(s))),
                    Val::Null => truth(test.holds(None)),
                    Val::Missing => Truth::Unknown { missing: true },
                    Val::NotApplicable => Truth::Unknown { missing: false },
                }
            }
        }
    }
}

fn truth(b: bool) -> Truth {
    if b {
        Truth::True
    } else {
        Truth::False
    }
}

/// Whether column `col` changed in an update.
fn changed(change: &Change<'_>, col: usize) -> Truth {
    const UNKNOWN: Truth = Truth::Unknown { missing: true };
    let Some(new) = change.new else {
        return UNKNOWN;
    };
    let new = new.get(col);
    // Unchanged TOAST is, by definition, not a change.
    if new == Datum::Unchanged {
        return Truth::False;
    }
    let Some(old) = change.old else {
        return UNKNOWN;
    };
    match (old.get(col), new) {
        (Datum::Unchanged, _) => Truth::False,
        (Datum::Absent, _) | (_, Datum::Absent) => UNKNOWN,
        (o, n) => truth(o != n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::RowValues;

    fn change<'a>(
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

    fn cmp(side: CmpSide, column: usize, test: Test) -> Cond<usize> {
        Cond::Compare { side, column, test }
    }

    const U: Truth = Truth::Unknown { missing: false };
    const M: Truth = Truth::Unknown { missing: true };

    #[test]
    fn tests_on_text_and_null() {
        let eq = Test::Eq("paid".into());
        assert!(eq.holds(Some("paid")));
        assert!(!eq.holds(Some("new")));
        assert!(!eq.holds(None));
        assert!(Test::Ne("paid".into()).holds(None));
        assert!(!Test::Ne("paid".into()).holds(Some("paid")));
        let set = vec!["a".into(), "b".into()];
        assert!(Test::In(set.clone()).holds(Some("b")));
        assert!(!Test::In(set.clone()).holds(Some("c")));
        assert!(!Test::In(set.clone()).holds(None));
        assert!(Test::NotIn(set.clone()).holds(Some("c")));
        assert!(Test::NotIn(set).holds(None));
        assert!(Test::IsNull.holds(None) && !Test::IsNull.holds(Some("")));
        assert!(Test::NotNull.holds(Some("")) && !Test::NotNull.holds(None));
    }

    #[test]
    fn compare_sides() {
        let old = vec![Datum::Text("new")];
        let new = vec![Datum::Text("paid")];
        let up = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(
            cmp(CmpSide::New, 0, Test::Eq("paid".into())).eval(&up),
            Truth::True
        );
        assert_eq!(
            cmp(CmpSide::Old, 0, Test::Eq("paid".into())).eval(&up),
            Truth::False
        );
        let ins = change(Op::Insert, None, Some(&new));
        assert_eq!(cmp(CmpSide::Old, 0, Test::IsNull).eval(&ins), U);
        let del = change(Op::Delete, Some(&old), None);
        assert_eq!(cmp(CmpSide::New, 0, Test::IsNull).eval(&del), U);
        let up_no_old = change(Op::Update, None, Some(&new));
        assert_eq!(cmp(CmpSide::Old, 0, Test::IsNull).eval(&up_no_old), M);
    }

    #[test]
    fn changed_columns() {
        let old = vec![
            Datum::Text("1"),
            Datum::Text("a"),
            Datum::Null,
            Datum::Absent,
        ];
        let new = vec![
            Datum::Text("1"),
            Datum::Unchanged,
            Datum::Text("x"),
            Datum::Text("y"),
        ];
        let up = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(Cond::Changed(vec![0]).eval(&up), Truth::False);
        assert_eq!(
            Cond::Changed(vec![1]).eval(&up),
            Truth::False,
            "unchanged TOAST did not change"
        );
        assert_eq!(
            Cond::Changed(vec![2]).eval(&up),
            Truth::True,
            "NULL to a value is a change"
        );
        assert_eq!(Cond::Changed(vec![3]).eval(&up), M);
        assert_eq!(Cond::Changed(vec![0, 3]).eval(&up), M);
        assert_eq!(Cond::Changed(vec![3, 2]).eval(&up), Truth::True);
        let up_no_old = change(Op::Update, None, Some(&new));
        assert_eq!(Cond::Changed(vec![0]).eval(&up_no_old), M);
        assert_eq!(Cond::Changed(vec![1]).eval(&up_no_old), Truth::False);
        let ins = change(Op::Insert, None, Some(&new));
        assert_eq!(Cond::Changed(vec![0]).eval(&ins), Truth::True);
        let del = change(Op::Delete, Some(&old), None);
        assert_eq!(Cond::Changed(vec![0]).eval(&del), Truth::True);
    }

    #[test]
    fn three_valued_combinators() {
        let row = vec![Datum::Text("a"), Datum::Absent];
        let ins = change(Op::Insert, None, Some(&row));
        let t = || cmp(CmpSide::New, 0, Test::Eq("a".into()));
        let f = || cmp(CmpSide::New, 0, Test::Eq("b".into()));
        let m = || cmp(CmpSide::New, 1, Test::Eq("b".into()));
        let u = || cmp(CmpSide::Old, 0, Test::Eq("b".into()));
        assert_eq!(Cond::All(vec![t(), t()]).eval(&ins), Truth::True);
        assert_eq!(Cond::All(vec![t(), f()]).eval(&ins), Truth::False);
        assert_eq!(Cond::All(vec![m(), f()]).eval(&ins), Truth::False);
        assert_eq!(Cond::All(vec![t(), m()]).eval(&ins), M);
        assert_eq!(Cond::All(vec![u(), t()]).eval(&ins), U);
        assert_eq!(Cond::All(vec![u(), m()]).eval(&ins), M);
        assert_eq!(Cond::Any(vec![f(), t()]).eval(&ins), Truth::True);
        assert_eq!(Cond::Any(vec![m(), t()]).eval(&ins), Truth::True);
        assert_eq!(Cond::Any(vec![f(), f()]).eval(&ins), Truth::False);
        assert_eq!(Cond::Any(vec![f(), u()]).eval(&ins), U);
        assert_eq!(Cond::Not(Box::new(t())).eval(&ins), Truth::False);
        assert_eq!(Cond::Not(Box::new(f())).eval(&ins), Truth::True);
        assert_eq!(Cond::Not(Box::new(m())).eval(&ins), M);
    }

    #[test]
    fn old_columns_lists_old_reads_only() {
        let c: Cond<&str> = Cond::All(vec![
            Cond::Changed(vec!["a", "b"]),
            Cond::Not(Box::new(Cond::Compare {
                side: CmpSide::Old,
                column: "c",
                test: Test::IsNull,
            })),
            Cond::Compare {
                side: CmpSide::New,
                column: "d",
                test: Test::IsNull,
            },
        ]);
        let mut seen = Vec::new();
        c.old_columns(true, &mut |c| seen.push(*c));
        assert_eq!(seen, vec!["a", "b", "c"]);
        seen.clear();
        c.old_columns(false, &mut |c| seen.push(*c));
        assert_eq!(seen, vec!["c"]);
    }
}
