//! `registry-gate doctor`: checks a running setup end to end and says what is wrong in words
//! an operator can act on. Read-only except for one test upload to the registry, which it
//! cancels.
//!
//! With `[cluster]` it also checks the shared Redis: the password readable, a `PING` within
//! `[cluster] timeout`, a probe key written, read and deleted under the key prefix, and the
//! server's version.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, with the fix for anything not ok. The
//! exit code is 0 without failures, 1 with any (2 when the configuration does not load).

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request};

use crate::cluster::{Cluster, ClusterError};
use crate::config::{AuthMode, ClusterConfig, ClusterPassword, Config, TlsSource};
use crate::tls::acme::CertFacts;
use crate::upstream::exchange::Exchange;
use crate::upstream::RequestBody;
use crate::upstream::Upstream;

/// A certificate that expires sooner than this is worth a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);
/// Clocks further apart than this break token expiry and ACME.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The repository the test upload goes to; cancelled right away, so nothing is stored.
const PROBE_REPOSITORY: &str = "registry-gate-doctor/probe";

#[derive(Default)]
struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("ok    {what}");
    }
    fn warn(&mut self, what: &str) {
        self.warnings += 1;
        println!("warn  {what}");
    }
    fn fail(&mut self, what: &str) {
        self.failures += 1;
        println!("FAIL  {what}");
    }
}

pub fn run(config_path: Option<&std::path::Path>) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                println!("FAIL  {e}");
            }
            return super::EXIT_BAD_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-gate: cannot start the async runtime: {e}");
            return super::EXIT_FAILURE;
        }
    };
    let mut report = Report::default();
    report.ok(&format!(
        "configuration {} loads",
        config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(built-in defaults)".into())
    ));
    check_users(&config, &mut report);
    check_access_tokens(&config, &mut report);
    let public = check_certificate(&config, &mut report);
    runtime.block_on(async {
        check_upstream(&config, &public, &mut report).await;
        check_gate(&config, &mut report).await;
        if let Some(cluster) = &config.cluster {
            check_cluster(cluster, &mut report).await;
        }
    });
    println!(
        "\n{} failure(s), {} warning(s)",
        report.failures, report.warnings
    );
    if report.failures == 0 {
        super::EXIT_OK
    } else {
        super::EXIT_FAILURE
    }
}

/// Every htpasswd line the gate cannot use, with its file and line.
fn check_users(config: &Config, report: &mut Report) {
    if config.auth.mode == AuthMode::None {
        report.warn("[auth] mode = \"none\": anyone who reaches the gate may push and delete");
        return;
    }
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    match crate::state::load_users(config, slots) {
        Ok(Some(auth)) => report.ok(&format!("htpasswd: {} usable users", auth.user_count())),
        Ok(None) => {}
        Err(errors) => {
            for e in errors {
                report.fail(&format!("htpasswd: {e}"));
            }
        }
    }
}

/// The access token file loads; tokens about to expire are named, since an expiring robot
/// token silently breaks the CI that uses it.
fn check_access_tokens(config: &Config, report: &mut Report) {
    let tokens = match crate::state::load_access_tokens(config) {
        Ok(Some(tokens)) if !tokens.tokens().is_empty() => tokens,
        Ok(_) => return,
        Err(errors) => {
            for e in errors {
                report.fail(&format!("access tokens: {e}"));
            }
            return;
        }
    };
    let now = std::time::SystemTime::now();
    let mut expiring = 0;
    for token in tokens.expiring(now) {
        expiring += 1;
        let at = token
            .expires
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        report.warn(&format!(
            "access token {:?} expires at {at}: create its successor (`registry-gate token create`) and update the CI that uses it",
            token.name
        ));
    }
    let usable = tokens
        .tokens()
        .iter()
        .filter(|t| t.unusable(now).is_none())
        .count();
    if expiring == 0 {
        report.ok(&format!(
            "access tokens: {usable} usable in {}",
            tokens.path().display()
        ));
    }
}

