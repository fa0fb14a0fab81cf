//! `conduit agent check`, `agent status` and `conduit queue` on real homes.

use crate::agent_flow::{configure, endpoint, know};
use crate::common::{conduit, text};

#[test]
fn check_says_what_the_agent_would_do_and_a_bad_rule_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let lab = endpoint(dir.path(), "lab");
    let a = endpoint(dir.path(), "clinic-a");
    know(&lab, "clinic-a", &a);
    let outbox = dir.path().join("out");
    configure(
        &lab,
        &format!(
            "[transfer]\nrelay = \"127.0.0.1:7470\"\n\n[[outbox]]\npath = \"{}\"\nto = [\"clinic-a\"]\ninclude = [\"*.pdf\"]\n\n[[inbox]]\nfrom = [\"clinic-a\"]\npath = \"{}\"\non_conflict = \"refuse\"\n",
            outbox.display(),
            dir.path().join("in").display()
        ),
    );
    let out = conduit(&lab).args(["agent", "check"]).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for needle in [
        "the configuration is valid",
        "send each file once it is unchanged for 5 s to clinic-a (via relay 127.0.0.1:7470)",
        "only names matching *.pdf",
        "move it into sent/",
        "receive from clinic-a",
        "name conflicts: refuse",
        "wait for senders at relay",
        "agent.db",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    let out = conduit(&lab)
        .args(["agent", "check", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outboxes"][0]["to"][0], "clinic-a");
    assert_eq!(v["inboxes"][0]["on_conflict"], "refuse");
    // A recipient not in the address book: exit code 2, the rule and the name said.
    configure(
        &lab,
        &format!(
            "[transfer]\nrelay = \"127.0.0.1:7470\"\n\n[[outbox]]\npath = \"{}\"\nto = [\"clinic-z\"]\n",
            outbox.display()
        ),
    );
    let out = conduit(&lab).args(["agent", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("[[outbox]] #1") && err.contains("clinic-z"),
        "{err}"
    );
    // Running refuses it the same way.
    let out = conduit(&lab).args(["agent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An unknown key names its line.
    configure(
        &lab,
        "[[outbox]]\npath = \"/x\"\nto = [\"a\"]\nafterwards = \"move\"\n",
    );
    let out = conduit(&lab).args(["agent", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("afterwards"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn queue_commands_list_retry_and_cancel_items() {
    let dir = tempfile::tempdir().unwrap();
    let lab = endpoint(dir.path(), "lab");
    let out = conduit(&lab).args(["queue", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
    // Items made as the agent makes them.
    let mut q = phi_conduit::agent::queue::Queue::open(&lab.join("agent.db")).unwrap();
    let to = vec![("clinic-a".to_string(), "cpk1x".to_string())];
    let ids = q
        .enqueue(&phi_conduit::agent::queue::NewFile {
            outbox: "/out",
            name: "a.pdf",
            size: 1,
            mtime_ns: 1,
            to: &to,
        })
        .unwrap();
    drop(q);
    let out = conduit(&lab)
        .args(["queue", "list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["id"], ids[0].as_str());
    assert_eq!(v["items"][0]["state"], "queued");
    let out = conduit(&lab)
        .args(["queue", "retry", &ids[0][..10]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = conduit(&lab)
        .args(["queue", "cancel", &ids[0], "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["item"]["state"], "cancelled");
    let out = conduit(&lab)
        .args(["queue", "cancel", &ids[0]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cancelled"),
        "{}",
        text(&out.stderr)
    );
    let out = conduit(&lab).args(["agent", "status"]).output().unwrap();
    assert!(
        text(&out.stdout).contains("cancelled 1"),
        "{}",
        text(&out.stdout)
    );
}
