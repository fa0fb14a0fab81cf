//! Joining a relay as a client: pick the relay of the fleet for the rendezvous id,
//! connect (verifying the relay's certificate), send the Hello, prove the key when
//! listening for it ([`listen`]), and wait until the relay pairs us. The connection
//! returned then carries the end-to-end session exactly as a direct connection does.

use std::time::Duration;

use quinn::{ConnectionError, ReadError, ReadExactError};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::crypto::identity::Identity;
use crate::relay::fleet;
use crate::relay::hello::{Grant, Hello, MAX_GRANT, PAIRED, Refusal, Role};
use crate::relay::proof::{self, CHALLENGE_LEN};
use crate::transport::{self, RelayTrust, TransportError};
use crate::wire::probe::Role as ProbeRole;

/// Time to reach the relay and finish the QUIC handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors joining a relay.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The relay list is empty or an entry is not HOST:PORT.
    #[error("relay address {0:?}: expected HOST:PORT")]
    Address(String),
    /// The name did not resolve.
    #[error("relay {relay}: {message}")]
    Resolve {
        /// The relay as written.
        relay: String,
        /// Why.
        message: String,
    },
    /// The endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The QUIC or TLS handshake with the relay failed (a wrong pin or CA lands here).
    #[error("connecting to relay {relay}: {message}")]
    Connect {
        /// The relay as written.
        relay: String,
        /// Why.
        message: String,
    },
    /// The relay did not answer the QUIC handshake in time: it is not running there, or
    /// a firewall drops its UDP port.
    #[error(
        "relay {relay} is unreachable: no answer within {} s (check the relay's address and port, that it is running, and that UDP port {port} is open)",
        CONNECT_TIMEOUT.as_secs()
    )]
    Unreachable {
        /// The relay as written.
        relay: String,
        /// Its UDP port.
        port: u16,
    },
    /// The relay refused us or gave up waiting.
    #[error("relay {relay} refused: {refusal}")]
    Refused {
        /// The relay as written.
        relay: String,
        /// Why.
        refusal: Refusal,
    },
    /// The connection to the relay failed.
    #[error(
        "relay {relay}: connection lost: {}",
        crate::transfer::sentences::connection(source)
    )]
    Lost {
        /// The relay as written.
        relay: String,
        /// The error.
        #[source]
        source: ConnectionError,
    },
    /// The relay answered something else than the protocol says.
    #[error("relay {0}: protocol error")]
    Protocol(String),
    /// A listener on a receiver's key must prove it holds the key: use [`listen`].
    #[error("listening for a key at a relay needs that key's identity (use relay::client::listen)")]
    NeedsKey,
    /// The connection was closed with a code that is not a relay refusal (the peer's own
    /// close, carried over by the relay, before the pairing was confirmed).
    #[error("relay {relay}: the connection was closed with code {code} before pairing completed")]
    Closed {
        /// The relay.
        relay: String,
        /// The application close code.
        code: u64,
    },
}

/// Where and how to reach a relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The fleet, addresses as written (HOST:PORT).
    pub relays: Vec<String>,
    /// How to verify the relay.
    pub trust: RelayTrust,
    /// Access token (empty: none).
    pub token: Vec<u8>,
    /// How long a connector keeps trying while no listener waits for it.
    pub wait: Duration,
    /// Carry the end-to-end connection through the relay's datagram switch (what the
    /// CLI does): the relay forwards its packets without terminating it. `false` asks
    /// the relay to splice two QUIC connections instead (both sides must ask alike).
    pub switch: bool,
    /// Through the switch, look for a direct path under the same connection once the
    /// session is authenticated (candidates and probes, [`transport::punch`]): the
    /// `auto` path policy. `false` keeps every packet on the relay (`relay`).
    pub punch: bool,
    /// The end-to-end connection's idle timeout through the switch (`--idle-timeout`;
    /// [`transport::IDLE_TIMEOUT`] by default). The control connection keeps the
    /// transport's own.
    pub idle: Duration,
}

impl RelayOptions {
    /// Parses a comma-separated relay list.
    pub fn parse_list(list: &str) -> Result<Vec<String>, JoinError> {
        let relays: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        if relays.is_empty() {
            return Err(JoinError::Address(list.to_string()));
        }
        for r in &relays {
            split_host(r)?;
        }
        Ok(relays)
    }

