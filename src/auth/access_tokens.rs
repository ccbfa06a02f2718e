//! Access tokens: long-lived, scoped credentials for machines (CI jobs, Kubernetes pull
//! secrets) and personal tokens, used as the password of a Basic login or a token-mode login.
//!
//! Owns the token file (its format, loading, and the edits `registry-gate token` makes), the
//! check of a presented secret, and a token's scope and lifetime. It does not decide what an
//! owner may do (that is `rules`), and it never logs or stores a secret: the file holds a
//! keyed hash of each one.
//!
//! Why a keyed hash and not bcrypt: a token's secret is 256 random bits, so it cannot be
//! guessed from its hash and needs no slow hashing. Verifying is one HMAC and a map lookup,
//! microseconds, so a CI fleet logging in costs nothing. The key (random, in the file) only
//! makes the hashes useless outside this installation.
//!
//! The file (TOML, mode 0600, replaced atomically, reloaded live like htpasswd files):
//!
//! ```toml
//! key = "<base64 of 32 random bytes>"
//! [[token]]
//! name = "ci-deploy"
//! hash = "<hex HMAC-SHA256 of the secret>"
//! repositories = ["team/*"]
//! actions = ["pull", "push"]
//! owner = "alice"                       # optional: never more than alice's rules allow
//! created = "2026-12-06T20:00:00Z"
//! expires = "2027-03-06T20:00:00Z"      # optional
//! revoked = "2026-12-24T09:00:00Z"      # kept, so a refusal can name the token
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::TOKEN_ACCOUNT_PREFIX;
use crate::registry_path::Action;
use crate::rules::{RulesError, Scope};

/// Every secret starts with this, so secret scanners and people recognise one.
pub const SECRET_PREFIX: &str = "rgt_";
/// How long before expiry the gate and `doctor` start warning: expiring robot tokens that
/// silently break CI are the top complaint about Harbor's robot accounts.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    #[error("{}: cannot read the access token file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: token {name:?}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Scope { path: PathBuf, source: RulesError },
    #[error("{}: cannot write the access token file: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the random source: {0}")]
    Random(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    key: String,
    #[serde(default, rename = "token", skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    hash: String,
    repositories: Vec<String>,
    actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<String>,
}

/// One token as the gate uses it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub name: String,
    /// `token:NAME`: who the token is when it answers for itself (a robot's principal, and
    /// every token's name before `[[protect]]`).
    pub account: String,
    /// The user whose rules also bind this token; `None` for a robot account, whose scope
    /// is its whole permission.
    pub owner: Option<String>,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
    scope: Scope,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    pub revoked: Option<SystemTime>,
}

impl AccessToken {
    /// What its scope allows; the owner's rules are the caller's to add.
    pub fn allows(&self, repository: &str, action: Action) -> bool {
        self.scope.allows(repository, action, self.owner.as_deref())
    }

    /// Why it may not be used now, if it may not.
    pub fn unusable(&self, now: SystemTime) -> Option<Unusable> {
        if let Some(at) = self.revoked {
            return Some(Unusable::Revoked(at));
        }
        match self.expires {
            Some(at) if at <= now => Some(Unusable::Expired(at)),
            _ => None,
        }
    }

    /// The name the rules and logs see: the owner, or `token:NAME` for a robot account
    /// (a colon cannot occur in an htpasswd user name, so it never collides with a user).
    pub fn principal(&self) -> String {
        self.owner.as_ref().unwrap_or(&self.account).clone()
    }

    /// `team/*:pull,push`, for listings.
    pub fn scope_text(&self) -> String {
        format!("{}:{}", self.repositories.join(","), self.actions.join(","))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Revoked(SystemTime),
    Expired(SystemTime),
}

impl Unusable {
    pub fn reason(self) -> &'static str {
        match self {
            Unusable::Revoked(_) => "token_revoked",
            Unusable::Expired(_) => "token_expired",
        }
    }
}

