//! Classifies one registry API request (distribution v2) from its method, raw path and raw
//! query into `{ kind, action, repository, reference }` for the access rules.
//!
//! Owns: the normal-form check on the path, the endpoint table, the repository-name, tag and
//! digest grammars, and reading the `from` of a cross-repository mount. Must not touch: headers,
//! identities or rules; it never decides whether a request may pass, only what it is. Anything
//! it cannot place is a `Refusal`, and the caller denies it.
//!
//! The path is checked as received, never repaired: a path that would need decoding or dot
//! removal to read is refused, because the registry or a proxy in between might resolve it
//! differently from the gate and so reach a repository the rules never saw.
//!
//! Caller beware: the registry reads `mount` and `from` with Go's `FormValue`, which also reads
//! a request *body* sent as `application/x-www-form-urlencoded` or `multipart/form-data` (and
//! prefers it to the query). This module sees only the query, so the proxy floor must refuse those
//! content types on `/v2/` requests, or a mount source could slip past the rules.

use http::Method;

/// distribution's limit on a repository name, slashes included.
const MAX_NAME_LEN: usize = 255;
/// distribution's tag grammar allows 128 characters.
const MAX_TAG_LEN: usize = 128;
/// A digest's hex part is at least this long (the grammar's `{32,}`).
const MIN_DIGEST_HEX: usize = 32;

/// What a request does to a repository, named as in the registry token spec's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The scope word of the token spec, also the word used in `[[rules]] actions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which endpoint of the API a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v2/`
    Ping,
    /// `/v2/_catalog`
    Catalog,
    Manifest,
    Blob,
    BlobUpload,
    /// `tags/list`
    Tags,
    Referrers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified<'a> {
    pub kind: Kind,
    pub action: Action,
    /// `None` for `Ping` and `Catalog`, which address no repository.
    pub repository: Option<&'a str>,
    /// The tag or digest, or the upload's id; `None` where the endpoint has none.
    pub reference: Option<&'a str>,
    /// The source repository of a cross-repository mount (`POST …/blobs/uploads/?from=…`),
    /// decoded and validated; the caller must also require `pull` on it.
    pub mount_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request path is not in normal form ({0}); send it exactly as the registry API spells it")]
    NotNormalised(&'static str),
    #[error("this method is not allowed on this registry endpoint")]
    MethodNotAllowed,
    #[error("not a registry API path; the API lives under /v2/")]
    NotRegistryApi,
    #[error("not a registry API endpoint the gate knows")]
    UnknownEndpoint,
    #[error("invalid repository name: use lowercase path components such as team-a/app")]
    InvalidName,
}

/// Classifies a request. `path` and `query` are raw, as they arrived (no percent-decoding).
pub fn classify<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
) -> Result<Classified<'a>, Refusal> {
    check_normalised(path)?;
    let rest = path.strip_prefix("/v2").ok_or(Refusal::NotRegistryApi)?;
    let (kind, repository, reference) = match rest {
        // `/v2` without the slash is served too (the registry redirects it), and the proxy floor
        // already counts it as API traffic, so it must not fall through unclassified-but-allowed.
        "" | "/" => (Kind::Ping, None, None),
        "/_catalog" => (Kind::Catalog, None, None),
        _ => {
            let rest = rest.strip_prefix('/').ok_or(Refusal::NotRegistryApi)?;
            let route = route(rest)?;
            (route.kind, Some(route.name), route.reference)
        }
    };
    let action = action(kind, reference.is_some(), method)?;
    let mount_from = match (kind, reference) {
        (Kind::BlobUpload, None) => mount_source(query)?,
        _ => None,
    };
    Ok(Classified {
        kind,
        action,
        repository,
        reference,
        mount_from,
    })
}

