//! The NAT lab: two clinics, each behind its own NAT router, and a relay on the "internet",
//! built from real kernel networking (network namespaces, veth pairs, nftables). Linux only,
//! as root, with `ip` (iproute2) and `nft` (nftables).
//!
//! ```text
//!   host-a 10.N.1.2 ── lan 10.N.1.1 [router-a: masquerade] wan 198.18.N.2 ─┐
//!                                                                         ├ [inet] relay 198.19.N.1
//!   host-b 10.N.2.2 ── lan 10.N.2.1 [router-b: masquerade] wan 198.18.N.6 ─┘
//! ```
//!
//! - Five namespaces per lab, named `cnl-PID-K-ROLE` ([`PREFIX`], the test process's pid, a
//!   per-process lab number, the role: `inet`, `ra`, `ha`, `rb`, `hb`). The veth pairs are
//!   created directly inside them: nothing is ever added to the machine's own namespace, and
//!   deleting the namespaces removes every link and nftables table of the lab.
//! - `inet` routes between the two routers' uplinks (a /30 each) and holds the relay's
//!   address. It is the only path between the clinics, so its table `natlab` sees every
//!   packet that goes directly from one clinic to the other: counters there ([`Counters`]),
//!   drop rules there ([`NatLab::cut_udp_between_clinics`], [`NatLab::block_relay`]).
//! - Each router masquerades its LAN behind its `wan` address: [`Nat::EndpointIndependent`]
//!   (plain `masquerade`: Linux keeps the source port, so one mapping serves every
//!   destination; inbound only from where the host sent to, as conntrack filters by address
//!   and port) or [`Nat::RandomPort`] (`masquerade random`: a new port per destination, a
//!   "symmetric" NAT that hole punching cannot get through).
//! - [`NatLab::start`] returns `None` (and prints why, past the test harness's capture) when
//!   this machine cannot build the lab (not root, no `ip`/`nft`, namespaces refused); with
//!   the environment variable `CI` set it fails the test instead.
//! - Drop kills whatever still runs in the lab's namespaces (by pid) and deletes them, also
//!   when the test panicked. [`NatLab::close`] does the same and asserts nothing is left.
//!   The first lab of a process deletes the leftovers of labs whose process is gone (a
//!   killed run): [`clean_leftovers`].
//! - [`NatLab::conduit`], [`NatLab::start_relay`], [`NatLab::relay_cmd`]: the test build of
//!   `conduit` run inside a namespace (`ip netns exec NS conduit ...`, which execs: the
//!   child's pid is conduit's). [`NatLab::udp_socket`]: a plain UDP socket that lives in a
//!   namespace, to test the network itself.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Relay, scratch};

/// Every namespace of every lab starts with this.
pub const PREFIX: &str = "cnl-";
/// The nftables table of the lab in `inet` and in the routers.
pub const TABLE: &str = "natlab";

/// How a clinic's router maps its LAN to its public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// `masquerade`: the source port is kept, one public port for every destination
    /// (endpoint-independent mapping; address- and port-dependent filtering).
    EndpointIndependent,
    /// `masquerade random`: a random public port per destination (a symmetric NAT).
    RandomPort,
}

impl Nat {
    fn rule(self) -> &'static str {
        match self {
            Nat::EndpointIndependent => "masquerade",
            Nat::RandomPort => "masquerade random",
        }
    }
}

/// One of the two clinics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clinic {
    A,
    B,
}

impl Clinic {
    /// The other clinic.
    pub fn other(self) -> Clinic {
        match self {
            Clinic::A => Clinic::B,
            Clinic::B => Clinic::A,
        }
    }

    fn index(self) -> u8 {
        match self {
            Clinic::A => 1,
            Clinic::B => 2,
        }
    }
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The internet: routes between the routers, holds the relay's address.
    Internet,
    /// A clinic's NAT router.
    Router(Clinic),
    /// A clinic's host, on the LAN behind its router.
    Host(Clinic),
}

impl Site {
    const ALL: [Site; 5] = [
        Site::Host(Clinic::A),
        Site::Host(Clinic::B),
        Site::Router(Clinic::A),
        Site::Router(Clinic::B),
        Site::Internet,
    ];

    fn role(self) -> &'static str {
        match self {
            Site::Internet => "inet",
            Site::Router(Clinic::A) => "ra",
            Site::Router(Clinic::B) => "rb",
            Site::Host(Clinic::A) => "ha",
            Site::Host(Clinic::B) => "hb",
        }
    }
}

