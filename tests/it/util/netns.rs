//! A network namespace of the test's own, joined to the host by a veth pair, so a gate can
//! listen on an address that is not loopback. Docker treats every 127.0.0.0/8 registry as
//! insecure (no certificate checks, no client certificates, silent fallback to plain HTTP);
//! at an address in here it behaves as it does against a real registry host.
//!
//! Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544), which no real network
//! uses (TEST-NET-1 is taken: some machines here number their own interface from it), one /30
//! per namespace, and exist only inside the pair this helper creates. `Drop` deletes the namespace, which deletes the
//! veth pair with it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{describe, require_tool, run};

pub struct Netns {
    pub name: String,
    host_link: String,
    /// The host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    /// The address inside the namespace, where a gate listens.
    pub ip: Ipv4Addr,
}

impl Netns {
    pub fn create() -> Netns {
        require_tool("ip", "iproute2");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // One 198.18.N.0/30, N spread by pid so leftovers of a killed run are unlikely to
        // collide.
        let slot = ((std::process::id() + n * 7) % 250 + 1) as u8;
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let ns = Netns {
            name: format!("rg{tag}"),
            host_link: format!("rgh{tag}"),
            host_ip: Ipv4Addr::new(198, 18, slot, 1),
            ip: Ipv4Addr::new(198, 18, slot, 2),
        };
        let peer = format!("rgn{tag}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_link,
        ]);
        ip(&["link", "set", &ns.host_link, "up"]);
        ns.exec_ip(&["addr", "add", &format!("{}/30", ns.ip), "dev", &peer]);
        ns.exec_ip(&["link", "set", &peer, "up"]);
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec <name> <program> <args…>` as a command to spawn.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }
}

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        describe(&out)
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        // Normally gone with the namespace; make sure.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}
