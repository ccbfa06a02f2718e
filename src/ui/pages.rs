//! The browser's pages, rendered on the server: plain functions from data to HTML. They
//! work without JavaScript; `ui.js` only adds the copy buttons and filters the list as one
//! types. No inline script or style anywhere (the Content-Security-Policy forbids both).
//!
//! Every value goes through `Html::text`. What a page may show was decided before it is
//! called: these functions never ask the rules.

use std::sync::Arc;

use super::html::{human_size, Html};
use super::session::CSRF_FIELD;
use crate::events::{Event, EventAction};
use crate::proxy::registry::manifest::{ImageConfig, Manifest, ManifestKind};
use crate::registry_path::is_digest;

/// What every page's header needs.
pub struct Chrome<'a> {
    /// The browser's path, `/ui/`.
    pub base: &'a str,
    /// The logged-in user; `None` for anonymous.
    pub user: Option<&'a str>,
    /// The session's CSRF token, for the forms on the page.
    pub csrf: Option<&'a str>,
    /// Whether the gate has users to log in as.
    pub can_log_in: bool,
}

/// A whole page around `body`.
pub fn layout(chrome: &Chrome, title: &str, body: Html) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<meta name=\"referrer\" content=\"same-origin\"><title>")
        .text(title)
        .raw(" · registry-gate</title><link rel=\"stylesheet\" href=\"")
        .text(chrome.base)
        .raw("static/ui.css\"><script src=\"")
        .text(chrome.base)
        .raw("static/ui.js\" defer></script></head>\n<body><header><a class=\"brand\" href=\"")
        .text(chrome.base)
        .raw("\">registry-gate</a><nav><a href=\"")
        .text(chrome.base)
        .raw("activity\" id=\"activity-link\">Activity</a>");
    match (chrome.user, chrome.csrf) {
        (Some(user), Some(csrf)) => {
            h.raw("<span class=\"who\">")
                .text(user)
                .raw("</span><form method=\"post\" action=\"")
                .text(chrome.base)
                .raw("logout\" class=\"inline\">");
            csrf_field(&mut h, csrf);
            h.raw("<button type=\"submit\" id=\"logout\">Log out</button></form>");
        }
        (Some(user), None) => {
            // A client certificate's user: logged in by the connection, nothing to end.
            h.raw("<span class=\"who\">").text(user).raw("</span>");
        }
        (None, _) if chrome.can_log_in => {
            h.raw("<a href=\"")
                .text(chrome.base)
                .raw("login\" id=\"login-link\">Log in</a>");
        }
        (None, _) => {}
    }
    h.raw("</nav></header>\n<main>")
        .append(body)
        .raw("</main></body></html>\n");
    h.into_string()
}

fn csrf_field(h: &mut Html, csrf: &str) {
    h.raw("<input type=\"hidden\" name=\"")
        .raw(CSRF_FIELD)
        .raw("\" value=\"")
        .text(csrf)
        .raw("\">");
}

/// The login form; `error` says why the last attempt failed.
pub fn login(chrome: &Chrome, error: Option<&str>) -> Html {
    let mut h = Html::new();
    h.raw("<h1>Log in</h1>");
    if !chrome.can_log_in {
        h.raw("<p class=\"notice\">This gate has no users ([auth] mode = \"none\"): everyone browses as anonymous.</p>");
        return h;
    }
    if let Some(error) = error {
        h.raw("<p class=\"error\" id=\"login-error\">")
            .text(error)
            .raw("</p>");
    }
    h.raw("<form method=\"post\" action=\"")
        .text(chrome.base)
        .raw("login\" class=\"login\">")
        .raw("<label>User <input name=\"user\" id=\"user\" autocomplete=\"username\" autofocus></label>")
        .raw("<label>Password or access token <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>")
        .raw("<button type=\"submit\" id=\"submit\">Log in</button></form>")
        .raw("<p class=\"hint\">The same credentials as <code>docker login</code>.</p>");
    h
}

