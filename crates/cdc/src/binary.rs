//! Binary column values rendered as Postgres's text output prints them.
//!
//! In binary mode (`source.binary: true`) pgoutput sends each value in its
//! type's binary send format. Rules compare and render values as text, as
//! Postgres prints them, so a key must come out byte for byte the same
//! whichever mode the stream uses. This module does that conversion for the
//! types keys are commonly made of, and nothing else: a type without a
//! [`Rendering`] is refused when rules that read it are bound, never guessed.
//!
//! The text forms reproduce Postgres's output functions (`int4out`,
//! `numeric_out`, `timestamptz_out`, ...) under the session settings walbust
//! pins on its replication connection, [`SESSION_SETTINGS`]: `TimeZone=UTC`
//! and `DateStyle=ISO` among them. Without them, text mode itself would print
//! timestamps in whatever zone and style the server defaults to.
//!
//! Pure code, no allocation besides the caller's output `String`, and no
//! panic on any input: a value whose bytes do not fit its type is a
//! [`RenderError`], which carries no value bytes (they may be personal data).

use std::fmt::Write as _;

use walbust_pgoutput::time::{civil_from_pg_days, CivilDate, MICROS_PER_DAY};

/// The settings walbust pins on its replication connection, in both modes:
/// every setting that changes how an output function prints a value. Output
/// functions run in the walsender under the session's settings, which
/// `ALTER DATABASE ... SET` and `ALTER ROLE ... SET` change silently; a
/// startup option outranks both, so keys stay the same whatever they say,
/// and binary rendering can match text output exactly.
///
/// Each is Postgres's built-in default except `TimeZone`, whose default
/// comes from the server's environment:
///
/// - `TimeZone`: the offset of `timestamptz`;
/// - `DateStyle`: `date`, `timestamp`, `timestamptz` (`ISO`; `MDY` only
///   decides how ambiguous input is read);
/// - `IntervalStyle`: `interval` (`1 day 02:03:04`, not `P1DT2H3M4S`);
/// - `bytea_output`: `bytea` (`\x41`, not `A`);
/// - `extra_float_digits`: `real`, `double precision` and the geometric
///   types (`1` is the shortest exact form; `0` and below round);
/// - `lc_monetary`: `money` (`$1,000.00` under `C`; other locales change
///   the symbol and separators).
///
/// Other settings do not reach output functions: `lc_numeric` and `lc_time`
/// only affect `to_char`, `xmlbinary` and `xmloption` only affect XML
/// functions and input.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO,MDY"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
    ("lc_monetary", "C"),
];

/// [`SESSION_SETTINGS`] as the startup `options` of a connection
/// (`-c name=value ...`; no value holds a space or a backslash).
pub fn session_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// OIDs of the built-in types that have a [`Rendering`] (from Postgres's
/// `pg_type.dat`; built-in OIDs never change).
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `int8` (`bigint`).
    pub const INT8: u32 = 20;
    /// `int2` (`smallint`).
    pub const INT2: u32 = 21;
    /// `int4` (`integer`).
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `bpchar` (`char(n)`).
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `timestamp` (without time zone).
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
}

/// How one type's binary value becomes its text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rendering {
    /// `bool`: `t` or `f`.
    Bool,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `oid`: unsigned.
    Oid,
    /// `text`, `varchar`, `bpchar` (padding included, as Postgres prints
    /// it), `name`: the characters themselves.
    Text,
    /// `uuid`: lowercase, hyphenated.
    Uuid,
    /// `numeric`: as `numeric_out`, with the value's scale (`1.50` stays
    /// `1.50`), `NaN`, `Infinity`, `-Infinity`.
    Numeric,
    /// `date`: `YYYY-MM-DD`, ` BC` for years before 1, `infinity`.
    Date,
    /// `timestamp`: `YYYY-MM-DD HH:MM:SS[.ffffff]`, trailing zeros of the
    /// fraction dropped.
    Timestamp,
    /// `timestamptz`: as `timestamp`, followed by `+00` (UTC).
    TimestampTz,
}

