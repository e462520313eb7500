//! Templates: `"product:{id}"` compiled once into literal and placeholder
//! segments, placeholders bound to column indexes, rendered per change.
//!
//! Parsing happens at load (errors carry the rule's position), column names
//! become indexes at bind, so rendering is a walk over a short segment list
//! that writes into one exactly-sized string.

use crate::hash::{push_hash, Fnv, HASH_LEN};
use crate::row::{Change, Val, View};

/// Which row a placeholder reads (see [`crate::RuleSet::template_columns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `{col}`: new on insert, old on delete, both on update.
    Row,
    /// `{old.col}`.
    Old,
    /// `{new.col}`.
    New,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hole<C> {
    pub side: Side,
    pub column: C,
    /// `{col:hash}`: render the value's hash instead of the value.
    pub hash: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment<C> {
    Lit(Box<str>),
    Hole(Hole<C>),
}

/// A parsed template; `C` is a column name at load and an index once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template<C> {
    segments: Vec<Segment<C>>,
    /// Bytes of literal text, to size the output in one allocation.
    literal_len: usize,
    has_row_hole: bool,
}

/// Why a template produced nothing for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// A value it needs did not arrive.
    Missing,
    /// A value it needs is NULL.
    Null,
    /// It reads a side the operation does not have (`{new.x}` on delete).
    NotApplicable,
    /// It would be longer than the limit, and [`Overlong::Refuse`] was asked.
    TooLong,
}

/// What [`Template::render`] does with a string longer than its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overlong {
    /// Builds nothing and says [`Skip::TooLong`].
    Refuse,
    /// Renders `<prefix>#<hash of the rest>`, the long-key hash, computed from the values
    /// piece by piece: the long string is never built.
    Hash,
}

/// The characters a Redis glob pattern gives meaning to.
fn is_glob_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '\\')
}

/// Appends `s` with every glob metacharacter backslash-escaped, so that it
/// matches only itself inside a pattern.
pub(crate) fn push_glob_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if is_glob_meta(c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `s` escaped for use inside a Redis glob pattern.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    push_glob_escaped(&mut out, s);
    out
}

fn glob_escaped_len(s: &str) -> usize {
    s.len() + s.bytes().filter(|b| is_glob_meta(char::from(*b))).count()
}

impl Template<String> {
    /// Parses template text. The error message quotes the template (rules
    /// text, never row data).
    pub fn parse(src: &str) -> Result<Self, String> {
        if src.is_empty() {
            return Err("empty template".to_owned());
        }
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = src.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in template {src:?} (write `}}}}` for a literal brace)"
                    ))
                }
                '{' => {
                    let body_start = i + 1;
                    let mut body_end = None;
                    for (j, c) in chars.by_ref() {
                        match c {
                            '}' => {
                                body_end = Some(j);
                                break;
                            }
                            '{' => {
                                return Err(format!(
                                    "`{{` inside a placeholder in template {src:?} (write `{{{{` for a literal brace)"
                                ))
                            }
                            _ => {}
                        }
                    }
                    let Some(body_end) = body_end else {
                        return Err(format!(
                            "unclosed placeholder in template {src:?} (write `{{{{` for a literal brace)"
                        ));
                    };
                    let body = src.get(body_start..body_end).unwrap_or_default();
                    let hole = parse_placeholder(body)?;
                    if !lit.is_empty() {
                        segments.push(Segment::Lit(std::mem::take(&mut lit).into_boxed_str()));
                    }
                    segments.push(Segment::Hole(hole));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit.into_boxed_str()));
        }
        Ok(Self::from_segments(segments))
    }
}

