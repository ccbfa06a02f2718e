//! The access rules: (identity, repository, action) -> `Decision`; and, in `protect`, the
//! protected tags of `[[protect]]`, which reuse this file's user lists and repository globs.
//!
//! Owns: compiling `[groups]` and `[[rules]]` (already deserialized) into matchers, every
//! validation message about them, and the decision. Must not touch: headers, TOML, requests;
//! it sees an identity and a classified request, nothing else, so it can be tested as a table.
//!
//! Semantics, as docs/access.md gives them:
//! - Rules are an ordered list. The first rule whose `users` and `repositories` both match
//!   decides: its `actions` contain the action -> allow, otherwise deny (first match decides,
//!   like nginx/Apache order). No rule matches -> deny. `rules[i]` counts from 0 in file order;
//!   the same index is in every `Decision` and error message.
//! - `users`: a name (matched exactly, case-sensitively), `@group` (the names under
//!   `[groups]`), `"*"` any authenticated user (never anonymous), `"anonymous"` the client that
//!   sent no credentials.
//! - `actions`: `pull`, `push`, `delete`, or `"*"` for all three.
//! - `from` (optional): client addresses (CIDRs) the rule applies to; from anywhere else the
//!   rule is skipped, so a later rule decides (push only from the build network: a rule with
//!   `from` allowing push, then one without allowing pull). The address is the real client
//!   behind `[server] trusted_proxies`.
//! - `repositories`, globs over the full name (names contain `/`):
//!   - `*` matches within one path component: `team-*/app` matches `team-a/app` only.
//!   - a `*` that is the whole last component matches one or more components, so `team-a/*`
//!     covers `team-a/x` and `team-a/x/y` (the whole namespace, as operators expect), but not
//!     `team-a` itself; a pattern of just `*` matches every repository.
//!   - `**` matches across `/`; `**/` as a whole component matches zero or more components
//!     (`**/cache` matches `cache` and `a/b/cache`).
//!   - `${user}` is the authenticated user's name, matched literally (a `*` in a user name is
//!     just a character). It never matches for anonymous, nor for a user whose name contains
//!     `/`, who would otherwise reach into another user's namespace.
//!   - Anything else is literal and must be a character of repository names (`a-z 0-9 . _ -`):
//!     a pattern that can never match is an error, not a silent no-op.
//!
//! Matching runs over reachable positions (no backtracking), so a pattern with many stars
//! costs linear time in the name per token, whatever a client sends.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::registry_path::Action;

pub mod protect;

pub use protect::{ProtectSpec, Protections};

/// Who is asking, as the rules see it: a borrowed view of `auth::Identity` (and, for
/// `[[protect]]`, of an access token's account), not a second identity. Borrowed because the
/// rules are asked per repository of a catalog listing and per request, and a view costs no
/// copy of the name; a type of its own because the rules cannot name `auth`'s, which sits
/// above them (`auth` uses `config`, which uses the rules). The rules do not care how the
/// identity was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Anonymous,
    User(&'a str),
}

/// One `[[rules]]` table as deserialized, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSpec {
    pub users: Vec<String>,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
    /// Client networks; empty means from anywhere.
    pub from: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `rule` is the index of the deciding rule; `None` is the default of
    /// `Rules::allow_all_authenticated` or `Rules::allow_everyone`.
    Allow { rule: Option<usize> },
    /// `rule` is the index of the deciding rule; `None` means no rule matched.
    Deny { rule: Option<usize> },
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// A configuration mistake. `at` names the key (`rules[2].users`, `groups.ci`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("{at}: the list is empty; list at least one {what} or remove the rule")]
    EmptyList { at: String, what: &'static str },
    #[error("{at}: unknown group \"{value}\"; define it under [groups] (defined: {defined})")]
    UnknownGroup {
        at: String,
        value: String,
        defined: String,
    },
    #[error("{at}: unknown action \"{value}\"; use \"pull\", \"push\", \"delete\" or \"*\"")]
    UnknownAction { at: String, value: String },
    #[error("{at}: bad user \"{value}\": {fix}")]
    BadUser {
        at: String,
        value: String,
        fix: &'static str,
    },
    #[error("{at}: \"{value}\" is not an address or CIDR such as \"10.0.0.0/8\"")]
    BadAddress { at: String, value: String },
    #[error("{at}: bad repository pattern \"{value}\": {fix}")]
    BadPattern {
        at: String,
        value: String,
        fix: &'static str,
    },
    #[error("{at}: bad tag pattern \"{value}\": {fix}")]
    BadTagPattern {
        at: String,
        value: String,
        fix: &'static str,
    },
}

