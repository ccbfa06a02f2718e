//! The one client of the registry's API for the reads and writes the gate makes itself:
//! catalog and tag listings (following `Link` pages, bounded), a manifest's `HEAD` and `GET`,
//! image configs, manifest deletes, and a blob upload's status. Catalog filtering, the tag
//! listing, `[[protect]]`, the upload chunk check and the registry browser all read the
//! registry through it, with one `Link` parser and one set of limits.
//!
//! Every body is read whole but capped and within the read timeout: manifests and configs
//! are written by whoever pushed, and a gate must not hold a 1 GiB "manifest" in memory.
//! Nothing here decides who may see what: callers check the caller first, and names and
//! references are validated before they go into a registry path.

pub mod manifest;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::proxy::error::GateError;
use crate::proxy::media_types::ACCEPT_MANIFESTS;
use crate::registry_path::{is_digest, is_tag, is_valid_repository_name, percent_decode};
use crate::upstream::Upstream;
use manifest::{parse_config, parse_manifest, ImageConfig, Manifest};

/// The most the gate reads of one manifest or config: distribution's own limit on a
/// manifest body (`maxManifestBodySize`); an image config is a few KiB.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A page of names larger than this is refused rather than held: 1000 names of at most 255
/// bytes come to well under 1 MiB.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Names asked for per page; distribution's own maximum for the catalog (2.8 ignores it for
/// tags and sends them all).
pub const PAGE_SIZE: usize = 1000;
/// Pages followed at most: a listing with more is cut there, and `Listing::complete` says so.
const MAX_PAGES: usize = 100;

/// The registry as the gate itself asks it, on behalf of one request.
#[derive(Clone)]
pub struct Registry {
    upstream: Upstream,
    /// The client's `Host`, which the registry uses for the URLs it answers with.
    host: HeaderValue,
    /// The client's own credentials, for a registry that checks them itself (the gate in
    /// `[auth] mode = "none"`).
    authorization: Option<HeaderValue>,
    /// Asking for the client (`with_authorization`): the registry's 401 or 403 is the
    /// client's to answer, not the gate's failure.
    for_client: bool,
}

/// A listing read in full, or cut at `MAX_PAGES`.
#[derive(Debug)]
pub struct Listing {
    pub names: Vec<String>,
    pub complete: bool,
}

/// One page of a listing: its names and where the next page starts, if there is one.
#[derive(Debug)]
pub struct Page {
    pub names: Vec<String>,
    pub next: Option<Next>,
}

/// The next page, as the registry's `Link` names it.
#[derive(Debug, PartialEq, Eq)]
pub struct Next {
    /// The decoded `last=` cursor.
    pub last: String,
    /// The page size the link asks for, if it says one.
    pub n: Option<usize>,
}

/// What a manifest `HEAD` tells.
#[derive(Debug)]
pub struct Head {
    /// `Docker-Content-Digest`, when the registry named one.
    pub digest: Option<String>,
    /// `Content-Type`, without parameters; empty when none was sent.
    pub media_type: String,
}

/// What the registry said to a delete.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// The registry runs without `storage.delete.enabled` (405 UNSUPPORTED).
    Disabled,
    NotFound,
}

/// The two listings the registry pages through.
#[derive(Clone, Copy)]
enum Listed<'a> {
    Catalog,
    Tags(&'a str),
}

impl Listed<'_> {
    fn path(&self) -> String {
        match self {
            Listed::Catalog => "/v2/_catalog".to_string(),
            Listed::Tags(repository) => format!("/v2/{repository}/tags/list"),
        }
    }

    /// Whether `name` may be listed here (and so be a cursor in a path the gate builds).
    fn valid(&self, name: &str) -> bool {
        match self {
            Listed::Catalog => is_valid_repository_name(name),
            Listed::Tags(_) => is_tag(name),
        }
    }
}

impl Registry {
    pub fn new(upstream: Upstream, host: HeaderValue) -> Registry {
        Registry {
            upstream,
            host,
            authorization: None,
            for_client: false,
        }
    }

