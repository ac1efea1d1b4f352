//! The `pgsat` command line (interface.md): `serve` (default), `dev`, `tail`,
//! `token`. Invariant: a configuration or usage error prints one line on
//! stderr and exits with code 2; a runtime failure exits with code 1.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::pg::lsn::Lsn;

pub mod dev;
pub mod dispatch;
pub mod token;

#[derive(Debug, Parser)]
#[command(
    name = "pgsat",
    version,
    about = "Streams committed PostgreSQL changes to authenticated clients"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, configured by the environment (the default).
    Serve,
    /// Start a throwaway local Postgres and the proxy against it (insecure mode).
    Dev(DevArgs),
    /// Print each transaction from a pgsat server as one JSON line.
    Tail(TailArgs),
    /// Mint a token for development and tests; prints only the token.
    Token(token::TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Keep inserting/updating demo rows so a tail shows live changes.
    #[arg(long)]
    pub write_demo: bool,
}

pub use crate::client::tail::TailArgs;

/// `X/Y` (Postgres text form) or a plain decimal `u64`.
pub fn parse_lsn(s: &str) -> Result<Lsn, String> {
    if s.contains('/') {
        s.parse()
    } else {
        s.parse::<u64>()
            .map(Lsn)
            .map_err(|_| format!("{s:?} is not an LSN (X/Y or a decimal number)"))
    }
}

/// The binary's whole `main`: parse, dispatch, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = match Config::from_env() {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            if let Err(e) = crate::telemetry::init_tracing(&config.log_level, config.log_format) {
                return usage_error(&e);
            }
            let workers = config.worker_threads;
            run_async(dispatch::serve(config), Some(workers))
        }
        Command::Dev(args) => {
            init_tracing_from_env();
            run_async(dispatch::dev(args), None)
        }
        Command::Tail(args) => {
            init_tracing_from_env();
            run_async(dispatch::tail(args), Some(1))
        }
        Command::Token(args) => match token::mint(&args) {
            Ok(t) => {
                if !args.insecure && args.key.is_none() {
                    eprintln!(
                        "pgsat: no --key given: an unsigned token (accepted only with AUTH_MODE=insecure)"
                    );
                }
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e),
        },
    }
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("pgsat: {e}");
    ExitCode::from(2)
}

/// Logging for the helper commands: `LOG_LEVEL`/`LOG_FORMAT` when valid,
/// else `info`/text (these commands do not need the full configuration).
fn init_tracing_from_env() {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".to_string());
    let format = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => crate::config::LogFormat::Json,
        _ => crate::config::LogFormat::Text,
    };
    if crate::telemetry::init_tracing(&level, format).is_err() {
        let _ = crate::telemetry::init_tracing("info", format);
    }
}

/// Runs `fut` on a multi-thread runtime of `workers` threads (`None`:
/// `WORKER_THREADS` if valid, else its default — `pgsat dev` reads the rest
/// of its configuration itself).
fn run_async(
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
    workers: Option<usize>,
) -> ExitCode {
    let workers = workers.unwrap_or_else(|| {
        std::env::var("WORKER_THREADS")
            .ok()
            .and_then(|v| crate::config::parse_worker_threads(v.trim()).ok())
            .unwrap_or_else(crate::config::default_worker_threads)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgsat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<crate::config::BadSetting>().is_some()
                || crate::server::is_config_error(&e) =>
        {
            usage_error(&e)
        }
        Err(e) => {
            eprintln!("pgsat: {}", crate::error_text::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let c = Cli::try_parse_from(["pgsat"]).unwrap();
        assert!(c.command.is_none());
        let c = Cli::try_parse_from(["pgsat", "serve"]).unwrap();
        assert!(matches!(c.command, Some(Command::Serve)));
        let c = Cli::try_parse_from(["pgsat", "dev", "--write-demo"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Dev(DevArgs { write_demo: true }))
        ));
        let c = Cli::try_parse_from([
            "pgsat",
            "tail",
            "--url",
            "tcp://127.0.0.1:5133",
            "--token",
            "t",
            "--from-lsn",
            "1/A",
        ])
        .unwrap();
        match c.command {
            Some(Command::Tail(a)) => {
                assert_eq!(a.url, "tcp://127.0.0.1:5133");
                assert_eq!(a.from_lsn, 0x1_0000_000A);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["pgsat", "tail", "--url", "x"]).is_err());
        assert!(Cli::try_parse_from([
            "pgsat",
            "tail",
            "--url",
            "x",
            "--token",
            "t",
            "--from-lsn",
            "later"
        ])
        .is_err());
    }

    #[test]
    fn lsn_forms() {
        assert_eq!(parse_lsn("0/16B3748"), Ok(Lsn(0x16B3748)));
        assert_eq!(parse_lsn("42"), Ok(Lsn(42)));
        assert!(parse_lsn("-1").is_err());
        assert!(parse_lsn("1/xyz").is_err());
    }
}
