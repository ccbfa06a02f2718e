//! The gates' configuration shipped in `deploy/kubernetes/20-gate-config.yaml`, run as the
//! pods run it: the ConfigMap's `proxy.toml` in a copy of the pod's file layout (certificate
//! where cert-manager's Secret is mounted, htpasswd and token key where the auth Secret is),
//! two replicas sharing them, in front of the real registry. Only the listen address and the
//! upstream differ, set the way an operator would: through the environment.
//! (`scripts/check-kubernetes` validates the manifests themselves.)

use crate::util;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use util::client::{empty, request, text, HttpsClient, Proto};
use util::gate::{gate_command, reported_listener, write_htpasswd};
use util::image::{oci_image, read_oci_layout, skopeo, skopeo_ok};
use util::registry::Registry;
use util::{accepts_tcp, describe, read_text, run, temp_dir, wait_until, write_file, KillOnDrop};

const CONFIG_MAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/20-gate-config.yaml"
);

/// The `proxy.toml: |` block scalar of the ConfigMap, unindented.
fn shipped_proxy_toml() -> String {
    let yaml = read_text(Path::new(CONFIG_MAP));
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "proxy.toml: |");
    assert!(lines.next().is_some(), "no proxy.toml in {CONFIG_MAP}");
    let mut toml = String::new();
    for line in lines {
        if line.is_empty() {
            toml.push('\n');
        } else if let Some(text) = line.strip_prefix("    ") {
            toml.push_str(text);
            toml.push('\n');
        } else {
            break;
        }
    }
    toml
}

/// `/etc/registry-gate/{config,tls,auth}` as the Deployment mounts them, under `root`;
/// returns the config file and the CA that signed the certificate.
fn pod_layout(root: &Path) -> (PathBuf, PathBuf) {
    let etc = root.join("etc/registry-gate");
    for dir in ["config", "tls", "auth"] {
        std::fs::create_dir_all(etc.join(dir)).expect("mkdir pod layout");
    }
    let config = etc.join("config/proxy.toml");
    write_file(&config, shipped_proxy_toml());

    let generated = root.join("gencert");
    let out = run(gate_command().args([
        "gencert",
        "--dir",
        generated.to_str().expect("UTF-8 temp path"),
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ]));
    assert!(out.status.success(), "gencert: {}", describe(&out));
    // cert-manager's Secret keys.
    std::fs::copy(generated.join("cert.pem"), etc.join("tls/tls.crt")).expect("copy cert");
    std::fs::copy(generated.join("key.pem"), etc.join("tls/tls.key")).expect("copy key");

    write_htpasswd(
        &etc.join("auth/htpasswd"),
        &[
            ("builder".into(), "builder-secret".into()),
            ("alice".into(), "alice-secret".into()),
        ],
    );
    write_file(
        &etc.join("auth/token.key"),
        base64::engine::general_purpose::STANDARD.encode([0x5au8; 32]) + "\n",
    );
    (config, generated.join("ca.pem"))
}

/// One replica: the shipped config, with listen and upstream from the environment. It
/// binds port 0 and is found by the address it reports in its (JSON) log.
fn replica(config: &Path, upstream: &str, log: &Path) -> (KillOnDrop, SocketAddr) {
    let out = File::create(log).expect("create gate log");
    let child = gate_command()
        .args(["run", "--config"])
        .arg(config)
        .env("REGISTRY_GATE_SERVER__LISTEN", "127.0.0.1:0")
        .env("REGISTRY_GATE_UPSTREAM__URL", upstream)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log handle"))
        .stderr(out)
        .spawn()
        .expect("spawn registry-gate");
    let child = KillOnDrop(child);
    let mut addr = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            addr = reported_listener(&read_text(log), "https");
            addr.is_some_and(accepts_tcp)
        }),
        "replica did not start:\n{}",
        read_text(log)
    );
    (child, addr.expect("reported while waiting"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_kubernetes_config_serves_two_replicas_in_token_mode() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let (config, ca) = pod_layout(tmp.path());
    let (_a, a) = replica(&config, &registry.url, &tmp.path().join("a.log"));
    let (_b, b) = replica(&config, &registry.url, &tmp.path().join("b.log"));
    let logs = || {
        format!(
            "--- replica a ---\n{}\n--- replica b ---\n{}",
            read_text(&tmp.path().join("a.log")),
            read_text(&tmp.path().join("b.log"))
        )
    };

    let trust = tmp.path().join("trust");
    std::fs::create_dir_all(&trust).expect("mkdir trust");
    std::fs::copy(&ca, trust.join("ca.crt")).expect("copy CA");
    let certs = trust.to_str().expect("UTF-8 temp path");
    let image = oci_image(&tmp.path().join("image"), 1, 64 * 1024);

    // The shipped rules: @ci (builder) pushes, every other user pulls only.
    let refused = skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        "alice:alice-secret",
        &image.reference(),
        &format!("docker://{a}/team/app:v1"),
    ]);
    assert!(
        !refused.status.success(),
        "alice pushed, which the shipped rules forbid:\n{}\n{}",
        describe(&refused),
        logs()
    );
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        "builder:builder-secret",
        &image.reference(),
        &format!("docker://{a}/team/app:v1"),
    ]);
    let pulled = tmp.path().join("pulled");
    skopeo_ok(&[
        "copy",
        "--src-cert-dir",
        certs,
        "--src-creds",
        "alice:alice-secret",
        &format!("docker://{b}/team/app:v1"),
        &format!("oci:{}:latest", pulled.display()),
    ]);
    assert_eq!(
        read_oci_layout(&pulled).manifest_digest,
        image.manifest_digest
    );

    // A token from replica a is good on replica b: the load balancer may send a client's
    // next request anywhere.
    let client = HttpsClient::new(&ca, Proto::Http1);
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:alice-secret");
    let response = client
        .send(
            request(
                "GET",
                &format!(
                    "https://{a}/token?service=registry.example.com&scope=repository:team/app:pull"
                ),
            )
            .header("authorization", format!("Basic {basic}"))
            .body(empty())
            .expect("token request"),
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "no token from replica a:\n{}",
        logs()
    );
    let body: serde_json::Value = serde_json::from_str(&text(response).await).expect("token JSON");
    let token = body["token"].as_str().expect("token in the answer");
    let tags = client
        .send(
            request("GET", &format!("https://{b}/v2/team/app/tags/list"))
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .expect("tags request"),
        )
        .await;
    assert_eq!(
        tags.status(),
        200,
        "replica b refused replica a's token:\n{}",
        logs()
    );
    assert!(text(tags).await.contains("v1"));

    // Both replicas are ready the way the readiness probe asks.
    for addr in [a, b] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_registry-gate"))
            .args(["healthcheck", "--ready", "--config"])
            .arg(&config)
            .env("REGISTRY_GATE_SERVER__LISTEN", addr.to_string())
            .env("REGISTRY_GATE_UPSTREAM__URL", &registry.url));
        assert!(out.status.success(), "{addr} not ready: {}", describe(&out));
    }
}
