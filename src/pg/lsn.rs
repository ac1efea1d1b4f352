//! Postgres LSNs (`pg_lsn`): a `u64` everywhere in pgsat, written `X/Y` in
//! text as Postgres does.

use std::fmt;

/// A WAL position. `Lsn(0)` is "none"/"from the current head" on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    /// Parses Postgres' `X/Y` text form (hex halves).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("LSN {s:?} is not of the form X/Y"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("LSN {s:?}: {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("LSN {s:?}: {e}"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Postgres timestamp (µs since 2000-01-01) → µs since the Unix epoch.
pub fn pg_to_unix_micros(pg: i64) -> i64 {
    pg.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
    }
}