/// The repositories the caller may pull, filtered by `query` when one was given.
pub fn repositories(chrome: &Chrome, names: &[String], query: &str, complete: bool) -> Html {
    let mut h = Html::new();
    h.raw("<h1>Repositories</h1><form method=\"get\" action=\"")
        .text(chrome.base)
        .raw("\" class=\"search\" role=\"search\"><input type=\"search\" name=\"q\" id=\"filter\" placeholder=\"Filter repositories\" value=\"")
        .text(query)
        .raw("\"><button type=\"submit\">Search</button></form>");
    let shown: Vec<&String> = names
        .iter()
        .filter(|n| n.contains(&query.to_ascii_lowercase()))
        .collect();
    if shown.is_empty() {
        h.raw("<p class=\"empty\" id=\"no-repositories\">No repositories")
            .raw(if query.is_empty() { "" } else { " match" })
            .raw(".</p>");
    } else {
        h.raw("<ul class=\"repositories\" id=\"repositories\">");
        for name in shown {
            h.raw("<li data-name=\"")
                .text(name)
                .raw("\"><a class=\"repository\" href=\"")
                .text(chrome.base)
                .raw("repo/")
                .text(name)
                .raw("\">")
                .text(name)
                .raw("</a></li>");
        }
        h.raw("</ul>");
    }
    if !complete {
        h.raw("<p class=\"notice\">The registry holds more repositories than the browser reads; the list is cut.</p>");
    }
    h
}

/// One row of a repository's tag table.
pub struct TagRow {
    pub tag: String,
    /// `None` when the tag vanished or could not be read.
    pub manifest: Option<Manifest>,
    pub created: Option<String>,
}

/// What the repository page shows.
pub struct RepositoryView<'a> {
    pub name: &'a str,
    pub host: &'a str,
    /// This page's tags.
    pub rows: Vec<TagRow>,
    /// Whether the registry's tag list was read to its end.
    pub complete: bool,
    pub can_delete: bool,
    /// A tag just deleted, to say so.
    pub deleted: Option<&'a str>,
    /// The tag filter as typed. One that cannot match a tag leaves one page and no pager,
    /// so only a filter of tag characters is ever put in a link.
    pub query: &'a str,
    /// This page's number and the count of pages, from 1.
    pub page: usize,
    pub pages: usize,
    /// The position of this page's first tag among the `matching` ones, from 1.
    pub first: usize,
    pub matching: usize,
    /// Referrers indexes (`sha256-<hex>` tags) left out: each image's page lists its own.
    pub referrer_tags: usize,
}

