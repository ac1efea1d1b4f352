//! `pgsat dev`: the embedded default. A throwaway Postgres ([`DevPg`]) with
//! the `sql/` files loaded, and the proxy in insecure mode against it.
//!
//! Invariant: whatever happens after the cluster started — Ctrl-C, SIGTERM,
//! a proxy error — the proxy is stopped first, then Postgres, then the temp
//! dir (cluster and pgsat's log) is removed; only then does the command
//! return. Exit 0 on a signal, 1 on a runtime error, 2 when no Postgres is
//! installed.
//!
//! Stdout carries only the banner, one `key: value` per line so scripts and
//! tests can read it (`token (alice): …`, `tcp: …`, `temp dir: …`), then the
//! `pgsat tail` command to paste, alone on an indented line; logs go to
//! stderr.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::config::Config;
use crate::devpg::DevPg;
use crate::server::BoundAddrs;

/// The files of `sql/`, in load order, embedded so `pgsat dev` works from
/// any directory. A unit test checks this list against the directory.
pub const SQL_FILES: &[(&str, &str)] = &[
    ("001_users.sql", include_str!("../../sql/001_users.sql")),
    ("002_demo.sql", include_str!("../../sql/002_demo.sql")),
];

/// Demo users (rows of `users` in sql/001_users.sql) given a token.
pub const DEMO_USERS: &[&str] = &["alice", "bob"];

/// The demo's read rules, written to the temp dir and used as `RULES_FILE`
/// unless that variable is set.
pub const DEMO_RULES: &str = include_str!("../../sql/rules.toml");

/// The `team_id` claim of each demo user's token (their users row's team).
fn demo_team(user: &str) -> Option<&'static str> {
    match user {
        "alice" | "bob" => Some("red"),
        "carol" => Some("blue"),
        _ => None,
    }
}

/// Lifetime of the printed tokens.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Default ports (interface.md), used when free.
const DEFAULT_PORTS: [(&str, u16); 3] = [
    ("LISTEN_ADDR", 5133),
    ("WS_LISTEN_ADDR", 5134),
    ("HTTP_LISTEN_ADDR", 5135),
];

/// Runs `pgsat dev` until SIGINT/SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Signals first: a Ctrl-C during start-up must still clean up.
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            shutdown.cancel();
        });
    }

    let pg = match tokio::task::spawn_blocking(DevPg::start).await? {
        Ok(pg) => pg,
        Err(e) if e.is_missing_install() => {
            // A usage error: nothing was started, nothing to clean up.
            eprintln!("pgsat: {e}");
            std::process::exit(2);
        }
        Err(e) => return Err(e).context("cannot start the throwaway Postgres"),
    };
    tracing::info!(dir = %pg.root().display(), port = pg.port(), "throwaway Postgres started");

    let result = run_with(&pg, &args, shutdown.clone()).await;
    shutdown.cancel();

    let root = pg.root().to_path_buf();
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    if root.exists() {
        eprintln!("pgsat dev: could not remove {}", root.display());
    } else {
        println!("stopped: removed {}", root.display());
    }
    result
}

