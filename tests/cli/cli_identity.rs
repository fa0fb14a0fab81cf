//! `conduit keygen`, `id` and `peers` as a user runs them: the real binary, a temporary
//! home (never the real one).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use crate::common::{self, scratch};

/// Runs `conduit --home HOME ARGS...` (the harness's command) to completion.
fn conduit(home: &Path, args: &[&str]) -> Output {
    common::conduit(home).args(args).output().unwrap()
}

fn id_json(home: &Path) -> serde_json::Value {
    let out = conduit(home, &["id", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn keygen_then_id_json_gives_key_and_fingerprint() {
    let home = tempfile::tempdir().unwrap();
    assert!(conduit(home.path(), &["keygen"]).status.success());
    let v = id_json(home.path());
    let key = v["public_key"].as_str().unwrap();
    let fp = v["fingerprint"].as_str().unwrap();
    assert!(key.starts_with("cpk1") && key.len() == 60, "{key}");
    assert_eq!(fp.len(), 39, "{fp}");
    let mode = std::fs::metadata(home.path().join("identity/secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dmode = std::fs::metadata(home.path().join("identity"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dmode & 0o777, 0o700);
}

#[test]
fn second_keygen_without_force_fails_and_keeps_the_key() {
    let home = tempfile::tempdir().unwrap();
    assert!(conduit(home.path(), &["keygen"]).status.success());
    let before = id_json(home.path());
    let out = conduit(home.path(), &["keygen"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(id_json(home.path()), before);
    assert!(
        conduit(home.path(), &["keygen", "--force"])
            .status
            .success()
    );
    assert_ne!(id_json(home.path()), before);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let home = tempfile::tempdir().unwrap();
    assert!(conduit(home.path(), &["keygen"]).status.success());
    let key = home.path().join("identity/secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = conduit(home.path(), &["id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refusing to use"), "{}", stderr(&out));
}

#[test]
fn conduit_home_variable_is_used_without_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let sc = scratch();
    let run = |args: &[&str]| {
        sc.conduit()
            .args(args)
            .env("CONDUIT_HOME", home.path())
            .output()
            .unwrap()
    };
    assert!(run(&["keygen"]).status.success());
    assert!(home.path().join("identity/secret.key").exists());
    assert!(run(&["id", "--json"]).status.success());
}

fn other_key() -> String {
    let other = tempfile::tempdir().unwrap();
    assert!(conduit(other.path(), &["keygen"]).status.success());
    id_json(other.path())["public_key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn peers_add_rejects_a_key_with_one_character_changed() {
    let home = tempfile::tempdir().unwrap();
    let key = other_key();
    // Change one character in the middle to another base32 character.
    let mut bytes = key.clone().into_bytes();
    bytes[30] = if bytes[30] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(bytes).unwrap();
    let out = conduit(home.path(), &["peers", "add", "lab", &typo]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    let truncated = &key[..key.len() - 2];
    let out = conduit(home.path(), &["peers", "add", "lab", truncated]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("length"), "{}", stderr(&out));
    // Nothing was stored.
    let out = conduit(home.path(), &["peers", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn peers_add_list_remove_with_duplicate_checks() {
    let home = tempfile::tempdir().unwrap();
    let (k1, k2) = (other_key(), other_key());
    assert!(
        conduit(home.path(), &["peers", "add", "lab", &k1])
            .status
            .success()
    );
    let dup_name = conduit(home.path(), &["peers", "add", "lab", &k2]);
    assert_eq!(dup_name.status.code(), Some(1));
    assert!(
        stderr(&dup_name).contains("already exists"),
        "{}",
        stderr(&dup_name)
    );
    let dup_key = conduit(home.path(), &["peers", "add", "lab2", &k1]);
    assert_eq!(dup_key.status.code(), Some(1));
    assert!(
        stderr(&dup_key).contains("already in the address book"),
        "{}",
        stderr(&dup_key)
    );
    assert!(
        conduit(home.path(), &["peers", "add", "clinic-b", &k2])
            .status
            .success()
    );
    let list: serde_json::Value =
        serde_json::from_slice(&conduit(home.path(), &["peers", "list", "--json"]).stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lab", "clinic-b"]);
    assert_eq!(list[0]["public_key"], k1.as_str());
    assert!(
        conduit(home.path(), &["peers", "remove", "lab"])
            .status
            .success()
    );
    let out = conduit(home.path(), &["peers", "remove", "lab"]);
    assert_eq!(out.status.code(), Some(1));
    let list: serde_json::Value =
        serde_json::from_slice(&conduit(home.path(), &["peers", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// The text form of raw key bytes, checksum included, built independently of the
/// library (which refuses to print a low-order key).
fn encode_key(key: &[u8; 32]) -> String {
    const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let sum = blake3::derive_key("phi-conduit v1 public key checksum", key);
    let mut raw = key.to_vec();
    raw.extend_from_slice(&sum[..3]);
    let (mut acc, mut bits, mut out) = (0u64, 0, String::from("cpk1"));
    for b in raw {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(B32[((acc >> bits) & 31) as usize]));
        }
    }
    out
}

#[test]
fn an_all_zero_or_low_order_key_is_rejected_at_enrollment() {
    let home = tempfile::tempdir().unwrap();
    // Sanity: the encoder matches the library on a real key.
    let real = other_key();
    let parsed = phi_conduit::crypto::identity::PublicKey::parse(&real).unwrap();
    assert_eq!(encode_key(parsed.as_bytes()), real);
    let mut one = [0u8; 32];
    one[0] = 1;
    for key in [[0u8; 32], one] {
        let out = conduit(home.path(), &["peers", "add", "bad", &encode_key(&key)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("low-order"), "{}", stderr(&out));
    }
}
