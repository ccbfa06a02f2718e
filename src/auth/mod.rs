//! Who is asking: HTTP Basic credentials checked against htpasswd files, with a bounded cache
//! of verified credentials and a brake on failed attempts per (address, user) and per address.
//!
//! This module turns an `Authorization` header into an `Identity` and nothing more; whether
//! that identity may do something is `rules`' decision. It never logs a password, a hash or
//! an Authorization value.

pub mod access_tokens;
pub mod client_cert;
pub mod htpasswd;
pub mod manage;
pub mod oidc;
pub mod shared_tokens;
mod throttle;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{OnceCell, Semaphore};

use crate::bounded_map::BoundedMap;

pub use throttle::Throttle;

use htpasswd::{HtpasswdError, HtpasswdFile, LoadOptions, PasswordHash};

/// The caller, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

impl Identity {
    /// The view the rules take of an identity (`rules::Subject`).
    pub fn as_subject(&self) -> crate::rules::Subject<'_> {
        match self {
            Identity::Anonymous => crate::rules::Subject::Anonymous,
            Identity::User(u) => crate::rules::Subject::User(u),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "-",
            Identity::User(u) => u,
        }
    }
}

/// Why credentials proved no one: a failed login, not a refusal. What the request gets for
/// it (a 401 with a challenge, a 429, the browser's login form again) is decided by whoever
/// asked (`caller::login_failed`); a refusal is a `GateError`. The access log and the
/// metrics use the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The Authorization header is not a well-formed Basic credential.
    Malformed,
    /// No such user, or the wrong password: deliberately not told apart.
    BadCredentials,
    /// Locked out: too many failures for this user from this address, or from this address
    /// altogether (`Throttle`). Checked before any hashing, and the same whatever the password.
    Throttled { retry_after: Duration },
    /// An access token that may not be used (`token_expired`, `token_revoked`,
    /// `token_owner_unknown`, `token_unknown`) or an OIDC ID token that did not verify
    /// (`oidc_expired`, `oidc_bad_signature`, …). Not counted against the address: neither
    /// can be guessed, and a CI runner sending a stale token must not lock out its host.
    BadToken { reason: &'static str },
}

impl LoginFailure {
    pub fn reason(&self) -> &'static str {
        match self {
            LoginFailure::Malformed => "malformed",
            LoginFailure::BadCredentials => "bad_credentials",
            LoginFailure::Throttled { .. } => "throttled",
            LoginFailure::BadToken { reason } => reason,
        }
    }
}

/// Entries kept at most; a flood of distinct valid credentials cannot grow memory past this.
const CACHE_CAPACITY: usize = 4096;

/// An attempt inside a lockout: counted as one more failure, so guessing on extends it, and
/// answered with the extended wait.
async fn locked_out(throttle: &Throttle, peer: IpAddr, user: &str) -> LoginFailure {
    let retry_after = throttle
        .record_failure_everywhere(peer, user)
        .await
        .map_or(Duration::from_secs(1), |l| l.retry_after);
    LoginFailure::Throttled { retry_after }
}

/// The users of one snapshot. Rebuilt (and so its cache emptied) whenever a file changes.
pub struct Authenticator {
    users: HashMap<String, PasswordHash>,
    files: Vec<PathBuf>,
    /// Verified credentials (by `cache_key_for`) and when they were verified.
    cache: BoundedMap<[u8; 32], Instant>,
    cache_ttl: Duration,
    cache_key: Hmac<Sha256>,
    /// Verified in place of an unknown user's hash.
    timing_decoy: PasswordHash,
    /// Bounds concurrent hash verifications so a flood of wrong passwords cannot occupy
    /// every blocking thread.
    verify_slots: Arc<Semaphore>,
    /// Verifications under way, by credential key: a client that sends the same user and
    /// password while one runs (16 containers of `docker compose pull` starting at once)
    /// waits for that result instead of queueing a hash check of its own.
    in_flight: Mutex<HashMap<[u8; 32], Verification>>,
}

