//! The proxy process: start-up checks, the replication driver, the TCP and
//! WebSocket listeners, the HTTP endpoint, and graceful shutdown.
//!
//! Start-up order: check the server (wal_level, rights) → publication → slot
//! → open the log (identity checked against the server) → authenticator
//! (users table checked) → replication → listeners. Any failure before the
//! listeners is a clear error and exit code 2 (config) or 1 (runtime).
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, every session gets
//! SHUTTING_DOWN after its last whole transaction, the slot position is
//! flushed, the log is synced, exit 0 — within 10 s.

pub mod direct;
pub mod listener;
pub mod published;
pub mod registry;
pub mod router;
pub mod session;
pub mod snapshot_phase;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::Readiness;
use crate::ingest::UsersTable;
use crate::log::{Log, LogIdentity, LogOptions};
use crate::metrics::Metrics;
use crate::pg::conn::{ConnParams, ReplicationConn};
use crate::pg::slot;
use crate::pg::sql::SqlConfig;
use crate::replicator::{connect_sql, Replicator};
use crate::rules::{FilterCache, Rules, RulesError};
use published::Published;
use registry::Registry;

/// What every session shares.
pub struct ServerCtx {
    pub config: Arc<Config>,
    pub log: Log,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub shutdown: CancellationToken,
    /// Read rules (`RULES_FILE`); `None`: every user reads every published row.
    pub rules: Option<Arc<Rules>>,
    /// Filtered transactions shared by sessions with the same view.
    pub filter_cache: Arc<FilterCache>,
    /// Filtered sessions at the live end, woken only for what they read.
    pub router: Arc<router::Router>,
    /// Sessions waiting at the log's end, written to by the replication task.
    pub direct: Arc<direct::DirectLane>,
    /// Publication membership, for `StartReplicationReq.tables`.
    pub published: Published,
    /// Ordinary connections to the database (snapshots), from DATABASE_URL.
    pub sql: SqlConfig,
    /// TLS on both listeners (`TLS_CERT_FILE`, `TLS_KEY_FILE`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The addresses a running server listens on (useful when configured with
/// port 0, as tests do).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
}

/// Whether opening the log failed because of the `DATA_DIR` value itself
/// (not a directory, not writable, another database's log) rather than at
/// run time (corruption, a lock held by another process).
fn data_dir_is_unusable(e: &crate::log::LogError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        crate::log::LogError::ForeignLog { .. } => true,
        crate::log::LogError::Io { source, .. } => matches!(
            source.kind(),
            NotADirectory | PermissionDenied | ReadOnlyFilesystem | AlreadyExists
        ),
        _ => false,
    }
}

/// Runs the proxy until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        signals.cancel();
    });
    run_until(config, shutdown, |addrs| {
        tracing::info!(tcp = %addrs.tcp, ws = %addrs.ws, http = %addrs.http, "pgsat listening");
    })
    .await
}

