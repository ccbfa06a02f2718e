//! `registry-gate htpasswd …`: Apache's htpasswd tool with safer defaults: bcrypt at cost 10
//! or more, a generated password unless one comes on standard input (never as an argument,
//! where `ps` shows it), and the file edited through `auth::manage`.

use std::io::BufRead;
use std::path::Path;

use crate::auth::htpasswd::{bcrypt_line, HtpasswdError};
use crate::auth::{self, manage};
use crate::cli::HtpasswdAction;

/// Runs one action; returns the exit code (`verify` answers 1 for a wrong password).
pub(super) fn run(file: &Path, action: HtpasswdAction) -> Result<i32, HtpasswdError> {
    match action {
        HtpasswdAction::Add {
            user,
            password_stdin,
            cost,
        } => {
            let (password, generated) = if password_stdin {
                (read_password()?, false)
            } else {
                (auth::random_password()?, true)
            };
            let line = bcrypt_line(&user, &password, cost)?;
            manage::save_user(file, &user, line)?;
            if generated {
                println!("{password}");
                eprintln!("registry-gate: user {user:?} saved in {}; the password above is shown only once", file.display());
            } else {
                eprintln!("registry-gate: user {user:?} saved in {}", file.display());
            }
            Ok(0)
        }
        HtpasswdAction::Remove { user } => {
            if !manage::remove_user(file, &user)? {
                eprintln!("registry-gate: {}: no user {user:?}", file.display());
                return Ok(1);
            }
            eprintln!(
                "registry-gate: user {user:?} removed from {}",
                file.display()
            );
            Ok(0)
        }
        HtpasswdAction::Verify { user } => {
            let parsed = manage::load(file)?;
            let password = read_password()?;
            let hash = parsed.get(&user);
            let ok = hash.is_some_and(|h| h.verify(password.as_bytes()));
            eprintln!(
                "registry-gate: password for {user:?} {}",
                if ok { "correct" } else { "not correct" }
            );
            // A hash does not tell how long its password was: only here, with the password
            // in hand, can the gate say that part of it never counted.
            let read = hash.and_then(|h| h.reads_at_most());
            if let Some(limit) = read.filter(|limit| ok && password.len() > *limit) {
                eprintln!(
                    "registry-gate: {}:{}: user {user:?}: bcrypt ignores what follows byte \
                     {limit} of a password: this one is {} bytes, and any password that starts \
                     with the same {limit} bytes logs in too (with Apache and nginx as well); \
                     set one of at most {limit} bytes with `registry-gate htpasswd -f {} add {user}`",
                    file.display(),
                    parsed.line_of(&user).unwrap_or(0),
                    password.len(),
                    file.display(),
                );
            }
            Ok(if ok { 0 } else { 1 })
        }
        HtpasswdAction::List => {
            for user in manage::load(file)?.users() {
                println!("{user}");
            }
            Ok(0)
        }
    }
}

fn read_password() -> Result<String, HtpasswdError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| HtpasswdError::Io {
            file: "(standard input)".into(),
            source,
        })?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(HtpasswdError::Hash(
            "empty password on standard input".into(),
        ));
    }
    Ok(password)
}
