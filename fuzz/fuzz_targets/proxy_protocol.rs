//! The PROXY protocol header reader on arbitrary bytes: the properties are
//! `registry_gate::fuzzing::proxy_protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    registry_gate::fuzzing::proxy_protocol(&runtime, data);
});
