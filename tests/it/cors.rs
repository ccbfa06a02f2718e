//! `[ui] cors_origins`: a registry UI on another origin calls the registry API through the
//! gate, in a real headless Chromium, while pages on any other origin cannot read a byte;
//! preflights are answered by the gate and never reach the registry.

use crate::util;

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::StatusCode;
use util::client::{empty, header, request, Proto};
use util::gate::{Gate, GateConfig};
use util::image::oci_image;
use util::peer::{answer, Peer};
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::temp_dir;
use util::webdriver::Browser;

/// A page on its own origin (127.0.0.1 and a port of its own), served for every request.
/// The page is set after the start: the origin goes into the gate's configuration before
/// the page can know the gate's address.
struct PageServer {
    origin: String,
    page: Arc<Mutex<String>>,
    _peer: Peer,
}

impl PageServer {
    fn start() -> PageServer {
        let page = Arc::new(Mutex::new(String::new()));
        let served = page.clone();
        let peer = Peer::start(None, move |_, _| {
            let html = served.lock().map(|p| p.clone()).unwrap_or_default();
            answer(200, "text/html; charset=utf-8", html)
        });
        PageServer {
            origin: format!("http://{}", peer.addr),
            page,
            _peer: peer,
        }
    }

    /// Serves a page that fetches `url` with Basic credentials (which makes the browser
    /// send a preflight) and writes what it could read into `#out`.
    fn serve_fetch_of(&self, url: &str, basic: &str) {
        let html = format!(
            "<!doctype html><html><body><pre id=\"out\">pending</pre><script>\n\
             fetch({url:?}, {{ headers: {{ 'Authorization': 'Basic {basic}' }} }})\n\
               .then(r => r.text().then(t => {{\n\
                 document.getElementById('out').textContent = r.status + ' ' +\n\
                   r.headers.get('Docker-Distribution-Api-Version') + ' ' + t;\n\
                 document.body.dataset.done = '1'; }}))\n\
               .catch(e => {{ document.getElementById('out').textContent = 'blocked ' + e;\n\
                 document.body.dataset.done = '1'; }});\n\
             </script></body></html>"
        );
        if let Ok(mut page) = self.page.lock() {
            *page = html;
        }
    }
}

fn cors_gate(tmp: &std::path::Path, upstream: &str, origin: &str) -> Gate {
    Gate::start(
        tmp,
        GateConfig::new(upstream)
            .basic_auth(&[("alice", "alice-secret")])
            .extra_toml(&format!("[ui]\ncors_origins = [{origin:?}]\n")),
    )
}

#[test]
fn a_listed_ui_reads_the_registry_in_chromium_and_no_other_page_can() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let basic = STANDARD.encode("alice:alice-secret");
    let listed = PageServer::start();
    let unlisted = PageServer::start();
    let gate = cors_gate(tmp.path(), &registry.url, &listed.origin);
    let image = oci_image(&tmp.path().join("image"), 1, 4 * 1024);
    gate.push_ok("alice:alice-secret", &image.reference(), "team/app:v1");
    let catalog = gate.url("/v2/_catalog");
    listed.serve_fetch_of(&catalog, &basic);
    unlisted.serve_fetch_of(&catalog, &basic);

    let browser = Browser::start(&tmp.path().join("browser"));
    // Chromium must trust the gate for the fetch; a first visit makes the certificate
    // accepted (acceptInsecureCerts), as a user would have a trusted certificate.
    browser.goto(&gate.url("/healthz"));

    browser.goto(&listed.origin);
    browser.wait_for("body[data-done]");
    let read = browser.text(&browser.get("#out"));
    browser.screenshot("cors-listed-origin");
    assert!(
        read.starts_with("200 registry/2.0 ") && read.contains("team/app"),
        "the listed UI could not read the catalog: {read}\n{}",
        gate.log()
    );

    browser.goto(&unlisted.origin);
    browser.wait_for("body[data-done]");
    let read = browser.text(&browser.get("#out"));
    browser.screenshot("cors-unlisted-origin");
    assert!(
        read.starts_with("blocked"),
        "a page on an unlisted origin read the registry: {read}"
    );
    assert!(!read.contains("team/app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_by_the_gate_and_answers_name_only_listed_origins() {
    let recorder = Recorder::start(|_| Reply::status(200));
    let tmp = temp_dir();
    let listed = "https://ui.example.com";
    let gate = cors_gate(tmp.path(), &recorder.url(), listed);
    let client = gate.client(Proto::Http1);

    // A preflight needs no credentials and never reaches the registry.
    let answer = client
        .send(
            request("OPTIONS", &gate.url("/v2/team/app/tags/list"))
                .header("origin", listed)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization")
                .body(empty())
                .expect("preflight"),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some(listed));
    assert_eq!(
        header(&answer, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(header(&answer, "access-control-allow-headers")
        .is_some_and(|h| h.contains("Authorization")));
    assert!(header(&answer, "access-control-allow-methods").is_some_and(|h| h.contains("DELETE")));

    // From anywhere else: no CORS answer at all, and OPTIONS is refused as before.
    let refused = client
        .send(
            request("OPTIONS", &gate.url("/v2/team/app/tags/list"))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "GET")
                .body(empty())
                .expect("preflight"),
        )
        .await;
    assert_ne!(refused.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    assert!(
        recorder.requests().iter().all(|r| r.method != "OPTIONS"),
        "a preflight reached the registry: {:?}",
        recorder.requests()
    );

    // Error answers carry the headers too, so a UI can read the challenge and log in; the
    // origin is named, never `*`, and every answer varies by Origin.
    let challenge = client
        .send(
            request("GET", &gate.url("/v2/"))
                .header("origin", listed)
                .body(empty())
                .expect("ping"),
        )
        .await;
    assert_eq!(challenge.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&challenge, "access-control-allow-origin"),
        Some(listed)
    );
    let exposed = header(&challenge, "access-control-expose-headers").unwrap_or("");
    for name in ["WWW-Authenticate", "Docker-Content-Digest", "Link"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    assert!(header(&challenge, "vary").is_some_and(|v| v.contains("Origin")));
    let other = client
        .send(
            request("GET", &gate.url("/v2/"))
                .header("origin", "https://ui.example.com.evil.net")
                .body(empty())
                .expect("ping"),
        )
        .await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    // The browser's own pages are never shared.
    let ui = client
        .send(
            request("GET", &gate.url("/ui/login"))
                .header("origin", listed)
                .body(empty())
                .expect("ui"),
        )
        .await;
    assert_eq!(header(&ui, "access-control-allow-origin"), None);
}
