//! The browser's session: a cookie that carries who logged in (the user, the access token
//! they used if any), when the session ends and a random session id, signed with
//! HMAC-SHA256; and the CSRF token derived from that id, which every form that changes
//! something must send back.
//!
//! The cookie is the whole session: the gate keeps no table of open sessions, so replicas
//! sharing the key share sessions. What it keeps is the short list of sessions ended by a
//! logout before their time (`EndedSessions`), so a cookie copied before the logout is
//! refused afterwards. This module signs, verifies, formats and remembers those ends;
//! whether the named user may still log in is `caller::from_session`'s question.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a login lasts. A working day: long enough not to annoy, short enough that a
/// cookie left on a shared machine dies the same day. A logout ends it earlier
/// (`EndedSessions`), as do a new password, removing the user or revoking the access token
/// it names.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Logged-out sessions remembered at once (about 100 bytes each: 1.6 MiB at most). Each is
/// kept only until its cookie would have expired anyway, so this many logouts within
/// `SESSION_TTL` fill it: far beyond a team's, and each needs a login first. When it is full
/// the oldest is forgotten and, in its place, every session that expires no later than it
/// is refused too (`EndedSessions::floor`): a flood of logouts can end sessions early, never
/// bring an ended one back.
pub const MAX_ENDED_SESSIONS: usize = 16 * 1024;

/// The cookie's name. Not `__Host-`: that prefix demands `Path=/`, and the cookie is kept to
/// the browser's path so it is never sent with registry API requests.
pub const COOKIE_NAME: &str = "registry_gate_session";

/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// Marks the cookie format, so a future change can refuse old cookies cleanly.
const VERSION: &str = "v1";
/// Domain separation: the same key signs cookies and derives CSRF tokens.
const COOKIE_CONTEXT: &[u8] = b"session\0";
const CSRF_CONTEXT: &[u8] = b"csrf\0";
/// A cookie larger than this is not one of ours; refused before decoding.
const MAX_COOKIE_LEN: usize = 2048;

/// One login, as the cookie carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user name as logged in (`token:NAME` for a robot access token).
    #[serde(rename = "u")]
    pub user: String,
    /// The access token the login used.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Unix seconds after which the cookie is refused.
    #[serde(rename = "e")]
    pub expires: u64,
    /// Random, per login: keys the CSRF token.
    #[serde(rename = "i")]
    pub id: String,
    /// The stamp of the user's password when they logged in
    /// (`Authenticator::password_stamp`): a new password ends the session.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
}

impl Session {
    /// A new session for `user` from `now` (unix seconds), with a fresh random id.
    pub fn start(
        user: String,
        token: Option<String>,
        stamp: Option<String>,
        now: u64,
    ) -> Result<Session, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)?;
        Ok(Session {
            user,
            token,
            expires: now + SESSION_TTL.as_secs(),
            id: URL_SAFE_NO_PAD.encode(id),
            stamp,
        })
    }
}

/// Signs and verifies session cookies and CSRF tokens.
pub struct SessionKey {
    mac: Hmac<Sha256>,
}

impl SessionKey {
    pub fn new(secret: &[u8; 32]) -> SessionKey {
        // HMAC takes keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        SessionKey { mac }
    }

    /// The cookie value: `v1.<base64url JSON>.<base64url MAC>`.
    pub fn seal(&self, session: &Session) -> String {
        // Serialising strings and a number cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).unwrap_or_default());
        let signed = format!("{VERSION}.{payload}");
        let tag = self.tag(COOKIE_CONTEXT, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session of a cookie value this key signed and that has not expired at `now`.
    pub fn open(&self, value: &str, now: u64) -> Option<Session> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let (signed, tag) = value.rsplit_once('.')?;
        let (version, payload) = signed.split_once('.')?;
        if version != VERSION {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac.clone();
        mac.update(COOKIE_CONTEXT);
        mac.update(signed.as_bytes());
        // Constant-time comparison inside `verify_slice`.
        mac.verify_slice(&tag).ok()?;
        let session: Session =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        (session.expires > now).then_some(session)
    }

    /// The CSRF token of a session: an HMAC of its id, so it needs no storage, differs per
    /// login, and cannot be made without the key.
    pub fn csrf_token(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(CSRF_CONTEXT, session.id.as_bytes()))
    }

    /// Whether `presented` is the session's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, session: &Session, presented: &str) -> bool {
        let Ok(presented) = URL_SAFE_NO_PAD.decode(presented) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(CSRF_CONTEXT);
        mac.update(session.id.as_bytes());
        mac.verify_slice(&presented).is_ok()
    }

