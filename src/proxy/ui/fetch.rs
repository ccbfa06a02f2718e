//! What the browser shows, read from the registry through the pooled upstream client: the
//! catalog and tag lists (following their pagination), manifests of the four kinds docker and
//! OCI clients push, image configs, and manifest deletes.
//!
//! Every body is read whole but capped and within the read timeout: manifests and configs are
//! written by whoever pushed, and a gate must not hold a 1 GiB "manifest" in memory. Nothing
//! here decides who may see what: the caller is checked before any of these is called, and
//! names and references are validated before they go into a registry path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::bounded_map::BoundedMap;
use crate::proxy::error::GateError;
use crate::proxy::media_types::{DOCKER_LIST, OCI_INDEX};
use crate::proxy::upstream::Upstream;
use crate::registry_path::{is_digest, is_tag, is_valid_repository_name, percent_decode};

/// The most the gate reads of one registry answer. A manifest or image config is a few KiB;
/// the registry itself refuses manifests over 4 MiB.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Catalog and tag-list pages followed at most (of `PAGE_SIZE` names each): a registry with
/// more is shown in part, and the page says so.
const MAX_PAGES: usize = 100;
/// Names asked for per catalog page; distribution's own maximum.
const PAGE_SIZE: usize = 1000;

/// Every manifest kind the browser understands, in the `Accept` header: without it the
/// registry would convert an image to the old schema 1 or refuse an OCI index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// The registry, as the browser's pages read it.
#[derive(Clone)]
pub struct Registry {
    upstream: Upstream,
    host: HeaderValue,
    dates: Arc<CreationDates>,
}

/// Images' creation dates by repository and config digest, so that a tag list shown again
/// reads each tag's manifest but not its config: a config never changes under its digest.
/// Only dates are kept (a few dozen bytes each, the `created` value capped), and at most
/// `MAX_DATES` of them; when full it starts over rather than track what was used last.
pub struct CreationDates(BoundedMap<(String, String), Option<String>>);

impl Default for CreationDates {
    fn default() -> Self {
        CreationDates(BoundedMap::new(MAX_DATES))
    }
}

/// Dates kept at most: ten thousand tags' worth is well under 2 MiB.
const MAX_DATES: usize = 10_000;
/// A `created` longer than any RFC 3339 time is not a date worth keeping.
const MAX_DATE_LEN: usize = 64;

impl CreationDates {
    fn get(&self, repository: &str, digest: &str) -> Option<Option<String>> {
        let key = (repository.to_string(), digest.to_string());
        self.0.get_if(&key, |_| true)
    }

    fn put(&self, repository: &str, digest: &str, created: Option<String>) {
        let created = created.filter(|c| c.len() <= MAX_DATE_LEN);
        // A date never goes stale, so when full none is kept over another.
        let key = (repository.to_string(), digest.to_string());
        self.0.insert(key, created, |_, _| false);
    }
}

/// A list read in full, or cut at `MAX_PAGES`.
pub struct Listing {
    pub names: Vec<String>,
    pub complete: bool,
}

/// What a manifest is, as far as the pages care.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub kind: ManifestKind,
}

#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// One image: its config and layers.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    /// A multi-platform index (docker manifest list or OCI index).
    Index { manifests: Vec<Descriptor> },
    /// Something else (an artifact, a schema this gate does not read).
    Other,
}

impl Manifest {
    /// Config plus layers, as `docker images` counts compressed sizes.
    pub fn image_size(&self) -> Option<u64> {
        match &self.kind {
            ManifestKind::Image { config, layers } => Some(
                layers
                    .iter()
                    .fold(config.size, |sum, l| sum.saturating_add(l.size)),
            ),
            _ => None,
        }
    }

