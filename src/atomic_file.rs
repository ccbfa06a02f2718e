//! Files written whole or not at all: a temporary file beside the target, fsync, rename, and
//! a sync of the directory. Keys, certificates, htpasswd files and token keys all go through
//! here, because a crash or a full disk must never leave half a secret behind, and a running
//! gate that reloads on change must never read a half-written file.
//!
//! Owns only the file-system steps; what a failure means (a certificate, a user file) is the
//! caller's to say, so the error carries the path the operator asked for and the cause.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writing `path` failed; the temporary file, if any, is already removed.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot write: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A file to write: path, contents, mode (applied when the file is created).
pub type Pending<'a> = (&'a Path, &'a [u8], u32);

/// Writes `data` to `path` through a temporary file, so a reader sees the old contents or the
/// new ones, never a mix.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let tmp = stage((path, data, mode))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        error(path, e)
    })?;
    sync_parent(path);
    Ok(())
}

/// Writes two files both or neither. A full disk between the two writes must not leave a key
/// without its certificate: `gencert` would then refuse to run again ("a key is already
/// there") and the zero-config start would find a CA it cannot use.
pub fn write_both(first: Pending<'_>, second: Pending<'_>) -> Result<(), WriteError> {
    let first_tmp = stage(first)?;
    let second_tmp = match stage(second) {
        Ok(tmp) => tmp,
        Err(e) => {
            let _ = std::fs::remove_file(&first_tmp);
            return Err(e);
        }
    };
    // Renames need no space, so once both files are staged the pair lands.
    for (tmp, (path, ..)) in [(&first_tmp, first), (&second_tmp, second)] {
        if let Err(e) = std::fs::rename(tmp, path) {
            let _ = std::fs::remove_file(&first_tmp);
            let _ = std::fs::remove_file(&second_tmp);
            return Err(error(path, e));
        }
    }
    sync_parent(first.0);
    if second.0.parent() != first.0.parent() {
        sync_parent(second.0);
    }
    Ok(())
}

/// Writes `data` to `<path>.tmp` and syncs it; on failure the temporary file is removed and
/// the error names `path`, the file the operator asked for.
fn stage((path, data, mode): Pending<'_>) -> Result<PathBuf, WriteError> {
    use std::os::unix::fs::OpenOptionsExt;
    // The whole name plus `.tmp`: `client.cert` and `client.key` must not share one.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(error(path, e))
        }
    }
}

/// Makes a rename durable: until the directory is synced, a crash may bring back the old
/// entry. Best effort: the file itself is already safe.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn error(path: &Path, source: std::io::Error) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_write_replaces_the_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("secret");
        write(&file, b"one", 0o600).expect("first write");
        write(&file, b"two", 0o600).expect("second write");
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn a_pair_that_cannot_land_whole_leaves_neither_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key.pem");
        // The second file's directory does not exist: staging it fails after the first one
        // was staged, and the first must not land alone.
        let cert = dir.path().join("missing").join("cert.pem");
        let err = write_both((&key, b"key", 0o600), (&cert, b"cert", 0o644))
            .expect_err("the second file cannot be written");
        assert_eq!(err.path, cert);
        assert!(err.to_string().contains("cert.pem: cannot write"), "{err}");
        assert!(!key.exists(), "the key landed without its certificate");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
