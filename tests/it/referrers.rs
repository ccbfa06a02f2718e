//! The OCI 1.1 referrers API in front of registry 2.8, which has none, against the real
//! registry: an image pushed with skopeo, artifacts that refer to it attached at the same
//! moment, listed with and without the `artifactType` filter, one deleted, and a referrer an
//! older client indexed itself (directly in the registry) kept alongside; and oras-py (a
//! real OCI 1.1 client, `oras_attach.py`) attaching two files to an image skopeo pushed.

use crate::util;

use std::process::Command;

use base64::Engine;
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use util::client::{full, request, text, HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::registry::Registry;
use util::{describe, run, temp_dir};

const CI: (&str, &str) = ("ci", "ci-secret");
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SBOM: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

fn basic((user, password): (&str, &str)) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", util::hex(&Sha256::digest(bytes)))
}

/// An artifact manifest of `artifact_type` referring to `subject`, with the empty config and
/// one empty layer, as oras writes an artifact without files.
fn artifact(artifact_type: &str, subject: &str, mark: &str) -> Vec<u8> {
    let empty = json!({ "mediaType": EMPTY, "digest": digest_of(b"{}"), "size": 2 });
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty,
        "layers": [empty],
        "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": 1 },
        "annotations": { "mark": mark },
    }))
    .expect("serialise")
}

/// An image pushed with skopeo through the gate as `team/app:v1`: the subject.
async fn pushed_image(tmp: &std::path::Path, gate: &Gate) -> util::image::OciImage {
    gate.push_new_image(
        &tmp.join("image"),
        1024,
        &format!("{}:{}", CI.0, CI.1),
        "team/app:v1",
    )
    .await
}

/// A registry, a gate in front of it for `CI` with `extra` configuration, and the image
/// `team/app:v1` pushed through it with skopeo.
async fn gate_with_image(
    tmp: &std::path::Path,
    extra: &str,
) -> (Registry, Gate, util::image::OciImage) {
    let registry = Registry::start(tmp);
    let gate = Gate::start(
        tmp,
        GateConfig::new(&registry.url)
            .basic_auth(&[CI])
            .extra_toml(extra),
    );
    let image = pushed_image(tmp, &gate).await;
    (registry, gate, image)
}

struct Api {
    gate: Gate,
    client: HttpsClient,
}

