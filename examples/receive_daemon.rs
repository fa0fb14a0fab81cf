//! A receiving service: an endpoint that keeps a listener slot at a relay and receives
//! transfers one after another (what `conduit receive --daemon` does), here for three
//! transfers from a sender in the same process, then stops. Shows the receive loop,
//! per-transfer error handling, and stopping between transfers.
//!
//! `cargo run --example receive_daemon`

use phi_conduit::audit::Audit;
use std::sync::Arc;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::crypto::stream::DEFAULT_CHUNK_SIZE;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::relay::client::{self, RelayOptions};
use phi_conduit::relay::config::Limits;
use phi_conduit::relay::hello::Role;
use phi_conduit::relay::server::Relay;
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::run::{self, Event, Events, ReceivePolicy, Recipient};
use phi_conduit::transfer::source;
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

    // The service: wait at the relay, receive, report, repeat; stop after TRANSFERS.
    let service = async {
        let show: Events = Arc::new(|e| {
            if let Event::FileDone { path, size, .. } = e {
                println!("received {path} ({size} bytes)");
            }
        });
        let mut received = 0;
        while received < TRANSFERS {
            let j = client::listen(&opts, &lab).await?;
            match run::receive(
                &j.connection,
                &lab,
                &book,
                &inbox,
                &ReceivePolicy::default(),
                &pool,
                &show,
                &Audit::off(),
            )
            .await
            {
                Ok(_) => {
                    received += 1;
                    run::wait_for_sender_close(&j.connection).await;
                }
                Err(e) => eprintln!("transfer failed: {e}"),
            }
        }
        anyhow::Ok(received)
    };
    // A clinic sending three files, one transfer each.
    let clinic_side = async {
        let quiet: Events = Arc::new(|_| {});
        for i in 0..TRANSFERS {
            let f = dir.path().join(format!("referral-{i}.txt"));
            std::fs::write(&f, format!("synthetic referral {i}\n"))?;
            let (files, _) = source::collect(std::slice::from_ref(&f))?;
            let j =
                client::join(&opts, Role::Connect, false, run::rendezvous_for(&lab_key)).await?;
            run::send(
                &j.connection,
                &clinic,
                &Recipient::Known(lab_key),
                &files,
                DEFAULT_CHUNK_SIZE,
                &pool,
                &quiet,
                &Audit::off(),
            )
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
