//! Properties of the parsers a client or an operator feeds, as one function per parser over
//! arbitrary bytes: they panic when a property fails. The cargo-fuzz targets (`fuzz/`) and
//! the bounded run CI can afford (`tests/it/properties.rs`) both call these, so the two always
//! check the same thing. Not part of the gate's behaviour.

use std::path::Path;

use crate::auth::htpasswd::{HtpasswdFile, LoadOptions};
use crate::server::proxy_protocol::{parse_v1, read_header};

/// The htpasswd parser never panics, and whatever it accepts verifies a password without
/// panicking. The first byte chooses the options. Slow hashes (bcrypt, SHA-crypt) are parsed
/// but not verified: a cost of 31 is a valid file and would only stall the run.
pub fn htpasswd(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let options = LoadOptions {
        allow_insecure: flags & 1 == 1,
    };
    match HtpasswdFile::parse(Path::new("fuzz"), text, &options) {
        Ok(file) => {
            for user in file.users() {
                assert!(!user.is_empty(), "an empty user name was accepted");
                assert!(!user.contains(':'), "a user name with ':' was accepted");
                let hash = file.get(user).expect("every listed user has a hash");
                if !hash.is_slow() {
                    let _ = hash.verify(b"password");
                    let _ = hash.verify(&[]);
                }
            }
        }
        Err(errors) => assert!(!errors.is_empty(), "an error without a reason"),
    }
}

/// The PROXY protocol header reader never panics, never reads past the header it accepts
/// (the TLS bytes behind it stay in the stream), and what it accepts from a version-1 line
/// parses the same when the line is given whole.
pub fn proxy_protocol(runtime: &tokio::runtime::Runtime, data: &[u8]) {
    runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut cursor = std::io::Cursor::new(data.to_vec());
        let result = read_header(&mut cursor).await;
        let consumed = cursor.position() as usize;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(
            &data[consumed..],
            &rest[..],
            "bytes after the header were lost"
        );
        if result.is_ok() && data.starts_with(b"PROXY ") {
            assert_eq!(parse_v1(&data[..consumed]), result, "v1 parse disagrees");
        }
    });
}
