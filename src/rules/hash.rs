//! A stable hash for `view_id` and the rules' version: FNV-1a, 128 bits.
//!
//! Invariant: the same bytes give the same hex string on every build,
//! platform and run (no per-process keys), so ids survive restarts.

const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const PRIME: u128 = 0x0000000001000000000000000000013B;

/// 32 lowercase hex digits.
pub fn stable_hash_hex(bytes: &[u8]) -> String {
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // FNV-1a 128 test vectors.
        assert_eq!(
            super::stable_hash_hex(b""),
            "6c62272e07bb014262b821756295c58d"
        );
        assert_eq!(
            super::stable_hash_hex(b"a"),
            "d228cb696f1a8caf78912b704e4a8964"
        );
    }
}
