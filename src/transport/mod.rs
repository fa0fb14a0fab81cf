//! QUIC endpoints (quinn over rustls with the aws-lc-rs provider, key exchange
//! X25519MLKEM768 preferred): direct transfers, and connections to and from a relay.
//!
//! In direct mode the TLS certificate is ephemeral and not checked against any
//! authority: who the peer is, is the end-to-end handshake's job, and it must not depend
//! on the hop. The client still verifies the TLS handshake signature against the
//! certificate's key, so the QUIC hop itself is a proper TLS 1.3 channel. ALPN
//! `phi-conduit/1` is required on both sides.
//!
//! [`transport_config`] is the one transport configuration the product uses; its values
//! and the reasons for them are in docs/PROTOCOL.md, "Transport".

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use thiserror::Error;

pub mod addr;
pub mod demux;
pub mod fips_tls;
pub mod mtu;
pub mod path;
pub mod punch;

/// ALPN of direct connections.
pub const ALPN: &[u8] = crate::crypto::handshake::ALPN;
/// ALPN of end-to-end connections in FIPS mode (TLS 1.3 between P-256 identities, no
/// Noise): a default build and a FIPS build never agree on one, and the TLS handshake
/// says so (`no_application_protocol`).
pub const FIPS_ALPN: &[u8] = b"phi-conduit-fips/1";

/// The ALPN of this build's end-to-end connections.
pub fn e2e_alpn() -> &'static [u8] {
    if crate::crypto::fips::ENABLED {
        FIPS_ALPN
    } else {
        ALPN
    }
}
/// Per-stream receive window: one file stream can keep this much in flight.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Connection receive window, across all streams.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Send window (unacknowledged bytes quinn buffers).
pub const SEND_WINDOW: u64 = 32 << 20;
/// UDP socket send and receive buffer size requested.
pub const SOCKET_BUFFER: usize = 4 << 20;
/// A connection with no traffic for this long is closed (automatic logoff). Both ends
/// send keep-alives, so only a peer that is gone (killed, unplugged) goes silent: it is
/// noticed within this time. Configurable (`--idle-timeout`, `idle_timeout_secs`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest keep-alive interval; with a shorter idle timeout it is a third of that.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Shortest idle timeout accepted (keep-alives every third of it must stay sensible).
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Concurrent unidirectional streams the peer may open (files in flight).
pub const MAX_UNI_STREAMS: u32 = 64;

/// Transport errors.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The UDP socket could not be made.
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A PEM file could not be read.
    #[error("PEM: {0}")]
    Pem(String),
}

/// The environment variable with which the `conduit` binary calls
/// [`use_quinn_defaults`] (set to anything): for measuring what the tuning gives
/// (docs/BENCHMARKS.md), never for production.
pub const QUINN_DEFAULTS_ENV: &str = "CONDUIT_BENCH_QUINN_DEFAULTS";

static QUINN_DEFAULTS: AtomicBool = AtomicBool::new(false);

/// From now on, this process's endpoints use quinn's default windows and the system's
/// default socket buffers instead of the tuned ones (`false`: the tuned ones, the
/// default). Process-wide, as it is a property of the measurement and not of one
/// endpoint; for benchmarks only.
pub fn use_quinn_defaults(on: bool) {
    QUINN_DEFAULTS.store(on, Ordering::Relaxed);
}

fn quinn_defaults() -> bool {
    QUINN_DEFAULTS.load(Ordering::Relaxed)
}

/// The transport configuration used everywhere (direct, relay legs, benchmarks).
pub fn transport_config() -> quinn::TransportConfig {
    transport_config_with(IDLE_TIMEOUT)
}

/// The keep-alive interval for an idle timeout: [`KEEP_ALIVE`], or a third of a shorter
/// idle timeout (so two keep-alives may be lost before the connection is given up).
pub fn keep_alive_for(idle: Duration) -> Duration {
    KEEP_ALIVE.min(idle / 3)
}

