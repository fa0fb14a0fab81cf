//! Embedding a relay: `relay::server::Relay` in your own process, with your own log sink
//! and metrics, stopped by a future you control. Two endpoints then meet through it by
//! rendezvous id (`relay::client::listen` proves the receiver holds its key, `join` connects), and the relay's counters show what it carried.
//!
//! `cargo run --example embedded_relay`

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::relay::client::{self, RelayOptions};
use phi_conduit::relay::config::Limits;
use phi_conduit::relay::hello::Role;
use phi_conduit::relay::server::Relay;
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::source;
use phi_conduit::transfer::{Receiver, Recipient, Sender};
use phi_conduit::transport::{RelayTrust, ServerTls};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The relay: a throw-away certificate (clients pin it), tighter limits, logs to stderr.
    let tls = ServerTls::self_signed(&["localhost"])?;
    let pin = tls.pin();
    let limits = Limits {
        max_sessions: 8,
        pairing_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let relay = Relay::bind(
        ([127, 0, 0, 1], 0).into(),
        tls,
        limits,
        None,
        Arc::new(|event| eprintln!("relay: {event}")),
    )?;
    let addr = relay.local_addr()?.to_string();
    let metrics = relay.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));

    // Two endpoints meet there.
    let dir = tempfile::tempdir()?;
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let mut b_book = AddressBook::load(&Home::at(dir.path().join("b")))?;
    b_book.add("a", a.public())?;
    let opts = RelayOptions {
        relays: vec![addr],
        trust: RelayTrust::Pin(pin),
        token: Vec::new(),
        wait: Duration::from_secs(10),
        switch: true,
        // Every packet through this relay, which the example shows carrying the file (on
        // one host the two endpoints would otherwise find their direct path).
        punch: false,
        idle: phi_conduit::transport::IDLE_TIMEOUT,
    };
    let src = dir.path().join("scan.bin");
    std::fs::write(&src, vec![1u8; 4 << 20])?;
    let files = source::collect_with_dirs(std::slice::from_ref(&src))?;
    let dest = Destination::open(&dir.path().join("inbox"))?;
    let pool = CipherPool::with_all_cores()?;
    let to = Recipient::Known(b.public());
    let receiver = Receiver::new(b, b_book, Arc::clone(&pool));
    let sender = Sender::new(a, pool);
    let receiving = async {
        let j = client::listen(&opts, receiver.identity()).await?;
        let offer = receiver
            .receive(&j.connection, std::future::pending())
            .await?;
        anyhow::Ok(offer.accept(&dest).await?)
    };
    let sending = async {
        let j = client::join(&opts, Role::Connect, false, to.rendezvous()).await?;
        let s = sender
            .send(&j.connection, &to, &files, std::future::pending())
            .await?;
        j.endpoint.wait_idle().await;
        anyhow::Ok(s)
    };
    let (sent, _) = tokio::try_join!(sending, receiving)?;

    // Shut the relay down (draining) and read its counters.
    let _ = stop.send(());
    relay_task.await?;
    println!(
        "relayed {} bytes of ciphertext for {} plaintext bytes in {} session(s)",
        metrics.bytes_relayed.load(Relaxed),
        sent.bytes,
        metrics.sessions_total.load(Relaxed)
    );
    anyhow::ensure!(metrics.bytes_relayed.load(Relaxed) > sent.bytes);
    Ok(())
}
