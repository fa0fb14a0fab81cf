//! QUIC endpoints (quinn over rustls with the ring provider) for direct transfers.
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
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use thiserror::Error;

/// ALPN of direct connections.
pub const ALPN: &[u8] = crate::crypto::handshake::ALPN;
/// Per-stream receive window: one file stream can keep this much in flight.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// Connection receive window, across all streams.
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Send window (unacknowledged bytes quinn buffers).
pub const SEND_WINDOW: u64 = 32 << 20;
/// UDP socket send and receive buffer size requested.
pub const SOCKET_BUFFER: usize = 4 << 20;
/// A connection with no traffic for this long is closed (automatic logoff).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well under the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
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
}

/// The transport configuration used everywhere (direct, relay legs, benchmarks).
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(SEND_WINDOW);
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    t.max_concurrent_bidi_streams(4u32.into());
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 30 s fits in a VarInt; the conversion cannot fail.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

/// A direct-mode server endpoint on `addr` with a fresh self-signed certificate.
pub fn direct_server(addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let cert = rcgen::generate_simple_self_signed(vec!["phi-conduit".into()])
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config()));
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        socket(addr)?,
        runtime,
    )
    .map_err(|source| TransportError::Socket { addr, source })
}

/// A direct-mode client endpoint (bound to an ephemeral port of the matching family).
pub fn direct_client(peer: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let local: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let p = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(
            p.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config()));
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransportError::Tls("no async runtime".into()))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket(local)?,
        runtime,
    )
    .map_err(|source| TransportError::Socket {
        addr: local,
        source,
    })?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Accepts any certificate (direct mode: the E2E handshake authenticates the peer), but
/// checks that the TLS handshake was signed by the certificate's key.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
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
