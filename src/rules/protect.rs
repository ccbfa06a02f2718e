//! Protected tags (`[[protect]]`): which tags of which repositories may not be moved or
//! deleted, and who still may.
//!
//! Owns: compiling `[[protect]]` (already deserialized) with the rules' own user lists and
//! repository globs, the tag globs, the one question "does a protection guard this tag
//! against this caller", and the words for why a write is refused (`Refusal`). Must not touch: requests, the registry, digests. Whether a write
//! would really move a tag is found out by the proxy (`proxy/protect.rs`), which asks here
//! only who and what is protected.
//!
//! Semantics, as docs/access.md gives them:
//! - A protection covers a tag when one of its `repositories` globs (the `[[rules]]` syntax,
//!   without `${user}`) matches the repository and one of its `tags` globs matches the tag.
//! - `users` (optional, the `[[rules]]` user syntax): who may still move and delete the tags
//!   it covers. Absent or empty: nobody.
//! - Several protections may cover one tag; each must exempt the caller, so a tag is as
//!   protected as the strictest protection covering it. `protect[i]` counts from 0 in file
//!   order, in messages and the access log.
//! - Tag globs: `*` is any run of tag characters, empty included; everything else is literal
//!   and case-sensitive, as tags are. A pattern no tag can match (a character outside
//!   `A-Z a-z 0-9 _ . -`, a leading `.` or `-`, more than 128 characters) is an error.

use std::collections::BTreeMap;

use super::{
    advance_literal, compile_repositories, compile_users, Pattern, RulesError, Subject, UserMatcher,
};

/// Why `[[protect]]` refuses a write: what it would have done to a protected tag. The
/// request phase (`proxy/protect.rs`) decides which; it is a `GateError::Protected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A manifest push would point the tag at another manifest.
    Move,
    /// A delete names the tag.
    Delete,
    /// A delete by digest would take the manifest the tag points to.
    DeleteTagged,
    /// A delete by digest would take one platform of the index a protected tag points to.
    DeleteChild,
    /// A blob delete in a repository with protected tags: it would break a protected image
    /// without touching its tag.
    DeleteBlob,
    /// A manifest write with a query (`?tag=`) where protected tags are: a registry that
    /// honours it would move a tag the gate never saw named.
    Query,
}

impl Refusal {
    /// The metrics label and the access log's reason.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Move => "move",
            Refusal::Delete => "delete",
            Refusal::DeleteTagged => "delete_tagged",
            Refusal::DeleteChild => "delete_child",
            Refusal::DeleteBlob => "delete_blob",
            Refusal::Query => "query",
        }
    }
}

/// distribution's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
const MAX_TAG_LEN: usize = 128;

/// One `[[protect]]` table as deserialized, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectSpec {
    pub repositories: Vec<String>,
    pub tags: Vec<String>,
    /// Who may still move and delete the tags; empty means nobody.
    pub users: Vec<String>,
}

/// The compiled `[[protect]]` tables; empty when there are none.
#[derive(Debug, Clone, Default)]
pub struct Protections(Vec<Protection>);

