//! The handshake state machines, in memory, both modes, honest and hostile.

use phi_conduit::crypto::handshake::{
    AbortReason, Established, HandshakeError, Initiator, Responder, Step, abort_frame,
};
use phi_conduit::crypto::identity::{Identity, PublicKey};
use phi_conduit::crypto::pake::Code;
use phi_conduit::crypto::suite::{Suite, SuitePolicy, hardware_aes};

const RV: [u8; 32] = [9; 32];
const TID: [u8; 16] = [4; 16];
/// The post-quantum share of message 1: the code byte and the ML-KEM-768 encapsulation key.
const SHARE_1: usize = 1 + phi_conduit::crypto::hybrid::ENCAPSULATION_KEY_LEN;
/// The post-quantum share of message 2: the code byte and the ML-KEM-768 ciphertext.
const SHARE_2: usize = 1 + phi_conduit::crypto::hybrid::CIPHERTEXT_LEN;

/// Which frame (0-based, in order on the wire) to change, and how.
type Tamper<'a> = Option<(usize, &'a dyn Fn(&mut Vec<u8>))>;

struct Outcome {
    init: Result<Established, HandshakeError>,
    resp: Result<Established, HandshakeError>,
}

/// Pumps frames between the two machines until both finish or one fails. The
/// initiator, once done, sends its first transport message ("hello"), as the sender does.
fn run(
    mut init: Initiator,
    first: Vec<u8>,
    mut resp: Responder,
    accept: &mut dyn FnMut(&PublicKey) -> bool,
    tamper: Tamper<'_>,
) -> Outcome {
    let mut n = 0usize;
    let mut wire = |mut f: Vec<u8>| {
        if let Some((at, t)) = tamper {
            if at == n {
                t(&mut f);
            }
        }
        n += 1;
        f
    };
    let mut to_resp = wire(first);
    let mut init_done: Option<Established> = None;
    loop {
        // Responder's turn.
        match resp.read(&to_resp, accept) {
            Ok(Step::Send(f)) => {
                let f = wire(f);
                if let Some(mut est) = init_done.take() {
                    // The initiator already finished (code mode); what comes back now is
                    // an abort or nothing we expect.
                    let e = est
                        .open(&f)
                        .err()
                        .unwrap_or(HandshakeError::Protocol("unexpected"));
                    return Outcome {
                        init: Err(e),
                        resp: Err(HandshakeError::Protocol("sent after done")),
                    };
                }
                match init.read(&f) {
                    Ok(Step::Send(g)) => to_resp = wire(g),
                    Ok(Step::Done(mut est)) => {
                        to_resp = wire(est.seal(b"hello").unwrap());
                        init_done = Some(*est);
                    }
                    Ok(Step::SendThenDone(g, mut est)) => {
                        let g = wire(g);
                        // Deliver message 3, then the first transport message.
                        match resp.read(&g, accept) {
                            Ok(Step::Done(r)) => {
                                let first = wire(est.seal(b"hello").unwrap());
                                let mut r = *r;
                                return match r.open(&first) {
                                    Ok(m) if m == b"hello" => Outcome {
                                        init: Ok(*est),
                                        resp: Ok(r),
                                    },
                                    Ok(_) => Outcome {
                                        init: Ok(*est),
                                        resp: Err(HandshakeError::Protocol("wrong first message")),
                                    },
                                    Err(e) => Outcome {
                                        init: Ok(*est),
                                        resp: Err(e),
                                    },
                                };
                            }
                            Ok(_) => {
                                return Outcome {
                                    init: Ok(*est),
                                    resp: Err(HandshakeError::Protocol("no done")),
                                };
                            }
                            Err(e) => {
                                // The responder tells the initiator why.
                                let abort = wire(abort_frame(e.abort_reason()));
                                let ie = est
                                    .open(&abort)
                                    .err()
                                    .unwrap_or(HandshakeError::Protocol("abort ignored"));
                                return Outcome {
                                    init: Err(ie),
                                    resp: Err(e),
                                };
                            }
                        }
                    }
                    Err(e) => {
                        // The initiator tells the responder why, as the IO layer does.
                        let abort = abort_frame(e.abort_reason());
                        let re = resp
                            .read(&abort, accept)
                            .err()
                            .unwrap_or(HandshakeError::Protocol("abort ignored"));
                        return Outcome {
                            init: Err(e),
                            resp: Err(re),
                        };
                    }
                }
            }
            Ok(Step::Done(mut r)) => {
                let first = r.take_first_message();
                let est = init_done.take();
                return match (est, first) {
                    (Some(i), Some(m)) if m == b"hello" => Outcome {
                        init: Ok(i),
                        resp: Ok(*r),
                    },
                    (i, _) => Outcome {
                        init: i.ok_or(HandshakeError::Protocol("initiator not done")),
                        resp: Err(HandshakeError::Protocol("wrong first message")),
                    },
                };
            }
            Ok(Step::SendThenDone(..)) => {
                unreachable!("the responder never sends and finishes at once")
            }
            Err(e) => {
                // Tell the initiator, as the IO layer does.
                let abort = abort_frame(e.abort_reason());
                let ie = match init_done.take() {
                    Some(mut est) => est
                        .open(&abort)
                        .err()
                        .unwrap_or(HandshakeError::Protocol("abort ignored")),
                    None => init
                        .read(&abort)
                        .err()
                        .unwrap_or(HandshakeError::Protocol("abort ignored")),
                };
                return Outcome {
                    init: Err(ie),
                    resp: Err(e),
                };
            }
        }
    }
}

