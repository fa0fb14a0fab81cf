//! The agent's web console (docs/CONSOLE.md) with real processes: an agent serving it on
//! loopback, `conduit console url` for the login link, raw HTTP/1.1 requests for the
//! security checks, and headless Chromium for what a person sees.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use crate::agent_flow::{configure, endpoint, know, start_agent, stop_agent, wait_until};
use crate::common::{self, conduit, text};

/// A loopback TCP port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `conduit console url` in `home`: the login link.
fn login_url(home: &Path) -> String {
    let out = conduit(home).args(["console", "url"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A response: status, headers (lowercase names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `port` (the connection closes after it); a POST body is a
/// form, urlencoded.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let kind = (method == "POST").then_some("application/x-www-form-urlencoded");
    raw_request(port, method, path, headers, kind, body.as_bytes())
}

/// One HTTP/1.1 request with a body of `content_type`.
fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(kind) = content_type {
        req.push_str(&format!(
            "Content-Type: {kind}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (and close) before it read a refused body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A multipart form: `(name, file name, bytes)` parts in order.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "conduit-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The CSRF token of a page's forms.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string()
}

/// The path and query of a login link.
fn path_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap();
    &rest[rest.find('/').unwrap()..]
}

/// An agent with one inbox (listening directly) and the console on `port`.
fn agent_with_console(root: &Path, port: u16) -> std::path::PathBuf {
    let home = endpoint(root, "clinic");
    let lab = endpoint(root, "lab");
    know(&home, "lab", &lab);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    configure(
        &home,
        &format!(
            "[agent]\nlisten = \"{udp}\"\n\n[[inbox]]\nfrom = [\"lab\"]\npath = \"{}\"\n\n[console]\nlisten = \"127.0.0.1:{port}\"\n",
            root.join("inbox").display()
        ),
    );
    home
}

#[test]
fn a_console_on_a_non_loopback_address_is_refused_by_agent_check_and_console_url() {
    let dir = tempfile::tempdir().unwrap();
    let home = agent_with_console(dir.path(), 7480);
    let toml = std::fs::read_to_string(home.join("conduit.toml"))
        .unwrap()
        .replace("127.0.0.1:7480", "0.0.0.0:7480");
    configure(&home, &toml);
    for args in [&["agent", "check"][..], &["console", "url"]] {
        let out = conduit(&home).args(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("[console]")
                && err.contains("not a loopback address")
                && err.contains("docs/CONSOLE.md"),
            "{args:?}: {err}"
        );
        assert!(text(&out.stdout).is_empty(), "no link may be printed");
    }
}

#[test]
fn the_console_checks_host_cookie_origin_and_csrf_and_a_login_link_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let home = agent_with_console(dir.path(), port);
    let agent = start_agent(&home);
    assert_eq!(
        agent.first["console"],
        format!("127.0.0.1:{port}").as_str(),
        "{}",
        agent.first
    );
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let h = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut v = vec![("Host", host.clone())];
        v.extend(extra.iter().map(|(n, x)| (*n, x.to_string())));
        v
    };
    let get = |path: &str, headers: &[(&'static str, String)]| {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        request(port, "GET", path, &hs, "")
    };
    let post = |path: &str, headers: &[(&'static str, String)], body: &str| {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        request(port, "POST", path, &hs, body)
    };

    // No cookie: no data, and how to log in; the security headers on every response.
    let r = get("/outbox", &h(&[]));
    assert_eq!(r.status, 401);
    assert!(
        r.body.contains("conduit console url") && !r.body.contains("queued ·"),
        "{}",
        r.body
    );
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A foreign Host (DNS rebinding).
    let r = get("/outbox", &[("Host", "evil.example".to_string())]);
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(r.header("content-security-policy").is_some());

    // The login link: a cookie HttpOnly and SameSite=Strict, then the outbox.
    let url = login_url(&home);
    let r = get(path_of(&url), &h(&[]));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/outbox"));
    let set = r.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    // Used once: the same link is refused.
    let again = get(path_of(&url), &h(&[]));
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(again.header("set-cookie").is_none());

    let page = get("/outbox", &h(&[("Cookie", &cookie)]));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<h1>Outbox</h1>"), "{}", page.body);
    for path in [
        "/outbox",
        "/inbox",
        "/peers",
        "/audit",
        "/health",
        "/static/console.css",
    ] {
        let r = get(path, &h(&[("Cookie", &cookie)]));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        // Nothing from another origin: no absolute URL at all.
        assert!(
            !r.body.contains("http://")
                && !r.body.contains("https://")
                && !r.body.contains("//cdn"),
            "{path}"
        );
    }
    let peers = get("/peers", &h(&[("Cookie", &cookie)]));
    assert!(peers.body.contains("lab"), "{}", peers.body);
    let audit = get("/audit", &h(&[("Cookie", &cookie)]));
    assert!(audit.body.contains("chain valid"), "{}", audit.body);
    // The latest records, newest first: this session's login is there.
    assert!(
        audit
            .body
            .contains("<td>console<br><small>console</small></td>"),
        "{}",
        audit.body
    );
    let export = get("/audit/export", &h(&[("Cookie", &cookie)]));
    assert_eq!(export.status, 200);
    assert!(
        export
            .header("content-disposition")
            .unwrap_or_default()
            .starts_with("attachment")
    );
    let records: Vec<serde_json::Value> = export
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "console" && r["reason"] == "login"),
        "{}",
        export.body
    );
    assert_eq!(get("/audit/export", &h(&[])).status, 401);

    // The CSRF token of this session, from its logout form.
    let csrf = csrf_of(&page.body);
    // A change without the token, with a wrong one, from a foreign origin, or without
    // an origin: refused, and the session lives on.
    let with = |o: &str| h(&[("Cookie", &cookie), ("Origin", o)]);
    assert_eq!(post("/logout", &with(&origin), "").status, 403);
    assert_eq!(
        post(
            "/logout",
            &with(&origin),
            &format!("csrf={}", "0".repeat(64))
        )
        .status,
        403
    );
    assert_eq!(
        post(
            "/logout",
            &with("http://evil.example"),
            &format!("csrf={csrf}")
        )
        .status,
        403
    );
    assert_eq!(
        post(
            "/logout",
            &h(&[("Cookie", &cookie)]),
            &format!("csrf={csrf}")
        )
        .status,
        403
    );
    assert_eq!(get("/outbox", &h(&[("Cookie", &cookie)])).status, 200);
    // The Send form: the token must come first, or nothing is written.
    let send_dir = home.join("console-outbox");
    let (kind, body) = multipart(&[
        ("to", None, b"lab"),
        ("csrf", None, csrf.as_bytes()),
        ("file", Some("a.txt"), b"x"),
    ]);
    let hs: Vec<(&str, &str)> = vec![("Host", &host), ("Cookie", &cookie), ("Origin", &origin)];
    assert_eq!(
        raw_request(port, "POST", "/send", &hs, Some(&kind), &body).status,
        403
    );
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"nobody"),
        ("file", Some("a.txt"), b"x"),
    ]);
    assert_eq!(
        raw_request(port, "POST", "/send", &hs, Some(&kind), &body).status,
        400
    );
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"lab"),
        ("file", Some(".hidden"), b"x"),
    ]);
    assert_eq!(
        raw_request(port, "POST", "/send", &hs, Some(&kind), &body).status,
        400
    );
    let waiting = || std::fs::read_dir(&send_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(waiting(), 0, "a refused form left a file");
    // A good one: queued for "lab", listed on the outbox.
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"lab"),
        ("file", Some("results 7.csv"), b"a,b\n1,2\n"),
    ]);
    let sent = raw_request(port, "POST", "/send", &hs, Some(&kind), &body);
    assert_eq!(sent.status, 303, "{}", sent.body);
    assert_eq!(
        std::fs::read(send_dir.join("results 7.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    let listed = get("/outbox", &h(&[("Cookie", &cookie)]));
    assert!(
        listed.body.contains("results 7.csv") && listed.body.contains("<td>lab</td>"),
        "{}",
        listed.body
    );
    // The same name again, while the first waits: refused, the first kept.
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"lab"),
        ("file", Some("results 7.csv"), b"other"),
    ]);
    assert_eq!(
        raw_request(port, "POST", "/send", &hs, Some(&kind), &body).status,
        409
    );
    assert_eq!(
        std::fs::read(send_dir.join("results 7.csv")).unwrap(),
        b"a,b\n1,2\n"
    );
    assert_eq!(waiting(), 1);

    // The real logout ends the session.
    let out = post("/logout", &with(&origin), &format!("csrf={csrf}"));
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(get("/outbox", &h(&[("Cookie", &cookie)])).status, 401);

    stop_agent(agent);
    // Logins, the refused reuse and the logout are in the audit trail.
    let log = common::audit_text(&home);
    let console: Vec<_> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "console")
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(console.len(), 5, "{console:?}");
    assert_eq!(console[0], "login");
    assert!(console[1].starts_with("login refused"), "{console:?}");
    assert_eq!(console[2], "audit export");
    assert_eq!(console[3], "send: 1 file(s) queued for lab");
    assert_eq!(console[4], "logout");
}

