//! Sending a file with the library: a receiver and a sender in one process, on loopback,
//! directly (no relay). Shows identities and the address book, progress through the
//! event callback, and cancellation (Ctrl-C or a deadline) with `tokio::select!`.
//!
//! `cargo run --example send_file [FILE]` (default: a generated 8 MiB file).

use phi_conduit::audit::Audit;
use std::sync::Arc;
use std::time::Duration;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::crypto::stream::DEFAULT_CHUNK_SIZE;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::run::{self, Event, Events, ReceivePolicy, Recipient};
use phi_conduit::transfer::source;
use phi_conduit::transport;

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

    let server = transport::direct_server(([127, 0, 0, 1], 0).into())?;
    let addr = server.local_addr()?;
    let pool = CipherPool::with_all_cores()?;
    let dest = Destination::open(&dir.path().join("inbox"))?;
    let quiet: Events = Arc::new(|_| {});
    let receiver = async {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("no connection"))?
            .await?;
        let r = run::receive(
            &conn,
            &lab,
            &lab_book,
            &dest,
            &ReceivePolicy::default(),
            &pool,
            &quiet,
            &Audit::off(),
        )
        .await?;
        run::wait_for_sender_close(&conn).await;
        anyhow::Ok(r)
    };
    // Progress: print a line per event the sender reports.
    let progress: Events = Arc::new(|e| match e {
        Event::Progress { bytes, total } => eprintln!("sent {bytes} of {total} bytes"),
        Event::FileDone { path, blake3, .. } => eprintln!("done {path} {}", blake3.to_hex()),
        _ => {}
    });
    let sender = async {
        let (files, _) = source::collect(std::slice::from_ref(&file))?;
        let client = transport::direct_client(addr)?;
        let conn = client.connect(addr, "phi-conduit")?.await?;
        let s = run::send(
            &conn,
            &clinic,
            &Recipient::Known(lab.public()),
            &files,
            DEFAULT_CHUNK_SIZE,
            &pool,
            &progress,
            &Audit::off(),
        )
        .await?;
        client.wait_idle().await;
        anyhow::Ok(s)
    };
    let both = async { tokio::try_join!(sender, receiver) };
    // Cancellation: Ctrl-C or a deadline ends the transfer (the connections close).
    let (sent, received) = tokio::select! {
        r = both => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("cancelled"),
        () = tokio::time::sleep(Duration::from_secs(60)) => anyhow::bail!("took too long"),
    };
    println!(
        "sent {} bytes in {:.3} s; receiver got BLAKE3 {}",
        sent.bytes,
        sent.seconds,
        received.files[0].2.to_hex()
    );
    anyhow::ensure!(sent.files[0].2 == received.files[0].2, "hashes differ");
    Ok(())
}
