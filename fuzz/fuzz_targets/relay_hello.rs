//! The relay's Hello decoder: never a panic; whatever decodes re-encodes to the same
//! bytes (one encoding per Hello).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::relay::hello::Hello;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(h.encode().ok().as_deref(), Some(data));
    }
});
