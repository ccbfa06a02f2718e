//! The manifest media types the gate asks for and reads in registry answers: `[[protect]]`
//! to tell an index (whose platforms are manifests of their own) from a single image, the
//! browser to show either.

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The media types of a multi-platform image.
pub const INDEX_TYPES: [&str; 2] = [DOCKER_LIST, OCI_INDEX];
/// The media types of a single image, which lists no other manifest.
pub const IMAGE_TYPES: [&str; 4] = [
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// Every manifest type, for the `Accept` of the gate's own manifest reads: asked for less,
/// distribution 2.8 answers an index with one platform's manifest and a schema2 manifest with
/// a schema1 rewrite, each with another digest, and refuses an OCI index.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v1+prettyjws";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_type_is_accepted() {
        for media_type in INDEX_TYPES.iter().chain(&IMAGE_TYPES[..3]) {
            assert!(ACCEPT_MANIFESTS.split(", ").any(|t| t == *media_type));
        }
        assert!(http::HeaderValue::from_str(ACCEPT_MANIFESTS).is_ok());
    }
}
