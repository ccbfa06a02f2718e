//! The registry browser (`[ui]`), proved with real components: the real registry holding
//! images pushed by skopeo through the gate, a headless Chromium driven over WebDriver
//! (log in, see exactly the allowed repositories, open a tag, delete with permission and be
//! refused without; screenshots under `target/ui-screenshots/`), and a plain HTTPS client
//! for what a browser hides: cookie flags, CSRF refusals, escaping of hostile labels, the
//! security headers, and a recording upstream that must never see a browser path.

use crate::util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use util::client::{empty, full, request, text, HttpsClient, Proto};
use util::gate::{Gate, GateConfig};
use util::image::{ustar, MANIFEST_MEDIA_TYPE};
use util::recorder::{Recorder, Reply};
use util::registry::Registry;
use util::webdriver::Browser;
use util::{runtime, sha256_digest, temp_dir, write_file, TempDir};

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");

/// alice may do everything; bob may pull under team/ and nothing else, so secret/vault is
/// hidden from him and he may delete nothing.
const RULES: &str = "\n[[rules]]\nusers = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n\n[[rules]]\nusers = [\"bob\"]\nrepositories = [\"team/**\"]\nactions = [\"pull\"]\n";

const HIDDEN: &str = "secret/vault";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed layers: no gzip needed, and the registry accepts them like any other.
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Values a pusher controls, each a way into a page that does not escape.
const SCRIPT_LABEL: &str = "<script>alert(1)</script>";
const IMG_LABEL_KEY: &str = "<img src=x onerror=alert(2)>";
const SVG_LABEL: &str = "\"'><svg onload=alert(3)>";

/// As hostile as distribution's tag grammar `[\w][\w.-]{0,127}` allows: the longest tag,
/// every punctuation character it permits. Markup characters cannot be in a tag at all.
fn hostile_tag() -> String {
    format!("_{}x", "-.".repeat(63))
}

// ---------------------------------------------------------------------------------------
// Images

/// Writes `bytes` as a blob of the layout in `dir`; returns its descriptor.
fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256_digest(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    write_file(
        &blobs.join(digest.strip_prefix("sha256:").expect("sha256")),
        bytes,
    );
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

/// One image into the layout in `dir`: a layer holding `content`, a config with `extra`
/// merged in; returns the manifest's descriptor.
fn image(dir: &Path, content: &str, arch: &str, extra: Value) -> Value {
    let tar = ustar(&[("hello.txt", content.as_bytes())]);
    let layer = blob(dir, LAYER_MEDIA_TYPE, &tar);
    let mut config = json!({
        "created": "2024-05-01T10:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&tar)] },
    });
    if let (Some(base), Some(more)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            base.insert(k.clone(), v.clone());
        }
    }
    let config = blob(
        dir,
        CONFIG_MEDIA_TYPE,
        serde_json::to_string(&config).expect("config").as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": [layer],
    });
    blob(
        dir,
        MANIFEST_MEDIA_TYPE,
        serde_json::to_string(&manifest)
            .expect("manifest")
            .as_bytes(),
    )
}

/// Names `top` as the layout's `latest`; returns `oci:<dir>:latest`.
fn layout(dir: &Path, mut top: Value) -> String {
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": "latest" });
    write_file(&dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
    write_file(
        &dir.join("index.json"),
        json!({ "schemaVersion": 2, "manifests": [top] }).to_string(),
    );
    format!("oci:{}:latest", dir.display())
}

/// A single-platform image whose layer holds `content`; `(reference, manifest digest)`.
fn single(dir: &Path, content: &str, extra: Value) -> (String, String) {
    let manifest = image(dir, content, "amd64", extra);
    let digest = manifest["digest"].as_str().expect("digest").to_string();
    (layout(dir, manifest), digest)
}

/// An OCI index of a linux/amd64 and a linux/arm64 image.
fn multi_arch(dir: &Path) -> String {
    let mut amd64 = image(dir, "amd64", "amd64", json!({}));
    amd64["platform"] = json!({ "os": "linux", "architecture": "amd64" });
    let mut arm64 = image(dir, "arm64", "arm64", json!({}));
    arm64["platform"] = json!({ "os": "linux", "architecture": "arm64" });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [amd64, arm64],
    });
    let index = blob(
        dir,
        INDEX_MEDIA_TYPE,
        serde_json::to_string(&index).expect("index").as_bytes(),
    );
    layout(dir, index)
}

/// `skopeo copy --all` through the gate as alice.
fn push(gate: &Gate, source: &str, target: &str) {
    gate.push_ok(&format!("{}:{}", ALICE.0, ALICE.1), source, target);
}

/// The real registry behind a gate in basic mode with `RULES`, nothing pushed yet.
fn gated(tmp: &Path) -> (Registry, Gate) {
    let registry = Registry::start(tmp);
    let gate = Gate::start(
        tmp,
        GateConfig::new(&registry.url)
            .basic_auth(&[ALICE, BOB])
            .extra_toml(RULES),
    );
    (registry, gate)
}

/// `gated`, with one image pushed through it as team/app:old.
fn gated_with_old(tmp: &Path) -> (Registry, Gate) {
    let (registry, gate) = gated(tmp);
    let (old, _) = single(&tmp.join("images/old"), "to be deleted", json!({}));
    push(&gate, &old, "team/app:old");
    (registry, gate)
}

/// The real registry behind a gate in basic mode with `RULES`, and images pushed through it.
struct World {
    registry: Registry,
    gate: Gate,
    /// team/app:v1's manifest digest.
    app_v1: String,
    /// Last: dropped after the processes whose logs it holds.
    tmp: TempDir,
}

fn world() -> World {
    let tmp = temp_dir();
    let (registry, gate) = gated(tmp.path());
    let images = tmp.path().join("images");
    let (v1, app_v1) = single(&images.join("v1"), "version one", json!({}));
    let (v2, _) = single(&images.join("v2"), "version two", json!({}));
    let (old, _) = single(&images.join("old"), "to be deleted", json!({}));
    let (vault, _) = single(&images.join("vault"), "hidden", json!({}));
    let (xss, _) = single(
        &images.join("xss"),
        "hostile",
        json!({ "config": {
            "User": SCRIPT_LABEL,
            "Cmd": ["sh", "-c", SVG_LABEL],
            "Labels": { "evil": SCRIPT_LABEL, IMG_LABEL_KEY: SVG_LABEL },
        }}),
    );
    push(&gate, &v1, "team/app:v1");
    push(&gate, &v2, "team/app:v2");
    push(&gate, &old, "team/app:old");
    push(
        &gate,
        &multi_arch(&images.join("multi")),
        "team/tool:latest",
    );
    push(&gate, &vault, &format!("{HIDDEN}:latest"));
    push(&gate, &xss, &format!("team/xss:{}", hostile_tag()));
    World {
        registry,
        gate,
        app_v1,
        tmp,
    }
}

