//! `registry-gate check`: like `nginx -t`, everything `run` would load is loaded (the
//! configuration, certificates or the ACME cache, htpasswd files, event secrets and CAs),
//! without listening or writing; exit 0 with a one-line summary, or 2 listing every problem.

use std::path::Path;
use std::sync::Arc;

use super::{report, EXIT_BAD_CONFIG, EXIT_OK};
use crate::config::{self, Config, TlsSource};
use crate::state;
use crate::{auth, events, tls};

/// Like `nginx -t`: everything `run` would load, loaded, without listening or writing.
pub(super) fn check(config_path: Option<&Path>) -> i32 {
    let provider = tls::provider();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    let certificate = match &config.tls.source {
        TlsSource::Files { cert, key } => match tls::load(&config.tls, &[], &provider) {
            Ok(_) => format!("certificate {} with key {}", cert.display(), key.display()),
            Err(e) => return report(EXIT_BAD_CONFIG, [e]),
        },
        TlsSource::Generated => format!("generated certificate in {}", config.tls.dir.display()),
        TlsSource::Acme(acme) => {
            let cached = match tls::acme::cached(acme, &provider) {
                Ok(Some(_)) => "cached".to_string(),
                Ok(None) => "none cached yet".to_string(),
                // Not fatal for `run` either: it orders a new one.
                Err(e) => format!("cache unusable: {e}"),
            };
            format!(
                "ACME certificate for {} from {} ({cached})",
                acme.domains.join(", "),
                acme.directory
            )
        }
    };
    let users = match state::load_users(&config, Arc::new(tokio::sync::Semaphore::new(1))) {
        Ok(Some(auth)) => format!(", {} users", auth.user_count()),
        Ok(None) => ", no authentication".into(),
        Err(errors) => {
            let generated_missing = config.auth.generated_user
                && errors.iter().all(|e| {
                    matches!(
                        e,
                        state::PrepareError::Htpasswd(auth::htpasswd::HtpasswdError::Io { .. })
                    )
                });
            if !generated_missing {
                return report(EXIT_BAD_CONFIG, errors);
            }
            ", a generated user on first start".into()
        }
    };
    let tokens = match state::load_access_tokens(&config) {
        Ok(Some(tokens)) if !tokens.tokens().is_empty() => {
            let now = std::time::SystemTime::now();
            let usable = tokens
                .tokens()
                .iter()
                .filter(|t| t.unusable(now).is_none())
                .count();
            format!(", {usable} access tokens")
        }
        Ok(_) => String::new(),
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    let oidc = match state::load_oidc(&config) {
        Ok(Some(_)) => format!(", {} OIDC issuers", config.auth.oidc.len()),
        Ok(None) => String::new(),
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    let receivers = match events::load(&config.events) {
        Ok(loaded) if loaded.is_empty() => String::new(),
        Ok(loaded) => format!(", {} event receiver(s)", loaded.len()),
        Err(errors) => return report(EXIT_BAD_CONFIG, errors),
    };
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    println!(
        "registry-gate: {source}: configuration OK: listen {}, upstream {}, {certificate}{users}{tokens}{oidc}{receivers}",
        config.server.listen,
        match &config.upstream.target {
            config::UpstreamTarget::Tcp { .. } => config.upstream.origin.clone(),
            config::UpstreamTarget::Unix(p) => format!("unix://{}", p.display()),
        }
    );
    EXIT_OK
}