#[derive(Debug, Clone)]
struct Protection {
    repositories: Vec<Pattern>,
    tags: Vec<TagPattern>,
    users: Vec<UserMatcher>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagToken {
    Literal(String),
    Star,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TagPattern(Vec<TagToken>);

impl Protections {
    /// Validates and compiles, reporting every error with its key (`protect[1].tags`).
    /// `groups` must have been checked already (`Rules::compile` or `check_groups`).
    pub fn compile(
        groups: &BTreeMap<String, Vec<String>>,
        specs: &[ProtectSpec],
    ) -> Result<Protections, Vec<RulesError>> {
        let mut errors = Vec::new();
        let compiled = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| compile_protection(i, spec, groups, &mut errors))
            .collect();
        if errors.is_empty() {
            Ok(Protections(compiled))
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The index of the first protection that covers `tag` of `repository` and does not
    /// exempt `who`; `None` when `who` may move and delete that tag.
    pub fn guarding(&self, who: &Subject, repository: &str, tag: &str) -> Option<usize> {
        self.0.iter().position(|p| {
            p.covers_repository(repository)
                && p.tags.iter().any(|t| t.matches(tag))
                && !p.exempts(who)
        })
    }

    /// Whether any protection covers `repository`, whoever asks.
    pub fn covers(&self, repository: &str) -> bool {
        self.0.iter().any(|p| p.covers_repository(repository))
    }

    /// Whether any protection of `repository` binds `who`. When none does, no tag there is
    /// protected against them and a delete by digest needs no look at the tags.
    pub fn binds(&self, who: &Subject, repository: &str) -> bool {
        self.binding(who, repository).is_some()
    }

    /// The index of the first protection of `repository` that binds `who`.
    pub fn binding(&self, who: &Subject, repository: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|p| p.covers_repository(repository) && !p.exempts(who))
    }
}

impl Protection {
    fn covers_repository(&self, repository: &str) -> bool {
        // `${user}` is refused at compile time: a protection is the same for every caller.
        self.repositories
            .iter()
            .any(|p| p.matches(repository, None))
    }

    fn exempts(&self, who: &Subject) -> bool {
        self.users.iter().any(|u| u.matches(who))
    }
}

fn compile_protection(
    i: usize,
    spec: &ProtectSpec,
    groups: &BTreeMap<String, Vec<String>>,
    errors: &mut Vec<RulesError>,
) -> Protection {
    let at = |field: &str| format!("protect[{i}].{field}");
    for (field, list, what) in [
        ("repositories", &spec.repositories, "repository pattern"),
        ("tags", &spec.tags, "tag pattern"),
    ] {
        if list.is_empty() {
            errors.push(RulesError::EmptyList {
                at: at(field),
                what,
            });
        }
    }
    let users = compile_users(&at("users"), &spec.users, groups, errors);
    let (per_user, shared): (Vec<String>, Vec<String>) = spec
        .repositories
        .iter()
        .cloned()
        .partition(|p| p.contains("${user}"));
    for pattern in per_user {
        errors.push(RulesError::BadPattern {
            at: at("repositories"),
            value: pattern,
            fix: "${user} cannot be used here: a protection is the same whoever pushes",
        });
    }
    let repositories = compile_repositories(&at("repositories"), &shared, errors);
    let mut tags = Vec::new();
    for pattern in &spec.tags {
        match TagPattern::parse(pattern) {
            Ok(p) => tags.push(p),
            Err(fix) => errors.push(RulesError::BadTagPattern {
                at: at("tags"),
                value: pattern.clone(),
                fix,
            }),
        }
    }
    Protection {
        repositories,
        tags,
        users,
    }
}

impl TagPattern {
    fn parse(pattern: &str) -> Result<TagPattern, &'static str> {
        if pattern.is_empty() {
            return Err("empty pattern; write a tag like v1.2.3 or a glob like v*");
        }
        let literal_len = pattern.bytes().filter(|&b| b != b'*').count();
        if literal_len > MAX_TAG_LEN {
            return Err("longer than a tag can be (128 characters), so it can never match");
        }
        if pattern.starts_with(['.', '-']) {
            return Err("tags start with a letter, a digit or _, so this can never match");
        }
        let mut tokens = Vec::new();
        for c in pattern.chars() {
            match c {
                '*' => {
                    // `**` means no more than `*` within a tag.
                    if tokens.last() != Some(&TagToken::Star) {
                        tokens.push(TagToken::Star);
                    }
                }
                _ if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => {
                    match tokens.last_mut() {
                        Some(TagToken::Literal(text)) => text.push(c),
                        _ => tokens.push(TagToken::Literal(c.to_string())),
                    }
                }
                _ => {
                    return Err(
                        "only A-Z a-z 0-9 _ . - are literal and only * is special; ? [ ] { } are not globs here",
                    )
                }
            }
        }
        Ok(TagPattern(tokens))
    }

    /// Reachable positions, as the repository globs do: linear per token, whatever the tag.
    fn matches(&self, tag: &str) -> bool {
        let tag = tag.as_bytes();
        let mut reachable = vec![false; tag.len() + 1];
        reachable[0] = true;
        for token in &self.0 {
            let mut next = vec![false; tag.len() + 1];
            match token {
                TagToken::Literal(text) => advance_literal(tag, &reachable, &mut next, text),
                TagToken::Star => {
                    if let Some(first) = reachable.iter().position(|&r| r) {
                        next[first..].fill(true);
                    }
                }
            }
            reachable = next;
        }
        reachable[tag.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn spec(repositories: &[&str], tags: &[&str], users: &[&str]) -> ProtectSpec {
        ProtectSpec {
            repositories: own(repositories),
            tags: own(tags),
            users: own(users),
        }
    }

    fn groups() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("admins".into(), vec!["alice".into()])])
    }