    /// The relay of the fleet for `rendezvous` (rendezvous hashing).
    pub fn choose(&self, rendezvous: &[u8; 32]) -> Result<&str, JoinError> {
        fleet::choose(&self.relays, rendezvous)
            .map(String::as_str)
            .ok_or_else(|| JoinError::Address(String::new()))
    }
}

/// Splits HOST:PORT (or `[v6]:PORT`) into the host, as a TLS server name, and the port.
fn split_host(relay: &str) -> Result<(&str, u16), JoinError> {
    transport::addr::split_host_port(relay).map_err(|_| JoinError::Address(relay.to_string()))
}

/// A client connection to a relay, paired with its peer.
#[derive(Debug)]
pub struct Joined {
    /// The client endpoint (keep it until the connection is done).
    pub endpoint: quinn::Endpoint,
    /// The connection that carries the end-to-end session: through the switch, the
    /// end-to-end QUIC connection with the peer (its control connection to the relay
    /// lives until this one is closed); through a splice, the connection to the relay.
    pub connection: quinn::Connection,
    /// The relay used, as written.
    pub relay: String,
}

/// Pause between two attempts of a connector that found no listener.
const RETRY: Duration = Duration::from_millis(250);
/// The pause once a connector has tried for [`SLOW_AFTER`] (a code receiver may wait
/// minutes for its sender: one attempt a second is enough).
const SLOW_RETRY: Duration = Duration::from_secs(1);
/// How long a connector retries at the [`RETRY`] pace.
const SLOW_AFTER: Duration = Duration::from_secs(10);
/// Pause before a connector tries again after `busy` (the relay's sessions, or those of
/// its source or its listener's, are all in use; one may end soon).
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How long a client waits for the relay's close (and its reason) after the Hello
/// stream ended without an answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Joins the relay chosen for `rendezvous` in `role` and waits until paired: a connector,
/// or a listener on a single-use rendezvous id (a code's nameplate). A listener for a
/// receiver's key uses [`listen`] ([`JoinError::NeedsKey`] here). A connector that finds
/// no listener tries again for `opts.wait` (the listener may be on its way: a daemon
/// between two transfers, a code-phrase sender still connecting).
pub async fn join(
    opts: &RelayOptions,
    role: Role,
    single_use: bool,
    rendezvous: [u8; 32],
) -> Result<Joined, JoinError> {
    join_reporting(opts, role, single_use, rendezvous, &|_| {}).await
}

/// [`join`], calling `connected` with the relay (as written) once the relay has the
/// Hello: from then on the client waits at the relay (for a connector, the relay answers
/// at once). Called at most once, and never when the relay could not be reached: the
/// place to say "waiting at relay ...".
pub async fn join_reporting(
    opts: &RelayOptions,
    role: Role,
    single_use: bool,
    rendezvous: [u8; 32],
    connected: &(dyn Fn(&str) + Sync),
) -> Result<Joined, JoinError> {
    if role == Role::Listen && !single_use {
        return Err(JoinError::NeedsKey);
    }
    join_with(opts, role, single_use, rendezvous, None, connected).await
}

/// Waits at the relay for connectors to `identity`'s key (rendezvous id
/// `rendezvous_for(identity.public())`), proving to the relay that we hold the key
/// (docs/PROTOCOL.md, "Listener proof"). A newer proven listener for the same key may
/// take our place if the key is at its limit of waiting listeners
/// ([`Refusal::Replaced`]).
pub async fn listen(opts: &RelayOptions, identity: &Identity) -> Result<Joined, JoinError> {
    listen_reporting(opts, identity, &|_| {}).await
}

/// [`listen`], calling `connected` with the relay (as written) once the relay has the
/// Hello and the proof, as [`join_reporting`] does.
pub async fn listen_reporting(
    opts: &RelayOptions,
    identity: &Identity,
    connected: &(dyn Fn(&str) + Sync),
) -> Result<Joined, JoinError> {
    let rendezvous = proof::key_rendezvous(identity.public().as_bytes());
    join_with(
        opts,
        Role::Listen,
        false,
        rendezvous,
        Some(identity),
        connected,
    )
    .await
}

