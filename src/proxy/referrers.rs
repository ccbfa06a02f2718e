//! OCI 1.1 referrers in front of a registry that has no referrers API (distribution 2.8):
//! `GET /v2/<name>/referrers/<digest>` is answered here, and a manifest with a `subject`
//! that the registry accepted is indexed here, so that clients (cosign, notation, oras) find
//! signatures and attestations without keeping the index themselves.
//!
//! The store is the spec's own fallback: the tag `<alg>-<hex>` of the subject holds an OCI
//! index of its referrers. Nothing lives outside the registry, clients that read that tag
//! directly keep working, and entries that older clients wrote into it themselves are kept.
//! The gate changes an index only under the repository's write lock (the fleet's too, with
//! `[cluster]`), so two attaches at the same moment both end up listed: clients doing the
//! read-modify-write themselves lose one of the two.
//!
//! A push is answered `OCI-Subject: <digest>` only once its entry is in the index, which
//! tells the client not to write the fallback tag itself. When the index cannot be written
//! (the lock or the registry failing), the header is left out and the client writes it as it
//! would without the gate.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::body::ResponseBody;
use super::context::RequestContext;
use super::error::GateError;
use super::media_types::{OCI_INDEX, OCI_MANIFEST};
use super::registry::manifest::Manifest;
use super::registry::Registry;
use super::write_locks::WriteGuard;
use crate::registry_path::{is_digest, percent_decode, Classified, Kind};

/// How long indexing a referrer waits for the repository's write lock: another write's
/// `[[protect]]` check or index update is short.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Referrers one subject's index lists at most. Each push rewrites the whole index (and
/// 2.8 checks every entry), so past this a referrer is stored but not indexed, and the log
/// says so; a signature or two SBOMs per image is the common case.
const MAX_REFERRERS: usize = 1000;
/// The most of a referrer's annotations (as JSON) copied into its index entry: the index
/// must stay far below the registry's 4 MiB manifest limit.
const MAX_ANNOTATION_BYTES: usize = 8 * 1024;

/// A referrer pushed or deleted, read before the request is forwarded; its subject's index
/// changes once the registry has accepted the request.
#[derive(Debug)]
pub(super) struct Change {
    repository: String,
    subject: String,
    kind: ChangeKind,
}

#[derive(Debug)]
enum ChangeKind {
    /// The descriptor to list; its digest is the registry's, once it answers.
    Added {
        descriptor: serde_json::Map<String, Value>,
        digest: String,
    },
    Removed {
        digest: String,
    },
}

