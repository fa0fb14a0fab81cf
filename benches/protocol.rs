//! Criterion benches of the protocol pieces around the cipher core: the frame codec,
//! control messages (offer entries) encoded and decoded, path validation, the relay
//! Hello, and one file's data path over real QUIC on loopback (the pipeline with the
//! network) beside the same pipeline with no network (`bench cipher` covers the latter
//! over chunk sizes), and the end-to-end handshake in memory, with and without the
//! ML-KEM-768 exchange. `cargo bench --bench protocol`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phi_conduit::crypto::handshake::{Established, Initiator, Responder, Step};
use phi_conduit::crypto::hybrid::PqPolicy;
use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::{CipherPool, PositionalFile};
use phi_conduit::crypto::stream::{DEFAULT_CHUNK_SIZE, TransferKey};
use phi_conduit::relay::hello::{Hello, Role};
use phi_conduit::transfer::data::{self, FileData};
use phi_conduit::transfer::paths::RelPath;
use phi_conduit::transfer::protocol::{Entry, OfferEntries};
use phi_conduit::transport;
use phi_conduit::wire::frame::{FrameDecoder, to_frame};

fn entries() -> OfferEntries {
    OfferEntries(
        (0..12)
            .map(|i| Entry {
                path: format!("imaging/2026/11/patient-{i:04}/series-{i:03}.dcm"),
                size: 1_000_000 + i,
                mode: 0o644,
                mtime: 1_700_000_000,
            })
            .collect(),
    )
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.measurement_time(Duration::from_secs(2));
    let body = vec![0xab; 4096];
    let framed = to_frame(&body).unwrap();
    g.throughput(Throughput::Bytes(framed.len() as u64));
    g.bench_function("frame_encode_4KiB", |b| b.iter(|| to_frame(&body).unwrap()));
    g.bench_function("frame_decode_4KiB", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new();
            d.push(&framed);
            d.next_frame().unwrap().unwrap()
        })
    });
    let e = entries();
    let bytes = postcard::to_allocvec(&e).unwrap();
    g.throughput(Throughput::Elements(12));
    g.bench_function("offer_entries_encode_12", |b| {
        b.iter(|| postcard::to_allocvec(&e).unwrap())
    });
    g.bench_function("offer_entries_decode_12", |b| {
        b.iter(|| postcard::from_bytes::<OfferEntries>(&bytes).unwrap())
    });
    g.bench_function("path_validate_12", |b| {
        b.iter(|| {
            for x in &e.0 {
                RelPath::parse(&x.path).unwrap();
            }
        })
    });
    let hello = Hello {
        role: Role::Connect,
        single_use: false,
        rendezvous: [3; 32],
        token: vec![1; 32],
    }
    .encode()
    .unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("relay_hello_decode", |b| {
        b.iter(|| Hello::decode(&hello).unwrap())
    });
    g.finish();
}

/// One 64 MiB file through the data path: sealed, sent over QUIC on loopback, opened,
/// written to a sink that drops it.
fn data_path_over_quic(c: &mut Criterion) {
    const SIZE: u64 = 64 << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payload");
    std::fs::write(&path, vec![0x42; SIZE as usize]).unwrap();
    let pool = CipherPool::with_all_cores().unwrap();
    let keys = TransferKey::derive(&[1; 32], &[2; 32]);
    let mut g = c.benchmark_group("data_path");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("quic_loopback_64MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let server = transport::direct_server(([127, 0, 0, 1], 0).into()).unwrap();
                let addr = server.local_addr().unwrap();
                let client = transport::direct_client(addr).unwrap();
                let fd = |w| {
                    FileData::fresh(
                        &keys,
                        [0; 16],
                        0,
                        SIZE,
                        DEFAULT_CHUNK_SIZE,
                        w,
                        pool.threads(),
                    )
                };
                let rx = async {
                    let conn = server.accept().await.unwrap().await.unwrap();
                    let s = conn.accept_uni().await.unwrap();
                    let sink = Box::new(|_: u64, _: &[u8]| Ok(()));
                    data::receive_file(s, &pool, fd(16 << 20), sink, Arc::new(|_| {}))
                        .await
                        .unwrap()
                };
                let tx = async {
                    let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
                    let mut s = conn.open_uni().await.unwrap();
                    let src = Arc::new(PositionalFile::new(
                        std::fs::File::open(&path).unwrap(),
                        u64::from(DEFAULT_CHUNK_SIZE.get()),
                    ));
                    let h =
                        data::send_file(&conn, &mut s, &pool, fd(32 << 20), src, Arc::new(|_| {}))
                            .await
                            .unwrap();
                    let _ = s.stopped().await;
                    h
                };
                let (a, b) = tokio::join!(tx, rx);
                assert_eq!(a, b);
            })
        })
    });
    g.finish();
}

/// One whole known-peer handshake in memory (messages 1 and 2, and the first session
/// message that completes it at the responder), as both sides run it.
fn known_peer_handshake(a: &Identity, b: &Identity, pq: PqPolicy) -> (Established, Established) {
    let rv = [7u8; 32];
    let (mut i, m1) = Initiator::known_peer_with(a, &b.public(), &rv, &[1; 16], pq).unwrap();
    let mut r = Responder::new(b, &rv, None).with_post_quantum(pq);
    let Ok(Step::Send(m2)) = r.read(&m1, &mut |_| true) else {
        panic!("no message 2")
    };
    let Ok(Step::Done(mut ie)) = i.read(&m2) else {
        panic!("initiator not done")
    };
    let first = ie.seal(b"first").unwrap();
    let Ok(Step::Done(re)) = r.read(&first, &mut |_| true) else {
        panic!("responder not done")
    };
    (*ie, *re)
}

fn handshakes(c: &mut Criterion) {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let mut g = c.benchmark_group("handshake");
    g.measurement_time(Duration::from_secs(3));
    for (name, pq) in [
        ("known_peer_ml_kem_768", PqPolicy::Required),
        ("known_peer_x25519_only", PqPolicy::Off),
    ] {
        g.bench_function(name, |bench| {
            bench.iter(|| known_peer_handshake(&a, &b, pq));
        });
    }
    g.finish();
}

criterion_group!(benches, codecs, data_path_over_quic, handshakes);
criterion_main!(benches);
