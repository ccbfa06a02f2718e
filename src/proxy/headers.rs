//! The header rewriting a reverse proxy owes the registry and the client: hop-by-hop headers
//! removed both ways, forwarded headers describing the real client (a client's own claims
//! dropped unless its peer is a trusted proxy), Host kept as sent, and a `Location` at the
//! registry's origin moved to the public origin on the way back.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::client_addr::{canonical, client_ip, forwarded_for, is_trusted};

/// Who the client is, as far as the forwarded headers are concerned.
pub struct ClientInfo<'a> {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub trusted_proxies: &'a [IpNet],
    pub request_id: &'a str,
}

impl ClientInfo<'_> {
    fn peer_is_trusted(&self) -> bool {
        is_trusted(self.peer.ip(), self.trusted_proxies)
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy
/// ones: they are never passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Headers by which a client could claim to be someone or somewhere else, or to have asked
/// for another path (the prefix and original-URL headers that proxies and IIS's rewrite
/// module set, which some applications route by). From an untrusted peer they are dropped,
/// and the gate's own values set where it has them; from a trusted proxy they are that
/// proxy's word and kept.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-request-id",
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Removes the underscore spellings of the headers above and of the hop-by-hop ones
/// (`X_Forwarded_For`, `X_Real_IP`): CGI-style servers and many frameworks read
/// `X_Forwarded_For` and `X-Forwarded-For` as one variable (`HTTP_X_FORWARDED_FOR`), so a
/// client could set the value the gate replaced. No proxy writes them, so they are dropped
/// whoever sends them, a trusted proxy included: one that passes them on (nginx drops them by
/// default, `underscores_in_headers off`; many balancers do not) passes the client's.
fn drop_underscore_look_alikes(headers: &mut HeaderMap) {
    let look_alikes: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.contains('_') && {
                let hyphenated = name.replace('_', "-");
                FORWARDING.contains(&hyphenated.as_str())
                    || HOP_BY_HOP.contains(&hyphenated.as_str())
            }
        })
        .cloned()
        .collect();
    for name in look_alikes {
        headers.remove(name);
    }
}

/// Rewrites the request head for the registry: `host` as the client sent it (the registry
/// builds upload URLs from it), forwarded headers describing the real client.
pub fn rewrite_request(headers: &mut HeaderMap, host: &HeaderValue, client: &ClientInfo<'_>) {
    strip_hop_by_hop(headers);
    drop_underscore_look_alikes(headers);
    let peer_ip = canonical(client.peer.ip());
    let trusted = client.peer_is_trusted();

    let mut chain = String::new();
    let real_ip = client_ip(headers, client.peer, client.trusted_proxies);
    if trusted {
        // A trusted proxy's list is extended.
        chain = forwarded_for(headers);
    } else {
        for name in FORWARDING {
            headers.remove(*name);
        }
    }
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer_ip.to_string());

    headers.insert(header::HOST, host.clone());
    set(headers, "x-forwarded-for", &chain);
    set(headers, "x-real-ip", &real_ip.to_string());
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    }
    if !trusted || !headers.contains_key("x-forwarded-host") {
        headers.insert("x-forwarded-host", host.clone());
    }
    if !trusted || !headers.contains_key("x-forwarded-port") {
        set(headers, "x-forwarded-port", &client.local_port.to_string());
    }
    if !trusted || !headers.contains_key("x-request-id") {
        set(headers, "x-request-id", client.request_id);
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Addresses, numbers and request ids are always valid header values.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Rewrites the response head for the client: hop-by-hop headers dropped, and a `Location`
/// (or `Content-Location`) that points at the registry's own origin moved to the public
/// `https://<host>` origin, as Apache's ProxyPassReverse does.
pub fn rewrite_response(headers: &mut HeaderMap, upstream_origin: &str, host: &HeaderValue) {
    strip_hop_by_hop(headers);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(rest) = strip_origin(value, upstream_origin) else {
            continue;
        };
        let Ok(host) = host.to_str() else { continue };
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{rest}")) {
            headers.insert(name, v);
        }
    }
}

