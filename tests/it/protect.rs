//! Protected tags (`[[protect]]`) against the real registry and real clients: skopeo pushes a
//! new protected tag, pushes it again, tries to move and delete it, and moves an unprotected
//! one; an exempt user moves it; docker is refused an overwrite and prints why; and the gate
//! never forwards a write it could not check.

use crate::util;

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use util::client::{full, request, text, HttpsClient, Proto};
use util::docker::Dockerd;
use util::gate::{Gate, GateConfig};
use util::image::{
    oci_image, oci_index, put_manifests_at_once, read_oci_layout, OciImage, RegistryHost,
    MANIFEST_MEDIA_TYPE,
};
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::{describe, sha256_digest, temp_dir, wait_until};

const CI: (&str, &str) = ("ci", "ci-secret");
const BOT: (&str, &str) = ("release-bot", "bot-secret");

/// Version tags of `team/*` are protected; the release bot (through a group, so `[groups]`
/// serving only `[[protect]]` is exercised too) may still move them.
const PROTECT: &str = "\n[groups]\nreleasers = [\"release-bot\"]\n\
     \n[[protect]]\nrepositories = [\"team/*\"]\ntags = [\"v*\"]\nusers = [\"@releasers\"]\n";

fn gate_config(upstream: &str) -> GateConfig {
    GateConfig::new(upstream)
        .basic_auth(&[CI, BOT])
        .extra_toml(PROTECT)
}

/// `user:password` for skopeo.
fn creds((user, password): (&str, &str)) -> String {
    format!("{user}:{password}")
}

/// The digest of the manifest `reference` names now, as CI sees it, or `None`.
fn digest(sk: &RegistryHost, reference: &str) -> Option<String> {
    sk.manifest_digest(&creds(CI), reference)
}

fn refused_as_protected(out: &std::process::Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what} went through:\n{}",
        describe(out)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // skopeo prints `denied: …` for a push, the raw error body for a delete.
    let why = text.contains("team/app:v1 is a protected tag")
        || text.contains("is the protected tag team/app:v1");
    assert!(
        text.to_lowercase().contains("denied") && why,
        "{what}: the refusal does not say why:\n{}",
        describe(out)
    );
}

#[test]
fn skopeo_cannot_move_or_delete_a_protected_tag_but_may_repeat_a_push() {
    let tmp = temp_dir();
    let (_registry, gate, sk) = started(tmp.path());
    let a = oci_image(&tmp.path().join("alpha"), 1, 16 * 1024);
    let b = oci_image(&tmp.path().join("bravo"), 1, 16 * 1024);
    let c = oci_image(&tmp.path().join("charlie"), 1, 16 * 1024);
    // Seeds come from the directory names; names differing in one letter can collide.
    assert_ne!(a.manifest_digest, b.manifest_digest);
    assert_ne!(b.manifest_digest, c.manifest_digest);

    // A new protected tag may be pushed, and the same manifest again (a CI retry).
    let first = sk.push(&creds(CI), &a.reference(), "team/app:v1");
    assert!(first.status.success(), "first push: {}", describe(&first));
    let again = sk.push(&creds(CI), &a.reference(), "team/app:v1");
    assert!(
        again.status.success(),
        "same push again: {}",
        describe(&again)
    );

    // Another manifest may not take the tag; the tag stays where it was.
    refused_as_protected(
        &sk.push(&creds(CI), &b.reference(), "team/app:v1"),
        "moving team/app:v1",
    );
    assert_eq!(digest(&sk, "team/app:v1"), Some(a.manifest_digest.clone()));
    log_says(&gate, "decision=\"deny\" rule=- reason=\"protect[0]:move\"");

    // skopeo deletes a tag by the digest it points to; by digest directly, the same.
    refused_as_protected(
        &sk.delete(&creds(CI), "team/app:v1"),
        "deleting team/app:v1",
    );
    let by_digest = format!("team/app@{}", a.manifest_digest);
    refused_as_protected(&sk.delete(&creds(CI), &by_digest), "deleting v1's manifest");
    assert_eq!(digest(&sk, "team/app:v1"), Some(a.manifest_digest.clone()));
    log_says(&gate, "reason=\"protect[0]:delete_tagged\"");

    // An unprotected tag moves and goes as before, in the same repository.
    sk.push_ok(&creds(CI), &b.reference(), "team/app:latest");
    sk.push_ok(&creds(CI), &c.reference(), "team/app:latest");
    assert_eq!(
        digest(&sk, "team/app:latest"),
        Some(c.manifest_digest.clone())
    );
    let gone = sk.delete(&creds(CI), "team/app:latest");
    assert!(gone.status.success(), "delete latest: {}", describe(&gone));
    assert_eq!(digest(&sk, "team/app:latest"), None);
    // Outside the protected repositories, version tags are ordinary.
    sk.push_ok(&creds(CI), &a.reference(), "other/app:v1");
    sk.push_ok(&creds(CI), &b.reference(), "other/app:v1");
    assert_eq!(digest(&sk, "other/app:v1"), Some(b.manifest_digest.clone()));

    // A user the protection lists may move the tag.
    sk.push_ok(&creds(BOT), &b.reference(), "team/app:v1");
    assert_eq!(digest(&sk, "team/app:v1"), Some(b.manifest_digest.clone()));
    let untouched = digest(&sk, &format!("team/app@{}", a.manifest_digest));
    assert_eq!(untouched, Some(a.manifest_digest.clone()));
}

