//! Attack suite.