/// Everything between "Postgres is up" and "the proxy has stopped".
async fn run_with(pg: &DevPg, args: &DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    load_sql(&pg.url()).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }

    let data_dir = pg.root().join("pgsat-data");
    let rules_path = pg.root().join("rules.toml");
    std::fs::write(&rules_path, DEMO_RULES)
        .with_context(|| format!("cannot write {}", rules_path.display()))?;
    let rules_env = rules_path.display().to_string();
    let config = dev_config(&pg.url(), &data_dir, |name| {
        let v = std::env::var(name).ok();
        if name == "RULES_FILE" && v.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Some(rules_env.clone());
        }
        v
    })?;

    let tokens = DEMO_USERS
        .iter()
        .map(|user| {
            let mut claims = Map::new();
            if let Some(team) = demo_team(user) {
                claims.insert("team_id".into(), Value::String(team.into()));
            }
            crate::auth::mint_token(user, TOKEN_TTL, None, None, claims)
                .map(|t| (*user, t))
                .map_err(|e| anyhow::anyhow!("cannot mint a demo token for {user}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = args.write_demo.then(|| {
        let url = pg.url();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Start writing once the slot exists, so every write streams.
            if ready_rx.await.is_ok() {
                demo_writer(&url, shutdown).await;
            }
        })
    });

    let banner = Banner {
        pg_url: pg.url(),
        root: pg.root().display().to_string(),
        tokens,
        write_demo: args.write_demo,
        exe: program_path(),
        rules: config
            .rules_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    };
    let result = crate::server::run_until(config, shutdown.clone(), move |addrs| {
        banner.print(&addrs);
        let _ = ready_tx.send(());
    })
    .await;
    shutdown.cancel();
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    result
}