/// What a lab is built with.
#[derive(Clone, Copy, Debug)]
pub struct LabConfig {
    /// Clinic A's NAT.
    pub nat_a: Nat,
    /// Clinic B's NAT.
    pub nat_b: Nat,
    /// Start with UDP between the clinics dropped (as [`NatLab::cut_udp_between_clinics`]).
    pub block_udp_between_clinics: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nat_a: Nat::EndpointIndependent,
            nat_b: Nat::EndpointIndependent,
            block_udp_between_clinics: false,
        }
    }
}

impl LabConfig {
    /// Both clinics behind the same kind of NAT.
    pub fn both(nat: Nat) -> Self {
        Self::each(nat, nat)
    }

    /// Clinic A behind `nat_a`, clinic B behind `nat_b`.
    pub fn each(nat_a: Nat, nat_b: Nat) -> Self {
        LabConfig {
            nat_a,
            nat_b,
            block_udp_between_clinics: false,
        }
    }
}

/// The lab's nftables counters in `inet` (packets, bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets from clinic A's networks (its public address or LAN) to clinic B's, as they
    /// arrive in `inet` (before any cut).
    pub a_to_b_seen: (u64, u64),
    /// The same from B to A.
    pub b_to_a_seen: (u64, u64),
    /// Packets from A's networks to B's that `inet` forwarded (after the cut).
    pub a_to_b_passed: (u64, u64),
    /// The same from B to A.
    pub b_to_a_passed: (u64, u64),
    /// Packets to the relay's address from clinic A's public address.
    pub relay_from_a: (u64, u64),
    /// The same from clinic B's public address.
    pub relay_from_b: (u64, u64),
    /// Packets that reached `inet` from a private (LAN) address: none, when the NATs work.
    pub from_private: (u64, u64),
    /// UDP packets from clinic B's public address that router A let through to its LAN
    /// (after its NAT: a hole punched, a direct path working).
    pub delivered_to_a: (u64, u64),
    /// The same from A into B's LAN.
    pub delivered_to_b: (u64, u64),
}

impl Counters {
    /// Packets between the clinics that `inet` saw, both ways (attempts included).
    pub fn direct_seen(&self) -> u64 {
        self.a_to_b_seen.0 + self.b_to_a_seen.0
    }

    /// Packets between the clinics that `inet` forwarded, both ways.
    pub fn direct_passed(&self) -> u64 {
        self.a_to_b_passed.0 + self.b_to_a_passed.0
    }

    /// Bytes between the clinics that `inet` forwarded, both ways.
    pub fn direct_passed_bytes(&self) -> u64 {
        self.a_to_b_passed.1 + self.b_to_a_passed.1
    }

    /// Packets from one clinic that got through the other's NAT into its LAN, both ways.
    pub fn direct_delivered(&self) -> u64 {
        self.delivered_to_a.0 + self.delivered_to_b.0
    }
}

/// The names a lab created, to check after it is gone that none is left.
#[derive(Clone, Debug)]
pub struct LabNames {
    /// The lab's namespaces.
    pub namespaces: Vec<String>,
    /// What every name of this lab starts with (`cnl-PID-K-`).
    pub stem: String,
}

impl LabNames {
    /// What of this lab still exists: namespaces (`ip netns list`), links of the machine's
    /// own namespace with the lab's stem (there never are any), nftables tables named
    /// [`TABLE`] in the machine's own namespace (never either).
    pub fn left(&self) -> Vec<String> {
        let mut left: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.stem))
            .collect();
        let links = run_out(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
        left.extend(
            links
                .lines()
                .filter(|l| l.contains(&self.stem))
                .map(|l| format!("link: {l}")),
        );
        let tables = run_out(Command::new("nft").args(["list", "tables"])).unwrap_or_default();
        left.extend(
            tables
                .lines()
                .filter(|l| l.split_whitespace().last() == Some(TABLE))
                .map(|l| format!("nft table in the root namespace: {l}")),
        );
        left
    }
}

/// A running lab. See the module docs.
pub struct NatLab {
    pid: u32,
    k: u32,
    n: u8,
    config: LabConfig,
    created: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);
static CLEAN: Once = Once::new();