    /// `os/architecture[/variant]` of each image of an index, attestations left out.
    pub fn platforms(&self) -> Vec<String> {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(Platform::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The parts of an image config the pages show; every value as the pusher wrote it.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub created: Option<String>,
    pub platform: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub cmd: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// What the registry said to a delete.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// The registry runs without `storage.delete.enabled` (405 UNSUPPORTED).
    Disabled,
    NotFound,
}

impl Registry {
    pub fn new(upstream: Upstream, host: HeaderValue, dates: Arc<CreationDates>) -> Registry {
        Registry {
            upstream,
            host,
            dates,
        }
    }

    /// Every repository name, in the registry's order, following `Link` pages.
    pub async fn catalog(&self) -> Result<Listing, GateError> {
        let mut names = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = match &last {
                None => format!("/v2/_catalog?n={PAGE_SIZE}"),
                Some(last) => format!("/v2/_catalog?n={PAGE_SIZE}&last={last}"),
            };
            let (status, headers, body) = self.read(Method::GET, &path, None).await?;
            if !status.is_success() {
                return Err(upstream_failed("the catalog", status));
            }
            #[derive(Deserialize)]
            struct Page {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let page: Page = parse_json("the catalog", &body)?;
            names.extend(
                page.repositories
                    .into_iter()
                    .filter(|n| is_valid_repository_name(n)),
            );
            match next_last(&headers).filter(|l| is_valid_repository_name(l)) {
                Some(next) if Some(&next) != last.as_ref() => last = Some(next),
                _ => {
                    return Ok(Listing {
                        names,
                        complete: true,
                    })
                }
            }
        }
        Ok(Listing {
            names,
            complete: false,
        })
    }

    /// The tags of `repository`; `None` when the registry does not know it.
    pub async fn tags(&self, repository: &str) -> Result<Option<Listing>, GateError> {
        let mut names = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = match &last {
                None => format!("/v2/{repository}/tags/list"),
                Some(last) => format!("/v2/{repository}/tags/list?n={PAGE_SIZE}&last={last}"),
            };
            let (status, headers, body) = self.read(Method::GET, &path, None).await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(upstream_failed("a tag list", status));
            }
            #[derive(Deserialize)]
            struct Page {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let page: Page = parse_json("a tag list", &body)?;
            names.extend(
                page.tags
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| is_tag(t)),
            );
            match next_last(&headers).filter(|l| is_tag(l)) {
                Some(next) if Some(&next) != last.as_ref() => last = Some(next),
                _ => {
                    return Ok(Some(Listing {
                        names,
                        complete: true,
                    }))
                }
            }
        }
        Ok(Some(Listing {
            names,
            complete: false,
        }))
    }

    /// The manifest a tag or digest names; `None` when there is none.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, GateError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let (status, headers, body) = self
            .read(
                Method::GET,
                &path,
                Some(HeaderValue::from_static(MANIFEST_ACCEPT)),
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(upstream_failed("a manifest", status));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        parse_manifest(&body, content_type, headers.get("docker-content-digest")).map(Some)
    }

