//! The distribution spec's corners that registry 2.8 answers unhelpfully, and what the gate
//! answers instead, against the real registry: a manifest DELETE by tag, the tag listing's
//! order and pages (`n`, `last`, `Link`), and an upload chunk that does not start where the
//! upload stands (416).

use crate::util;

use base64::Engine;
use http::StatusCode;
use util::client::{empty, full, request, text, HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::image::{oci_image, MANIFEST_MEDIA_TYPE};
use util::registry::Registry;
use util::{describe, sha256_digest, temp_dir};

const CI: (&str, &str) = ("ci", "ci-secret");

fn basic((user, password): (&str, &str)) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// 2.8 deletes manifests by digest only and answers a DELETE by tag with `DIGEST_INVALID`,
/// which names no way out. The gate answers 400 `UNSUPPORTED` saying what to do; the tag is
/// still there, and the DELETE by digest it points to works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_delete_by_tag_says_to_delete_by_digest() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url).basic_auth(&[CI]));
    let image = gate
        .push_new_image(
            &tmp.path().join("image"),
            1024,
            &format!("{}:{}", CI.0, CI.1),
            "team/app:v1",
        )
        .await;

    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let delete = |path: String| {
        let client = client.clone();
        let url = gate.url(&path);
        async move {
            let response = client
                .send(
                    request("DELETE", &url)
                        .header("Authorization", basic(CI))
                        .body(full(Vec::new()))
                        .expect("request"),
                )
                .await;
            let status = response.status();
            (status, text(response).await)
        }
    };
    let (status, body) = delete("/v2/team/app/manifests/v1".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("the registry's envelope");
    assert_eq!(json["errors"][0]["code"], "UNSUPPORTED", "{body}");
    let message = json["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("by digest only") && message.contains("Docker-Content-Digest"),
        "{message}"
    );

    let (status, body) = delete(format!("/v2/team/app/manifests/{}", image.manifest_digest)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// One request through the gate as `CI`: its status, the headers the tests read, its body.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered no JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn send(
    client: &HttpsClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut builder = request(method, url).header("Authorization", basic(CI));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = if body.is_empty() { empty() } else { full(body) };
    let response = client.send(builder.body(body).expect("request")).await;
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("read the answer")
        .to_bytes()
        .to_vec();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The gate's URL for a path or for an absolute `Location`.
fn at(gate: &Gate, location: &str) -> String {
    if location.starts_with('/') {
        gate.url(location)
    } else {
        location.to_string()
    }
}

/// A registry with `team/app` tagged `tags`, in that order, through the gate.
async fn tagged(tmp: &std::path::Path, tags: &[&str]) -> (Registry, Gate, HttpsClient) {
    let registry = Registry::start(tmp);
    let gate = Gate::start(tmp, GateConfig::new(&registry.url).basic_auth(&[CI]));
    let image = oci_image(&tmp.join("image"), 1, 1024);
    let (sk, source, first) = (
        gate.host(),
        image.reference(),
        format!("team/app:{}", tags[0]),
    );
    let pushed = tokio::task::spawn_blocking(move || {
        sk.push(&format!("{}:{}", CI.0, CI.1), &source, &first)
    })
    .await
    .expect("skopeo thread");
    assert!(pushed.status.success(), "{}", describe(&pushed));
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    let manifest = std::fs::read(image.dir.join("blobs/sha256").join(hex)).expect("manifest");
    let client = gate.client(Proto::Http1);
    for tag in &tags[1..] {
        let put = send(
            &client,
            "PUT",
            &gate.url(&format!("/v2/team/app/manifests/{tag}")),
            &[("Content-Type", MANIFEST_MEDIA_TYPE)],
            manifest.clone(),
        )
        .await;
        assert_eq!(put.status, StatusCode::CREATED, "tag {tag}");
    }
    (registry, gate, client)
}

fn tags_of(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    assert_eq!(json["name"], "team/app");
    json["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array: {json}"))
        .iter()
        .map(|t| t.as_str().expect("a tag is a string").to_string())
        .collect()
}

/// 2.8 ignores `n` and `last` on a tags listing and sends every tag in storage order. The
/// gate answers as the OCI spec says: lexical order, at most `n`, only after `last`, and a
/// `Link` to the next page while more remain; following it visits every tag once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_listed_in_order_and_paged_with_n_and_last() {
    let tmp = temp_dir();
    let (_registry, gate, client) = tagged(tmp.path(), &["v3", "latest", "v10", "1.0", "v2"]).await;
    let sorted = ["1.0", "latest", "v10", "v2", "v3"];

    let all = send(
        &client,
        "GET",
        &gate.url("/v2/team/app/tags/list"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(tags_of(&all), sorted, "without n: every tag, in order");
    assert_eq!(all.header("link"), None);
    assert_eq!(all.header("content-type"), Some("application/json"));

    let mut url = gate.url("/v2/team/app/tags/list?n=2");
    let mut pages = Vec::new();
    loop {
        let page = send(&client, "GET", &url, &[], vec![]).await;
        pages.push(tags_of(&page));
        let Some(link) = page.header("link") else {
            break;
        };
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(target, _)| target.to_string())
            .unwrap_or_else(|| panic!("not a next link: {link}"));
        assert!(pages.len() < 5, "the links go on past the last tag: {link}");
        url = gate.url(&target);
    }
    assert_eq!(
        pages,
        [vec!["1.0", "latest"], vec!["v10", "v2"], vec!["v3"]],
        "{url}"
    );

    let after = send(
        &client,
        "GET",
        &gate.url("/v2/team/app/tags/list?n=10&last=latest"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(tags_of(&after), ["v10", "v2", "v3"]);
    assert_eq!(after.header("link"), None, "nothing remains after these");
    let first = send(
        &client,
        "GET",
        &gate.url("/v2/team/app/tags/list?n=1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        first.header("link"),
        Some("</v2/team/app/tags/list?last=1.0&n=1>; rel=\"next\"")
    );
}

/// `n=0` is an empty list without `Link` (the spec's words); an `n` that is no number or a
/// `last` that is no tag is refused with 400 in the registry's envelope, where 2.8 would
/// ignore both and list everything; an unknown repository is still the registry's 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_n_zero_is_empty_and_a_bad_n_is_refused() {
    let tmp = temp_dir();
    let (_registry, gate, client) = tagged(tmp.path(), &["b", "a"]).await;

    let zero = send(
        &client,
        "GET",
        &gate.url("/v2/team/app/tags/list?n=0"),
        &[],
        vec![],
    )
    .await;
    assert!(
        tags_of(&zero).is_empty(),
        "{}",
        String::from_utf8_lossy(&zero.body)
    );
    assert_eq!(zero.header("link"), None);

    for query in ["n=abc", "n=-1", "n=2&last=-bad"] {
        let bad = send(
            &client,
            "GET",
            &gate.url(&format!("/v2/team/app/tags/list?{query}")),
            &[],
            vec![],
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        let json = bad.json();
        assert_eq!(json["errors"][0]["code"], "UNSUPPORTED", "{query}: {json}");
        let message = json["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("n=100"), "{query}: {message}");
    }

    let unknown = send(
        &client,
        "GET",
        &gate.url("/v2/team/other/tags/list?n=1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["errors"][0]["code"], "NAME_UNKNOWN");
}

/// 2.8 ignores `Content-Range` and appends every chunk at the upload's end, so a chunk out
/// of order makes a blob that fails its digest. The gate asks the registry where the upload
/// stands and answers 416 with its `Range`, `Location` and `Docker-Upload-UUID`, without
/// forwarding the chunk; the upload goes on from there and completes with the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_chunk_out_of_order_is_416_and_the_upload_goes_on() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url).basic_auth(&[CI]));
    let client = gate.client(Proto::Http1);
    let blob: Vec<u8> = (0..30u8).collect();
    let patch = |location: String, range: &'static str, bytes: &[u8]| {
        let (client, url, bytes) = (client.clone(), at(&gate, &location), bytes.to_vec());
        async move {
            send(
                &client,
                "PATCH",
                &url,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Range", range),
                ],
                bytes,
            )
            .await
        }
    };
    let location = |answer: &Answer| {
        answer
            .header("location")
            .unwrap_or_else(|| panic!("{} without Location", answer.status))
            .to_string()
    };

    let started = send(
        &client,
        "POST",
        &gate.url("/v2/team/app/blobs/uploads/"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let first = patch(location(&started), "0-9", &blob[..10]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.header("range"), Some("0-9"));

    // Bytes 10 to 19 skipped; then the first chunk sent again; then no range at all.
    let mut at_offset = location(&first);
    for (range, bytes) in [
        ("20-29", &blob[20..]),
        ("0-9", &blob[..10]),
        ("ten", &blob[10..20]),
    ] {
        let refused = patch(at_offset.clone(), range, bytes).await;
        assert_eq!(
            refused.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "Content-Range {range}: {}",
            String::from_utf8_lossy(&refused.body)
        );
        assert_eq!(refused.header("range"), Some("0-9"), "{range}");
        assert!(refused.header("docker-upload-uuid").is_some(), "{range}");
        assert_eq!(refused.json()["errors"][0]["code"], "RANGE_INVALID");
        // The small chunk was read and dropped: the connection carries the next request.
        assert_eq!(refused.header("connection"), None, "{range}");
        at_offset = location(&refused);
    }

    let second = patch(at_offset, "10-19", &blob[10..20]).await;
    assert_eq!(
        second.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.header("range"), Some("0-19"));
    let third = patch(location(&second), "20-29", &blob[20..]).await;
    assert_eq!(third.header("range"), Some("0-29"));

    let digest = sha256_digest(&blob);
    let done = location(&third);
    let separator = if done.contains('?') { '&' } else { '?' };
    let put = send(
        &client,
        "PUT",
        &at(&gate, &format!("{done}{separator}digest={digest}")),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        put.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&put.body)
    );
    let got = send(
        &client,
        "GET",
        &gate.url(&format!("/v2/team/app/blobs/{digest}")),
        &[],
        vec![],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, blob);
}
