//! The subcommands, one file each: what `registry-gate <command>` does, from the parsed command
//! line to the exit code. This floor is the only one that prints to the terminal for the
//! operator and decides exit codes; everything below returns typed errors.
//!
//! - `run`: load, bind, serve until a signal (the default command).
//! - `check`: everything `run` would load, loaded, like `nginx -t`.
//! - `doctor`: end-to-end checks of a running setup, with the fix for each problem.
//! - `healthcheck`: a container HEALTHCHECK against the gate's own listener.
//! - `gencert`: the gate's CA, server and client certificates, and how to trust them.
//! - `htpasswd`: add, remove, verify and list users in an htpasswd file.
//! - `token`: create, list and revoke access tokens.

mod check;
pub mod doctor;
mod gencert;
pub mod healthcheck;
mod htpasswd;
mod run;
mod token;

use crate::cli::{Cli, Command};

/// Exit codes, documented in docs/operations.md.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_BAD_CONFIG: i32 = 2;

/// Runs the parsed command line and returns the process exit code.
pub fn run_cli(cli: Cli) -> i32 {
    let config = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run::run(config),
        Command::Check => check::check(config),
        Command::Doctor => doctor::run(config),
        Command::Healthcheck { ready } => healthcheck::run(config, ready),
        Command::Gencert {
            dir,
            dns,
            ip,
            days,
            rsa,
            force,
            kind,
        } => {
            let options = crate::tls::selfsigned::ServerOptions {
                dns,
                ips: ip,
                days,
                rsa,
            };
            match gencert::gencert(&dir, options, force, kind) {
                Ok(()) => EXIT_OK,
                Err(e) => report(EXIT_FAILURE, [e]),
            }
        }
        Command::Htpasswd { file, action } => match htpasswd::run(&file, action) {
            Ok(code) => code,
            Err(e) => report(EXIT_FAILURE, [e]),
        },
        Command::Token { file, action } => token::run(config, file, action),
    }
}

/// Prints each problem on its own line, prefixed with the program's name; returns `code`.
fn report<E: std::fmt::Display>(code: i32, errors: impl IntoIterator<Item = E>) -> i32 {
    for e in errors {
        eprintln!("registry-gate: {e}");
    }
    code
}

/// The async runtime a command needs, or the exit code after saying why there is none.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, i32> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        report(
            EXIT_FAILURE,
            [format!("cannot start the async runtime: {e}")],
        )
    })
}