    /// The image config blob `digest` of `repository`, or `None` if it cannot be read.
    pub async fn config(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<ImageConfig>, GateError> {
        if !is_digest(digest) {
            return Ok(None);
        }
        let path = format!("/v2/{repository}/blobs/{digest}");
        let (status, _, body) = self.read(Method::GET, &path, None).await?;
        // A storage driver that redirects blob reads elsewhere: the gate does not follow.
        if !status.is_success() {
            return Ok(None);
        }
        Ok(parse_config(&body))
    }

    /// When the image whose config is `digest` was created, as its config says; `None`
    /// when it does not say or cannot be read. Remembered in `CreationDates` once read.
    pub async fn created(&self, repository: &str, digest: &str) -> Option<String> {
        if let Some(known) = self.dates.get(repository, digest) {
            return known;
        }
        // A failed read is not remembered: the next page asks again.
        let config = self.config(repository, digest).await.ok()??;
        self.dates.put(repository, digest, config.created.clone());
        config.created
    }

    /// Deletes the manifest `digest` of `repository` (and with it every tag pointing at it).
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Deleted, GateError> {
        let path = format!("/v2/{repository}/manifests/{digest}");
        let (status, _, body) = self.read(Method::DELETE, &path, None).await?;
        match status {
            s if s.is_success() => Ok(Deleted::Done),
            StatusCode::NOT_FOUND => Ok(Deleted::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Deleted::Disabled),
            s => {
                tracing::warn!(status = %s, body = %String::from_utf8_lossy(&body[..body.len().min(512)]), "the registry refused a delete from the browser");
                Err(upstream_failed("a delete", s))
            }
        }
    }

    /// One exchange, the body read whole up to `MAX_BODY_BYTES` within the read timeout.
    async fn read(
        &self,
        method: Method,
        path: &str,
        accept: Option<HeaderValue>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GateError> {
        let response = self.upstream.call(method, path, &self.host, accept).await?;
        let (parts, body) = response.into_parts();
        let body = read_capped(body, MAX_BODY_BYTES, self.upstream.read_timeout()).await?;
        Ok((parts.status, parts.headers, body))
    }
}

/// A registry body, whole, refused beyond `limit` bytes or after `timeout`.
async fn read_capped(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, GateError> {
    tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| GateError::UpstreamTimeout)?
        .map(|c| c.to_bytes())
        .map_err(|e| {
            GateError::UpstreamFailed(format!("reading a registry answer for the browser: {e}"))
        })
}

fn upstream_failed(what: &str, status: StatusCode) -> GateError {
    GateError::UpstreamFailed(format!("the registry answered {status} to {what}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, GateError> {
    serde_json::from_slice(body).map_err(|e| {
        GateError::UpstreamFailed(format!("{what} from the registry is not JSON: {e}"))
    })
}

/// A manifest from its body: the kind from the media type (the header's, else the body's),
/// the digest from `Docker-Content-Digest` when it is a digest, else computed.
fn parse_manifest(
    body: &[u8],
    content_type: Option<String>,
    digest_header: Option<&HeaderValue>,
) -> Result<Manifest, GateError> {
    let raw: RawManifest = parse_json("a manifest", body)?;
    let media_type = content_type
        .filter(|t| !t.is_empty() && t != "application/json")
        .or(raw.media_type)
        .unwrap_or_default();
    let digest = digest_header
        .and_then(|v| v.to_str().ok())
        .filter(|d| is_digest(d))
        .map(str::to_string)
        .unwrap_or_else(|| {
            use sha2::{Digest, Sha256};
            let hash = Sha256::digest(body);
            format!("sha256:{}", hex::encode(hash))
        });
    let kind = match (raw.config, raw.layers, raw.manifests) {
        (_, _, Some(manifests)) if media_type == DOCKER_LIST || media_type == OCI_INDEX => {
            ManifestKind::Index {
                manifests: valid_descriptors(manifests),
            }
        }
        (Some(config), Some(layers), None) if is_digest(&config.digest) => ManifestKind::Image {
            config,
            layers: valid_descriptors(layers),
        },
        (None, None, Some(manifests)) => ManifestKind::Index {
            manifests: valid_descriptors(manifests),
        },
        _ => ManifestKind::Other,
    };
    Ok(Manifest {
        digest,
        media_type,
        kind,
    })
}

/// Descriptors whose digest may go into a link; the others cannot be followed anyway.
fn valid_descriptors(list: Vec<Descriptor>) -> Vec<Descriptor> {
    list.into_iter().filter(|d| is_digest(&d.digest)).collect()
}

/// The shown parts of an image config; `None` if it is not a JSON object.
fn parse_config(body: &[u8]) -> Option<ImageConfig> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let inner = object.get("config").and_then(|c| c.as_object());
    let field = |name: &str| {
        inner
            .and_then(|c| c.get(name))
            .filter(|v| !v.is_null())
            .map(text)
            .filter(|s| !s.is_empty())
    };
    let labels = inner
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.as_object())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let platform = match (object.get("os"), object.get("architecture")) {
        (Some(os), Some(arch)) => Some(format!("{}/{}", text(os), text(arch))),
        _ => None,
    };
    Some(ImageConfig {
        created: object.get("created").filter(|v| !v.is_null()).map(text),
        platform,
        user: field("User"),
        entrypoint: field("Entrypoint"),
        cmd: field("Cmd"),
        labels,
    })
}

/// The decoded `last=` of the registry's `Link: <…?last=…&n=…>; rel="next"`, if any.
fn next_last(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some(("last", v)) => percent_decode(v),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn an_image_manifest_gives_its_size_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{{"mediaType":"c","digest":"{D1}","size":100}},
                "layers":[{{"mediaType":"l","digest":"{D2}","size":1000}},
                          {{"mediaType":"l","digest":"not-a-digest","size":5}}]}}"#
        );
        let m = parse_manifest(body.as_bytes(), None, None).expect("parses");
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(m.digest.starts_with("sha256:") && m.digest.len() == 71);
        // The layer whose digest could not be linked is left out of the list and the size.
        assert_eq!(m.image_size(), Some(1100));
        let header = HeaderValue::from_static(D2);
        let m = parse_manifest(body.as_bytes(), None, Some(&header)).expect("parses");
        assert_eq!(m.digest, D2);
        let junk = HeaderValue::from_static("<script>");
        let m = parse_manifest(body.as_bytes(), None, Some(&junk)).expect("parses");
        assert_ne!(m.digest, "<script>");
    }

    #[test]
    fn an_index_lists_its_platforms_without_attestations() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[
                {{"digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
                {{"digest":"{D2}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let m = parse_manifest(body.as_bytes(), Some(OCI_INDEX.into()), None).expect("parses");
        assert_eq!(m.platforms(), ["linux/amd64", "linux/arm/v7"]);
        assert_eq!(m.image_size(), None);
    }

    #[test]
    fn config_values_are_kept_as_written() {
        let body = br#"{"created":"2024-05-01T10:00:00Z","os":"linux","architecture":"amd64",
            "config":{"User":"<u>","Cmd":["sh","-c","echo <x>"],
            "Labels":{"evil":"<script>alert(1)</script>","n":5}}}"#;
        let c = parse_config(body).expect("parses");
        assert_eq!(c.created.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_eq!(c.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(c.user.as_deref(), Some("<u>"));
        assert_eq!(c.cmd.as_deref(), Some(r#"["sh","-c","echo <x>"]"#));
        assert_eq!(c.labels["evil"], "<script>alert(1)</script>");
        assert_eq!(c.labels["n"], "5");
        assert!(parse_config(b"[1]").is_none());
        assert!(parse_config(b"garbage").is_none());
    }

    #[test]
    fn creation_dates_are_kept_per_repository_and_bounded() {
        let dates = CreationDates::default();
        let when = "2026-01-01T00:00:00Z".to_string();
        dates.put("team/app", "sha256:aa", Some(when.clone()));
        assert_eq!(dates.get("team/app", "sha256:aa"), Some(Some(when)));
        assert_eq!(dates.get("other/app", "sha256:aa"), None);
        // Read, but no date worth keeping: known as dateless, not read again.
        dates.put("team/app", "sha256:bb", Some("9".repeat(MAX_DATE_LEN + 1)));
        assert_eq!(dates.get("team/app", "sha256:bb"), Some(None));
        for i in 0..MAX_DATES + 10 {
            dates.put("team/many", &format!("sha256:{i}"), None);
        }
        let kept = dates.0.len();
        assert!(kept <= MAX_DATES && kept > 0, "{kept} dates kept");
    }

    #[test]
    fn the_next_page_is_read_from_link() {
        let mut h = HeaderMap::new();
        assert_eq!(next_last(&h), None);
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=team%2Fapp&n=50>; rel=\"next\""),
        );
        assert_eq!(next_last(&h).as_deref(), Some("team/app"));
    }
}
