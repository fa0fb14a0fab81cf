//! The relay never sees plaintext: an in-process relay (the real server and splice) with
//! a test-only tap records every byte it forwards while a file full of a marker pattern,
//! under a marker name, goes through it; neither the marker, nor the name, nor either
//! endpoint's secret key appears in what the relay handled.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::crypto::stream::DEFAULT_CHUNK_SIZE;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::relay::client::{self, RelayOptions};
use phi_conduit::relay::config::Limits;
use phi_conduit::relay::hello::Role;
use phi_conduit::relay::server::Relay;
use phi_conduit::relay::splice::{Direction, Tap};
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::run::{self, Events, ReceivePolicy, Recipient};
use phi_conduit::transfer::source;
use phi_conduit::transport::{RelayTrust, ServerTls};

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
    let dir = tempfile::tempdir().unwrap();
    let marker = b"PHI-MARKER-7f3a";
    let name = "PHI-MARKER-NAME-Doe-John.txt";
    let src = dir.path().join(name);
    std::fs::write(&src, marker.repeat(200_000)).unwrap();

    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (a_pub, b_pub) = (a.public(), b.public());
    let mut book = AddressBook::load(&Home::at(dir.path().join("b"))).unwrap();
    book.add("clinic-a", a_pub).unwrap();

    let tls = ServerTls::self_signed(&["localhost"]).unwrap();
    let pin = tls.pin();
    let recorder = Arc::new(Recorder::default());
    let relay = Relay::bind(
        ([127, 0, 0, 1], 0).into(),
        tls,
        Limits::default(),
        None,
        Arc::new(|_| {}),
    )
    .unwrap()
    .with_tap(recorder.clone());
    let addr = relay.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let opts = RelayOptions {
        relays: vec![addr],
        trust: RelayTrust::Pin(pin),
        token: vec![],
        wait: std::time::Duration::from_secs(10),
    };
    let pool = CipherPool::new(2).unwrap();
    let quiet: Events = Arc::new(|_| {});
    let out = dir.path().join("out");
    let dest = Destination::open(&out).unwrap();
    let receiver = {
        let (opts, pool, quiet) = (opts.clone(), pool.clone(), quiet.clone());
        tokio::spawn(async move {
            let j = client::join(&opts, Role::Listen, false, run::rendezvous_for(&b_pub))
                .await
                .unwrap();
            let r = run::receive(
                &j.connection,
                &b,
                &book,
                &dest,
                &ReceivePolicy::default(),
                &pool,
                &quiet,
            )
            .await;
            j.endpoint.wait_idle().await;
            r
        })
    };
    let (files, _) = source::collect(std::slice::from_ref(&src)).unwrap();
    let j = client::join(&opts, Role::Connect, false, run::rendezvous_for(&b_pub))
        .await
        .unwrap();
    let a_secret = a.secret_bytes();
    let sent = run::send(
        &j.connection,
        &a,
        &Recipient::Known(b_pub),
        &files,
        DEFAULT_CHUNK_SIZE,
        &pool,
        &quiet,
    )
    .await
    .unwrap();
    j.endpoint.wait_idle().await;
    let received = receiver.await.unwrap().unwrap();
    assert_eq!(sent.files[0].2, received.files[0].2);
    assert_eq!(
        std::fs::read(out.join(name)).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let _ = stop.send(());
    relay_task.await.unwrap();

    let seen = recorder.0.lock().unwrap();
    let forward = &seen[1];
    assert!(
        forward.len() > 3_000_000,
        "the tap saw the file's ciphertext go by ({} bytes)",
        forward.len()
    );
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
    }
}