    fn tag(&self, context: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(context);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

/// The sessions a logout ended before their expiry, in this process. The cookie itself
/// cannot be taken back: a copy made before the logout (a shared machine, a proxy log, a
/// stolen backup) would otherwise work until it expires.
#[derive(Default)]
pub struct EndedSessions {
    state: Mutex<Ended>,
}

#[derive(Default)]
struct Ended {
    /// Session id to the unix second its cookie expires.
    ids: HashMap<String, u64>,
    /// Every session expiring at or before this second is ended: what forgetting ended
    /// sessions to stay within `MAX_ENDED_SESSIONS` costs, instead of their coming back.
    floor: u64,
}

impl EndedSessions {
    /// Ends `session` at `now` (unix seconds); it is refused from then on.
    pub fn end(&self, session: &Session, now: u64) {
        self.end_within(session, now, MAX_ENDED_SESSIONS);
    }

    fn end_within(&self, session: &Session, now: u64, capacity: usize) {
        let mut ended = self.lock();
        if ended.ids.len() >= capacity {
            // Expired cookies are refused by their own expiry: nothing to remember.
            ended.ids.retain(|_, expires| *expires > now);
        }
        while ended.ids.len() >= capacity.max(1) {
            let Some((id, expires)) = ended
                .ids
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, expires)| (id.clone(), *expires))
            else {
                break;
            };
            ended.ids.remove(&id);
            ended.floor = ended.floor.max(expires);
        }
        ended.ids.insert(session.id.clone(), session.expires);
    }

    /// Whether a logout ended `session`.
    pub fn is_ended(&self, session: &Session) -> bool {
        let ended = self.lock();
        session.expires <= ended.floor || ended.ids.contains_key(&session.id)
    }