/// [`transport_config`] with another idle timeout (at least [`MIN_IDLE_TIMEOUT`]; the
/// keep-alive follows it, see [`keep_alive_for`]).
pub fn transport_config_with(idle: Duration) -> quinn::TransportConfig {
    let idle = idle.max(MIN_IDLE_TIMEOUT);
    let mut t = quinn::TransportConfig::default();
    if !quinn_defaults() {
        t.stream_receive_window(STREAM_WINDOW.into());
        t.receive_window(CONNECTION_WINDOW.into());
        t.send_window(SEND_WINDOW);
    }
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(4u32.into());
    t.keep_alive_interval(Some(keep_alive_for(idle)));
    // Out of a VarInt's range (centuries) the conversion fails: no idle timeout would be
    // wrong, so fall back to the default.
    let timeout = quinn::IdleTimeout::try_from(idle)
        .or_else(|_| quinn::IdleTimeout::try_from(IDLE_TIMEOUT))
        .ok();
    t.max_idle_timeout(timeout);
    t
}

/// Lets path MTU discovery of `t` probe up to `ceiling` bytes of UDP payload ([`mtu`]);
/// with quinn's defaults switched on ([`use_quinn_defaults`]), quinn's ceiling stays.
fn set_ceiling(t: &mut quinn::TransportConfig, ceiling: u16) {
    if !quinn_defaults() {
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(ceiling);
        t.mtu_discovery_config(Some(discovery));
    }
}

/// Every endpoint's configuration: it accepts UDP payloads up to [`mtu::MAX_UDP_PAYLOAD`]
/// (and says so to its peers), quinn's 1,472 with quinn's defaults; and QUIC-bit
/// greasing is off (RFC 9287), so that every QUIC packet it sends or accepts has its
/// fixed bit set and a datagram with both top bits clear is a wrapped packet
/// ([`crate::wire::wrap`]) on a socket shared with the relay's switch or a client's
/// paths.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.grease_quic_bit(false);
    if !quinn_defaults() {
        // In quinn's range (1,200..=65,527) by construction; if not, its default stays.
        let _ = cfg.max_udp_payload_size(mtu::MAX_UDP_PAYLOAD);
    }
    cfg
}

/// The ceiling for what an endpoint bound to `addr` sends when its peer is not known
/// beforehand (a server): towards its own network when bound to one address (loopback
/// included), the internet's when bound to all.
fn bound_ceiling(addr: SocketAddr) -> u16 {
    if addr.ip().is_unspecified() {
        mtu::INTERNET_CEILING
    } else {
        mtu::ceiling_for(addr.ip())
    }
}

