//! One module per command group. Each command checks its input, connects (see `target.rs`), does its work
//! through cache-runtime where the library offers it and through `sql.rs` where it does not, and hands one
//! report to `output.rs`.

mod completions;
mod delete;
mod doctor;
mod get;
mod grant;
mod keys;
mod maintain;
mod purge;
mod rekey;
mod schema;
mod stats;
mod tenant_stats;
mod watch;

use crate::cli::{Cli, Command};
use crate::error::CliError;
use crate::output::Output;

/// Runs the command the command line names.
///
/// # Errors
/// Whatever the command fails with; see [`CliError::exit_code`].
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let output = Output::detect(cli.json);
    let connection = &cli.connection;
    match &cli.command {
        Command::Stats(args) => match &args.tenant {
            Some(tenant) => tenant_stats::run(connection, tenant, output).await,
            None => stats::run(connection, output).await,
        },
        Command::Keys(args) => keys::run(connection, args, output).await,
        Command::Get(args) => get::run(connection, args, output).await,
        Command::Delete(args) => delete::run(connection, args, output).await,
        Command::Purge(args) => purge::run(connection, args, output).await,
        Command::Migrate => maintain::migrate(connection, output).await,
        Command::Sweep(args) => maintain::sweep(connection, args, output).await,
        Command::Grant(args) => grant::run(connection, args, output).await,
        Command::Doctor(args) => doctor::run(connection, args, output).await,
        Command::Watch(args) => watch::run(connection, args, output).await,
        Command::Rekey(args) => rekey::run(connection, args, output).await,
        Command::Completions(args) => completions::run(args),
    }
}