/// The tokens of one file, as loaded for one snapshot.
pub struct AccessTokens {
    path: PathBuf,
    key: Hmac<Sha256>,
    tokens: Vec<Arc<AccessToken>>,
    by_hash: HashMap<[u8; 32], usize>,
    by_name: HashMap<String, usize>,
    text: Option<String>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("path", &self.path)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl AccessTokens {
    /// Loads `path`; a missing file is an empty set (no token was ever created).
    pub fn load(path: &Path) -> Result<AccessTokens, Vec<AccessTokenError>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return AccessTokens::empty(path).map_err(|e| vec![e])
            }
            Err(source) => {
                return Err(vec![AccessTokenError::Read {
                    path: path.to_path_buf(),
                    source,
                }])
            }
        };
        AccessTokens::parse(path, &text)
    }

    /// The tokens of a file's text; `path` names where it came from in messages (the file,
    /// or the fleet's Redis key).
    pub fn parse(path: &Path, text: &str) -> Result<AccessTokens, Vec<AccessTokenError>> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            vec![AccessTokenError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            }]
        })?;
        let mut tokens = AccessTokens::from_raw(path, raw)?;
        tokens.text = Some(text.to_string());
        Ok(tokens)
    }

    /// The text these tokens were read from; `None` for the empty set of a missing file.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    fn empty(path: &Path) -> Result<AccessTokens, AccessTokenError> {
        AccessTokens::from_raw(path, fresh_raw()?).map_err(|mut e| e.remove(0))
    }

    fn from_raw(path: &Path, raw: RawFile) -> Result<AccessTokens, Vec<AccessTokenError>> {
        let invalid = |name: &str, message: String| AccessTokenError::Invalid {
            path: path.to_path_buf(),
            name: name.to_string(),
            message,
        };
        let key_bytes = STANDARD
            .decode(raw.key.trim())
            .ok()
            .filter(|k| k.len() >= 32);
        let Some(key_bytes) = key_bytes else {
            return Err(vec![AccessTokenError::Syntax {
                path: path.to_path_buf(),
                message: "key: must be at least 32 bytes of base64; the file is written by `registry-gate token create`".into(),
            }]);
        };
        let key = <Hmac<Sha256> as Mac>::new_from_slice(&key_bytes)
            .map_err(|e| vec![AccessTokenError::Random(e.to_string())])?;
        let mut errors = Vec::new();
        let mut tokens = Vec::new();
        let mut by_hash = HashMap::new();
        let mut by_name = HashMap::new();
        for raw in raw.tokens {
            let name = raw.name.clone();
            if let Err(message) = check_name(&name) {
                errors.push(invalid(&name, message));
                continue;
            }
            let hash = match hex_decode(&raw.hash) {
                Some(h) => h,
                None => {
                    errors.push(invalid(&name, "hash: not 64 hex digits".into()));
                    continue;
                }
            };
            let scope =
                match Scope::compile(&format!("token {name:?}"), &raw.repositories, &raw.actions) {
                    Ok(scope) => scope,
                    Err(e) => {
                        errors.extend(e.into_iter().map(|source| AccessTokenError::Scope {
                            path: path.to_path_buf(),
                            source,
                        }));
                        continue;
                    }
                };
            let mut time = |key: &str, text: &Option<String>| match text {
                None => None,
                Some(t) => match humantime::parse_rfc3339(t) {
                    Ok(at) => Some(at),
                    Err(e) => {
                        errors.push(invalid(&name, format!("{key}: {t:?} is not a time: {e}")));
                        None
                    }
                },
            };
            let created = time("created", &Some(raw.created.clone()));
            let expires = time("expires", &raw.expires);
            let revoked = time("revoked", &raw.revoked);
            if by_name.contains_key(&name) {
                errors.push(invalid(&name, "the name is used twice".into()));
                continue;
            }
            by_name.insert(name.clone(), tokens.len());
            by_hash.insert(hash, tokens.len());
            tokens.push(Arc::new(AccessToken {
                account: format!("{TOKEN_ACCOUNT_PREFIX}{name}"),
                name,
                owner: raw.owner,
                repositories: raw.repositories,
                actions: raw.actions,
                scope,
                created: created.unwrap_or(SystemTime::UNIX_EPOCH),
                expires,
                revoked,
            }));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(AccessTokens {
            path: path.to_path_buf(),
            key,
            tokens,
            by_hash,
            by_name,
            text: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokens(&self) -> &[Arc<AccessToken>] {
        &self.tokens
    }

    pub fn get(&self, name: &str) -> Option<&Arc<AccessToken>> {
        self.by_name.get(name).map(|i| &self.tokens[*i])
    }

    /// The token a presented secret is, if it is one (whether usable or not). Cheap: one
    /// HMAC and a map lookup, so every Basic password can be tried here first.
    pub fn find(&self, secret: &[u8]) -> Option<&Arc<AccessToken>> {
        if self.tokens.is_empty() {
            return None;
        }
        self.by_hash
            .get(&self.hash(secret))
            .map(|i| &self.tokens[*i])
    }

    fn hash(&self, secret: &[u8]) -> [u8; 32] {
        let mut mac = self.key.clone();
        mac.update(secret);
        mac.finalize().into_bytes().into()
    }

    /// Usable tokens that expire within `EXPIRY_WARNING` of `now`.
    pub fn expiring(&self, now: SystemTime) -> impl Iterator<Item = &Arc<AccessToken>> {
        self.tokens.iter().filter(move |t| {
            t.unusable(now).is_none()
                && t.expires
                    .is_some_and(|at| at.duration_since(now).unwrap_or_default() < EXPIRY_WARNING)
        })
    }
}

/// What `token create` asks for.
pub struct NewToken {
    pub name: String,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
    pub owner: Option<String>,
    pub expires_in: Option<Duration>,
}

/// A change `registry-gate token` makes, to the file or to the fleet's copy alike.
pub enum Edit {
    Create(NewToken),
    Revoke(String),
}

/// What an edit did.
#[derive(Debug, PartialEq, Eq)]
pub enum Edited {
    /// The new token's secret, which exists nowhere else afterwards.
    Created(String),
    /// Whether a usable token of that name was there to revoke.
    Revoked(bool),
}

/// Applies `edit` to the tokens in `text` (`None`: none yet, a fresh key is made) and returns
/// the new text, checked to load as the gate loads it, or `None` when nothing changed.
///
/// A name is never used twice, not even after a revocation: browser sessions and bearer
/// tokens name the access token they came from, and must never come back to life under a
/// new token of the same name. A revoked token stays, so that a refused use can name it.
pub fn apply(
    path: &Path,
    text: Option<&str>,
    edit: &Edit,
) -> Result<(Option<String>, Edited), AccessTokenError> {
    let mut raw = match text {
        Some(text) => toml::from_str(text).map_err(|e| AccessTokenError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?,
        None => fresh_raw()?,
    };
    let edited = match edit {
        Edit::Create(new) => Edited::Created(add(path, &mut raw, new)?),
        Edit::Revoke(name) => {
            let Some(token) = raw
                .tokens
                .iter_mut()
                .find(|t| &t.name == name && t.revoked.is_none())
            else {
                return Ok((None, Edited::Revoked(false)));
            };
            token.revoked = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
            Edited::Revoked(true)
        }
    };
    Ok((Some(render(path, &raw)?), edited))
}

/// Adds a token to the file (created if missing) and returns its secret (see `apply`).
pub fn create(path: &Path, new: NewToken) -> Result<String, AccessTokenError> {
    match edit_file(path, &Edit::Create(new))? {
        Edited::Created(secret) => Ok(secret),
        Edited::Revoked(_) => Err(AccessTokenError::Usage("no token was created".into())),
    }
}

/// Marks a token revoked in the file. Returns `false` when there is no such token, or it
/// was revoked already.
pub fn revoke(path: &Path, name: &str) -> Result<bool, AccessTokenError> {
    match edit_file(path, &Edit::Revoke(name.to_string()))? {
        Edited::Revoked(done) => Ok(done),
        Edited::Created(_) => Ok(false),
    }
}

/// `apply` to the file at `path`, written back whole when something changed.
pub fn edit_file(path: &Path, edit: &Edit) -> Result<Edited, AccessTokenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AccessTokenError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let (new_text, edited) = apply(path, text.as_deref(), edit)?;
    if let Some(new_text) = new_text {
        write_text(path, &new_text)?;
    }
    Ok(edited)
}

fn add(path: &Path, raw: &mut RawFile, new: &NewToken) -> Result<String, AccessTokenError> {
    check_name(&new.name).map_err(|m| AccessTokenError::Usage(format!("--name: {m}")))?;
    Scope::compile("token", &new.repositories, &new.actions).map_err(|errors| {
        AccessTokenError::Usage(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
                .replace("token.repositories", "--repositories")
                .replace("token.actions", "--actions"),
        )
    })?;
    if let Some(existing) = raw.tokens.iter().find(|t| t.name == new.name) {
        let state = if existing.revoked.is_some() {
            "a revoked token"
        } else {
            "a token"
        };
        return Err(AccessTokenError::Usage(format!(
            "{}: {state} named {:?} exists; names are never reused (what was issued for the old token must stay dead), so choose another name, e.g. {:?}",
            path.display(),
            new.name,
            format!("{}-2", new.name)
        )));
    }
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| AccessTokenError::Random(e.to_string()))?;
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
    let key = STANDARD
        .decode(raw.key.trim())
        .map_err(|_| AccessTokenError::Syntax {
            path: path.to_path_buf(),
            message: "key: not base64".into(),
        })?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
        .map_err(|e| AccessTokenError::Random(e.to_string()))?;
    mac.update(secret.as_bytes());
    let now = SystemTime::now();
    raw.tokens.push(RawToken {
        name: new.name.clone(),
        hash: hex::encode(mac.finalize().into_bytes()),
        repositories: new.repositories.clone(),
        actions: new.actions.clone(),
        owner: new.owner.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        expires: new
            .expires_in
            .map(|d| humantime::format_rfc3339_seconds(now + d).to_string()),
        revoked: None,
    });
    Ok(secret)
}

/// A new, empty set with a fresh key.
fn fresh_raw() -> Result<RawFile, AccessTokenError> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| AccessTokenError::Random(e.to_string()))?;
    Ok(RawFile {
        key: STANDARD.encode(key),
        tokens: Vec::new(),
    })
}

