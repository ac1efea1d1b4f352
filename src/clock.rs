//! The wall clock as the log, the protocol and the metrics use it: µs since
//! the Unix epoch (a clock set before 1970 reads 0).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in µs since the Unix epoch.
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