/// A multi-platform tag protects its platforms too: each is a manifest of its own, and a
/// delete by digest of one would leave the protected tag an index naming a missing manifest.
/// And an access token answers for itself: one made by an exempt user is not exempt.
#[test]
fn the_platforms_of_a_protected_index_and_the_tokens_of_exempt_users_stay_bound() {
    let tmp = temp_dir();
    let (_registry, gate, sk) = started(tmp.path());
    let amd = oci_image(&tmp.path().join("amd64"), 1, 8 * 1024);
    let arm = oci_image(&tmp.path().join("arm64"), 1, 8 * 1024);
    let loose = oci_image(&tmp.path().join("loose"), 1, 8 * 1024);
    let multi = tmp.path().join("multi");
    let index = oci_index(&multi, &[(&amd, "amd64"), (&arm, "arm64")]);
    let pushed = sk.push(
        &creds(CI),
        &format!("oci:{}:latest", multi.display()),
        "team/app:v1",
    );
    assert!(
        pushed.status.success(),
        "push the index: {}",
        describe(&pushed)
    );
    assert_eq!(digest(&sk, "team/app:v1"), Some(index.clone()));

    let platform = format!("team/app@{}", arm.manifest_digest);
    let out = sk.delete(&creds(CI), &platform);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("one platform of the protected tag team/app:v1"),
        "deleting a platform of v1: {}",
        describe(&out)
    );
    assert_eq!(digest(&sk, &platform), Some(arm.manifest_digest.clone()));
    log_says(&gate, "reason=\"protect[0]:delete_child\"");

    // A manifest no protected index lists is deleted as before.
    sk.push_ok(&creds(CI), &loose.reference(), "team/app:scratch");
    let gone = sk.delete(&creds(CI), &format!("team/app@{}", loose.manifest_digest));
    assert!(gone.status.success(), "delete scratch: {}", describe(&gone));
    assert_eq!(digest(&sk, "team/app:scratch"), None);

    // The release bot may move v1; a token it made for a pipeline may not.
    let out = gate.change_with(&[
        "token",
        "create",
        "--name",
        "bot-pipeline",
        "--user",
        BOT.0,
        "--repositories",
        "team/*",
        "--actions",
        "pull,push,delete",
    ]);
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(secret.starts_with("rgt_"), "no secret: {}", describe(&out));
    refused_as_protected(
        &sk.push(&creds((BOT.0, &secret)), &loose.reference(), "team/app:v1"),
        "moving team/app:v1 with the bot's token",
    );
    assert_eq!(digest(&sk, "team/app:v1"), Some(index.clone()));
    log_says(&gate, "token=bot-pipeline");
    sk.push_ok(&creds(BOT), &loose.reference(), "team/app:v1");
    assert_eq!(
        digest(&sk, "team/app:v1"),
        Some(loose.manifest_digest.clone())
    );
}

/// A registry, the gate with the protections in front of it, and skopeo for that gate.
fn started(tmp: &std::path::Path) -> (Registry, Gate, RegistryHost) {
    let registry = Registry::start(tmp);
    let gate = Gate::start(tmp, gate_config(&registry.url));
    let sk = gate.host();
    (registry, gate, sk)
}

