//! Control messages (offer with its optional item, entries, directories, reply, resume
//! points, receipt) as the receiver and sender decode them after the Noise layer: never
//! a panic, never an allocation beyond the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::transfer::protocol::{
    OfferDirs, OfferEntries, OfferStart, ReceiptHashes, ReceiptStart, Reply, ResumePoints,
    decode_offer_start,
};

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<OfferStart>(data);
    // The first offer message with its optional item extension (the agent's item id).
    let _ = decode_offer_start(data);
    let _ = postcard::from_bytes::<OfferEntries>(data);
    let _ = postcard::from_bytes::<OfferDirs>(data);
    let _ = postcard::from_bytes::<Reply>(data);
    let _ = postcard::from_bytes::<ResumePoints>(data);
    let _ = postcard::from_bytes::<ReceiptStart>(data);
    let _ = postcard::from_bytes::<ReceiptHashes>(data);
});
