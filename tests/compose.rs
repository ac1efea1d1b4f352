//! The deployment files against the code: docker-compose.yml and
//! .env.example only use variables pgsat knows and their values parse; the
//! `sql/` init scripts load into a real Postgres and leave the demo rows; the
//! Prometheus alerts use metrics pgsat exports; the Dockerfile's stub layer
//! covers every Cargo target; the container health check script follows
//! /readyz.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgsat::config::{known_variables, AuthMode, Config};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs =
        YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one document");
    docs.remove(0)
}

fn known() -> BTreeSet<&'static str> {
    known_variables().iter().copied().collect()
}

/// A scalar as compose sees it (numbers and booleans are strings there).
fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `services.<name>.environment`, in the map or the `- KEY=value` list form.
fn service_env(doc: &Yaml, service: &str) -> BTreeMap<String, String> {
    let env = &doc["services"][service]["environment"];
    let mut out = BTreeMap::new();
    if let Some(h) = env.as_hash() {
        for (k, v) in h {
            out.insert(scalar(k), scalar(v));
        }
    } else if let Some(list) = env.as_vec() {
        for item in list {
            let s = scalar(item);
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            out.insert(k.to_string(), v.to_string());
        }
    } else {
        panic!("services.{service}.environment is missing");
    }
    out
}

/// `.env.example`: (name, value, commented) for each `NAME=value` line and
/// each commented default `# NAME=value`.
fn env_example() -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for line in read(".env.example").lines() {
        let (body, commented) = match line.strip_prefix('#') {
            Some(rest) => (rest.trim_start(), true),
            None => (line.trim(), false),
        };
        let Some((name, value)) = body.split_once('=') else {
            assert!(commented || body.is_empty(), "strange line: {line:?}");
            continue;
        };
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !is_name {
            assert!(commented, "not NAME=value: {line:?}");
            continue;
        }
        out.push((name.to_string(), value.to_string(), commented));
    }
    out
}

/// Compose's interpolation of one value: `$$`, `$VAR`, `${VAR}`,
/// `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`, `${VAR:+a}`, `${VAR+a}`.
/// An error is what compose would refuse to start with.
fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let name_len = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_len);
            let val = env(name);
            let set = val.is_some();
            let nonempty = val.as_deref().is_some_and(|v| !v.is_empty());
            let v = val.clone().unwrap_or_default();
            let piece = if op.is_empty() {
                v
            } else if let Some(d) = op.strip_prefix(":-") {
                if nonempty {
                    v
                } else {
                    interpolate(d, env)?
                }
            } else if let Some(d) = op.strip_prefix('-') {
                if set {
                    v
                } else {
                    interpolate(d, env)?
                }
            } else if let Some(e) = op.strip_prefix(":?") {
                if nonempty {
                    v
                } else {
                    return Err(format!("{name}: {e}"));
                }
            } else if let Some(e) = op.strip_prefix('?') {
                if set {
                    v
                } else {
                    return Err(format!("{name}: {e}"));
                }
            } else if let Some(a) = op.strip_prefix(":+") {
                if nonempty {
                    interpolate(a, env)?
                } else {
                    String::new()
                }
            } else if let Some(a) = op.strip_prefix('+') {
                if set {
                    interpolate(a, env)?
                } else {
                    String::new()
                }
            } else {
                return Err(format!("unsupported interpolation ${{{expr}}}"));
            };
            out.push_str(&piece);
        } else {
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if n == 0 {
                return Err(format!("lone $ in {s:?} (write $$)"));
            }
            out.push_str(&env(&rest[..n]).unwrap_or_default());
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The variables a `${…}` in `s` reads.
fn referenced(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push(rest[..n].to_string());
    }
    out
}