/// The TLS provider of every QUIC connection: aws-lc-rs, whose AES-GCM is the fastest
/// measured per packet here (docs/BENCHMARKS.md, "AEAD backends") and whose default key
/// exchange groups put the hybrid X25519MLKEM768 first (rustls `prefer-post-quantum`).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A UDP socket bound to `addr` with large buffers (best effort: the kernel may cap them).
fn socket(addr: SocketAddr) -> Result<UdpSocket, TransportError> {
    let err = |source| TransportError::Socket { addr, source };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    if !quinn_defaults() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    // `[::]` takes IPv4 too (as IPv4-mapped addresses) where the system allows it,
    // whatever its default (`net.ipv6.bindv6only`): one listener for both families.
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

/// ALPN of connections to a relay.
pub const RELAY_ALPN: &[u8] = b"phi-conduit-relay/1";

/// A server's TLS certificate chain and private key.
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let pem = |path: &Path, e: rustls::pki_types::pem::Error| {
            TransportError::Pem(format!("{}: {e}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e))?;
        if chain.is_empty() {
            return Err(TransportError::Pem(format!(
                "{}: no certificate in the file",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
        Ok(ServerTls { chain, key })
    }

    /// A fresh self-signed certificate for `names` (DNS names or IP addresses), held in
    /// memory only.
    pub fn self_signed(names: &[&str]) -> Result<Self, TransportError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        Ok(ServerTls {
            chain: vec![cert.cert.der().clone()],
            key,
        })
    }

    /// SHA-256 of the leaf certificate (DER): the value clients pin with `--relay-pin`.
    pub fn pin(&self) -> [u8; 32] {
        self.chain.first().map_or([0; 32], |c| sha256(c.as_ref()))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A server endpoint on `addr` serving the configuration `config` makes of `transport`
/// (its path MTU ceiling set for `addr`'s network).
fn server_endpoint(
    addr: SocketAddr,
    mut transport: quinn::TransportConfig,
    config: impl FnOnce(quinn::TransportConfig) -> Result<quinn::ServerConfig, TransportError>,
) -> Result<quinn::Endpoint, TransportError> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    let socket = runtime
        .wrap_udp_socket(socket(addr)?)
        .map_err(|source| TransportError::Socket { addr, source })?;
    set_ceiling(&mut transport, bound_ceiling(addr));
    endpoint_with_server(addr, socket, config(transport)?)
}

/// An endpoint on `socket` serving `cfg`.
fn endpoint_with_server(
    addr: SocketAddr,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    cfg: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(), Some(cfg), socket, runtime)
        .map_err(|source| TransportError::Socket { addr, source })
}

/// A server configuration: TLS 1.3 with `tls`'s certificate, ALPN `alpn`, `transport`.
fn server_config(
    tls: ServerTls,
    alpn: &[u8],
    transport: quinn::TransportConfig,
    tune: impl FnOnce(&mut quinn::ServerConfig),
) -> Result<quinn::ServerConfig, TransportError> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(tls.chain, tls.key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    quic_server_config(cfg, alpn, transport, tune)
}

/// The server configuration of the end-to-end connection: a fresh self-signed
/// certificate and no client certificate, or in FIPS mode both sides' P-256 identities
/// ([`fips_tls`]).
fn e2e_server_config(
    transport: quinn::TransportConfig,
    tune: impl FnOnce(&mut quinn::ServerConfig),
) -> Result<quinn::ServerConfig, TransportError> {
    if crate::crypto::fips::ENABLED {
        quic_server_config(fips_tls::server(&provider())?, FIPS_ALPN, transport, tune)
    } else {
        server_config(
            ServerTls::self_signed(&["phi-conduit"])?,
            ALPN,
            transport,
            tune,
        )
    }
}

/// `cfg` with ALPN `alpn` as a QUIC server configuration with `transport`.
fn quic_server_config(
    mut cfg: rustls::ServerConfig,
    alpn: &[u8],
    transport: quinn::TransportConfig,
    tune: impl FnOnce(&mut quinn::ServerConfig),
) -> Result<quinn::ServerConfig, TransportError> {
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicServerConfig::try_from(cfg).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport));
    tune(&mut cfg);
    Ok(cfg)
}

/// A direct-mode server endpoint on `addr` with a fresh self-signed certificate.
pub fn direct_server(addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    direct_server_with(addr, IDLE_TIMEOUT)
}

/// [`direct_server`] with the idle timeout `idle`.
pub fn direct_server_with(
    addr: SocketAddr,
    idle: Duration,
) -> Result<quinn::Endpoint, TransportError> {
    server_endpoint(addr, transport_config_with(idle), |t| {
        e2e_server_config(t, |_| {})
    })
}

/// Connection attempts a relay holds before it has decided on them (it decides at once:
/// retry, refuse or accept).
pub const RELAY_MAX_INCOMING: usize = 4096;
/// Bytes of early packets buffered per undecided connection attempt, and for all.
pub const RELAY_INCOMING_BUFFER: u64 = 64 << 10;
/// See [`RELAY_INCOMING_BUFFER`].
pub const RELAY_INCOMING_BUFFER_TOTAL: u64 = 8 << 20;

/// A relay's server endpoint on `addr` (ALPN [`RELAY_ALPN`]), holding at most
/// [`RELAY_MAX_INCOMING`] undecided connection attempts and
/// [`RELAY_INCOMING_BUFFER_TOTAL`] bytes of their early packets.
pub fn relay_server(
    addr: SocketAddr,
    tls: ServerTls,
    transport: quinn::TransportConfig,
) -> Result<quinn::Endpoint, TransportError> {
    server_endpoint(addr, transport, |t| {
        server_config(tls, RELAY_ALPN, t, relay_tune)
    })
}

fn relay_tune(cfg: &mut quinn::ServerConfig) {
    cfg.max_incoming(RELAY_MAX_INCOMING)
        .incoming_buffer_size(RELAY_INCOMING_BUFFER)
        .incoming_buffer_size_total(RELAY_INCOMING_BUFFER_TOTAL);
}

/// [`relay_server`] on one UDP port shared with `divert`: the datagrams that are not
/// QUIC (wrapped packets for the relay's switch) go to it ([`demux::DemuxSocket`]).
/// Returns the socket too, for sending outside quinn.
pub fn relay_server_diverting(
    addr: SocketAddr,
    tls: ServerTls,
    mut transport: quinn::TransportConfig,
    divert: Arc<dyn demux::Divert>,
) -> Result<(quinn::Endpoint, Arc<demux::DemuxSocket>), TransportError> {
    let err = |source| TransportError::Socket { addr, source };
    set_ceiling(&mut transport, bound_ceiling(addr));
    let sock = Arc::new(demux::DemuxSocket::new(socket(addr)?, divert).map_err(err)?);
    let cfg = server_config(tls, RELAY_ALPN, transport, relay_tune)?;
    let ep = endpoint_with_server(addr, sock.clone(), cfg)?;
    Ok((ep, sock))
}

/// How a client verifies a relay's certificate.
#[derive(Debug, Clone)]
pub enum RelayTrust {
    /// The SHA-256 of the relay's leaf certificate (`--relay-pin`); the name is not
    /// checked, the handshake signature is.
    Pin([u8; 32]),
    /// Certificates chaining to these roots (`--relay-ca FILE`), for the relay's name.
    Ca(Vec<CertificateDer<'static>>),
    /// Certificates chaining to the system's roots, for the relay's name.
    System,
}

impl RelayTrust {
    /// Roots from a PEM file.
    pub fn ca_file(path: &Path) -> Result<Self, TransportError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| TransportError::Pem(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(TransportError::Pem(format!(
                "{}: no certificate in the file",
                path.display()
            )));
        }
        Ok(RelayTrust::Ca(certs))
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, TransportError> {
        let p = provider();
        let builder = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let roots = |certs: &[CertificateDer<'static>]| {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(TransportError::Tls("no usable root certificate".into()));
            }
            Ok(roots)
        };
        Ok(match self {
            RelayTrust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(KeyVerifier::pinned(
                    *pin,
                    p.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
            RelayTrust::Ca(certs) => builder
                .with_root_certificates(roots(certs)?)
                .with_no_client_auth(),
            RelayTrust::System => {
                let found = rustls_native_certs::load_native_certs();
                builder
                    .with_root_certificates(roots(&found.certs)?)
                    .with_no_client_auth()
            }
        })
    }
}

/// The unspecified address of `peer`'s family, port 0.
fn any_local(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    }
}

/// A client endpoint bound to `local` with `tls`.
fn client_endpoint(
    local: SocketAddr,
    tls: rustls::ClientConfig,
    alpn: &[u8],
    idle: Duration,
    ceiling: u16,
) -> Result<quinn::Endpoint, TransportError> {
    let cfg = client_config(tls, alpn, idle, ceiling)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    let mut ep = quinn::Endpoint::new(endpoint_config(), None, socket(local)?, runtime).map_err(
        |source| TransportError::Socket {
            addr: local,
            source,
        },
    )?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// A client configuration: `tls` with ALPN `alpn`, the transport configuration with idle
/// timeout `idle` and path MTU ceiling `ceiling`.
fn client_config(
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
    idle: Duration,
    ceiling: u16,
) -> Result<quinn::ClientConfig, TransportError> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = transport_config_with(idle);
    set_ceiling(&mut transport, ceiling);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A direct-mode client endpoint for connecting to `peer`.
pub fn direct_client(peer: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    direct_client_with(peer, IDLE_TIMEOUT)
}

/// [`direct_client`] with the idle timeout `idle`.
pub fn direct_client_with(
    peer: SocketAddr,
    idle: Duration,
) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint(
        any_local(peer),
        e2e_client_tls()?,
        e2e_alpn(),
        idle,
        mtu::ceiling_for(peer.ip()),
    )
}

/// The end-to-end connection's client TLS: any certificate, whose key must sign the
/// handshake (see the module's documentation); in FIPS mode this endpoint presents its
/// P-256 identity too ([`fips_tls`]).
fn e2e_client_tls() -> Result<rustls::ClientConfig, TransportError> {
    let p = provider();
    if crate::crypto::fips::ENABLED {
        return fips_tls::client(&p);
    }
    Ok(rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyVerifier::any(
            p.signature_verification_algorithms,
        )))
        .with_no_client_auth())
}

/// The ceiling of an end-to-end connection through the relay at `relay`: the path's,
/// less the wrapped-packet header the socket adds to each datagram.
fn switched_ceiling(relay: SocketAddr) -> u16 {
    mtu::ceiling_for(relay.ip()).saturating_sub(crate::wire::wrap::HEADER_LEN as u16)
}

/// A client endpoint for the relay at `relay` whose socket also carries the end-to-end
/// connection through the relay's datagram switch ([`path::RelayPath`]): its default
/// client configuration is the relay's (verified by `trust`). A `listener` (the side the
/// peer's end-to-end connection comes to) also serves that connection: a fresh
/// self-signed certificate, ALPN `phi-conduit/1`, idle timeout `idle`. Returns the path,
/// which the relay's grant completes, and the socket (for probes).
pub fn relay_client_switching(
    relay: SocketAddr,
    trust: &RelayTrust,
    listener: bool,
    idle: Duration,
) -> Result<
    (
        quinn::Endpoint,
        Arc<path::RelayPath>,
        Arc<demux::DemuxSocket>,
    ),
    TransportError,
> {
    let local = any_local(relay);
    let route = Arc::new(path::RelayPath::new(relay, local));
    let (ep, sock) = relay_client_on(local, trust, route.clone(), mtu::ceiling_for(relay.ip()))?;
    if listener {
        let mut transport = transport_config_with(idle);
        set_ceiling(&mut transport, switched_ceiling(relay));
        ep.set_server_config(Some(e2e_server_config(
            transport,
            // The peer's address stays the mapped one whichever path carries it (the
            // socket moves the packets): a packet from anywhere else must not move
            // quinn's idea of the peer, as it never does on the client side.
            |s| {
                s.migration(false);
            },
        )?));
    }
    Ok((ep, route, sock))
}

/// The client configuration of an end-to-end connection through the relay at `relay`
/// (on an endpoint of [`relay_client_switching`]), with idle timeout `idle`.
pub fn switched_client_config(
    relay: SocketAddr,
    idle: Duration,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config(e2e_client_tls()?, e2e_alpn(), idle, switched_ceiling(relay))
}

/// A client endpoint for connecting to the relay at `relay`, verifying it by `trust`.
pub fn relay_client(
    relay: SocketAddr,
    trust: &RelayTrust,
) -> Result<quinn::Endpoint, TransportError> {
    client_endpoint(
        any_local(relay),
        trust.client_config()?,
        RELAY_ALPN,
        IDLE_TIMEOUT,
        mtu::ceiling_for(relay.ip()),
    )
}

/// A client endpoint for relays bound to `local` (a chosen source address).
pub fn relay_client_from(
    local: SocketAddr,
    trust: &RelayTrust,
) -> Result<quinn::Endpoint, TransportError> {
    // The relay's address is not known here: towards the local address's own network.
    let ceiling = bound_ceiling(local);
    client_endpoint(
        local,
        trust.client_config()?,
        RELAY_ALPN,
        IDLE_TIMEOUT,
        ceiling,
    )
}

/// A client endpoint for relays on a [`demux::DemuxSocket`] bound to `local`: its control
/// connection and the datagrams that are not QUIC (wrapped packets) share the socket, so
/// the relay sees both come from one address. Returns the socket too, for sending
/// wrapped packets outside quinn.
pub fn relay_client_diverting(
    local: SocketAddr,
    trust: &RelayTrust,
    divert: Arc<dyn demux::Divert>,
) -> Result<(quinn::Endpoint, Arc<demux::DemuxSocket>), TransportError> {
    relay_client_on(local, trust, divert, bound_ceiling(local))
}

/// [`relay_client_diverting`] with the path MTU ceiling `ceiling` towards the relay.
fn relay_client_on(
    local: SocketAddr,
    trust: &RelayTrust,
    divert: Arc<dyn demux::Divert>,
    ceiling: u16,
) -> Result<(quinn::Endpoint, Arc<demux::DemuxSocket>), TransportError> {
    let err = |source| TransportError::Socket {
        addr: local,
        source,
    };
    let sock = Arc::new(demux::DemuxSocket::new(socket(local)?, divert).map_err(err)?);
    let cfg = client_config(trust.client_config()?, RELAY_ALPN, IDLE_TIMEOUT, ceiling)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    let mut ep =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config(), None, sock.clone(), runtime)
            .map_err(err)?;
    ep.set_default_client_config(cfg);
    Ok((ep, sock))
}

/// SHA-256 of the leaf certificate the server of `conn` presented (a relay's, as
/// [`ServerTls::pin`] computes it); `None` if it presented none.
pub fn peer_cert_sha256(conn: &quinn::Connection) -> Option<[u8; 32]> {
    peer_leaf(conn).map(|c| sha256(c.as_ref()))
}

/// The leaf certificate the peer of `conn` presented, if any.
fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

/// Checks a peer's certificate by its key alone: with a pin, exactly the certificate
/// whose SHA-256 is pinned (constant-time comparison, `--relay-pin`); without, any
/// certificate (direct mode: the end-to-end handshake authenticates the peer; FIPS mode:
/// the session layer compares the key with the address book's pin, [`fips_tls`]). Either
/// way the TLS 1.3 handshake must be signed by the certificate's key. As a client
/// verifier it requires a certificate that parses.
#[derive(Debug)]
struct KeyVerifier {
    pin: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeyVerifier {
    fn any(algorithms: WebPkiSupportedAlgorithms) -> Self {
        KeyVerifier {
            pin: None,
            algorithms,
        }
    }

    fn pinned(pin: [u8; 32], algorithms: WebPkiSupportedAlgorithms) -> Self {
        KeyVerifier {
            pin: Some(pin),
            algorithms,
        }
    }

    /// The pin, if any, against the leaf certificate `end_entity`.
    fn check_pin(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        use subtle::ConstantTimeEq;
        match self.pin {
            Some(pin) if !bool::from(sha256(end_entity.as_ref()).ct_eq(&pin)) => {
                Err(rustls::Error::General(PIN_MISMATCH.into()))
            }
            _ => Ok(()),
        }
    }
}

/// Why a relay's certificate was refused when its SHA-256 is pinned and differs: the
/// relay client's error carries this sentence, by which the CLI recognises the case.
pub const PIN_MISMATCH: &str = "the relay's certificate does not match the pinned SHA-256";

impl ServerCertVerifier for KeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_pin(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl rustls::server::danger::ClientCertVerifier for KeyVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        self.check_pin(end_entity)
            .map(|()| rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quic_hop_prefers_the_hybrid_post_quantum_key_exchange() {
        let p = provider();
        // Both ends use this provider, so the client's first key share is the group
        // every connection agrees on.
        assert_eq!(
            p.kx_groups.first().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
        assert!(
            p.kx_groups
                .iter()
                .any(|g| g.name() == rustls::NamedGroup::X25519)
        );
    }

    #[tokio::test]
    async fn on_loopback_both_directions_discover_the_local_ceiling() {
        // Each side runs path MTU discovery for what it sends: the client towards its
        // peer's address, the server towards its bound one; both reach the local
        // ceiling on loopback, above quinn's internet default.
        let server = direct_server("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let client = direct_client(addr).unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut r = conn.accept_uni().await.unwrap();
            r.read_to_end(64 << 20).await.unwrap();
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&vec![7u8; 4 << 20]).await.unwrap();
            s.finish().unwrap();
            let _ = s.stopped().await;
            (conn.stats().path.current_mtu, server)
        });
        let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&vec![5u8; 8 << 20]).await.unwrap();
        s.finish().unwrap();
        let mut r = conn.accept_uni().await.unwrap();
        r.read_to_end(64 << 20).await.unwrap();
        let client_mtu = conn.stats().path.current_mtu;
        let (server_mtu, _server) = accept.await.unwrap();
        assert!(
            client_mtu > mtu::INTERNET_CEILING && client_mtu <= mtu::LOCAL_CEILING,
            "client {client_mtu}"
        );
        assert!(
            server_mtu > mtu::INTERNET_CEILING && server_mtu <= mtu::LOCAL_CEILING,
            "server {server_mtu}"
        );
    }

    #[tokio::test]
    async fn direct_endpoints_connect_with_alpn_and_move_bytes() {
        let server = direct_server("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let client = direct_client(addr).unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut r = conn.accept_uni().await.unwrap();
            let data = r.read_to_end(1 << 20).await.unwrap();
            (
                conn.handshake_data()
                    .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|h| h.protocol),
                data,
            )
        });
        let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(b"hello over quic").await.unwrap();
        s.finish().unwrap();
        let (alpn, data) = accept.await.unwrap();
        assert_eq!(alpn.as_deref(), Some(ALPN));
        assert_eq!(data, b"hello over quic");
    }

    #[tokio::test]
    async fn a_client_with_another_alpn_is_refused() {
        let server = direct_server("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            if let Some(inc) = server.accept().await {
                let _ = inc.await;
            }
        });
        let p = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(KeyVerifier::any(
                p.signature_verification_algorithms,
            )))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"something-else".to_vec()];
        let cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let res = client.connect_with(cfg, addr, "phi-conduit").unwrap().await;
        assert!(res.is_err(), "a wrong ALPN must not connect");
    }
}
