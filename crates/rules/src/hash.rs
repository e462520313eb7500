//! The short, stable hash behind `{col:hash}` and hashed long keys.
//!
//! FNV-1a, 64 bits, over the UTF-8 bytes of the text, printed as 16 lowercase
//! hexadecimal digits. Chosen because applications in any language can
//! reproduce it in a few lines (it has no seed and no platform dependence),
//! and a cache key needs spread, not cryptographic strength.
//!
//! Reference values: `""` → `cbf29ce484222325`, `"a"` → `af63dc4c8601ec8c`.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Length in bytes of a rendered hash.
pub const HASH_LEN: usize = 16;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv::default();
    hasher.write(bytes);
    hasher.0
}

/// FNV-1a 64 fed in pieces: the hash of a long key is computed from the row's values without
/// building the key.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET_BASIS)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// Appends the 16 hex digits of the hash so far to `out`.
    pub(crate) fn push_hex(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..HASH_LEN).rev() {
            let nibble = (self.0 >> (shift * 4)) & 0xf;
            // `nibble` < 16, so the index is always in range.
            out.push(char::from(HEX[nibble as usize]));
        }
    }
}

/// Appends the 16 hex digits of `fnv1a64(value)` to `out`.
pub(crate) fn push_hash(out: &mut String, value: &str) {
    let mut hasher = Fnv::default();
    hasher.write(value.as_bytes());
    hasher.push_hex(out);
}

/// The text `{col:hash}` renders for `value`: 16 lowercase hex digits.
///
/// Public so that Rust applications build the same keys walbust invalidates.
pub fn hash_value(value: &str) -> String {
    let mut out = String::with_capacity(HASH_LEN);
    push_hash(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(hash_value(""), "cbf29ce484222325");
        assert_eq!(hash_value("a"), "af63dc4c8601ec8c");
        assert_eq!(hash_value("foobar"), "85944171f73967e8");
    }

    #[test]
    fn fixed_width() {
        for v in ["", "x", "a much longer value with spaces", "ünïcödé"] {
            let h = hash_value(v);
            assert_eq!(h.len(), HASH_LEN);
            assert!(h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }
}
