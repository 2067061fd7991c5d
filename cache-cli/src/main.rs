//! `pg-cached`: operate a pg_cached cache from the command line. See README.md for every command, its JSON
//! output and its exit codes.
//!
//! `main` only parses, runs, and turns an error into one `error: ...` line on stderr and an exit code.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cli;
mod commands;
mod error;
mod input;
mod output;
mod sql;
mod target;
mod units;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2 (0 for --help and --version).
    let cli = cli::Cli::parse();
    // One thread is plenty for a handful of statements, and the listener tasks of `watch`.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(source) => return fail(&error::CliError::Io { context: "starting the async runtime", source }),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `pg-cached keys | head`: the reader has what it wanted.
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Prints `error` as one line on stderr and returns its exit code.
fn fail(error: &error::CliError) -> ExitCode {
    // Driver messages may span lines; the contract is one line per error.
    let message = error.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {message}");
    ExitCode::from(error.exit_code())
}
