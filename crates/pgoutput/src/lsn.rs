//! Log sequence numbers in the form Postgres prints them.
//!
//! Postgres shows an LSN as two hexadecimal numbers, the high and the low 32
//! bits, separated by a slash: `16/B374D848`. Logs, metrics and the Kafka
//! records use the same form so that operators can paste them into SQL
//! (`pg_wal_lsn_diff`, `pg_replication_slot_advance`).

/// Formats an LSN as Postgres does: `X/Y`, uppercase hex, no leading zeros.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN in the form Postgres accepts: one to eight hex digits (any
/// case), a slash, one to eight hex digits. Returns `None` for anything else.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some(u64::from(half(high)?) << 32 | u64::from(half(low)?))
}

fn half(digits: &str) -> Option<u32> {
    // from_str_radix alone would also take a leading '+'.
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_like_postgres() {
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x0000_0000_016B_3748), "0/16B3748");
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_postgres_forms() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("00000000/00000001"), Some(1));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "+1/0",
            "1/+0",
            "-1/0",
            "1/ 0",
            " 1/0",
            "1/0 ",
            "123456789/0",
            "0/123456789",
            "g/0",
            "0x1/0",
            "1.0/0",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(lsn: u64) {
            prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
    }
}
