//! The relay under attack (issue 18, items 2-4), with the real `conduit relay` process,
//! real `conduit send` / `receive` processes for the legitimate transfers, and attackers
//! as raw QUIC clients in this process, each from its own loopback address (127.0.0.0/8
//! is all loopback on Linux), so that the relay sees distinct sources.
//!
//! - squatters who know a receiver's public key cannot take its place at the relay;
//! - one client hammering code rendezvous cannot keep a code transfer from pairing, and
//!   spends at most its strike budget of nameplates;
//! - 2,000 idle unpaired connections keep the relay under 128 MiB and it still pairs;
//! - one source connecting to itself cannot take every session slot, and a listener
//!   waits (it is not refused `busy`) while the session slots are all taken.
//!
//! The tests run one at a time ([`SERIAL`]): each starts its own relay, but they load
//! the same two cores, and a test that measures how the relay holds up under one attack
//! should not also be measuring the other tests' attacks.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::{
    Relay, Running, key_of, pair_knowing, receiver_via, same_file, send_via, start_relay, text,
    write_data,
};
use phi_conduit::crypto::identity::{Identity, PublicKey};
use phi_conduit::crypto::pake::{Code, MAX_NAMEPLATE};
use phi_conduit::relay::hello::{Hello, MAX_HELLO, PAIRED, Refusal, Role};
use phi_conduit::relay::proof::{self, CHALLENGE_LEN};
use phi_conduit::transfer::{rendezvous_for, rendezvous_for_code};
use phi_conduit::transport::{RelayTrust, relay_client_from};

/// Held by each test for its whole run: one test of this file at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long an attacker waits for a challenge, or for the relay's verdict on its proof,
/// before it concludes that the relay took it in: longer than the relay's Hello timeout
/// (10 s), by when a relay that has neither challenged nor refused a client has taken
/// it in. (A short wait here once made a relay slowed by a loaded machine look as if it
/// had taken attackers in.)
const PATIENCE: Duration = Duration::from_secs(15);

/// What one raw attempt at the relay came to.
#[derive(Debug)]
enum Outcome {
    /// The relay said PAIRED.
    Paired(quinn::Connection),
    /// No answer yet: waiting at the relay (held, streams and all, to keep the
    /// registration).
    #[allow(dead_code)]
    Waiting(quinn::Connection, quinn::SendStream, quinn::RecvStream),
    /// Closed by the relay with this code (a [`Refusal`] or another).
    Closed(u64),
    /// Ended without a close from the relay (an idle timeout or a reset on a loaded
    /// machine): no verdict either way.
    Lost(String),
    /// The connection could not be made (refused before the handshake: a ban).
    NoConnection,
}

struct Attacker {
    endpoint: quinn::Endpoint,
    relay: SocketAddr,
    cert: [u8; 32],
}

impl Attacker {
    fn new(from: [u8; 4], relay: &Relay) -> Self {
        let cert = phi_conduit::relay::tokens::parse_sha256(&relay.pin).unwrap();
        let endpoint =
            relay_client_from(SocketAddr::from((from, 0)), &RelayTrust::Pin(cert)).unwrap();
        Attacker {
            endpoint,
            relay: relay.addr.parse().unwrap(),
            cert,
        }
    }

