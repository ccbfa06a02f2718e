//! Edits of htpasswd files the way Apache's tool makes them: one line per user, comments and
//! other users kept, mode 0600 for a new file, owner and mode kept for an edited one, and an
//! atomic replace, so a running gate (which reloads on change) never reads a half-written
//! file. The command line around it is `cmd::htpasswd`.

use std::path::Path;

use super::htpasswd::{HtpasswdError, HtpasswdFile, LoadOptions};

/// Adds `user` with the hash line `line` (made by `htpasswd::bcrypt_line`), replacing the
/// user's old line if there is one; other lines and comments are kept as they were.
pub fn save_user(file: &Path, user: &str, line: String) -> Result<(), HtpasswdError> {
    let mut lines = other_lines(file, user)?;
    lines.push(line);
    write(file, &lines)
}

/// Removes `user`'s line; `false` when there was none (the file is then left untouched).
pub fn remove_user(file: &Path, user: &str) -> Result<bool, HtpasswdError> {
    let before = read_lines(file)?;
    let lines = other_lines(file, user)?;
    if lines.len() == before.len() {
        return Ok(false);
    }
    write(file, &lines)?;
    Ok(true)
}

/// The file as the gate would read it, weak hashes allowed: the first problem only.
pub fn load(file: &Path) -> Result<HtpasswdFile, HtpasswdError> {
    // The first problem is enough for a command-line answer; `check` lists them all.
    HtpasswdFile::load(
        file,
        &LoadOptions {
            allow_insecure: true,
        },
    )
    .map_err(|mut errors| errors.remove(0))
}

fn read_lines(file: &Path) -> Result<Vec<String>, HtpasswdError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(HtpasswdError::Io {
            file: file.to_path_buf(),
            source,
        }),
    }
}

/// Every line except `user`'s, comments and other users kept as they were.
fn other_lines(file: &Path, user: &str) -> Result<Vec<String>, HtpasswdError> {
    let prefix = format!("{user}:");
    Ok(read_lines(file)?
        .into_iter()
        .filter(|l| !l.starts_with(&prefix))
        .collect())
}

fn write(file: &Path, lines: &[String]) -> Result<(), HtpasswdError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut text = lines.join("\n");
    text.push('\n');
    let io = |source: std::io::Error| HtpasswdError::Io {
        file: file.to_path_buf(),
        source,
    };
    // An edited file keeps its owner and mode: root running `htpasswd add` on a file the
    // gate's own user reads must not leave a root-only file the gate can no longer open.
    let existing = std::fs::metadata(file).ok();
    let mode = existing.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
    crate::atomic_file::write(file, text.as_bytes(), mode).map_err(|e| io(e.source))?;
    if let Some(old) = existing {
        std::os::unix::fs::chown(file, Some(old.uid()), Some(old.gid())).map_err(io)?;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn an_edited_file_keeps_its_owner_and_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "a:x\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        // As root (CI), hand the file to another user, as a service user would own it.
        let owner = if running_as_root() {
            65534
        } else {
            std::fs::metadata(&file).expect("stat").uid()
        };
        let _ = std::os::unix::fs::chown(&file, Some(owner), None);
        write(&file, &["a:y".to_string(), "b:z".to_string()]).expect("write");
        let meta = std::fs::metadata(&file).expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.uid(), owner);
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "a:y\nb:z\n");
        let fresh = dir.path().join("new");
        write(&fresh, &["c:w".to_string()]).expect("write");
        assert_eq!(
            std::fs::metadata(&fresh).expect("stat").mode() & 0o777,
            0o600
        );
    }

    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
}
