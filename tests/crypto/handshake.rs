//! The handshake state machines, in memory, both modes, honest and hostile.

use phi_conduit::crypto::handshake::{
    AbortReason, AuthMethod, Established, HandshakeError, IK_PATTERN, Initiator, Policy, Responder,
    Step, VERSION, abort_frame, prologue,
};
use phi_conduit::crypto::hybrid::{KemError, PqPolicy};
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
    assert_eq!(phi_conduit::crypto::handshake::VERSION, 5);
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

fn pq_run(init: PqPolicy, resp: PqPolicy, code: bool, tamper: Tamper<'_>) -> Outcome {
    let (alice, bob) = ids();
    if code {
        let c = Code::parse("6-crystal-harbor-orbit").unwrap();
        let (i, f) = Initiator::code_with(&alice, &c, &RV, init);
        let r = Responder::new(&bob, &RV, Some(c)).with_post_quantum(resp);
        run(i, f, r, &mut |_| true, tamper)
    } else {
        let (i, f) = Initiator::known_peer_with(&alice, &bob.public(), &RV, &TID, init).unwrap();
        let r = Responder::new(&bob, &RV, None).with_post_quantum(resp);
        run(i, f, r, &mut |_| true, tamper)
    }
}

#[test]
fn the_post_quantum_exchange_is_on_by_default_in_both_modes() {
    let (alice, bob) = ids();
    for o in [
        known(&alice, &bob, &bob.public(), &mut |_| true, None),
        coded(
            &alice,
            &bob,
            "2-crystal-harbor-orbit",
            "2-crystal-harbor-orbit",
            None,
        ),
    ] {
        let (mut i, mut r) = (o.init.unwrap(), o.resp.unwrap());
        assert!(i.post_quantum() && r.post_quantum());
        assert_eq!(*i.file_salt(), *r.file_salt());
        // The file salt is derived, not the handshake hash itself.
        assert_ne!(*i.file_salt(), i.handshake_hash());
        let f = r.seal_message(&7u32).unwrap();
        assert_eq!(i.open_message::<u32>(&f).unwrap(), 7);
    }
}

#[test]
fn post_quantum_policies_in_both_modes() {
    use PqPolicy::{Off, Preferred, Required};
    // (initiator, responder) -> Some(post-quantum session?) or None (refused).
    let cases = [
        (Required, Required, Some(true)),
        (Required, Preferred, Some(true)),
        (Preferred, Required, Some(true)),
        (Preferred, Preferred, Some(true)),
        (Preferred, Off, Some(false)),
        (Off, Preferred, Some(false)),
        (Off, Off, Some(false)),
        (Required, Off, None),
        (Off, Required, None),
    ];
    for (init, resp, expected) in cases {
        for code in [false, true] {
            let o = pq_run(init, resp, code, None);
            let what = format!("{init} / {resp}, code mode {code}");
            match expected {
                Some(pq) => {
                    let (i, r) = match (o.init, o.resp) {
                        (Ok(i), Ok(r)) => (i, r),
                        (i, r) => panic!("{what}: {:?} / {:?}", i.err(), r.err()),
                    };
                    assert_eq!((i.post_quantum(), r.post_quantum()), (pq, pq), "{what}");
                    assert_eq!(*i.file_salt(), *r.file_salt(), "{what}");
                }
                None => {
                    // The side that requires it refuses; the other hears why.
                    let (ie, re) = (o.init.unwrap_err(), o.resp.unwrap_err());
                    let (refuser, told) = if init == Required {
                        (&ie, &re)
                    } else {
                        (&re, &ie)
                    };
                    assert!(
                        matches!(refuser, HandshakeError::PostQuantumRequired),
                        "{what}: {refuser:?}"
                    );
                    assert!(
                        matches!(
                            told,
                            HandshakeError::PeerAborted(AbortReason::PostQuantumRequired)
                        ),
                        "{what}: {told:?}"
                    );
                    assert!(!refuser.is_auth() && !told.is_auth());
                    assert!(
                        refuser
                            .to_string()
                            .contains("post-quantum key exchange required")
                    );
                }
            }
        }
    }
}

/// Removes the post-quantum share that ends a handshake payload (before the tag) and
/// turns its code into "none", as a path that wants a classical session would.
fn strip_share(share_len: usize) -> impl Fn(&mut Vec<u8>) {
    move |f: &mut Vec<u8>| {
        let end = f.len() - 16;
        f.drain(end - share_len..end);
        f[end - share_len - 1] ^= 0x01;
    }
}