/// The pgsat container's environment after compose's interpolation, with
/// `dotenv` as the `.env` file.
fn pgsat_env_with(dotenv: &HashMap<String, String>) -> Result<HashMap<String, String>, String> {
    let doc = yaml("docker-compose.yml");
    let lookup = |n: &str| dotenv.get(n).cloned();
    service_env(&doc, "pgsat")
        .into_iter()
        .map(|(k, v)| interpolate(&v, &lookup).map(|v| (k, v)))
        .collect()
}

fn uncommented_env_example() -> HashMap<String, String> {
    env_example()
        .into_iter()
        .filter(|(_, _, commented)| !commented)
        .map(|(k, v, _)| (k, v))
        .collect()
}

// ---------------------------------------------------------------- (a) names

#[test]
fn every_variable_compose_gives_pgsat_is_known_and_none_is_missing() {
    let doc = yaml("docker-compose.yml");
    let env = service_env(&doc, "pgsat");
    let known = known();
    for (name, value) in &env {
        assert!(
            known.contains(name.as_str()),
            "docker-compose.yml gives pgsat {name}, which config does not know"
        );
        for var in referenced(value) {
            assert!(
                known.contains(var.as_str()),
                "{name} reads ${{{var}}} from .env, which config does not know"
            );
        }
    }
    let given: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let missing: Vec<_> = known.difference(&given).collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml should list every variable: {missing:?}"
    );
}

#[test]
fn env_example_lists_every_variable_and_only_known_ones() {
    let entries = env_example();
    let known = known();
    let mut seen = BTreeSet::new();
    for (name, _, _) in &entries {
        assert!(
            known.contains(name.as_str()),
            ".env.example has {name}, which config does not know"
        );
        assert!(seen.insert(name.clone()), ".env.example lists {name} twice");
    }
    let missing: Vec<_> = known.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
}

// ------------------------------------------------------------- (c) parsing

#[test]
fn compose_environment_with_env_example_parses_as_a_secure_config() {
    let env = pgsat_env_with(&uncommented_env_example()).expect("interpolation");
    let config = Config::from_lookup(|n| env.get(n).cloned()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.auth.mode, AuthMode::Secure);
    assert_eq!(config.auth.alg, Some(jsonwebtoken::Algorithm::HS256));
    assert!(config.auth.key.is_some());
    assert_eq!(
        config.database_url,
        "postgres://postgres:postgres@postgres:5432/app"
    );
    assert_eq!(config.data_dir, Path::new("/var/lib/pgsat"));
    assert_eq!(config.listen_addr, "0.0.0.0:5133".parse().unwrap());
    assert_eq!(config.ws_listen_addr, "0.0.0.0:5134".parse().unwrap());
    assert_eq!(config.http_listen_addr, "0.0.0.0:5135".parse().unwrap());
    assert_eq!(config.window_max_bytes, 1 << 30);
    assert_eq!(config.rules_file, None);
}

