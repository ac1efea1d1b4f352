//! Where the CLI hands over to the long-running commands.

use crate::cli::{DevArgs, TailArgs};
use crate::config::Config;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::server::run(config).await
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    crate::cli::dev::run(args).await
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    crate::client::tail::run(args).await
}
