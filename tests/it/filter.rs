//! `[filter]`: the default user-agent rule decides exactly as the nginx recipe's PCRE pattern
//! does (checked against nginx itself), and address rules refuse real clients.

use crate::util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use util::client::Proto;
use util::gate::{Gate, GateConfig};
use util::image::{oci_image, skopeo};
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{accepts_tcp, describe, require_tool, temp_dir, wait_until, write_file, KillOnDrop};

/// The recipe's rule, verbatim (`../shared/context/001_…`).
const NGINX_RULE: &str = r#"^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$"#;

/// Real user agents, old and new.
const USER_AGENTS: &[&str] = &[
    "docker/1.3.2 go/go1.3.3 git-commit/39fa2fa kernel/3.16.0-4-amd64 os/linux arch/amd64",
    "docker/1.4.1 go/go1.3.3 git-commit/5bc2ff8 kernel/3.13.0 os/linux arch/amd64",
    "docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/3.13.0 os/linux arch/amd64",
    "docker/1.5.0-dev go/go1.4.1 git-commit/a8a31ef-dirty kernel/3.16 os/linux arch/amd64",
    "docker/1.5.1-dev",
    "docker/1.5.10-dev",
    "docker/1.5",
    "docker/1.50.1",
    "docker/1.6.0 go/go1.4.2 git-commit/4749651 kernel/3.16 os/linux arch/amd64",
    "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))",
    "docker/28.0.1 go/go1.23.6 git-commit/bbd0a17 kernel/6.8.0 os/linux arch/amd64 UpstreamClient(Docker-Client/28.0.1 \\(linux\\))",
    "containerd/v1.7.24",
    "skopeo/1.9.3",
    "libpod/4.3.1",
    "Go-http-client/1.1",
    "Go 1.1 package http",
    "go 1.1 package http",
    "curl/7.88.1",
];

/// The status a server on `port` gives `GET /v2/` with this user agent.
fn status_for(port: u16, user_agent: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_user_agent_rule_decides_as_the_nginx_recipe_does() {
    require_tool("nginx", "nginx");
    let tmp = temp_dir();
    let port = util::free_port();
    let prefix = tmp.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("mkdir nginx");
    let conf = prefix.join("nginx.conf");
    write_file(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nerror_log stderr;\npid {pid};\nevents {{}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n    location /v2/ {{\n\
             if ($http_user_agent ~ \"{rule}\" ) {{ return 404; }}\n      return 200;\n    }}\n  }}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            p = prefix.display(),
            rule = NGINX_RULE,
        ),
    );
    let _nginx = KillOnDrop(
        Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || accepts_tcp(
            ([127, 0, 0, 1], port).into()
        )),
        "nginx did not start"
    );

    let recorder = Recorder::start(|_| Reply::ok_json());
    let gate = Gate::start(tmp.path(), GateConfig::new(recorder.url()));
    let client = gate.client(Proto::Http1);
    let mut refused = 0;
    for ua in USER_AGENTS {
        let nginx = status_for(port, ua);
        let response = client
            .send(
                util::client::request("GET", &gate.url("/v2/"))
                    .header("user-agent", *ua)
                    .body(util::client::empty())
                    .expect("request"),
            )
            .await;
        let gate_status = response.status().as_u16();
        assert_eq!(
            gate_status, nginx,
            "{ua:?}: gate {gate_status}, nginx {nginx}"
        );
        if nginx == 404 {
            refused += 1;
        }
    }
    // The table exercises both outcomes, or the comparison proves nothing.
    assert!(
        refused >= 5 && refused < USER_AGENTS.len() - 5,
        "{refused} refused"
    );
    assert_eq!(
        recorder.requests().len(),
        USER_AGENTS.len() - refused,
        "refused clients reached the registry"
    );
}

#[test]
fn address_rules_refuse_a_real_client_and_allow_it_when_listed() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let image = oci_image(&tmp.path().join("image"), 1, 8 * 1024);
    for (filter, allowed) in [
        ("[filter]\nallow = [\"10.0.0.0/8\"]\n", false),
        ("[filter]\ndeny = [\"127.0.0.0/8\"]\n", false),
        (
            "[filter]\nallow = [\"127.0.0.1\"]\ndeny = [\"10.0.0.0/8\"]\n",
            true,
        ),
    ] {
        let dir = tmp.path().join(format!("case{}", filter.len()));
        let gate = Gate::start(&dir, GateConfig::new(&registry.url).extra_toml(filter));
        let dest = format!("docker://{}/filtered/app:v1", gate.authority());
        let certs = gate.pki.cert_dir.to_str().expect("utf-8");
        let out = skopeo(&["copy", "--dest-cert-dir", certs, &image.reference(), &dest]);
        assert_eq!(
            out.status.success(),
            allowed,
            "{filter}: {}",
            describe(&out)
        );
        if !allowed {
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(text.contains("403"), "{filter}: {text}");
        }
    }
}
