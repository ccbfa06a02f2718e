//! Identities beyond Basic: token mode (the gate as its own token server, so docker can pull
//! anonymously) and client certificates, proved with the real docker and skopeo clients
//! against the real registry.

use crate::util;

use std::path::Path;

use util::docker::Dockerd;
use util::gate::{write_htpasswd, Gate, GateConfig};
use util::image::{oci_image, skopeo};
use util::registry::Registry;
use util::{describe, temp_dir};

fn token_mode(tmp: &Path, users: &[(&str, &str)], rules: &str) -> String {
    let dir = tmp.join("gate");
    std::fs::create_dir_all(&dir).expect("mkdir gate");
    let users: Vec<(String, String)> = users
        .iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    write_htpasswd(&dir.join("htpasswd"), &users);
    format!("[auth]\nmode = \"token\"\nhtpasswd = [\"htpasswd\"]\nanonymous = \"pull\"\n{rules}")
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn token_mode_lets_docker_pull_anonymously_and_push_only_after_login() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).extra_toml(&token_mode(
            tmp.path(),
            &[("builder", "builder-secret")],
            "",
        )),
    );
    let dockerd = Dockerd::start(tmp.path());
    let name = format!("{}/team/app:v1", gate.authority());
    dockerd.import_image(&name);

    let refused = dockerd.docker(&["push", &name]);
    assert!(
        !refused.status.success(),
        "anonymous push went through:\n{}",
        describe(&refused)
    );
    let text = output_text(&refused);
    assert!(
        text.contains("anonymous users (log in first) may not push team/app"),
        "docker should show the gate's reason:\n{text}"
    );

    dockerd.docker_ok(&[
        "login",
        "-u",
        "builder",
        "-p",
        "builder-secret",
        &gate.authority(),
    ]);
    dockerd.docker_ok(&["push", &name]);
    dockerd.docker_ok(&["logout", &gate.authority()]);

    let id = dockerd.image_id(&name);
    dockerd.docker_ok(&["rmi", &name]);
    dockerd.docker_ok(&["pull", &name]);
    assert_eq!(
        dockerd.image_id(&name),
        id,
        "pulled image differs from the pushed one"
    );

    let log = gate.log();
    assert!(
        log.contains("path=/token"),
        "docker never asked the gate for a token:\n{log}"
    );
    assert!(
        log.contains("user=builder"),
        "the push was not attributed to builder:\n{log}"
    );
}

#[test]
fn token_mode_gives_skopeo_what_the_rules_allow() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let rules = "[[rules]]\nusers = [\"builder\"]\nrepositories = [\"ci/*\"]\nactions = [\"pull\", \"push\"]\n\
                 [[rules]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n";
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).extra_toml(&token_mode(
            tmp.path(),
            &[("builder", "builder-secret"), ("reader", "reader-secret")],
            rules,
        )),
    );
    let image = oci_image(&tmp.path().join("image"), 2, 64 * 1024);
    let certs = gate.pki.cert_dir.to_str().expect("utf-8 path");
    let dest = format!("docker://{}/ci/app:v1", gate.authority());
    let push = |creds: Option<&str>| {
        let mut args = vec!["copy", "--dest-cert-dir", certs];
        if let Some(c) = creds {
            args.extend(["--dest-creds", c]);
        }
        let src = image.reference();
        let mut owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        owned.push(src);
        owned.push(dest.clone());
        skopeo(&owned.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let anonymous = push(None);
    assert!(
        !anonymous.status.success(),
        "anonymous push succeeded:\n{}",
        describe(&anonymous)
    );
    let reader = push(Some("reader:reader-secret"));
    assert!(
        !reader.status.success(),
        "reader push succeeded:\n{}",
        describe(&reader)
    );
    let builder = push(Some("builder:builder-secret"));
    assert!(
        builder.status.success(),
        "builder push failed:\n{}",
        describe(&builder)
    );

    // Anonymous pull: no credentials at all.
    let inspect = skopeo(&["inspect", "--raw", "--cert-dir", certs, &dest]);
    assert!(
        inspect.status.success(),
        "anonymous pull refused:\n{}",
        describe(&inspect)
    );
    let wrong = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        certs,
        "--creds",
        "builder:wrong",
        &dest,
    ]);
    assert!(
        !wrong.status.success(),
        "a wrong password was accepted:\n{}",
        describe(&wrong)
    );
}