    /// Asks with the client's credentials, for a registry that checks them itself.
    pub fn with_authorization(mut self, authorization: Option<HeaderValue>) -> Registry {
        self.authorization = authorization;
        self.for_client = true;
        self
    }

    /// Every repository name, in the registry's order.
    pub async fn catalog(&self) -> Result<Listing, GateError> {
        self.listing(Listed::Catalog)
            .await?
            .ok_or_else(|| GateError::UpstreamFailed("the registry has no catalog".into()))
    }

    /// One catalog page of up to `n` names after `last`.
    pub async fn catalog_page(&self, n: usize, last: Option<&str>) -> Result<Page, GateError> {
        self.page(Listed::Catalog, n, last)
            .await?
            .ok_or_else(|| GateError::UpstreamFailed("the registry has no catalog".into()))
    }

    /// The catalog page in an answer the registry already gave (to the client's own
    /// request): its headers and body.
    pub async fn catalog_page_of(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Page, GateError> {
        self.page_of(Listed::Catalog, headers, body).await
    }

    /// The tags of `repository`; `None` when the registry does not know it.
    pub async fn tags(&self, repository: &str) -> Result<Option<Listing>, GateError> {
        self.listing(Listed::Tags(repository)).await
    }

    /// What `reference` (a tag or digest) of `repository` names now; `None` when nothing.
    pub async fn head(&self, repository: &str, reference: &str) -> Result<Option<Head>, GateError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self.send(Method::HEAD, &path, true).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(self.answered(&Method::HEAD, &path, status, response.headers())),
        }
        let text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        Ok(Some(Head {
            digest: text(http::HeaderName::from_static("docker-content-digest"))
                .map(str::to_string),
            media_type: media_type(response.headers()),
        }))
    }

    /// The manifest a tag or digest names; `None` when there is none.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, GateError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let (status, headers, body) = self.read(Method::GET, &path, true).await?;
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(self.answered(&Method::GET, &path, status, &headers)),
        }
        let content_type = Some(media_type(&headers)).filter(|t| !t.is_empty());
        parse_manifest(&body, content_type, headers.get("docker-content-digest")).map(Some)
    }

    /// The manifest a tag or digest names as the registry stores it: its media type and
    /// bytes; `None` when there is none.
    pub async fn manifest_bytes(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(String, Bytes)>, GateError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let (status, headers, body) = self.read(Method::GET, &path, true).await?;
        match status {
            StatusCode::OK => Ok(Some((media_type(&headers), body))),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.answered(&Method::GET, &path, status, &headers)),
        }
    }

    /// Stores `body` (of `media_type`) as the manifest `reference` of `repository`.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &'static str,
        body: Bytes,
    ) -> Result<(), GateError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let mut headers = self.headers(false);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
        let response = self
            .upstream
            .write(Method::PUT, &path, headers, body)
            .await?;
        let status = response.status();
        let (parts, answer) = response.into_parts();
        if status.is_success() {
            return Ok(());
        }
        let text = self.capped(answer, 4096).await.unwrap_or_default();
        tracing::warn!(status = %status, body = %String::from_utf8_lossy(&text), path, "the registry refused a manifest the gate wrote");
        Err(self.answered(&Method::PUT, &path, status, &parts.headers))
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
        let (status, _, body) = self.read(Method::GET, &path, false).await?;
        // A storage driver that redirects blob reads elsewhere: the gate does not follow.
        if !status.is_success() {
            return Ok(None);
        }
        Ok(parse_config(&body))
    }

    /// Deletes the manifest `digest` of `repository` (and with it every tag pointing at it).
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Deleted, GateError> {
        let path = format!("/v2/{repository}/manifests/{digest}");
        let (status, headers, body) = self.read(Method::DELETE, &path, false).await?;
        match status {
            s if s.is_success() => Ok(Deleted::Done),
            StatusCode::NOT_FOUND => Ok(Deleted::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Deleted::Disabled),
            s => {
                tracing::warn!(status = %s, body = %String::from_utf8_lossy(&body[..body.len().min(512)]), "the registry refused a delete the gate asked for");
                Err(self.answered(&Method::DELETE, &path, s, &headers))
            }
        }
    }

    /// The headers of a blob upload's status (`GET` on the upload's URL, `path_and_query` as
    /// the client sends it, `_state` included: it is the registry's signed note of the
    /// upload, and the only way to ask about it); `None` unless the registry answers 204, an
    /// upload it knows.
    pub async fn upload_status(
        &self,
        path_and_query: &str,
    ) -> Result<Option<HeaderMap>, GateError> {
        let mut headers = self.headers(false);
        // As on a forwarded request: the registry writes its `Location` at the client's
        // `Host` with this scheme, and the client must be able to follow it.
        headers.insert(
            http::HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        let response = self
            .upstream
            .lookup(Method::GET, path_and_query, headers)
            .await?;
        let (parts, body) = response.into_parts();
        // Read (a 204 has nothing) so the pooled connection can be used again.
        self.capped(body, MAX_BODY_BYTES).await?;
        Ok((parts.status == StatusCode::NO_CONTENT).then_some(parts.headers))
    }

    /// Every page of a listing, up to `MAX_PAGES`; `None` when the registry does not know
    /// what is listed (a tags listing of an unknown repository).
    async fn listing(&self, listed: Listed<'_>) -> Result<Option<Listing>, GateError> {
        let mut names = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let Some(page) = self.page(listed, PAGE_SIZE, last.as_deref()).await? else {
                return Ok(None);
            };
            names.extend(page.names);
            match page.next {
                // A cursor that does not move on would loop.
                Some(next) if Some(&next.last) != last.as_ref() => last = Some(next.last),
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

    /// One page; `None` when the registry answers 404.
    async fn page(
        &self,
        listed: Listed<'_>,
        n: usize,
        last: Option<&str>,
    ) -> Result<Option<Page>, GateError> {
        let base = listed.path();
        // The cursor is a valid name or tag, so it goes into the query as it is.
        let path = match last {
            None => format!("{base}?n={n}"),
            Some(last) => format!("{base}?n={n}&last={last}"),
        };
        let response = self.send(Method::GET, &path, false).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(self.answered(&Method::GET, &path, status, response.headers())),
        }
        let (parts, body) = response.into_parts();
        self.page_of(listed, &parts.headers, body).await.map(Some)
    }

    /// The names of a successful listing answer and its next page.
    async fn page_of(
        &self,
        listed: Listed<'_>,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Page, GateError> {
        let next = next_link(headers, &listed.path()).filter(|n| listed.valid(&n.last));
        let body = self.capped(body, MAX_PAGE_BYTES).await?;
        let names = page_names(&body, listed)?;
        Ok(Page { names, next })
    }

    /// One exchange, the body read whole up to `MAX_BODY_BYTES` within the read timeout.
    async fn read(
        &self,
        method: Method,
        path: &str,
        manifests: bool,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GateError> {
        let response = self.send(method, path, manifests).await?;
        let (parts, body) = response.into_parts();
        let body = self.capped(body, MAX_BODY_BYTES).await?;
        Ok((parts.status, parts.headers, body))
    }

    /// One bodiless request; `manifests` asks for every manifest type, without which the
    /// registry would rewrite an image to the old schema 1 or refuse an OCI index.
    async fn send(
        &self,
        method: Method,
        path: &str,
        manifests: bool,
    ) -> Result<Response<Incoming>, GateError> {
        Ok(self
            .upstream
            .lookup(method, path, self.headers(manifests))
            .await?)
    }

    /// The headers of every request the gate makes itself.
    fn headers(&self, manifests: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, self.host.clone());
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        if manifests {
            headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        }
        headers
    }

    /// A registry body, whole, refused beyond `limit` bytes or after the read timeout.
    async fn capped(&self, body: Incoming, limit: usize) -> Result<Bytes, GateError> {
        tokio::time::timeout(
            self.upstream.read_timeout(),
            Limited::new(body, limit).collect(),
        )
        .await
        .map_err(|_| GateError::UpstreamTimeout)?
        .map(|c| c.to_bytes())
        .map_err(|e| GateError::UpstreamFailed(format!("reading a registry answer: {e}")))
    }
}

/// The names of a catalog or tags page, each valid for its listing (the others could not be
/// linked or asked about anyway).
fn page_names(body: &[u8], listed: Listed<'_>) -> Result<Vec<String>, GateError> {
    #[derive(Deserialize)]
    struct RawPage {
        #[serde(default)]
        repositories: Option<Vec<String>>,
        /// `null` in distribution's answer for a repository whose tags were all deleted.
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let page: RawPage = serde_json::from_slice(body).map_err(|e| {
        GateError::UpstreamFailed(format!("a listing from the registry is not JSON: {e}"))
    })?;
    let names = match listed {
        Listed::Catalog => page.repositories,
        Listed::Tags(_) => page.tags,
    };
    Ok(names
        .unwrap_or_default()
        .into_iter()
        .filter(|n| listed.valid(n))
        .collect())
}

/// The next page that the registry's `Link: <PATH?last=…&n=…>; rel="next"` names, when the
/// link is a further page of the listing at `path` (the registry is trusted, but a link
/// elsewhere is no page of it) and has a cursor. A scheme and host before the path are
/// allowed.
fn next_link(headers: &HeaderMap, path: &str) -> Option<Next> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let target = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map_or(Some(target), |rest| rest.find('/').map(|i| &rest[i..]))?;
    let (target_path, query) = target.split_once('?')?;
    if target_path != path {
        return None;
    }
    let (mut last, mut n) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("last", v)) => last = percent_decode(v),
            Some(("n", v)) => n = v.parse().ok(),
            _ => {}
        }
    }
    Some(Next { last: last?, n })
}