/// The served certificate's names and expiry; returns the host name clients should use.
fn check_certificate(config: &Config, report: &mut Report) -> String {
    let provider = crate::tls::provider();
    let fallback = "localhost".to_string();
    let loaded = match crate::tls::load(&config.tls, &[], &provider) {
        Ok(loaded) => loaded,
        Err(e) => {
            report.fail(&format!("certificate: {e}"));
            return fallback;
        }
    };
    let Some(key) = loaded.key else {
        report.fail("certificate: no ACME certificate yet; the gate's log says why the order fails (DNS, ports 443/80 reachable from the CA)");
        return fallback;
    };
    let facts = match CertFacts::of(&key) {
        Ok(f) => f,
        Err(e) => {
            report.fail(&format!("certificate: {e}"));
            return fallback;
        }
    };
    let now = SystemTime::now();
    match facts.not_after.duration_since(now) {
        Err(_) => report.fail(&format!(
            "certificate expired on {}: renew it (or remove cert/key to use a generated one)",
            humantime::format_rfc3339_seconds(facts.not_after)
        )),
        Ok(left) if left < EXPIRY_WARNING => report.warn(&format!(
            "certificate expires in {} days ({}); check renewal",
            left.as_secs() / 86400,
            humantime::format_rfc3339_seconds(facts.not_after)
        )),
        Ok(left) => report.ok(&format!(
            "certificate valid for {} more days",
            left.as_secs() / 86400
        )),
    }
    if let TlsSource::Acme(acme) = &config.tls.source {
        let missing: Vec<&String> = acme
            .domains
            .iter()
            .filter(|d| !facts.names.contains(d))
            .collect();
        if !missing.is_empty() {
            report.fail(&format!(
                "certificate does not name {missing:?} from [tls.acme] domains; the gate orders a new one on start"
            ));
        }
    }
    if facts.names.is_empty() {
        report.warn("certificate has no DNS names: clients must connect by an IP address it lists, and docker checks the SAN");
        return fallback;
    }
    report.ok(&format!(
        "certificate names {}: clients must use one of these (docker and skopeo check it)",
        facts.names.join(", ")
    ));
    facts
        .names
        .iter()
        .find(|n| !n.starts_with("*."))
        .cloned()
        .unwrap_or(fallback)
}

/// The registry behind: reachable, answering as a v2 registry without its own auth, with a
/// clock close to ours, and building upload URLs the gate can hand to clients.
async fn check_upstream(config: &Config, public_host: &str, report: &mut Report) {
    let upstream = Upstream::new(&config.upstream);
    let origin = upstream.origin().to_string();
    let host = HeaderValue::from_static("localhost");
    let response = match upstream.get("/v2/", &host).await {
        Ok(r) => r,
        Err(e) => {
            report.fail(&format!(
                "registry at {origin}: {e}; is it running, and is [upstream] url right?"
            ));
            return;
        }
    };
    let status = response.status().as_u16();
    let api = response
        .headers()
        .get("docker-distribution-api-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match status {
        200 if api == "registry/2.0" => report.ok(&format!("registry at {origin} answers /v2/")),
        200 => report.warn(&format!(
            "{origin} answers /v2/ without Docker-Distribution-Api-Version: is it a registry?"
        )),
        401 => report.fail(&format!(
            "the registry at {origin} asks for credentials itself: remove auth.htpasswd (REGISTRY_AUTH) from its config; the gate authenticates"
        )),
        other => report.fail(&format!("the registry at {origin} answers /v2/ with {other}")),
    }
    if let Some(date) = response
        .headers()
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_parse)
    {
        let skew = match date.duration_since(SystemTime::now()) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_CLOCK_SKEW {
            report.warn(&format!(
                "the registry's clock is {}s off this host's: tokens and certificates depend on time; run NTP on both",
                skew.as_secs()
            ));
        } else {
            report.ok("clocks agree with the registry's");
        }
    }

    // A test upload, as the gate would forward it: the registry must not build absolute
    // http:// URLs the client cannot follow.
    let public = if config.server.listen.port() == 443 {
        public_host.to_string()
    } else {
        format!("{public_host}:{}", config.server.listen.port())
    };
    let Ok(public_value) = HeaderValue::from_str(&public) else {
        return;
    };
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = Method::POST;
    let Ok(uri) = upstream.uri_for(&format!("/v2/{PROBE_REPOSITORY}/blobs/uploads/")) else {
        return;
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::HOST, public_value.clone());
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let response = match upstream.send(request, &Exchange::new(), None).await {
        Ok(r) => r,
        Err(e) => {
            report.fail(&format!("test upload to {origin}: {e}"));
            return;
        }
    };
    if response.status() != http::StatusCode::ACCEPTED {
        report.fail(&format!(
            "the registry refused a test upload with {} (is its storage writable, or read-only on purpose?)",
            response.status()
        ));
        return;
    }
    let mut headers = response.headers().clone();
    let raw_location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    crate::proxy::headers::rewrite_response(&mut headers, &origin, &public_value);
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let expected = format!("https://{public}/");
    if location.starts_with('/') || location.starts_with(&expected) {
        report.ok(&format!(
            "upload URLs reach clients as {}",
            location.split('?').next().unwrap_or("")
        ));
    } else {
        report.fail(&format!(
            "the registry's upload URL reaches clients as {location:?}, not under {expected}: set `http: relativeurls: true` (REGISTRY_HTTP_RELATIVEURLS=true) or remove `http.host` from the registry's config"
        ));
    }
    // Cancel the upload so the probe leaves nothing behind.
    if let Some(path) = upload_path(&raw_location, &origin) {
        if let Ok(uri) = upstream.uri_for(&path) {
            let mut cancel = Request::new(RequestBody::empty());
            *cancel.method_mut() = Method::DELETE;
            *cancel.uri_mut() = uri;
            cancel.headers_mut().insert(header::HOST, public_value);
            let _ = upstream.send(cancel, &Exchange::new(), None).await;
        }
    }
}