fn known(
    alice: &Identity,
    bob: &Identity,
    pinned: &PublicKey,
    accept: &mut dyn FnMut(&PublicKey) -> bool,
    tamper: Tamper<'_>,
) -> Outcome {
    let (i, f) = Initiator::known_peer(alice, pinned, &RV, &TID).unwrap();
    run(i, f, Responder::new(bob, &RV, None), accept, tamper)
}

fn coded(alice: &Identity, bob: &Identity, a: &str, b: &str, tamper: Tamper<'_>) -> Outcome {
    let (i, f) = Initiator::code(alice, &Code::parse(a).unwrap(), &RV);
    run(
        i,
        f,
        Responder::new(bob, &RV, Some(Code::parse(b).unwrap())),
        &mut |_| true,
        tamper,
    )
}

fn ids() -> (Identity, Identity) {
    (Identity::generate().unwrap(), Identity::generate().unwrap())
}

#[test]
fn known_peer_succeeds_and_both_sides_agree() {
    let (alice, bob) = ids();
    let mut seen = None;
    let o = known(
        &alice,
        &bob,
        &bob.public(),
        &mut |k| {
            seen = Some(*k);
            true
        },
        None,
    );
    let (mut i, mut r) = (o.init.unwrap(), o.resp.unwrap());
    assert_eq!(
        seen,
        Some(alice.public()),
        "the responder's policy saw the initiator's key"
    );
    assert_eq!(i.remote_static(), bob.public());
    assert_eq!(r.remote_static(), alice.public());
    assert_eq!(i.handshake_hash(), r.handshake_hash());
    // Typed messages both ways.
    let f = r.seal_message(&("accept", 42u64)).unwrap();
    assert_eq!(
        i.open_message::<(String, u64)>(&f).unwrap(),
        ("accept".to_string(), 42)
    );
    let f = i.seal_message(&vec![1u8, 2, 3]).unwrap();
    assert_eq!(r.open_message::<Vec<u8>>(&f).unwrap(), vec![1, 2, 3]);
}

#[test]
fn known_peer_with_the_wrong_recipient_key_fails() {
    let (alice, bob) = ids();
    let carol = Identity::generate().unwrap();
    let o = known(&alice, &bob, &carol.public(), &mut |_| true, None);
    assert!(
        matches!(o.resp, Err(HandshakeError::Authentication)),
        "{:?}",
        o.resp.err()
    );
    assert!(o.init.is_err());
}

#[test]
fn unknown_sender_is_refused_before_message_2() {
    let (alice, bob) = ids();
    let (i, f) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    let _ = i;
    let mut r = Responder::new(&bob, &RV, None);
    let err = r.read(&f, &mut |_| false).unwrap_err();
    assert!(matches!(err, HandshakeError::UnknownPeer(fp) if fp == alice.public().fingerprint()));
    assert!(err.is_auth());
    // And the whole exchange reports it on the initiator's side too.
    let o = known(&alice, &bob, &bob.public(), &mut |_| false, None);
    assert!(matches!(
        o.init,
        Err(HandshakeError::PeerAborted(AbortReason::UnknownPeer))
    ));
}

#[test]
fn code_mode_succeeds_and_shows_fingerprints() {
    let (alice, bob) = ids();
    let o = coded(
        &alice,
        &bob,
        "7-crystal-harbor-orbit",
        "7-crystal-harbor-orbit",
        None,
    );
    let (i, r) = (o.init.unwrap(), o.resp.unwrap());
    assert_eq!(i.remote_static().fingerprint(), bob.public().fingerprint());
    assert_eq!(
        r.remote_static().fingerprint(),
        alice.public().fingerprint()
    );
    assert_eq!(i.handshake_hash(), r.handshake_hash());
}