impl Api {
    fn new(gate: Gate) -> Api {
        Api {
            client: HttpsClient::new(&gate.pki.ca_pem, Proto::Http1),
            gate,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut builder = request(method, &self.gate.url(path))
            .header("Authorization", basic(CI))
            .header("Accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"));
        if let Some(content_type) = content_type {
            builder = builder.header("Content-Type", content_type);
        }
        let response = self
            .client
            .send(builder.body(full(body)).expect("request"))
            .await;
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, text(response).await)
    }

    /// A browser form posted from the gate's own origin, with the session `cookie` if any.
    async fn call_form(
        &self,
        path: &str,
        form: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut builder = request("POST", &self.gate.url(path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Origin", format!("https://{}", self.gate.authority()));
        if let Some(cookie) = cookie {
            builder = builder.header("Cookie", cookie);
        }
        let response = self
            .client
            .send(
                builder
                    .body(full(form.as_bytes().to_vec()))
                    .expect("request"),
            )
            .await;
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, text(response).await)
    }

    /// A browser page, with the session `cookie`.
    async fn browse(&self, path: &str, cookie: &str) -> String {
        let response = self
            .client
            .send(
                request("GET", &self.gate.url(path))
                    .header("Cookie", cookie)
                    .body(full(Vec::new()))
                    .expect("request"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        text(response).await
    }

    /// The empty blob (`{}`) the artifacts use as config and layer, uploaded to team/app.
    async fn push_empty_blob(&self) {
        let (status, headers, body) = self
            .call("POST", "/v2/team/app/blobs/uploads/", None, Vec::new())
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let location = header_text(&headers, "location").expect("an upload location");
        let path = &location[location.find("/v2/").expect("a /v2/ location")..];
        let (status, _, body) = self
            .call(
                "PUT",
                &format!("{path}&digest={}", digest_of(b"{}")),
                Some("application/octet-stream"),
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// The referrers of `subject`, as (status, index, `OCI-Filters-Applied`).
    async fn referrers(&self, subject: &str, query: &str) -> (StatusCode, Value, Option<String>) {
        let (status, headers, body) = self
            .call(
                "GET",
                &format!("/v2/team/app/referrers/{subject}{query}"),
                None,
                Vec::new(),
            )
            .await;
        if status == StatusCode::OK {
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some(OCI_INDEX)
            );
        }
        let filters = headers
            .get("oci-filters-applied")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, json, filters)
    }
}

fn listed(index: &Value) -> Vec<String> {
    let mut digests: Vec<String> = index["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|d| d["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    digests.sort();
    digests
}

/// `curl` straight to the registry, as a client did before the gate was put in front.
fn put_directly(registry: &Registry, path: &str, content_type: &str, body: &[u8]) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), body).expect("write body");
    let out = run(Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.path().display()))
        .arg(format!("{}{path}", registry.url)));
    assert!(out.status.success(), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_listed_filtered_attached_at_once_and_deleted() {
    let tmp = temp_dir();
    let (registry, gate, image) = gate_with_image(tmp.path(), "").await;
    let api = Api::new(gate);
    let subject = image.manifest_digest.clone();

    // Nothing refers to it yet: an empty index, never 404; a malformed digest is 400.
    let (status, index, filters) = api.referrers(&subject, "").await;
    assert_eq!(status, StatusCode::OK, "{index}");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(listed(&index), Vec::<String>::new());
    assert_eq!(filters, None);
    let (status, _, body) = api
        .call("GET", "/v2/team/app/referrers/latest", None, Vec::new())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");

    api.push_empty_blob().await;

    // An older client attached one itself, straight to the registry, fallback tag and all.
    let old = artifact("application/vnd.example.old", &subject, "old");
    let old_digest = digest_of(&old);
    put_directly(
        &registry,
        &format!("/v2/team/app/manifests/{old_digest}"),
        OCI_MANIFEST,
        &old,
    );
    let fallback = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    let old_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": old_digest,
            "size": old.len(),
            "artifactType": "application/vnd.example.old",
        }],
    }))
    .expect("serialise");
    put_directly(
        &registry,
        &format!("/v2/team/app/manifests/{fallback}"),
        OCI_INDEX,
        &old_index,
    );
    let (_, index, _) = api.referrers(&subject, "").await;
    assert_eq!(listed(&index), vec![old_digest.clone()], "{index}");

    // Two attaches at the same moment: both answered OCI-Subject, both listed.
    let sbom = artifact(SBOM, &subject, "sbom");
    let signature = artifact(SIGNATURE, &subject, "sig");
    let (sbom_digest, signature_digest) = (digest_of(&sbom), digest_of(&signature));
    let sbom_path = format!("/v2/team/app/manifests/{sbom_digest}");
    let signature_path = format!("/v2/team/app/manifests/{signature_digest}");
    let (a, b) = tokio::join!(
        api.call("PUT", &sbom_path, Some(OCI_MANIFEST), sbom.clone()),
        api.call(
            "PUT",
            &signature_path,
            Some(OCI_MANIFEST),
            signature.clone()
        ),
    );
    for (status, headers, body) in [a, b] {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            header_text(&headers, "oci-subject"),
            Some(subject.as_str()),
            "{headers:?}"
        );
    }
    let mut all = vec![
        old_digest.clone(),
        sbom_digest.clone(),
        signature_digest.clone(),
    ];
    all.sort();
    let (_, index, filters) = api.referrers(&subject, "").await;
    assert_eq!(listed(&index), all, "{index}");
    assert_eq!(filters, None);
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|d| d["digest"] == sbom_digest))
        .cloned()
        .expect("the SBOM's entry");
    assert_eq!(entry["artifactType"], SBOM);
    assert_eq!(entry["mediaType"], OCI_MANIFEST);
    assert_eq!(entry["size"], sbom.len());
    assert_eq!(entry["annotations"]["mark"], "sbom");

    // The filter, and the header saying it was applied.
    let (_, index, filters) = api
        .referrers(&subject, "?artifactType=application%2Fspdx%2Bjson")
        .await;
    assert_eq!(listed(&index), vec![sbom_digest.clone()], "{index}");
    assert_eq!(filters.as_deref(), Some("artifactType"));

    // The fallback tag holds what a client following the fallback schema would have written.
    let (status, headers, body) = api
        .call(
            "GET",
            &format!("/v2/team/app/manifests/{fallback}"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header_text(&headers, "content-type"), Some(OCI_INDEX));
    let stored: Value = serde_json::from_str(&body).expect("an index");
    assert_eq!(listed(&stored), all);

    // A delete removes its entry.
    let (status, _, body) = api.call("DELETE", &signature_path, None, Vec::new()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, index, _) = api.referrers(&subject, "").await;
    let mut left = vec![old_digest, sbom_digest];
    left.sort();
    assert_eq!(listed(&index), left, "{index}");

    // A push without a subject is not answered OCI-Subject.
    let plain = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": EMPTY, "digest": digest_of(b"{}"), "size": 2 },
        "layers": [],
    }))
    .expect("serialise");
    let (status, headers, body) = api
        .call(
            "PUT",
            "/v2/team/app/manifests/plain",
            Some(OCI_MANIFEST),
            plain,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(header_text(&headers, "oci-subject"), None);

    // The browser lists the image's referrers on its page, not the fallback tag as a tag.
    let (status, headers, body) = api
        .call_form(
            "/ui/login",
            &format!("user={}&password={}", CI.0, CI.1),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let cookie = header_text(&headers, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let repository = api.browse("/ui/repo/team/app", &cookie).await;
    assert!(repository.contains("data-tag=\"v1\""), "{repository}");
    assert!(!repository.contains("data-tag=\"sha256-"), "{repository}");
    assert!(repository.contains("id=\"referrer-tags\""), "{repository}");
    let image_page = api.browse("/ui/repo/team/app/-/tag/v1", &cookie).await;
    assert!(image_page.contains("id=\"referrers\""), "{image_page}");
    assert!(image_page.contains(SBOM), "{image_page}");

    // A referrer pushed under a tag and deleted from the browser leaves the index as well.
    let tagged = artifact(SIGNATURE, &subject, "tagged");
    let tagged_digest = digest_of(&tagged);
    let (status, _, body) = api
        .call(
            "PUT",
            "/v2/team/app/manifests/signed",
            Some(OCI_MANIFEST),
            tagged,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, index, _) = api.referrers(&subject, "").await;
    assert!(listed(&index).contains(&tagged_digest), "{index}");
    let confirm = api
        .browse("/ui/repo/team/app/-/delete/signed", &cookie)
        .await;
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = confirm.find(&marker).expect(name) + marker.len();
        confirm[start..].split('"').next().expect(name).to_string()
    };
    assert_eq!(field("digest"), tagged_digest);
    let (status, _, body) = api
        .call_form(
            "/ui/repo/team/app/-/delete/signed",
            &format!("csrf={}&digest={tagged_digest}", field("csrf")),
            Some(&cookie),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, index, _) = api.referrers(&subject, "").await;
    assert_eq!(listed(&index), left, "{index}");
}

fn header_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// oras (oras-py) attaches an SBOM and a signature-like file to an image skopeo pushed, one
/// at the same moment as the other; both are listed through the API, the filter keeps one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_attaches_to_a_skopeo_image_and_both_are_listed() {
    util::require_tool("python3", "python3");
    let tmp = temp_dir();
    let (_registry, gate, image) = gate_with_image(tmp.path(), "").await;
    let manifest = std::fs::read(
        image
            .dir
            .join("blobs/sha256")
            .join(image.manifest_digest.trim_start_matches("sha256:")),
    )
    .expect("the image's manifest");

    let attach = |tag: &str, file: &str, content: &str, config_type: &str| {
        let path = tmp.path().join(file);
        std::fs::write(&path, content).expect("write the attached file");
        let mut command = Command::new("python3");
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/oras_attach.py"
            ))
            .args([&gate.authority(), CI.0, CI.1, "team/app", tag])
            .arg(&image.manifest_digest)
            .arg(manifest.len().to_string())
            .arg(&path)
            .arg(config_type)
            .env("REQUESTS_CA_BUNDLE", &gate.pki.ca_pem)
            .current_dir(tmp.path());
        command
    };
    let mut sbom = attach(
        "sbom",
        "sbom.spdx.json",
        "{\"spdxVersion\":\"SPDX-2.3\"}",
        SBOM,
    );
    let mut signature = attach("sig", "signature.sig", "signed", SIGNATURE);
    let (sbom, signature) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&mut sbom));
        let b = s.spawn(|| run(&mut signature));
        (
            a.join().expect("oras thread"),
            b.join().expect("oras thread"),
        )
    });
    for out in [&sbom, &signature] {
        assert!(out.status.success(), "{}", describe(out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed.trim(),
            format!("201 {}", image.manifest_digest),
            "{}",
            describe(out)
        );
    }

    let api = Api::new(gate);
    let (status, index, _) = api.referrers(&image.manifest_digest, "").await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = index["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|d| d["artifactType"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(types.len(), 2, "{index}");
    assert!(
        types.contains(&SBOM) && types.contains(&SIGNATURE),
        "{index}"
    );
    let (_, index, filters) = api
        .referrers(
            &image.manifest_digest,
            "?artifactType=application/vnd.dev.cosign.artifact.sig.v1%2Bjson",
        )
        .await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    assert_eq!(index["manifests"][0]["artifactType"], SIGNATURE);
}

/// With every tag of the repository protected, a referrer pushed by a new tag passes (the
/// tag is new), and the gate indexes it with the write lock `[[protect]]` already holds for
/// that push, rather than waiting for it; its own index write is not refused either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_repository_still_gets_its_referrers_indexed() {
    let tmp = temp_dir();
    let (_registry, gate, image) = gate_with_image(
        tmp.path(),
        "\n[[protect]]\nrepositories = [\"team/*\"]\ntags = [\"*\"]\n",
    )
    .await;
    let api = Api::new(gate);
    let subject = image.manifest_digest.clone();
    api.push_empty_blob().await;

    let sbom = artifact(SBOM, &subject, "sbom");
    let put = api.call(
        "PUT",
        "/v2/team/app/manifests/sbom",
        Some(OCI_MANIFEST),
        sbom.clone(),
    );
    let (status, headers, body) = tokio::time::timeout(std::time::Duration::from_secs(20), put)
        .await
        .expect("the push waited on its own write lock");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(header_text(&headers, "oci-subject"), Some(subject.as_str()));
    let (_, index, _) = api.referrers(&subject, "").await;
    assert_eq!(listed(&index), vec![digest_of(&sbom)], "{index}");
}

