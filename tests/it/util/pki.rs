//! A throw-away PKI per test: one CA and one server certificate signed by it, written as PEM
//! files the gate loads and clients trust. Nothing here touches the system trust store.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    /// The CA certificate clients trust.
    pub ca_pem: PathBuf,
    /// The server certificate (leaf only) and its key, for `[tls]`.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// A directory holding only `ca.crt`, the form skopeo's `--*-cert-dir` and docker's
    /// `certs.d` read.
    pub cert_dir: PathBuf,
}

impl Pki {
    /// Creates `dir` and writes `ca.pem`, `cert.pem`, `key.pem` and `certs/ca.crt` into it.
    /// The server certificate is valid for `dns_names` and `ip_addrs`.
    pub fn new(dir: &Path, dns_names: &[&str], ip_addrs: &[IpAddr]) -> Pki {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name = name("registry-gate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");

        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server cert params (DNS names)");
        params.distinguished_name = name(dns_names.first().copied().unwrap_or("registry-gate"));
        params
            .subject_alt_names
            .extend(ip_addrs.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate server key");
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign server cert");

        let pki = Pki {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
            cert_dir: dir.join("certs"),
        };
        super::write_file(&pki.ca_pem, ca_cert.pem());
        super::write_file(&pki.cert_pem, cert.pem());
        super::write_file(&pki.key_pem, key.serialize_pem());
        std::fs::create_dir_all(&pki.cert_dir).expect("mkdir certs");
        super::write_file(&pki.cert_dir.join("ca.crt"), ca_cert.pem());
        pki
    }

    /// A rustls server configuration serving this PKI's certificate, for the HTTPS servers
    /// tests start (webhook receivers, OIDC issuers).
    pub fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_pem)
            .expect("read the server certificate")
            .collect::<Result<_, _>>()
            .expect("parse the server certificate");
        let key = PrivateKeyDer::from_pem_file(&self.key_pem).expect("read the server key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server TLS config");
        std::sync::Arc::new(config)
    }

    /// The usual test identity: `localhost`, `registry.test` and 127.0.0.1.
    pub fn localhost(dir: &Path) -> Pki {
        Pki::new(
            dir,
            &["localhost", "registry.test"],
            &[IpAddr::from([127, 0, 0, 1])],
        )
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A client CA (written to `dir/client-ca.pem`, whose path is returned) and one client
/// certificate with CN `cn`, written where docker and skopeo look for it: `client.cert` and
/// `client.key` in `out_dir` (a certs.d or --cert-dir directory).
pub fn client_certificate(dir: &Path, cn: &str, out_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir client pki");
    let ca_key = KeyPair::generate().expect("client CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("client CA params");
    ca.distinguished_name = name("test client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign client CA");
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name = name(cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("sign client cert");
    let ca_path = dir.join("client-ca.pem");
    super::write_file(&ca_path, ca_cert.pem());
    super::write_file(&out_dir.join("client.cert"), cert.pem());
    super::write_file(&out_dir.join("client.key"), key.serialize_pem());
    ca_path
}
