//! HEAD answers the gate makes itself (errors, probes, the browser's pages and redirects)
//! carry the status and headers a GET gets, `Content-Length` included, and no body, over
//! HTTP/1.1 and HTTP/2 alike (RFC 9110 §9.3.2). Over HTTP/2 the gate used to send the body
//! as DATA after a HEAD, which RFC 9113 makes a malformed response: `curl --http2 -I` failed
//! with PROTOCOL_ERROR instead of showing the 401. What was sent on the wire is counted with
//! the raw HTTP/2 client, since hyper's own client hides a body it knows HEAD cannot have.

use crate::util;

use std::time::Duration;

use base64::Engine;
use http::HeaderMap;
use http_body_util::BodyExt;
use util::client::{empty, request, HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::rawh2::{whole_exchange, Answer, Frame};
use util::recorder::{Recorder, Reply};
use util::temp_dir;

const USER: (&str, &str) = ("alice", "alice-secret");
/// The registry's wait for a path under this repository, past the gate's read timeout.
const SLOW: &str = "slow/app";

/// One gate-made answer: a request that gets it, and its status.
struct Row {
    what: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
}

fn row(what: &'static str, path: &'static str, status: u16) -> Row {
    Row {
        what,
        path,
        headers: Vec::new(),
        status,
    }
}

impl Row {
    fn with(mut self, name: &'static str, value: impl Into<String>) -> Row {
        self.headers.push((name, value.into()));
        self
    }
}

fn basic() -> String {
    let pair = format!("{}:{}", USER.0, USER.1);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// What a client read: status, headers without `date` (a clock, not the answer), body.
#[derive(Debug)]
struct Read {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

async fn send(client: &HttpsClient, gate: &Gate, method: &str, row: &Row) -> Read {
    let mut builder = request(method, &gate.url(row.path));
    for (name, value) in &row.headers {
        builder = builder.header(*name, value);
    }
    let response = client.send(builder.body(empty()).expect("request")).await;
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    headers.remove(http::header::DATE);
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {}: body: {e}", row.path))
        .to_bytes()
        .to_vec();
    Read {
        status,
        headers,
        body,
    }
}

/// Asserts every row over both protocols and the raw HTTP/2 frames.
async fn assert_head_answers(gate: &Gate, rows: &[Row]) {
    let mut checked = 0;
    for proto in [Proto::Http1, Proto::Http2] {
        let client = gate.client(proto);
        for row in rows {
            let what = format!("{} ({proto:?}, {})", row.what, row.path);
            let get = send(&client, gate, "GET", row).await;
            let head = send(&client, gate, "HEAD", row).await;
            assert_eq!(get.status, row.status, "{what}: GET: {get:?}");
            assert_eq!(head.status, row.status, "{what}: HEAD: {head:?}");
            assert!(head.body.is_empty(), "{what}: HEAD with a body: {head:?}");
            assert_eq!(
                head.headers, get.headers,
                "{what}: HEAD and GET headers differ"
            );
            let length = get.headers.get(http::header::CONTENT_LENGTH);
            assert_eq!(
                length.and_then(|v| v.to_str().ok()),
                Some(get.body.len().to_string().as_str()),
                "{what}: the GET does not state its length: {get:?}"
            );
            checked += 1;
        }
    }
    for row in rows {
        let mut fields = vec![
            (":method", "HEAD".to_string()),
            (":scheme", "https".to_string()),
            (":authority", gate.authority()),
            (":path", row.path.to_string()),
        ];
        fields.extend(row.headers.iter().map(|(n, v)| (*n, v.clone())));
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let seen = whole_exchange(
            gate.addr,
            &gate.pki.ca_pem,
            &[Frame::headers(&fields, true)],
        )
        .await
        .unwrap_or_else(|e| panic!("{}: raw HTTP/2 HEAD: {e}", row.what));
        assert_eq!(
            seen.answer,
            Answer::Status(row.status),
            "{}: raw HTTP/2 HEAD: {seen:?}",
            row.what
        );
        assert_eq!(
            (seen.data_frames, seen.data_bytes, seen.ended),
            (0, 0, true),
            "{}: a HEAD answer over HTTP/2 must end with its headers, no DATA: {seen:?}",
            row.what
        );
        checked += 1;
    }
    assert_eq!(checked, rows.len() * 3, "every row checked three ways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_made_by_the_gate_carry_no_body_over_either_protocol() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|r| {
        if r.uri.contains(SLOW) {
            // Past the gate's read timeout below: the gate answers 504 itself.
            Reply::ok_json().delay(Duration::from_secs(6))
        } else {
            Reply::ok_json()
        }
    });
    let mut config = GateConfig::new(recorder.url())
        .basic_auth(&[USER])
        // The test client is the proxy, so a row can come from a refused address.
        .trusted_proxies(&["127.0.0.0/8"])
        .extra_toml(
            "\n[filter]\ndeny = [\"203.0.113.0/24\"]\n\
             \n[[rules]]\nusers = [\"alice\"]\nrepositories = [\"open/**\", \"slow/**\"]\nactions = [\"pull\"]\n",
        );
    config.read_timeout = "2s".into();
    let gate = Gate::start(tmp.path(), config);

    #[rustfmt::skip]
    let rows = vec![
        row("liveness", "/healthz", 200),
        row("readiness", "/readyz", 200),
        row("no credentials", "/v2/", 401),
        // From an address of its own, so the login brake counts these failures there.
        row("wrong password", "/v2/", 401).with("authorization", "Basic YWxpY2U6bm8=").with("x-forwarded-for", "198.51.100.9"),
        row("a rule denies", "/v2/closed/app/manifests/v1", 403).with("authorization", basic()),
        row("an address [filter] refuses", "/v2/", 403).with("x-forwarded-for", "203.0.113.5"),
        row("outside /v2/", "/nowhere", 404),
        row("an old docker [filter] refuses", "/v2/", 404).with("user-agent", "docker/1.4.0"),
        row("a method the endpoint lacks", "/v2/open/app/blobs/uploads/", 405),
        row("an invalid repository name", "/v2/Open/App/manifests/v1", 400),
        row("a path that is not normal", "/v2/open//app/manifests/v1", 400),
        row("the registry is silent", "/v2/slow/app/manifests/v1", 504).with("authorization", basic()),
        row("the browser's login page", "/ui/login", 200),
        row("the browser's stylesheet", "/ui/static/ui.css", 200),
        row("the browser's redirect", "/ui", 303),
        row("a browser page that is not there", "/ui/nowhere", 404),
    ];
    assert_head_answers(&gate, &rows).await;

    // The registry's own HEAD answers were always right, and stay as they were.
    let client = gate.client(Proto::Http2);
    let open = row("the registry's answer", "/v2/open/app/manifests/v1", 200)
        .with("authorization", basic());
    let head = send(&client, &gate, "HEAD", &open).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_with_the_registry_down_carry_no_body_over_either_protocol() {
    let tmp = temp_dir();
    let closed_port = util::free_port();
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(format!("http://127.0.0.1:{closed_port}")),
    );
    let rows = vec![
        row("the registry is unreachable", "/v2/", 502),
        row("readiness without the registry", "/readyz", 503),
    ];
    assert_head_answers(&gate, &rows).await;
}