pub fn repository(chrome: &Chrome, view: &RepositoryView) -> Html {
    let mut h = Html::new();
    let repo_url = |h: &mut Html| {
        h.text(chrome.base).raw("repo/").text(view.name);
    };
    h.raw("<p class=\"crumbs\"><a href=\"")
        .text(chrome.base)
        .raw("\">Repositories</a> /</p><h1 id=\"repository\">")
        .text(view.name)
        .raw("</h1><form method=\"get\" action=\"");
    repo_url(&mut h);
    h.raw("\" class=\"search\" role=\"search\"><input type=\"search\" name=\"q\" placeholder=\"Filter tags\" value=\"")
        .text(view.query)
        .raw("\"><button type=\"submit\">Search</button></form>");
    if let Some(tag) = view.deleted {
        h.raw("<p class=\"notice\" id=\"deleted\">Deleted ")
            .text(view.name)
            .raw(":")
            .text(tag)
            .raw(".</p>");
    }
    if view.rows.is_empty() {
        h.raw("<p class=\"empty\" id=\"no-tags\">No tags")
            .raw(if view.query.is_empty() { "" } else { " match" })
            .raw(".</p>");
        return h;
    }
    h.raw("<table class=\"tags\" id=\"tags\"><thead><tr><th>Tag</th><th>Digest</th><th>Size</th><th>Platforms</th><th>Created</th><th>Pull</th>");
    if view.can_delete {
        h.raw("<th></th>");
    }
    h.raw("</tr></thead><tbody>");
    for row in &view.rows {
        h.raw("<tr data-tag=\"")
            .text(&row.tag)
            .raw("\"><td><a class=\"tag\" href=\"");
        repo_url(&mut h);
        h.raw("/-/tag/")
            .text(&row.tag)
            .raw("\">")
            .text(&row.tag)
            .raw("</a></td>");
        match &row.manifest {
            Some(m) => {
                h.raw("<td><code title=\"")
                    .text(&m.digest)
                    .raw("\">")
                    .text(short_digest(&m.digest))
                    .raw("</code></td><td>");
                match m.image_size() {
                    Some(size) => h.text(&human_size(size)),
                    None => h.raw("—"),
                };
                h.raw("</td><td>").text(&m.platforms().join(", "));
                h.raw("</td><td>")
                    .text(row.created.as_deref().map(short_time).unwrap_or("—"))
                    .raw("</td>");
            }
            None => {
                h.raw("<td colspan=\"4\" class=\"muted\">not read</td>");
            }
        }
        h.raw("<td>");
        pull_line(&mut h, &format!("{}/{}:{}", view.host, view.name, row.tag));
        h.raw("</td>");
        if view.can_delete {
            h.raw("<td><a class=\"delete\" href=\"");
            repo_url(&mut h);
            h.raw("/-/delete/").text(&row.tag).raw("\">Delete</a></td>");
        }
        h.raw("</tr>");
    }
    h.raw("</tbody></table>");
    if view.pages > 1 {
        let link = |h: &mut Html, page: usize, rel: &'static str, label: &'static str| {
            h.raw("<a rel=\"").raw(rel).raw("\" href=\"");
            repo_url(h);
            h.raw("?page=").text(&page.to_string());
            if !view.query.is_empty() {
                h.raw("&amp;q=").text(view.query);
            }
            h.raw("\">").raw(label).raw("</a>");
        };
        h.raw("<nav class=\"pager\" id=\"pager\"><span>Tags ")
            .text(&view.first.to_string())
            .raw("–")
            .text(&(view.first + view.rows.len() - 1).to_string())
            .raw(" of ")
            .text(&view.matching.to_string())
            .raw("</span>");
        if view.page > 1 {
            link(&mut h, view.page - 1, "prev", "← Previous");
        }
        if view.page < view.pages {
            link(&mut h, view.page + 1, "next", "Next →");
        }
        h.raw("</nav>");
    }
    if !view.complete {
        h.raw("<p class=\"notice\">The registry holds more tags than the browser reads; the list is cut.</p>");
    }
    if view.referrer_tags > 0 {
        h.raw("<p class=\"muted\" id=\"referrer-tags\">")
            .num(view.referrer_tags as u64)
            .raw(" referrers tag(s) (<code>sha256-…</code>) not listed: each image's page shows its signatures and attestations.</p>");
    }
    h
}

/// `docker pull …` with a copy button (shown by `ui.js`; without it the text is selectable).
fn pull_line(h: &mut Html, reference: &str) {
    let line = format!("docker pull {reference}");
    h.raw("<span class=\"pull\"><code>")
        .text(&line)
        .raw("</code> <button type=\"button\" class=\"copy\" hidden data-copy=\"")
        .text(&line)
        .raw("\">Copy</button></span>");
}

/// One image of an index, for the manifest page.
pub struct ChildRow {
    pub platform: String,
    pub digest: String,
    pub size: Option<u64>,
    pub created: Option<String>,
}

/// What the manifest page shows.
pub struct ManifestView<'a> {
    pub name: &'a str,
    pub host: &'a str,
    /// The tag when opened by tag.
    pub tag: Option<&'a str>,
    pub manifest: &'a Manifest,
    pub config: Option<&'a ImageConfig>,
    pub children: Vec<ChildRow>,
    /// Signatures, SBOMs and other artifacts whose subject this manifest is.
    pub referrers: Vec<crate::proxy::referrers::Referrer>,
    pub can_delete: bool,
}

