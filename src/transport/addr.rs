//! Addresses as people write them: `HOST:PORT` with a host name, an IPv4 address or a
//! bracketed IPv6 address (`lab.example.org:7470`, `localhost:7470`, `[::1]:7470`), every
//! address a name resolves to, and a connection to the first of them that answers.
//!
//! A name may resolve to several addresses (`localhost` to `::1` and `127.0.0.1`, a
//! dual-stack host to an IPv6 and an IPv4 address), not all of them reachable: a QUIC
//! client gets no answer at all from an address where nothing listens. [`connect_first`]
//! tries them as "happy eyeballs" does (RFC 8305): the first at once, the next one
//! [`STAGGER`] later (or as soon as the one before failed), and keeps the first
//! connection made.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;

use super::TransportError;

/// Time between the start of one connection attempt and the next (RFC 8305's
/// "Connection Attempt Delay", 250 ms).
pub const STAGGER: Duration = Duration::from_millis(250);

/// Most addresses tried for one name (a name with more is tried on its first ones).
pub const MAX_ADDRESSES: usize = 8;

/// An address that cannot be used.
#[derive(Debug, Error)]
pub enum AddrError {
    /// Not `HOST:PORT` (no port, a port out of range, an empty host, an unclosed bracket).
    #[error(
        "{0:?} is not an address: write HOST:PORT, e.g. lab.example.org:7470, 192.0.2.7:7470 or [2001:db8::7]:7470"
    )]
    Malformed(String),
    /// The host name did not resolve.
    #[error("cannot resolve {host:?}: {message} (check the name, or give an IP address)")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's message.
        message: String,
    },
}

/// Why no connection was made to any of the addresses.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint for an attempt could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// quinn refused to start the attempt (a bad address for the endpoint).
    #[error("connecting to {addr}: {message}")]
    Start {
        /// The address.
        addr: SocketAddr,
        /// quinn's message.
        message: String,
    },
    /// Every attempt failed or timed out; the last failure.
    #[error("connecting to {addr}: {message}")]
    Failed {
        /// The address of the last attempt that failed.
        addr: SocketAddr,
        /// What happened to it.
        message: String,
        /// Whether it ended for want of an answer (timed out), not refused or broken:
        /// nothing there, or a firewall.
        unanswered: bool,
    },
    /// No address to try.
    #[error("no address to connect to")]
    NoAddress,
    /// The peer refused this build's end-to-end protocol in the TLS handshake (alert
    /// `no_application_protocol`): one side is a FIPS build and the other is not.
    #[error("connecting to {addr}: {source}")]
    OtherMode {
        /// The address that refused.
        addr: SocketAddr,
        /// Which side is in FIPS mode, and what to do.
        #[source]
        source: crate::crypto::fips::NotApproved,
    },
}

/// True when `e` is the peer's TLS alert `no_application_protocol` (QUIC crypto error
/// 0x178): it serves another ALPN, which for an end-to-end connection means the other
/// mode (a FIPS build against a default build).
pub fn is_alpn_refusal(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        quinn::ConnectionError::TransportError(t) => t.code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(120)
}

/// The refusal of a peer in the other mode, said from this build's side.
pub fn other_mode() -> crate::crypto::fips::NotApproved {
    crate::crypto::fips::NotApproved(if crate::crypto::fips::ENABLED {
        "the peer does not speak FIPS mode's session (phi-conduit-fips/1): a default build \
         of conduit, which a FIPS endpoint does not transfer with, or not a conduit \
         receiver"
            .into()
    } else {
        "the peer does not speak phi-conduit/1: a FIPS build of conduit, which takes \
         transfers only from FIPS builds (docs/FIPS.md), or not a conduit receiver"
            .into()
    })
}

