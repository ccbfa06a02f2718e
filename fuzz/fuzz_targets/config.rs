//! The config loader on arbitrary text: TOML syntax, validation, every error path. It must
//! return a config or a non-empty list of errors, never panic. The base directory does not
//! exist, so nothing the text names is ever read or written.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use registry_gate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent/registry-gate-fuzz");
    if let Err(errors) = Config::parse(text, Some(Path::new("fuzz.toml")), base) {
        assert!(!errors.is_empty(), "a config refused without a reason");
        for e in &errors {
            let _ = e.to_string();
        }
    }
});