/// The tags the registry itself holds for `repository`, asked directly (not through the
/// gate), so a delete is proved where it matters.
fn registry_tags(registry: &Registry, repository: &str) -> Vec<String> {
    let addr = registry.addr.expect("a TCP registry");
    let mut stream = TcpStream::connect(addr).expect("connect to the registry");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /v2/{repository}/tags/list HTTP/1.0\r\nHost: registry\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    value["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// A plain client, for what a browser does not show

struct Page {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Page {
    async fn read(response: http::Response<hyper::body::Incoming>) -> Page {
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: text(response).await,
        }
    }
}

/// `GET url` with the session cookie if given.
async fn get(client: &HttpsClient, url: &str, cookie: Option<&str>) -> Page {
    let mut builder = request("GET", url);
    if let Some(cookie) = cookie {
        builder = builder.header("Cookie", cookie);
    }
    Page::read(client.send(builder.body(empty()).expect("GET")).await).await
}

/// `POST url` with an urlencoded form, the cookie and an `Origin` if given.
async fn post(
    client: &HttpsClient,
    url: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    form: &str,
) -> Page {
    let mut builder =
        request("POST", url).header("Content-Type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        builder = builder.header("Cookie", cookie);
    }
    if let Some(origin) = origin {
        builder = builder.header("Origin", origin);
    }
    Page::read(
        client
            .send(builder.body(full(form.to_string())).expect("POST"))
            .await,
    )
    .await
}

/// Logs in through the form; returns the `Set-Cookie` line and the `name=value` to send.
async fn login(
    client: &HttpsClient,
    gate: &Gate,
    (user, password): (&str, &str),
) -> (String, String) {
    let page = post(
        client,
        &gate.url("/ui/login"),
        None,
        Some(&format!("https://{}", gate.authority())),
        &format!("user={user}&password={password}"),
    )
    .await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "login as {user}: {}",
        page.body
    );
    assert_eq!(page.headers["location"], "/ui/");
    let set_cookie = page.headers["set-cookie"]
        .to_str()
        .expect("ASCII cookie")
        .to_string();
    let pair = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    (set_cookie, pair)
}

/// The CSRF token a page embeds in its forms.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no CSRF field in:\n{html}"))
        + marker.len();
    html[start..].split('"').next().expect("value").to_string()
}

// ---------------------------------------------------------------------------------------
// In a real browser

