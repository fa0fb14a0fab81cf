//! Offered paths: never a panic; anything accepted is relative, has no empty, `.` or
//! `..` component and no control character; collision checks never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::transfer::paths::{RelPath, check_collisions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut ok = Vec::new();
    for line in text.split('\n') {
        if let Ok(p) = RelPath::parse(line) {
            let s = p.as_str();
            assert!(!s.starts_with('/'));
            assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            assert!(!s.chars().any(char::is_control));
            ok.push(p);
        }
    }
    let _ = check_collisions(ok.iter());
});
