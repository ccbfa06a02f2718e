//! The Basic `Authorization` parser on arbitrary bytes. Whatever it accepts must be a real
//! credential: the scheme is Basic, the user non-empty, valid UTF-8 and free of ':', and
//! encoding the pair again gives back the same user and password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gate::auth::parse_basic;

fuzz_target!(|data: &[u8]| {
    let Some((user, password)) = parse_basic(data) else {
        return;
    };
    assert!(!user.is_empty(), "empty user accepted");
    assert!(!user.contains(':'), "user with ':' accepted: {user:?}");
    let text = std::str::from_utf8(data).expect("accepted headers are UTF-8");
    let scheme = text.trim().split(' ').next().unwrap_or("");
    assert!(
        scheme.eq_ignore_ascii_case("basic"),
        "scheme {scheme:?} accepted"
    );
    let mut pair = user.clone().into_bytes();
    pair.push(b':');
    pair.extend_from_slice(&password);
    let again = format!("Basic {}", encode(&pair));
    assert_eq!(
        parse_basic(again.as_bytes()),
        Some((user, password)),
        "re-encoding changed the credential"
    );
});

/// Standard base64 with padding, written out so the target needs no base64 crate of its own.
fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