/// Two endpoints, "lab" and "clinic", that know each other, and the `[transfer]` and
/// `[agent]` lines of a conduit.toml that meets at `relay` and retries within 2 s.
fn lab_and_clinic(
    root: &Path,
    relay: &common::Relay,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (lab, clinic) = (endpoint(root, "lab"), endpoint(root, "clinic"));
    know(&lab, "clinic", &clinic);
    know(&clinic, "lab", &lab);
    let transfer = format!(
        "[transfer]\nrelay = \"{}\"\nrelay_pin = \"{}\"\n\n[agent]\nrescan_secs = 1\nretry_max_secs = 2\n",
        relay.addr, relay.pin
    );
    (lab, clinic, transfer)
}

/// Headless Chromium with its WebDriver and Python's selenium, when installed (CI
/// installs Debian's `chromium`, `chromium-driver` and `python3-selenium`); `None` with
/// the reason printed outside CI, a failure in CI.
fn chromium() -> Option<std::path::PathBuf> {
    let selenium = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    let chrome = Path::new("/usr/bin/chromium");
    if !(chrome.exists() && Path::new("/usr/bin/chromedriver").exists() && selenium) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium, chromium-driver and python3-selenium (.ci/run installs them)"
        );
        eprintln!("SKIP: apt-get install chromium chromium-driver python3-selenium");
        return None;
    }
    Some(chrome.to_path_buf())
}

