//! Resume sidecars as the receiver reads them from its destination directory: never a
//! panic; whatever parses is of this schema and writes back to text that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::transfer::resume::Sidecar;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(s) = Sidecar::parse(text) {
        let again = serde_json::to_string(&s).ok();
        assert_eq!(again.as_deref().and_then(Sidecar::parse), Some(s));
    }
});
