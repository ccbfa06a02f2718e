//! Generates the zero-config certificate material: a local CA and a server certificate
//! signed by it, as the all-in-one registry images do, so that a first start needs no
//! openssl. Existing files are reused; a key is never overwritten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::TlsError;

/// Paths of the generated material inside `[tls] dir`.
pub struct Generated {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when this call created the server certificate (first start).
    pub created: bool,
}

/// Validity of generated certificates. Generated ones are for private deployments where the
/// CA is distributed by hand; re-distributing it often is the bigger risk.
const CA_DAYS: i64 = 3650;
/// 825 days: the longest validity Apple platforms accept for a server certificate.
pub const SERVER_DAYS: i64 = 825;

/// What a server certificate is made for.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// DNS names; empty means the defaults (localhost and the host name).
    pub dns: Vec<String>,
    /// IP addresses; empty means the defaults (loopback and every address of this host).
    pub ips: Vec<IpAddr>,
    pub days: i64,
    pub rsa: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            dns: Vec::new(),
            ips: Vec::new(),
            days: SERVER_DAYS,
            rsa: false,
        }
    }
}

/// Makes sure `dir` holds `ca.pem`, `ca-key.pem`, `cert.pem` and `key.pem`, creating what is
/// missing (the zero-config start). `extra_ips` are added as SANs beside the defaults.
pub fn ensure(dir: &Path, extra_ips: &[IpAddr]) -> Result<Generated, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(Generated {
            ca_cert: dir.join("ca.pem"),
            cert,
            key,
            created: false,
        });
    }
    let mut ips = default_ips();
    ips.extend(extra_ips.iter().filter(|ip| !ip.is_unspecified()));
    let options = ServerOptions {
        ips,
        ..ServerOptions::default()
    };
    generate_server(dir, &options, true)
}

/// Writes a server certificate and key signed by the CA in `dir` (created if missing, kept
/// if present). An existing key is replaced only with `force`.
pub fn generate_server(
    dir: &Path,
    options: &ServerOptions,
    force: bool,
) -> Result<Generated, TlsError> {
    let out = Generated {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        created: true,
    };
    refuse_overwrite(&out.key, force)?;
    let (ca_cert, ca_key) = ca(dir)?;
    let dns = if options.dns.is_empty() {
        default_dns()
    } else {
        options.dns.clone()
    };
    let mut ips = if options.ips.is_empty() {
        default_ips()
    } else {
        options.ips.clone()
    };
    ips.sort();
    ips.dedup();
    let mut params = CertificateParams::new(dns).map_err(gen_err)?;
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params.distinguished_name = dn("registry-gate server");
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Backdated a day for clocks behind ours; the validity counts from there, because
    // Apple's 825-day limit (and scanners) measure notAfter - notBefore.
    params.not_before = now() - days(1);
    params.not_after = params.not_before + days(options.days);
    let key = new_key(options.rsa)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(gen_err)?;
    crate::atomic_file::write_both(
        (&out.key, key.serialize_pem().as_bytes(), 0o600),
        (&out.cert, cert.pem().as_bytes(), 0o644),
    )?;
    Ok(out)
}

/// Paths of a generated client certificate.
pub struct ClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `clients/<name>/client.cert` and `client.key` in `dir`, signed by its CA, with
/// `name` as the subject CN (the user the rules see with `client_identity = "cn"`).
pub fn generate_client(
    dir: &Path,
    name: &str,
    days_valid: i64,
    rsa: bool,
    force: bool,
) -> Result<ClientFiles, TlsError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(TlsError::Generate(format!(
            "{name:?} is not a usable client name"
        )));
    }
    let out_dir = dir.join("clients").join(name);
    let files = ClientFiles {
        cert: out_dir.join("client.cert"),
        key: out_dir.join("client.key"),
    };
    refuse_overwrite(&files.key, force)?;
    let (ca_cert, ca_key) = ca(dir)?;
    std::fs::create_dir_all(&out_dir).map_err(|e| io_err(&out_dir, e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = now() - days(1);
    params.not_after = params.not_before + days(days_valid);
    let key = new_key(rsa)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(gen_err)?;
    crate::atomic_file::write_both(
        (&files.key, key.serialize_pem().as_bytes(), 0o600),
        (&files.cert, cert.pem().as_bytes(), 0o644),
    )?;
    Ok(files)
}

fn refuse_overwrite(key: &Path, force: bool) -> Result<(), TlsError> {
    if key.exists() && !force {
        return Err(TlsError::Write {
            path: key.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a key is already there; pass --force to replace it",
            ),
        });
    }
    Ok(())
}

/// The CA in `dir`, created (key mode 0600) if it is not there yet.
fn ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    if cert_path.exists() && key_path.exists() {
        return load_ca(&cert_path, &key_path);
    }
    let (cert, key) = new_ca()?;
    crate::atomic_file::write_both(
        (&key_path, key.serialize_pem().as_bytes(), 0o600),
        (&cert_path, cert.pem().as_bytes(), 0o644),
    )?;
    Ok((cert, key))
}

/// ECDSA P-256 by default: small, fast handshakes, accepted by every client. RSA 2048 for
/// old clients that need it.
fn new_key(rsa: bool) -> Result<KeyPair, TlsError> {
    if rsa {
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .map_err(gen_err)
    } else {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)
    }
}

fn default_dns() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = host_name() {
        if host != "localhost" {
            names.push(host);
        }
    }
    names
}

/// Loopback and every address of this host: Go clients (docker) reject a certificate without
/// the IP SAN they connect to.
fn default_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    ips.extend(host_addresses());
    ips
}

fn new_ca() -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params.distinguished_name = dn("registry-gate local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now() - days(1);
    params.not_after = params.not_before + days(CA_DAYS);
    let key = new_key(false)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert, key))
}

fn load_ca(cert: &Path, key: &Path) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let key_pem = std::fs::read_to_string(key).map_err(|e| io_err(key, e))?;
    let cert_pem = std::fs::read_to_string(cert).map_err(|e| io_err(cert, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: format!("unusable CA key: {e}"),
    })?;
    let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| TlsError::Cert {
        path: cert.to_path_buf(),
        message: format!("unusable CA certificate: {e}"),
    })?;
    // Re-signing the CA's own parameters yields an issuer with the same name and key, which is
    // all that signing a leaf needs.
    let ca = params.self_signed(&key).map_err(gen_err)?;
    Ok((ca, key))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "registry-gate");
    dn
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// The host's own non-loopback addresses (link-local IPv6 left out: clients cannot use it
/// without a zone).
fn host_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifaces| {
            ifaces
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| !ip.is_loopback())
                .filter(|ip| match ip {
                    IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                    IpAddr::V4(_) => true,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn io_err(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Write {
        path: path.to_path_buf(),
        source: e,
    }
}