fn parse_placeholder(body: &str) -> Result<Hole<String>, String> {
    if body.is_empty() {
        return Err("empty placeholder `{}` (write `{{}}` for literal braces)".to_owned());
    }
    let (name, modifier) = match body.split_once(':') {
        Some((name, modifier)) => (name, Some(modifier)),
        None => (body, None),
    };
    let hash = match modifier {
        None => false,
        Some("hash") => true,
        Some(other) => {
            return Err(format!(
                "unknown modifier `:{other}` in placeholder {{{body}}} (known: `:hash`)"
            ))
        }
    };
    let (side, column) = match name.split_once('.') {
        None => (Side::Row, name),
        Some(("old", column)) => (Side::Old, column),
        Some(("new", column)) => (Side::New, column),
        Some(_) => {
            return Err(format!(
            "unknown placeholder {{{body}}}: a qualified column is written `old.col` or `new.col`"
        ))
        }
    };
    if column.is_empty() {
        return Err(format!("placeholder {{{body}}} names no column"));
    }
    if let Some(bad) = column
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '.')
    {
        return Err(format!(
            "placeholder {{{body}}}: column names cannot contain {bad:?}"
        ));
    }
    Ok(Hole {
        side,
        column: column.to_owned(),
        hash,
    })
}

impl<C> Template<C> {
    fn from_segments(segments: Vec<Segment<C>>) -> Self {
        let literal_len = segments
            .iter()
            .map(|s| match s {
                Segment::Lit(l) => l.len(),
                Segment::Hole(_) => 0,
            })
            .sum();
        let has_row_hole = segments
            .iter()
            .any(|s| matches!(s, Segment::Hole(h) if h.side == Side::Row));
        Template {
            segments,
            literal_len,
            has_row_hole,
        }
    }

    pub fn holes(&self) -> impl Iterator<Item = &Hole<C>> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Hole(h) => Some(h),
            Segment::Lit(_) => None,
        })
    }

    /// Whether the template has no placeholder.
    pub fn is_constant(&self) -> bool {
        self.holes().next().is_none()
    }

    /// Whether some placeholder reads side `side`.
    pub fn reads(&self, side: Side) -> bool {
        self.holes().any(|h| h.side == side)
    }

    /// The text of a constant template (literal braces decoded).
    pub fn literal_text(&self) -> String {
        let mut out = String::with_capacity(self.literal_len);
        for s in &self.segments {
            if let Segment::Lit(l) = s {
                out.push_str(l);
            }
        }
        out
    }

    /// The template rendered with every placeholder as `value`, literal text as written: the
    /// shape of what it renders, for checks of that shape.
    pub fn sample(&self, value: &str) -> String {
        let mut out = String::with_capacity(self.literal_len + 8);
        for s in &self.segments {
            match s {
                Segment::Lit(l) => out.push_str(l),
                Segment::Hole(_) => out.push_str(value),
            }
        }
        out
    }

    /// A Redis glob matching everything this template can render: each
    /// placeholder becomes `*`. `escape_literals` is set for key and tag
    /// templates, whose literal text has no glob meaning; pattern templates
    /// keep theirs.
    pub fn coverage_glob(&self, escape_literals: bool) -> String {
        let mut out = String::with_capacity(self.literal_len + 8);
        for s in &self.segments {
            match s {
                Segment::Lit(l) if escape_literals => push_glob_escaped(&mut out, l),
                Segment::Lit(l) => out.push_str(l),
                Segment::Hole(_) => {
                    // Consecutive placeholders need one star.
                    if !out.ends_with('*') || out.ends_with("\\*") {
                        out.push('*');
                    }
                }
            }
        }
        out
    }

    /// The same template with columns mapped by `f` (names to indexes).
    pub fn try_map<D, E>(
        &self,
        mut f: impl FnMut(&Hole<C>) -> Result<D, E>,
    ) -> Result<Template<D>, E> {
        let segments = self
            .segments
            .iter()
            .map(|s| {
                Ok(match s {
                    Segment::Lit(l) => Segment::Lit(l.clone()),
                    Segment::Hole(h) => Segment::Hole(Hole {
                        side: h.side,
                        column: f(h)?,
                        hash: h.hash,
                    }),
                })
            })
            .collect::<Result<Vec<_>, E>>()?;
        Ok(Template::from_segments(segments))
    }
}

