//! `registry-gate healthcheck`: a container HEALTHCHECK without curl. Connects to the gate's
//! own listener on loopback, asks `/healthz` (or `/readyz`) and exits 0 for a 200.
//!
//! The certificate is not verified: the probe runs on the gate's own host to learn whether it
//! answers, not whom it is talking to, and a generated or ACME certificate may not name
//! 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{report, EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::config::Config;
use crate::front;

/// Exit 0 when the gate's listener answers 200 on `/healthz` (`/readyz` with `ready`), 1 when
/// it answers anything else or nothing, 2 when the configuration does not load.
pub(super) fn run(config_path: Option<&Path>, ready: bool) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    let path = if ready { front::READYZ } else { front::HEALTHZ };
    let runtime = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(probe(config.server.listen, path)) {
        Ok(200) => EXIT_OK,
        Ok(status) => report(EXIT_FAILURE, [format!("{path} answered {status}")]),
        Err(e) => report(EXIT_FAILURE, [e]),
    }
}

/// A probe that takes longer than this is a failed probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes `listen` (an unspecified address is reached on loopback); `Ok(status)` is the
/// HTTP status of the answer.
pub async fn probe(listen: SocketAddr, path: &str) -> Result<u16, String> {
    let target = local_target(listen)?;
    tokio::time::timeout(PROBE_TIMEOUT, exchange(target, path))
        .await
        .map_err(|_| format!("{target}: no answer within {PROBE_TIMEOUT:?}"))?
}

/// Where this host reaches a listener: an unspecified address means loopback. Port 0 (the
/// kernel picks one, told only in the gate's log) cannot be reached from the config alone.
pub fn local_target(listen: SocketAddr) -> Result<SocketAddr, String> {
    if listen.port() == 0 {
        return Err(format!(
            "[server] listen is {listen}: the port is chosen at start and logged \
             (\"listening listener=https addr=...\"); set a fixed port to probe the gate"
        ));
    }
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

async fn exchange(target: SocketAddr, path: &str) -> Result<u16, String> {
    let answer = fetch(target, path).await?;
    answer
        .head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{target}: not an HTTP answer"))
}

/// What the gate answered one GET: the response head and the certificate chain it served.
pub struct Answer {
    pub head: String,
    pub chain: Vec<CertificateDer<'static>>,
}

/// One GET over a fresh TLS connection to `target`, with `Connection: close`; the answer's
/// head (up to 16 KiB) and the served certificate chain, unverified.
pub async fn fetch(target: SocketAddr, path: &str) -> Result<Answer, String> {
    let provider = crate::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{target}: TLS: {e}"))?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Answer {
        head: String::from_utf8_lossy(&head).into_owned(),
        chain,
    })
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
