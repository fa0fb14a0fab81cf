//! The end-to-end connection's TLS 1.3 in FIPS mode: both endpoints present their P-256
//! identity's certificate ([`crate::crypto::fips_identity`]), each handshake signature is
//! checked, and the session layer then compares the peer's key with the pin in the
//! address book (docs/FIPS.md, "The FIPS session").
//!
//! The process installs its identity once ([`install`]); a FIPS build that has none
//! cannot make or take an end-to-end connection. Only the hybrid X25519MLKEM768 key
//! exchange is offered and accepted on these connections, so every FIPS session is
//! post-quantum.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

use super::TransportError;
use crate::crypto::fips_identity::{FipsIdentity, FipsPin};

static IDENTITY: OnceLock<Arc<FipsIdentity>> = OnceLock::new();

/// Installs the identity this process presents on end-to-end connections in FIPS mode.
/// The first call wins (one identity per process); later calls with another identity
/// are an error.
pub fn install(identity: Arc<FipsIdentity>) -> Result<(), TransportError> {
    let pin = identity.pin();
    let set = IDENTITY.get_or_init(|| identity);
    if set.pin().matches(&pin) {
        Ok(())
    } else {
        Err(TransportError::Tls(
            "another FIPS identity is already installed in this process".into(),
        ))
    }
}

fn identity() -> Result<&'static Arc<FipsIdentity>, TransportError> {
    IDENTITY.get().ok_or_else(|| {
        TransportError::Tls(
            "FIPS mode: no FIPS identity installed for the end-to-end connection".into(),
        )
    })
}

/// The provider of FIPS end-to-end connections: the process's provider (the FIPS
/// module's approved suites in a FIPS build), key exchange X25519MLKEM768 only.
fn provider(base: &CryptoProvider) -> Arc<CryptoProvider> {
    let mut p = base.clone();
    p.kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519MLKEM768);
    Arc::new(p)
}

/// The server side: this identity's certificate, a client certificate required.
pub(super) fn server(base: &CryptoProvider) -> Result<rustls::ServerConfig, TransportError> {
    let id = identity()?;
    let p = provider(base);
    let (cert, key) = id.tls();
    rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(super::KeyVerifier::any(
            p.signature_verification_algorithms,
        )))
        .with_single_cert(vec![cert], key)
        .map_err(|e| TransportError::Tls(e.to_string()))
}

/// The client side: any server certificate whose key signs the handshake (the session
/// layer checks the pin), this identity's certificate presented.
pub(super) fn client(base: &CryptoProvider) -> Result<rustls::ClientConfig, TransportError> {
    let id = identity()?;
    let verifier = Arc::new(super::KeyVerifier::any(
        base.signature_verification_algorithms,
    ));
    let (cert, key) = id.tls();
    rustls::ClientConfig::builder_with_provider(provider(base))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| TransportError::Tls(e.to_string()))
}

/// The pin of the key the peer of `conn` signed its TLS handshake with; `None` if it
/// presented no certificate (not a FIPS peer).
pub fn peer_pin(conn: &quinn::Connection) -> Option<FipsPin> {
    FipsPin::of_certificate(&super::peer_leaf(conn)?)
}
