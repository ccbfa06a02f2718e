//! Reads operator-provided PEM certificate chains and private keys into a rustls
//! `CertifiedKey`, checking that the key belongs to the leaf certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Loads `cert` (PEM chain, leaf first) and `key` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            message: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    })?;
    Ok(Arc::new(certified))
}

/// A chain and its key from one PEM text (a certificate an ACME order gave another gate of
/// the fleet); the error says what is wrong, the caller says where the text came from.
pub fn certified_key_from_pem(
    pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_message)?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    let key_der = PrivateKeyDer::from_pem_slice(pem).map_err(pem_message)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(Arc::new(certified))
}

/// The CA certificates of a PEM bundle, as trust roots: the client CA of `[tls]`, a
/// webhook receiver's `ca`, an OIDC issuer's `ca`. The error says what is wrong with the
/// file; the caller names the setting.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read the CA bundle: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE block found in the CA bundle".into());
    }
    Ok(roots)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(pem_message(e)))?;
    let chain = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_message(e)))?;
    if chain.is_empty() {
        return Err(bad(
            "no CERTIFICATE block found; expected a PEM chain with the server certificate first"
                .into(),
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block found; expected PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM".into()
            }
            other => pem_message(other),
        },
    })
}

fn pem_message(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        other => format!("not valid PEM: {other}"),
    }
}
