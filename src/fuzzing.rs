//! Properties of the parsers a client or an operator feeds, as one function per parser over
//! arbitrary bytes: they panic when a property fails. The cargo-fuzz targets (`fuzz/`) and
//! the bounded run CI can afford (`tests/it/properties.rs`) both call these, so the two always
//! check the same thing. Each returns whether the parser accepted the input, so a bounded
//! run can show that its inputs reached the properties at all. Not part of the gate's
//! behaviour.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::auth::htpasswd::{HtpasswdFile, LoadOptions};
use crate::auth::token::{parse_scopes, Grant, TokenKey};
use crate::registry_path::{classify, is_valid_repository_name, Action};
use crate::rules::{Decision, RuleSpec, Rules, Subject};
use crate::server::proxy_protocol::{parse_v1, read_header};

/// The htpasswd parser never panics, and whatever it accepts verifies a password without
/// panicking. The first byte chooses the options. Slow hashes (bcrypt, SHA-crypt) are parsed
/// but not verified: a cost of 31 is a valid file and would only stall the run.
pub fn htpasswd(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return false;
    };
    let options = LoadOptions {
        allow_insecure: flags & 1 == 1,
    };
    match HtpasswdFile::parse(Path::new("fuzz"), text, &options) {
        Ok(file) => {
            for user in file.users() {
                assert!(!user.is_empty(), "an empty user name was accepted");
                assert!(!user.contains(':'), "a user name with ':' was accepted");
                let hash = file.get(user).expect("every listed user has a hash");
                if !hash.is_slow() {
                    let _ = hash.verify(b"password");
                    let _ = hash.verify(&[]);
                }
            }
            true
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error without a reason");
            false
        }
    }
}

/// The PROXY protocol header reader never panics, never reads past the header it accepts
/// (the TLS bytes behind it stay in the stream), and what it accepts from a version-1 line
/// parses the same when the line is given whole.
pub fn proxy_protocol(runtime: &tokio::runtime::Runtime, data: &[u8]) -> bool {
    runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut cursor = std::io::Cursor::new(data.to_vec());
        let result = read_header(&mut cursor).await;
        let consumed = cursor.position() as usize;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(
            &data[consumed..],
            &rest[..],
            "bytes after the header were lost"
        );
        if result.is_ok() && data.starts_with(b"PROXY ") {
            assert_eq!(parse_v1(&data[..consumed]), result, "v1 parse disagrees");
        }
        result.is_ok()
    })
}

/// Token mode's client-facing parsers: `TokenKey::verify` never accepts a bearer token that
/// nobody signed, a token the gate issued survives the round trip whatever its user and
/// repository strings (the input's first line and the rest), and what the `scope` parser
/// accepts is well-formed. Accepted: the input holds at least one scope.
pub fn token(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let key = TokenKey::from_secret(b"fuzz-secret", "registry".into(), Duration::from_secs(60));
    assert!(
        key.verify(text).is_none(),
        "a token nobody signed was accepted: {text:?}"
    );

    let (user, name) = text.split_once('\n').unwrap_or((text, "team/app"));
    let grant = Grant {
        kind: "repository".into(),
        name: name.to_string(),
        actions: vec!["pull".into()],
    };
    let (token, issued) = key.issue(Some(user), None, None, vec![grant.clone()]);
    let claims = key
        .verify(&token)
        .expect("a token the gate just issued verifies");
    assert_eq!(claims.sub, issued.sub);
    assert_eq!(claims.access, vec![grant]);
    let other = TokenKey::from_secret(b"other-secret", "registry".into(), Duration::from_secs(60));
    assert!(
        other.verify(&token).is_none(),
        "verified with the wrong key"
    );

    let scopes = parse_scopes(text);
    for scope in &scopes {
        assert!(
            !scope.kind.is_empty() && !scope.name.is_empty(),
            "{scope:?}"
        );
        assert!(!scope.kind.contains(':'), "{scope:?}");
        assert!(
            scope
                .actions
                .iter()
                .all(|a| !a.is_empty() && !a.contains(',')),
            "{scope:?}"
        );
    }
    !scopes.is_empty()
}

/// The rules here carry no `from` list, so any client address decides the same.
const ANYWHERE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

const METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "get", "PROPFIND",
];
const USERS: [Option<&str>; 4] = [None, Some("alice"), Some("a/b"), Some("team")];

