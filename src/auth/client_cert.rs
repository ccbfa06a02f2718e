//! The user name a verified client certificate stands for: its subject CN, or its first DNS
//! or email SAN, as `[tls] client_identity` says. rustls has already verified the chain
//! against `[tls] client_ca` by the time this runs; this only reads a name.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{CertIdentity, TOKEN_ACCOUNT_PREFIX};

/// The identity of `leaf` (DER), or `None` if it carries no such name.
pub fn identity(leaf: &[u8], which: CertIdentity) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let name = match which {
        CertIdentity::CommonName => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertIdentity::SanDns | CertIdentity::SanEmail => {
            let san = cert.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .find_map(|n| match (n, which) {
                    (GeneralName::DNSName(d), CertIdentity::SanDns) => Some(d.to_string()),
                    (GeneralName::RFC822Name(e), CertIdentity::SanEmail) => Some(e.to_string()),
                    _ => None,
                })
        }
    }?;
    // A name the rules could misread identifies nobody: empty, control characters, or an
    // access token's `token:NAME`, which `[[protect]]` may exempt by that name.
    let misread = name.is_empty()
        || name.chars().any(char::is_control)
        || name.starts_with(TOKEN_ACCOUNT_PREFIX);
    (!misread).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn names_are_read_as_configured() {
        let der = cert(
            Some("builder1"),
            vec![
                SanType::DnsName("ci.example".try_into().expect("dns")),
                SanType::Rfc822Name("ci@example.com".try_into().expect("email")),
            ],
        );
        assert_eq!(
            identity(&der, CertIdentity::CommonName).as_deref(),
            Some("builder1")
        );
        assert_eq!(
            identity(&der, CertIdentity::SanDns).as_deref(),
            Some("ci.example")
        );
        assert_eq!(
            identity(&der, CertIdentity::SanEmail).as_deref(),
            Some("ci@example.com")
        );
    }

    #[test]
    fn an_access_token_name_identifies_nobody() {
        let der = cert(Some("token:release"), vec![]);
        assert_eq!(identity(&der, CertIdentity::CommonName), None);
    }

    #[test]
    fn missing_names_identify_nobody() {
        let der = cert(None, vec![]);
        assert_eq!(identity(&der, CertIdentity::CommonName), None);
        assert_eq!(identity(&der, CertIdentity::SanDns), None);
        assert_eq!(
            identity(b"not a certificate", CertIdentity::CommonName),
            None
        );
    }
}
