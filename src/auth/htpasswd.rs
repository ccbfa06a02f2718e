//! htpasswd files as operators have them, parsed and verified in pure Rust, so what a file
//! accepts never depends on how the host's libc `crypt()` was built.
//!
//! This module owns the file format and the password hashes: bcrypt (`$2y$`, `$2a$`, `$2b$`),
//! Apache MD5 (`$apr1$`), `{SHA}`, `{SSHA}` and SHA-crypt (`$5$`, `$6$`). Plaintext lines are
//! refused unless the caller opts in; DES crypt is always refused. Every line it cannot use is
//! an error naming file and line, never quoting a hash or password. It does not cache, decide
//! who may do what, or run anything off the async runtime: callers do (`verify` is CPU-heavy).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// Reading (or, for the `htpasswd` subcommand, writing) a file failed.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A line the gate cannot use; `reason` never contains the hash or a password.
    #[error("{}:{line}: {reason}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: user {user:?} is already defined in an earlier htpasswd file", file.display())]
    DuplicateAcrossFiles { file: PathBuf, user: String },
    /// A new hash could not be made (bad user name, password or cost).
    #[error("cannot make a password hash: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Accept plaintext password lines (compared in constant time). DES crypt stays refused.
    pub allow_insecure: bool,
}

/// A stored password in one of the supported formats. `Debug` shows only the format name.
#[derive(Clone)]
pub enum PasswordHash {
    /// The whole 60-character `$2y$`/`$2a$`/`$2b$` string.
    Bcrypt(String),
    /// `$apr1$salt$digest`, the digest kept in its 22-character crypt encoding.
    Apr1 {
        salt: String,
        digest: String,
    },
    /// `{SHA}`: unsalted SHA-1.
    Sha1([u8; 20]),
    /// `{SSHA}`: SHA-1 of password then salt.
    Ssha {
        digest: [u8; 20],
        salt: Vec<u8>,
    },
    ShaCrypt256(ShaCrypt),
    ShaCrypt512(ShaCrypt),
    /// SHA-256 of the plaintext: comparing digests keeps the length out of the timing.
    Plain([u8; 32]),
}

/// A `$5$`/`$6$` hash, checked at load so that verifying never meets a malformed string
/// (sha-crypt's own `*_check` panics on some).
#[derive(Clone)]
pub struct ShaCrypt {
    rounds: usize,
    salt: String,
    encoded: String,
}

/// bcrypt reads at most 72 bytes of a password. Apache's `htpasswd -B` hashes a longer one
/// without a word, and Apache and nginx then accept it (and anything else that starts with
/// the same 72 bytes): verifying does the same, or a user moved over from them is locked
/// out. Writing one is refused (`bcrypt_line`), and `htpasswd verify` points it out.
pub const BCRYPT_MAX_PASSWORD: usize = 72;
/// Lowest cost `bcrypt_line` writes (OWASP's minimum; Apache's default of 5 is too cheap).
const BCRYPT_MIN_COST: u32 = 10;
/// What the dummy hash costs: the cost the gate itself writes.
const DUMMY_COST: u32 = 10;
/// The alphabet of crypt's base64 (bcrypt, MD5-crypt, SHA-crypt).
const CRYPT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// `{SHA}`/`{SSHA}` writers disagree on padding; the digest is what matters.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const FIX: &str = "re-create the user with `htpasswd -B`";

impl fmt::Debug for PasswordHash {
    // Hash material must not reach logs, not even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format_name())
    }
}

