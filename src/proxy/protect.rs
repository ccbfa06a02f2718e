//! Protected tags at the door: a manifest push that would move a tag `[[protect]]` guards,
//! or a delete that would remove one, is refused before it reaches the registry. Which tags
//! are protected, and from whom, is `crate::rules`'; this room finds out what a write would
//! do, by reading the pushed manifest (capped) and asking the registry, through the
//! upstream client, what the tag points to now.
//!
//! It fails closed: when the registry cannot say what a tag points to, the write is refused
//! with an upstream error, never forwarded unchecked.
//!
//! The registry offers no compare-and-swap, so the check and the write are two requests.
//! Through one gate they cannot interleave with another write: every manifest write to a
//! repository a protection covers (by anyone, exempt users too) holds that repository's
//! `WriteLocks` entry from the check to the registry's answer, and a manifest push is read
//! whole (it is at most 4 MiB) before the lock is taken, so a slow client never holds it.
//! Known limit: replicas of the gate each have their own locks, so two writes through two
//! replicas at the same moment can still both pass. A PUT by digest moves no tag
//! (distribution 2.8 has no `?tag=` on manifest pushes); a manifest write with any query is
//! refused where a protection applies, so that a registry which learns `?tag=` cannot move a
//! protected tag past the gate. Deleting a blob where a protection applies is refused too: it
//! would break a protected image without touching its tag, and so is deleting a manifest
//! that a protected index (a multi-platform tag) lists as one of its platforms.

use std::collections::HashSet;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request};
use sha2::{Digest, Sha256};

use super::body::ReadError;
use super::context::RequestContext;
use super::error::GateError;
use super::media_types::{IMAGE_TYPES, INDEX_TYPES};
use super::registry::manifest::Descriptor;
use super::registry::{Registry, MAX_BODY_BYTES};
use super::write_locks::WriteGuard;
use crate::registry_path::{Classified, Kind};
use crate::rules::protect::Refusal;
use crate::rules::Subject;

/// Levels of indexes within indexes followed below a protected tag (OCI allows nesting;
/// nothing deeper than two is seen in practice). Deeper, the delete is refused.
const MAX_INDEX_DEPTH: usize = 4;
/// Index reads below one protected tag, all levels together: a bound on a crafted tree.
/// More, and the delete is refused.
const MAX_INDEX_READS: usize = 64;
/// How long a manifest write waits for the write before it in the same repository, and how
/// long its own check may take under the lock: refused with 504 rather than queued without
/// end behind a registry that stalls.
const LOCKED_CHECK_LIMIT: Duration = Duration::from_secs(60);

/// Phase 5, guard tags: refuses a manifest write that would move or delete a protected tag; anything else passes,
/// and a manifest write where tags are protected passes holding the repository's write lock,
/// to be kept until the registry has answered.
pub(super) async fn guard_tags(
    ctx: &mut RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    who: &Subject<'_>,
    host: &HeaderValue,
) -> Result<Option<WriteGuard>, GateError> {
    let method = request.method();
    let covered = tag_moving_repository(class, method)
        .filter(|repository| ctx.snapshot.config.protect.covers(repository));
    let Some(repository) = covered else {
        return decide(ctx, request, class, who, host).await.map(|()| None);
    };
    if method == Method::PUT {
        read_manifest(ctx).await?;
    }
    let guard = lock_within_limit(ctx, repository).await?;
    within_check_limit(decide(ctx, request, class, who, host)).await?;
    still_held(guard, repository).map(Some)
}

/// The repository of a request that may move or delete a tag: a manifest delete, or a
/// manifest put by tag (a put by digest names no tag).
fn tag_moving_repository<'a>(class: &Classified<'a>, method: &Method) -> Option<&'a str> {
    let (repository, reference) = (class.repository?, class.reference?);
    let moves = class.kind == Kind::Manifest
        && (method == Method::DELETE || (method == Method::PUT && !reference.contains(':')));
    moves.then_some(repository)
}