/// Why a binary value could not be rendered. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The value's length does not fit its type.
    #[error("{type_name} value of {found} bytes, expected {expected}")]
    Length {
        type_name: &'static str,
        expected: &'static str,
        found: usize,
    },
    /// A character value is not valid UTF-8 (walbust requires UTF8 databases).
    #[error("text value is not valid UTF-8")]
    NotUtf8,
    /// A numeric value's header or digits are not a valid `numeric`.
    #[error("malformed numeric value: {0}")]
    Numeric(&'static str),
    /// A date or timestamp outside the range Postgres can print.
    #[error("{type_name} value out of range")]
    OutOfRange { type_name: &'static str },
}

impl Rendering {
    /// The rendering of a built-in type, by OID; `None` for types walbust
    /// cannot render (the rules must not read such a column in binary mode).
    pub fn for_type(type_oid: u32) -> Option<Rendering> {
        Some(match type_oid {
            oid::BOOL => Rendering::Bool,
            oid::INT2 => Rendering::Int2,
            oid::INT4 => Rendering::Int4,
            oid::INT8 => Rendering::Int8,
            oid::OID => Rendering::Oid,
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Rendering::Text,
            oid::UUID => Rendering::Uuid,
            oid::NUMERIC => Rendering::Numeric,
            oid::DATE => Rendering::Date,
            oid::TIMESTAMP => Rendering::Timestamp,
            oid::TIMESTAMPTZ => Rendering::TimestampTz,
            _ => return None,
        })
    }

    /// Appends the text form of `bytes` (a value in this type's binary send
    /// format) to `out`. On error `out` is left as it was.
    pub fn render(self, bytes: &[u8], out: &mut String) -> Result<(), RenderError> {
        let mark = out.len();
        let result = self.render_inner(bytes, out);
        if result.is_err() {
            out.truncate(mark);
        }
        result
    }

    fn render_inner(self, bytes: &[u8], out: &mut String) -> Result<(), RenderError> {
        match self {
            Rendering::Bool => {
                let [b] = fixed::<1>(bytes, "bool", "1")?;
                // boolrecv takes any non-zero byte as true.
                out.push(if b == 0 { 'f' } else { 't' });
            }
            Rendering::Int2 => push_int(out, i16::from_be_bytes(fixed(bytes, "int2", "2")?)),
            Rendering::Int4 => push_int(out, i32::from_be_bytes(fixed(bytes, "int4", "4")?)),
            Rendering::Int8 => push_int(out, i64::from_be_bytes(fixed(bytes, "int8", "8")?)),
            Rendering::Oid => push_int(out, u32::from_be_bytes(fixed(bytes, "oid", "4")?)),
            Rendering::Text => {
                out.push_str(std::str::from_utf8(bytes).map_err(|_| RenderError::NotUtf8)?)
            }
            Rendering::Uuid => push_uuid(out, &fixed::<16>(bytes, "uuid", "16")?),
            Rendering::Numeric => push_numeric(out, bytes)?,
            Rendering::Date => push_date(out, i32::from_be_bytes(fixed(bytes, "date", "4")?))?,
            Rendering::Timestamp => push_timestamp(
                out,
                i64::from_be_bytes(fixed(bytes, "timestamp", "8")?),
                false,
            )?,
            Rendering::TimestampTz => push_timestamp(
                out,
                i64::from_be_bytes(fixed(bytes, "timestamptz", "8")?),
                true,
            )?,
        }
        Ok(())
    }
}

fn fixed<const N: usize>(
    bytes: &[u8],
    type_name: &'static str,
    expected: &'static str,
) -> Result<[u8; N], RenderError> {
    bytes.try_into().map_err(|_| RenderError::Length {
        type_name,
        expected,
        found: bytes.len(),
    })
}

fn push_int(out: &mut String, value: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends `value` in decimal with at least `width` digits (`value` >= 0).
fn push_padded(out: &mut String, value: i64, width: usize) {
    let _ = write!(out, "{value:0width$}");
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_uuid(out: &mut String, bytes: &[u8; 16]) {
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

// numeric: Int16 ndigits, Int16 weight, Int16 sign, Int16 dscale, then
// ndigits base-10000 digits (numeric_send).
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;
const NBASE: u16 = 10_000;
const DEC_DIGITS: i32 = 4;

/// Mirrors `numeric_out` (`get_str_from_var`): every integer digit group,
/// the first without leading zeros, then exactly `dscale` fraction digits
/// (cut, not rounded, as Postgres does).
fn push_numeric(out: &mut String, bytes: &[u8]) -> Result<(), RenderError> {
    let word = |i: usize| -> Option<u16> {
        let b = bytes.get(i * 2..i * 2 + 2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    };
    let (Some(ndigits), Some(weight), Some(sign), Some(dscale)) =
        (word(0), word(1), word(2), word(3))
    else {
        return Err(RenderError::Numeric("header shorter than 8 bytes"));
    };
    let ndigits = usize::from(ndigits);
    if bytes.len() != 8 + ndigits * 2 {
        return Err(RenderError::Numeric(
            "length does not match the digit count",
        ));
    }
    let weight = i32::from(weight as i16);
    match sign {
        NUMERIC_NAN => {
            out.push_str("NaN");
            return Ok(());
        }
        NUMERIC_PINF => {
            out.push_str("Infinity");
            return Ok(());
        }
        NUMERIC_NINF => {
            out.push_str("-Infinity");
            return Ok(());
        }
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err(RenderError::Numeric("invalid sign")),
    }
    if dscale & NUMERIC_DSCALE_MASK != dscale {
        return Err(RenderError::Numeric("invalid scale"));
    }
    if (0..ndigits).any(|i| word(4 + i).is_none_or(|d| d >= NBASE)) {
        return Err(RenderError::Numeric("digit out of range"));
    }
    // Digit group `d` (0-based from the first sent); groups outside the sent
    // ones are zero.
    let digit = |d: i32| -> u16 {
        usize::try_from(d)
            .ok()
            .filter(|&d| d < ndigits)
            .and_then(|d| word(4 + d))
            .unwrap_or(0)
    };
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    let mut d: i32;
    if weight < 0 {
        d = weight + 1;
        out.push('0');
    } else {
        d = 0;
        while d <= weight {
            let group = digit(d);
            if d == 0 {
                push_int(out, group);
            } else {
                push_padded(out, i64::from(group), 4);
            }
            d += 1;
        }
    }
    let dscale = i32::from(dscale);
    if dscale > 0 {
        out.push('.');
        let mut written = 0;
        while written < dscale {
            let group = digit(d);
            let mut divisor = 1000;
            for _ in 0..DEC_DIGITS {
                if written == dscale {
                    break;
                }
                let figure = (group / divisor) % 10;
                out.push(char::from(b'0' + figure as u8));
                divisor /= 10;
                written += 1;
            }
            d += 1;
        }
    }
    Ok(())
}

// Dates and timestamps count from 2000-01-01 (the Postgres epoch).
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = MICROS_PER_DAY;
const USECS_PER_HOUR: i64 = 3_600_000_000;
const USECS_PER_MINUTE: i64 = 60_000_000;
const USECS_PER_SEC: i64 = 1_000_000;
/// First Julian day Postgres accepts (4714-11-24 BC).
const DATETIME_MIN_JULIAN: i64 = 0;
/// One past the last Julian day a `date` may hold.
const DATE_END_JULIAN: i64 = 2_147_483_494;
/// One past the last Julian day a timestamp may hold (294277-01-01).
const TIMESTAMP_END_JULIAN: i64 = 109_203_528;

/// `YYYY-MM-DD` of ISO DateStyle; years before 1 as positive BC years (the
/// ` BC` suffix is the caller's, it goes after a time zone).
fn push_ymd(out: &mut String, date: CivilDate) {
    let shown = if date.year > 0 {
        date.year
    } else {
        1 - date.year
    };
    push_padded(out, shown, 4);
    out.push('-');
    push_padded(out, i64::from(date.month), 2);
    out.push('-');
    push_padded(out, i64::from(date.day), 2);
}

fn push_date(out: &mut String, days: i32) -> Result<(), RenderError> {
    match days {
        i32::MIN => out.push_str("-infinity"),
        i32::MAX => out.push_str("infinity"),
        _ => {
            let jd = i64::from(days) + POSTGRES_EPOCH_JDATE;
            if !(DATETIME_MIN_JULIAN..DATE_END_JULIAN).contains(&jd) {
                return Err(RenderError::OutOfRange { type_name: "date" });
            }
            let date = civil_from_pg_days(i64::from(days));
            push_ymd(out, date);
            if date.year <= 0 {
                out.push_str(" BC");
            }
        }
    }
    Ok(())
}

fn push_timestamp(out: &mut String, micros: i64, with_zone: bool) -> Result<(), RenderError> {
    match micros {
        i64::MIN => {
            out.push_str("-infinity");
            return Ok(());
        }
        i64::MAX => {
            out.push_str("infinity");
            return Ok(());
        }
        _ => {}
    }
    let type_name = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    let days = micros.div_euclid(USECS_PER_DAY);
    let mut time = micros.rem_euclid(USECS_PER_DAY);
    if !(DATETIME_MIN_JULIAN..TIMESTAMP_END_JULIAN).contains(&(days + POSTGRES_EPOCH_JDATE)) {
        return Err(RenderError::OutOfRange { type_name });
    }
    let date = civil_from_pg_days(days);
    push_ymd(out, date);
    let hour = time / USECS_PER_HOUR;
    time -= hour * USECS_PER_HOUR;
    let minute = time / USECS_PER_MINUTE;
    time -= minute * USECS_PER_MINUTE;
    let second = time / USECS_PER_SEC;
    let fraction = time - second * USECS_PER_SEC;
    out.push(' ');
    push_padded(out, hour, 2);
    out.push(':');
    push_padded(out, minute, 2);
    out.push(':');
    push_padded(out, second, 2);
    if fraction != 0 {
        // Six digits, trailing zeros dropped (AppendSeconds).
        let mut digits = fraction;
        let mut width = 6;
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        out.push('.');
        push_padded(out, digits, width);
    }
    if with_zone {
        // The session runs in UTC (SESSION_SETTINGS).
        out.push_str("+00");
    }
    if date.year <= 0 {
        out.push_str(" BC");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_options_set_every_pinned_setting() {
        assert_eq!(
            session_options(),
            "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres \
             -c bytea_output=hex -c extra_float_digits=1 -c lc_monetary=C"
        );
    }

    fn render(r: Rendering, bytes: &[u8]) -> Result<String, RenderError> {
        let mut out = String::from("<");
        let res = r.render(bytes, &mut out);
        match res {
            Ok(()) => Ok(out.split_off(1)),
            Err(e) => {
                assert_eq!(out, "<", "output left untouched on error");
                Err(e)
            }
        }
    }

    fn ok(r: Rendering, bytes: &[u8]) -> String {
        render(r, bytes).unwrap_or_else(|e| panic!("{r:?} {bytes:?}: {e}"))
    }

    /// numeric_send bytes from header fields and base-10000 digits.
    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as u16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn types_by_oid() {
        assert_eq!(Rendering::for_type(23), Some(Rendering::Int4));
        assert_eq!(Rendering::for_type(1043), Some(Rendering::Text));
        assert_eq!(Rendering::for_type(1184), Some(Rendering::TimestampTz));
        // point, float8, bytea, json: no rendering.
        for unsupported in [600, 701, 17, 114, 0, u32::MAX] {
            assert_eq!(Rendering::for_type(unsupported), None, "{unsupported}");
        }
    }

    #[test]
    fn integers_and_bool() {
        assert_eq!(ok(Rendering::Bool, &[1]), "t");
        assert_eq!(ok(Rendering::Bool, &[0]), "f");
        assert_eq!(ok(Rendering::Int2, &(-32768i16).to_be_bytes()), "-32768");
        assert_eq!(ok(Rendering::Int4, &42i32.to_be_bytes()), "42");
        assert_eq!(ok(Rendering::Int4, &(-7i32).to_be_bytes()), "-7");
        assert_eq!(
            ok(Rendering::Int8, &i64::MIN.to_be_bytes()),
            "-9223372036854775808"
        );
        assert_eq!(ok(Rendering::Oid, &u32::MAX.to_be_bytes()), "4294967295");
        assert_eq!(
            render(Rendering::Int4, &[0, 0, 1]),
            Err(RenderError::Length {
                type_name: "int4",
                expected: "4",
                found: 3
            })
        );
        assert!(render(Rendering::Bool, &[]).is_err());
    }

    #[test]
    fn text_and_uuid() {
        assert_eq!(ok(Rendering::Text, "grüße ".as_bytes()), "grüße ");
        assert_eq!(ok(Rendering::Text, b""), "");
        assert_eq!(
            render(Rendering::Text, &[0xff, 0xfe]),
            Err(RenderError::NotUtf8)
        );
        let uuid = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            ok(Rendering::Uuid, &uuid),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(render(Rendering::Uuid, &uuid[..15]).is_err());
    }

    #[test]
    fn numerics_as_numeric_out() {
        let n = Rendering::Numeric;
        assert_eq!(ok(n, &numeric(0, NUMERIC_POS, 0, &[])), "0");
        assert_eq!(ok(n, &numeric(0, NUMERIC_POS, 2, &[])), "0.00");
        assert_eq!(ok(n, &numeric(0, NUMERIC_POS, 0, &[42])), "42");
        // 12345678.9 = [1234][5678].[9000], scale 1
        assert_eq!(
            ok(n, &numeric(1, NUMERIC_POS, 1, &[1234, 5678, 9000])),
            "12345678.9"
        );
        // -1.50: scale keeps the trailing zero.
        assert_eq!(ok(n, &numeric(0, NUMERIC_NEG, 2, &[1, 5000])), "-1.50");
        // 0.001: weight -1, digit group [0010]
        assert_eq!(ok(n, &numeric(-1, NUMERIC_POS, 3, &[10])), "0.001");
        // 1e-9 with scale 9: the group of fraction digits 9 to 12 (weight -3) is 1000.
        assert_eq!(ok(n, &numeric(-3, NUMERIC_POS, 9, &[1000])), "0.000000001");
        // 10000 = one group [1] at weight 1, trailing zero groups not sent.
        assert_eq!(ok(n, &numeric(1, NUMERIC_POS, 0, &[1])), "10000");
        // 1e20
        assert_eq!(
            ok(n, &numeric(5, NUMERIC_POS, 0, &[1])),
            "100000000000000000000"
        );
        assert_eq!(ok(n, &numeric(0, NUMERIC_NAN, 0, &[])), "NaN");
        assert_eq!(ok(n, &numeric(0, NUMERIC_PINF, 0, &[])), "Infinity");
        assert_eq!(ok(n, &numeric(0, NUMERIC_NINF, 0, &[])), "-Infinity");
        // Digits past the scale are cut, not rounded (as numeric_out does).
        assert_eq!(ok(n, &numeric(0, NUMERIC_POS, 1, &[1, 9999])), "1.9");
    }

    #[test]
    fn malformed_numerics_are_errors() {
        let n = Rendering::Numeric;
        assert!(render(n, &[0, 0, 0]).is_err());
        assert!(render(n, &numeric(0, 0x1234, 0, &[])).is_err());
        assert!(render(n, &numeric(0, NUMERIC_POS, 0x4000, &[])).is_err());
        assert!(render(n, &numeric(0, NUMERIC_POS, 0, &[10_000])).is_err());
        let mut short = numeric(0, NUMERIC_POS, 0, &[1, 2]);
        short.pop();
        assert!(render(n, &short).is_err());
        let mut long = numeric(0, NUMERIC_POS, 0, &[1]);
        long.push(0);
        assert!(render(n, &long).is_err());
    }

    fn days(d: i32) -> [u8; 4] {
        d.to_be_bytes()
    }

    #[test]
    fn dates_in_iso_style() {
        let d = Rendering::Date;
        assert_eq!(ok(d, &days(0)), "2000-01-01");
        assert_eq!(ok(d, &days(-1)), "1999-12-31");
        assert_eq!(ok(d, &days(60)), "2000-03-01");
        assert_eq!(ok(d, &days(9_190)), "2025-02-28");
        // 0001-01-01 and the day before, 0001-12-31 BC.
        assert_eq!(ok(d, &days(-730_119)), "0001-01-01");
        assert_eq!(ok(d, &days(-730_120)), "0001-12-31 BC");
        // First and last days Postgres accepts.
        assert_eq!(ok(d, &days(-2_451_545)), "4714-11-24 BC");
        assert_eq!(ok(d, &days(2_145_031_948)), "5874897-12-31");
        assert_eq!(ok(d, &days(i32::MAX)), "infinity");
        assert_eq!(ok(d, &days(i32::MIN)), "-infinity");
        assert!(render(d, &days(-2_451_546)).is_err());
        assert!(render(d, &days(2_145_031_949)).is_err());
    }

    fn micros(us: i64) -> [u8; 8] {
        us.to_be_bytes()
    }

    #[test]
    fn timestamps_in_iso_style() {
        let (ts, tz) = (Rendering::Timestamp, Rendering::TimestampTz);
        assert_eq!(ok(ts, &micros(0)), "2000-01-01 00:00:00");
        assert_eq!(ok(tz, &micros(0)), "2000-01-01 00:00:00+00");
        assert_eq!(ok(ts, &micros(1)), "2000-01-01 00:00:00.000001");
        assert_eq!(ok(ts, &micros(-1)), "1999-12-31 23:59:59.999999");
        assert_eq!(ok(tz, &micros(1_500_000)), "2000-01-01 00:00:01.5+00");
        assert_eq!(
            ok(tz, &micros(USECS_PER_DAY * 9_190 + 3_723_120_000)),
            "2025-02-28 01:02:03.12+00"
        );
        assert_eq!(ok(tz, &micros(i64::MAX)), "infinity");
        assert_eq!(ok(ts, &micros(i64::MIN)), "-infinity");
        // BC goes after the zone.
        assert_eq!(
            ok(tz, &micros(-730_120 * USECS_PER_DAY)),
            "0001-12-31 00:00:00+00 BC"
        );
        // Earliest and latest timestamps Postgres accepts.
        assert_eq!(
            ok(ts, &micros(-211_813_488_000_000_000)),
            "4714-11-24 00:00:00 BC"
        );
        assert_eq!(
            ok(ts, &micros(9_223_371_331_199_999_999)),
            "294276-12-31 23:59:59.999999"
        );
        assert!(render(ts, &micros(-211_813_488_000_000_001)).is_err());
        assert!(render(ts, &micros(9_223_371_331_200_000_000)).is_err());
        assert!(render(tz, &[0; 7]).is_err());
    }

    /// No input makes any rendering panic, and a failed rendering leaves the
    /// output alone (checked in `render`).
    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let all = [
            Rendering::Bool,
            Rendering::Int2,
            Rendering::Int4,
            Rendering::Int8,
            Rendering::Oid,
            Rendering::Text,
            Rendering::Uuid,
            Rendering::Numeric,
            Rendering::Date,
            Rendering::Timestamp,
            Rendering::TimestampTz,
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut rendered = 0;
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias numerics towards plausible headers so that the digit
            // loops run, not only the header checks.
            if len >= 8 && next() % 2 == 0 {
                let ndigits = ((len - 8) / 2) as u16;
                bytes[..2].copy_from_slice(&ndigits.to_be_bytes());
                bytes[4] &= 0x40;
                bytes[5] = 0;
                bytes[6] &= 0x3f;
                for d in bytes[8..].chunks_mut(2) {
                    if d.len() == 2 {
                        let v = u16::from_be_bytes([d[0], d[1]]) % NBASE;
                        d.copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
            for r in all {
                if render(r, &bytes).is_ok() {
                    rendered += 1;
                }
            }
        }
        assert!(rendered > 5_000, "only {rendered} renderings succeeded");
    }
}