const FILE_HEADER: &str = "# registry-gate access tokens: written by `registry-gate token`.\n\
# Holds hashes only; the secrets were shown once when created.\n";

/// The text of `raw`, checked the way the gate loads it: never hand the gate tokens it
/// refuses.
fn render(path: &Path, raw: &RawFile) -> Result<String, AccessTokenError> {
    let text = toml::to_string(raw).map_err(|e| AccessTokenError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let text = format!("{FILE_HEADER}{text}");
    AccessTokens::parse(path, &text).map_err(|mut e| e.remove(0))?;
    Ok(text)
}

fn write_text(path: &Path, text: &str) -> Result<(), AccessTokenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AccessTokenError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    crate::atomic_file::write(path, text.as_bytes(), 0o600).map_err(|e| AccessTokenError::Write {
        path: e.path,
        source: e.source,
    })
}

/// When each token was last used, kept beside the token file (`<file>.last-used`) by the
/// running gate and read by `token list`. Separate from the token file, so recording a use
/// never rewrites (and reloads) the tokens themselves.
#[derive(Debug, Default)]
pub struct LastUsed {
    seen: Mutex<BTreeMap<String, SystemTime>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl LastUsed {
    pub fn record(&self, name: &str, at: SystemTime) {
        if let Ok(mut seen) = self.seen.lock() {
            // Every request of a push records a use: update in place, allocate once.
            match seen.get_mut(name) {
                Some(last) => *last = at,
                None => {
                    seen.insert(name.to_string(), at);
                }
            }
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The uses recorded since the last call, if any; for the fleet's shared record.
    pub fn take_recent(&self) -> Option<BTreeMap<String, SystemTime>> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.seen.lock().ok().map(|seen| seen.clone())
    }

    /// Marks the uses as not yet kept, after `take_recent`'s could not be written.
    pub fn keep_pending(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the uses recorded since the last save, merged with the file's, if any.
    pub fn save(&self, tokens_file: &Path) -> Result<(), AccessTokenError> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let path = last_used_path(tokens_file);
        let mut all = read_last_used(tokens_file);
        if let Ok(seen) = self.seen.lock() {
            for (name, at) in seen.iter() {
                all.insert(name.clone(), *at);
            }
        }
        let text: String = all
            .iter()
            .map(|(name, at)| format!("{name} {}\n", humantime::format_rfc3339_seconds(*at)))
            .collect();
        crate::atomic_file::write(&path, text.as_bytes(), 0o600).map_err(|e| {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
            AccessTokenError::Write {
                path: e.path,
                source: e.source,
            }
        })
    }
}

pub fn last_used_path(tokens_file: &Path) -> PathBuf {
    let mut name = tokens_file.as_os_str().to_owned();
    name.push(".last-used");
    PathBuf::from(name)
}

/// The saved last uses: `NAME RFC3339` lines; anything unreadable is skipped (it is a
/// convenience record, not a credential).
pub fn read_last_used(tokens_file: &Path) -> BTreeMap<String, SystemTime> {
    std::fs::read_to_string(last_used_path(tokens_file))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (name, at) = line.split_once(' ')?;
            Some((name.to_string(), humantime::parse_rfc3339(at.trim()).ok()?))
        })
        .collect()
}