#[test]
fn compose_refuses_to_start_without_a_jwt_key() {
    // No .env at all: compose stops on ${AUTH_JWT_KEY?…} with a hint.
    let err = pgsat_env_with(&HashMap::new()).unwrap_err();
    assert!(err.starts_with("AUTH_JWT_KEY"), "{err}");
    assert!(err.contains(".env.example"), "{err}");
    // With an empty key but a JWKS URL it starts, and config accepts it.
    let dotenv: HashMap<String, String> = [
        ("AUTH_JWT_KEY", ""),
        ("AUTH_JWT_ALG", "RS256"),
        (
            "AUTH_JWT_JWKS_URL",
            "https://issuer.example/.well-known/jwks.json",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = pgsat_env_with(&dotenv).expect("interpolation");
    let config = Config::from_lookup(|n| env.get(n).cloned()).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.auth.jwks_url.is_some());
    assert_eq!(config.auth.key, None);
}

#[test]
fn commented_defaults_of_env_example_parse_and_match_the_defaults() {
    // Uncomment every line that has a value: each default must be accepted
    // (and DATA_DIR aside, the config equals the one compose builds).
    let mut dotenv = uncommented_env_example();
    for (k, v, commented) in env_example() {
        if commented && !v.is_empty() {
            dotenv.insert(k, v);
        }
    }
    let with_defaults = Config::from_lookup(|n| dotenv.get(n).cloned())
        .unwrap_or_else(|e| panic!(".env.example defaults: {e}"));
    let via_compose = pgsat_env_with(&dotenv).expect("interpolation");
    let compose = Config::from_lookup(|n| via_compose.get(n).cloned()).unwrap();
    assert_eq!(with_defaults.window_max_bytes, compose.window_max_bytes);
    assert_eq!(with_defaults.cache_max_bytes, compose.cache_max_bytes);
    assert_eq!(
        with_defaults.client_max_lag_bytes,
        compose.client_max_lag_bytes
    );
    assert_eq!(with_defaults.max_frame_bytes, compose.max_frame_bytes);
    assert_eq!(with_defaults.max_connections, compose.max_connections);
    assert_eq!(with_defaults.auth.auth_timeout, compose.auth.auth_timeout);
    assert_eq!(with_defaults.auth.refresh_grace, compose.auth.refresh_grace);
    assert_eq!(with_defaults.listen_addr, compose.listen_addr);
    assert_eq!(with_defaults.database_url, compose.database_url);
    // The commented defaults are pgsat's own defaults.
    let bare = Config::from_lookup(|n| match n {
        "DATABASE_URL" => Some("postgres://u@h/d".to_string()),
        "AUTH_MODE" => Some("insecure".to_string()),
        _ => None,
    })
    .unwrap();
    assert_eq!(with_defaults.window_max_bytes, bare.window_max_bytes);
    assert_eq!(with_defaults.cache_max_bytes, bare.cache_max_bytes);
    assert_eq!(with_defaults.data_dir, bare.data_dir);
    assert_eq!(with_defaults.http_listen_addr, bare.http_listen_addr);
    assert_eq!(with_defaults.auth.leeway, bare.auth.leeway);
}

#[test]
fn interpolation_follows_compose_rules() {
    let env: HashMap<&str, &str> = [("SET", "x"), ("EMPTY", "")].into_iter().collect();
    let l = |n: &str| env.get(n).map(|v| v.to_string());
    assert_eq!(interpolate("${SET:-d}", &l).unwrap(), "x");
    assert_eq!(interpolate("${EMPTY:-d}", &l).unwrap(), "d");
    assert_eq!(interpolate("${EMPTY-d}", &l).unwrap(), "");
    assert_eq!(interpolate("${UNSET-d}", &l).unwrap(), "d");
    assert_eq!(interpolate("a$$b", &l).unwrap(), "a$b");
    assert_eq!(interpolate("$SET/${SET}", &l).unwrap(), "x/x");
    assert!(interpolate("${EMPTY:?no}", &l).is_err());
    assert_eq!(interpolate("${EMPTY?no}", &l).unwrap(), "");
    assert!(interpolate("${UNSET?no}", &l).is_err());
    assert!(interpolate("${SET", &l).is_err());
}

// ------------------------------------------------------- compose structure

#[test]
fn compose_services_are_wired_as_documented() {
    let doc = yaml("docker-compose.yml");
    let pg = &doc["services"]["postgres"];
    assert_eq!(pg["image"].as_str(), Some("postgres:16"));
    let cmd: Vec<String> = pg["command"]
        .as_vec()
        .expect("command")
        .iter()
        .map(scalar)
        .collect();
    assert!(cmd.contains(&"wal_level=logical".to_string()), "{cmd:?}");
    let vols: Vec<String> = pg["volumes"].as_vec().unwrap().iter().map(scalar).collect();
    assert!(
        vols.iter()
            .any(|v| v.starts_with("./sql:/docker-entrypoint-initdb.d")),
        "{vols:?}"
    );
    let hc: Vec<String> = pg["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(scalar)
        .collect();
    assert!(hc.join(" ").contains("pg_isready"), "{hc:?}");

    let p = &doc["services"]["pgsat"];
    assert_eq!(p["build"].as_str(), Some("."));
    assert_eq!(
        p["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    let hc: Vec<String> = p["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(scalar)
        .collect();
    assert!(hc.join(" ").contains("pgsat-healthcheck"), "{hc:?}");
    assert_eq!(p["stop_grace_period"].as_str(), Some("15s"));
    let ports: Vec<String> = p["ports"].as_vec().unwrap().iter().map(scalar).collect();
    for port in ["5133", "5134", "5135"] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{port} not published: {ports:?}"
        );
    }
    let vols: Vec<String> = p["volumes"].as_vec().unwrap().iter().map(scalar).collect();
    assert!(
        vols.iter().any(|v| v.ends_with(":/var/lib/pgsat")),
        "{vols:?}"
    );

    let prom = &doc["services"]["prometheus"];
    let profiles: Vec<String> = prom["profiles"]
        .as_vec()
        .unwrap()
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(profiles, ["monitoring"]);
    // Every file a service mounts from the repo exists.
    for (name, svc) in doc["services"].as_hash().unwrap() {
        for v in svc["volumes"].as_vec().into_iter().flatten() {
            let v = scalar(v);
            if let Some(src) = v.strip_prefix("./") {
                let src = src.split(':').next().unwrap();
                assert!(
                    repo().join(src).exists(),
                    "{} mounts ./{src}, which does not exist",
                    scalar(name)
                );
            }
        }
    }
}

// ---------------------------------------------------------------- prometheus

#[test]
fn prometheus_scrapes_pgsat_and_alerts_use_exported_metrics() {
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_vec()
        .expect("targets")
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(targets, ["pgsat:5135"]);
    assert_eq!(
        prom["scrape_configs"][0]["metrics_path"].as_str(),
        Some("/metrics")
    );
    let rule_files: Vec<String> = prom["rule_files"]
        .as_vec()
        .unwrap()
        .iter()
        .map(scalar)
        .collect();
    assert_eq!(rule_files, ["/etc/prometheus/alerts.yml"]);

    let text = pgsat::metrics::Metrics::new().unwrap().encode();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let rules = alerts["groups"][0]["rules"].as_vec().expect("rules");
    assert!(rules.len() >= 3, "a few sample alerts");
    for rule in rules {
        let name = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr");
        let metrics: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pgsat_"))
            .collect();
        assert!(!metrics.is_empty(), "{name}: no pgsat metric in {expr:?}");
        for m in metrics {
            assert!(
                exported.contains(m),
                "{name} uses {m}, which pgsat does not export (have: {exported:?})"
            );
        }
        assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
    }
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_stub_layer_covers_every_cargo_target_and_copies_existing_paths() {
    let docker = read("Dockerfile");
    let manifest = read("Cargo.toml");
    // The dependency layer writes a stand-in for every declared target path.
    let mut paths = vec!["src/lib.rs".to_string(), "src/main.rs".to_string()];
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[[bench]]" {
            if let Some(name) = line.strip_prefix("name = ") {
                paths.push(format!("benches/{}.rs", name.trim_matches('"')));
            }
        }
    }
    for p in &paths {
        assert!(
            docker.contains(&format!("> {p}")),
            "Dockerfile's dependency layer lacks a stub for {p}"
        );
    }
    for needle in [
        "FROM rust:1-bookworm AS build",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "--uid 10001",
        "USER 10001:10001",
        "VOLUME [\"/var/lib/pgsat\"]",
        "EXPOSE 5133 5134 5135",
        "HEALTHCHECK",
        "ENTRYPOINT [\"/usr/local/bin/pgsat\"]",
        "CMD [\"serve\"]",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The health check needs no curl/wget: nothing installs them.
    assert!(
        !docker
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("curl") || l.contains("wget")),
        "the image should not need curl or wget"
    );
    // COPY sources exist and are not excluded by .dockerignore.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for line in docker.lines() {
        let Some(args) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such path");
            let top = src.split('/').next().unwrap();
            assert!(
                !ignored.contains(src) && !ignored.contains(&top),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
    assert!(ignored.contains(&"target") && ignored.contains(&".git"));
}

// --------------------------------------------------------------- healthcheck

/// Answers each connection with one HTTP status line, then closes.
fn one_status_server(status: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 512];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes());
        String::from_utf8_lossy(&req).into_owned()
    });
    (port, h)
}

