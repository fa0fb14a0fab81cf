//! The FIPS module's service indicator around the chunk cipher (FIPS build only): a chunk
//! of the suite FIPS mode uses is sealed and opened through approved services, and the
//! suites with caller-chosen nonces are not (why FIPS mode does not use them).
//!
//! AWS-LC counts approved services per thread: `FIPS_service_indicator_after_call()`
//! is larger than `..._before_call()` exactly when an approved service ran in between.
//! `FileKey::seal_chunk` and `open_chunk` run on the calling thread.

use phi_conduit::crypto::stream::{ChunkSize, FileKey};
use phi_conduit::crypto::suite::Suite;

/// True when `f` ran an approved service of the module (and nothing unapproved after it).
fn approved(f: impl FnOnce()) -> bool {
    // SAFETY: both functions only read a thread-local counter of the module.
    let before = unsafe { aws_lc_fips_sys::FIPS_service_indicator_before_call() };
    f();
    let after = unsafe { aws_lc_fips_sys::FIPS_service_indicator_after_call() };
    after > before
}

#[test]
fn chunks_of_the_fips_suite_are_sealed_and_opened_by_approved_services() {
    const { assert!(phi_conduit::crypto::fips::ENABLED) };
    let chunk = ChunkSize::new(16 << 10).unwrap();
    let key = FileKey::with_suite(Suite::Aes256GcmRandomIv, &[0x11; 32], chunk);
    let mut buf = vec![0x5a; 16 << 10];
    buf.extend_from_slice(&[0; 28]);
    assert!(
        approved(|| key.seal_chunk(3, false, &mut buf).unwrap()),
        "seal not approved"
    );
    assert!(
        approved(|| key.open_chunk(3, false, &mut buf).unwrap()),
        "open not approved"
    );
    assert_eq!(&buf[..16 << 10], &vec![0x5a; 16 << 10][..]);
}

#[test]
fn a_caller_chosen_nonce_is_not_an_approved_seal() {
    let chunk = ChunkSize::new(16 << 10).unwrap();
    let key = FileKey::with_suite(Suite::Aes256Gcm, &[0x11; 32], chunk);
    let mut buf = vec![0x5a; 16 << 10];
    buf.extend_from_slice(&[0; 16]);
    assert!(
        !approved(|| key.seal_chunk(3, false, &mut buf).unwrap()),
        "AES-GCM under a caller-chosen nonce reported approved: FIPS mode's suite choice rests on it not being so"
    );
}