/// The parts of a manifest the index needs.
#[derive(Deserialize)]
struct Parts {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<ConfigPart>,
    subject: Option<SubjectPart>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ConfigPart {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

#[derive(Deserialize)]
struct SubjectPart {
    digest: String,
}

/// The tag the referrers tag schema keeps a subject's index under: `<alg>-<hex>`, the
/// algorithm cut to 32 characters and the hex to 64, as the distribution spec says.
pub fn fallback_tag(digest: &str) -> Option<String> {
    let (algorithm, hex) = digest.split_once(':')?;
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    Some(format!("{}-{}", cut(algorithm, 32), cut(hex, 64)))
}

/// Whether the gate keeps an index for the subject `digest`: SHA-256 or SHA-512 in the
/// canonical lower-case form only. `is_digest` takes any algorithm name and 32 hex digits
/// or more, and with those the fallback tag could be any tag a release uses (`sha-<git
/// sha>`, `main-<hex>`): the gate would write over it past `[[protect]]`.
fn indexable(digest: &str) -> bool {
    match digest.split_once(':') {
        Some(("sha256", hex)) => lower_hex(hex, 64),
        Some(("sha512", hex)) => lower_hex(hex, 128),
        _ => false,
    }
}

/// Whether `tag` is a fallback tag the gate keeps (`sha256-` or `sha512-` and 64 lower-case
/// hex digits), which the browser shows under its image rather than as a tag.
pub fn is_fallback_tag(tag: &str) -> bool {
    ["sha256-", "sha512-"].iter().any(|prefix| {
        tag.strip_prefix(prefix)
            .is_some_and(|hex| lower_hex(hex, 64))
    })
}

/// Exactly `len` lower-case hex digits: the canonical spelling, the one the tags use.
fn lower_hex(hex: &str, len: usize) -> bool {
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One manifest that refers to another, as its subject's index lists it.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub artifact_type: String,
    pub size: Option<u64>,
}

/// What refers to `digest` in `repository` (for the browser), read from its fallback tag.
pub async fn referrers_of(
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> Result<Vec<Referrer>, GateError> {
    Ok(listed(registry, repository, digest)
        .await?
        .into_iter()
        .filter_map(|m| {
            Some(Referrer {
                digest: m.get("digest")?.as_str()?.to_string(),
                artifact_type: m
                    .get("artifactType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                size: m.get("size").and_then(Value::as_u64),
            })
        })
        .collect())
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: the subject's index, filtered, or
/// an empty index when nothing refers to it. Pull permission was checked (phase 4).
pub(super) async fn answer(
    ctx: &RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    host: &HeaderValue,
) -> Result<Response<ResponseBody>, GateError> {
    let (Some(repository), Some(digest)) = (class.repository, class.reference) else {
        return Err(GateError::BadRequest("a referrers request names a digest"));
    };
    if !is_digest(digest) {
        return Err(GateError::DigestInvalid(digest.to_string()));
    }
    let filter = request.uri().query().and_then(artifact_type_filter);
    // Taken before the index is read: the answer is held whole until it is sent.
    let reservation = ctx.h2_send_reservation(request).await;
    let mut manifests = listed(&ctx.registry(request, host), repository, digest).await?;
    if let Some(wanted) = &filter {
        manifests.retain(|m| m.get("artifactType").and_then(Value::as_str) == Some(wanted));
    }
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .map_err(|_| GateError::Internal("serialising a referrers index failed"))?;
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)).holding(reservation));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        headers.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

/// `artifactType=` of a query, percent-decoded; the first one counts.
fn artifact_type_filter(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some(("artifactType", value)) if !value.is_empty() => percent_decode(value),
            _ => None,
        })
}

/// The descriptors the fallback tag of `digest` lists in `repository`: nothing when there
/// is no such tag or it holds no index.
async fn listed(
    registry: &Registry,
    repository: &str,
    digest: &str,
) -> Result<Vec<Value>, GateError> {
    let Some(tag) = fallback_tag(digest) else {
        return Ok(Vec::new());
    };
    let stored = registry.manifest_bytes(repository, &tag).await?;
    Ok(stored.map(|(_, bytes)| entries(&bytes)).unwrap_or_default())
}

/// The descriptors an index lists; nothing for what is not an index.
fn entries(bytes: &[u8]) -> Vec<Value> {
    let manifests = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|mut index| match index.get_mut("manifests")?.take() {
            Value::Array(manifests) => Some(manifests),
            _ => None,
        });
    manifests
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.get("digest")
                .and_then(Value::as_str)
                .is_some_and(is_digest)
        })
        .collect()
}

/// Before forwarding: the referrer a manifest write adds or removes, if it is one. A push of
/// an OCI manifest or index is read whole (capped, as `[[protect]]` does; Docker's own
/// manifest types cannot carry a subject and stream as before); a delete by digest reads the
/// manifest it deletes, one registry round trip.
pub(super) async fn change_of(
    ctx: &mut RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    host: &HeaderValue,
) -> Result<Option<Change>, GateError> {
    let (Some(repository), Some(reference)) = (class.repository, class.reference) else {
        return Ok(None);
    };
    if class.kind != Kind::Manifest {
        return Ok(None);
    }
    if request.method() == Method::PUT {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim());
        if !matches!(content_type, Some(OCI_MANIFEST | OCI_INDEX)) {
            return Ok(None);
        }
        let body = super::protect::read_manifest(ctx).await?;
        let Some((subject, descriptor)) = descriptor_of(&body, content_type) else {
            return Ok(None);
        };
        return Ok(Some(Change {
            repository: repository.to_string(),
            subject,
            kind: ChangeKind::Added {
                descriptor,
                digest: format!("sha256:{}", hex::encode(Sha256::digest(&body))),
            },
        }));
    }
    if request.method() == Method::DELETE && is_digest(reference) {
        let registry = ctx.registry(request, host);
        let subject = subject_of_stored(&registry, repository, reference).await;
        return Ok(subject.map(|subject| Change {
            repository: repository.to_string(),
            subject,
            kind: ChangeKind::Removed {
                digest: reference.to_string(),
            },
        }));
    }
    Ok(None)
}