/// True if `name` is a repository name by distribution's grammar: components
/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*` joined by `/`, at most 255 bytes in all.
pub fn is_valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(is_valid_component)
}

/// No API path is longer: "/v2/" + a 255-byte name + "/blobs/uploads/" + an upload id, or
/// "/manifests/" + a sha512 digest. Longer paths are refused before the (linear per marker)
/// route search, so a crafted path cannot make classification expensive.
const MAX_PATH_LEN: usize = 1024;

fn check_normalised(path: &str) -> Result<(), Refusal> {
    if path.len() > MAX_PATH_LEN {
        return Err(Refusal::UnknownEndpoint);
    }
    for b in path.bytes() {
        let why = match b {
            // Names and references never need an escape, so any escape is a disguise
            // (%2f, %2e, or an encoded letter that one hop decodes and another does not).
            b'%' => "percent-encoding",
            b';' => "; parameter",
            b'\\' => "backslash",
            0 => "NUL byte",
            0x01..=0x1f | 0x7f => "control character",
            0x80..=0xff => "non-ASCII byte",
            _ => continue,
        };
        return Err(Refusal::NotNormalised(why));
    }
    if !path.starts_with('/') {
        return Err(Refusal::NotNormalised("path does not start with /"));
    }
    if path.contains("//") {
        return Err(Refusal::NotNormalised("empty segment //"));
    }
    // Splitting on `/` catches `/./`, `/../` and a trailing `/.` or `/..` alike.
    for segment in path.split('/') {
        match segment {
            "." => return Err(Refusal::NotNormalised("dot segment /./")),
            ".." => return Err(Refusal::NotNormalised("dot-dot segment /../")),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route<'a> {
    kind: Kind,
    name: &'a str,
    reference: Option<&'a str>,
}

/// The markers that end a repository name; names contain slashes, so the name is whatever
/// precedes one of these.
const MARKERS: [&str; 4] = ["/manifests/", "/blobs/", "/tags/", "/referrers/"];

/// Places `rest` (the path after `/v2/`) by trying every split at every marker, not only the
/// last one: a name may itself contain `blobs` or `manifests` as a component, and the grammars
/// decide which split is meant.
fn route(rest: &str) -> Result<Route<'_>, Refusal> {
    let mut found: Vec<Route<'_>> = Vec::new();
    let mut bad_name = false;
    for (slash, _) in rest.match_indices('/') {
        for marker in MARKERS {
            let Some(tail) = rest[slash..].strip_prefix(marker) else {
                continue;
            };
            let Some((kind, reference)) = endpoint(marker, tail) else {
                continue;
            };
            let name = &rest[..slash];
            if is_valid_repository_name(name) {
                found.push(Route {
                    kind,
                    name,
                    reference,
                });
            } else {
                bad_name = true;
            }
        }
    }
    pick(&found, bad_name)
}

/// Exactly one reading wins. Two valid readings mean the gate and the registry could disagree
/// on the repository, so the request is refused rather than guessed at.
fn pick<'a>(found: &[Route<'a>], bad_name: bool) -> Result<Route<'a>, Refusal> {
    match found {
        [one] => Ok(*one),
        [] if bad_name => Err(Refusal::InvalidName),
        _ => Err(Refusal::UnknownEndpoint),
    }
}

/// Reads what follows a marker; `None` if it is not a valid endpoint suffix.
fn endpoint<'a>(marker: &str, tail: &'a str) -> Option<(Kind, Option<&'a str>)> {
    match marker {
        "/manifests/" => (is_tag(tail) || is_digest(tail)).then_some((Kind::Manifest, Some(tail))),
        "/blobs/" => match tail.strip_prefix("uploads/") {
            Some("") => Some((Kind::BlobUpload, None)),
            Some(uuid) => is_upload_id(uuid).then_some((Kind::BlobUpload, Some(uuid))),
            None => is_digest(tail).then_some((Kind::Blob, Some(tail))),
        },
        "/tags/" => (tail == "list").then_some((Kind::Tags, None)),
        // Anything digest-like: the gate answers the referrers API itself and says 400 to
        // a malformed digest, as the spec asks, rather than 404.
        "/referrers/" => is_digest_like(tail).then_some((Kind::Referrers, Some(tail))),
        _ => None,
    }
}

fn action(kind: Kind, has_reference: bool, method: &Method) -> Result<Action, Refusal> {
    let m = method;
    let action = match kind {
        Kind::Ping if m == Method::GET || m == Method::HEAD => Action::Pull,
        Kind::Catalog | Kind::Tags | Kind::Referrers if m == Method::GET => Action::Pull,
        Kind::Manifest | Kind::Blob if m == Method::GET || m == Method::HEAD => Action::Pull,
        Kind::Manifest if m == Method::PUT => Action::Push,
        Kind::Manifest | Kind::Blob if m == Method::DELETE => Action::Delete,
        Kind::BlobUpload if !has_reference && m == Method::POST => Action::Push,
        // Status, chunks, completion and cancel of an upload: only its pusher has one, and
        // cancelling must not need `delete`. POST on an upload id is refused: the registry would
        // start a new upload (possibly a mount) there, a path no client uses.
        Kind::BlobUpload
            if has_reference
                && [
                    Method::GET,
                    Method::HEAD,
                    Method::PATCH,
                    Method::PUT,
                    Method::DELETE,
                ]
                .contains(m) =>
        {
            Action::Push
        }
        _ => return Err(Refusal::MethodNotAllowed),
    };
    Ok(action)
}

/// The `from` of a mount, read the way the registry reads it (Go's `ParseQuery`: pairs split on
/// `&`, keys and values percent-decoded, `+` as space). Anything the two could read differently
/// (a `;`, a bad escape, `from` twice) is refused rather than resolved.
fn mount_source(query: Option<&str>) -> Result<Option<String>, Refusal> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut from = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        // Go before 1.17 also split on `;`, so `mount=x;from=y` means different things to
        // different registries.
        if pair.contains(';') {
            return Err(Refusal::UnknownEndpoint);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key).ok_or(Refusal::UnknownEndpoint)? != "from" {
            continue;
        }
        if from.is_some() {
            return Err(Refusal::UnknownEndpoint);
        }
        let value = percent_decode(value).ok_or(Refusal::InvalidName)?;
        if !is_valid_repository_name(&value) {
            return Err(Refusal::InvalidName);
        }
        from = Some(value);
    }
    Ok(from)
}

/// Query-component decoding; `None` on a malformed escape or a result that is not UTF-8.
/// Decodes one query-string key or value as Go's `url.ParseQuery` does (`%XX`, and `+` as a
/// space); `None` for a bad escape or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One path component: runs of `[a-z0-9]` joined by `.`, `_`, `__` or any number of `-`.
fn is_valid_component(component: &str) -> bool {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let run = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == run {
            return false; // empty component, or one that starts or ends with a separator
        }
        if i == bytes.len() {
            return true;
        }
        let sep = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        match &component[sep..i] {
            "." | "_" | "__" => {}
            dashes if dashes.bytes().all(|b| b == b'-') => {}
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`, with `\w` as ASCII word characters.
pub fn is_tag(s: &str) -> bool {
    match s.as_bytes() {
        [first, rest @ ..] => {
            s.len() <= MAX_TAG_LEN
                && (first.is_ascii_alphanumeric() || *first == b'_')
                && rest.iter().all(|&b| tag_byte(b))
        }
        [] => false,
    }
}

