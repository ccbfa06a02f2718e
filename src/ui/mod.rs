//! The registry browser (`[ui]`, at `/ui/` by default): repositories, tags, manifests,
//! deletes and the recent pushes and deletes the gate saw (`activity`, from
//! `Kit::activity`), served by the gate itself on the registry's own origin, so there is no second
//! container, no CORS and no token dance.
//!
//! It is one of the gate's own endpoints: the front (`front::route`) hands every request
//! under the path here before classification, so no browser path ever reaches the registry. What the browser
//! reads from the registry it asks for itself, through the same pooled client, with paths
//! built from validated names only.
//!
//! Who may see what is never decided here: a login goes through `caller::check_password`
//! (the same users, access tokens and throttle as `docker login`), a session is turned back
//! into a caller by `caller::from_session`, and every repository is shown, opened or deleted
//! only as `Caller::may` allows, exactly as the API would. A repository the caller may not
//! pull gets the same 404 as one that does not exist.
//!
//! What the browser refuses, or what fails under it, is a `GateError` like the API's,
//! reported by `GateError::report` and rendered by `render`, the browser's one rendering of
//! an error: a page, or the registry's JSON envelope for a script that asks for JSON.
//!
//! The rooms: `session` (the signed cookie and CSRF tokens), `dates` (images' creation
//! dates, remembered; the registry is read through `proxy::registry`), `pages` (server-rendered HTML), `html` (escaping by construction), and the
//! embedded `assets/` (one stylesheet, one small script; pages work without it).

mod dates;
mod html;
mod pages;
mod session;
mod shared_sessions;

use dates::CreationDates;
use session::EndedSessions;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::token::unix_now;
use crate::auth::{Identity, LoginFailure};
use crate::cluster::Cluster;
use crate::config::UiConfig;
use crate::events::EventAction;
use crate::proxy::access_log::Verdict;
use crate::proxy::body::ResponseBody;
use crate::proxy::caller::{self, Caller};
use crate::proxy::context::RequestContext;
use crate::proxy::error::GateError;
use crate::proxy::form::{query_values, read_small_form, FormError};
use crate::proxy::registry::manifest::{Descriptor, Manifest, ManifestKind};
use crate::proxy::registry::{Deleted, Registry};
use crate::registry_path::{is_digest, is_tag, is_tag_fragment, is_valid_repository_name, Action};
use crate::state::Snapshot;
use html::Html;
use pages::{ActivityRow, ChildRow, Chrome, ManifestView, RepositoryView, TagRow};
use session::{Session, SessionKey, CSRF_FIELD};

/// No script, style, frame or form target from anywhere but the gate, no inline script or
/// style at all, and no page of the gate inside another site's frame (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// The stylesheet and script, in the binary: no build step and nothing fetched at run time.
const STYLESHEET: &str = include_str!("assets/ui.css");
const SCRIPT: &str = include_str!("assets/ui.js");
/// The assets change only with the binary; a few minutes of caching spares reloads.
const ASSET_CACHE: &str = "public, max-age=300";

/// A login or delete form is a few short fields.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Tags on one page of a repository, each with its manifest and config read (two registry
/// reads, the config's only once: `CreationDates`): a page stays well under 100 ms.
const TAGS_PER_PAGE: usize = 25;
/// Platforms of an index whose manifests are read for the manifest page.
const MAX_DETAILED_CHILDREN: usize = 32;
/// Registry reads one page makes at once: fast pages without flooding the registry.
const READS_AT_ONCE: usize = 8;

/// Whether `path` is the browser's: under `[ui] path`, or that path without its slash.
pub(crate) fn serves(config: &UiConfig, path: &str) -> bool {
    config.enabled
        && (path.starts_with(&config.path) || path == &config.path[..config.path.len() - 1])
}

/// What a path under the browser's names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Index,
    Activity,
    LoginForm,
    Login,
    Logout,
    Asset(&'static str, &'static str),
    Repository(&'a str),
    Tag(&'a str, &'a str),
    Digest(&'a str, &'a str),
    DeleteForm(&'a str, &'a str),
    Delete(&'a str, &'a str),
    NotFound,
}