/// `Some(rest)` when `url` is `origin` followed by a path (or nothing).
fn strip_origin<'a>(url: &'a str, origin: &str) -> Option<&'a str> {
    let head = url.get(..origin.len())?;
    if !head.eq_ignore_ascii_case(origin) {
        return None;
    }
    let rest = &url[origin.len()..];
    (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn client<'a>(peer: &str, trusted: &'a [IpNet]) -> ClientInfo<'a> {
        ClientInfo {
            peer: peer.parse().expect("peer"),
            local_port: 443,
            trusted_proxies: trusted,
            request_id: "req-1",
        }
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=6.6.6.6"),
            ("x-request-id", "spoof"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
        ]);
        let host = HeaderValue::from_static("reg.example:8443");
        rewrite_request(&mut h, &host, &client("192.0.2.1:5555", &[]));
        assert_eq!(h["host"], "reg.example:8443");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "reg.example:8443");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-request-id"], "req-1");
        for gone in [
            "forwarded",
            "connection",
            "x-secret",
            "te",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn trusted_proxy_chain_is_extended_and_names_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("reg.example");
        rewrite_request(&mut h, &host, &client("10.0.0.2:1000", &trusted));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
    }

    #[test]
    fn look_alikes_of_forwarding_headers_are_dropped_and_path_headers_kept_from_a_proxy() {
        let sent = [
            ("x_forwarded_for", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("x_forwarded_proto", "http"),
            ("x-forwarded_host", "evil.example"),
            ("proxy_authorization", "Basic eA=="),
            ("x-forwarded-prefix", "/evil"),
            ("x-original-url", "/v2/other/manifests/1"),
            ("x-rewrite-url", "/v2/other/manifests/1"),
            ("x_original_url", "/v2/other/manifests/1"),
            // Not a look-alike of anything the gate owns: none of its business.
            ("x_custom_thing", "kept"),
        ];
        let host = HeaderValue::from_static("reg.example");
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut untrusted = headers(&sent);
        rewrite_request(&mut untrusted, &host, &client("192.0.2.1:5555", &[]));
        let mut proxied = headers(&sent);
        rewrite_request(&mut proxied, &host, &client("10.0.0.2:1000", &trusted));
        for (h, from) in [(&untrusted, "a client"), (&proxied, "a trusted proxy")] {
            for (name, _) in &sent[..5] {
                assert!(!h.contains_key(*name), "{name} from {from} was forwarded");
            }
            assert!(!h.contains_key("x_original_url"), "from {from}");
            assert_eq!(h["x_custom_thing"], "kept", "from {from}");
            assert_eq!(h["x-forwarded-host"], "reg.example", "from {from}");
        }
        for name in ["x-forwarded-prefix", "x-original-url", "x-rewrite-url"] {
            assert!(!untrusted.contains_key(name), "{name} from a client");
        }
        assert_eq!(proxied["x-forwarded-prefix"], "/evil");
        assert_eq!(proxied["x-original-url"], "/v2/other/manifests/1");
        assert_eq!(proxied["x-rewrite-url"], "/v2/other/manifests/1");
    }

    #[test]
    fn mapped_ipv4_peer_is_written_as_ipv4() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("r");
        rewrite_request(&mut h, &host, &client("[::ffff:192.0.2.3]:1", &[]));
        assert_eq!(h["x-real-ip"], "192.0.2.3");
    }

    #[test]
    fn location_at_upstream_origin_is_rewritten() {
        let host = HeaderValue::from_static("reg.example:8443");
        let mut h = headers(&[(
            "location",
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x",
        )]);
        rewrite_response(&mut h, "http://127.0.0.1:5000", &host);
        assert_eq!(
            h["location"],
            "https://reg.example:8443/v2/a/blobs/uploads/u?_state=x"
        );

        for other in [
            "https://reg.example:8443/v2/x",
            "/v2/x",
            "http://127.0.0.1:50000/v2/x",
            "http://127.0.0.1:5000.evil/x",
        ] {
            let mut h = headers(&[("location", other)]);
            rewrite_response(&mut h, "http://127.0.0.1:5000", &host);
            assert_eq!(h["location"], other);
        }
    }
}