#[test]
fn in_chromium_each_user_sees_exactly_their_repositories_and_deletes_only_with_permission() {
    let w = world();
    let browser = Browser::start(&w.tmp.path().join("browser"));
    let ui = |path: &str| w.gate.url(&format!("/ui/{path}"));
    // One browser for every step: a check that fails is recorded and the walk goes on, so
    // one run shows every step that broke. Only a step the next ones stand on (a page that
    // must load, an element to click) stops it.
    let mut failures: Vec<String> = Vec::new();
    let text_of = |css: &str| browser.find(css).map(|e| browser.text(&e));

    // Anonymous may pull nothing here: the browser lands on the login form.
    browser.goto(&ui(""));
    if !browser.url().ends_with("/ui/login") {
        failures.push(format!(
            "anonymous is not sent to the login: {}",
            browser.url()
        ));
    }
    browser.screenshot("01-login");

    let log_in = |(user, password): (&str, &str)| {
        browser.goto(&ui("login"));
        browser.type_into(&browser.get("#user"), user);
        browser.type_into(&browser.get("#password"), password);
        browser.click(&browser.get("#submit"));
        browser.wait_for_url("/ui/");
    };

    // A wrong password stays on the form and says so.
    log_in_fails(&browser, &ui("login"));

    // bob: team/ only; the hidden repository is nowhere in the page's source.
    log_in(BOB);
    let names: Vec<String> = browser
        .find_all("a.repository")
        .iter()
        .map(|a| browser.text(a))
        .collect();
    if names != ["team/app", "team/tool", "team/xss"] {
        failures.push(format!("bob's list: {names:?}"));
    }
    let source = browser.source();
    if source.contains("secret") || source.contains("vault") {
        failures.push(format!("bob's list shows the hidden repository:\n{source}"));
    }
    // The session cookie is out of reach of scripts (HttpOnly).
    let cookie = browser.execute("return document.cookie;");
    if cookie != json!("") {
        failures.push(format!("a script reads the cookie: {cookie}"));
    }
    // The embedded script ran under the CSP: it showed no copy button here, but it filters.
    browser.type_into(&browser.get("#filter"), "tool");
    let items = browser.find_all("li[data-name]");
    let shown: Vec<bool> = items.iter().map(|li| browser.displayed(li)).collect();
    if shown != [false, true, false] {
        failures.push(format!("the live filter (ui.js) did not run: {shown:?}"));
    }
    browser.screenshot("02-bob-repositories-filtered");

    // A tag: digest, layers, the pull line with its copy button (shown by ui.js).
    browser.goto(&ui("repo/team/app"));
    if browser.find("a.delete").is_some() {
        failures.push("bob is offered a delete".into());
    }
    browser.click(&browser.get("a.tag[href$='/-/tag/v1']"));
    browser.wait_for_url("/ui/repo/team/app/-/tag/v1");
    let digest = text_of("#digest");
    if digest.as_deref() != Some(w.app_v1.as_str()) {
        failures.push(format!("the tag's digest: {digest:?}, not {}", w.app_v1));
    }
    if browser.find("#layers").is_none() {
        failures.push("no layers on the tag page".into());
    }
    if !browser
        .find("button.copy")
        .is_some_and(|copy| browser.displayed(&copy))
    {
        failures.push("copy button not shown: ui.js blocked?".into());
    }
    let pull = format!("docker pull {}/team/app:v1", w.gate.authority());
    if !browser.source().contains(&pull) {
        failures.push(format!("no `{pull}` on the tag page"));
    }
    if browser.find("#delete").is_some() {
        failures.push("bob's tag page offers a delete".into());
    }
    browser.screenshot("03-bob-tag");

    // bob may not delete, even by going to the form directly.
    browser.goto(&ui("repo/team/app/-/delete/old"));
    if browser.find("#confirm").is_some() {
        failures.push("bob is asked to confirm a delete".into());
    }
    let message = text_of("#message");
    if !message
        .as_deref()
        .is_some_and(|m| m.contains("do not allow deleting"))
    {
        failures.push(format!("bob's delete form says {message:?}"));
    }
    browser.screenshot("04-bob-delete-refused");
    // The hidden repository answers like one that does not exist.
    browser.goto(&ui(&format!("repo/{HIDDEN}")));
    let source = browser.source();
    if !source.contains("There is no such page") || source.contains("vault") {
        failures.push(format!("the hidden repository's page:\n{source}"));
    }

    // Hostile labels render as text: no dialog opens, and the text is there to read.
    browser.goto(&ui(&format!("repo/team/xss/-/tag/{}", hostile_tag())));
    if let Some(alert) = browser.alert_text() {
        failures.push(format!("a label's script ran: {alert}"));
    }
    let labels = text_of("#labels").unwrap_or_default();
    if !(labels.contains(SCRIPT_LABEL) && labels.contains(IMG_LABEL_KEY)) {
        failures.push(format!("the labels do not read as text: {labels}"));
    }
    browser.screenshot("05-hostile-labels-escaped");

    // Logging out ends the session.
    browser.goto(&ui(""));
    browser.click(&browser.get("#logout"));
    browser.wait_for_url("/ui/login");
    browser.goto(&ui(""));
    if !browser.url().ends_with("/ui/login") {
        failures.push(format!(
            "the session outlived the logout: {}",
            browser.url()
        ));
    }

    // alice sees everything, the platforms of the index, and deletes.
    log_in(ALICE);
    if !browser.source().contains(HIDDEN) {
        failures.push("alice does not see the hidden repository".into());
    }
    browser.goto(&ui("repo/team/tool/-/tag/latest"));
    let platforms = text_of("#platforms").unwrap_or_default();
    if !(platforms.contains("linux/amd64") && platforms.contains("linux/arm64")) {
        failures.push(format!("the index's platforms: {platforms}"));
    }
    browser.screenshot("06-alice-multi-arch");
    browser.goto(&ui("repo/team/app"));
    browser.screenshot("07-alice-tags");
    browser.click(&browser.get("tr[data-tag='old'] a.delete"));
    browser.wait_for_url("/ui/repo/team/app/-/delete/old");
    browser.screenshot("08-alice-confirm-delete");
    browser.click(&browser.get("#confirm"));
    browser.wait_for_url("/ui/repo/team/app?deleted=old");
    let deleted = text_of("#deleted");
    if !deleted
        .as_deref()
        .is_some_and(|d| d.contains("team/app:old"))
    {
        failures.push(format!("the page after the delete says {deleted:?}"));
    }
    if browser.find("tr[data-tag='old']").is_some() {
        failures.push("the deleted tag is still listed".into());
    }
    browser.screenshot("09-alice-deleted");
    let mut left = registry_tags(&w.registry, "team/app");
    left.sort();
    if left != ["v1", "v2"] {
        failures.push(format!("the registry still has the deleted tag: {left:?}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A wrong password: the form again, with the reason, and no session.
fn log_in_fails(browser: &Browser, login_url: &str) {
    browser.goto(login_url);
    browser.type_into(&browser.get("#user"), BOB.0);
    browser.type_into(&browser.get("#password"), "wrong");
    browser.click(&browser.get("#submit"));
    assert!(browser
        .text(&browser.wait_for("#login-error"))
        .contains("Wrong user name or password"));
    assert!(browser.find("#logout").is_none());
}

// ---------------------------------------------------------------------------------------
// With a plain client

#[test]
fn ui_pages_carry_the_security_headers_and_no_inline_script() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // Security headers on the pages (and HSTS, nosniff from the gate).
        let page = get(&client, &gate.url("/ui/login"), None).await;
        assert_eq!(page.status, StatusCode::OK);
        // Every header is checked, whichever fail.
        let mut failures = Vec::new();
        let csp = header_text(&page, "content-security-policy");
        if !(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'")) {
            failures.push(format!("content-security-policy: {csp}"));
        }
        if csp.contains("unsafe-inline") {
            failures.push(format!("content-security-policy allows inline: {csp}"));
        }
        for (name, expected) in [
            ("x-frame-options", "DENY"),
            ("referrer-policy", "same-origin"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
        ] {
            let value = header_text(&page, name);
            if value != expected {
                failures.push(format!("{name}: {value:?}, expected {expected:?}"));
            }
        }
        if !page.headers.contains_key("strict-transport-security") {
            failures.push("no strict-transport-security".to_string());
        }
        let content_type = header_text(&page, "content-type");
        if !content_type.starts_with("text/html") {
            failures.push(format!("content-type: {content_type}"));
        }
        // No inline script in the page (the CSP would block it anyway).
        let scripts = page.body.matches("<script").count();
        if scripts != 1
            || !page
                .body
                .contains("<script src=\"/ui/static/ui.js\" defer></script>")
        {
            failures.push(format!(
                "{scripts} scripts, not ui.js alone:\n{}",
                page.body
            ));
        }
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

#[test]
fn a_failed_or_cross_site_login_sets_no_cookie() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    let origin = format!("https://{}", gate.authority());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // A failed login sets nothing.
        let failed = post(
            &client,
            &gate.url("/ui/login"),
            None,
            Some(&origin),
            "user=alice&password=nope",
        )
        .await;
        assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
        assert!(!failed.headers.contains_key("set-cookie"));
        // A login form posted from another site is refused before the password is checked.
        let foreign = post(
            &client,
            &gate.url("/ui/login"),
            None,
            Some("https://evil.example"),
            "user=alice&password=alice-secret",
        )
        .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN);
        assert!(!foreign.headers.contains_key("set-cookie"));
    });
}

#[test]
fn the_session_cookie_is_http_only_secure_strict_and_lasts_eight_hours() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (set_cookie, alice) = login(&client, &gate, ALICE).await;
        let missing: Vec<&str> = [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/ui/",
            "Max-Age=28800",
        ]
        .into_iter()
        .filter(|flag| !set_cookie.contains(flag))
        .collect();
        assert!(missing.is_empty(), "{missing:?} missing: {set_cookie}");
        assert!(alice.starts_with("registry_gate_session=v1."));
    });
}