impl PasswordHash {
    pub fn format_name(&self) -> &'static str {
        match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Apr1 { .. } => "apr1",
            PasswordHash::Sha1(_) => "sha1",
            PasswordHash::Ssha { .. } => "ssha",
            PasswordHash::ShaCrypt256(_) => "sha256-crypt",
            PasswordHash::ShaCrypt512(_) => "sha512-crypt",
            PasswordHash::Plain(_) => "plain",
        }
    }

    /// The stored salt and digest, which change whenever the password does: what a browser
    /// session is tied to, so that a new password ends the sessions opened with the old one.
    /// Never the password, and never logged.
    pub fn material(&self) -> Vec<u8> {
        match self {
            PasswordHash::Bcrypt(hash) => hash.as_bytes().to_vec(),
            PasswordHash::Apr1 { salt, digest } => format!("{salt}${digest}").into_bytes(),
            PasswordHash::Sha1(digest) => digest.to_vec(),
            PasswordHash::Ssha { digest, salt } => [&digest[..], salt].concat(),
            PasswordHash::ShaCrypt256(c) | PasswordHash::ShaCrypt512(c) => {
                format!("{}${}${}", c.rounds, c.salt, c.encoded).into_bytes()
            }
            PasswordHash::Plain(digest) => digest.to_vec(),
        }
    }

    /// True if `password` matches. CPU-heavy for bcrypt and SHA-crypt: call it off the
    /// async runtime.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            // The crate reads the first 72 bytes, as Apache's and nginx's crypt do.
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Apr1 { salt, digest } => {
                ct_eq(&apr1_digest(password, salt.as_bytes()), digest.as_bytes())
            }
            PasswordHash::Sha1(digest) => ct_eq(&Sha1::digest(password), digest),
            PasswordHash::Ssha { digest, salt } => {
                let computed = Sha1::new().chain_update(password).chain_update(salt);
                ct_eq(&computed.finalize(), digest)
            }
            PasswordHash::ShaCrypt256(h) => sha_crypt::Sha256Params::new(h.rounds)
                .and_then(|p| sha_crypt::sha256_crypt_b64(password, h.salt.as_bytes(), &p))
                .is_ok_and(|computed| ct_eq(computed.as_bytes(), h.encoded.as_bytes())),
            PasswordHash::ShaCrypt512(h) => sha_crypt::Sha512Params::new(h.rounds)
                .and_then(|p| sha_crypt::sha512_crypt_b64(password, h.salt.as_bytes(), &p))
                .is_ok_and(|computed| ct_eq(computed.as_bytes(), h.encoded.as_bytes())),
            PasswordHash::Plain(digest) => ct_eq(&Sha256::digest(password), digest),
        }
    }

    /// How many bytes of a password this format reads, when it does not read them all:
    /// bcrypt's 72. What follows is ignored.
    pub fn reads_at_most(&self) -> Option<usize> {
        match self {
            PasswordHash::Bcrypt(_) => Some(BCRYPT_MAX_PASSWORD),
            _ => None,
        }
    }

    /// Formats slow enough that remembering a verified credential pays off.
    pub fn is_slow(&self) -> bool {
        matches!(
            self,
            PasswordHash::Bcrypt(_) | PasswordHash::ShaCrypt256(_) | PasswordHash::ShaCrypt512(_)
        )
    }
}

/// Different lengths are simply unequal; only equal-length contents are compared in
/// constant time, and every caller compares fixed-length digests.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// One parsed htpasswd file, users in file order.
#[derive(Debug, Clone, Default)]
pub struct HtpasswdFile {
    order: Vec<String>,
    users: HashMap<String, PasswordHash>,
    /// Each user's line, for messages that send the operator to it.
    lines: HashMap<String, usize>,
}

impl HtpasswdFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, Vec<HtpasswdError>> {
        let io = |source| {
            vec![HtpasswdError::Io {
                file: path.to_path_buf(),
                source,
            }]
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            // Name the line: "stream did not contain valid UTF-8" alone sends nobody anywhere.
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            vec![HtpasswdError::Line {
                file: path.to_path_buf(),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
                reason: "not valid UTF-8; save the file as UTF-8".into(),
            }]
        })?;
        Self::parse(path, &text, opts)
    }

    /// Parses `text`; `path_for_messages` only names the file in errors. Returns every
    /// problem, not only the first, so one edit fixes them all.
    pub fn parse(
        path_for_messages: &Path,
        text: &str,
        opts: &LoadOptions,
    ) -> Result<Self, Vec<HtpasswdError>> {
        let mut file = HtpasswdFile::default();
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        // Windows editors may start the file with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let mut fail = |reason: String| {
                errors.push(HtpasswdError::Line {
                    file: path_for_messages.to_path_buf(),
                    line,
                    reason,
                })
            };
            // Apache trims each line too, which also drops the '\r' of CRLF files.
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = content.split_once(':') else {
                fail("expected `user:hash` but there is no ':'".into());
                continue;
            };
            if user.is_empty() {
                fail("empty user name before ':'".into());
                continue;
            }
            if let Some(first) = first_seen.get(user) {
                // Apache silently uses the first line; an operator editing the second would
                // wonder why nothing changed.
                fail(format!("user {user:?} is already defined on line {first}"));
                continue;
            }
            first_seen.insert(user, line);
            match parse_hash(hash, opts) {
                Ok(h) => {
                    file.order.push(user.to_string());
                    file.users.insert(user.to_string(), h);
                    file.lines.insert(user.to_string(), line);
                }
                Err(reason) => fail(format!("user {user:?}: {reason}")),
            }
        }
        if errors.is_empty() {
            Ok(file)
        } else {
            Err(errors)
        }
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// The line (from 1) `user` is defined on.
    pub fn line_of(&self, user: &str) -> Option<usize> {
        self.lines.get(user).copied()
    }
}

