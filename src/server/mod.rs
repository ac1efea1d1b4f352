//! Listeners, the per-connection session state machine, fan-out.