#[test]
fn wrong_code_fails_on_both_sides_as_code_mismatch() {
    let (alice, bob) = ids();
    let o = coded(
        &alice,
        &bob,
        "7-crystal-harbor-orbit",
        "7-crystal-harbor-oven",
        None,
    );
    assert!(
        matches!(o.resp, Err(HandshakeError::CodeMismatch)),
        "{:?}",
        o.resp.err()
    );
    assert!(
        matches!(
            o.init,
            Err(HandshakeError::PeerAborted(AbortReason::CodeMismatch))
        ),
        "{:?}",
        o.init.err()
    );
}

fn flip(at: usize) -> impl Fn(&mut Vec<u8>) {
    move |f: &mut Vec<u8>| {
        let i = at.min(f.len() - 1);
        f[i] ^= 0x01;
    }
}

#[test]
fn a_flipped_byte_in_any_known_peer_message_fails() {
    // Frames: 0 = message 1, 1 = message 2, 2 = first transport message.
    for frame in 0..3 {
        for at in [3usize, 20, 40, 60, 1000] {
            let (alice, bob) = ids();
            let t = flip(at);
            let o = known(
                &alice,
                &bob,
                &bob.public(),
                &mut |_| true,
                Some((frame, &t)),
            );
            assert!(
                o.init.is_err() || o.resp.is_err(),
                "frame {frame} byte {at}: completed"
            );
            assert!(
                o.resp.is_err(),
                "frame {frame} byte {at}: responder accepted"
            );
        }
    }
}

#[test]
fn a_flipped_byte_in_any_code_mode_message_fails() {
    // Frames: 0 = PAKE A, 1 = PAKE B, 2 = noise 1, 3 = noise 2, 4 = noise 3, 5 = first transport.
    for frame in 0..6 {
        for at in [4usize, 20, 40] {
            let (alice, bob) = ids();
            let t = flip(at);
            let o = coded(
                &alice,
                &bob,
                "3-abandon-ability-able",
                "3-abandon-ability-able",
                Some((frame, &t)),
            );
            assert!(
                o.resp.is_err() || o.init.is_err(),
                "frame {frame} byte {at}: completed"
            );
        }
    }
}

