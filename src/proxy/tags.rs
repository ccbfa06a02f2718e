//! The tag listing (`GET /v2/<name>/tags/list?n=&last=`) as the OCI distribution spec has
//! it, answered by the gate: registry 2.8 ignores `n` and `last` on this endpoint and lists
//! tags in storage order, so a client that pages (`?n=100`) would get everything, unsorted,
//! and no `Link`.
//!
//! Owns: reading `n` and `last`, the order, the cut and the `Link` to the next page. Must not
//! touch: who may list (phase 4 has decided before this runs), and the answer for a
//! repository the registry does not know, which is the registry's own (forwarded).
//!
//! The full listing is read through the registry client (`Registry::tags`, bounded by its
//! page limit), never with the client's `n` or `last`: a registry that did honour them in
//! another order (case-insensitive, say) would skip tags this order puts after `last`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde::Serialize;

use crate::proxy::body::ResponseBody;
use crate::proxy::context::RequestContext;
use crate::proxy::error::GateError;
use crate::registry_path::{is_tag, percent_decode, Classified, Kind};

/// What the client asked of the listing: at most `n` tags (all when `None`), only those
/// after `last`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Asked {
    n: Option<usize>,
    last: Option<String>,
}

/// One page of the answer: its tags, and the cursor of the next page when more remain.
#[derive(Debug, PartialEq, Eq)]
struct Cut {
    tags: Vec<String>,
    next: Option<String>,
}

#[derive(Serialize)]
struct TagsPage<'a> {
    name: &'a str,
    tags: &'a [String],
}

/// The answer to a tags listing, or `None` for anything else and for a repository the
/// registry does not know (forwarded, so the registry's own 404 `NAME_UNKNOWN` reaches the
/// client; the listing was one round trip, the 404 is a second).
///
/// Every listing is answered here, with or without `n`: the spec wants tags in lexical order
/// in every listing, and without `n` it wants all of them. The order is byte order (Go's
/// `sort.Strings`, which the spec names and distribution 3 uses), and `last` is compared in
/// the same order. `n=0` is an empty list without `Link`, as the spec says. A malformed `n`
/// or a `last` that is no tag is a 400 (`UNSUPPORTED`) before the registry is asked.
pub(crate) async fn answer(
    ctx: &RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    host: &HeaderValue,
) -> Result<Option<Response<ResponseBody>>, GateError> {
    let (Kind::Tags, Some(repository)) = (class.kind, class.repository) else {
        return Ok(None);
    };
    let asked = asked(request.uri().query())?;
    // Taken before the listing is read: the answer is held whole until it is sent.
    let reservation = ctx.h2_send_reservation(request).await;
    let registry = ctx.registry(request, host);
    let Some(listing) = registry.tags(repository).await? else {
        return Ok(None);
    };
    if !listing.complete {
        tracing::warn!(
            repository,
            read = listing.names.len(),
            "the tags listing is longer than the gate reads; the tags past it are not listed"
        );
    }
    let cut = cut(listing.names, &asked, listing.complete);
    let body = serde_json::to_vec(&TagsPage {
        name: repository,
        tags: &cut.tags,
    })
    .map_err(|_| GateError::Internal("encoding a tags listing"))?;
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)).holding(reservation));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let (Some(last), Some(n)) = (&cut.next, asked.n) {
        // A tag and a number: nothing in either needs escaping in a path or a header.
        if let Ok(link) = HeaderValue::from_str(&link(repository, last, n)) {
            headers.insert(header::LINK, link);
        }
    }
    Ok(Some(response))
}

/// `n` and `last` from the raw query, read as the registry reads a query (keys and values
/// percent-decoded); an empty value is no value, as for Go's `FormValue`. Other keys are
/// ignored; `n` or `last` twice is refused rather than guessed at.
fn asked(query: Option<&str>) -> Result<Asked, GateError> {
    let mut asked = Asked::default();
    let (mut seen_n, mut seen_last) = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let is_n = match percent_decode(key).as_deref() {
            Some("n") => true,
            Some("last") => false,
            _ => continue,
        };
        let seen = if is_n { &mut seen_n } else { &mut seen_last };
        if std::mem::replace(seen, true) {
            return Err(GateError::BadRequest(
                "n and last may each be given once in a tags listing",
            ));
        }
        // A bad escape is as malformed as a bad number or tag.
        let value = percent_decode(value).unwrap_or_else(|| "%".into());
        if value.is_empty() {
            continue;
        }
        if is_n {
            asked.n = Some(page_size(&value)?);
        } else if is_tag(&value) {
            asked.last = Some(value);
        } else {
            return Err(GateError::BadRequest(
                "last must be a tag, [A-Za-z0-9_][A-Za-z0-9._-]{0,127}, as in ?n=100&last=v1.2",
            ));
        }
    }
    Ok(asked)
}

/// `n`: decimal digits only (no sign, no space). A number past what the gate can count asks
/// for everything, which is what it gets.
fn page_size(value: &str) -> Result<usize, GateError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GateError::BadRequest(
            "n must be a whole number of tags, as in ?n=100",
        ));
    }
    Ok(value.parse().unwrap_or(usize::MAX))
}