/// The configuration for the dev proxy: the cluster's URL, insecure mode,
/// the log in the temp dir, the users table of `sql/`, listeners on
/// 127.0.0.1 (the default ports when free, else ports the OS picks) unless
/// `LISTEN_ADDR`/`WS_LISTEN_ADDR`/`HTTP_LISTEN_ADDR` are set. Other
/// variables (`LOG_LEVEL`, `WINDOW_MAX_BYTES`, `RULES_FILE`, …) come from
/// `env`; the `AUTH_JWT_*` ones are ignored (nothing is verified).
pub fn dev_config(
    database_url: &str,
    data_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, crate::config::ConfigError> {
    let mut fixed: HashMap<&str, String> = HashMap::new();
    fixed.insert("DATABASE_URL", database_url.to_string());
    fixed.insert("AUTH_MODE", "insecure".to_string());
    fixed.insert("DATA_DIR", data_dir.display().to_string());
    fixed.insert("AUTH_USERS_TABLE", "users".to_string());
    fixed.insert("AUTH_USERS_ID_COLUMN", "id".to_string());
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    for (var, port) in DEFAULT_PORTS {
        if set(var).is_none() {
            fixed.insert(var, loopback_addr(port));
        }
    }
    if set("SERVER_ID").is_none() {
        fixed.insert("SERVER_ID", "pgsat-dev".to_string());
    }
    Config::from_lookup(|name| {
        if let Some(v) = fixed.get(name) {
            return Some(v.clone());
        }
        if name.starts_with("AUTH_JWT_") {
            return None;
        }
        env(name)
    })
}

/// `127.0.0.1:<port>` when that port is free right now, else `127.0.0.1:0`.
fn loopback_addr(port: u16) -> String {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    match TcpListener::bind(addr) {
        Ok(_) => addr.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

/// Runs the embedded `sql/` files, in order, as the superuser.
pub async fn load_sql(url: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the throwaway Postgres")?;
    let conn_task = tokio::spawn(conn);
    for (name, sql) in SQL_FILES {
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("loading sql/{name}"))?;
    }
    drop(client);
    let _ = conn_task.await;
    Ok(())
}

/// What `pgsat dev` prints once the proxy accepts.
struct Banner {
    pg_url: String,
    root: String,
    tokens: Vec<(&'static str, String)>,
    write_demo: bool,
    exe: String,
    /// The RULES_FILE in use.
    rules: String,
}

impl Banner {
    fn print(&self, addrs: &BoundAddrs) {
        use std::io::Write;
        let tcp = reachable(addrs.tcp);
        let ws = reachable(addrs.ws);
        let http = reachable(addrs.http);
        let mut out = String::new();
        out.push_str(
            "pgsat dev is ready (AUTH_MODE=insecure: tokens are not verified; local use only)\n",
        );
        out.push_str(&format!("postgres: {}\n", self.pg_url));
        out.push_str(&format!("temp dir: {}\n", self.root));
        out.push_str(&format!("tcp: tcp://{tcp}\n"));
        out.push_str(&format!("ws: ws://{ws}/ws\n"));
        out.push_str(&format!("http: http://{http}/metrics\n"));
        if !self.rules.is_empty() {
            out.push_str(&format!(
                "read rules: {} (each user reads their own todo lists and their team's)\n",
                self.rules
            ));
        }
        for (user, token) in &self.tokens {
            out.push_str(&format!("token ({user}): {token}\n"));
        }
        if let Some((_, token)) = self.tokens.first() {
            out.push_str("\nTry, in another terminal:\n");
            out.push_str(&format!(
                "  {} tail --url tcp://{tcp} --token {token}\n",
                self.exe
            ));
            if self.exe.contains("/target/debug/") || self.exe.contains("/target/release/") {
                out.push_str(&format!(
                    "or, from the source tree:\n  cargo run -- tail --url tcp://{tcp} --token {token}\n"
                ));
            }
        }
        if self.write_demo {
            out.push_str("demo: writing todos of alice and bob every second\n");
        } else {
            out.push_str(&format!(
                "then change a row: psql {} -c \"UPDATE todos SET done = NOT done\"\n",
                self.pg_url
            ));
        }
        out.push_str("Ctrl-C stops everything and removes the temp dir.\n");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// An address a client on this machine can connect to (0.0.0.0 → 127.0.0.1).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// This program's path, quoted for a shell when it needs to be.
fn program_path() -> String {
    let path = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pgsat".to_string());
    if path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

/// Every second, one change to the demo tables (insert for alice, insert for
/// bob, toggle, delete the oldest demo row) through an ordinary connection,
/// so `pgsat tail` shows live changes. Errors are logged and the connection
/// is re-opened on the next tick; returns when `shutdown` is cancelled.
async fn demo_writer(url: &str, shutdown: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match connect_writer(url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "demo writer: cannot connect; retrying");
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        match demo_step(c, step).await {
            Ok(what) => tracing::debug!(step, "demo writer: {what}"),
            Err(e) => {
                tracing::warn!(error = %e, "demo writer: write failed");
                client = None;
            }
        }
        step = step.wrapping_add(1);
    }
}

async fn connect_writer(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Bob has no list in the seed data; give him one to write into.
    client
        .batch_execute(
            "INSERT INTO todo_lists (owner_id, team_id, title) \
             SELECT 'bob', 'red', 'Bob''s demo list' \
             WHERE NOT EXISTS (SELECT 1 FROM todo_lists WHERE owner_id = 'bob')",
        )
        .await?;
    Ok(client)
}

/// One demo change; returns what it did.
async fn demo_step(c: &tokio_postgres::Client, step: u64) -> Result<String, tokio_postgres::Error> {
    match step % 4 {
        0 | 1 => {
            let user = if step % 4 == 0 { "alice" } else { "bob" };
            let title = format!("demo #{step}");
            let n = c
                .execute(
                    "INSERT INTO todos (list_id, owner_id, title) \
                     SELECT id, owner_id, $2 FROM todo_lists WHERE owner_id = $1 \
                     ORDER BY id LIMIT 1",
                    &[&user, &title],
                )
                .await?;
            Ok(format!("inserted {n} todo {title:?} for {user}"))
        }
        2 => {
            let n = c
                .execute(
                    "UPDATE todos SET done = NOT done, updated_at = now() \
                     WHERE id = (SELECT max(id) FROM todos WHERE owner_id = 'alice')",
                    &[],
                )
                .await?;
            Ok(format!("toggled {n} todo of alice"))
        }
        _ => {
            let n = c
                .execute(
                    "DELETE FROM todos WHERE id = \
                       (SELECT min(id) FROM todos WHERE title LIKE 'demo #%') \
                     AND (SELECT count(*) FROM todos WHERE title LIKE 'demo #%') > 4",
                    &[],
                )
                .await?;
            Ok(format!("deleted {n} old demo todo"))
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo rules parse, list the demo tables, and give alice and bob
    /// (same team) different views.
    #[test]
    fn demo_rules_parse() {
        let rules = crate::rules::Rules::from_file(
            crate::rules::RulesFile::parse("sql/rules.toml", DEMO_RULES).expect("demo rules"),
        );
        let names: Vec<String> = rules.file.tables.iter().map(|t| t.qualified()).collect();
        assert_eq!(names, ["public.todo_lists", "public.todos", "public.users"]);
        let view = |u: &str| {
            let claims = serde_json::json!({"user_id": u, "team_id": demo_team(u)});
            crate::rules::View::new(&rules, &claims)
        };
        assert_ne!(view("alice").id(), view("bob").id());
    }

    /// The embedded list is exactly the `.sql` files of `sql/`, in name order.
    #[test]
    fn embedded_sql_matches_the_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        names.sort();
        let embedded: Vec<&str> = SQL_FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(embedded, names, "update SQL_FILES in src/cli/dev.rs");
        for (name, text) in SQL_FILES {
            assert_eq!(
                *text,
                std::fs::read_to_string(dir.join(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn dev_config_forces_insecure_local_settings_and_keeps_user_overrides() {
        let env: HashMap<&str, &str> = [
            ("AUTH_MODE", "secure"),
            ("AUTH_JWT_ALG", "RS256"),
            ("AUTH_JWT_KEY", "not a pem"),
            ("AUTH_USERS_TABLE", "app.accounts"),
            ("DATABASE_URL", "postgres://elsewhere/db"),
            ("DATA_DIR", "/somewhere/else"),
            ("HTTP_LISTEN_ADDR", "127.0.0.1:0"),
            ("WINDOW_MAX_BYTES", "2MiB"),
        ]
        .into_iter()
        .collect();
        let dir = Path::new("/tmp/pgsat-dev-x/pgsat-data");
        let c = dev_config("postgres://postgres:pw@127.0.0.1:5999/postgres", dir, |n| {
            env.get(n).map(|v| v.to_string())
        })
        .unwrap();
        assert_eq!(c.auth.mode, crate::config::AuthMode::Insecure);
        assert_eq!(c.auth.alg, None);
        assert_eq!(c.auth.key, None);
        assert_eq!(c.auth.users_table, "users");
        assert_eq!(
            c.database_url,
            "postgres://postgres:pw@127.0.0.1:5999/postgres"
        );
        assert_eq!(c.data_dir, dir);
        assert_eq!(c.http_listen_addr, "127.0.0.1:0".parse().unwrap());
        assert!(c.listen_addr.ip().is_loopback());
        assert!(c.ws_listen_addr.ip().is_loopback());
        assert_eq!(c.window_max_bytes, 2 * 1024 * 1024);
        assert_eq!(c.server_id, "pgsat-dev");
    }

    #[test]
    fn a_bad_user_variable_is_still_reported() {
        let err = dev_config("postgres://p@127.0.0.1:1/postgres", Path::new("/x"), |n| {
            (n == "LISTEN_ADDR").then(|| "nonsense".to_string())
        })
        .unwrap_err();
        assert_eq!(err.var, "LISTEN_ADDR");
    }

    #[test]
    fn taken_default_port_falls_back_to_an_os_pick() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(loopback_addr(port), "127.0.0.1:0");
        drop(l);
        assert_eq!(loopback_addr(port), format!("127.0.0.1:{port}"));
    }

    #[test]
    fn unspecified_addresses_print_as_loopback() {
        assert_eq!(
            reachable("0.0.0.0:5133".parse().unwrap()),
            "127.0.0.1:5133".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:5133".parse().unwrap()),
            "[::1]:5133".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.1:1".parse().unwrap()),
            "10.0.0.1:1".parse::<SocketAddr>().unwrap()
        );
    }
}
