//! OCI image layouts made by hand (ustar layers, gzip via `gzip -n`, config, manifest,
//! index) and `skopeo`, with the one push, pull and delete every suite uses
//! (`RegistryHost`), so tests move real images with a real client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::json;

use super::{describe, read_text, require_tool, run, sha256_digest, write_file, XorShift};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What a test needs to know about an image it wrote.
#[derive(Debug, Clone)]
pub struct OciImage {
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the compressed layer blobs, in manifest order.
    pub layer_digests: Vec<String>,
}

impl OciImage {
    /// `oci:<dir>:latest`, the skopeo reference.
    pub fn reference(&self) -> String {
        format!("oci:{}:latest", self.dir.display())
    }
}

/// Writes an OCI image layout in `dir` (tag `latest`) with `layers` gzip'd tar layers, each
/// holding one file of `layer_size` pseudo-random bytes. Random data does not compress, so
/// the blobs are about `layer_size` each. Seeds derive from `dir`, so two images differ.
pub fn oci_image(dir: &Path, layers: usize, layer_size: usize) -> OciImage {
    require_tool("gzip", "gzip");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("mkdir {}: {e}", blobs.display()));
    let seed = dir
        .display()
        .to_string()
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));

    let mut diff_ids = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    for i in 0..layers {
        let mut data = vec![0u8; layer_size];
        XorShift::new(seed ^ (i as u64 + 1)).fill(&mut data);
        let tar = ustar(&[(&format!("layer-{i}/data.bin"), &data)]);
        diff_ids.push(sha256_digest(&tar));
        let gz = gzip(&tar);
        let digest = write_blob(&blobs, &gz);
        layer_descriptors.push(json!({
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": digest,
            "size": gz.len(),
        }));
        layer_digests.push(digest);
    }

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("serialise image config");
    let config_digest = write_blob(&blobs, &config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len() },
        "layers": layer_descriptors,
    }))
    .expect("serialise manifest");
    let manifest_digest = write_blob(&blobs, &manifest);

    write_layout(dir, MANIFEST_MEDIA_TYPE, &manifest_digest, manifest.len());

    OciImage {
        dir: dir.to_path_buf(),
        manifest_digest,
        config_digest,
        layer_digests,
    }
}

/// An OCI layout in `dir` whose `latest` is a multi-platform index of `platforms` (each an
/// image from `oci_image` and the architecture it claims), blobs copied in; push it with
/// `skopeo copy --all`. Returns the index's digest.
pub fn oci_index(dir: &Path, platforms: &[(&OciImage, &str)]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("mkdir {}: {e}", blobs.display()));
    let mut manifests = Vec::new();
    for (image, architecture) in platforms {
        let from = image.dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&from).expect("read blobs") {
            let entry = entry.expect("blob entry");
            std::fs::copy(entry.path(), blobs.join(entry.file_name())).expect("copy blob");
        }
        let hex = image.manifest_digest.trim_start_matches("sha256:");
        let size = std::fs::metadata(from.join(hex))
            .expect("manifest blob")
            .len();
        manifests.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": size,
            "platform": { "architecture": architecture, "os": "linux" },
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    }))
    .expect("serialise index");
    let digest = write_blob(&blobs, &index);
    write_layout(dir, INDEX_MEDIA_TYPE, &digest, index.len());
    digest
}

/// Makes `dir` an OCI layout whose tag `latest` is the blob `digest` (`size` bytes of
/// `media_type`).
fn write_layout(dir: &Path, media_type: &str, digest: &str, size: usize) {
    write_file(&dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    write_file(&dir.join("index.json"), index.to_string());
}

/// Reads back an OCI layout skopeo wrote: the manifest named by `index.json` for `tag`.
pub fn read_oci_layout(dir: &Path) -> OciImage {
    let index: serde_json::Value =
        serde_json::from_str(&read_text(&dir.join("index.json"))).expect("parse index.json");
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no manifest in {}/index.json: {index}", dir.display()))
        .to_string();
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
    };
    let manifest_bytes = std::fs::read(blob(&manifest_digest)).expect("read manifest blob");
    assert_eq!(
        sha256_digest(&manifest_bytes),
        manifest_digest,
        "manifest blob content does not match its name"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).expect("parse manifest");
    let layer_digests: Vec<String> = manifest["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").to_string())
        .collect();
    for digest in &layer_digests {
        let bytes = std::fs::read(blob(digest)).expect("read layer blob");
        assert_eq!(
            &sha256_digest(&bytes),
            digest,
            "layer blob content does not match its name"
        );
    }
    OciImage {
        dir: dir.to_path_buf(),
        manifest_digest,
        config_digest: manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_string(),
        layer_digests,
    }
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let name = digest.strip_prefix("sha256:").expect("sha256 digest");
    write_file(&blobs.join(name), bytes);
    digest
}

/// A ustar archive of regular files. The format is 512-byte blocks: a header per file (octal
/// fields, checksum over the header with its own field as spaces), data padded to a block,
/// and two zero blocks at the end.
pub fn ustar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        assert!(name.len() < 100, "ustar name too long: {name}");
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], 0o644); // mode
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        octal(&mut header[124..136], data.len() as u64); // size
        octal(&mut header[136..148], 1_600_000_000); // mtime: fixed, for reproducible digests
        header[156] = b'0'; // regular file
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (NUL).
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    assert_eq!(
        text.len(),
        width,
        "{value} does not fit a {width}-digit tar field"
    );
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

