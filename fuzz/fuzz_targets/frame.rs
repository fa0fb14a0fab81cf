//! Length-prefixed frames fed in arbitrary pieces: never a panic, never more than one
//! frame buffered, and every frame yielded is non-empty and at most 65,535 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::wire::frame::{FrameDecoder, MAX_FRAME, decode_all};

fuzz_target!(|data: &[u8]| {
    let _ = decode_all(data);
    // The first byte picks the piece size, so splits are explored too.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut d = FrameDecoder::new();
    for piece in data.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let used = d.push(rest);
            rest = &rest[used..];
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => assert!(!f.is_empty() && f.len() <= MAX_FRAME),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            if used == 0 {
                break;
            }
        }
    }
    let _ = d.finish();
});