/// Why this machine cannot run the lab, or `Ok`.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces and nftables need root)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("`{tool}` not found (apt-get install {package})"));
        }
    }
    Ok(())
}

/// Prints past libtest's output capture: a skip must be seen, not pass silently.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Deletes the namespaces of labs whose test process is gone (a run that was killed before
/// its labs' Drop ran), after killing (by pid) what still runs in them. Labs of live
/// processes (parallel tests, other checkouts) are left alone. Returns what it deleted.
pub fn clean_leftovers() -> Vec<String> {
    let mut deleted = Vec::new();
    for name in netns_list() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_inside(&name);
        if run(Command::new("ip").args(["netns", "del", &name])).is_ok() {
            deleted.push(name);
        }
    }
    if !deleted.is_empty() {
        say(&format!(
            "natlab: deleted leftovers of a killed run: {deleted:?}"
        ));
    }
    deleted
}

impl NatLab {
    /// Builds a lab. `None` (with the reason printed) where the machine cannot; under CI
    /// (`CI` set) that is a test failure instead.
    pub fn start(config: LabConfig) -> Option<NatLab> {
        if let Err(why) = available() {
            return unavailable(&why);
        }
        CLEAN.call_once(|| {
            clean_leftovers();
        });
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut lab = NatLab {
            pid: std::process::id(),
            k,
            // The subnets carry the lab's number: unique among the labs of one process (the
            // namespaces keep labs of different processes apart anyway).
            n: u8::try_from(k % 250).unwrap_or(0) + 1,
            config,
            created: Vec::new(),
        };
        let started = std::time::Instant::now();
        match lab.build() {
            Ok(()) => {
                // Captured by the harness; shown with --nocapture.
                eprintln!("natlab: {} up in {:?}", lab.stem(), started.elapsed());
                Some(lab)
            }
            Err(e) if lab.created.is_empty() => {
                // Not even one namespace: the machine refuses them (a container without
                // CAP_SYS_ADMIN, say). Anything later is a bug of the lab: fail.
                drop(lab);
                unavailable(&format!("cannot create a network namespace: {e}"))
            }
            Err(e) => panic!("natlab: building the lab failed: {e}"),
        }
    }

    /// The name of a namespace of the lab.
    pub fn ns(&self, site: Site) -> String {
        format!("{}{}", self.stem(), site.role())
    }

    /// `cnl-PID-K-`: what all of this lab's names start with.
    pub fn stem(&self) -> String {
        format!("{PREFIX}{}-{}-", self.pid, self.k)
    }

    /// The names to check after the lab is gone.
    pub fn names(&self) -> LabNames {
        LabNames {
            namespaces: self.created.clone(),
            stem: self.stem(),
        }
    }

    /// The configuration the lab was built with.
    pub fn config(&self) -> LabConfig {
        self.config
    }