fn basic(who: (&str, &str)) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", who.0, who.1));
    format!("Basic {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_409_denied_and_oversized_manifests_413() {
    let tmp = temp_dir();
    let (_registry, gate, sk) = started(tmp.path());
    let a = oci_image(&tmp.path().join("image-a"), 1, 4 * 1024);
    let pushed =
        tokio::task::spawn_blocking(move || sk.push(&creds(CI), &a.reference(), "team/app:v2"))
            .await
            .expect("skopeo thread");
    assert!(pushed.status.success(), "{}", describe(&pushed));
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http2);

    // A delete naming the tag is refused before the registry is asked anything.
    let response = client
        .send(
            request("DELETE", &gate.url("/v2/team/app/manifests/v2"))
                .header("Authorization", basic(CI))
                .body(full(Vec::new()))
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).expect("JSON");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "team/app:v2 is a protected tag and cannot be deleted"
    );

    // Blobs cannot be deleted one by one where tags are protected: that would break the
    // protected image without touching its tag. Nor may a manifest write carry a query
    // (`?tag=` would move a tag the gate never saw named).
    let layer = read_oci_layout(&tmp.path().join("image-a"));
    for (method, path, needle) in [
        (
            "DELETE",
            format!("/v2/team/app/blobs/{}", layer.config_digest),
            "its blobs cannot be deleted",
        ),
        (
            "DELETE",
            format!("/v2/team/app/manifests/{}?tag=v2", layer.manifest_digest),
            "query parameters are refused",
        ),
        (
            "PUT",
            format!("/v2/team/app/manifests/{}?tag=v9", layer.manifest_digest),
            "query parameters are refused",
        ),
    ] {
        let response = client
            .send(
                request(method, &gate.url(&path))
                    .header("Authorization", basic(CI))
                    .header("Content-Type", MANIFEST_MEDIA_TYPE)
                    .body(full(Vec::new()))
                    .expect("request"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{method} {path}");
        let body = text(response).await;
        assert!(body.contains(needle), "{method} {path}: {body}");
    }

    // Past distribution's 4 MiB, a manifest the gate must read is refused, not buffered.
    let huge = vec![b' '; 5 * 1024 * 1024];
    let response = client
        .send(
            request("PUT", &gate.url("/v2/team/app/manifests/v2"))
                .header("Authorization", basic(CI))
                .header("Content-Type", MANIFEST_MEDIA_TYPE)
                .body(full(huge))
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(text(response).await.contains("MANIFEST_INVALID"));
}

/// The registry and a gate with `[[protect]]`, and an image pushed with skopeo to the
/// unprotected `team/app:base`, so its blobs and manifest are in the repository.
async fn with_a_pushed_image(tmp: &std::path::Path) -> (Registry, Gate, OciImage) {
    let (registry, gate, sk) = started(tmp);
    let image = oci_image(&tmp.join("image"), 1, 4 * 1024);
    let base = image.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        sk.push(&creds(CI), &base.reference(), "team/app:base")
    })
    .await
    .expect("skopeo thread");
    assert!(pushed.status.success(), "{}", describe(&pushed));
    (registry, gate, image)
}

/// The registry has no compare-and-swap: without the gate's per-repository order, eight
/// different manifests pushed at once to a new protected tag would all find it absent and
/// all be stored, the last one winning. Exactly one may pass; the others see it and get 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_pushes_to_a_new_protected_tag_exactly_one_passes() {
    let tmp = temp_dir();
    let (_registry, gate, image) = with_a_pushed_image(tmp.path()).await;

    // Eight manifests of the same image, told apart by an annotation.
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.dir.join("blobs/sha256").join(hex)).expect("read the manifest"),
    )
    .expect("manifest JSON");
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http2);
    let puts = (0..8)
        .map(|i| {
            let mut variant = manifest.clone();
            variant["annotations"] = serde_json::json!({ "racer": i.to_string() });
            let body = serde_json::to_vec(&variant).expect("serialise");
            (client.clone(), gate.url("/v2/team/app/manifests/v7"), body)
        })
        .collect();
    let finished = put_manifests_at_once(puts, &basic(CI)).await;
    let mut passed = Vec::new();
    let mut refused = 0;
    for (status, digest) in finished {
        match status {
            StatusCode::CREATED => passed.push(digest),
            StatusCode::CONFLICT => refused += 1,
            other => panic!("a racer got {other}:\n{}", gate.log()),
        }
    }
    assert_eq!(passed.len(), 1, "{passed:?} all passed:\n{}", gate.log());
    assert_eq!(refused, 7);
    let sk = gate.host();
    let now = tokio::task::spawn_blocking(move || digest(&sk, "team/app:v7"))
        .await
        .expect("skopeo thread");
    assert_eq!(now.as_ref(), passed.first(), "v7 is not the winner's");
}