    /// Connects, sends `hello`, answers a challenge with `key`'s proof if one comes
    /// (waiting up to [`PATIENCE`] for it), and waits up to `wait` for the answer.
    async fn attempt(&self, hello: &Hello, key: Option<&Identity>, wait: Duration) -> Outcome {
        let Ok(connecting) = self.endpoint.connect(self.relay, "localhost") else {
            return Outcome::NoConnection;
        };
        let conn = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Ok(c)) => c,
            _ => return Outcome::NoConnection,
        };
        let closed = |conn: &quinn::Connection| match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                Outcome::Closed(c.error_code.into_inner())
            }
            Some(e) => Outcome::Lost(e.to_string()),
            None => Outcome::Closed(u64::MAX - 1),
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            return closed(&conn);
        };
        let frame = phi_conduit::wire::frame::to_frame(&hello.encode().unwrap()).unwrap();
        if send.write_all(&frame).await.is_err() {
            return closed(&conn);
        }
        if let Some(key) = key {
            let mut challenge = [0u8; CHALLENGE_LEN];
            match tokio::time::timeout(PATIENCE, recv.read_exact(&mut challenge)).await {
                Ok(Ok(())) => {
                    let answer =
                        proof::answer(key, &hello.rendezvous, &self.cert, &challenge).unwrap();
                    if send.write_all(&answer).await.is_err() {
                        return closed(&conn);
                    }
                }
                // No challenge: the relay took us in without a proof.
                Err(_) => return Outcome::Waiting(conn, send, recv),
                Ok(Err(_)) => {
                    let _ = tokio::time::timeout(PATIENCE, conn.closed()).await;
                    return closed(&conn);
                }
            }
        }
        let mut answer = [0u8; 1];
        match tokio::time::timeout(wait, recv.read_exact(&mut answer)).await {
            Ok(Ok(())) if answer[0] == PAIRED => Outcome::Paired(conn),
            Ok(Ok(())) => panic!("unexpected answer {answer:?}"),
            Ok(Err(_)) => {
                let _ = tokio::time::timeout(PATIENCE, conn.closed()).await;
                closed(&conn)
            }
            Err(_) => Outcome::Waiting(conn, send, recv),
        }
    }
}

fn code(r: Refusal) -> u64 {
    r.code().into()
}

