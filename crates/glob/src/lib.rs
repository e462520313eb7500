//! Redis glob patterns (`KEYS`, `SCAN MATCH`), matched the way Redis matches them, so that a
//! pattern purges from a local cache exactly what it purges from Redis.
//!
//! - `*` any run of bytes, `?` one byte;
//! - `[abc]`, `[a-z]` (a reversed range is the same range), `[^...]` negated; inside brackets
//!   `\x` is the byte `x`; a `[` left open runs to the end of the pattern;
//! - `\x` outside brackets is the byte `x` itself: walbust escapes `* ? [ ] \` this way in the
//!   values it puts into pattern templates, so row data never widens a pattern.
//!
//! Matching works on bytes, as Redis does (a `?` matches one byte of a multi-byte character).
//! One quirk is kept on purpose: like Redis, a pattern made of `*` only does not match the empty
//! key.
//!
//! Shared by the subscriber (local caches drop what a pattern drops in Redis) and walbust's Redis
//! sink, whose merged pattern walks match every pending pattern against each scanned key here,
//! client-side, with one `SCAN` for all of them ([`common_prefix`], [`escape`]).

/// A compiled pattern. Cheap to clone; matching does not allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<[u8]>,
    /// Bytes every match starts with (the pattern up to its first special character), used to
    /// reject most keys at once.
    literal_prefix: usize,
}

/// Beyond this many nested `*`, Redis gives up and reports no match; so do we.
const MAX_STAR_NESTING: usize = 1000;

impl Glob {
    /// Compiles `pattern`. Every string is a pattern (as for Redis): none is refused.
    pub fn new(pattern: &str) -> Glob {
        let bytes = pattern.as_bytes();
        let literal_prefix = bytes
            .iter()
            .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
            .unwrap_or(bytes.len());
        Glob {
            pattern: bytes.into(),
            literal_prefix,
        }
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        // Built from a &str and never changed.
        std::str::from_utf8(&self.pattern).unwrap_or_default()
    }

    /// Whether the pattern is `*` (any number of them): it matches every non-empty key, so a
    /// cache applies it as a flush-all.
    pub fn is_match_all(&self) -> bool {
        !self.pattern.is_empty() && self.pattern.iter().all(|&b| b == b'*')
    }

    /// Whether `key` matches, as Redis would decide.
    pub fn matches(&self, key: &str) -> bool {
        self.matches_bytes(key.as_bytes())
    }

    /// [`Self::matches`] on bytes (Redis keys need not be UTF-8).
    pub fn matches_bytes(&self, key: &[u8]) -> bool {
        key.starts_with(&self.pattern[..self.literal_prefix])
            && match_here(&self.pattern, key, 0, &mut false)
    }

    /// The bytes every matching key starts with, escapes resolved: `list:a\*b:*` gives
    /// `list:a*b:`. Empty when the pattern starts with `*`, `?` or `[`.
    pub fn literal_prefix(&self) -> Vec<u8> {
        let mut prefix = Vec::new();
        let mut rest = &self.pattern[..];
        loop {
            match rest {
                [b'*' | b'?' | b'[', ..] | [] => return prefix,
                // A trailing backslash is a plain byte.
                [b'\\', escaped, tail @ ..] => {
                    prefix.push(*escaped);
                    rest = tail;
                }
                [byte, tail @ ..] => {
                    prefix.push(*byte);
                    rest = tail;
                }
            }
        }
    }

    /// The literal prefix when the pattern is that prefix followed by one `*` and nothing else
    /// (`list:42:*`), the shape a prefix counter can stand for exactly; `None` otherwise, and
    /// for an empty prefix.
    pub fn prefix_star(&self) -> Option<Vec<u8>> {
        let prefix = self.literal_prefix();
        let literal = escape(&prefix);
        (!prefix.is_empty() && self.pattern[..] == [&literal[..], b"*"].concat()).then_some(prefix)
    }
}

/// The longest byte prefix every pattern's [`Glob::literal_prefix`] shares: a `SCAN MATCH` of
/// `escape(prefix)*` returns a superset of the keys any of them matches.
pub fn common_prefix<'a>(globs: impl IntoIterator<Item = &'a Glob>) -> Vec<u8> {
    let mut common: Option<Vec<u8>> = None;
    for glob in globs {
        let prefix = glob.literal_prefix();
        common = Some(match common {
            None => prefix,
            Some(mut c) => {
                let same = c.iter().zip(&prefix).take_while(|(a, b)| a == b).count();
                c.truncate(same);
                c
            }
        });
        if common.as_ref().is_some_and(Vec::is_empty) {
            break;
        }
    }
    common.unwrap_or_default()
}

