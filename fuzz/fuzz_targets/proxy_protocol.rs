//! The PROXY protocol header reader on arbitrary bytes: it never panics, never reads past the
//! header it accepts (the TLS bytes behind it stay in the stream), and what it accepts from
//! a version-1 line parses the same when the line is given whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gate::proxy_protocol::{parse_v1, read_header};
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut cursor = std::io::Cursor::new(data.to_vec());
        let result = read_header(&mut cursor).await;
        let consumed = cursor.position() as usize;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(&data[consumed..], &rest[..], "bytes after the header were lost");
        if result.is_ok() && data.starts_with(b"PROXY ") {
            assert_eq!(parse_v1(&data[..consumed]), result, "v1 parse disagrees");
        }
    });
});
