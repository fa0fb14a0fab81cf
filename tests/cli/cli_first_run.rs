//! The first run (issue #20's bar): two empty homes, and the commands of README's
//! "Getting started" exactly: two at the receiving clinic (`conduit init --relay R
//! --relay-pin P`, `conduit receive --code`), two at the sending clinic (`conduit init
//! --relay R --relay-pin P`, `conduit send --code FILE`), no key handled by hand. Also
//! `send` and `receive` on a home without an identity make one and say so.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{start_relay, text};

/// The binary with `CONDUIT_HOME=home` run in `dir`, as a person would in a shell.
fn at(dir: &Path, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conduit"));
    c.current_dir(dir)
        .env("CONDUIT_HOME", home)
        .env("HOME", dir)
        .env_remove("CONDUIT_RELAY")
        .env_remove("CONDUIT_RELAY_PIN")
        .env_remove("CONDUIT_OUT")
        .stdin(Stdio::null());
    c
}

#[test]
fn a_first_transfer_from_two_empty_homes_takes_two_commands_a_side() {
    let relay = start_relay(&[]);
    let root = tempfile::tempdir().unwrap();
    let (lab, clinic) = (root.path().join("lab"), root.path().join("clinic"));
    for d in [&lab, &clinic] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (lab_home, clinic_home) = (lab.join("home"), clinic.join("home"));
    std::fs::write(clinic.join("report.pdf"), b"synthetic lab report").unwrap();

    // 1 (both sides): conduit init --relay R --relay-pin P
    for (dir, home) in [(&lab, &lab_home), (&clinic, &clinic_home)] {
        let out = at(dir, home)
            .args(["init", "--relay", &relay.addr, "--relay-pin", &relay.pin])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.contains("created a new identity"), "{said}");
        assert!(said.contains("conduit peers add "), "{said}");
    }

    // 2 (sending clinic): conduit send --code report.pdf; it prints the code and waits.
    let mut sender = at(&clinic, &clinic_home)
        .args(["send", "--code", "report.pdf"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sender.stdout.take().unwrap()).lines();
    let code = loop {
        let line = lines
            .next()
            .expect("the sender ended before printing a code")
            .unwrap();
        if let Some(code) = line.trim().strip_prefix("code: ") {
            break code.to_string();
        }
    };
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    // 2 (receiving clinic): conduit receive --code, the code typed in (here: stdin).
    let mut receiver = at(&lab, &lab_home)
        .args(["receive", "--code"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = receiver.stdin.take().unwrap();
        writeln!(stdin, "{code}").unwrap();
    }
    let got = receiver.wait_with_output().unwrap();
    assert!(got.status.success(), "receiver: {}", text(&got.stderr));
    let sent = sender.wait_with_output().unwrap();
    let _ = rest.join();
    assert!(sent.status.success(), "sender: {}", text(&sent.stderr));
    assert_eq!(
        std::fs::read(lab.join("report.pdf")).unwrap(),
        b"synthetic lab report"
    );
    relay.stop();
}

/// The `conduit peers add NAME KEY` line `init` printed, as arguments (its comment left out).
fn peers_add_line(init_stdout: &str) -> Vec<String> {
    let line = init_stdout
        .lines()
        .find(|l| l.starts_with("conduit peers add "))
        .unwrap_or_else(|| panic!("no peers add line in {init_stdout}"));
    let command = line.split('#').next().unwrap();
    command
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_direct_first_transfer_of_the_readme_takes_three_commands_a_side() {
    let root = tempfile::tempdir().unwrap();
    let (lab, clinic) = (root.path().join("lab"), root.path().join("clinic"));
    for d in [&lab, &clinic] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (lab_home, clinic_home) = (lab.join("home"), clinic.join("home"));
    std::fs::write(clinic.join("report.pdf"), b"synthetic report, direct").unwrap();
    // 1: conduit init --name lab / --name clinic
    let init = |dir: &Path, home: &Path, name: &str| {
        let out = at(dir, home)
            .args(["init", "--name", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        peers_add_line(&text(&out.stdout))
    };
    let lab_line = init(&lab, &lab_home, "lab");
    let clinic_line = init(&clinic, &clinic_home, "clinic");
    // 2: each side runs the line the other printed.
    for (dir, home, line) in [
        (&lab, &lab_home, &clinic_line),
        (&clinic, &clinic_home, &lab_line),
    ] {
        let out = at(dir, home).args(line).output().unwrap();
        assert!(out.status.success(), "{line:?}: {}", text(&out.stderr));
    }
    // 3: conduit receive --listen 0.0.0.0:PORT, and the send command it prints, to a name.
    let mut rx = at(&lab, &lab_home)
        .args(["receive", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(rx.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.rsplit(':').next().unwrap().trim().to_string();
    let hint = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("the sender runs: ")))
        .unwrap();
    assert!(
        hint.contains("conduit send FILES --to NAME --direct "),
        "{hint}"
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let sent = at(&clinic, &clinic_home)
        .args(["send", "report.pdf", "--to", "lab", "--direct"])
        .arg(format!("localhost:{port}"))
        .output()
        .unwrap();
    assert!(sent.status.success(), "sender: {}", text(&sent.stderr));
    let got = rx.wait_with_output().unwrap();
    let _ = rest.join();
    assert!(got.status.success(), "receiver: {}", text(&got.stderr));
    assert_eq!(
        std::fs::read(lab.join("report.pdf")).unwrap(),
        b"synthetic report, direct"
    );
}

#[test]
fn send_and_receive_make_an_identity_on_first_use_and_say_so() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let out = at(root.path(), &home)
        .args(["receive", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It listens (so it got past loading its identity); stop it.
    let mut child = out;
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("listening on "), "{first}");
    let _ = child.kill();
    let got = child.wait_with_output().unwrap();
    let err = text(&got.stderr);
    let created: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("created a new identity"))
        .collect();
    assert_eq!(created.len(), 1, "{err}");
    let id = at(root.path(), &home)
        .args(["id", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&id.stdout).unwrap();
    assert!(
        created[0].contains(v["fingerprint"].as_str().unwrap()),
        "{err}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join("identity/secret.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The second time, nothing is said.
    let file = root.path().join("x.txt");
    std::fs::write(&file, b"x").unwrap();
    let s = at(root.path(), &home)
        .args(["send", "x.txt", "--to", "nobody", "--direct", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!text(&s.stderr).contains("created a new identity"));
    // A sender's first use says it too.
    let other = root.path().join("other");
    let s = at(root.path(), &other)
        .args(["send", "x.txt", "--to", "nobody", "--direct", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(
        text(&s.stderr).contains("created a new identity"),
        "{}",
        text(&s.stderr)
    );
}

#[test]
fn init_asks_for_the_relay_at_a_terminal() {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers given; the other
    // arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!("SKIP: no pseudo-terminal on this host");
        return;
    }
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let child = {
        let mut cmd = at(root.path(), &home);
        cmd.args(["init", "--name", "lab"])
            .stdin(Stdio::from(slave))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    // The relay, then an empty answer for its pin (the system's CAs).
    write!(master, "relay.example.org:7471\n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let asked = text(&out.stderr);
    assert!(asked.contains("relay to meet other clinics at"), "{asked}");
    let file = std::fs::read_to_string(home.join("conduit.toml")).unwrap();
    assert!(
        file.contains("relay = \"relay.example.org:7471\""),
        "{file}"
    );
    assert!(!file.contains("\nrelay_pin ="), "{file}");
    let said = text(&out.stdout);
    assert!(said.contains("relay relay.example.org:7471"), "{said}");
}