async fn join_with(
    opts: &RelayOptions,
    role: Role,
    single_use: bool,
    rendezvous: [u8; 32],
    key: Option<&Identity>,
    connected: &(dyn Fn(&str) + Sync),
) -> Result<Joined, JoinError> {
    let start = tokio::time::Instant::now();
    let deadline = start + opts.wait;
    // Told once, however many attempts a connector makes.
    let told = std::sync::atomic::AtomicBool::new(false);
    let once = |relay: &str| {
        if !told.swap(true, std::sync::atomic::Ordering::Relaxed) {
            connected(relay);
        }
    };
    loop {
        match join_once(opts, role, single_use, rendezvous, key, &once).await {
            Err(JoinError::Refused {
                refusal: Refusal::NoListener,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                let pause = if start.elapsed() < SLOW_AFTER {
                    RETRY
                } else {
                    SLOW_RETRY
                };
                tokio::time::sleep(
                    pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
            }
            // No session slot for now (docs/PROTOCOL.md, "Session slots"); the listener
            // waits on, and a slot frees when a session ends.
            Err(JoinError::Refused {
                refusal: Refusal::Busy,
                ..
            }) if role == Role::Connect && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(BUSY_RETRY).await;
            }
            // The listener went away just as it was paired (a daemon slot that failed, a
            // code sender whose wait the relay ended at that moment): another listener
            // may take its place. The relay's close may not reach us first: then the
            // connection is lost (a stateless reset) before the pairing is confirmed.
            Err(JoinError::Closed { .. } | JoinError::Lost { .. })
                if role == Role::Connect && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(RETRY).await;
            }
            other => return other,
        }
    }
}

async fn join_once(
    opts: &RelayOptions,
    role: Role,
    single_use: bool,
    rendezvous: [u8; 32],
    key: Option<&Identity>,
    connected: &(dyn Fn(&str) + Sync),
) -> Result<Joined, JoinError> {
    let relay = opts.choose(&rendezvous)?.to_string();
    let (host, port) = split_host(&relay)?;
    // Every address of the name, tried as happy eyeballs does: a name with an IPv6
    // address that does not answer still reaches the relay on its IPv4 one.
    let addrs = transport::addr::resolve(&relay)
        .await
        .map_err(|e| JoinError::Resolve {
            relay: relay.clone(),
            message: match e {
                transport::addr::AddrError::Resolve { message, .. } => message,
                other => other.to_string(),
            },
        })?;
    let connect_err = |message: String| JoinError::Connect {
        relay: relay.clone(),
        message,
    };
    // With the switch, each attempt's socket has its path through the relay.
    let paths = std::sync::Mutex::new(Vec::new());
    let (endpoint, connection) =
        transport::addr::connect_first(&addrs, host, CONNECT_TIMEOUT, |addr| {
            if !opts.switch {
                return transport::relay_client(addr, &opts.trust);
            }
            let (endpoint, path, socket) = transport::relay_client_switching(
                addr,
                &opts.trust,
                role == Role::Listen,
                opts.idle,
            )?;
            paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((path, socket));
            Ok(endpoint)
        })
        .await
        .map_err(|e| match e {
            transport::addr::ConnectError::Transport(t) => JoinError::from(t),
            transport::addr::ConnectError::Failed {
                unanswered: true, ..
            } => JoinError::Unreachable {
                relay: relay.clone(),
                port,
            },
            transport::addr::ConnectError::Failed { message, .. } => connect_err(message),
            other => connect_err(other.to_string()),
        })?;
    let path = paths
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .find(|(p, _)| p.relay() == connection.remote_address());
    let hello = Hello {
        switch: opts.switch,
        role,
        single_use,
        rendezvous,
        token: opts.token.clone(),
    };
    let lost = |e: ConnectionError| match &e {
        ConnectionError::ApplicationClosed(c) => match Refusal::from_code(c.error_code.into()) {
            Some(refusal) => JoinError::Refused {
                relay: relay.clone(),
                refusal,
            },
            None => JoinError::Closed {
                relay: relay.clone(),
                code: c.error_code.into(),
            },
        },
        _ => JoinError::Lost {
            relay: relay.clone(),
            source: e,
        },
    };
    let (mut send, mut recv) = connection.open_bi().await.map_err(lost)?;
    let body = hello
        .encode()
        .map_err(|_| JoinError::Protocol(relay.clone()))?;
    let frame =
        crate::wire::frame::to_frame(&body).map_err(|_| JoinError::Protocol(relay.clone()))?;
    let _ = send.write_all(&frame).await;
    if let Some(identity) = key {
        // The relay's challenge, our proof (docs/PROTOCOL.md, "Listener proof").
        let mut challenge = [0u8; CHALLENGE_LEN];
        read_answer(&connection, &mut recv, &mut challenge, &lost, &relay).await?;
        let cert = transport::peer_cert_sha256(&connection)
            .ok_or_else(|| JoinError::Protocol(relay.clone()))?;
        let answer = proof::answer(identity, &rendezvous, &cert, &challenge)
            .map_err(|_| JoinError::Protocol(relay.clone()))?;
        let _ = send.write_all(&answer).await;
    }
    let _ = send.finish();
    connected(&relay);
    let mut answer = [0u8; 1];
    read_answer(&connection, &mut recv, &mut answer, &lost, &relay).await?;
    if answer[0] != PAIRED {
        return Err(JoinError::Protocol(relay));
    }
    // A stream "flush" is not needed: the relay read the whole Hello before answering.
    let _ = send.shutdown().await;
    if !opts.switch {
        return Ok(Joined {
            endpoint,
            connection,
            relay,
        });
    }
    let (path, socket) = path.ok_or_else(|| JoinError::Protocol(relay.clone()))?;
    let grant = read_grant(&connection, &mut recv, &lost, &relay).await?;
    path.grant(grant.channel);
    let e2e = tokio::time::timeout(CONNECT_TIMEOUT, async {
        if role == Role::Connect {
            let cfg = transport::switched_client_config(path.relay(), opts.idle)?;
            let connecting = endpoint
                .connect_with(cfg, path.mapped(), "phi-conduit")
                .map_err(|e| connect_err(e.to_string()))?;
            connecting.await.map_err(|e| connect_err(e.to_string()))
        } else {
            // Only the peer's connection, through the relay, is taken.
            loop {
                let incoming = endpoint
                    .accept()
                    .await
                    .ok_or_else(|| JoinError::Protocol(relay.clone()))?;
                if incoming.remote_address() != path.mapped() {
                    incoming.ignore();
                    continue;
                }
                break incoming.await.map_err(|e| connect_err(e.to_string()));
            }
        }
    })
    .await
    .map_err(|_| JoinError::Connect {
        relay: relay.clone(),
        message: "the peer's end-to-end connection through the relay did not complete".into(),
    })??;
    // The one end-to-end connection is made: the listener accepts no other.
    endpoint.set_server_config(None);
    transport::path::attach(&e2e, &path);
    if opts.punch {
        let ours = if role == Role::Connect {
            ProbeRole::Client
        } else {
            ProbeRole::Server
        };
        transport::punch::spawn(e2e.clone(), path, socket, grant.reflexive, ours);
    }
    keep_control(connection, recv, e2e.clone());
    Ok(Joined {
        endpoint,
        connection: e2e,
        relay,
    })
}