/// Before a delete: the subject the stored manifest `digest` refers to, one registry round
/// trip. A manifest that cannot be read now is deleted without touching any index: the
/// registry answers the delete itself, and a stale entry is only a dangling one.
async fn subject_of_stored(registry: &Registry, repository: &str, digest: &str) -> Option<String> {
    let manifest = registry.manifest(repository, digest).await.ok().flatten()?;
    indexed_subject(&manifest)
}

/// The subject whose index lists `manifest`, if it has one the gate indexes.
pub(crate) fn indexed_subject(manifest: &Manifest) -> Option<String> {
    manifest
        .subject
        .clone()
        .filter(|subject| indexable(subject))
}

/// After a delete the registry accepted (the browser's, which knows no `Change`): the
/// entry of `digest` taken out of its subject's index, under `held` or the write lock.
pub(crate) async fn forget(
    ctx: &RequestContext,
    registry: &Registry,
    repository: &str,
    subject: &str,
    digest: &str,
    held: Option<WriteGuard>,
) {
    let Some(_guard) = index_lock(ctx, repository, subject, held).await else {
        return;
    };
    if let Err(e) = update(registry, repository, subject, digest, None).await {
        tracing::warn!(repository = %repository, subject = %subject, error = %e, "referrers index not updated after a delete; the entry dangles");
    }
}

/// The subject of a manifest and the descriptor (without the digest) its subject's index
/// lists it with: media type, size, `artifactType` (or else the config's media type), and
/// the annotations.
fn descriptor_of(
    body: &[u8],
    content_type: Option<&str>,
) -> Option<(String, serde_json::Map<String, Value>)> {
    let parts: Parts = serde_json::from_slice(body).ok()?;
    let subject = parts.subject?.digest;
    if !indexable(&subject) {
        return None;
    }
    let media_type = parts
        .media_type
        .or_else(|| content_type.map(str::to_string))?;
    let mut descriptor = serde_json::Map::new();
    descriptor.insert("mediaType".into(), Value::String(media_type));
    descriptor.insert("size".into(), json!(body.len()));
    let artifact_type = parts
        .artifact_type
        .or_else(|| parts.config.and_then(|c| c.media_type));
    if let Some(artifact_type) = artifact_type {
        descriptor.insert("artifactType".into(), Value::String(artifact_type));
    }
    if let Some(annotations) = parts.annotations.filter(|a| !a.is_empty()) {
        let annotations = json!(annotations);
        // Larger annotations stay in the referrer itself, which clients fetch anyway.
        if annotations.to_string().len() <= MAX_ANNOTATION_BYTES {
            descriptor.insert("annotations".into(), annotations);
        }
    }
    Some((subject, descriptor))
}

/// After the registry answered: a referrer it accepted (201 for a push, 202 for a delete)
/// changes its subject's index, under the repository's write lock (`held`, when
/// `[[protect]]` already took it for this write). A push indexed is answered with
/// `OCI-Subject`.
pub(super) async fn apply(
    ctx: &RequestContext,
    request: &Request<()>,
    change: Change,
    response: &mut Response<Incoming>,
    held: Option<WriteGuard>,
    host: &HeaderValue,
) {
    let accepted = match change.kind {
        ChangeKind::Added { .. } => response.status() == StatusCode::CREATED,
        ChangeKind::Removed { .. } => response.status() == StatusCode::ACCEPTED,
    };
    if !accepted {
        return;
    }
    let Some(_guard) = index_lock(ctx, &change.repository, &change.subject, held).await else {
        return;
    };
    let registry = ctx.registry(request, host);
    let (digest, added) = match change.kind {
        ChangeKind::Added {
            mut descriptor,
            digest,
        } => {
            // The registry's digest of what it stored wins over the one computed here.
            let digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .filter(|d| is_digest(d))
                .map_or(digest, str::to_string);
            descriptor.insert("digest".into(), Value::String(digest.clone()));
            (digest, Some(descriptor))
        }
        ChangeKind::Removed { digest } => (digest, None),
    };
    let indexed = added.is_some();
    match update(
        &registry,
        &change.repository,
        &change.subject,
        &digest,
        added,
    )
    .await
    {
        Ok(()) => {
            if indexed {
                if let Ok(value) = HeaderValue::from_str(&change.subject) {
                    response.headers_mut().insert("oci-subject", value);
                }
            }
        }
        Err(e) => {
            tracing::warn!(repository = %change.repository, subject = %change.subject, error = %e, "referrers index not updated; the client keeps it itself");
        }
    }
}

