//! The registry-gate binary: parse the command line, run, exit with the documented code.

use clap::Parser;

fn main() {
    let cli = registry_gate::cli::Cli::parse();
    std::process::exit(registry_gate::cmd::run_cli(cli));
}