impl Template<usize> {
    /// The row views to render for `change`: two on an update with an old
    /// tuple when `{col}` occurs (old row state and new row state; mixed
    /// old/new combinations describe no row that ever existed, so they are
    /// not rendered), one otherwise. An update without an old tuple has
    /// two as well when the replica identity does not send a `{col}`
    /// column's old value: that old row state is unknown, not the new one.
    pub fn views(&self, change: &Change<'_>) -> &'static [View] {
        match change.op {
            crate::Op::Update
                if self.has_row_hole
                    && (change.old.is_some()
                        || self
                            .holes()
                            .any(|h| h.side == Side::Row && change.old_unsent(h.column))) =>
            {
                &[View::Old, View::New]
            }
            crate::Op::Delete => &[View::Old],
            _ => &[View::New],
        }
    }

    fn value<'a>(hole: &Hole<usize>, change: &Change<'a>, view: View) -> Val<'a> {
        match hole.side {
            Side::Row => change.row_val(hole.column, view),
            Side::Old => change.old_val(hole.column),
            Side::New => change.new_val(hole.column),
        }
    }

    fn text(v: Val<'_>) -> Result<&str, Skip> {
        match v {
            Val::Text(s) => Ok(s),
            Val::Null => Err(Skip::Null),
            Val::Missing => Err(Skip::Missing),
            Val::NotApplicable => Err(Skip::NotApplicable),
        }
    }

    /// Whether the old-row and new-row renderings of an update would read
    /// the same values, so that one rendering is enough (the common case: an
    /// update that does not touch the key's columns).
    pub fn same_in_both_views(&self, change: &Change<'_>) -> bool {
        self.holes()
            .filter(|h| h.side == Side::Row)
            .all(|h| change.row_val(h.column, View::Old) == change.row_val(h.column, View::New))
    }

    /// Renders `prefix` followed by the template for one row view. Values are
    /// glob-escaped when `escape` is set (patterns); the prefix and literal
    /// text are written as given (the caller escapes the prefix).
    ///
    /// A result longer than `max_len` bytes is never built: `overlong` says
    /// what comes instead. Memory therefore stays bounded by `max_len`
    /// whatever the row holds (a 500 MB text value costs a length count).
    pub fn render(
        &self,
        change: &Change<'_>,
        view: View,
        prefix: &str,
        escape: bool,
        max_len: usize,
        overlong: Overlong,
    ) -> Result<String, Skip> {
        self.render_noting(change, view, prefix, escape, max_len, overlong)
            .map(|(text, _)| text)
    }

    /// [`render`](Self::render), and whether the result was hashed because
    /// it would have been longer than `max_len`.
    pub fn render_noting(
        &self,
        change: &Change<'_>,
        view: View,
        prefix: &str,
        escape: bool,
        max_len: usize,
        overlong: Overlong,
    ) -> Result<(String, bool), Skip> {
        // Values of the first holes, kept from the sizing pass so that the
        // row is read once per hole; templates rarely have more.
        const KEPT: usize = 8;
        let mut kept = [""; KEPT];
        // First pass: every value must be there, and gives the exact length.
        let mut len = prefix.len() + self.literal_len;
        for (i, hole) in self.holes().enumerate() {
            let s = Self::text(Self::value(hole, change, view))?;
            if let Some(slot) = kept.get_mut(i) {
                *slot = s;
            }
            len += if hole.hash {
                HASH_LEN
            } else if escape {
                glob_escaped_len(s)
            } else {
                s.len()
            };
        }
        let hashed = len > max_len;
        if hashed && overlong == Overlong::Refuse {
            return Err(Skip::TooLong);
        }
        let mut out = String::with_capacity(if hashed {
            prefix.len() + 1 + HASH_LEN
        } else {
            len
        });
        out.push_str(prefix);
        let mut piece = Piece::new(hashed, &mut out);
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Lit(l) => piece.push_str(l),
                Segment::Hole(hole) => {
                    let s = match kept.get(i) {
                        Some(s) => *s,
                        // `get` is pure: the first pass saw Text here too.
                        None => Self::text(Self::value(hole, change, view))?,
                    };
                    i += 1;
                    if hole.hash {
                        piece.push_hash(s);
                    } else if escape {
                        piece.push_escaped(s);
                    } else {
                        piece.push_str(s);
                    }
                }
            }
        }
        piece.finish();
        Ok((out, hashed))
    }
}