#[test]
fn a_required_client_certificate_identifies_skopeo_and_no_certificate_fails_the_handshake() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let with_cert = tmp.path().join("with-cert");
    std::fs::create_dir_all(&with_cert).expect("mkdir");
    let client_ca =
        util::pki::client_certificate(&tmp.path().join("clients"), "builder1", &with_cert);
    let rules = "[auth]\nmode = \"none\"\n\
                 [[rules]]\nusers = [\"builder1\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n";
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .tls_toml(&format!(
                "client_ca = \"{}\"\nclient_auth = \"required\"\n",
                client_ca.display()
            ))
            .extra_toml(rules),
    );
    std::fs::copy(gate.pki.cert_dir.join("ca.crt"), with_cert.join("ca.crt")).expect("copy CA");
    let image = oci_image(&tmp.path().join("image"), 1, 32 * 1024);
    let dest = format!("docker://{}/mtls/app:v1", gate.authority());

    let ok = skopeo(&[
        "copy",
        "--dest-cert-dir",
        with_cert.to_str().expect("utf-8"),
        &image.reference(),
        &dest,
    ]);
    assert!(
        ok.status.success(),
        "push with a client certificate failed:\n{}",
        describe(&ok)
    );
    assert!(
        gate.log().contains("user=builder1"),
        "the certificate's CN was not the user:\n{}",
        gate.log()
    );

    let without = gate.pki.cert_dir.to_str().expect("utf-8");
    let refused = skopeo(&["inspect", "--raw", "--cert-dir", without, &dest]);
    assert!(
        !refused.status.success(),
        "no client certificate, yet served:\n{}",
        describe(&refused)
    );
    let text = output_text(&refused);
    assert!(
        text.contains("certificate") || text.contains("tls") || text.contains("handshake"),
        "expected a TLS failure:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_token_key_accept_each_others_tokens() {
    use util::client::{empty, request, text, Proto};
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let key = tmp.path().join("shared-token.key");
    util::write_file(
        &key,
        "c2hhcmVkLXRva2VuLWtleS1mb3ItdHdvLXJlcGxpY2FzLW9mLXRoZS1nYXRl\n",
    );
    let config = |dir: &Path| {
        let auth = token_mode(dir, &[("builder", "builder-secret")], "");
        auth.replace(
            "mode = \"token\"\n",
            &format!("mode = \"token\"\ntoken_key = \"{}\"\n", key.display()),
        )
    };
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Gate::start(
        &a_dir,
        GateConfig::new(&registry.url).extra_toml(&config(&a_dir)),
    );
    let b = Gate::start(
        &b_dir,
        GateConfig::new(&registry.url).extra_toml(&config(&b_dir)),
    );

    let client_a = a.client(Proto::Http1);
    let url = a.url("/token?service=registry-gate&scope=repository:team/app:pull,push");
    let response = client_a
        .send(
            request("GET", &url)
                .header(
                    "authorization",
                    format!("Basic {}", base64_of("builder:builder-secret")),
                )
                .body(empty())
                .expect("token request"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).expect("token JSON");
    let token = body["token"].as_str().expect("token").to_string();

    let client_b = b.client(Proto::Http1);
    let upload = client_b
        .send(
            request("POST", &b.url("/v2/team/app/blobs/uploads/"))
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .expect("upload request"),
        )
        .await;
    assert_eq!(upload.status(), 202, "replica b refused replica a's token");
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
