//! A headless Chromium driven over the W3C WebDriver protocol: Debian's `chromedriver` on a
//! free port, and the few commands the browser tests use (navigate, find, type, click, read
//! the page source, run a script, take a screenshot), spoken as HTTP/1.1 + JSON over a plain
//! `TcpStream`. The driver, the browser and its profile directory go when this is dropped.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::{accepts_tcp, free_port, read_some, read_text, require_tool, wait_until, KillOnDrop};

/// chromedriver starts in well under a second; a loaded machine gets more.
const DRIVER_START: Duration = Duration::from_secs(20);
/// One WebDriver command, a page load included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The key W3C WebDriver names element references by.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where screenshots go: `$UI_SCREENSHOTS`, or `target/ui-screenshots` in the repository.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots"))
}

pub struct Browser {
    addr: SocketAddr,
    session: String,
    log: PathBuf,
    profile: PathBuf,
    /// Dropped after the session is deleted, so the browser has exited when it is killed.
    _driver: KillOnDrop,
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium with its profile under `dir`. The browser
    /// accepts the gate's test certificate (the CA is the test's own, not the system's).
    pub fn start(dir: &Path) -> Browser {
        require_tool("chromedriver", "chromium-driver");
        require_tool("chromium", "chromium");
        std::fs::create_dir_all(dir).expect("mkdir browser dir");
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = KillOnDrop(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_until(DRIVER_START, || accepts_tcp(addr)),
            "chromedriver did not listen on {addr} within {DRIVER_START:?}"
        );
        let profile = dir.join("profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            }}
        });
        let answer = call(addr, "POST", "/session", Some(&capabilities)).unwrap_or_else(|e| {
            panic!(
                "new WebDriver session: {e}\n--- chromedriver log ---\n{}",
                read_text(&log)
            )
        });
        let session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {answer}"))
            .to_string();
        Browser {
            addr,
            session,
            log,
            profile,
            _driver: driver,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(self.addr, method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Loads `url` and waits for it (the W3C `navigate` returns once the page has loaded).
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Waits until the current URL ends with `suffix`: a click that submits a form or follows
    /// a link may return before the next page has replaced this one.
    pub fn wait_for_url(&self, suffix: &str) {
        let arrived = wait_until(COMMAND_TIMEOUT, || self.url().ends_with(suffix));
        assert!(
            arrived,
            "never arrived at …{suffix}; at {}:\n{}",
            self.url(),
            self.source()
        );
    }

    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's current HTML as the browser serialises its DOM.
    pub fn source(&self) -> String {
        self.command("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        let path = format!("/session/{}/element", self.session);
        let body = json!({ "using": "css selector", "value": css });
        match call(self.addr, "POST", &path, Some(&body)) {
            Ok(value) => value[ELEMENT_KEY]
                .as_str()
                .map(|id| Element(id.to_string())),
            Err(e) if e.contains("no such element") => None,
            Err(e) => panic!("find {css}: {e}"),
        }
    }

    /// Like `find`, panicking with the page when there is no match.
    pub fn get(&self, css: &str) -> Element {
        self.find(css)
            .unwrap_or_else(|| panic!("no {css} on {}:\n{}", self.url(), self.source()))
    }

    /// Waits for an element to appear (the page after a form that posts to its own URL).
    pub fn wait_for(&self, css: &str) -> Element {
        let mut found = None;
        wait_until(COMMAND_TIMEOUT, || {
            found = self.find(css);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {css} appeared on {}:\n{}", self.url(), self.source()))
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let value = self.command(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        value
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn click(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(&json!({})),
        );
    }

    pub fn type_into(&self, element: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(&json!({ "text": text })),
        );
    }

    /// The element's rendered text.
    pub fn text(&self, element: &Element) -> String {
        self.command("GET", &format!("/element/{}/text", element.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the element is rendered (not `hidden`, not `display: none`).
    pub fn displayed(&self, element: &Element) -> bool {
        self.command("GET", &format!("/element/{}/displayed", element.0), None)
            .as_bool()
            .unwrap_or(false)
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The text of an open `alert()`, if a page managed to open one.
    pub fn alert_text(&self) -> Option<String> {
        let path = format!("/session/{}/alert/text", self.session);
        match call(self.addr, "GET", &path, None) {
            Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
            Err(e) if e.contains("no such alert") => None,
            Err(e) => panic!("alert text: {e}"),
        }
    }

    /// Saves a PNG of the viewport as `<screenshot_dir>/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let value = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = call(self.addr, "DELETE", &path, None);
        // Chromium outlives the session's end by a moment; its profile lock goes last. Waiting
        // for it keeps the test's directory from being removed while the browser still
        // writes into it.
        let lock = self.profile.join("SingletonLock");
        wait_until(Duration::from_secs(10), || {
            std::fs::symlink_metadata(&lock).is_err()
        });
        if std::thread::panicking() {
            eprintln!(
                "--- chromedriver log (tail) ---\n{}",
                std::fs::read_to_string(&self.log)
                    .map(|t| t.lines().rev().take(40).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            );
        }
    }
}

/// One WebDriver command: the answer's `value`, or the error it names.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    // chromedriver keeps the connection open whatever the request says: read the head, then
    // exactly the body it announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = read_some(&mut stream, &mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head ended".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut content = raw[split + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let done = match length {
            Some(len) => content.len() >= len,
            None if chunked => content.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = read_some(&mut stream, &mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        content.extend_from_slice(&buf[..n]);
    }
    if chunked {
        content = dechunk(&content);
    }
    let value: Value = serde_json::from_slice(&content)
        .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&content)))?;
    let value = value["value"].clone();
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        let message = value["message"].as_str().unwrap_or_default();
        return Err(format!("{error}: {message}"));
    }
    Ok(value)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}