#[test]
fn a_path_that_strips_or_rewrites_a_post_quantum_share_fails_authentication_on_both_sides() {
    let strip_key = strip_share(SHARE_1 - 1);
    let strip_ct = strip_share(SHARE_2 - 1);
    let bend_key = xor_from_end(16 + SHARE_1 / 2, 0x10);
    let bend_ct = xor_from_end(16 + SHARE_2 / 2, 0x10);
    // Known mode: frame 0 is message 1, 1 is message 2. Code mode: 2 and 3. Even a
    // responder that would accept a classical peer fails: the transcript changed.
    for resp in [PqPolicy::Required, PqPolicy::Preferred] {
        for (name, code, frame, t) in [
            (
                "known: strip key",
                false,
                0,
                &strip_key as &dyn Fn(&mut Vec<u8>),
            ),
            ("known: rewrite key", false, 0, &bend_key),
            ("known: strip ciphertext", false, 1, &strip_ct),
            ("known: rewrite ciphertext", false, 1, &bend_ct),
            ("code: strip key", true, 2, &strip_key),
            ("code: rewrite key", true, 2, &bend_key),
            ("code: strip ciphertext", true, 3, &strip_ct),
            ("code: rewrite ciphertext", true, 3, &bend_ct),
        ] {
            let o = pq_run(PqPolicy::Preferred, resp, code, Some((frame, t)));
            let (ie, re) = (o.init.err().unwrap(), o.resp.err().unwrap());
            assert!(ie.is_auth(), "{name}: initiator {ie:?}");
            assert!(re.is_auth(), "{name}: responder {re:?}");
        }
    }
}

#[test]
fn message_sizes_carry_the_ml_kem_shares() {
    let (alice, bob) = ids();
    let offer = phi_conduit::crypto::suite::encode_offer(&SuitePolicy::Auto.offer());
    let (mut i, m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    // hello header, ephemeral, encrypted static, payload (version, transfer id, offer,
    // share), tag.
    assert_eq!(m1.len(), 3 + 32 + 48 + 1 + 16 + offer.len() + SHARE_1 + 16);
    let mut r = Responder::new(&bob, &RV, None);
    let Ok(Step::Send(m2)) = r.read(&m1, &mut |_| true) else {
        panic!("no message 2")
    };
    assert_eq!(m2.len(), 1 + 32 + 1 + SHARE_2 + 16);
    assert!(matches!(i.read(&m2), Ok(Step::Done(_))));
    // Without the exchange both shares are one byte.
    let (_, m1) =
        Initiator::known_peer_with(&alice, &bob.public(), &RV, &TID, PqPolicy::Off).unwrap();
    assert_eq!(m1.len(), 3 + 32 + 48 + 1 + 16 + offer.len() + 1 + 16);
}

/// A known-peer message 1 made with Noise directly, with any payload tail after the
/// version and the transfer id: what a hostile but authenticated sender can send.
fn crafted_message_1(alice: &Identity, bob: &Identity, tail: &[u8]) -> Vec<u8> {
    let secret = alice.secret_bytes();
    let mut hs = snow::Builder::new(IK_PATTERN.parse().unwrap())
        .local_private_key(secret.as_slice())
        .remote_public_key(bob.public().as_bytes())
        .prologue(&prologue(AuthMethod::PinnedKey, &RV, None, None))
        .build_initiator()
        .unwrap();
    let mut payload = vec![VERSION];
    payload.extend_from_slice(&TID);
    payload.extend_from_slice(tail);
    let mut out = vec![0u8; 65535];
    let n = hs.write_message(&payload, &mut out).unwrap();
    let mut frame = vec![0x01, VERSION, AuthMethod::PinnedKey as u8];
    frame.extend_from_slice(&out[..n]);
    frame
}

#[test]
fn a_malformed_encapsulation_key_is_a_protocol_error_not_a_panic() {
    let (alice, bob) = ids();
    let offer = phi_conduit::crypto::suite::encode_offer(&SuitePolicy::Auto.offer());
    let ek_len = phi_conduit::crypto::hybrid::ENCAPSULATION_KEY_LEN;
    for n in [0, 1, 32, ek_len - 1, ek_len + 1, 4000] {
        let mut tail = offer.clone();
        tail.push(1);
        tail.extend(std::iter::repeat_n(0x5a, n));
        let m1 = crafted_message_1(&alice, &bob, &tail);
        let err = Responder::new(&bob, &RV, None)
            .read(&m1, &mut |_| true)
            .unwrap_err();
        assert!(
            matches!(err, HandshakeError::Kem(KemError::EncapsulationKeyLength(k)) if k == n),
            "{n}: {err:?}"
        );
        assert_eq!(err.abort_reason(), AbortReason::Protocol);
    }
    // An unknown key-exchange code, and no share at all (a version 3 payload).
    for share in [&[9u8][..], &[]] {
        let mut tail = offer.clone();
        tail.extend_from_slice(share);
        let m1 = crafted_message_1(&alice, &bob, &tail);
        let err = Responder::new(&bob, &RV, None)
            .read(&m1, &mut |_| true)
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Protocol(_)), "{err:?}");
    }
    // A well-formed "none" share is a classical peer: refused by default.
    let mut tail = offer.clone();
    tail.push(0);
    let m1 = crafted_message_1(&alice, &bob, &tail);
    assert!(matches!(
        Responder::new(&bob, &RV, None).read(&m1, &mut |_| true),
        Err(HandshakeError::PostQuantumRequired)
    ));
}