/// Recognises one hash. The error is the reason for the message; it never quotes `hash`.
fn parse_hash(hash: &str, opts: &LoadOptions) -> Result<PasswordHash, String> {
    if hash.is_empty() {
        return Err("no password hash after ':'".into());
    }
    if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
        return parse_bcrypt(hash).map(|()| PasswordHash::Bcrypt(hash.to_string()));
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        // Apache cuts the salt at 8 characters, so a longer one could never match.
        return match rest.split_once('$') {
            Some((salt, digest)) if salt.len() <= 8 && digest.len() == 22 && is_crypt64(digest) => {
                Ok(PasswordHash::Apr1 {
                    salt: salt.to_string(),
                    digest: digest.to_string(),
                })
            }
            _ => Err(
                "malformed $apr1$ hash (want $apr1$<up to 8 salt characters>$<22 characters>)"
                    .into(),
            ),
        };
    }
    if let Some(rest) = hash.strip_prefix("{SHA}") {
        let digest = B64.decode(rest).ok().and_then(|b| b.try_into().ok());
        return digest
            .map(PasswordHash::Sha1)
            .ok_or_else(|| "malformed {SHA} hash (want base64 of a 20-byte SHA-1 digest)".into());
    }
    if let Some(rest) = hash.strip_prefix("{SSHA}") {
        return match B64.decode(rest) {
            Ok(bytes) if bytes.len() > 20 => {
                let (digest, salt) = bytes.split_at(20);
                let mut d = [0u8; 20];
                d.copy_from_slice(digest);
                Ok(PasswordHash::Ssha {
                    digest: d,
                    salt: salt.to_vec(),
                })
            }
            _ => Err("malformed {SSHA} hash (want base64 of a SHA-1 digest and a salt)".into()),
        };
    }
    if let Some(rest) = hash.strip_prefix("$5$") {
        return parse_sha_crypt(rest, 43).map(PasswordHash::ShaCrypt256);
    }
    if let Some(rest) = hash.strip_prefix("$6$") {
        return parse_sha_crypt(rest, 86).map(PasswordHash::ShaCrypt512);
    }
    if hash.starts_with("$1$") {
        return Err(format!(
            "MD5-crypt ($1$) is not supported; {FIX} (or `htpasswd -m` for $apr1$)"
        ));
    }
    if hash.starts_with("$2x$") {
        return Err(format!(
            "bcrypt $2x$ marks hashes from a buggy implementation; {FIX}"
        ));
    }
    if hash.starts_with('$') || hash.starts_with('{') {
        return Err(format!(
            "unknown hash format (supported: bcrypt, $apr1$, {{SHA}}, {{SSHA}}, $5$, $6$); {FIX}"
        ));
    }
    if hash.len() == 13 && is_crypt64(hash) {
        // No maintained pure-Rust DES crypt exists, and only 8 password characters count.
        return Err(format!(
            "DES crypt is refused even with allow_insecure_hashes (only the first 8 password \
             characters count); {FIX}"
        ));
    }
    if opts.allow_insecure {
        return Ok(PasswordHash::Plain(Sha256::digest(hash.as_bytes()).into()));
    }
    Err(format!(
        "plaintext password refused; {FIX}, or set allow_insecure_hashes = true in [auth]"
    ))
}

