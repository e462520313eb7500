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
        let key = key.as_bytes();
        key.starts_with(&self.pattern[..self.literal_prefix])
            && match_here(&self.pattern, key, 0, &mut false)
    }
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
    fn many_stars_stay_fast() {
        // The skip shortcut keeps this linear-ish instead of exponential.
        let pattern = "a*".repeat(30) + "b";
        let key = "a".repeat(200);
        assert!(!m(&pattern, &key));
        let pattern = "*".repeat(2000) + "x";
        assert!(m(&pattern, "yx"), "consecutive stars collapse into one");
    }
}