/// The path and query of an upload URL the registry returned, relative or absolute.
fn upload_path(location: &str, origin: &str) -> Option<String> {
    if location.starts_with('/') {
        return Some(location.to_string());
    }
    let rest = location.strip_prefix(origin).or_else(|| {
        let after_scheme = location.split_once("://")?.1;
        after_scheme.find('/').map(|i| &after_scheme[i..])
    })?;
    Some(rest.to_string())
}

fn httpdate_parse(value: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(value)
        .ok()
        .or_else(|| parse_imf_fixdate(value))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the only Date form registries send.
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)?
        + 1;
    let text = format!("{year}-{month:02}-{:0>2}T{time}Z", day);
    humantime::parse_rfc3339(&text).ok()
}

/// The gate itself: listening, answering `/v2/` the way docker expects.
async fn check_gate(config: &Config, report: &mut Report) {
    let target = match super::healthcheck::local_target(config.server.listen) {
        Ok(target) => target,
        Err(e) => {
            report.fail(&e);
            return;
        }
    };
    let answer = match tokio::time::timeout(
        Duration::from_secs(5),
        super::healthcheck::fetch(target, "/v2/"),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            report.fail(&format!(
                "the gate does not answer at {target}: {e} (is it running with this configuration?)"
            ));
            return;
        }
        Err(_) => {
            report.fail(&format!("the gate at {target} did not answer within 5 s"));
            return;
        }
    };
    let head = answer.head.to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if !head.contains("docker-distribution-api-version: registry/2.0") {
        report.fail("the gate's /v2/ answer lacks Docker-Distribution-Api-Version: docker would not treat it as a registry");
    }
    match (config.auth.mode, status.as_str()) {
        (AuthMode::None, "200") => report.ok(&format!("the gate answers /v2/ at {target}")),
        (AuthMode::Basic | AuthMode::Token, "401") if head.contains("www-authenticate:") => report
            .ok(&format!(
                "the gate answers /v2/ at {target} with a login challenge"
            )),
        (_, other) => report.fail(&format!(
            "the gate answers /v2/ at {target} with {other}; expected 401 with a challenge (or 200 with mode = \"none\")"
        )),
    }
    if let Some(leaf) = answer.chain.first() {
        let served = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map(|(_, c)| c.tbs_certificate.serial.to_str_radix(16))
            .unwrap_or_default();
        let provider = crate::tls::provider();
        let on_disk = crate::tls::load(&config.tls, &[], &provider)
            .ok()
            .and_then(|l| l.key)
            .and_then(|k| {
                k.cert.first().and_then(|c| {
                    x509_parser::parse_x509_certificate(c.as_ref())
                        .ok()
                        .map(|(_, c)| c.tbs_certificate.serial.to_str_radix(16))
                })
            });
        if on_disk.as_deref().is_some_and(|d| d != served) {
            report.warn("the gate serves a different certificate than the configured files hold: it reloads within seconds of a change, or on SIGHUP");
        }
    }
}

