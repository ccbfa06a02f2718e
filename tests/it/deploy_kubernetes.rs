//! The gates' configuration shipped in `deploy/kubernetes/20-gate-config.yaml`, run as the
//! pods run it: the ConfigMap's `proxy.toml` in a copy of the pod's file layout (certificate
//! where cert-manager's Secret is mounted, htpasswd and token key where the auth Secret is,
//! the Redis password where its Secret is), two replicas sharing them, in front of the real
//! registry and sharing a real `redis-server` that wants that password. Only the listen
//! address, the upstream and the Redis address differ, set the way an operator would: through
//! the environment.
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
use util::image::{oci_image, read_oci_layout, RegistryHost};
use util::redis::Redis;
use util::registry::Registry;
use util::{
    accepts_tcp, describe, read_text, run, temp_dir, wait_until, write_file, KillOnDrop, TempDir,
};

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

/// The password of the Redis Secret (`registry-gate-redis`).
const REDIS_PASSWORD: &str = "fleet-redis-secret";

/// `/etc/registry-gate/{config,tls,auth,redis}` as the Deployment mounts them, under `root`;
/// returns the config file and the CA that signed the certificate.
fn pod_layout(root: &Path) -> (PathBuf, PathBuf) {
    let etc = root.join("etc/registry-gate");
    for dir in ["config", "tls", "auth", "redis"] {
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
    // The Secret's one key, as `kubectl create secret --from-literal` stores it.
    write_file(&etc.join("redis/password"), REDIS_PASSWORD);
    (config, generated.join("ca.pem"))
}

/// A real Redis that wants the Secret's password, as 15-redis.yaml runs it.
fn redis_with_password(tmp: &Path) -> Redis {
    let redis = Redis::start(tmp);
    let answer = redis.command(&["CONFIG", "SET", "requirepass", REDIS_PASSWORD]);
    assert!(answer.starts_with("+OK"), "requirepass: {answer}");
    redis
}

/// One replica: the shipped config, with listen, upstream and Redis from the environment.
/// It binds port 0 and is found by the address it reports in its (JSON) log.
fn replica(config: &Path, upstream: &str, redis: &str, log: &Path) -> (KillOnDrop, SocketAddr) {
    let out = File::create(log).expect("create gate log");
    let child = gate_command()
        .args(["run", "--config"])
        .arg(config)
        .env("REGISTRY_GATE_SERVER__LISTEN", "127.0.0.1:0")
        .env("REGISTRY_GATE_UPSTREAM__URL", upstream)
        .env("REGISTRY_GATE_CLUSTER__REDIS", redis)
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

/// The real registry and two replicas of the shipped configuration in front of it.
struct Replicas {
    registry: Registry,
    redis: Redis,
    config: PathBuf,
    /// The CA that signed the replicas' certificate, as `ca.crt` in a skopeo cert dir.
    trust: PathBuf,
    ca: PathBuf,
    a: SocketAddr,
    b: SocketAddr,
    _children: [KillOnDrop; 2],
    /// Last: dropped after the processes whose logs it holds.
    tmp: TempDir,
}

impl Replicas {
    fn start() -> Replicas {
        let tmp = temp_dir();
        let registry = Registry::start(tmp.path());
        let redis = redis_with_password(tmp.path());
        let (config, ca) = pod_layout(tmp.path());
        let (child_a, a) = replica(
            &config,
            &registry.url,
            &redis.url(),
            &tmp.path().join("a.log"),
        );
        let (child_b, b) = replica(
            &config,
            &registry.url,
            &redis.url(),
            &tmp.path().join("b.log"),
        );
        let trust = tmp.path().join("trust");
        std::fs::create_dir_all(&trust).expect("mkdir trust");
        std::fs::copy(&ca, trust.join("ca.crt")).expect("copy CA");
        Replicas {
            registry,
            redis,
            config,
            trust,
            ca,
            a,
            b,
            _children: [child_a, child_b],
            tmp,
        }
    }

    /// The replica at `addr` as skopeo reaches it, trusting the CA.
    fn host(&self, addr: SocketAddr) -> RegistryHost {
        RegistryHost {
            authority: addr.to_string(),
            cert_dir: self.trust.clone(),
        }
    }

    /// Both replicas' logs, for assertion messages.
    fn logs(&self) -> String {
        format!(
            "--- replica a ---\n{}\n--- replica b ---\n{}",
            read_text(&self.tmp.path().join("a.log")),
            read_text(&self.tmp.path().join("b.log"))
        )
    }
}

#[test]
fn the_shipped_rules_let_ci_push_to_one_replica_and_users_pull_from_the_other() {
    let r = Replicas::start();
    let image = oci_image(&r.tmp.path().join("image"), 1, 64 * 1024);
    let (a, b) = (r.host(r.a), r.host(r.b));

    // The shipped rules: @ci (builder) pushes, every other user pulls only.
    let refused = a.push("alice:alice-secret", &image.reference(), "team/app:v1");
    assert!(
        !refused.status.success(),
        "alice pushed, which the shipped rules forbid:\n{}\n{}",
        describe(&refused),
        r.logs()
    );
    let pushed = a.push("builder:builder-secret", &image.reference(), "team/app:v1");
    assert!(
        pushed.status.success(),
        "builder's push to replica a: {}\n{}",
        describe(&pushed),
        r.logs()
    );
    let pulled = r.tmp.path().join("pulled");
    let pull = b.pull("alice:alice-secret", "team/app:v1", &pulled);
    assert!(
        pull.status.success(),
        "alice's pull from replica b: {}\n{}",
        describe(&pull),
        r.logs()
    );
    assert_eq!(
        read_oci_layout(&pulled).manifest_digest,
        image.manifest_digest
    );
}

/// A token from replica a is good on replica b: the load balancer may send a client's next
/// request anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_replica_is_good_on_the_other() {
    let r = Replicas::start();
    let image = oci_image(&r.tmp.path().join("image"), 1, 16 * 1024);
    r.registry.push_directly(&image, "team/app:v1");
    let (a, b) = (r.a, r.b);

    let client = HttpsClient::new(&r.ca, Proto::Http1);
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
        r.logs()
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
        r.logs()
    );
    assert!(text(tags).await.contains("v1"));
}

