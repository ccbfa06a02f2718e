//! The bounded fuzzing run CI can afford: the parsers a client or an operator feeds, run on
//! inputs mutated from the committed fuzz seeds (`fuzz/seeds/`), with the same properties
//! the cargo-fuzz targets check. No coverage guidance (that is `scripts/fuzz`, opt-in
//! because its instrumented build takes many minutes), but a fixed, reproducible stream of
//! inputs per parser, so a crash found here is found again with the same seed.

use crate::util;

use std::path::Path;
use std::time::{Duration, Instant};

use registry_gate::auth::parse_basic;
use registry_gate::config::Config;
use util::XorShift;

/// Time per parser: 30 s, a bounded fuzzing run per target as CI can afford it;
/// `PROPERTY_SECONDS` changes it (6 parsers, two at a time: about 90 s of the suite).
fn budget() -> Duration {
    let seconds = std::env::var("PROPERTY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Tokens that make mutations reach the interesting branches faster than random bytes.
const DICTIONARY: &[&[u8]] = &[
    b"/v2/",
    b"/",
    b"..",
    b"%2f",
    b"%2e",
    b"%",
    b";",
    b"?",
    b"&",
    b"=",
    b":",
    b"\r\n",
    b"\n",
    b"\0",
    b"sha256:",
    b"blobs",
    b"manifests",
    b"uploads",
    b"tags/list",
    b"_catalog",
    b"mount=",
    b"from=",
    b"digest=",
    b"Basic ",
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\xff",
    b"$2y$",
    b"$apr1$",
    b"{SHA}",
    b"{SSHA}",
    b"$5$",
    b"$6$",
    b"[server]",
    b"[[rules]]",
    b"\"",
    b"[",
    b"]",
    b"=",
    b"repository:",
    b"pull,push",
    b"*",
    b"\r\n\r\n\0\r\nQUIT\n",
];

/// Runs one parser on each committed seed, then on mutations of them until the budget; `check`
/// asserts the properties and says whether the parser accepted the input. Some seeds and
/// some mutations must be accepted, and some mutations refused, or the properties were never
/// exercised on both sides: a parser that refuses everything fails here.
fn inputs(target: &str, mut check: impl FnMut(&[u8]) -> bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("seed").path()).expect("read seed"))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let seeds_accepted = seeds.iter().filter(|seed| check(seed)).count();
    assert!(
        seeds_accepted > 0,
        "{target}: every committed seed was refused"
    );
    let mut rng = XorShift::new(0x5eed_0000 ^ target.len() as u64);
    let deadline = Instant::now() + budget();
    let (mut runs, mut accepted) = (0usize, 0usize);
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = seeds[rng.next_u64() as usize % seeds.len()].clone();
            for _ in 0..=(rng.next_u64() % 8) {
                mutate(&mut input, &mut rng);
            }
            accepted += usize::from(check(&input));
            runs += 1;
        }
    }
    eprintln!(
        "{target}: {seeds_accepted} of {} seeds and {accepted} of {runs} mutations accepted",
        seeds.len()
    );
    assert!(
        accepted > 0 && accepted < runs,
        "{target}: {accepted} of {runs} mutations were accepted: the properties were checked \
         on one side only"
    );
}

fn mutate(input: &mut Vec<u8>, rng: &mut XorShift) {
    let at = |rng: &mut XorShift, len: usize| (rng.next_u64() as usize) % (len + 1);
    match rng.next_u64() % 6 {
        0 if !input.is_empty() => {
            let i = at(rng, input.len() - 1);
            input[i] = rng.next_u64() as u8;
        }
        1 => {
            let i = at(rng, input.len());
            input.insert(i, rng.next_u64() as u8);
        }
        2 if !input.is_empty() => {
            let i = at(rng, input.len() - 1);
            let n = (rng.next_u64() as usize % 8).min(input.len() - i);
            input.drain(i..i + n);
        }
        3 | 4 => {
            let token = DICTIONARY[rng.next_u64() as usize % DICTIONARY.len()];
            let i = at(rng, input.len());
            input.splice(i..i, token.iter().copied());
        }
        _ if input.len() > 1 => {
            // Repeat a slice: long runs find quadratic paths and length limits.
            let i = at(rng, input.len() - 1);
            let n = (rng.next_u64() as usize % 64).min(input.len() - i);
            let piece = input[i..i + n].to_vec();
            for _ in 0..(rng.next_u64() % 16) {
                input.extend_from_slice(&piece);
            }
        }
        _ => input.push(rng.next_u64() as u8),
    }
}

#[test]
fn authorization_headers() {
    inputs("authorization", |data| match parse_basic(data) {
        Some((user, _password)) => {
            assert!(!user.is_empty() && !user.contains(':'), "{data:?}");
            true
        }
        None => false,
    });
}

#[test]
fn htpasswd_files() {
    inputs("htpasswd", registry_gate::fuzzing::htpasswd);
}

#[test]
fn config_files() {
    inputs("config", |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return false;
        };
        match Config::parse(text, Some(Path::new("/p/proxy.toml")), Path::new("/p")) {
            Ok(_) => true,
            Err(errors) => {
                assert!(!errors.is_empty(), "an error without a reason");
                for e in errors {
                    assert!(!e.to_string().is_empty());
                }
                false
            }
        }
    });
}

#[test]
fn registry_paths() {
    inputs(
        "classify_and_rules",
        registry_gate::fuzzing::classify_and_rules,
    );
}

#[test]
fn token_scopes() {
    inputs("token", registry_gate::fuzzing::token);
}

#[test]
fn proxy_protocol_headers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    inputs("proxy_protocol", |data| {
        registry_gate::fuzzing::proxy_protocol(&runtime, data)
    });
}
