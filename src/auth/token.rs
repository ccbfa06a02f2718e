//! Bearer tokens for `[auth] mode = "token"`: the gate acts as its own token server (the
//! distribution token authentication spec), so docker can pull anonymously and log in, and
//! a password is checked once per token instead of once per request.
//!
//! Tokens are JWTs signed with HMAC-SHA256 under `[auth] token_key`. Only gates verify them
//! (the registry behind stays unconfigured), so a shared secret is enough, and replicas that
//! share the key accept each other's tokens. This module issues and verifies tokens and
//! parses scopes; it does not decide what a user may do (the caller asks the rules).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::registry_path::Action;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: cannot read the token key: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the token key must be at least 32 bytes of base64 (generate one with `head -c 32 /dev/urandom | base64`)", path.display())]
    Weak { path: std::path::PathBuf },
    #[error("{}: cannot write the generated token key: {message}", path.display())]
    Write {
        path: std::path::PathBuf,
        message: String,
    },
}

/// One repository and the actions granted on it, as the spec's `access` claim writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user; empty for anonymous.
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub access: Vec<Grant>,
    /// The access token the login used, so that revoking it ends the tokens issued for it
    /// at once rather than when they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tok: Option<String>,
    /// The `sub` of the OIDC ID token the login used, for events: `sub` above is the rule
    /// identity the issuer's `user` template made of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<String>,
}

impl Claims {
    pub fn allows(&self, repository: &str, action: Action) -> bool {
        self.access.iter().any(|g| {
            g.kind == "repository"
                && g.name == repository
                && g.actions.iter().any(|a| a == action.as_str() || a == "*")
        })
    }
}

/// A requested scope, `repository:<name>:<action>[,<action>…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Parses one `scope` parameter; a parameter may hold several scopes separated by spaces.
pub fn parse_scopes(text: &str) -> Vec<Scope> {
    text.split(' ')
        .filter_map(|one| {
            let (kind, rest) = one.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            if kind.is_empty() || name.is_empty() {
                return None;
            }
            Some(Scope {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Where token mode's token endpoint answers (the `realm` of its Bearer challenges).
pub const TOKEN_PATH: &str = "/token";

/// Signs and verifies tokens with one key.
pub struct TokenKey {
    mac: Hmac<Sha256>,
    pub service: String,
    pub ttl: Duration,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenKey {
    /// Reads the key file, creating it with 32 random bytes (mode 0600) if it is missing.
    pub fn load_or_create(
        path: &Path,
        service: String,
        ttl: Duration,
    ) -> Result<TokenKey, TokenError> {
        if !path.exists() {
            let mut secret = [0u8; 32];
            getrandom::getrandom(&mut secret).map_err(|e| TokenError::Write {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let text = format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(secret)
            );
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| TokenError::Write {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
            crate::atomic_file::write(path, text.as_bytes(), 0o600).map_err(|e| {
                TokenError::Write {
                    path: e.path,
                    message: e.source.to_string(),
                }
            })?;
        }
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| TokenError::Weak {
                path: path.to_path_buf(),
            })?;
        if secret.len() < 32 {
            return Err(TokenError::Weak {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::from_secret(&secret, service, ttl))
    }

    pub fn from_secret(secret: &[u8], service: String, ttl: Duration) -> TokenKey {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        TokenKey { mac, service, ttl }
    }

    /// A token for `user` (`None`: anonymous) carrying `access`; `access_token` names the
    /// access token the user logged in with, `oidc_subject` the ID token's `sub`, if any.
    pub fn issue(
        &self,
        user: Option<&str>,
        access_token: Option<&str>,
        oidc_subject: Option<&str>,
        access: Vec<Grant>,
    ) -> (String, Claims) {
        let now = unix_now();
        let claims = Claims {
            sub: user.unwrap_or("").to_string(),
            aud: self.service.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            access,
            tok: access_token.map(str::to_string),
            oidc: oidc_subject.map(str::to_string),
        };
        // Serialising plain strings and numbers cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.sign(signing_input.as_bytes());
        (
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            claims,
        )
    }

    /// The claims of a valid, unexpired token of this service; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        if URL_SAFE_NO_PAD.decode(header).ok()? != HEADER.as_bytes() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        // Constant-time comparison inside `verify_slice`.
        mac.verify_slice(&signature).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (claims.aud == self.service && claims.exp > unix_now()).then_some(claims)
    }

    /// A key for another use of the same secret (the browser's session cookies), so that
    /// replicas sharing the token key share it too. The NUL in the input keeps it apart from
    /// every token's signing input, which is base64 and dots.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"registry-gate derived key\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(&[7u8; 32], "registry-gate".into(), Duration::from_secs(300))
    }

    fn grant(name: &str, actions: &[&str]) -> Grant {
        Grant {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_grants() {
        let k = key();
        let (token, _) = k.issue(
            Some("alice"),
            None,
            None,
            vec![grant("team/app", &["pull", "push"])],
        );
        let claims = k.verify(&token).expect("valid");
        assert_eq!(claims.sub, "alice");
        assert!(claims.allows("team/app", Action::Push));
        assert!(!claims.allows("team/app", Action::Delete));
        assert!(!claims.allows("team/other", Action::Pull));
    }

    #[test]
    fn tampered_foreign_or_expired_tokens_are_refused() {
        let k = key();
        let (token, _) = k.issue(None, None, None, vec![grant("a", &["pull"])]);
        // Another key (another deployment) does not accept it.
        let other =
            TokenKey::from_secret(&[8u8; 32], "registry-gate".into(), Duration::from_secs(300));
        assert!(other.verify(&token).is_none());
        // Widening the payload breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = r#"{"sub":"admin","aud":"registry-gate","iat":0,"exp":99999999999,"access":[{"type":"repository","name":"a","actions":["*"]}]}"#;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged_claims),
            parts[2]
        );
        assert!(k.verify(&forged).is_none());
        // "alg":"none" tokens are not ours.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(k.verify(&none).is_none());
        // Expired.
        let short = TokenKey::from_secret(&[7u8; 32], "registry-gate".into(), Duration::ZERO);
        let (expired, _) = short.issue(Some("a"), None, None, vec![]);
        assert!(k.verify(&expired).is_none());
        // Another service name.
        let svc = TokenKey::from_secret(&[7u8; 32], "other".into(), Duration::from_secs(300));
        assert!(k.verify(&svc.issue(None, None, None, vec![]).0).is_none());
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_secret() {
        let k = key();
        assert_eq!(k.derive("ui-session"), key().derive("ui-session"));
        assert_ne!(k.derive("ui-session"), k.derive("other"));
        let other =
            TokenKey::from_secret(&[8u8; 32], "registry-gate".into(), Duration::from_secs(300));
        assert_ne!(k.derive("ui-session"), other.derive("ui-session"));
    }

    #[test]
    fn scopes_parse_with_slashes_and_several_per_parameter() {
        let s = parse_scopes("repository:team/app:pull,push registry:catalog:*");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "team/app");
        assert_eq!(s[0].actions, ["pull", "push"]);
        assert_eq!(s[1].kind, "registry");
        assert!(parse_scopes("garbage").is_empty());
    }
}
