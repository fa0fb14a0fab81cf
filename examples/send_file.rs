//! Sending a file with the library: a receiver and a sender in one process, on loopback,
//! directly (no relay). Shows identities and the address book, the offer the receiver
//! looks at before it accepts, progress through the event sink, and cancellation (Ctrl-C
//! or a deadline) as the future each side runs with.
//!
//! `cargo run --example send_file [FILE]` (default: a generated 8 MiB file).

use std::sync::Arc;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::protocol::{Refusal, RefusalCode};
use phi_conduit::transfer::{Event, Events, Receiver, Recipient, Sender, source};
use phi_conduit::transport;

/// Resolves on Ctrl-C or after 60 s: either ends the transfer as cancelled.
async fn cancel() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = match std::env::args_os().nth(1) {
        Some(f) => std::path::PathBuf::from(f),
        None => {
            let f = dir.path().join("report.bin");
            std::fs::write(&f, vec![7u8; 8 << 20])?;
            f
        }
    };
    // Two endpoints; the receiver knows the sender.
    let (clinic, lab) = (Identity::generate()?, Identity::generate()?);
    let mut lab_book = AddressBook::load(&Home::at(dir.path().join("lab")))?;
    lab_book.add("clinic", clinic.public())?;
    let to = Recipient::Known(lab.public());
    let pool = CipherPool::with_all_cores()?;

    // Progress: a line per event the sender reports.
    let progress: Events = Arc::new(|_, e| match e {
        Event::Progress { bytes, total } => eprintln!("sent {bytes} of {total} bytes"),
        Event::FileDone { path, hash, .. } => eprintln!("done {path} {hash}"),
        _ => {}
    });
    let sender = Sender::new(clinic, Arc::clone(&pool)).events(progress);
    let receiver = Receiver::new(lab, lab_book, pool);

    let server = transport::direct_server(([127, 0, 0, 1], 0).into())?;
    let addr = server.local_addr()?;
    let dest = Destination::open(&dir.path().join("inbox"))?;
    let receiving = async {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("no connection"))?
            .await?;
        let offer = receiver.receive(&conn, cancel()).await?;
        // The caller decides: here, anything up to 1 GiB from a known sender.
        if !offer.known() || offer.offer().start.total_size > 1 << 30 {
            let why = Refusal::new(RefusalCode::Policy, "only known senders, up to 1 GiB");
            return Err(offer.refuse(why).await.into());
        }
        anyhow::Ok(offer.accept(&dest).await?)
    };
    let sending = async {
        let files = source::collect_with_dirs(std::slice::from_ref(&file))?;
        let client = transport::direct_client(addr)?;
        let conn = client.connect(addr, "phi-conduit")?.await?;
        let sent = sender.send(&conn, &to, &files, cancel()).await?;
        client.wait_idle().await;
        anyhow::Ok(sent)
    };
    let (sent, received) = tokio::try_join!(sending, receiving)?;
    println!(
        "sent {} bytes in {:.3} s; receiver got BLAKE3 {}",
        sent.bytes,
        sent.seconds,
        received.files[0].2.to_hex()
    );
    anyhow::ensure!(sent.files[0].2 == received.files[0].2, "hashes differ");
    Ok(())
}