/// The compiled, immutable rule set.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    /// What happens when no rule matches.
    fallback: Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    Deny,
    AllowAuthenticated,
    AllowEveryone,
}

#[derive(Debug, Clone)]
struct Rule {
    users: Vec<UserMatcher>,
    repositories: Vec<Pattern>,
    actions: Vec<Action>,
    /// `None`: from anywhere.
    from: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UserMatcher {
    AnyAuthenticated,
    Anonymous,
    Name(String),
}

impl UserMatcher {
    fn matches(&self, who: &Subject) -> bool {
        match (self, who) {
            (UserMatcher::AnyAuthenticated, Subject::User(_)) => true,
            (UserMatcher::Anonymous, Subject::Anonymous) => true,
            (UserMatcher::Name(name), Subject::User(user)) => name == user,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `${user}`
    User,
    /// `*`: any run without `/`.
    Star,
    /// `**`, or a `*` as the whole last component: any run, `/` included.
    Any,
    /// `**/` as a whole component: empty, or any run that ends in `/`.
    Dirs,
}

#[derive(Debug, Clone)]
struct Pattern(Vec<Token>);

impl Rules {
    /// Validates and compiles. Returns every error, not just the first, so one `check` run
    /// shows the operator the whole list.
    pub fn compile(
        groups: &BTreeMap<String, Vec<String>>,
        rules: &[RuleSpec],
    ) -> Result<Rules, Vec<RulesError>> {
        let mut errors = check_groups(groups);
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, spec)| compile_rule(i, spec, groups, &mut errors))
            .collect();
        if errors.is_empty() {
            Ok(Rules {
                rules: compiled,
                fallback: Fallback::Deny,
            })
        } else {
            Err(errors)
        }
    }

    /// For `[auth]` without `[[rules]]`: any authenticated user may do anything, anonymous
    /// clients nothing.
    pub fn allow_all_authenticated() -> Rules {
        Rules {
            rules: Vec::new(),
            fallback: Fallback::AllowAuthenticated,
        }
    }

    /// For a gate without `[auth]`: every client may do anything, as the registry alone would
    /// allow; the gate then only terminates TLS and filters.
    pub fn allow_everyone() -> Rules {
        Rules {
            rules: Vec::new(),
            fallback: Fallback::AllowEveryone,
        }
    }