    /// The relay's public address (in `inet`).
    pub fn relay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.n, 1)
    }

    /// A clinic's public address (its router's `wan`).
    pub fn public_ip(&self, c: Clinic) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 4 * (c.index() - 1) + 2)
    }

    /// `inet`'s address on the link to a clinic's router.
    fn uplink_ip(&self, c: Clinic) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, 4 * (c.index() - 1) + 1)
    }

    /// A clinic's host address (private).
    pub fn host_ip(&self, c: Clinic) -> Ipv4Addr {
        Ipv4Addr::new(10, self.n, c.index(), 2)
    }

    /// A clinic's router address on its LAN.
    pub fn gateway_ip(&self, c: Clinic) -> Ipv4Addr {
        Ipv4Addr::new(10, self.n, c.index(), 1)
    }

    /// A clinic's LAN, `10.N.C.0/24`.
    pub fn lan(&self, c: Clinic) -> String {
        format!("10.{}.{}.0/24", self.n, c.index())
    }

    /// `program` run inside a namespace of the lab (`ip netns exec NS program`).
    pub fn command(&self, site: Site, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(site)]).arg(program);
        c
    }

    /// The test build of `conduit` with `--home home`, run in `site`, in the directory above
    /// `home` (as [`super::conduit`]).
    pub fn conduit(&self, site: Site, home: &Path) -> Command {
        let mut c = self.command(site, env!("CARGO_BIN_EXE_conduit"));
        c.arg("--home").arg(home).env_remove("CONDUIT_HOME");
        if let Some(dir) = home.ancestors().find(|d| d.is_dir()) {
            c.current_dir(dir);
        }
        c
    }

    /// A relay in `inet` on the relay's public address (port chosen by the kernel), at the
    /// debug level, with a self-signed certificate (clients use its pin).
    pub fn start_relay(&self, extra: &[&str]) -> Relay {
        let cwd = scratch();
        let mut cmd = self.command(Site::Internet, env!("CARGO_BIN_EXE_conduit"));
        cmd.current_dir(cwd.path())
            .env("HOME", cwd.path())
            .env_remove("CONDUIT_HOME")
            .args(["relay", "--listen"])
            .arg(format!("{}:0", self.relay_ip()))
            .args(["--dev-self-signed", "--json", "--verbose"])
            .args(extra);
        Relay::spawned(cmd, cwd)
    }

    /// `conduit --home HOME VERB --json --relay ADDR --relay-pin PIN` on a clinic's host.
    pub fn relay_cmd(&self, c: Clinic, relay: &Relay, home: &Path, verb: &str) -> Command {
        let mut cmd = self.conduit(Site::Host(c), home);
        cmd.args([
            verb,
            "--json",
            "--relay",
            &relay.addr,
            "--relay-pin",
            &relay.pin,
        ]);
        cmd
    }

    /// A UDP socket bound to `bind` inside `site`'s namespace (made on a thread that entered
    /// it; the socket stays there, usable from any thread).
    pub fn udp_socket(&self, site: Site, bind: SocketAddrV4) -> UdpSocket {
        let path = format!("/run/netns/{}", self.ns(site));
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace file we opened; it changes only this thread,
            // which ends right after making the socket.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            UdpSocket::bind(SocketAddr::V4(bind)).unwrap()
        })
        .join()
        .unwrap()
    }

    /// The counters of the lab's tables (`inet`'s and the routers').
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for (site, name, value) in [
            Site::Internet,
            Site::Router(Clinic::A),
            Site::Router(Clinic::B),
        ]
        .into_iter()
        .flat_map(|site| {
            self.read_counters(site)
                .into_iter()
                .map(move |(n, v)| (site, n, v))
        }) {
            match (site, name.as_str()) {
                (Site::Router(Clinic::A), "delivered") => c.delivered_to_a = value,
                (Site::Router(Clinic::B), "delivered") => c.delivered_to_b = value,
                (Site::Internet, "a_to_b_seen") => c.a_to_b_seen = value,
                (Site::Internet, "b_to_a_seen") => c.b_to_a_seen = value,
                (Site::Internet, "a_to_b_passed") => c.a_to_b_passed = value,
                (Site::Internet, "b_to_a_passed") => c.b_to_a_passed = value,
                (Site::Internet, "relay_from_a") => c.relay_from_a = value,
                (Site::Internet, "relay_from_b") => c.relay_from_b = value,
                (Site::Internet, "from_private") => c.from_private = value,
                _ => {}
            }
        }
        c
    }

    /// The named counters of the lab's table in `site`: (name, (packets, bytes)).
    pub fn read_counters(&self, site: Site) -> Vec<(String, (u64, u64))> {
        let out = self
            .nft(site, &["-j", "list", "counters", "table", "ip", TABLE])
            .unwrap_or_else(|e| panic!("natlab: reading counters: {e}"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let counter = item.get("counter")?;
                let value = (
                    counter["packets"].as_u64().unwrap_or(0),
                    counter["bytes"].as_u64().unwrap_or(0),
                );
                Some((counter["name"].as_str()?.to_string(), value))
            })
            .collect()
    }

    /// Drops UDP between the two clinics' networks in `inet` (both ways), from now on:
    /// conntrack entries of flows already going are dropped too. Idempotent.
    pub fn cut_udp_between_clinics(&self) {
        self.nft_script(&format!(
            "flush chain ip {TABLE} cut_udp\n\
             add rule ip {TABLE} cut_udp ip saddr @clinic_a ip daddr @clinic_b meta l4proto udp drop\n\
             add rule ip {TABLE} cut_udp ip saddr @clinic_b ip daddr @clinic_a meta l4proto udp drop\n"
        ));
    }

    /// Lets UDP between the clinics through again.
    pub fn restore_udp_between_clinics(&self) {
        self.nft_script(&format!("flush chain ip {TABLE} cut_udp\n"));
    }

    /// Drops every UDP packet to the relay's address (the relay unreachable).
    pub fn block_relay(&self) {
        self.nft_script(&format!(
            "flush chain ip {TABLE} block_relay\n\
             add rule ip {TABLE} block_relay ip daddr {} meta l4proto udp drop\n",
            self.relay_ip()
        ));
    }

    /// Makes the relay reachable again.
    pub fn unblock_relay(&self) {
        self.nft_script(&format!("flush chain ip {TABLE} block_relay\n"));
    }

    /// Kills what runs in the lab, deletes it, and asserts nothing of it is left.
    pub fn close(mut self) {
        let names = self.names();
        let started = std::time::Instant::now();
        self.teardown();
        eprintln!("natlab: {} down in {:?}", names.stem, started.elapsed());
        let left = names.left();
        assert!(left.is_empty(), "natlab: left behind: {left:?}");
    }

    fn teardown(&mut self) {
        for ns in self.created.iter().rev() {
            kill_inside(ns);
        }
        let mut failed = Vec::new();
        for ns in std::mem::take(&mut self.created).into_iter().rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns])) {
                failed.push(format!("{ns}: {e}"));
            }
        }
        if !failed.is_empty() {
            say(&format!("natlab: could not delete {failed:?}"));
        }
    }

    fn nft(&self, site: Site, args: &[&str]) -> Result<String, String> {
        run_out(self.command(site, "nft").args(args))
    }

    fn nft_script(&self, script: &str) {
        self.nft_script_in(Site::Internet, script)
            .unwrap_or_else(|e| panic!("natlab: nft: {e}\n{script}"));
    }

    fn nft_script_in(&self, site: Site, script: &str) -> Result<(), String> {
        let mut child = self
            .command(site, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `ip -n NS args`.
    fn ip(&self, site: Site, args: &[&str]) -> Result<(), String> {
        run(Command::new("ip").args(["-n", &self.ns(site)]).args(args))
    }

    fn build(&mut self) -> Result<(), String> {
        for site in Site::ALL {
            let ns = self.ns(site);
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            self.created.push(ns);
            self.ip(site, &["link", "set", "lo", "up"])?;
        }
        let inet = self.ns(Site::Internet);
        for c in [Clinic::A, Clinic::B] {
            let (router, host) = (Site::Router(c), Site::Host(c));
            let up = if c == Clinic::A { "to-a" } else { "to-b" };
            // The router's uplink to the internet, and the LAN between router and host: each
            // pair made with its ends already in their namespaces.
            self.ip(
                router,
                &[
                    "link", "add", "wan", "type", "veth", "peer", "name", up, "netns", &inet,
                ],
            )?;
            self.ip(
                host,
                &[
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "lan",
                    "netns",
                    &self.ns(router),
                ],
            )?;
            let uplink = format!("{}/30", self.uplink_ip(c));
            let wan = format!("{}/30", self.public_ip(c));
            let gw = format!("{}/24", self.gateway_ip(c));
            let host_addr = format!("{}/24", self.host_ip(c));
            self.ip(Site::Internet, &["addr", "add", &uplink, "dev", up])?;
            self.ip(Site::Internet, &["link", "set", up, "up"])?;
            self.ip(router, &["addr", "add", &wan, "dev", "wan"])?;
            self.ip(router, &["addr", "add", &gw, "dev", "lan"])?;
            self.ip(router, &["link", "set", "wan", "up"])?;
            self.ip(router, &["link", "set", "lan", "up"])?;
            self.ip(
                router,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &self.uplink_ip(c).to_string(),
                ],
            )?;
            self.ip(host, &["addr", "add", &host_addr, "dev", "eth0"])?;
            self.ip(host, &["link", "set", "eth0", "up"])?;
            self.ip(
                host,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &self.gateway_ip(c).to_string(),
                ],
            )?;
            run(self
                .command(router, "sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"]))?;
            let nat = if c == Clinic::A {
                self.config.nat_a
            } else {
                self.config.nat_b
            };
            let other = self.public_ip(c.other());
            // `delivered`: UDP from the other clinic's public address that got through this
            // NAT to the LAN (a punched hole, a direct path). Unsolicited packets to the
            // router itself are dropped silently, as home routers do: without that, the
            // first probe of a punch leaves a conntrack entry (and an ICMP error) on the far
            // router, whose masquerade then moves the answering host to another port.
            // (Linux keeps the source port only while the tuple is free.)
            self.nft_script_in(
                router,
                &format!(
                    "table ip {TABLE} {{\n\
                       counter delivered {{ }}\n\
                       chain postrouting {{\n\
                         type nat hook postrouting priority srcnat; policy accept;\n\
                         oifname \"wan\" {}\n\
                       }}\n\
                       chain forward {{\n\
                         type filter hook forward priority 0; policy accept;\n\
                         iifname \"wan\" oifname \"lan\" ip saddr {other} meta l4proto udp counter name delivered\n\
                       }}\n\
                       chain input {{\n\
                         type filter hook input priority 0; policy accept;\n\
                         iifname \"wan\" ct state new drop\n\
                       }}\n\
                     }}\n",
                    nat.rule()
                ),
            )?;
        }
        // The relay's public address: on inet's loopback, reachable from both uplinks.
        let relay = format!("{}/32", self.relay_ip());
        self.ip(Site::Internet, &["addr", "add", &relay, "dev", "lo"])?;
        run(self
            .command(Site::Internet, "sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let (a_pub, b_pub) = (self.public_ip(Clinic::A), self.public_ip(Clinic::B));
        let (a_lan, b_lan) = (self.lan(Clinic::A), self.lan(Clinic::B));
        let relay = self.relay_ip();
        // Chains at the forward hook run by priority: `cut_udp` (-10) drops before `forward`
        // (0) counts what passed; `prerouting` counts every arrival first.
        self.nft_script_in(
            Site::Internet,
            &format!(
                "table ip {TABLE} {{\n\
                   set clinic_a {{ type ipv4_addr; flags interval; elements = {{ {a_pub}, {a_lan} }} }}\n\
                   set clinic_b {{ type ipv4_addr; flags interval; elements = {{ {b_pub}, {b_lan} }} }}\n\
                   counter a_to_b_seen {{ }}\n\
                   counter b_to_a_seen {{ }}\n\
                   counter a_to_b_passed {{ }}\n\
                   counter b_to_a_passed {{ }}\n\
                   counter relay_from_a {{ }}\n\
                   counter relay_from_b {{ }}\n\
                   counter from_private {{ }}\n\
                   chain prerouting {{\n\
                     type filter hook prerouting priority raw; policy accept;\n\
                     ip saddr @clinic_a ip daddr @clinic_b counter name a_to_b_seen\n\
                     ip saddr @clinic_b ip daddr @clinic_a counter name b_to_a_seen\n\
                     ip saddr {{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 }} counter name from_private\n\
                   }}\n\
                   chain cut_udp {{\n\
                     type filter hook forward priority -10; policy accept;\n\
                   }}\n\
                   chain forward {{\n\
                     type filter hook forward priority 0; policy accept;\n\
                     ip saddr @clinic_a ip daddr @clinic_b counter name a_to_b_passed\n\
                     ip saddr @clinic_b ip daddr @clinic_a counter name b_to_a_passed\n\
                   }}\n\
                   chain block_relay {{\n\
                     type filter hook input priority -10; policy accept;\n\
                   }}\n\
                   chain input {{\n\
                     type filter hook input priority 0; policy accept;\n\
                     ip saddr {a_pub} ip daddr {relay} counter name relay_from_a\n\
                     ip saddr {b_pub} ip daddr {relay} counter name relay_from_b\n\
                   }}\n\
                 }}\n"
            ),
        )?;
        if self.config.block_udp_between_clinics {
            self.cut_udp_between_clinics();
        }
        Ok(())
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn unavailable(why: &str) -> Option<NatLab> {
    if std::env::var_os("CI").is_some() {
        panic!(
            "natlab: the NAT lab cannot run here: {why}. Under CI (CI is set) the lab tests \
             must run: run as root with iproute2 and nftables installed (.ci/run installs them)"
        );
    }
    say(&format!(
        "SKIP natlab: {why} (see docs/TESTING.md, \"The NAT lab\")"
    ));
    None
}

/// Kills (SIGKILL, by pid) every process still inside namespace `ns`.
fn kill_inside(ns: &str) {
    let Ok(pids) = run_out(Command::new("ip").args(["netns", "pids", ns])) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is a process inside a
        // namespace this lab created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The names of `ip netns list`.
fn netns_list() -> Vec<String> {
    run_out(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    run_out(cmd).map(|_| ())
}

fn run_out(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
