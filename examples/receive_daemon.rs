//! A receiving service: an endpoint that keeps a listener slot at a relay and receives
//! transfers one after another (what `conduit receive --daemon` does), here for three
//! transfers from a sender in the same process, then stops. Shows the receive loop,
//! per-transfer error handling, and stopping between transfers.
//!
//! `cargo run --example receive_daemon`

use std::sync::Arc;
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
use phi_conduit::transfer::{Event, Events, Receiver, Recipient, Sender};
use phi_conduit::transport::{RelayTrust, ServerTls};

const TRANSFERS: usize = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tls = ServerTls::self_signed(&["localhost"])?;
    let pin = tls.pin();
    let relay = Relay::bind(
        ([127, 0, 0, 1], 0).into(),
        tls,
        Limits::default(),
        None,
        Arc::new(|_| {}),
    )?;
    let opts = RelayOptions {
        relays: vec![relay.local_addr()?.to_string()],
        trust: RelayTrust::Pin(pin),
        token: Vec::new(),
        wait: Duration::from_secs(10),
        switch: true,
        punch: true,
        idle: phi_conduit::transport::IDLE_TIMEOUT,
    };
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async {
        let _ = relay_stopped.await;
    }));

    let dir = tempfile::tempdir()?;
    let (clinic, lab) = (Identity::generate()?, Identity::generate()?);
    let mut book = AddressBook::load(&Home::at(dir.path().join("lab")))?;
    book.add("clinic", clinic.public())?;
    let inbox = Destination::open(&dir.path().join("inbox"))?;
    let pool = CipherPool::with_all_cores()?;
    let lab_key = lab.public();
    let show: Events = Arc::new(|_, e| {
        if let Event::FileDone { path, size, .. } = e {
            println!("received {path} ({size} bytes)");
        }
    });
    let receiver = Receiver::new(lab, book, Arc::clone(&pool)).events(show);
    let sender = Sender::new(clinic, pool);

    // The service: wait at the relay, receive, report, repeat; stop after TRANSFERS.
    let service = async {
        let mut received = 0;
        while received < TRANSFERS {
            let j = client::listen(&opts, receiver.identity()).await?;
            // Each offer is looked at, then accepted (or refused with a reason).
            let got = match receiver
                .receive(&j.connection, std::future::pending())
                .await
            {
                Ok(offer) => offer.accept(&inbox).await,
                Err(e) => Err(e),
            };
            match got {
                Ok(_) => received += 1,
                Err(e) => eprintln!("transfer failed: {e}"),
            }
        }
        anyhow::Ok(received)
    };
    // A clinic sending three files, one transfer each.
    let clinic_side = async {
        let to = Recipient::Known(lab_key);
        for i in 0..TRANSFERS {
            let f = dir.path().join(format!("referral-{i}.txt"));
            std::fs::write(&f, format!("synthetic referral {i}\n"))?;
            let files = source::collect_with_dirs(std::slice::from_ref(&f))?;
            let j = client::join(&opts, Role::Connect, false, to.rendezvous()).await?;
            sender
                .send(&j.connection, &to, &files, std::future::pending())
                .await?;
            j.endpoint.wait_idle().await;
        }
        anyhow::Ok(())
    };
    let (received, ()) = tokio::try_join!(service, clinic_side)?;
    let _ = stop_relay.send(());
    relay_task.await?;
    println!("the service received {received} transfers and stopped");
    Ok(())
}
