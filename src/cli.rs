//! The command line: subcommands, flags and their help text. Parsing only; `lib::run_cli`
//! does the work.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "registry-gate",
    version,
    about = "TLS, authentication and access rules in front of a Docker registry, in one binary"
)]
pub struct Cli {
    /// Configuration file (TOML). Without one the gate runs on built-in defaults: listen on
    /// 0.0.0.0:443, registry at http://127.0.0.1:5000, a generated certificate in ./certs.
    #[arg(
        short,
        long,
        global = true,
        env = "REGISTRY_GATE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gate (the default when no subcommand is given).
    Run,
    /// Validate the configuration and certificates like `nginx -t`: exit 0 with a summary,
    /// or exit 2 listing every problem.
    Check,
}
