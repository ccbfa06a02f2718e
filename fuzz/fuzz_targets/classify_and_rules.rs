//! The registry path classifier and the rule matcher, on arbitrary requests and patterns: the
//! properties are `registry_gate::fuzzing::classify_and_rules`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    registry_gate::fuzzing::classify_and_rules(data);
});