/// A body that sends a space every 500 ms and never ends: a pusher trickling a manifest,
/// never idle for long enough to be cut by the read timeout.
struct Trickle {
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        if std::future::Future::poll(self.next.as_mut(), cx).is_pending() {
            return std::task::Poll::Pending;
        }
        let at = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        self.next.as_mut().reset(at);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b" ",
        )))))
    }
}

/// OCI manifests are read whole now, so their memory is bounded, and one address cannot
/// take it all. Four pushes that never say their length and keep trickling hold one
/// address's 16 MiB share: its fifth push gets 503 at once. Four addresses doing that hold
/// the whole 64 MiB: a push from a fifth waits `read_timeout` and gets 503 with
/// `Retry-After`. Once the trickling pushes are gone, a push goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_read_whole_share_a_bounded_budget() {
    use http_body_util::BodyExt;
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let mut config = GateConfig::new(&registry.url).basic_auth(&[CI]);
    config.read_timeout = "2s".into();
    let gate = Gate::start(tmp.path(), config);
    let address = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let trickle = |client: &HttpsClient| {
        let client = client.clone();
        let request = request("PUT", &gate.url("/v2/team/app/manifests/stalled"))
            .header("Authorization", basic(CI))
            .header("Content-Type", OCI_MANIFEST)
            .body(
                Trickle {
                    next: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
                }
                .boxed(),
            )
            .expect("request");
        tokio::spawn(async move { client.try_send(request).await })
    };
    let small = artifact(SBOM, &format!("sha256:{}", "1".repeat(64)), "x");
    let put_small = |client: HttpsClient| {
        let request = request("PUT", &gate.url("/v2/team/app/manifests/small"))
            .header("Authorization", basic(CI))
            .header("Content-Type", OCI_MANIFEST)
            .body(full(small.clone()))
            .expect("request");
        async move {
            let response = client.send(request).await;
            let (status, headers) = (response.status(), response.headers().clone());
            (status, headers, text(response).await)
        }
    };

    // One address: four hold its share, the fifth is refused at once.
    let first = HttpsClient::from_address(&gate.pki.ca_pem, address(2));
    let mut trickling: Vec<_> = (0..4).map(|_| trickle(&first)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = put_small(first.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(header_text(&headers, "retry-after"), Some("1"));
    assert!(body.contains("this address"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));

    // Three more addresses fill the whole budget: a fifth address waits, then 503.
    for last in 3..=5 {
        let client = HttpsClient::from_address(&gate.pki.ca_pem, address(last));
        trickling.extend((0..4).map(|_| trickle(&client)));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for task in &trickling {
        assert!(!task.is_finished(), "a trickling push was answered");
    }
    let started = std::time::Instant::now();
    let other = HttpsClient::from_address(&gate.pki.ca_pem, address(6));
    let (status, headers, body) = put_small(other.clone()).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{body}\n{}",
        gate.log()
    );
    assert_eq!(header_text(&headers, "retry-after"), Some("1"));
    assert!(body.contains("busy"), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    assert!(gate.log().contains("fill the gate's 64 MiB budget"));

    // The trickling pushes' clients go away: the budget is free again.
    for task in trickling {
        task.abort();
    }
    let freed = util::wait_until_async(std::time::Duration::from_secs(10), || async {
        let (status, _, _) = put_small(other.clone()).await;
        // The blobs it names are not there: the registry's 400, not the gate's 503.
        status != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(freed, "the budget was not given back");
}

/// A subject is indexed only when it is a canonical SHA-256 (or SHA-512) digest, and only
/// an index is ever written over: a crafted `subject` such as `sha:<git sha>` must not make
/// the gate move the protected release tag `sha-<git sha>`, and an image someone pushed
/// under the fallback name itself stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_subject_never_moves_a_tag() {
    let tmp = temp_dir();
    let (_registry, gate, image) = gate_with_image(
        tmp.path(),
        "\n[[protect]]\nrepositories = [\"team/*\"]\ntags = [\"sha-*\"]\n",
    )
    .await;
    let git_sha = "0123456789abcdef0123456789abcdef01234567";
    let release = format!("sha-{git_sha}");
    let fallback = format!(
        "sha256-{}",
        image.manifest_digest.trim_start_matches("sha256:")
    );
    for tag in [&release, &fallback] {
        let pushed = gate.host().push(
            &format!("{}:{}", CI.0, CI.1),
            &image.reference(),
            &format!("team/app:{tag}"),
        );
        assert!(pushed.status.success(), "{}", describe(&pushed));
    }
    let api = Api::new(gate);
    api.push_empty_blob().await;
    for subject in [format!("sha:{git_sha}"), image.manifest_digest.clone()] {
        let crafted = artifact(SBOM, &subject, "crafted");
        let (status, headers, body) = api
            .call(
                "PUT",
                &format!("/v2/team/app/manifests/{}", digest_of(&crafted)),
                Some(OCI_MANIFEST),
                crafted,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(header_text(&headers, "oci-subject"), None, "{subject}");
    }
    for tag in [&release, &fallback] {
        let (status, headers, body) = api
            .call(
                "HEAD",
                &format!("/v2/team/app/manifests/{tag}"),
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            header_text(&headers, "docker-content-digest"),
            Some(image.manifest_digest.as_str()),
            "{tag} moved"
        );
    }
}

/// With `[auth] mode = "none"` in front of a registry that checks credentials itself, the
/// answers the gate makes for the client (the tag list, the referrers) pass on the
/// registry's 401 and its challenge, so the client can log in there, not a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_checks_credentials_itself_challenges_through_the_gate() {
    let tmp = temp_dir();
    let registry = Registry::start_with_htpasswd(tmp.path(), &[CI]);
    let gate = Gate::start(tmp.path(), GateConfig::new(&registry.url));
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let subject = format!("sha256:{}", "0".repeat(64));
    for path in [
        "/v2/team/app/tags/list".to_string(),
        format!("/v2/team/app/referrers/{subject}"),
    ] {
        for (authorization, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(basic((CI.0, "wrong"))), StatusCode::UNAUTHORIZED),
        ] {
            let mut builder = request("GET", &gate.url(&path));
            if let Some(authorization) = &authorization {
                builder = builder.header("Authorization", authorization);
            }
            let response = client
                .send(builder.body(full(Vec::new())).expect("request"))
                .await;
            let status = response.status();
            let challenge = header_text(response.headers(), "www-authenticate").map(str::to_string);
            let body = text(response).await;
            assert_eq!(status, expected, "{path} ({authorization:?}): {body}");
            assert_eq!(
                challenge.as_deref(),
                Some("Basic realm=\"registry-realm\""),
                "{path}: the registry's challenge"
            );
        }
    }
    // With the registry's credentials the gate's own answers are given as before.
    let response = client
        .send(
            request(
                "GET",
                &gate.url(&format!("/v2/team/app/referrers/{subject}")),
            )
            .header("Authorization", basic(CI))
            .body(full(Vec::new()))
            .expect("request"),
        )
        .await;
    let status = response.status();
    let body = text(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        listed(&serde_json::from_str(&body).expect("an index")),
        Vec::<String>::new()
    );
}
