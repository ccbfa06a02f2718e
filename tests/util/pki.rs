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
