//! The relay's Hello as the relay reads it: one frame through the decoder limited to the
//! largest Hello, then the Hello decoder. Never a panic; a longer length field is refused
//! before its body is buffered; whatever decodes re-encodes to the same bytes (one
//! encoding per Hello).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::relay::hello::{Hello, MAX_HELLO};
use phi_conduit::wire::frame::{FrameDecoder, FrameError};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(h.encode().ok().as_deref(), Some(data));
    }
    let mut d = FrameDecoder::with_limit(MAX_HELLO);
    let n = d.push(data);
    assert!(d.buffered() <= 2 + MAX_HELLO);
    match d.next_frame() {
        Ok(Some(body)) => {
            assert!(body.len() <= MAX_HELLO && n == body.len() + 2);
            if let Ok(h) = Hello::decode(&body) {
                assert_eq!(h.encode().ok(), Some(body));
            }
        }
        Ok(None) => assert_eq!(n, data.len()),
        Err(FrameError::OverLimit { len, .. }) => assert!(len > MAX_HELLO && n == 2),
        Err(_) => {}
    }
});
