//! Two agents of the FIPS build (`--features fips` only; CI runs these with the FIPS
//! build): the outbox delivers to a peer pinned by its FIPS key, over FIPS mode's session,
//! and an outbox whose recipient has no FIPS pin fails its items with the reason.

use sha2::Digest;
use std::path::Path;

use crate::agent_flow::{configure, endpoint, files_in, start_agent, stop_agent, wait_until};
use crate::common::{conduit, text};

/// `home` pins `other`'s key and FIPS pin as `name`.
fn know_fips(home: &Path, name: &str, other: &Path) {
    let out = conduit(other).args(["id", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, pin) = (
        v["public_key"].as_str().unwrap(),
        v["fips_pin"].as_str().unwrap(),
    );
    let out = conduit(home)
        .args(["peers", "add", name, key, "--fips", pin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn fips_agents_deliver_to_a_pinned_peer_and_fail_items_for_an_unpinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (lab, clinic) = (endpoint(root, "lab"), endpoint(root, "clinic"));
    know_fips(&lab, "clinic", &clinic);
    know_fips(&clinic, "lab", &lab);
    // A third peer the lab knows only by its X25519 key.
    let other = endpoint(root, "other");
    let out = conduit(&lab)
        .args(["peers", "add", "other", &crate::common::key_of(&other)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let addr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().to_string()
    };
    let port = addr.rsplit(':').next().unwrap();
    let (outbox, unpinned) = (root.join("outbox"), root.join("outbox-other"));
    configure(
        &lab,
        &format!(
            "[agent]\nrescan_secs = 1\nretry_max_secs = 1\n\n[[outbox]]\npath = \"{}\"\nto = [\"clinic\"]\ndirect = \"localhost:{port}\"\n\n[[outbox]]\npath = \"{}\"\nto = [\"other\"]\ndirect = \"localhost:9\"\n",
            outbox.display(),
            unpinned.display()
        ),
    );
    configure(
        &clinic,
        &format!(
            "[agent]\nlisten = \"{addr}\"\n\n[[inbox]]\nfrom = [\"*\"]\npath = \"{}\"\n",
            clinic.join("inbox").display()
        ),
    );
    let receiver = start_agent(&clinic);
    let sender = start_agent(&lab);
    std::fs::create_dir_all(&outbox).unwrap();
    std::fs::create_dir_all(&unpinned).unwrap();
    for i in 0..3u8 {
        std::fs::write(outbox.join(format!("r{i}.hl7")), vec![b'a' + i; 40_000]).unwrap();
    }
    std::fs::write(unpinned.join("x.hl7"), b"synthetic").unwrap();
    let inbox = clinic.join("inbox");
    assert!(
        wait_until(40, || files_in(&inbox).len() == 3),
        "{:?}",
        files_in(&inbox)
    );
    for i in 0..3u8 {
        assert_eq!(
            std::fs::read(inbox.join(format!("r{i}.hl7"))).unwrap(),
            vec![b'a' + i; 40_000]
        );
    }
    assert!(wait_until(20, || files_in(&outbox.join("sent")).len() == 3));
    // The unpinned recipient's item failed, with the reason, and was not retried forever.
    let failed = || {
        let out = conduit(&lab)
            .args(["queue", "list", "--json"])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert!(
        wait_until(20, || failed().contains("no FIPS pin")),
        "{}",
        failed()
    );
    // Each receipt at both ends is the file's SHA-256 (a FIPS session's hash).
    let sha = |i: u8| hex::encode(sha2::Sha256::digest(vec![b'a' + i; 40_000]));
    let want: Vec<String> = (0..3).map(sha).collect();
    for (events, kind) in [
        (stop_agent(sender), "delivered"),
        (stop_agent(receiver), "received"),
    ] {
        let mut got: Vec<String> = events
            .iter()
            .filter(|e| e["event"] == kind)
            .map(|e| {
                assert!(e.get("blake3").is_none(), "{e}");
                e["sha256"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        got.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(got, want, "{kind}");
    }
}
