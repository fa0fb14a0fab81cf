//! Addresses on the command line (`send --direct`, `receive --listen`): host names and
//! IPv6 as well as IPv4 literals, and the addresses a listening receiver tells its
//! senders to use.

use std::net::{IpAddr, SocketAddr};

use crate::cli::Usage;
use crate::transport::addr::{self, AddrError};

/// `HOST:PORT` as clap parses it: the form is checked here (a usage error, exit code 2),
/// the name is resolved when the command runs.
pub(crate) fn host_port(text: &str) -> Result<String, String> {
    addr::check(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// Every address `text` stands for ([`addr::resolve`]); a malformed one is a usage error,
/// a name that does not resolve a failure (exit code 1) that says so.
pub(crate) async fn resolve(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    addr::resolve(text).await.map_err(|e| match e {
        AddrError::Malformed(_) => Usage(e.to_string()).into(),
        e => anyhow::Error::from(e),
    })
}

/// The address to listen on for `text`: the first it stands for.
pub(crate) async fn listen_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let addrs = resolve(text).await?;
    addrs
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{text}: no address"))
}

/// Most addresses listed for a receiver bound to all interfaces.
const MAX_LISTED: usize = 8;

/// The addresses a sender can use to reach a receiver bound to `bound`: itself, or for
/// `0.0.0.0` (`[::]`) the IPv4 (and, for `[::]`, IPv6) addresses of this host's
/// interfaces, loopback only when there is nothing else, link-local IPv6 left out (it
/// needs an interface name to be used).
pub(crate) fn reachable_at(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let v6_too = bound.is_ipv6();
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6_too && (v6.segments()[0] & 0xffc0) != 0xfe80,
    };
    let ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    let mut chosen: Vec<IpAddr> = Vec::new();
    for ip in ips.iter().filter(|ip| usable(ip) && !ip.is_loopback()) {
        if !chosen.contains(ip) {
            chosen.push(*ip);
        }
    }
    if chosen.is_empty() {
        chosen = ips
            .into_iter()
            .filter(|ip| usable(ip) && ip.is_loopback())
            .collect();
        chosen.dedup();
    }
    // IPv4 first: the one most people can type.
    chosen.sort_by_key(IpAddr::is_ipv6);
    chosen.truncate(MAX_LISTED);
    chosen
        .into_iter()
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_itself_and_any_lists_this_hosts() {
        let one: SocketAddr = "127.0.0.1:7470".parse().unwrap();
        assert_eq!(reachable_at(one), vec![one]);
        let any = reachable_at("0.0.0.0:7470".parse().unwrap());
        assert!(!any.is_empty());
        assert!(
            any.iter()
                .all(|a| a.is_ipv4() && a.port() == 7470 && !a.ip().is_unspecified())
        );
    }

    #[test]
    fn the_form_is_checked_before_any_lookup() {
        assert!(host_port("lab.example.org:7470").is_ok());
        assert!(host_port("[::1]:7470").is_ok());
        let e = host_port("lab.example.org").unwrap_err();
        assert!(e.contains("HOST:PORT"), "{e}");
    }
}