/// The check made under the write lock, or a 504 after `LOCKED_CHECK_LIMIT`: a registry
/// stalling mid-answer must not hold every other writer of the repository.
async fn within_check_limit<T>(
    check: impl std::future::Future<Output = Result<T, GateError>>,
) -> Result<T, GateError> {
    tokio::time::timeout(LOCKED_CHECK_LIMIT, check)
        .await
        .map_err(|_| GateError::UpstreamTimeout)?
}

/// The repository's write lock, or a 504 after `LOCKED_CHECK_LIMIT`; in a fleet, a 503 when
/// the shared Redis cannot give the fleet's lock.
async fn lock_within_limit(
    ctx: &RequestContext,
    repository: &str,
) -> Result<WriteGuard, GateError> {
    let locks = &ctx.write_locks;
    match tokio::time::timeout(
        LOCKED_CHECK_LIMIT,
        locks.lock(repository, LOCKED_CHECK_LIMIT),
    )
    .await
    {
        Ok(Ok(guard)) => Ok(guard),
        Ok(Err(e)) => {
            crate::metrics::get().cluster_fallback("protect");
            tracing::warn!(repository, error = %e, "a manifest write to a repository with protected tags refused: no fleet write lock");
            Err(GateError::LockUnavailable(e.to_string()))
        }
        Err(_) => {
            tracing::warn!(
                repository,
                waited = ?LOCKED_CHECK_LIMIT,
                "a manifest write waited too long behind another write's [[protect]] check; refused"
            );
            Err(GateError::UpstreamTimeout)
        }
    }
}

/// The lock still held once the check is done: a fleet lock that lapsed meanwhile (Redis
/// unreachable for longer than `[cluster] lock_ttl`) may be someone else's now.
fn still_held(guard: WriteGuard, repository: &str) -> Result<WriteGuard, GateError> {
    if guard.held() {
        Ok(guard)
    } else {
        crate::metrics::get().cluster_fallback("protect");
        Err(GateError::LockUnavailable(format!(
            "the fleet's write lock of {repository} lapsed during the [[protect]] check"
        )))
    }
}

/// The manifest being pushed, whole; kept for forwarding.
pub(super) async fn read_manifest(ctx: &mut RequestContext) -> Result<bytes::Bytes, GateError> {
    let idle = ctx.snapshot.upstream.read_timeout();
    match ctx
        .body
        .read_whole(MAX_BODY_BYTES, idle, ctx.client_ip)
        .await
    {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::TooLarge) => Err(GateError::ManifestTooLarge(MAX_BODY_BYTES)),
        Err(ReadError::Failed) => Err(GateError::ClientAborted),
        Err(ReadError::Stalled) => Err(GateError::BadRequest("the manifest stopped arriving")),
        Err(ReadError::OverShare) => {
            tracing::warn!(
                client = %ctx.client_ip,
                "a manifest push refused with 503: this address's manifests being read at once fill its 16 MiB share"
            );
            Err(GateError::Busy(
                "this address has too many manifest pushes being read at once",
            ))
        }
        Err(ReadError::Busy) => {
            tracing::warn!(
                waited = ?idle,
                "a manifest push refused with 503: manifests being read at once fill the gate's 64 MiB budget"
            );
            Err(GateError::Busy(
                "too many manifest pushes are being read at once",
            ))
        }
    }
}