/// The lowest major version of Redis (or Valkey) the fleet's scripts and commands are
/// written for.
const MIN_REDIS_MAJOR: u32 = 7;

/// `[cluster]`: the password readable, Redis answering within `[cluster] timeout`, a key
/// written, read and deleted under the prefix (a read-only replica or a refused login is named
/// with its fix), and a version the gate is written for.
async fn check_cluster(config: &ClusterConfig, report: &mut Report) {
    let url = &config.url;
    let cluster = match Cluster::open(config) {
        Ok(cluster) => cluster,
        Err(e) => {
            let fix = match &e {
                ClusterError::PasswordFile { .. } => {
                    ": the file must exist and be readable by the gate's user (the mounted Secret, its mode)"
                }
                ClusterError::PasswordEnv { .. } => {
                    ": set it in the gate's environment (and in doctor's), or use password_file"
                }
                ClusterError::Ca { .. } => ": the PEM bundle must exist and be readable",
                _ => ": check [cluster] redis (redis://host:port/db or rediss://…)",
            };
            report.fail(&format!("cluster: {e}{fix}"));
            return;
        }
    };
    match &config.password {
        Some(ClusterPassword::File(path)) => report.ok(&format!(
            "cluster: the Redis password is readable from {}",
            path.display()
        )),
        Some(ClusterPassword::Env(name)) => {
            report.ok(&format!("cluster: the Redis password is set in ${name}"))
        }
        None => {}
    }
    match cluster.ping().await {
        Ok(round_trip) if round_trip * 2 > config.timeout => report.warn(&format!(
            "cluster: Redis at {url} answers PING in {} ms, more than half of [cluster] timeout ({} ms): requests that need Redis will fall back often; move Redis closer or raise the timeout",
            round_trip.as_millis(),
            config.timeout.as_millis()
        )),
        Ok(round_trip) => report.ok(&format!(
            "cluster: Redis at {url} answers PING in {:.1} ms ([cluster] timeout {} ms)",
            round_trip.as_secs_f64() * 1000.0,
            config.timeout.as_millis()
        )),
        Err(e) => {
            report.fail(&format!("cluster: {e}{}", redis_fix(&e, config)));
            return;
        }
    }
    check_cluster_writes(&cluster, config, report).await;
    check_cluster_version(&cluster, report).await;
}

/// A probe key under the prefix, written, read back and deleted: what every shared feature
/// needs. Expires on its own should the delete not arrive.
async fn check_cluster_writes(cluster: &Cluster, config: &ClusterConfig, report: &mut Report) {
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = cluster.key(&["doctor", &format!("{}-{nonce}", std::process::id())]);
    let value = format!("doctor {nonce}");
    let result = async {
        cluster
            .query::<()>(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("PX")
                    .arg(60_000),
            )
            .await?;
        let read: Option<String> = cluster.query(redis::cmd("GET").arg(&key)).await?;
        let deleted: u64 = cluster.query(redis::cmd("DEL").arg(&key)).await?;
        Ok::<_, ClusterError>((read, deleted))
    }
    .await;
    match result {
        Ok((Some(read), 1)) if read == value => report.ok(&format!(
            "cluster: a probe key under \"{}:\" was written, read back and deleted",
            config.key_prefix
        )),
        Ok((read, deleted)) => report.fail(&format!(
            "cluster: the probe key {key} read back as {read:?} and {deleted} key(s) were deleted: is something else (a proxy, a cluster without this slot, another fleet with the same key_prefix) in the way?"
        )),
        Err(e) => report.fail(&format!(
            "cluster: writing a probe key under \"{}:\": {e}{}",
            config.key_prefix,
            redis_fix(&e, config)
        )),
    }
}

