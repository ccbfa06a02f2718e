//! Rewrites of registry answers and requests that depend on who asks: the `/v2/_catalog`
//! listing cut down to the repositories the caller may pull, and a cross-repository mount
//! turned into a plain upload when the caller may not read the source.
//!
//! The catalog is the one response the gate reads whole; its size is capped, since a
//! listing is a page of names, never a layer.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::body::ResponseBody;
use crate::error::GateError;

/// A catalog page larger than this is refused rather than held in memory. distribution
/// caps a page at 1000 names by default; 8 MiB is far beyond any real page.
const MAX_CATALOG_BYTES: usize = 8 * 1024 * 1024;

#[derive(Deserialize, Serialize)]
struct CatalogPage {
    repositories: Vec<String>,
}

/// Reads the registry's catalog page and keeps the names `visible` accepts. Pagination keeps
/// working: the `Link` header the registry sent (with its `last=` cursor) passes unchanged,
/// so a filtered page may be shorter than `n` but the next page is still found.
pub async fn filter(
    body: Incoming,
    headers: &mut HeaderMap,
    visible: impl Fn(&str) -> bool,
) -> Result<ResponseBody, GateError> {
    let bytes = Limited::new(body, MAX_CATALOG_BYTES)
        .collect()
        .await
        .map_err(|e| GateError::UpstreamFailed(format!("reading the catalog: {e}")))?
        .to_bytes();
    let mut page: CatalogPage = serde_json::from_slice(&bytes).map_err(|e| {
        GateError::UpstreamFailed(format!("the registry's catalog is not JSON: {e}"))
    })?;
    page.repositories.retain(|name| visible(name));
    let out = serde_json::to_vec(&page)
        .map_err(|e| GateError::UpstreamFailed(format!("re-encoding the catalog: {e}")))?;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(ResponseBody::full(Bytes::from(out)))
}

/// The upload-start URL with `mount` and `from` removed from its query. Keys are compared
/// decoded, as the registry reads them: `%66rom=` is `from` (and a key that does not decode is
/// dropped too; the classifier refuses those before this runs).
pub fn without_mount(path: &str, query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded = crate::registry_path::percent_decode(key);
            !pair.is_empty() && decoded.is_some_and(|k| k != "mount" && k != "from")
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_parameters_are_dropped_and_others_kept() {
        assert_eq!(
            without_mount("/v2/a/blobs/uploads/", Some("mount=sha256:ab&from=b/c")),
            "/v2/a/blobs/uploads/"
        );
        assert_eq!(
            without_mount(
                "/v2/a/blobs/uploads/",
                Some("from=b&digest=sha256:1&mount=x")
            ),
            "/v2/a/blobs/uploads/?digest=sha256:1"
        );
        assert_eq!(
            without_mount("/v2/a/blobs/uploads/", None),
            "/v2/a/blobs/uploads/"
        );
    }
}