    #[test]
    fn tag_globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("v*", "v1", true),
            ("v*", "v", true),
            ("v*", "v1.2.3-rc.1", true),
            ("v*", "V1", false), // tags are case-sensitive
            ("v*", "latest", false),
            ("v*", "xv1", false),
            ("*", "latest", true),
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("latest", "Latest", false),
            ("release-*-final", "release-2024-final", true),
            ("release-*-final", "release--final", true),
            ("release-*-final", "release-2024", false),
            ("*.*.*", "1.2.3", true),
            ("*.*.*", "1.2", false),
            ("v**", "v1", true),
            ("_*", "_x", true),
        ];
        for &(pattern, tag, want) in cases {
            let p = TagPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(p.matches(tag), want, "{pattern} ~ {tag}");
        }
        // Many stars against the longest tag stay cheap (reachability, not backtracking).
        let tag = format!("{}b", "a".repeat(127));
        let stars = TagPattern::parse("*a*a*a*a*a*a*a*a*a*a*a*a*c").expect("valid");
        assert!(!stars.matches(&tag));
    }

    #[test]
    fn bad_tag_patterns_are_refused_with_the_key() {
        let long = "a".repeat(129);
        let errors = Protections::compile(
            &groups(),
            &[spec(
                &["team/*"],
                &["", "v?", "-rc*", ".x", "v[0-9]", "ä", &long],
                &[],
            )],
        )
        .expect_err("invalid");
        assert_eq!(errors.len(), 7, "{errors:#?}");
        for e in &errors {
            assert!(
                e.to_string()
                    .starts_with("protect[0].tags: bad tag pattern"),
                "{e}"
            );
        }
        // 128 characters is a tag; stars do not count against the length.
        let longest = format!("*{}*", "a".repeat(128));
        assert!(Protections::compile(&groups(), &[spec(&["*"], &[&longest], &[])]).is_ok());
    }

    #[test]
    fn other_mistakes_name_their_key() {
        let errors = Protections::compile(
            &groups(),
            &[
                spec(&[], &["v*"], &["@ops"]),
                spec(&["${user}/*", "A/b"], &[], &["team-*"]),
            ],
        )
        .expect_err("invalid");
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            "protect[0].repositories: the list is empty",
            "protect[0].users: unknown group \"@ops\"; define it under [groups] (defined: @admins)",
            "protect[1].tags: the list is empty",
            "protect[1].users: bad user \"team-*\"",
            "protect[1].repositories: bad repository pattern \"${user}/*\"",
            "protect[1].repositories: bad repository pattern \"A/b\"",
        ];
        assert_eq!(messages.len(), expect.len(), "{messages:#?}");
        for prefix in expect {
            assert!(
                messages.iter().any(|m| m.starts_with(prefix)),
                "missing {prefix:?} in {messages:#?}"
            );
        }
    }

    #[test]
    fn who_is_guarded() {
        let protections = Protections::compile(
            &groups(),
            &[
                spec(&["*"], &["v*"], &["release-bot", "@admins"]),
                spec(&["prod/*"], &["stable", "v*"], &[]),
            ],
        )
        .expect("valid");
        let bot = Subject::User("release-bot");
        let alice = Subject::User("alice");
        let bob = Subject::User("bob");
        let anon = Subject::Anonymous;
        let cases: &[(Subject, &str, &str, Option<usize>)] = &[
            (bob, "team/app", "v1", Some(0)),
            (anon, "team/app", "v1", Some(0)),
            (bot, "team/app", "v1", None),
            (alice, "team/app", "v1", None), // via @admins
            (bob, "team/app", "latest", None),
            (bob, "team/app", "stable", None),
            (bob, "prod/app", "stable", Some(1)),
            // Each covering protection must exempt the caller: the second exempts nobody.
            (bot, "prod/app", "v2", Some(1)),
            (bot, "prod/app", "latest", None),
        ];
        for (who, repo, tag, want) in cases {
            assert_eq!(
                protections.guarding(who, repo, tag),
                *want,
                "{who:?} {repo}:{tag}"
            );
        }
        assert!(protections.binds(&bob, "team/app"));
        assert!(!protections.binds(&bot, "team/app"));
        assert!(protections.binds(&bot, "prod/app"));
        assert!(Protections::default().is_empty());
        assert!(!Protections::default().binds(&bob, "team/app"));
    }
}
