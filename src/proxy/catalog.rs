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

use crate::proxy::body::ResponseBody;
use crate::proxy::error::GateError;
use crate::proxy::upstream::Upstream;

/// A catalog page larger than this is refused rather than held in memory. distribution
/// caps a page at 1000 names by default; 8 MiB is far beyond any real page.
const MAX_CATALOG_BYTES: usize = 8 * 1024 * 1024;

#[derive(Deserialize, Serialize)]
struct CatalogPage {
    repositories: Vec<String>,
}

/// Upstream pages read at most to find one visible name, before the gate gives up on
/// pagination for this request rather than reveal a hidden name as a cursor.
const MAX_HIDDEN_PAGES: usize = 20;

/// Builds the caller's catalog page: the registry's names that `visible` accepts. The
/// registry's `Link` cursor (`last=`) is the last name of its unfiltered page, which may be a
/// name the caller must not see, so the gate rewrites it to the last visible name; a page
/// with nothing visible makes the gate read on (up to `MAX_HIDDEN_PAGES` pages) instead of
/// answering with an empty page and a revealing cursor.
pub async fn filter(
    first: Incoming,
    headers: &mut HeaderMap,
    upstream: &Upstream,
    host: &HeaderValue,
    visible: impl Fn(&str) -> bool,
) -> Result<ResponseBody, GateError> {
    let mut page = read_page(first).await?;
    let mut next = next_page(headers);
    let mut names: Vec<String> = page.repositories.drain(..).filter(|n| visible(n)).collect();
    let mut hops = 0;
    while names.is_empty() {
        let Some((last, n)) = &next else { break };
        hops += 1;
        if hops > MAX_HIDDEN_PAGES {
            tracing::warn!("catalog: {MAX_HIDDEN_PAGES} pages without a visible repository; pagination ends here for this caller");
            next = None;
            break;
        }
        let path = format!("/v2/_catalog?n={n}&last={last}");
        let response = upstream.get(&path, host).await?;
        if !response.status().is_success() {
            return Err(GateError::UpstreamFailed(format!(
                "catalog page answered {}",
                response.status()
            )));
        }
        next = next_page(response.headers());
        let mut more = read_page(response.into_body()).await?;
        names = more.repositories.drain(..).filter(|n| visible(n)).collect();
    }

    headers.remove(header::LINK);
    if let (Some((_, n)), Some(last)) = (&next, names.last()) {
        // Names are ASCII from the distribution grammar, valid in a header and a query.
        if let Ok(link) =
            HeaderValue::from_str(&format!("</v2/_catalog?last={last}&n={n}>; rel=\"next\""))
        {
            headers.insert(header::LINK, link);
        }
    }
    let out = serde_json::to_vec(&CatalogPage {
        repositories: names,
    })
    .map_err(|e| GateError::UpstreamFailed(format!("re-encoding the catalog: {e}")))?;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(ResponseBody::full(Bytes::from(out)))
}

async fn read_page(body: Incoming) -> Result<CatalogPage, GateError> {
    let bytes = Limited::new(body, MAX_CATALOG_BYTES)
        .collect()
        .await
        .map_err(|e| GateError::UpstreamFailed(format!("reading the catalog: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| GateError::UpstreamFailed(format!("the registry's catalog is not JSON: {e}")))
}

/// `(last, n)` of the registry's `Link: </v2/_catalog?last=…&n=…>; rel="next"`, if any.
fn next_page(headers: &HeaderMap) -> Option<(String, String)> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    let mut last = None;
    let mut n = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("last", v)) => last = crate::registry_path::percent_decode(v),
            Some(("n", v)) if v.bytes().all(|b| b.is_ascii_digit()) => n = Some(v.to_string()),
            _ => {}
        }
    }
    let last = last.filter(|l| crate::registry_path::is_valid_repository_name(l))?;
    Some((last, n.unwrap_or_else(|| "100".into())))
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
    fn the_next_page_cursor_is_read_from_link() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=team%2Fapp&n=50>; rel=\"next\""),
        );
        assert_eq!(next_page(&h), Some(("team/app".into(), "50".into())));
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=a&n=5;x>; rel=\"next\""),
        );
        assert_eq!(next_page(&h), Some(("a".into(), "100".into())));
        h.insert(
            header::LINK,
            HeaderValue::from_static("</v2/_catalog?last=UPPER>; rel=\"next\""),
        );
        assert_eq!(next_page(&h), None);
        assert_eq!(next_page(&HeaderMap::new()), None);
    }

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