/// Splits `HOST:PORT` (or `[IPv6]:PORT`) into the host (without brackets) and the port.
///
/// ```
/// use phi_conduit::transport::addr::split_host_port;
///
/// assert_eq!(split_host_port("lab.example.org:7470").unwrap(), ("lab.example.org", 7470));
/// assert_eq!(split_host_port("[::1]:9").unwrap(), ("::1", 9));
/// assert!(split_host_port("lab.example.org").is_err());
/// assert!(split_host_port("::1:9").is_err()); // IPv6 needs its brackets
/// ```
pub fn split_host_port(text: &str) -> Result<(&str, u16), AddrError> {
    let bad = || AddrError::Malformed(text.to_string());
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            // Only an IPv6 address goes in brackets.
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            inner
        }
        // An IPv6 address without brackets: its last group would be read as the port.
        None if host.contains(':') || host.contains(']') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host, port))
}

/// Checks the form of `HOST:PORT` without resolving it.
pub fn check(text: &str) -> Result<(), AddrError> {
    split_host_port(text).map(|_| ())
}

/// The addresses `text` (`HOST:PORT`) stands for: itself when the host is an IP address,
/// else every address the name resolves to, in the resolver's order (at most
/// [`MAX_ADDRESSES`], duplicates left out).
pub async fn resolve(text: &str) -> Result<Vec<SocketAddr>, AddrError> {
    let (host, port) = split_host_port(text)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let failed = |message: String| AddrError::Resolve {
        host: host.to_string(),
        message,
    };
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a) && addrs.len() < MAX_ADDRESSES {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(failed("the name has no address".into()));
    }
    Ok(addrs)
}

/// Interleaves the address families, first family first (RFC 8305, section 4), so that a
/// family that does not work costs one [`STAGGER`], not one per address.
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut a, mut b): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|s| s.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while !a.is_empty() || !b.is_empty() {
        out.extend(a.pop());
        out.extend(b.pop());
    }
    out
}

/// A direct transfer's connection to the first of `addrs` that answers within `timeout`
/// ([`connect_first`] with a [`super::direct_client_with`] endpoint of idle timeout `idle`
/// for each attempt): what `conduit send --direct` and the agent's outboxes use.
pub async fn connect_direct(
    addrs: &[SocketAddr],
    timeout: Duration,
    idle: Duration,
) -> Result<(quinn::Endpoint, quinn::Connection), ConnectError> {
    connect_any(addrs, "phi-conduit", timeout, true, |a| {
        super::direct_client_with(a, idle)
    })
    .await
}

/// Connects to the first of `addrs` that answers within `timeout` (for each attempt),
/// with an endpoint made by `endpoint_for` for each attempt (an endpoint is bound to one
/// address family) and `server_name` as the TLS server name. The attempts start
/// [`STAGGER`] apart, in [`interleave`]d order, a failed one starting the next at once;
/// the first connection made is returned with its endpoint and the others are dropped.
pub async fn connect_first(
    addrs: &[SocketAddr],
    server_name: &str,
    timeout: Duration,
    endpoint_for: impl Fn(SocketAddr) -> Result<quinn::Endpoint, TransportError>,
) -> Result<(quinn::Endpoint, quinn::Connection), ConnectError> {
    connect_any(addrs, server_name, timeout, false, endpoint_for).await
}