/// `gzip -n -1`: no name or timestamp in the header, so the digest is reproducible.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gzip");
    let mut stdin = child.stdin.take().expect("gzip stdin");
    let input = data.to_vec();
    // Feed from another thread: gzip's output pipe would fill while we were still writing.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for gzip");
    writer
        .join()
        .expect("gzip writer thread")
        .expect("write to gzip");
    assert!(out.status.success(), "gzip failed: {}", out.status);
    out.stdout
}

/// Runs skopeo with `args`; the caller checks the status (`skopeo_ok` asserts it).
pub fn skopeo(args: &[&str]) -> Output {
    require_tool("skopeo", "skopeo");
    // The images are unsigned test data: don't depend on the host's policy.json.
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}

/// A registry host as skopeo reaches it over TLS: its `host:port` and a skopeo cert dir
/// holding the CA to trust. The one push, pull, delete and manifest lookup every suite uses;
/// owned, so a thread can take one (`Gate::host` gives a gate's). Credentials are
/// `user:password`.
#[derive(Clone, Debug)]
pub struct RegistryHost {
    pub authority: String,
    pub cert_dir: PathBuf,
}

impl RegistryHost {
    /// `docker://<authority>/<reference>`.
    fn remote(&self, reference: &str) -> String {
        format!("docker://{}/{reference}", self.authority)
    }

    fn certs(&self) -> &str {
        self.cert_dir.to_str().expect("UTF-8 path")
    }

    /// `skopeo copy --all --preserve-digests` of `source` (a skopeo reference) to `target`
    /// (`repository:tag`): every platform, and a failure rather than a silent conversion.
    pub fn push(&self, creds: &str, source: &str, target: &str) -> Output {
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-cert-dir",
            self.certs(),
            "--dest-creds",
            creds,
            source,
            &self.remote(target),
        ])
    }

    /// `push`, panicking with skopeo's output unless it succeeded.
    pub fn push_ok(&self, creds: &str, source: &str, target: &str) {
        let what = format!("push of {source} to {target} as {}", user_of(creds));
        succeeded(&self.push(creds, source, target), &what);
    }

    /// `skopeo copy --preserve-digests` of `reference` (`repository:tag`) into an OCI layout
    /// at `into`, tagged `latest`: what `read_oci_layout` reads back.
    pub fn pull(&self, creds: &str, reference: &str, into: &Path) -> Output {
        skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-cert-dir",
            self.certs(),
            "--src-creds",
            creds,
            &self.remote(reference),
            &format!("oci:{}:latest", into.display()),
        ])
    }

    /// `pull`, panicking with skopeo's output unless it succeeded.
    pub fn pull_ok(&self, creds: &str, reference: &str, into: &Path) {
        let what = format!("pull of {reference} as {}", user_of(creds));
        succeeded(&self.pull(creds, reference, into), &what);
    }

    /// `skopeo delete` of `reference`: a tag (skopeo resolves it and deletes by digest) or
    /// `repository@digest`.
    pub fn delete(&self, creds: &str, reference: &str) -> Output {
        skopeo(&[
            "delete",
            "--cert-dir",
            self.certs(),
            "--creds",
            creds,
            &self.remote(reference),
        ])
    }

    /// The digest of the manifest `reference` names now (its raw bytes, hashed here), or
    /// `None` when skopeo gets none.
    pub fn manifest_digest(&self, creds: &str, reference: &str) -> Option<String> {
        let out = skopeo(&[
            "inspect",
            "--raw",
            "--cert-dir",
            self.certs(),
            "--creds",
            creds,
            &self.remote(reference),
        ]);
        out.status.success().then(|| sha256_digest(&out.stdout))
    }
}

/// The user of `user:password` credentials, for messages that must not show the password.
fn user_of(creds: &str) -> &str {
    creds.split_once(':').map_or(creds, |(user, _)| user)
}

/// Panics with `what` and the command's output unless it succeeded.
fn succeeded(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", describe(out));
}

pub fn skopeo_ok(args: &[&str]) -> Output {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {}: failed\n{}",
        args.join(" "),
        describe(&out)
    );
    out
}

/// Each `(client, manifest URL, body)` PUT as an OCI manifest at the same moment, with
/// `authorization`; the status and the body's digest of each, in the order they finish.
/// For races: the registry has no compare-and-swap, so only the gate can order them.
pub async fn put_manifests_at_once(
    puts: Vec<(super::client::HttpsClient, String, Vec<u8>)>,
    authorization: &str,
) -> Vec<(http::StatusCode, String)> {
    let mut racers = tokio::task::JoinSet::new();
    for (client, url, body) in puts {
        let digest = sha256_digest(&body);
        let authorization = authorization.to_string();
        racers.spawn(async move {
            let response = client
                .send(
                    super::client::request("PUT", &url)
                        .header("Authorization", authorization)
                        .header("Content-Type", MANIFEST_MEDIA_TYPE)
                        .body(super::client::full(body))
                        .expect("request"),
                )
                .await;
            (response.status(), digest)
        });
    }
    let mut done = Vec::new();
    while let Some(racer) = racers.join_next().await {
        done.push(racer.expect("racer"));
    }
    done
}
