//! Traffic for the defense verdict's scenarios, each aimed at one layer of a
//! server namespace behind SYNPROXY (xt, IPv4): a spoofed SYN flood to the
//! protected port, an invalid-ACK flood, a connection flood against a server
//! that stopped accepting, a spoofed SYN flood to a port the rules do not
//! cover (the kernel's own syncookies), and conntrack filled to its maximum.
//! Floods are paced (packets per second for a duration) so that the rounds of
//! an agent sampling meanwhile see a rate, not one burst.

use crate::netns::Netns;
use crate::packet::{TcpSegment, ACK, SYN};
use crate::protected_server::ProtectedServer;
use crate::rng::XorShift;
use crate::tools::{self, Tools};
use crate::traffic::{RawSender, ServerMode, TcpServer};
use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A port the SYNPROXY rules do not cover, with a listener of its own.
pub const UNPROTECTED_PORT: u16 = 8082;
/// A port nothing listens on; the server's RSTs from it are dropped before
/// conntrack sees them, so each spoofed SYN to it leaves an entry in
/// SYN_SENT for two minutes (an RST would end it at once).
pub const CLOSED_PORT: u16 = 8083;

/// The server namespace behind SYNPROXY, its client, default routes back to
/// the spoofed sources, and a listener on [`UNPROTECTED_PORT`].
pub struct DefenseLab {
    _unprotected: TcpServer,
    pub setup: ProtectedServer,
}

impl DefenseLab {
    /// `mode`: the protected port's server ([`ServerMode::Stalled`] for the
    /// connection flood). The unprotected port's listener has a backlog of 1
    /// and never accepts, so spoofed SYNs fill its SYN queue at once.
    pub fn new(tools: &Tools, mode: ServerMode) -> Result<Self> {
        let setup = ProtectedServer::xt_ipv4_in(tools, None, mode)?;
        let topo = &setup.topo;
        let via = format!("{}", topo.cli4);
        tools::run(
            &tools.ip,
            &[
                "-n",
                topo.srv.name(),
                "route",
                "add",
                "default",
                "via",
                &via,
            ],
        )
        .context("default route in the server netns")?;
        let sport = CLOSED_PORT.to_string();
        let drop_rst = [
            "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--sport", &sport, "-j", "DROP",
        ];
        topo.srv
            .run(|| tools::run(&tools.iptables, &drop_rst))
            .context("dropping the closed port's RSTs")?;
        let unprotected = TcpServer::start(&topo.srv, UNPROTECTED_PORT, ServerMode::Stalled)?;
        Ok(Self {
            _unprotected: unprotected,
            setup,
        })
    }

    pub fn srv(&self) -> &Netns {
        &self.setup.topo.srv
    }

    fn dst(&self) -> IpAddr {
        self.setup.topo.srv4.into()
    }

    /// Spoofed SYNs to the protected port: SYNPROXY answers each with a cookie.
    pub fn syn_flood(&self, per_sec: u32, secs: f64) -> Result<u64> {
        self.paced(per_sec, secs, |i, rng| {
            TcpSegment::to_protected(port_of(i), rng.next_u32(), 0, SYN)
        })
    }

    /// Spoofed ACKs with random sequence numbers to the protected port: no
    /// valid cookie, so SYNPROXY counts each as `cookie_invalid`.
    pub fn invalid_ack_flood(&self, per_sec: u32, secs: f64) -> Result<u64> {
        self.paced(per_sec, secs, |i, rng| {
            TcpSegment::to_protected(port_of(i), rng.next_u32(), rng.next_u32(), ACK)
        })
    }

    /// Spoofed SYNs to [`UNPROTECTED_PORT`]: its SYN queue is full after the
    /// first, so the kernel answers with its own cookies (`tcp_syncookies=1`).
    pub fn unprotected_syn_flood(&self, per_sec: u32, secs: f64) -> Result<u64> {
        self.paced(per_sec, secs, |i, rng| {
            TcpSegment::to_port(UNPROTECTED_PORT, port_of(i), rng.next_u32(), 0, SYN)
        })
    }