/// Runs the proxy until `shutdown` is cancelled; `on_ready` gets the bound
/// addresses once the listeners accept.
pub async fn run_until(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new()?);
    let readiness = Arc::new(Readiness::new());
    if config.auth.mode == crate::config::AuthMode::Insecure {
        tracing::warn!("AUTH_MODE=insecure: token signatures are NOT verified; any client can claim any user_id. Development only: never expose this server to untrusted clients.");
        metrics.auth_insecure_mode.set(1);
    }
    // Before anything is created in the database: a bad file is a
    // configuration error.
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.cert_file, &files.key_file)?),
        None => None,
    };

    // The HTTP endpoint first, so /healthz answers and /readyz says 503
    // during start-up.
    let http_listener = TcpListener::bind(config.http_listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("HTTP_LISTEN_ADDR {}: {e}", config.http_listen_addr))?;
    let http_addr = http_listener.local_addr()?;
    // The HTTP endpoint stops last (/healthz answers while sessions drain;
    // /readyz says 503 from the first moment of shutdown); the guard also
    // stops it when start-up fails.
    let http_stop = CancellationToken::new();
    let http_guard = http_stop.clone().drop_guard();
    let http_task = tokio::spawn(crate::http::serve(
        http_listener,
        metrics.clone(),
        readiness.clone(),
        http_stop.cancelled_owned(),
    ));

    let params = ConnParams::from_url(&config.database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
    let client = connect_sql(&params).await?;
    slot::check_server(&client).await?;
    slot::ensure_publication(&client, &config.publication).await?;
    let rules = load_rules(&config, &client).await?;
    metrics.read_rules_enabled.set(i64::from(rules.is_some()));
    metrics
        .runtime_worker_threads
        .set(tokio::runtime::Handle::current().metrics().num_workers() as i64);
    // Settings that can be wrong are checked before the slot exists (a slot
    // left behind by a failed start would keep WAL).
    let sql = SqlConfig::new(&params)?;
    let auth = Arc::new(
        Authenticator::new(&config.auth, sql.clone())
            .await
            .map_err(|e| match e {
                // The database failed: a runtime error.
                crate::auth::AuthInitError::Database(_) => anyhow::Error::from(e),
                // A configured value is wrong (table, column, key).
                other => crate::config::BadSetting(other.to_string()).into(),
            })?,
    );
    // Not fatal: a deployment may keep the users table out of the stream on
    // purpose (it is then never sent to clients either).
    if let Err(msg) = crate::auth::users::check_replicated(
        &client,
        &config.auth.users_table,
        &config.auth.users_id_column,
        &config.publication,
    )
    .await?
    {
        tracing::warn!("{msg}");
    }
    let mut conn = ReplicationConn::connect(&params).await?;
    let ident = conn.identify_system().await?;
    let slot_info = slot::ensure_slot(&client, &config.replication_slot).await?;
    drop(conn);

    let identity = LogIdentity {
        system_id: ident.system_id.clone(),
        timeline: ident.timeline,
        database: ident.dbname.clone().unwrap_or_default(),
        slot: config.replication_slot.clone(),
    };
    let log_dir = config.data_dir.join(&config.replication_slot);
    let opts = LogOptions {
        window_max_bytes: config.window_max_bytes,
        window_max_age: config.window_max_age,
        cache_max_bytes: config.cache_max_bytes,
        segment_max_bytes: None,
    };
    // Recovery reads every segment: off the runtime's threads, so /healthz
    // keeps answering meanwhile (with one worker thread nothing else would
    // run until it is done).
    let opened = {
        let dir = log_dir.clone();
        tokio::task::spawn_blocking(move || Log::open(&dir, &identity, opts))
            .await
            .map_err(|e| anyhow::anyhow!("opening the log: {e}"))?
    };
    let log = opened.map_err(|e| {
        let msg = format!("DATA_DIR {}: {e}", log_dir.display());
        if data_dir_is_unusable(&e) {
            anyhow::Error::from(crate::config::BadSetting(msg))
        } else {
            anyhow::anyhow!(msg)
        }
    })?;
    if log.is_new() {
        log.set_start(slot_info.confirmed_flush_lsn)?;
    }

    let registry = Arc::new(Registry::default());
    let direct = direct::DirectLane::new(metrics.clone());

    let replicator = Replicator {
        params: params.clone(),
        slot: config.replication_slot.clone(),
        publication: config.publication.clone(),
        log: log.clone(),
        metrics: metrics.clone(),
        registry: registry.clone(),
        direct: direct.clone(),
        users_table: Some(UsersTable::from_setting(
            &config.auth.users_table,
            &config.auth.users_id_column,
        )),
        system_id: ident.system_id.clone(),
        on_connected: {
            let readiness = readiness.clone();
            Arc::new(move |up| readiness.set_replication_connected(up))
        },
    };
    let repl_shutdown = CancellationToken::new();
    let repl_task = tokio::spawn(replicator.run(repl_shutdown.clone()));

    let stats_task = tokio::spawn(stats_loop(
        log.clone(),
        metrics.clone(),
        readiness.clone(),
        client,
        config.replication_slot.clone(),
        shutdown.clone(),
    ));

    let filter_cache = Arc::new(FilterCache::default());
    let ctx = Arc::new(ServerCtx {
        config: config.clone(),
        log: log.clone(),
        auth,
        metrics: metrics.clone(),
        registry,
        shutdown: shutdown.clone(),
        rules,
        filter_cache: filter_cache.clone(),
        router: router::Router::new(log.clone(), filter_cache, metrics.clone()),
        direct,
        published: Published::new(params.clone(), config.publication.clone()),
        sql,
        tls,
    });
    let tcp = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("LISTEN_ADDR {}: {e}", config.listen_addr))?;
    let ws = TcpListener::bind(config.ws_listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("WS_LISTEN_ADDR {}: {e}", config.ws_listen_addr))?;
    let addrs = BoundAddrs {
        tcp: tcp.local_addr()?,
        ws: ws.local_addr()?,
        http: http_addr,
    };
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let tasks = TaskTracker::new();
    let tcp_loop = tokio::spawn(listener::accept_loop(
        ctx.clone(),
        tcp,
        listener::Kind::Tcp,
        limit.clone(),
        tasks.clone(),
    ));
    let ws_loop = tokio::spawn(listener::accept_loop(
        ctx.clone(),
        ws,
        listener::Kind::Ws,
        limit,
        tasks.clone(),
    ));
    readiness.set_listeners_accepting(true);
    on_ready(addrs);

    // Run until asked to stop, or until replication fails for good.
    let mut repl_task = repl_task;
    let repl_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut repl_task => Some(r),
    };
    readiness.set_listeners_accepting(false);
    shutdown.cancel();
    let _ = tcp_loop.await;
    let _ = ws_loop.await;
    tasks.close();
    // Sessions send SHUTTING_DOWN and flush; give them a bounded time.
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    repl_shutdown.cancel();
    let repl_result = match repl_result {
        Some(r) => r,
        None => match tokio::time::timeout(Duration::from_secs(3), repl_task).await {
            Ok(r) => r,
            Err(_) => Ok(Ok(())),
        },
    };
    stats_task.abort();
    log.close();
    drop(http_guard);
    let _ = http_task.await;
    match repl_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("replication task panicked: {e}")),
    }
}

