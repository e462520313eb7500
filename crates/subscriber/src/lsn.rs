//! Log sequence numbers as records carry them: Postgres's `X/Y` text, two hexadecimal halves.

use std::fmt;
use std::str::FromStr;

/// A position in Postgres's write-ahead log. Ordered: a later commit has a greater LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Text that is not an LSN of the form `X/Y` (1 to 8 hexadecimal digits each).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an LSN of the form X/Y (hexadecimal halves)")]
pub struct LsnParseError;

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (high, low) = text.split_once('/').ok_or(LsnParseError)?;
        Ok(Lsn((hex_u32(high)? as u64) << 32 | hex_u32(low)? as u64))
    }
}

/// One half: digits only (no sign, no `0x`), at most 8 of them.
fn hex_u32(digits: &str) -> Result<u32, LsnParseError> {
    let well_formed =
        (1..=8).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed
        .then(|| u32::from_str_radix(digits, 16).ok())
        .flatten()
        .ok_or(LsnParseError)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        for (text, value) in [
            ("0/16B3748", 0x16B_3748),
            ("16/B374D848", 0x16_B374_D848),
            ("0/0", 0),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("a/b".parse::<Lsn>(), Ok(Lsn(0xA_0000_000B)));
    }

    #[test]
    fn refuses_what_is_not_an_lsn() {
        for text in [
            "",
            "0",
            "/1",
            "1/",
            "+1/2",
            "0x1/2",
            "1/2/3",
            "123456789/0",
            "g/0",
            " 1/2",
        ] {
            assert_eq!(text.parse::<Lsn>(), Err(LsnParseError), "{text:?}");
        }
    }

    #[test]
    fn orders_by_position() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
    }
}
