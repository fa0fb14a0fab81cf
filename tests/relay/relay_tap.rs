//! The relay never sees plaintext: an in-process relay (the real server and splice) with
//! a test-only tap records every byte it forwards while a file full of a marker pattern,
//! under a marker name, goes through it; neither the marker, nor the name, nor either
//! endpoint's secret key appears in what the relay handled.

use crate::common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::inproc::{clinics, relay, relayed};
use phi_conduit::relay::splice::{Direction, Tap};

/// Keeps everything forwarded, per direction.
#[derive(Default)]
struct Recorder(Mutex<[Vec<u8>; 2]>);

impl Tap for Recorder {
    fn forward(&self, dir: Direction, _stream: quinn::StreamId, chunk: Bytes) -> Vec<Bytes> {
        let mut seen = self.0.lock().unwrap();
        seen[usize::from(dir == Direction::BToA)].extend_from_slice(&chunk);
        vec![chunk]
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_crosses_the_relay() {
    let c = clinics();
    let marker = b"PHI-MARKER-7f3a";
    let name = "PHI-MARKER-NAME-Doe-John.txt";
    let src = c.dir.path().join(name);
    std::fs::write(&src, marker.repeat(200_000)).unwrap();
    let recorder = Arc::new(Recorder::default());
    let r = relay(Some(recorder.clone())).await;
    let out = c.dir.path().join("out");
    let (sent, received) = relayed(&c, &r, std::slice::from_ref(&src), &out).await;
    r.stop().await;
    assert_eq!(sent.unwrap().files[0].2, received.unwrap().files[0].2);
    assert_eq!(
        std::fs::read(out.join(name)).unwrap(),
        std::fs::read(&src).unwrap()
    );

    let seen = recorder.0.lock().unwrap();
    assert!(
        seen[1].len() > 3_000_000,
        "the tap saw the file's ciphertext go by ({} bytes)",
        seen[1].len()
    );
    let (a_secret, b_secret) = (c.a.secret_bytes(), c.b.secret_bytes());
    for s in seen.iter() {
        assert!(!contains(s, marker), "plaintext crossed the relay");
        assert!(
            !contains(s, name.as_bytes()),
            "a file name crossed the relay"
        );
        assert!(
            !contains(s, b"PHI-MARKER"),
            "part of the name or content crossed the relay"
        );
        assert!(
            !contains(s, &a_secret[..]),
            "the sender's secret key crossed the relay"
        );
        assert!(
            !contains(s, &b_secret[..]),
            "the receiver's secret key crossed the relay"
        );
    }
}