/// alice logged in, at the confirmation page of team/app:old's delete: her session cookie,
/// the digest the form carries and the session's CSRF token.
async fn alice_at_the_delete_of_old(client: &HttpsClient, gate: &Gate) -> (String, String, String) {
    let (_, alice) = login(client, gate, ALICE).await;
    let confirm = get(
        client,
        &gate.url("/ui/repo/team/app/-/delete/old"),
        Some(&alice),
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    let marker = "name=\"digest\" value=\"";
    let start = confirm.body.find(marker).expect("digest field") + marker.len();
    let digest = confirm.body[start..]
        .split('"')
        .next()
        .expect("digest")
        .to_string();
    let token = csrf_of(&confirm.body);
    (alice, digest, token)
}

/// `POST /ui/logout` with `cookie` and `form`, from the gate's own origin.
async fn logout(client: &HttpsClient, gate: &Gate, cookie: &str, form: &str) -> Page {
    let origin = format!("https://{}", gate.authority());
    post(
        client,
        &gate.url("/ui/logout"),
        Some(cookie),
        Some(&origin),
        form,
    )
    .await
}

#[test]
fn a_delete_without_its_csrf_token_origin_or_session_is_refused() {
    let tmp = temp_dir();
    let (registry, gate) = gated_with_old(tmp.path());
    let origin = format!("https://{}", gate.authority());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // The CSRF token of alice's session, from the confirmation page.
        let (alice, digest, token) = alice_at_the_delete_of_old(&client, &gate).await;
        let delete_url = gate.url("/ui/repo/team/app/-/delete/old");

        // Refused: no token, a wrong one, another session's, the right one from another site,
        // and no session at all. The tag survives every one of them.
        let (_, other_alice) = login(&client, &gate, ALICE).await;
        let other_token = csrf_of(
            &get(&client, &gate.url("/ui/"), Some(&other_alice))
                .await
                .body,
        );
        assert_ne!(other_token, token, "two logins share a CSRF token");
        let (a, o) = (alice.as_str(), origin.as_str());
        let mut failures = Vec::new();
        for (cookie, from, form, why) in [
            (Some(a), Some(o), format!("digest={digest}"), "no token"),
            (
                Some(a),
                Some(o),
                format!("csrf=AAAA&digest={digest}"),
                "a wrong token",
            ),
            (
                Some(a),
                Some(o),
                format!("csrf={other_token}&digest={digest}"),
                "another session's token",
            ),
            (
                Some(a),
                Some("https://evil.example"),
                format!("csrf={token}&digest={digest}"),
                "another origin",
            ),
            (
                None,
                Some(o),
                format!("csrf={token}&digest={digest}"),
                "no session",
            ),
        ] {
            let refused = post(&client, &delete_url, cookie, from, &form).await;
            if refused.status != StatusCode::FORBIDDEN {
                failures.push(format!("{why}: {} {}", refused.status, refused.body));
            }
            if !registry_tags(&registry, "team/app").contains(&"old".to_string()) {
                failures.push(format!("deleted with {why}"));
                break;
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");

        // With everything right, the tag goes: the refusals were for their reasons alone.
        let done = post(
            &client,
            &delete_url,
            Some(&alice),
            Some(&origin),
            &format!("csrf={token}&digest={digest}"),
        )
        .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.headers["location"], "/ui/repo/team/app?deleted=old");
        assert!(!registry_tags(&registry, "team/app").contains(&"old".to_string()));
    });
}

/// A tampered cookie is no session: the visitor is anonymous again.
#[test]
fn a_tampered_session_cookie_is_no_session() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (_, alice) = login(&client, &gate, ALICE).await;
        let page = get(&client, &gate.url("/ui/"), Some(&alice)).await;
        assert_eq!(page.status, StatusCode::OK, "the untampered cookie");
        let tampered = alice.replacen("v1.", "v1.x", 1);
        let page = get(&client, &gate.url("/ui/"), Some(&tampered)).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.headers["location"], "/ui/login");
    });
}

/// bob has a session and its token, but no delete permission.
#[test]
fn a_valid_csrf_token_deletes_nothing_without_the_delete_permission() {
    let tmp = temp_dir();
    let (registry, gate) = gated_with_old(tmp.path());
    let origin = format!("https://{}", gate.authority());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (_, digest, _) = alice_at_the_delete_of_old(&client, &gate).await;
        let (_, bob) = login(&client, &gate, BOB).await;
        let bob_token = csrf_of(&get(&client, &gate.url("/ui/"), Some(&bob)).await.body);
        let refused = post(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&bob),
            Some(&origin),
            &format!("csrf={bob_token}&digest={digest}"),
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(registry_tags(&registry, "team/app").contains(&"old".to_string()));
    });
}

/// Logging out needs the token too, then clears the cookie.
#[test]
fn logging_out_needs_the_csrf_token_and_then_clears_the_cookie() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (_, alice) = login(&client, &gate, ALICE).await;
        let token = csrf_of(&get(&client, &gate.url("/ui/"), Some(&alice)).await.body);
        let kept = logout(&client, &gate, &alice, "").await;
        assert_eq!(kept.status, StatusCode::FORBIDDEN);
        let out = logout(&client, &gate, &alice, &format!("csrf={token}")).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert!(header_text(&out, "set-cookie").contains("Max-Age=0"));
    });
}

/// Clearing the cookie only asks the browser to forget it: a copy taken before the logout
/// (another tab's, a shared machine's, a proxy log's) used to work for the rest of its 8
/// hours. The logout ends the session in the gate; other logins of the same user go on.
#[test]
fn a_logout_ends_the_session_for_every_copy_of_its_cookie() {
    let tmp = temp_dir();
    let (_registry, gate) = gated(tmp.path());
    runtime().block_on(async {
        let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
        let (_, alice) = login(&client, &gate, ALICE).await;
        let (_, elsewhere) = login(&client, &gate, ALICE).await;
        let copy = alice.clone();
        let page = get(&client, &gate.url("/ui/"), Some(&alice)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let token = csrf_of(&page.body);

        let out = logout(&client, &gate, &alice, &format!("csrf={token}")).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
        assert!(header_text(&out, "set-cookie").contains("Max-Age=0"));

        let page = get(&client, &gate.url("/ui/"), Some(&copy)).await;
        assert_eq!(
            page.status,
            StatusCode::SEE_OTHER,
            "the logged-out session still works: {}",
            page.body
        );
        assert_eq!(page.headers["location"], "/ui/login");
        let page = get(&client, &gate.url("/ui/"), Some(&elsewhere)).await;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "the logout ended alice's other session"
        );
        let (_, back) = login(&client, &gate, ALICE).await;
        let page = get(&client, &gate.url("/ui/"), Some(&back)).await;
        assert_eq!(page.status, StatusCode::OK, "a new login after the logout");
    });
}