impl<'a> Route<'a> {
    /// `rest` is the path after `[ui] path`, raw: a name that would need decoding is no
    /// repository name, so nothing is decoded.
    fn parse(method: &Method, rest: &'a str) -> Route<'a> {
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        match rest {
            "" if get => return Route::Index,
            "activity" if get => return Route::Activity,
            "login" if get => return Route::LoginForm,
            "login" if post => return Route::Login,
            "logout" if post => return Route::Logout,
            "static/ui.css" if get => return Route::Asset("text/css; charset=utf-8", STYLESHEET),
            "static/ui.js" if get => return Route::Asset("text/javascript; charset=utf-8", SCRIPT),
            _ => {}
        }
        let Some(repo) = rest.strip_prefix("repo/") else {
            return Route::NotFound;
        };
        // `-` cannot be a component of a repository name, so `/-/` ends the name.
        let (name, sub) = match repo.split_once("/-/") {
            Some((name, sub)) => (name, Some(sub)),
            None => (repo, None),
        };
        if !is_valid_repository_name(name) {
            return Route::NotFound;
        }
        let Some(sub) = sub else {
            return if get {
                Route::Repository(name)
            } else {
                Route::NotFound
            };
        };
        match sub.split_once('/') {
            Some(("tag", tag)) if get && is_tag(tag) => Route::Tag(name, tag),
            Some(("manifest", digest)) if get && is_digest(digest) => Route::Digest(name, digest),
            Some(("delete", tag)) if get && is_tag(tag) => Route::DeleteForm(name, tag),
            Some(("delete", tag)) if post && is_tag(tag) => Route::Delete(name, tag),
            _ => Route::NotFound,
        }
    }
}

/// One browser request: who asks (session, client certificate or nobody), then the page.
/// What the browser keeps across requests and reloads, beside the snapshot.
pub struct Kept {
    /// Signs session cookies when no token key is loaded (basic mode): random per process, so
    /// sessions end when the gate restarts, and kept across reloads so they do not end on one.
    secret: [u8; 32],
    /// Registry reads made for browser pages, all pages together (`BROWSER_READS`).
    reads: Arc<Semaphore>,
    /// Images' creation dates read; a config never changes under its digest.
    dates: Arc<CreationDates>,
    /// Sessions a logout ended (a reload keeps sessions, so it keeps these too).
    ended: EndedSessions,
    /// With `[cluster]`: where the fleet's session key and ended sessions are kept.
    fleet: Option<Arc<Cluster>>,
    /// The fleet's session key, once read from Redis; until then this gate's own.
    fleet_secret: std::sync::OnceLock<[u8; 32]>,
}

/// Registry reads the registry browser makes at once, over all its pages: a page reads up to
/// two hundred manifests and configs, and pages can be asked for by anyone who may browse,
/// so the registry's load from the browser is bounded here, not by the number of visitors.
const BROWSER_READS: usize = 16;

impl Kept {
    /// With `cluster`, sessions are the fleet's: call `share_key` once the runtime runs.
    pub fn new(cluster: Option<Arc<Cluster>>) -> Result<Kept, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)?;
        Ok(Kept {
            secret,
            reads: Arc::new(Semaphore::new(BROWSER_READS)),
            dates: Arc::default(),
            ended: EndedSessions::default(),
            fleet: cluster,
            fleet_secret: std::sync::OnceLock::new(),
        })
    }

    /// With `[cluster]`: reads (or makes) the fleet's session key, retrying every second
    /// until Redis answers, so sessions made on one gate open on every other.
    pub fn share_key(self: &Arc<Self>) {
        let Some(cluster) = self.fleet.clone() else {
            return;
        };
        let kept = self.clone();
        tokio::spawn(async move {
            loop {
                match shared_sessions::signing_key(&cluster).await {
                    Ok(Some(key)) => {
                        let _ = kept.fleet_secret.set(key);
                        return;
                    }
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Whether a logout ended `session`, here or (with `[cluster]`) on any gate.
    async fn is_ended(&self, session: &Session) -> bool {
        if self.ended.is_ended(session) {
            return true;
        }
        let Some(cluster) = &self.fleet else {
            return false;
        };
        match shared_sessions::is_ended(cluster, session).await {
            Ok(ended) => ended,
            Err(e) => {
                crate::metrics::get().cluster_fallback("sessions");
                tracing::debug!(error = %e, "browser session checked against this gate's logouts only");
                false
            }
        }
    }

    /// Ends `session` here and, with `[cluster]`, on every gate.
    async fn end(&self, session: &Session) {
        self.ended.end(session, unix_now());
        if let Some(cluster) = &self.fleet {
            if let Err(e) = shared_sessions::end(cluster, session).await {
                crate::metrics::get().cluster_fallback("sessions");
                tracing::warn!(error = %e, user = %session.user, "browser logout ended the session on this gate only");
            }
        }
    }

    /// The secret session cookies are signed with: derived from the token key when one is
    /// loaded (replicas sharing it share sessions, and sessions survive a restart), else this
    /// process's random one.
    fn secret(&self, snapshot: &Snapshot) -> [u8; 32] {
        match (&snapshot.tokens, self.fleet_secret.get()) {
            (Some(key), _) => key.derive("ui-session"),
            (None, Some(fleet)) => *fleet,
            (None, None) => self.secret,
        }
    }
}

/// The browser's answer to one request under its path. What is refused or fails is a
/// `GateError`, reported (`GateError::report`) and rendered for the browser (`render`) here,
/// so the front gets an answer, never an error.
pub(crate) async fn answer(
    ctx: &mut RequestContext,
    kept: Arc<Kept>,
    request: Request<()>,
    host: HeaderValue,
) -> Response<ResponseBody> {
    let snapshot = ctx.snapshot.clone();
    let base = snapshot.config.ui.path.clone();
    let path = request.uri().path().to_string();
    ctx.record.action = Some("ui");
    let Some(rest) = path.strip_prefix(base.as_str()) else {
        // `/ui` without its slash: relative links need the directory form.
        return redirect(&base, None);
    };
    let route = Route::parse(request.method(), rest);
    if let Route::Asset(content_type, text) = route {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
        secure(&mut response, ASSET_CACHE);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        return response;
    }

    let json = wants_json(request.headers());
    let key = SessionKey::new(&kept.secret(&snapshot));
    let (caller, session) = match who(ctx, &kept, &request, &key).await {
        Ok(found) => found,
        Err(e) => {
            e.report(&ctx.record.request_id);
            let nobody = Chrome {
                base: &base,
                user: None,
                csrf: None,
                can_log_in: snapshot.auth.is_some(),
            };
            return render(&e, json, &nobody);
        }
    };
    ctx.record.user = caller.identity.name().to_string();
    ctx.record.token = caller.token_name().map(str::to_string);
    let csrf = session.as_ref().map(|s| key.csrf_token(s));
    let shown_user = match (&session, &caller.identity) {
        (Some(s), _) => Some(s.user.clone()),
        (None, Identity::User(user)) => Some(user.clone()),
        (None, Identity::Anonymous) => None,
    };
    let chrome = Chrome {
        base: &base,
        user: shown_user.as_deref(),
        csrf: csrf.as_deref(),
        can_log_in: snapshot.auth.is_some(),
    };
    let browser = Browser {
        registry: Registry::new(snapshot.upstream.clone(), host.clone()),
        dates: kept.dates.clone(),
        host: host.to_str().unwrap_or("").to_string(),
        caller,
        session,
        key,
        all_reads: kept.reads.clone(),
        kept: kept.clone(),
    };
    let result = match route {
        Route::Index => browser.index(ctx, &chrome, &request).await,
        Route::Activity => Ok(browser.activity(ctx, &chrome).await),
        Route::LoginForm => Ok(page(
            StatusCode::OK,
            &chrome,
            "Log in",
            pages::login(&chrome, None),
        )),
        Route::Login => browser.login(ctx, &chrome, &request, &host).await,
        Route::Logout => browser.logout(ctx, &chrome, &request, &host).await,
        Route::Repository(name) => browser.repository(ctx, &chrome, &request, name).await,
        Route::Tag(name, tag) => browser.manifest(ctx, &chrome, name, tag, true).await,
        Route::Digest(name, digest) => browser.manifest(ctx, &chrome, name, digest, false).await,
        Route::DeleteForm(name, tag) => browser.confirm_delete(ctx, &chrome, name, tag).await,
        Route::Delete(name, tag) => {
            browser
                .delete(ctx, &chrome, &request, &host, name, tag)
                .await
        }
        Route::NotFound | Route::Asset(..) => Err(GateError::NotFound),
    };
    result.unwrap_or_else(|e| {
        e.report(&ctx.record.request_id);
        render(&e, json, &chrome)
    })
}

/// The caller of a browser request and their session: a valid session cookie, not logged
/// out, whose user may still log in; else a client certificate's user, else anonymous.
async fn who(
    ctx: &RequestContext,
    kept: &Kept,
    request: &Request<()>,
    key: &SessionKey,
) -> Result<(Caller, Option<Session>), GateError> {
    let opened = session::cookie_value(request.headers()).and_then(|v| key.open(v, unix_now()));
    let session = match opened {
        Some(session) if !kept.is_ended(&session).await => Some(session),
        _ => None,
    };
    if let Some(session) = session {
        if let Some(caller) = caller::from_session(
            ctx,
            &session.user,
            session.token.as_deref(),
            session.stamp.as_deref(),
        ) {
            return Ok((caller, Some(session)));
        }
    }
    // Without an Authorization header this cannot fail: it is the certificate or nobody.
    let caller = caller::credentials(ctx, None)
        .await
        .map_err(|_| GateError::Internal("no caller without credentials"))?;
    Ok((caller, None))
}

/// The one rendering of a `GateError` for the browser: the status of `GateError::status`,
/// and a page a person reads, or, for a request that asks for JSON and not HTML (a script),
/// the registry's JSON envelope of `GateError::to_response`. Either way with the browser's
/// protective headers, never cached.
fn render(error: &GateError, wants_json: bool, chrome: &Chrome) -> Response<ResponseBody> {
    if wants_json {
        let mut response = error.to_response();
        secure(&mut response, "no-store");
        return response;
    }
    let (title, text): (&str, &str) = match error {
        GateError::NotFound => ("Not found", "There is no such page, repository or tag, or you may not see it."),
        GateError::NoSession => ("Not allowed", "Log in to delete."),
        GateError::Denied { action: Action::Delete, .. } => ("Not allowed", "Your access rules do not allow deleting in this repository."),
        GateError::Denied { .. } => ("Not allowed", "Your access rules do not allow this in this repository."),
        GateError::CrossSiteForm => ("Form refused", "This form has expired or did not come from this page. Go back, reload the page and try again."),
        GateError::DeletesDisabled => ("Deleting is disabled", "The registry behind the gate does not allow deletes: its configuration needs storage.delete.enabled: true."),
        GateError::ReadOnly => ("Read-only", "The gate is in read-only mode ([server] read_only): deletes are disabled."),
        GateError::TagMoved { .. } => ("The tag has moved", "The tag points at another manifest than the one you confirmed. Go back, review it and confirm again."),
        GateError::BadRequest(why) => ("Bad request", why),
        GateError::Throttled(_) => ("Too many failed logins", "Too many failed logins from your address; try again later."),
        GateError::Protected { .. } => ("Protected tag", "This manifest is a tag protected by [[protect]]: it cannot be deleted."),
        _ => ("The registry failed", "The registry behind the gate did not answer properly; the gate's log says why."),
    };
    let mut response = page(error.status(), chrome, title, pages::message(title, text));
    if let GateError::Throttled(wait) = error {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

/// Whether a browser request asks for JSON rather than a page: its `Accept` names a JSON
/// type and not HTML (a script's `fetch`). A browser's navigation, or no `Accept` at all (curl),
/// gets the page.
fn wants_json(headers: &http::HeaderMap) -> bool {
    let (mut json, mut html) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let media = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            json |= media == "application/json" || media.ends_with("+json");
            html |= media == "text/html";
        }
    }
    json && !html
}

/// One request's view of the registry: who asks and how to read it.
struct Browser {
    registry: Registry,
    /// Images' creation dates, remembered across requests.
    dates: Arc<CreationDates>,
    /// The host the browser addressed, for the `docker pull` lines.
    host: String,
    caller: Caller,
    session: Option<Session>,
    key: SessionKey,
    /// Registry reads of every browser page together: however many pages are asked for,
    /// anonymous ones included, the registry sees at most `BROWSER_READS` from the browser.
    all_reads: Arc<Semaphore>,
    kept: Arc<Kept>,
}

impl Browser {
    fn may(&self, ctx: &RequestContext, repository: &str, action: Action) -> bool {
        self.caller.may(
            &ctx.snapshot.config.rules,
            ctx.client_ip,
            repository,
            action,
        )
    }

    /// Deletes need a session (for the CSRF token), the rules' permission, and a gate that
    /// is not read-only.
    fn may_delete(&self, ctx: &RequestContext, repository: &str) -> bool {
        self.session.is_some()
            && !ctx.snapshot.config.server.read_only
            && self.may(ctx, repository, Action::Delete)
    }

    async fn index(
        &self,
        ctx: &RequestContext,
        chrome: &Chrome<'_>,
        request: &Request<()>,
    ) -> Result<Response<ResponseBody>, GateError> {
        let query = query_values(request.uri().query(), "q")
            .into_iter()
            .next()
            .unwrap_or_default();
        let listing = self.registry.catalog().await?;
        let visible: Vec<String> = listing
            .names
            .into_iter()
            .filter(|name| self.may(ctx, name, Action::Pull))
            .collect();
        if visible.is_empty() && query.is_empty() && chrome.user.is_none() && chrome.can_log_in {
            // Nothing for anonymous here: the login is what they came for.
            return Ok(redirect(&format!("{}login", chrome.base), None));
        }
        Ok(page(
            StatusCode::OK,
            chrome,
            "Repositories",
            pages::repositories(chrome, &visible, &query, listing.complete),
        ))
    }

    /// The gate's own view of recent pushes and deletes, newest first, only in repositories
    /// the caller may pull. From memory (`Kit::activity`): what happened since the gate
    /// started, or with `[cluster]` the fleet's feed.
    async fn activity(&self, ctx: &RequestContext, chrome: &Chrome<'_>) -> Response<ResponseBody> {
        let rows: Vec<ActivityRow> = ctx
            .kit
            .activity()
            .fleet_newest_first()
            .await
            .into_iter()
            .filter(|e| self.may(ctx, &e.repository, Action::Pull))
            .map(|event| ActivityRow {
                time: humantime::format_rfc3339_seconds(event.time).to_string(),
                event,
            })
            .collect();
        page(
            StatusCode::OK,
            chrome,
            "Activity",
            pages::activity(chrome, &rows),
        )
    }

    async fn login(
        &self,
        ctx: &mut RequestContext,
        chrome: &Chrome<'_>,
        request: &Request<()>,
        host: &HeaderValue,
    ) -> Result<Response<ResponseBody>, GateError> {
        if !same_origin(request, host) {
            return Err(GateError::CrossSiteForm);
        }
        if ctx.snapshot.auth.is_none() {
            return Ok(redirect(chrome.base, None));
        }
        let form = read_form(ctx, request).await?;
        let user = field(&form, "user");
        let password = field(&form, "password");
        if password.is_empty() {
            return Ok(login_failed(
                chrome,
                "Enter your password or an access token.",
            ));
        }
        match caller::check_password(ctx, user, password.into_bytes()).await {
            // An ID token lives minutes and names a CI job, not a person: a session would
            // outlive it, and nothing could tell when its issuer stops vouching for it.
            Ok(caller) if caller.oidc_subject.is_some() => {
                tracing::info!(user = %caller.identity.name(), peer = %ctx.client_ip, "browser login refused: an OIDC ID token logs in CI jobs, not the browser");
                Ok(login_failed(
                    chrome,
                    "An OIDC ID token logs in CI jobs, not the browser: use your password or an access token.",
                ))
            }
            Ok(caller) => {
                let Identity::User(name) = &caller.identity else {
                    return Err(GateError::Internal("a password check without users"));
                };
                let stamp = match caller.token_name() {
                    Some(_) => None,
                    None => ctx
                        .snapshot
                        .auth
                        .as_ref()
                        .and_then(|a| a.password_stamp(name)),
                };
                let session = Session::start(
                    name.clone(),
                    caller.token_name().map(str::to_string),
                    stamp,
                    unix_now(),
                )
                .map_err(|_| GateError::Internal("no randomness for a session id"))?;
                ctx.record.user = name.clone();
                ctx.record.token = caller.token_name().map(str::to_string);
                tracing::info!(user = %name, token = caller.token_name().unwrap_or("-"), peer = %ctx.client_ip, "browser login");
                let cookie = session::set_cookie(&self.key.seal(&session), chrome.base);
                Ok(redirect(chrome.base, Some(cookie)))
            }
            Err(failure) => {
                let bad_token = matches!(failure, LoginFailure::BadToken { .. });
                let reason = caller::login_failed(failure, ctx.client_ip, "browser login failed")?;
                crate::metrics::get().auth_failure(reason);
                Ok(login_failed(
                    chrome,
                    if bad_token {
                        "That access token may no longer be used (expired, revoked or its owner removed)."
                    } else {
                        "Wrong user name or password."
                    },
                ))
            }
        }
    }

    async fn logout(
        &self,
        ctx: &mut RequestContext,
        chrome: &Chrome<'_>,
        request: &Request<()>,
        host: &HeaderValue,
    ) -> Result<Response<ResponseBody>, GateError> {
        if let Some(session) = &self.session {
            self.checked_form(ctx, request, host, session).await?;
            // Clearing the cookie only asks the browser to forget it; a copy would still
            // work until it expires.
            self.kept.end(session).await;
            tracing::info!(user = %session.user, peer = %ctx.client_ip, "browser logout");
        }
        Ok(redirect(
            chrome.base,
            Some(session::clear_cookie(chrome.base)),
        ))
    }

    async fn repository(
        &self,
        ctx: &RequestContext,
        chrome: &Chrome<'_>,
        request: &Request<()>,
        name: &str,
    ) -> Result<Response<ResponseBody>, GateError> {
        if !self.may(ctx, name, Action::Pull) {
            return Err(GateError::NotFound);
        }
        let mut listing = self.registry.tags(name).await?.ok_or(GateError::NotFound)?;
        // distribution lists tags in its storage's order, which pages cannot be built on.
        listing.names.sort_unstable();
        // Referrers indexes (`sha256-<hex>`) belong to their images: shown on their pages.
        let before = listing.names.len();
        listing
            .names
            .retain(|tag| !crate::proxy::referrers::is_fallback_tag(tag));
        let referrer_tags = before - listing.names.len();
        let asked = request.uri().query();
        let deleted = query_values(asked, "deleted")
            .into_iter()
            .find(|t| is_tag(t));
        let query = query_values(asked, "q")
            .into_iter()
            .next()
            .unwrap_or_default();
        // A filter with a character no tag has matches nothing: one page, with no pager, so
        // it is never put in a link.
        let filter_ok = is_tag_fragment(&query);
        let matching: Vec<&String> = listing
            .names
            .iter()
            .filter(|tag| filter_ok && tag.contains(query.as_str()))
            .collect();
        let pages = matching.len().div_ceil(TAGS_PER_PAGE).max(1);
        let page_no = query_values(asked, "page")
            .first()
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, pages);
        let first = (page_no - 1) * TAGS_PER_PAGE;
        let shown: Vec<String> = matching
            .iter()
            .skip(first)
            .take(TAGS_PER_PAGE)
            .map(|tag| tag.to_string())
            .collect();
        let rows = self.tag_rows(name, shown).await;
        let view = RepositoryView {
            name,
            host: &self.host,
            complete: listing.complete,
            rows,
            can_delete: self.may_delete(ctx, name),
            deleted: deleted.as_deref(),
            query: &query,
            page: page_no,
            pages,
            first: first + 1,
            matching: matching.len(),
            referrer_tags,
        };
        Ok(page(
            StatusCode::OK,
            chrome,
            name,
            pages::repository(chrome, &view),
        ))
    }

    /// `tags` with manifest and created date. A tag that cannot be read is shown as such.
    async fn tag_rows(&self, name: &str, tags: Vec<String>) -> Vec<TagRow> {
        let reads = self.read_images(name, tags.clone()).await;
        tags.into_iter()
            .zip(reads)
            .map(|(tag, read)| {
                let (manifest, created) = read.unwrap_or((None, None));
                TagRow {
                    tag,
                    manifest,
                    created,
                }
            })
            .collect()
    }

    /// `read_image` for each reference, `READS_AT_ONCE` at a time for this page and within
    /// the browser's shared `all_reads`; in the order asked, `None` where a read failed to
    /// finish.
    async fn read_images(&self, name: &str, references: Vec<String>) -> Vec<Option<ImageRead>> {
        let page = Arc::new(Semaphore::new(READS_AT_ONCE));
        let mut reads = JoinSet::new();
        let count = references.len();
        for (i, reference) in references.into_iter().enumerate() {
            let (registry, dates, name, page, all) = (
                self.registry.clone(),
                self.dates.clone(),
                name.to_string(),
                page.clone(),
                self.all_reads.clone(),
            );
            reads.spawn(async move {
                let _page = page.acquire_owned().await;
                let _all = all.acquire_owned().await;
                (i, read_image(&registry, &dates, &name, &reference).await)
            });
        }
        let mut out: Vec<Option<ImageRead>> = (0..count).map(|_| None).collect();
        while let Some(done) = reads.join_next().await {
            if let Ok((i, read)) = done {
                out[i] = Some(read);
            }
        }
        out
    }

    /// The manifest page, by tag (`by_tag`) or by digest.
    async fn manifest(
        &self,
        ctx: &RequestContext,
        chrome: &Chrome<'_>,
        name: &str,
        reference: &str,
        by_tag: bool,
    ) -> Result<Response<ResponseBody>, GateError> {
        if !self.may(ctx, name, Action::Pull) {
            return Err(GateError::NotFound);
        }
        let manifest = self
            .registry
            .manifest(name, reference)
            .await?
            .ok_or(GateError::NotFound)?;
        let config = match &manifest.kind {
            ManifestKind::Image { config, .. } => {
                self.registry.config(name, &config.digest).await?
            }
            _ => None,
        };
        let children = match &manifest.kind {
            ManifestKind::Index { manifests } => self.children(name, manifests).await,
            _ => Vec::new(),
        };
        // Its signatures and attestations; a page without them beats no page.
        let referrers =
            crate::proxy::referrers::referrers_of(&self.registry, name, &manifest.digest)
                .await
                .unwrap_or_default();
        let view = ManifestView {
            name,
            host: &self.host,
            tag: by_tag.then_some(reference),
            manifest: &manifest,
            config: config.as_ref(),
            children,
            referrers,
            can_delete: by_tag && self.may_delete(ctx, name),
        };
        let title = format!("{name}:{reference}");
        Ok(page(
            StatusCode::OK,
            chrome,
            &title,
            pages::manifest(chrome, &view),
        ))
    }

    /// The images of an index with their sizes and created dates, attestations left out.
    async fn children(&self, name: &str, manifests: &[Descriptor]) -> Vec<ChildRow> {
        let platforms: Vec<(String, String)> = manifests
            .iter()
            .filter_map(|d| Some((d.platform.as_ref()?, d)))
            .filter(|(p, _)| p.os != "unknown")
            .take(MAX_DETAILED_CHILDREN)
            .map(|(p, d)| (p.to_string(), d.digest.clone()))
            .collect();
        let digests = platforms.iter().map(|(_, d)| d.clone()).collect();
        let reads = self.read_images(name, digests).await;
        platforms
            .into_iter()
            .zip(reads)
            .filter_map(|((platform, digest), read)| {
                let (manifest, created) = read?;
                Some(ChildRow {
                    platform,
                    digest,
                    size: manifest.and_then(|m| m.image_size()),
                    created,
                })
            })
            .collect()
    }

    async fn confirm_delete(
        &self,
        ctx: &RequestContext,
        chrome: &Chrome<'_>,
        name: &str,
        tag: &str,
    ) -> Result<Response<ResponseBody>, GateError> {
        self.check_delete(ctx, name)?;
        let manifest = self
            .registry
            .manifest(name, tag)
            .await?
            .ok_or(GateError::NotFound)?;
        let title = format!("Delete {name}:{tag}");
        Ok(page(
            StatusCode::OK,
            chrome,
            &title,
            pages::confirm_delete(chrome, name, tag, &manifest.digest),
        ))
    }

    /// The form of a changing request in `session`, read only when it came from our own
    /// pages with the session's CSRF token.
    async fn checked_form(
        &self,
        ctx: &mut RequestContext,
        request: &Request<()>,
        host: &HeaderValue,
        session: &Session,
    ) -> Result<String, GateError> {
        let form = read_form(ctx, request).await?;
        if !same_origin(request, host) || !self.key.csrf_ok(session, &field(&form, CSRF_FIELD)) {
            return Err(GateError::CrossSiteForm);
        }
        Ok(form)
    }

    async fn delete(
        &self,
        ctx: &mut RequestContext,
        chrome: &Chrome<'_>,
        request: &Request<()>,
        host: &HeaderValue,
        name: &str,
        tag: &str,
    ) -> Result<Response<ResponseBody>, GateError> {
        let Some(session) = &self.session else {
            return Err(GateError::NoSession);
        };
        let form = self.checked_form(ctx, request, host, session).await?;
        self.check_delete(ctx, name)?;
        let digest = field(&form, "digest");
        if !is_digest(&digest) {
            return Err(GateError::BadRequest("The form names no manifest digest."));
        }
        ctx.record.action = Some("delete");
        ctx.record.repository = Some(name.to_string());
        ctx.record.reference = Some(tag.to_string());
        let current = self
            .registry
            .manifest(name, tag)
            .await?
            .ok_or(GateError::NotFound)?;
        if current.digest != digest {
            return Err(GateError::TagMoved {
                repository: name.to_string(),
                tag: tag.to_string(),
            });
        }
        // The registry deletes by digest, taking every tag that points there: a protected
        // one must stop it, as it would a DELETE through the API.
        let write_lock = match crate::proxy::protect::check_manifest_delete(
            ctx,
            &self.caller.protect_subject(),
            name,
            &digest,
            host,
        )
        .await
        {
            Ok(guard) => guard,
            Err(e) => {
                ctx.record.decision = Verdict::Deny;
                ctx.record.reason = e.access_reason();
                return Err(e);
            }
        };
        ctx.record.decision = Verdict::Allow;
        // A tagged referrer deleted here leaves its subject's index as one deleted through
        // the API does.
        let subject = crate::proxy::referrers::indexed_subject(&current);
        match self.registry.delete_manifest(name, &digest).await? {
            Deleted::Done => {
                if let Some(subject) = subject {
                    crate::proxy::referrers::forget(
                        ctx,
                        &self.registry,
                        name,
                        &subject,
                        &digest,
                        write_lock,
                    )
                    .await;
                }
                tracing::info!(user = %self.caller.identity.name(), repository = %name, tag = %tag, digest = %digest, peer = %ctx.client_ip, "deleted from the browser");
                // A delete made here is as much the gate's history as one through the API.
                crate::proxy::note_change(
                    ctx,
                    crate::proxy::change_event(
                        ctx,
                        &self.caller,
                        EventAction::Delete,
                        name,
                        Some(tag),
                        Some(digest.clone()),
                    ),
                )
                .await;
                Ok(redirect(
                    &format!("{}repo/{name}?deleted={tag}", chrome.base),
                    None,
                ))
            }
            Deleted::Disabled => Err(GateError::DeletesDisabled),
            Deleted::NotFound => Err(GateError::NotFound),
        }
    }

    /// Who may delete in `name`: a caller who may see it, has a session, and may delete.
    fn check_delete(&self, ctx: &RequestContext, name: &str) -> Result<(), GateError> {
        if !self.may(ctx, name, Action::Pull) {
            return Err(GateError::NotFound);
        }
        if self.session.is_none() {
            return Err(GateError::NoSession);
        }
        if ctx.snapshot.config.server.read_only {
            return Err(GateError::ReadOnly);
        }
        if !self.may(ctx, name, Action::Delete) {
            return Err(GateError::Denied {
                user: self.caller.identity.name().to_string(),
                action: Action::Delete,
                repository: name.to_string(),
            });
        }
        Ok(())
    }
}

/// A manifest and, for an image, its config's created date; `None`s where the registry
/// does not answer (the page shows the rest).
/// A manifest and its image's created date, each absent when it could not be read.
type ImageRead = (Option<Manifest>, Option<String>);

async fn read_image(
    registry: &Registry,
    dates: &CreationDates,
    name: &str,
    reference: &str,
) -> ImageRead {
    let manifest = match registry.manifest(name, reference).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(repository = %name, reference = %reference, error = %e, "browser: manifest not read");
            None
        }
    };
    let created = match manifest.as_ref().map(|m| &m.kind) {
        Some(ManifestKind::Image { config, .. }) => {
            dates.created(registry, name, &config.digest).await
        }
        _ => None,
    };
    (manifest, created)
}

/// Whether a form was posted from the gate's own pages. `Sec-Fetch-Site` and `Origin` are set
/// by the browser, never by a page's script, so another site cannot fake them. Fetch
/// metadata decides where the browser sends it; `Origin` alone is checked otherwise. Our
/// pages use `Referrer-Policy: same-origin`, so their own forms carry their real origin and
/// `Origin: null` (an opaque or `no-referrer` page elsewhere) is refused. The CSRF token is
/// checked besides, and the session cookie is `SameSite=Strict`, so this is a second lock,
/// not the only one.
fn same_origin(request: &Request<()>, host: &HeaderValue) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let origin = match headers.get(header::ORIGIN) {
        None => return true,
        Some(o) => o.as_bytes(),
    };
    let host = host.as_bytes();
    // The default port is in the Host header only if the client wrote it there.
    let host_without_443 = host.strip_suffix(b":443").unwrap_or(host);
    [host, host_without_443]
        .iter()
        .any(|h| origin.strip_prefix(b"https://") == Some(h))
}