/// Chromium, headless, with its profile in `profile` (so a login's cookie stays for the
/// next call): `--dump-dom` of `url`, or a screenshot of it into `shot`.
fn browse(chrome: &Path, profile: &Path, url: &str, shot: Option<&Path>) -> String {
    let mut cmd = std::process::Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("--window-size=1200,700");
    match shot {
        Some(file) => cmd.arg(format!("--screenshot={}", file.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The bar: two agents and a relay; a person logs in through the printed link, sends a
/// 10 MiB file from the Send page, sees it delivered on the sender's outbox, and the
/// receiver's inbox page lists it.
/// Screenshots of each page go to target/tmp/console-screenshots (not committed).
#[test]
fn a_file_sent_from_the_send_page_is_delivered_and_listed_on_both_consoles() {
    let Some(chrome) = chromium() else { return };
    let relay = common::start_relay(&[]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (lab, clinic, transfer) = lab_and_clinic(root, &relay);
    let (lab_port, clinic_port) = (free_port(), free_port());
    let outbox = root.join("outbox");
    configure(
        &lab,
        &format!(
            "{transfer}\n[[outbox]]\npath = \"{}\"\nto = [\"clinic\"]\nstable_for_secs = 1\n\n[console]\nlisten = \"127.0.0.1:{lab_port}\"\n",
            outbox.display()
        ),
    );
    let inbox = root.join("inbox");
    configure(
        &clinic,
        &format!(
            "{transfer}\n[[inbox]]\nfrom = [\"lab\"]\npath = \"{}\"\n\n[console]\nlisten = \"127.0.0.1:{clinic_port}\"\n",
            inbox.display()
        ),
    );
    // The recipient starts only once the page shows the item waiting: its delivery must
    // then appear on that page through the live updates alone (no reload).
    let sender = start_agent(&lab);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // The Send page, driven through WebDriver: log in, tick "clinic", add the file, send.
    let src = root.join("scan-0042.dcm");
    common::write_data(&src, 10 << 20);
    let mut script = std::process::Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agent/console_send.py"))
        .arg(login_url(&lab))
        .arg("clinic")
        .arg(&src)
        .arg(shots.join("send-filled.png"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(script.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut lines, &mut first).unwrap();
    assert!(
        first.starts_with("ON-OUTBOX") && !first.contains("delivered"),
        "{first}"
    );
    let receiver = start_agent(&clinic);
    writeln!(script.stdin.take().unwrap(), "go").unwrap();
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    let out = script.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        rest.starts_with("LIVE-DELIVERED") && rest.contains("scan-0042.dcm"),
        "{rest}"
    );
    assert!(wait_until(60, || inbox.join("scan-0042.dcm").exists()));
    assert!(common::same_file(&src, &inbox.join("scan-0042.dcm")));

    let profile = root.join("chromium-lab");
    // The sender's outbox: the file, delivered, with its receipt.
    let delivered = || browse(&chrome, &profile, &login_url(&lab), None).contains("scan-0042.dcm");
    assert!(
        wait_until(30, delivered),
        "not listed on the outbox: {}",
        browse(&chrome, &profile, &login_url(&lab), None)
    );
    let dom = browse(
        &chrome,
        &profile,
        &format!("http://127.0.0.1:{lab_port}/outbox"),
        None,
    );
    assert!(
        dom.contains("<h1>Outbox</h1>") && dom.contains(">delivered<"),
        "{dom}"
    );
    // When it was delivered, and the receipt's hash.
    assert!(
        dom.contains("delivered 20") && dom.contains("<code title="),
        "{dom}"
    );
    for page in ["outbox", "send", "peers", "audit", "health"] {
        let url = format!("http://127.0.0.1:{lab_port}/{page}");
        browse(
            &chrome,
            &profile,
            &url,
            Some(&shots.join(format!("{page}.png"))),
        );
        assert!(shots.join(format!("{page}.png")).metadata().unwrap().len() > 1000);
    }
    // The receiver's inbox: the file, from "lab", with its place.
    let profile = root.join("chromium-clinic");
    let url = format!("{}&next=/inbox", login_url(&clinic));
    let dom = browse(&chrome, &profile, &url, None);
    assert!(
        dom.contains("<h1>Inbox</h1>") && dom.contains("scan-0042.dcm") && dom.contains("lab"),
        "{dom}"
    );
    let inbox_url = format!("http://127.0.0.1:{clinic_port}/inbox");
    browse(
        &chrome,
        &profile,
        &inbox_url,
        Some(&shots.join("inbox.png")),
    );
    stop_agent(sender);
    stop_agent(receiver);
}

/// Logs in to the console on `port` of the agent of `home` through a fresh login link:
/// the session cookie (`name=value`).
fn log_in(port: u16, home: &Path) -> String {
    let host = format!("127.0.0.1:{port}");
    let login = request(
        port,
        "GET",
        path_of(&login_url(home)),
        &[("Host", &host)],
        "",
    );
    assert_eq!(login.status, 303, "{}", login.body);
    login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Reads a Server-Sent Events stream on `s` until `done` holds for what came so far, or
/// `secs` pass; returns what came.
fn read_events(s: &mut TcpStream, secs: u64, done: impl Fn(&str) -> bool) -> String {
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline && !done(&String::from_utf8_lossy(&got)) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn live_updates_show_a_delivery_and_a_peer_is_added_only_once_its_fingerprint_is_compared() {
    let relay = common::start_relay(&[]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (lab, clinic, transfer) = lab_and_clinic(root, &relay);
    let (port, clinic_port) = (free_port(), free_port());
    configure(
        &lab,
        &format!("{transfer}\n[console]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let inbox = root.join("inbox");
    configure(
        &clinic,
        &format!(
            "{transfer}\n[[inbox]]\nfrom = [\"lab\"]\npath = \"{}\"\n\n[console]\nlisten = \"127.0.0.1:{clinic_port}\"\n",
            inbox.display()
        ),
    );
    let (sender, receiver) = (start_agent(&lab), start_agent(&clinic));
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://{host}");
    let cookie = log_in(port, &lab);
    let page = request(
        port,
        "GET",
        "/outbox",
        &[("Host", &host), ("Cookie", &cookie)],
        "",
    );
    let csrf = csrf_of(&page.body);
    // The pages with live updates load the console's script; the script is served.
    assert!(
        page.body
            .contains("<script src=\"/static/console.js\" defer></script>")
            && page.body.contains("data-live=\"1\""),
        "{}",
        page.body
    );
    let js = request(port, "GET", "/static/console.js", &[("Host", &host)], "");
    assert!(
        js.body.contains("new EventSource(\"/events\")"),
        "{}",
        js.body
    );
    assert!(
        js.header("content-security-policy")
            .is_some_and(|c| c.contains("script-src 'self'"))
    );

    // The stream needs the session.
    assert_eq!(
        request(port, "GET", "/events", &[("Host", &host)], "").status,
        401
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let head = read_events(&mut stream, 10, |t| t.contains("\r\n\r\n"));
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("content-type: text/event-stream"),
        "{head}"
    );

    // A file from the Send page: its progress (the last event of a transfer is its whole
    // size) and the queue's changes come on the stream.
    let size = 3 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"clinic"),
        ("file", Some("cbc-panel.pdf"), &data),
    ]);
    let hs = [
        ("Host", host.as_str()),
        ("Cookie", &cookie),
        ("Origin", &origin),
    ];
    let sent = raw_request(port, "POST", "/send", &hs, Some(&kind), &body);
    assert_eq!(sent.status, 303, "{}", sent.body);
    let whole = format!("\"bytes\":{size},\"total\":{size}");
    let got = read_events(&mut stream, 60, |t| t.contains(&whole));
    assert!(
        got.contains("event: changed") && got.contains("event: progress") && got.contains(&whole),
        "{got}"
    );
    assert!(wait_until(30, || inbox.join("cbc-panel.pdf").exists()));
    assert_eq!(std::fs::read(inbox.join("cbc-panel.pdf")).unwrap(), data);
    // Delivered: the outbox says so, and the Peers page has the last transfer and path.
    let get = |path: &str| {
        request(
            port,
            "GET",
            path,
            &[("Host", &host), ("Cookie", &cookie)],
            "",
        )
    };
    assert!(wait_until(20, || get("/outbox")
        .body
        .contains(">delivered<")));
    let peers = get("/peers");
    assert!(peers.body.contains("sent 20"), "{}", peers.body);
    assert!(
        peers.body.contains(">direct<") || peers.body.contains(">relayed<"),
        "{}",
        peers.body
    );
    let health = get("/health");
    assert!(
        health
            .body
            .contains(&format!("{}: answered at", relay.addr)),
        "{}",
        health.body
    );
    // The same name again (the first went to sent/): the receiver's console streams its
    // arrival's progress, and its inbox page says where it landed, under another name.
    let clinic_host = format!("127.0.0.1:{clinic_port}");
    let clinic_cookie = log_in(clinic_port, &clinic);
    let mut arrivals = TcpStream::connect(("127.0.0.1", clinic_port)).unwrap();
    write!(
        arrivals,
        "GET /events HTTP/1.1\r\nHost: {clinic_host}\r\nCookie: {clinic_cookie}\r\n\r\n"
    )
    .unwrap();
    let head = read_events(&mut arrivals, 10, |t| t.contains("\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let sent = raw_request(port, "POST", "/send", &hs, Some(&kind), &body);
    assert_eq!(sent.status, 303, "{}", sent.body);
    // (`in-N`: an incoming transfer's name, never an item id)
    let whole_in = |t: &str| {
        t.lines().any(|l| {
            l.starts_with("data: {\"item\":\"in-")
                && l.ends_with(&format!("\"bytes\":{size},\"total\":{size}}}"))
        })
    };
    let got = read_events(&mut arrivals, 60, whole_in);
    assert!(whole_in(&got), "{got}");
    let second = inbox.join("cbc-panel (2).pdf");
    assert!(wait_until(30, || second.exists()));
    let arrived = request(
        clinic_port,
        "GET",
        "/inbox",
        &[("Host", &clinic_host), ("Cookie", &clinic_cookie)],
        "",
    );
    assert!(
        arrived.body.contains(&format!("{}</td>", second.display()))
            && arrived
                .body
                .contains(&format!("{}</td>", inbox.join("cbc-panel.pdf").display())),
        "{}",
        arrived.body
    );

    // Adding a peer: a bad key is refused; a good one shows its fingerprint and is not
    // written until the comparison is confirmed; then it is, and audited.
    let north = endpoint(root, "north");
    let north_key = common::key_of(&north);
    let listed = || {
        let out = conduit(&lab)
            .args(["peers", "list", "--json"])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let post = |body: String, with_origin: bool| {
        let mut hs = vec![("Host", host.as_str()), ("Cookie", cookie.as_str())];
        if with_origin {
            hs.push(("Origin", origin.as_str()));
        }
        request(port, "POST", "/peers/add", &hs, &body)
    };
    let enc = |s: &str| {
        s.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    };
    assert_eq!(
        post(format!("name=north&key={}", enc(&north_key)), true).status,
        403,
        "no CSRF token"
    );
    assert_eq!(
        post(
            format!(
                "csrf={csrf}&name=north&key={}&compared=yes",
                enc(&north_key)
            ),
            false
        )
        .status,
        403,
        "no Origin"
    );
    let bad = post(format!("csrf={csrf}&name=north&key=cpk1nonsense"), true);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("not valid"), "{}", bad.body);
    let taken = post(
        format!("csrf={csrf}&name=clinic&key={}", enc(&north_key)),
        true,
    );
    assert_eq!(taken.status, 400, "{}", taken.body);
    let step = post(
        format!("csrf={csrf}&name=north&key={}", enc(&north_key)),
        true,
    );
    assert_eq!(step.status, 200, "{}", step.body);
    let out = conduit(&north).arg("id").output().unwrap();
    let fingerprint = text(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("fingerprint:")
                .map(|f| f.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{}", text(&out.stdout)));
    assert!(
        step.body.contains(&fingerprint) && step.body.contains("name=\"compared\""),
        "{fingerprint}: {}",
        step.body
    );
    assert!(!listed().contains("north"), "added before the comparison");
    // Confirming without the first step's token (a form it did not render), or with the
    // token of another key: the comparison page again, nothing written.
    let step_token = step
        .body
        .split("name=\"step\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    for forged in [
        format!(
            "csrf={csrf}&name=north&key={}&compared=yes",
            enc(&north_key)
        ),
        format!(
            "csrf={csrf}&name=north&key={}&compared=yes&step={step_token}",
            enc(&common::key_of(&endpoint(root, "south")))
        ),
    ] {
        let r = post(forged, true);
        assert!(
            r.body.contains("name=\"compared\"") && !listed().contains("north"),
            "{}",
            r.body
        );
    }
    let added = post(
        format!(
            "csrf={csrf}&name=north&key={}&compared=yes&step={step_token}",
            enc(&north_key)
        ),
        true,
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(
        added.body.contains("north was added") && added.body.contains("after its next start"),
        "{}",
        added.body
    );
    assert!(listed().contains(&north_key), "{}", listed());
    assert!(
        get("/peers").body.contains("added since the agent started"),
        "the new peer is marked"
    );
    // The Send page offers the new peer at once, and the running agent delivers to it.
    assert!(
        get("/send").body.contains("value=\"north\""),
        "{}",
        get("/send").body
    );
    know(&north, "lab", &lab);
    let north_inbox = root.join("north-inbox");
    configure(
        &north,
        &format!(
            "{transfer}\n[[inbox]]\nfrom = [\"lab\"]\npath = \"{}\"\n",
            north_inbox.display()
        ),
    );
    let north_agent = start_agent(&north);
    let (kind, body) = multipart(&[
        ("csrf", None, csrf.as_bytes()),
        ("to", None, b"north"),
        ("file", Some("referral.txt"), b"for north"),
    ]);
    let sent = raw_request(port, "POST", "/send", &hs, Some(&kind), &body);
    assert_eq!(sent.status, 303, "{}", sent.body);
    assert!(
        wait_until(30, || north_inbox.join("referral.txt").exists()),
        "{}",
        get("/outbox").body
    );
    assert_eq!(
        std::fs::read(north_inbox.join("referral.txt")).unwrap(),
        b"for north"
    );
    stop_agent(north_agent);

    // Logged out: the stream ends.
    let csrf_body = format!("csrf={csrf}");
    let out = request(port, "POST", "/logout", &hs, &csrf_body);
    assert_eq!(out.status, 200);
    let rest = read_events(&mut stream, 20, |t| t.ends_with("0\r\n\r\n"));
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "the stream did not end: {rest}"
    );

    stop_agent(sender);
    stop_agent(receiver);
    let log = common::audit_text(&lab);
    assert!(
        log.contains(&format!("peer added north {fingerprint}")),
        "{log}"
    );
}
