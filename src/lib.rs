//! # phi-conduit
//!
//! End-to-end encrypted transfer of files containing ePHI between two endpoints over
//! QUIC, directly or through a relay that runs in *conduit mode* (it forwards ciphertext
//! only, holds no key and writes nothing to disk).
//!
//! The library is what the `conduit` binary is made of. The binary (`src/main.rs`) owns
//! the command line (its `cli` module: argument definitions and handlers), the benchmark
//! driver (`bench`) and the demo (`demo`): it parses the command line, reads the
//! environment, calls into this crate and maps errors to exit codes. This crate has no
//! command-line parser types and reads no environment variables: what it needs is passed in.
//!
//! # Sending and receiving a file
//!
//! One [`transfer::Sender`] and one [`transfer::Receiver`], each configured once, each
//! run over a QUIC connection with a cancellation future (here: never). The receiver
//! hands back the authenticated, checked offer; the caller accepts or refuses it.
//!
//! ```
//! use phi_conduit::crypto::{identity::Identity, pipeline::CipherPool};
//! use phi_conduit::transfer::{Receiver, Recipient, Sender, dest::Destination, source};
//! use phi_conduit::{home::Home, peers::AddressBook, transport};
//! use std::future::pending;
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let (clinic, lab) = (Identity::generate()?, Identity::generate()?);
//! let mut lab_book = AddressBook::load(&Home::at(dir.path()))?;
//! lab_book.add("clinic", clinic.public())?;
//! std::fs::write(dir.path().join("note.txt"), "synthetic visit note")?;
//! let files = source::collect_with_dirs(&[dir.path().join("note.txt")])?;
//! let (to, pool) = (Recipient::Known(lab.public()), CipherPool::with_all_cores()?);
//! let sender = Sender::new(clinic, pool.clone());
//! let receiver = Receiver::new(lab, lab_book, pool);
//!
//! let server = transport::direct_server(([127, 0, 0, 1], 0).into())?;
//! let addr = server.local_addr()?;
//! let receiving = async {
//!     let conn = server.accept().await.ok_or(anyhow::anyhow!("closed"))?.await?;
//!     let offer = receiver.receive(&conn, pending()).await?; // who, what, how much
//!     anyhow::Ok(offer.accept(&Destination::open(&dir.path().join("inbox"))?).await?)
//! };
//! let sending = async {
//!     let client = transport::direct_client(addr)?;
//!     let conn = client.connect(addr, "phi-conduit")?.await?;
//!     let sent = sender.send(&conn, &to, &files, pending()).await?;
//!     client.wait_idle().await;
//!     anyhow::Ok(sent)
//! };
//! let (sent, got) = tokio::try_join!(sending, receiving)?;
//! assert_eq!(sent.files[0].2, got.files[0].2); // the same BLAKE3 at both ends
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`crypto`] | the cryptographic core: [`crypto::stream`] (the STREAM chunk cipher and its key schedule), [`crypto::pipeline`] (parallel seal/open over a pool of reused buffers; its cipher workers, [`crypto::pipeline::CipherPool`], in `crypto/cipher_pool.rs`), [`crypto::chunk_hash`] (whole-file BLAKE3 from per-chunk subtrees), [`crypto::file_hash`] (the session's file hash: BLAKE3, or SHA-256 in the FIPS session), [`crypto::aead`] (the AEADs of the suites: ChaCha20-Poly1305, AES-256-GCM, AES-256-GCM with module IVs), [`crypto::suite`] (suites, negotiation, usage limits), [`crypto::fips`] (FIPS mode: status, start-up checks, refusals), [`crypto::identity`] (X25519 identities, key text, fingerprints), [`crypto::handshake`] (Noise IK and XXpsk3 state machines), [`crypto::pake`] (code phrases and SPAKE2) |
//! | [`wire`] | sans-IO codecs: [`wire::frame`] (length-prefixed frames: one decoder, a size limit per format, used by the session and the relay Hello), [`wire::stream_header`] (the 16-byte header of a file stream), [`wire::wrap`] (the wrapped-packet header of the relay's datagram switch) |
//! | [`session`] | the handshake and typed session messages over an async stream (frames read through [`wire::frame::FrameDecoder`]) |
//! | [`transfer`] | moving files: [`transfer::sender`] ([`transfer::Sender`]), [`transfer::receiver`] ([`transfer::Receiver`], [`transfer::IncomingOffer`]), [`transfer::manifest`] (the offer's checks, pure), [`transfer::error`] ([`transfer::TransferError`], [`transfer::ErrorKind`], close codes), [`transfer::events`] (progress and summary), [`transfer::protocol`] (offer, reply, receipt), [`transfer::data`] (one file's STREAM chunks over a QUIC stream), [`transfer::paths`] (untrusted path validation), [`transfer::dest`] (the receiver's safe writes, free space), [`transfer::resume`] (sidecars and their parser, prefix hashes, checkpoints), [`transfer::source`] (the sender's files) |
//! | [`agent`] | the transfer agent (docs/AGENT.md): [`agent::config`] (`[[outbox]]`, `[[inbox]]`, `[agent]` checked against the address book), [`agent::queue`] (the durable queue in SQLite: items, attempts, receipts, what was received), [`agent::run`] ([`agent::run::Agent`]: scanner, dispatcher, receivers), [`agent::inbox`] (staging, conflict-free placing, `on_receive`), [`agent::live`] (deliveries in flight and queue changes, for the console) |
//! | [`console`] | the agent's local web console (docs/CONSOLE.md): [`console::login`] (one-time login tokens, sessions), [`console::server`] (the HTTP server: Host, Origin and CSRF checks, security headers, the live update stream) and the server-rendered pages with their one script |
//! | [`audit`] | the endpoint's tamper-evident audit trail: [`audit::record`] (schema and chained MAC), [`audit::log`] (locked, fsynced, rotated files), [`audit::verify`] (chain check, reading records) |
//! | [`transport`] | QUIC endpoints (direct, to and from a relay), certificates and pins, the one tuned transport configuration; [`transport::addr`] (`HOST:PORT` with names and IPv6, connecting to the first address that answers), [`transport::demux`] (one UDP socket shared by a quinn endpoint and wrapped packets) |
//! | [`relay`] | the relay in conduit mode: Hello, pairing, splice, the datagram switch ([`relay::switch`]), limits, tokens, metrics, fleet choice, and joining a relay as a client |
//! | [`home`] | the endpoint's home directory |
//! | [`config`] | `conduit.toml`: defaults for transfers, the audit trail and the relay; precedence and sources; [`config::edit`] (the commented template, one key set in place, typed values) |
//! | [`fsutil`] | small filesystem helpers for the endpoint's own files: private directories, atomic writes |
//! | [`peers`] | the address book of pinned peer keys |
//!
//! The protocol core is sans-IO where it can be: the STREAM state machines work on byte
//! slices and never touch a socket or a file, so they are unit-, property- and
//! vector-tested without IO. IO wrappers stay thin.
//!
//! See `docs/ARCHITECTURE.md` for the layers, the data path and the reasons behind them
//! (with every wire format, its codec, its limit and its fuzz target), and
//! `docs/PROTOCOL.md` for the normative wire format.

#![deny(missing_docs, unreachable_pub)]
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod audit;
pub mod config;
pub mod console;
pub mod crypto;
pub mod fsutil;
pub mod home;
pub mod peers;
pub mod relay;
pub mod session;
pub mod transfer;
pub mod transport;
pub mod wire;
