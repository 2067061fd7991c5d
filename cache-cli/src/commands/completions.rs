//! `pg-cached completions SHELL`: a completion script, generated from the same clap tree that parses the
//! command line, so it cannot fall out of date.

use crate::cli::{Cli, CompletionsArgs};
use crate::error::CliError;
use clap::CommandFactory;
use std::io::Write;

/// Prints the script on stdout. Needs no database.
///
/// # Errors
/// [`CliError::Io`] when stdout cannot be written.
pub fn run(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "pg-cached", &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&script).and_then(|()| stdout.flush()).map_err(CliError::io("writing the completion script"))
}
