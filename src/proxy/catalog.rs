//! Rewrites of registry answers and requests that depend on who asks: the `/v2/_catalog`
//! listing cut down to the repositories the caller may pull, and a cross-repository mount
//! turned into a plain upload when the caller may not read the source.
//!
//! The catalog is the one response to a client the gate reads whole (through
//! `proxy::registry`, capped), since a listing is a page of names, never a layer.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::Incoming;
use serde::Serialize;

use crate::proxy::body::ResponseBody;
use crate::proxy::error::GateError;
use crate::proxy::registry::{Registry, PAGE_SIZE};

#[derive(Serialize)]
struct CatalogPage {
    repositories: Vec<String>,
}

/// Upstream pages read at most to find one visible name, before the gate gives up on
/// pagination for this request rather than reveal a hidden name as a cursor.
const MAX_HIDDEN_PAGES: usize = 20;

/// Builds the caller's catalog page from the registry's answer to it (`headers`, `first`):
/// the names that `visible` accepts. The registry's `Link` cursor (`last=`) is the last name
/// of its unfiltered page, which may be a name the caller must not see, so the gate rewrites
/// it to the last visible name; a page with nothing visible makes the gate read on (up to
/// `MAX_HIDDEN_PAGES` pages) instead of answering with an empty page and a revealing cursor.
pub async fn filter(
    first: Incoming,
    headers: &mut HeaderMap,
    registry: &Registry,
    visible: impl Fn(&str) -> bool,
) -> Result<ResponseBody, GateError> {
    let page = registry.catalog_page_of(headers, first).await?;
    let mut next = page.next;
    let mut names: Vec<String> = page.names.into_iter().filter(|n| visible(n)).collect();
    let mut hops = 0;
    while names.is_empty() {
        let Some(cursor) = &next else { break };
        hops += 1;
        if hops > MAX_HIDDEN_PAGES {
            tracing::warn!("catalog: {MAX_HIDDEN_PAGES} pages without a visible repository; pagination ends here for this caller");
            next = None;
            break;
        }
        let more = registry
            .catalog_page(cursor.n.unwrap_or(PAGE_SIZE), Some(&cursor.last))
            .await?;
        next = more.next;
        names = more.names.into_iter().filter(|n| visible(n)).collect();
    }

    headers.remove(header::LINK);
    if let (Some(cursor), Some(last)) = (&next, names.last()) {
        // Names are ASCII from the distribution grammar, valid in a header and a query.
        let n = cursor.n.unwrap_or(PAGE_SIZE);
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