#[test]
fn a_malformed_ciphertext_is_a_protocol_error_not_a_panic() {
    let ct_len = phi_conduit::crypto::hybrid::CIPHERTEXT_LEN;
    let chacha = Policy {
        suites: SuitePolicy::Only(Suite::ChaCha20Poly1305),
        post_quantum: PqPolicy::Required,
        channel: None,
    };
    for n in [0, 1, ct_len - 1, ct_len + 1] {
        let (alice, bob) = ids();
        let (mut i, m1) =
            Initiator::known_peer_with(&alice, &bob.public(), &RV, &TID, chacha).unwrap();
        // A responder made with Noise directly answers with a short ciphertext.
        let secret = bob.secret_bytes();
        let mut hs = snow::Builder::new(IK_PATTERN.parse().unwrap())
            .local_private_key(secret.as_slice())
            .prologue(&prologue(AuthMethod::PinnedKey, &RV, None, None))
            .build_responder()
            .unwrap();
        let mut buf = vec![0u8; 65535];
        hs.read_message(&m1[3..], &mut buf).unwrap();
        let mut payload = vec![Suite::ChaCha20Poly1305.code(), 1];
        payload.extend(std::iter::repeat_n(0xa5, n));
        let k = hs.write_message(&payload, &mut buf).unwrap();
        let mut m2 = vec![0x02];
        m2.extend_from_slice(&buf[..k]);
        let err = i.read(&m2).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Kem(KemError::CiphertextLength(c)) if c == n),
            "{n}: {err:?}"
        );
        assert_eq!(err.abort_reason(), AbortReason::Protocol);
    }
}

#[test]
fn a_replayed_message_1_gets_a_fresh_encapsulation_each_time() {
    // Two responders answer the same replayed message 1: each encapsulates with fresh
    // randomness, so the two replies (and their secrets) differ, and neither completes
    // without the initiator's decapsulation key of that run.
    let (alice, bob) = ids();
    let (_i, m1) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    let replies: Vec<Vec<u8>> = (0..2)
        .map(
            |_| match Responder::new(&bob, &RV, None).read(&m1, &mut |_| true) {
                Ok(Step::Send(m2)) => m2,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    let ct = |m: &Vec<u8>| m[m.len() - 16 - SHARE_2 + 1..m.len() - 16].to_vec();
    assert_ne!(ct(&replies[0]), ct(&replies[1]));
    // Two runs of the initiator send different messages 1 (fresh ML-KEM key pairs too:
    // tests of crypto::hybrid).
    let (_j, m1b) = Initiator::known_peer(&alice, &bob.public(), &RV, &TID).unwrap();
    assert_ne!(m1, m1b);
}

/// The channel binding (the QUIC connection's exporter value) is part of the prologue,
/// in both modes: the same value on both sides completes; two different values (each
/// side on its own connection to a relay that terminates QUIC), or a value on one side
/// only, fail as an authentication error on both sides.
#[test]
fn the_channel_binding_must_match_in_both_modes() {
    let policy = |channel: Option<[u8; 32]>| Policy {
        channel,
        ..Policy::default()
    };
    let cases = [
        (Some([1u8; 32]), Some([1u8; 32]), true),
        (None, None, true),
        (Some([1u8; 32]), Some([2u8; 32]), false),
        (Some([1u8; 32]), None, false),
        (None, Some([1u8; 32]), false),
    ];
    for (ours, theirs, completes) in cases {
        let (alice, bob) = ids();
        let (i, f) =
            Initiator::known_peer_with(&alice, &bob.public(), &RV, &TID, policy(ours)).unwrap();
        let r = Responder::new(&bob, &RV, None).with_channel(theirs);
        let known = run(i, f, r, &mut |_| true, None);
        let code = Code::parse("8-crystal-harbor-orbit").unwrap();
        let (i, f) = Initiator::code_with(&alice, &code, &RV, policy(ours));
        let r = Responder::new(&bob, &RV, Some(code)).with_channel(theirs);
        let coded = run(i, f, r, &mut |_| true, None);
        for (mode, o) in [("known", known), ("code", coded)] {
            let what = format!("{mode}: {ours:?} / {theirs:?}");
            if completes {
                assert!(o.init.is_ok() && o.resp.is_ok(), "{what}");
            } else {
                // The initiator fails on the responder's message, or hears that the
                // responder failed on its own; in code mode message 1 is the first under
                // the prologue and the PSK at once, so the two cannot be told apart there
                // and the failure reads as a code mismatch.
                let expected = if mode == "known" {
                    AbortReason::Authentication
                } else {
                    AbortReason::CodeMismatch
                };
                assert!(
                    matches!(&o.init, Err(HandshakeError::PeerAborted(r)) if *r == expected)
                        || matches!(o.init, Err(HandshakeError::Authentication)),
                    "{what}: initiator {:?}",
                    o.init.as_ref().err()
                );
                assert!(o.resp.is_err(), "{what}: the responder completed");
            }
        }
    }
}
