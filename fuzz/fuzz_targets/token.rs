//! Token mode's client-facing parsers: `TokenKey::verify` on arbitrary bearer tokens (which
//! must never be accepted without the key), a token the gate issued surviving the round trip
//! whatever its user and repository strings, and the `scope` parameter parser.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use registry_gate::auth::token::{parse_scopes, Grant, TokenKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
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
    let (token, issued) = key.issue(Some(user), vec![grant.clone()]);
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

    for scope in parse_scopes(text) {
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
});