    /// Spoofed SYNs to [`CLOSED_PORT`], each from another address: every one
    /// is a new conntrack entry (the rules leave that port tracked).
    pub fn conntrack_fill(&self, per_sec: u32, secs: f64) -> Result<u64> {
        self.paced(per_sec, secs, |i, rng| {
            TcpSegment::to_port(CLOSED_PORT, port_of(i), rng.next_u32(), 0, SYN)
        })
    }

    /// `count` real connections to the protected port, not waited for, spread
    /// over `secs`: through SYNPROXY each reaches the server's listener,
    /// whose accept queue is full when it is [`ServerMode::Stalled`].
    pub fn connection_flood(&self, count: u32, secs: f64) -> Result<Vec<Socket>> {
        let dst = SockAddr::from(SocketAddr::new(self.dst(), crate::rules::PROTECTED_PORT));
        let pause = Duration::from_secs_f64(secs / f64::from(count.max(1)));
        self.setup.topo.cli.run(|| {
            let mut socks = Vec::new();
            for _ in 0..count {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                s.set_nonblocking(true)?;
                // EINPROGRESS is the normal answer of a non-blocking connect.
                let _ = s.connect(&dst);
                socks.push(s);
                std::thread::sleep(pause);
            }
            Ok(socks)
        })
    }

    /// Sends `make(i)` from spoofed source `i` at `per_sec` for `secs`.
    fn paced(
        &self,
        per_sec: u32,
        secs: f64,
        make: impl Fn(u32, &mut XorShift) -> TcpSegment,
    ) -> Result<u64> {
        let topo = &self.setup.topo;
        let mut tx = RawSender::new(
            &topo.cli,
            topo.cli4.into(),
            crate::packet::V6Checksum::Correct,
        )?;
        let mut rng = XorShift::from_time();
        let base = rng.next_u32() & 0x00ff_ffff;
        let start = Instant::now();
        let total = (f64::from(per_sec) * secs) as u32;
        let dst = self.dst();
        for i in 0..total {
            // Ahead of schedule: wait for it (in steps of at most 10 ms).
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(per_sec.max(1)));
            while let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
            }
            tx.send_from(
                spoofed(base.wrapping_add(i)).into(),
                dst,
                &make(i, &mut rng),
            )?;
        }
        Ok(u64::from(total))
    }
}

/// 100.64.0.0/10 (shared address space): never the lab's own addresses.
fn spoofed(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | (i & ((1 << 22) - 1)))
}

fn port_of(i: u32) -> u16 {
    1024 + (i % 60_000) as u16
}

/// A turn at the kernel's global conntrack limit: test runs on one machine
/// take turns through an exclusive lock on a file in the temporary
/// directory. The limit applies to every namespace, so a test that lowers it
/// holds its turn from before its namespaces exist until they are gone; two
/// runs at once would otherwise flood each other's namespaces and each
/// restore the value the other had lowered.
pub struct ConntrackTurn {
    _lock: std::fs::File,
}

impl ConntrackTurn {
    /// Waits for the turn.
    pub fn take() -> Result<Self> {
        let path = std::env::temp_dir().join("synproxy-tests-nf_conntrack_max.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; the lock goes
        // with the descriptor when the turn is dropped.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("lock {}", path.display()));
        }
        Ok(Self { _lock: lock })
    }
}

/// The kernel's global `nf_conntrack_max` (writable only from the initial
/// namespace on current kernels), lowered for a test and put back on drop,
/// during a [`ConntrackTurn`].
pub struct ConntrackMaxOverride<'t> {
    before: String,
    _turn: &'t ConntrackTurn,
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl<'t> ConntrackMaxOverride<'t> {
    pub fn set(max: u64, turn: &'t ConntrackTurn) -> Result<Self> {
        let before = std::fs::read_to_string(CONNTRACK_MAX).context("read nf_conntrack_max")?;
        std::fs::write(CONNTRACK_MAX, max.to_string()).context("write nf_conntrack_max")?;
        Ok(Self {
            before,
            _turn: turn,
        })
    }
}

impl Drop for ConntrackMaxOverride<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(CONNTRACK_MAX, self.before.trim()) {
            eprintln!(
                "# warning: nf_conntrack_max not restored to {}: {e}",
                self.before.trim()
            );
        }
    }
}