fn header_text<'a>(page: &'a Page, name: &str) -> &'a str {
    page.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii"))
        .unwrap_or_default()
}

#[test]
fn a_hidden_repository_appears_in_no_page_redirect_or_listing() {
    let w = world();
    let gate = &w.gate;
    runtime().block_on(async {
        let client = gate.client(Proto::Http2);
        let (_, bob) = login(&client, gate, BOB).await;
        let index = get(&client, &gate.url("/ui/"), Some(&bob)).await;
        assert_eq!(index.status, StatusCode::OK);
        assert!(
            index.body.contains("team/app") && !index.body.contains(HIDDEN),
            "{}",
            index.body
        );
        // The server-side search does not find it either.
        let search = get(&client, &gate.url("/ui/?q=vault"), Some(&bob)).await;
        assert!(!search.body.contains(HIDDEN) && search.body.contains("No repositories match"));
        // Its pages answer exactly like those of a repository that does not exist.
        let nowhere = get(&client, &gate.url("/ui/repo/no/such"), Some(&bob)).await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
        for path in [
            format!("/ui/repo/{HIDDEN}"),
            format!("/ui/repo/{HIDDEN}/-/tag/latest"),
            format!("/ui/repo/{HIDDEN}/-/delete/latest"),
        ] {
            let page = get(&client, &gate.url(&path), Some(&bob)).await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(page.body, nowhere.body, "{path} tells itself apart");
            assert!(!page.headers.contains_key("location"));
        }
        // The API's catalog agrees (the same rules).
        let catalog = client
            .send(
                request("GET", &gate.url("/v2/_catalog"))
                    .header("Authorization", basic(BOB))
                    .body(empty())
                    .expect("GET"),
            )
            .await;
        assert!(!text(catalog).await.contains(HIDDEN));
        // Anonymous: no list, only the way to the login.
        let anonymous = get(&client, &gate.url("/ui/"), None).await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        assert_eq!(anonymous.headers["location"], "/ui/login");
        let page = get(&client, &gate.url(&format!("/ui/repo/{HIDDEN}")), None).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        // alice sees it.
        let (_, alice) = login(&client, gate, ALICE).await;
        assert!(get(&client, &gate.url("/ui/"), Some(&alice))
            .await
            .body
            .contains(HIDDEN));
    });
}

fn basic((user, password): (&str, &str)) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn hostile_labels_and_the_longest_tag_reach_the_html_only_escaped() {
    let w = world();
    let gate = &w.gate;
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (_, alice) = login(&client, gate, ALICE).await;
        let tag = hostile_tag();
        let repo = get(&client, &gate.url("/ui/repo/team/xss"), Some(&alice)).await;
        assert_eq!(repo.status, StatusCode::OK, "{}", repo.body);
        assert!(
            repo.body
                .contains(&format!("/ui/repo/team/xss/-/tag/{tag}")),
            "{}",
            repo.body
        );
        let page = get(
            &client,
            &gate.url(&format!("/ui/repo/team/xss/-/tag/{tag}")),
            Some(&alice),
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for raw in [
            SCRIPT_LABEL,
            IMG_LABEL_KEY,
            SVG_LABEL,
            "<svg",
            "<img",
            "<script>alert",
        ] {
            assert!(
                !page.body.contains(raw),
                "{raw} unescaped in:\n{}",
                page.body
            );
        }
        for escaped in [
            "&lt;script&gt;alert(1)&lt;/script&gt;",
            "&lt;img src=x onerror=alert(2)&gt;",
            "&quot;&#39;&gt;&lt;svg onload=alert(3)&gt;",
        ] {
            assert!(
                page.body.contains(escaped),
                "{escaped} missing from:\n{}",
                page.body
            );
        }
        // Markup cannot even be pushed as a tag: the gate refuses the path.
        let put = client
            .send(
                request("PUT", &gate.url("/v2/team/xss/manifests/%3Cscript%3E"))
                    .header("Authorization", basic(ALICE))
                    .header("Content-Type", MANIFEST_MEDIA_TYPE)
                    .body(full("{}"))
                    .expect("PUT"),
            )
            .await;
        assert!(put.status().is_client_error(), "{}", put.status());
    });
}