/// The `Content-Type` without parameters.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

impl Registry {
    /// An answer the gate cannot use. Asking for the client, the registry's 401 or 403 is
    /// the client's (with the registry's challenge, so it can log in there); otherwise the
    /// registry failed the gate.
    fn answered(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> GateError {
        if self.for_client && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return GateError::RegistryRefused {
                status,
                challenge: headers.get(header::WWW_AUTHENTICATE).cloned(),
            };
        }
        GateError::UpstreamFailed(format!("the registry answered {status} to {method} {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_read_from_link_and_kept_to_the_listing() {
        let next = |last: &str, n| {
            Some(Next {
                last: last.to_string(),
                n,
            })
        };
        let mut h = HeaderMap::new();
        assert_eq!(next_link(&h, "/v2/_catalog"), None);
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=team%2Fapp&n=50>; rel=\"next\""),
        );
        assert_eq!(next_link(&h, "/v2/_catalog"), next("team/app", Some(50)));
        let tags = "/v2/team/app/tags/list";
        assert_eq!(next_link(&h, tags), None, "a catalog link is no tags page");
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<http://127.0.0.1:5000/v2/team/app/tags/list?n=1000&last=v9>; rel=\"next\"",
            ),
        );
        assert_eq!(next_link(&h, tags), next("v9", Some(1000)));
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/other/tags/list?last=v9>; rel=\"next\""),
        );
        assert_eq!(next_link(&h, tags), None, "another repository's listing");
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/team/app/tags/list?n=5>; rel=\"next\""),
        );
        assert_eq!(next_link(&h, tags), None, "no cursor");
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=a&n=5;x>; rel=\"next\""),
        );
        assert_eq!(next_link(&h, "/v2/_catalog"), next("a", None));
    }

    #[test]
    fn page_names_keep_what_their_listing_allows() {
        let catalog = br#"{"repositories":["team/app","UPPER","a/../b"]}"#;
        assert_eq!(
            page_names(catalog, Listed::Catalog).expect("json"),
            ["team/app"]
        );
        let tags = br#"{"name":"team/app","tags":["v1","-bad",".x"]}"#;
        assert_eq!(
            page_names(tags, Listed::Tags("team/app")).expect("json"),
            ["v1"]
        );
        let emptied = br#"{"name":"team/app","tags":null}"#;
        assert!(page_names(emptied, Listed::Tags("team/app"))
            .expect("json")
            .is_empty());
        assert!(page_names(b"<html>", Listed::Catalog).is_err());
    }
}
