//! htpasswd files as Apache's `htpasswd` writes them, parsed and verified in pure Rust, so
//! what works never depends on how the host's libc `crypt()` was built (nginx's does).
//!
//! Supported: bcrypt (`$2y$`, `$2a$`, `$2b$`, `$2x$`), Apache MD5 (`$apr1$`), `{SHA}`,
//! `{SSHA}`, SHA-crypt (`$5$`, `$6$`). Plaintext lines only with the operator's opt-in;
//! DES crypt never (8-character passwords and a 12-bit salt). Every line the gate cannot use
//! is reported with file and line, never with the hash in the message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}: user {user:?} is already defined in an earlier htpasswd file", file.display())]
    DuplicateAcrossFiles { file: PathBuf, user: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Accept plaintext password lines (Apache's `htpasswd -p`).
    pub allow_insecure: bool,
}

/// A stored password hash, in one of the supported formats.
#[derive(Clone)]
pub enum PasswordHash {
    Bcrypt(String),
    Apr1 { salt: String, hash: String },
    Sha1([u8; 20]),
    Ssha { digest: [u8; 20], salt: Vec<u8> },
    ShaCrypt256(String),
    ShaCrypt512(String),
    Plain(Vec<u8>),
}

impl std::fmt::Debug for PasswordHash {
    // Never print hash material, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.format_name())
    }
}

/// bcrypt looks at 72 bytes at most; a longer password must not match on its prefix.
const BCRYPT_MAX_PASSWORD: usize = 72;

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

    /// CPU-heavy for bcrypt and SHA-crypt: callers run it off the async runtime.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => {
                // The length check is what stops prefix matches: bcrypt itself truncates.
                password.len() <= BCRYPT_MAX_PASSWORD
                    && bcrypt::verify(password, hash).unwrap_or(false)
            }
            PasswordHash::Apr1 { salt, hash } => {
                let computed = apr1(password, salt.as_bytes());
                bool::from(computed.as_bytes().ct_eq(hash.as_bytes()))
            }
            PasswordHash::Sha1(digest) => {
                let computed: [u8; 20] = Sha1::digest(password).into();
                bool::from(computed.ct_eq(digest))
            }
            PasswordHash::Ssha { digest, salt } => {
                let mut h = Sha1::new();
                h.update(password);
                h.update(salt);
                let computed: [u8; 20] = h.finalize().into();
                bool::from(computed.ct_eq(digest))
            }
            PasswordHash::ShaCrypt256(hash) => std::str::from_utf8(password)
                .is_ok_and(|p| sha_crypt::sha256_check(p, hash).is_ok()),
            PasswordHash::ShaCrypt512(hash) => std::str::from_utf8(password)
                .is_ok_and(|p| sha_crypt::sha512_check(p, hash).is_ok()),
            PasswordHash::Plain(stored) => bool::from(stored.as_slice().ct_eq(password)),
        }
    }

    /// Formats slow enough that remembering a verified credential is worth it.
    pub fn is_slow(&self) -> bool {
        matches!(
            self,
            PasswordHash::Bcrypt(_) | PasswordHash::ShaCrypt256(_) | PasswordHash::ShaCrypt512(_)
        )
    }
}

/// One parsed htpasswd file, users in file order.
#[derive(Debug, Clone, Default)]
pub struct HtpasswdFile {
    order: Vec<String>,
    users: HashMap<String, PasswordHash>,
}

