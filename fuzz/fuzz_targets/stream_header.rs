//! File stream headers as the receiver reads them: never a panic; every 16 bytes decode
//! and re-encode to themselves; a slot is only ever a file of the offer not started yet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::wire::stream_header::{LEN, StreamHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = StreamHeader::decode_prefix(data) else {
        assert!(data.len() < LEN);
        return;
    };
    assert_eq!(&h.encode()[..], &data[..LEN]);
    // The bytes after the header say which files of a small offer have started.
    let started: Vec<bool> = data[LEN..].iter().map(|b| b & 1 == 1).collect();
    if let Ok(slot) = h.slot(&started) {
        assert_eq!(slot as u64, h.index);
        assert!(!started[slot]);
    }
});
