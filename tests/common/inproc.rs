//! In-process harness: two clinics' identities, an in-process relay (the real server and
//! splice, with an optional test tap), and a transfer through it with the library's own
//! send and receive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use phi_conduit::crypto::identity::Identity;
use phi_conduit::crypto::pipeline::CipherPool;
use phi_conduit::home::Home;
use phi_conduit::peers::AddressBook;
use phi_conduit::relay::client::{self, RelayOptions};
use phi_conduit::relay::config::Limits;
use phi_conduit::relay::hello::Role;
use phi_conduit::relay::server::Relay;
use phi_conduit::relay::splice::Tap;
use phi_conduit::transfer::dest::Destination;
use phi_conduit::transfer::source;
use phi_conduit::transfer::{Receiver, Recipient, Sender, Summary, TransferError};
use phi_conduit::transport::{RelayTrust, ServerTls};

/// Sender `a` and receiver `b` (who knows `a`), in a temporary directory.
pub struct Clinics {
    pub dir: tempfile::TempDir,
    pub a: Identity,
    pub b: Identity,
    pub book_b: AddressBook,
    pub pool: Arc<CipherPool>,
}

pub fn clinics() -> Clinics {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let mut book_b = AddressBook::load(&Home::at(dir.path().join("b"))).unwrap();
    book_b.add("clinic-a", a.public()).unwrap();
    Clinics {
        dir,
        a,
        b,
        book_b,
        pool: CipherPool::new(2).unwrap(),
    }
}

/// A relay running in this process.
pub struct InprocRelay {
    pub opts: RelayOptions,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn relay(tap: Option<Arc<dyn Tap>>) -> InprocRelay {
    relay_tapped(tap, None).await
}

/// A relay running in this process whose datagram switch has `tap` (the clients use the
/// switch).
pub async fn relay_switch_tapped(
    tap: Arc<dyn phi_conduit::relay::switch::SwitchTap>,
) -> InprocRelay {
    relay_tapped(None, Some(tap)).await
}

async fn relay_tapped(
    tap: Option<Arc<dyn Tap>>,
    switch_tap: Option<Arc<dyn phi_conduit::relay::switch::SwitchTap>>,
) -> InprocRelay {
    let tls = ServerTls::self_signed(&["localhost"]).unwrap();
    let pin = tls.pin();
    let mut relay = Relay::bind(
        ([127, 0, 0, 1], 0).into(),
        tls,
        Limits::default(),
        None,
        Arc::new(|_| {}),
    )
    .unwrap();
    let tap_set = tap.clone();
    if let Some(t) = tap {
        relay = relay.with_tap(t);
    }
    if let Some(t) = switch_tap {
        relay = relay.with_switch_tap(t);
    }
    let addr = relay.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    InprocRelay {
        opts: RelayOptions {
            relays: vec![addr],
            trust: RelayTrust::Pin(pin),
            token: vec![],
            wait: std::time::Duration::from_secs(10),
            // A tap reads the streams of the relay's splice; the datagram switch forwards
            // packets it cannot read, and is what the clients use otherwise.
            switch: tap_set.is_none(),
            punch: false,
            idle: phi_conduit::transport::IDLE_TIMEOUT,
        },
        stop: Some(stop),
        task: Some(task),
    }
}

impl InprocRelay {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// Sends `files` from `a` to `b` through `relay` into `out`; both sides' results (each
/// side closes its connection with its outcome's code).
pub async fn relayed(
    c: &Clinics,
    relay: &InprocRelay,
    files: &[PathBuf],
    out: &Path,
) -> (
    Result<Summary, TransferError>,
    Result<Summary, TransferError>,
) {
    // Bound to the connection on the switch (end to end); not on a splice, whose two
    // sides have a connection each.
    relayed_binding(c, relay, files, out, relay.opts.switch).await
}

/// [`relayed`] with the channel binding set to `bind` on both sides.
pub async fn relayed_binding(
    c: &Clinics,
    relay: &InprocRelay,
    files: &[PathBuf],
    out: &Path,
    bind: bool,
) -> (
    Result<Summary, TransferError>,
    Result<Summary, TransferError>,
) {
    let dest = Destination::open(out).unwrap();
    let sources = source::collect_with_dirs(files).unwrap();
    let to = Recipient::Known(c.b.public());
    let receiver = async {
        let receiver =
            Receiver::new(c.b.clone(), c.book_b.clone(), Arc::clone(&c.pool)).channel_binding(bind);
        let j = client::listen(&relay.opts, receiver.identity())
            .await
            .unwrap();
        let r = match receiver
            .receive(&j.connection, std::future::pending())
            .await
        {
            Ok(offer) => offer.accept(&dest).await,
            Err(e) => Err(e),
        };
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), j.endpoint.wait_idle()).await;
        r
    };
    let sender = async {
        let j = client::join(&relay.opts, Role::Connect, false, to.rendezvous())
            .await
            .unwrap();
        let sender = Sender::new(c.a.clone(), Arc::clone(&c.pool)).channel_binding(bind);
        let r = sender
            .send(&j.connection, &to, &sources, std::future::pending())
            .await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), j.endpoint.wait_idle()).await;
        r
    };
    let run = async { tokio::join!(sender, receiver) };
    tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the transfer neither finished nor failed within 60 s")
}

/// Files under `dir` by relative path, excluding the receiver's partial files and resume
/// records (`.conduit-*`).
pub fn final_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if !name.starts_with(".conduit-") {
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
                }
            }
        }
    }
    out
}
