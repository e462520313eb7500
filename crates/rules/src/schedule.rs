//! Scheduled invalidation (`at:`): what a change asks to invalidate again
//! later ([`Scheduled`]), and reading the due time from a row value
//! ([`parse_timestamp`]).
//!
//! The rules only say *when* and *what*; keeping the schedule durable and
//! applying it is the publisher's job (the Redis sink's sorted set).

/// Invalidations to apply again at `due_unix_micros`: what one rule
/// rendered for one row change, constants included (a scheduled entry
/// stands alone, it cannot rely on a transaction's other rows).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scheduled {
    /// When to invalidate: microseconds since 1970-01-01 00:00:00 UTC.
    pub due_unix_micros: i64,
    /// Cache keys to delete (prefixes applied).
    pub keys: Vec<String>,
    /// Tags to purge.
    pub tags: Vec<String>,
    /// Patterns to purge.
    pub patterns: Vec<String>,
    /// Keys that also go to the refresh stream (`refresh: true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refresh: Vec<String>,
}

impl Scheduled {
    /// Bytes of its entries: what it costs to hold until it is stored.
    pub fn bytes(&self) -> usize {
        [&self.keys, &self.tags, &self.patterns, &self.refresh]
            .into_iter()
            .map(|list| bytes_of(list))
            .sum()
    }
}

/// Bytes of the strings in `list`.
pub fn bytes_of(list: &[String]) -> usize {
    list.iter().map(String::len).sum()
}

/// What reading an `at:` value gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// A point in time, µs since the Unix epoch.
    At(i64),
    /// `infinity` / `-infinity`: never due, nothing to schedule.
    Never,
    /// Not a timestamp walbust can read.
    Unreadable,
}

/// Reads a `timestamp` or `timestamptz` value as Postgres prints it in ISO
/// style (`2026-12-04 19:40:00`, `2026-12-04 19:40:00.123456+00`,
/// `2026-12-04 19:40:00+05:30`; a `T` separator and a `Z` are accepted
/// too; a bare `date` means its midnight). A value without an offset
/// (`timestamp without time zone`) is read as UTC. Returns µs since the
/// Unix epoch, or `None` for anything else (`infinity`, BC dates, other
/// `DateStyle`s).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    match read_due(text) {
        Due::At(t) => Some(t),
        Due::Never | Due::Unreadable => None,
    }
}

pub(crate) fn read_due(text: &str) -> Due {
    let text = text.trim();
    if text == "infinity" || text == "-infinity" {
        return Due::Never;
    }
    parse(text).map_or(Due::Unreadable, Due::At)
}

fn digits(s: &str, n: usize) -> Option<(i64, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, s.get(n..)?))
}

fn expect(s: &str, c: char) -> Option<&str> {
    s.strip_prefix(c)
}

fn parse(s: &str) -> Option<i64> {
    let (year, s) = digits(s, 4)?;
    let (month, s) = digits(expect(s, '-')?, 2)?;
    let (day, s) = digits(expect(s, '-')?, 2)?;
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let date_micros = days_from_civil(year, month, day) * 86_400_000_000;
    if s.is_empty() {
        return Some(date_micros);
    }
    let s = s.strip_prefix(' ').or_else(|| s.strip_prefix('T'))?;
    let (hour, s) = digits(s, 2)?;
    let (minute, s) = digits(expect(s, ':')?, 2)?;
    let (second, mut s) = digits(expect(s, ':')?, 2)?;
    if hour > 24 || minute > 59 || second > 60 {
        return None;
    }
    let mut micros = 0i64;
    if let Some(rest) = s.strip_prefix('.') {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        let (frac, rest) = digits(rest, n)?;
        micros = frac * 10i64.pow(6 - n as u32);
        s = rest;
    }
    let offset_secs = match s {
        "" | "Z" => 0,
        _ => {
            let sign = match s.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, rest) = digits(s.get(1..)?, 2)?;
            let (om, rest) = match rest.strip_prefix(':') {
                Some(r) => digits(r, 2)?,
                None => (0, rest),
            };
            let (os, rest) = match rest.strip_prefix(':') {
                Some(r) => digits(r, 2)?,
                None => (0, rest),
            };
            if !rest.is_empty() {
                return None;
            }
            sign * (oh * 3600 + om * 60 + os)
        }
    };
    let secs = hour * 3600 + minute * 60 + second - offset_secs;
    date_micros.checked_add(secs * 1_000_000 + micros)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn reads_what_postgres_prints() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-02"), Some(86_400 * S));
        assert_eq!(
            parse_timestamp("2026-12-04 19:40:00.5+00"),
            Some(1_796_413_200 * S + S / 2)
        );
        assert_eq!(
            parse_timestamp("2026-12-04 21:40:00+02"),
            parse_timestamp("2026-12-04 19:40:00")
        );
        assert_eq!(
            parse_timestamp("2026-12-04 14:10:00-05:30"),
            parse_timestamp("2026-12-04T19:40:00Z")
        );
        assert_eq!(
            parse_timestamp("2000-02-29 00:00:00.000001"),
            Some(951_782_400 * S + 1)
        );
    }

    #[test]
    fn refuses_the_rest() {
        for bad in [
            "",
            "tomorrow",
            "2026-13-01",
            "2026-02-30 00:00:00",
            "2026-01-01 00:00",
            "2026-01-01 00:00:00.1234567",
            "2026-01-01 00:00:00 BC",
            "12/04/2026 19:40:00",
            "2026-01-01 00:00:00+0x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
            assert_eq!(read_due(bad), Due::Unreadable, "{bad}");
        }
        assert_eq!(read_due("infinity"), Due::Never);
        assert_eq!(read_due("-infinity"), Due::Never);
    }
}
