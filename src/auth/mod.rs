//! Authentication: JWT checks, claims, users-table lookup, JWKS cache.
