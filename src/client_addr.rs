//! Who the client really is: the canonical form of an address (an IPv4 client on a
//! dual-stack socket is `a.b.c.d`, not `::ffff:a.b.c.d`), whether a peer is one of the
//! `[server] trusted_proxies`, and the real client behind them. Shared by the listener
//! (connection limits, PROXY protocol), the request path (filter, throttle, rules) and the
//! forwarded headers, so all three agree on one address. Must not touch: configuration
//! loading, the request's other headers.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Whether `ip` is one of the trusted proxies, whose forwarded headers are believed.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`; rules are written
/// for `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Every X-Forwarded-For value, joined as one list.
pub fn forwarded_for(headers: &HeaderMap) -> String {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The address of the real client: the peer, or, when the peer is a trusted proxy, the last
/// address in its X-Forwarded-For chain that is not itself a trusted proxy. Throttling and
/// logging use this, so one client behind a load balancer cannot lock out everyone.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !is_trusted(peer_ip, trusted) {
        return peer_ip;
    }
    forwarded_for(headers)
        .split(',')
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .rev()
        .find(|ip| !is_trusted(*ip, trusted))
        .unwrap_or(peer_ip)
}
