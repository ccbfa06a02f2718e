//! `registry-gate token …`: create, list and revoke access tokens. The file is found from
//! `--file` or the configuration's `[auth] access_tokens`, and edited through
//! `auth::access_tokens`, which writes it whole and checks it loads; the running gate
//! notices the change and reloads it within seconds. With `[cluster]` (and no `--file`),
//! the tokens are the fleet's, in its Redis (`auth::shared_tokens`), and every gate sees
//! the change within a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{report, EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::auth::access_tokens::{self, AccessTokens, Edit, Edited, NewToken, Unusable};
use crate::auth::shared_tokens;
use crate::cli::TokenAction;
use crate::cluster::Cluster;
use crate::config::{parse_duration, Config};

/// Where the tokens are edited: the file, or the fleet's Redis (seeded from the file).
enum Store {
    File(PathBuf),
    Fleet {
        cluster: Arc<Cluster>,
        file: PathBuf,
        runtime: tokio::runtime::Runtime,
    },
}

impl Store {
    fn name(&self) -> String {
        match self {
            Store::File(path) => path.display().to_string(),
            Store::Fleet { cluster, .. } => shared_tokens::label(cluster).display().to_string(),
        }
    }

    fn edit(&self, edit: &Edit) -> Result<Edited, String> {
        match self {
            Store::File(path) => access_tokens::edit_file(path, edit).map_err(|e| e.to_string()),
            Store::Fleet {
                cluster,
                file,
                runtime,
            } => runtime.block_on(async {
                seed(cluster, file).await?;
                shared_tokens::edit(cluster, edit)
                    .await
                    .map_err(|e| e.to_string())
            }),
        }
    }

    fn load(&self) -> Result<(AccessTokens, BTreeMap<String, SystemTime>), String> {
        match self {
            Store::File(path) => Ok((
                AccessTokens::load(path).map_err(joined)?,
                access_tokens::read_last_used(path),
            )),
            Store::Fleet {
                cluster,
                file,
                runtime,
            } => runtime.block_on(async {
                seed(cluster, file).await?;
                let tokens = match shared_tokens::load(cluster)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some((_, tokens)) => tokens,
                    None => AccessTokens::load(file).map_err(joined)?,
                };
                let used = shared_tokens::last_used(cluster)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((tokens, used))
            }),
        }
    }
}

/// Every problem of a token file, one a line.
fn joined(errors: Vec<access_tokens::AccessTokenError>) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fleet's first edit starts from the token file, if there is one, so that the tokens
/// made before `[cluster]` keep working.
async fn seed(cluster: &Cluster, file: &Path) -> Result<(), String> {
    if shared_tokens::version(cluster)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    if let Ok(text) = std::fs::read_to_string(file) {
        AccessTokens::parse(file, &text).map_err(joined)?;
        shared_tokens::restore(cluster, 1, &text)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(super) fn run(config_path: Option<&Path>, file: Option<PathBuf>, action: TokenAction) -> i32 {
    let (store, config) = match file {
        Some(file) => (Store::File(file), None),
        None => match Config::load(config_path) {
            Ok(config) => match (config.auth.access_tokens.clone(), &config.cluster) {
                (Some(path), None) => (Store::File(path), Some(config)),
                (Some(file), Some(cluster_config)) => {
                    let runtime = match super::runtime(false) {
                        Ok(rt) => rt,
                        Err(code) => return code,
                    };
                    let opened = {
                        let _inside = runtime.enter();
                        Cluster::open(cluster_config)
                    };
                    let cluster = match opened {
                        Ok(c) => c,
                        Err(e) => return report(EXIT_BAD_CONFIG, [e]),
                    };
                    (
                        Store::Fleet {
                            cluster,
                            file,
                            runtime,
                        },
                        Some(config),
                    )
                }
                (None, _) => {
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
            match store.edit(&Edit::Create(new)) {
                Ok(Edited::Created(secret)) => {
                    println!("{secret}");
                    eprintln!(
                        "registry-gate: token {name:?} saved in {}; the secret above is shown only once. Use it as the password with any user name, e.g. docker login REGISTRY -u {name} --password-stdin",
                        store.name()
                    );
                    EXIT_OK
                }
                Ok(Edited::Revoked(_)) => report(EXIT_FAILURE, ["no token was created"]),
                Err(e) => report(EXIT_FAILURE, [e]),
            }
        }
        TokenAction::Revoke { name } => match store.edit(&Edit::Revoke(name.clone())) {
            Ok(Edited::Revoked(true)) => {
                eprintln!("registry-gate: token {name:?} revoked in {}", store.name());
                EXIT_OK
            }
            Ok(_) => report(
                EXIT_FAILURE,
                [format!(
                    "{}: no usable token named {name:?} (see `registry-gate token list`)",
                    store.name()
                )],
            ),
            Err(e) => report(EXIT_FAILURE, [e]),
        },
        TokenAction::List => match store.load() {
            Ok((tokens, last_used)) => {
                print!("{}", listing(&tokens, &last_used, SystemTime::now()));
                EXIT_OK
            }
            Err(e) => report(EXIT_BAD_CONFIG, [e]),
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
fn listing(
    tokens: &AccessTokens,
    last_used: &BTreeMap<String, SystemTime>,
    now: SystemTime,
) -> String {
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