/// The urlencoded form of a POST, whole, bounded in size and time.
async fn read_form(ctx: &mut RequestContext, request: &Request<()>) -> Result<String, GateError> {
    let urlencoded = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .starts_with(b"application/x-www-form-urlencoded")
        });
    if !urlencoded {
        return Err(GateError::BadRequest(
            "Send the form as application/x-www-form-urlencoded.",
        ));
    }
    read_small_form(ctx.body.take(), MAX_FORM_BYTES)
        .await
        .map_err(|e| {
            GateError::BadRequest(match e {
                FormError::Late => "The form was not sent in time.",
                FormError::TooLargeOrBroken => "The form is too large or broken.",
                FormError::NotUtf8 => "The form is not UTF-8.",
            })
        })
}

/// The first value of `name` in a form, or empty.
fn field(form: &str, name: &str) -> String {
    query_values(Some(form), name)
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn login_failed(chrome: &Chrome, why: &str) -> Response<ResponseBody> {
    page(
        StatusCode::UNAUTHORIZED,
        chrome,
        "Log in",
        pages::login(chrome, Some(why)),
    )
}

/// A whole HTML page.
fn page(status: StatusCode, chrome: &Chrome, title: &str, body: Html) -> Response<ResponseBody> {
    let text = pages::layout(chrome, title, body);
    let mut response = Response::new(ResponseBody::full(Bytes::from(text)));
    *response.status_mut() = status;
    secure(&mut response, "no-store");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// 303 to a path of the browser's (a POST's answer becomes a GET), optionally setting the
/// session cookie. `to` is built from the configured path and validated names only.
fn redirect(to: &str, cookie: Option<String>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    secure(&mut response, "no-store");
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(to) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The headers every browser answer carries (HSTS and nosniff are added for all answers in
/// `handle`).
fn secure(response: &mut Response<ResponseBody>, cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_under_the_ui_path() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(Route::parse(&get, ""), Route::Index);
        assert_eq!(Route::parse(&Method::HEAD, ""), Route::Index);
        assert_eq!(Route::parse(&post, ""), Route::NotFound);
        assert_eq!(Route::parse(&get, "login"), Route::LoginForm);
        assert_eq!(Route::parse(&get, "activity"), Route::Activity);
        assert_eq!(Route::parse(&post, "activity"), Route::NotFound);
        assert_eq!(Route::parse(&post, "login"), Route::Login);
        assert_eq!(Route::parse(&get, "logout"), Route::NotFound);
        assert_eq!(Route::parse(&post, "logout"), Route::Logout);
        assert!(matches!(
            Route::parse(&get, "static/ui.js"),
            Route::Asset(..)
        ));
        assert_eq!(
            Route::parse(&get, "repo/team/app"),
            Route::Repository("team/app")
        );
        assert_eq!(
            Route::parse(&get, "repo/team/app/-/tag/v1.0"),
            Route::Tag("team/app", "v1.0")
        );
        assert_eq!(
            Route::parse(&get, &format!("repo/a/-/manifest/{D}")),
            Route::Digest("a", D)
        );
        assert_eq!(
            Route::parse(&get, "repo/a/-/delete/v1"),
            Route::DeleteForm("a", "v1")
        );
        assert_eq!(
            Route::parse(&post, "repo/a/-/delete/v1"),
            Route::Delete("a", "v1")
        );
    }

    #[test]
    fn names_and_references_outside_the_grammar_route_nowhere() {
        let get = Method::GET;
        for bad in [
            "repo/",
            "repo/Team/app",
            "repo/team/../secret",
            "repo/team%2fapp",
            "repo/team//app",
            "repo/a/-/tag/",
            "repo/a/-/tag/-v1",
            "repo/a/-/tag/<script>",
            "repo/a/-/tag/v1/extra",
            "repo/a/-/manifest/sha256:short",
            "repo/a/-/unknown/v1",
            "repo/a/-/",
            "static/../../etc/passwd",
            "static/other.js",
            "login/",
        ] {
            assert_eq!(Route::parse(&get, bad), Route::NotFound, "{bad}");
        }
        assert_eq!(
            Route::parse(&Method::DELETE, "repo/a/-/delete/v1"),
            Route::NotFound
        );
        assert_eq!(Route::parse(&Method::POST, "repo/a"), Route::NotFound);
    }

    #[test]
    fn the_ui_serves_its_path_and_the_path_without_its_slash() {
        let config = UiConfig {
            enabled: true,
            path: "/ui/".into(),
            cors_origins: Vec::new(),
        };
        assert!(serves(&config, "/ui/"));
        assert!(serves(&config, "/ui"));
        assert!(serves(&config, "/ui/repo/a"));
        assert!(!serves(&config, "/uix"));
        assert!(!serves(&config, "/v2/ui/"));
        let off = UiConfig {
            enabled: false,
            ..config
        };
        assert!(!serves(&off, "/ui/"));
    }

    fn post(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method("POST").uri("/ui/logout");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let host = HeaderValue::from_static("reg.example.com:8443");
        assert!(same_origin(&post(&[]), &host), "no browser headers: curl");
        for headers in [
            &[
                ("origin", "https://reg.example.com:8443"),
                ("sec-fetch-site", "same-origin"),
            ][..],
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            &[("origin", "https://reg.example.com:8443")],
        ] {
            assert!(same_origin(&post(headers), &host), "{headers:?}");
        }
        for headers in [
            &[("origin", "https://evil.example")][..],
            // A page elsewhere with no-referrer, or a sandboxed frame, in a browser without
            // fetch metadata.
            &[("origin", "null")],
            &[("origin", "http://reg.example.com:8443")],
            &[("origin", "https://reg.example.com")],
            &[("origin", "https://reg.example.com:8443.evil")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "same-site")],
            &[("sec-fetch-site", "none")],
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://reg.example.com:8443"),
            ],
        ] {
            assert!(!same_origin(&post(headers), &host), "{headers:?}");
        }
        let default_port = HeaderValue::from_static("reg.example.com:443");
        assert!(same_origin(
            &post(&[("origin", "https://reg.example.com")]),
            &default_port
        ));
    }

    fn chrome() -> Chrome<'static> {
        Chrome {
            base: "/ui/",
            user: None,
            csrf: None,
            can_log_in: true,
        }
    }

    async fn text(response: Response<ResponseBody>) -> String {
        use http_body_util::BodyExt;
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Each error the browser meets: its status (the same as the API's), the page's title,
    /// and the registry code of its JSON form.
    #[tokio::test]
    async fn each_error_renders_as_a_page_or_as_json() {
        let cases = [
            (GateError::NotFound, 404, "Not found", "NAME_UNKNOWN"),
            (GateError::NoSession, 403, "Not allowed", "DENIED"),
            (
                GateError::Denied {
                    user: "u".into(),
                    action: Action::Delete,
                    repository: "a".into(),
                },
                403,
                "do not allow deleting",
                "DENIED",
            ),
            (GateError::CrossSiteForm, 403, "Form refused", "DENIED"),
            (
                GateError::DeletesDisabled,
                405,
                "Deleting is disabled",
                "UNSUPPORTED",
            ),
            (GateError::ReadOnly, 405, "Read-only", "UNSUPPORTED"),
            (
                GateError::TagMoved {
                    repository: "a".into(),
                    tag: "v1".into(),
                },
                409,
                "The tag has moved",
                "DENIED",
            ),
            (
                GateError::BadRequest("The form is not UTF-8."),
                400,
                "The form is not UTF-8.",
                "UNSUPPORTED",
            ),
            (
                GateError::UpstreamTimeout,
                504,
                "The registry failed",
                "UNAVAILABLE",
            ),
            (
                GateError::Throttled(Duration::from_secs(3)),
                429,
                "Too many failed logins",
                "TOOMANYREQUESTS",
            ),
            (
                GateError::Protected {
                    repository: "a".into(),
                    tag: "v1".into(),
                    protection: 0,
                    refusal: crate::rules::protect::Refusal::DeleteTagged,
                },
                409,
                "Protected tag",
                "DENIED",
            ),
        ];
        let count = cases.len();
        for (error, status, words, code) in cases {
            let html = render(&error, false, &chrome());
            assert_eq!(html.status().as_u16(), status, "{error:?}");
            assert!(html.headers()[header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/html")));
            let body = text(html).await;
            assert!(body.contains(words), "{error:?}: {body}");
            let json = render(&error, true, &chrome());
            assert_eq!(json.status().as_u16(), status, "{error:?}");
            assert_eq!(json.headers()[header::CACHE_CONTROL], "no-store");
            let value: serde_json::Value = serde_json::from_str(&text(json).await).expect("json");
            assert_eq!(value["errors"][0]["code"], code, "{error:?}");
        }
        assert_eq!(count, 11);
    }

    #[test]
    fn json_only_for_a_request_that_asks_for_it_and_not_for_html() {
        let accept = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(header::ACCEPT, HeaderValue::from_str(v).expect("value"));
            }
            wants_json(&headers)
        };
        assert!(!accept(&[]));
        assert!(!accept(&["*/*"]));
        assert!(!accept(&[
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ]));
        assert!(!accept(&["application/json, text/html"]));
        assert!(accept(&["application/json"]));
        assert!(accept(&["Application/JSON; charset=utf-8"]));
        assert!(accept(&["application/json, text/plain, */*"]));
        assert!(accept(&["text/plain", "application/problem+json"]));
    }

    #[test]
    fn every_page_carries_the_protective_headers() {
        let chrome = Chrome {
            base: "/ui/",
            user: None,
            csrf: None,
            can_log_in: true,
        };
        let throttled = GateError::Throttled(Duration::from_secs(3));
        for response in [
            page(StatusCode::OK, &chrome, "t", Html::new()),
            redirect("/ui/", None),
            render(&throttled, false, &chrome),
            render(&throttled, true, &chrome),
        ] {
            let h = response.headers();
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
            assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[header::REFERRER_POLICY], "same-origin");
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
        }
    }
}
