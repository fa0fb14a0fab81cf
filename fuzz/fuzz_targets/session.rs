//! Session messages as the session reads them: bytes from the control stream through the
//! frame decoder, then the Noise transport layer, then the postcard message types of a
//! transfer. Never a panic, never an allocation beyond the input.
//!
//! The first input byte picks the path: even, the rest is raw control-stream bytes (as a
//! relay or a network attacker could write them; Noise refuses them, abort frames are
//! parsed); odd, the rest is a plaintext the authenticated peer sealed, so the message
//! decoders run on arbitrary plaintext that arrived through the real path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::crypto::handshake::{Established, Initiator, MAX_MESSAGE, Responder, Step};
use phi_conduit::crypto::identity::{Identity, PublicKey};
use phi_conduit::crypto::pake::Code;
use phi_conduit::transfer::protocol::{
    OfferDirs, OfferEntries, OfferStart, ReceiptHashes, ReceiptStart, Reply, ResumePoints,
};
use phi_conduit::wire::frame::{self, FrameDecoder, MAX_FRAME};

/// Both ends of a code-phrase session, established in memory.
fn pair() -> Option<(Established, Established)> {
    let alice = Identity::from_secret([0x11; 32]).ok()?;
    let bob = Identity::from_secret([0x22; 32]).ok()?;
    let code = Code::parse("7-abandon-ability-able").ok()?;
    let rv = [1u8; 32];
    let (mut i, first) = Initiator::code(&alice, &code, &rv);
    let mut r = Responder::new(&bob, &rv, Some(code));
    let mut accept = |_: &PublicKey| true;
    let (mut to_r, mut to_i) = (Some(first), None);
    let (mut ie, mut re) = (None, None);
    for _ in 0..4 {
        if let Some(m) = to_r.take() {
            match r.read(&m, &mut accept).ok()? {
                Step::Send(f) => to_i = Some(f),
                Step::Done(e) => re = Some(*e),
                Step::SendThenDone(f, e) => (to_i, re) = (Some(f), Some(*e)),
            }
        }
        if let Some(m) = to_i.take() {
            match i.read(&m).ok()? {
                Step::Send(f) => to_r = Some(f),
                Step::Done(e) => ie = Some(*e),
                Step::SendThenDone(f, e) => (to_r, ie) = (Some(f), Some(*e)),
            }
        }
    }
    Some((ie?, re?))
}

/// Opens `body` and decodes it as one of the message types a transfer reads, picked by
/// `pick`.
fn open_as(est: &mut Established, body: &[u8], pick: u8) {
    let _ = match pick % 7 {
        0 => est.open_message::<OfferStart>(body).map(drop),
        1 => est.open_message::<OfferEntries>(body).map(drop),
        2 => est.open_message::<OfferDirs>(body).map(drop),
        3 => est.open_message::<Reply>(body).map(drop),
        4 => est.open_message::<ResumePoints>(body).map(drop),
        5 => est.open_message::<ReceiptStart>(body).map(drop),
        _ => est.open_message::<ReceiptHashes>(body).map(drop),
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((mut sender, mut receiver)) = pair() else {
        return;
    };
    let wire = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let plain = &rest[..rest.len().min(MAX_MESSAGE)];
        let Ok(sealed) = sender.seal(plain) else {
            return;
        };
        let Ok(f) = frame::to_frame(&sealed) else {
            return;
        };
        f
    };
    let mut d = FrameDecoder::new();
    let mut bytes = wire.as_slice();
    while !bytes.is_empty() {
        let n = d.push(bytes);
        bytes = &bytes[n..];
        match d.next_frame() {
            Ok(Some(body)) => {
                assert!(!body.is_empty() && body.len() <= MAX_FRAME);
                open_as(&mut receiver, &body, mode >> 1);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});
