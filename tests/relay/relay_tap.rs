//! The relay never sees plaintext: an in-process relay (the real server, with its datagram
//! switch or its splice) with a test-only tap records every byte it forwards while a file
//! full of a marker pattern, under a marker name, goes through it; neither the marker,
//! nor the name, nor either endpoint's secret key appears in what the relay handled.

use crate::common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::inproc::{Clinics, clinics, relay, relay_switch_tapped, relayed};
use phi_conduit::relay::splice::{Direction, Tap};
use phi_conduit::relay::switch::SwitchTap;

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

/// Keeps every datagram the switch forwards.
#[derive(Default)]
struct Datagrams(Mutex<Vec<u8>>);

impl SwitchTap for Datagrams {
    fn forwarded(&self, datagram: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(datagram);
    }
}

const MARKER: &[u8] = b"PHI-MARKER-7f3a";
const NAME: &str = "PHI-MARKER-NAME-Doe-John.txt";

/// Writes the marker file into `c`'s directory.
fn marker_file(c: &Clinics) -> std::path::PathBuf {
    let src = c.dir.path().join(NAME);
    std::fs::write(&src, MARKER.repeat(200_000)).unwrap();
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_crosses_the_switch() {
    let c = clinics();
    let src = marker_file(&c);
    let recorder = Arc::new(Datagrams::default());
    let r = relay_switch_tapped(recorder.clone()).await;
    assert!(r.opts.switch);
    deliver_through(&c, r, &src).await;
    let seen = recorder.0.lock().unwrap();
    assert!(
        seen.len() > 3_000_000,
        "the tap saw the file's packets go by ({} bytes)",
        seen.len()
    );
    assert_no_secrets(&c, std::slice::from_ref(&*seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_crosses_the_splice() {
    let c = clinics();
    let src = marker_file(&c);
    let recorder = Arc::new(Recorder::default());
    let r = relay(Some(recorder.clone())).await;
    deliver_through(&c, r, &src).await;
    let seen = recorder.0.lock().unwrap();
    assert!(
        seen[1].len() > 3_000_000,
        "the tap saw the file's ciphertext go by ({} bytes)",
        seen[1].len()
    );
    assert_no_secrets(&c, &seen[..]);
}

/// Sends `src` through `r` (stopped afterwards); it must arrive identical.
async fn deliver_through(c: &Clinics, r: common::inproc::InprocRelay, src: &std::path::Path) {
    let out = c.dir.path().join("out");
    let (sent, received) = relayed(c, &r, &[src.to_path_buf()], &out).await;
    r.stop().await;
    assert_eq!(sent.unwrap().files[0].2, received.unwrap().files[0].2);
    assert_eq!(
        std::fs::read(out.join(NAME)).unwrap(),
        std::fs::read(src).unwrap()
    );
}

/// Neither the marker, the name nor either secret key is in any of `seen`.
fn assert_no_secrets(c: &Clinics, seen: &[Vec<u8>]) {
    let (marker, name) = (MARKER, NAME);
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