/// Where [`Template::render`] writes the text after the prefix: into the
/// output, or into the long-key hash when the whole would be too long.
enum Piece<'a> {
    Text(&'a mut String),
    Hash(Fnv, &'a mut String),
}

impl<'a> Piece<'a> {
    fn new(hashed: bool, out: &'a mut String) -> Self {
        if hashed {
            Piece::Hash(Fnv::default(), out)
        } else {
            Piece::Text(out)
        }
    }

    fn push_str(&mut self, s: &str) {
        match self {
            Piece::Text(out) => out.push_str(s),
            Piece::Hash(hasher, _) => hasher.write(s.as_bytes()),
        }
    }

    /// The 16 hex digits of `{col:hash}`, written straight into the output.
    fn push_hash(&mut self, s: &str) {
        match self {
            Piece::Text(out) => push_hash(out, s),
            Piece::Hash(hasher, _) => {
                let mut digits = String::with_capacity(HASH_LEN);
                push_hash(&mut digits, s);
                hasher.write(digits.as_bytes());
            }
        }
    }

    fn push_escaped(&mut self, s: &str) {
        match self {
            Piece::Text(out) => push_glob_escaped(out, s),
            Piece::Hash(hasher, _) => {
                for c in s.chars() {
                    if is_glob_meta(c) {
                        hasher.write(b"\\");
                    }
                    hasher.write(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
    }

    fn finish(self) {
        if let Piece::Hash(hasher, out) = self {
            out.push('#');
            hasher.push_hex(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::change;
    use crate::row::Datum;
    use crate::Op;

    fn parse(s: &str) -> Template<String> {
        Template::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        Template::parse(s).expect_err(s)
    }

    /// Binds columns named c0, c1, ... to their number.
    fn bind(t: &Template<String>) -> Template<usize> {
        t.try_map(|h| {
            h.column
                .trim_start_matches('c')
                .parse::<usize>()
                .map_err(|_| ())
        })
        .expect("columns named cN")
    }

    fn render_all(t: &str, c: &Change<'_>, escape: bool) -> Vec<Result<String, Skip>> {
        let t = bind(&parse(t));
        t.views(c)
            .iter()
            .map(|v| t.render(c, *v, "p:", escape, usize::MAX, Overlong::Refuse))
            .collect()
    }

    #[test]
    fn parses_literals_placeholders_and_escapes() {
        let t = parse("a{{b}}c{c0}-{old.c1}-{new.c2:hash}");
        assert_eq!(
            t.segments,
            vec![
                Segment::Lit("a{b}c".into()),
                Segment::Hole(Hole {
                    side: Side::Row,
                    column: "c0".into(),
                    hash: false
                }),
                Segment::Lit("-".into()),
                Segment::Hole(Hole {
                    side: Side::Old,
                    column: "c1".into(),
                    hash: false
                }),
                Segment::Lit("-".into()),
                Segment::Hole(Hole {
                    side: Side::New,
                    column: "c2".into(),
                    hash: true
                }),
            ]
        );
        assert!(!t.is_constant());
        assert!(t.reads(Side::Old) && t.reads(Side::New) && t.reads(Side::Row));
        let c = parse("products{{all}}");
        assert!(c.is_constant());
        assert_eq!(c.literal_text(), "products{all}");
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(err(""), "empty template");
        assert_eq!(
            err("a{id"),
            r#"unclosed placeholder in template "a{id" (write `{{` for a literal brace)"#
        );
        assert_eq!(
            err("a}b"),
            r#"unmatched `}` in template "a}b" (write `}}` for a literal brace)"#
        );
        assert_eq!(
            err("a{}"),
            "empty placeholder `{}` (write `{{}}` for literal braces)"
        );
        assert_eq!(
            err("{a{b}}"),
            r#"`{` inside a placeholder in template "{a{b}}" (write `{{` for a literal brace)"#
        );
        assert_eq!(
            err("{id:md5}"),
            "unknown modifier `:md5` in placeholder {id:md5} (known: `:hash`)"
        );
        assert_eq!(
            err("{nwe.total}"),
            "unknown placeholder {nwe.total}: a qualified column is written `old.col` or `new.col`"
        );
        assert_eq!(err("{old.}"), "placeholder {old.} names no column");
        assert_eq!(
            err("{ id }"),
            "placeholder { id }: column names cannot contain ' '"
        );
        assert_eq!(
            err("{old.a.b}"),
            "placeholder {old.a.b}: column names cannot contain '.'"
        );
    }

    #[test]
    fn insert_uses_new_delete_uses_old() {
        let old = vec![Datum::Text("1"), Datum::Text("old")];
        let new = vec![Datum::Text("1"), Datum::Text("new")];
        let ins = change(Op::Insert, None, Some(&new));
        assert_eq!(
            render_all("x:{c1}", &ins, false),
            vec![Ok("p:x:new".into())]
        );
        let del = change(Op::Delete, Some(&old), None);
        assert_eq!(
            render_all("x:{c1}", &del, false),
            vec![Ok("p:x:old".into())]
        );
        assert_eq!(
            render_all("x:{new.c1}", &del, false),
            vec![Err(Skip::NotApplicable)]
        );
        assert_eq!(
            render_all("x:{old.c1}", &ins, false),
            vec![Err(Skip::NotApplicable)]
        );
    }

    #[test]
    fn update_renders_old_and_new_row() {
        let old = vec![Datum::Text("1"), Datum::Text("3")];
        let new = vec![Datum::Text("1"), Datum::Text("4")];
        let up = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(
            render_all("u:{c0}:cat:{c1}", &up, false),
            vec![Ok("p:u:1:cat:3".into()), Ok("p:u:1:cat:4".into())]
        );
        // Pinned sides render once.
        assert_eq!(
            render_all("{old.c1}>{new.c1}", &up, false),
            vec![Ok("p:3>4".into())]
        );
        // `{col}` and a pinned side: the pinned one stays put in both views.
        assert_eq!(
            render_all("{c1}/{old.c1}", &up, false),
            vec![Ok("p:3/3".into()), Ok("p:4/3".into())]
        );
        // Without an old tuple there is only the new row.
        let up = change(Op::Update, None, Some(&new));
        assert_eq!(
            render_all("cat:{c1}", &up, false),
            vec![Ok("p:cat:4".into())]
        );
        assert_eq!(
            render_all("cat:{old.c1}", &up, false),
            vec![Err(Skip::Missing)]
        );
    }

    #[test]
    fn nulls_and_missing_values_skip() {
        let old = vec![Datum::Null, Datum::Absent];
        let new = vec![Datum::Text("1"), Datum::Unchanged];
        let up = change(Op::Update, Some(&old), Some(&new));
        assert_eq!(
            render_all("{c0}", &up, false),
            vec![Err(Skip::Null), Ok("p:1".into())]
        );
        assert_eq!(render_all("{new.c1}", &up, false), vec![Err(Skip::Missing)]);
        assert_eq!(render_all("{old.c1}", &up, false), vec![Err(Skip::Missing)]);
    }

    #[test]
    fn hash_modifier() {
        let long = "x".repeat(500);
        let new = vec![Datum::Text(&long)];
        let ins = change(Op::Insert, None, Some(&new));
        let expected = format!("p:doc:{}", crate::hash_value(&long));
        assert_eq!(
            render_all("doc:{c0:hash}", &ins, false),
            vec![Ok(expected.clone())]
        );
        // Hex needs no escaping in patterns.
        assert_eq!(render_all("doc:{c0:hash}", &ins, true), vec![Ok(expected)]);
    }

    #[test]
    fn pattern_values_are_escaped_literals_are_not() {
        let new = vec![Datum::Text(r"a*b?c[d]e\f")];
        let ins = change(Op::Insert, None, Some(&new));
        assert_eq!(
            render_all("list:{c0}:*", &ins, true),
            vec![Ok(r"p:list:a\*b\?c\[d\]e\\f:*".into())]
        );
        assert_eq!(
            render_all("k:{c0}", &ins, false),
            vec![Ok(r"p:k:a*b?c[d]e\f".into())]
        );
        assert_eq!(glob_escape("a*"), r"a\*");
    }

    #[test]
    fn many_placeholders_render_past_the_kept_values() {
        let vals: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        let new: Vec<Datum<'_>> = vals.iter().map(|v| Datum::Text(v)).collect();
        let ins = change(Op::Insert, None, Some(&new));
        let src: String = (0..12)
            .map(|i| format!("{{c{i}}}"))
            .collect::<Vec<_>>()
            .join("-");
        let t = bind(&parse(&src));
        let s = t
            .render(&ins, View::New, "", false, usize::MAX, Overlong::Refuse)
            .expect("renders");
        assert_eq!(s, vals.join("-"));
        assert_eq!(s.capacity(), s.len());
    }

    #[test]
    fn same_in_both_views() {
        let old = vec![Datum::Text("1"), Datum::Text("3")];
        let new = vec![Datum::Text("1"), Datum::Text("4")];
        let up = change(Op::Update, Some(&old), Some(&new));
        assert!(bind(&parse("p:{c0}:{old.c1}")).same_in_both_views(&up));
        assert!(!bind(&parse("p:{c0}:{c1}")).same_in_both_views(&up));
    }

    #[test]
    fn rendered_length_is_exact() {
        let new = vec![Datum::Text("ab*"), Datum::Text("é")];
        let ins = change(Op::Insert, None, Some(&new));
        let t = bind(&parse("{c0}{{{c1}}}{c0:hash}"));
        let s = t
            .render(&ins, View::New, "pre", true, usize::MAX, Overlong::Refuse)
            .expect("renders");
        assert_eq!(s, format!("preab\\*{{é}}{}", crate::hash_value("ab*")));
        assert_eq!(s.capacity(), s.len());
    }

    #[test]
    fn an_overlong_rendering_is_refused_or_hashed_without_being_built() {
        let long = "x".repeat(10_000);
        let new = vec![Datum::Text(&long), Datum::Text("a*")];
        let ins = change(Op::Insert, None, Some(&new));
        let t = bind(&parse("item:{c0}:{c1}:{c1:hash}"));
        assert_eq!(
            t.render(&ins, View::New, "shop:", false, 64, Overlong::Refuse),
            Err(Skip::TooLong)
        );
        // The hash is the long-key hash of the whole rendering after the prefix.
        let full = t
            .render(
                &ins,
                View::New,
                "shop:",
                false,
                usize::MAX,
                Overlong::Refuse,
            )
            .unwrap();
        let hashed = t
            .render(&ins, View::New, "shop:", false, 64, Overlong::Hash)
            .unwrap();
        assert_eq!(
            hashed,
            format!("shop:#{}", crate::hash_value(&full["shop:".len()..]))
        );
        assert_eq!(hashed.capacity(), hashed.len());
        // Escaped values are hashed as escaped; exactly at the limit nothing changes.
        let escaped = t
            .render(&ins, View::New, "", true, usize::MAX, Overlong::Refuse)
            .unwrap();
        assert_eq!(
            t.render(&ins, View::New, "", true, 10, Overlong::Hash)
                .unwrap(),
            format!("#{}", crate::hash_value(&escaped))
        );
        assert_eq!(
            t.render(&ins, View::New, "", true, escaped.len(), Overlong::Refuse)
                .unwrap(),
            escaped
        );
    }
}
