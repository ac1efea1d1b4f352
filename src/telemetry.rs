//! Logging setup: tracing with an `EnvFilter` from `LOG_LEVEL`, text or JSON
//! lines on stderr (`LOG_FORMAT`).
//! Invariant: `init_tracing` installs the global subscriber at most once per
//! process; later calls (tests, a second start in one process) are no-ops,
//! never a panic.

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("LOG_LEVEL: {0:?} is not a log filter ({1})")]
    BadFilter(String, String),
}

/// Installs the global tracing subscriber. Returns `Ok(false)` when one was
/// already installed (by an earlier call or by a test harness).
pub fn init_tracing(level: &str, format: LogFormat) -> Result<bool, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| TelemetryError::BadFilter(level.to_string(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .is_ok(),
    };
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_an_error_and_second_init_is_a_no_op() {
        let e = init_tracing("pgsat=loud", LogFormat::Text).unwrap_err();
        assert!(e.to_string().starts_with("LOG_LEVEL: "), "{e}");
        // After one call a subscriber is installed (by it or earlier), so
        // the next calls report "already set" instead of panicking.
        init_tracing("info", LogFormat::Json).unwrap();
        assert!(!init_tracing("debug", LogFormat::Text).unwrap());
        assert!(!init_tracing("info", LogFormat::Json).unwrap());
    }
}