/// The repository's write lock for an index update: `held` when `[[protect]]` already took
/// it for this write (and it has not lapsed), else taken here within `LOCK_WAIT`. `None`
/// (logged) means no update: the client keeps the index itself.
async fn index_lock(
    ctx: &RequestContext,
    repository: &str,
    subject: &str,
    held: Option<WriteGuard>,
) -> Option<WriteGuard> {
    match held {
        // In a fleet, a lease that lapsed during the `[[protect]]` check may be another
        // gate's by now: no index write without it.
        Some(guard) if !guard.held() => {
            tracing::warn!(repository = %repository, subject = %subject, "referrers index not updated: the fleet's write lock lapsed; the client keeps it itself");
            None
        }
        Some(guard) => Some(guard),
        // Bounded as a whole: the gate's own lock waits without end by itself.
        None => match tokio::time::timeout(LOCK_WAIT, ctx.write_locks.lock(repository, LOCK_WAIT))
            .await
        {
            Ok(Ok(guard)) => Some(guard),
            Ok(Err(e)) => {
                tracing::warn!(repository = %repository, subject = %subject, error = %e, "referrers index not updated: no write lock; the client keeps it itself");
                None
            }
            Err(_) => {
                tracing::warn!(repository = %repository, subject = %subject, waited = ?LOCK_WAIT, "referrers index not updated: another write held the repository's lock too long; the client keeps it itself");
                None
            }
        },
    }
}

/// Reads the subject's index, drops `digest` from it, adds `added` if given, and stores it.
async fn update(
    registry: &Registry,
    repository: &str,
    subject: &str,
    digest: &str,
    added: Option<serde_json::Map<String, Value>>,
) -> Result<(), GateError> {
    let tag = fallback_tag(subject).ok_or_else(|| GateError::DigestInvalid(subject.into()))?;
    let stored = registry.manifest_bytes(repository, &tag).await?;
    // Only an index is ever written over: an image someone pushed under this name stays.
    if let Some((media_type, bytes)) = &stored {
        if media_type != OCI_INDEX || !is_index(bytes) {
            return Err(GateError::BadRequest(
                "the subject's fallback tag holds something other than an OCI index",
            ));
        }
    }
    let index = merged(stored.as_ref().map(|(_, b)| &b[..]), digest, added);
    let entries = index["manifests"].as_array().map_or(0, Vec::len);
    if entries > MAX_REFERRERS {
        return Err(GateError::BadRequest(
            "the subject already has the most referrers the gate indexes (1000)",
        ));
    }
    let body = serde_json::to_vec(&index)
        .map_err(|_| GateError::Internal("serialising a referrers index failed"))?;
    registry
        .put_manifest(repository, &tag, OCI_INDEX, Bytes::from(body))
        .await
}

/// Whether `bytes` is JSON with a `manifests` array.
fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some_and(Value::is_array))
}

