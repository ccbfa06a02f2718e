//! `registry-gate gencert`: the gate's own CA (kept when it exists), a server certificate
//! signed by it, or a client certificate for `[tls] client_ca`; prints where each client
//! looks for the CA. The certificate work is `tls::selfsigned`'s; this file only talks.

use std::path::Path;

use crate::cli::GencertKind;
use crate::tls::{self, selfsigned};

/// Writes the files and says how to trust them.
pub(super) fn gencert(
    dir: &Path,
    options: tls::selfsigned::ServerOptions,
    force: bool,
    kind: Option<GencertKind>,
) -> Result<(), tls::TlsError> {
    let ca = dir.join("ca.pem");
    match kind {
        Some(GencertKind::Client { name }) => {
            let files = selfsigned::generate_client(dir, &name, options.days, options.rsa, force)?;
            println!(
                "client certificate for {name:?}: {} and {}",
                files.cert.display(),
                files.key.display()
            );
            println!(
                "signed by {}; give the gate that CA as [tls] client_ca",
                ca.display()
            );
            println!("docker looks for them in /etc/docker/certs.d/<host:port>/ (client.cert, client.key, and the server's ca.crt)");
            println!("skopeo and podman: put both files in the --cert-dir directory");
        }
        None => {
            let generated = selfsigned::generate_server(dir, &options, force)?;
            println!(
                "CA: {} (key {})",
                ca.display(),
                dir.join("ca-key.pem").display()
            );
            println!(
                "server certificate: {} and key {}",
                generated.cert.display(),
                generated.key.display()
            );
            println!("trust the CA on each client (port 443 shown; write host:port for others):");
            let mut names = options.dns.clone();
            names.extend(options.ips.iter().map(|ip| match ip {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }));
            if names.is_empty() {
                names.push("<host>".into());
            }
            for name in &names {
                println!("  docker: sudo mkdir -p /etc/docker/certs.d/{name} && sudo cp {} /etc/docker/certs.d/{name}/ca.crt", ca.display());
                println!("  podman: sudo mkdir -p /etc/containers/certs.d/{name} && sudo cp {} /etc/containers/certs.d/{name}/ca.crt", ca.display());
            }
            println!("  skopeo: mkdir -p DIR && cp {} DIR/ca.crt, then --cert-dir DIR (or --src-cert-dir/--dest-cert-dir)", ca.display());
            println!("  system: sudo cp {} /usr/local/share/ca-certificates/registry-gate.crt && sudo update-ca-certificates", ca.display());
        }
    }
    Ok(())
}
