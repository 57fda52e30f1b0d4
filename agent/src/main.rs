//! `peerdelta`: the command-line interface of peerdelta.
//!
//! Exit codes (also in `--help`): 0 done; 1 the operation failed (a file
//! missing or unreadable, verification failed, the DP unreachable); 2 bad
//! usage or configuration. A closed stdout (`peerdelta ... | head`) exits 0.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peerdelta_agent::cmd;
use peerdelta_store::usage;

const EXIT_CODES: &str = "Exit codes: 0 done; 1 the operation failed (missing or unreadable file, \
verification failed, DP unreachable); 2 bad usage or configuration.";

/// peerdelta: a peer-to-peer branch cache with binary differential replication.
#[derive(Parser, Debug)]
#[command(name = "peerdelta", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the demo: a differential update on generated data, with the WAN bytes saved.
    Demo(cmd::demo::DemoArgs),
    /// Update a package version from the DP into the cache (and --out).
    Get(cmd::get::GetArgs),
    /// The branch agent daemon.
    #[command(subcommand, after_help = EXIT_CODES)]
    Agent(cmd::agent::AgentCommand),
    /// Show the local agent daemon: peers, elections, transfers, cache.
    Status(cmd::agent::StatusArgs),
    /// The local content cache: list, verify, gc.
    #[command(subcommand, after_help = EXIT_CODES)]
    Cache(cmd::cache::CacheCommand),
    /// Distribution point: publish packages, serve them, read status reports.
    #[command(subcommand, after_help = EXIT_CODES)]
    Dp(cmd::dp::DpCommand),
    /// MS-RDC tools: signatures, needs lists, rebuilding, benchmark.
    #[command(subcommand, after_help = EXIT_CODES)]
    Rdc(cmd::rdc::RdcCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and errors to stderr (exit 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Dp(c) => cmd::dp::run(c),
        Command::Get(a) => cmd::get::run(a),
        Command::Agent(c) => cmd::agent::run(c),
        Command::Status(a) => cmd::agent::status(a),
        Command::Cache(c) => cmd::cache::run(c),
        Command::Rdc(c) => cmd::rdc::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Prints the error chain once and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(std::io::stderr(), "peerdelta: error: {err:#}");
    if usage::is_usage(err) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