/// The index with `digest` dropped and `added` appended: entries others wrote and fields of
/// the index itself (annotations) are kept. `update` never hands it what is not an index.
fn merged(
    stored: Option<&[u8]>,
    digest: &str,
    added: Option<serde_json::Map<String, Value>>,
) -> Value {
    let mut index = stored
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .filter(|v| v.get("manifests").is_some_and(Value::is_array))
        .unwrap_or_else(|| json!({ "manifests": [] }));
    index["schemaVersion"] = json!(2);
    index["mediaType"] = json!(OCI_INDEX);
    if let Some(manifests) = index["manifests"].as_array_mut() {
        manifests.retain(|m| m.get("digest").and_then(Value::as_str) != Some(digest));
        if let Some(added) = added {
            manifests.push(Value::Object(added));
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn only_canonical_sha256_and_sha512_subjects_are_indexed() {
        assert!(indexable(S));
        assert!(indexable(&format!("sha512:{}", "0".repeat(128))));
        // Tags a release could use: the gate must never write those.
        assert!(!indexable(&format!("sha:{}", "a".repeat(40))));
        assert!(!indexable(&format!("main:{}", "a".repeat(64))));
        assert!(!indexable(&format!("sha256:{}", "A".repeat(64))));
        assert!(!indexable(&format!("sha256:{}", "a".repeat(65))));
        assert!(!indexable(&format!("sha512:{}", "a".repeat(64))));
    }

    #[test]
    fn fallback_tags_are_told_from_other_tags() {
        assert!(is_fallback_tag(&fallback_tag(S).expect("tag")));
        assert!(!is_fallback_tag("sha256-abc"));
        assert!(!is_fallback_tag(&format!("sha256-{}", "A".repeat(64))));
        assert!(!is_fallback_tag("v1"));
    }

    #[test]
    fn the_fallback_tag_is_algorithm_dash_hex_cut_as_the_spec_says() {
        assert_eq!(
            fallback_tag(S).as_deref(),
            Some("sha256-1111111111111111111111111111111111111111111111111111111111111111")
        );
        let long = format!("sha512:{}", "f".repeat(128));
        assert_eq!(
            fallback_tag(&long).map(|t| t.len()),
            Some("sha512-".len() + 64)
        );
        assert_eq!(fallback_tag("nocolon"), None);
    }

    #[test]
    fn a_descriptor_takes_artifact_type_or_else_the_config_media_type() {
        let with_type = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/spdx+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json"}},"subject":{{"digest":"{S}"}},"annotations":{{"k":"v"}}}}"#
        );
        let (subject, d) = descriptor_of(with_type.as_bytes(), None).expect("a referrer");
        assert_eq!(subject, S);
        assert_eq!(d["artifactType"], "application/spdx+json");
        assert_eq!(d["mediaType"], OCI_MANIFEST);
        assert_eq!(d["size"], with_type.len());
        assert_eq!(d["annotations"]["k"], "v");

        let config_only = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.dev.cosign"}},"subject":{{"digest":"{S}"}}}}"#
        );
        let (_, d) = descriptor_of(config_only.as_bytes(), Some(OCI_MANIFEST)).expect("referrer");
        assert_eq!(d["artifactType"], "application/vnd.dev.cosign");
        assert_eq!(d["mediaType"], OCI_MANIFEST);
        assert!(d.get("annotations").is_none());

        let huge = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","subject":{{"digest":"{S}"}},"annotations":{{"k":"{}"}}}}"#,
            "x".repeat(MAX_ANNOTATION_BYTES)
        );
        let (_, d) = descriptor_of(huge.as_bytes(), None).expect("a referrer");
        assert!(d.get("annotations").is_none(), "large annotations stay out");

        assert!(descriptor_of(br#"{"schemaVersion":2}"#, Some(OCI_MANIFEST)).is_none());
        let bad_subject = br#"{"subject":{"digest":"latest"},"mediaType":"x"}"#;
        assert!(descriptor_of(bad_subject, None).is_none());
    }

    #[test]
    fn merging_keeps_what_others_wrote_and_replaces_the_same_digest() {
        let stored = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","annotations":{{"x":"y"}},"manifests":[{{"digest":"{A}","size":1}},{{"digest":"{B}","size":2}}]}}"#
        );
        let mut added = serde_json::Map::new();
        added.insert("digest".into(), json!(A));
        added.insert("size".into(), json!(9));
        let index = merged(Some(stored.as_bytes()), A, Some(added));
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0]["digest"], B);
        assert_eq!(manifests[1]["size"], 9);
        assert_eq!(index["annotations"]["x"], "y");

        let removed = merged(Some(stored.as_bytes()), B, None);
        assert_eq!(removed["manifests"].as_array().map(Vec::len), Some(1));

        let fresh = merged(Some(b"not json"), A, None);
        assert_eq!(fresh["mediaType"], OCI_INDEX);
        assert_eq!(fresh["schemaVersion"], 2);
        assert_eq!(fresh["manifests"], json!([]));
    }

    #[test]
    fn the_artifact_type_filter_is_read_from_the_query() {
        assert_eq!(
            artifact_type_filter("artifactType=application%2Fspdx%2Bjson").as_deref(),
            Some("application/spdx+json")
        );
        assert_eq!(artifact_type_filter("n=1&artifactType="), None);
        assert_eq!(artifact_type_filter("other=1"), None);
    }
}
