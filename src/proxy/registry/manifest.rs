//! What the gate reads in manifests and image configs: the kind of a manifest (one image, a
//! multi-platform index, something else), its descriptors and platforms, and the shown parts
//! of an image config. Every value is kept as the pusher wrote it; whoever shows one escapes
//! it.

use std::collections::BTreeMap;

use http::header::HeaderValue;
use serde::Deserialize;

use crate::proxy::error::GateError;
use crate::proxy::media_types::{DOCKER_LIST, OCI_INDEX};
use crate::registry_path::is_digest;

/// What a manifest is, as far as the gate reads it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub kind: ManifestKind,
    /// Every manifest its `manifests` names, whatever its kind: `[[protect]]` reads anything
    /// that is not known to be a single image as a possible index.
    pub listed: Vec<Descriptor>,
    /// The digest its `subject` names (OCI 1.1), as written.
    pub subject: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// One image: its config and layers.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    /// A multi-platform index (docker manifest list or OCI index).
    Index { manifests: Vec<Descriptor> },
    /// Something else (an artifact, a schema this gate does not read).
    Other,
}

impl Manifest {
    /// Config plus layers, as `docker images` counts compressed sizes.
    pub fn image_size(&self) -> Option<u64> {
        match &self.kind {
            ManifestKind::Image { config, layers } => Some(
                layers
                    .iter()
                    .fold(config.size, |sum, l| sum.saturating_add(l.size)),
            ),
            _ => None,
        }
    }

    /// `os/architecture[/variant]` of each image of an index, attestations left out.
    pub fn platforms(&self) -> Vec<String> {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(Platform::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// The parts of an image config the pages show; every value as the pusher wrote it.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub created: Option<String>,
    pub platform: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub cmd: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A manifest from its body: the kind from the media type (the header's, else the body's),
/// the digest from `Docker-Content-Digest` when it is a digest, else computed.
pub(super) fn parse_manifest(
    body: &[u8],
    content_type: Option<String>,
    digest_header: Option<&HeaderValue>,
) -> Result<Manifest, GateError> {
    let raw: RawManifest = serde_json::from_slice(body).map_err(|e| {
        GateError::UpstreamFailed(format!("a manifest from the registry is not JSON: {e}"))
    })?;
    let media_type = content_type
        .filter(|t| !t.is_empty() && t != "application/json")
        .or(raw.media_type)
        .unwrap_or_default();
    let digest = digest_header
        .and_then(|v| v.to_str().ok())
        .filter(|d| is_digest(d))
        .map(str::to_string)
        .unwrap_or_else(|| {
            use sha2::{Digest, Sha256};
            let hash = Sha256::digest(body);
            format!("sha256:{}", hex::encode(hash))
        });
    let listed = valid_descriptors(raw.manifests.clone().unwrap_or_default());
    let kind = match (raw.config, raw.layers, raw.manifests) {
        (_, _, Some(manifests)) if media_type == DOCKER_LIST || media_type == OCI_INDEX => {
            ManifestKind::Index {
                manifests: valid_descriptors(manifests),
            }
        }
        (Some(config), Some(layers), None) if is_digest(&config.digest) => ManifestKind::Image {
            config,
            layers: valid_descriptors(layers),
        },
        (None, None, Some(manifests)) => ManifestKind::Index {
            manifests: valid_descriptors(manifests),
        },
        _ => ManifestKind::Other,
    };
    Ok(Manifest {
        digest,
        media_type,
        kind,
        listed,
        subject: raw.subject.map(|s| s.digest),
    })
}

/// Descriptors whose digest may go into a link; the others cannot be followed anyway.
fn valid_descriptors(list: Vec<Descriptor>) -> Vec<Descriptor> {
    list.into_iter().filter(|d| is_digest(&d.digest)).collect()
}

/// The shown parts of an image config; `None` if it is not a JSON object.
pub(super) fn parse_config(body: &[u8]) -> Option<ImageConfig> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let inner = object.get("config").and_then(|c| c.as_object());
    let field = |name: &str| {
        inner
            .and_then(|c| c.get(name))
            .filter(|v| !v.is_null())
            .map(text)
            .filter(|s| !s.is_empty())
    };
    let labels = inner
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.as_object())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let platform = match (object.get("os"), object.get("architecture")) {
        (Some(os), Some(arch)) => Some(format!("{}/{}", text(os), text(arch))),
        _ => None,
    };
    Some(ImageConfig {
        created: object.get("created").filter(|v| !v.is_null()).map(text),
        platform,
        user: field("User"),
        entrypoint: field("Entrypoint"),
        cmd: field("Cmd"),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn an_image_manifest_gives_its_size_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{{"mediaType":"c","digest":"{D1}","size":100}},
                "layers":[{{"mediaType":"l","digest":"{D2}","size":1000}},
                          {{"mediaType":"l","digest":"not-a-digest","size":5}}]}}"#
        );
        let m = parse_manifest(body.as_bytes(), None, None).expect("parses");
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(m.digest.starts_with("sha256:") && m.digest.len() == 71);
        // The layer whose digest could not be linked is left out of the list and the size.
        assert_eq!(m.image_size(), Some(1100));
        let header = HeaderValue::from_static(D2);
        let m = parse_manifest(body.as_bytes(), None, Some(&header)).expect("parses");
        assert_eq!(m.digest, D2);
        let junk = HeaderValue::from_static("<script>");
        let m = parse_manifest(body.as_bytes(), None, Some(&junk)).expect("parses");
        assert_ne!(m.digest, "<script>");
    }

    #[test]
    fn an_index_lists_its_platforms_without_attestations() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[
                {{"digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
                {{"digest":"{D2}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let m = parse_manifest(body.as_bytes(), Some(OCI_INDEX.into()), None).expect("parses");
        assert_eq!(m.platforms(), ["linux/amd64", "linux/arm/v7"]);
        assert_eq!(m.image_size(), None);
    }

    #[test]
    fn config_values_are_kept_as_written() {
        let body = br#"{"created":"2024-05-01T10:00:00Z","os":"linux","architecture":"amd64",
            "config":{"User":"<u>","Cmd":["sh","-c","echo <x>"],
            "Labels":{"evil":"<script>alert(1)</script>","n":5}}}"#;
        let c = parse_config(body).expect("parses");
        assert_eq!(c.created.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_eq!(c.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(c.user.as_deref(), Some("<u>"));
        assert_eq!(c.cmd.as_deref(), Some(r#"["sh","-c","echo <x>"]"#));
        assert_eq!(c.labels["evil"], "<script>alert(1)</script>");
        assert_eq!(c.labels["n"], "5");
        assert!(parse_config(b"[1]").is_none());
        assert!(parse_config(b"garbage").is_none());
    }
}
