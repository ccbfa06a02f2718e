//! Token mode's client-facing parsers on arbitrary text: the properties are
//! `registry_gate::fuzzing::token`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    registry_gate::fuzzing::token(data);
});
