//! fake-server tests
