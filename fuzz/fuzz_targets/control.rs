//! Control messages (offer, entries, reply, receipt) as the receiver and sender decode
//! them after the Noise layer: never a panic, never an allocation beyond the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::transfer::protocol::{OfferEntries, OfferStart, Receipt, Reply};

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<OfferStart>(data);
    let _ = postcard::from_bytes::<OfferEntries>(data);
    let _ = postcard::from_bytes::<Reply>(data);
    let _ = postcard::from_bytes::<Receipt>(data);
});
