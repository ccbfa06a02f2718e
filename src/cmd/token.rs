//! `registry-gate token …`: create, list and revoke access tokens. The file is found from
//! `--file` or the configuration's `[auth] access_tokens`, and edited through
//! `auth::access_tokens`, which writes it whole and checks it loads; the running gate
//! notices the change and reloads it within seconds.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{report, EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::auth::access_tokens::{self, AccessTokens, NewToken, Unusable};
use crate::cli::TokenAction;
use crate::config::{parse_duration, Config};

pub(super) fn run(config_path: Option<&Path>, file: Option<PathBuf>, action: TokenAction) -> i32 {
    let (path, config) = match file {
        Some(file) => (file, None),
        None => match Config::load(config_path) {
            Ok(config) => match config.auth.access_tokens.clone() {
                Some(path) => (path, Some(config)),
                None => {
                    return report(
                        EXIT_BAD_CONFIG,
                        ["[auth] mode = \"none\": nobody logs in, so there is no token file; set mode = \"basic\" or \"token\", or name one with --file"],
                    )
                }
            },
            Err(errors) => return report(EXIT_BAD_CONFIG, errors),
        },
    };
    match action {
        TokenAction::Create {
            name,
            repositories,
            actions,
            expires,
            user,
        } => {
            let expires_in = match expires.as_deref().map(parse_duration).transpose() {
                Ok(d) => d,
                Err(e) => return report(EXIT_FAILURE, [format!("--expires: {e}")]),
            };
            if let (Some(user), Some(config)) = (&user, &config) {
                if let Err(message) = known_user(config, user) {
                    return report(EXIT_FAILURE, [message]);
                }
            }
            let new = NewToken {
                name: name.clone(),
                repositories,
                actions,
                owner: user,
                expires_in,
            };
            match access_tokens::create(&path, new) {
                Ok(secret) => {
                    println!("{secret}");
                    eprintln!(
                        "registry-gate: token {name:?} saved in {}; the secret above is shown only once. Use it as the password with any user name, e.g. docker login REGISTRY -u {name} --password-stdin",
                        path.display()
                    );
                    EXIT_OK
                }
                Err(e) => report(EXIT_FAILURE, [e]),
            }
        }
        TokenAction::Revoke { name } => match access_tokens::revoke(&path, &name) {
            Ok(true) => {
                eprintln!(
                    "registry-gate: token {name:?} revoked in {}",
                    path.display()
                );
                EXIT_OK
            }
            Ok(false) => report(
                EXIT_FAILURE,
                [format!(
                    "{}: no usable token named {name:?} (see `registry-gate token list`)",
                    path.display()
                )],
            ),
            Err(e) => report(EXIT_FAILURE, [e]),
        },
        TokenAction::List => match AccessTokens::load(&path) {
            Ok(tokens) => {
                print!("{}", listing(&tokens, &path, SystemTime::now()));
                EXIT_OK
            }
            Err(errors) => report(EXIT_BAD_CONFIG, errors),
        },
    }
}

/// An owner must be a user of the configured htpasswd files, or the token could never be
/// used: the gate refuses tokens whose owner is gone.
fn known_user(config: &Config, user: &str) -> Result<(), String> {
    let users =
        crate::state::load_users(config, std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
            .map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
    match users {
        Some(users) if users.has_user(user) => Ok(()),
        _ => Err(format!(
            "--user: no user {user:?} in {}; add them first (`registry-gate htpasswd add {user}`)",
            config
                .auth
                .htpasswd
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One line per token, columns aligned, as `token list` prints it.
fn listing(tokens: &AccessTokens, path: &Path, now: SystemTime) -> String {
    let last_used = access_tokens::read_last_used(path);
    let time = |t: Option<SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut rows = vec![[
        "NAME".to_string(),
        "OWNER".into(),
        "SCOPE".into(),
        "CREATED".into(),
        "EXPIRES".into(),
        "LAST USED".into(),
        "STATE".into(),
    ]];
    for token in tokens.tokens() {
        let state = match token.unusable(now) {
            Some(Unusable::Revoked(_)) => "revoked",
            Some(Unusable::Expired(_)) => "expired",
            None if tokens.expiring(now).any(|t| t.name == token.name) => "expires soon",
            None => "active",
        };
        rows.push([
            token.name.clone(),
            token.owner.clone().unwrap_or_else(|| "-".into()),
            token.scope_text(),
            time(Some(token.created)),
            time(token.expires),
            time(last_used.get(&token.name).copied()),
            state.into(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            format!("{}\n", line.join("  ").trim_end())
        })
        .collect()
}
