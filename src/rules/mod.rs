//! Read rules (protocol 1.1). Not implemented yet.