/// A repository with more tags than a page holds: 25 to a page, each read in full, a pager
/// to the rest, and a filter answered by the gate, so neither needs JavaScript.
#[test]
fn a_repository_with_many_tags_is_shown_a_page_at_a_time_and_filtered_by_the_gate() {
    let w = world();
    let gate = &w.gate;
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // Thirty more tags for team/app:v1's manifest: team/app then holds 33, in the
        // registry's (lexical) order many00 … many29, old, v1, v2.
        let v1 = client
            .send(
                request("GET", &gate.url("/v2/team/app/manifests/v1"))
                    .header("Authorization", basic(ALICE))
                    .header("Accept", MANIFEST_MEDIA_TYPE)
                    .body(empty())
                    .expect("GET"),
            )
            .await;
        assert_eq!(v1.status(), StatusCode::OK);
        let manifest = text(v1).await;
        for i in 0..30 {
            let put = client
                .send(
                    request(
                        "PUT",
                        &gate.url(&format!("/v2/team/app/manifests/many{i:02}")),
                    )
                    .header("Authorization", basic(ALICE))
                    .header("Content-Type", MANIFEST_MEDIA_TYPE)
                    .body(full(manifest.clone()))
                    .expect("PUT"),
                )
                .await;
            assert_eq!(put.status(), StatusCode::CREATED, "many{i:02}");
        }
        let (_, alice) = login(&client, gate, ALICE).await;
        let rows = |page: &Page| page.body.matches("<tr data-tag=").count();
        let page = |query: &'static str| {
            let (client, url, cookie) = (
                &client,
                gate.url(&format!("/ui/repo/team/app{query}")),
                &alice,
            );
            async move { get(client, &url, Some(cookie)).await }
        };

        let first = page("").await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        assert_eq!(rows(&first), 25, "{}", first.body);
        assert!(!first.body.contains("not read"), "{}", first.body);
        // Every row read in full: the digest, for all 25 (each is team/app:v1's manifest).
        assert_eq!(
            first
                .body
                .matches(&format!("title=\"{}\"", w.app_v1))
                .count(),
            25,
            "{}",
            first.body
        );
        assert!(first.body.contains("Tags 1–25 of 33"), "{}", first.body);
        assert!(
            first
                .body
                .contains("rel=\"next\" href=\"/ui/repo/team/app?page=2\""),
            "{}",
            first.body
        );
        assert!(!first.body.contains("rel=\"prev\""));

        let second = page("?page=2").await;
        assert_eq!(rows(&second), 8, "{}", second.body);
        assert!(second.body.contains("Tags 26–33 of 33"), "{}", second.body);
        assert!(second.body.contains("data-tag=\"v2\""));
        assert!(second
            .body
            .contains("rel=\"prev\" href=\"/ui/repo/team/app?page=1\""));
        assert!(!second.body.contains("rel=\"next\""));
        // Past the end is the last page, not an error.
        let beyond = page("?page=99").await;
        assert!(beyond.body.contains("Tags 26–33 of 33"), "{}", beyond.body);

        let filtered = page("?q=many1").await;
        assert_eq!(rows(&filtered), 10, "{}", filtered.body);
        assert!(!filtered.body.contains("id=\"pager\""));
        assert!(filtered.body.contains("value=\"many1\""));
        // A filter no tag can match is answered, escaped, and put in no link.
        let hostile = page("?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
        assert_eq!(hostile.status, StatusCode::OK);
        assert!(hostile.body.contains("No tags match"), "{}", hostile.body);
        assert!(!hostile.body.contains("<script>alert"), "{}", hostile.body);
        assert!(hostile
            .body
            .contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
    });
}

#[test]
fn browser_paths_are_never_forwarded_to_the_registry() {
    let tmp = temp_dir();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{}", "1".repeat(64)), "size": 2 },
        "layers": [],
    })
    .to_string();
    let digest = sha256_digest(manifest.as_bytes());
    let served_digest = digest.clone();
    // A registry that has team/app:old and refuses deletes, as distribution does without
    // storage.delete.enabled.
    let recorder = Recorder::start(move |r| match (r.method.as_str(), r.uri.as_str()) {
        ("GET", uri) if uri.starts_with("/v2/_catalog") => {
            Reply::ok_json().body(br#"{"repositories":["team/app"]}"#.to_vec())
        }
        ("GET", "/v2/team/app/tags/list") => {
            Reply::ok_json().body(br#"{"name":"team/app","tags":["old"]}"#.to_vec())
        }
        ("GET", uri) if uri.starts_with("/v2/team/app/manifests/") => Reply::status(200)
            .header("Content-Type", MANIFEST_MEDIA_TYPE)
            .header("Docker-Content-Digest", &served_digest)
            .body(manifest.clone().into_bytes()),
        ("DELETE", _) => Reply::status(405)
            .header("Content-Type", "application/json")
            .body(
                br#"{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}"#
                    .to_vec(),
            ),
        _ => Reply::status(404),
    });
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .basic_auth(&[ALICE])
            .extra_toml(RULES),
    );
    let origin = format!("https://{}", gate.authority());
    // Every page and every forwarded request is checked, whichever fail.
    let mut failures = Vec::new();
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let (_, alice) = login(&client, &gate, ALICE).await;
        for path in [
            "/ui",
            "/ui/",
            "/ui/login",
            "/ui/static/ui.css",
            "/ui/static/ui.js",
            "/ui/repo/team/app",
            "/ui/repo/team/app/-/tag/old",
            "/ui/repo/team/app/-/delete/old",
            "/ui/nothing/here",
            "/ui/repo/team/app/-/tag/%3Cx%3E",
            "/ui/../v2/_catalog",
            "/ui/repo/team/../../v2/team/app/manifests/old",
        ] {
            let page = get(&client, &gate.url(path), Some(&alice)).await;
            if page.status.as_u16() >= 500 {
                failures.push(format!("{path}: {}", page.status));
            }
        }
        // A registry with deletes disabled: the browser says so.
        let confirm = get(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&alice),
        )
        .await;
        let token = csrf_of(&confirm.body);
        let refused = post(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&alice),
            Some(&origin),
            &format!("csrf={token}&digest={digest}"),
        )
        .await;
        if refused.status != StatusCode::METHOD_NOT_ALLOWED
            || !refused.body.contains("storage.delete.enabled")
        {
            failures.push(format!(
                "a delete the registry refuses: {} {}",
                refused.status, refused.body
            ));
        }
    });
    let seen = recorder.requests();
    if seen.is_empty() {
        failures.push("the pages read nothing from the registry".into());
    }
    for r in &seen {
        if !r.uri.starts_with("/v2/") {
            failures.push(format!("forwarded a non-API path: {r:#?}"));
        }
        if r.uri.contains("/ui") {
            failures.push(format!("a browser path reached the registry: {r:#?}"));
        }
        if r.header("cookie").is_some() {
            failures.push(format!("the session cookie reached the registry: {r:#?}"));
        }
        if r.header("authorization").is_some() {
            failures.push(format!("credentials reached the registry: {r:#?}"));
        }
    }
    let delete = format!("/v2/team/app/manifests/{digest}");
    if !seen.iter().any(|r| r.method == "DELETE" && r.uri == delete) {
        failures.push(format!(
            "the browser's delete never reached the registry as DELETE {delete}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// With the browser off, its path is just an unknown path: refused, never forwarded.
#[test]
fn with_the_browser_off_its_path_is_refused_and_never_forwarded() {
    let tmp = temp_dir();
    let recorder = Recorder::start(|_| Reply::ok_json());
    let off = Gate::start(
        tmp.path(),
        GateConfig::new(recorder.url())
            .basic_auth(&[ALICE])
            .extra_toml("[ui]\nenabled = false\n"),
    );
    runtime().block_on(async {
        let page = get(&off.client(Proto::Http1), &off.url("/ui/"), None).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(!page.body.contains("<html"));
    });
    assert_eq!(recorder.requests().len(), 0, "{:#?}", recorder.requests());
}

#[test]
fn browser_logins_are_throttled_like_any_login() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url).basic_auth(&[ALICE]),
    );
    let origin = format!("https://{}", gate.authority());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        let wrong = || async {
            post(
                &client,
                &gate.url("/ui/login"),
                None,
                Some(&origin),
                "user=alice&password=wrong",
            )
            .await
        };
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(wrong().await.status.as_u16());
        }
        assert_eq!(statuses, [401; 6], "the free failures");
        // Four seconds of lockout, so that what follows comes within it.
        util::lengthen_lockout(401, || async { wrong().await.status.as_u16() }).await;
        let page = wrong().await;
        assert_eq!(
            page.status,
            StatusCode::TOO_MANY_REQUESTS,
            "never throttled"
        );
        assert!(page.headers.contains_key("retry-after"));
        assert!(page.body.contains("Too many failed logins"));
        // Even the right password waits now.
        let right = post(
            &client,
            &gate.url("/ui/login"),
            None,
            Some(&origin),
            "user=alice&password=alice-secret",
        )
        .await;
        assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
    });
}

