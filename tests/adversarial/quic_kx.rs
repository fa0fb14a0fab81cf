//! The QUIC hop's key exchange, as negotiated on real connections: a direct connection
//! and both clients' connections through the relay agree on the hybrid X25519MLKEM768
//! group, not on X25519 alone. (quinn reports the group only with its test feature
//! `__rustls-post-quantum-test`, enabled for the tests in Cargo.toml's dev-dependencies.)

use crate::common;

use common::inproc::{clinics, relay};
use phi_conduit::relay::client;
use phi_conduit::relay::hello::Role;
use phi_conduit::transport::{direct_client, direct_server};
use rustls::NamedGroup;

fn group(c: &quinn::Connection) -> NamedGroup {
    c.handshake_data()
        .expect("handshake data")
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .expect("rustls handshake data")
        .negotiated_key_exchange_group
}

#[tokio::test]
async fn a_direct_connection_negotiates_x25519mlkem768() {
    let server = direct_server("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = direct_client(addr).unwrap();
    let accept = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
    let conn = client.connect(addr, "phi-conduit").unwrap().await.unwrap();
    let served = accept.await.unwrap();
    assert_eq!(group(&conn), NamedGroup::X25519MLKEM768, "client side");
    assert_eq!(group(&served), NamedGroup::X25519MLKEM768, "server side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_connections_through_the_relay_negotiate_x25519mlkem768() {
    let c = clinics();
    let r = relay(None).await;
    let rendezvous = phi_conduit::transfer::Recipient::Known(c.b.public()).rendezvous();
    let (listener, connector) = tokio::join!(
        client::listen(&r.opts, &c.b),
        client::join(&r.opts, Role::Connect, false, rendezvous),
    );
    let (listener, connector) = (listener.unwrap(), connector.unwrap());
    assert_eq!(group(&listener.connection), NamedGroup::X25519MLKEM768);
    assert_eq!(group(&connector.connection), NamedGroup::X25519MLKEM768);
    drop((listener, connector));
    r.stop().await;
}
