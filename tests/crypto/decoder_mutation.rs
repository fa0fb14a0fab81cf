//! Mutation tests of every decoder that reads peer or relay input, on stable Rust (the
//! same decoders as the cargo-fuzz targets in fuzz/): valid encodings are mutated (bytes
//! replaced, inserted, removed, truncated) and fed back; decoders return an error or a
//! value that satisfies their invariants, and never panic.

use phi_conduit::crypto::handshake::{Initiator, Responder, Step};
use phi_conduit::crypto::identity::{Identity, PublicKey};
use phi_conduit::relay::hello::{Hello, Role};
use phi_conduit::transfer::paths::{RelPath, check_collisions};
use phi_conduit::transfer::protocol::{
    Entry, OfferDirs, OfferEntries, OfferStart, ReceiptHashes, ReceiptStart, Refusal, RefusalCode,
    Reply, ResumePoint, ResumePoints,
};
use phi_conduit::wire::frame::{FrameDecoder, MAX_FRAME, decode_all, to_frame};
use proptest::prelude::*;

/// A mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = v.len();
        match *m {
            Mutation::Set(i, b) if n > 0 => v[i % n] = b,
            Mutation::Insert(i, b) => v.insert(i % (n + 1), b),
            Mutation::Remove(i) if n > 0 => {
                v.remove(i % n);
            }
            Mutation::Truncate(i) => v.truncate(i % (n + 1)),
            _ => {}
        }
    }
    v
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

fn offer_messages() -> Vec<Vec<u8>> {
    let start = OfferStart {
        transfer_id: [1; 16],
        session_secret: [2; 32],
        chunk_size: 262_144,
        count: 2,
        dirs: 1,
        total_size: 10,
        audit_head: Some([5; 32]),
    };
    let entries = OfferEntries(vec![
        Entry {
            path: "a/b.txt".into(),
            size: 4,
            mode: 0o644,
            mtime: 1,
        },
        Entry {
            path: "c".into(),
            size: 6,
            mode: 0o600,
            mtime: -5,
        },
    ]);
    vec![
        postcard::to_allocvec(&start).unwrap(),
        postcard::to_allocvec(&entries).unwrap(),
        postcard::to_allocvec(&OfferDirs(vec!["empty/dir".into()])).unwrap(),
        postcard::to_allocvec(&Reply::Refuse(Refusal::new(RefusalCode::Exists, "a/b.txt")))
            .unwrap(),
        postcard::to_allocvec(&Reply::Refuse(Refusal {
            code: RefusalCode::TooManyEntries { max: 9 },
            detail: None,
        }))
        .unwrap(),
        postcard::to_allocvec(&Reply::Accept { resume_points: 1 }).unwrap(),
        postcard::to_allocvec(&ResumePoints(vec![ResumePoint {
            file: 1,
            from_chunk: 2,
            prefix_hash: [6; 32],
        }]))
        .unwrap(),
        postcard::to_allocvec(&ReceiptStart {
            count: 2,
            audit_head: Some([7; 32]),
        })
        .unwrap(),
        postcard::to_allocvec(&ReceiptHashes(vec![[3; 32], [4; 32]])).unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames(body in proptest::collection::vec(any::<u8>(), 1..300), ms in mutations(), step in 1usize..40) {
        let mut bytes = to_frame(&body).unwrap();
        bytes.extend(to_frame(b"second").unwrap());
        let bytes = apply(bytes, &ms);
        let _ = decode_all(&bytes);
        let mut d = FrameDecoder::new();
        'outer: for piece in bytes.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let used = d.push(rest);
                rest = &rest[used..];
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(!f.is_empty() && f.len() <= MAX_FRAME),
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
                if used == 0 {
                    break;
                }
            }
        }
    }

    #[test]
    fn relay_hellos(token in proptest::collection::vec(any::<u8>(), 0..=128), ms in mutations()) {
        let h = Hello { switch: false, role: Role::Connect, single_use: false, rendezvous: [5; 32], token };
        let bytes = apply(h.encode().unwrap(), &ms);
        if let Ok(d) = Hello::decode(&bytes) {
            prop_assert_eq!(d.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn control_messages(which in 0usize..5, ms in mutations()) {
        let bytes = apply(offer_messages()[which].clone(), &ms);
        let _ = postcard::from_bytes::<OfferStart>(&bytes);
        let _ = postcard::from_bytes::<OfferEntries>(&bytes);
        let _ = postcard::from_bytes::<OfferDirs>(&bytes);
        let _ = postcard::from_bytes::<Reply>(&bytes);
        let _ = postcard::from_bytes::<ResumePoints>(&bytes);
        let _ = postcard::from_bytes::<ReceiptStart>(&bytes);
        let _ = postcard::from_bytes::<ReceiptHashes>(&bytes);
    }

    #[test]
    fn manifest_paths(path in "[a-zA-Z0-9 ./\\\\:\u{0}-\u{1f}\u{202e}é]{0,40}", ms in mutations()) {
        let bytes = apply(path.into_bytes(), &ms);
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        if let Ok(p) = RelPath::parse(text) {
            let s = p.as_str();
            prop_assert!(!s.starts_with('/'));
            prop_assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            prop_assert!(!s.chars().any(char::is_control));
            prop_assert!(!s.contains('\\'));
            let _ = check_collisions([&p, &p]);
        }
    }
}

proptest! {
    // Handshakes are slower (X25519): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn handshake_messages(ms in mutations()) {
        let alice = Identity::from_secret([0x11; 32]).unwrap();
        let bob = Identity::from_secret([0x22; 32]).unwrap();
        let rendezvous = [9; 32];
        let (_, first) = Initiator::known_peer(&alice, &bob.public(), &rendezvous, &[1; 16]).unwrap();
        let mutated = apply(first.clone(), &ms);
        let mut r = Responder::new(&bob, &rendezvous, None);
        let mut accept = |_: &PublicKey| true;
        match r.read(&mutated, &mut accept) {
            // Only the untouched message may get through.
            Ok(Step::Send(_) | Step::Done(_) | Step::SendThenDone(..)) => prop_assert_eq!(mutated, first),
            Err(_) => {}
        }
    }
}
