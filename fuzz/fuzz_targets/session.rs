//! Session messages as the session reads them: bytes from the control stream through the
//! frame decoder, then the Noise transport layer, then the postcard message types of a
//! transfer. Never a panic, never an allocation beyond the input.
//!
//! The first input byte picks the path: even, the rest is raw control-stream bytes (as a
//! relay or a network attacker could write them; Noise refuses them, abort frames are
//! parsed); odd, the rest is a plaintext the authenticated peer sealed, so the message
//! decoders run on arbitrary plaintext that arrived through the real path.
//!
//! The established pair is kept between inputs (a handshake per input would leave a few
//! dozen inputs a second): both ends' nonces advance together, since every sealed
//! message is opened once and a refused message advances neither; a pair that ever
//! fails to open a sealed message is replaced.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use phi_conduit::crypto::handshake::{
    Established, HandshakeError, Initiator, MAX_MESSAGE, Responder, Step,
};
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

thread_local! {
    static PAIR: RefCell<Option<(Established, Established)>> = const { RefCell::new(None) };
}

/// Opens `body` and decodes it as one of the message types a transfer reads, picked by
/// `pick`; false if Noise refused it.
fn open_as(est: &mut Established, body: &[u8], pick: u8) -> bool {
    let r = match pick % 7 {
        0 => est.open_message::<OfferStart>(body).map(drop),
        1 => est.open_message::<OfferEntries>(body).map(drop),
        2 => est.open_message::<OfferDirs>(body).map(drop),
        3 => est.open_message::<Reply>(body).map(drop),
        4 => est.open_message::<ResumePoints>(body).map(drop),
        5 => est.open_message::<ReceiptStart>(body).map(drop),
        _ => est.open_message::<ReceiptHashes>(body).map(drop),
    };
    matches!(r, Ok(()) | Err(HandshakeError::Decode(_)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    PAIR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = pair();
        }
        let Some((sender, receiver)) = cell.as_mut() else {
            return;
        };
        let sealed = mode & 1 == 1;
        let wire = if sealed {
            let plain = &rest[..rest.len().min(MAX_MESSAGE)];
            let Ok(body) = sender.seal(plain) else {
                return;
            };
            let Ok(f) = frame::to_frame(&body) else {
                return;
            };
            f
        } else {
            rest.to_vec()
        };
        let mut d = FrameDecoder::new();
        let mut bytes = wire.as_slice();
        while !bytes.is_empty() {
            let n = d.push(bytes);
            bytes = &bytes[n..];
            match d.next_frame() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= MAX_FRAME);
                    if !open_as(receiver, &body, mode >> 1) && sealed {
                        // Out of step: start over with a fresh pair.
                        *cell = None;
                        return;
                    }
                }
                Ok(None) => {}
                Err(_) => return,
            }
        }
    });
});