fn is_crypt64(s: &str) -> bool {
    s.bytes().all(|b| CRYPT_ALPHABET.contains(&b))
}

/// `$2?$NN$` and 53 characters of salt and digest; checked here so that a typo shows at
/// load rather than as a user who can never log in.
fn parse_bcrypt(hash: &str) -> Result<(), String> {
    let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
    let tail = hash.get(7..).unwrap_or("");
    if hash.len() == 60
        && cost.is_some_and(|c| (4..=31).contains(&c))
        && hash.as_bytes()[6] == b'$'
        && is_crypt64(tail)
    {
        Ok(())
    } else {
        Err("malformed bcrypt hash (want $2y$<cost 04-31>$ and 53 characters)".into())
    }
}

/// `[rounds=N$]salt$hash` after the `$5$`/`$6$` prefix.
fn parse_sha_crypt(rest: &str, encoded_len: usize) -> Result<ShaCrypt, String> {
    let malformed = || {
        format!("malformed SHA-crypt hash (want [rounds=N$]<salt, up to 16 characters>$<{encoded_len} characters>)")
    };
    let mut parts: Vec<&str> = rest.split('$').collect();
    let rounds = match parts.first().and_then(|p| p.strip_prefix("rounds=")) {
        Some(n) => {
            let n: usize = n.parse().map_err(|_| malformed())?;
            parts.remove(0);
            n
        }
        None => sha_crypt::ROUNDS_DEFAULT,
    };
    if !(sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX).contains(&rounds) {
        return Err(format!(
            "SHA-crypt rounds={rounds} is outside {}..={}",
            sha_crypt::ROUNDS_MIN,
            sha_crypt::ROUNDS_MAX
        ));
    }
    match parts[..] {
        // crypt() cuts the salt at 16 characters, so a longer one could never match.
        [salt, encoded]
            if salt.len() <= 16 && encoded.len() == encoded_len && is_crypt64(encoded) =>
        {
            Ok(ShaCrypt {
                rounds,
                salt: salt.to_string(),
                encoded: encoded.to_string(),
            })
        }
        _ => Err(malformed()),
    }
}

/// The 22-character digest of Apache's `$apr1$` (apr_md5.c: FreeBSD's MD5-crypt with its own
/// magic). `salt` is at most 8 bytes, as the parser guarantees.
fn apr1_digest(password: &[u8], salt: &[u8]) -> [u8; 22] {
    let alt = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(b"$apr1$")
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alt[..chunk.len()]);
    }
    // The original's quirk: a zero byte or the first password byte per bit of the length.
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    // 1000 rounds were meant to slow attackers down in 1994.
    for round in 0..1000 {
        let mut c = Md5::new();
        if round % 2 == 1 {
            c.update(password);
        } else {
            c.update(digest);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round % 2 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }

    let d = digest;
    let word = |a: usize, b: usize, c: usize| {
        (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c])
    };
    let words = [
        (word(0, 6, 12), 4),
        (word(1, 7, 13), 4),
        (word(2, 8, 14), 4),
        (word(3, 9, 15), 4),
        (word(4, 10, 5), 4),
        (u32::from(d[11]), 2),
    ];
    // Six bits per character, least significant first.
    let chars = words
        .iter()
        .flat_map(|&(w, n)| (0..n).map(move |k| CRYPT_ALPHABET[((w >> (6 * k)) & 0x3f) as usize]));
    let mut out = [0u8; 22];
    for (slot, c) in out.iter_mut().zip(chars) {
        *slot = c;
    }
    out
}

/// A hash to verify against when the user is unknown, so that an unknown user costs what a
/// wrong password costs. Its password is random and never kept, so it matches nothing.
pub fn dummy_hash() -> &'static PasswordHash {
    static DUMMY: OnceLock<PasswordHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        let hash = getrandom::getrandom(&mut secret)
            .ok()
            .and_then(|()| bcrypt::hash(secret, DUMMY_COST).ok())
            // Without an OS random source: the same cost, of a random password that was
            // thrown away when this line was written.
            .unwrap_or_else(|| {
                "$2y$10$Q.R7VvgJZypDXgfjcl4cx.YeakJSSXNvQ0MqcJM3Z41CkETHCUy3y".to_string()
            });
        PasswordHash::Bcrypt(hash)
    })
}

