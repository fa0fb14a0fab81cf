//! The responder's handshake state machine fed arbitrary messages (as a relay or a
//! network attacker could): never a panic, never an established session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::crypto::handshake::{Responder, Step};
use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pake::Code;

fuzz_target!(|data: &[u8]| {
    let Ok(local) = Identity::from_secret([0x42; 32]) else {
        return;
    };
    let code = Code::parse("7-abandon-ability-able").ok();
    for code in [None, code] {
        let mut r = Responder::new(&local, &[1; 32], code);
        let mut accept = |_: &phi_conduit::crypto::identity::PublicKey| true;
        // Split the input into up to three messages at the first two 0xff bytes.
        for msg in data.splitn(3, |b| *b == 0xff) {
            match r.read(msg, &mut accept) {
                Ok(Step::Done(_) | Step::SendThenDone(..)) => {
                    panic!("a session was established from fuzz input")
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
});
