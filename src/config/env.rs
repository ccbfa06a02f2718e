//! Environment overrides: `REGISTRY_GATE_<SECTION>__<KEY>` variables laid over the file's
//! TOML before it is deserialized, so an override is checked exactly like the key it replaces.
//!
//! This module only builds the raw configuration; validating it is `validate`'s job, and
//! which variables exist is the caller's (tests pass their own instead of the process's).

use serde::Deserialize;

use super::raw::RawConfig;
use super::ConfigError;

/// Every key can also come from the environment: `REGISTRY_GATE_<SECTION>__<KEY>`, e.g.
/// `REGISTRY_GATE_SERVER__LISTEN=0.0.0.0:8443` or `REGISTRY_GATE_AUTH__HTPASSWD='["a", "b"]'`.
const ENV_PREFIX: &str = "REGISTRY_GATE_";
/// Names the configuration file itself (see `cli`), not a key.
const ENV_CONFIG: &str = "REGISTRY_GATE_CONFIG";

/// The file's `text` with the overrides among `vars` applied, or `None` when `vars` holds no
/// override (the caller then keeps what it deserialized from the file alone, whose errors
/// carry line numbers). `text` must already have parsed as a `RawConfig`.
pub(super) fn overridden(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Option<RawConfig>, Vec<ConfigError>> {
    let overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG)
        .collect();
    if overrides.is_empty() {
        return Ok(None);
    }
    let mut table: toml::Table = toml::from_str(text).unwrap_or_default();
    let mut errors = Vec::new();
    for (name, value) in &overrides {
        if let Err(message) = apply_env(&mut table, name, value) {
            errors.push(ConfigError::Env {
                name: name.clone(),
                message,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let raw = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
        let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
        vec![ConfigError::Env {
            name: names.join(", "),
            message: e.to_string().trim_end().to_string(),
        }]
    })?;
    Ok(Some(raw))
}

/// Sets one environment override in the TOML tree. The value is read as a TOML value when it
/// is one (numbers, booleans, arrays, quoted strings) and as a plain string otherwise.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), String> {
    let rest = &name[ENV_PREFIX.len()..];
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        return Err(format!(
            "not a key: write {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SERVER__LISTEN"
        ));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut node = table;
    for section in &parts[..parts.len() - 1] {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("[{section}] is not a table"))?;
    }
    node.insert(parts[parts.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::tests::messages;
    use super::super::{Config, ConfigError};

    fn with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse_with_env(
            text,
            Some(Path::new("/etc/gate/proxy.toml")),
            Path::new("/etc/gate"),
            env,
        )
    }

    #[test]
    fn environment_overrides_every_kind_of_key() {
        let c = with_env(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("REGISTRY_GATE_SERVER__LISTEN", "127.0.0.1:8443"),
                ("REGISTRY_GATE_SERVER__MAX_CONNECTIONS", "7"),
                ("REGISTRY_GATE_SERVER__READ_ONLY", "true"),
                ("REGISTRY_GATE_UPSTREAM__READ_TIMEOUT", "60s"),
                ("REGISTRY_GATE_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
                ("REGISTRY_GATE_CONFIG", "/elsewhere.toml"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(c.server.max_connections, 7);
        assert!(c.server.read_only);
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(60));
        assert_eq!(c.server.trusted_proxies.len(), 1);
    }

    #[test]
    fn a_wrong_environment_override_names_the_variable() {
        let m = messages(with_env("", &[("REGISTRY_GATE_SERVER__LISEN", "x")]));
        assert!(
            m[0].contains("REGISTRY_GATE_SERVER__LISEN") && m[0].contains("lisen"),
            "{m:?}"
        );
        let m = messages(with_env("", &[("REGISTRY_GATE_LISTEN", "x")]));
        assert!(
            m[0].contains("REGISTRY_GATE_LISTEN") && m[0].contains("SECTION"),
            "{m:?}"
        );
        let m = messages(with_env("", &[("REGISTRY_GATE_SERVER__LISTEN", "nope")]));
        assert!(m[0].contains("server.listen"), "{m:?}");
    }
}