/// `registry-gate token ARGS --config <the gate's config>`, once the gate has reloaded the
/// token file; its standard output.
fn token_command(gate: &Gate, args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = gate.change_with(&all);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_access_token_logs_in_within_its_scope_and_its_revocation_ends_the_session() {
    let w = world();
    let gate = &w.gate;
    let secret = token_command(
        gate,
        &[
            "create",
            "--name",
            "ui-robot",
            "--repositories",
            "team/*",
            "--actions",
            "pull",
        ],
    );
    assert!(secret.starts_with("rgt_"), "no secret printed: {secret}");
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // Any user name: the secret names the token.
        let (_, robot) = login(&client, gate, ("whoever", &secret)).await;
        let index = get(&client, &gate.url("/ui/"), Some(&robot)).await;
        assert_eq!(index.status, StatusCode::OK);
        assert!(index.body.contains("token:ui-robot"), "{}", index.body);
        assert!(
            index.body.contains("team/app") && !index.body.contains(HIDDEN),
            "{}",
            index.body
        );
        // The scope has no delete: no delete link, and the form is refused.
        let repo = get(&client, &gate.url("/ui/repo/team/app"), Some(&robot)).await;
        assert!(!repo.body.contains("/-/delete/"), "{}", repo.body);
        let confirm = get(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&robot),
        )
        .await;
        assert_eq!(confirm.status, StatusCode::FORBIDDEN);

        token_command(gate, &["revoke", "ui-robot"]);
        let after = get(&client, &gate.url("/ui/"), Some(&robot)).await;
        assert_eq!(
            after.status,
            StatusCode::SEE_OTHER,
            "the session outlived its token"
        );
        assert_eq!(after.headers["location"], "/ui/login");
        // And the secret no longer logs in.
        let again = post(
            &client,
            &gate.url("/ui/login"),
            None,
            Some(&format!("https://{}", gate.authority())),
            &format!("user=whoever&password={secret}"),
        )
        .await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
        assert!(
            again.body.contains("may no longer be used"),
            "{}",
            again.body
        );
    });
}

#[test]
fn a_protected_tag_cannot_be_deleted_from_the_browser_either() {
    let tmp = temp_dir();
    let registry = Registry::start(tmp.path());
    let protect = "\n[[protect]]\nrepositories = [\"team/*\"]\ntags = [\"v*\"]\n";
    let gate = Gate::start(
        tmp.path(),
        GateConfig::new(&registry.url)
            .basic_auth(&[ALICE, BOB])
            .extra_toml(&format!("{RULES}{protect}")),
    );
    let (v1, _) = single(&tmp.path().join("images/v1"), "version one", json!({}));
    push(&gate, &v1, "team/app:v1");
    // Another tag on the same manifest: deleting it by digest would take v1 along.
    push(&gate, &v1, "team/app:copy");
    runtime().block_on(async {
        let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
        let (_, alice) = login(&client, &gate, ALICE).await;
        let origin = format!("https://{}", gate.authority());
        for tag in ["v1", "copy"] {
            let url = gate.url(&format!("/ui/repo/team/app/-/delete/{tag}"));
            let confirm = get(&client, &url, Some(&alice)).await;
            assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
            let token = csrf_of(&confirm.body);
            let marker = "name=\"digest\" value=\"";
            let start = confirm.body.find(marker).expect("digest field") + marker.len();
            let digest = confirm.body[start..].split('"').next().expect("digest");
            let refused = post(
                &client,
                &url,
                Some(&alice),
                Some(&origin),
                &format!("csrf={token}&digest={digest}"),
            )
            .await;
            assert_eq!(
                refused.status,
                StatusCode::CONFLICT,
                "{tag}: {}",
                refused.body
            );
            assert!(refused.body.contains("Protected tag"), "{}", refused.body);
        }
    });
    let mut tags = registry_tags(&registry, "team/app");
    tags.sort();
    assert_eq!(tags, ["copy", "v1"], "a protected manifest was deleted");
}