/// Reads the relay's [`Grant`] that follows [`PAIRED`] on a switched pairing.
async fn read_grant(
    connection: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    lost: &impl Fn(ConnectionError) -> JoinError,
    relay: &str,
) -> Result<Grant, JoinError> {
    // Channel id and family first; the family says how long the address is.
    let mut buf = [0u8; MAX_GRANT];
    read_answer(connection, recv, &mut buf[..9], lost, relay).await?;
    let len = match buf[8] {
        4 => 9 + 4 + 3,
        6 => 9 + 16 + 3,
        _ => return Err(JoinError::Protocol(relay.to_string())),
    };
    let (head, _) = buf.split_at_mut(len);
    read_answer(connection, recv, &mut head[9..], lost, relay).await?;
    match Grant::decode(head) {
        Ok(Some((grant, n))) if n == len => Ok(grant),
        _ => Err(JoinError::Protocol(relay.to_string())),
    }
}

/// How long a client that closed its end-to-end connection keeps its allocation for the
/// peer to receive that close (it leaves at once when the peer has).
pub const PEER_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Keeps the control connection to the relay (and its Hello stream, on which the relay
/// writes a new grant when it follows our address: nothing to do, the wrapped packets
/// leave from the same socket) until the end-to-end connection is closed, then closes
/// it: the relay then releases the allocations and closes the peer's control connection.
///
/// The end-to-end close travels through the switch, and quinn may send the control
/// connection's close first: had this side closed the end-to-end connection, its close
/// could reach a released allocation and be dropped (the peer would wait for it). So the
/// side that closed first waits until the peer has gone (the relay closes this control
/// connection then), at most [`PEER_CLOSE_GRACE`]; the side the peer closed leaves at
/// once.
fn keep_control(control: quinn::Connection, mut recv: quinn::RecvStream, e2e: quinn::Connection) {
    tokio::spawn(async move {
        let grants = async {
            let mut sink = [0u8; MAX_GRANT];
            while let Ok(Some(_)) = recv.read(&mut sink).await {}
            std::future::pending::<()>().await;
        };
        let ours = tokio::select! {
            e = e2e.closed() => matches!(e, ConnectionError::LocallyClosed),
            _ = grants => false,
        };
        if ours {
            let _ = tokio::time::timeout(PEER_CLOSE_GRACE, control.closed()).await;
        }
        control.close(0u32.into(), b"done");
    });
}

/// Reads exactly `buf` from the relay's answer stream. A refusal is a close with a code;
/// the end of the stream may arrive a moment before that close (seen with 50 connectors
/// at once): then wait briefly for the close and report its reason, so that a refusal
/// worth retrying is retried. (A write may also have failed first.)
async fn read_answer(
    connection: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    lost: &impl Fn(ConnectionError) -> JoinError,
    relay: &str,
) -> Result<(), JoinError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(ReadExactError::ReadError(ReadError::ConnectionLost(e))) => Err(lost(e)),
        Err(_) => {
            let reason = match connection.close_reason() {
                Some(e) => Some(e),
                None => tokio::time::timeout(CLOSE_GRACE, connection.closed())
                    .await
                    .ok(),
            };
            Err(match reason {
                Some(e) => lost(e),
                None => JoinError::Protocol(relay.to_string()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::hello::MAX_HELLO;

    /// A relay that ends the Hello stream, then closes the connection with a refusal a
    /// moment later: the client reports the refusal (and so retries the ones worth
    /// retrying), not a protocol error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_that_arrives_after_the_end_of_the_hello_stream_is_reported() {
        let tls = transport::ServerTls::self_signed(&["localhost"]).unwrap();
        let pin = tls.pin();
        let server = transport::relay_server(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            transport::transport_config(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (send, mut recv) = conn.accept_bi().await.unwrap();
            let _ = recv.read_to_end(4096).await;
            // The answer stream ends first...
            drop(send);
            tokio::time::sleep(Duration::from_millis(100)).await;
            // ...then the refusal's close.
            let r = Refusal::NoListener;
            conn.close(r.code().into(), r.label().as_bytes());
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        let opts = RelayOptions {
            relays: vec![addr.to_string()],
            trust: RelayTrust::Pin(pin),
            token: vec![],
            wait: Duration::ZERO,
            switch: true,
            punch: false,
            idle: transport::IDLE_TIMEOUT,
        };
        let got = join_once(&opts, Role::Connect, false, [7; 32], None, &|_| {}).await;
        assert!(
            matches!(
                got,
                Err(JoinError::Refused {
                    refusal: Refusal::NoListener,
                    ..
                })
            ),
            "{:?}",
            got.map(|_| ())
        );
    }

    /// A refused client reading the relay's answer sees the connection closed with the
    /// refusal's code (the relay closes before it drops the Hello stream). In one process
    /// the end of the stream and the close rarely come apart, so this checks the
    /// contract over 20 refusals; the race itself is made deterministic by the fake
    /// relay of the test above.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_relay_closes_with_the_refusal_before_the_hello_stream_ends() {
        let tls = transport::ServerTls::self_signed(&["localhost"]).unwrap();
        let pin = tls.pin();
        let relay = crate::relay::server::Relay::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            crate::relay::config::Limits::default(),
            None,
            std::sync::Arc::new(|_| {}),
        )
        .unwrap();
        let addr = relay.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        for round in 0..20u8 {
            let endpoint = transport::relay_client(addr, &RelayTrust::Pin(pin)).unwrap();
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let hello = Hello {
                switch: true,
                role: Role::Connect,
                single_use: false,
                rendezvous: [round; 32],
                token: vec![],
            };
            let frame = crate::wire::frame::to_frame(&hello.encode().unwrap()).unwrap();
            send.write_all(&frame).await.unwrap();
            let _ = send.finish();
            let mut answer = [0u8; 1];
            match recv.read_exact(&mut answer).await {
                Err(ReadExactError::ReadError(ReadError::ConnectionLost(
                    ConnectionError::ApplicationClosed(c),
                ))) => assert_eq!(
                    Refusal::from_code(c.error_code.into()),
                    Some(Refusal::NoListener)
                ),
                other => panic!("round {round}: {other:?}"),
            }
        }
        let _ = stop.send(());
        let _ = task.await;
    }

    /// "Connected" is reported once the relay has the Hello, never when the relay could
    /// not be reached (here: a wrong pin fails the QUIC handshake), and once only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connected_is_reported_only_once_the_relay_has_the_hello() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let tls = transport::ServerTls::self_signed(&["localhost"]).unwrap();
        let pin = tls.pin();
        let relay = crate::relay::server::Relay::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            crate::relay::config::Limits::default(),
            None,
            std::sync::Arc::new(|_| {}),
        )
        .unwrap();
        let addr = relay.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        let opts = |pin, wait| RelayOptions {
            relays: vec![addr.to_string()],
            trust: RelayTrust::Pin(pin),
            token: vec![],
            wait,
            switch: true,
            punch: false,
            idle: transport::IDLE_TIMEOUT,
        };
        // Not reached: a wrong pin.
        let told = AtomicUsize::new(0);
        let count = |_: &str| {
            told.fetch_add(1, SeqCst);
        };
        let bad = opts([9; 32], Duration::ZERO);
        let got = join_reporting(&bad, Role::Connect, true, [3; 32], &count).await;
        assert!(matches!(got, Err(JoinError::Connect { .. })));
        assert_eq!(told.load(SeqCst), 0, "reported without a relay");
        // Reached: a connector retrying for a second (four attempts or so) is told once.
        let good = opts(pin, Duration::from_millis(900));
        let got = join_reporting(&good, Role::Connect, true, [4; 32], &count).await;
        assert!(matches!(
            got,
            Err(JoinError::Refused {
                refusal: Refusal::NoListener,
                ..
            })
        ));
        assert_eq!(told.load(SeqCst), 1);
        // A listener is told while it waits, before it is paired.
        let waiting = std::sync::Arc::new(tokio::sync::Notify::new());
        let listener = {
            let (good, waiting) = (good.clone(), std::sync::Arc::clone(&waiting));
            tokio::spawn(async move {
                join_reporting(&good, Role::Listen, true, [5; 32], &|_| {
                    waiting.notify_one()
                })
                .await
                .map(|_| ())
            })
        };
        tokio::time::timeout(Duration::from_secs(10), waiting.notified())
            .await
            .expect("the listener was never told it is waiting at the relay");
        assert!(!listener.is_finished(), "told only once paired");
        let connector = join(&good, Role::Connect, true, [5; 32]).await;
        assert!(connector.is_ok(), "{:?}", connector.map(|_| ()));
        assert!(listener.await.unwrap().is_ok());
        let _ = stop.send(());
        let _ = task.await;
    }

    /// The relay reads the Hello through a frame decoder limited to [`MAX_HELLO`]: a
    /// length field one above it is refused `bad_hello` at once, without waiting for a
    /// body (which would end in `hello_timeout`); one at the limit is read on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hello_length_above_the_limit_is_refused_before_its_body() {
        let tls = transport::ServerTls::self_signed(&["localhost"]).unwrap();
        let pin = tls.pin();
        let relay = crate::relay::server::Relay::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            crate::relay::config::Limits::default(),
            None,
            std::sync::Arc::new(|_| {}),
        )
        .unwrap();
        let addr = relay.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        for (len, refused) in [(MAX_HELLO + 1, true), (MAX_HELLO, false)] {
            let endpoint = transport::relay_client(addr, &RelayTrust::Pin(pin)).unwrap();
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let len = u16::try_from(len).unwrap().to_be_bytes();
            send.write_all(&len).await.unwrap();
            let mut answer = [0u8; 1];
            let got =
                tokio::time::timeout(Duration::from_secs(2), recv.read_exact(&mut answer)).await;
            match got {
                Ok(Err(ReadExactError::ReadError(ReadError::ConnectionLost(
                    ConnectionError::ApplicationClosed(c),
                )))) if refused => assert_eq!(
                    Refusal::from_code(c.error_code.into()),
                    Some(Refusal::BadHello)
                ),
                Err(_elapsed) if !refused => {}
                other => panic!("length {len:?}: {other:?}"),
            }
        }
        let _ = stop.send(());
        let _ = task.await;
    }

    #[test]
    fn relay_lists_parse_and_bad_entries_are_named() {
        assert_eq!(
            RelayOptions::parse_list("a.example:7471, 10.0.0.2:7471,[::1]:9").unwrap(),
            vec!["a.example:7471", "10.0.0.2:7471", "[::1]:9"]
        );
        assert_eq!(split_host("[::1]:9").unwrap(), ("::1", 9));
        for bad in ["", ",", "nohost", "host:", ":7471", "host:99999"] {
            assert!(RelayOptions::parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
