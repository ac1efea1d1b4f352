//! pgoutput messages → whole committed transactions, encoded once as wire frames.
