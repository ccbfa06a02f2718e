//! The htpasswd parser on arbitrary text: it must never panic, and whatever it accepts must
//! verify a password without panicking. Slow hashes (bcrypt, SHA-crypt) are parsed but not
//! verified: a cost of 31 is a valid file and would stall the fuzzer, not find a bug.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use registry_gate::auth::htpasswd::{HtpasswdFile, LoadOptions};

fuzz_target!(|data: &[u8]| {
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
            let users: Vec<&str> = file.users().collect();
            for user in users {
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
});