/// Loads and checks `RULES_FILE` (a [`RulesError`] is a configuration
/// error: exit code 2), or warns that every user reads every row.
async fn load_rules(
    config: &Config,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Option<Arc<Rules>>> {
    let Some(path) = &config.rules_file else {
        tracing::warn!("RULES_FILE is not set: every authenticated user reads every published row (protocol version 1 behaviour)");
        return Ok(None);
    };
    let rules = Rules::load(path)?;
    match crate::rules::check::check(&rules, client, &config.publication).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(anyhow::anyhow!("RULES_FILE: catalog check failed: {e}")),
    }
    tracing::info!(
        file = %path.display(),
        tables = rules.file.tables.len(),
        version = %rules.version,
        "read rules loaded"
    );
    Ok(Some(Arc::new(rules)))
}

/// Whether a start-up error is a configuration error (exit code 2).
pub fn is_config_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<RulesError>().is_some()
}

/// Keeps the gauges that are not on the hot path current.
async fn stats_loop(
    log: Log,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    client: tokio_postgres::Client,
    slot_name: String,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stats = log.stats();
        Metrics::set_u64(&metrics.window_bytes, stats.window_bytes);
        Metrics::set_u64(&metrics.window_transactions, stats.window_txns);
        Metrics::set_u64(
            &metrics.window_oldest_lsn,
            stats.oldest_lsn.unwrap_or(stats.start_lsn),
        );
        Metrics::set_u64(&metrics.cache_bytes, stats.cache_bytes);
        Metrics::set_u64(&metrics.log_disk_bytes, stats.disk_bytes);
        Metrics::set_u64(&metrics.log_durable_lsn, stats.durable_lsn);
        readiness.set_log_healthy(stats.healthy);
        if let Ok(Some(s)) = slot::slot_stats(&client, &slot_name).await {
            Metrics::set_u64(
                &metrics.replication_slot_retained_wal_bytes,
                s.retained_wal_bytes,
            );
            Metrics::set_u64(
                &metrics.replication_lag_bytes,
                s.current_wal_lsn.saturating_sub(stats.durable_lsn),
            );
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
