//! Postgres time: microseconds since 2000-01-01 00:00:00 UTC (the Postgres
//! epoch), as pgoutput's Begin and Commit messages and the binary send
//! format of `timestamp`, `timestamptz` and `date` carry it.
//!
//! One calendar conversion serves every caller (commit times in Kafka
//! records, binary values rendered as Postgres prints them): a few lines of
//! integer arithmetic, the days-to-civil algorithm from Howard Hinnant's
//! "chrono-Compatible Low-Level Date Algorithms", exact over every day an
//! `i64` can count, so no date crate is needed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch (1970-01-01) and the Postgres epoch
/// (2000-01-01), both UTC.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// Microseconds in a day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

const MICROS_PER_SEC: i128 = 1_000_000;
const SECS_PER_DAY: i128 = 86_400;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_UNIX_DAYS: i128 = 10_957;

/// A proleptic Gregorian date; year 0 is 1 BC, as in ISO 8601 (Postgres
/// prints it as `0001 BC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilDate {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
}

/// The date `days` days after 2000-01-01 (negative: before it).
pub fn civil_from_pg_days(days: i64) -> CivilDate {
    let (year, month, day) = civil_from_unix_days(i128::from(days) + PG_EPOCH_UNIX_DAYS);
    CivilDate {
        // |days| < 2^63, so the year is far inside i64.
        year: year as i64,
        month,
        day,
    }
}

/// Year, month (1..=12) and day (1..=31) of a count of days since 1970-01-01.
fn civil_from_unix_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    // Both values are in range by construction (1..=31 and 1..=12).
    (year, month as u32, day as u32)
}

/// Formats a Postgres timestamp as RFC 3339 UTC with microseconds,
/// `2026-11-22T10:00:00.123456Z`.
///
/// Years outside 0000..=9999 (which no commit time reaches) are written with
/// a sign and more digits, ISO 8601's expanded form, rather than clamped.
pub fn format_rfc3339(pg_micros: i64) -> String {
    let micros = i128::from(pg_micros);
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let fraction = micros.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let second_of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_unix_days(days + PG_EPOCH_UNIX_DAYS);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    };
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:06}Z")
}

/// Converts a Postgres timestamp to a [`SystemTime`].
pub fn to_system_time(pg_micros: i64) -> SystemTime {
    let unix_micros = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_SECS) * MICROS_PER_SEC;
    let magnitude =
        Duration::from_micros(u64::try_from(unix_micros.unsigned_abs()).unwrap_or(u64::MAX));
    if unix_micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Converts a [`SystemTime`] to a Postgres timestamp, saturating at the
/// ends of `i64`.
pub fn from_system_time(t: SystemTime) -> i64 {
    let unix_micros = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_micros()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_micros()).unwrap_or(i128::MAX),
    };
    let pg = unix_micros - i128::from(PG_EPOCH_UNIX_SECS) * MICROS_PER_SEC;
    i64::try_from(pg).unwrap_or(if pg < 0 { i64::MIN } else { i64::MAX })
}

/// Now, as a Postgres timestamp.
pub fn now_micros() -> i64 {
    from_system_time(SystemTime::now())
}

/// Microseconds between the Unix epoch and the Postgres epoch.
const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECS * 1_000_000;

/// A Postgres timestamp (µs since 2000-01-01 UTC) as µs since the Unix epoch.
pub fn pg_to_unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// µs since the Unix epoch as a Postgres timestamp.
pub fn unix_to_pg_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_postgres_micros_convert_both_ways() {
        assert_eq!(pg_to_unix_micros(0), 946_684_800_000_000);
        assert_eq!(unix_to_pg_micros(946_684_800_000_001), 1);
        assert_eq!(unix_to_pg_micros(pg_to_unix_micros(-5)), -5);
        assert_eq!(pg_to_unix_micros(i64::MAX), i64::MAX);
    }

    #[test]
    fn timestamps_at_known_points() {
        assert_eq!(format_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        // Unix epoch.
        assert_eq!(
            format_rfc3339(-PG_EPOCH_UNIX_SECS * 1_000_000),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2026-11-22T10:00:00.123456Z is Unix 1795341600.123456.
        let pg = (1_795_341_600 - PG_EPOCH_UNIX_SECS) * 1_000_000 + 123_456;
        assert_eq!(format_rfc3339(pg), "2026-11-22T10:00:00.123456Z");
        // A leap day, 2024-02-29T23:59:59Z (Unix 1709251199).
        let pg = (1_709_251_199 - PG_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(format_rfc3339(pg), "2024-02-29T23:59:59.000000Z");
        // Century rules: 2100 is not a leap year, so 2100-03-01 follows 2100-02-28.
        let pg = (4_107_542_400 - PG_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(format_rfc3339(pg), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn timestamps_never_panic_at_the_extremes() {
        assert!(format_rfc3339(i64::MAX).starts_with("+294"));
        assert!(format_rfc3339(i64::MIN).starts_with("-290"));
        civil_from_pg_days(i64::MAX);
        civil_from_pg_days(i64::MIN);
    }

    #[test]
    fn dates_agree_with_the_inverse_day_by_day() {
        // Every day from 1999 to 2101, and around year 0.
        for day in (-365..(102 * 366)).chain(-730_500..-729_700) {
            let d = civil_from_pg_days(day);
            assert_eq!(
                days_from_civil(d.year, i64::from(d.month), i64::from(d.day)),
                day + 10_957,
                "{d:?}"
            );
        }
        assert_eq!(
            civil_from_pg_days(-730_120),
            CivilDate {
                year: 0,
                month: 12,
                day: 31
            }
        );
    }

    /// The inverse conversion (days since 1970-01-01), only for checking.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn system_time_round_trip() {
        let t = to_system_time(1_500_000);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_micros(946_684_800_000_000 + 1_500_000)
        );
        assert_eq!(from_system_time(t), 1_500_000);
        assert_eq!(from_system_time(to_system_time(-5)), -5);
        let now = now_micros();
        assert!(now > (1_795_341_600 - PG_EPOCH_UNIX_SECS - 86_400 * 365 * 2) * 1_000_000);
    }
}