/// The refusal, if the write may not happen.
async fn decide(
    ctx: &mut RequestContext,
    request: &Request<()>,
    class: &Classified<'_>,
    who: &Subject<'_>,
    host: &HeaderValue,
) -> Result<(), GateError> {
    let snapshot = ctx.snapshot.clone();
    let protections = &snapshot.config.protect;
    let method = request.method();
    let Some(repository) = class.repository else {
        return Ok(());
    };
    let Some(binding) = protections.binding(who, repository) else {
        return Ok(());
    };
    let refuse = |refusal: Refusal| GateError::Protected {
        repository: repository.to_string(),
        tag: class.reference.unwrap_or("-").to_string(),
        protection: binding,
        refusal,
    };
    if class.kind == Kind::Blob && method == Method::DELETE {
        return Err(refuse(Refusal::DeleteBlob));
    }
    if class.kind != Kind::Manifest {
        return Ok(());
    }
    let Some(reference) = class.reference else {
        return Ok(());
    };
    if (method == Method::PUT || method == Method::DELETE) && request.uri().query().is_some() {
        return Err(refuse(Refusal::Query));
    }
    let registry = ctx.registry(request, host);
    // The tag grammar has no `:`; every digest has one.
    let by_digest = reference.contains(':');
    let refusal = if method == Method::PUT && !by_digest {
        let Some(protection) = protections.guarding(who, repository, reference) else {
            return Ok(());
        };
        // A tag that does not exist yet may be pushed.
        let Some(current) = digest(&registry, repository, reference).await? else {
            return Ok(());
        };
        let pushed = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(&read_manifest(ctx).await?))
        );
        // The same manifest again (a CI retry) leaves the tag where it is.
        if current.eq_ignore_ascii_case(&pushed) {
            return Ok(());
        }
        (reference.to_string(), protection, Refusal::Move)
    } else if method == Method::DELETE && !by_digest {
        let Some(protection) = protections.guarding(who, repository, reference) else {
            return Ok(());
        };
        (reference.to_string(), protection, Refusal::Delete)
    } else if method == Method::DELETE {
        match protected_tag_of(&registry, protections, who, repository, reference).await? {
            Some(found) => found,
            None => return Ok(()),
        }
    } else {
        return Ok(());
    };
    let (tag, protection, refusal) = refusal;
    Err(GateError::Protected {
        repository: repository.to_string(),
        tag,
        protection,
        refusal,
    })
}

/// The protected tag (and the protection) that points at `digest`, directly or as one
/// platform of an index, and which of the two: one listing, a HEAD per covered tag and a GET
/// per distinct covered index. Deletes are rare, and a protected tag is found only by asking
/// each one what it points to.
async fn protected_tag_of(
    registry: &Registry,
    protections: &crate::rules::Protections,
    who: &Subject<'_>,
    repository: &str,
    digest: &str,
) -> Result<Option<(String, usize, Refusal)>, GateError> {
    if !protections.binds(who, repository) {
        return Ok(None);
    }
    // Release tags often share one index (v1, v1.2, v1.2.3): each is read once.
    let mut searched = HashSet::new();
    for tag in every_tag(registry, repository).await? {
        let Some(protection) = protections.guarding(who, repository, &tag) else {
            continue;
        };
        let Some(head) = registry.head(repository, &tag).await? else {
            continue;
        };
        let current = head_digest(head.digest, repository, &tag)?;
        if current.eq_ignore_ascii_case(digest) {
            return Ok(Some((tag, protection, Refusal::DeleteTagged)));
        }
        // Anything but a single image (no type at all included) is read as a possible
        // index: the check fails closed. The children are read by digest: they are the
        // index the HEAD saw, even if the tag moves in between.
        let maybe_index = !IMAGE_TYPES.iter().any(|t| head.media_type.starts_with(t));
        if maybe_index
            && searched.insert(current.clone())
            && lists(registry, repository, &current, digest).await?
        {
            return Ok(Some((tag, protection, Refusal::DeleteChild)));
        }
    }
    Ok(None)
}

/// The registry browser's delete of a manifest by digest, checked as a `DELETE` through the
/// API is: refused while a tag protected against `who` points at it, and holding the
/// repository's write lock where tags are protected. Fails closed.
pub(crate) async fn check_manifest_delete(
    ctx: &RequestContext,
    who: &Subject<'_>,
    repository: &str,
    digest: &str,
    host: &HeaderValue,
) -> Result<Option<WriteGuard>, GateError> {
    let snapshot = &ctx.snapshot;
    if !snapshot.config.protect.covers(repository) {
        return Ok(None);
    }
    let guard = lock_within_limit(ctx, repository).await?;
    let registry = Registry::new(snapshot.upstream.clone(), host.clone());
    let found = within_check_limit(protected_tag_of(
        &registry,
        &snapshot.config.protect,
        who,
        repository,
        digest,
    ))
    .await?;
    match found {
        None => still_held(guard, repository).map(Some),
        Some((tag, protection, refusal)) => Err(GateError::Protected {
            repository: repository.to_string(),
            tag,
            protection,
            refusal,
        }),
    }
}