/// `bytes` as a pattern that matches exactly them: `* ? [ ] \\` get a backslash.
pub fn escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Redis's `stringmatchlen`, on slices. `skip_longer` is Redis's shortcut: once a `*` tried
/// every suffix of the key in vain, an enclosing `*` trying longer prefixes cannot do better.
fn match_here(mut pattern: &[u8], mut key: &[u8], nesting: usize, skip_longer: &mut bool) -> bool {
    if nesting > MAX_STAR_NESTING {
        return false;
    }
    while let (Some(&p), Some(&k)) = (pattern.first(), key.first()) {
        match p {
            b'*' => {
                while pattern.get(1) == Some(&b'*') {
                    pattern = &pattern[1..];
                }
                if pattern.len() == 1 {
                    return true;
                }
                while !key.is_empty() {
                    if match_here(&pattern[1..], key, nesting + 1, skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    key = &key[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => key = &key[1..],
            b'[' => {
                let (matched, rest) = bracket(&pattern[1..], k);
                if !matched {
                    return false;
                }
                key = &key[1..];
                // `rest` starts at the closing `]` (or is empty when the class was left open).
                pattern = rest;
            }
            b'\\' if pattern.len() >= 2 => {
                if pattern[1] != k {
                    return false;
                }
                pattern = &pattern[1..];
                key = &key[1..];
            }
            _ => {
                if p != k {
                    return false;
                }
                key = &key[1..];
            }
        }
        pattern = pattern.get(1..).unwrap_or_default();
        if key.is_empty() {
            while pattern.first() == Some(&b'*') {
                pattern = &pattern[1..];
            }
            break;
        }
    }
    pattern.is_empty() && key.is_empty()
}

/// Matches byte `k` against the class after `[`. Returns whether it matched, and the pattern
/// from the class's closing `]` on (empty if the class runs to the end).
fn bracket(mut class: &[u8], k: u8) -> (bool, &[u8]) {
    let negated = class.first() == Some(&b'^');
    if negated {
        class = &class[1..];
    }
    let mut matched = false;
    loop {
        match class {
            [b'\\', escaped, ..] => {
                matched |= *escaped == k;
                class = &class[2..];
            }
            [b']', ..] => break,
            [] => break,
            [start, b'-', end, ..] => {
                let (low, high) = if start <= end {
                    (*start, *end)
                } else {
                    (*end, *start)
                };
                matched |= (low..=high).contains(&k);
                class = &class[3..];
            }
            [c, ..] => {
                matched |= *c == k;
                class = &class[1..];
            }
        }
    }
    (matched != negated, class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        Glob::new(pattern).matches(key)
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("product-list:*", "product-list:3:p1"));
        assert!(
            m("product-list:*", "product-list:"),
            "* matches the empty rest"
        );
        assert!(!m("product-list:*", "product-lis"));
        assert!(m("*:detail", "product:1:detail"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("a**b", "ab"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*", "x"));
        assert!(!m("*", ""), "Redis: a bare * does not match the empty key");
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("x*", "x"));
    }

    #[test]
    fn brackets() {
        assert!(m("k[abc]", "kb"));
        assert!(!m("k[abc]", "kd"));
        assert!(m("k[a-c]x", "kbx"));
        assert!(m("k[c-a]x", "kbx"), "a reversed range is the same range");
        assert!(!m("k[^a-c]x", "kbx"));
        assert!(m("k[^a-c]x", "kdx"));
        assert!(m("k[\\]]", "k]"), "an escaped ] inside brackets");
        assert!(m("k[\\-a]", "k-"));
        // Redis reads a range before it looks for the closing bracket: `[a-]` is the range
        // `]`..`a`, and the class then runs to the end of the pattern.
        assert!(!m("k[a-]", "k-"));
        assert!(m("k[a-]", "k_"));
        // A class left open runs to the end of the pattern, as in Redis.
        assert!(m("k[ab", "ka"));
        assert!(!m("k[ab", "kab"));
        assert!(
            !m("k[]", "k]"),
            "[] is an empty class, then nothing is left"
        );
    }

    #[test]
    fn escapes_mean_the_byte_itself() {
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("a\\?", "a?"));
        assert!(!m("a\\?", "ab"));
        assert!(m("a\\[x\\]", "a[x]"));
        assert!(m("a\\\\b", "a\\b"));
        assert!(m("a\\b", "ab"), "an escaped ordinary byte is that byte");
        assert!(m("a\\", "a\\"), "a trailing backslash is a plain byte");
    }

    /// walbust's escaping of row values in pattern templates (`* ? [ ] \` get a backslash):
    /// a value matches only itself; the template's own `*` keeps its meaning.
    #[test]
    fn walbust_escaped_values_never_widen_a_pattern() {
        fn escape(value: &str) -> String {
            let mut out = String::new();
            for c in value.chars() {
                if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
        for value in ["*", "?", "[a-z]", "a\\b", "x]y", "plain", "é*"] {
            let glob = Glob::new(&format!("list:{}:*", escape(value)));
            assert!(glob.matches(&format!("list:{value}:page1")), "{value}");
            assert!(!glob.matches("list:other:page1"), "{value} widened");
            assert!(!glob.matches("list:a:page1"), "{value} widened");
        }
    }

    #[test]
    fn bytes_not_characters() {
        assert!(m("caf?", "cafe"));
        assert!(!m("caf?", "café"), "é is two bytes");
        assert!(m("caf??", "café"));
    }

    #[test]
    fn match_all() {
        assert!(Glob::new("*").is_match_all());
        assert!(Glob::new("***").is_match_all());
        assert!(!Glob::new("a*").is_match_all());
        assert!(!Glob::new("").is_match_all());
        assert!(!Glob::new("\\*").is_match_all());
    }

    #[test]
    fn literal_prefixes_resolve_escapes() {
        let p = |s: &str| String::from_utf8(Glob::new(s).literal_prefix()).unwrap();
        assert_eq!(p("plist:42:*"), "plist:42:");
        assert_eq!(p("plist:a\\*b:*"), "plist:a*b:");
        assert_eq!(p("plist:a\\\\b:?x"), "plist:a\\b:");
        assert_eq!(p("*:detail"), "");
        assert_eq!(p("k[ab]"), "k");
        assert_eq!(p("exact"), "exact");
        assert_eq!(p("a\\"), "a\\", "a trailing backslash is a plain byte");
    }

    #[test]
    fn prefix_star_is_a_literal_then_one_star() {
        let p = |s: &str| {
            Glob::new(s)
                .prefix_star()
                .map(|p| String::from_utf8(p).unwrap())
        };
        assert_eq!(p("plist:42:*").as_deref(), Some("plist:42:"));
        assert_eq!(p("plist:a\\*b:*").as_deref(), Some("plist:a*b:"));
        assert_eq!(p("plist:*:page"), None);
        assert_eq!(p("plist:4?:*"), None);
        assert_eq!(p("*"), None);
        assert_eq!(p("plist:42:"), None, "no star: one key, not a prefix");
        assert_eq!(p("plist:**"), None);
    }

    #[test]
    fn common_prefix_and_escape() {
        let globs: Vec<Glob> = ["plist:1:*", "plist:12:*", "plist:a\\*:*"]
            .iter()
            .map(|s| Glob::new(s))
            .collect();
        assert_eq!(common_prefix(&globs), b"plist:");
        assert_eq!(common_prefix(&globs[..1]), b"plist:1:");
        assert_eq!(common_prefix(&[Glob::new("*x"), Glob::new("a*")]), b"");
        assert_eq!(common_prefix(&[]), b"");
        assert_eq!(escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\");
        let glob =
            Glob::new(std::str::from_utf8(&[escape(b"x*[y]"), b"*".to_vec()].concat()).unwrap());
        assert!(glob.matches("x*[y]z"));
        assert!(!glob.matches("xa[y]z"));
    }

    #[test]
    fn many_stars_stay_fast() {
        // The skip shortcut keeps this linear-ish instead of exponential.
        let pattern = "a*".repeat(30) + "b";
        let key = "a".repeat(200);
        assert!(!m(&pattern, &key));
        let pattern = "*".repeat(2000) + "x";
        assert!(m(&pattern, "yx"), "consecutive stars collapse into one");
    }
}