/// OCI lets an index list indexes: a platform two levels below a protected tag is one of
/// its platforms all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_of_a_nested_index_is_protected_too() {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let tmp = temp_dir();
    let (_registry, gate, image) = with_a_pushed_image(tmp.path()).await;
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    let size = std::fs::metadata(image.dir.join("blobs/sha256").join(hex))
        .expect("manifest blob")
        .len();
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http2);
    let put = |reference: String, body: Vec<u8>| {
        let (client, url) = (
            client.clone(),
            gate.url(&format!("/v2/team/app/manifests/{reference}")),
        );
        async move {
            client
                .send(
                    request("PUT", &url)
                        .header("Authorization", basic(CI))
                        .header("Content-Type", INDEX)
                        .body(full(body))
                        .expect("request"),
                )
                .await
                .status()
        }
    };
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": size,
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }))
    .expect("inner index");
    let inner_digest = sha256_digest(&inner);
    let inner_len = inner.len();
    assert_eq!(put(inner_digest.clone(), inner).await, StatusCode::CREATED);
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{ "mediaType": INDEX, "digest": inner_digest, "size": inner_len }],
    }))
    .expect("outer index");
    assert_eq!(put("v1".into(), outer).await, StatusCode::CREATED);

    let response = client
        .send(
            request(
                "DELETE",
                &gate.url(&format!("/v2/team/app/manifests/{}", image.manifest_digest)),
            )
            .header("Authorization", basic(CI))
            .body(full(Vec::new()))
            .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT, "{}", gate.log());
    let body = text(response).await;
    assert!(
        body.contains("one platform of the protected tag team/app:v1"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_gate_cannot_check_is_never_forwarded() {
    // A registry that fails every lookup: the digest HEAD and the tags listing.
    let recorder = Recorder::start(|r| match r.method.as_str() {
        "HEAD" | "GET" => Reply::status(500),
        _ => Reply::status(201),
    });
    let tmp = temp_dir();
    let gate = Gate::start(tmp.path(), gate_config(&recorder.url()));
    let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    for (method, path) in [
        ("PUT", "/v2/team/app/manifests/v1"),
        (
            "DELETE",
            "/v2/team/app/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        let response = client
            .send(
                request(method, &gate.url(path))
                    .header("Authorization", basic(CI))
                    .header("Content-Type", MANIFEST_MEDIA_TYPE)
                    .body(full(manifest.clone()))
                    .expect("request"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{method} {path}");
    }
    // The exempt user is not checked, so their push goes through as ever.
    let response = client
        .send(
            request("PUT", &gate.url("/v2/team/app/manifests/v1"))
                .header("Authorization", basic(BOT))
                .header("Content-Type", MANIFEST_MEDIA_TYPE)
                .body(full(manifest.clone()))
                .expect("request"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let forwarded: Vec<String> = recorder
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" || r.method == "DELETE")
        .map(|r| format!("{} {} {}", r.method, r.uri, r.body_len))
        .collect();
    assert_eq!(
        forwarded,
        vec![format!("PUT /v2/team/app/manifests/v1 {}", manifest.len())],
        "an unchecked write reached the registry"
    );
}

#[test]
fn docker_is_refused_an_overwrite_of_a_protected_tag_and_says_why() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(tmp.path(), gate_config(&registry.url));
    let dockerd = Dockerd::start(tmp.path());
    let authority = gate.authority();
    dockerd.docker_ok(&["login", "-u", CI.0, "-p", CI.1, &authority]);
    let release = format!("{authority}/team/app:v1");
    // Two different images (import_image writes the name into the image), one tag.
    let one = format!("{authority}/team/build:one");
    let two = format!("{authority}/team/build:two");
    let first = dockerd.import_image(&one);
    let second = dockerd.import_image(&two);
    assert_ne!(first, second);

    dockerd.docker_ok(&["tag", &one, &release]);
    dockerd.docker_ok(&["push", &release]);
    // The same image again: docker sends the same manifest, and the push succeeds.
    dockerd.docker_ok(&["push", &release]);

    dockerd.docker_ok(&["tag", &two, &release]);
    let refused = dockerd.docker(&["push", &release]);
    assert!(
        !refused.status.success(),
        "the protected tag was overwritten:\n{}",
        describe(&refused)
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("denied") && said.contains("team/app:v1 is a protected tag"),
        "docker does not show the refusal:\n{}",
        describe(&refused)
    );

    // The tag still holds the first image.
    dockerd.docker_ok(&["rmi", &release, &one, &two]);
    dockerd.docker_ok(&["pull", &release]);
    assert_eq!(dockerd.image_id(&release), first);
    log_says(&gate, "reason=\"protect[0]:move\"");
}

/// The access line is written when the answer's body is done, which may be just after the
/// client has moved on.
fn log_says(gate: &Gate, needle: &str) {
    assert!(
        wait_until(Duration::from_secs(5), || gate.log().contains(needle)),
        "the gate's log never said {needle:?}:\n{}",
        gate.log()
    );
}