/// The registry path classifier and the rule matcher, on one request and up to four patterns:
/// the first byte picks the method, the second the user, then the path, the query and the
/// patterns a line each. Whatever `classify` accepts is a normal-form `/v2/` path whose
/// repository is a valid name spelled in the path exactly where the registry reads it, so
/// the gate and the registry cannot disagree on the repository; and `Rules::decide` agrees
/// with an independent implementation of the documented glob semantics (a memoised
/// recursive matcher over the pattern text). Accepted: `classify` took the request.
pub fn classify_and_rules(data: &[u8]) -> bool {
    let [m, u, rest @ ..] = data else {
        return false;
    };
    // Longer inputs make each run slower without reaching new code.
    if rest.len() > 512 {
        return false;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return false;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("");
    let query = lines.next().filter(|q| !q.is_empty());
    let patterns: Vec<&str> = lines.take(4).collect();
    let Ok(method) = http::Method::from_bytes(METHODS[*m as usize % METHODS.len()].as_bytes())
    else {
        return false;
    };

    let classified = classify(&method, path, query);
    let mut names = vec![path.trim_start_matches('/')];
    if let Ok(class) = &classified {
        assert_normal_form(path);
        let rest = path
            .strip_prefix("/v2")
            .expect("accepted paths are under /v2");
        if let Some(repo) = class.repository {
            assert!(
                is_valid_repository_name(repo),
                "invalid name {repo:?} accepted"
            );
            let after = rest.strip_prefix('/').expect("a repository follows /v2/");
            assert!(
                after.starts_with(repo) && after[repo.len()..].starts_with('/'),
                "repository {repo:?} is not where the registry reads it in {path:?}"
            );
            names.push(repo);
        }
        if let Some(from) = &class.mount_from {
            assert!(
                is_valid_repository_name(from),
                "mount from {from:?} accepted"
            );
        }
    }

    let specs: Vec<RuleSpec> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| RuleSpec {
            users: vec!["*".into(), "anonymous".into()],
            repositories: vec![p.to_string()],
            actions: vec![if i % 2 == 0 { "pull" } else { "push" }.into()],
            from: Vec::new(),
        })
        .collect();
    let accepted = classified.is_ok();
    let Ok(rules) = Rules::compile(&BTreeMap::new(), &specs) else {
        return accepted;
    };
    let user = USERS[*u as usize % USERS.len()];
    let who = match user {
        None => Subject::Anonymous,
        Some(name) => Subject::User(name),
    };
    let reference: Vec<Option<Vec<Ref>>> =
        patterns.iter().map(|p| reference_tokens(p, user)).collect();
    for name in names {
        for action in [Action::Pull, Action::Push] {
            let expected = reference
                .iter()
                .position(|r| {
                    r.as_ref()
                        .is_some_and(|r| reference_match(r, name.as_bytes()))
                })
                .map(|i| {
                    let allowed = (i % 2 == 0) == (action == Action::Pull);
                    if allowed {
                        Decision::Allow { rule: Some(i) }
                    } else {
                        Decision::Deny { rule: Some(i) }
                    }
                })
                .unwrap_or(Decision::Deny { rule: None });
            assert_eq!(
                rules.decide(&who, ANYWHERE, name, action),
                expected,
                "patterns {patterns:?}, name {name:?}, user {user:?}, {action}"
            );
        }
    }
    accepted
}

fn assert_normal_form(path: &str) {
    assert!(path.starts_with("/v2"), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    for bad in ['%', ';', '\\', '#', '?'] {
        assert!(!path.contains(bad), "{bad:?} in accepted path {path:?}");
    }
    assert!(
        path.bytes().all(|b| b.is_ascii_graphic()),
        "control, space or non-ASCII byte in accepted path {path:?}"
    );
    assert!(
        path.split('/').all(|s| s != "." && s != ".."),
        "dot segment in accepted path {path:?}"
    );
}

/// The documented glob semantics (`proxy.toml.example`), read from the pattern text apart
/// from `rules/mod.rs`: `*` within a component, a whole last `*` or any `**` across
/// components, a whole `**/` component as zero or more components, `${user}` literally (never
/// for anonymous or a user with `/`). `None` is a pattern that can match nothing.
fn reference_tokens(pattern: &str, user: Option<&str>) -> Option<Vec<Ref>> {
    let components: Vec<&str> = pattern.split('/').collect();
    let last = components.len() - 1;
    let mut tokens = Vec::new();
    for (i, component) in components.iter().enumerate() {
        if *component == "*" && i == last {
            tokens.push(Ref::Any);
            continue;
        }
        if *component == "**" && i != last {
            tokens.push(Ref::Dirs);
            continue;
        }
        let mut rest = *component;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("${user}") {
                match user {
                    Some(u) if !u.contains('/') => tokens.extend(u.bytes().map(Ref::Byte)),
                    _ => return None,
                }
                rest = after;
            } else if let Some(after) = rest.strip_prefix("**") {
                tokens.push(Ref::Any);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('*') {
                tokens.push(Ref::Star);
                rest = after;
            } else {
                tokens.push(Ref::Byte(rest.as_bytes()[0]));
                rest = &rest[1..];
            }
        }
        if i != last {
            tokens.push(Ref::Byte(b'/'));
        }
    }
    Some(tokens)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ref {
    Byte(u8),
    /// Any run without `/`.
    Star,
    /// Any run.
    Any,
    /// Empty, or any run ending in `/`.
    Dirs,
}

/// Plain recursive matching, memoised on (token, position) so that many stars stay cheap.
fn reference_match(tokens: &[Ref], name: &[u8]) -> bool {
    fn go(t: usize, p: usize, tokens: &[Ref], name: &[u8], memo: &mut Vec<Option<bool>>) -> bool {
        let key = t * (name.len() + 1) + p;
        if let Some(known) = memo[key] {
            return known;
        }
        let result = match tokens.get(t) {
            None => p == name.len(),
            Some(Ref::Byte(b)) => name.get(p) == Some(b) && go(t + 1, p + 1, tokens, name, memo),
            Some(Ref::Star) => (p..=name.len())
                .take_while(|&q| q == p || name[q - 1] != b'/')
                .any(|q| go(t + 1, q, tokens, name, memo)),
            Some(Ref::Any) => (p..=name.len()).any(|q| go(t + 1, q, tokens, name, memo)),
            Some(Ref::Dirs) => (p..=name.len())
                .filter(|&q| q == p || name[q - 1] == b'/')
                .any(|q| go(t + 1, q, tokens, name, memo)),
        };
        memo[key] = Some(result);
        result
    }
    let mut memo = vec![None; (tokens.len() + 1) * (name.len() + 1)];
    go(0, 0, tokens, name, &mut memo)
}