pub fn manifest(chrome: &Chrome, view: &ManifestView) -> Html {
    let mut h = Html::new();
    let m = view.manifest;
    h.raw("<p class=\"crumbs\"><a href=\"")
        .text(chrome.base)
        .raw("\">Repositories</a> / <a href=\"")
        .text(chrome.base)
        .raw("repo/")
        .text(view.name)
        .raw("\">")
        .text(view.name)
        .raw("</a> /</p><h1 id=\"reference\">")
        .text(view.tag.unwrap_or(&m.digest))
        .raw("</h1>");
    let reference = match view.tag {
        Some(tag) => format!("{}/{}:{tag}", view.host, view.name),
        None => format!("{}/{}@{}", view.host, view.name, m.digest),
    };
    h.raw("<p>");
    pull_line(&mut h, &reference);
    h.raw("</p><dl class=\"facts\"><dt>Digest</dt><dd><code id=\"digest\">")
        .text(&m.digest)
        .raw("</code></dd><dt>Media type</dt><dd>")
        .text(&m.media_type)
        .raw("</dd>");
    if let Some(size) = m.image_size() {
        h.raw("<dt>Size</dt><dd id=\"size\">")
            .text(&human_size(size))
            .raw(" (")
            .num(size)
            .raw(" bytes, config and layers)</dd>");
    }
    if let Some(c) = view.config {
        for (label, value) in [
            ("Created", &c.created),
            ("Platform", &c.platform),
            ("User", &c.user),
            ("Entrypoint", &c.entrypoint),
            ("Command", &c.cmd),
        ] {
            if let Some(value) = value {
                h.raw("<dt>")
                    .raw(label)
                    .raw("</dt><dd>")
                    .text(value)
                    .raw("</dd>");
            }
        }
    }
    h.raw("</dl>");
    if let Some(c) = view.config.filter(|c| !c.labels.is_empty()) {
        h.raw("<h2>Labels</h2><table class=\"labels\" id=\"labels\"><tbody>");
        for (key, value) in &c.labels {
            h.raw("<tr><th>")
                .text(key)
                .raw("</th><td>")
                .text(value)
                .raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    match &m.kind {
        ManifestKind::Image { config, layers } => {
            h.raw("<h2>Layers</h2><table class=\"layers\" id=\"layers\"><thead><tr><th>#</th><th>Digest</th><th>Media type</th><th>Size</th></tr></thead><tbody>");
            for (i, layer) in layers.iter().enumerate() {
                h.raw("<tr><td>")
                    .num(i as u64 + 1)
                    .raw("</td><td><code>")
                    .text(&layer.digest)
                    .raw("</code></td><td>")
                    .text(&layer.media_type)
                    .raw("</td><td>")
                    .text(&human_size(layer.size))
                    .raw("</td></tr>");
            }
            h.raw("<tr class=\"config\"><td>config</td><td><code>")
                .text(&config.digest)
                .raw("</code></td><td>")
                .text(&config.media_type)
                .raw("</td><td>")
                .text(&human_size(config.size))
                .raw("</td></tr></tbody></table>");
        }
        ManifestKind::Index { .. } => {
            h.raw("<h2>Platforms</h2><table class=\"platforms\" id=\"platforms\"><thead><tr><th>Platform</th><th>Digest</th><th>Size</th><th>Created</th></tr></thead><tbody>");
            for child in &view.children {
                h.raw("<tr><td>")
                    .text(&child.platform)
                    .raw("</td><td><a href=\"")
                    .text(chrome.base)
                    .raw("repo/")
                    .text(view.name)
                    .raw("/-/manifest/")
                    .text(&child.digest)
                    .raw("\"><code>")
                    .text(short_digest(&child.digest))
                    .raw("</code></a></td><td>");
                match child.size {
                    Some(size) => h.text(&human_size(size)),
                    None => h.raw("—"),
                };
                h.raw("</td><td>")
                    .text(child.created.as_deref().map(short_time).unwrap_or("—"))
                    .raw("</td></tr>");
            }
            h.raw("</tbody></table>");
        }
        ManifestKind::Other => {
            h.raw("<p class=\"muted\">Not an image or an index; nothing more to show.</p>");
        }
    }
    if !view.referrers.is_empty() {
        h.raw("<h2>Signatures and attestations</h2><table class=\"referrers\" id=\"referrers\"><thead><tr><th>Artifact type</th><th>Digest</th><th>Size</th></tr></thead><tbody>");
        for r in &view.referrers {
            h.raw("<tr><td>")
                .text(&r.artifact_type)
                .raw("</td><td><a href=\"")
                .text(chrome.base)
                .raw("repo/")
                .text(view.name)
                .raw("/-/manifest/")
                .text(&r.digest)
                .raw("\"><code>")
                .text(short_digest(&r.digest))
                .raw("</code></a></td><td>");
            match r.size {
                Some(size) => h.text(&human_size(size)),
                None => h.raw("—"),
            };
            h.raw("</td></tr>");
        }
        h.raw("</tbody></table>");
    }
    if let (true, Some(tag)) = (view.can_delete, view.tag) {
        h.raw("<p><a class=\"delete button\" id=\"delete\" href=\"")
            .text(chrome.base)
            .raw("repo/")
            .text(view.name)
            .raw("/-/delete/")
            .text(tag)
            .raw("\">Delete this tag…</a></p>");
    }
    h
}

/// The confirmation before a delete: says what goes, and posts the digest it showed so a tag
/// moved in between is not deleted by mistake.
pub fn confirm_delete(chrome: &Chrome, name: &str, tag: &str, digest: &str) -> Html {
    let mut h = Html::new();
    h.raw("<h1>Delete ")
        .text(name)
        .raw(":")
        .text(tag)
        .raw("?</h1><p>This deletes the manifest <code>")
        .text(digest)
        .raw("</code> from the registry, and with it every tag of ")
        .text(name)
        .raw(" that points at it. Its layers stay until the registry's garbage collection runs. There is no undo.</p><form method=\"post\" class=\"confirm\" action=\"")
        .text(chrome.base)
        .raw("repo/")
        .text(name)
        .raw("/-/delete/")
        .text(tag)
        .raw("\">");
    if let Some(csrf) = chrome.csrf {
        csrf_field(&mut h, csrf);
    }
    h.raw("<input type=\"hidden\" name=\"digest\" value=\"")
        .text(digest)
        .raw(
            "\"><button type=\"submit\" class=\"danger\" id=\"confirm\">Delete</button> <a href=\"",
        )
        .text(chrome.base)
        .raw("repo/")
        .text(name)
        .raw("/-/tag/")
        .text(tag)
        .raw("\">Cancel</a></form>");
    h
}

/// One accepted push or delete, for the activity page; the caller may pull its repository.
pub struct ActivityRow {
    pub event: Arc<Event>,
    /// `2024-05-01T10:00:00Z`, in UTC like the access log.
    pub time: String,
}

/// Recent pushes and deletes, newest first, as the gate saw them since it started.
pub fn activity(chrome: &Chrome, rows: &[ActivityRow]) -> Html {
    let mut h = Html::new();
    h.raw("<h1>Activity</h1><p class=\"hint\">Manifest pushes and deletes accepted through this gate since it started, newest first, in the repositories you may pull. Kept in memory: a restart starts the list afresh; the access log keeps the full record.</p>");
    if rows.is_empty() {
        h.raw("<p class=\"empty\" id=\"no-activity\">Nothing yet.</p>");
        return h;
    }
    h.raw("<table class=\"activity\" id=\"activity\"><thead><tr><th>When (UTC)</th><th>Action</th><th>Repository</th><th>Tag</th><th>Digest</th><th>Who</th><th>Client</th></tr></thead><tbody>");
    for row in rows {
        let e = &row.event;
        let action = e.action.as_str();
        h.raw("<tr class=\"")
            .raw(action)
            .raw("\" data-request-id=\"")
            .text(&e.request_id)
            .raw("\"><td>")
            .text(&row.time)
            .raw("</td><td>")
            .raw(action)
            .raw("</td><td><a class=\"repository\" href=\"")
            .text(chrome.base)
            .raw("repo/")
            .text(&e.repository)
            .raw("\">")
            .text(&e.repository)
            .raw("</a></td><td>");
        match (&e.tag, e.action) {
            (Some(tag), EventAction::Push) => {
                h.raw("<a class=\"tag\" href=\"")
                    .text(chrome.base)
                    .raw("repo/")
                    .text(&e.repository)
                    .raw("/-/tag/")
                    .text(tag)
                    .raw("\">")
                    .text(tag)
                    .raw("</a>");
            }
            (Some(tag), EventAction::Delete) => {
                h.text(tag);
            }
            (None, _) => {
                h.raw("—");
            }
        }
        h.raw("</td><td>");
        match e.digest.as_deref() {
            // Only a well-formed digest becomes a link: the registry's header is its word.
            Some(digest) if e.action == EventAction::Push && is_digest(digest) => {
                h.raw("<a href=\"")
                    .text(chrome.base)
                    .raw("repo/")
                    .text(&e.repository)
                    .raw("/-/manifest/")
                    .text(digest)
                    .raw("\"><code title=\"")
                    .text(digest)
                    .raw("\">")
                    .text(short_digest(digest))
                    .raw("</code></a>");
            }
            Some(digest) => {
                h.raw("<code title=\"")
                    .text(digest)
                    .raw("\">")
                    .text(short_digest(digest))
                    .raw("</code>");
            }
            None => {
                h.raw("—");
            }
        }
        h.raw("</td><td class=\"who\">").text(&e.actor.user);
        if let Some(token) = &e.actor.token {
            h.raw(" <span class=\"muted\">(token ")
                .text(token)
                .raw(")</span>");
        }
        if let Some(subject) = &e.actor.oidc_subject {
            h.raw(" <span class=\"muted\">(OIDC ")
                .text(subject)
                .raw(")</span>");
        }
        h.raw("</td><td>")
            .text(&e.client.to_string())
            .raw("</td></tr>");
    }
    h.raw("</tbody></table>");
    h
}

/// A page that only says something (an error, a refusal).
pub fn message(title: &str, text: &str) -> Html {
    let mut h = Html::new();
    h.raw("<h1>")
        .text(title)
        .raw("</h1><p class=\"message\" id=\"message\">")
        .text(text)
        .raw("</p>");
    h
}

/// `sha256:0123456789ab`: enough to tell digests apart in a table.
fn short_digest(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map(|i| i + 13)
        .unwrap_or(19)
        .min(digest.len());
    digest.get(..end).unwrap_or(digest)
}

/// `2024-05-01 10:00:00` of an RFC 3339 time, or the text as it is if it is not one.
fn short_time(time: &str) -> &str {
    let looks_rfc3339 =
        time.len() >= 19 && time.as_bytes().get(10) == Some(&b'T') && time.is_char_boundary(19);
    if looks_rfc3339 {
        &time[..19]
    } else {
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::registry::manifest::Descriptor;

    const HOSTILE: &str = "<script>alert(1)</script>\"'&";

    fn chrome() -> Chrome<'static> {
        Chrome {
            base: "/ui/",
            user: Some("alice<b>"),
            csrf: Some("tok\"en"),
            can_log_in: true,
        }
    }

    fn assert_no_markup_from(page: &str, hostile: &str) {
        assert!(!page.contains(hostile), "raw value in page:\n{page}");
        assert!(!page.contains("<script>alert"), "script in page:\n{page}");
        assert!(!page.contains("<b>"), "user's markup in page:\n{page}");
    }

    #[test]
    fn the_layout_escapes_the_user_and_the_token_and_has_no_inline_script() {
        let page = layout(&chrome(), HOSTILE, Html::new());
        assert_no_markup_from(&page, HOSTILE);
        assert!(page.contains("alice&lt;b&gt;"));
        assert!(page.contains("value=\"tok&quot;en\""));
        // The only script is the embedded file; no inline handlers or styles.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains("<script src=\"/ui/static/ui.js\" defer></script>"));
        assert!(!page.contains("onclick") && !page.contains("onload"));
        assert!(!page.contains("style="));
    }

    #[test]
    fn config_labels_and_values_are_escaped_on_the_manifest_page() {
        let hostile_config = ImageConfig {
            created: Some(HOSTILE.into()),
            platform: Some(HOSTILE.into()),
            user: Some(HOSTILE.into()),
            entrypoint: None,
            cmd: Some(HOSTILE.into()),
            labels: [(HOSTILE.to_string(), HOSTILE.to_string())].into(),
        };
        let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let m = Manifest {
            digest: digest.into(),
            media_type: HOSTILE.into(),
            kind: ManifestKind::Image {
                config: Descriptor {
                    media_type: HOSTILE.into(),
                    digest: digest.into(),
                    size: 1,
                    platform: None,
                },
                layers: vec![],
            },
            listed: vec![],
            subject: None,
        };
        let page = layout(
            &chrome(),
            "t",
            manifest(
                &chrome(),
                &ManifestView {
                    name: "team/app",
                    host: "reg<x>:443",
                    tag: Some("v1"),
                    manifest: &m,
                    config: Some(&hostile_config),
                    children: vec![],
                    referrers: vec![crate::proxy::referrers::Referrer {
                        digest: format!("sha256:{}", "a".repeat(64)),
                        artifact_type: HOSTILE.to_string(),
                        size: Some(1),
                    }],
                    can_delete: true,
                },
            ),
        );
        assert_no_markup_from(&page, HOSTILE);
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        assert!(page.contains("docker pull reg&lt;x&gt;:443/team/app:v1"));
    }

    #[test]
    fn the_repository_list_filters_and_escapes_the_query() {
        let names = vec!["team/app".to_string(), "team/tool".to_string()];
        let page = repositories(&chrome(), &names, "\"><script>", true).into_string();
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;\""));
        assert!(page.contains("No repositories match"));
        let page = repositories(&chrome(), &names, "TOOL", true).into_string();
        assert!(page.contains("team/tool") && !page.contains("team/app"));
    }

    #[test]
    fn the_activity_page_escapes_every_value_and_names_the_token() {
        use crate::events::Actor;
        let event = Event {
            action: EventAction::Push,
            repository: "team/app".into(),
            tag: Some(HOSTILE.into()),
            digest: Some(HOSTILE.into()),
            actor: Actor {
                user: HOSTILE.into(),
                token: Some("ci<b>".into()),
                oidc_subject: Some(HOSTILE.into()),
            },
            client: "192.0.2.7".parse().expect("address"),
            time: std::time::SystemTime::UNIX_EPOCH,
            request_id: HOSTILE.into(),
        };
        let rows = [ActivityRow {
            event: Arc::new(event),
            time: "1970-01-01T00:00:00Z".into(),
        }];
        let page = layout(&chrome(), "Activity", activity(&chrome(), &rows));
        assert_no_markup_from(&page, HOSTILE);
        assert!(page.contains("(token ci&lt;b&gt;)"), "{page}");
        assert!(page.contains("192.0.2.7") && page.contains("1970-01-01T00:00:00Z"));
        // A digest the registry sent that is not one is shown, never linked.
        assert!(!page.contains("/-/manifest/"), "{page}");
        assert!(page.contains("href=\"/ui/activity\""));
        let empty = activity(&chrome(), &[]).into_string();
        assert!(empty.contains("Nothing yet"));
    }

    #[test]
    fn times_and_digests_are_shortened_safely() {
        assert_eq!(
            short_time("2024-05-01T10:00:00.123Z"),
            "2024-05-01T10:00:00"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
        // Cut inside a character: left whole rather than split.
        assert_eq!(short_time("2024-05-01T10:00:0ü"), "2024-05-01T10:00:0ü");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("sha256:01"), "sha256:01");
    }
}
