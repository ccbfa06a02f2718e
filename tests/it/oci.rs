//! The distribution spec's corners that registry 2.8 answers unhelpfully, and what the gate
//! answers instead, against the real registry: a manifest DELETE by tag.

use crate::util;

use base64::Engine;
use http::StatusCode;
use util::client::{full, request, text, HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::image::oci_image;
use util::registry::Registry;
use util::{describe, temp_dir};

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
    let image = oci_image(&tmp.path().join("image"), 1, 1024);
    let (sk, source) = (gate.host(), image.reference());
    let pushed = tokio::task::spawn_blocking(move || {
        sk.push(&format!("{}:{}", CI.0, CI.1), &source, "team/app:v1")
    })
    .await
    .expect("skopeo thread");
    assert!(pushed.status.success(), "{}", describe(&pushed));

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