/// Both replicas are ready the way the readiness probe asks, and `doctor` in a pod finds
/// the fleet's Redis usable with the password from its Secret.
#[test]
fn both_replicas_pass_the_readiness_probe() {
    let r = Replicas::start();
    for addr in [r.a, r.b] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_registry-gate"))
            .args(["healthcheck", "--ready", "--config"])
            .arg(&r.config)
            .env("REGISTRY_GATE_SERVER__LISTEN", addr.to_string())
            .env("REGISTRY_GATE_UPSTREAM__URL", &r.registry.url)
            .env("REGISTRY_GATE_CLUSTER__REDIS", r.redis.url()));
        assert!(out.status.success(), "{addr} not ready: {}", describe(&out));
    }
    let doctor = run(Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .args(["doctor", "--config"])
        .arg(&r.config)
        .env("REGISTRY_GATE_SERVER__LISTEN", r.a.to_string())
        .env("REGISTRY_GATE_UPSTREAM__URL", &r.registry.url)
        .env("REGISTRY_GATE_CLUSTER__REDIS", r.redis.url()));
    let report = String::from_utf8_lossy(&doctor.stdout);
    for line in [
        "ok    cluster: the Redis password is readable from",
        "ok    cluster: a probe key under \"registry-gate:\" was written, read back and deleted",
    ] {
        assert!(
            report.contains(line),
            "missing {line:?}:\n{report}\n{}",
            r.logs()
        );
    }
    assert!(!report.contains("FAIL  cluster"), "{report}\n{}", r.logs());
}
