//! The chunk check of a blob upload: a `PATCH` whose `Content-Range` does not start where
//! the upload stands is refused with 416 before its body is forwarded, as the OCI
//! distribution spec asks. Registry 2.8 ignores `Content-Range` and appends every chunk at
//! the upload's end, so a chunk sent twice or out of order would make a blob that fails its
//! digest at the final `PUT`, and the whole upload would have to start again.
//!
//! Owns: reading `Content-Range` and the registry's `Range`, and deciding whether the chunk
//! fits. Must not touch: the body (it stays unread until phase 6 forwards it, or until the
//! front settles it behind the 416) and the upload itself. The gate keeps no state per
//! upload: where an upload stands is asked of the registry (`Registry::upload_status`), one
//! extra round trip paid only by a `PATCH` that carries `Content-Range`. docker and
//! containerd stream a layer in one `PATCH` without it and never pay it.

use http::header::{self, HeaderValue};
use http::{Method, Request};

use crate::proxy::context::RequestContext;
use crate::proxy::error::{ChunkOutOfOrder, GateError, UPLOAD_UUID_HEADER};
use crate::proxy::headers;
use crate::registry_path::{Classified, Kind};

/// Refuses (`GateError::ChunkOutOfOrder`) a chunk of an upload (`PATCH` on
/// `target`, the upload's URL with its `_state`) that does not start where the registry's
/// status of the upload says it ends, or whose `Content-Range` cannot be read: 416 as for a
/// chunk out of order, since either way the client needs the upload's `Range` and
/// `Location` to go on, and a 400 would carry neither.
///
/// When the registry gives no status (an upload it does not know, a `_state` it refuses) or
/// one without a readable `Range`, the chunk goes on as sent and the registry's answer to it
/// says what is wrong.
pub(crate) async fn check_chunk(
    ctx: &RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    target: &str,
    host: &HeaderValue,
) -> Result<(), GateError> {
    if class.kind != Kind::BlobUpload
        || class.reference.is_none()
        || request.method() != Method::PATCH
    {
        return Ok(());
    }
    let Some(content_range) = request.headers().get(header::CONTENT_RANGE) else {
        return Ok(());
    };
    let snapshot = &ctx.snapshot;
    let registry = ctx.registry(request, host);
    let Some(mut status) = registry.upload_status(target).await? else {
        return Ok(());
    };
    let Some(range) = status.get(header::RANGE).cloned() else {
        return Ok(());
    };
    let Some(end) = upload_end(range.as_bytes()) else {
        tracing::debug!(range = ?range, "an upload status with a Range the gate cannot read; the chunk goes on unchecked");
        return Ok(());
    };
    if chunk_start(content_range.as_bytes()).is_some_and(|start| fits(start, end)) {
        return Ok(());
    }
    headers::rewrite_response(&mut status, snapshot.upstream.origin(), host);
    Err(GateError::ChunkOutOfOrder(Box::new(ChunkOutOfOrder {
        content_range: content_range.clone(),
        range,
        location: status.get(header::LOCATION).cloned(),
        upload_uuid: status.get(UPLOAD_UUID_HEADER).cloned(),
    })))
}

/// Where a chunk starts, from its `Content-Range`: the spec's `<start>-<end>`, or HTTP's
/// `bytes <start>-<end>/<length or *>`; `None` when it is neither, or ends before it starts.
fn chunk_start(value: &[u8]) -> Option<u64> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let range = match value.strip_prefix("bytes ") {
        Some(rest) => {
            let (range, length) = rest.trim_start().split_once('/')?;
            if length != "*" && number(length).is_none() {
                return None;
            }
            range
        }
        None => value,
    };
    let (start, end) = range.split_once('-')?;
    let (start, end) = (number(start)?, number(end)?);
    (start <= end).then_some(start)
}

/// The last byte the upload holds, from the registry's `Range: 0-<last>` (`bytes=` before it
/// tolerated).
fn upload_end(value: &[u8]) -> Option<u64> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let range = value.strip_prefix("bytes=").unwrap_or(value);
    number(range.strip_prefix("0-")?)
}

/// Whether a chunk starting at `start` continues an upload whose `Range` ends at `end`. The
/// registry says `0-0` both for an empty upload and for one byte (distribution writes
/// `size - 1`, but never below 0), so there a chunk at 0 or 1 goes on: the gate never refuses
/// a chunk that may be right.
fn fits(start: u64, end: u64) -> bool {
    end.checked_add(1) == Some(start) || (end == 0 && start == 0)
}

/// Decimal digits only, as a byte offset.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_range_is_read_in_the_spec_and_the_http_forms() {
        assert_eq!(chunk_start(b"0-1023"), Some(0));
        assert_eq!(chunk_start(b"1024-2047"), Some(1024));
        assert_eq!(chunk_start(b" 5-5 "), Some(5));
        assert_eq!(chunk_start(b"bytes 10-19/20"), Some(10));
        assert_eq!(chunk_start(b"bytes 10-19/*"), Some(10));
        for bad in [
            &b""[..],
            b"-",
            b"5-",
            b"-5",
            b"9-5",
            b"a-b",
            b"+1-2",
            b"1 - 2",
            b"0-18446744073709551616",
            b"bytes 10-19",
            b"bytes 10-19/x",
            b"bytes=10-19",
            b"items 0-1/2",
            b"\xff0-1",
        ] {
            assert_eq!(chunk_start(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_registry_range_gives_the_upload_end() {
        assert_eq!(upload_end(b"0-0"), Some(0));
        assert_eq!(upload_end(b"0-1023"), Some(1023));
        assert_eq!(upload_end(b"bytes=0-9"), Some(9));
        assert_eq!(upload_end(b"5-9"), None, "an upload always starts at 0");
        assert_eq!(upload_end(b"0-"), None);
        assert_eq!(upload_end(b""), None);
    }

    #[test]
    fn a_chunk_fits_where_the_upload_ends() {
        assert!(fits(1024, 1023));
        assert!(!fits(1023, 1023), "the last chunk sent again");
        assert!(!fits(2048, 1023), "a chunk skipped");
        assert!(!fits(0, 1023), "the upload started over");
        // `0-0`: empty, or one byte; both readings are allowed.
        assert!(fits(0, 0));
        assert!(fits(1, 0));
        assert!(!fits(2, 0));
        assert!(!fits(u64::MAX, u64::MAX));
    }
}
