//! Environment → typed, validated `Config`.
