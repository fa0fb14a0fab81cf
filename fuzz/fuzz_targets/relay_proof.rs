//! The listener proof's two messages as each side reads them: the listener parsing the
//! relay's challenge, the relay checking the listener's proof. Never a panic; the relay
//! never accepts a proof it did not get from the key's holder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_conduit::crypto::identity::Identity;
use phi_conduit::relay::proof::{CHALLENGE_LEN, Challenge, PROOF_LEN, answer, key_rendezvous};

fuzz_target!(|data: &[u8]| {
    let Ok(id) = Identity::from_secret([0x42; 32]) else {
        return;
    };
    let rv = key_rendezvous(id.public().as_bytes());
    let cert = [9u8; 32];
    if let Some(challenge) = data.first_chunk::<CHALLENGE_LEN>() {
        let _ = answer(&id, &rv, &cert, challenge);
    }
    if let Some(proof) = data.first_chunk::<PROOF_LEN>() {
        let Ok(c) = Challenge::new(rv, cert) else {
            return;
        };
        assert!(c.verify(proof).is_err(), "a proof accepted from fuzz input");
    }
});