impl HtpasswdFile {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self, Vec<HtpasswdError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![HtpasswdError::Io {
                file: path.to_path_buf(),
                source,
            }]
        })?;
        Self::parse(path, &text, opts)
    }

    /// Parses `text`; `path` is used in messages. Returns every problem, not only the first.
    pub fn parse(path: &Path, text: &str, opts: &LoadOptions) -> Result<Self, Vec<HtpasswdError>> {
        let mut file = HtpasswdFile::default();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fail = |reason: String| HtpasswdError::Line {
                file: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let Some((user, hash)) = line.split_once(':') else {
                errors.push(fail("not a user:hash line (no colon)".into()));
                continue;
            };
            if user.is_empty() {
                errors.push(fail("empty user name".into()));
                continue;
            }
            if file.users.contains_key(user) {
                errors.push(fail(format!("user {user:?} is defined twice")));
                continue;
            }
            match parse_hash(hash, opts) {
                Ok(h) => {
                    file.order.push(user.to_string());
                    file.users.insert(user.to_string(), h);
                }
                Err(reason) => errors.push(fail(format!("user {user:?}: {reason}"))),
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
}

fn parse_hash(hash: &str, opts: &LoadOptions) -> Result<PasswordHash, String> {
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    if ["$2y$", "$2a$", "$2b$", "$2x$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        if hash.len() != 60 {
            return Err("bcrypt hash has the wrong length (expected 60 characters)".into());
        }
        return Ok(PasswordHash::Bcrypt(hash.to_string()));
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let (salt, digest) = rest
            .split_once('$')
            .ok_or("$apr1$ hash without a salt separator")?;
        if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
            return Err(
                "$apr1$ hash is malformed (salt up to 8 characters, 22-character digest)".into(),
            );
        }
        return Ok(PasswordHash::Apr1 {
            salt: salt.to_string(),
            hash: hash.to_string(),
        });
    }
    if let Some(rest) = hash.strip_prefix("{SHA}") {
        let bytes = B64.decode(rest).map_err(|_| "{SHA} hash is not base64")?;
        let digest: [u8; 20] = bytes
            .try_into()
            .map_err(|_| "{SHA} hash is not a 20-byte SHA-1 digest")?;
        return Ok(PasswordHash::Sha1(digest));
    }
    if let Some(rest) = hash.strip_prefix("{SSHA}") {
        let bytes = B64.decode(rest).map_err(|_| "{SSHA} hash is not base64")?;
        if bytes.len() <= 20 {
            return Err("{SSHA} hash has no salt after the SHA-1 digest".into());
        }
        let (digest, salt) = bytes.split_at(20);
        let mut d = [0u8; 20];
        d.copy_from_slice(digest);
        return Ok(PasswordHash::Ssha {
            digest: d,
            salt: salt.to_vec(),
        });
    }
    if hash.starts_with("$5$") {
        return Ok(PasswordHash::ShaCrypt256(hash.to_string()));
    }
    if hash.starts_with("$6$") {
        return Ok(PasswordHash::ShaCrypt512(hash.to_string()));
    }
    if hash.starts_with("$1$") {
        return Err(
            "MD5-crypt ($1$) is not supported; re-create the user with `htpasswd -B` (bcrypt)"
                .into(),
        );
    }
    if hash.starts_with('$') || hash.starts_with('{') {
        return Err("unknown hash format; use bcrypt (`htpasswd -B`)".into());
    }
    if hash.len() == 13
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        return Err(
            "DES crypt hashes are refused (only 8 password characters count); re-create the user with `htpasswd -B`"
                .into(),
        );
    }
    if opts.allow_insecure {
        return Ok(PasswordHash::Plain(hash.as_bytes().to_vec()));
    }
    Err("looks like a plaintext password; re-create the user with `htpasswd -B`, or set [auth] allow_insecure_hashes = true".into())
}

/// Apache's MD5 crypt variant (`$apr1$`), as in apr_md5.c: the FreeBSD MD5-crypt algorithm
/// with "$apr1$" as magic. Returns the whole `$apr1$salt$digest` string.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];

    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1.min(password.len())]);
        }
        i >>= 1;
    }
    let mut digest = ctx.finalize();

    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
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
        if round & 1 == 1 {
            c.update(digest);
        } else {
            c.update(password);
        }
        digest = c.finalize();
    }

    let d = digest;
    let mut out = String::with_capacity(37);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        crypt64(
            &mut out,
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    crypt64(&mut out, u32::from(d[11]), 2);
    out
}

fn crypt64(out: &mut String, mut v: u32, n: usize) {
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for _ in 0..n {
        out.push(ITOA64[(v & 0x3f) as usize] as char);
        v >>= 6;
    }
}

/// A hash checked when the user does not exist, so that an unknown user costs what a wrong
/// password costs (bcrypt at the cost the gate writes).
pub fn dummy_hash() -> &'static PasswordHash {
    static DUMMY: OnceLock<PasswordHash> = OnceLock::new();
    DUMMY.get_or_init(|| {
        // The input is fixed and valid, so hashing cannot fail; fall back to a hash that
        // matches nothing if it ever did.
        let hash =
            bcrypt::hash("registry-gate: no such user", super::BCRYPT_COST).unwrap_or_else(|_| {
                "$2y$10$......................................................".into()
            });
        PasswordHash::Bcrypt(hash)
    })
}