    /// The decision for `who`, asking from `client`, to take `action` on `repository`.
    pub fn decide(
        &self,
        who: &Subject,
        client: IpAddr,
        repository: &str,
        action: Action,
    ) -> Decision {
        let user = match who {
            Subject::User(name) => Some(*name),
            Subject::Anonymous => None,
        };
        let first = self.rules.iter().position(|rule| {
            rule.users.iter().any(|u| u.matches(who))
                && rule
                    .from
                    .as_ref()
                    .is_none_or(|nets| nets.iter().any(|n| n.contains(&client)))
                && rule
                    .repositories
                    .iter()
                    .any(|p| p.matches(repository, user))
        });
        match first {
            Some(i) if self.rules[i].actions.contains(&action) => Decision::Allow { rule: Some(i) },
            Some(i) => Decision::Deny { rule: Some(i) },
            None => match (self.fallback, user) {
                (Fallback::AllowEveryone, _) | (Fallback::AllowAuthenticated, Some(_)) => {
                    Decision::Allow { rule: None }
                }
                _ => Decision::Deny { rule: None },
            },
        }
    }
}

/// The members of `[groups]`: plain user names only. Run by `Rules::compile`; on its own
/// when groups serve only `[[protect]]`.
pub fn check_groups(groups: &BTreeMap<String, Vec<String>>) -> Vec<RulesError> {
    let mut errors = Vec::new();
    for (group, members) in groups {
        let at = format!("groups.{group}");
        for member in members {
            if let Err(fix) = check_group_member(member) {
                errors.push(bad_user(&at, member, fix));
            }
        }
    }
    errors
}

fn compile_rule(
    i: usize,
    spec: &RuleSpec,
    groups: &BTreeMap<String, Vec<String>>,
    errors: &mut Vec<RulesError>,
) -> Rule {
    let at = |field: &str| format!("rules[{i}].{field}");
    for (field, list, what) in [
        ("users", &spec.users, "user"),
        ("repositories", &spec.repositories, "repository pattern"),
        ("actions", &spec.actions, "action"),
    ] {
        if list.is_empty() {
            errors.push(RulesError::EmptyList {
                at: at(field),
                what,
            });
        }
    }

    let users = compile_users(&at("users"), &spec.users, groups, errors);
    let repositories = compile_repositories(&at("repositories"), &spec.repositories, errors);
    let actions = compile_actions(&at("actions"), &spec.actions, errors);

    let mut from = Vec::new();
    for net in &spec.from {
        let parsed = net
            .parse::<IpNet>()
            .or_else(|_| net.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => from.push(n),
            Err(_) => errors.push(RulesError::BadAddress {
                at: at("from"),
                value: net.clone(),
            }),
        }
    }

    Rule {
        users,
        repositories,
        actions,
        // An empty list would match nothing, silently; absent and empty both mean anywhere.
        from: (!from.is_empty()).then_some(from),
    }
}

/// The `users` list of a rule or a protection; `at` names the key in messages.
fn compile_users(
    at: &str,
    list: &[String],
    groups: &BTreeMap<String, Vec<String>>,
    errors: &mut Vec<RulesError>,
) -> Vec<UserMatcher> {
    let mut users = Vec::new();
    for user in list {
        match user.as_str() {
            "*" => users.push(UserMatcher::AnyAuthenticated),
            "anonymous" => users.push(UserMatcher::Anonymous),
            _ => match user.strip_prefix('@') {
                Some(group) => match groups.get(group) {
                    // Members were validated with the groups, so they are plain names.
                    Some(members) => users.extend(members.iter().cloned().map(UserMatcher::Name)),
                    None => errors.push(RulesError::UnknownGroup {
                        at: at.to_string(),
                        value: user.clone(),
                        defined: defined_groups(groups),
                    }),
                },
                None => match check_user_name(user) {
                    Ok(()) => users.push(UserMatcher::Name(user.clone())),
                    Err(fix) => errors.push(bad_user(at, user, fix)),
                },
            },
        }
    }
    users
}

/// The `repositories` globs of a rule or a protection; `at` names the key in messages.
fn compile_repositories(at: &str, list: &[String], errors: &mut Vec<RulesError>) -> Vec<Pattern> {
    let mut repositories = Vec::new();
    for pattern in list {
        match Pattern::parse(pattern) {
            Ok(p) => repositories.push(p),
            Err(fix) => errors.push(RulesError::BadPattern {
                at: at.to_string(),
                value: pattern.clone(),
                fix,
            }),
        }
    }
    repositories
}

fn compile_actions(at: &str, list: &[String], errors: &mut Vec<RulesError>) -> Vec<Action> {
    let mut actions = Vec::new();
    for action in list {
        match action.as_str() {
            "*" => actions.extend(Action::ALL),
            "pull" => actions.push(Action::Pull),
            "push" => actions.push(Action::Push),
            "delete" => actions.push(Action::Delete),
            _ => errors.push(RulesError::UnknownAction {
                at: at.to_string(),
                value: action.clone(),
            }),
        }
    }
    actions
}

/// What a credential other than a password may reach (an access token's scope): repository
/// patterns in the syntax of `[[rules]]` and the actions allowed on them, with no users and
/// no addresses. `${user}` in a pattern is the credential's owner.
#[derive(Debug, Clone)]
pub struct Scope {
    repositories: Vec<Pattern>,
    actions: Vec<Action>,
}

impl Scope {
    /// `at` names the setting in messages (`--repositories`, `token[2]`).
    pub fn compile(
        at: &str,
        repositories: &[String],
        actions: &[String],
    ) -> Result<Scope, Vec<RulesError>> {
        let mut errors = Vec::new();
        for (field, list, what) in [
            ("repositories", repositories, "repository pattern"),
            ("actions", actions, "action"),
        ] {
            if list.is_empty() {
                errors.push(RulesError::EmptyList {
                    at: format!("{at}.{field}"),
                    what,
                });
            }
        }
        let scope = Scope {
            repositories: compile_repositories(
                &format!("{at}.repositories"),
                repositories,
                &mut errors,
            ),
            actions: compile_actions(&format!("{at}.actions"), actions, &mut errors),
        };
        if errors.is_empty() {
            Ok(scope)
        } else {
            Err(errors)
        }
    }

