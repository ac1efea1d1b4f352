//! Ordinary SQL connections (tokio-postgres) to the server a [`ConnParams`]
//! names, with its TLS settings (see [`super::tls`]): the users lookup, the
//! catalog queries and the snapshots use these.

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conn::{ConnParams, Host, PgError};

/// How to open an ordinary connection: tokio-postgres' config and, when TLS
/// may be used, the connector.
#[derive(Clone)]
pub struct SqlConfig {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// `host:port` or the socket path, for messages.
    target: String,
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Plain connections with this config (tests, tools).
impl From<tokio_postgres::Config> for SqlConfig {
    fn from(mut config: tokio_postgres::Config) -> SqlConfig {
        config.ssl_mode(PgSslMode::Disable);
        let target = format!("{:?}:{:?}", config.get_hosts(), config.get_ports());
        SqlConfig {
            config,
            tls: None,
            target,
        }
    }
}

impl SqlConfig {
    /// Fails only when the TLS settings cannot be loaded (a bad
    /// `sslrootcert`).
    pub fn new(params: &ConnParams) -> Result<SqlConfig, PgError> {
        let mut config = params.to_tokio_postgres();
        // libpq uses no TLS on unix sockets whatever sslmode says.
        let tls = match (&params.host, params.tls.client_config()?) {
            (Host::Tcp(_), Some(c)) => Some(MakeRustlsConnect::new((*c).clone())),
            _ => None,
        };
        config.ssl_mode(match (&tls, params.tls.mode.requires_tls()) {
            (None, _) => PgSslMode::Disable,
            (Some(_), false) => PgSslMode::Prefer,
            (Some(_), true) => PgSslMode::Require,
        });
        Ok(SqlConfig {
            config,
            tls,
            target: params.target(),
        })
    }

    pub fn application_name(&mut self, name: &str) -> &mut Self {
        self.config.application_name(name);
        self
    }

    /// Connects; the connection runs in a spawned task (returned) that logs
    /// at debug level (warn with `warn_on_error`) when it ends with an error.
    ///
    /// Boxed: the connecting state (a TLS handshake's included) is several
    /// KiB, and inline it would be part of every future that may await it
    /// for that future's whole life — each client session's, through the
    /// users lookup and the publication check (idle sessions measured
    /// 10.4 KiB each with it inline, 6.5 boxed).
    pub fn connect(
        &self,
        what: &'static str,
        warn_on_error: bool,
    ) -> futures::future::BoxFuture<'_, Result<(Client, JoinHandle<()>), PgError>> {
        Box::pin(self.connect_inline(what, warn_on_error))
    }

    async fn connect_inline(
        &self,
        what: &'static str,
        warn_on_error: bool,
    ) -> Result<(Client, JoinHandle<()>), PgError> {
        let log = move |e: tokio_postgres::Error| {
            if warn_on_error {
                tracing::warn!(error = %e, "{what} connection ended");
            } else {
                tracing::debug!(error = %e, "{what} connection ended");
            }
        };
        let failed = |e| self.connect_error(e);
        // The connection's type differs with the TLS connector; boxed, one
        // task spawns either.
        let (client, conn) = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(failed)?;
                (client, conn.boxed())
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(failed)?;
                (client, conn.boxed())
            }
        };
        Ok((
            client,
            tokio::spawn(async move { conn.await.unwrap_or_else(log) }),
        ))
    }

    /// A failed connect: the server's error, a TLS failure, or (transient)
    /// "cannot connect to Postgres at <target>: <every cause>".
    fn connect_error(&self, e: tokio_postgres::Error) -> PgError {
        match PgError::from(e) {
            PgError::Io(io) => PgError::Connect {
                target: self.target.clone(),
                source: io,
            },
            other => other,
        }
    }
}
