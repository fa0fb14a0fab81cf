//! Whole offers (start, entry batches, directory batches, as postcard): validation never
//! panics; an offer it accepts has the announced counts, parsed paths, sizes that add up
//! to the total, and no more entries than the policy allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::transfer::manifest::{Offer, Policy};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let Ok(offer) = postcard::from_bytes::<Offer>(rest) else {
        return;
    };
    let policy = Policy {
        max_entries: u64::from(limit),
    };
    if let Ok(valid) = offer.validate(&policy) {
        let files = valid.entries.len() as u64;
        let dirs = valid.dirs.len() as u64;
        assert_eq!(files, valid.start.count);
        assert_eq!(dirs, valid.start.dirs);
        assert!(files + dirs >= 1 && files + dirs <= policy.max_entries());
        let total: u64 = valid.entries.iter().map(|(_, e)| e.size).sum();
        assert_eq!(total, valid.start.total_size);
        for (p, _) in &valid.entries {
            assert!(!p.as_str().starts_with('/'));
        }
    }
});
