//! The command line: subcommands, flags and their help text. Parsing only; `cmd::run_cli`
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
    /// Check a running setup end to end (registry, certificate, users, the gate's answers)
    /// and say what is wrong and how to fix it; exit 1 if anything failed.
    Doctor,
    /// Exit 0 if the gate answers on its listener (for a container HEALTHCHECK), 1 if not.
    Healthcheck {
        /// Ask /readyz (the registry behind answers too) instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// Create a CA (kept if it exists) and a server certificate signed by it, or with
    /// `client NAME` a client certificate; prints how to make clients trust it.
    Gencert {
        /// Where ca.pem, ca-key.pem, cert.pem and key.pem go.
        #[arg(long, default_value = "certs", value_name = "DIR", global = true)]
        dir: PathBuf,
        /// A DNS name for the server certificate (repeatable). Default: localhost and the
        /// host name.
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// An IP address for the server certificate (repeatable). Default: loopback and every
        /// address of this host.
        #[arg(long = "ip", value_name = "ADDR")]
        ip: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = crate::tls::selfsigned::SERVER_DAYS, global = true)]
        days: i64,
        /// RSA 2048 instead of ECDSA P-256.
        #[arg(long, global = true)]
        rsa: bool,
        /// Replace an existing key.
        #[arg(long, global = true)]
        force: bool,
        #[command(subcommand)]
        kind: Option<GencertKind>,
    },
    /// Manage an htpasswd file (bcrypt, readable by Apache's htpasswd and registry:2).
    Htpasswd {
        /// The htpasswd file; created (mode 0600) if missing.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        #[command(subcommand)]
        action: HtpasswdAction,
    },
    /// Manage access tokens: scoped, revocable credentials for CI jobs and pull secrets,
    /// used as the password with any user name.
    Token {
        /// The token file. Default: `[auth] access_tokens` of the configuration, which is
        /// access-tokens.toml next to the first htpasswd file.
        #[arg(short, long, value_name = "FILE", global = true)]
        file: Option<PathBuf>,
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print its secret, once: only a hash of it is stored.
    Create {
        /// A name for logs, metrics and `revoke` (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Repository patterns, in the syntax of [[rules]] (comma-separated or repeated).
        #[arg(long, value_name = "PATTERNS", value_delimiter = ',', required = true)]
        repositories: Vec<String>,
        /// Actions: pull, push, delete or * (comma-separated or repeated).
        #[arg(long, value_name = "ACTIONS", value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// Lifetime, such as 90d or 12h. Default: no expiry.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// The user the token acts for: it never does more than this user's rules allow,
        /// and stops working when the user is removed. Without it the token is a robot
        /// account whose scope is its whole permission.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// List the tokens: name, owner, scope, created, expires, last used, state.
    List,
    /// Revoke a token at once (the running gate reloads the file within seconds).
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum GencertKind {
    /// A client certificate (CN = NAME) for `[tls] client_ca`, written to
    /// DIR/clients/NAME/client.cert and client.key.
    Client { name: String },
}

#[derive(Debug, Subcommand)]
pub enum HtpasswdAction {
    /// Add a user or change their password. Without --password-stdin a strong password is
    /// generated and printed once.
    Add {
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// bcrypt cost (10 to 31).
        #[arg(long, default_value_t = crate::auth::BCRYPT_COST, value_parser = clap::value_parser!(u32).range(10..=31))]
        cost: u32,
    },
    /// Remove a user.
    Remove { user: String },
    /// Check a password read from standard input: exit 0 if it matches, 1 if not.
    Verify { user: String },
    /// List the users.
    List,
}