#[test]
fn a_replayed_message_1_cannot_complete() {
    let (alice, bob) = ids();
    let (_i, m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    // First the honest run so an attacker has seen a whole session.
    let honest = known(&alice, &bob, &bob.public(), &mut |_| true, None);
    let mut old = honest.init.unwrap();
    let old_first = old.seal(b"hello").unwrap();
    // Replay message 1 to a fresh responder: it answers, but the attacker cannot produce
    // the initiator's first transport message (an old one does not decrypt).
    let mut r = Responder::new(&bob, &RV, None);
    assert!(matches!(r.read(&m1, &mut |_| true), Ok(Step::Send(_))));
    assert!(matches!(
        r.read(&old_first, &mut |_| true),
        Err(HandshakeError::Authentication)
    ));
}

#[test]
fn an_active_attacker_with_its_own_keys_fails_in_known_peer_mode() {
    let (alice, bob) = ids();
    let mallory = Identity::generate().unwrap();
    // Mallory answers Alice in Bob's place: Alice encrypted to Bob's pinned key.
    let (_i, m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    let mut fake_bob = Responder::new(&mallory, &RV, None);
    assert!(matches!(
        fake_bob.read(&m1, &mut |_| true),
        Err(HandshakeError::Authentication)
    ));
    // Mallory talks to Bob as herself: Bob's address book does not know her.
    let o = known(
        &mallory,
        &bob,
        &bob.public(),
        &mut |k| *k == alice.public(),
        None,
    );
    assert!(matches!(o.resp, Err(HandshakeError::UnknownPeer(_))));
}

#[test]
fn an_active_attacker_in_the_middle_fails_in_code_mode() {
    // Mallory does not know the code: she runs each half with her own guess.
    let (alice, bob) = ids();
    let mallory = Identity::generate().unwrap();
    let to_alice = coded(
        &alice,
        &mallory,
        "5-crystal-harbor-orbit",
        "5-zoo-zoo-zoo",
        None,
    );
    assert!(to_alice.init.is_err() && to_alice.resp.is_err());
    let to_bob = coded(
        &mallory,
        &bob,
        "5-zoo-zoo-zoo",
        "5-crystal-harbor-orbit",
        None,
    );
    assert!(matches!(to_bob.resp, Err(HandshakeError::CodeMismatch)));
}

#[test]
fn an_unknown_version_is_a_clear_error() {
    let (alice, bob) = ids();
    let (_i, mut m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    m1[1] = 9;
    let err = Responder::new(&bob, &RV, None)
        .read(&m1, &mut |_| true)
        .unwrap_err();
    assert!(matches!(err, HandshakeError::UnsupportedVersion(9)));
    assert!(err.to_string().contains("unsupported protocol version 9"));
    let (_i, mut m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    m1[2] = 7;
    assert!(matches!(
        Responder::new(&bob, &RV, None).read(&m1, &mut |_| true),
        Err(HandshakeError::UnsupportedMode(7))
    ));
}

#[test]
fn truncated_and_empty_handshake_frames_are_errors() {
    let (alice, bob) = ids();
    let (_i, m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    for cut in [0, 1, 2, 3, 10, m1.len() - 1] {
        let r = Responder::new(&bob, &RV, None).read(&m1[..cut], &mut |_| true);
        assert!(r.is_err(), "cut at {cut} accepted");
    }
}

#[test]
fn oversize_session_messages_are_refused_before_sending() {
    let (alice, bob) = ids();
    let o = known(&alice, &bob, &bob.public(), &mut |_| true, None);
    let mut i = o.init.unwrap();
    let big = vec![0u8; phi_conduit::crypto::handshake::MAX_MESSAGE + 1];
    assert!(matches!(i.seal(&big), Err(HandshakeError::TooLarge(_))));
    assert!(i.seal(&big[1..]).is_ok());
}

/// The code mode is XXpsk0 (since protocol version 2; version 3 adds the suite offer to
/// the payload, version 4 the ML-KEM-768 share): the PSK is mixed in before message 1, so
/// message 1 carries a tag under it (32-byte ephemeral + the suite offer + the share +
/// 16-byte tag; XXpsk3's message 1 is the ephemeral and the payload in clear), and a
/// wrong code fails right there, before the responder writes message 2 with its static
/// key.
#[test]
fn the_code_mode_is_xxpsk0_and_a_wrong_code_fails_at_message_1() {
    assert_eq!(
        phi_conduit::crypto::handshake::XXPSK0_PATTERN,
        "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s"
    );
    assert_eq!(phi_conduit::crypto::handshake::VERSION, 4);
    let (alice, bob) = ids();
    let code = Code::parse("8-crystal-harbor-orbit").unwrap();
    let (mut i, hello) = Initiator::code(&alice, &code, &RV);
    let mut r = Responder::new(&bob, &RV, Some(code));
    let Ok(Step::Send(pake_b)) = r.read(&hello, &mut |_| true) else {
        panic!("no PAKE answer")
    };
    let Ok(Step::Send(m1)) = i.read(&pake_b) else {
        panic!("no message 1")
    };
    let offer = phi_conduit::crypto::suite::encode_offer(&SuitePolicy::Auto.offer());
    assert_eq!(
        m1.len(),
        1 + 32 + offer.len() + SHARE_1 + 16,
        "message 1 is not sealed under the PSK"
    );
    // The offer does not travel in clear.
    assert!(!m1.windows(offer.len()).any(|w| w == offer.as_slice()));
    // A responder with another code refuses that very message 1.
    let (alice, bob) = ids();
    let (mut i, hello) =
        Initiator::code(&alice, &Code::parse("8-crystal-harbor-orbit").unwrap(), &RV);
    let mut r = Responder::new(
        &bob,
        &RV,
        Some(Code::parse("8-crystal-harbor-oven").unwrap()),
    );
    let Ok(Step::Send(pake_b)) = r.read(&hello, &mut |_| true) else {
        panic!("no PAKE answer")
    };
    let Ok(Step::Send(m1)) = i.read(&pake_b) else {
        panic!("no message 1")
    };
    assert!(matches!(
        r.read(&m1, &mut |_| true),
        Err(HandshakeError::CodeMismatch)
    ));
}

fn known_with(init: SuitePolicy, resp: SuitePolicy, tamper: Tamper<'_>) -> Outcome {
    let (alice, bob) = ids();
    let (i, f) = Initiator::known_peer_with(&alice, &bob.public(), &RV, &TID, init).unwrap();
    let r = Responder::new(&bob, &RV, None).with_suites(resp);
    run(i, f, r, &mut |_| true, tamper)
}

fn coded_with(init: SuitePolicy, resp: SuitePolicy, tamper: Tamper<'_>) -> Outcome {
    let (alice, bob) = ids();
    let code = Code::parse("8-crystal-harbor-orbit").unwrap();
    let (i, f) = Initiator::code_with(&alice, &code, &RV, init);
    let r = Responder::new(&bob, &RV, Some(code)).with_suites(resp);
    run(i, f, r, &mut |_| true, tamper)
}

#[test]
fn both_sides_agree_on_the_suite_in_both_modes() {
    use Suite::{Aes256Gcm as Aes, ChaCha20Poly1305 as ChaCha};
    use SuitePolicy::{Auto, Only};
    let auto = if hardware_aes() { Aes } else { ChaCha };
    let cases = [
        (Auto, Auto, auto),
        (Only(ChaCha), Auto, ChaCha),
        (Auto, Only(ChaCha), ChaCha),
        (Only(Aes), Auto, Aes),
        (Auto, Only(Aes), Aes),
        (Only(Aes), Only(Aes), Aes),
        (Only(ChaCha), Only(ChaCha), ChaCha),
    ];
    for (init, resp, expected) in cases {
        for (mode, o) in [
            ("known", known_with(init, resp, None)),
            ("code", coded_with(init, resp, None)),
        ] {
            let (i, r) = match (o.init, o.resp) {
                (Ok(i), Ok(r)) => (i, r),
                (i, r) => panic!("{mode} {init} / {resp}: {:?} / {:?}", i.err(), r.err()),
            };
            assert_eq!(i.suite(), expected, "{mode} {init} / {resp}");
            assert_eq!(r.suite(), expected, "{mode} {init} / {resp}");
            assert_eq!(i.handshake_hash(), r.handshake_hash());
        }
    }
}

#[test]
fn forced_suites_that_differ_fail_on_both_sides() {
    use Suite::{Aes256Gcm as Aes, ChaCha20Poly1305 as ChaCha};
    for (init, resp) in [(Aes, ChaCha), (ChaCha, Aes)] {
        for o in [
            known_with(SuitePolicy::Only(init), SuitePolicy::Only(resp), None),
            coded_with(SuitePolicy::Only(init), SuitePolicy::Only(resp), None),
        ] {
            let re = o.resp.err().unwrap();
            assert!(
                matches!(re, HandshakeError::NoCommonSuite { .. }),
                "responder: {re:?}"
            );
            assert_eq!(
                re.to_string(),
                format!("no common cipher suite: the peer offers {init}, this side accepts {resp}")
            );
            assert!(matches!(
                o.init.err(),
                Some(HandshakeError::PeerAborted(AbortReason::NoCommonSuite))
            ));
        }
    }
}

/// XORs `delta` into the byte `from_end` bytes before the end of a frame body (the
/// Noise payload is encrypted but malleable: a path that knows the plaintext can flip
/// exactly the bits it wants, and only the tag stops it).
fn xor_from_end(from_end: usize, delta: u8) -> impl Fn(&mut Vec<u8>) {
    move |f: &mut Vec<u8>| {
        let at = f.len() - from_end;
        f[at] ^= delta;
    }
}

#[test]
fn a_path_that_rewrites_the_offer_or_the_choice_fails_authentication_on_both_sides() {
    use Suite::{Aes256Gcm as Aes, ChaCha20Poly1305 as ChaCha};
    let offer = SuitePolicy::Only(Aes).offer();
    // The offer [count, AES] comes just before the post-quantum share at the end of
    // message 1's payload, before the 16-byte tag: turning AES (2) into ChaCha (1) is an
    // XOR with 3 on the last code byte.
    let strip_aes = xor_from_end(16 + SHARE_1 + 1, Aes.code() ^ ChaCha.code());
    assert_eq!(offer.len(), 1);
    // The choice is the first byte of the responder's reply payload, before its share.
    let force_chacha = xor_from_end(16 + SHARE_2 + 1, Aes.code() ^ ChaCha.code());
    let (policy, auto) = (SuitePolicy::Only(Aes), SuitePolicy::Auto);
    for (name, o) in [
        (
            "known: offer",
            known_with(policy, auto, Some((0, &strip_aes))),
        ),
        (
            "known: choice",
            known_with(policy, auto, Some((1, &force_chacha))),
        ),
        // Code mode: frames 0 and 1 are the PAKE, 2 carries the offer, 3 the choice.
        (
            "code: offer",
            coded_with(policy, auto, Some((2, &strip_aes))),
        ),
        (
            "code: choice",
            coded_with(policy, auto, Some((3, &force_chacha))),
        ),
    ] {
        let (ie, re) = (o.init.err().unwrap(), o.resp.err().unwrap());
        assert!(ie.is_auth(), "{name}: initiator {ie:?}");
        assert!(re.is_auth(), "{name}: responder {re:?}");
    }
}