/// Token names appear in logs, metrics labels and commands: short, and nothing to escape.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a token name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// A stored hash: 64 hex digits.
fn hex_decode(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, repos: &[&str], actions: &[&str]) -> NewToken {
        NewToken {
            name: name.into(),
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            owner: None,
            expires_in: None,
        }
    }

    #[test]
    fn a_created_token_is_found_by_its_secret_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let secret = create(&path, new("ci", &["team/*"], &["pull", "push"])).expect("create");
        assert!(secret.starts_with(SECRET_PREFIX));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&secret), "the secret must not be stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let tokens = AccessTokens::load(&path).expect("load");
        let token = tokens.find(secret.as_bytes()).expect("found");
        assert_eq!(token.name, "ci");
        assert_eq!(token.principal(), "token:ci");
        assert!(token.allows("team/app", Action::Push));
        assert!(token.allows("team/a/b", Action::Pull));
        assert!(!token.allows("team/app", Action::Delete));
        assert!(!token.allows("other/app", Action::Pull));
        assert!(token.unusable(SystemTime::now()).is_none());
        assert!(tokens.find(b"rgt_wrong").is_none());
        let mut other = secret.clone().into_bytes();
        other.pop();
        assert!(tokens.find(&other).is_none());
    }

    #[test]
    fn names_are_never_reused_and_revoked_tokens_stay_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let first = create(&path, new("ci", &["*"], &["pull"])).expect("create");
        let again = create(&path, new("ci", &["*"], &["pull"]));
        assert!(
            matches!(again, Err(AccessTokenError::Usage(_))),
            "{again:?}"
        );
        assert!(revoke(&path, "ci").expect("revoke"));
        assert!(!revoke(&path, "ci").expect("second revoke"));
        assert!(!revoke(&path, "nobody").expect("unknown"));
        let tokens = AccessTokens::load(&path).expect("load");
        let token = tokens.find(first.as_bytes()).expect("still known");
        assert!(matches!(
            token.unusable(SystemTime::now()),
            Some(Unusable::Revoked(_))
        ));
        // Not even a revoked name comes back: sessions and bearer tokens name it.
        let again = create(&path, new("ci", &["*"], &["pull"]));
        assert!(
            matches!(&again, Err(AccessTokenError::Usage(m)) if m.contains("never reused")),
            "{again:?}"
        );
    }

    #[test]
    fn expiry_and_the_warning_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let mut soon = new("soon", &["*"], &["pull"]);
        soon.expires_in = Some(Duration::from_secs(3 * 24 * 3600));
        let mut later = new("later", &["*"], &["pull"]);
        later.expires_in = Some(Duration::from_secs(30 * 24 * 3600));
        create(&path, soon).expect("create");
        create(&path, later).expect("create");
        create(&path, new("never", &["*"], &["pull"])).expect("create");
        let tokens = AccessTokens::load(&path).expect("load");
        let now = SystemTime::now();
        let expiring: Vec<&str> = tokens.expiring(now).map(|t| t.name.as_str()).collect();
        assert_eq!(expiring, ["soon"]);
        let in_ten_days = now + Duration::from_secs(10 * 24 * 3600);
        let soon = tokens.get("soon").expect("soon");
        assert!(matches!(
            soon.unusable(in_ten_days),
            Some(Unusable::Expired(_))
        ));
        assert!(tokens
            .get("later")
            .expect("later")
            .unusable(in_ten_days)
            .is_none());
    }

    #[test]
    fn bad_requests_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        for (bad, expect) in [
            (new("", &["*"], &["pull"]), "--name"),
            (new("a b", &["*"], &["pull"]), "--name"),
            (new("ok", &["Team/*"], &["pull"]), "--repositories"),
            (new("ok", &["*"], &["fly"]), "--actions"),
            (new("ok", &[], &["pull"]), "--repositories"),
        ] {
            let err = create(&path, bad).expect_err("refused").to_string();
            assert!(err.contains(expect), "{err}");
        }
        assert!(!path.exists(), "nothing written for a refused request");

        std::fs::write(&path, "key = \"c2hvcnQ=\"\n").expect("write");
        let err = AccessTokens::load(&path).expect_err("short key");
        assert!(err[0].to_string().contains("key"), "{:?}", err);
        std::fs::write(&path, "key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n[[token]]\nname = \"x\"\nhash = \"00\"\nrepositories = [\"*\"]\nactions = [\"pull\"]\ncreated = \"2026-01-01T00:00:00Z\"\n").expect("write");
        let err = AccessTokens::load(&path).expect_err("short hash");
        assert!(
            err[0].to_string().contains("token \"x\": hash"),
            "{:?}",
            err
        );
        assert!(AccessTokens::load(&dir.path().join("missing"))
            .expect("missing is empty")
            .tokens()
            .is_empty());
    }

    #[test]
    fn an_owned_token_scope_may_name_its_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let mut mine = new("mine", &["${user}/*"], &["*"]);
        mine.owner = Some("alice".into());
        let secret = create(&path, mine).expect("create");
        let tokens = AccessTokens::load(&path).expect("load");
        let token = tokens.find(secret.as_bytes()).expect("found");
        assert_eq!(token.principal(), "alice");
        assert!(token.allows("alice/app", Action::Delete));
        assert!(!token.allows("bob/app", Action::Pull));
    }

    #[test]
    fn last_uses_are_saved_beside_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let used = LastUsed::default();
        used.save(&path).expect("nothing to save");
        assert!(!last_used_path(&path).exists());
        let at = humantime::parse_rfc3339("2026-12-06T10:00:00Z").expect("time");
        used.record("ci", at);
        used.save(&path).expect("save");
        assert_eq!(read_last_used(&path).get("ci"), Some(&at));
    }
}
