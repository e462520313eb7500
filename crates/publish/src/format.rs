//! How LSNs and commit times are written in records: as Postgres prints an LSN, and as RFC 3339.
//!
//! The calendar conversion is a few lines of integer arithmetic (the days-to-civil algorithm from
//! Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms"), so no date crate is needed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch (1970-01-01) and the Postgres epoch (2000-01-01), both UTC.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

const MICROS_PER_SEC: i128 = 1_000_000;
const SECS_PER_DAY: i128 = 86_400;

/// Formats an LSN the way Postgres prints it: two uppercase hex halves, `16/B374D848`.
pub use walbust_pgoutput::format_lsn;

/// Formats a Postgres timestamp (µs since 2000-01-01 UTC) as RFC 3339 UTC with microseconds,
/// `2026-11-22T10:00:00.123456Z`.
///
/// Years outside 0000..=9999 (which no commit time reaches) are written with a sign and more
/// digits, ISO 8601's expanded form, rather than being clamped.
pub fn format_pg_timestamp(pg_micros: i64) -> String {
    let unix_micros = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_SECS) * MICROS_PER_SEC;
    let secs = unix_micros.div_euclid(MICROS_PER_SEC);
    let micros = unix_micros.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let second_of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
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
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z")
}

/// Converts a Postgres timestamp to a [`SystemTime`].
pub fn pg_timestamp_to_system_time(pg_micros: i64) -> SystemTime {
    let unix_micros = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_SECS) * MICROS_PER_SEC;
    let magnitude =
        Duration::from_micros(u64::try_from(unix_micros.unsigned_abs()).unwrap_or(u64::MAX));
    if unix_micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Year, month (1..=12) and day (1..=31) of a count of days since 1970-01-01.
fn civil_from_days(days: i128) -> (i128, u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_like_postgres() {
        assert_eq!(format_lsn(0x16B3748), "0/16B3748");
        assert_eq!(format_lsn(0x16_B374D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn timestamps_at_known_points() {
        assert_eq!(format_pg_timestamp(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_timestamp(-1), "1999-12-31T23:59:59.999999Z");
        // Unix epoch.
        assert_eq!(
            format_pg_timestamp(-PG_EPOCH_UNIX_SECS * 1_000_000),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2026-11-22T10:00:00.123456Z is Unix 1795341600.123456.
        let pg = (1_795_341_600 - PG_EPOCH_UNIX_SECS) * 1_000_000 + 123_456;
        assert_eq!(format_pg_timestamp(pg), "2026-11-22T10:00:00.123456Z");
        // A leap day, 2024-02-29T23:59:59Z (Unix 1709251199).
        let pg = (1_709_251_199 - PG_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(format_pg_timestamp(pg), "2024-02-29T23:59:59.000000Z");
        // Century rules: 2100 is not a leap year, so 2100-03-01 follows 2100-02-28.
        let pg = (4_107_542_400 - PG_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(format_pg_timestamp(pg), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn timestamps_never_panic_at_the_extremes() {
        assert!(format_pg_timestamp(i64::MAX).starts_with("+294"));
        assert!(format_pg_timestamp(i64::MIN).starts_with("-290"));
    }

    #[test]
    fn timestamps_agree_with_system_time_day_by_day() {
        // Every day from 1999 to 2101 round-trips through the calendar arithmetic.
        for day in -365..(102 * 366) {
            let pg = day * 86_400 * 1_000_000;
            let text = format_pg_timestamp(pg);
            let (date, _) = text.split_once('T').unwrap();
            let parts: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
            assert_eq!(
                days_from_civil(parts[0], parts[1], parts[2]),
                day + 10_957,
                "{text}"
            );
        }
    }

    /// The inverse conversion, only for checking.
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
    fn system_time_conversion() {
        let t = pg_timestamp_to_system_time(1_500_000);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_micros(946_684_800_000_000 + 1_500_000)
        );
    }
}
