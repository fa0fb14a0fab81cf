//! Audit trail lines as `audit verify` and `audit show` read them (and the audit head a
//! user passes): never a panic, whatever a damaged or edited log file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::audit::record;
use phi_conduit::audit::verify::parse_head;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        if let Ok(p) = record::parse(line) {
            assert_eq!(p.record.v, record::SCHEMA_VERSION);
            assert!(p.body.ends_with('}'));
        }
        let _ = parse_head(line);
    }
});
