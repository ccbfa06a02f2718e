//! The registry path classifier and the rule matcher, on arbitrary requests and patterns.
//!
//! Properties, not just "no panic":
//! - whatever `classify` accepts is a normal-form `/v2/` path whose repository is a valid name
//!   spelled in the path exactly where the registry reads it, so the gate and the registry
//!   cannot disagree on the repository;
//! - `Rules::decide` agrees with an independent implementation of the documented glob
//!   semantics (a memoised recursive matcher over the pattern text).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use registry_gate::registry_path::{classify, is_valid_repository_name, Action};
use registry_gate::rules::{Decision, Identity, RuleSpec, Rules};

/// The rules here carry no `from` list, so any client address decides the same.
const ANYWHERE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

const METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "get", "PROPFIND",
];
const USERS: [Option<&str>; 4] = [None, Some("alice"), Some("a/b"), Some("team")];

fuzz_target!(|data: &[u8]| {
    let [m, u, rest @ ..] = data else {
        return;
    };
    // Longer inputs make each run slower without reaching new code.
    if rest.len() > 512 {
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("");
    let query = lines.next().filter(|q| !q.is_empty());
    let patterns: Vec<&str> = lines.take(4).collect();
    let Ok(method) = http::Method::from_bytes(METHODS[*m as usize % METHODS.len()].as_bytes())
    else {
        return;
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
    let Ok(rules) = Rules::compile(&BTreeMap::new(), &specs) else {
        return;
    };
    let user = USERS[*u as usize % USERS.len()];
    let who = match user {
        None => Identity::Anonymous,
        Some(name) => Identity::User(name),
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
});

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

/// The README's glob semantics, read from the pattern text independently of `rules.rs`:
/// `*` within a component, a whole last `*` or any `**` across components, a whole `**/`
/// component as zero or more components, `${user}` literally (never for anonymous or a user
/// with `/`). `None` is a pattern that can match nothing.
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