fn healthcheck(port: u16) -> std::process::ExitStatus {
    Command::new("bash")
        .arg(repo().join("deploy/docker/healthcheck.sh"))
        .env("HTTP_LISTEN_ADDR", format!("0.0.0.0:{port}"))
        .status()
        .expect("run bash")
}

#[test]
fn healthcheck_script_follows_readyz() {
    let (port, h) = one_status_server("200 OK");
    assert!(healthcheck(port).success(), "200 must be healthy");
    let req = h.join().unwrap();
    assert!(req.starts_with("GET /readyz HTTP/1.1\r\n"), "{req:?}");

    let (port, h) = one_status_server("503 Service Unavailable");
    assert_eq!(healthcheck(port).code(), Some(1), "503 must be unhealthy");
    h.join().unwrap();

    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(healthcheck(free).code(), Some(1), "nothing listening");

    let bad = Command::new("bash")
        .arg(repo().join("deploy/docker/healthcheck.sh"))
        .env("HTTP_LISTEN_ADDR", "nonsense")
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(1));
}

// ------------------------------------------------------------------ (b) sql/

fn sql_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("sql"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "sql/ has no .sql file");
    files
}

#[test]
fn sql_dir_loads_in_order_into_postgres_and_leaves_the_demo_rows() {
    let pg = support::PgServer::start();
    // As docker-entrypoint-initdb.d does: each file in name order.
    for f in sql_files() {
        pg.try_execute(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    let users = pg.execute("SELECT id FROM users ORDER BY id");
    let users: Vec<&str> = users.lines().collect();
    for u in ["alice", "bob"] {
        assert!(users.contains(&u), "demo user {u} missing: {users:?}");
    }
    let lists = pg.execute("SELECT count(*) FROM todo_lists WHERE owner_id = 'alice'");
    assert!(
        lists.trim().parse::<u32>().unwrap() >= 1,
        "alice has a list"
    );
    let todos = pg.execute("SELECT count(*) FROM todos");
    let n_todos: u32 = todos.trim().parse().unwrap();
    assert!(n_todos >= 1, "demo todos exist");
    // Rules compare owner columns on updates/deletes: the old row is full.
    let ident = pg.execute(
        "SELECT relname || '=' || relreplident::text FROM pg_class \
         WHERE relname IN ('todo_lists', 'todos') ORDER BY relname",
    );
    assert_eq!(ident.trim(), "todo_lists=f\ntodos=f");
    // The users table matches the compose defaults (AUTH_USERS_TABLE/ID_COLUMN).
    let env = pgsat_env_with(&uncommented_env_example()).unwrap();
    let table = &env["AUTH_USERS_TABLE"];
    let column = &env["AUTH_USERS_ID_COLUMN"];
    let found = pg.execute(&format!(
        "SELECT count(*) FROM {table} WHERE {column} = 'alice'"
    ));
    assert_eq!(found.trim(), "1");

    // Loading again (pgsat dev on an existing database, a re-run init)
    // neither fails nor duplicates the demo rows.
    for f in sql_files() {
        pg.try_execute(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("second load of {}: {e}", f.display()));
    }
    assert_eq!(
        pg.execute("SELECT count(*) FROM todos").trim(),
        todos.trim()
    );
}