/// Issue 18 item 2. 32 attackers who know the receiver's public key keep trying to wait
/// at the relay in its place: half prove with their own key, half claim the id as a
/// single-use one (which asks no proof), and whatever they are told they try again
/// (what would have got through is kept open as long as the test runs). The receiver
/// still receives, and no attacker is ever taken in its place.
///
/// Whether an attacker was taken in is judged by what the relay said, never by how
/// fast: a prover waits [`PATIENCE`] for the challenge and for the verdict on its
/// proof, and a refusal for time (`hello_timeout`, the relay was too slow to see the
/// proof in time) is a refusal. The relay is stalled for 2 s during the attack, so that
/// the test shows it does not depend on the machine's speed (with a 300 ms wait, as
/// this test once had, the stall makes attackers look taken in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_squatters_who_know_the_key_cannot_keep_the_receiver_from_receiving() {
    let _serial = SERIAL.lock().await;
    let relay = start_relay(&[]);
    let p = pair_knowing(true, true);
    let victim = PublicKey::parse(&key_of(&p.receiver)).unwrap();
    let rv = rendezvous_for(&victim);
    let stop = Arc::new(AtomicBool::new(false));
    let taken_in = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let attacker = Attacker::new([127, 0, 0, 2 + i], &relay);
        let (stop, taken_in, refused, lost) = (
            stop.clone(),
            taken_in.clone(),
            refused.clone(),
            lost.clone(),
        );
        attackers.spawn(async move {
            // Half prove with their own key; the other half wait on the receiver's id as
            // if it were a code's nameplate (single-use: no proof asked).
            let single_use = i % 2 == 1;
            let own = Identity::generate().unwrap();
            let key = (!single_use).then_some(&own);
            let hello = Hello {
                switch: true,
                role: Role::Listen,
                single_use,
                rendezvous: rv,
                token: vec![],
            };
            let mut held = std::collections::VecDeque::new();
            // A single-use squatter waits a moment for an answer (waiting is what it
            // may do); a prover waits for the relay's verdict on its proof.
            let wait = if single_use {
                Duration::from_millis(300)
            } else {
                PATIENCE
            };
            let took = |what: String| taken_in.lock().unwrap().push(format!("#{i}: {what}"));
            while !stop.load(Relaxed) {
                let outcome = attacker.attempt(&hello, key, wait).await;
                match outcome {
                    // Waiting in the single-use namespace, where the receiver's sender
                    // never looks.
                    Outcome::Waiting(..) if single_use => held.push_back(outcome),
                    Outcome::Closed(c) if single_use && c == code(Refusal::RendezvousTaken) => {
                        refused.fetch_add(1, Relaxed);
                    }
                    Outcome::Paired(_) | Outcome::Waiting(..) => {
                        took(match outcome {
                            Outcome::Paired(_) => "paired".to_string(),
                            _ => format!("no verdict within {PATIENCE:?}"),
                        });
                        held.push_back(outcome);
                    }
                    Outcome::Closed(c) if c == code(Refusal::BadProof) => {
                        refused.fetch_add(1, Relaxed);
                    }
                    // The relay did not have the Hello and proof within its Hello
                    // timeout (a loaded machine): refused, and not a strike.
                    Outcome::Closed(c) if c == code(Refusal::HelloTimeout) => {}
                    // The connection died under it (timeout, reset): the relay said
                    // nothing, so it neither took it in nor refused it. Counted, and
                    // must stay rare.
                    Outcome::Lost(why) => {
                        eprintln!("#{i}: connection lost without a verdict: {why}");
                        lost.fetch_add(1, Relaxed);
                    }
                    // It had been waiting in the receiver's place, until a newer one
                    // took it (`replaced`); or anything else: it got further than a
                    // refusal of its proof.
                    Outcome::Closed(c) => took(format!("closed with {c:#x}")),
                    Outcome::NoConnection => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                while held.len() > 8 {
                    held.pop_front();
                }
            }
            attacker.endpoint.close(0u32.into(), b"done");
        });
    }
    // The squatters are at it before the receiver comes, and while it receives. The
    // relay is stopped for 2 s in the middle (SIGSTOP), as a loaded machine may stall it:
    // a slow verdict must not be mistaken for an attacker taken in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.run.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.run.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay = Arc::new(relay);
    let r = Arc::clone(&relay);
    let (sent, received, same) = tokio::task::spawn_blocking(move || {
        let src = p.root.join("referral.bin");
        write_data(&src, 300_000);
        let out = p.root.join("out");
        let mut rx = receiver_via(&p, &r, &out, &[]);
        std::thread::sleep(Duration::from_millis(500));
        let sent = send_via(&p, &r, &[&src], &["--to", "lab"]);
        let (status, _, err) = rx.finish();
        (
            (sent.status.success(), text(&sent.stderr)),
            (status.success(), err),
            out.join("referral.bin").exists() && same_file(&src, &out.join("referral.bin")),
        )
    })
    .await
    .unwrap();
    stop.store(true, Relaxed);
    while let Some(r) = attackers.join_next().await {
        r.unwrap();
    }
    assert!(sent.0, "the sender failed: {}", sent.1);
    assert!(received.0, "the receiver failed: {}", received.1);
    assert!(same);
    let taken_in = taken_in.lock().unwrap();
    assert!(taken_in.is_empty(), "attackers taken in: {taken_in:?}");
    assert!(refused.load(Relaxed) >= 16, "{}", refused.load(Relaxed));
    // Lost connections are no verdict: they must not be what most attempts end in.
    assert!(
        lost.load(Relaxed) <= refused.load(Relaxed),
        "{} lost, {} refused",
        lost.load(Relaxed),
        refused.load(Relaxed)
    );
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert!(log.iter().any(|e| e["reason"] == "bad_proof"));
    assert_eq!(
        log.iter().filter(|e| e["event"] == "session_open").count(),
        1
    );
}

/// The strike window the hammer test runs the relay with: the bar is one client
/// hammering for 60 s against the default 600 s window (less than one window); here it
/// hammers for [`HAMMER`] against a 4 s window, so it gets three or four fresh budgets:
/// a stronger attacker than the bar's, in seconds of test time.
const WINDOW_SECS: u64 = 4;
/// How long the hammer runs.
const HAMMER: Duration = Duration::from_secs(10);
/// Concurrent hammer loops.
const LOOPS: usize = 4;