/// A new `user:$2y$…` line (Apache's bcrypt flavour), cost 10 to 31.
pub fn bcrypt_line(user: &str, password: &str, cost: u32) -> Result<String, HtpasswdError> {
    // Each refused name would be misread by `parse`: split at ':', trimmed, or a comment.
    if user.is_empty()
        || user.contains(':')
        || user.starts_with('#')
        || user.trim() != user
        || user.chars().any(char::is_control)
    {
        return Err(HtpasswdError::Hash(format!(
            "{user:?} is not a usable user name (non-empty; no ':', control characters, \
             leading '#' or surrounding spaces)"
        )));
    }
    if password.is_empty() {
        return Err(HtpasswdError::Hash("the password is empty".into()));
    }
    if password.len() > BCRYPT_MAX_PASSWORD {
        // Apache's htpasswd hashes it anyway; then the end of the password counts for
        // nothing, and its first 72 bytes alone log in.
        return Err(HtpasswdError::Hash(format!(
            "the password is {} bytes, and bcrypt ignores what follows byte \
             {BCRYPT_MAX_PASSWORD}: choose one of at most {BCRYPT_MAX_PASSWORD} bytes \
             (without --password-stdin, `registry-gate htpasswd add` generates one)",
            password.len()
        )));
    }
    if !(BCRYPT_MIN_COST..=31).contains(&cost) {
        return Err(HtpasswdError::Hash(format!(
            "bcrypt cost {cost} is outside {BCRYPT_MIN_COST}..=31"
        )));
    }
    let parts =
        bcrypt::hash_with_result(password, cost).map_err(|e| HtpasswdError::Hash(e.to_string()))?;
    Ok(format!(
        "{user}:{}",
        parts.format_for_version(bcrypt::Version::TwoY)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/registry/htpasswd";

    fn parse_with(text: &str, allow_insecure: bool) -> Result<HtpasswdFile, Vec<String>> {
        HtpasswdFile::parse(Path::new(FILE), text, &LoadOptions { allow_insecure })
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn one(line: &str) -> PasswordHash {
        let file = parse_with(line, false).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        let user = file.users().next().expect("one user");
        file.get(user).expect("its hash").clone()
    }

    // Made by Apache htpasswd 2.4 (-B -C 5, -m, -s, -2, -5, -2 -r 1200), libxcrypt via
    // python's crypt ($2a$, $2b$, $6$rounds=), `openssl passwd -5` and python's hashlib
    // ({SSHA}, 4-byte salt); all for the password "s3cret pass".
    const ALICE: &[&str] = &[
        "alice:$2y$05$pfmi9fwmpOUcDyZq1jVYMe6MtdqzNSe2UkAAQMvbHigMdzLwRRkDS",
        "alice:$2a$05$abcdefghijklmnopqrstuu1qdcFaS0PtqFUPzaCxLQ8/0lspH0ZEW",
        "alice:$2b$05$NjRY/dXEFSnkGrrxmQup/eqVI6jhXgsBJOUu9sK0JRtAGJ4iqdlju",
        "alice:$apr1$0YRglNJA$/5cEwlaDGq8JXqjiyWodA1",
        "alice:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=",
        "alice:{SSHA}cVSmQu7xW5BBvcgLWSIts9n0emeKAf4Q",
        "alice:$5$DlA120MDhJA7Heqh$mCAL86IuQYbtwUpPoqZEk/btVUmKYlOdA826eaHc3q1",
        "alice:$5$rounds=1200$To/KYMGL1gtvwDNh$hysORjJXbZ3ooqwDmZeomLFNXVs4jgGuzbix04jyBY1",
        "alice:$5$abcdefgh$/XQpiq6io7lkuXZDsxnm7cTuMRg2bA4y6FTmsaa.A78",
        "alice:$6$BCHCVzJ71DFXxauB$G32FsCiPamse.mAzwpcO2et3eWt/JmmYoadhy7uRmDanGipN857aXEXA.oAiUWcPKioPYlCu4uDyyi43sYxMr1",
        "alice:$6$rounds=1000$saltsaltsaltsalt$JwBz.cVWl2EtLmYaGhfuHT9DkB0g20sJsnmPCAWEMOCOvDeJU5zW.K9rG87dPoHKZEV7OjCztibmxRT5esjsM.",
    ];

    #[test]
    fn every_supported_format_verifies_right_and_rejects_wrong() {
        for line in ALICE {
            let h = one(line);
            assert!(h.verify(b"s3cret pass"), "{h:?} rejects the right password");
            for wrong in [&b"s3cret pasS"[..], b"s3cret pass ", b"s3cret", b""] {
                assert!(!h.verify(wrong), "{h:?} accepts {wrong:?}");
            }
        }
    }

    #[test]
    fn apr1_handles_non_ascii_empty_and_long_passwords() {
        // htpasswd -nbm; the 40-byte one crosses MD5-crypt's 16-byte chunking.
        let unicode = one("bob:$apr1$pflZUjIw$GF7M8aAnVj0wq83dJ0wh/0");
        assert!(unicode.verify("ünïcødé-€".as_bytes()));
        assert!(!unicode.verify(b"unicode-"));
        let empty = one("carol:$apr1$MgUwRiJv$/IyVmLUd859xn71W0x7le1");
        assert!(empty.verify(b"") && !empty.verify(b"x"));
        let long = one("dave:$apr1$1hbR5gg8$8LIpBzq.9vTQcnAUeMe771");
        assert!(long.verify(&[b'p'; 40]) && !long.verify(&[b'p'; 39]));
    }

    #[test]
    fn bcrypt_reads_the_first_72_bytes_as_apache_and_nginx_do() {
        // htpasswd -nbB -C 4 of 72 'x's; `htpasswd -vb` accepts the 73- and 85-byte ones too.
        let h = one("long:$2y$04$Nw7smjBeYFK0l0qlrI6os.MhJ3GIsJqlAe/Nq5rPF3DNPXqx5fmiC");
        assert!(h.verify(&[b'x'; 72]));
        assert!(h.verify(&[b'x'; 73]));
        assert!(h.verify(&[&[b'x'; 72][..], b"anything else"].concat()));
        assert!(!h.verify(&[b'x'; 71]));
        assert_eq!(h.reads_at_most(), Some(72));
        assert_eq!(one(ALICE[3]).reads_at_most(), None, "apr1 reads it all");
        let refused = bcrypt_line("u", &"x".repeat(73), 10).expect_err("73 bytes");
        let message = refused.to_string();
        assert!(
            message.contains("73 bytes") && message.contains("ignores what follows byte 72"),
            "{message}"
        );
        assert!(bcrypt_line("u", &"x".repeat(72), 10).is_ok());
    }

    #[test]
    fn des_and_plaintext_are_refused_with_file_and_line_but_no_hash() {
        // htpasswd -nbd (DES) and -nbp (plaintext) of "s3cret".
        let text = "# users\nok:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=\nd:klDb58zxt6cP6\np:s3cret\n";
        let errors = parse_with(text, false).expect_err("refused");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{FILE}:3: user \"d\": DES crypt")));
        assert!(errors[1].starts_with(&format!("{FILE}:4: user \"p\": plaintext")));
        assert!(errors[1].contains("allow_insecure_hashes"));
        let all = errors.concat();
        assert!(!all.contains("klDb58") && !all.contains("s3cret"), "{all}");

        // Opting in admits plaintext, never DES.
        let errors = parse_with(text, true).expect_err("DES still refused");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with(&format!("{FILE}:3: ")));
        let file = parse_with("p:s3cret\n", true).expect("opted in");
        let plain = file.get("p").expect("p");
        assert!(plain.verify(b"s3cret") && !plain.verify(b"s3cre") && !plain.verify(b"s3crett"));
        assert!(!plain.is_slow());
    }

    #[test]
    fn every_unusable_line_is_reported_with_its_line() {
        let text = [
            "nocolon",                                                         // 1
            ":{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=",                              // 2
            "u:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=",                             // 3
            "u:$apr1$0YRglNJA$/5cEwlaDGq8JXqjiyWodA1",                         // 4
            "v:$9$abc$def",                                                    // 5
            "w:$2y$05$tooshort",                                               // 6
            "x:$1$Srl5ODqw$6pYChBBUMNviNhdutgVvC0",                            // 7
            "y:$5$rounds=10$salt$hysORjJXbZ3ooqwDmZeomLFNXVs4jgGuzbix04jyBY1", // 8
            "z:",                                                              // 9
            "a:$apr1$0YRglNJAx$/5cEwlaDGq8JXqjiyWodA1",                        // 10
            "b:{SSHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=",                            // 11
            "c:$6$short$abc",                                                  // 12
        ]
        .join("\n");
        let errors = parse_with(&text, false).expect_err("refused");
        let expected = [
            (1, "no ':'"),
            (2, "empty user"),
            (4, "already defined on line 3"),
            (5, "unknown hash format"),
            (6, "malformed bcrypt"),
            (7, "MD5-crypt ($1$) is not supported"),
            (8, "rounds=10 is outside"),
            (9, "no password hash"),
            (10, "malformed $apr1$"),
            (11, "malformed {SSHA}"),
            (12, "malformed SHA-crypt"),
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for ((line, what), error) in expected.iter().zip(&errors) {
            assert!(
                error.starts_with(&format!("{FILE}:{line}: ")) && error.contains(what),
                "line {line} should say {what:?}: {error}"
            );
        }
        for secret in ["0YRglNJA", "hysOR", "tooshort", "ohgYgF2k", "nocolon"] {
            assert!(!errors.concat().contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn crlf_comments_blank_lines_and_bom_are_accepted_in_order() {
        let text =
            "\u{feff}# made on Windows\r\n\r\nzed:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=\r\n  \r\n\
                    amy:$apr1$0YRglNJA$/5cEwlaDGq8JXqjiyWodA1\r\n";
        let file = parse_with(text, false).expect("valid");
        assert_eq!(file.users().collect::<Vec<_>>(), ["zed", "amy"]);
        assert!(file.get("amy").expect("amy").verify(b"s3cret pass"));
        assert!(file.get("zed").expect("zed").verify(b"s3cret pass"));
        assert!(file.get("nobody").is_none());
    }

    #[test]
    fn load_names_the_file_when_it_cannot_be_read_or_decoded() {
        let dir = std::env::temp_dir().join(format!("htpasswd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing");
        let errors = HtpasswdFile::load(&missing, &LoadOptions::default()).expect_err("missing");
        assert!(matches!(errors[..], [HtpasswdError::Io { .. }]));
        assert!(errors[0]
            .to_string()
            .starts_with(&format!("{}: ", missing.display())));

        let latin1 = dir.join("latin1");
        std::fs::write(&latin1, b"a:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=\nj\xf6rg:x\n")
            .expect("write");
        let errors = HtpasswdFile::load(&latin1, &LoadOptions::default()).expect_err("latin1");
        assert_eq!(
            errors[0].to_string(),
            format!(
                "{}:2: not valid UTF-8; save the file as UTF-8",
                latin1.display()
            )
        );

        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", ALICE[0])).expect("write");
        let file = HtpasswdFile::load(&good, &LoadOptions::default()).expect("loads");
        assert!(file.get("alice").expect("alice").is_slow());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn generated_lines_verify_and_bad_input_is_refused() {
        let line = bcrypt_line("alice", "pw", 10).expect("line");
        assert!(line.starts_with("alice:$2y$10$"), "{line}");
        let h = one(&line);
        assert!(h.verify(b"pw") && !h.verify(b"pW"));
        for (user, password, cost) in [
            ("a:b", "pw", 10),
            ("", "pw", 10),
            ("#a", "pw", 10),
            (" a", "pw", 10),
            ("a\n", "pw", 10),
            ("a", "", 10),
            ("a", "pw", 9),
            ("a", "pw", 32),
        ] {
            assert!(
                bcrypt_line(user, password, cost).is_err(),
                "{user:?} {cost}"
            );
        }
    }

    #[test]
    fn dummy_hash_is_slow_matches_nothing_and_hides_itself() {
        let dummy = dummy_hash();
        assert!(dummy.is_slow());
        assert!(!dummy.verify(b"") && !dummy.verify(b"admin"));
        assert!(std::ptr::eq(dummy, dummy_hash()), "built once");
        let shown = format!("{:?}", one(ALICE[0]));
        assert_eq!(shown, "bcrypt");
    }
}
