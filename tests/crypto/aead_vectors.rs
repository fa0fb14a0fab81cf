//! The AEAD backends against RFC 8439 section 2.8.2, NIST CAVP and the Wycheproof
//! vectors. Run with `--features rustcrypto-aead` (ChaCha20-Poly1305) or `ring-aead`
//! (both suites) to check the other backends the same way.

use phi_conduit::crypto::aead::{AeadKey, NONCE_LEN, TAG_LEN};
use phi_conduit::crypto::suite::Suite;
use serde::Deserialize;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).expect("test data is hex")
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.trim_start().strip_prefix('='))
        })
        .unwrap_or_else(|| panic!("field {name} missing"))
        .trim()
}

#[test]
fn rfc8439_section_2_8_2() {
    let text = include_str!("../data/rfc8439_aead.txt");
    let key: [u8; 32] = unhex(field(text, "key")).try_into().unwrap();
    let nonce: [u8; NONCE_LEN] = unhex(field(text, "nonce")).try_into().unwrap();
    let aad = unhex(field(text, "aad"));
    let pt = unhex(field(text, "plaintext"));
    let ct = unhex(field(text, "ciphertext"));
    let tag: [u8; TAG_LEN] = unhex(field(text, "tag")).try_into().unwrap();

    let k = AeadKey::new(&key);
    let mut buf = pt.clone();
    assert_eq!(k.seal_in_place(&nonce, &aad, &mut buf), tag);
    assert_eq!(buf, ct);
    k.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
    assert_eq!(buf, pt);
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "numberOfTests")]
    number_of_tests: usize,
    #[serde(rename = "testGroups")]
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    #[serde(rename = "ivSize")]
    iv_size: usize,
    #[serde(rename = "keySize")]
    key_size: usize,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "tcId")]
    id: u32,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: String,
}

#[test]
fn wycheproof_chacha20_poly1305() {
    let (valid, invalid) = wycheproof(
        include_str!("../data/wycheproof/chacha20_poly1305_test.json"),
        Suite::ChaCha20Poly1305,
    );
    assert!(
        valid > 200 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}

#[test]
fn wycheproof_aes_256_gcm() {
    let (valid, invalid) = wycheproof(
        include_str!("../data/wycheproof/aes_gcm_256_96_test.json"),
        Suite::Aes256Gcm,
    );
    assert_eq!((valid, invalid), (39, 27));
}

#[test]
fn nist_cavp_gcm_encrypt_ext_iv256() {
    let text = include_str!("../data/nist_gcm_encrypt_ext_iv256.txt");
    let mut n = 0;
    let records = text
        .split("\n\n")
        .filter(|r| r.lines().any(|l| l.starts_with("key = ")));
    for record in records {
        let key: [u8; 32] = unhex(field(record, "key")).try_into().unwrap();
        let iv: [u8; NONCE_LEN] = unhex(field(record, "iv")).try_into().unwrap();
        let aad = unhex(field(record, "aad"));
        let pt = unhex(field(record, "pt"));
        let ct = unhex(field(record, "ct"));
        let tag: [u8; TAG_LEN] = unhex(field(record, "tag")).try_into().unwrap();
        let k = AeadKey::with_suite(Suite::Aes256Gcm, &key);
        let mut buf = pt.clone();
        assert_eq!(k.seal_in_place(&iv, &aad, &mut buf), tag, "record {n}");
        assert_eq!(buf, ct, "record {n}");
        k.open_in_place(&iv, &aad, &mut buf, &tag).unwrap();
        assert_eq!(buf, pt, "record {n}");
        // A flipped tag bit does not open.
        let mut bad = tag;
        bad[0] ^= 1;
        let mut buf = ct.clone();
        assert!(
            k.open_in_place(&iv, &aad, &mut buf, &bad).is_err(),
            "record {n}"
        );
        n += 1;
    }
    assert_eq!(n, 375);
}

/// Runs one Wycheproof AEAD file against `suite`; returns (valid, invalid) counts.
fn wycheproof(json: &str, suite: Suite) -> (usize, usize) {
    let file: File = serde_json::from_str(json).unwrap();
    let (mut valid, mut invalid, mut other_sizes) = (0, 0, 0);
    for group in &file.groups {
        for case in &group.tests {
            if group.iv_size != 96 || group.key_size != 256 {
                // The interface takes a 12-byte nonce and a 32-byte key by type, so these
                // cases cannot even be expressed; they must all be invalid ones.
                assert_eq!(case.result, "invalid", "tcId {}", case.id);
                other_sizes += 1;
                continue;
            }
            let key: [u8; 32] = unhex(&case.key).try_into().unwrap();
            let nonce: [u8; NONCE_LEN] = unhex(&case.iv).try_into().unwrap();
            let aad = unhex(&case.aad);
            let msg = unhex(&case.msg);
            let ct = unhex(&case.ct);
            let tag: [u8; TAG_LEN] = unhex(&case.tag).try_into().unwrap();
            let k = AeadKey::with_suite(suite, &key);
            let mut buf = ct.clone();
            let opened = k.open_in_place(&nonce, &aad, &mut buf, &tag);
            match case.result.as_str() {
                "valid" => {
                    assert!(opened.is_ok(), "tcId {} should open", case.id);
                    assert_eq!(buf, msg, "tcId {}", case.id);
                    let mut sealed = msg.clone();
                    assert_eq!(
                        k.seal_in_place(&nonce, &aad, &mut sealed),
                        tag,
                        "tcId {}",
                        case.id
                    );
                    assert_eq!(sealed, ct, "tcId {}", case.id);
                    valid += 1;
                }
                "invalid" => {
                    assert!(opened.is_err(), "tcId {} must not open", case.id);
                    invalid += 1;
                }
                other => panic!("tcId {}: unexpected result {other}", case.id),
            }
        }
    }
    assert_eq!(valid + invalid + other_sizes, file.number_of_tests);
    (valid, invalid)
}
