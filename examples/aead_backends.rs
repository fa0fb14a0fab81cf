//! Bare AEAD seal and open, one thread, for every backend in reach, in the same run
//! (interleaved, best of 5): how the AES-256-GCM backend and the TLS provider were chosen
//! (docs/BENCHMARKS.md, "AEAD backends").
//!
//! ```text
//! cargo run --release --example aead_backends [MiB per run, default 256]
//! ```
//!
//! Each measurement seals messages in place, walking a region of 16 of them, with a fresh
//! nonce per message, as the STREAM layer does (256 KiB chunks) and as QUIC does (1452-
//! and 8952-byte packets); open copies each message in first, as `conduit bench
//! cipher`'s bare open does.

use std::time::{Duration, Instant};

const CHUNK: usize = 256 << 10;
const REGION: usize = 16;
const KEY: [u8; 32] = [0x42; 32];

type Seal = Box<dyn Fn(&[u8; 12], &mut [u8]) -> [u8; 16]>;
type Open = Box<dyn Fn(&[u8; 12], &mut [u8], &[u8; 16]) -> bool>;

fn ring_key(alg: &'static ring::aead::Algorithm) -> (Seal, Open) {
    use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey};
    let k = std::rc::Rc::new(LessSafeKey::new(
        UnboundKey::new(alg, &KEY[..alg.key_len()]).unwrap(),
    ));
    let k2 = k.clone();
    (
        Box::new(move |n, buf| {
            let t = k
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::empty(), buf)
                .unwrap();
            t.as_ref().try_into().unwrap()
        }),
        Box::new(move |n, buf, tag| {
            k2.open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*n),
                Aad::empty(),
                Tag::from(*tag),
                buf,
                0..,
            )
            .is_ok()
        }),
    )
}

fn awslc_key(alg: &'static aws_lc_rs::aead::Algorithm) -> (Seal, Open) {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let k = std::rc::Rc::new(LessSafeKey::new(
        UnboundKey::new(alg, &KEY[..alg.key_len()]).unwrap(),
    ));
    let k2 = k.clone();
    (
        Box::new(move |n, buf| {
            let t = k
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::empty(), buf)
                .unwrap();
            t.as_ref().try_into().unwrap()
        }),
        Box::new(move |n, buf, tag| {
            k2.open_in_place_separate_tag(Nonce::assume_unique_for_key(*n), Aad::empty(), tag, buf)
                .is_ok()
        }),
    )
}

fn rustcrypto_aes() -> (Seal, Open) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let k = std::rc::Rc::new(aes_gcm::Aes256Gcm::new((&KEY).into()));
    let k2 = k.clone();
    (
        Box::new(move |n, buf| {
            k.encrypt_in_place_detached(n.into(), &[], buf)
                .unwrap()
                .into()
        }),
        Box::new(move |n, buf, tag| {
            k2.decrypt_in_place_detached(n.into(), &[], buf, tag.into())
                .is_ok()
        }),
    )
}

fn nonce(i: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&(i as u64).to_be_bytes());
    n
}

/// Best-of-5 seal and open rates (GB/s) of each backend over `total` bytes in messages of
/// `size` bytes, interleaved.
fn measure(backends: &[(&str, (Seal, Open))], size: usize, total: usize) -> Vec<(f64, f64)> {
    let count = total / size;
    let mut region = vec![0u8; REGION * size];
    let mut best = vec![(Duration::MAX, Duration::MAX); backends.len()];
    for _ in 0..5 {
        for (b, (_, (seal, open))) in best.iter_mut().zip(backends) {
            let t = Instant::now();
            for i in 0..count {
                let slot = (i % REGION) * size;
                std::hint::black_box(seal(&nonce(i), &mut region[slot..slot + size]));
            }
            b.0 = b.0.min(t.elapsed());
            // Open: copy each sealed message in from a sealed image (as a receiver copies
            // it out of the network stack), then open it in place.
            let mut image = vec![0u8; REGION * size];
            let mut tags = [[0u8; 16]; REGION];
            for (j, tag) in tags.iter_mut().enumerate() {
                *tag = seal(&nonce(j), &mut image[j * size..(j + 1) * size]);
            }
            let t = Instant::now();
            for i in 0..count {
                let j = i % REGION;
                let slot = &mut region[j * size..(j + 1) * size];
                slot.copy_from_slice(&image[j * size..(j + 1) * size]);
                assert!(open(&nonce(j), slot, &tags[j]));
            }
            b.1 = b.1.min(t.elapsed());
        }
    }
    let gbps = |d: Duration| (count * size) as f64 / d.as_secs_f64() / 1e9;
    best.into_iter().map(|(s, o)| (gbps(s), gbps(o))).collect()
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let backends: Vec<(&str, (Seal, Open))> = vec![
        (
            "aes-256-gcm  aws-lc-rs",
            awslc_key(&aws_lc_rs::aead::AES_256_GCM),
        ),
        ("aes-256-gcm  ring", ring_key(&ring::aead::AES_256_GCM)),
        ("aes-256-gcm  rustcrypto", rustcrypto_aes()),
        (
            "chacha20-poly1305  aws-lc-rs",
            awslc_key(&aws_lc_rs::aead::CHACHA20_POLY1305),
        ),
        (
            "chacha20-poly1305  ring",
            ring_key(&ring::aead::CHACHA20_POLY1305),
        ),
        (
            "aes-128-gcm  aws-lc-rs",
            awslc_key(&aws_lc_rs::aead::AES_128_GCM),
        ),
        ("aes-128-gcm  ring", ring_key(&ring::aead::AES_128_GCM)),
    ];
    println!(
        "bare AEAD, 1 thread, {mib} MiB per run, best of 5 (loadavg {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // STREAM chunks (256 KiB), and QUIC packets: the default maximum UDP payload (1452)
    // and a 9000-byte jumbo frame's.
    for size in [CHUNK, 1452, 8952] {
        println!(
            "\n{:<32} {:>10} {:>10}   ({size}-byte messages)",
            "", "seal GB/s", "open GB/s"
        );
        for ((name, _), (s, o)) in backends.iter().zip(measure(&backends, size, mib << 20)) {
            println!("{name:<32} {s:>10.2} {o:>10.2}");
        }
    }
}
