//! Docker against the gate as against a real registry host: the gate listens inside a network
//! namespace of the test's own, on port 443 of a non-loopback address, so docker verifies its
//! certificate strictly, sends client certificates from /etc/docker/certs.d, and never falls
//! back to plain HTTP (it does all three differently for 127.0.0.0/8). The registry is on a
//! unix socket, which the namespace shares with the host.

use crate::util;

use std::path::{Path, PathBuf};

use util::docker::Dockerd;
use util::gate::{write_htpasswd, Gate, GateConfig};
use util::netns::Netns;
use util::registry::Registry;
use util::{describe, temp_dir};

/// Docker's per-registry trust directory, removed when the test ends.
struct CertsD(PathBuf);

impl CertsD {
    fn for_gate(gate: &Gate, with_ca: bool) -> CertsD {
        let dir = PathBuf::from("/etc/docker/certs.d").join(gate.authority());
        std::fs::create_dir_all(&dir).expect("mkdir /etc/docker/certs.d/<host:port>");
        if with_ca {
            std::fs::copy(&gate.pki.ca_pem, dir.join("ca.crt")).expect("copy CA");
        }
        CertsD(dir)
    }
}

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn users(tmp: &Path, list: &[(&str, &str)]) {
    let dir = tmp.join("gate");
    std::fs::create_dir_all(&dir).expect("mkdir gate");
    let owned: Vec<(String, String)> = list
        .iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    write_htpasswd(&dir.join("htpasswd"), &owned);
}

#[test]
fn docker_refuses_an_untrusted_gate_and_works_once_the_ca_is_trusted() {
    let tmp = temp_dir();
    let netns = Netns::create();
    let registry = Registry::start_unix(tmp.path());
    let gate = Gate::start_in(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[("builder", "builder-secret")]),
        &netns,
    );
    let dockerd = Dockerd::start(tmp.path());
    let authority = gate.authority();
    let name = format!("{authority}/secure/app:v1");
    dockerd.import_image(&name);

    let untrusted = dockerd.docker(&["login", "-u", "builder", "-p", "builder-secret", &authority]);
    assert!(
        !untrusted.status.success(),
        "docker trusted an unknown CA:\n{}",
        describe(&untrusted)
    );
    assert!(
        output_text(&untrusted).contains("x509"),
        "expected docker's x509 error:\n{}",
        describe(&untrusted)
    );

    let _trust = CertsD::for_gate(&gate, true);
    let wrong = dockerd.docker(&["login", "-u", "builder", "-p", "nope", &authority]);
    assert!(!wrong.status.success(), "a wrong password logged in");
    assert!(
        output_text(&wrong).to_lowercase().contains("unauthorized"),
        "{}",
        describe(&wrong)
    );
    dockerd.docker_ok(&["login", "-u", "builder", "-p", "builder-secret", &authority]);
    dockerd.docker_ok(&["push", &name]);
    let id = dockerd.image_id(&name);
    dockerd.docker_ok(&["rmi", &name]);
    dockerd.docker_ok(&["pull", &name]);
    assert_eq!(dockerd.image_id(&name), id);
    // Nothing went around TLS: every request in the log came through the gate's listener.
    assert!(gate.log().contains("user=builder"), "{}", gate.log());
}

#[test]
fn docker_pulls_anonymously_from_a_secure_gate_in_token_mode() {
    let tmp = temp_dir();
    let netns = Netns::create();
    let registry = Registry::start_unix(tmp.path());
    users(tmp.path(), &[("builder", "builder-secret")]);
    let gate = Gate::start_in(
        tmp.path(),
        GateConfig::new(&registry.url).extra_toml(
            "[auth]\nmode = \"token\"\nhtpasswd = [\"htpasswd\"]\nanonymous = \"pull\"\n",
        ),
        &netns,
    );
    let _trust = CertsD::for_gate(&gate, true);
    let dockerd = Dockerd::start(tmp.path());
    let authority = gate.authority();
    let name = format!("{authority}/public/app:v1");
    dockerd.import_image(&name);

    let anonymous_push = dockerd.docker(&["push", &name]);
    assert!(
        !anonymous_push.status.success(),
        "anonymous push went through"
    );
    dockerd.docker_ok(&["login", "-u", "builder", "-p", "builder-secret", &authority]);
    dockerd.docker_ok(&["push", &name]);
    dockerd.docker_ok(&["logout", &authority]);
    dockerd.docker_ok(&["rmi", &name]);
    dockerd.docker_ok(&["pull", &name]);
}

#[test]
fn docker_is_identified_by_its_client_certificate_without_logging_in() {
    let tmp = temp_dir();
    let netns = Netns::create();
    let registry = Registry::start_unix(tmp.path());
    // The gate's address is known before it starts, so docker's directory can be filled
    // first and the CA path put into the gate's configuration.
    let certs_d = CertsD(PathBuf::from("/etc/docker/certs.d").join(format!("{}:443", netns.ip)));
    std::fs::create_dir_all(&certs_d.0).expect("mkdir certs.d");
    let client_ca =
        util::pki::client_certificate(&tmp.path().join("clients"), "builder1", &certs_d.0);
    users(tmp.path(), &[("someone", "else")]);
    let gate = Gate::start_in(
        tmp.path(),
        GateConfig::new(&registry.url)
            .tls_toml(&format!(
                "client_ca = \"{}\"\nclient_auth = \"optional\"\n",
                client_ca.display()
            ))
            .extra_toml(
                "[auth]\nhtpasswd = [\"htpasswd\"]\n\
                 [[rules]]\nusers = [\"builder1\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n",
            ),
        &netns,
    );
    assert_eq!(
        certs_d.0,
        PathBuf::from("/etc/docker/certs.d").join(gate.authority())
    );
    std::fs::copy(&gate.pki.ca_pem, certs_d.0.join("ca.crt")).expect("copy CA");

    let dockerd = Dockerd::start(tmp.path());
    let name = format!("{}/mtls/app:v1", gate.authority());
    dockerd.import_image(&name);
    dockerd.docker_ok(&["push", &name]);
    assert!(
        gate.log().contains("user=builder1"),
        "the push was not attributed to the certificate's CN:\n{}",
        gate.log()
    );
}