/// `INFO server`: Redis or Valkey, and a version the gate is written for.
async fn check_cluster_version(cluster: &Cluster, report: &mut Report) {
    let info: String = match cluster.query(redis::cmd("INFO").arg("server")).await {
        Ok(info) => info,
        Err(e) => {
            report.warn(&format!(
                "cluster: cannot read the server's version (INFO server: {e}); make sure it is Redis {MIN_REDIS_MAJOR} or Valkey {MIN_REDIS_MAJOR} or newer"
            ));
            return;
        }
    };
    let (name, version) = server_version(&info);
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major >= MIN_REDIS_MAJOR => {
            report.ok(&format!("cluster: the server is {name} {version}"))
        }
        Some(_) => report.warn(&format!(
            "cluster: the server is {name} {version}; the fleet's state is written for {name} {MIN_REDIS_MAJOR} or newer: upgrade it"
        )),
        None => report.warn(&format!(
            "cluster: INFO server names no version; make sure it is Redis {MIN_REDIS_MAJOR} or Valkey {MIN_REDIS_MAJOR} or newer"
        )),
    }
}

/// The server's name and version from `INFO server`: Valkey reports `valkey_version` (and a
/// `redis_version` kept for clients, which says less).
fn server_version(info: &str) -> (&'static str, String) {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    if let Some(version) = field("valkey_version") {
        return ("Valkey", version);
    }
    let name = if field("server_name").is_some_and(|n| n.eq_ignore_ascii_case("valkey")) {
        "Valkey"
    } else {
        "Redis"
    };
    (name, field("redis_version").unwrap_or_default())
}

/// What to do about a Redis error, said after it.
fn redis_fix(error: &ClusterError, config: &ClusterConfig) -> String {
    let (code, text, auth_failed) = match error {
        ClusterError::Timeout { .. } => {
            return format!(
                ": is Redis running and reachable from this host (host and port in [cluster] redis, firewall, NetworkPolicy)? On a slow link raise [cluster] timeout ({} ms)",
                config.timeout.as_millis()
            )
        }
        ClusterError::Redis { source, .. } => (
            source.code().unwrap_or("").to_ascii_uppercase(),
            source.to_string(),
            source.kind() == redis::ErrorKind::AuthenticationFailed,
        ),
        _ => return String::new(),
    };
    let has = |word: &str| code == word || text.contains(word);
    if has("READONLY") {
        return " (READONLY: this is a read-only replica): point [cluster] redis at the primary, or at a name that follows failover to it".into();
    }
    if has("WRONGPASS") || auth_failed {
        return " (WRONGPASS: Redis refused the password): put the server's password (requirepass, or the ACL user's) in [cluster] password_file or password_env, and name the ACL user in the URL (redis://user@host/0) if it is not \"default\"".into();
    }
    if has("NOAUTH") || text.contains("Authentication required") {
        return match config.password {
            None => " (NOAUTH: Redis wants a password): set [cluster] password_file (or password_env) to the server's password".into(),
            Some(_) => " (NOAUTH: Redis wants a password the gate did not send): check the password file or variable is not empty".into(),
        };
    }
    if has("NOPERM") {
        return format!(
            " (NOPERM: the ACL user may not do this): allow it the keys ~{}:* and the commands the gate uses (+@read +@write +@scripting +@stream +ping +info)",
            config.key_prefix
        );
    }
    if source_is_refused(error) {
        return ": nothing listens there: is Redis running, and are host and port in [cluster] redis right?".into();
    }
    String::new()
}

fn source_is_refused(error: &ClusterError) -> bool {
    matches!(error, ClusterError::Redis { source, .. }
        if source.is_connection_refusal() || source.to_string().contains("Connection refused"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_upload_paths_are_read_as_registries_send_them() {
        let t = parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_secs(),
            784_111_777
        );
        assert_eq!(
            upload_path(
                "http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x",
                "http://127.0.0.1:5000"
            ),
            Some("/v2/a/blobs/uploads/u?_state=x".into())
        );
        assert_eq!(
            upload_path(
                "https://reg.example/v2/a/blobs/uploads/u",
                "http://127.0.0.1:5000"
            ),
            Some("/v2/a/blobs/uploads/u".into())
        );
        assert_eq!(upload_path("/v2/x", "http://o"), Some("/v2/x".into()));
    }

    #[test]
    fn the_server_is_named_by_its_info() {
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(redis), ("Redis", "7.0.15".to_string()));
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n";
        assert_eq!(server_version(valkey), ("Valkey", "8.0.1".to_string()));
        let old = "redis_version:6.2.14\r\n";
        assert_eq!(server_version(old), ("Redis", "6.2.14".to_string()));
    }
}