    /// Every change is one insert, remove or retain: a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Ended> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `Set-Cookie` for a new session: only over HTTPS, never to scripts, never on a request
/// another site started, and only under the browser's path.
pub fn set_cookie(value: &str, path: &str) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path={path}; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie(path: &str) -> String {
    format!("{COOKIE_NAME}=; Path={path}; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// The session cookie's value among the request's `Cookie` headers (HTTP/2 may send several).
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME && !value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NOW: u64 = 1_700_000_000;

    fn key(byte: u8) -> SessionKey {
        SessionKey::new(&[byte; 32])
    }

    fn session() -> Session {
        Session::start("alice".into(), Some("ci".into()), None, NOW).expect("random id")
    }

    #[test]
    fn a_sealed_session_opens_with_its_key_until_it_expires() {
        let k = key(1);
        let s = session();
        let cookie = k.seal(&s);
        assert_eq!(k.open(&cookie, NOW), Some(s.clone()));
        assert_eq!(k.open(&cookie, s.expires - 1), Some(s.clone()));
        assert_eq!(k.open(&cookie, s.expires), None, "expired at its end");
        assert_eq!(s.expires, NOW + SESSION_TTL.as_secs());
        // Cookie-safe characters only: base64url and dots.
        assert!(cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
    }

    #[test]
    fn tampered_or_foreign_cookies_are_refused() {
        let k = key(1);
        let s = session();
        let cookie = k.seal(&s);
        assert_eq!(key(2).open(&cookie, NOW), None, "another key");
        // Another user, or a later expiry, in the payload: the MAC no longer matches.
        let (_, tag) = cookie.rsplit_once('.').expect("tag");
        for forged in [
            Session {
                user: "admin".into(),
                ..s.clone()
            },
            Session {
                expires: u64::MAX,
                ..s.clone()
            },
            Session {
                token: None,
                ..s.clone()
            },
        ] {
            let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
            assert_eq!(k.open(&format!("v1.{payload}.{tag}"), NOW), None);
        }
        // Flipping one character of the tag, dropping it, another version, garbage.
        let mut flipped = cookie.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        let unsigned = cookie.rsplit_once('.').expect("tag").0.to_string();
        for bad in [
            flipped.as_str(),
            unsigned.as_str(),
            &cookie.replacen("v1.", "v2.", 1),
            "",
            "v1..",
            "...",
            &"a".repeat(5000),
        ] {
            assert_eq!(k.open(bad, NOW), None, "{bad:?} accepted");
        }
        // A cookie signed for another purpose (a CSRF token) is not a session.
        assert_eq!(k.open(&k.csrf_token(&s), NOW), None);
    }

    #[test]
    fn csrf_tokens_belong_to_one_session_and_key() {
        let k = key(1);
        let s = session();
        let t = k.csrf_token(&s);
        assert!(k.csrf_ok(&s, &t));
        let other = session();
        assert_ne!(s.id, other.id, "session ids are random");
        assert!(!k.csrf_ok(&other, &t), "another session's token");
        assert!(!key(2).csrf_ok(&s, &t), "another key");
        assert!(!k.csrf_ok(&s, ""));
        assert!(!k.csrf_ok(&s, "not base64 !"));
        assert!(!k.csrf_ok(&s, &t[..t.len() - 1]));
        // The session's own cookie tag is not its CSRF token.
        let cookie = k.seal(&s);
        assert!(!k.csrf_ok(&s, cookie.rsplit_once('.').expect("tag").1));
    }

    #[test]
    fn an_ended_session_stays_ended_and_a_full_list_ends_older_ones_too() {
        let ended = EndedSessions::default();
        let s = session();
        let other = session();
        assert!(!ended.is_ended(&s));
        ended.end(&s, NOW);
        assert!(ended.is_ended(&s));
        assert!(!ended.is_ended(&other), "another login is not ended");

        // Full (capacity 3 here): the oldest is forgotten, and with it every session that
        // expires no later; never is an ended one taken back.
        let ended = EndedSessions::default();
        let at = |minute: u64| {
            Session::start("alice".into(), None, None, NOW + minute * 60).expect("random id")
        };
        let (a, b, c, d) = (at(0), at(1), at(2), at(3));
        let (older, newer) = (at(0), at(2));
        for s in [&a, &b, &c] {
            ended.end_within(s, NOW, 3);
        }
        ended.end_within(&d, NOW, 3);
        for s in [&a, &b, &c, &d, &older] {
            assert!(ended.is_ended(s), "{} ended", s.expires - NOW);
        }
        assert!(!ended.is_ended(&newer), "a later login is not ended");
        assert!(ended.lock().ids.len() <= 3);

        // Expired entries make room first, without raising the floor.
        let later = NOW + SESSION_TTL.as_secs() + 600;
        let e = Session::start("alice".into(), None, None, later).expect("random id");
        ended.end_within(&e, later, 3);
        assert!(ended.is_ended(&e));
        assert!(!ended.is_ended(&Session::start("bob".into(), None, None, later).expect("id")));
    }

    #[test]
    fn cookies_carry_every_protective_flag() {
        let c = set_cookie("v1.x.y", "/ui/");
        for flag in [
            "registry_gate_session=v1.x.y",
            "Path=/ui/",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Max-Age=28800",
        ] {
            assert!(c.contains(flag), "{flag} missing from {c}");
        }
        let gone = clear_cookie("/ui/");
        assert!(gone.contains("Max-Age=0") && gone.starts_with("registry_gate_session=;"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_value(&h), None);
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(cookie_value(&h), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("x=registry_gate_session; registry_gate_session=v1.a.b"),
        );
        assert_eq!(cookie_value(&h), Some("v1.a.b"));
        let mut empty = HeaderMap::new();
        empty.insert(
            header::COOKIE,
            HeaderValue::from_static("registry_gate_session="),
        );
        assert_eq!(cookie_value(&empty), None);
    }
}