    pub fn allows(&self, repository: &str, action: Action, owner: Option<&str>) -> bool {
        self.actions.contains(&action)
            && self
                .repositories
                .iter()
                .any(|p| p.matches(repository, owner))
    }
}

fn bad_user(at: &str, value: &str, fix: &'static str) -> RulesError {
    RulesError::BadUser {
        at: at.to_string(),
        value: value.to_string(),
        fix,
    }
}

fn defined_groups(groups: &BTreeMap<String, Vec<String>>) -> String {
    if groups.is_empty() {
        return "none".to_string();
    }
    let names: Vec<String> = groups.keys().map(|g| format!("@{g}")).collect();
    names.join(", ")
}

/// A user name as written in a rule. Wildcards are refused rather than taken literally: an
/// operator who writes `team-*` expects a pattern, and a rule that silently never matches is
/// as confusing as one that matches too much.
fn check_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty user name; remove it");
    }
    if name.contains('*') {
        return Err("user names are matched exactly; \"*\" alone means any authenticated user");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("user names cannot contain spaces or control characters");
    }
    Ok(())
}

fn check_group_member(name: &str) -> Result<(), &'static str> {
    match name {
        "*" | "anonymous" => {
            Err("a group lists user names; put \"*\" or \"anonymous\" in the rule's users instead")
        }
        _ if name.starts_with('@') => {
            Err("groups cannot contain groups; list the member names instead")
        }
        _ => check_user_name(name),
    }
}

/// One repository glob with the rules' syntax, for other sections that select repositories
/// (`[[events]] repositories`), so an operator learns one pattern language.
#[derive(Debug, Clone)]
pub struct RepositoryPattern(Pattern);

impl RepositoryPattern {
    /// The error is the fix to show next to the key.
    pub fn parse(pattern: &str) -> Result<RepositoryPattern, &'static str> {
        Pattern::parse(pattern).map(RepositoryPattern)
    }

    /// `user` stands in for `${user}`; `None` (anonymous) never matches it.
    pub fn matches(&self, repository: &str, user: Option<&str>) -> bool {
        self.0.matches(repository, user)
    }
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Pattern, &'static str> {
        if pattern.is_empty() {
            return Err("empty pattern; write a name like team-a/app or a glob like team-a/*");
        }
        if pattern.starts_with('/') {
            return Err("patterns match names without a leading /, like team-a/app");
        }
        if pattern.ends_with('/') {
            return Err("drop the trailing /; write team-a/* for everything under team-a");
        }
        let components: Vec<&str> = pattern.split('/').collect();
        let last = components.len() - 1;
        let mut tokens = Vec::new();
        for (i, component) in components.iter().enumerate() {
            match *component {
                "" => return Err("empty component //; remove one /"),
                "*" if i == last => tokens.push(Token::Any),
                "**" if i != last => {
                    tokens.push(Token::Dirs);
                    continue; // `Dirs` includes its `/`
                }
                _ => parse_component(component, &mut tokens)?,
            }
            if i != last {
                push_literal(&mut tokens, "/");
            }
        }
        Ok(Pattern(tokens))
    }

    fn matches(&self, name: &str, user: Option<&str>) -> bool {
        let name = name.as_bytes();
        // reachable[p]: the tokens so far can match exactly name[..p].
        let mut reachable = vec![false; name.len() + 1];
        reachable[0] = true;
        for token in &self.0 {
            let mut next = vec![false; name.len() + 1];
            match token {
                Token::Literal(text) => advance_literal(name, &reachable, &mut next, text),
                Token::User => match user {
                    Some(user) if !user.contains('/') => {
                        advance_literal(name, &reachable, &mut next, user)
                    }
                    _ => return false,
                },
                Token::Star => {
                    for p in 0..=name.len() {
                        // Carry reachability forward until a `/`, which `*` cannot cross.
                        let carried = p > 0 && next[p - 1] && name[p - 1] != b'/';
                        next[p] = reachable[p] || carried;
                    }
                }
                Token::Any => {
                    if let Some(first) = reachable.iter().position(|&r| r) {
                        next[first..].fill(true);
                    }
                }
                Token::Dirs => {
                    let mut seen = false;
                    for p in 0..=name.len() {
                        seen |= reachable[p];
                        next[p] = reachable[p] || (seen && p > 0 && name[p - 1] == b'/');
                    }
                }
            }
            reachable = next;
        }
        reachable[name.len()]
    }
}