/// The digest `tag` points to now, or `None` when there is no such tag (or repository).
async fn digest(
    registry: &Registry,
    repository: &str,
    tag: &str,
) -> Result<Option<String>, GateError> {
    match registry.head(repository, tag).await? {
        Some(head) => head_digest(head.digest, repository, tag).map(Some),
        None => Ok(None),
    }
}

/// A HEAD that named no digest cannot be compared with anything: the check fails closed.
fn head_digest(digest: Option<String>, repository: &str, tag: &str) -> Result<String, GateError> {
    digest.ok_or_else(|| {
        GateError::UpstreamFailed(format!(
            "[[protect]]: HEAD of {repository}:{tag} named no Docker-Content-Digest"
        ))
    })
}

/// Every tag of `repository` (none when it does not exist). Fails closed: a listing cut at
/// its page limit may hide the tag that protects a digest.
async fn every_tag(registry: &Registry, repository: &str) -> Result<Vec<String>, GateError> {
    match registry.tags(repository).await? {
        None => Ok(Vec::new()),
        Some(listing) if listing.complete => Ok(listing.names),
        Some(listing) => Err(GateError::UpstreamFailed(format!(
            "[[protect]]: {repository} has more than {} tags to look through",
            listing.names.len()
        ))),
    }
}

/// Whether the index `top` lists `wanted`, at any depth up to `MAX_INDEX_DEPTH`. Fails
/// closed: a tree deeper or larger than the bounds may list it too, and an index the gate
/// cannot read might list the manifest being deleted.
async fn lists(
    registry: &Registry,
    repository: &str,
    top: &str,
    wanted: &str,
) -> Result<bool, GateError> {
    let mut level = vec![top.to_string()];
    let mut reads = 0;
    for _ in 0..MAX_INDEX_DEPTH {
        let mut below = Vec::new();
        for index in level {
            reads += 1;
            if reads > MAX_INDEX_READS {
                return Err(GateError::UpstreamFailed(format!(
                    "[[protect]]: {repository}@{top} lists more than {MAX_INDEX_READS} indexes"
                )));
            }
            let Some(manifest) = registry.manifest(repository, &index).await? else {
                return Err(GateError::UpstreamFailed(format!(
                    "[[protect]]: {repository}@{index} is listed but cannot be read"
                )));
            };
            for child in manifest.listed {
                if child.digest.eq_ignore_ascii_case(wanted) {
                    return Ok(true);
                }
                if may_nest(&child) {
                    below.push(child.digest);
                }
            }
        }
        if below.is_empty() {
            return Ok(false);
        }
        level = below;
    }
    Err(GateError::UpstreamFailed(format!(
        "[[protect]]: {repository}@{top} nests indexes deeper than {MAX_INDEX_DEPTH} levels"
    )))
}

/// Whether a listed manifest may list manifests in turn: an index type, or no type said.
fn may_nest(child: &Descriptor) -> bool {
    child.media_type.is_empty() || INDEX_TYPES.iter().any(|i| child.media_type.starts_with(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_child_of_a_known_single_image_type_is_not_looked_into() {
        let child = |media_type: &str| Descriptor {
            media_type: media_type.to_string(),
            digest: "sha256:00".into(),
            size: 0,
            platform: None,
        };
        assert!(may_nest(&child("application/vnd.oci.image.index.v1+json")));
        assert!(may_nest(&child("")));
        assert!(!may_nest(&child(
            "application/vnd.oci.image.manifest.v1+json"
        )));
    }
}