/// The page `asked` names of `names` (any order, duplicates allowed): sorted in byte order,
/// after `last`, at most `n`. More remain when tags were left after the cut, or when the
/// listing was cut before its end (`complete` false) and this page is not empty.
fn cut(mut names: Vec<String>, asked: &Asked, complete: bool) -> Cut {
    names.sort_unstable();
    names.dedup();
    if let Some(last) = &asked.last {
        names.retain(|name| name > last);
    }
    let n = asked.n.unwrap_or(usize::MAX);
    let more = names.len() > n || (!complete && n > 0 && !names.is_empty());
    names.truncate(n);
    let next = if more { names.last().cloned() } else { None };
    Cut { tags: names, next }
}

/// The spec's `Link` to the page after `last`.
fn link(repository: &str, last: &str, n: usize) -> String {
    format!("</v2/{repository}/tags/list?last={last}&n={n}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn asked_ok(query: &str) -> Asked {
        asked(Some(query)).unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    #[test]
    fn n_and_last_are_read_as_the_registry_reads_a_query() {
        assert_eq!(asked(None).ok(), Some(Asked::default()));
        assert_eq!(asked_ok("n=2").n, Some(2));
        assert_eq!(
            asked_ok("last=v1.0&n=10"),
            Asked {
                n: Some(10),
                last: Some("v1.0".into())
            }
        );
        assert_eq!(asked_ok("%6E=3&l%61st=a").n, Some(3), "keys are decoded");
        assert_eq!(asked_ok("n=&last="), Asked::default(), "empty is absent");
        assert_eq!(asked_ok("n=0").n, Some(0));
        assert_eq!(asked_ok("other=x&n=1").n, Some(1));
        assert_eq!(
            asked_ok("n=99999999999999999999999").n,
            Some(usize::MAX),
            "more than can be counted is everything"
        );
        for bad in [
            "n=-1",
            "n=1.5",
            "n=abc",
            "n=+1",
            "n=%201",
            "n=1&n=2",
            "last=-x",
            "last=a/b",
            "last=%zz",
            "last=a&last=b",
        ] {
            let e = asked(Some(bad)).expect_err(bad);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let long = format!("last={}", "a".repeat(129));
        assert!(
            asked(Some(&long)).is_err(),
            "a tag has 128 characters at most"
        );
    }

    #[test]
    fn a_page_is_sorted_after_last_and_at_most_n_long() {
        let stored = names(&["v3", "latest", "v10", "1.0", "v2", "V9", "v2"]);
        let page = |n, last: Option<&str>| {
            let asked = Asked {
                n,
                last: last.map(str::to_string),
            };
            cut(stored.clone(), &asked, true)
        };
        // Byte order: digits, then upper case, then lower case; duplicates once.
        assert_eq!(
            page(None, None),
            Cut {
                tags: names(&["1.0", "V9", "latest", "v10", "v2", "v3"]),
                next: None
            }
        );
        assert_eq!(
            page(Some(2), None),
            Cut {
                tags: names(&["1.0", "V9"]),
                next: Some("V9".into())
            }
        );
        assert_eq!(
            page(Some(2), Some("V9")),
            Cut {
                tags: names(&["latest", "v10"]),
                next: Some("v10".into())
            }
        );
        assert_eq!(
            page(Some(2), Some("v10")),
            Cut {
                tags: names(&["v2", "v3"]),
                next: None
            },
            "exactly the rest: no next page"
        );
        assert_eq!(
            page(Some(5), Some("v2")),
            Cut {
                tags: names(&["v3"]),
                next: None
            }
        );
        assert_eq!(
            page(None, Some("latest")),
            Cut {
                tags: names(&["v10", "v2", "v3"]),
                next: None
            },
            "last without n: the rest"
        );
        assert_eq!(
            page(Some(3), Some("zzz")),
            Cut {
                tags: vec![],
                next: None
            }
        );
        assert_eq!(
            page(Some(0), None),
            Cut {
                tags: vec![],
                next: None
            },
            "n=0: empty, no Link"
        );
        assert_eq!(page(Some(0), Some("latest")).tags, Vec::<String>::new());
    }

    #[test]
    fn following_the_cursor_visits_every_tag_once() {
        let stored = names(&["e", "b", "d", "a", "c"]);
        for n in 1..=6 {
            let mut seen = Vec::new();
            let mut asked = Asked {
                n: Some(n),
                last: None,
            };
            loop {
                let page = cut(stored.clone(), &asked, true);
                assert!(page.tags.len() <= n);
                seen.extend(page.tags);
                match page.next {
                    Some(next) => asked.last = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, names(&["a", "b", "c", "d", "e"]), "n={n}");
        }
    }

    #[test]
    fn a_listing_cut_short_says_more_may_remain() {
        let asked = Asked {
            n: Some(10),
            last: None,
        };
        let page = cut(names(&["b", "a"]), &asked, false);
        assert_eq!(page.next.as_deref(), Some("b"));
        assert_eq!(cut(vec![], &asked, false).next, None);
    }

    #[test]
    fn the_link_names_the_next_page_as_the_spec_spells_it() {
        assert_eq!(
            link("team/app", "v1.2", 50),
            "</v2/team/app/tags/list?last=v1.2&n=50>; rel=\"next\""
        );
    }
}
