//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of the TLS handshake: a load
//! balancer that passes TCP through says who the client is in a header of its own.
//!
//! Owns: reading exactly the header's bytes (never a byte of the TLS stream after it) and
//! parsing it. Whether to believe it (`[server] trusted_proxies`) is decided by the caller
//! before anything is read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Version 2 starts with these 12 bytes (a sequence no HTTP or TLS client sends).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version-1 line, CRLF included (the specification's own bound).
const V1_MAX: usize = 107;
/// Version 2 address blocks are small; TLVs may follow. Anything longer is not a balancer.
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error(
        "no PROXY protocol header (is [server] proxy_protocol on without a balancer sending one?)"
    )]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(String),
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedPeer {
    /// The client's address and port, as the balancer saw them.
    Client(SocketAddr),
    /// The balancer speaking for itself (v2 LOCAL, v1 UNKNOWN: its health checks): the TCP
    /// peer stands.
    Local,
}

/// Reads and parses one header from `stream`, consuming exactly its bytes.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxiedPeer, ProxyHeaderError> {
    let io = |e: std::io::Error| ProxyHeaderError::Io(e.to_string());
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await.map_err(io)?;
    if start == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyHeaderError::Malformed("v2 payload too long"));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.map_err(io)?;
        return parse_v2(fixed[0], fixed[1], &payload);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    // Byte by byte: the TLS ClientHello follows the CRLF directly.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
        }
        line.push(stream.read_u8().await.map_err(io)?);
    }
    parse_v1(&line)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`, or `PROXY UNKNOWN…\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<ProxiedPeer, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 header is not ASCII"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or(bad("v1 header does not end in CRLF"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(bad("v1 header does not start with PROXY"));
    }
    let family = fields.next().ok_or(bad("v1 header names no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(ProxiedPeer::Local);
    }
    let parts: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = parts[..] else {
        return Err(bad("v1 header needs two addresses and two ports"));
    };
    let source: IpAddr = source.parse().map_err(|_| bad("v1 source address"))?;
    let destination: IpAddr = destination
        .parse()
        .map_err(|_| bad("v1 destination address"))?;
    let port = |p: &str| {
        // The specification forbids leading zeros; a strict parse keeps one spelling.
        if p.len() > 1 && p.starts_with('0') {
            return Err(bad("v1 port with a leading zero"));
        }
        p.parse::<u16>().map_err(|_| bad("v1 port"))
    };
    let source_port = port(source_port)?;
    port(destination_port)?;
    let family_matches = match family {
        "TCP4" => source.is_ipv4() && destination.is_ipv4(),
        "TCP6" => source.is_ipv6() && destination.is_ipv6(),
        _ => return Err(bad("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    if !family_matches {
        return Err(bad("v1 addresses do not match the protocol"));
    }
    Ok(ProxiedPeer::Client(SocketAddr::new(source, source_port)))
}

/// The version-2 binary header after its signature: version/command, family/protocol and
/// the payload (addresses, then TLVs, which are ignored).
pub fn parse_v2(
    version_command: u8,
    family: u8,
    payload: &[u8],
) -> Result<ProxiedPeer, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if version_command >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    match version_command & 0x0f {
        0x0 => return Ok(ProxiedPeer::Local),
        0x1 => {}
        _ => return Err(bad("v2 command is neither LOCAL nor PROXY")),
    }
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = payload
                .get(..12)
                .ok_or(bad("v2 IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(ProxiedPeer::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        0x21 => {
            let a = payload
                .get(..36)
                .ok_or(bad("v2 IPv6 address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(ProxiedPeer::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC: the balancer does not know; the TCP peer stands.
        0x00 => Ok(ProxiedPeer::Local),
        _ => Err(bad("v2 family is not TCP over IPv4 or IPv6")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    async fn read(bytes: &[u8]) -> (Result<ProxiedPeer, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let result = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        let _ = cursor.read_to_end(&mut rest).await;
        (result, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_leave_the_tls_bytes_alone() {
        let hello = b"\x16\x03\x01 the ClientHello";
        let mut v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n".to_vec();
        v1.extend_from_slice(hello);
        let (peer, rest) = read(&v1).await;
        assert_eq!(
            peer,
            Ok(ProxiedPeer::Client(
                "203.0.113.7:56324".parse().expect("addr")
            ))
        );
        assert_eq!(rest, hello);

        let mut block = vec![203, 0, 113, 8, 192, 0, 2, 1];
        block.extend_from_slice(&4000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, ignored
        let mut h = v2(0x1, 0x11, &block);
        h.extend_from_slice(hello);
        let (peer, rest) = read(&h).await;
        assert_eq!(
            peer,
            Ok(ProxiedPeer::Client(
                "203.0.113.8:4000".parse().expect("addr")
            ))
        );
        assert_eq!(rest, hello);

        let mut block6 = Vec::new();
        block6.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().expect("v6").octets());
        block6.extend_from_slice(&[0u8; 16]);
        block6.extend_from_slice(&[0x1F, 0x90, 0x01, 0xBB]);
        let (peer, _) = read(&v2(0x1, 0x21, &block6)).await;
        assert_eq!(
            peer,
            Ok(ProxiedPeer::Client(
                "[2001:db8::9]:8080".parse().expect("addr")
            ))
        );
        assert_eq!(read(&v2(0x0, 0x00, &[])).await.0, Ok(ProxiedPeer::Local));
        assert_eq!(
            read(b"PROXY UNKNOWN\r\nxyz").await.0,
            Ok(ProxiedPeer::Local)
        );
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00 a ClientHello"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                read(bad).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert_eq!(
            read(long.as_bytes()).await.0,
            Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"))
        );
        assert!(read(&v2(0x1, 0x11, &[1, 2, 3])).await.0.is_err());
        assert!(read(&v2(0x1, 0x31, &[0; 216])).await.0.is_err());
        let mut wrong_version = v2(0x1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(read(&wrong_version).await.0.is_err());
    }
}