fn advance_literal(name: &[u8], reachable: &[bool], next: &mut [bool], text: &str) {
    for (p, _) in reachable.iter().enumerate().filter(|(_, &r)| r) {
        if name[p..].starts_with(text.as_bytes()) {
            next[p + text.len()] = true;
        }
    }
}

fn push_literal(tokens: &mut Vec<Token>, text: &str) {
    match tokens.last_mut() {
        Some(Token::Literal(existing)) => existing.push_str(text),
        _ => tokens.push(Token::Literal(text.to_string())),
    }
}

fn parse_component(component: &str, tokens: &mut Vec<Token>) -> Result<(), &'static str> {
    let mut rest = component;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("${user}") {
            tokens.push(Token::User);
            rest = after;
        } else if rest.starts_with("***") {
            return Err("*** means nothing more than **; use * (one component) or ** (any depth)");
        } else if let Some(after) = rest.strip_prefix("**") {
            tokens.push(Token::Any);
            rest = after;
        } else if let Some(after) = rest.strip_prefix('*') {
            tokens.push(Token::Star);
            rest = after;
        } else if c == '$' {
            return Err("only ${user} can be substituted; write it exactly so");
        } else if c.is_ascii_uppercase() {
            return Err("repository names are lowercase, so this can never match; use lowercase");
        } else if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
            push_literal(tokens, &c.to_string());
            rest = &rest[1..];
        } else {
            return Err(
                "only a-z 0-9 . _ - are literal and only * ** ${user} are special; ? [ ] { } are not globs here",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// An address no `from` list in these tests names.
    const ANYWHERE: std::net::IpAddr =
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    use super::*;
    use Action::*;

    fn spec(users: &[&str], repositories: &[&str], actions: &[&str]) -> RuleSpec {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        RuleSpec {
            users: own(users),
            repositories: own(repositories),
            actions: own(actions),
            from: Vec::new(),
        }
    }

    #[test]
    fn a_from_rule_applies_only_to_its_networks() {
        let mut push_from_build = spec(&["@ci"], &["**"], &["pull", "push"]);
        push_from_build.from = vec![
            "10.20.0.0/16".into(),
            "2001:db8::/32".into(),
            "192.0.2.7".into(),
        ];
        let rules = Rules::compile(
            &groups(),
            &[push_from_build, spec(&["*"], &["**"], &["pull"])],
        )
        .expect("valid");
        let ci = Subject::User("builder1");
        for (client, push) in [
            ("10.20.0.1", true),
            ("10.21.0.1", false),
            ("2001:db8::5", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            let ip: IpAddr = client.parse().expect("address");
            assert_eq!(
                rules.decide(&ci, ip, "team/app", Push),
                if push {
                    Decision::Allow { rule: Some(0) }
                } else {
                    Decision::Deny { rule: Some(1) }
                },
                "{client}"
            );
            assert!(rules.decide(&ci, ip, "team/app", Pull).is_allowed());
        }
        let mut bad = spec(&["*"], &["**"], &["pull"]);
        bad.from = vec!["10.0.0.0/33".into(), "build-net".into()];
        let errors = Rules::compile(&groups(), &[bad]).expect_err("invalid");
        assert_eq!(errors.len(), 2);
        assert!(errors[0]
            .to_string()
            .starts_with("rules[0].from: \"10.0.0.0/33\" is not an address"));
    }

    fn groups() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("ci".into(), vec!["builder1".into(), "builder2".into()])])
    }

    fn glob(pattern: &str, name: &str, user: Option<&str>) -> bool {
        Pattern::parse(pattern).unwrap().matches(name, user)
    }

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("team-a/app", "team-a/app", true),
            ("team-a/app", "team-a/app2", false),
            ("team-a/app", "team-a/app/x", false),
            ("team-a/*", "team-a/x", true),
            ("team-a/*", "team-a/x/y", true),
            ("team-a/*", "team-a", false),
            ("team-a/*", "team-ab/x", false),
            ("*", "a", true),
            ("*", "a/b/c", true),
            ("team-*/app", "team-a/app", true),
            ("team-*/app", "team-a/b/app", false),
            ("*/app", "x/app", true),
            ("*/app", "x/y/app", false),
            ("a/*/c", "a/b/c", true),
            ("a/*/c", "a/b/x/c", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "ab/c", false),
            ("a/**", "a/b/c", true),
            ("**/cache", "cache", true),
            ("**/cache", "a/b/cache", true),
            ("**/cache", "a/bcache", false),
            ("a/**/c", "a/c", true),
            ("a/**/c", "a/x/y/c", true),
            ("a**c", "ab/xc", true),
            ("Team-A/*", "team-a/x", false), // never reached: parse refuses it
        ];
        for &(pattern, name, want) in cases {
            match Pattern::parse(pattern) {
                Ok(p) => assert_eq!(p.matches(name, None), want, "{pattern} ~ {name}"),
                Err(_) => assert!(!want, "{pattern} should parse"),
            }
        }
        // Many stars against a long name stay cheap (reachability, not backtracking).
        let name = format!("{}b", "a".repeat(250));
        assert!(!glob("*a*a*a*a*a*a*a*a*a*a*a*c", &name, None));
    }

    #[test]
    fn user_substitution() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("alice/app", Some("alice"), true),
            ("alice/x/y", Some("alice"), true),
            ("alice", Some("alice"), false),
            ("bob/app", Some("alice"), false),
            ("alice/app", None, false),
            // A user named `a*` gets the literal namespace `a*`, never `a<anything>`.
            ("ab/app", Some("a*"), false),
            ("a/app", Some("a*"), false),
            // A name with `/` would reach into someone else's namespace.
            ("team-a/x/app", Some("team-a/x"), false),
            ("team-a/x/app", Some("team-a/*"), false),
        ];
        for &(name, user, want) in cases {
            assert_eq!(glob("${user}/*", name, user), want, "{name} as {user:?}");
        }
        assert!(glob("home/${user}-*", "home/bob-tmp", Some("bob")));
        assert!(!glob("home/${user}-*", "home/bob-tmp", Some("bo")));
    }

    #[test]
    fn decisions() {
        let rules = Rules::compile(
            &groups(),
            &[
                spec(&["alice"], &["team-a/secret"], &["pull"]), // 0: narrows before 1
                spec(&["@ci", "alice"], &["team-a/*"], &["pull", "push"]), // 1
                spec(&["*"], &["${user}/*"], &["*"]),            // 2
                spec(&["anonymous"], &["public/*"], &["pull"]),  // 3
                spec(&["*"], &["public/*"], &["pull"]),          // 4
            ],
        )
        .unwrap();
        let alice = Subject::User("alice");
        let builder = Subject::User("builder2");
        let anon = Subject::Anonymous;
        let allow = |i| Decision::Allow { rule: Some(i) };
        let deny = |i| Decision::Deny { rule: Some(i) };
        let cases: &[(Subject, &str, Action, Decision)] = &[
            (alice, "team-a/app", Push, allow(1)),
            (alice, "team-a/deep/app", Push, allow(1)),
            (alice, "team-a/secret", Pull, allow(0)),
            (alice, "team-a/secret", Push, deny(0)), // first match decides; rule 1 not consulted
            (alice, "team-a/app", Delete, deny(1)),
            (builder, "team-a/app", Push, allow(1)), // via @ci
            (builder, "team-a/secret", Push, allow(1)),
            (builder, "builder2/x", Delete, allow(2)),
            (alice, "builder2/x", Pull, Decision::Deny { rule: None }),
            (anon, "public/x", Pull, allow(3)),
            (anon, "public/x", Push, deny(3)),
            (anon, "team-a/app", Pull, Decision::Deny { rule: None }),
            (alice, "public/x", Pull, allow(4)),
            (
                Subject::User("Alice"),
                "team-a/app",
                Pull,
                Decision::Deny { rule: None },
            ),
            (Subject::User("anonymous"), "public/x", Pull, allow(4)),
        ];
        for (who, repo, action, want) in cases {
            assert_eq!(
                rules.decide(who, ANYWHERE, repo, *action),
                *want,
                "{who:?} {action} {repo}"
            );
        }
        assert_eq!(actions_for(&rules, &alice, "team-a/app"), vec![Pull, Push]);
        assert_eq!(
            actions_for(&rules, &alice, "alice/app"),
            vec![Pull, Push, Delete]
        );
        assert_eq!(actions_for(&rules, &anon, "team-a/app"), vec![]);
    }

    /// Every action `who` may take on `repository`, from anywhere.
    fn actions_for(rules: &Rules, who: &Subject, repository: &str) -> Vec<Action> {
        Action::ALL
            .into_iter()
            .filter(|&a| rules.decide(who, ANYWHERE, repository, a).is_allowed())
            .collect()
    }

    #[test]
    fn defaults() {
        let none = Rules::compile(&groups(), &[]).unwrap();
        assert_eq!(
            none.decide(&Subject::User("alice"), ANYWHERE, "a", Pull),
            Decision::Deny { rule: None }
        );
        let open = Rules::allow_all_authenticated();
        assert_eq!(
            open.decide(&Subject::User("alice"), ANYWHERE, "a", Delete),
            Decision::Allow { rule: None }
        );
        assert_eq!(
            open.decide(&Subject::Anonymous, ANYWHERE, "a", Pull),
            Decision::Deny { rule: None }
        );
        assert_eq!(
            actions_for(&open, &Subject::User("x"), "a"),
            Action::ALL.to_vec()
        );
        let everyone = actions_for(&Rules::allow_everyone(), &Subject::Anonymous, "a");
        assert_eq!(everyone, Action::ALL.to_vec());
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let mut groups = groups();
        groups.insert("bad".into(), vec!["@ci".into(), "*".into()]);
        let errors = Rules::compile(
            &groups,
            &[
                spec(&["@cx", "team-*"], &[], &["pull", "Push"]),
                spec(
                    &["alice"],
                    &["/a", "a/", "a//b", "A/b", "a?", "${usr}/*", "a***"],
                    &[],
                ),
            ],
        )
        .unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let expect = [
            "groups.bad: bad user \"@ci\"",
            "groups.bad: bad user \"*\"",
            "rules[0].repositories: the list is empty",
            "rules[0].users: unknown group \"@cx\"; define it under [groups] (defined: @bad, @ci)",
            "rules[0].users: bad user \"team-*\"",
            "rules[0].actions: unknown action \"Push\"",
            "rules[1].actions: the list is empty",
            "rules[1].repositories: bad repository pattern \"/a\"",
            "rules[1].repositories: bad repository pattern \"a/\"",
            "rules[1].repositories: bad repository pattern \"a//b\"",
            "rules[1].repositories: bad repository pattern \"A/b\"",
            "rules[1].repositories: bad repository pattern \"a?\"",
            "rules[1].repositories: bad repository pattern \"${usr}/*\"",
            "rules[1].repositories: bad repository pattern \"a***\"",
        ];
        assert_eq!(messages.len(), expect.len(), "{messages:#?}");
        for prefix in expect {
            assert!(
                messages.iter().any(|m| m.starts_with(prefix)),
                "missing {prefix:?} in {messages:#?}"
            );
        }
    }
}
