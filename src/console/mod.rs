//! The agent's local web console for clinic staff (docs/CONSOLE.md): what is queued, sent
//! and stuck, and what arrived, in a browser on the agent's own machine.
//!
//! - [`login`]: one-time login tokens (`conduit console url`) and the sessions they open.
//! - [`server`]: the HTTP server the agent runs on `[console] listen` (loopback only):
//!   the request checks (Host, session cookie, Origin and CSRF token on every change) and
//!   the response headers (a strict Content-Security-Policy, `no-store`).
//! - `pages`: the pages, rendered on the server from the agent's queue, address book and
//!   audit log (the same sources as `conduit queue` and `conduit agent status`), readable
//!   without JavaScript.
//!
//! The console shows names and metadata, never a received file's content: it opens no
//! file of an inbox.

pub mod login;
mod pages;
pub mod send;
pub mod server;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[console]` as written in conduit.toml.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    /// Serve the console on this TCP address (loopback only); unset: no console.
    pub listen: Option<SocketAddr>,
}

impl ConsoleFile {
    /// Whether nothing is set (then `config show` leaves the table out).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Checks `[console]`: the address, if any, must be a loopback one.
pub fn check(file: &ConsoleFile) -> Result<Option<SocketAddr>, String> {
    match file.listen {
        Some(addr) if !addr.ip().is_loopback() => Err(format!(
            "listen = \"{addr}\" is not a loopback address: the console serves only this \
             machine (127.0.0.1 or [::1]); for use from elsewhere, see docs/CONSOLE.md \
             (an SSH tunnel, or a reverse proxy with TLS and its own authentication)"
        )),
        other => Ok(other),
    }
}

/// The URL that logs in with `token` on the console at `listen`.
pub fn login_url(listen: SocketAddr, token: &str) -> String {
    format!("http://{listen}/login?token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_address_is_accepted() {
        let at = |s: &str| ConsoleFile {
            listen: Some(s.parse().unwrap()),
        };
        assert_eq!(check(&ConsoleFile::default()), Ok(None));
        assert!(check(&at("127.0.0.1:7480")).is_ok());
        assert!(check(&at("[::1]:7480")).is_ok());
        for bad in ["0.0.0.0:7480", "[::]:7480", "192.168.1.5:7480"] {
            let e = check(&at(bad)).unwrap_err();
            assert!(
                e.contains("not a loopback address") && e.contains("docs/CONSOLE.md"),
                "{e}"
            );
        }
    }
}