/// One hash verification's verdict, shared by every client that waits for it.
type Verification = Arc<OnceCell<Result<(), LoginFailure>>>;

impl Authenticator {
    /// Loads every file; returns every unusable line of every file on failure.
    pub fn load(
        files: &[PathBuf],
        options: &LoadOptions,
        cache_ttl: Duration,
        verify_slots: Arc<Semaphore>,
    ) -> Result<Authenticator, Vec<HtpasswdError>> {
        let mut users = HashMap::new();
        let mut errors = Vec::new();
        for path in files {
            match HtpasswdFile::load(path, options) {
                Ok(file) => {
                    for user in file.users() {
                        if users.contains_key(user) {
                            errors.push(HtpasswdError::DuplicateAcrossFiles {
                                file: path.clone(),
                                user: user.to_string(),
                            });
                        } else if let Some(hash) = file.get(user) {
                            users.insert(user.to_string(), hash.clone());
                        }
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| {
            vec![HtpasswdError::Io {
                file: PathBuf::from("(random source)"),
                source: std::io::Error::other(e.to_string()),
            }]
        })?;
        let cache_key = <Hmac<Sha256> as Mac>::new_from_slice(&secret).map_err(|_| Vec::new())?;
        let timing_decoy = timing_decoy(&users);
        Ok(Authenticator {
            timing_decoy,
            users,
            files: files.to_vec(),
            cache: BoundedMap::new(CACHE_CAPACITY),
            cache_ttl,
            cache_key,
            verify_slots,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// A short stamp of `user`'s stored password hash (16 hex digits of a SHA-256 over it):
    /// the same across reloads while the password is unchanged, different once it changes.
    /// It reveals nothing usable about the password: it is a digest of a salted hash.
    pub fn password_stamp(&self, user: &str) -> Option<String> {
        use sha2::Digest;
        let material = self.users.get(user)?.material();
        let digest = Sha256::new()
            .chain_update(b"registry-gate password stamp\0")
            .chain_update(&material)
            .finalize();
        Some(hex::encode(&digest[..8]))
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Checks one user's password (from a Basic header, the token endpoint's form or the
    /// browser's login form).
    ///
    /// While a lockout covers `user` from `peer`, the answer is 429 whatever the password,
    /// and the attempt extends the lockout; only a credential verified from `peer` before the
    /// lockout began still passes, from the cache and without hashing.
    pub async fn check_password(
        &self,
        user: String,
        password: Vec<u8>,
        peer: IpAddr,
        throttle: &Throttle,
    ) -> Result<Identity, LoginFailure> {
        let key = self.cache_key_for(peer, &user, &password);
        let verified_at = self.cached(&key);
        match (verified_at, throttle.lockout(peer, &user)) {
            (Some(_), None) => return Ok(Identity::User(user)),
            (Some(at), Some(lockout)) if at < lockout.since => return Ok(Identity::User(user)),
            (_, Some(_)) => return Err(locked_out(throttle, peer, &user).await),
            (None, None) => {}
        }

        let Some(verification) = self.join_verification(key) else {
            return Err(LoginFailure::BadCredentials);
        };
        let verdict = *verification
            .get_or_init(|| self.verify(&user, password, peer, throttle))
            .await;
        if let Ok(mut in_flight) = self.in_flight.lock() {
            if in_flight
                .get(&key)
                .is_some_and(|v| Arc::ptr_eq(v, &verification))
            {
                in_flight.remove(&key);
            }
        }
        match verdict {
            Ok(()) => {
                self.remember(key);
                Ok(Identity::User(user))
            }
            Err(failure) => Err(failure),
        }
    }

    /// The verification under way for `key`, or a new one to run.
    fn join_verification(&self, key: [u8; 32]) -> Option<Verification> {
        let mut in_flight = self.in_flight.lock().ok()?;
        Some(in_flight.entry(key).or_default().clone())
    }

    /// One hash verification; a failure is recorded against `peer` once, however many
    /// clients waited for it.
    async fn verify(
        &self,
        user: &str,
        password: Vec<u8>,
        peer: IpAddr,
        throttle: &Throttle,
    ) -> Result<(), LoginFailure> {
        let hash = match self.users.get(user) {
            Some(h) => h.clone(),
            // An unknown user costs one verification against a real user's hash (same format,
            // same cost), exactly what a wrong password costs, so response time does not tell
            // which user names exist. The result is discarded below.
            None => self.timing_decoy.clone(),
        };
        let known = self.users.contains_key(user);
        // Wait for a hashing slot, then look at the lockout again: requests that queued up
        // in parallel before the first failures were recorded must not all be verified.
        let Ok(_slot) = self.verify_slots.clone().acquire_owned().await else {
            return Err(LoginFailure::BadCredentials);
        };
        if throttle.lockout_everywhere(peer, user).await.is_some() {
            return Err(locked_out(throttle, peer, user).await);
        }
        let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .unwrap_or(false)
            && known;
        if throttle.lockout_everywhere(peer, user).await.is_some() {
            // A lockout began while the hash was checked: the answer must not depend on the
            // password, so this one is refused like any other attempt inside it.
            return Err(locked_out(throttle, peer, user).await);
        }
        if ok {
            Ok(())
        } else {
            throttle.record_failure_everywhere(peer, user).await;
            Err(LoginFailure::BadCredentials)
        }
    }

    /// The cache key of a credential sent from `peer`: the exact address is part of it, so
    /// what was proven from one address proves nothing for another during a lockout.
    fn cache_key_for(&self, peer: IpAddr, user: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = self.cache_key.clone();
        match crate::client_addr::canonical(peer) {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// When the credential under `key` was verified, while that is still trusted.
    fn cached(&self, key: &[u8; 32]) -> Option<Instant> {
        let now = Instant::now();
        let ttl = self.cache_ttl;
        self.cache.get_if(key, |verified| *verified + ttl > now)
    }

    fn remember(&self, key: [u8; 32]) {
        let now = Instant::now();
        let ttl = self.cache_ttl;
        self.cache
            .insert(key, now, |_, verified| *verified + ttl > now);
    }
}

/// The user created on a zero-config first start.
pub const GENERATED_USER: &str = "admin";
/// bcrypt cost for passwords the gate writes; Apache's `htpasswd -B` default is 5, the
/// registry docs use 10+, OWASP asks for at least 10.
pub const BCRYPT_COST: u32 = 10;

/// Creates `path` with one generated user if it does not exist yet. Returns the user and
/// the new password (shown once), or `None` when the file was already there.
pub fn ensure_generated_user(path: &Path) -> Result<Option<(String, String)>, HtpasswdError> {
    if path.exists() {
        return Ok(None);
    }
    let password = random_password()?;
    let line = htpasswd::bcrypt_line(GENERATED_USER, &password, BCRYPT_COST)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| HtpasswdError::Io {
            file: path.to_path_buf(),
            source,
        })?;
    }
    crate::atomic_file::write(path, format!("{line}\n").as_bytes(), 0o600).map_err(|e| {
        HtpasswdError::Io {
            file: e.path,
            source: e.source,
        }
    })?;
    Ok(Some((GENERATED_USER.to_string(), password)))
}

/// 24 characters from a 62-letter alphabet: about 143 bits, and safe to paste in a shell.
pub fn random_password() -> Result<String, HtpasswdError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let mut buf = [0u8; 32];
        getrandom::getrandom(&mut buf).map_err(|e| HtpasswdError::Io {
            file: PathBuf::from("(random source)"),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Rejection sampling keeps the choice uniform.
        for b in buf {
            if (b as usize) < ALPHABET.len() * 4 && out.len() < 24 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// The hash an unknown user's password is checked against: one of the most common kind in
/// the files (format, and for bcrypt its cost), so an unknown name costs what a wrong
/// password for a typical user costs. Chosen deterministically.
fn timing_decoy(users: &HashMap<String, PasswordHash>) -> PasswordHash {
    let kind = |h: &PasswordHash| -> String {
        match h {
            // "$2y$05$…": the cost is what makes bcrypt slow.
            PasswordHash::Bcrypt(text) => format!("bcrypt{}", text.get(4..6).unwrap_or("")),
            other => other.format_name().to_string(),
        }
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for hash in users.values() {
        *counts.entry(kind(hash)).or_default() += 1;
    }
    let mut names: Vec<&String> = users.keys().collect();
    names.sort();
    let most_common = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse((*k).clone())));
    most_common
        .and_then(|(k, _)| names.into_iter().map(|n| &users[n]).find(|h| kind(h) == *k))
        .cloned()
        .unwrap_or_else(|| htpasswd::dummy_hash().clone())
}

/// `Basic base64(user:password)`, scheme case-insensitive. The user must be UTF-8 (htpasswd
/// user names are text); the password may be any bytes.
pub fn parse_basic(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, rest) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        let mut v = b"Basic ".to_vec();
        v.extend(base64::engine::general_purpose::STANDARD.encode(s).bytes());
        v
    }

    fn authenticator(lines: &str) -> (Authenticator, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, lines).expect("write htpasswd");
        let auth = Authenticator::load(
            &[path],
            &LoadOptions::default(),
            crate::config::DEFAULT_CACHE_TTL,
            Arc::new(Semaphore::new(2)),
        )
        .expect("valid htpasswd");
        (auth, dir)
    }

    impl Authenticator {
        /// An `Authorization` value as `caller::credentials` reads it when no access token
        /// or OIDC token matches: `None` is no credentials.
        async fn authenticate(
            &self,
            header: Option<&[u8]>,
            peer: IpAddr,
            throttle: &Throttle,
        ) -> Result<Identity, LoginFailure> {
            let Some(header) = header else {
                return Ok(Identity::Anonymous);
            };
            let (user, password) = parse_basic(header).ok_or(LoginFailure::Malformed)?;
            self.check_password(user, password, peer, throttle).await
        }
    }

    #[tokio::test]
    async fn users_unknown_users_cache_and_throttle() {
        // "s3cret", as written by `htpasswd -s` and `htpasswd -B -C 4`.
        let (auth, _dir) = authenticator(
            "sha:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\nbc:$2y$04$Pay09nK3F5sI8d5ULl5yKOscpbMjW4Zfb.EtlMV4/r0aer7a1xW0O\nsha2:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\n",
        );
        let throttle = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let header = |u: &str, p: &str| b64(format!("{u}:{p}").as_bytes());
        let ok = auth
            .authenticate(Some(&header("sha", "s3cret")), ip, &throttle)
            .await;
        assert_eq!(ok, Ok(Identity::User("sha".into())));
        assert_eq!(
            auth.authenticate(None, ip, &throttle).await,
            Ok(Identity::Anonymous)
        );
        // An unknown user whose password happens to be the decoy's is still refused.
        for (user, password) in [("nobody", "s3cret"), ("sha", "wrong"), ("nobody", "x")] {
            let r = auth
                .authenticate(Some(&header(user, password)), ip, &throttle)
                .await;
            assert_eq!(r, Err(LoginFailure::BadCredentials), "{user}:{password}");
        }
        // Five failures for "sha" in all: the sixth locks it out.
        for _ in 0..5 {
            let _ = auth
                .authenticate(Some(&header("sha", "wrong")), ip, &throttle)
                .await;
        }
        let blocked = auth
            .authenticate(Some(&header("sha", "anything")), ip, &throttle)
            .await;
        assert!(
            matches!(blocked, Err(LoginFailure::Throttled { .. })),
            "{blocked:?}"
        );
        // Verified from this address before the lockout: still served, from the cache.
        let cached = auth
            .authenticate(Some(&header("sha", "s3cret")), ip, &throttle)
            .await;
        assert_eq!(cached, Ok(Identity::User("sha".into())));
        // Another user from the same address is not locked out with "sha".
        let other = auth
            .authenticate(Some(&header("sha2", "s3cret")), ip, &throttle)
            .await;
        assert_eq!(other, Ok(Identity::User("sha2".into())));
        let malformed = auth.authenticate(Some(b"Basic !!"), ip, &throttle).await;
        assert_eq!(malformed, Err(LoginFailure::Malformed));
    }

    #[tokio::test]
    async fn a_locked_out_source_learns_nothing_from_the_right_password() {
        let (auth, _dir) = authenticator("sha:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\n");
        let throttle = Throttle::new();
        let owner: IpAddr = "192.0.2.1".parse().expect("ip");
        let attacker: IpAddr = "198.51.100.7".parse().expect("ip");
        let header = |p: &str| b64(format!("sha:{p}").as_bytes());
        let login = |p: &'static str, from: IpAddr| {
            let (auth, throttle, header) = (&auth, &throttle, &header);
            async move { auth.authenticate(Some(&header(p)), from, throttle).await }
        };
        // The owner's credential is verified, and so cached.
        assert_eq!(
            login("s3cret", owner).await,
            Ok(Identity::User("sha".into()))
        );
        let mut last_wait = Duration::ZERO;
        for i in 0..12 {
            let answer = login("wrong", attacker).await;
            if let Err(LoginFailure::Throttled { retry_after }) = answer {
                assert!(
                    retry_after > last_wait,
                    "guess {i} did not extend the lockout"
                );
                last_wait = retry_after;
            }
        }
        assert!(last_wait > Duration::from_secs(8), "{last_wait:?}");
        // The right guess from the locked-out address gets exactly what a wrong one gets.
        match login("s3cret", attacker).await {
            Err(LoginFailure::Throttled { retry_after }) => assert!(retry_after > last_wait),
            other => panic!("the right password inside the lockout: {other:?}"),
        }
        // The owner's address is not locked out, and its cached credential still works.
        assert_eq!(
            login("s3cret", owner).await,
            Ok(Identity::User("sha".into()))
        );
    }

    #[test]
    fn the_timing_decoy_is_of_the_most_common_kind() {
        let text = "a:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\n\
                    b:$2y$04$Pay09nK3F5sI8d5ULl5yKOscpbMjW4Zfb.EtlMV4/r0aer7a1xW0O\n\
                    c:$2y$04$Pay09nK3F5sI8d5ULl5yKOscpbMjW4Zfb.EtlMV4/r0aer7a1xW0O\n";
        let file =
            htpasswd::HtpasswdFile::parse(std::path::Path::new("f"), text, &LoadOptions::default())
                .expect("valid");
        let users: HashMap<String, PasswordHash> = file
            .users()
            .map(|u| (u.to_string(), file.get(u).expect("hash").clone()))
            .collect();
        for _ in 0..5 {
            assert_eq!(timing_decoy(&users).format_name(), "bcrypt");
        }
        assert_eq!(timing_decoy(&HashMap::new()).format_name(), "bcrypt");
    }

    #[test]
    fn basic_header_parsing() {
        assert_eq!(
            parse_basic(&b64(b"alice:s3cr:et")),
            Some(("alice".into(), b"s3cr:et".to_vec()))
        );
        assert_eq!(
            parse_basic(&b64(b"alice:")),
            Some(("alice".into(), Vec::new()))
        );
        let mut lower = b"basic ".to_vec();
        lower.extend_from_slice(&b64(b"a:b")[6..]);
        assert!(parse_basic(&lower).is_some());
        for bad in [
            &b"Bearer abc"[..],
            b"Basic",
            b"Basic !!!",
            &b64(b"nocolon"),
            &b64(b":pw"),
            &b64(b"\xff:pw"),
            b"\xffBasic x",
        ] {
            assert_eq!(parse_basic(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
