//! Who may talk to the gate at all, decided before any authentication work: user agents the
//! nginx recipe turns away, and client addresses (`[filter] allow` / `deny`).
//!
//! The rules see only the user agent and the client address; they know nothing of users or
//! repositories (that is `rules`).

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

/// The recipe's `^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$`, written without look-around
/// (Rust's regex has none): docker 1.3 and 1.4, docker 1.5 unless followed by `.<digit>-dev`,
/// and `Go ` user agents (docker before 1.6 did not set its own on the ping).
pub const DEFAULT_DENY_USER_AGENTS: &[&str] = &[
    r"^docker/1\.[34]",
    r"^docker/1\.5(?:$|[^.]|\.(?:$|[^0-9]|[0-9](?:$|[^-]|-(?:$|[^d]|d(?:$|[^e]|e(?:$|[^v]))))))",
    r"^Go ",
];

#[derive(Debug, Clone)]
pub struct Filter {
    deny_user_agents: Vec<Regex>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UserAgent,
    Address,
}

impl Filter {
    pub fn new(deny_user_agents: Vec<Regex>, allow: Vec<IpNet>, deny: Vec<IpNet>) -> Filter {
        Filter {
            deny_user_agents,
            allow,
            deny,
        }
    }

    pub fn with_addresses(mut self, allow: Vec<IpNet>, deny: Vec<IpNet>) -> Filter {
        self.allow = allow;
        self.deny = deny;
        self
    }

    /// The recipe's behaviour: old docker clients refused, every address allowed.
    pub fn recipe_default() -> Filter {
        let patterns = DEFAULT_DENY_USER_AGENTS
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .collect();
        Filter::new(patterns, Vec::new(), Vec::new())
    }

    /// `client` is the real client address (see `client_addr::client_ip`).
    pub fn check(&self, user_agent: Option<&[u8]>, client: IpAddr) -> Result<(), Refusal> {
        if self.deny.iter().any(|n| n.contains(&client))
            || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&client)))
        {
            return Err(Refusal::Address);
        }
        // A user agent that is not text is matched as text with replacement characters, so
        // a stray byte cannot slip a prefix past a rule.
        let ua = user_agent.map(String::from_utf8_lossy).unwrap_or_default();
        if self.deny_user_agents.iter().any(|r| r.is_match(&ua)) {
            return Err(Refusal::UserAgent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nginx's PCRE pattern decides for each (checked against nginx itself in
    /// tests/it/filter.rs).
    pub const USER_AGENTS: &[(&str, bool)] = &[
        (
            "docker/1.3.0 go/go1.3.3 git-commit/c78088f kernel/3.16 os/linux arch/amd64",
            true,
        ),
        ("docker/1.4.1 go/go1.3.3", true),
        ("docker/1.5.0 go/go1.4.1 git-commit/a8a31ef", true),
        ("docker/1.5.0-dev go/go1.4.1", false),
        ("docker/1.5.1-dev", false),
        ("docker/1.5.10-dev", true),
        ("docker/1.5", true),
        ("docker/1.5.", true),
        ("docker/1.5.0-de", true),
        ("docker/1.50.0", true),
        ("docker/1.6.0 go/go1.4.2", false),
        (
            "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1 os/linux arch/amd64",
            false,
        ),
        (
            "docker/28.0.1 go/go1.23.6 git-commit/bbd0a17 kernel/6.8 os/linux arch/amd64",
            false,
        ),
        ("containerd/v1.7.24", false),
        ("skopeo/1.9.3", false),
        ("libpod/4.3.1", false),
        ("Go-http-client/1.1", false),
        ("Go 1.1 package http", true),
        ("go 1.1 package http", false),
        ("", false),
    ];

    #[test]
    fn the_default_rule_matches_the_recipe() {
        let f = Filter::recipe_default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for (ua, denied) in USER_AGENTS {
            assert_eq!(f.check(Some(ua.as_bytes()), ip).is_err(), *denied, "{ua:?}");
        }
        assert!(f.check(None, ip).is_ok());
    }

    #[test]
    fn addresses_allow_then_deny() {
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        let f = Filter::new(
            Vec::new(),
            vec![net("10.0.0.0/8")],
            vec![net("10.6.6.0/24")],
        );
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(f.check(None, ip("10.1.2.3")).is_ok());
        assert_eq!(f.check(None, ip("10.6.6.6")), Err(Refusal::Address));
        assert_eq!(f.check(None, ip("192.0.2.1")), Err(Refusal::Address));
        let open = Filter::new(Vec::new(), Vec::new(), vec![net("10.6.6.0/24")]);
        assert!(open.check(None, ip("192.0.2.1")).is_ok());
    }
}
