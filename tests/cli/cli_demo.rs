//! `conduit demo`: the README's first command, as a real process.

use crate::common::scratch;

#[test]
fn the_demo_verifies_every_file_and_the_relay_writes_nothing() {
    let sc = scratch();
    let out = sc
        .conduit()
        .args(["demo", "--json", "--size", "3000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event"], "demo");
    assert_eq!(v["identical"], true);
    assert_eq!(v["files"], 5);
    // Two data files of 3,000,000 bytes in all, three notes of 44 bytes.
    assert_eq!(v["bytes"], 3_000_000 + 3 * 44);
    assert!(v["relay_bytes"].as_u64().unwrap() > 3_000_000);
    match v["relay_disk_write_bytes"].as_u64() {
        Some(n) => assert_eq!(n, 0, "the relay's threads wrote to disk"),
        None => eprintln!("SKIP disk-write check: this kernel has no per-thread IO accounting"),
    }
}

#[test]
fn the_demo_speaks_to_people_too() {
    let sc = scratch();
    let out = sc
        .conduit()
        .args(["demo", "--size", "100000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: every file arrived byte-identical"),
        "{text}"
    );
    assert_eq!(text.matches(" match\n").count(), 5, "{text}");
}