/// [`connect_first`]; `end_to_end`: the connections are end-to-end ones, whose refusal
/// of this build's ALPN means the peer is in the other mode ([`ConnectError::OtherMode`],
/// when it is the last failure).
async fn connect_any(
    addrs: &[SocketAddr],
    server_name: &str,
    timeout: Duration,
    end_to_end: bool,
    endpoint_for: impl Fn(SocketAddr) -> Result<quinn::Endpoint, TransportError>,
) -> Result<(quinn::Endpoint, quinn::Connection), ConnectError> {
    let order = interleave(addrs);
    let mut next = order.iter().copied().peekable();
    let mut running = tokio::task::JoinSet::new();
    let mut last: Option<ConnectError> = None;
    loop {
        if let Some(addr) = next.next() {
            let endpoint = endpoint_for(addr)?;
            let connecting =
                endpoint
                    .connect(addr, server_name)
                    .map_err(|e| ConnectError::Start {
                        addr,
                        message: e.to_string(),
                    })?;
            running.spawn(async move {
                let failed = |message: String, unanswered| ConnectError::Failed {
                    addr,
                    message,
                    unanswered,
                };
                let result = match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(conn)) => Ok(conn),
                    // The other mode (or not a conduit receiver at all).
                    Ok(Err(e)) if end_to_end && is_alpn_refusal(&e) => {
                        Err(ConnectError::OtherMode {
                            addr,
                            source: other_mode(),
                        })
                    }
                    Ok(Err(e @ quinn::ConnectionError::TimedOut)) => {
                        Err(failed(e.to_string(), true))
                    }
                    Ok(Err(e)) => Err(failed(e.to_string(), false)),
                    Err(_) => Err(failed("no answer (timed out)".to_string(), true)),
                };
                (endpoint, result)
            });
        } else if running.is_empty() {
            return Err(last.unwrap_or(ConnectError::NoAddress));
        }
        let more = next.peek().is_some();
        // Wait for an attempt to end, or for the time to start the next one.
        let stagger = async {
            if more {
                tokio::time::sleep(STAGGER).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            done = running.join_next() => {
                match done {
                    Some(Ok((endpoint, Ok(conn)))) => return Ok((endpoint, conn)),
                    // Reported if nothing else answers.
                    Some(Ok((_, Err(e)))) => last = Some(e),
                    // A task does not panic; an aborted one is not ours to report.
                    Some(Err(_)) | None => {}
                }
            }
            () = stagger => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_and_bad_forms_refused() {
        assert_eq!(split_host_port("localhost:1").unwrap(), ("localhost", 1));
        assert_eq!(
            split_host_port("10.0.0.1:7470").unwrap(),
            ("10.0.0.1", 7470)
        );
        assert_eq!(
            split_host_port("[fe80::1]:7470").unwrap(),
            ("fe80::1", 7470)
        );
        for bad in [
            "",
            "host",
            "host:",
            ":7470",
            "host:70000",
            "::1:7470",
            "[::1:7470",
            "[nothost]:7470",
            "a b:1",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn families_alternate_from_the_first() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let given = [
            a("[::1]:1"),
            a("[::2]:1"),
            a("127.0.0.1:1"),
            a("10.0.0.1:1"),
        ];
        assert_eq!(
            interleave(&given),
            vec![
                a("[::1]:1"),
                a("127.0.0.1:1"),
                a("[::2]:1"),
                a("10.0.0.1:1")
            ]
        );
        assert_eq!(interleave(&given[2..]), given[2..].to_vec());
    }

    #[tokio::test]
    async fn the_next_address_is_tried_while_the_first_stays_silent() {
        let server = crate::transport::direct_server(([127, 0, 0, 1], 0).into()).unwrap();
        let good = server.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            conn.closed().await;
        });
        // Nothing answers on this port (a bound socket that never reads).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = silent.local_addr().unwrap();
        let started = std::time::Instant::now();
        let (_ep, conn) = connect_first(
            &[dead, good],
            "phi-conduit",
            Duration::from_secs(5),
            crate::transport::direct_client,
        )
        .await
        .unwrap();
        assert_eq!(conn.remote_address(), good);
        // The second attempt started after the stagger, not after the first timed out.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        conn.close(0u32.into(), b"");
        accepting.abort();
        // Nothing answering anywhere: the last failure, once every attempt ended.
        let e = connect_first(
            &[dead],
            "phi-conduit",
            Duration::from_millis(300),
            crate::transport::direct_client,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, ConnectError::Failed { addr, .. } if addr == dead),
            "{e}"
        );
    }

    #[tokio::test]
    async fn literals_resolve_to_themselves_and_localhost_to_loopback() {
        let v = resolve("[::1]:5").await.unwrap();
        assert_eq!(v, vec!["[::1]:5".parse().unwrap()]);
        let v = resolve("localhost:5").await.unwrap();
        assert!(!v.is_empty() && v.iter().all(|a| a.ip().is_loopback() && a.port() == 5));
        let e = resolve("no-such-host.invalid:5").await.unwrap_err();
        assert!(matches!(e, AddrError::Resolve { .. }), "{e}");
    }
}