/// Whether `s` can be part of a tag: as long as one at most, and only its characters (a tag
/// filter that is not matches nothing).
pub fn is_tag_fragment(s: &str) -> bool {
    s.len() <= MAX_TAG_LEN && s.bytes().all(tag_byte)
}

/// A byte a tag may hold after its first: `[A-Za-z0-9_.-]`.
fn tag_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.-".contains(&b)
}

/// `algorithm:hex`, algorithm `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`, hex 32+.
pub fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= MIN_DIGEST_HEX && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What could be meant as a digest: 1 to 255 of the characters digests are made of.
fn is_digest_like(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'+' | b'=' | b'-')
        })
}

/// The registry's route for upload ids: `[a-zA-Z0-9-_.=]+`.
fn is_upload_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn m(s: &str) -> Method {
        Method::from_bytes(s.as_bytes()).unwrap()
    }

    /// Rows are `(method, path, "Kind action repository reference")`; `{D}` stands for a digest.
    #[test]
    fn endpoint_table() {
        let cases = [
            ("GET", "/v2/", "Ping pull - -"),
            ("HEAD", "/v2/", "Ping pull - -"),
            ("GET", "/v2", "Ping pull - -"),
            ("GET", "/v2/_catalog", "Catalog pull - -"),
            ("GET", "/v2/a/manifests/latest", "Manifest pull a latest"),
            (
                "HEAD",
                "/v2/a/manifests/v1.0-rc_1",
                "Manifest pull a v1.0-rc_1",
            ),
            (
                "PUT",
                "/v2/team-a/app/manifests/1",
                "Manifest push team-a/app 1",
            ),
            ("DELETE", "/v2/a/manifests/{D}", "Manifest delete a {D}"),
            ("GET", "/v2/a/b/blobs/{D}", "Blob pull a/b {D}"),
            ("HEAD", "/v2/a/b/blobs/{D}", "Blob pull a/b {D}"),
            ("DELETE", "/v2/a/b/blobs/{D}", "Blob delete a/b {D}"),
            ("POST", "/v2/a/blobs/uploads/", "BlobUpload push a -"),
            (
                "GET",
                "/v2/a/blobs/uploads/u-1_2.3=",
                "BlobUpload push a u-1_2.3=",
            ),
            ("HEAD", "/v2/a/blobs/uploads/u1", "BlobUpload push a u1"),
            ("PATCH", "/v2/a/blobs/uploads/u1", "BlobUpload push a u1"),
            ("PUT", "/v2/a/blobs/uploads/u1", "BlobUpload push a u1"),
            ("DELETE", "/v2/a/blobs/uploads/u1", "BlobUpload push a u1"),
            (
                "GET",
                "/v2/a.b/c__d/e---f/tags/list",
                "Tags pull a.b/c__d/e---f -",
            ),
            ("GET", "/v2/x/referrers/{D}", "Referrers pull x {D}"),
            ("GET", "/v2/x/referrers/latest", "Referrers pull x latest"),
            // Names may contain the marker words; the grammars pick the one valid split.
            ("GET", "/v2/blobs/blobs/{D}", "Blob pull blobs {D}"),
            (
                "GET",
                "/v2/a/manifests/b/manifests/c",
                "Manifest pull a/manifests/b c",
            ),
            (
                "POST",
                "/v2/a/blobs/b/blobs/uploads/",
                "BlobUpload push a/blobs/b -",
            ),
            ("GET", "/v2/tags/list/tags/list", "Tags pull tags/list -"),
        ];
        for (method, path, want) in cases {
            let path = path.replace("{D}", D);
            let c = classify(&m(method), &path, None)
                .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
            let got = format!(
                "{:?} {} {} {}",
                c.kind,
                c.action,
                c.repository.unwrap_or("-"),
                c.reference.unwrap_or("-")
            );
            assert_eq!(got, want.replace("{D}", D), "{method} {path}");
        }
    }

    #[test]
    fn rejections() {
        use Refusal::*;
        let nn = |why| NotNormalised(why);
        let long_name = format!("/v2/{}/manifests/x", "a".repeat(256));
        let cases: &[(&str, &str, Refusal)] = &[
            ("GET", "/v2//a/manifests/x", nn("empty segment //")),
            ("GET", "/v2/a/../b/manifests/x", nn("dot-dot segment /../")),
            ("GET", "/v2/./a/manifests/x", nn("dot segment /./")),
            ("GET", "/v2/a/manifests/..", nn("dot-dot segment /../")),
            ("GET", "/v2/a/manifests/.", nn("dot segment /./")),
            (
                "POST",
                "/v2/a/blobs/uploads/../../b/blobs/uploads/",
                nn("dot-dot segment /../"),
            ),
            ("GET", "/v2/a%2fb/manifests/x", nn("percent-encoding")),
            ("GET", "/v2/a/manifests/%6catest", nn("percent-encoding")),
            ("GET", "/v2/%2e%2e/manifests/x", nn("percent-encoding")),
            ("GET", "/v2/a/manifests/x;y", nn("; parameter")),
            // The registry answers 500 to a reference that is neither tag nor digest; the
            // gate's 400 is documented in docs/security.md's table of the gate's own answers.
            (
                "GET",
                "/v2/a/manifests/sha256:totallywrong",
                UnknownEndpoint,
            ),
            ("GET", "/v2/a\\b/manifests/x", nn("backslash")),
            ("GET", "/v2/a\0/manifests/x", nn("NUL byte")),
            ("GET", "/v2/a\t/manifests/x", nn("control character")),
            ("GET", "/v2/ä/manifests/x", nn("non-ASCII byte")),
            ("GET", "v2/", nn("path does not start with /")),
            ("GET", "/V2/", NotRegistryApi),
            ("GET", "/v2x/", NotRegistryApi),
            ("GET", "/", NotRegistryApi),
            ("GET", "/admin", NotRegistryApi),
            ("get", "/v2/", MethodNotAllowed),
            ("get", "/v2/a/manifests/x", MethodNotAllowed),
            ("Delete", "/v2/a/manifests/x", MethodNotAllowed),
            ("POST", "/v2/", MethodNotAllowed),
            ("HEAD", "/v2/_catalog", MethodNotAllowed),
            ("PATCH", "/v2/a/manifests/x", MethodNotAllowed),
            ("PUT", &format!("/v2/a/blobs/{D}"), MethodNotAllowed),
            ("GET", "/v2/a/blobs/uploads/", MethodNotAllowed),
            ("POST", "/v2/a/blobs/uploads/u1", MethodNotAllowed),
            ("DELETE", "/v2/a/tags/list", MethodNotAllowed),
            ("GET", "/v2/_catalog/", UnknownEndpoint),
            ("GET", "/v2/a", UnknownEndpoint),
            ("GET", "/v2/a/manifests/", UnknownEndpoint),
            ("GET", "/v2/a/manifests/-x", UnknownEndpoint),
            ("GET", "/v2/a/manifests/x/y", UnknownEndpoint),
            ("GET", "/v2/a/blobs/latest", UnknownEndpoint),
            ("GET", "/v2/a/blobs/sha256:abc", UnknownEndpoint),
            ("GET", "/v2/a/tags/list/", UnknownEndpoint),
            ("GET", "/v2/a/referrers/x/y", UnknownEndpoint),
            ("GET", "/v2/a/referrers/x!y", UnknownEndpoint),
            ("GET", "/v2/A/manifests/x", InvalidName),
            ("GET", "/v2/a-/manifests/x", InvalidName),
            ("GET", "/v2/a..b/manifests/x", InvalidName),
            ("GET", "/v2/a___b/manifests/x", InvalidName),
            ("GET", &long_name, InvalidName),
        ];
        for (method, path, want) in cases {
            assert_eq!(
                classify(&m(method), path, None).as_ref(),
                Err(want),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn ambiguous_split_is_refused() {
        let a = Route {
            kind: Kind::Blob,
            name: "a",
            reference: Some(D),
        };
        let b = Route {
            name: "a/blobs/b",
            ..a
        };
        assert_eq!(pick(&[a], false), Ok(a));
        assert_eq!(pick(&[a, b], false), Err(Refusal::UnknownEndpoint));
        assert_eq!(pick(&[a, b], true), Err(Refusal::UnknownEndpoint));
        assert_eq!(pick(&[], true), Err(Refusal::InvalidName));
        assert_eq!(pick(&[], false), Err(Refusal::UnknownEndpoint));
    }

    #[test]
    fn mount_from() {
        let post = |q: &str| {
            classify(&Method::POST, "/v2/mine/blobs/uploads/", Some(q)).map(|c| c.mount_from)
        };
        let some = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(
            post(&format!("mount={D}&from=team-a/app")),
            some("team-a/app")
        );
        assert_eq!(
            post(&format!("from=team-a%2Fapp&mount={D}")),
            some("team-a/app")
        );
        assert_eq!(
            post("fr%6Fm=x/y"),
            some("x/y"),
            "the registry decodes keys too"
        );
        assert_eq!(post("digest=sha256:00"), Ok(None));
        assert_eq!(post(""), Ok(None));
        assert_eq!(post("from=A"), Err(Refusal::InvalidName));
        assert_eq!(post("from=a%2F..%2Fb"), Err(Refusal::InvalidName));
        assert_eq!(post("from=a+b"), Err(Refusal::InvalidName));
        assert_eq!(post("from=a%zz"), Err(Refusal::InvalidName));
        assert_eq!(post("from="), Err(Refusal::InvalidName));
        assert_eq!(post("from=a&from=b"), Err(Refusal::UnknownEndpoint));
        assert_eq!(post("mount=x;from=b"), Err(Refusal::UnknownEndpoint));
        assert_eq!(post("fr%zzom=b"), Err(Refusal::UnknownEndpoint));
        // Only the upload-start endpoint mounts; elsewhere the query is not read.
        let put = classify(&Method::PUT, "/v2/a/blobs/uploads/u1", Some("from=A")).unwrap();
        assert_eq!(put.mount_from, None);
    }

    #[test]
    fn name_grammar() {
        for good in [
            "a", "a0/b1", "a.b", "a_b", "a__b", "a-b", "a----b", "0", "a/b/c/d",
        ] {
            assert!(is_valid_repository_name(good), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".a", "a.", "a._b", "a__-b", "a:b", "a b", "aB",
        ] {
            assert!(!is_valid_repository_name(bad), "{bad}");
        }
        assert!(is_valid_repository_name(&"a".repeat(255)));
        assert!(is_tag(&"a".repeat(128)) && !is_tag(&"a".repeat(129)));
        assert!(is_digest("sha256+b64u.x:0123456789abcdef0123456789ABCDEF"));
        assert!(!is_digest("sha256:0123456789abcdef0123456789abcde"));
        assert!(!is_digest("1sha:0123456789abcdef0123456789abcdef"));
        assert!(!is_digest("sha--256:0123456789abcdef0123456789abcdef"));
    }
}