/// A new htpasswd line for `user` with a bcrypt hash (`$2y$`, as Apache writes it).
pub fn bcrypt_line(user: &str, password: &str, cost: u32) -> Result<String, HtpasswdError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(HtpasswdError::Hash(format!(
            "{user:?} is not a valid user name (no colons or control characters)"
        )));
    }
    if password.len() > BCRYPT_MAX_PASSWORD {
        return Err(HtpasswdError::Hash(
            "bcrypt passwords are limited to 72 bytes".into(),
        ));
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

    fn parse(text: &str) -> Result<HtpasswdFile, Vec<HtpasswdError>> {
        HtpasswdFile::parse(Path::new("/etc/htpasswd"), text, &LoadOptions::default())
    }

    fn check(line: &str, good: &str) {
        let f = parse(line).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        let user = f.users().next().expect("one user");
        let h = f.get(user).expect("hash");
        assert!(
            h.verify(good.as_bytes()),
            "{} rejects the right password",
            h.format_name()
        );
        assert!(
            !h.verify(b"wrong"),
            "{} accepts a wrong password",
            h.format_name()
        );
        assert!(
            !h.verify(b""),
            "{} accepts an empty password",
            h.format_name()
        );
    }

    // Lines made by Apache's htpasswd 2.4 (-m, -B, -s, -2, -5) and python's hashlib ({SSHA}),
    // all for the password "s3cret".
    #[test]
    fn every_supported_format_verifies() {
        for line in [
            "u:$apr1$sgLNpc8K$WNXM7hE22AW5LX6uVDDhY0",
            "u:$2y$05$GaWdy1OqSO7Gd.MPB9FwNu6KwJpnHlF10E/DIA8qV1kb5.2HcX67W",
            "u:$2b$05$GaWdy1OqSO7Gd.MPB9FwNu6KwJpnHlF10E/DIA8qV1kb5.2HcX67W",
            "u:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=",
            "u:{SSHA}tR9A1aiP/lH5pqe8FFCcKDnAMfJhYmNkMTIzNA==",
            "u:$5$N7h8iW8tZOC0Culj$bp/nVCjVhWqhGUGlu2eiPgQ4tYgfk6DPS6q9bkoYKl3",
            "u:$6$/nFOI6B9EOItzppW$r7F5xg.GggjYXtb/3KZymOAvWgOHA7kQx0OKh1VdhvV7h3tsPL1vRUY1G5rY12vnrLx7exRVWolF9hig3pU9N.",
        ] {
            check(line, "s3cret");
        }
    }

    #[test]
    fn apr1_algorithm_reproduces_apache() {
        assert_eq!(
            apr1(b"s3cret", b"sgLNpc8K"),
            "$apr1$sgLNpc8K$WNXM7hE22AW5LX6uVDDhY0"
        );
    }

    #[test]
    fn bcrypt_never_matches_on_the_72_byte_prefix() {
        // htpasswd -B -C 4 of 72 'a's.
        let f =
            parse("u:$2y$04$Pay09nK3F5sI8d5ULl5yKOscpbMjW4Zfb.EtlMV4/r0aer7a1xW0O").expect("valid");
        let h = f.get("u").expect("user");
        let exact = [b'a'; 72];
        assert!(h.verify(&exact));
        let mut longer = exact.to_vec();
        longer.extend_from_slice(b"anything");
        assert!(!h.verify(&longer));
    }

    #[test]
    fn des_and_plaintext_are_refused_with_file_and_line() {
        let errors =
            parse("# users\nok:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\nd:Kqk9dPWc4qk/Q\np:s3cret\n")
                .expect_err("refused");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("/etc/htpasswd:3: ") && text[0].contains("DES"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("/etc/htpasswd:4: ") && text[1].contains("allow_insecure_hashes"),
            "{}",
            text[1]
        );
        assert!(
            !text.join("").contains("Kqk9dPWc4qk"),
            "hash leaked into a message"
        );
    }

    #[test]
    fn plaintext_only_with_opt_in() {
        let opts = LoadOptions {
            allow_insecure: true,
        };
        let f = HtpasswdFile::parse(Path::new("f"), "p:s3cret\n", &opts).expect("opted in");
        assert!(f.get("p").expect("user").verify(b"s3cret"));
    }

    #[test]
    fn every_bad_line_is_reported() {
        let errors = parse("nocolon\n:$apr1$x$y\nu:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\nu:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\nv:$9$zz\nw:$2y$05$short\n")
            .expect_err("refused");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for (n, what) in [
            (1, "colon"),
            (2, "empty user"),
            (4, "twice"),
            (5, "unknown"),
            (6, "length"),
        ] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("/etc/htpasswd:{n}: ")) && l.contains(what)),
                "line {n} ({what}) missing: {lines:?}"
            );
        }
    }

    #[test]
    fn crlf_lines_are_accepted() {
        let f =
            parse("u:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\r\nv:{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=\r\n")
                .expect("valid");
        assert_eq!(f.users().collect::<Vec<_>>(), ["u", "v"]);
        assert!(f.get("u").expect("u").verify(b"s3cret"));
    }

    #[test]
    fn generated_lines_verify_and_unknown_users_have_a_dummy() {
        let line = bcrypt_line("alice", "pw", 4).expect("line");
        assert!(line.starts_with("alice:$2y$04$"));
        check(&line, "pw");
        assert!(bcrypt_line("a:b", "pw", 4).is_err());
        assert!(!dummy_hash().verify(b"registry-gate: no such use"));
    }
}
