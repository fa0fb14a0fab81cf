//! One file's data path over a real QUIC connection on loopback.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use phi_conduit::crypto::file_hash::{FileHash, FileHasher, HashAlg};
use phi_conduit::crypto::pipeline::{CipherPool, PositionalFile};
use phi_conduit::crypto::stream::{
    CHUNK_OVERHEAD, ChunkLayout, ChunkSize, FileKeyContext, StreamError, TransferKey,
};
use phi_conduit::transfer::data::{self, DataError, FileData};
use phi_conduit::transport;

/// A connected client/server pair over loopback, with the product's direct transport.
async fn pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let server = transport::direct_server("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = transport::direct_client(addr).unwrap();
    let (c, s) = tokio::join!(
        async { client.connect(addr, "phi-conduit").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (client, c, s)
}

fn file_data(size: u64, first: u64) -> FileData {
    let chunk = ChunkSize::new(64 << 10).unwrap();
    let layout = ChunkLayout::new(size, chunk);
    let key =
        TransferKey::derive(b"hh", &[1; 32]).file_key(&FileKeyContext::fresh([2; 16], 0, chunk));
    FileData {
        key: Arc::new(key),
        layout,
        first,
        tree: FileHasher::new(HashAlg::Blake3, &layout),
        buffers: 16,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn no_progress() -> data::Progress {
    Arc::new(|_| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_quic_intact_with_matching_hashes() {
    let size = 20 * 1024 * 1024 + 12345;
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src");
    let content = pattern(size);
    std::fs::write(&src_path, &content).unwrap();
    let dst = std::fs::File::create(dir.path().join("dst")).unwrap();

    let (_ep, client, server) = pair().await;
    let pool = CipherPool::new(2).unwrap();
    let fd = file_data(size as u64, 0);
    let source = Arc::new(PositionalFile::new(
        std::fs::File::open(&src_path).unwrap(),
        64 << 10,
    ));
    let send_pool = pool.clone();
    let send_fd = fd.clone();
    let sender = tokio::spawn(async move {
        let mut s = client.open_uni().await.unwrap();
        let h = data::send_file(&client, &mut s, &send_pool, send_fd, source, no_progress())
            .await
            .unwrap();
        s.stopped().await.ok();
        h
    });
    let recv = server.accept_uni().await.unwrap();
    let sink = Box::new(move |off: u64, buf: &[u8]| dst.write_all_at(buf, off));
    let got = data::receive_file(recv, &pool, fd, sink, no_progress())
        .await
        .unwrap();
    let sent = sender.await.unwrap();
    assert_eq!(sent, FileHash::blake3(&content));
    assert_eq!(got, sent);
    assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), content);
}

/// Sends raw bytes as "file data" and returns what the receiver says.
async fn receive_raw(size: u64, wire: Vec<u8>) -> Result<FileHash, DataError> {
    let (_ep, client, server) = pair().await;
    let pool = CipherPool::new(2).unwrap();
    tokio::spawn(async move {
        let mut s = client.open_uni().await.unwrap();
        s.write_all(&wire).await.unwrap();
        s.finish().unwrap();
        s.stopped().await.ok();
    });
    let recv = server.accept_uni().await.unwrap();
    data::receive_file(
        recv,
        &pool,
        file_data(size, 0),
        Box::new(|_, _| Ok(())),
        no_progress(),
    )
    .await
}

/// The honest wire image of a file of `size` pattern bytes.
fn sealed_wire(size: u64) -> Vec<u8> {
    let fd = file_data(size, 0);
    let content = pattern(size as usize);
    let mut wire = Vec::new();
    for i in 0..fd.layout.count() {
        let start = fd.layout.offset(i) as usize;
        let mut buf = content[start..start + fd.layout.plaintext_len(i)].to_vec();
        buf.extend_from_slice(&[0; CHUNK_OVERHEAD]);
        fd.key
            .seal_chunk(i, fd.layout.is_last(i), &mut buf)
            .unwrap();
        wire.extend_from_slice(&buf);
    }
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_the_wire_is_tampering() {
    let size = 300_000;
    let mut wire = sealed_wire(size);
    wire[70_000] ^= 0x20; // inside chunk 1
    let err = receive_raw(size, wire).await.unwrap_err();
    assert_eq!(
        err.stream_error(),
        Some(&StreamError::Tampered { index: 1 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_is_truncation() {
    let size = 300_000;
    let mut wire = sealed_wire(size);
    wire.truncate(3 * ((64 << 10) + CHUNK_OVERHEAD) + 10);
    let err = receive_raw(size, wire).await.unwrap_err();
    assert_eq!(
        err.stream_error(),
        Some(&StreamError::Truncated {
            received: 3,
            expected: 5
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_last_chunk_are_rejected() {
    let size = 300_000;
    let mut wire = sealed_wire(size);
    wire.push(0);
    let err = receive_raw(size, wire).await.unwrap_err();
    assert_eq!(err.stream_error(), Some(&StreamError::DataAfterLast));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_honest_wire_image_is_accepted() {
    let size = 300_000;
    let hash = receive_raw(size, sealed_wire(size)).await.unwrap();
    assert_eq!(hash, FileHash::blake3(&pattern(size as usize)));
}

/// A file of one chunk (every small file) is opened on the receiving task itself, not in
/// the pipeline: the same verdicts as the pipeline's, cut short, extended, tampered with
/// or honest, whether the bytes arrive in one piece or many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_chunk_file_has_the_pipelines_verdicts() {
    let size = 27_000;
    let honest = sealed_wire(size);
    assert_eq!(file_data(size, 0).layout.count(), 1);
    let hash = receive_raw(size, honest.clone()).await.unwrap();
    assert_eq!(hash, FileHash::blake3(&pattern(size as usize)));

    for cut in [0, 1, honest.len() / 2, honest.len() - 1] {
        let err = receive_raw(size, honest[..cut].to_vec()).await.unwrap_err();
        assert_eq!(
            err.stream_error(),
            Some(&StreamError::Truncated {
                received: 0,
                expected: 1
            }),
            "cut at {cut}"
        );
    }

    let mut longer = honest.clone();
    longer.push(0);
    let err = receive_raw(size, longer).await.unwrap_err();
    assert_eq!(err.stream_error(), Some(&StreamError::DataAfterLast));

    let mut flipped = honest;
    flipped[20_000] ^= 0x01;
    let err = receive_raw(size, flipped).await.unwrap_err();
    assert_eq!(
        err.stream_error(),
        Some(&StreamError::Tampered { index: 0 })
    );
}
