//! Where the CLI hands over to the long-running commands.
//!
//! LEAD: PLACEHOLDERS — replace each body with the real call once the modules
//! are merged:
//!   serve → `crate::server::run(config).await`
//!   dev   → `crate::cli::dev::run(args).await`
//!   tail  → `crate::client::tail::run(args).await`
//! Until then each returns a "not yet wired" error (exit code 1).

use crate::cli::{DevArgs, TailArgs};
use crate::config::Config;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let _ = config;
    anyhow::bail!("`pgsat serve` is not yet wired (placeholder in src/cli/dispatch.rs)")
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`pgsat dev` is not yet wired (placeholder in src/cli/dispatch.rs)")
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`pgsat tail` is not yet wired (placeholder in src/cli/dispatch.rs)")
}