/// The manifest digest a tag points at, asked through the gate as alice.
async fn manifest_digest(client: &HttpsClient, gate: &Gate, repository: &str, tag: &str) -> String {
    let response = client
        .send(
            request(
                "HEAD",
                &gate.url(&format!("/v2/{repository}/manifests/{tag}")),
            )
            .header("Authorization", basic(ALICE))
            .header("Accept", MANIFEST_MEDIA_TYPE)
            .body(empty())
            .expect("HEAD"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{repository}:{tag}");
    response.headers()["docker-content-digest"]
        .to_str()
        .expect("ASCII digest")
        .to_string()
}

/// The rows of the activity table, newest first; each starts with its action.
fn activity_rows(html: &str) -> Vec<&str> {
    html.split("<tr class=\"")
        .skip(1)
        .map(|row| row.split("</tr>").next().unwrap_or(row))
        .collect()
}

#[test]
fn the_activity_page_shows_visible_pushes_and_deletes_with_their_user_and_nothing_hidden() {
    let w = world();
    let gate = &w.gate;
    let origin = format!("https://{}", gate.authority());
    runtime().block_on(async {
        let client = gate.client(Proto::Http1);
        // Deletes through the API, by digest: team/app:v1, then the hidden repository's image.
        let hidden_digest = manifest_digest(&client, gate, HIDDEN, "latest").await;
        for (repository, digest) in [("team/app", w.app_v1.as_str()), (HIDDEN, &hidden_digest)] {
            let deleted = client
                .send(
                    request(
                        "DELETE",
                        &gate.url(&format!("/v2/{repository}/manifests/{digest}")),
                    )
                    .header("Authorization", basic(ALICE))
                    .body(empty())
                    .expect("DELETE"),
                )
                .await;
            assert_eq!(deleted.status(), StatusCode::ACCEPTED, "{repository}");
        }
        // And one through the browser: team/app:old, by alice.
        let (_, alice) = login(&client, gate, ALICE).await;
        let confirm = get(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&alice),
        )
        .await;
        let old_digest = manifest_digest(&client, gate, "team/app", "old").await;
        let done = post(
            &client,
            &gate.url("/ui/repo/team/app/-/delete/old"),
            Some(&alice),
            Some(&origin),
            &format!("csrf={}&digest={old_digest}", csrf_of(&confirm.body)),
        )
        .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);

        // What each user sees is checked, whichever fail.
        let mut failures = Vec::new();

        // bob may pull team/** only: he sees alice's changes there, newest first.
        let (_, bob) = login(&client, gate, BOB).await;
        let index = get(&client, &gate.url("/ui/"), Some(&bob)).await;
        if !index.body.contains("href=\"/ui/activity\"") {
            failures.push(format!("no link to the activity page:\n{}", index.body));
        }
        let page = get(&client, &gate.url("/ui/activity"), Some(&bob)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        if header_text(&page, "cache-control") != "no-store" {
            failures.push(format!(
                "bob's activity page: cache-control {:?}",
                header_text(&page, "cache-control")
            ));
        }
        if page.body.contains(HIDDEN)
            || page.body.contains("secret")
            || page.body.contains(&hidden_digest)
        {
            failures.push(format!("the hidden repository shows:\n{}", page.body));
        }
        let rows = activity_rows(&page.body);
        assert!(rows.len() >= 7, "{}", page.body);
        let (browser_delete, api_delete) = (rows[0], rows[1]);
        for (row, what) in [
            (
                browser_delete,
                "/ui/repo/team/app\">team/app</a></td><td>old</td>",
            ),
            (api_delete, w.app_v1.as_str()),
        ] {
            if !row.starts_with("delete\"") {
                failures.push(format!("not a delete: {row}"));
            }
            if !row.contains(what) {
                failures.push(format!("{what} missing from {row}"));
            }
            if !row.contains("<td class=\"who\">alice</td>") || !row.contains("<td>127.0.0.1</td>")
            {
                failures.push(format!("not alice from 127.0.0.1: {row}"));
            }
        }
        match rows
            .iter()
            .find(|row| row.contains("href=\"/ui/repo/team/app/-/tag/v1\""))
        {
            None => failures.push(format!("no push of team/app:v1 in:\n{}", page.body)),
            Some(v1_push) => {
                if !v1_push.starts_with("push\"")
                    || !v1_push.contains("<td class=\"who\">alice</td>")
                    || !v1_push.contains(&w.app_v1)
                {
                    failures.push(format!("not alice's push of {}: {v1_push}", w.app_v1));
                }
            }
        }
        let pushes = rows.iter().filter(|row| row.starts_with("push\"")).count();
        let first_push = rows.iter().position(|row| row.starts_with("push\""));
        if first_push != Some(2) {
            failures.push(format!(
                "deletes are newer than every push: the first push is row {first_push:?}"
            ));
        }
        if pushes < 5 {
            failures.push(format!("{pushes} pushes:\n{}", page.body));
        }

        // alice may pull everything: the hidden repository's push and delete were kept, and
        // it is only the filter that hides them from bob.
        let page = get(&client, &gate.url("/ui/activity"), Some(&alice)).await;
        let hidden: Vec<&str> = activity_rows(&page.body)
            .into_iter()
            .filter(|row| row.contains(HIDDEN))
            .collect();
        let actions: Vec<&str> = hidden
            .iter()
            .map(|row| row.split('"').next().unwrap_or(row))
            .collect();
        if actions != ["delete", "push"] {
            failures.push(format!(
                "alice's view of the hidden repository: {actions:?}\n{}",
                page.body
            ));
        }

        // Anonymous may pull nothing here: an empty list.
        let page = get(&client, &gate.url("/ui/activity"), None).await;
        if page.status != StatusCode::OK
            || !page.body.contains("Nothing yet")
            || page.body.contains("team/")
        {
            failures.push(format!(
                "anonymous activity: {}\n{}",
                page.status, page.body
            ));
        }
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

#[test]
fn a_new_password_ends_the_sessions_opened_with_the_old_one_and_a_reload_ends_none() {
    let w = world();
    let gate = &w.gate;
    let htpasswd = gate.config_path.with_file_name("htpasswd");
    runtime().block_on(async {
        let client = HttpsClient::new(&gate.pki.ca_pem, Proto::Http1);
        let (_, alice) = login(&client, gate, ALICE).await;
        let (_, bob) = login(&client, gate, BOB).await;
        for cookie in [&alice, &bob] {
            let page = get(&client, &gate.url("/ui/"), Some(cookie)).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        }

        // bob gets a new password; the reload this causes keeps alice's session.
        let before = gate.reloads();
        let mut change = util::gate::gate_command()
            .args(["htpasswd", "-f"])
            .arg(&htpasswd)
            .args(["add", "bob", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn htpasswd");
        change
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"bob-new-secret\n")
            .expect("write the password");
        assert!(change.wait().expect("htpasswd").success());
        gate.wait_for_reload(before);

        let page = get(&client, &gate.url("/ui/"), Some(&alice)).await;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "a reload ended alice's session"
        );
        let page = get(&client, &gate.url("/ui/"), Some(&bob)).await;
        assert_eq!(
            page.status,
            StatusCode::SEE_OTHER,
            "bob's session outlived his old password"
        );
        assert_eq!(page.headers["location"], "/ui/login");
        let (_, again) = login(&client, gate, ("bob", "bob-new-secret")).await;
        let page = get(&client, &gate.url("/ui/"), Some(&again)).await;
        assert_eq!(page.status, StatusCode::OK);
    });
}
