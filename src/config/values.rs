//! Validators for the non-numeric configuration values: JWT algorithms and
//! keys, listen addresses, URLs, Postgres names.
//! Invariant: each function either returns a value the rest of pgsat can use
//! as-is, or a one-line reason that never echoes a secret (database
//! password, JWT key).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use jsonwebtoken::{Algorithm, DecodingKey};

/// Longest Postgres identifier (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

const ALGS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// `HS256` … `EdDSA` → the jsonwebtoken algorithm; `ES512` and `none` get their
/// own explanation.
pub fn parse_jwt_alg(s: &str) -> Result<Algorithm, String> {
    Ok(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "ES512" => {
            return Err(format!(
                "ES512 is not supported by the JWT library pgsat uses; choose one of {ALGS}"
            ))
        }
        "none" | "None" | "NONE" => {
            return Err(
                "\"none\" is never accepted as an algorithm; use AUTH_MODE=insecure for unsigned development tokens"
                    .to_string(),
            )
        }
        other => return Err(format!("{other:?} is not a supported algorithm; choose one of {ALGS}")),
    })
}

/// Checks that `key` is usable to verify `alg`: a non-empty secret for HS*, a
/// PEM public key of the right family otherwise. Never includes the key in
/// the error.
pub fn check_verification_key(alg: Algorithm, key: &str) -> Result<(), String> {
    let pem = key.as_bytes();
    let result = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if key.is_empty() {
                return Err("the HMAC secret is empty".to_string());
            }
            return Ok(());
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem).map(|_| ()),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem).map(|_| ()),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).map(|_| ()),
    };
    result.map_err(|e| format!("not a PEM public key usable with {alg:?} ({e})"))
}

/// `IP:port`, `[IPv6]:port` or `localhost:port` (→ 127.0.0.1). Host names are
/// not resolved: a listen address must be unambiguous.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port (0-65535)"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(format!(
        "{s:?} is not an address (use IP:port, [IPv6]:port or localhost:port, e.g. 0.0.0.0:5133)"
    ))
}

/// A replication slot name as Postgres accepts it: lowercase letters, digits
/// and underscores, 1 to 63 characters.
pub fn check_slot_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!("{s:?} must be 1 to 63 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{s:?} may contain only lowercase letters, digits and underscores"
        ));
    }
    Ok(())
}

/// A plain SQL identifier: a letter or underscore, then letters, digits,
/// underscores or `$`, at most 63 bytes. Quoting is then never ambiguous.
pub fn check_identifier(s: &str) -> Result<(), String> {
    let mut bytes = s.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
        return Err(format!(
            "{s:?} is not an identifier (a letter or _, then letters, digits, _ or $)"
        ));
    }
    if s.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    Ok(())
}

/// `table` or `schema.table`, each part a plain identifier.
pub fn check_qualified_name(s: &str) -> Result<(), String> {
    let mut parts = s.split('.');
    let n = s.split('.').count();
    if n > 2 {
        return Err(format!("{s:?} must be table or schema.table"));
    }
    parts.try_for_each(check_identifier)
}

/// `DATABASE_URL`: a `postgres://` or `postgresql://` URL that the Postgres
/// client accepts. The error never contains the URL (it may hold a password).
pub fn check_database_url(s: &str) -> Result<(), String> {
    const FORM: &str = "expected postgres://user:pass@host:port/db";
    let url = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e} ({FORM})"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not postgres:// or postgresql:// ({FORM})",
            url.scheme()
        ));
    }
    let hide = |e: crate::pg::PgError| {
        let mut msg = e.to_string();
        if let Some(pw) = url.password().filter(|p| !p.is_empty()) {
            msg = msg.replace(pw, "***");
        }
        msg
    };
    let params = crate::pg::conn::ConnParams::from_url(s).map_err(hide)?;
    // sslrootcert is read now, so a missing or bad file fails the start.
    params.tls.client_config().map_err(hide)?;
    Ok(())
}

/// `AUTH_JWT_JWKS_URL`: an absolute `http://` or `https://` URL with a host.
pub fn check_http_url(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(())
}

/// The machine's host name, or `"pgsat"` when it cannot be read.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "pgsat".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => "pgsat".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms() {
        assert_eq!(parse_jwt_alg("HS256"), Ok(Algorithm::HS256));
        assert_eq!(parse_jwt_alg("PS512"), Ok(Algorithm::PS512));
        assert_eq!(parse_jwt_alg("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(parse_jwt_alg("ES512")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_jwt_alg("none").unwrap_err().contains("insecure"));
        assert!(parse_jwt_alg("hs256")
            .unwrap_err()
            .contains("not a supported"));
        assert!(parse_jwt_alg("").is_err());
    }

    #[test]
    fn verification_keys() {
        assert!(check_verification_key(Algorithm::HS256, "s3cret").is_ok());
        assert!(check_verification_key(Algorithm::HS256, "").is_err());
        let e = check_verification_key(Algorithm::RS256, "s3cret-not-pem").unwrap_err();
        assert!(e.contains("PEM") && !e.contains("s3cret"), "{e}");
        assert!(check_verification_key(Algorithm::ES256, "x").is_err());
        assert!(check_verification_key(Algorithm::EdDSA, "x").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("0.0.0.0:5133"),
            Ok("0.0.0.0:5133".parse().unwrap())
        );
        assert_eq!(parse_listen_addr("[::]:80"), Ok("[::]:80".parse().unwrap()));
        assert_eq!(
            parse_listen_addr("localhost:9"),
            Ok("127.0.0.1:9".parse().unwrap())
        );
        for bad in [
            "",
            "5133",
            ":5133",
            "example.com:80",
            "1.2.3.4",
            "1.2.3.4:70000",
            "localhost:x",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(check_slot_name("pgsat_1").is_ok());
        assert!(check_slot_name(&"a".repeat(63)).is_ok());
        for bad in ["", "Pgsat", "pg-sat", "pg sat", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
        assert!(check_identifier("Users_2$").is_ok());
        for bad in ["", "1abc", "a-b", "a b", "a\"b", &"a".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
        assert!(check_qualified_name("users").is_ok());
        assert!(check_qualified_name("app.users").is_ok());
        for bad in ["a.b.c", ".users", "app.", "app;drop"] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_urls() {
        assert!(check_database_url("postgres://u:p@localhost:5432/db").is_ok());
        assert!(check_database_url("postgresql://u@127.0.0.1/db").is_ok());
        let e = check_database_url("mysql://u:hunter2@h/db").unwrap_err();
        assert!(e.contains("mysql") && !e.contains("hunter2"), "{e}");
        let e = check_database_url("host=localhost password=hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = check_database_url("postgres://u:hunter2@h:notaport/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn http_urls() {
        assert!(check_http_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_http_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_http_url("ftp://x/jwks").is_err());
        assert!(check_http_url("jwks.json").is_err());
    }

    #[test]
    fn host_name_is_never_empty() {
        assert!(!host_name().is_empty());
    }
}