/// Issue 18 item 3. One client (127.0.0.2) burns code nameplates as fast as it can:
/// four loops, each waiting on a random nameplate and joining itself there. A real code
/// transfer in the middle of it pairs, and the hammer got at most its strike budget of
/// pairings per window (each burn costs it two strikes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_hammering_code_rendezvous_cannot_keep_a_code_transfer_from_pairing() {
    let _serial = SERIAL.lock().await;
    let window = WINDOW_SECS.to_string();
    let relay = start_relay(&["--strike-window", &window, "--metrics", "127.0.0.1:0"]);
    let metrics = relay.run.first["metrics"].as_str().unwrap().to_string();
    let attacker = Arc::new(Attacker::new([127, 0, 0, 2], &relay));
    let burns = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..LOOPS {
        let (attacker, burns) = (attacker.clone(), burns.clone());
        loops.spawn(async move {
            while started.elapsed() < HAMMER {
                let mut r = [0u8; 4];
                getrandom::getrandom(&mut r).unwrap();
                let n = 1 + u32::from_le_bytes(r) % MAX_NAMEPLATE;
                let code = Code::parse(&format!("{n}-abandon-ability-able")).unwrap();
                let rendezvous = rendezvous_for_code(&code);
                let listen = Hello {
                    switch: true,
                    role: Role::Listen,
                    single_use: true,
                    rendezvous,
                    token: vec![],
                };
                let connect = Hello {
                    switch: true,
                    role: Role::Connect,
                    ..listen.clone()
                };
                let a = attacker.clone();
                let waiter =
                    tokio::spawn(
                        async move { a.attempt(&listen, None, Duration::from_secs(3)).await },
                    );
                tokio::time::sleep(Duration::from_millis(30)).await;
                let joined = attacker
                    .attempt(&connect, None, Duration::from_secs(3))
                    .await;
                let waited = waiter.await.unwrap();
                match (waited, joined) {
                    (Outcome::Paired(a), Outcome::Paired(b)) => {
                        burns.fetch_add(1, Relaxed);
                        a.close(0u32.into(), b"");
                        b.close(0u32.into(), b"");
                    }
                    (Outcome::NoConnection, _) | (_, Outcome::NoConnection) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => {}
                }
            }
        });
    }
    // A real code transfer from 127.0.0.1 while the hammer runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay = Arc::new(relay);
    let r = Arc::clone(&relay);
    let legit = tokio::task::spawn_blocking(move || {
        let p = pair_knowing(false, false);
        let src = p.root.join("note.txt");
        std::fs::write(&src, "for the right receiver ".repeat(100)).unwrap();
        let mut cmd = r.cmd(&p.sender, "send");
        cmd.arg("--code").arg(&src);
        let mut tx = Running::spawn(cmd);
        assert_eq!(tx.first["event"], "code", "{}", tx.first);
        let code = tx.first["code"].as_str().unwrap().to_string();
        let out = p.root.join("out");
        let rx = r
            .cmd(&p.receiver, "receive")
            .args(["--code", &code, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let (status, _, err) = tx.finish();
        (
            (rx.status.success(), text(&rx.stderr)),
            (status.success(), err),
            out.join("note.txt").exists() && same_file(&src, &out.join("note.txt")),
        )
    })
    .await
    .unwrap();
    while let Some(r) = loops.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed().as_secs();
    assert!(legit.0.0, "the code receiver failed: {}", legit.0.1);
    assert!(legit.1.0, "the code sender failed: {}", legit.1.1);
    assert!(legit.2);
    // Each window: 30 strikes, two per burn, plus what the loops had in flight when the
    // ban came.
    let windows = elapsed / WINDOW_SECS + 2;
    let bound = windows * (15 + LOOPS as u64);
    let burned = burns.load(Relaxed) as u64;
    eprintln!("the hammer burned {burned} nameplates in {elapsed} s (bound {bound})");
    assert!(burned > 0, "the hammer never got through at all");
    assert!(burned <= bound, "{burned} nameplates burned in {elapsed} s");
    // The relay's own count (as of the last arrival): within the same budget, and the
    // relay refused the hammer.
    let text = http_get(&metrics, "/metrics");
    let gauge: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("conduit_relay_burned_rendezvous "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        gauge >= 1 && gauge <= bound + 1,
        "{gauge} burned at the relay"
    );
    assert!(text.contains("conduit_relay_rejections_total{reason=\"rate_limited\"}"));
    assert!(
        !text.contains("conduit_relay_rejections_total{reason=\"rate_limited\"} 0\n"),
        "the hammer was never refused"
    );
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    let (status, log, _) = relay.stop();
    assert!(status.success());
    assert!(log.iter().any(|e| e["event"] == "session_open"));
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Resident set of a process now (`VmRSS`) or at its peak (`VmHWM`), in bytes.
fn rss(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

/// Idle connections held, from how many source addresses.
const IDLE: usize = 2000;
const SOURCES: usize = 40;
/// Attempts at each idle connection.
const OPEN_TRIES: usize = 3;

/// One idle connection as the test holds it: the connection, its Hello stream, and the
/// stream it pushed on if the relay let it open one.
type Idle = (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    Option<quinn::SendStream>,
);

/// Opens one idle unpaired connection: the QUIC handshake, the Hello stream with part of
/// a Hello, and an attempt at pushing 256 KiB on a stream of its own. `None` if any step
/// failed or timed out (the connection is then dropped, which closes it).
async fn open_idle(a: &Attacker) -> Option<Idle> {
    let connecting = a.endpoint.connect(a.relay, "localhost").ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .ok()?
        .ok()?;
    let (mut send, recv) = conn.open_bi().await.ok()?;
    // The length of a Hello of the largest size and 100 of its bytes; the rest never
    // comes.
    let mut partial = u16::try_from(MAX_HELLO).unwrap().to_be_bytes().to_vec();
    partial.extend_from_slice(&[0x50; 100]);
    tokio::time::timeout(Duration::from_secs(10), send.write_all(&partial))
        .await
        .ok()?
        .ok()?;
    // And 256 KiB on a stream of its own, if the relay lets it open one (the windows of
    // a paired connection would take it all in).
    let mut pushed = None;
    if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(100), conn.open_uni()).await {
        let _ =
            tokio::time::timeout(Duration::from_millis(100), s.write_all(&[0x55; 256 << 10])).await;
        pushed = Some(s);
    }
    Some((conn, send, recv, pushed))
}

/// Issue 18 item 4. 2,000 connections that complete the QUIC handshake, open the Hello
/// stream, send part of a Hello and then nothing, from 40 addresses (50 each, under the
/// per-address limit of 64 unpaired); each also tries to push 256 KiB on a stream of its
/// own, which an unpaired connection may not open. The relay runs with a 120 s Hello timeout so that
/// they stay for the measurement (the default, 10 s, would cut them sooner). Its RSS
/// stays under 128 MiB, and a real transfer through it pairs meanwhile.
///
/// On a loaded machine a handshake can time out at the client: each of the 2,000 is
/// tried up to [`OPEN_TRIES`] times (a connection given up on is closed, and the 50 per
/// address stay under the relay's 64 with room for retries), and all 2,000 must be held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_unpaired_connections_stay_under_128_mib_and_a_transfer_pairs() {
    let _serial = SERIAL.lock().await;
    let relay = start_relay(&["--hello-timeout", "120"]);
    let pid = relay.run.child.id();
    let before = rss(pid, "VmRSS:");
    let attackers: Vec<Arc<Attacker>> = (0..SOURCES)
        .map(|i| Arc::new(Attacker::new([127, 0, 1, 1 + i as u8], &relay)))
        .collect();
    let mut held = Vec::new();
    // In batches, so that the handshakes do not all time out together on a busy machine.
    for batch in 0..IDLE / 200 {
        let mut opening = tokio::task::JoinSet::new();
        for k in 0..200 {
            let a = attackers[(batch * 200 + k) % SOURCES].clone();
            opening.spawn(async move {
                for _ in 0..OPEN_TRIES {
                    if let Some(c) = open_idle(&a).await {
                        return Some(c);
                    }
                }
                None
            });
        }
        while let Some(r) = opening.join_next().await {
            if let Some(c) = r.unwrap() {
                held.push(c);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss(pid, "VmRSS:");
    eprintln!(
        "relay RSS: {} KiB idle, {} KiB with {} unpaired connections",
        before >> 10,
        loaded >> 10,
        held.len()
    );
    assert_eq!(held.len(), IDLE, "not every idle connection was accepted");
    let relay = Arc::new(relay);
    let r = Arc::clone(&relay);
    let (ok, same) = tokio::task::spawn_blocking(move || {
        let p = pair_knowing(true, true);
        let src = p.root.join("scan.bin");
        write_data(&src, 1_000_000);
        let out = p.root.join("out");
        let mut rx = receiver_via(&p, &r, &out, &[]);
        let sent = send_via(&p, &r, &[&src], &["--to", "lab"]);
        let (status, _, err) = rx.finish();
        assert!(sent.status.success(), "{}", text(&sent.stderr));
        assert!(status.success(), "{err}");
        (
            true,
            out.join("scan.bin").exists() && same_file(&src, &out.join("scan.bin")),
        )
    })
    .await
    .unwrap();
    assert!(ok && same);
    let alive = held
        .iter()
        .filter(|(c, ..)| c.close_reason().is_none())
        .count();
    let peak = rss(pid, "VmHWM:");
    eprintln!(
        "relay peak RSS {} KiB; {alive} idle connections still open",
        peak >> 10
    );
    assert_eq!(alive, IDLE, "the idle connections were dropped, not held");
    assert!(loaded < 128 << 20, "relay RSS {loaded} bytes");
    assert!(peak < 128 << 20, "relay peak RSS {peak} bytes");
    drop(held);
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    assert!(relay.stop().0.success());
}

/// A Prometheus gauge of the relay's `/metrics`.
fn gauge(metrics: &str, name: &str) -> u64 {
    let text = http_get(metrics, "/metrics");
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `name` reads `want` (the relay is slow on a loaded machine), or fails.
async fn until_gauge(metrics: &str, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = gauge(metrics, name);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stays {now}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` sessions of `attacker` with itself: `n` listeners, each on a key of its own
/// (each proves it; one key would have at most 16 waiting), wait at the relay, then `n`
/// connectors join them. Returns what it holds (paired
/// connections, and the listeners left waiting) and how many connectors were refused
/// `busy`.
async fn self_sessions(
    attacker: &Attacker,
    metrics: &str,
    n: usize,
) -> (Vec<Outcome>, Vec<Outcome>, usize) {
    let keys: Vec<Identity> = (0..n).map(|_| Identity::generate().unwrap()).collect();
    let hello = |role, own: &Identity| Hello {
        switch: true,
        role,
        single_use: false,
        rendezvous: rendezvous_for(&own.public()),
        token: vec![],
    };
    let mut listeners = Vec::new();
    for own in &keys {
        let listen = hello(Role::Listen, own);
        match attacker
            .attempt(&listen, Some(own), Duration::from_millis(100))
            .await
        {
            w @ Outcome::Waiting(..) => listeners.push(w),
            other => panic!("the attacker's listener was not let wait: {other:?}"),
        }
    }
    until_gauge(metrics, "conduit_relay_waiting", n as u64).await;
    let (mut paired, mut busy) = (Vec::new(), 0);
    for own in &keys {
        match attacker
            .attempt(&hello(Role::Connect, own), None, PATIENCE)
            .await
        {
            p @ Outcome::Paired(_) => paired.push(p),
            Outcome::Closed(c) if c == code(Refusal::Busy) => busy += 1,
            other => panic!("unexpected for the attacker's connector: {other:?}"),
        }
    }
    (paired, listeners, busy)
}

/// Review finding (HIGH) on issue 18: one source listens on its own key (its proofs
/// pass) and connects to itself 32 times, against a relay run as the systemd unit runs
/// it (`--max-sessions 32`). It gets `max_sessions_per_source` (8) sessions, its other
/// connectors are refused `busy` (its listeners wait on), and a real transfer from
/// another source (127.0.0.1; the attacker is 127.0.0.2) still pairs. Before the limit,
/// the attacker held all 32 slots and the receiver was refused `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_in_sessions_with_itself_cannot_make_the_relay_busy_for_others() {
    let _serial = SERIAL.lock().await;
    let relay = start_relay(&["--max-sessions", "32", "--metrics", "127.0.0.1:0"]);
    let metrics = relay.run.first["metrics"].as_str().unwrap().to_string();
    let attacker = Attacker::new([127, 0, 0, 2], &relay);
    let (paired, waiting, busy) = self_sessions(&attacker, &metrics, 32).await;
    let active = gauge(&metrics, "conduit_relay_sessions_active");
    let relay = Arc::new(relay);
    let r = Arc::clone(&relay);
    let (sent, received, same) = tokio::task::spawn_blocking(move || {
        let p = pair_knowing(true, true);
        let src = p.root.join("chart.bin");
        write_data(&src, 200_000);
        let out = p.root.join("out");
        let mut rx = receiver_via(&p, &r, &out, &[]);
        let sent = send_via(&p, &r, &[&src], &["--to", "lab"]);
        let (status, _, err) = rx.finish();
        (
            (sent.status.success(), text(&sent.stderr)),
            (status.success(), err),
            same_file(&src, &out.join("chart.bin")),
        )
    })
    .await
    .unwrap();
    assert!(sent.0, "the sender failed: {}", sent.1);
    assert!(received.0, "the receiver failed: {}", received.1);
    assert!(same);
    assert_eq!(paired.len(), 8, "sessions the attacker got");
    assert_eq!(active, 8);
    assert_eq!(busy, 24, "attacker connectors refused busy");
    // The attacker's sessions were still up all along.
    assert!(paired.iter().all(|p| match p {
        Outcome::Paired(c) => c.close_reason().is_none(),
        _ => false,
    }));
    drop((paired, waiting));
    attacker.endpoint.close(0u32.into(), b"done");
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    let (status, log, _) = relay.stop();
    assert!(status.success());
    let busy_logged = log
        .iter()
        .filter(|e| e["event"] == "refused" && e["reason"] == "busy")
        .count();
    assert_eq!(busy_logged, 24);
}

/// A listener waits while every session slot of the relay is taken: the slot is taken
/// at pairing, not when a client arrives. With `--max-sessions 8`, one source holds all
/// 8 sessions; a real receiver from another source comes, and is let wait (not refused
/// `busy`); its sender comes while the relay is still full, is refused `busy` and tries
/// again, and once the sessions end the transfer pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_waits_while_every_session_slot_is_taken_and_pairs_once_one_frees() {
    let _serial = SERIAL.lock().await;
    let relay = start_relay(&["--max-sessions", "8", "--metrics", "127.0.0.1:0"]);
    let metrics = relay.run.first["metrics"].as_str().unwrap().to_string();
    let attacker = Attacker::new([127, 0, 0, 2], &relay);
    let (paired, waiting, busy) = self_sessions(&attacker, &metrics, 8).await;
    assert_eq!((paired.len(), waiting.len(), busy), (8, 8, 0));
    until_gauge(&metrics, "conduit_relay_sessions_active", 8).await;
    let p = pair_knowing(true, true);
    let src = p.root.join("lab.bin");
    write_data(&src, 100_000);
    let out = p.root.join("out");
    let mut rx = receiver_via(&p, &relay, &out, &[]);
    // The relay is full, and the receiver waits there all the same.
    until_gauge(&metrics, "conduit_relay_waiting", 1).await;
    assert!(
        rx.child.try_wait().unwrap().is_none(),
        "the receiver gave up"
    );
    // Its sender comes while the relay is still full: it is refused `busy`, and tries
    // again (within its --relay-wait, 10 s) until the sessions end.
    let relay = Arc::new(relay);
    let r = Arc::clone(&relay);
    let sender = tokio::task::spawn_blocking(move || {
        let sent = send_via(&p, &r, &[&p.root.join("lab.bin")], &["--to", "lab"]);
        (sent, p)
    });
    let busy = "conduit_relay_rejections_total{reason=\"busy\"}";
    let deadline = Instant::now() + Duration::from_secs(8);
    while gauge(&metrics, busy) == 0 {
        assert!(
            Instant::now() < deadline,
            "the sender was never refused busy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((paired, waiting));
    attacker.endpoint.close(0u32.into(), b"done");
    let (sent, p) = sender.await.unwrap();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let (status, _, err) = rx.finish();
    assert!(status.success(), "{err}");
    assert!(same_file(&p.root.join("lab.bin"), &out.join("lab.bin")));
    let relay = Arc::try_unwrap(relay).ok().unwrap();
    assert!(relay.stop().0.success());
}
